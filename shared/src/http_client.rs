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

/// An optional string setting where, as in Prometheus, an empty value is no value.
pub fn non_empty<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + AsRef<std::ffi::OsStr>,
{
    Ok(Option::<T>::deserialize(d)?.filter(|v| !v.as_ref().is_empty()))
}

/// [`non_empty`] for secrets.
pub fn non_empty_secret<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Secret>, D::Error> {
    Ok(Option::<Secret>::deserialize(d)?.filter(|s| !s.0.is_empty()))
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    #[serde(default)]
    pub username: String,
    #[serde(default, deserialize_with = "non_empty")]
    pub username_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "non_empty_secret")]
    pub password: Option<Secret>,
    #[serde(default, deserialize_with = "non_empty")]
    pub password_file: Option<PathBuf>,
    /// Secret-manager references (Prometheus ≥ 2.5x): accepted so that Prometheus files load,
    /// not implemented (named in the configuration warning).
    #[serde(default, deserialize_with = "non_empty")]
    pub username_ref: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub password_ref: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    /// Prometheus default: Bearer (also when empty; surrounding spaces are dropped).
    #[serde(rename = "type", default = "default_auth_type")]
    #[serde(deserialize_with = "auth_type")]
    pub kind: String,
    #[serde(default, deserialize_with = "non_empty_secret")]
    pub credentials: Option<Secret>,
    #[serde(default, deserialize_with = "non_empty")]
    pub credentials_file: Option<PathBuf>,
    /// A secret-manager reference: accepted, not implemented.
    #[serde(default, deserialize_with = "non_empty")]
    pub credentials_ref: Option<String>,
}

fn auth_type<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let kind = Option::<String>::deserialize(d)?.unwrap_or_default();
    match kind.trim() {
        "" => Ok(default_auth_type()),
        k => Ok(k.to_owned()),
    }
}

/// One `http_headers` entry: values sent as written, secrets, and files read on every request
/// (each file's content, trimmed, is one value).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpHeader {
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub secrets: Vec<Secret>,
    #[serde(default)]
    pub files: Vec<PathBuf>,
}

/// Headers `http_headers` may not set, as Prometheus refuses them: the client sets them, or
/// they change the connection.
pub const RESERVED_HEADERS: [&str; 18] = [
    "Authorization",
    "Host",
    "Content-Encoding",
    "Content-Length",
    "Content-Type",
    "User-Agent",
    "Connection",
    "Keep-Alive",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Www-Authenticate",
    "Accept-Encoding",
    "X-Prometheus-Remote-Write-Version",
    "X-Prometheus-Remote-Read-Version",
    "X-Prometheus-Scrape-Timeout-Seconds",
    "X-Amz-Date",
    "X-Amz-Security-Token",
    "X-Amz-Content-Sha256",
];

/// A header name in Go's canonical form (`x-foo` is `X-Foo`); a name with characters a
/// header name cannot have is returned as it is.
pub fn canonical_header(name: &str) -> String {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !name.chars().all(token) {
        return name.to_owned();
    }
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

/// Prometheus's rule for `http_headers`: no reserved header.
pub fn check_http_headers(
    headers: &std::collections::BTreeMap<String, HttpHeader>,
) -> Result<(), String> {
    for name in headers.keys() {
        let canonical = canonical_header(name);
        if RESERVED_HEADERS.contains(&canonical.as_str()) {
            return Err(format!("setting header {canonical:?} is not allowed"));
        }
    }
    Ok(())
}

/// The proxy settings of an HTTP client, with Prometheus's rules between them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Proxy<'a> {
    pub url: Option<&'a str>,
    pub no_proxy: Option<&'a str>,
    pub from_environment: bool,
    /// Whether `proxy_connect_header` has entries.
    pub connect_header: bool,
}

impl Proxy<'_> {
    /// The proxy keys set (and `http_headers` when `http_headers`) that the agent accepts
    /// without acting on them.
    pub fn accepted_only(&self, http_headers: bool) -> Vec<&'static str> {
        [
            ("no_proxy", self.no_proxy.is_some()),
            ("proxy_from_environment", self.from_environment),
            ("proxy_connect_header", self.connect_header),
            ("http_headers", http_headers),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }

    pub fn check(&self) -> Result<(), String> {
        let url = self.url.is_some_and(|u| !u.is_empty());
        let no_proxy = self.no_proxy.is_some_and(|n| !n.is_empty());
        if self.connect_header && !self.from_environment && !url {
            return Err("if proxy_connect_header is configured, proxy_url or \
                        proxy_from_environment must also be configured"
                .into());
        }
        if self.from_environment && url {
            return Err(
                "if proxy_from_environment is configured, proxy_url must not be configured".into(),
            );
        }
        if self.from_environment && no_proxy {
            return Err(
                "if proxy_from_environment is configured, no_proxy must not be configured".into(),
            );
        }
        if no_proxy && !url {
            return Err("if no_proxy is configured, proxy_url must also be configured".into());
        }
        Ok(())
    }
}

