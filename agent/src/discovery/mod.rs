//! Service discovery: providers that turn a `*_sd_configs` entry into target groups.
//!
//! Each provider runs as one task and publishes the *complete* current list of its groups on a
//! [`tokio::sync::watch`] channel whenever it changes (so a slow consumer only ever sees the
//! newest list, and a provider never blocks on its consumer). The scrape manager merges the
//! groups of all providers of a job, applies `relabel_configs`, and starts or stops target
//! loops accordingly.
//!
//! A provider that fails (unreadable file, HTTP error, DNS timeout) logs, counts the failure
//! in `uplink_agent_sd_refresh_failures_total`, and keeps publishing its last good groups, as
//! Prometheus does: a discovery outage never removes targets.
//!
//! Every provider has the same shape:
//!
//! ```text
//! file::run(cfg: FileSdConfig, base: PathBuf,  out: Publisher, failures: Counter, shutdown)
//! http::run(cfg: HttpSdConfig, client: HttpClient, out, failures, shutdown)
//! dns::run(cfg: DnsSdConfig,   resolver: DnsResolver, out, failures, shutdown)
//! kubernetes::run(cfg: KubernetesSdConfig, base: PathBuf, out, failures, shutdown)
//! ```
//!
//! - `failures` is the provider's child of `uplink_agent_sd_refresh_failures_total`
//!   ([`crate::metrics::Metrics::sd_failures`]`("file" | "http" | "dns" | "kubernetes")`).
//! - `file`: `base` is the configuration file's directory (relative paths resolve against it).
//! - `http`: build the client with `HttpClient::new(&cfg.http_client() /* then .resolve(base) */,
//!   user_agent)`.
//! - `kubernetes`: `base` resolves `kubeconfig_file` and the HTTP client files; the connection
//!   (in-cluster, kubeconfig or `api_server`) is set up inside `run`, retried on failure.
//! - `dns`: [`dns::DnsResolver::system`] (`/etc/resolv.conf`, re-read every refresh) or
//!   [`dns::DnsResolver::with_nameserver`] (one server, for tests or pinning).
//!
//! Each `run` publishes once after its first refresh (even an empty or failed one, so a
//! consumer can tell the provider has started), then only when its list changes, and returns
//! once `shutdown` is cancelled (dropping every receiver does not stop it). Call the config's
//! `validate() -> Result<(), String>` first: `run` does not check its configuration again, and
//! skips or works around what `validate` would have rejected rather than panicking.

pub mod dns;
pub mod file;
pub mod http;
pub mod kubernetes;

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::valid_label_name;

/// Labels of a target or group, by name.
pub type LabelSet = BTreeMap<String, String>;

/// Why a `refresh_interval: 0s` is refused (a deliberate difference: Prometheus 3.5 accepts
/// it, then panics when the discovery starts).
pub const ZERO_REFRESH: &str = "refresh_interval must be positive (Prometheus accepts 0s but \
     then crashes when the discovery starts)";

/// A group of targets sharing labels, like Prometheus's `targetgroup.Group`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetGroup {
    /// Identifies the group within its provider (file path and index, URL and index, DNS
    /// name), so that an update replaces the group it names.
    pub source: String,
    /// One label set per target; each has `__address__`, and may carry `__meta_*` labels.
    pub targets: Vec<LabelSet>,
    /// Labels common to every target of the group (target labels win over these).
    pub labels: LabelSet,
}

/// Where a provider publishes its groups.
pub type Publisher = tokio::sync::watch::Sender<Vec<TargetGroup>>;

/// Publishes `groups` if they differ from what `out` holds, or always when `first`.
pub(crate) fn publish(out: &Publisher, groups: Vec<TargetGroup>, first: bool) {
    if first {
        out.send_replace(groups);
        return;
    }
    out.send_if_modified(|current| {
        if *current == groups {
            return false;
        }
        *current = groups;
        true
    });
}

