//! Gateway configuration. `remote_write:` follows Prometheus's remote_write schema (the subset
//! listed here); everything else is Uplink's own. Unknown keys are errors naming
//! file:line:column and the field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use uplink_shared::duration::PromDuration;
use uplink_shared::http_client::{
    Authorization, BasicAuth, HttpClientConfig, HttpClientError, OAuth2, Secret, TlsConfig,
    default_true,
};
use uplink_shared::relabel::RelabelConfig;
use uplink_shared::tls::TlsFiles;
use uplink_shared::yaml::{self, ConfigError};

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// UDP address agents connect to.
    pub listen_address: SocketAddr,
    /// Server certificate and key; `ca_file` is the bundle client certificates must chain to.
    pub tls: TlsFiles,
    /// How an agent's identity is read from its certificate (SPIFFE ID or CN).
    #[serde(default)]
    pub identity: uplink_shared::tls::IdentityRules,
    /// Labels stamped from each agent's identity (unset: none are).
    #[serde(default)]
    pub tenancy: Option<TenancyConfig>,
    #[serde(default)]
    pub limits: Limits,
    /// Destinations, in Prometheus's remote_write schema.
    pub remote_write: Vec<RemoteWriteConfig>,
    /// The freshness ledger written to the destinations.
    #[serde(default)]
    pub ledger: LedgerConfig,
    /// The durable store: per-destination queues and the dedupe cursors.
    pub storage: StorageConfig,
    /// HA-pair dedupe: one elected replica per (tenant, cluster) (see `ha.rs`).
    #[serde(default)]
    pub ha: Option<crate::ha::HaConfig>,
    /// Dedupe cursors shared by several gateways, so a batch resent to another gateway after
    /// a lost ack is not stored twice (see `dedupe.rs`). Unset: each gateway's own.
    #[serde(default)]
    pub dedupe: Option<crate::dedupe::DedupeConfig>,
    /// OTLP traces, in Prometheus's `tracing:` schema (see `uplink_shared::traces`).
    #[serde(default)]
    pub tracing: Option<uplink_shared::traces::TracingConfig>,
}

/// The gateway's RocksDB store (see `store.rs`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// RocksDB directory; created if missing. One gateway process per directory.
    pub directory: PathBuf,
    /// Sync the write-ahead log before acknowledging a batch. With `false`, a process crash
    /// loses nothing acknowledged, but a power loss may lose the last acknowledged batches.
    #[serde(default = "default_true")]
    pub fsync: bool,
    /// Retention budget per destination: the bytes waiting for one destination at most (0:
    /// unbounded). Over it, that destination's oldest entries are dropped and counted.
    #[serde(default)]
    pub max_bytes: u64,
    /// Retention budget per destination: entries waiting longer than this for a destination
    /// are dropped for it and counted (unset: no age limit).
    #[serde(default)]
    pub max_age: Option<PromDuration>,
    /// When an agent's batch is acknowledged: `stored` (default) once it is durable in the store
    /// for every destination; `delivered` once every destination has answered for it (delivered,
    /// or refused or dropped by retention, counted). With `delivered` a destination that is down
    /// holds every agent's acks: their backlogs wait on their own disks instead of here.
    #[serde(default)]
    pub ack: AckPolicy,
    /// Size of one destination's quarantine file (series it refused for good, kept for
    /// inspection) before it is rotated; at most twice this is kept per destination.
    #[serde(default = "default_quarantine_bytes")]
    pub quarantine_max_bytes: u64,
    /// On shutdown, how long the forwarders may keep draining backlogs after the last ack.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: PromDuration,
}

fn default_quarantine_bytes() -> u64 {
    64 << 20
}

fn default_drain_timeout() -> PromDuration {
    PromDuration(Duration::from_secs(10))
}

