//! The effective configuration, as `GET /api/v1/status/config` returns it: what Prometheus
//! 3.5's agent prints for the same file, plus Uplink's own `uplink:` section.
//!
//! Reproduced from Prometheus 3.5 (measured against the real binary, and checked on a corpus
//! by `loadtest/tests/config_differential.rs`, which compares `global` and `scrape_configs` as
//! parsed YAML):
//!
//! - `global` with its derived values (default `1m` intervals, the `10s` timeout capped at the
//!   interval, the default `scrape_protocols`); optional keys only when set. The two name
//!   schemes are printed as written when the file has a `global:` mapping, and as
//!   `utf8`/`allow-utf-8` when it has none (Prometheus's built-in default block).
//! - `scrape_config_files` as the list of patterns, resolved against the file's directory; the
//!   jobs they bring are not inlined (Prometheus does not either).
//! - Every job of the file with every derived value: intervals and timeouts, protocols, limits
//!   and schemes inherited from `global`, `honor_timestamps`, `track_timestamps_staleness`,
//!   `enable_compression`, `follow_redirects` and `enable_http2` always; `bearer_token*`
//!   turned into `authorization` (type `Bearer`); relative paths joined with the file's
//!   directory and cleaned as Go's `filepath.Join` does; every secret as `<secret>` and a
//!   proxy URL's password as `xxxxx`; discovery entries with their defaults, in Prometheus's
//!   key order (relabeling before discovery, discovery lists by name).
//! - Values Prometheus echoes as written are taken from the file as written
//!   ([`Config::document`]): `scheme` and `metrics_path` (the agent reads `HTTPS` as `https` and
//!   gives `metrics` its `/`), a DNS `type` in any case, and whether a relabeling step gave a
//!   `regex` (an omitted one is not printed; an empty or null one prints as `null`), and an
//!   empty `proxy_url` (which means none, but is printed).
//!
//! Deliberately different:
//!
//! - `runtime`, `otlp` and the sections an agent ignores (`remote_write`, `rule_files`, ...)
//!   are not printed: they have no effect on the agent. `tracing`, which has, is printed as
//!   written with its secrets redacted.
//! - Keys Prometheus added after 3.5 and the agent takes (`scrape_native_histograms`,
//!   `extra_scrape_metrics`, the Kubernetes `attach_metadata` keys) are printed when set.
//! - `uplink:` follows, with its effective values (the server name, the sync policy, the
//!   self-scrape interval).
//!
//! Key order follows Prometheus's (a [`Mapping`] keeps insertion order); user maps (labels,
//! params, headers) are sorted. The YAML text itself is serde_yaml's, not Go's: quoting and
//! flow style differ, the values do not.

use std::path::Path;

use serde_yaml::{Mapping, Value};

use crate::config::{ByteSize, Compatibility, Config, ScrapeConfig, ScrapeProtocol, StaticConfig};
use crate::discovery::dns::DnsSdConfig;
use crate::discovery::file::FileSdConfig;
use crate::discovery::http::HttpSdConfig;
use crate::discovery::kubernetes::KubernetesSdConfig;
use crate::http_client::{Authorization, BasicAuth, HttpHeader, OAuth2, Secret, TlsConfig};
use crate::relabel::RelabelConfig;
use uplink_shared::duration::PromDuration;

/// How a secret is shown.
pub const SECRET: &str = "<secret>";

/// The effective configuration as YAML text (what `/api/v1/status/config` returns), for `cfg`
/// loaded from `main` (the Prometheus file's path as given on the command line: relative paths
/// are shown joined with its directory, as Prometheus shows them).
pub fn yaml(cfg: &Config, main: &Path) -> String {
    serde_yaml::to_string(&document(cfg, main))
        .unwrap_or_else(|e| format!("# the effective configuration cannot be printed: {e}\n"))
}

/// The effective configuration as a YAML value (see the module docs).
pub fn document(cfg: &Config, main: &Path) -> Value {
    let dir = main.parent().map(path_text).unwrap_or_default();
    let dir = if dir.is_empty() { ".".to_owned() } else { dir };
    let ctx = Ctx { cfg, dir: &dir };
    let mut out = Map::default();
    out.put("global", ctx.global());
    if !cfg.scrape_config_files.is_empty() {
        let files = cfg.scrape_config_files.iter().map(|f| ctx.path(f));
        out.put("scrape_config_files", seq(files));
    }
    let jobs: Vec<Value> = cfg
        .scrape_configs
        .iter()
        .enumerate()
        .filter(|(_, job)| job.source.is_none())
        .map(|(i, job)| ctx.job(i, job))
        .collect();
    if !jobs.is_empty() {
        out.put("scrape_configs", Value::Sequence(jobs));
    }
    if let Some(tracing) = cfg.document.get("tracing") {
        let mut tracing = tracing.clone();
        crate::api::redact(&mut tracing);
        out.put("tracing", tracing);
    }
    out.put("uplink", uplink(cfg));
    out.0.into()
}

/// A mapping built in key order.
#[derive(Default)]
struct Map(Mapping);

impl Map {
    fn put(&mut self, key: &str, value: impl Into<Value>) {
        self.0.insert(key.into(), value.into());
    }

