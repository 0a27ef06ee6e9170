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

/// `proxy_connect_header`: header name to values, sent on the CONNECT request of an
/// `https://` target reached through a proxy.
pub type ProxyConnectHeader = std::collections::BTreeMap<String, Vec<Secret>>;

/// The proxy settings of an HTTP client, with Prometheus's rules between them.
#[derive(Clone, Copy, Debug)]
pub struct Proxy<'a> {
    pub url: Option<&'a str>,
    pub no_proxy: Option<&'a str>,
    pub from_environment: bool,
    pub connect_header: &'a ProxyConnectHeader,
}

impl Proxy<'_> {
    pub fn check(&self) -> Result<(), String> {
        let url = self.url.is_some_and(|u| !u.is_empty());
        let no_proxy = self.no_proxy.is_some_and(|n| !n.is_empty());
        if !self.connect_header.is_empty() && !self.from_environment && !url {
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

    /// The reqwest proxies that route requests as Prometheus does (see [`crate::http_proxy`]);
    /// none when no proxy is set. The CONNECT headers go on `https://` requests only, as Go
    /// sends them.
    fn reqwest(&self) -> Result<Vec<reqwest::Proxy>, HttpClientError> {
        use crate::http_proxy::ProxyRule;
        let url = self.url.filter(|u| !u.is_empty());
        let no_proxy = self.no_proxy.unwrap_or_default();
        let rule = match url {
            _ if self.from_environment => ProxyRule::from_env(),
            Some(u) if no_proxy.is_empty() => ProxyRule::all(reqwest::Url::parse(u).map_err(
                |e| HttpClientError::Invalid {
                    what: "proxy_url",
                    message: e.to_string(),
                },
            )?),
            Some(u) => ProxyRule::new(u, u, no_proxy),
            None => return Ok(Vec::new()),
        };
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, values) in self.connect_header {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|e| {
                HttpClientError::Invalid {
                    what: "proxy_connect_header",
                    message: e.to_string(),
                }
            })?;
            for v in values {
                let v = reqwest::header::HeaderValue::from_str(&v.0).map_err(|e| {
                    HttpClientError::Invalid {
                        what: "proxy_connect_header",
                        message: e.to_string(),
                    }
                })?;
                headers.append(name.clone(), v);
            }
        }
        let rule = Arc::new(rule);
        let for_scheme = |scheme: &'static str| {
            let rule = rule.clone();
            reqwest::Proxy::custom(move |u| {
                (u.scheme() == scheme).then(|| rule.proxy_for(u)).flatten()
            })
        };
        Ok(vec![
            for_scheme("https").headers(headers),
            for_scheme("http"),
        ])
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
    #[serde(default, deserialize_with = "non_empty")]
    pub no_proxy: Option<String>,
    #[serde(default)]
    pub proxy_from_environment: bool,
    #[serde(default)]
    pub proxy_connect_header: std::collections::BTreeMap<String, Vec<Secret>>,
    /// A secret-manager reference: accepted, not implemented.
    #[serde(default, deserialize_with = "non_empty")]
    pub client_secret_ref: Option<String>,
    /// The grant: `client_credentials` (the default) or
    /// `urn:ietf:params:oauth:grant-type:jwt-bearer` (Prometheus ≥ 3.8, RFC 7523: an assertion
    /// signed with the key below, see [`crate::jwt_bearer`]).
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
pub const JWT_BEARER_GRANT: &str = crate::jwt_bearer::GRANT_TYPE;

impl OAuth2 {
    /// Whether the entry asks for the JWT-bearer grant.
    pub fn jwt_bearer(&self) -> bool {
        self.grant_type.as_deref() == Some(JWT_BEARER_GRANT)
    }

    /// The token request's proxy settings.
    pub fn proxy(&self) -> Proxy<'_> {
        Proxy {
            url: self.proxy_url.as_deref(),
            no_proxy: self.no_proxy.as_deref(),
            from_environment: self.proxy_from_environment,
            connect_header: &self.proxy_connect_header,
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
    pub no_proxy: Option<String>,
    pub proxy_from_environment: bool,
    pub proxy_connect_header: ProxyConnectHeader,
    /// `http_headers`: added to every request, files read each time.
    pub http_headers: std::collections::BTreeMap<String, HttpHeader>,
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
            no_proxy: None,
            proxy_from_environment: false,
            proxy_connect_header: ProxyConnectHeader::new(),
            http_headers: std::collections::BTreeMap::new(),
            follow_redirects: true,
            enable_http2: true,
            compression: true,
        }
    }
}