/// `tenancy:`: the labels the gateway stamps on every series from the agent's verified
/// identity; whatever an agent or a target sent under those names is never trusted.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TenancyConfig {
    /// Label carrying the identity's tenant (SPIFFE identities); empty: not stamped.
    pub tenant_label: String,
    /// Label carrying the identity's site; empty: not stamped.
    pub site_label: String,
    /// What happens to a label the agent sent under a stamped name: `overwrite` (dropped) or
    /// `exported` (kept as `exported_<name>`, as Prometheus does without `honor_labels`).
    pub conflicts: Conflicts,
    /// Per tenant id: more labels to stamp (e.g. `region`).
    pub tenants: BTreeMap<String, TenantConfig>,
}

impl Default for TenancyConfig {
    fn default() -> Self {
        TenancyConfig {
            tenant_label: "tenant".into(),
            site_label: "site".into(),
            conflicts: Conflicts::Overwrite,
            tenants: BTreeMap::new(),
        }
    }
}

/// See [`TenancyConfig::conflicts`].
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Conflicts {
    #[default]
    Overwrite,
    Exported,
}

/// One tenant's settings.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    pub labels: BTreeMap<String, String>,
    /// Headers on every request carrying this tenant's series (e.g. `X-Scope-OrgID` for Mimir
    /// and Cortex, `THANOS-TENANT` for Thanos); such requests carry no other tenant's series.
    pub headers: BTreeMap<String, String>,
    /// The `remote_write` names this tenant's series go to (unset: all).
    pub destinations: Option<Vec<String>>,
    /// Samples per second the gateway stores for this tenant at most; an agent over it is
    /// answered `Retry` and keeps its data (see `limits.rs`). Unset: no limit.
    pub max_samples_per_second: Option<f64>,
    /// Labels per series at most (`__name__` and stamped labels included); a series over it
    /// is not forwarded (counted). Unset: no limit.
    pub max_label_names_per_series: Option<usize>,
    /// Bytes of a label name at most (as above).
    pub max_label_name_length: Option<usize>,
    /// Bytes of a label value at most (as above).
    pub max_label_value_length: Option<usize>,
    /// Active series at most (the series of the sets its agents used in the last 10 minutes,
    /// across its connections); a new set over it is not forwarded (counted, see `limits.rs`).
    pub max_series: Option<u64>,
    /// Largest batch frame this tenant's agents may send (at most `limits.max_batch_bytes`);
    /// announced in the handshake, so agents size their batches to it.
    pub max_batch_bytes: Option<u32>,
    /// Samples the tenant may send at once above its rate (default: one second's worth).
    pub burst: Option<u64>,
}

impl TenantConfig {
    /// The tenant's label limits, if it has any.
    pub fn label_limits(&self) -> Option<uplink_shared::codec::LabelLimits> {
        let l = uplink_shared::codec::LabelLimits {
            max_names: self.max_label_names_per_series.unwrap_or(0),
            max_name_length: self.max_label_name_length.unwrap_or(0),
            max_value_length: self.max_label_value_length.unwrap_or(0),
        };
        (l != uplink_shared::codec::LabelLimits::default()).then_some(l)
    }
}

impl TenancyConfig {
    /// The stamp for an identity.
    pub fn stamp(&self, id: &uplink_shared::tls::Identity) -> uplink_shared::model::Stamp {
        use uplink_shared::model::Label;
        let mut labels = Vec::new();
        if let Some(t) = &id.tenant {
            if !self.tenant_label.is_empty() {
                labels.push(Label::new(&self.tenant_label, t));
            }
            if let Some(cfg) = self.tenants.get(t) {
                labels.extend(cfg.labels.iter().map(|(k, v)| Label::new(k, v)));
            }
        }
        if !self.site_label.is_empty() {
            labels.push(Label::new(&self.site_label, &id.site));
        }
        uplink_shared::model::Stamp {
            labels,
            rename_conflicts: self.conflicts == Conflicts::Exported,
            remove: Vec::new(),
        }
    }
}

/// When the gateway acknowledges an agent's batch.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AckPolicy {
    #[default]
    Stored,
    Delivered,
}