    /// Puts `value` when there is one.
    fn opt(&mut self, key: &str, value: Option<impl Into<Value>>) {
        if let Some(v) = value {
            self.put(key, v);
        }
    }

    /// Puts a number unless it is zero (Prometheus's `omitempty`).
    fn nonzero(&mut self, key: &str, n: u64) {
        if n != 0 {
            self.put(key, n);
        }
    }

    /// Puts a string unless it is empty.
    fn nonempty(&mut self, key: &str, s: &str) {
        if !s.is_empty() {
            self.put(key, s);
        }
    }

    /// Puts `true` only.
    fn flag(&mut self, key: &str, b: bool) {
        if b {
            self.put(key, true);
        }
    }
}

impl From<Map> for Value {
    fn from(m: Map) -> Value {
        Value::Mapping(m.0)
    }
}

fn seq<T: Into<Value>>(items: impl IntoIterator<Item = T>) -> Value {
    Value::Sequence(items.into_iter().map(Into::into).collect())
}

fn duration(d: PromDuration) -> Value {
    d.to_string().into()
}

fn secret(s: &Option<Secret>) -> Option<&'static str> {
    s.as_ref().map(|_| SECRET)
}

fn path_text(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// What every part needs: the configuration and the directory relative paths are joined with.
struct Ctx<'a> {
    cfg: &'a Config,
    dir: &'a str,
}

