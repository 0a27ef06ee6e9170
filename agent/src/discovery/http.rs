//! `http_sd_configs`: targets from an HTTP endpoint answering Prometheus's HTTP SD JSON.
//!
//! `run(cfg, client, out, failures, shutdown)` fetches `cfg.url` at once, then every
//! `refresh_interval`, with `client` (built from [`HttpSdConfig::http_client`], so it carries
//! the entry's authentication, TLS and proxy settings). As in Prometheus:
//!
//! - The request is a GET with `Accept: application/json` and
//!   `X-Prometheus-Refresh-Interval-Seconds` (the interval in seconds, e.g. `60` or `0.5`); the
//!   whole exchange must finish within `refresh_interval`.
//! - The response must be HTTP 200 with `Content-Type: application/json`, optionally with
//!   `; charset=utf-8` (case-insensitive); its body is a JSON list of
//!   `{targets: [..], labels: {..}}` (unknown keys are errors, `null` is an empty list).
//! - Each target becomes `{__address__: target}`; each group gets the label `__meta_url` (the
//!   configured URL; a group label, as in Prometheus, so every target carries it) and the
//!   source `{url}:{index}`. Label names and targets are checked as for `file_sd`.
//! - Any failure (request, status, content type, body, timeout) keeps the last good groups, is
//!   logged and counted in `failures` once per refresh.
//!
//! Not in Prometheus: bodies over [`MAX_BODY`] (16 MiB, after decompression, far above any
//! sane target list) are rejected instead of being read into memory.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde::Deserialize;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use uplink_shared::duration::PromDuration;

use super::{Publisher, SpecError, TargetGroup, into_groups, parse_json, publish};
use std::collections::BTreeMap;

use crate::http_client::{
    Authorization, BasicAuth, HttpClient, HttpClientConfig, HttpClientError, HttpHeader, OAuth2,
    Secret, TlsConfig,
};

/// The group label holding the configured URL.
pub const URL_LABEL: &str = "__meta_url";

/// The header telling the server how often it is asked.
pub const REFRESH_HEADER: &str = "X-Prometheus-Refresh-Interval-Seconds";

/// Largest response body accepted, in bytes.
pub const MAX_BODY: usize = 16 << 20;

/// One `http_sd_configs` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpSdConfig {
    pub url: String,
    /// Prometheus default: 1m.
    #[serde(default = "default_refresh")]
    pub refresh_interval: PromDuration,
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
    #[serde(default = "crate::http_client::default_true")]
    pub follow_redirects: bool,
    #[serde(default = "crate::http_client::default_true")]
    pub enable_http2: bool,
    #[serde(default, deserialize_with = "crate::http_client::non_empty")]
    pub no_proxy: Option<String>,
    #[serde(default)]
    pub proxy_from_environment: bool,
    #[serde(default)]
    pub proxy_connect_header: BTreeMap<String, Vec<Secret>>,
    #[serde(default)]
    pub http_headers: Option<BTreeMap<String, HttpHeader>>,
}

fn default_refresh() -> PromDuration {
    PromDuration(std::time::Duration::from_secs(60))
}

/// Why a refresh failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpSdError {
    #[error(transparent)]
    Client(#[from] HttpClientError),
    #[error("request failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error("server returned HTTP status {0}")]
    Status(StatusCode),
    #[error("unsupported content type {0:?}")]
    ContentType(String),
    #[error("response body larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// Displays as `response body:line:column: field: message`.
    #[error("response body:{0}")]
    Parse(SpecError),
    #[error("no complete response within {}", PromDuration(*.0))]
    Timeout(Duration),
}

impl HttpSdConfig {
    /// The entry's HTTP client settings. Make relative file paths absolute with
    /// [`HttpClientConfig::resolve`] before building the client.
    pub fn http_client(&self) -> HttpClientConfig {
        HttpClientConfig {
            basic_auth: self.basic_auth.clone(),
            authorization: self.authorization.clone(),
            oauth2: self.oauth2.clone(),
            tls_config: self.tls_config.clone(),
            proxy_url: self.proxy_url.clone(),
            no_proxy: self.no_proxy.clone(),
            proxy_from_environment: self.proxy_from_environment,
            proxy_connect_header: self.proxy_connect_header.clone(),
            http_headers: self.http_headers.clone().unwrap_or_default(),
            follow_redirects: self.follow_redirects,
            enable_http2: self.enable_http2,
            compression: true,
        }
    }

    /// Checks what Prometheus checks at load time (an http or https URL with a host, valid
    /// client settings), plus a positive `refresh_interval`.
    pub fn validate(&self) -> Result<(), String> {
        if self.url.is_empty() {
            return Err("URL is missing".into());
        }
        let url = reqwest::Url::parse(&self.url).map_err(|e| format!("url: {e}"))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err("URL scheme must be 'http' or 'https'".into());
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("host is missing in URL".into());
        }
        if self.refresh_interval.0.is_zero() {
            return Err(super::ZERO_REFRESH.into());
        }
        let http = self.http_client();
        http.validate().map_err(|e| e.to_string())?;
        http.proxy().check()?;
        Ok(())
    }

    /// The keys set that the agent accepts without acting on them.
    pub fn accepted_only(&self) -> Vec<&'static str> {
        self.http_client().accepted_only()
    }
}