/// Prometheus's rules for the deprecated `bearer_token` and `bearer_token_file` beside the
/// other authentication settings.
pub fn check_bearer(
    token: Option<&Secret>,
    file: Option<&Path>,
    basic_auth: bool,
    authorization: bool,
    oauth2: bool,
) -> Result<(), String> {
    let token = token.is_some_and(|t| !t.0.is_empty());
    let file = file.is_some_and(|f| !f.as_os_str().is_empty());
    if token && file {
        return Err("at most one of bearer_token & bearer_token_file must be configured".into());
    }
    if (basic_auth || oauth2) && (token || file) {
        return Err(
            "at most one of basic_auth, oauth2, bearer_token & bearer_token_file must be \
             configured"
                .into(),
        );
    }
    if authorization && (token || file) {
        return Err("authorization is not compatible with bearer_token & bearer_token_file".into());
    }
    Ok(())
}

impl Authorization {
    /// Prometheus 2's deprecated `bearer_token` / `bearer_token_file`, as `authorization`.
    pub fn bearer(token: &Option<Secret>, file: &Option<PathBuf>) -> Option<Authorization> {
        (token.is_some() || file.is_some()).then(|| Authorization {
            kind: "Bearer".into(),
            credentials: token.clone(),
            credentials_file: file.clone(),
            credentials_ref: None,
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
    #[serde(default, deserialize_with = "non_empty_secret")]
    pub client_secret: Option<Secret>,
    #[serde(default, deserialize_with = "non_empty")]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub token_url: String,
    #[serde(default)]
    pub endpoint_params: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub tls_config: TlsConfig,
    #[serde(default, deserialize_with = "non_empty")]
    pub proxy_url: Option<String>,
    /// Prometheus's other proxy settings of the token request: accepted so that Prometheus
    /// files load, not implemented.
    #[serde(default, deserialize_with = "non_empty")]
    pub no_proxy: Option<String>,
    #[serde(default)]
    pub proxy_from_environment: bool,
    #[serde(default)]
    pub proxy_connect_header: std::collections::BTreeMap<String, Vec<Secret>>,
    /// A secret-manager reference: accepted, not implemented.
    #[serde(default, deserialize_with = "non_empty")]
    pub client_secret_ref: Option<String>,
    /// The grant: `client_credentials` (the default, implemented) or
    /// `urn:ietf:params:oauth:grant-type:jwt-bearer` (Prometheus ≥ 3.8, RFC 7523: accepted with
    /// its keys below, not implemented; named in the configuration warning).
    #[serde(default, deserialize_with = "non_empty")]
    pub grant_type: Option<String>,
    #[serde(default, deserialize_with = "non_empty_secret")]
    pub client_certificate_key: Option<Secret>,
    #[serde(default, deserialize_with = "non_empty")]
    pub client_certificate_key_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "non_empty")]
    pub client_certificate_key_ref: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub client_certificate_key_id: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub signature_algorithm: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub iss: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub audience: Option<String>,
    #[serde(default)]
    pub claims: std::collections::BTreeMap<String, serde_yaml::Value>,
}

/// The OAuth2 grant Prometheus ≥ 3.8 takes besides client credentials.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

impl OAuth2 {
    /// Whether the entry asks for the JWT-bearer grant (not implemented by the agent).
    pub fn jwt_bearer(&self) -> bool {
        self.grant_type.as_deref() == Some(JWT_BEARER_GRANT)
    }

    /// The token request's proxy settings.
    pub fn proxy(&self) -> Proxy<'_> {
        Proxy {
            url: self.proxy_url.as_deref(),
            no_proxy: self.no_proxy.as_deref(),
            from_environment: self.proxy_from_environment,
            connect_header: !self.proxy_connect_header.is_empty(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default, deserialize_with = "non_empty")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "non_empty")]
    pub ca: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "non_empty")]
    pub cert: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub key_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "non_empty_secret")]
    pub key: Option<Secret>,
    /// Name the server certificate is verified against (and sent as SNI), instead of the
    /// URL's host.
    #[serde(default, deserialize_with = "non_empty")]
    pub server_name: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(default, deserialize_with = "non_empty")]
    pub min_version: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub max_version: Option<String>,
    /// Secret-manager references: accepted, not implemented.
    #[serde(default, deserialize_with = "non_empty")]
    pub ca_ref: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub cert_ref: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub key_ref: Option<String>,
}