impl Ctx<'_> {
    /// A path as Prometheus shows it: relative ones joined with the file's directory.
    fn path(&self, p: &str) -> String {
        join_dir(self.dir, p)
    }

    fn file(&self, p: &Path) -> String {
        self.path(&p.to_string_lossy())
    }

    fn protocols(list: &[ScrapeProtocol]) -> Value {
        seq(list.iter().map(|p| p.as_str()))
    }

    fn global(&self) -> Value {
        let cfg = self.cfg;
        let g = &cfg.global;
        let mut m = Map::default();
        m.put("scrape_interval", duration(g.scrape_interval));
        m.put("scrape_timeout", duration(g.scrape_timeout));
        let protocols = match &g.scrape_protocols {
            Some(list) => list.clone(),
            None => default_protocols(cfg.features.native_histograms),
        };
        m.put("scrape_protocols", Self::protocols(&protocols));
        m.put("evaluation_interval", duration(g.evaluation_interval));
        m.opt(
            "rule_query_offset",
            g.rule_query_offset.filter(|d| !d.0.is_zero()).map(duration),
        );
        let file =
            |f: &Option<String>| f.as_deref().filter(|f| !f.is_empty()).map(|f| self.path(f));
        m.opt("query_log_file", file(&g.query_log_file));
        m.opt("scrape_failure_log_file", file(&g.scrape_failure_log_file));
        if !g.external_labels.is_empty() {
            m.put("external_labels", string_map(&g.external_labels));
        }
        m.opt(
            "body_size_limit",
            (g.body_size_limit.0 != 0).then(|| g.body_size_limit.to_string()),
        );
        m.nonzero("sample_limit", g.sample_limit);
        m.nonzero("target_limit", g.target_limit);
        m.nonzero("label_limit", g.label_limit);
        m.nonzero("label_name_length_limit", g.label_name_length_limit);
        m.nonzero("label_value_length_limit", g.label_value_length_limit);
        m.nonzero("keep_dropped_targets", g.keep_dropped_targets);
        // Without a `global:` mapping Prometheus uses its built-in block, which names both
        // schemes; with one, they are printed only as written.
        if global_written(&cfg.document) {
            for (key, value) in [
                (
                    "metric_name_validation_scheme",
                    &g.metric_name_validation_scheme,
                ),
                (
                    "metric_name_escaping_scheme",
                    &g.metric_name_escaping_scheme,
                ),
            ] {
                m.nonempty(key, value.as_deref().unwrap_or_default());
            }
        } else {
            m.put("metric_name_validation_scheme", "utf8");
            m.put("metric_name_escaping_scheme", "allow-utf-8");
        }
        m.flag(
            "convert_classic_histograms_to_nhcb",
            g.convert_classic_histograms_to_nhcb == Some(true),
        );
        m.flag(
            "always_scrape_classic_histograms",
            g.always_scrape_classic_histograms == Some(true),
        );
        // Keys of Prometheus after 3.5, when set.
        m.opt("scrape_native_histograms", g.scrape_native_histograms);
        m.opt("extra_scrape_metrics", g.extra_scrape_metrics);
        m.into()
    }

    fn job(&self, index: usize, job: &ScrapeConfig) -> Value {
        let cfg = self.cfg;
        let written = cfg
            .document
            .get("scrape_configs")
            .and_then(|jobs| jobs.get(index));
        let written_str = |key: &str| written.and_then(|w| w.get(key)).and_then(Value::as_str);
        let mut m = Map::default();
        m.put("job_name", job.job_name.as_str());
        m.flag("honor_labels", job.honor_labels);
        m.put("honor_timestamps", job.honor_timestamps);
        m.put("track_timestamps_staleness", job.track_timestamps_staleness);
        if !job.params.is_empty() {
            let params: Mapping = job
                .params
                .iter()
                .map(|(k, vs)| (k.as_str().into(), seq(vs.iter().map(String::as_str))))
                .collect();
            m.put("params", params);
        }
        m.put("scrape_interval", duration(PromDuration(cfg.interval(job))));
        m.put("scrape_timeout", duration(PromDuration(cfg.timeout(job))));
        m.opt(
            "scrape_protocols",
            cfg.scrape_protocols(job).map(|l| Self::protocols(&l)),
        );
        m.opt(
            "fallback_scrape_protocol",
            job.fallback_scrape_protocol.map(ScrapeProtocol::as_str),
        );
        m.put(
            "always_scrape_classic_histograms",
            cfg.always_scrape_classic_histograms(job),
        );
        m.put(
            "convert_classic_histograms_to_nhcb",
            cfg.convert_classic_histograms_to_nhcb(job),
        );
        if job.scrape_native_histograms.is_some() || cfg.global.scrape_native_histograms.is_some() {
            m.put("scrape_native_histograms", cfg.native_histograms(job));
        }
        if job.extra_scrape_metrics.is_some() || cfg.global.extra_scrape_metrics.is_some() {
            m.put("extra_scrape_metrics", cfg.extra_scrape_metrics(job));
        }
        m.opt(
            "scrape_failure_log_file",
            cfg.scrape_failure_log_file(job).map(|f| self.path(f)),
        );
        m.nonempty(
            "metrics_path",
            written_str("metrics_path").unwrap_or(&job.metrics_path),
        );
        m.nonempty(
            "scheme",
            written_str("scheme").unwrap_or(job.scheme.as_str()),
        );
        m.put("enable_compression", job.enable_compression);
        let limits = cfg.limits(job);
        m.opt(
            "body_size_limit",
            (limits.body_size_limit != 0).then(|| ByteSize(limits.body_size_limit).to_string()),
        );
        m.nonzero("sample_limit", limits.sample_limit);
        m.nonzero("target_limit", limits.target_limit);
        m.nonzero("label_limit", limits.label_limit);
        m.nonzero("label_name_length_limit", limits.label_name_length_limit);
        m.nonzero("label_value_length_limit", limits.label_value_length_limit);
        m.nonzero(
            "native_histogram_bucket_limit",
            job.native_histogram_bucket_limit.unwrap_or(0),
        );
        if let Some(f) = job.native_histogram_min_bucket_factor.filter(|f| *f != 0.0) {
            m.put("native_histogram_min_bucket_factor", number(f));
        }
        m.nonzero("keep_dropped_targets", limits.keep_dropped_targets);
        m.put(
            "metric_name_validation_scheme",
            cfg.validation(job).as_str(),
        );
        m.put("metric_name_escaping_scheme", cfg.escaping(job).as_str());
        self.http_client(
            &mut m,
            &Http {
                basic_auth: &job.basic_auth,
                authorization: &job.authorization,
                bearer_token: &job.bearer_token,
                bearer_token_file: job.bearer_token_file.as_deref(),
                oauth2: &job.oauth2,
                tls_config: &job.tls_config,
                follow_redirects: job.follow_redirects,
                enable_http2: job.enable_http2,
                proxy_url: &job.proxy_url,
                // Prometheus keeps an empty proxy URL (which means none) and prints it.
                empty_proxy_url: written_str("proxy_url") == Some(""),
                no_proxy: &job.no_proxy,
                proxy_from_environment: job.proxy_from_environment,
                proxy_connect_header: &job.proxy_connect_header,
                http_headers: &job.http_headers,
            },
        );
        for (key, steps) in [
            ("relabel_configs", &job.relabel_configs),
            ("metric_relabel_configs", &job.metric_relabel_configs),
        ] {
            if steps.is_empty() {
                continue;
            }
            let written = written.and_then(|w| w.get(key));
            let steps = steps.iter().enumerate().map(|(k, step)| {
                let regex_given = written
                    .and_then(|w| w.get(k))
                    .and_then(|w| w.get("regex"))
                    .is_some();
                relabel(step, regex_given)
            });
            m.put(key, seq(steps));
        }
        // Discovery lists, by name, as Prometheus orders them.
        if !job.dns_sd_configs.is_empty() {
            let written = written.and_then(|w| w.get("dns_sd_configs"));
            let entries = job.dns_sd_configs.iter().enumerate().map(|(k, d)| {
                let kind = written
                    .and_then(|w| w.get(k))
                    .and_then(|w| w.get("type"))
                    .and_then(Value::as_str);
                dns(d, kind)
            });
            m.put("dns_sd_configs", seq(entries));
        }
        if !job.file_sd_configs.is_empty() {
            let entries = job.file_sd_configs.iter().map(|f| self.file_sd(f));
            m.put("file_sd_configs", seq(entries));
        }
        if !job.http_sd_configs.is_empty() {
            let entries = job.http_sd_configs.iter().map(|h| self.http_sd(h));
            m.put("http_sd_configs", seq(entries));
        }
        if !job.kubernetes_sd_configs.is_empty() {
            let entries = job.kubernetes_sd_configs.iter().map(|k| self.kubernetes(k));
            m.put("kubernetes_sd_configs", seq(entries));
        }
        if !job.static_configs.is_empty() {
            m.put(
                "static_configs",
                seq(job.static_configs.iter().map(static_group)),
            );
        }
        m.into()
    }

    /// Prometheus's common HTTP client keys, in its order.
    fn http_client(&self, m: &mut Map, h: &Http<'_>) {
        if let Some(b) = h.basic_auth {
            m.put("basic_auth", self.basic_auth(b));
        }
        let bearer = Authorization::bearer(h.bearer_token, &h.bearer_token_file.map(Into::into));
        if let Some(a) = h.authorization.as_ref().or(bearer.as_ref()) {
            m.put("authorization", self.authorization(a));
        }
        if let Some(o) = h.oauth2 {
            m.put("oauth2", self.oauth2(o));
        }
        m.opt("tls_config", self.tls(h.tls_config));
        m.put("follow_redirects", h.follow_redirects);
        m.put("enable_http2", h.enable_http2);
        if h.empty_proxy_url && h.proxy_url.is_none() {
            m.put("proxy_url", "");
        }
        self.proxy(
            m,
            h.proxy_url,
            h.no_proxy,
            h.proxy_from_environment,
            h.proxy_connect_header,
        );
        if let Some(headers) = h.http_headers {
            let headers: Mapping = headers
                .iter()
                .map(|(name, header)| (name.as_str().into(), self.header(header)))
                .collect();
            m.put("http_headers", headers);
        }
    }

    fn proxy(
        &self,
        m: &mut Map,
        url: &Option<String>,
        no_proxy: &Option<String>,
        from_environment: bool,
        connect_header: &std::collections::BTreeMap<String, Vec<Secret>>,
    ) {
        m.opt("proxy_url", url.as_deref().map(redact_url));
        m.opt("no_proxy", no_proxy.as_deref());
        m.flag("proxy_from_environment", from_environment);
        if !connect_header.is_empty() {
            let headers: Mapping = connect_header
                .iter()
                .map(|(name, values)| (name.as_str().into(), seq(values.iter().map(|_| SECRET))))
                .collect();
            m.put("proxy_connect_header", headers);
        }
    }

    fn basic_auth(&self, b: &BasicAuth) -> Value {
        let mut m = Map::default();
        m.nonempty("username", &b.username);
        m.opt(
            "username_file",
            b.username_file.as_deref().map(|p| self.file(p)),
        );
        m.opt("password", secret(&b.password));
        m.opt(
            "password_file",
            b.password_file.as_deref().map(|p| self.file(p)),
        );
        m.into()
    }

    fn authorization(&self, a: &Authorization) -> Value {
        let mut m = Map::default();
        m.put("type", a.kind.as_str());
        m.opt("credentials", secret(&a.credentials));
        m.opt(
            "credentials_file",
            a.credentials_file.as_deref().map(|p| self.file(p)),
        );
        m.into()
    }

    fn oauth2(&self, o: &OAuth2) -> Value {
        let mut m = Map::default();
        m.put("client_id", o.client_id.as_str());
        m.opt("client_secret", secret(&o.client_secret));
        m.opt(
            "client_secret_file",
            o.client_secret_file.as_deref().map(|p| self.file(p)),
        );
        if !o.scopes.is_empty() {
            m.put("scopes", seq(o.scopes.iter().map(String::as_str)));
        }
        m.put("token_url", o.token_url.as_str());
        if !o.endpoint_params.is_empty() {
            m.put("endpoint_params", string_map(&o.endpoint_params));
        }
        m.opt("tls_config", self.tls(&o.tls_config));
        self.proxy(
            &mut m,
            &o.proxy_url,
            &o.no_proxy,
            o.proxy_from_environment,
            &o.proxy_connect_header,
        );
        m.into()
    }

    /// A `tls_config`, or nothing when every key has its zero value (as Prometheus omits it).
    fn tls(&self, t: &TlsConfig) -> Option<Value> {
        if *t == TlsConfig::default() {
            return None;
        }
        let mut m = Map::default();
        m.opt("ca", t.ca.as_deref());
        m.opt("cert", t.cert.as_deref());
        m.opt("key", secret(&t.key));
        m.opt("ca_file", t.ca_file.as_deref().map(|p| self.file(p)));
        m.opt("cert_file", t.cert_file.as_deref().map(|p| self.file(p)));
        m.opt("key_file", t.key_file.as_deref().map(|p| self.file(p)));
        m.opt("server_name", t.server_name.as_deref());
        m.put("insecure_skip_verify", t.insecure_skip_verify);
        m.opt("min_version", t.min_version.as_deref());
        m.opt("max_version", t.max_version.as_deref());
        Some(m.into())
    }

    fn header(&self, h: &HttpHeader) -> Value {
        let mut m = Map::default();
        if !h.values.is_empty() {
            m.put("values", seq(h.values.iter().map(String::as_str)));
        }
        if !h.secrets.is_empty() {
            m.put("secrets", seq(h.secrets.iter().map(|_| SECRET)));
        }
        if !h.files.is_empty() {
            m.put("files", seq(h.files.iter().map(|f| self.file(f))));
        }
        m.into()
    }

    fn file_sd(&self, f: &FileSdConfig) -> Value {
        let mut m = Map::default();
        m.put("files", seq(f.files.iter().map(|p| self.path(p))));
        m.put("refresh_interval", duration(f.refresh_interval));
        m.into()
    }

    fn http_sd(&self, h: &HttpSdConfig) -> Value {
        let mut m = Map::default();
        self.http_client(
            &mut m,
            &Http {
                basic_auth: &h.basic_auth,
                authorization: &h.authorization,
                bearer_token: &None,
                bearer_token_file: None,
                oauth2: &h.oauth2,
                tls_config: &h.tls_config,
                follow_redirects: h.follow_redirects,
                enable_http2: h.enable_http2,
                proxy_url: &h.proxy_url,
                empty_proxy_url: false,
                no_proxy: &h.no_proxy,
                proxy_from_environment: h.proxy_from_environment,
                proxy_connect_header: &h.proxy_connect_header,
                http_headers: &h.http_headers,
            },
        );
        m.put("refresh_interval", duration(h.refresh_interval));
        m.put("url", h.url.as_str());
        m.into()
    }

    fn kubernetes(&self, k: &KubernetesSdConfig) -> Value {
        let mut m = Map::default();
        m.opt("api_server", k.api_server.as_deref().map(redact_url));
        m.opt("role", k.role.map(|r| r.as_str()));
        m.put(
            "kubeconfig_file",
            k.kubeconfig_file
                .as_deref()
                .map(|p| self.file(p))
                .unwrap_or_default(),
        );
        self.http_client(
            &mut m,
            &Http {
                basic_auth: &k.basic_auth,
                authorization: &k.authorization,
                bearer_token: &k.bearer_token,
                bearer_token_file: k.bearer_token_file.as_deref(),
                oauth2: &k.oauth2,
                tls_config: &k.tls_config,
                follow_redirects: k.follow_redirects,
                enable_http2: k.enable_http2,
                proxy_url: &k.proxy_url,
                empty_proxy_url: false,
                no_proxy: &k.no_proxy,
                proxy_from_environment: k.proxy_from_environment,
                proxy_connect_header: &k.proxy_connect_header,
                http_headers: &k.http_headers,
            },
        );
        let ns = &k.namespaces;
        if ns.own_namespace || !ns.names.is_empty() {
            let mut n = Map::default();
            n.put("own_namespace", ns.own_namespace);
            n.put("names", seq(ns.names.iter().map(String::as_str)));
            m.put("namespaces", n);
        }
        if !k.selectors.is_empty() {
            let selectors = k.selectors.iter().map(|s| {
                let mut sel = Map::default();
                sel.put("role", s.role.as_str());
                sel.nonempty("label", &s.label);
                sel.nonempty("field", &s.field);
                Value::from(sel)
            });
            m.put("selectors", seq(selectors));
        }
        let a = &k.attach_metadata;
        let mut attach = Map::default();
        attach.flag("node", a.node);
        // Keys of Prometheus after 3.5, when set.
        attach.flag("namespace", a.namespace);
        attach.flag("deployment", a.deployment);
        attach.flag("job", a.job);
        attach.flag("cronjob", a.cronjob);
        if !attach.0.is_empty() {
            m.put("attach_metadata", attach);
        }
        m.into()
    }
}

