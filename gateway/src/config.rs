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
use uplink_shared::tls::TlsFiles;
use uplink_shared::yaml::{self, ConfigError};

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// UDP address agents connect to.
    pub listen_address: SocketAddr,
    /// Server certificate and key; `ca_file` is the bundle client certificates must chain to.
    pub tls: TlsFiles,
    #[serde(default)]
    pub limits: Limits,
    /// Destinations, in Prometheus's remote_write schema.
    pub remote_write: Vec<RemoteWriteConfig>,
    /// The freshness ledger written to the destinations.
    #[serde(default)]
    pub ledger: LedgerConfig,
    /// The durable store: per-destination queues and the dedupe cursors.
    pub storage: StorageConfig,
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
    /// On shutdown, how long the forwarders may keep draining backlogs after the last ack.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: PromDuration,
}

fn default_true() -> bool {
    true
}

fn default_drain_timeout() -> PromDuration {
    PromDuration(Duration::from_secs(10))
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
        }
    }
}

/// One `remote_write:` entry (Prometheus schema subset).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteConfig {
    pub url: String,
    /// Name used in logs and metric labels; defaults to the URL's host and port.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_remote_timeout")]
    pub remote_timeout: PromDuration,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    #[serde(default)]
    pub tls_config: Option<HttpTlsConfig>,
    #[serde(default)]
    pub queue_config: QueueConfig,
}

fn default_remote_timeout() -> PromDuration {
    PromDuration(Duration::from_secs(30))
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// Prometheus's `tls_config` for the HTTP client.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpTlsConfig {
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// Prometheus's `queue_config`, the retry and batching subset.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    pub min_backoff: PromDuration,
    pub max_backoff: PromDuration,
    /// Retry on 429 (Prometheus defaults to true since 2.x).
    pub retry_on_http_429: bool,
    /// Samples per request at most when queued entries are merged; an entry (one agent batch)
    /// is never split, so a larger one goes alone.
    pub max_samples_per_send: NonZeroU32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            min_backoff: PromDuration(Duration::from_millis(30)),
            max_backoff: PromDuration(Duration::from_secs(5)),
            retry_on_http_429: true,
            max_samples_per_send: NonZeroU32::new(2000).unwrap_or(NonZeroU32::MIN),
        }
    }
}

impl RemoteWriteConfig {
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
        if cfg.storage.directory.is_relative() {
            cfg.storage.directory = base.join(&cfg.storage.directory);
        }
        for rw in &mut cfg.remote_write {
            if let Some(t) = &mut rw.tls_config {
                for p in [&mut t.ca_file, &mut t.cert_file, &mut t.key_file]
                    .into_iter()
                    .flatten()
                {
                    if p.is_relative() {
                        *p = base.join(&*p);
                    }
                }
            }
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
        if self.remote_write.is_empty() {
            return Err(at(
                "remote_write",
                "remote_write".into(),
                "at least one destination is required".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, rw) in self.remote_write.iter().enumerate() {
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
            if let Some(b) = &rw.basic_auth
                && b.password.is_some()
                && b.password_file.is_some()
            {
                return Err(at(
                    "basic_auth",
                    format!("remote_write[{i}].basic_auth"),
                    "at most one of password and password_file must be configured".into(),
                ));
            }
            let q = &rw.queue_config;
            if q.min_backoff > q.max_backoff {
                return Err(at(
                    "min_backoff",
                    format!("remote_write[{i}].queue_config.min_backoff"),
                    "must not exceed max_backoff".into(),
                ));
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
        let e = load(&GOOD.replace("storage: {directory: data, max_age: 6h}\n", ""))
            .expect_err("storage is required")
            .to_string();
        assert!(e.contains("storage"), "{e}");
    }
}