impl TlsConfig {
    /// Whether a secret-manager reference is set.
    fn has_ref(&self) -> bool {
        self.ca_ref.is_some() || self.cert_ref.is_some() || self.key_ref.is_some()
    }
}

/// The TLS versions Prometheus knows.
pub const TLS_VERSIONS: [&str; 4] = ["TLS10", "TLS11", "TLS12", "TLS13"];

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
    /// The keys set that the agent accepts without acting on them: secret-manager references
    /// (`*_ref`) and OAuth2's JWT-bearer grant.
    pub fn accepted_only(&self) -> Vec<&'static str> {
        let basic = self.basic_auth.as_ref();
        let oauth2 = self.oauth2.as_ref();
        [
            (
                "basic_auth.*_ref",
                basic.is_some_and(|b| b.username_ref.is_some() || b.password_ref.is_some()),
            ),
            (
                "authorization.credentials_ref",
                self.authorization
                    .as_ref()
                    .is_some_and(|a| a.credentials_ref.is_some()),
            ),
            (
                "oauth2.client_secret_ref",
                oauth2.is_some_and(|o| o.client_secret_ref.is_some()),
            ),
            (
                "oauth2.grant_type (jwt-bearer)",
                oauth2.is_some_and(OAuth2::jwt_bearer),
            ),
            (
                "tls_config.*_ref",
                self.tls_config.has_ref() || oauth2.is_some_and(|o| o.tls_config.has_ref()),
            ),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }

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
            let set = |v: [bool; 3]| v.into_iter().filter(|b| *b).count() > 1;
            if set([
                b.password.is_some(),
                b.password_file.is_some(),
                b.password_ref.is_some(),
            ]) {
                return inv(
                    "basic_auth",
                    "at most one of basic_auth password, password_file & password_ref must be configured",
                );
            }
            if set([
                !b.username.is_empty(),
                b.username_file.is_some(),
                b.username_ref.is_some(),
            ]) {
                return inv(
                    "basic_auth",
                    "at most one of basic_auth username, username_file & username_ref must be configured",
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
            if o.client_id.is_empty() {
                return inv("oauth2", "oauth2 client_id must be configured");
            }
            if o.token_url.is_empty() {
                return inv("oauth2", "oauth2 token_url must be configured");
            }
            if [
                o.client_secret.is_some(),
                o.client_secret_file.is_some(),
                o.client_secret_ref.is_some(),
            ]
            .into_iter()
            .filter(|b| *b)
            .count()
                > 1
            {
                return inv(
                    "oauth2",
                    "at most one of oauth2 client_secret, client_secret_file & client_secret_ref must be configured",
                );
            }
            if let Err(message) = o.proxy().check() {
                return inv("oauth2", &message);
            }
            Self::check_tls(&o.tls_config, "oauth2")?;
        }
        Self::check_tls(&self.tls_config, "tls_config")?;
        if let Some(p) = &self.proxy_url {
            reqwest::Url::parse(p).map_err(|e| HttpClientError::Invalid {
                what: "proxy_url",
                message: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Prometheus's rules for one `tls_config`.
    fn check_tls(t: &TlsConfig, what: &'static str) -> Result<(), HttpClientError> {
        let inv = |message: &str| {
            Err(HttpClientError::Invalid {
                what,
                message: message.into(),
            })
        };
        let two = |v: [bool; 3]| v.into_iter().filter(|b| *b).count() > 1;
        if two([t.ca.is_some(), t.ca_file.is_some(), t.ca_ref.is_some()]) {
            return inv("at most one of ca, ca_file & ca_ref must be configured");
        }
        if two([
            t.cert.is_some(),
            t.cert_file.is_some(),
            t.cert_ref.is_some(),
        ]) {
            return inv("at most one of cert, cert_file & cert_ref must be configured");
        }
        if t.key.is_some() && t.key_file.is_some() {
            return inv("at most one of key and key_file must be configured");
        }
        let has_cert = t.cert.is_some() || t.cert_file.is_some();
        let has_key = t.key.is_some() || t.key_file.is_some();
        if has_cert && !has_key {
            return inv(
                "exactly one of key or key_file must be configured when a client certificate is configured",
            );
        }
        if has_key && !has_cert {
            return inv(
                "exactly one of cert or cert_file must be configured when a client key is configured",
            );
        }
        for v in [&t.min_version, &t.max_version].into_iter().flatten() {
            if !TLS_VERSIONS.contains(&v.as_str()) {
                return inv(&format!("unknown TLS version: {v}"));
            }
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
