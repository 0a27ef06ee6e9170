//! Prometheus's HTTP client settings (`basic_auth`, `authorization`, `oauth2`, `tls_config`,
//! `proxy_url`, `follow_redirects`, `enable_http2`), shared by scrape configs and `http_sd`.
//!
//! Secrets read from files (`password_file`, `credentials_file`, `client_secret_file`) are read
//! again on every request, as Prometheus does, so a rotated token is picked up without a
//! reload. Secrets are never logged: [`Secret`]'s `Debug` prints `<secret>`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Why a client could not be built or a request could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {message}")]
    Invalid { what: &'static str, message: String },
    #[error("building the HTTP client: {0}")]
    Build(#[from] reqwest::Error),
    #[error("oauth2 token request to {url} failed: {message}")]
    OAuth2 { url: String, message: String },
}

pub fn default_true() -> bool {
    true
}

/// A secret string from the configuration; never printed.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub username_file: Option<PathBuf>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    /// Prometheus default: Bearer.
    #[serde(default = "default_auth_type", rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub credentials: Option<Secret>,
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
}

impl Authorization {
    /// Prometheus 2's deprecated `bearer_token` / `bearer_token_file`, as `authorization`.
    pub fn bearer(token: &Option<Secret>, file: &Option<PathBuf>) -> Option<Authorization> {
        (token.is_some() || file.is_some()).then(|| Authorization {
            kind: "Bearer".into(),
            credentials: token.clone(),
            credentials_file: file.clone(),
        })
    }
}

fn default_auth_type() -> String {
    "Bearer".into()
}

/// OAuth 2.0 client credentials grant.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OAuth2 {
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<Secret>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub token_url: String,
    #[serde(default)]
    pub endpoint_params: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub tls_config: TlsConfig,
    #[serde(default)]
    pub proxy_url: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub cert: Option<String>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<Secret>,
    /// Name the server certificate is verified against (and sent as SNI), instead of the
    /// URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(default)]
    pub min_version: Option<String>,
    #[serde(default)]
    pub max_version: Option<String>,
}

/// The HTTP settings of one scrape config or `http_sd` entry, gathered.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpClientConfig {
    pub basic_auth: Option<BasicAuth>,
    pub authorization: Option<Authorization>,
    pub oauth2: Option<OAuth2>,
    pub tls_config: TlsConfig,
    pub proxy_url: Option<String>,
    pub follow_redirects: bool,
    pub enable_http2: bool,
    /// Ask for gzip; `false` sends `Accept-Encoding: identity`.
    pub compression: bool,
}

impl Default for HttpClientConfig {
    fn default() -> Self {
        HttpClientConfig {
            basic_auth: None,
            authorization: None,
            oauth2: None,
            tls_config: TlsConfig::default(),
            proxy_url: None,
            follow_redirects: true,
            enable_http2: true,
            compression: true,
        }
    }
}