/// The freshness and gap ledger (see `ledger.rs`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Write the ledger every this long; `0s` disables it.
    pub interval: PromDuration,
    /// Labels added to every ledger series (e.g. the region or gateway name).
    pub labels: BTreeMap<String, String>,
    /// Stop reporting a site after it has been offline this long.
    pub forget_after: PromDuration,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            interval: PromDuration(Duration::from_secs(15)),
            labels: BTreeMap::new(),
            forget_after: PromDuration(Duration::from_secs(7 * 86_400)),
        }
    }
}

/// Hard limits on what agents may send.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest batch frame body (compressed payload plus header), in bytes.
    pub max_batch_bytes: NonZeroU32,
    /// Largest uncompressed batch payload, in bytes.
    pub max_uncompressed_bytes: NonZeroU32,
    /// Batches one agent may have in flight (QUIC streams).
    pub max_streams_per_agent: NonZeroU32,
    /// Series sets (one per target shape) one connection may define.
    pub max_series_sets_per_agent: NonZeroU32,
    /// Series in one set (one target's scrape).
    pub max_series_per_set: NonZeroU32,
    /// Time for the TLS handshake plus the hello.
    pub handshake_timeout: PromDuration,
    /// Gateway-side keep-alives; `0s` (default) leaves them to the agents.
    pub keep_alive: PromDuration,
    /// An agent connection silent this long is dead (agents ping every `keep_alive`).
    pub idle_timeout: PromDuration,
    /// How long one remote-write request is retried (with backoff) before the failure is
    /// logged; the data stays queued and the request is tried again after `max_backoff`.
    pub max_retry_duration: PromDuration,
    /// Connections one identity may hold at once; more are closed with code 8.
    pub max_connections_per_identity: NonZeroU32,
    /// Handshakes in progress above which a new one must first prove its address (a QUIC
    /// Retry, one more round trip): spoofed-source floods then cost no handshake state.
    /// `0`: always.
    pub retry_above_handshakes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        let n = |v| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        Limits {
            max_batch_bytes: n(16 << 20),
            max_uncompressed_bytes: n(64 << 20),
            max_streams_per_agent: n(16),
            max_series_sets_per_agent: n(100_000),
            max_series_per_set: n(2_000_000),
            handshake_timeout: PromDuration(Duration::from_secs(10)),
            keep_alive: PromDuration(Duration::ZERO),
            idle_timeout: PromDuration(Duration::from_secs(20)),
            max_retry_duration: PromDuration(Duration::from_secs(30)),
            max_connections_per_identity: n(4),
            retry_above_handshakes: 64,
        }
    }
}

