//! Agent configuration: a Prometheus configuration file plus one `uplink:` section.
//!
//! The Prometheus part follows Prometheus's schema and defaults (`global`, `scrape_configs`).
//! `tracing` is honoured (OTLP traces of the agent's shipping, see `uplink_shared::traces`).
//! Keys Prometheus knows but an agent has no use for (`rule_files`, `alerting`,
//! `remote_write`, `remote_read`, `storage`) are accepted and ignored with a
//! warning, so an existing `prometheus.yml` loads unchanged. Any other unknown key is an error
//! naming file:line:column and the field, as is every invalid value.

use std::collections::{BTreeMap, HashSet};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::discovery::dns::DnsSdConfig;
use crate::discovery::file::FileSdConfig;
use crate::discovery::http::HttpSdConfig;
use crate::discovery::kubernetes::KubernetesSdConfig;
use crate::http_client::{Authorization, BasicAuth, HttpClientConfig, OAuth2, TlsConfig};
use crate::queue::{QueueOptions, SyncPolicy};
use crate::relabel::RelabelConfig;
use uplink_shared::duration::PromDuration;
use uplink_shared::tls::TlsFiles;
use uplink_shared::traces::TracingConfig;
use uplink_shared::yaml::{self, ConfigError};

/// The whole file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub global: GlobalConfig,
    #[serde(default)]
    pub scrape_configs: Vec<ScrapeConfig>,
    /// Uplink's own settings.
    pub uplink: UplinkConfig,
    /// Prometheus keys that an agent ignores (see the module docs).
    #[serde(default)]
    pub rule_files: Option<serde_yaml::Value>,
    #[serde(default)]
    pub alerting: Option<serde_yaml::Value>,
    #[serde(default)]
    pub remote_write: Option<serde_yaml::Value>,
    #[serde(default)]
    pub remote_read: Option<serde_yaml::Value>,
    #[serde(default)]
    pub storage: Option<serde_yaml::Value>,
    /// OTLP traces, in Prometheus's schema.
    #[serde(default)]
    pub tracing: Option<TracingConfig>,
    /// From `--enable-feature` (not the file).
    #[serde(skip)]
    pub features: Features,
}

/// The `--enable-feature` flags the agent knows, as in Prometheus.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// `native-histograms`: ask targets for the protobuf format first (Prometheus 2.x's flag).
    pub native_histograms: bool,
}

impl Features {
    /// Features from the flag's comma-separated values; unknown names are returned apart
    /// (Prometheus logs and ignores them).
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> (Features, Vec<String>) {
        let mut f = Features::default();
        let mut unknown = Vec::new();
        for n in names.into_iter().flat_map(|n| n.split(',')).map(str::trim) {
            match n {
                "native-histograms" => f.native_histograms = true,
                "" => {}
                other => unknown.push(other.to_owned()),
            }
        }
        (f, unknown)
    }
}

/// Prometheus's `global:` block.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GlobalConfig {
    pub scrape_interval: PromDuration,
    pub scrape_timeout: PromDuration,
    pub evaluation_interval: PromDuration,
    /// Added to every series that lacks the label, as Prometheus does for remote write.
    pub external_labels: BTreeMap<String, String>,
    /// Defaults for every job (a job's own value wins).
    pub sample_limit: u64,
    pub body_size_limit: ByteSize,
    pub label_limit: u64,
    pub label_name_length_limit: u64,
    pub label_value_length_limit: u64,
    pub target_limit: u64,
    pub keep_dropped_targets: u64,
    /// Default `scrape_protocols` of every job (see `scrape::negotiate`).
    pub scrape_protocols: Option<Vec<ScrapeProtocol>>,
    /// Accepted so that Prometheus files load; not used by the agent.
    pub rule_query_offset: Option<PromDuration>,
    pub query_log_file: Option<String>,
    pub scrape_failure_log_file: Option<String>,
    pub metric_name_validation_scheme: Option<String>,
    pub metric_name_escaping_scheme: Option<String>,
    pub always_scrape_classic_histograms: Option<bool>,
    pub convert_classic_histograms_to_nhcb: Option<bool>,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        GlobalConfig {
            scrape_interval: PromDuration(Duration::from_secs(60)),
            scrape_timeout: PromDuration(Duration::from_secs(10)),
            evaluation_interval: PromDuration(Duration::from_secs(60)),
            external_labels: BTreeMap::new(),
            sample_limit: 0,
            body_size_limit: ByteSize(0),
            label_limit: 0,
            label_name_length_limit: 0,
            label_value_length_limit: 0,
            target_limit: 0,
            keep_dropped_targets: 0,
            scrape_protocols: None,
            rule_query_offset: None,
            query_log_file: None,
            scrape_failure_log_file: None,
            metric_name_validation_scheme: None,
            metric_name_escaping_scheme: None,
            always_scrape_classic_histograms: None,
            convert_classic_histograms_to_nhcb: None,
        }
    }
}

