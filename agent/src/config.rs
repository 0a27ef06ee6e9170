//! Agent configuration: a Prometheus configuration file plus one `uplink:` section.
//!
//! The Prometheus part follows Prometheus 3's schema, defaults and derived defaults (`global`,
//! `scrape_configs`, `scrape_config_files`), up to Prometheus 3.14's keys; with
//! `uplink.compatibility: prometheus2` it follows Prometheus 2.42 instead (see
//! [`Compatibility`]). `tracing` is honoured (OTLP traces of the agent's shipping, see
//! `uplink_shared::traces`). Sections Prometheus knows but an agent has no use for
//! (`rule_files`, `alerting`, `remote_write`, `remote_read`, `storage`, `otlp`, `runtime`) are
//! accepted and ignored, and so are the keys listed by [`Config::accepted_only`]: each load
//! names them in one warning, so an existing `prometheus.yml` loads unchanged. A discovery
//! mechanism the agent does not implement (`consul_sd_configs`, ...) is refused, naming it,
//! its job and the mechanisms the agent has. Any other unknown key is an error naming
//! file:line:column and the field, as is every invalid value.
//!
//! A file loads exactly when Prometheus 3.5's agent loads it, with its derived values (`0s`
//! intervals and timeouts and `0` limits are unset, the global timeout is capped at the global
//! interval, empty secrets and files are unset, `metrics_path` may lack its `/`), except for
//! the deliberate differences listed in `docs/configuration.md` ("Prometheus 3 compatibility of
//! the configuration") and checked by `loadtest/tests/config_differential.rs`: unimplemented
//! discovery mechanisms, keys added after 3.5, Prometheus 3.7's escaping for a job that sets
//! only `legacy`, SD `refresh_interval: 0s`, schemes other than http(s), and invalid global
//! name schemes even without jobs. [`crate::effective`] prints the result as Prometheus does.

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
    /// More scrape configurations: globs, relative to this file's directory, each matching
    /// files of the form `scrape_configs: [...]` (Prometheus ≥ 2.43).
    #[serde(default)]
    pub scrape_config_files: Vec<String>,
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
    /// The OTLP receiver's translation settings (Prometheus ≥ 2.55).
    #[serde(default)]
    pub otlp: Option<serde_yaml::Value>,
    /// Go runtime settings (`gogc`, Prometheus ≥ 2.53).
    #[serde(default)]
    pub runtime: Option<serde_yaml::Value>,
    /// OTLP traces, in Prometheus's schema.
    #[serde(default)]
    pub tracing: Option<TracingConfig>,
    /// From `--enable-feature` (not the file).
    #[serde(skip)]
    pub features: Features,
    /// The Prometheus file as written (YAML, aliases resolved): what the effective
    /// configuration echoes as given ([`crate::effective`]). Null when not loaded from a file.
    #[serde(skip)]
    pub document: serde_yaml::Value,
}

/// The `--enable-feature` flags the agent knows, as in Prometheus.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// `native-histograms`: Prometheus 3.5's switch for native histogram ingestion, which also
    /// makes the default `scrape_protocols` ask for the protobuf format first (the default of
    /// `scrape_native_histograms`, Prometheus ≥ 3.8, becomes true).
    pub native_histograms: bool,
    /// `extra-scrape-metrics`: `scrape_timeout_seconds`, `scrape_sample_limit` and
    /// `scrape_body_size_bytes` for every target (the default of `extra_scrape_metrics`).
    pub extra_scrape_metrics: bool,
    /// `auto-reload-config`: reload when the configuration files change, checked every
    /// `--config.auto-reload-interval` (Prometheus 3.0 to 3.11; `--config.auto-reload` since).
    pub auto_reload_config: bool,
    /// `expand-external-labels`: Prometheus 2's switch for `${VAR}` in external label values,
    /// always on in Prometheus 3 (only read in the Prometheus 2 mode).
    pub expand_external_labels: bool,
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
                "extra-scrape-metrics" => f.extra_scrape_metrics = true,
                "auto-reload-config" => f.auto_reload_config = true,
                "expand-external-labels" => f.expand_external_labels = true,
                "" => {}
                other => unknown.push(other.to_owned()),
            }
        }
        (f, unknown)
    }
}

/// Prometheus's `global:` block.
///
/// As read, an unset (or `0s`) duration is zero; loading then derives Prometheus's values
/// ([`GlobalConfig::derive`]): a `1m` interval and evaluation interval, and a `10s` timeout
/// capped at the interval.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default = "GlobalConfig::unset")]
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
    /// `utf8` (Prometheus 3's default) or `legacy`: which metric and label names are valid
    /// (after relabeling), for external labels and relabel targets too.
    pub metric_name_validation_scheme: Option<String>,
    /// What the `Accept` header asks targets to do with names that are not legacy-valid:
    /// `allow-utf-8`, `underscores`, `dots` or `values` (derived from the validation scheme
    /// when unset).
    pub metric_name_escaping_scheme: Option<String>,
    /// Defaults of the native-histogram keys of every job (Prometheus 3.4, 3.5 and 3.8).
    pub scrape_native_histograms: Option<bool>,
    pub always_scrape_classic_histograms: Option<bool>,
    pub convert_classic_histograms_to_nhcb: Option<bool>,
    /// Default of every job's `extra_scrape_metrics` (Prometheus ≥ 3.10).
    pub extra_scrape_metrics: Option<bool>,
    /// Default of every job's `scrape_failure_log_file`.
    pub scrape_failure_log_file: Option<String>,
    /// Accepted so that Prometheus files load; not used by an agent.
    pub rule_query_offset: Option<PromDuration>,
    pub query_log_file: Option<String>,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        let mut g = GlobalConfig::unset();
        g.derive();
        g
    }
}

impl GlobalConfig {
    /// Prometheus's default interval, and evaluation interval.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
    /// Prometheus's default timeout (capped at the interval).
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// The block as read when nothing is set (durations zero: unset).
    fn unset() -> Self {
        GlobalConfig {
            scrape_interval: PromDuration(Duration::ZERO),
            scrape_timeout: PromDuration(Duration::ZERO),
            evaluation_interval: PromDuration(Duration::ZERO),
            external_labels: BTreeMap::new(),
            sample_limit: 0,
            body_size_limit: ByteSize(0),
            label_limit: 0,
            label_name_length_limit: 0,
            label_value_length_limit: 0,
            target_limit: 0,
            keep_dropped_targets: 0,
            scrape_protocols: None,
            metric_name_validation_scheme: None,
            metric_name_escaping_scheme: None,
            scrape_native_histograms: None,
            always_scrape_classic_histograms: None,
            convert_classic_histograms_to_nhcb: None,
            extra_scrape_metrics: None,
            scrape_failure_log_file: None,
            rule_query_offset: None,
            query_log_file: None,
        }
    }

    /// Prometheus's derived values for unset (zero) durations: `1m` intervals, and a `10s`
    /// timeout capped at the interval. An explicit timeout above the interval stays (and is
    /// refused by validation).
    pub fn derive(&mut self) {
        if self.scrape_interval.0.is_zero() {
            self.scrape_interval = PromDuration(Self::DEFAULT_INTERVAL);
        }
        if self.scrape_timeout.0.is_zero() {
            self.scrape_timeout = PromDuration(Self::DEFAULT_TIMEOUT.min(self.scrape_interval.0));
        }
        if self.evaluation_interval.0.is_zero() {
            self.evaluation_interval = PromDuration(Self::DEFAULT_INTERVAL);
        }
    }
}