/// One `remote_write:` entry: Prometheus's schema, plus Uplink's `status_policy` and
/// `paused_retry_interval`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteConfig {
    pub url: String,
    /// Name used in logs and metric labels; defaults to the URL's host and port.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_remote_timeout")]
    pub remote_timeout: PromDuration,
    /// Extra request headers; the remote-write protocol's own headers cannot be overridden.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    #[serde(default)]
    pub authorization: Option<Authorization>,
    #[serde(default)]
    pub oauth2: Option<OAuth2>,
    /// Deprecated Prometheus 2 forms of `authorization`.
    #[serde(default)]
    pub bearer_token: Option<Secret>,
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_config: TlsConfig,
    #[serde(default)]
    pub proxy_url: Option<String>,
    #[serde(default = "default_true")]
    pub follow_redirects: bool,
    #[serde(default = "default_true")]
    pub enable_http2: bool,
    /// Applied to each series before it is sent to this destination; a series they drop is
    /// counted (`reason="write_relabel"`).
    #[serde(default)]
    pub write_relabel_configs: Vec<RelabelConfig>,
    #[serde(default)]
    pub queue_config: QueueConfig,
    #[serde(default)]
    pub metadata_config: MetadataConfig,
    /// Send exemplars (off by default, as in Prometheus).
    #[serde(default)]
    pub send_exemplars: bool,
    /// Send native histogram samples with remote write 1.0 (off by default, as in Prometheus;
    /// 2.0 always carries them). When off, they are left out and counted
    /// (`reason="native_histograms_off"`).
    #[serde(default)]
    pub send_native_histograms: bool,
    /// Which message to send: `prometheus.WriteRequest` (remote write 1.0, the default) or
    /// `io.prometheus.write.v2.Request` (2.0; a destination answering 415, or 2xx without the
    /// `X-Prometheus-Remote-Write-*-Written` headers, is sent 1.0 from then on).
    #[serde(default)]
    pub protobuf_message: ProtobufMessage,
    /// Uplink: where remote write 2.0 requests carry a series' created (start) timestamp:
    /// `sample` (the default: `Sample.start_timestamp` and `Histogram.start_timestamp`, as
    /// Prometheus ≥ 3.8 reads them), `series` (`TimeSeries.created_timestamp`, as Prometheus 3.5
    /// to 3.7 read it), `both`, or `none`. Each Prometheus ignores the other's field.
    #[serde(default)]
    pub start_timestamps: uplink_shared::remote_write::v2::StartTimestamps,
    /// Uplink: what a response status means, overriding the defaults (see `forward.rs`); keys
    /// are a status (`"404"`) or a class (`"4xx"`, `"5xx"`).
    #[serde(default)]
    pub status_policy: BTreeMap<String, Action>,
    /// Uplink: how often a destination paused by a `pause` status (401, 403) is tried again.
    #[serde(default = "default_paused_retry")]
    pub paused_retry_interval: PromDuration,
    /// Uplink: how a backlog is delivered after an outage (see `fanout.rs`).
    #[serde(default)]
    pub replay: ReplayConfig,
}

/// `remote_write[].replay`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// The destination accepts out-of-order samples (a Prometheus or Mimir with an
    /// `out_of_order_time_window`, VictoriaMetrics): once it is further behind than
    /// `split_after`, what is stored from then on is delivered first, the backlog behind it.
    /// Off: strict log order (per-series order for any receiver).
    pub live_first: bool,
    /// How old the oldest undelivered entry must be before live data goes first.
    pub split_after: PromDuration,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            live_first: false,
            split_after: PromDuration(Duration::from_secs(30)),
        }
    }
}

fn default_remote_timeout() -> PromDuration {
    PromDuration(Duration::from_secs(30))
}

fn default_paused_retry() -> PromDuration {
    PromDuration(Duration::from_secs(30))
}

/// The remote-write message a destination is sent.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum ProtobufMessage {
    #[default]
    #[serde(rename = "prometheus.WriteRequest")]
    V1,
    #[serde(rename = "io.prometheus.write.v2.Request")]
    V2,
}

/// What a destination's response means for the request that got it.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Send the same request again after a backoff (honouring `Retry-After`).
    Retry,
    /// Split the request in halves and send each, down to single series.
    Split,
    /// As `split`, to isolate the series the destination refuses; those are quarantined.
    Bisect,
    /// Stop sending to this destination and alert; try again every `paused_retry_interval`.
    Pause,
    /// The destination has the data already (a duplicate): delivered.
    Done,
    /// Refused for good: drop and count (`reason="refused"`), and quarantine.
    Drop,
    /// Send remote write 1.0 from now on.
    Fallback,
}

/// Prometheus's `metadata_config`. `send`: with remote write 1.0, a family's metadata (TYPE,
/// HELP, UNIT) goes in the `metadata` field of the request holding the first batch of a target's
/// shape on an agent connection (so again after a change, a reconnect, or the agent's
/// `shipper.redefine_interval`) instead of every
/// `send_interval`; 2.0 always carries it inline, on every series of the family. The other
/// fields are accepted for compatibility.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    pub send: bool,
    pub send_interval: PromDuration,
    pub max_samples_per_send: u32,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            send: true,
            send_interval: PromDuration(Duration::from_secs(60)),
            max_samples_per_send: 500,
        }
    }
}