/// One entry of `scrape_configs:`. Discovery mechanisms and relabeling slot in here.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScrapeConfig {
    pub job_name: String,
    #[serde(default)]
    pub scrape_interval: Option<PromDuration>,
    #[serde(default)]
    pub scrape_timeout: Option<PromDuration>,
    #[serde(default = "default_metrics_path")]
    pub metrics_path: String,
    #[serde(default)]
    pub scheme: Scheme,
    #[serde(default)]
    pub honor_labels: bool,
    #[serde(default = "default_true")]
    pub honor_timestamps: bool,
    /// URL query parameters sent with every scrape.
    #[serde(default)]
    pub params: BTreeMap<String, Vec<String>>,
    /// Per-scrape sample limit after metric relabeling; 0 means none (global default).
    #[serde(default)]
    pub sample_limit: Option<u64>,
    /// Largest uncompressed body accepted (`10MB`, Prometheus's base-2 units); 0 means the
    /// agent's own cap (see `docs/configuration.md`).
    #[serde(default)]
    pub body_size_limit: Option<ByteSize>,
    /// Most labels per series after relabeling (target labels included); 0 means none.
    #[serde(default)]
    pub label_limit: Option<u64>,
    #[serde(default)]
    pub label_name_length_limit: Option<u64>,
    #[serde(default)]
    pub label_value_length_limit: Option<u64>,
    /// Most targets after relabeling; over it, every target of the job fails (`up` = 0).
    #[serde(default)]
    pub target_limit: Option<u64>,
    /// How many dropped targets `/api/v1/targets` keeps; 0 means all.
    #[serde(default)]
    pub keep_dropped_targets: Option<u64>,
    /// Stale markers also for series with explicit timestamps.
    #[serde(default)]
    pub track_timestamps_staleness: bool,
    /// Ask for gzip (`Accept-Encoding`).
    #[serde(default = "default_true")]
    pub enable_compression: bool,
    /// Exposition formats to negotiate, most preferred first; the global list when unset,
    /// Prometheus 2.42's `Accept` header when neither is set (see `scrape::negotiate`).
    #[serde(default)]
    pub scrape_protocols: Option<Vec<ScrapeProtocol>>,
    /// Deprecated Prometheus 2 forms of `authorization`.
    #[serde(default)]
    pub bearer_token: Option<crate::http_client::Secret>,
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Accepted so that Prometheus files load; not implemented by the agent (a warning says
    /// so when set).
    #[serde(default)]
    pub no_proxy: Option<String>,
    #[serde(default)]
    pub proxy_from_environment: Option<bool>,
    #[serde(default)]
    pub proxy_connect_header: Option<serde_yaml::Value>,
    #[serde(default)]
    pub http_headers: Option<serde_yaml::Value>,
    #[serde(default)]
    pub scrape_failure_log_file: Option<String>,
    #[serde(default)]
    pub fallback_scrape_protocol: Option<ScrapeProtocol>,
    #[serde(default)]
    pub scrape_classic_histograms: Option<bool>,
    #[serde(default)]
    pub always_scrape_classic_histograms: Option<bool>,
    #[serde(default)]
    pub convert_classic_histograms_to_nhcb: Option<bool>,
    #[serde(default)]
    pub native_histogram_bucket_limit: Option<u64>,
    #[serde(default)]
    pub native_histogram_min_bucket_factor: Option<f64>,
    #[serde(default)]
    pub metric_name_validation_scheme: Option<String>,
    #[serde(default)]
    pub metric_name_escaping_scheme: Option<String>,
    #[serde(default)]
    pub static_configs: Vec<StaticConfig>,
    #[serde(default)]
    pub file_sd_configs: Vec<FileSdConfig>,
    #[serde(default)]
    pub http_sd_configs: Vec<HttpSdConfig>,
    #[serde(default)]
    pub dns_sd_configs: Vec<DnsSdConfig>,
    #[serde(default)]
    pub kubernetes_sd_configs: Vec<KubernetesSdConfig>,
    #[serde(default)]
    pub relabel_configs: Vec<RelabelConfig>,
    #[serde(default)]
    pub metric_relabel_configs: Vec<RelabelConfig>,
    // HTTP client settings (Prometheus's common HTTP client config).
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    #[serde(default)]
    pub authorization: Option<Authorization>,
    #[serde(default)]
    pub oauth2: Option<OAuth2>,
    #[serde(default)]
    pub tls_config: TlsConfig,
    #[serde(default)]
    pub proxy_url: Option<String>,
    #[serde(default = "default_true")]
    pub follow_redirects: bool,
    #[serde(default = "default_true")]
    pub enable_http2: bool,
}

impl ScrapeConfig {
    /// The job's HTTP client settings (`bearer_token*` become `authorization`).
    pub fn http_client(&self) -> HttpClientConfig {
        let bearer = Authorization::bearer(&self.bearer_token, &self.bearer_token_file);
        HttpClientConfig {
            basic_auth: self.basic_auth.clone(),
            authorization: self.authorization.clone().or(bearer),
            oauth2: self.oauth2.clone(),
            tls_config: self.tls_config.clone(),
            proxy_url: self.proxy_url.clone(),
            follow_redirects: self.follow_redirects,
            enable_http2: self.enable_http2,
            compression: self.enable_compression,
        }
    }

    /// Keys this agent accepts but does not act on, when set (each gets a warning).
    pub fn unsupported_keys(&self) -> Vec<&'static str> {
        [
            ("no_proxy", self.no_proxy.is_some()),
            (
                "proxy_from_environment",
                self.proxy_from_environment == Some(true),
            ),
            ("proxy_connect_header", self.proxy_connect_header.is_some()),
            ("http_headers", self.http_headers.is_some()),
            (
                "scrape_failure_log_file",
                self.scrape_failure_log_file.is_some(),
            ),
            (
                "scrape_classic_histograms",
                self.scrape_classic_histograms.is_some(),
            ),
            (
                "always_scrape_classic_histograms",
                self.always_scrape_classic_histograms.is_some(),
            ),
            (
                "convert_classic_histograms_to_nhcb",
                self.convert_classic_histograms_to_nhcb.is_some(),
            ),
            (
                "native_histogram_bucket_limit",
                self.native_histogram_bucket_limit.is_some(),
            ),
            (
                "native_histogram_min_bucket_factor",
                self.native_histogram_min_bucket_factor.is_some(),
            ),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }
}