/// One entry of `scrape_configs:`. Discovery mechanisms and relabeling slot in here.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScrapeConfig {
    pub job_name: String,
    /// The `scrape_config_files` file the job comes from (`None`: the main file); its relative
    /// paths resolve against that file's directory.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The global value when unset or `0s`.
    #[serde(default, deserialize_with = "non_zero")]
    pub scrape_interval: Option<PromDuration>,
    #[serde(default, deserialize_with = "non_zero")]
    pub scrape_timeout: Option<PromDuration>,
    /// A path without its leading `/` (accepted by Prometheus, whose URLs add it) is given
    /// one when loaded.
    #[serde(default = "default_metrics_path")]
    pub metrics_path: String,
    /// `http` or `https`, in any case (Go lower-cases a URL's scheme).
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
    #[serde(default, deserialize_with = "crate::http_client::non_empty_secret")]
    pub bearer_token: Option<crate::http_client::Secret>,
    #[serde(default, deserialize_with = "crate::http_client::non_empty")]
    pub bearer_token_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "crate::http_client::non_empty")]
    pub no_proxy: Option<String>,
    #[serde(default)]
    pub proxy_from_environment: bool,
    #[serde(default)]
    pub proxy_connect_header: BTreeMap<String, Vec<crate::http_client::Secret>>,
    #[serde(default)]
    pub http_headers: Option<BTreeMap<String, crate::http_client::HttpHeader>>,
    /// Where failed scrapes are logged, one JSON line each (the global file when unset).
    #[serde(default)]
    pub scrape_failure_log_file: Option<String>,
    /// The parser for a response without a usable `Content-Type` (Prometheus 3 fails such a
    /// scrape when this is unset or empty).
    #[serde(default, deserialize_with = "optional_protocol")]
    pub fallback_scrape_protocol: Option<ScrapeProtocol>,
    /// Prometheus 2.45 to 2.55's name of `always_scrape_classic_histograms`; Prometheus 3
    /// refuses it, and so does the agent unless in the Prometheus 2 mode.
    #[serde(default)]
    pub scrape_classic_histograms: Option<bool>,
    /// Native-histogram keys (the global values when unset; see `scrape::histograms`).
    #[serde(default)]
    pub scrape_native_histograms: Option<bool>,
    #[serde(default)]
    pub always_scrape_classic_histograms: Option<bool>,
    #[serde(default)]
    pub convert_classic_histograms_to_nhcb: Option<bool>,
    #[serde(default)]
    pub native_histogram_bucket_limit: Option<u64>,
    #[serde(default)]
    pub native_histogram_min_bucket_factor: Option<f64>,
    /// `scrape_timeout_seconds`, `scrape_sample_limit` and `scrape_body_size_bytes` too.
    #[serde(default)]
    pub extra_scrape_metrics: Option<bool>,
    /// The job's name validation and escaping schemes (see [`GlobalConfig`]).
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
    #[serde(default, deserialize_with = "crate::http_client::non_empty")]
    pub proxy_url: Option<String>,
    #[serde(default = "default_true")]
    pub follow_redirects: bool,
    #[serde(default = "default_true")]
    pub enable_http2: bool,
}

/// A duration where `0s` means unset, as in Prometheus.
fn non_zero<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PromDuration>, D::Error> {
    Ok(Option::<PromDuration>::deserialize(d)?.filter(|p| !p.0.is_zero()))
}

/// An optional scrape protocol where, as in Prometheus, the empty string is unset.
fn optional_protocol<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<ScrapeProtocol>, D::Error> {
    match Option::<String>::deserialize(d)?.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => ScrapeProtocol::parse(s)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(ScrapeProtocol::unknown(s))),
    }
}

impl ScrapeConfig {
    /// The directory the job's relative paths resolve against: its file's, else `main`.
    pub fn base(&self, main: &Path) -> PathBuf {
        self.source
            .as_deref()
            .and_then(Path::parent)
            .map_or_else(|| main.to_path_buf(), Path::to_path_buf)
    }

    /// The job's HTTP client settings (`bearer_token*` become `authorization`).
    pub fn http_client(&self) -> HttpClientConfig {
        let bearer = Authorization::bearer(&self.bearer_token, &self.bearer_token_file);
        HttpClientConfig {
            basic_auth: self.basic_auth.clone(),
            authorization: self.authorization.clone().or(bearer),
            oauth2: self.oauth2.clone(),
            tls_config: self.tls_config.clone(),
            proxy_url: self.proxy_url.clone(),
            no_proxy: self.no_proxy.clone(),
            proxy_from_environment: self.proxy_from_environment,
            proxy_connect_header: self.proxy_connect_header.clone(),
            http_headers: self.http_headers.clone().unwrap_or_default(),
            follow_redirects: self.follow_redirects,
            enable_http2: self.enable_http2,
            compression: self.enable_compression,
        }
    }

    /// What loading changes in a job as read: a leading `/` for its `metrics_path` (Prometheus
    /// takes a path without one, and its URLs add it).
    fn normalize(&mut self) {
        if !self.metrics_path.starts_with('/') {
            self.metrics_path.insert(0, '/');
        }
    }

    /// Keys of this job that the agent accepts but does not act on, when set.
    pub fn accepted_only(&self) -> Vec<&'static str> {
        self.http_client().accepted_only()
    }
}

/// Which Prometheus the agent behaves as (`uplink.compatibility`).
///
/// `prometheus3` (the default) scrapes, names and writes series as Prometheus 3 does (the 3.5
/// LTS release is the reference). `prometheus2` keeps Prometheus 2.42's behaviour, for fleets
/// that must keep the series identity they have: `le` and `quantile` values as exposed
/// (`le="1"`, not `le="1.0"`), a default port in `instance`, Prometheus 2.42's `Accept` header
/// and text parser for any `Content-Type`, legacy metric and label names only, external labels
/// expanded only with `--enable-feature=expand-external-labels`, `scrape_classic_histograms`
/// accepted. `docs/migrating.md` lists every difference.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compatibility {
    #[default]
    Prometheus3,
    Prometheus2,
}

impl Compatibility {
    /// The exposition grammar a scrape body is read with.
    pub fn dialect(self) -> crate::scrape::parse::Dialect {
        match self {
            Compatibility::Prometheus3 => crate::scrape::parse::Dialect::Prometheus3,
            Compatibility::Prometheus2 => crate::scrape::parse::Dialect::Prometheus2,
        }
    }
}

/// `metric_name_validation_scheme`: which metric and label names are valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameValidation {
    /// Any non-empty UTF-8 name (Prometheus 3's default).
    Utf8,
    /// `[a-zA-Z_:][a-zA-Z0-9_:]*` for metric names, `[a-zA-Z_][a-zA-Z0-9_]*` for label names.
    Legacy,
}

impl NameValidation {
    fn parse(s: &str) -> Option<NameValidation> {
        match s {
            "utf8" => Some(NameValidation::Utf8),
            "legacy" => Some(NameValidation::Legacy),
            _ => None,
        }
    }

    /// How Prometheus shows it in the effective configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            NameValidation::Utf8 => "utf8",
            NameValidation::Legacy => "legacy",
        }
    }

    /// Whether `name` is a valid label name under this scheme.
    pub fn label_name(self, name: &str) -> bool {
        match self {
            NameValidation::Utf8 => !name.is_empty(),
            NameValidation::Legacy => valid_label_name(name),
        }
    }

    /// Whether `name` is a valid metric name under this scheme.
    pub fn metric_name(self, name: &str) -> bool {
        match self {
            NameValidation::Utf8 => !name.is_empty(),
            NameValidation::Legacy => uplink_shared::model::valid_metric_name(name),
        }
    }
}

/// `metric_name_escaping_scheme`: what the `Accept` header asks a target to do with names that
/// are not legacy-valid (the target escapes them, Prometheus never does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escaping {
    AllowUtf8,
    Underscores,
    Dots,
    Values,
}

impl Escaping {
    fn parse(s: &str) -> Option<Escaping> {
        match s {
            "allow-utf-8" => Some(Escaping::AllowUtf8),
            "underscores" => Some(Escaping::Underscores),
            "dots" => Some(Escaping::Dots),
            "values" => Some(Escaping::Values),
            _ => None,
        }
    }

    /// The value of the `escaping` parameter, and of the configuration key.
    pub fn as_str(self) -> &'static str {
        match self {
            Escaping::AllowUtf8 => "allow-utf-8",
            Escaping::Underscores => "underscores",
            Escaping::Dots => "dots",
            Escaping::Values => "values",
        }
    }
}

/// Exposition formats, as named in `scrape_protocols` (case-sensitive, as in Prometheus).
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

