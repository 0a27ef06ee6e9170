//! From discovered target groups to scrape targets, as Prometheus's `PopulateLabels` does it.
//!
//! For each discovered target: the group's labels are added where the target lacks them; then
//! `job`, `__scrape_interval__`, `__scrape_timeout__`, `__metrics_path__` and `__scheme__` where
//! missing; each `params` key becomes `__param_<key>` (first value) unless the target has that
//! label already (Prometheus 3; Prometheus 2 overwrote it). `relabel_configs` run on
//! that set (a dropped target is kept for `/api/v1/targets` as dropped). Then:
//! `__address__` must be set and contain no `/`; in the Prometheus 2 mode only, a port is added
//! when missing (80 for http, 443 for https; Prometheus 3 keeps `host` as it is, in `instance`
//! too); interval and timeout come from the (possibly relabeled) `__scrape_interval__`
//! and `__scrape_timeout__` and must be positive with timeout ≤ interval; `__meta_*` labels
//! are removed; `instance` defaults to the address. The series labels of a target are those
//! not starting with `__`. The URL is `__scheme__://__address____metrics_path__?params`, where
//! `__param_*` labels override the configured `params`, sorted by key as Go's
//! `url.Values.Encode` does.

use std::collections::BTreeMap;
use std::sync::Arc;

use uplink_shared::duration::PromDuration;
use uplink_shared::model::Label;

use std::sync::atomic::AtomicBool;

use crate::config::{
    Compatibility, Config, JobLimits, NameValidation, ScrapeConfig, ScrapeProtocol,
};
use crate::discovery::{LabelSet, TargetGroup};
use crate::http_client::{self, HttpClient};
use crate::relabel::{self, RelabelConfig};

use super::Target;

/// Settings shared by every target of one job.
#[derive(Debug)]
pub struct Job {
    pub name: Arc<str>,
    pub honor_labels: bool,
    pub honor_timestamps: bool,
    pub track_timestamps_staleness: bool,
    pub limits: JobLimits,
    /// Set by the target manager while the job has more targets than `target_limit`: every
    /// scrape then fails (`up` = 0), as in Prometheus.
    pub over_target_limit: AtomicBool,
    pub metric_relabel: Vec<RelabelConfig>,
    pub client: HttpClient,
    /// The `Accept` header of every scrape, from `scrape_protocols` (see [`super::negotiate`]).
    pub accept: String,
    /// `global.external_labels`, added to every series that lacks them.
    pub external_labels: Vec<Label>,
    /// Which Prometheus the job behaves as.
    pub compatibility: Compatibility,
    /// `fallback_scrape_protocol`: the parser for a response without a usable `Content-Type`.
    pub fallback: Option<ScrapeProtocol>,
    /// Which metric and label names are valid after relabeling.
    pub validation: NameValidation,
    /// Whether the three extra report series are written (`extra_scrape_metrics`).
    pub extra_metrics: bool,
    /// How histograms are read (`scrape_native_histograms`,
    /// `always_scrape_classic_histograms`).
    pub histograms: super::protobuf::Histograms,
    /// Whether classic histograms become native ones with custom buckets
    /// (`convert_classic_histograms_to_nhcb`).
    pub nhcb: bool,
    /// `native_histogram_bucket_limit` and `native_histogram_min_bucket_factor`.
    pub histogram_limits: super::resolution::Limits,
    /// `scrape_failure_log_file`, when set (and it could be opened).
    pub failure_log: Option<Arc<super::FailureLog>>,
}

impl Job {
    /// A job named `name` with Prometheus 3's defaults: timestamps honoured, no limits, no
    /// metric relabeling, the default `Accept` header and HTTP client settings, no external
    /// labels, UTF-8 names, no fallback protocol, no extra report series. Override fields with
    /// struct update syntax.
    pub fn new(name: &str) -> Result<Job, crate::http_client::HttpClientError> {
        Ok(Job {
            name: name.into(),
            honor_labels: false,
            honor_timestamps: true,
            track_timestamps_staleness: false,
            limits: JobLimits::default(),
            over_target_limit: AtomicBool::new(false),
            metric_relabel: Vec::new(),
            client: HttpClient::new(
                &crate::http_client::HttpClientConfig::default(),
                concat!("uplink-agent/", env!("CARGO_PKG_VERSION")),
            )?,
            accept: super::negotiate::accept_header(
                Some(&[
                    ScrapeProtocol::OpenMetricsText1_0_0,
                    ScrapeProtocol::OpenMetricsText0_0_1,
                    ScrapeProtocol::PrometheusText1_0_0,
                    ScrapeProtocol::PrometheusText0_0_4,
                ]),
                false,
                Some(crate::config::Escaping::AllowUtf8),
            ),
            external_labels: Vec::new(),
            compatibility: Compatibility::Prometheus3,
            fallback: None,
            validation: NameValidation::Utf8,
            extra_metrics: false,
            histograms: super::protobuf::Histograms {
                native: false,
                classic: false,
            },
            nhcb: false,
            histogram_limits: Default::default(),
            failure_log: None,
        })
    }
}