/// Runs until `shutdown` is cancelled; see the module docs.
pub async fn run(
    cfg: HttpSdConfig,
    client: HttpClient,
    out: Publisher,
    failures: Counter,
    shutdown: CancellationToken,
) {
    let every = cfg.refresh_interval.0.max(Duration::from_millis(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = fetch(&cfg.url, &client, every, MAX_BODY) => r,
        };
        match result {
            Ok(groups) => publish(&out, groups, first),
            Err(error) => {
                failures.inc();
                warn!(url = %cfg.url, %error, "HTTP service discovery failed; keeping the last good targets.");
                if first {
                    out.send_modify(|_| {});
                }
            }
        }
        first = false;
    }
}

/// One refresh: the groups `url` serves now.
async fn fetch(
    url: &str,
    client: &HttpClient,
    refresh: Duration,
    limit: usize,
) -> Result<Vec<TargetGroup>, HttpSdError> {
    tokio::time::timeout(refresh, request(url, client, refresh, limit))
        .await
        .map_err(|_| HttpSdError::Timeout(refresh))?
}

async fn request(
    url: &str,
    client: &HttpClient,
    refresh: Duration,
    limit: usize,
) -> Result<Vec<TargetGroup>, HttpSdError> {
    let resp = client
        .get(url)
        .await?
        .header(ACCEPT, "application/json")
        .header(REFRESH_HEADER, refresh.as_secs_f64().to_string())
        .send()
        .await?;
    if resp.status() != StatusCode::OK {
        return Err(HttpSdError::Status(resp.status()));
    }
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    if !is_json(&content_type) {
        return Err(HttpSdError::ContentType(content_type));
    }
    let body = read_body(resp, limit).await?;
    let specs = parse_json(&body).map_err(HttpSdError::Parse)?;
    Ok(into_groups(specs, url, (URL_LABEL, url)))
}