/// A job's or a discovery entry's HTTP client keys, gathered.
struct Http<'a> {
    basic_auth: &'a Option<BasicAuth>,
    authorization: &'a Option<Authorization>,
    bearer_token: &'a Option<Secret>,
    bearer_token_file: Option<&'a Path>,
    oauth2: &'a Option<OAuth2>,
    tls_config: &'a TlsConfig,
    follow_redirects: bool,
    enable_http2: bool,
    proxy_url: &'a Option<String>,
    /// Written as `''` (a job's only).
    empty_proxy_url: bool,
    no_proxy: &'a Option<String>,
    proxy_from_environment: bool,
    proxy_connect_header: &'a std::collections::BTreeMap<String, Vec<Secret>>,
    http_headers: &'a Option<std::collections::BTreeMap<String, HttpHeader>>,
}

/// Prometheus 3.5's default `scrape_protocols` (protobuf first with
/// `--enable-feature=native-histograms`).
fn default_protocols(native_histograms: bool) -> Vec<ScrapeProtocol> {
    use ScrapeProtocol as P;
    let text = [
        P::OpenMetricsText1_0_0,
        P::OpenMetricsText0_0_1,
        P::PrometheusText1_0_0,
        P::PrometheusText0_0_4,
    ];
    native_histograms
        .then_some(P::PrometheusProto)
        .into_iter()
        .chain(text)
        .collect()
}