impl ScrapeProtocol {
    /// Every protocol, sorted by name (as Prometheus lists them in its errors).
    pub const ALL: [ScrapeProtocol; 5] = [
        ScrapeProtocol::OpenMetricsText0_0_1,
        ScrapeProtocol::OpenMetricsText1_0_0,
        ScrapeProtocol::PrometheusProto,
        ScrapeProtocol::PrometheusText0_0_4,
        ScrapeProtocol::PrometheusText1_0_0,
    ];

    /// The name used in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            ScrapeProtocol::PrometheusProto => "PrometheusProto",
            ScrapeProtocol::OpenMetricsText0_0_1 => "OpenMetricsText0.0.1",
            ScrapeProtocol::OpenMetricsText1_0_0 => "OpenMetricsText1.0.0",
            ScrapeProtocol::PrometheusText0_0_4 => "PrometheusText0.0.4",
            ScrapeProtocol::PrometheusText1_0_0 => "PrometheusText1.0.0",
        }
    }

    fn parse(s: &str) -> Option<ScrapeProtocol> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Prometheus's message for a name it does not know.
    fn unknown(s: &str) -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|p| p.as_str()).collect();
        format!(
            "unknown scrape protocol {s}, supported: [{}]",
            names.join(" ")
        )
    }
}

/// A byte count in Prometheus's base-2 units (`512KB`, `1.5MB`, `10MiB`, `1GB512MB`; `0`),
/// read as Prometheus reads it: `KB` and `KiB` are both 1024 bytes, fractions are allowed,
/// units are case-sensitive, and a number without a unit other than `0` is refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        // The IEC units, else the traditional ones (one kind per value, as alecthomas/units).
        const IEC: [(&str, u32); 7] = [
            ("B", 0),
            ("KiB", 1),
            ("MiB", 2),
            ("GiB", 3),
            ("TiB", 4),
            ("PiB", 5),
            ("EiB", 6),
        ];
        const OLD: [(&str, u32); 7] = [
            ("B", 0),
            ("KB", 1),
            ("MB", 2),
            ("GB", 3),
            ("TB", 4),
            ("PB", 5),
            ("EB", 6),
        ];
        Self::parse_with(s, &IEC).or_else(|_| Self::parse_with(s, &OLD))
    }

    fn parse_with(orig: &str, units: &[(&str, u32)]) -> Result<ByteSize, String> {
        let invalid = || format!("units: invalid {orig}");
        let s = orig.strip_prefix('+').unwrap_or(orig);
        if s.starts_with('-') {
            return Err(format!("{orig:?}: a size must not be negative"));
        }
        if s == "0" {
            return Ok(ByteSize(0));
        }
        if s.is_empty() {
            return Err(invalid());
        }
        let mut rest = s;
        let mut total = 0f64;
        while !rest.is_empty() {
            let int = rest.bytes().take_while(u8::is_ascii_digit).count();
            let mut value: f64 = rest[..int].parse().unwrap_or(0.0);
            rest = &rest[int..];
            let mut frac = 0;
            if let Some(after) = rest.strip_prefix('.') {
                frac = after.bytes().take_while(u8::is_ascii_digit).count();
                if frac > 0 {
                    let digits: f64 = after[..frac].parse().map_err(|_| invalid())?;
                    value += digits / 10f64.powi(frac as i32);
                }
                rest = &after[frac..];
            }
            if int == 0 && frac == 0 {
                return Err(invalid());
            }
            let unit_len = rest
                .find(|c: char| c == '.' || c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let power = units
                .iter()
                .find(|(u, _)| *u == unit)
                .map(|(_, p)| *p)
                .ok_or_else(|| format!("units: unknown unit {unit} in {orig}"))?;
            total += value * 1024f64.powi(power as i32);
        }
        if total >= u64::MAX as f64 {
            return Err("units: overflow parsing unit".into());
        }
        Ok(ByteSize(total as u64))
    }
}

impl std::fmt::Display for ByteSize {
    /// As Prometheus prints sizes: IEC units, largest first (`1MiB476KiB`, `0B`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        let mut n = self.0;
        let mut parts = Vec::new();
        for unit in UNITS {
            if n % 1024 != 0 || (unit == "B" && n == 0) {
                parts.push(format!("{}{unit}", n % 1024));
            }
            n /= 1024;
            if n == 0 {
                break;
            }
        }
        parts.reverse();
        f.write_str(&parts.concat())
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
        let text = match Raw::deserialize(d)? {
            Raw::N(n) => n.to_string(),
            Raw::S(s) => s,
        };
        ByteSize::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn default_metrics_path() -> String {
    "/metrics".into()
}
fn default_true() -> bool {
    true
}

/// A job's `scheme`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

    /// `http` or `https` in any case, as a Go URL takes its scheme (Prometheus does not check
    /// it when loading; any other scheme fails every scrape, so the agent refuses it).
    fn parse(s: &str) -> Option<Scheme> {
        Some(match s.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return None,
        })
    }
}

impl<'de> Deserialize<'de> for Scheme {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Scheme::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "scheme {s:?} cannot be scraped: it must be http or https"
            ))
        })
    }
}

/// `static_configs:` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    /// A group may have labels only (it then has no target).
    #[serde(default)]
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
    /// `prometheus3` (default) or `prometheus2`: see [`Compatibility`].
    #[serde(default)]
    pub compatibility: Compatibility,
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
    /// `--config.auto-reload-interval`, when automatic reloading is on
    /// (`--enable-feature=auto-reload-config` or `--config.auto-reload`).
    pub auto_reload: Option<Duration>,
}