/// Why a discovered target cannot be scraped (it is skipped alone, and reported).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("no address")]
    NoAddress,
    #[error("invalid scheme: {0:?}")]
    Scheme(String),
    #[error("{0:?} is not a valid hostname")]
    Address(String),
    #[error("error parsing scrape interval: {0}")]
    Interval(String),
    #[error("scrape interval cannot be 0")]
    ZeroInterval,
    #[error("error parsing scrape timeout: {0}")]
    Timeout(String),
    #[error("scrape timeout cannot be 0")]
    ZeroTimeout,
    #[error("scrape timeout cannot be greater than scrape interval ({0:?} > {1:?})")]
    TimeoutTooLong(String, String),
    #[error("invalid label value for {0:?}: {1:?}")]
    LabelValue(String, String),
}

/// The outcome for one discovered target.
#[derive(Debug)]
pub enum Populated {
    Active(Target),
    /// Dropped by relabeling; the labels are those before relabeling.
    Dropped(LabelSet),
    Invalid(LabelSet, TargetError),
}

/// Every target of a job's groups, in group and target order.
pub fn from_groups(
    cfg: &Config,
    sc: &ScrapeConfig,
    job: &Arc<Job>,
    groups: &[TargetGroup],
) -> Vec<Populated> {
    let mut out = Vec::new();
    for g in groups {
        for t in &g.targets {
            let mut set = t.clone();
            for (k, v) in &g.labels {
                set.entry(k.clone()).or_insert_with(|| v.clone());
            }
            out.push(populate(cfg, sc, job, set));
        }
    }
    out
}

/// The groups a job's `static_configs` amount to.
pub fn static_groups(sc: &ScrapeConfig) -> Vec<TargetGroup> {
    sc.static_configs
        .iter()
        .enumerate()
        .map(|(i, s)| TargetGroup {
            source: i.to_string(),
            targets: s
                .targets
                .iter()
                .map(|a| LabelSet::from([("__address__".to_owned(), a.clone())]))
                .collect(),
            labels: s.labels.clone(),
        })
        .collect()
}

/// Prometheus's `PopulateLabels` plus the target's URL (see the module docs).
pub fn populate(cfg: &Config, sc: &ScrapeConfig, job: &Arc<Job>, mut set: LabelSet) -> Populated {
    let defaults = [
        ("job", sc.job_name.clone()),
        (
            "__scrape_interval__",
            PromDuration(cfg.interval(sc)).to_string(),
        ),
        (
            "__scrape_timeout__",
            PromDuration(cfg.timeout(sc)).to_string(),
        ),
        ("__metrics_path__", sc.metrics_path.clone()),
        ("__scheme__", sc.scheme.as_str().to_owned()),
    ];
    for (k, v) in defaults {
        match set.get(k) {
            Some(existing) if !existing.is_empty() => {}
            _ => {
                set.insert(k.to_owned(), v);
            }
        }
    }
    let prometheus2 = cfg.compatibility() == Compatibility::Prometheus2;
    for (k, vs) in &sc.params {
        if let Some(v) = vs.first() {
            let name = format!("__param_{k}");
            // Prometheus 3 keeps a `__param_` label a target already has.
            if prometheus2 || set.get(&name).is_none_or(String::is_empty) {
                set.insert(name, v.clone());
            }
        }
    }
    let discovered = set.clone();
    if !relabel::process_with(&mut set, &sc.relabel_configs, prometheus2) {
        return Populated::Dropped(discovered);
    }
    match finish(sc, job, set, prometheus2) {
        Ok(t) => Populated::Active(Target {
            discovered: Arc::new(discovered),
            ..t
        }),
        Err(e) => Populated::Invalid(discovered, e),
    }
}