impl HttpClientConfig {
    /// The client's proxy settings.
    pub fn proxy(&self) -> Proxy<'_> {
        Proxy {
            url: self.proxy_url.as_deref(),
            no_proxy: self.no_proxy.as_deref(),
            from_environment: self.proxy_from_environment,
            connect_header: &self.proxy_connect_header,
        }
    }

    /// The keys set that the agent accepts without acting on them: secret-manager references
    /// (`*_ref`). Prometheus has no secret manager either: a client using one cannot be built
    /// ([`HttpClient::new`] fails as Prometheus does), so the job or discovery entry stays idle.
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
                "oauth2.client_certificate_key_ref",
                oauth2.is_some_and(|o| o.client_certificate_key_ref.is_some()),
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
            if several([
                b.password.is_some(),
                b.password_file.is_some(),
                b.password_ref.is_some(),
            ]) {
                return inv(
                    "basic_auth",
                    "at most one of basic_auth password, password_file & password_ref must be configured",
                );
            }
            if several([
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
            if o.jwt_bearer() {
                if several([
                    o.client_certificate_key.is_some(),
                    o.client_certificate_key_file.is_some(),
                    o.client_certificate_key_ref.is_some(),
                ]) {
                    return inv(
                        "oauth2",
                        "at most one of oauth2 client_certificate_key, client_certificate_key_file & client_certificate_key_ref must be configured using grant-type=urn:ietf:params:oauth:grant-type:jwt-bearer",
                    );
                }
                if let Some(alg) = o.signature_algorithm.as_deref()
                    && !["RS256", "RS384", "RS512"].contains(&alg)
                {
                    return inv(
                        "oauth2",
                        "valid signature algorithms are RS256, RS384 and RS512",
                    );
                }
            } else if several([
                o.client_secret.is_some(),
                o.client_secret_file.is_some(),
                o.client_secret_ref.is_some(),
            ]) {
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
        // The proxy keys' rules are checked by each configuration section, which can name the
        // key at fault (`Proxy::check`).
        if let Some(p) = &self.proxy_url {
            reqwest::Url::parse(p).map_err(|e| HttpClientError::Invalid {
                what: "proxy_url",
                message: e.to_string(),
            })?;
        }
        if let Err(message) = check_http_headers(&self.http_headers) {
            return inv("http_headers", &message);
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
        if several([t.ca.is_some(), t.ca_file.is_some(), t.ca_ref.is_some()]) {
            return inv("at most one of ca, ca_file & ca_ref must be configured");
        }
        if several([
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

    /// Makes every file path relative to `base` (the configuration file's directory), as
    /// Prometheus does.
    pub fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let fix_opt = |p: &mut Option<PathBuf>| {
            if let Some(p) = p {
                fix(p);
            }
        };
        let tls = |t: &mut TlsConfig| {
            for p in [&mut t.ca_file, &mut t.cert_file, &mut t.key_file] {
                fix_opt(p);
            }
        };
        tls(&mut self.tls_config);
        if let Some(b) = &mut self.basic_auth {
            fix_opt(&mut b.username_file);
            fix_opt(&mut b.password_file);
        }
        if let Some(a) = &mut self.authorization {
            fix_opt(&mut a.credentials_file);
        }
        if let Some(o) = &mut self.oauth2 {
            fix_opt(&mut o.client_secret_file);
            tls(&mut o.tls_config);
        }
        for h in self.http_headers.values_mut() {
            h.files.iter_mut().for_each(fix);
        }
    }
}

/// Whether more than one of three alternatives is set (Prometheus's "at most one of" rules).
fn several(set: [bool; 3]) -> bool {
    set.into_iter().filter(|b| *b).count() > 1
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
    proxy: Proxy<'_>,
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
    for p in proxy.reqwest()? {
        b = b.proxy(p);
    }
    b = b.use_preconfigured_tls(crate::http_tls::client_config(tls)?);
    Ok(b)
}

impl HttpClient {
    /// Builds the client; files named by `tls_config` are read now (a reload rereads them).
    pub fn new(cfg: &HttpClientConfig, user_agent: &str) -> Result<HttpClient, HttpClientError> {
        cfg.validate()?;
        if let Some(key) = cfg.accepted_only().first() {
            return Err(HttpClientError::Invalid {
                what: key,
                message: "cannot use secret ref without manager".into(),
            });
        }
        let client = builder(
            &cfg.tls_config,
            cfg.proxy(),
            cfg.follow_redirects,
            cfg.enable_http2,
            cfg.compression,
            user_agent,
        )?
        .build()?;
        let oauth_client = match &cfg.oauth2 {
            Some(o) => {
                Some(builder(&o.tls_config, o.proxy(), true, true, true, user_agent)?.build()?)
            }
            None => None,
        };
        Ok(HttpClient {
            client,
            cfg: Arc::new(cfg.clone()),
            token: Arc::default(),
            oauth_client,
        })
    }

    /// A GET request with the configured authentication and `http_headers`.
    pub async fn get(&self, url: &str) -> Result<reqwest::RequestBuilder, HttpClientError> {
        let req = self.client.get(url);
        self.authenticate(self.headers(req)?).await
    }

    /// A POST request with the configured authentication and `http_headers`.
    pub async fn post(
        &self,
        url: reqwest::Url,
    ) -> Result<reqwest::RequestBuilder, HttpClientError> {
        let req = self.client.post(url);
        self.authenticate(self.headers(req)?).await
    }

    /// Adds `http_headers` as Prometheus's headers round tripper does: per header, its values,
    /// then its secrets, then each file's trimmed content, read now (a file that cannot be
    /// read fails the request). Added to what the caller sets, never replacing it.
    fn headers(
        &self,
        mut req: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, HttpClientError> {
        for (name, h) in &self.cfg.http_headers {
            let values = h.values.iter().cloned();
            let secrets = h.secrets.iter().map(|s| s.0.clone());
            for v in values.chain(secrets) {
                req = req.header(name.as_str(), v);
            }
            for f in &h.files {
                req = req.header(name.as_str(), read_file(f)?);
            }
        }
        Ok(req)
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

    /// The OAuth2 token (client credentials, or Prometheus 3.8's JWT-bearer grant), cached
    /// until a minute before it expires.
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
        let client = self.oauth_client.as_ref().unwrap_or(&self.client);
        let request = if o.jwt_bearer() {
            let body = jwt_bearer_form(o).map_err(|e| err(e.to_string()))?;
            client.post(&o.token_url).body(body)
        } else {
            self.client_credentials(client, o)?
        };
        let resp = request
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
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

    /// The client-credentials token request: the client ID and secret as basic auth.
    fn client_credentials(
        &self,
        client: &reqwest::Client,
        o: &OAuth2,
    ) -> Result<reqwest::RequestBuilder, HttpClientError> {
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
        Ok(client
            .post(&o.token_url)
            .basic_auth(query_escape(&o.client_id), Some(query_escape(&secret)))
            .body(body))
    }
}

/// The JWT-bearer token request's body (see [`crate::jwt_bearer`]): the key read now (from
/// `client_certificate_key` or its file), the form encoded as Go's `url.Values` (keys sorted).
fn jwt_bearer_form(o: &OAuth2) -> Result<String, Box<dyn std::error::Error>> {
    let key = match (&o.client_certificate_key, &o.client_certificate_key_file) {
        (Some(k), _) => k.0.clone().into_bytes(),
        (None, Some(p)) => std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))?,
        (None, None) => Vec::new(),
    };
    let claims = o
        .claims
        .iter()
        .map(|(k, v)| Ok((k.clone(), serde_json::to_value(v)?)))
        .collect::<Result<std::collections::BTreeMap<_, _>, serde_json::Error>>()?;
    let assertion = crate::jwt_bearer::Assertion {
        key_pem: &key,
        key_id: o.client_certificate_key_id.as_deref(),
        algorithm: o.signature_algorithm.as_deref(),
        client_id: &o.client_id,
        iss: o.iss.as_deref(),
        audience: o.audience.as_deref(),
        token_url: &o.token_url,
        scopes: &o.scopes,
        claims: &claims,
    }
    .sign(std::time::SystemTime::now())?;
    let mut form = crate::jwt_bearer::form(assertion, &o.scopes, &o.endpoint_params)?;
    form.sort();
    Ok(form
        .iter()
        .map(|(k, v)| format!("{}={}", query_escape(k), query_escape(v)))
        .collect::<Vec<_>>()
        .join("&"))
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use axum::http::HeaderMap;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    /// What the test server saw: path, headers (lower-case names, values in order), body.
    type Seen = Vec<(String, Vec<(String, String)>, String)>;

    /// Serves `POST /token` (a token lasting an hour) and anything else (200), recording
    /// every request.
    async fn server() -> (String, Arc<Mutex<Seen>>) {
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let log = seen.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: String| {
                let log = log.clone();
                async move {
                    let headers = headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                        .collect();
                    log.lock()
                        .expect("lock")
                        .push((uri.path().to_owned(), headers, body));
                    if uri.path() == "/token" {
                        r#"{"access_token":"tok-1","token_type":"Bearer","expires_in":3600}"#
                    } else {
                        "ok"
                    }
                }
            },
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(l, app).await });
        (url, seen)
    }

    fn header<'a>(h: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        h.iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn form(body: &str) -> BTreeMap<String, String> {
        body.split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.replace('+', " ").replace("%3A", ":")))
            .collect()
    }

    fn oauth2(token_url: String, yaml: &str) -> OAuth2 {
        let mut o: OAuth2 = serde_yaml::from_str(&format!(
            "{{client_id: uplink, token_url: '{token_url}', {yaml}}}"
        ))
        .expect("oauth2");
        o.client_certificate_key_file = o
            .client_certificate_key_file
            .map(|p| Path::new(env!("CARGO_MANIFEST_DIR")).join(p));
        o
    }

    #[tokio::test]
    async fn jwt_bearer_grant_then_bearer_requests() {
        let (url, seen) = server().await;
        let cfg = HttpClientConfig {
            oauth2: Some(oauth2(
                format!("{url}/token"),
                "grant_type: 'urn:ietf:params:oauth:grant-type:jwt-bearer', \
                 client_certificate_key_file: tests/fixtures/jwt-rsa-pkcs8.pem, \
                 client_certificate_key_id: k1, scopes: [read], \
                 endpoint_params: {resource: metrics}, claims: {tenant: edge}",
            )),
            ..HttpClientConfig::default()
        };
        let client = HttpClient::new(&cfg, "test").expect("client");
        for _ in 0..2 {
            let resp = client
                .get(&format!("{url}/metrics"))
                .await
                .expect("request")
                .send()
                .await
                .expect("sent");
            assert!(resp.status().is_success());
        }
        let seen = seen.lock().expect("lock").clone();
        let paths: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            paths,
            ["/token", "/metrics", "/metrics"],
            "one token, cached"
        );
        let (_, token_headers, body) = &seen[0];
        assert!(
            header(token_headers, "authorization").is_empty(),
            "no client auth"
        );
        let f = form(body);
        assert_eq!(f["grant_type"], JWT_BEARER_GRANT);
        assert_eq!(f["scope"], "read");
        assert_eq!(f["resource"], "metrics");
        let keys: Vec<&String> = f.keys().collect();
        assert_eq!(keys, ["assertion", "grant_type", "resource", "scope"]);
        let parts: Vec<&str> = f["assertion"].split('.').collect();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
        assert_eq!(claims["iss"], "uplink");
        assert_eq!(claims["aud"], format!("{url}/token"));
        assert_eq!(claims["tenant"], "edge");
        for (_, h, _) in &seen[1..] {
            assert_eq!(header(h, "authorization"), ["Bearer tok-1"]);
        }
    }

    #[tokio::test]
    async fn client_credentials_grant() {
        let (url, seen) = server().await;
        let mut o = oauth2(
            format!("{url}/token"),
            "client_secret: s3cret, scopes: [a, b]",
        );
        o.endpoint_params.insert("audience".into(), "x".into());
        let cfg = HttpClientConfig {
            oauth2: Some(o),
            ..HttpClientConfig::default()
        };
        let client = HttpClient::new(&cfg, "test").expect("client");
        client
            .get(&format!("{url}/m"))
            .await
            .expect("request")
            .send()
            .await
            .expect("sent");
        let seen = seen.lock().expect("lock").clone();
        let (_, h, body) = &seen[0];
        let basic = base64::engine::general_purpose::STANDARD.encode("uplink:s3cret");
        assert_eq!(
            header(h, "authorization"),
            [format!("Basic {basic}").as_str()]
        );
        let f = form(body);
        assert_eq!(f["grant_type"], "client_credentials");
        assert_eq!(f["scope"], "a b");
        assert_eq!(f["audience"], "x");
    }

    #[tokio::test]
    async fn http_headers_are_added_and_files_reread() {
        let (url, seen) = server().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("h");
        std::fs::write(&file, "one\n").expect("write");
        let mut cfg = HttpClientConfig::default();
        cfg.http_headers.insert(
            "X-Tenant".into(),
            serde_yaml::from_str("{values: [a, b], secrets: [s], files: [h]}").expect("header"),
        );
        cfg.resolve(dir.path());
        let client = HttpClient::new(&cfg, "test").expect("client");
        for next in ["two", "two"] {
            client
                .get(&format!("{url}/m"))
                .await
                .expect("request")
                .send()
                .await
                .expect("sent");
            std::fs::write(&file, next).expect("write");
        }
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(header(&seen[0].1, "x-tenant"), ["a", "b", "s", "one"]);
        assert_eq!(header(&seen[1].1, "x-tenant"), ["a", "b", "s", "two"]);
        std::fs::remove_file(&file).expect("rm");
        let e = client.get(&format!("{url}/m")).await.expect_err("no file");
        assert!(e.to_string().starts_with("reading "), "{e}");
    }

    #[test]
    fn secret_references_cannot_build_a_client() {
        let cfg = HttpClientConfig {
            basic_auth: Some(
                serde_yaml::from_str("{username: u, password_ref: vault/p}").expect("auth"),
            ),
            ..HttpClientConfig::default()
        };
        cfg.validate().expect("loads");
        let e = HttpClient::new(&cfg, "test").expect_err("no secret manager");
        assert_eq!(
            e.to_string(),
            "basic_auth.*_ref: cannot use secret ref without manager"
        );
    }
}