impl HttpClientConfig {
    /// Makes every file path relative to `base` (the configuration file's directory), as
    /// Prometheus does.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(p) = p
                && p.is_relative()
            {
                *p = base.join(&*p);
            }
        };
        let tls = |t: &mut TlsConfig| {
            for p in [&mut t.ca_file, &mut t.cert_file, &mut t.key_file] {
                fix(p);
            }
        };
        tls(&mut self.tls_config);
        if let Some(b) = &mut self.basic_auth {
            fix(&mut b.username_file);
            fix(&mut b.password_file);
        }
        if let Some(a) = &mut self.authorization {
            fix(&mut a.credentials_file);
        }
        if let Some(o) = &mut self.oauth2 {
            fix(&mut o.client_secret_file);
            tls(&mut o.tls_config);
        }
    }

    /// Checks what Prometheus checks at load time: at most one authentication mechanism,
    /// password xor password_file, parseable proxy URL, PEM given either inline or by file.
    pub fn validate(&self) -> Result<(), HttpClientError> {
        let inv = |what, message: &str| {
            Err(HttpClientError::Invalid {
                what,
                message: message.into(),
            })
        };
        let mechanisms = [
            self.basic_auth.is_some(),
            self.authorization.is_some(),
            self.oauth2.is_some(),
        ];
        if mechanisms.iter().filter(|m| **m).count() > 1 {
            return inv(
                "authorization",
                "at most one of basic_auth, oauth2 & authorization must be configured",
            );
        }
        if let Some(b) = &self.basic_auth {
            if b.password.is_some() && b.password_file.is_some() {
                return inv(
                    "basic_auth",
                    "at most one of basic_auth password & password_file must be configured",
                );
            }
            if !b.username.is_empty() && b.username_file.is_some() {
                return inv(
                    "basic_auth",
                    "at most one of basic_auth username & username_file must be configured",
                );
            }
        }
        if let Some(a) = &self.authorization {
            if a.credentials.is_some() && a.credentials_file.is_some() {
                return inv(
                    "authorization",
                    "at most one of authorization credentials & credentials_file must be configured",
                );
            }
            if a.kind.eq_ignore_ascii_case("basic") {
                return inv(
                    "authorization",
                    "authorization type cannot be set to \"basic\", use \"basic_auth\" instead",
                );
            }
        }
        if let Some(o) = &self.oauth2 {
            if o.client_secret.is_some() && o.client_secret_file.is_some() {
                return inv(
                    "oauth2",
                    "at most one of oauth2 client_secret & client_secret_file must be configured",
                );
            }
        }
        let t = &self.tls_config;
        if t.ca.is_some() && t.ca_file.is_some() {
            return inv(
                "tls_config",
                "at most one of ca and ca_file must be configured",
            );
        }
        if t.cert.is_some() && t.cert_file.is_some() {
            return inv(
                "tls_config",
                "at most one of cert and cert_file must be configured",
            );
        }
        if t.key.is_some() && t.key_file.is_some() {
            return inv(
                "tls_config",
                "at most one of key and key_file must be configured",
            );
        }
        let has_cert = t.cert.is_some() || t.cert_file.is_some();
        let has_key = t.key.is_some() || t.key_file.is_some();
        if has_cert != has_key {
            return inv(
                "tls_config",
                "exactly one of key or key_file must be configured when a client certificate is configured",
            );
        }
        if let Some(p) = &self.proxy_url {
            reqwest::Url::parse(p).map_err(|e| HttpClientError::Invalid {
                what: "proxy_url",
                message: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Makes relative file paths relative to the configuration file's directory.
    pub fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(p) = p
                && p.is_relative()
            {
                *p = base.join(&*p);
            }
        };
        if let Some(b) = &mut self.basic_auth {
            fix(&mut b.username_file);
            fix(&mut b.password_file);
        }
        if let Some(a) = &mut self.authorization {
            fix(&mut a.credentials_file);
        }
        if let Some(o) = &mut self.oauth2 {
            fix(&mut o.client_secret_file);
        }
        let t = &mut self.tls_config;
        fix(&mut t.ca_file);
        fix(&mut t.cert_file);
        fix(&mut t.key_file);
    }
}

fn read_file(path: &Path) -> Result<String, HttpClientError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| HttpClientError::Read {
            path: path.into(),
            source,
        })
}

pub fn pem(inline: Option<&str>, file: Option<&Path>) -> Result<Option<Vec<u8>>, HttpClientError> {
    match (inline, file) {
        (Some(s), _) => Ok(Some(s.as_bytes().to_vec())),
        (None, Some(p)) => std::fs::read(p)
            .map(Some)
            .map_err(|source| HttpClientError::Read {
                path: p.into(),
                source,
            }),
        (None, None) => Ok(None),
    }
}

/// A configured client: connection pool plus per-request authentication.
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    cfg: Arc<HttpClientConfig>,
    token: Arc<Mutex<Option<(String, Instant)>>>,
    oauth_client: Option<reqwest::Client>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

fn builder(
    tls: &TlsConfig,
    proxy_url: Option<&str>,
    follow_redirects: bool,
    enable_http2: bool,
    compression: bool,
    user_agent: &str,
) -> Result<reqwest::ClientBuilder, HttpClientError> {
    let mut b = reqwest::Client::builder()
        .user_agent(user_agent)
        .gzip(compression)
        .no_proxy()
        .redirect(if follow_redirects {
            reqwest::redirect::Policy::limited(10)
        } else {
            reqwest::redirect::Policy::none()
        });
    if !enable_http2 {
        b = b.http1_only();
    }
    if let Some(p) = proxy_url {
        b = b.proxy(reqwest::Proxy::all(p)?);
    }
    b = b.use_preconfigured_tls(crate::http_tls::client_config(tls)?);
    Ok(b)
}