fn finish(
    sc: &ScrapeConfig,
    job: &Arc<Job>,
    mut set: LabelSet,
    prometheus2: bool,
) -> Result<Target, TargetError> {
    let mut addr = match set.get("__address__") {
        Some(a) if !a.is_empty() => a.clone(),
        _ => return Err(TargetError::NoAddress),
    };
    let scheme = set.get("__scheme__").cloned().unwrap_or_default();
    // Prometheus 2 only: a port is added when appending one makes a valid host:port.
    if prometheus2 && !has_port(&addr) && has_port(&format!("{addr}:1234")) {
        let port = match scheme.as_str() {
            "http" | "" => 80,
            "https" => 443,
            _ => return Err(TargetError::Scheme(scheme)),
        };
        addr = format!("{addr}:{port}");
        set.insert("__address__".into(), addr.clone());
    }
    if addr.contains('/') {
        return Err(TargetError::Address(addr));
    }
    let label = |set: &LabelSet, n: &str| set.get(n).cloned().unwrap_or_default();
    let interval_s = label(&set, "__scrape_interval__");
    let interval = PromDuration::parse(&interval_s)
        .map_err(|e| TargetError::Interval(e.to_string()))?
        .0;
    if interval.is_zero() {
        return Err(TargetError::ZeroInterval);
    }
    let timeout_s = label(&set, "__scrape_timeout__");
    let timeout = PromDuration::parse(&timeout_s)
        .map_err(|e| TargetError::Timeout(e.to_string()))?
        .0;
    if timeout.is_zero() {
        return Err(TargetError::ZeroTimeout);
    }
    if timeout > interval {
        return Err(TargetError::TimeoutTooLong(timeout_s, interval_s));
    }
    set.retain(|k, _| !k.starts_with("__meta_"));
    if set.get("instance").is_none_or(String::is_empty) {
        set.insert("instance".into(), addr.clone());
    }
    let url = url(sc, &set, &scheme, &addr);
    let mut labels = Vec::new();
    for (k, v) in &set {
        if k.starts_with("__") {
            continue;
        }
        if v.is_empty() {
            continue;
        }
        labels.push(Label::new(k.clone(), v.clone()));
    }
    Ok(Target {
        job: job.clone(),
        url,
        labels,
        discovered: Arc::default(),
        interval,
        timeout,
    })
}

fn url(sc: &ScrapeConfig, set: &LabelSet, scheme: &str, addr: &str) -> String {
    let mut params: BTreeMap<&str, Vec<&str>> = sc
        .params
        .iter()
        .map(|(k, vs)| (k.as_str(), vs.iter().map(String::as_str).collect()))
        .collect();
    for (k, v) in set {
        if let Some(p) = k.strip_prefix("__param_") {
            let slot = params.entry(p).or_default();
            match slot.first_mut() {
                Some(first) => *first = v,
                None => slot.push(v),
            }
        }
    }
    let path = set.get("__metrics_path__").map_or("", String::as_str);
    let mut url = format!("{scheme}://{addr}{}", go_escaped_path(path));
    let query: Vec<String> = params
        .iter()
        .flat_map(|(k, vs)| {
            vs.iter().map(move |v| {
                format!(
                    "{}={}",
                    http_client::query_escape(k),
                    http_client::query_escape(v)
                )
            })
        })
        .collect();
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query.join("&"));
    }
    url
}