/// The body, or an error as soon as it exceeds `limit` bytes.
async fn read_body(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, HttpSdError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(HttpSdError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Err(HttpSdError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Prometheus's `^(?i:application/json(;\s*charset=("utf-8"|utf-8))?)$`, after trimming.
fn is_json(content_type: &str) -> bool {
    let Some(rest) = strip_prefix_ignore_case(content_type.trim(), "application/json") else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let Some(rest) = rest.strip_prefix(';') else {
        return false;
    };
    let rest = rest.trim_start_matches([' ', '\t', '\n', '\r', '\x0c']);
    strip_prefix_ignore_case(rest, "charset=")
        .is_some_and(|cs| cs.eq_ignore_ascii_case("utf-8") || cs.eq_ignore_ascii_case("\"utf-8\""))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::extract::State;
    use axum::http::HeaderMap;
    use axum::response::IntoResponse;
    use tokio::sync::watch;

    use super::*;
    use crate::http_client::Secret;

    /// What the test server answers, and the headers of the last request it saw.
    #[derive(Clone)]
    struct Reply {
        status: u16,
        content_type: &'static str,
        body: String,
        seen: Option<HeaderMap>,
    }

    type Shared = Arc<Mutex<Reply>>;

    async fn handler(State(s): State<Shared>, headers: HeaderMap) -> axum::response::Response {
        let mut r = s.lock().expect("lock");
        r.seen = Some(headers);
        (
            StatusCode::from_u16(r.status).expect("status"),
            [(CONTENT_TYPE, r.content_type)],
            r.body.clone(),
        )
            .into_response()
    }

    async fn server(reply: Reply) -> (String, Shared) {
        let shared = Arc::new(Mutex::new(reply));
        let app = axum::Router::new()
            .route("/sd", axum::routing::get(handler))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/sd"), shared)
    }

    fn config(url: &str, refresh: Duration) -> HttpSdConfig {
        HttpSdConfig {
            url: url.into(),
            refresh_interval: PromDuration(refresh),
            basic_auth: None,
            authorization: Some(Authorization {
                kind: "Bearer".into(),
                credentials: Some(Secret("s3cret".into())),
                credentials_file: None,
                credentials_ref: None,
            }),
            oauth2: None,
            tls_config: TlsConfig::default(),
            proxy_url: None,
            follow_redirects: true,
            enable_http2: true,
            no_proxy: None,
            proxy_from_environment: false,
            proxy_connect_header: BTreeMap::new(),
            http_headers: None,
        }
    }

    fn good(targets: &str) -> Reply {
        Reply {
            status: 200,
            content_type: "application/json; charset=utf-8",
            body: format!(r#"[{{"targets": [{targets}], "labels": {{"env": "prod"}}}}]"#),
            seen: None,
        }
    }

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn publishes_groups_and_keeps_them_through_failures() {
        let (url, shared) = server(good(r#""a:1", "b:2""#)).await;
        let cfg = config(&url, Duration::from_millis(100));
        cfg.validate().expect("valid");
        let client = HttpClient::new(&cfg.http_client(), "test").expect("client");
        let (tx, mut rx) = watch::channel(Vec::new());
        let failures = Counter::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(cfg, client, tx, failures.clone(), stop.clone()));

        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("first publish")
            .expect("alive");
        let groups = rx.borrow_and_update().clone();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].source, format!("{url}:0"));
        let addrs: Vec<&str> = groups[0]
            .targets
            .iter()
            .map(|t| t["__address__"].as_str())
            .collect();
        assert_eq!(addrs, ["a:1", "b:2"]);
        assert_eq!(groups[0].labels["env"], "prod");
        assert_eq!(groups[0].labels[URL_LABEL], url);
        {
            let r = shared.lock().expect("lock");
            let seen = r.seen.as_ref().expect("a request");
            assert_eq!(seen["authorization"], "Bearer s3cret");
            assert_eq!(seen[REFRESH_HEADER], "0.1");
            assert_eq!(seen["accept"], "application/json");
        }

        // Non-200: counted, groups kept.
        shared.lock().expect("lock").status = 503;
        wait_for("a failure", || failures.get() >= 1).await;
        // Wrong content type with a good body: rejected too.
        {
            let mut r = shared.lock().expect("lock");
            r.status = 200;
            r.content_type = "text/plain";
        }
        let before = failures.get();
        wait_for("a content type failure", || failures.get() > before).await;
        // A body that does not parse.
        {
            let mut r = shared.lock().expect("lock");
            r.content_type = "application/json";
            r.body = r#"[{"targets": ["a:1"], "labels": {"bad-name": "x"}}]"#.into();
        }
        let before = failures.get();
        wait_for("a parse failure", || failures.get() > before).await;
        assert!(!rx.has_changed().expect("alive"), "groups were kept");
        assert_eq!(*rx.borrow(), groups);

        // Recovered: the new list replaces the old.
        *shared.lock().expect("lock") = good(r#""c:3""#);
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("update")
            .expect("alive");
        assert_eq!(rx.borrow()[0].targets[0]["__address__"], "c:3");

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("stops")
            .expect("no panic");
    }

    #[tokio::test]
    async fn fetch_reports_each_kind_of_failure() {
        let (url, shared) = server(good(r#""a:1""#)).await;
        let client = HttpClient::new(&HttpClientConfig::default(), "test").expect("client");
        let every = Duration::from_secs(2);
        let groups = fetch(&url, &client, every, MAX_BODY).await.expect("good");
        assert_eq!(groups.len(), 1);
        assert!(matches!(
            fetch(&url, &client, every, 10).await,
            Err(HttpSdError::TooLarge { limit: 10 })
        ));
        shared.lock().expect("lock").content_type = "application/jsonx";
        let e = fetch(&url, &client, every, MAX_BODY)
            .await
            .expect_err("type");
        assert_eq!(
            e.to_string(),
            "unsupported content type \"application/jsonx\""
        );
        shared.lock().expect("lock").status = 404;
        let e = fetch(&url, &client, every, MAX_BODY)
            .await
            .expect_err("404");
        assert_eq!(e.to_string(), "server returned HTTP status 404 Not Found");
        {
            let mut r = shared.lock().expect("lock");
            r.status = 200;
            r.content_type = "application/json";
            r.body = "[{\"targets\": [\"a:1\"],\n \"lables\": {}}]".into();
        }
        let e = fetch(&url, &client, every, MAX_BODY)
            .await
            .expect_err("parse");
        assert!(
            e.to_string()
                .starts_with("response body:2:9: [0].lables: unknown field `lables`"),
            "{e}"
        );
    }

    #[test]
    fn content_type_matches_prometheus() {
        for ok in [
            "application/json",
            " Application/JSON ",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
        ] {
            assert!(is_json(ok), "{ok}");
        }
        for bad in [
            "",
            "text/plain",
            "application/json; charset=latin1",
            "application/json ; charset=utf-8",
            "application/jsonl",
            "application/json;",
        ] {
            assert!(!is_json(bad), "{bad}");
        }
    }

    #[test]
    fn validate_follows_prometheus() {
        let v = |url: &str| config(url, Duration::from_secs(60)).validate();
        assert_eq!(v("https://sd.example/targets"), Ok(()));
        assert_eq!(
            v("ftp://sd.example/"),
            Err("URL scheme must be 'http' or 'https'".into())
        );
        assert_eq!(v(""), Err("URL is missing".into()));
        assert!(v("not a url").is_err());
        assert!(config("http://a/", Duration::ZERO).validate().is_err());
        let mut two_auths = config("http://a/", Duration::from_secs(1));
        two_auths.basic_auth = Some(BasicAuth {
            username: "u".into(),
            username_file: None,
            password: None,
            password_file: None,
            username_ref: None,
            password_ref: None,
        });
        assert!(two_auths.validate().is_err());
    }
}