impl Source {
    /// A checksum of everything a reload would read: the Prometheus file, the uplink file and
    /// every file `scrape_config_files` matches now, each with its path (Prometheus's
    /// `GenerateChecksum`, over the files an agent reads). An unreadable file counts as empty.
    pub fn checksum(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut add = |p: &Path| {
            p.hash(&mut h);
            std::fs::read(p).unwrap_or_default().hash(&mut h);
        };
        add(&self.prometheus);
        if let Some(u) = &self.uplink {
            add(u);
        }
        let text = std::fs::read_to_string(&self.prometheus).unwrap_or_default();
        #[derive(Deserialize, Default)]
        struct Includes {
            #[serde(default)]
            scrape_config_files: Vec<String>,
        }
        let includes: Includes = serde_yaml::from_str::<serde_yaml::Value>(&text)
            .ok()
            .and_then(|v| serde_yaml::from_value(v).ok())
            .unwrap_or_default();
        let dir = self.prometheus.parent().unwrap_or(Path::new("."));
        for pattern in &includes.scrape_config_files {
            for file in crate::discovery::file::expand_pattern(pattern, dir).unwrap_or_default() {
                add(&file);
            }
        }
        h.finish()
    }
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
        let mut cfg: Config =
            yaml::parse(path, &text).map_err(|e| unimplemented_discovery(e, &text))?;
        cfg.document = yaml::parse(path, &text)?;
        if let Some(m) = cfg.document.as_mapping_mut() {
            m.remove("uplink");
        }
        cfg.global.derive();
        cfg.scrape_configs
            .iter_mut()
            .for_each(ScrapeConfig::normalize);
        if let Some(t) = &mut cfg.tracing {
            t.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        }
        cfg.uplink.tls.resolve(&base);
        if cfg.uplink.queue.directory.is_relative() {
            cfg.uplink.queue.directory = base.join(&cfg.uplink.queue.directory);
        }
        cfg.features = src.features.clone();
        if cfg.compatibility() == Compatibility::Prometheus3 || cfg.features.expand_external_labels
        {
            for value in cfg.global.external_labels.values_mut() {
                *value = expand_env(value);
            }
        }
        cfg.validate(path, &text)?;
        cfg.include_scrape_config_files(path, &text)?;
        Ok(cfg)
    }

    /// The files `scrape_config_files` matches now (relative to `main`'s directory), sorted
    /// within each pattern; a pattern with wildcards outside its last path element is an error,
    /// as in Prometheus.
    pub fn scrape_config_file_paths(&self, main: &Path) -> Result<Vec<PathBuf>, ConfigError> {
        let dir = main.parent().unwrap_or(Path::new("."));
        let mut out = Vec::new();
        for (i, pattern) in self.scrape_config_files.iter().enumerate() {
            let (parent, _) = pattern.rsplit_once('/').unwrap_or(("", pattern));
            let bad = parent.contains(['*', '?', '[']);
            let files = (!bad)
                .then(|| crate::discovery::file::expand_pattern(pattern, dir).ok())
                .flatten()
                .ok_or_else(|| {
                    ConfigError::rule(
                        main,
                        format!("scrape_config_files[{i}]"),
                        format!("invalid scrape config file path {pattern:?}"),
                    )
                })?;
            out.extend(files);
        }
        Ok(out)
    }

    /// Loads the jobs of `scrape_config_files` (each file holds only `scrape_configs`), checks
    /// them against this file's `global` section with errors located in their own file, and
    /// appends them. Job names must be unique across all files; the error names the file of the
    /// first definition, as Prometheus does.
    fn include_scrape_config_files(
        &mut self,
        main: &Path,
        main_text: &str,
    ) -> Result<(), ConfigError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct ScrapeConfigs {
            #[serde(default)]
            scrape_configs: Vec<ScrapeConfig>,
        }
        let mut origin: std::collections::HashMap<String, Option<PathBuf>> = self
            .scrape_configs
            .iter()
            .map(|j| (j.job_name.clone(), None))
            .collect();
        let files = self.scrape_config_file_paths(main).map_err(|e| match e {
            ConfigError::Rule {
                path,
                field,
                message,
            } => {
                let i: usize = field
                    .trim_start_matches("scrape_config_files[")
                    .trim_end_matches(']')
                    .parse()
                    .unwrap_or(0);
                let pattern = self.scrape_config_files.get(i).map_or("", String::as_str);
                match locate(main_text, pattern).filter(|_| !pattern.is_empty()) {
                    Some((line, column)) => ConfigError::Invalid {
                        path,
                        line,
                        column,
                        field,
                        message,
                    },
                    None => ConfigError::Rule {
                        path,
                        field,
                        message,
                    },
                }
            }
            e => e,
        })?;
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Read {
                path: file.clone(),
                source,
            })?;
            if text.trim().is_empty() {
                continue;
            }
            let mut included: ScrapeConfigs =
                yaml::parse(&file, &text).map_err(|e| unimplemented_discovery(e, &text))?;
            included
                .scrape_configs
                .iter_mut()
                .for_each(ScrapeConfig::normalize);
            let mut part = Config {
                scrape_configs: included.scrape_configs,
                scrape_config_files: Vec::new(),
                ..self.clone()
            };
            for job in &mut part.scrape_configs {
                job.source = Some(file.clone());
            }
            part.validate(&file, &text)?;
            for (i, job) in part.scrape_configs.into_iter().enumerate() {
                if let Some(first) = origin.get(&job.job_name) {
                    let first = match first {
                        None => "main config file".to_owned(),
                        Some(p) => format!("{:?}", p.display().to_string()),
                    };
                    let field = format!("scrape_configs[{i}].job_name");
                    let message = format!(
                        "found multiple scrape configs with job name {:?}, first found in {first}",
                        job.job_name
                    );
                    return Err(match job_position(&text, i, &job.job_name, 0) {
                        Some((line, column)) => ConfigError::Invalid {
                            path: file.clone(),
                            line,
                            column,
                            field,
                            message,
                        },
                        None => ConfigError::rule(&file, field, message),
                    });
                }
                origin.insert(job.job_name.clone(), Some(file.clone()));
                self.scrape_configs.push(job);
            }
        }
        Ok(())
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
                    "global scrape timeout greater than scrape interval ({} > {})",
                    g.scrape_timeout, g.scrape_interval
                ),
            ));
        }
        let scheme = self.global_validation();
        if let Some((key, message)) = schemes_error(
            "global",
            &g.metric_name_validation_scheme,
            &g.metric_name_escaping_scheme,
        ) {
            return Err(at(&format!("{key}:"), format!("global.{key}"), message));
        }
        if scheme == NameValidation::Legacy && self.global_escaping() == Escaping::AllowUtf8 {
            return Err(at(
                "metric_name_escaping_scheme:",
                "global.metric_name_escaping_scheme".into(),
                UTF8_ESCAPING_NEEDS_UTF8.into(),
            ));
        }
        // Names in the file follow Prometheus 3's UTF-8 rules whatever the validation scheme
        // (a name the scheme refuses fails the scrape, as in Prometheus 3.5), or Prometheus 2's
        // legacy rules in the Prometheus 2 mode.
        let names = match self.compatibility() {
            Compatibility::Prometheus3 => NameValidation::Utf8,
            Compatibility::Prometheus2 => NameValidation::Legacy,
        };
        for name in g.external_labels.keys() {
            if !names.label_name(name) {
                return Err(at(
                    &format!("{name}:"),
                    format!("global.external_labels.{name}"),
                    format!("{name:?} is not a valid label name"),
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
            // Errors of a job point at the key in the job's own lines, else at its job_name.
            let position = |i: usize, name: &str| {
                let earlier = self.scrape_configs[..i]
                    .iter()
                    .filter(|j| j.job_name == name)
                    .count();
                job_position(text, i, name, earlier)
            };
            let start = position(i, &job.job_name);
            let end = self
                .scrape_configs
                .get(i + 1)
                .and_then(|next| position(i + 1, &next.job_name))
                .map(|(line, _)| line);
            let outer = &at;
            let at = |needle: &str, field: String, message: String| {
                let found = start
                    .and_then(|(line, _)| locate_within(text, needle, line, end))
                    .or(start);
                match found {
                    Some((line, column)) => ConfigError::Invalid {
                        path: path.into(),
                        line,
                        column,
                        field,
                        message,
                    },
                    None => outer(needle, field, message),
                }
            };
            let needle = "job_name:";
            let field = |f: &str| format!("scrape_configs[{i}].{f}");
            if let Err(message) = check_protocols(job.scrape_protocols.as_deref()) {
                return Err(at(needle, field("scrape_protocols"), message));
            }
            if job.scrape_classic_histograms.is_some()
                && self.compatibility() == Compatibility::Prometheus3
            {
                return Err(at(
                    "scrape_classic_histograms:",
                    field("scrape_classic_histograms"),
                    "field scrape_classic_histograms not found in type config.ScrapeConfig \
                     (Prometheus 3 renamed it always_scrape_classic_histograms)"
                        .into(),
                ));
            }
            if let Some((key, message)) = schemes_error(
                "scrape config",
                &job.metric_name_validation_scheme,
                &job.metric_name_escaping_scheme,
            ) {
                return Err(at(&format!("{key}:"), field(key), message));
            }
            if self.validation(job) == NameValidation::Legacy
                && self.escaping(job) == Escaping::AllowUtf8
            {
                return Err(at(
                    needle,
                    field("metric_name_escaping_scheme"),
                    UTF8_ESCAPING_NEEDS_UTF8.into(),
                ));
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
                    needle,
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
                    needle,
                    field("scrape_timeout"),
                    format!(
                        "scrape timeout ({}) greater than scrape interval ({})",
                        PromDuration(timeout),
                        PromDuration(interval)
                    ),
                ));
            }
            if names == NameValidation::Legacy {
                for (key, list) in [
                    ("relabel_configs", &job.relabel_configs),
                    ("metric_relabel_configs", &job.metric_relabel_configs),
                ] {
                    for (k, r) in list.iter().enumerate() {
                        if let Err(message) = r.check_legacy_names() {
                            return Err(at(
                                &format!("{key}:"),
                                field(&format!("{key}[{k}]")),
                                message,
                            ));
                        }
                    }
                }
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
            if let Err(message) = crate::http_client::check_bearer(
                job.bearer_token.as_ref(),
                job.bearer_token_file.as_deref(),
                job.basic_auth.is_some(),
                job.authorization.is_some(),
                job.oauth2.is_some(),
            ) {
                let key = if job.bearer_token.is_some() {
                    "bearer_token"
                } else {
                    "bearer_token_file"
                };
                return Err(at(&format!("{key}:"), field(key), message));
            }
            let http = job.http_client();
            if let Err(e) = http.validate() {
                let (what, message) = match e {
                    crate::http_client::HttpClientError::Invalid { what, message } => {
                        (what, message)
                    }
                    e => ("tls_config", e.to_string()),
                };
                return Err(at(&format!("{what}:"), field(what), message));
            }
            if let Err(message) = http.proxy().check() {
                let key = ["proxy_connect_header", "proxy_from_environment", "no_proxy"]
                    .into_iter()
                    .find(|k| text.contains(&format!("{k}:")))
                    .unwrap_or("proxy_url");
                return Err(at(&format!("{key}:"), field(key), message));
            }
            for (j, sc) in job.static_configs.iter().enumerate() {
                // As in Prometheus, only without target relabeling (which may fix them).
                for (k, t) in sc.targets.iter().enumerate() {
                    if job.relabel_configs.is_empty() && t.contains('/') {
                        return Err(at(
                            t,
                            field(&format!("static_configs[{j}].targets[{k}]")),
                            format!("{t:?} is not a valid hostname"),
                        ));
                    }
                }
                for name in sc.labels.keys() {
                    if !names.label_name(name) {
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

    /// The Prometheus the agent behaves as.
    pub fn compatibility(&self) -> Compatibility {
        self.uplink.compatibility
    }

    /// Whether a job ingests native histograms: its `scrape_native_histograms`, else the
    /// global one, else `--enable-feature=native-histograms` (Prometheus 3.5's switch; also
    /// Prometheus 2's).
    pub fn native_histograms(&self, job: &ScrapeConfig) -> bool {
        job.scrape_native_histograms
            .or(self.global.scrape_native_histograms)
            .unwrap_or(self.features.native_histograms)
    }

    /// Whether a job keeps the classic series of histograms that also have a native or a
    /// converted form.
    pub fn always_scrape_classic_histograms(&self, job: &ScrapeConfig) -> bool {
        job.always_scrape_classic_histograms
            .or(job.scrape_classic_histograms)
            .or(self.global.always_scrape_classic_histograms)
            .unwrap_or(false)
    }

    /// Whether a job converts classic histograms to native histograms with custom buckets.
    pub fn convert_classic_histograms_to_nhcb(&self, job: &ScrapeConfig) -> bool {
        job.convert_classic_histograms_to_nhcb
            .or(self.global.convert_classic_histograms_to_nhcb)
            .unwrap_or(false)
    }

    /// Whether a job writes the three extra report series.
    pub fn extra_scrape_metrics(&self, job: &ScrapeConfig) -> bool {
        job.extra_scrape_metrics
            .or(self.global.extra_scrape_metrics)
            .unwrap_or(self.features.extra_scrape_metrics)
    }

    /// The file a job logs failed scrapes to, if any (relative to the configuration file).
    pub fn scrape_failure_log_file<'a>(&'a self, job: &'a ScrapeConfig) -> Option<&'a str> {
        job.scrape_failure_log_file
            .as_deref()
            .or(self.global.scrape_failure_log_file.as_deref())
            .filter(|f| !f.is_empty())
    }

    /// A job's effective `scrape_protocols`, as Prometheus 3 derives it: its own list, else the
    /// global one, else protobuf first when the job ingests native histograms, else the
    /// text formats. `None` in the Prometheus 2 mode when neither list is set (Prometheus
    /// 2.42's fixed `Accept` header then applies).
    pub fn scrape_protocols(&self, job: &ScrapeConfig) -> Option<Vec<ScrapeProtocol>> {
        use ScrapeProtocol as P;
        if let Some(list) = job
            .scrape_protocols
            .as_ref()
            .or(self.global.scrape_protocols.as_ref())
        {
            return Some(list.clone());
        }
        if self.compatibility() == Compatibility::Prometheus2 {
            return None;
        }
        let text = [
            P::OpenMetricsText1_0_0,
            P::OpenMetricsText0_0_1,
            P::PrometheusText1_0_0,
            P::PrometheusText0_0_4,
        ];
        let proto = self.native_histograms(job).then_some(P::PrometheusProto);
        Some(proto.into_iter().chain(text).collect())
    }

    /// The global name validation scheme (legacy in the Prometheus 2 mode).
    pub fn global_validation(&self) -> NameValidation {
        if self.compatibility() == Compatibility::Prometheus2 {
            return NameValidation::Legacy;
        }
        self.global
            .metric_name_validation_scheme
            .as_deref()
            .and_then(NameValidation::parse)
            .unwrap_or(NameValidation::Utf8)
    }

    /// A job's name validation scheme: its own, else the global one.
    pub fn validation(&self, job: &ScrapeConfig) -> NameValidation {
        if self.compatibility() == Compatibility::Prometheus2 {
            return NameValidation::Legacy;
        }
        job.metric_name_validation_scheme
            .as_deref()
            .and_then(NameValidation::parse)
            .unwrap_or_else(|| self.global_validation())
    }

    /// The global escaping scheme: as set, else `underscores` under legacy validation and
    /// `allow-utf-8` under utf8.
    pub fn global_escaping(&self) -> Escaping {
        self.global
            .metric_name_escaping_scheme
            .as_deref()
            .and_then(Escaping::parse)
            .unwrap_or(match self.global_validation() {
                NameValidation::Legacy => Escaping::Underscores,
                NameValidation::Utf8 => Escaping::AllowUtf8,
            })
    }

    /// A job's escaping scheme: its own, else the global one, as Prometheus 3.5 infers it;
    /// except that a job setting only `metric_name_validation_scheme: legacy` under a global
    /// `allow-utf-8` escapes with `underscores`, as Prometheus ≥ 3.7 does (3.5 refuses such a
    /// job).
    pub fn escaping(&self, job: &ScrapeConfig) -> Escaping {
        if let Some(e) = job
            .metric_name_escaping_scheme
            .as_deref()
            .and_then(Escaping::parse)
        {
            return e;
        }
        let global = self.global_escaping();
        let own_legacy = job
            .metric_name_validation_scheme
            .as_deref()
            .is_some_and(|v| !v.is_empty())
            && self.validation(job) == NameValidation::Legacy;
        if own_legacy && global == Escaping::AllowUtf8 {
            return Escaping::Underscores;
        }
        global
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

    /// A job's effective limits: its own value, else the global one (0 means none). As in
    /// Prometheus, a job's `0` is unset: it cannot lift a global limit.
    pub fn limits(&self, job: &ScrapeConfig) -> JobLimits {
        let g = &self.global;
        let or = |own: Option<u64>, global: u64| own.filter(|v| *v > 0).unwrap_or(global);
        JobLimits {
            sample_limit: or(job.sample_limit, g.sample_limit),
            body_size_limit: or(job.body_size_limit.map(|b| b.0), g.body_size_limit.0),
            label_limit: or(job.label_limit, g.label_limit),
            label_name_length_limit: or(job.label_name_length_limit, g.label_name_length_limit),
            label_value_length_limit: or(job.label_value_length_limit, g.label_value_length_limit),
            target_limit: or(job.target_limit, g.target_limit),
            keep_dropped_targets: or(job.keep_dropped_targets, g.keep_dropped_targets),
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
            ("otlp", self.otlp.is_some()),
            ("runtime", self.runtime.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, present)| present.then_some(n))
        .collect()
    }

    /// Every setting that is present and that the agent accepts without acting on it: the
    /// ignored sections, the query-side global keys, and per job the keys of
    /// [`ScrapeConfig::accepted_only`] and of its discovery entries. One warning names them
    /// all at each load.
    pub fn accepted_only(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .ignored_sections()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let g = &self.global;
        for (key, set) in [
            ("global.rule_query_offset", g.rule_query_offset.is_some()),
            ("global.query_log_file", g.query_log_file.is_some()),
        ] {
            if set {
                out.push(key.into());
            }
        }
        for job in &self.scrape_configs {
            for key in job.accepted_only() {
                out.push(format!("scrape_configs[{:?}].{key}", job.job_name));
            }
            let at =
                |kind: &str, i: usize| format!("scrape_configs[{:?}].{kind}[{i}]", job.job_name);
            for (i, h) in job.http_sd_configs.iter().enumerate() {
                out.extend(
                    h.accepted_only()
                        .into_iter()
                        .map(|k| format!("{}.{k}", at("http_sd_configs", i))),
                );
            }
            for (i, k) in job.kubernetes_sd_configs.iter().enumerate() {
                out.extend(
                    k.accepted_only()
                        .into_iter()
                        .map(|key| format!("{}.{key}", at("kubernetes_sd_configs", i))),
                );
            }
        }
        out
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
        let names: Vec<&str> = list.iter().map(|p| p.as_str()).collect();
        return Err(format!(
            "duplicated protocol in scrape_protocols, got [{}]",
            names.join(" ")
        ));
    }
    Ok(())
}

/// The discovery mechanisms the agent implements, as they are named in a scrape config.
pub const DISCOVERY_MECHANISMS: [&str; 5] = [
    "static_configs",
    "file_sd_configs",
    "http_sd_configs",
    "dns_sd_configs",
    "kubernetes_sd_configs",
];

/// An unknown `<name>_sd_configs` key of a scrape config is a Prometheus discovery mechanism
/// the agent does not implement: its error names it, its job and the mechanisms the agent has,
/// instead of serde's list of every field.
fn unimplemented_discovery(e: ConfigError, text: &str) -> ConfigError {
    let ConfigError::Invalid {
        path,
        line,
        column,
        field,
        message,
    } = e
    else {
        return e;
    };
    let key = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split_once('`'))
        .map(|(k, _)| k)
        .filter(|k| k.ends_with("_sd_configs"));
    let job = field
        .strip_prefix("scrape_configs[")
        .and_then(|f| f.split_once(']'))
        .and_then(|(i, _)| i.parse::<usize>().ok())
        .and_then(|i| {
            let doc: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
            doc.get("scrape_configs")?
                .get(i)?
                .get("job_name")?
                .as_str()
                .map(str::to_owned)
        });
    let message = match key {
        Some(key) => format!(
            "{key} of job {:?}: this service discovery mechanism is not implemented by \
             uplink-agent, which has {}; feed these targets through file_sd_configs or \
             http_sd_configs instead (docs/configuration.md)",
            job.unwrap_or_default(),
            DISCOVERY_MECHANISMS.join(", "),
        ),
        None => message,
    };
    ConfigError::Invalid {
        path,
        line,
        column,
        field,
        message,
    }
}

/// Prometheus's message when `allow-utf-8` escaping meets legacy validation.
const UTF8_ESCAPING_NEEDS_UTF8: &str =
    "utf8 metric names requested but validation scheme is not set to UTF8";

/// The first of a section's two name schemes (`kind`: `global`, `scrape config`) that
/// Prometheus does not know, as (key, message).
fn schemes_error(
    kind: &str,
    validation: &Option<String>,
    escaping: &Option<String>,
) -> Option<(&'static str, String)> {
    [
        ("metric_name_validation_scheme", validation),
        ("metric_name_escaping_scheme", escaping),
    ]
    .into_iter()
    .find_map(|(key, value)| {
        value
            .as_deref()
            .and_then(|v| scheme_error(kind, key, v))
            .map(|m| (key, m))
    })
}

/// Prometheus's message for a validation or escaping scheme it does not know, if `value` is
/// one (`whose`: `global` or `scrape config`; the empty value is unset). Unlike Prometheus 3.5,
/// whose escaping message shows the validation scheme, it names the value given.
fn scheme_error(whose: &str, key: &str, value: &str) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    match key {
        "metric_name_validation_scheme" => NameValidation::parse(value).is_none().then(|| {
            format!(
                "unknown {whose} name validation method specified, must be either 'legacy' or \
                 'utf8', got {value}"
            )
        }),
        _ => Escaping::parse(value).is_none().then(|| {
            format!(
                "unknown {whose} name escaping method specified, must be one of 'allow-utf-8', \
                 'underscores', 'dots', or 'values', got {value}"
            )
        }),
    }
}

/// Go's `os.Expand` with Prometheus 3's mapping for external label values: `${VAR}` and `$VAR`
/// take the environment's value (empty when unset, logged), `$$` is a literal `$`, a `$` not
/// followed by a name stays, and the malformed `${}` or an unclosed `${` is dropped.
pub fn expand_env(s: &str) -> String {
    if !s.contains('$') {
        return s.to_owned();
    }
    let lookup = |name: &str| -> String {
        if name == "$" {
            return "$".into();
        }
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => v,
            _ => {
                tracing::warn!(
                    name,
                    "Empty environment variable in an external label value."
                );
                String::new()
            }
        }
    };
    let special = |c: u8| b"*#$@!?-0123456789".contains(&c);
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut j = 0;
    while j < b.len() {
        if b[j] == b'$' && j + 1 < b.len() {
            out.push_str(s.get(i..j).unwrap_or_default());
            let rest = &b[j + 1..];
            // (name, width): an empty name with a width eats malformed syntax.
            let (name, w): (&[u8], usize) = if rest[0] == b'{' {
                if rest.len() > 2 && special(rest[1]) && rest[2] == b'}' {
                    (&rest[1..2], 3)
                } else {
                    match rest.iter().skip(1).position(|&c| c == b'}') {
                        Some(0) => (&[], 2),
                        Some(n) => (&rest[1..=n], n + 2),
                        None => (&[], 1),
                    }
                }
            } else if special(rest[0]) {
                (&rest[..1], 1)
            } else {
                let n = rest
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                    .count();
                (&rest[..n], n)
            };
            if name.is_empty() && w == 0 {
                out.push('$');
            } else if !name.is_empty() {
                out.push_str(&lookup(std::str::from_utf8(name).unwrap_or_default()));
            }
            j += w;
            i = j + 1;
        }
        j += 1;
    }
    out.push_str(s.get(i..).unwrap_or_default());
    out
}

/// Finds the 1-based line and column of the first occurrence of `needle`.
fn locate(text: &str, needle: &str) -> Option<(usize, usize)> {
    locate_within(text, needle, 1, None)
}

/// [`locate`] from line `from` on, before line `to` (1-based).
fn locate_within(
    text: &str,
    needle: &str,
    from: usize,
    to: Option<usize>,
) -> Option<(usize, usize)> {
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .take_while(|(i, _)| to.is_none_or(|to| i + 1 < to))
        .find_map(|(i, line)| line.find(needle).map(|col| (i + 1, col + 1)))
}

/// Where the `index`-th job of a file, named `name` (by `earlier` jobs before it too), gives its
/// `job_name` (1-based line and column): the key followed by the name (bare or quoted), else
/// the `index`-th `job_name:` key outside a comment.
fn job_position(text: &str, index: usize, name: &str, earlier: usize) -> Option<(usize, usize)> {
    let keys = text.lines().enumerate().filter_map(|(i, line)| {
        let col = line.find("job_name:")?;
        let comment = line.find('#').is_some_and(|c| c < col);
        (!comment).then_some((i, col))
    });
    let named = keys.clone().filter(|&(i, col)| {
        let rest = text.lines().nth(i).unwrap_or_default()[col + "job_name:".len()..].trim_start();
        [name.to_owned(), format!("'{name}'"), format!("{name:?}")]
            .iter()
            .any(|n| {
                rest.strip_prefix(n.as_str()).is_some_and(|after| {
                    after.is_empty() || after.starts_with([' ', ',', '}', '#'])
                })
            })
    });
    let named = named.clone().nth(earlier).or_else(|| named.last());
    named
        .or_else(|| keys.clone().nth(index))
        .map(|(i, col)| (i + 1, col + 1))
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
        assert_eq!(p("512KB"), Ok(512 << 10));
        assert_eq!(p("10MB"), Ok(10 << 20));
        assert_eq!(p("1GiB"), Ok(1 << 30));
        assert_eq!(p("1GB512MB"), Ok((1 << 30) + (512 << 20)));
        assert_eq!(p("1.5MB"), Ok(3 << 19));
        assert_eq!(p("1024B"), Ok(1024));
        // As Prometheus: a bare number, lower-case units or mixed unit kinds are refused.
        assert_eq!(p("1024"), Err("units: unknown unit  in 1024".into()));
        assert_eq!(p("10mb"), Err("units: unknown unit mb in 10mb".into()));
        assert!(p("10 MB").is_err() && p("MB").is_err() && p("1MiB512KB").is_err());
        assert!(p("-1KB").is_err() && p("99999999999EB").is_err());
        let show = |s: &str| p(s).map(|b| ByteSize(b).to_string());
        for (input, shown) in [
            ("1KB", "1KiB"),
            ("100MB", "100MiB"),
            ("1500KB", "1MiB476KiB"),
            ("1.5MB", "1MiB512KiB"),
            ("2GB", "2GiB"),
            ("1TB", "1TiB"),
            ("1500B", "1KiB476B"),
        ] {
            assert_eq!(show(input), Ok(shown.into()), "{input}");
        }
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
        assert_eq!(
            c.limits(&c.scrape_configs[0]).sample_limit,
            10,
            "a job's 0 is unset, as in Prometheus"
        );
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

    #[test]
    fn prometheus_3_keys_load_and_derive_as_prometheus_does() {
        let text = GOOD
            .replace(
                "  scrape_interval: 15s\n",
                "  scrape_interval: 15s\n  scrape_native_histograms: false\n  extra_scrape_metrics: true\n  \
                 always_scrape_classic_histograms: true\n  metric_name_escaping_scheme: dots\n",
            )
            .replace(
                "  - job_name: node\n",
                "  - job_name: node\n    fallback_scrape_protocol: PrometheusText0.0.4\n    \
                 scrape_native_histograms: true\n    convert_classic_histograms_to_nhcb: true\n",
            )
            .replace(
                "rule_files: [\"x.yml\"]\n",
                "otlp: {translation_strategy: NoTranslation}\nruntime: {gogc: 50}\n\
                 storage: {tsdb: {out_of_order_time_window: 10m, retention: {time: 15d}}}\n",
            );
        let c = load(&text).expect("valid");
        let job = &c.scrape_configs[0];
        assert_eq!(
            job.fallback_scrape_protocol,
            Some(ScrapeProtocol::PrometheusText0_0_4)
        );
        assert!(c.native_histograms(job) && c.extra_scrape_metrics(job));
        assert!(c.always_scrape_classic_histograms(job));
        assert!(c.convert_classic_histograms_to_nhcb(job));
        assert_eq!(c.escaping(job), Escaping::Dots);
        assert_eq!(c.validation(job), NameValidation::Utf8);
        // The job ingests native histograms: protobuf first.
        assert_eq!(
            c.scrape_protocols(job).expect("derived")[0],
            ScrapeProtocol::PrometheusProto
        );
        assert_eq!(c.ignored_sections(), vec!["storage", "otlp", "runtime"]);
        // Prometheus 3 refuses the 2.x name of always_scrape_classic_histograms.
        let old = GOOD.replace(
            "  - job_name: node\n",
            "  - job_name: node\n    scrape_classic_histograms: true\n",
        );
        let e = load(&old).expect_err("removed key").to_string();
        assert!(
            e.contains("scrape_configs[0].scrape_classic_histograms"),
            "{e}"
        );
        let two = old.replace(
            "  queue: {directory: q}\n",
            "  queue: {directory: q}\n  compatibility: prometheus2\n",
        );
        let c = load(&two).expect("the Prometheus 2 mode takes it");
        assert!(c.always_scrape_classic_histograms(&c.scrape_configs[0]));
        assert_eq!(c.scrape_protocols(&c.scrape_configs[0]), None);
    }

    #[test]
    fn name_schemes_are_checked_as_prometheus_checks_them() {
        let with = |global: &str, job: &str| {
            load(
                &GOOD
                    .replace(
                        "  scrape_interval: 15s\n",
                        &format!("  scrape_interval: 15s\n{global}"),
                    )
                    .replace(
                        "  - job_name: node\n",
                        &format!("  - job_name: node\n{job}"),
                    ),
            )
        };
        let e = with("  metric_name_validation_scheme: strict\n", "")
            .expect_err("bad")
            .to_string();
        assert!(e.contains("global.metric_name_validation_scheme"), "{e}");
        let e = with("", "    metric_name_escaping_scheme: no-escaping\n")
            .expect_err("bad")
            .to_string();
        assert!(
            e.contains("scrape_configs[0].metric_name_escaping_scheme"),
            "{e}"
        );
        let e = with(
            "  metric_name_validation_scheme: legacy\n  metric_name_escaping_scheme: allow-utf-8\n",
            "",
        )
        .expect_err("utf8 escaping under legacy")
        .to_string();
        assert!(e.contains(UTF8_ESCAPING_NEEDS_UTF8), "{e}");
        // Legacy globally: underscores; a job may choose utf8 and keeps the global escaping.
        let c = with(
            "  metric_name_validation_scheme: legacy\n",
            "    metric_name_validation_scheme: utf8\n",
        )
        .expect("valid");
        assert_eq!(c.global_escaping(), Escaping::Underscores);
        assert_eq!(c.validation(&c.scrape_configs[0]), NameValidation::Utf8);
        assert_eq!(c.escaping(&c.scrape_configs[0]), Escaping::Underscores);
        // A job that sets only legacy escapes with underscores (Prometheus >= 3.7's rule).
        let c = with("", "    metric_name_validation_scheme: legacy\n").expect("valid");
        assert_eq!(c.escaping(&c.scrape_configs[0]), Escaping::Underscores);
        // UTF-8 names load in Prometheus 3 (a legacy scheme refuses them when scraping), not
        // in the Prometheus 2 mode.
        let dotted = GOOD
            .replace("site: a", "my.site: a")
            .replace("labels: {env: dev}", "labels: {env.name: dev}");
        load(&dotted).expect("UTF-8 names");
        let e = load(&dotted.replace(
            "  queue: {directory: q}\n",
            "  queue: {directory: q}\n  compatibility: prometheus2\n",
        ))
        .expect_err("legacy names only")
        .to_string();
        assert!(e.contains("my.site"), "{e}");
    }

    #[test]
    fn external_labels_expand_the_environment_as_prometheus_3() {
        // The workspace forbids `unsafe` (so `set_var`): HOME and PATH are always set.
        let home = std::env::var("HOME").expect("HOME");
        for (raw, want) in [
            ("${HOME}".to_owned(), home.clone()),
            ("$HOME-x".to_owned(), format!("{home}-x")),
            ("pre-${HOME}".to_owned(), format!("pre-{home}")),
            ("cost$$5".to_owned(), "cost$5".to_owned()),
            ("$$HOME".to_owned(), "$HOME".to_owned()),
            ("${UPLINK_TEST_UNSET_VAR}".to_owned(), String::new()),
            ("a$".to_owned(), "a$".to_owned()),
            ("a${}b".to_owned(), "ab".to_owned()),
            ("a${b".to_owned(), "ab".to_owned()),
            ("plain".to_owned(), "plain".to_owned()),
        ] {
            assert_eq!(expand_env(&raw), want, "{raw}");
        }
        let c = load(&GOOD.replace("site: a", "site: '${HOME}'")).expect("valid");
        assert_eq!(c.global.external_labels["site"], home);
        let two = GOOD.replace("site: a", "site: '${HOME}'").replace(
            "  queue: {directory: q}\n",
            "  queue: {directory: q}\n  compatibility: prometheus2\n",
        );
        let c = load(&two).expect("valid");
        assert_eq!(c.global.external_labels["site"], "${HOME}");
    }

    #[test]
    fn loads_as_prometheus_3_5_loads() {
        let job = |extra: &str| {
            GOOD.replace(
                "  - job_name: node\n",
                &format!("  - job_name: node\n{extra}"),
            )
        };
        // A global interval under 10s caps the default timeout; a job's 0s is unset.
        let c = load(&GOOD.replace("scrape_interval: 15s", "scrape_interval: 5s")).expect("valid");
        assert_eq!(c.global.scrape_timeout.0, Duration::from_secs(5));
        let c = load(&job("    scrape_interval: 0s\n    scrape_timeout: 0s\n")).expect("valid");
        let j = &c.scrape_configs[0];
        assert_eq!(
            (c.interval(j), c.timeout(j)),
            (Duration::from_secs(15), Duration::from_secs(10))
        );
        // Accepted as Prometheus accepts them.
        let c = load(&job(
            "    metrics_path: metrics\n    scheme: HTTPS\n    fallback_scrape_protocol: ''\n",
        ))
        .expect("valid");
        let j = &c.scrape_configs[0];
        assert_eq!(
            (j.metrics_path.as_str(), j.scheme),
            ("/metrics", Scheme::Https)
        );
        assert_eq!(j.fallback_scrape_protocol, None);
        load(
            &job("    relabel_configs: [{target_label: __address__, replacement: 'h:1'}]\n")
                .replace("127.0.0.1:9100", "http://x/"),
        )
        .expect("a URL is only refused without relabeling");
        // Refused as Prometheus refuses them, each naming its place.
        for (extra, field, message) in [
            (
                "    scheme: ftp\n",
                "scrape_configs[0].scheme",
                "must be http or https",
            ),
            (
                "    bearer_token: t\n    authorization: {credentials: c}\n",
                "scrape_configs[0].bearer_token",
                "authorization is not compatible with bearer_token",
            ),
            (
                "    no_proxy: localhost\n",
                "scrape_configs[0].no_proxy",
                "proxy_url must also be configured",
            ),
            (
                "    proxy_url: http://p:3128\n    proxy_from_environment: true\n",
                "scrape_configs[0].proxy_from_environment",
                "proxy_url must not be configured",
            ),
            (
                "    http_headers: {user-agent: {values: [x]}}\n",
                "scrape_configs[0].http_headers",
                "setting header \"User-Agent\" is not allowed",
            ),
            (
                "    tls_config: {min_version: TLS14}\n",
                "scrape_configs[0].tls_config",
                "unknown TLS version: TLS14",
            ),
        ] {
            let e = load(&job(extra)).expect_err(extra).to_string();
            assert!(e.starts_with("agent.yml:") && e.contains(field), "{e}");
            assert!(e.contains(message), "{e}");
        }
        let e = load(&GOOD.replace(
            "scrape_interval: 15s",
            "scrape_interval: 5s\n  scrape_timeout: 10s",
        ))
        .expect_err("explicit timeout above the interval")
        .to_string();
        assert!(
            e.contains("global scrape timeout greater than scrape interval"),
            "{e}"
        );
        // Empty secrets and files are unset.
        let c = load(&job(
            "    basic_auth: {username: u, password: '', password_file: pw}\n",
        ))
        .expect("valid");
        let b = c.scrape_configs[0].basic_auth.clone().expect("basic_auth");
        assert_eq!(b.password, None);
    }

    #[test]
    fn an_unimplemented_discovery_mechanism_is_refused_by_name() {
        let text = GOOD.replace(
            "    static_configs:\n",
            "    consul_sd_configs:\n      - server: localhost:8500\n    static_configs:\n",
        );
        let e = load(&text).expect_err("consul").to_string();
        assert!(e.starts_with("agent.yml:8:5: scrape_configs[0]"), "{e}");
        assert!(
            e.contains("consul_sd_configs of job \"node\": this service discovery mechanism is not implemented"),
            "{e}"
        );
        assert!(e.contains("kubernetes_sd_configs"), "{e}");
        let e = load(&GOOD.replace(
            "    static_configs:\n",
            "    bogus_key: 1\n    static_configs:\n",
        ))
        .expect_err("typo")
        .to_string();
        assert!(e.contains("unknown field `bogus_key`"), "{e}");
    }

    #[test]
    fn scrape_config_files_load_relative_globs_and_refuse_duplicates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("jobs/sub")).expect("dir");
        std::fs::write(
            d.join("jobs/a.yml"),
            "scrape_configs:\n  - job_name: a\n    scrape_interval: 5s\n    tls_config: {ca_file: ca.pem}\n    \
             static_configs: [{targets: ['h:1']}]\n",
        )
        .expect("write");
        std::fs::write(d.join("jobs/b.yml"), "scrape_configs: [{job_name: b}]\n").expect("write");
        std::fs::write(d.join("jobs/empty.yml"), "").expect("write");
        std::fs::write(d.join("jobs/c.txt"), "not yaml: [").expect("write");
        let main = GOOD.replace(
            "scrape_configs:\n",
            "scrape_config_files: ['jobs/*.yml', 'missing.yml']\nscrape_configs:\n",
        );
        let p = d.join("agent.yml");
        std::fs::write(&p, &main).expect("write");
        let c = Config::load(&p).expect("valid");
        let names: Vec<&str> = c
            .scrape_configs
            .iter()
            .map(|j| j.job_name.as_str())
            .collect();
        assert_eq!(names, ["node", "a", "b"]);
        let a = &c.scrape_configs[1];
        assert_eq!(a.base(d), d.join("jobs"));
        assert_eq!(
            c.timeout(a),
            Duration::from_secs(5),
            "min(global timeout, interval)"
        );
        assert_eq!(c.scrape_configs[0].base(d), d);
        // A duplicate names the file of the first definition; an error names its own file.
        std::fs::write(d.join("jobs/b.yml"), "scrape_configs: [{job_name: node}]\n")
            .expect("write");
        let e = Config::load(&p).expect_err("duplicate").to_string();
        assert!(
            e.contains("b.yml") && e.contains("first found in main config file"),
            "{e}"
        );
        std::fs::write(
            d.join("jobs/b.yml"),
            "scrape_configs:\n  - job_name: b\n    scrape_interval: 5 s\n",
        )
        .expect("write");
        let e = Config::load(&p).expect_err("bad value").to_string();
        assert!(
            e.contains("b.yml:3:") && e.contains("scrape_interval"),
            "{e}"
        );
        std::fs::write(d.join("jobs/b.yml"), "global: {}\n").expect("write");
        assert!(
            Config::load(&p)
                .expect_err("only scrape_configs")
                .to_string()
                .contains("global")
        );
        // Wildcards only in the last path element.
        std::fs::write(
            &p,
            GOOD.replace(
                "scrape_configs:\n",
                "scrape_config_files: ['j*/*.yml']\nscrape_configs:\n",
            ),
        )
        .expect("write");
        let e = Config::load(&p).expect_err("glob").to_string();
        assert!(e.contains("invalid scrape config file path"), "{e}");
    }

    #[test]
    fn secret_references_are_named_and_the_jwt_bearer_grant_loads() {
        let text = GOOD
            .replace(
                "    static_configs:\n",
                "    basic_auth: {username: u, password_ref: vault/pw}\n    \
             tls_config: {ca_ref: vault/ca}\n    static_configs:\n",
            )
            .replace("rule_files: [\"x.yml\"]\n", "")
            .replace(
                "scrape_configs:\n",
                "scrape_configs:\n  - job_name: jwt\n    oauth2:\n      client_id: c\n      \
             token_url: https://t.example/token\n      \
             grant_type: urn:ietf:params:oauth:grant-type:jwt-bearer\n      \
             client_certificate_key_id: k1\n      claims: {sub: x}\n",
            );
        let c = load(&text).expect("loads");
        let keys = c.accepted_only();
        assert_eq!(
            keys,
            [
                "scrape_configs[\"node\"].basic_auth.*_ref",
                "scrape_configs[\"node\"].tls_config.*_ref",
            ]
        );
        let both = GOOD.replace(
            "    static_configs:\n",
            "    basic_auth: {username: u, password: p, password_ref: vault/pw}\n    static_configs:\n",
        );
        let e = load(&both).expect_err("two passwords").to_string();
        assert!(e.contains("at most one of basic_auth password"), "{e}");
    }
}