/// Whether the file has a `global:` mapping (not absent, not null).
fn global_written(document: &Value) -> bool {
    document.get("global").is_some_and(Value::is_mapping)
}

fn string_map(m: &std::collections::BTreeMap<String, String>) -> Mapping {
    m.iter()
        .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
        .collect()
}

/// A float as Go prints it: integral values without a fraction.
fn number(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        Value::from(f as i64)
    } else {
        Value::from(f)
    }
}

fn relabel(step: &RelabelConfig, regex_given: bool) -> Value {
    let mut m = Map::default();
    if !step.source_labels.is_empty() {
        m.put(
            "source_labels",
            seq(step.source_labels.iter().map(String::as_str)),
        );
    }
    m.nonempty("separator", &step.separator);
    if regex_given {
        let regex = step.regex.as_str();
        m.put(
            "regex",
            if regex.is_empty() {
                Value::Null
            } else {
                regex.into()
            },
        );
    }
    m.nonzero("modulus", step.modulus);
    m.nonempty("target_label", &step.target_label);
    m.nonempty("replacement", &step.replacement);
    m.put("action", step.action.name());
    m.into()
}

fn dns(d: &DnsSdConfig, written_type: Option<&str>) -> Value {
    let mut m = Map::default();
    m.put("names", seq(d.names.iter().map(String::as_str)));
    m.put("refresh_interval", duration(d.refresh_interval));
    m.put("type", written_type.unwrap_or(d.record_type.as_str()));
    m.put("port", u64::from(d.port.unwrap_or(0)));
    m.into()
}

