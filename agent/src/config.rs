//! Agent configuration: a Prometheus configuration file plus one `uplink:` section.
//!
//! The Prometheus part follows Prometheus's schema and defaults (`global`, `scrape_configs`).
//! Keys Prometheus knows but an agent has no use for (`rule_files`, `alerting`,
//! `remote_write`, `remote_read`, `storage`, `tracing`) are accepted and ignored with a
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
use crate::http_client::{Authorization, BasicAuth, HttpClientConfig, OAuth2, TlsConfig};
use crate::queue::{QueueOptions, SyncPolicy};
use crate::relabel::RelabelConfig;
use uplink_shared::duration::PromDuration;
use uplink_shared::tls::TlsFiles;
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
    #[serde(default)]
    pub tracing: Option<serde_yaml::Value>,
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
}

impl Default for GlobalConfig {
    fn default() -> Self {
        GlobalConfig {
            scrape_interval: PromDuration(Duration::from_secs(60)),
            scrape_timeout: PromDuration(Duration::from_secs(10)),
            evaluation_interval: PromDuration(Duration::from_secs(60)),
            external_labels: BTreeMap::new(),
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
    /// Per-scrape sample limit; 0 means none. A scrape over the limit fails as a whole.
    #[serde(default)]
    pub sample_limit: usize,
    /// Largest uncompressed body accepted; 0 means none (Prometheus syntax: bytes only here).
    #[serde(default)]
    pub body_size_limit: usize,
    #[serde(default)]
    pub static_configs: Vec<StaticConfig>,
    #[serde(default)]
    pub file_sd_configs: Vec<FileSdConfig>,
    #[serde(default)]
    pub http_sd_configs: Vec<HttpSdConfig>,
    #[serde(default)]
    pub dns_sd_configs: Vec<DnsSdConfig>,
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
    /// The job's HTTP client settings.
    pub fn http_client(&self) -> HttpClientConfig {
        HttpClientConfig {
            basic_auth: self.basic_auth.clone(),
            authorization: self.authorization.clone(),
            oauth2: self.oauth2.clone(),
            tls_config: self.tls_config.clone(),
            proxy_url: self.proxy_url.clone(),
            follow_redirects: self.follow_redirects,
            enable_http2: self.enable_http2,
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
        }
    }
}

/// Where the configuration comes from: a Prometheus file, and optionally the `uplink:` section
/// in a file of its own (so the user's prometheus.yml stays byte for byte unchanged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub prometheus: PathBuf,
    pub uplink: Option<PathBuf>,
}

impl Config {
    /// Loads, resolves relative paths against the file's directory, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_from(&Source {
            prometheus: path.into(),
            uplink: None,
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
        cfg.uplink.tls.resolve(&base);
        if cfg.uplink.queue.directory.is_relative() {
            cfg.uplink.queue.directory = base.join(&cfg.uplink.queue.directory);
        }
        cfg.validate(path, &text)?;
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
        let mut seen = HashSet::new();
        for (i, job) in self.scrape_configs.iter().enumerate() {
            let needle = format!("job_name: {}", job.job_name);
            let field = |f: &str| format!("scrape_configs[{i}].{f}");
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
            ("tracing", self.tracing.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, present)| present.then_some(n))
        .collect()
    }
}

/// Finds the 1-based line and column of the first occurrence of `needle`.
fn locate(text: &str, needle: &str) -> Option<(usize, usize)> {
    text.lines()
        .enumerate()
        .find_map(|(i, line)| line.find(needle).map(|col| (i + 1, col + 1)))
}

/// Prometheus label name syntax.
pub fn valid_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

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
}