/// One target group as written in a `file_sd` file or an `http_sd` response, Prometheus's
/// `{"targets": ["host:port", ...], "labels": {"name": "value", ...}}`. Unknown keys are
/// rejected, as Prometheus does; `null` targets or labels mean none.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupSpec {
    #[serde(default)]
    targets: Option<Vec<Target>>,
    #[serde(default)]
    labels: Option<BTreeMap<LabelName, Option<String>>>,
}

/// A target address: a non-empty string without `/` (checked while parsing, so the error
/// carries the target's line and column).
#[derive(Debug)]
struct Target(String);

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(serde::de::Error::custom("empty target"));
        }
        if s.contains('/') {
            return Err(serde::de::Error::custom(format!(
                "{s:?} is not a valid target: it must not contain '/'"
            )));
        }
        Ok(Target(s))
    }
}

/// A label name matching `[a-zA-Z_][a-zA-Z0-9_]*`.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct LabelName(String);

impl<'de> Deserialize<'de> for LabelName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if !valid_label_name(&s) {
            return Err(serde::de::Error::custom(format!(
                "{s:?} is not a valid label name"
            )));
        }
        Ok(LabelName(s))
    }
}

/// Turns parsed groups into [`TargetGroup`]s: source `{prefix}:{index}`, `__address__` per
/// target, and `meta` (e.g. `__meta_filepath`) added to the group's labels, overriding one of
/// the same name as Prometheus does.
pub(crate) fn into_groups(
    specs: Vec<GroupSpec>,
    prefix: &str,
    meta: (&str, &str),
) -> Vec<TargetGroup> {
    specs
        .into_iter()
        .enumerate()
        .map(|(i, spec)| {
            let targets = spec
                .targets
                .unwrap_or_default()
                .into_iter()
                .map(|t| LabelSet::from([(ADDRESS_LABEL.to_owned(), t.0)]))
                .collect();
            let mut labels: LabelSet = spec
                .labels
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.0, v.unwrap_or_default()))
                .collect();
            labels.insert(meta.0.to_owned(), meta.1.to_owned());
            TargetGroup {
                source: format!("{prefix}:{i}"),
                targets,
                labels,
            }
        })
        .collect()
}

/// The label holding a target's `host:port`.
pub const ADDRESS_LABEL: &str = "__address__";

/// Why a list of groups could not be parsed: where, which field, what.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {field}: {message}")]
pub struct SpecError {
    pub line: usize,
    pub column: usize,
    /// Path of the offending field, e.g. `[2].labels`.
    pub field: String,
    pub message: String,
}

/// Parses a JSON list of groups (`null` means none).
pub(crate) fn parse_json(bytes: &[u8]) -> Result<Vec<GroupSpec>, SpecError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let specs: Option<Vec<GroupSpec>> = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        json_error(field, &inner)
    })?;
    de.end().map_err(|e| json_error(".".into(), &e))?;
    Ok(specs.unwrap_or_default())
}

fn json_error(field: String, e: &serde_json::Error) -> SpecError {
    let mut message = e.to_string();
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    SpecError {
        line: e.line(),
        column: e.column(),
        field: if field == "." { "(root)".into() } else { field },
        message,
    }
}

/// Parses a YAML list of groups (an empty document or `null` means none).
pub(crate) fn parse_yaml(text: &str) -> Result<Vec<GroupSpec>, SpecError> {
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(Vec::new());
    }
    let specs: Option<Vec<GroupSpec>> = uplink_shared::yaml::parse(std::path::Path::new(""), text)
        .map_err(|e| match e {
            uplink_shared::yaml::ConfigError::Invalid {
                line,
                column,
                field,
                message,
                ..
            } => SpecError {
                line,
                column,
                field,
                message: strip_yaml_path(message),
            },
            other => SpecError {
                line: 1,
                column: 1,
                field: "(root)".into(),
                message: other.to_string(),
            },
        })?;
    Ok(specs.unwrap_or_default())
}