/// Exposition formats, as named in `scrape_protocols`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum ScrapeProtocol {
    PrometheusProto,
    #[serde(rename = "OpenMetricsText0.0.1")]
    OpenMetricsText0_0_1,
    #[serde(rename = "OpenMetricsText1.0.0")]
    OpenMetricsText1_0_0,
    #[serde(rename = "PrometheusText0.0.4")]
    PrometheusText0_0_4,
    #[serde(rename = "PrometheusText1.0.0")]
    PrometheusText1_0_0,
}

/// A byte count in Prometheus's base-2 units (`512KB`, `10MB`, `1GB`, `1GiB`; `0`). A plain
/// number is also taken as bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let err = || format!("{s:?} is not a size (expected e.g. 0, 512KB, 10MB, 1GB)");
        if let Ok(n) = s.parse::<u64>() {
            return Ok(ByteSize(n));
        }
        let mut rest = s.trim();
        let mut total: u64 = 0;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let n: u64 = rest[..digits].parse().map_err(|_| err())?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let shift = match &rest[..unit_len] {
                "B" => 0,
                "KB" | "KiB" => 10,
                "MB" | "MiB" => 20,
                "GB" | "GiB" => 30,
                "TB" | "TiB" => 40,
                "PB" | "PiB" => 50,
                "EB" | "EiB" => 60,
                _ => return Err(err()),
            };
            rest = &rest[unit_len..];
            total = n
                .checked_shl(shift)
                .filter(|v| v >> shift == n)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(err)?;
        }
        Ok(ByteSize(total))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

fn default_metrics_path() -> String {
    "/metrics".into()
}
fn default_true() -> bool {
    true
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    #[default]
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// `static_configs:` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    pub targets: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The `uplink:` section.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// Gateway addresses, `host:port`, tried in order on each reconnect.
    pub gateways: Vec<String>,
    /// Name the gateway's certificate must carry; defaults to the first gateway's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Client certificate, key and the CA bundle that signed the gateway's certificate.
    pub tls: TlsFiles,
    pub queue: QueueConfig,
    #[serde(default)]
    pub shipper: ShipperConfig,
    /// Limits of the remote-write receiver (`--web.enable-remote-write-receiver`).
    #[serde(default)]
    pub remote_write_receiver: crate::receive::ReceiverConfig,
    /// The agent scrapes its own `/metrics` into its queue, so they travel through the tunnel
    /// with the site's external labels: a site without inbound access stays observable.
    #[serde(default)]
    pub self_scrape: SelfScrape,
}

/// `uplink.self_scrape`: a scrape job the agent adds for its own `/metrics`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SelfScrape {
    pub enabled: bool,
    /// The job's name (`job` label); a `scrape_configs` entry of the same name wins.
    pub job_name: String,
    /// Scrape interval; the global one when unset.
    pub scrape_interval: Option<PromDuration>,
}

impl Default for SelfScrape {
    fn default() -> Self {
        SelfScrape {
            enabled: true,
            job_name: "uplink-agent".into(),
            scrape_interval: None,
        }
    }
}

impl Config {
    /// The configuration with the self-scrape job added (when enabled and no job has its
    /// name): a static target at `web`, the agent's own listener (127.0.0.1 when it listens on
    /// every address: a `[::]` listener takes IPv4 too, and falls back to `0.0.0.0`).
    pub fn with_self_scrape(&self, web: std::net::SocketAddr) -> Config {
        let s = &self.uplink.self_scrape;
        let mut cfg = self.clone();
        if !s.enabled || cfg.scrape_configs.iter().any(|j| j.job_name == s.job_name) {
            return cfg;
        }
        let ip = match web.ip() {
            ip if ip.is_unspecified() => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        let target = std::net::SocketAddr::new(ip, web.port());
        let interval = s
            .scrape_interval
            .map(|d| format!("\nscrape_interval: {}", d))
            .unwrap_or_default();
        let yaml = format!(
            "job_name: {:?}\nstatic_configs: [{{targets: ['{target}']}}]{interval}",
            s.job_name
        );
        match serde_yaml::from_str::<ScrapeConfig>(&yaml) {
            Ok(job) => cfg.scrape_configs.push(job),
            Err(error) => tracing::warn!(%error, "Cannot build the self-scrape job."),
        }
        cfg
    }
}

/// The on-disk queue.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// RocksDB directory; created if missing.
    pub directory: PathBuf,
    /// When appends reach the disk: `always` (each append is synced before it counts as
    /// queued) or `interval` (group commit: synced every `sync_interval`; a power loss loses at
    /// most that much, a process crash nothing). Default `always`.
    #[serde(default)]
    pub sync: Option<SyncMode>,
    /// The group commit interval of `sync: interval`.
    #[serde(default = "default_sync_interval")]
    pub sync_interval: PromDuration,
    /// Deprecated spelling of `sync`: `true` is `always`, `false` is `interval`.
    #[serde(default)]
    pub fsync: Option<bool>,
    /// Memory for scrapes while the disk fails (full, I/O errors), in bytes; over it the
    /// oldest are dropped and counted. 0: no buffer, such scrapes are lost and counted.
    #[serde(default = "default_memory_buffer_bytes")]
    pub memory_buffer_bytes: u64,
    /// Retention budget: the queue's bytes at most (0: unbounded). Over it, the oldest
    /// records are dropped, counted and logged.
    #[serde(default)]
    pub max_bytes: u64,
    /// Retention budget: records older than this are dropped, counted and logged (unset:
    /// no age limit).
    #[serde(default)]
    pub max_age: Option<PromDuration>,
}