fn static_group(s: &StaticConfig) -> Value {
    let mut m = Map::default();
    m.put("targets", seq(s.targets.iter().map(String::as_str)));
    if !s.labels.is_empty() {
        m.put("labels", string_map(&s.labels));
    }
    m.into()
}

/// A URL with its password shown as `xxxxx`, as Prometheus shows a proxy URL.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:xxxxx@{host}{tail}"),
        None => url.to_owned(),
    }
}

/// Go's `JoinDir`: a relative path joined with `dir` and cleaned; an absolute or empty one as
/// it is.
pub fn join_dir(dir: &str, path: &str) -> String {
    if path.is_empty() || path.starts_with('/') {
        return path.to_owned();
    }
    clean(&format!("{dir}/{path}"))
}

/// Go's `filepath.Clean` (Unix): one slash between elements, no `.` elements, `..` folded
/// into the element before it, none at the root; `.` for nothing.
pub fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// The `uplink:` section with its effective values.
fn uplink(cfg: &Config) -> Value {
    let u = &cfg.uplink;
    let mut m = Map::default();
    m.put("gateways", seq(u.gateways.iter().map(String::as_str)));
    m.put("server_name", cfg.server_name());
    let mut tls = Map::default();
    tls.put("cert_file", path_text(&u.tls.cert_file));
    tls.put("key_file", path_text(&u.tls.key_file));
    tls.put("ca_file", path_text(&u.tls.ca_file));
    tls.opt("crl_file", u.tls.crl_file.as_deref().map(path_text));
    tls.put("reload_interval", duration(u.tls.reload_interval));
    m.put("tls", tls);
    let q = &u.queue;
    let mut queue = Map::default();
    queue.put("directory", path_text(&q.directory));
    match q.sync_policy() {
        crate::queue::SyncPolicy::Always => {
            queue.put("sync", "always");
            queue.put("sync_interval", duration(q.sync_interval));
        }
        crate::queue::SyncPolicy::Interval(every) => {
            queue.put("sync", "interval");
            queue.put("sync_interval", duration(PromDuration(every)));
        }
    }
    queue.put("memory_buffer_bytes", q.memory_buffer_bytes);
    queue.put("max_bytes", q.max_bytes);
    queue.opt("max_age", q.max_age.map(duration));
    m.put("queue", queue);
    let s = &u.shipper;
    let mut shipper = Map::default();
    shipper.put("max_in_flight", s.max_in_flight.get());
    shipper.put("max_batch_records", s.max_batch_records.get());
    shipper.put("max_batch_bytes", s.max_batch_bytes.get());
    shipper.put("batch_delay", duration(s.batch_delay));
    shipper.put("status_interval", duration(s.status_interval));
    shipper.put("zstd_level", s.zstd_level);
    shipper.put("keep_alive", duration(s.keep_alive));
    shipper.put("idle_timeout", duration(s.idle_timeout));
    shipper.put("ack_timeout", duration(s.ack_timeout));
    shipper.put("min_backoff", duration(s.min_backoff));
    shipper.put("max_backoff", duration(s.max_backoff));
    shipper.put("redefine_interval", duration(s.redefine_interval));
    m.put("shipper", shipper);
    let r = &u.remote_write_receiver;
    let mut receiver = Map::default();
    receiver.put("max_body_bytes", r.max_body_bytes.get());
    receiver.put("max_decoded_bytes", r.max_decoded_bytes.get());
    receiver.put("max_series_per_request", r.max_series_per_request.get());
    m.put("remote_write_receiver", receiver);
    let own = &u.self_scrape;
    let mut self_scrape = Map::default();
    self_scrape.put("enabled", own.enabled);
    self_scrape.put("job_name", own.job_name.as_str());
    self_scrape.put(
        "scrape_interval",
        duration(own.scrape_interval.unwrap_or(cfg.global.scrape_interval)),
    );
    m.put("self_scrape", self_scrape);
    m.put(
        "compatibility",
        match u.compatibility {
            Compatibility::Prometheus3 => "prometheus3",
            Compatibility::Prometheus2 => "prometheus2",
        },
    );
    m.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;

    /// A file and what Prometheus 3.5.3's agent printed for it (`ROOT` is the directory
    /// holding `conf/prometheus.yml`).
    const INPUT: &str = r#"global:
  scrape_interval: 5s
  external_labels: {site: a, dollar: 'cost$$5'}
  sample_limit: 100
scrape_config_files: [jobs/*.yml]
scrape_configs:
  - job_name: node
    scheme: HTTPS
    metrics_path: metrics
    params: {module: [a, b]}
    bearer_token_file: ../secrets/token
    sample_limit: 0
    scrape_timeout: 0s
    tls_config: {ca_file: ./ca.pem, insecure_skip_verify: false}
    relabel_configs:
      - {source_labels: [__address__], target_label: a}
      - {source_labels: [__address__], target_label: b, regex: null, action: Replace}
      - {regex: 'tmp_.*', action: labeldrop}
    dns_sd_configs: [{names: [a.example.invalid], type: a, port: 9100}]
    static_configs:
      - targets: ['h:9100']
        labels: {env: dev}
      - labels: {only: labels}
  - job_name: proxied
    scrape_interval: 1m
    body_size_limit: 1500KB
    proxy_url: http://user:pw@proxy:3128
    oauth2: {client_id: c, client_secret: s, token_url: 'https://t/token'}
    file_sd_configs: [{files: [sd/*.json]}]
    metric_relabel_configs: [{source_labels: [__name__], regex: 'go_.*', action: drop}]
"#;

    const PRINTED: &str = r#"global:
  scrape_interval: 5s
  scrape_timeout: 5s
  scrape_protocols: [OpenMetricsText1.0.0, OpenMetricsText0.0.1, PrometheusText1.0.0, PrometheusText0.0.4]
  evaluation_interval: 1m
  external_labels: {dollar: cost$5, site: a}
  sample_limit: 100
scrape_config_files:
- ROOT/conf/jobs/*.yml
scrape_configs:
- job_name: node
  honor_timestamps: true
  track_timestamps_staleness: false
  params: {module: [a, b]}
  scrape_interval: 5s
  scrape_timeout: 5s
  scrape_protocols: [OpenMetricsText1.0.0, OpenMetricsText0.0.1, PrometheusText1.0.0, PrometheusText0.0.4]
  always_scrape_classic_histograms: false
  convert_classic_histograms_to_nhcb: false
  metrics_path: metrics
  scheme: HTTPS
  enable_compression: true
  sample_limit: 100
  metric_name_validation_scheme: utf8
  metric_name_escaping_scheme: allow-utf-8
  authorization: {type: Bearer, credentials_file: ROOT/secrets/token}
  tls_config: {ca_file: ROOT/conf/ca.pem, insecure_skip_verify: false}
  follow_redirects: true
  enable_http2: true
  relabel_configs:
  - {source_labels: [__address__], separator: ;, target_label: a, replacement: $1, action: replace}
  - {source_labels: [__address__], separator: ;, regex: null, target_label: b, replacement: $1, action: replace}
  - {separator: ;, regex: tmp_.*, replacement: $1, action: labeldrop}
  dns_sd_configs:
  - {names: [a.example.invalid], refresh_interval: 30s, type: a, port: 9100}
  static_configs:
  - targets: [h:9100]
    labels: {env: dev}
  - targets: []
    labels: {only: labels}
- job_name: proxied
  honor_timestamps: true
  track_timestamps_staleness: false
  scrape_interval: 1m
  scrape_timeout: 5s
  scrape_protocols: [OpenMetricsText1.0.0, OpenMetricsText0.0.1, PrometheusText1.0.0, PrometheusText0.0.4]
  always_scrape_classic_histograms: false
  convert_classic_histograms_to_nhcb: false
  metrics_path: /metrics
  scheme: http
  enable_compression: true
  body_size_limit: 1MiB476KiB
  sample_limit: 100
  metric_name_validation_scheme: utf8
  metric_name_escaping_scheme: allow-utf-8
  oauth2: {client_id: c, client_secret: <secret>, token_url: 'https://t/token'}
  follow_redirects: true
  enable_http2: true
  proxy_url: http://user:xxxxx@proxy:3128
  metric_relabel_configs:
  - {source_labels: [__name__], separator: ;, regex: go_.*, replacement: $1, action: drop}
  file_sd_configs:
  - files: [ROOT/conf/sd/*.json]
    refresh_interval: 5m
"#;

    const UPLINK: &str = "gateways: ['gw.example:4433']\n\
        tls: {cert_file: a.crt, key_file: a.key, ca_file: ca.crt}\n\
        queue: {directory: q, sync: interval, sync_interval: 250ms, max_age: 1d}\n\
        shipper: {max_in_flight: 2, zstd_level: 3, redefine_interval: 0s}\n\
        remote_write_receiver: {max_series_per_request: 10}\n\
        self_scrape: {job_name: me, scrape_interval: 30s}\n";

    fn load(root: &Path, prometheus: &str) -> Config {
        let conf = root.join("conf");
        std::fs::create_dir_all(&conf).expect("dir");
        std::fs::write(conf.join("prometheus.yml"), prometheus).expect("write");
        std::fs::write(root.join("uplink.yml"), UPLINK).expect("write");
        Config::load_from(&Source {
            prometheus: conf.join("prometheus.yml"),
            uplink: Some(root.join("uplink.yml")),
            ..Source::default()
        })
        .expect("valid")
    }

    #[test]
    fn global_and_jobs_are_what_prometheus_3_5_prints() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let cfg = load(root, INPUT);
        let doc = document(&cfg, &root.join("conf/prometheus.yml"));
        let want: Value =
            serde_yaml::from_str(&PRINTED.replace("ROOT", &root.to_string_lossy())).expect("yaml");
        for key in ["global", "scrape_config_files", "scrape_configs"] {
            assert_eq!(
                doc.get(key),
                want.get(key),
                "{key}:\n{}",
                serde_yaml::to_string(&doc.get(key)).unwrap_or_default()
            );
        }
        // Prometheus's key order.
        let keys: Vec<&str> = doc
            .as_mapping()
            .map(|m| m.keys().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(
            keys,
            ["global", "scrape_config_files", "scrape_configs", "uplink"]
        );
        let job_keys: Vec<&str> = doc["scrape_configs"][0]
            .as_mapping()
            .map(|m| m.keys().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let want_keys: Vec<&str> = want["scrape_configs"][0]
            .as_mapping()
            .map(|m| m.keys().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(job_keys, want_keys);
    }

    #[test]
    fn schemes_show_in_global_only_without_a_global_mapping_or_as_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let job = "scrape_configs: [{job_name: j, metric_name_validation_scheme: legacy}]\n";
        for (global, want) in [
            ("", Some(("utf8", "allow-utf-8"))),
            ("global:\n", Some(("utf8", "allow-utf-8"))),
            ("global: {}\n", None),
            ("global: {metric_name_validation_scheme: ''}\n", None),
        ] {
            let cfg = load(dir.path(), &format!("{global}{job}"));
            let doc = document(&cfg, Path::new("prometheus.yml"));
            let g = &doc["global"];
            let got = g.get("metric_name_validation_scheme").map(|v| {
                (
                    v.as_str().unwrap_or_default(),
                    g["metric_name_escaping_scheme"]
                        .as_str()
                        .unwrap_or_default(),
                )
            });
            assert_eq!(got, want, "{global:?}");
            // The job: legacy, and underscores (Prometheus 3.7's rule; 3.5 refuses the file).
            let j = &doc["scrape_configs"][0];
            assert_eq!(
                j["metric_name_escaping_scheme"].as_str(),
                Some("underscores")
            );
        }
        let cfg = load(
            dir.path(),
            &format!(
                "global: {{metric_name_validation_scheme: legacy, metric_name_escaping_scheme: values}}\n{job}"
            ),
        );
        let doc = document(&cfg, Path::new("prometheus.yml"));
        assert_eq!(
            doc["global"]["metric_name_validation_scheme"].as_str(),
            Some("legacy")
        );
        assert_eq!(
            doc["scrape_configs"][0]["metric_name_escaping_scheme"].as_str(),
            Some("values"),
            "inherited from global, as 3.5 does"
        );
    }

    #[test]
    fn the_uplink_section_is_effective_and_reads_back_as_the_same_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = load(dir.path(), "scrape_configs: []\n");
        let doc = document(&cfg, Path::new("prometheus.yml"));
        let u = &doc["uplink"];
        assert_eq!(u["server_name"].as_str(), Some("gw.example"));
        assert_eq!(u["queue"]["sync"].as_str(), Some("interval"));
        let back: crate::config::UplinkConfig =
            serde_yaml::from_value(u.clone()).expect("the section reads back");
        let mut expected = cfg.uplink.clone();
        expected.server_name = Some("gw.example".into());
        expected.queue.sync = Some(crate::config::SyncMode::Interval);
        assert_eq!(back, expected);
        // No scrape_configs when there are none; the text is YAML.
        assert!(doc.get("scrape_configs").is_none());
        assert!(serde_yaml::from_str::<Value>(&yaml(&cfg, Path::new("p.yml"))).is_ok());
    }

    #[test]
    fn paths_are_joined_and_cleaned_as_go_does() {
        assert_eq!(join_dir("corpus", "../files/pw"), "files/pw");
        assert_eq!(join_dir(".", "./a//b/"), "a/b");
        assert_eq!(join_dir("/etc/p", "../../../x"), "/x");
        assert_eq!(join_dir("..", "../x"), "../../x");
        assert_eq!(join_dir("/etc", "/abs/./x"), "/abs/./x");
        assert_eq!(join_dir("/etc", ""), "");
        assert_eq!(clean(""), ".");
        assert_eq!(clean("a/.."), ".");
        assert_eq!(
            redact_url("http://user:pw@proxy:3128/p?q"),
            "http://user:xxxxx@proxy:3128/p?q"
        );
        assert_eq!(redact_url("http://user@proxy"), "http://user@proxy");
        assert_eq!(redact_url("http://proxy/a@b"), "http://proxy/a@b");
    }
}