/// serde_yaml prefixes some messages with its own path of a top-level sequence (`.[0]: `);
/// ours is in `field` already.
fn strip_yaml_path(message: String) -> String {
    match message.split_once(": ") {
        Some((head, rest)) if head.starts_with(".[") && !head.contains(' ') => rest.to_owned(),
        _ => message,
    }
}

/// Starts the providers of a job's `*_sd_configs` on `tracker`, each stopping with `token`,
/// and returns their channels (static configs are not providers). A provider whose
/// configuration is invalid is skipped with an error log (the configuration check refuses
/// such a file, so this only happens for settings only checkable at run time).
pub fn spawn(
    sc: &crate::config::ScrapeConfig,
    base: &std::path::Path,
    metrics: &crate::metrics::Metrics,
    tracker: &tokio_util::task::TaskTracker,
    token: &tokio_util::sync::CancellationToken,
) -> Vec<tokio::sync::watch::Receiver<Vec<TargetGroup>>> {
    let mut out = Vec::new();
    let mut channel = || {
        let (tx, rx) = tokio::sync::watch::channel(Vec::new());
        out.push(rx);
        tx
    };
    for c in &sc.file_sd_configs {
        let tx = channel();
        tracker.spawn(file::run(
            c.clone(),
            base.to_path_buf(),
            tx,
            metrics.sd_failures("file"),
            token.clone(),
        ));
    }
    for c in &sc.http_sd_configs {
        let mut hc = c.http_client();
        hc.resolve(base);
        match crate::http_client::HttpClient::new(
            &hc,
            concat!("uplink-agent/", env!("CARGO_PKG_VERSION")),
        ) {
            Ok(client) => {
                let tx = channel();
                tracker.spawn(http::run(
                    c.clone(),
                    client,
                    tx,
                    metrics.sd_failures("http"),
                    token.clone(),
                ));
            }
            Err(error) => {
                tracing::error!(url = %c.url, %error, "Cannot build the http_sd client; skipping it.");
            }
        }
    }
    for c in &sc.dns_sd_configs {
        let tx = channel();
        tracker.spawn(dns::run(
            c.clone(),
            dns::DnsResolver::system(),
            tx,
            metrics.sd_failures("dns"),
            token.clone(),
        ));
    }
    for c in &sc.kubernetes_sd_configs {
        let tx = channel();
        tracker.spawn(kubernetes::run(
            c.clone(),
            base.to_path_buf(),
            tx,
            metrics.sd_failures("kubernetes"),
            token.clone(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(specs: Vec<GroupSpec>) -> Vec<TargetGroup> {
        into_groups(specs, "src", ("__meta_x", "v"))
    }

    #[test]
    fn nulls_mean_none_but_a_null_group_is_an_error() {
        assert!(parse_yaml("~\n").expect("null").is_empty());
        assert!(parse_yaml("").expect("empty").is_empty());
        assert!(parse_json(b" null ").expect("null").is_empty());
        let g = group(parse_yaml("- targets:\n  labels:\n    a:\n").expect("nulls"));
        assert_eq!(g[0].targets, Vec::<LabelSet>::new());
        assert_eq!(g[0].labels["a"], "");
        assert!(parse_yaml("- null\n").is_err());
        assert!(parse_json(b"[null]").is_err());
        assert!(parse_json(b"[{\"targets\": [1]}]").is_err());
        assert!(parse_json(b"{}").is_err());
    }

    #[test]
    fn groups_get_sources_addresses_and_meta_label() {
        let g = group(
            parse_json(br#"[{"targets": ["a:1"], "labels": {"__meta_x": "mine", "k": "v"}}, {}]"#)
                .expect("valid"),
        );
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].source, "src:0");
        assert_eq!(g[1].source, "src:1");
        assert_eq!(
            g[0].targets,
            vec![LabelSet::from([("__address__".into(), "a:1".into())])]
        );
        assert_eq!(
            g[0].labels,
            LabelSet::from([("__meta_x".into(), "v".into()), ("k".into(), "v".into())])
        );
        assert_eq!(
            g[1].labels,
            LabelSet::from([("__meta_x".into(), "v".into())])
        );
    }
}