/// `queue.sync`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Always,
    Interval,
}

fn default_sync_interval() -> PromDuration {
    PromDuration(crate::queue::DEFAULT_SYNC_INTERVAL)
}

fn default_memory_buffer_bytes() -> u64 {
    crate::queue::DEFAULT_MEMORY_BUFFER_BYTES
}

impl QueueConfig {
    /// The sync policy `sync` (or the deprecated `fsync`) and `sync_interval` describe.
    pub fn sync_policy(&self) -> SyncPolicy {
        let interval = match (self.sync, self.fsync) {
            (Some(mode), _) => mode == SyncMode::Interval,
            (None, Some(fsync)) => !fsync,
            (None, None) => false,
        };
        if interval {
            SyncPolicy::Interval(self.sync_interval.0)
        } else {
            SyncPolicy::Always
        }
    }

    /// The options the queue is opened with.
    pub fn options(&self) -> QueueOptions {
        QueueOptions {
            memory_buffer_bytes: self.memory_buffer_bytes,
            ..QueueOptions::new(self.sync_policy())
        }
    }

    /// Field name and message of the first invalid setting.
    fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.sync.is_some() && self.fsync.is_some() {
            return Err((
                "fsync",
                "give sync (always, interval) and not the deprecated fsync",
            ));
        }
        if self.sync_interval.0.is_zero() {
            return Err(("sync_interval", "must be positive"));
        }
        Ok(())
    }
}

/// How batches are shipped.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShipperConfig {
    /// Batches in flight at once, each on its own QUIC stream.
    pub max_in_flight: NonZeroU32,
    /// Upper bound of queue records per batch.
    pub max_batch_records: NonZeroU32,
    /// Upper bound of a batch's payload (before compression), in bytes.
    pub max_batch_bytes: NonZeroU32,
    /// How long to wait for a full batch before sending a partial one.
    pub batch_delay: PromDuration,
    /// How often the agent reports its backlog to the gateway (freshness ledger) while it has
    /// one; otherwise every four intervals.
    pub status_interval: PromDuration,
    /// zstd level for batches (1-19). 6 measured best: a third fewer bytes than 3 at no
    /// measurable CPU cost on coded scrapes (docs/benchmarks.md).
    pub zstd_level: i32,
    /// QUIC keep-alive: a ping after this long without sending (so with data every scrape
    /// interval, pings are rare).
    pub keep_alive: PromDuration,
    /// A connection silent for this long is declared dead.
    pub idle_timeout: PromDuration,
    /// How long to wait for an ack before the batch is sent again.
    pub ack_timeout: PromDuration,
    /// Reconnect backoff bounds (jittered exponential).
    pub min_backoff: PromDuration,
    pub max_backoff: PromDuration,
    /// How often the connection's series sets are defined again (with their metadata), so
    /// every destination, even one added since, gets metadata; 0 disables.
    pub redefine_interval: PromDuration,
}

impl Default for ShipperConfig {
    fn default() -> Self {
        let n = |v| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        ShipperConfig {
            max_in_flight: n(4),
            max_batch_records: n(64),
            max_batch_bytes: n(4 << 20),
            batch_delay: PromDuration(Duration::from_secs(1)),
            zstd_level: 6,
            status_interval: PromDuration(Duration::from_secs(15)),
            keep_alive: PromDuration(Duration::from_secs(10)),
            idle_timeout: PromDuration(Duration::from_secs(15)),
            ack_timeout: PromDuration(Duration::from_secs(60)),
            min_backoff: PromDuration(Duration::from_millis(200)),
            max_backoff: PromDuration(Duration::from_secs(30)),
            redefine_interval: PromDuration(Duration::from_secs(600)),
        }
    }
}

/// A job's limits after inheritance from `global:`; 0 means none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobLimits {
    pub sample_limit: u64,
    pub body_size_limit: u64,
    pub label_limit: u64,
    pub label_name_length_limit: u64,
    pub label_value_length_limit: u64,
    pub target_limit: u64,
    pub keep_dropped_targets: u64,
}

/// Where the configuration comes from: a Prometheus file, and optionally the `uplink:` section
/// in a file of its own (so the user's prometheus.yml stays byte for byte unchanged), and the
/// feature flags (applied to every load, reloads included).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    pub prometheus: PathBuf,
    pub uplink: Option<PathBuf>,
    pub features: Features,
}