/// The path as Go's `url.URL` writes it: a `/` added in front when missing, and every byte
/// escaped as `%XX` except letters, digits and `-_.~$&+,/:;=@` (so a `?` in `metrics_path` is
/// part of the path, `%3F`, as in Prometheus).
fn go_escaped_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 1);
    if !path.is_empty() && !path.starts_with('/') {
        out.push('/');
    }
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether `addr` ends in a port (`host:port`, `[v6]:port`); a bare IPv6 address has none.
fn has_port(addr: &str) -> bool {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest
            .split_once("]:")
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    }
    match addr.rsplit_once(':') {
        Some((host, port)) => {
            !host.contains(':') && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config(job_yaml: &str) -> Config {
        let text = format!(
            "global: {{scrape_interval: 30s}}\nscrape_configs:\n{job_yaml}\nuplink:\n  gateways: [\"g:1\"]\n  tls: {{cert_file: a, key_file: b, ca_file: c}}\n  queue: {{directory: q}}\n"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("p.yml");
        std::fs::write(&p, text).expect("write");
        Config::load(&p).expect("valid")
    }

    #[test]
    fn the_path_is_written_as_go_writes_it() {
        assert_eq!(go_escaped_path("/metrics"), "/metrics");
        assert_eq!(go_escaped_path("metrics"), "/metrics");
        assert_eq!(go_escaped_path("/m?c=1"), "/m%3Fc=1");
        assert_eq!(go_escaped_path("/a b/é"), "/a%20b/%C3%A9");
        assert_eq!(go_escaped_path("/x;y=1,z@w:$&+~"), "/x;y=1,z@w:$&+~");
        assert_eq!(go_escaped_path(""), "");
    }

    #[test]
    fn prometheus_2_adds_the_default_port_and_params_win() {
        let cfg = config(concat!(
            "  - job_name: node\n",
            "    params: {module: [cfg]}\n",
            "    static_configs:\n",
            "      - targets: [h1, 'h2:9100']\n",
            "        labels: {__param_module: from_target}",
        ));
        let sc = &cfg.scrape_configs[0];
        let j = job(sc);
        let targets = |cfg: &Config| -> Vec<Target> {
            from_groups(cfg, sc, &j, &static_groups(sc))
                .into_iter()
                .map(active)
                .collect()
        };
        let three = targets(&cfg);
        assert_eq!(three[0].url, "http://h1/metrics?module=from_target");
        let mut cfg2 = cfg.clone();
        cfg2.uplink.compatibility = crate::config::Compatibility::Prometheus2;
        let two = targets(&cfg2);
        assert_eq!(two[0].url, "http://h1:80/metrics?module=cfg");
        assert!(two[0].labels.contains(&Label::new("instance", "h1:80")));
        assert_eq!(two[1].url, "http://h2:9100/metrics?module=cfg");
    }

    fn job(sc: &ScrapeConfig) -> Arc<Job> {
        Arc::new(Job {
            honor_labels: sc.honor_labels,
            honor_timestamps: sc.honor_timestamps,
            client: HttpClient::new(&sc.http_client(), "test").expect("client"),
            ..Job::new(&sc.job_name).expect("job")
        })
    }

    fn active(p: Populated) -> Target {
        match p {
            Populated::Active(t) => t,
            other => panic!("not active: {other:?}"),
        }
    }

    #[test]
    fn static_target_gets_prometheus_defaults() {
        let cfg = config(
            "  - job_name: node\n    params: {module: [a b, c]}\n    static_configs:\n      - targets: [h1, 'h2:9100', '[::1]']\n        labels: {env: dev}",
        );
        let sc = &cfg.scrape_configs[0];
        let j = job(sc);
        let all: Vec<Target> = from_groups(&cfg, sc, &j, &static_groups(sc))
            .into_iter()
            .map(active)
            .collect();
        assert_eq!(all[0].url, "http://h1/metrics?module=a+b&module=c");
        assert_eq!(
            all[0].labels,
            vec![
                Label::new("env", "dev"),
                Label::new("instance", "h1"),
                Label::new("job", "node")
            ]
        );
        assert_eq!(all[0].interval, Duration::from_secs(30));
        assert_eq!(all[0].timeout, Duration::from_secs(10));
        assert_eq!(all[1].url, "http://h2:9100/metrics?module=a+b&module=c");
        assert_eq!(all[2].url, "http://[::1]/metrics?module=a+b&module=c");
        assert_eq!(
            all[0].discovered.get("__param_module").map(String::as_str),
            Some("a b")
        );
    }

    #[test]
    fn relabeling_sets_url_interval_and_drops() {
        let cfg = config(concat!(
            "  - job_name: blackbox\n",
            "    metrics_path: /probe\n",
            "    static_configs: [{targets: ['example.org', 'skip.me']}]\n",
            "    relabel_configs:\n",
            "      - {source_labels: [__address__], regex: 'skip.*', action: drop}\n",
            "      - {source_labels: [__address__], target_label: __param_target}\n",
            "      - {source_labels: [__param_target], target_label: instance}\n",
            "      - {target_label: __address__, replacement: 'bb:9115'}\n",
            "      - {target_label: __scrape_interval__, replacement: 1m}\n",
            "      - {target_label: __scheme__, replacement: https}\n",
            "      - {target_label: __meta_x, replacement: gone}\n",
            "      - {target_label: __tmp_y, replacement: hidden}\n",
        ));
        let sc = &cfg.scrape_configs[0];
        let j = job(sc);
        let mut all = from_groups(&cfg, sc, &j, &static_groups(sc)).into_iter();
        let t = active(all.next().expect("first"));
        assert_eq!(t.url, "https://bb:9115/probe?target=example.org");
        assert_eq!(t.interval, Duration::from_secs(60));
        assert_eq!(
            t.labels,
            vec![
                Label::new("instance", "example.org"),
                Label::new("job", "blackbox")
            ]
        );
        assert!(matches!(all.next(), Some(Populated::Dropped(_))));
    }

    #[test]
    fn bad_targets_fail_alone() {
        let cfg = config(concat!(
            "  - job_name: j\n",
            "    static_configs: [{targets: ['a:1', 'b:2']}]\n",
            "    relabel_configs:\n",
            "      - {source_labels: [__address__], regex: 'b.*', target_label: __scrape_timeout__, replacement: 2m}\n",
        ));
        let sc = &cfg.scrape_configs[0];
        let j = job(sc);
        let all = from_groups(&cfg, sc, &j, &static_groups(sc));
        assert!(matches!(all[0], Populated::Active(_)));
        match &all[1] {
            Populated::Invalid(_, e) => assert_eq!(
                e.to_string(),
                "scrape timeout cannot be greater than scrape interval (\"2m\" > \"30s\")"
            ),
            other => panic!("{other:?}"),
        }
        let p = populate(&cfg, sc, &j, LabelSet::new());
        assert!(matches!(p, Populated::Invalid(_, TargetError::NoAddress)));
    }
}