/// Prometheus's `queue_config`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Accepted for compatibility: the gateway's queue is on disk, bounded by `storage`.
    pub capacity: u32,
    /// Requests in flight at most, each carrying a disjoint set of series (by sending site on
    /// the fast path, by label hash when series are decoded), so per-series order holds.
    pub max_shards: NonZeroU32,
    pub min_shards: NonZeroU32,
    /// Samples per request at most. Stored entries (agent batches) are merged up to it; a larger
    /// entry goes alone unless the destination needs its series decoded (relabeling, 2.0,
    /// shards), which splits it.
    pub max_samples_per_send: NonZeroU32,
    /// Accepted for compatibility: the gateway sends as soon as entries are stored.
    pub batch_send_deadline: PromDuration,
    pub min_backoff: PromDuration,
    pub max_backoff: PromDuration,
    /// Retry on 429 (the default here; Prometheus's default is false). With false, a 429 drops
    /// the request, counted (`reason="rate_limited"`).
    pub retry_on_http_429: bool,
    /// Samples older than this when sent are dropped and counted (`reason="too_old"`): the
    /// oldest sample the destination accepts. `0s`: no limit.
    pub sample_age_limit: PromDuration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        let n = |v| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        QueueConfig {
            capacity: 10_000,
            max_shards: n(4),
            min_shards: n(1),
            min_backoff: PromDuration(Duration::from_millis(30)),
            max_backoff: PromDuration(Duration::from_secs(5)),
            retry_on_http_429: true,
            max_samples_per_send: n(2000),
            batch_send_deadline: PromDuration(Duration::from_secs(5)),
            sample_age_limit: PromDuration(Duration::ZERO),
        }
    }
}

impl RemoteWriteConfig {
    /// The HTTP client settings, gathered as the agent's scrape configs gather theirs.
    pub fn http_client(&self) -> HttpClientConfig {
        HttpClientConfig {
            basic_auth: self.basic_auth.clone(),
            authorization: self
                .authorization
                .clone()
                .or_else(|| Authorization::bearer(&self.bearer_token, &self.bearer_token_file)),
            oauth2: self.oauth2.clone(),
            tls_config: self.tls_config.clone(),
            proxy_url: self.proxy_url.clone(),
            follow_redirects: self.follow_redirects,
            enable_http2: self.enable_http2,
            compression: false,
            ..HttpClientConfig::default()
        }
    }