impl Config {
    /// Loads, resolves relative paths against the file's directory, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_from(&Source {
            prometheus: path.into(),
            ..Source::default()
        })
    }

    /// Loads from a [`Source`]. With a separate uplink file, its content is the `uplink:`
    /// section's (no `uplink:` key), its relative paths resolve against its own directory, and
    /// the Prometheus file must not have an `uplink:` section too.
    pub fn load_from(src: &Source) -> Result<Config, ConfigError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.into(),
                source,
            })
        };
        let path = src.prometheus.as_path();
        let mut text = read(path)?;
        let mut base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        if let Some(up) = &src.uplink {
            let utext = read(up)?;
            // Errors in the uplink file are reported against it.
            let _: UplinkConfig = yaml::parse(up, &utext)?;
            let has_section = yaml::parse::<serde_yaml::Value>(path, &text)?
                .get("uplink")
                .is_some();
            if has_section {
                return Err(ConfigError::rule(
                    path,
                    "uplink",
                    format!(
                        "the uplink section is given both here and in {}",
                        up.display()
                    ),
                ));
            }
            // Appended after the Prometheus text, so its line numbers stay exact.
            text.push_str("\nuplink:\n");
            for line in utext.lines() {
                text.push_str("  ");
                text.push_str(line);
                text.push('\n');
            }
            base = up.parent().unwrap_or(Path::new(".")).to_path_buf();
        }
        let mut cfg: Config = yaml::parse(path, &text)?;
        if let Some(t) = &mut cfg.tracing {
            t.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        }
        cfg.uplink.tls.resolve(&base);
        if cfg.uplink.queue.directory.is_relative() {
            cfg.uplink.queue.directory = base.join(&cfg.uplink.queue.directory);
        }
        cfg.validate(path, &text)?;
        cfg.features = src.features.clone();
        Ok(cfg)
    }

    /// Cross-field rules, with the location of the offending job where one can be found.
    fn validate(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let at = |needle: &str, field: String, message: String| match locate(text, needle) {
            Some((line, column)) => ConfigError::Invalid {
                path: path.into(),
                line,
                column,
                field,
                message,
            },
            None => ConfigError::rule(path, field, message),
        };
        if let Err((key, message)) = self.uplink.queue.check() {
            return Err(at(
                &format!("{key}:"),
                format!("uplink.queue.{key}"),
                message.into(),
            ));
        }
        if let Some(Err(e)) = self.tracing.as_ref().map(TracingConfig::validate) {
            let field = e.field();
            return Err(at(
                &format!("{field}:"),
                format!("tracing.{field}"),
                e.to_string(),
            ));
        }
        let g = &self.global;
        if g.scrape_timeout > g.scrape_interval {
            return Err(at(
                "scrape_timeout:",
                "global.scrape_timeout".into(),
                format!(
                    "scrape_timeout ({}) greater than scrape_interval ({})",
                    g.scrape_timeout, g.scrape_interval
                ),
            ));
        }
        for name in g.external_labels.keys() {
            if !valid_label_name(name) {
                return Err(at(
                    &format!("{name}:"),
                    format!("global.external_labels.{name}"),
                    "invalid label name".into(),
                ));
            }
        }
        if let Err(message) = check_protocols(g.scrape_protocols.as_deref()) {
            return Err(at(
                "scrape_protocols:",
                "global.scrape_protocols".into(),
                message,
            ));
        }
        let mut seen = HashSet::new();
        for (i, job) in self.scrape_configs.iter().enumerate() {
            let needle = format!("job_name: {}", job.job_name);
            let field = |f: &str| format!("scrape_configs[{i}].{f}");
            if let Err(message) = check_protocols(job.scrape_protocols.as_deref()) {
                return Err(at(&needle, field("scrape_protocols"), message));
            }
            if job.job_name.is_empty() {
                return Err(at(
                    "job_name:",
                    field("job_name"),
                    "must not be empty".into(),
                ));
            }
            if !seen.insert(job.job_name.as_str()) {
                return Err(at(
                    &needle,
                    field("job_name"),
                    format!(
                        "found multiple scrape configs with job name {:?}",
                        job.job_name
                    ),
                ));
            }
            let interval = self.interval(job);
            let timeout = self.timeout(job);
            if timeout > interval {
                return Err(at(
                    &needle,
                    field("scrape_timeout"),
                    format!(
                        "scrape timeout ({}) greater than scrape interval ({})",
                        PromDuration(timeout),
                        PromDuration(interval)
                    ),
                ));
            }
            if interval.is_zero() {
                return Err(at(
                    &needle,
                    field("scrape_interval"),
                    "must be positive".into(),
                ));
            }
            if !job.metrics_path.starts_with('/') {
                return Err(at(
                    &needle,
                    field("metrics_path"),
                    "must start with '/'".into(),
                ));
            }
            let sd_checks = job
                .file_sd_configs
                .iter()
                .map(|c| ("file_sd_configs", c.validate()))
                .chain(
                    job.http_sd_configs
                        .iter()
                        .map(|c| ("http_sd_configs", c.validate())),
                )
                .chain(
                    job.dns_sd_configs
                        .iter()
                        .map(|c| ("dns_sd_configs", c.validate())),
                )
                .chain(
                    job.kubernetes_sd_configs
                        .iter()
                        .map(|c| ("kubernetes_sd_configs", c.validate())),
                );
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for (kind, r) in sd_checks {
                let k = counts.entry(kind).or_default();
                if let Err(message) = r {
                    return Err(at(kind, field(&format!("{kind}[{k}]")), message));
                }
                *k += 1;
            }
            if let Err(e) = job.http_client().validate() {
                let what = match &e {
                    crate::http_client::HttpClientError::Invalid { what, .. } => *what,
                    _ => "tls_config",
                };
                return Err(at(&format!("{what}:"), field(what), e.to_string()));
            }
            for (j, sc) in job.static_configs.iter().enumerate() {
                for (k, t) in sc.targets.iter().enumerate() {
                    if !valid_target(t) {
                        return Err(at(
                            t,
                            field(&format!("static_configs[{j}].targets[{k}]")),
                            format!("{t:?} is not a valid target address"),
                        ));
                    }
                }
                for name in sc.labels.keys() {
                    if !valid_label_name(name) {
                        return Err(at(
                            &format!("{name}:"),
                            field(&format!("static_configs[{j}].labels.{name}")),
                            "invalid label name".into(),
                        ));
                    }
                }
            }
        }
        let u = &self.uplink;
        if u.gateways.is_empty() {
            return Err(at(
                "gateways:",
                "uplink.gateways".into(),
                "at least one gateway address is required".into(),
            ));
        }
        for (i, gw) in u.gateways.iter().enumerate() {
            if split_host_port(gw).is_none() {
                return Err(at(
                    gw,
                    format!("uplink.gateways[{i}]"),
                    format!("{gw:?} is not host:port"),
                ));
            }
        }
        let s = &u.shipper;
        if s.idle_timeout.0 <= s.keep_alive.0 {
            return Err(at(
                "idle_timeout:",
                "uplink.shipper.idle_timeout".into(),
                "must be greater than keep_alive".into(),
            ));
        }
        if s.status_interval.0.is_zero() {
            return Err(at(
                "status_interval:",
                "uplink.shipper.status_interval".into(),
                "must be positive".into(),
            ));
        }
        if !(1..=19).contains(&s.zstd_level) {
            return Err(at(
                "zstd_level:",
                "uplink.shipper.zstd_level".into(),
                format!("{} is not in 1..=19", s.zstd_level),
            ));
        }
        if s.min_backoff > s.max_backoff || s.min_backoff.0.is_zero() {
            return Err(at(
                "min_backoff:",
                "uplink.shipper.min_backoff".into(),
                "must be positive and not exceed max_backoff".into(),
            ));
        }
        Ok(())
    }

    /// Effective scrape interval of a job.
    pub fn interval(&self, job: &ScrapeConfig) -> Duration {
        job.scrape_interval.unwrap_or(self.global.scrape_interval).0
    }

    /// Effective scrape timeout of a job: its own, else the global one capped at the interval
    /// (Prometheus's rule).
    pub fn timeout(&self, job: &ScrapeConfig) -> Duration {
        match job.scrape_timeout {
            Some(t) => t.0,
            None => self.global.scrape_timeout.0.min(self.interval(job)),
        }
    }

    /// A job's effective limits: its own value, else the global one (0 means none).
    pub fn limits(&self, job: &ScrapeConfig) -> JobLimits {
        let g = &self.global;
        JobLimits {
            sample_limit: job.sample_limit.unwrap_or(g.sample_limit),
            body_size_limit: job.body_size_limit.unwrap_or(g.body_size_limit).0,
            label_limit: job.label_limit.unwrap_or(g.label_limit),
            label_name_length_limit: job
                .label_name_length_limit
                .unwrap_or(g.label_name_length_limit),
            label_value_length_limit: job
                .label_value_length_limit
                .unwrap_or(g.label_value_length_limit),
            target_limit: job.target_limit.unwrap_or(g.target_limit),
            keep_dropped_targets: job.keep_dropped_targets.unwrap_or(g.keep_dropped_targets),
        }
    }

    /// The server name the gateway certificate is checked against.
    pub fn server_name(&self) -> String {
        self.uplink.server_name.clone().unwrap_or_else(|| {
            self.uplink
                .gateways
                .first()
                .and_then(|g| split_host_port(g))
                .map(|(h, _)| h.to_owned())
                .unwrap_or_default()
        })
    }

    /// Names of the ignored Prometheus sections that are present.
    pub fn ignored_sections(&self) -> Vec<&'static str> {
        [
            ("rule_files", self.rule_files.is_some()),
            ("alerting", self.alerting.is_some()),
            ("remote_write", self.remote_write.is_some()),
            ("remote_read", self.remote_read.is_some()),
            ("storage", self.storage.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, present)| present.then_some(n))
        .collect()
    }
}