impl HttpClient {
    /// Builds the client; files named by `tls_config` are read now (a reload rereads them).
    pub fn new(cfg: &HttpClientConfig, user_agent: &str) -> Result<HttpClient, HttpClientError> {
        cfg.validate()?;
        let client = builder(
            &cfg.tls_config,
            cfg.proxy_url.as_deref(),
            cfg.follow_redirects,
            cfg.enable_http2,
            cfg.compression,
            user_agent,
        )?
        .build()?;
        let oauth_client = match &cfg.oauth2 {
            Some(o) => Some(
                builder(
                    &o.tls_config,
                    o.proxy_url.as_deref(),
                    true,
                    true,
                    true,
                    user_agent,
                )?
                .build()?,
            ),
            None => None,
        };
        Ok(HttpClient {
            client,
            cfg: Arc::new(cfg.clone()),
            token: Arc::default(),
            oauth_client,
        })
    }

    /// A GET request with the configured authentication.
    pub async fn get(&self, url: &str) -> Result<reqwest::RequestBuilder, HttpClientError> {
        let req = self.client.get(url);
        self.authenticate(req).await
    }

    /// A POST request with the configured authentication.
    pub async fn post(
        &self,
        url: reqwest::Url,
    ) -> Result<reqwest::RequestBuilder, HttpClientError> {
        let req = self.client.post(url);
        self.authenticate(req).await
    }

    async fn authenticate(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, HttpClientError> {
        let cfg = &*self.cfg;
        if let Some(b) = &cfg.basic_auth {
            let user = match &b.username_file {
                Some(p) => read_file(p)?,
                None => b.username.clone(),
            };
            let pass = match (&b.password, &b.password_file) {
                (Some(s), _) => Some(s.0.clone()),
                (None, Some(p)) => Some(read_file(p)?),
                (None, None) => None,
            };
            return Ok(req.basic_auth(user, pass));
        }
        if let Some(a) = &cfg.authorization {
            let cred = match (&a.credentials, &a.credentials_file) {
                (Some(s), _) => s.0.clone(),
                (None, Some(p)) => read_file(p)?,
                (None, None) => String::new(),
            };
            return Ok(req.header(
                reqwest::header::AUTHORIZATION,
                format!("{} {}", a.kind, cred),
            ));
        }
        if let Some(o) = &cfg.oauth2 {
            let token = self.oauth2_token(o).await?;
            return Ok(req.bearer_auth(token));
        }
        Ok(req)
    }

    /// Client-credentials token, cached until a minute before it expires.
    async fn oauth2_token(&self, o: &OAuth2) -> Result<String, HttpClientError> {
        if let Ok(guard) = self.token.lock()
            && let Some((t, until)) = &*guard
            && Instant::now() < *until
        {
            return Ok(t.clone());
        }
        let err = |message: String| HttpClientError::OAuth2 {
            url: o.token_url.clone(),
            message,
        };
        let secret = match (&o.client_secret, &o.client_secret_file) {
            (Some(s), _) => s.0.clone(),
            (None, Some(p)) => read_file(p)?,
            (None, None) => String::new(),
        };
        let mut form: Vec<(String, String)> =
            vec![("grant_type".into(), "client_credentials".into())];
        if !o.scopes.is_empty() {
            form.push(("scope".into(), o.scopes.join(" ")));
        }
        form.extend(
            o.endpoint_params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", query_escape(k), query_escape(v)))
            .collect::<Vec<_>>()
            .join("&");
        let client = self.oauth_client.as_ref().unwrap_or(&self.client);
        let resp = client
            .post(&o.token_url)
            .basic_auth(query_escape(&o.client_id), Some(query_escape(&secret)))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await
            .map_err(|e| err(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(err(format!("status {}", resp.status())));
        }
        #[derive(Deserialize)]
        struct Token {
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let bytes = resp.bytes().await.map_err(|e| err(e.to_string()))?;
        let t: Token = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
        let ttl = Duration::from_secs(t.expires_in.unwrap_or(3600).saturating_sub(60).max(1));
        if let Ok(mut guard) = self.token.lock() {
            *guard = Some((t.access_token.clone(), Instant::now() + ttl));
        }
        Ok(t.access_token)
    }
}

/// Go's `url.QueryEscape` (what `url.Values.Encode` and Go's oauth2 client use): unreserved
/// characters as they are, space as `+`, everything else percent-encoded.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