    /// Label value for metrics and logs.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            reqwest::Url::parse(&self.url)
                .ok()
                .and_then(|u| {
                    u.host_str()
                        .map(|h| format!("{h}:{}", u.port_or_known_default().unwrap_or(0)))
                })
                .unwrap_or_else(|| self.url.clone())
        })
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let mut cfg: Config = yaml::parse(path, &text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.tls.resolve(base);
        if let Some(t) = &mut cfg.tracing {
            t.resolve_paths(base);
        }
        if cfg.storage.directory.is_relative() {
            cfg.storage.directory = base.join(&cfg.storage.directory);
        }
        for rw in &mut cfg.remote_write {
            let mut http = rw.http_client();
            http.resolve(base);
            rw.basic_auth = http.basic_auth;
            rw.authorization = rw.authorization.as_ref().and(http.authorization);
            rw.bearer_token_file = rw
                .bearer_token_file
                .take()
                .map(|p| if p.is_relative() { base.join(p) } else { p });
            rw.oauth2 = http.oauth2;
            rw.tls_config = http.tls_config;
        }
        cfg.validate(path, &text)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let at = |needle: &str, field: String, message: String| match text
            .lines()
            .enumerate()
            .find_map(|(i, l)| l.find(needle).map(|c| (i + 1, c + 1)))
        {
            Some((line, column)) => ConfigError::Invalid {
                path: path.into(),
                line,
                column,
                field,
                message,
            },
            None => ConfigError::rule(path, field, message),
        };
        if let Some(Err(e)) = self.tracing.as_ref().map(|t| t.validate()) {
            let field = e.field();
            return Err(at(
                &format!("{field}:"),
                format!("tracing.{field}"),
                e.to_string(),
            ));
        }
        if let Err(message) = self.identity.check() {
            return Err(at("names:", "identity.names".into(), message));
        }
        if let Some(Err((field, message))) = self.ha.as_ref().map(|h| h.check()) {
            return Err(at(&format!("{field}:"), format!("ha.{field}"), message));
        }
        if let Some(Err((field, message))) = self.dedupe.as_ref().map(|d| d.etcd.check()) {
            return Err(at(&format!("{field}:"), format!("dedupe.{field}"), message));
        }
        if let (Some(d), Some(h)) = (&self.dedupe, self.ha.as_ref().and_then(|h| h.etcd.as_ref())) {
            let dp = d
                .etcd
                .prefix
                .as_deref()
                .unwrap_or(crate::dedupe::DEFAULT_PREFIX);
            let hp = h.prefix.as_deref().unwrap_or(crate::ha::DEFAULT_PREFIX);
            if dp.starts_with(hp) || hp.starts_with(dp) {
                return Err(at(
                    "dedupe:",
                    "dedupe.etcd.prefix".into(),
                    format!(
                        "{dp:?} overlaps ha.etcd.prefix {hp:?}: the cursors and the elections \
                         need key ranges of their own"
                    ),
                ));
            }
        }
        if self.remote_write.is_empty() {
            return Err(at(
                "remote_write",
                "remote_write".into(),
                "at least one destination is required".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, rw) in self.remote_write.iter().enumerate() {
            let q = &rw.queue_config;
            let url = reqwest::Url::parse(&rw.url).ok();
            if !matches!(url.as_ref().map(|u| u.scheme()), Some("http" | "https")) {
                return Err(at(
                    &rw.url,
                    format!("remote_write[{i}].url"),
                    format!("{:?} is not an http(s) URL", rw.url),
                ));
            }
            if !names.insert(rw.display_name()) {
                return Err(at(
                    &rw.url,
                    format!("remote_write[{i}].name"),
                    format!("duplicate destination name {:?}", rw.display_name()),
                ));
            }
            if let Err(e) = rw.http_client().validate() {
                let (needle, field) = match &e {
                    HttpClientError::Invalid { what, .. } => (*what, *what),
                    _ => ("remote_write", "http"),
                };
                return Err(at(
                    needle,
                    format!("remote_write[{i}].{field}"),
                    e.to_string(),
                ));
            }
            for name in rw.headers.keys() {
                if crate::forward::RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                    return Err(at(
                        name,
                        format!("remote_write[{i}].headers"),
                        format!("{name} is a reserved header and cannot be set"),
                    ));
                }
            }
            for key in rw.status_policy.keys() {
                if crate::forward::StatusPolicy::parse_key(key).is_none() {
                    return Err(at(
                        key,
                        format!("remote_write[{i}].status_policy"),
                        format!("{key:?} is neither a status (400..599) nor a class (4xx, 5xx)"),
                    ));
                }
            }
            if q.min_shards > q.max_shards {
                return Err(at(
                    "min_shards",
                    format!("remote_write[{i}].queue_config.min_shards"),
                    "must not exceed max_shards".into(),
                ));
            }
            if q.min_backoff > q.max_backoff {
                return Err(at(
                    "min_backoff",
                    format!("remote_write[{i}].queue_config.min_backoff"),
                    "must not exceed max_backoff".into(),
                ));
            }
            if rw.replay.live_first && rw.replay.split_after.0 < Duration::from_secs(1) {
                return Err(at(
                    "split_after",
                    format!("remote_write[{i}].replay.split_after"),
                    "must be at least 1s: a destination that is only a scrape behind is not \
                     an outage"
                        .into(),
                ));
            }
        }
        if let Some(t) = &self.tenancy {
            let known: std::collections::HashSet<String> =
                self.remote_write.iter().map(|r| r.display_name()).collect();
            for (id, tc) in &t.tenants {
                for d in tc.destinations.iter().flatten() {
                    if !known.contains(d) {
                        return Err(at(
                            d,
                            format!("tenancy.tenants.{id}.destinations"),
                            format!("no remote_write is named {d:?}"),
                        ));
                    }
                }
                for (k, v) in &tc.headers {
                    let name = reqwest::header::HeaderName::try_from(k.as_str());
                    let reserved =
                        crate::forward::RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str());
                    if name.is_err()
                        || reserved
                        || reqwest::header::HeaderValue::try_from(v.as_str()).is_err()
                    {
                        return Err(at(
                            k,
                            format!("tenancy.tenants.{id}.headers"),
                            format!("{k:?} cannot be set (invalid or reserved)"),
                        ));
                    }
                }
            }
            let names = [&t.tenant_label, &t.site_label]
                .into_iter()
                .filter(|n| !n.is_empty())
                .chain(t.tenants.values().flat_map(|c| c.labels.keys()));
            for name in names {
                if !uplink_shared::model::valid_label_name(name) || name.starts_with("__") {
                    return Err(at(
                        name,
                        "tenancy".into(),
                        format!("{name:?} is not a label name the gateway may stamp"),
                    ));
                }
            }
        }
        if self.storage.max_age.is_some_and(|a| a.0.is_zero()) {
            return Err(at(
                "max_age",
                "storage.max_age".into(),
                "must be positive (leave it unset for no age limit)".into(),
            ));
        }
        if !self.limits.keep_alive.0.is_zero()
            && self.limits.idle_timeout.0 <= self.limits.keep_alive.0
        {
            return Err(at(
                "idle_timeout",
                "limits.idle_timeout".into(),
                "must be greater than keep_alive".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen_address: 127.0.0.1:4443
tls: {cert_file: gw.crt, key_file: gw.key, ca_file: ca.crt}
storage: {directory: data, max_age: 6h}
remote_write:
  - url: http://127.0.0.1:9090/api/v1/write
    remote_timeout: 10s
    headers: {X-Scope-OrgID: team-a}
    queue_config: {min_backoff: 50ms}
"#;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("gateway.yml");
        std::fs::write(&p, text).expect("write");
        Config::load(&p)
    }

    #[test]
    fn identity_names_ha_and_tracing_are_checked_with_their_location() {
        let with = |extra: &str| format!("{GOOD}{extra}");
        let c = load(&with(
            "identity:\n  names:\n    - {source: dns_san, regex: '(?P<site>[a-z]+)\\.edge'}\n",
        ))
        .expect("valid");
        assert_eq!(c.identity.names.len(), 1);
        let e = load(&with(
            "identity:\n  names:\n    - {source: cn, regex: '(?P<tenant>.*)'}\n",
        ))
        .expect_err("no site group")
        .to_string();
        assert!(e.contains("gateway.yml:11:3: identity.names"), "{e}");
        let e = load(&with("ha: {failover_timeout: 10s, update_timeout: 10s}\n"))
            .expect_err("failover")
            .to_string();
        assert!(e.contains("ha.failover_timeout"), "{e}");
        let c = load(&with(
            "dedupe:\n  etcd: {endpoints: ['http://etcd:2379'], prefix: /x/}\n",
        ))
        .expect("valid");
        let etcd = c.dedupe.expect("dedupe").etcd;
        assert_eq!(etcd.prefix.as_deref(), Some("/x/"));
        let e = load(&with("dedupe:\n  etcd: {endpoints: []}\n"))
            .expect_err("no endpoints")
            .to_string();
        assert!(e.contains("gateway.yml:11:3: dedupe.etcd"), "{e}");
        let e = load(&with(
            "ha:\n  etcd: {endpoints: ['http://e:2379'], prefix: /u/}\n\
             dedupe:\n  etcd: {endpoints: ['http://e:2379'], prefix: /u/d/}\n",
        ))
        .expect_err("overlapping prefixes")
        .to_string();
        assert!(e.contains("dedupe.etcd.prefix"), "{e}");
        load(&with(
            "ha:\n  etcd: {endpoints: ['http://e:2379']}\n\
             dedupe:\n  etcd: {endpoints: ['http://e:2379']}\n",
        ))
        .expect("the default prefixes are apart");
        let e = load(&GOOD.replace(
            "remote_timeout: 10s",
            "remote_timeout: 10s\n    replay: {live_first: true, split_after: 0s}",
        ))
        .expect_err("split_after")
        .to_string();
        assert!(e.contains("remote_write[0].replay.split_after"), "{e}");
        let e = load(&with(
            "tracing: {endpoint: otel:4318, sampling_fraction: 3}\n",
        ))
        .expect_err("fraction")
        .to_string();
        assert!(e.contains("tracing.sampling_fraction"), "{e}");
    }

    #[test]
    fn loads_and_rejects_with_locations() {
        let c = load(GOOD).expect("valid");
        assert_eq!(c.remote_write[0].display_name(), "127.0.0.1:9090");
        assert_eq!(
            c.remote_write[0].queue_config.max_backoff,
            PromDuration(Duration::from_secs(5))
        );
        let e = load(&GOOD.replace("remote_timeout: 10s", "remote_timeout: ten"))
            .expect_err("bad duration")
            .to_string();
        assert!(e.contains("gateway.yml:7:"), "{e}");
        assert!(e.contains("remote_write[0].remote_timeout"), "{e}");
        let e = load(&GOOD.replace("http://127", "ftp://127"))
            .expect_err("bad url")
            .to_string();
        assert!(e.contains("gateway.yml:6:10: remote_write[0].url"), "{e}");
        let e = load(&GOOD.replace("listen_address:", "listen_adress:"))
            .expect_err("unknown")
            .to_string();
        assert!(e.contains("gateway.yml:2:1"), "{e}");
        assert!(c.storage.directory.is_absolute() && c.storage.directory.ends_with("data"));
        assert!(c.storage.fsync);
        assert_eq!(
            c.remote_write[0].queue_config.max_samples_per_send.get(),
            2000
        );
        let e = load(&GOOD.replace("max_age: 6h", "max_age: 0s"))
            .expect_err("zero age")
            .to_string();
        assert!(e.contains("storage.max_age"), "{e}");
        let e = load(&GOOD.replace("X-Scope-OrgID", "User-Agent"))
            .expect_err("reserved header")
            .to_string();
        assert!(
            e.contains("remote_write[0].headers") && e.contains("reserved"),
            "{e}"
        );
        let e = load(&GOOD.replace("min_backoff: 50ms", "max_shards: 0"))
            .expect_err("zero shards")
            .to_string();
        assert!(
            e.contains("gateway.yml:9:") && e.contains("max_shards"),
            "{e}"
        );
        let full = GOOD.replace(
            "    queue_config: {min_backoff: 50ms}\n",
            "    queue_config: {min_backoff: 50ms, max_shards: 8, sample_age_limit: 1h}\n    \
             protobuf_message: io.prometheus.write.v2.Request\n    \
             authorization: {credentials_file: token}\n    \
             write_relabel_configs: [{action: labeldrop, regex: tmp_.*}]\n    \
             status_policy: {\"404\": pause, 4xx: drop}\n    \
             metadata_config: {send: false}\n",
        );
        let c = load(&full).expect("full schema");
        let rw = &c.remote_write[0];
        assert_eq!(rw.protobuf_message, ProtobufMessage::V2);
        assert!(
            rw.authorization
                .as_ref()
                .and_then(|a| a.credentials_file.as_ref())
                .is_some_and(|p| p.is_absolute())
        );
        assert_eq!(rw.status_policy.get("404"), Some(&Action::Pause));
        let e = load(&full.replace("4xx: drop", "2xx: drop"))
            .expect_err("bad policy key")
            .to_string();
        assert!(e.contains("status_policy"), "{e}");
        let e = load(&full.replace("action: labeldrop", "action: explode"))
            .expect_err("bad relabel action")
            .to_string();
        assert!(e.contains("write_relabel_configs"), "{e}");
        let e = load(&GOOD.replace("storage: {directory: data, max_age: 6h}\n", ""))
            .expect_err("storage is required")
            .to_string();
        assert!(e.contains("storage"), "{e}");
    }
}