/// Prometheus's rules for a `scrape_protocols` list: not empty, no protocol twice.
fn check_protocols(list: Option<&[ScrapeProtocol]>) -> Result<(), String> {
    let Some(list) = list else {
        return Ok(());
    };
    if list.is_empty() {
        return Err("scrape_protocols cannot be empty".into());
    }
    if list
        .iter()
        .enumerate()
        .any(|(i, p)| list.get(..i).unwrap_or_default().contains(p))
    {
        return Err(format!(
            "duplicated protocol in scrape_protocols, got {list:?}"
        ));
    }
    Ok(())
}

/// Finds the 1-based line and column of the first occurrence of `needle`.
fn locate(text: &str, needle: &str) -> Option<(usize, usize)> {
    text.lines()
        .enumerate()
        .find_map(|(i, line)| line.find(needle).map(|col| (i + 1, col + 1)))
}

/// Prometheus label name syntax.
pub use uplink_shared::model::valid_label_name;

/// Splits `host:port` (IPv6 in brackets).
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some((host, port))
}

/// Prometheus accepts any address without `/` (a missing port is added from the scheme).
fn valid_target(t: &str) -> bool {
    !t.is_empty() && !t.contains('/') && !t.contains(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
global:
  scrape_interval: 15s
  external_labels:
    site: a
scrape_configs:
  - job_name: node
    static_configs:
      - targets: ["127.0.0.1:9100"]
        labels: {env: dev}
rule_files: ["x.yml"]
uplink:
  gateways: ["gw.example:4433"]
  tls: {cert_file: a.crt, key_file: a.key, ca_file: ca.crt}
  queue: {directory: q}
"#;

    #[test]
    fn self_scrape_adds_one_loopback_job_unless_named_or_disabled() {
        let c = load(GOOD).expect("valid");
        let web: std::net::SocketAddr = "0.0.0.0:9101".parse().expect("addr");
        let with = c.with_self_scrape(web);
        let job = with.scrape_configs.last().expect("job");
        assert_eq!(job.job_name, "uplink-agent");
        assert_eq!(
            job.static_configs[0].targets,
            vec!["127.0.0.1:9101".to_owned()]
        );
        // `:9101` listens on [::], which takes IPv4 too (or falls back to 0.0.0.0).
        let every: std::net::SocketAddr = "[::]:9101".parse().expect("addr");
        let job = c.with_self_scrape(every).scrape_configs.pop().expect("job");
        assert_eq!(
            job.static_configs[0].targets,
            vec!["127.0.0.1:9101".to_owned()]
        );
        let c = load(&GOOD.replace(
            "  queue: {directory: q}\n",
            "  queue: {directory: q}\n  self_scrape: {job_name: node, scrape_interval: 1m}\n",
        ))
        .expect("valid");
        assert_eq!(
            c.with_self_scrape(web).scrape_configs.len(),
            1,
            "the user's job wins"
        );
        let c = load(&GOOD.replace(
            "  queue: {directory: q}\n",
            "  queue: {directory: q}\n  self_scrape: {enabled: false}\n",
        ))
        .expect("valid");
        assert_eq!(c.with_self_scrape(web).scrape_configs.len(), 1);
    }

    fn load(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("agent.yml");
        std::fs::write(&p, text).expect("write");
        Config::load(&p).map_err(|e| {
            // Make paths stable for assertions.
            match e {
                ConfigError::Invalid {
                    line,
                    column,
                    field,
                    message,
                    ..
                } => ConfigError::Invalid {
                    path: "agent.yml".into(),
                    line,
                    column,
                    field,
                    message,
                },
                other => other,
            }
        })
    }

    #[test]
    fn loads_prometheus_file_with_defaults() {
        let c = load(GOOD).expect("valid");
        let job = &c.scrape_configs[0];
        assert_eq!(c.interval(job), Duration::from_secs(15));
        assert_eq!(c.timeout(job), Duration::from_secs(10));
        assert_eq!(job.metrics_path, "/metrics");
        assert!(job.honor_timestamps);
        assert_eq!(c.server_name(), "gw.example");
        assert_eq!(c.ignored_sections(), vec!["rule_files"]);
        assert!(c.uplink.tls.cert_file.is_absolute());
        assert_eq!(c.uplink.queue.sync_policy(), SyncPolicy::Always);
        assert_eq!(c.uplink.queue.memory_buffer_bytes, 16 << 20);
    }

    #[test]
    fn queue_sync_policy_and_deprecated_fsync() {
        let with = |q: &str| {
            GOOD.replace(
                "queue: {directory: q}",
                &format!("queue: {{directory: q, {q}}}"),
            )
        };
        let policy = |q: &str| load(&with(q)).expect("valid").uplink.queue.sync_policy();
        let ms = |n| SyncPolicy::Interval(Duration::from_millis(n));
        assert_eq!(policy("sync: interval"), ms(100));
        assert_eq!(policy("sync: interval, sync_interval: 250ms"), ms(250));
        assert_eq!(policy("sync: always"), SyncPolicy::Always);
        assert_eq!(policy("fsync: false"), ms(100));
        assert_eq!(policy("fsync: true"), SyncPolicy::Always);
        let e = load(&with("sync: always, fsync: true"))
            .expect_err("both")
            .to_string();
        assert!(e.contains("uplink.queue.fsync"), "{e}");
        let e = load(&with("sync: interval, sync_interval: 0s"))
            .expect_err("zero")
            .to_string();
        assert!(
            e.contains("uplink.queue.sync_interval: must be positive"),
            "{e}"
        );
        let e = load(&with("sync: sometimes")).expect_err("bad").to_string();
        assert!(e.contains("unknown variant `sometimes`"), "{e}");
    }

    #[test]
    fn errors_name_line_column_and_field() {
        let bad = GOOD.replace("scrape_interval: 15s", "scrape_interval: 15 seconds");
        let e = load(&bad).expect_err("bad duration").to_string();
        assert!(e.starts_with("agent.yml:3:"), "{e}");
        assert!(e.contains("global.scrape_interval"), "{e}");

        let bad = GOOD.replace(
            "    static_configs:",
            "    scrape_intervall: 5s\n    static_configs:",
        );
        let e = load(&bad).expect_err("unknown key").to_string();
        assert!(e.contains("agent.yml:8:"), "{e}");
        assert!(e.contains("unknown field `scrape_intervall`"), "{e}");

        let bad = GOOD.replace(
            "  - job_name: node\n",
            "  - job_name: node\n    scrape_interval: 5s\n    scrape_timeout: 10s\n",
        );
        let e = load(&bad).expect_err("timeout > interval").to_string();
        assert!(
            e.contains("agent.yml:7:5: scrape_configs[0].scrape_timeout"),
            "{e}"
        );

        let bad = GOOD.replace("127.0.0.1:9100", "http://x/");
        let e = load(&bad).expect_err("bad target").to_string();
        assert!(e.contains("static_configs[0].targets[0]"), "{e}");

        let bad = GOOD.replace("  queue: {directory: q}\n", "");
        let e = load(&bad).expect_err("missing queue").to_string();
        assert!(e.contains("missing field `queue`"), "{e}");
    }

    #[test]
    fn tracing_is_read_in_prometheus_schema_and_checked_with_its_location() {
        let with = |t: &str| GOOD.replace("rule_files: [\"x.yml\"]\n", t);
        let c = load(&with(
            "tracing:\n  client_type: http\n  endpoint: otel:4318\n  sampling_fraction: 0.25\n  \
             tls_config: {ca_file: otel-ca.crt}\n",
        ))
        .expect("valid");
        let t = c.tracing.as_ref().expect("tracing");
        assert!(t.enabled());
        assert_eq!(t.sampling_fraction, 0.25);
        assert!(
            t.tls_config
                .ca_file
                .as_ref()
                .is_some_and(|p| p.is_absolute())
        );
        assert!(!c.ignored_sections().contains(&"tracing"));
        // Prometheus's default client is gRPC: accepted (warned about at run time), not on.
        let c = load(&with("tracing: {endpoint: otel:4317}\n")).expect("valid");
        assert!(!c.tracing.expect("tracing").enabled());
        let e = load(&with(
            "tracing:\n  endpoint: otel:4318\n  sampling_fraction: 2\n",
        ))
        .expect_err("fraction")
        .to_string();
        assert!(
            e.contains("agent.yml:13:3: tracing.sampling_fraction: sampling_fraction 2 is not"),
            "{e}"
        );
        let e = load(&with(
            "tracing:\n  endpoint: otel:4318\n  compresion: gzip\n",
        ))
        .expect_err("typo")
        .to_string();
        assert!(
            e.contains("agent.yml:13:3") && e.contains("compresion"),
            "{e}"
        );
    }

    #[test]
    fn kubernetes_sd_entries_are_checked_with_their_location() {
        let text = GOOD.replace(
            "    static_configs:\n",
            "    kubernetes_sd_configs:\n      - role: pod\n        namespaces: {names: [kube-system]}\n    static_configs:\n",
        );
        let c = load(&text).expect("valid");
        assert_eq!(c.scrape_configs[0].kubernetes_sd_configs.len(), 1);
        let bad = GOOD.replace(
            "    static_configs:\n",
            "    kubernetes_sd_configs:\n      - role: pod\n        api_server: https://k8s:6443\n        kubeconfig_file: kc.yml\n    static_configs:\n",
        );
        let e = load(&bad).expect_err("both").to_string();
        assert!(
            e.contains("agent.yml:8:5: scrape_configs[0].kubernetes_sd_configs[0]: cannot use 'kubeconfig_file' and 'api_server' simultaneously"),
            "{e}"
        );
        let bad = GOOD.replace(
            "    static_configs:\n",
            "    kubernetes_sd_configs:\n      - role: nodes\n    static_configs:\n",
        );
        let e = load(&bad).expect_err("role").to_string();
        assert!(e.contains("unknown Kubernetes SD role \"nodes\""), "{e}");
    }

    #[test]
    fn byte_sizes_in_prometheus_units() {
        let p = |s: &str| ByteSize::parse(s).map(|b| b.0);
        assert_eq!(p("0"), Ok(0));
        assert_eq!(p("1024"), Ok(1024));
        assert_eq!(p("512KB"), Ok(512 << 10));
        assert_eq!(p("10MB"), Ok(10 << 20));
        assert_eq!(p("1GiB"), Ok(1 << 30));
        assert_eq!(p("1GB512MB"), Ok((1 << 30) + (512 << 20)));
        assert!(p("10 MB").is_err() && p("10mb").is_err() && p("MB").is_err());
        assert!(p("99999999999EB").is_err());
    }

    #[test]
    fn limits_inherit_from_global() {
        let text = GOOD.replace(
            "  scrape_interval: 15s\n",
            "  scrape_interval: 15s\n  sample_limit: 10\n  body_size_limit: 1MB\n",
        );
        let c = load(&text).expect("valid");
        let l = c.limits(&c.scrape_configs[0]);
        assert_eq!((l.sample_limit, l.body_size_limit), (10, 1 << 20));
        let text = text.replace(
            "  - job_name: node\n",
            "  - job_name: node\n    sample_limit: 0\n    scrape_protocols: [OpenMetricsText1.0.0, PrometheusText0.0.4]\n",
        );
        let c = load(&text).expect("valid");
        assert_eq!(c.limits(&c.scrape_configs[0]).sample_limit, 0);
    }

    #[test]
    fn scrape_protocols_follow_prometheus_rules() {
        let with = |global: &str, job: &str| {
            GOOD.replace(
                "  scrape_interval: 15s\n",
                &format!("  scrape_interval: 15s\n{global}"),
            )
            .replace(
                "  - job_name: node\n",
                &format!("  - job_name: node\n{job}"),
            )
        };
        let c = load(&with(
            "  scrape_protocols: [PrometheusProto, OpenMetricsText0.0.1]\n",
            "    scrape_protocols: [PrometheusText1.0.0]\n",
        ))
        .expect("valid");
        assert_eq!(
            c.global.scrape_protocols,
            Some(vec![
                ScrapeProtocol::PrometheusProto,
                ScrapeProtocol::OpenMetricsText0_0_1
            ])
        );
        assert_eq!(
            c.scrape_configs[0].scrape_protocols,
            Some(vec![ScrapeProtocol::PrometheusText1_0_0])
        );
        let e = load(&with("", "    scrape_protocols: []\n"))
            .expect_err("empty")
            .to_string();
        assert!(e.contains("scrape_protocols cannot be empty"), "{e}");
        let e = load(&with(
            "  scrape_protocols: [PrometheusText0.0.4, PrometheusText0.0.4]\n",
            "",
        ))
        .expect_err("duplicate")
        .to_string();
        assert!(e.contains("duplicated protocol"), "{e}");
        assert!(load(&with("", "    scrape_protocols: [OpenMetrics]\n")).is_err());
    }
}
