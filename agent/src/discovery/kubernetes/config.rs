//! The `kubernetes_sd_configs` entry, its checks, and how it becomes a connection to the API
//! server.
//!
//! Fields and load-time checks follow Prometheus (v2.53): `role` is required and one of `node`,
//! `pod`, `service`, `endpoints`, `endpointslice`, `ingress`; `api_server` and
//! `kubeconfig_file` exclude each other; the HTTP client fields (`basic_auth`,
//! `authorization`, `oauth2`, `tls_config`, `proxy_url`, `follow_redirects`, `enable_http2`,
//! and the deprecated `bearer_token`/`bearer_token_file`) need `api_server` and are refused
//! with `kubeconfig_file`; `namespaces.own_namespace` only works in-cluster; each selector
//! role may appear once and must suit the discovery role (`endpoints` and `endpointslice`
//! also take `pod` and `service` selectors).
//!
//! Where the API server is:
//!
//! - `api_server`: that URL, with the entry's HTTP client settings.
//! - `kubeconfig_file` (relative to the configuration file's directory): the current context's
//!   cluster and user. Supported: `server`, `certificate-authority(-data)`,
//!   `insecure-skip-tls-verify`, `tls-server-name`, `proxy-url`; `client-certificate(-data)`,
//!   `client-key(-data)`, `token`, `tokenFile` (re-read on every request), `username` and
//!   `password`. Relative paths in it resolve against its own directory. `exec` and
//!   `auth-provider` plugins and impersonation (`as*`) are refused with an error naming them
//!   (Prometheus supports them through client-go; an agent has no cloud CLIs to exec).
//! - neither: in-cluster, as client-go's `InClusterConfig`: `https://$KUBERNETES_SERVICE_HOST:
//!   $KUBERNETES_SERVICE_PORT`, the service account token file (re-read on every request, so
//!   rotated tokens are picked up), its `ca.crt`, and, for `own_namespace`, its `namespace`
//!   file (read once at start, surrounding whitespace trimmed).
//!
//! Deviations: selector syntax is checked by a small parser of Kubernetes' label and field
//! selector grammars, so error messages differ from client-go's; the API server still parses
//! the selector itself. `api_server` must be an `http` or `https` URL.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use reqwest::Url;
use serde::Deserialize;

use crate::http_client::{
    Authorization, BasicAuth, HttpClient, HttpClientConfig, HttpClientError, HttpHeader, OAuth2,
    Secret, TlsConfig,
};

/// What is discovered, one kind of Kubernetes object per role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Node,
    Pod,
    Service,
    Endpoints,
    EndpointSlice,
    Ingress,
}

impl Role {
    /// The role's name in the configuration and in `__meta_kubernetes_<role>_*` labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Pod => "pod",
            Role::Service => "service",
            Role::Endpoints => "endpoints",
            Role::EndpointSlice => "endpointslice",
            Role::Ingress => "ingress",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "node" => Role::Node,
            "pod" => Role::Pod,
            "service" => Role::Service,
            "endpoints" => Role::Endpoints,
            "endpointslice" => Role::EndpointSlice,
            "ingress" => Role::Ingress,
            _ => return None,
        })
    }

    /// Selector roles Prometheus allows for this discovery role.
    fn allowed_selectors(self) -> &'static [Role] {
        match self {
            Role::Endpoints => &[Role::Pod, Role::Service, Role::Endpoints],
            Role::EndpointSlice => &[Role::Pod, Role::Service, Role::EndpointSlice],
            Role::Node => &[Role::Node],
            Role::Pod => &[Role::Pod],
            Role::Service => &[Role::Service],
            Role::Ingress => &[Role::Ingress],
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Role::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown Kubernetes SD role {s:?}")))
    }
}

/// `namespaces:`: which namespaces to watch (none listed and not `own_namespace`: all).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NamespaceDiscovery {
    #[serde(default)]
    pub own_namespace: bool,
    #[serde(default)]
    pub names: Vec<String>,
}

/// One `selectors:` entry, passed to the API server as `labelSelector` and `fieldSelector`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SelectorConfig {
    pub role: Role,
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub field: String,
}

/// `attach_metadata:`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AttachMetadata {
    /// Add the labels of the node a target runs on (roles pod, endpoints, endpointslice).
    #[serde(default)]
    pub node: bool,
    /// Prometheus 3.6: the labels and annotations of the target's namespace (every role but
    /// node).
    #[serde(default)]
    pub namespace: bool,
    /// Prometheus 3.11 (roles pod, endpoints, endpointslice): the Deployment owning the pod's
    /// ReplicaSet.
    #[serde(default)]
    pub deployment: bool,
    /// Prometheus 3.11: the Job controlling the pod.
    #[serde(default)]
    pub job: bool,
    /// Prometheus 3.11: the CronJob owning the pod's Job.
    #[serde(default)]
    pub cronjob: bool,
}

/// One `kubernetes_sd_configs` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSdConfig {
    /// Required; optional here only so that its absence gets Prometheus's message.
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default, deserialize_with = "crate::http_client::non_empty")]
    pub api_server: Option<String>,
    #[serde(default, deserialize_with = "crate::http_client::non_empty")]
    pub kubeconfig_file: Option<PathBuf>,
    #[serde(default)]
    pub namespaces: NamespaceDiscovery,
    #[serde(default)]
    pub selectors: Vec<SelectorConfig>,
    #[serde(default)]
    pub attach_metadata: AttachMetadata,
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    #[serde(default)]
    pub authorization: Option<Authorization>,
    #[serde(default)]
    pub oauth2: Option<OAuth2>,
    #[serde(default, deserialize_with = "crate::http_client::non_empty_secret")]
    pub bearer_token: Option<Secret>,
    #[serde(default, deserialize_with = "crate::http_client::non_empty")]
    pub bearer_token_file: Option<PathBuf>,
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

/// Why no connection to the API server could be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined"
    )]
    NotInCluster,
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not read own namespace name (empty file {})", .0.display())]
    EmptyNamespace(PathBuf),
    #[error("kubeconfig {}: {message}", path.display())]
    Kubeconfig { path: PathBuf, message: String },
    #[error("api server URL {url:?}: {message}")]
    Url { url: String, message: String },
    #[error(transparent)]
    Client(#[from] HttpClientError),
}

impl KubernetesSdConfig {
    /// The entry's own HTTP client settings (used with `api_server`).
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
            compression: true,
        }
    }

    fn kubeconfig(&self) -> Option<&Path> {
        self.kubeconfig_file
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
    }

    fn api_server(&self) -> Option<&str> {
        self.api_server.as_deref().filter(|s| !s.is_empty())
    }

    /// Checks what Prometheus checks at load time, with its messages.
    pub fn validate(&self) -> Result<(), String> {
        let Some(role) = self.role else {
            return Err(
                "role missing (one of: pod, service, endpoints, endpointslice, node, ingress)"
                    .into(),
            );
        };
        crate::http_client::check_bearer(
            self.bearer_token.as_ref(),
            self.bearer_token_file.as_deref(),
            self.basic_auth.is_some(),
            self.authorization.is_some(),
            self.oauth2.is_some(),
        )?;
        let http = self.http_client();
        http.validate().map_err(|e| e.to_string())?;
        http.proxy().check()?;
        let custom = http != HttpClientConfig::default() || !self.accepted_only().is_empty();
        if let Some(url) = self.api_server() {
            let parsed = Url::parse(url).map_err(|e| format!("api_server: {e}"))?;
            if parsed.scheme() != "http" && parsed.scheme() != "https" {
                return Err("api_server: URL scheme must be 'http' or 'https'".into());
            }
            if parsed.cannot_be_a_base() || parsed.host_str().is_none_or(str::is_empty) {
                return Err("api_server: host is missing in URL".into());
            }
        }
        match (self.api_server().is_some(), self.kubeconfig().is_some()) {
            (true, true) => {
                return Err("cannot use 'kubeconfig_file' and 'api_server' simultaneously".into());
            }
            (false, true) if custom => {
                return Err(
                    "cannot use a custom HTTP client configuration together with 'kubeconfig_file'"
                        .into(),
                );
            }
            (false, false) if custom => {
                return Err("to use custom HTTP client configuration please provide the 'api_server' URL explicitly".into());
            }
            (true, false) if self.namespaces.own_namespace => {
                return Err(
                    "cannot use 'api_server' and 'namespaces.own_namespace' simultaneously".into(),
                );
            }
            (false, true) if self.namespaces.own_namespace => {
                return Err(
                    "cannot use 'kubeconfig_file' and 'namespaces.own_namespace' simultaneously"
                        .into(),
                );
            }
            _ => {}
        }
        let mut seen = BTreeSet::new();
        for s in &self.selectors {
            if !seen.insert(s.role) {
                return Err(format!("duplicated selector role: {}", s.role));
            }
            let allowed = role.allowed_selectors();
            if !allowed.contains(&s.role) {
                let names: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
                return Err(format!(
                    "{role} role supports only {} selectors",
                    names.join(", ")
                ));
            }
            check_field_selector(&s.field)?;
            check_label_selector(&s.label)?;
        }
        Ok(())
    }

    /// The HTTP client keys set that the agent accepts without acting on them.
    pub fn accepted_only(&self) -> Vec<&'static str> {
        self.http_client().accepted_only()
    }

    /// The `labelSelector` and `fieldSelector` for objects of `role` (empty when none).
    pub fn selector(&self, role: Role) -> (String, String) {
        self.selectors
            .iter()
            .find(|s| s.role == role)
            .map(|s| (s.label.clone(), s.field.clone()))
            .unwrap_or_default()
    }
}

/// Where the in-cluster configuration comes from: the environment and the service account
/// files Kubernetes mounts into every pod. Tests point it elsewhere.
#[derive(Clone, Debug)]
pub struct InCluster {
    pub host: Option<String>,
    pub port: Option<String>,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
    pub namespace_file: PathBuf,
}

/// Where Kubernetes mounts a pod's service account credentials.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl InCluster {
    /// `KUBERNETES_SERVICE_HOST`, `KUBERNETES_SERVICE_PORT` and [`SERVICE_ACCOUNT_DIR`].
    pub fn from_env() -> InCluster {
        let dir = Path::new(SERVICE_ACCOUNT_DIR);
        InCluster {
            host: std::env::var("KUBERNETES_SERVICE_HOST").ok(),
            port: std::env::var("KUBERNETES_SERVICE_PORT").ok(),
            token_file: dir.join("token"),
            ca_file: dir.join("ca.crt"),
            namespace_file: dir.join("namespace"),
        }
    }
}

/// A ready connection: the API server's base URL and a client carrying the credentials.
#[derive(Clone, Debug)]
pub struct Connection {
    pub base: Url,
    pub client: HttpClient,
    /// The pod's own namespace (in-cluster with `own_namespace` only).
    pub own_namespace: Option<String>,
}

/// Builds the connection for `cfg` (see the module docs). `base` is the configuration file's
/// directory.
pub fn connect(
    cfg: &KubernetesSdConfig,
    base: &Path,
    in_cluster: &InCluster,
    user_agent: &str,
) -> Result<Connection, ConnectError> {
    let (server, mut http, own_namespace) = if let Some(url) = cfg.api_server() {
        let mut http = cfg.http_client();
        http.resolve(base);
        (url.to_owned(), http, None)
    } else if let Some(path) = cfg.kubeconfig() {
        let path = base.join(path);
        let (server, http) = kubeconfig(&path)?;
        (server, http, None)
    } else {
        let (Some(host), Some(port)) = (
            in_cluster.host.as_deref().filter(|h| !h.is_empty()),
            in_cluster.port.as_deref().filter(|p| !p.is_empty()),
        ) else {
            return Err(ConnectError::NotInCluster);
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let http = HttpClientConfig {
            authorization: Some(Authorization {
                kind: "Bearer".into(),
                credentials: None,
                credentials_file: Some(in_cluster.token_file.clone()),
                credentials_ref: None,
            }),
            tls_config: TlsConfig {
                ca_file: Some(in_cluster.ca_file.clone()),
                ..TlsConfig::default()
            },
            ..HttpClientConfig::default()
        };
        let own = if cfg.namespaces.own_namespace {
            let p = &in_cluster.namespace_file;
            let ns = std::fs::read_to_string(p).map_err(|source| ConnectError::Read {
                path: p.clone(),
                source,
            })?;
            // Trimmed (Prometheus takes the bytes as they are; the kubelet writes no newline).
            let ns = ns.trim();
            if ns.is_empty() {
                return Err(ConnectError::EmptyNamespace(p.clone()));
            }
            Some(ns.to_owned())
        } else {
            None
        };
        (format!("https://{host}:{port}"), http, own)
    };
    http.compression = true;
    let url = Url::parse(&server).map_err(|e| ConnectError::Url {
        url: server.clone(),
        message: e.to_string(),
    })?;
    if url.cannot_be_a_base() || !matches!(url.scheme(), "http" | "https") {
        return Err(ConnectError::Url {
            url: server,
            message: "not an http or https URL".into(),
        });
    }
    Ok(Connection {
        base: url,
        client: HttpClient::new(&http, user_agent)?,
        own_namespace,
    })
}

/// The parts of a kubeconfig file the agent reads; other keys are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig {
    #[serde(default)]
    current_context: String,
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
    #[serde(default)]
    users: Vec<Named<User>>,
}

#[derive(Debug, Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "context", alias = "user")]
    item: Option<T>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    #[serde(default)]
    server: String,
    #[serde(default)]
    certificate_authority: Option<PathBuf>,
    #[serde(default)]
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    #[serde(default)]
    tls_server_name: Option<String>,
    #[serde(default)]
    proxy_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Context {
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    user: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    #[serde(default)]
    client_certificate: Option<PathBuf>,
    #[serde(default)]
    client_certificate_data: Option<String>,
    #[serde(default)]
    client_key: Option<PathBuf>,
    #[serde(default)]
    client_key_data: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default, rename = "tokenFile")]
    token_file: Option<PathBuf>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    /// Everything else, to refuse what needs support the agent lacks.
    #[serde(flatten)]
    other: std::collections::BTreeMap<String, serde_yaml::Value>,
}

/// User fields that change who the agent authenticates as; refused.
const UNSUPPORTED_USER_FIELDS: [&str; 6] = [
    "exec",
    "auth-provider",
    "as",
    "as-uid",
    "as-groups",
    "as-user-extra",
];

/// Reads a kubeconfig file: the current context's server URL and client settings.
fn kubeconfig(path: &Path) -> Result<(String, HttpClientConfig), ConnectError> {
    let err = |message: String| ConnectError::Kubeconfig {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConnectError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let kc: Kubeconfig = serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let fix = |p: Option<PathBuf>| p.map(|p| if p.is_relative() { dir.join(p) } else { p });
    if kc.current_context.is_empty() {
        return Err(err("no current-context is set".into()));
    }
    let find = |what: &str, name: &str, found: bool| {
        if found {
            Ok(())
        } else {
            Err(err(format!("{what} {name:?} not found")))
        }
    };
    let ctx = kc
        .contexts
        .into_iter()
        .find(|c| c.name == kc.current_context);
    find("context", &kc.current_context, ctx.is_some())?;
    let ctx = ctx.and_then(|c| c.item).unwrap_or_default();
    let cluster = kc.clusters.into_iter().find(|c| c.name == ctx.cluster);
    find("cluster", &ctx.cluster, cluster.is_some())?;
    let cluster = cluster.and_then(|c| c.item).unwrap_or_default();
    if cluster.server.is_empty() {
        return Err(err(format!("cluster {:?} has no server", ctx.cluster)));
    }
    let user = if ctx.user.is_empty() {
        User::default()
    } else {
        let user = kc.users.into_iter().find(|u| u.name == ctx.user);
        find("user", &ctx.user, user.is_some())?;
        user.and_then(|u| u.item).unwrap_or_default()
    };
    if let Some(field) = UNSUPPORTED_USER_FIELDS
        .iter()
        .find(|f| user.other.contains_key(**f))
    {
        return Err(err(format!(
            "user {:?}: {field} is not supported by uplink-agent (use a token, tokenFile or a client certificate)",
            ctx.user
        )));
    }
    let decode = |what: &str, data: Option<String>| -> Result<Option<String>, ConnectError> {
        use base64::Engine;
        data.map(|d| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(d.trim())
                .map_err(|e| err(format!("{what}: {e}")))?;
            String::from_utf8(bytes).map_err(|_| err(format!("{what}: not PEM text")))
        })
        .transpose()
    };
    let tls_config = TlsConfig {
        ca: decode(
            "certificate-authority-data",
            cluster.certificate_authority_data,
        )?,
        ca_file: fix(cluster.certificate_authority),
        cert: decode("client-certificate-data", user.client_certificate_data)?,
        cert_file: fix(user.client_certificate),
        key: decode("client-key-data", user.client_key_data)?.map(Secret),
        key_file: fix(user.client_key),
        server_name: cluster.tls_server_name,
        insecure_skip_verify: cluster.insecure_skip_tls_verify,
        ..TlsConfig::default()
    };
    // Inline data wins over files, as in client-go.
    let tls_config = TlsConfig {
        ca_file: tls_config.ca_file.filter(|_| tls_config.ca.is_none()),
        cert_file: tls_config.cert_file.filter(|_| tls_config.cert.is_none()),
        key_file: tls_config.key_file.filter(|_| tls_config.key.is_none()),
        ..tls_config
    };
    let authorization = match (user.token, fix(user.token_file)) {
        (Some(t), _) if !t.is_empty() => Some(Authorization {
            kind: "Bearer".into(),
            credentials: Some(Secret(t)),
            credentials_file: None,
            credentials_ref: None,
        }),
        (_, Some(f)) => Some(Authorization {
            kind: "Bearer".into(),
            credentials: None,
            credentials_file: Some(f),
            credentials_ref: None,
        }),
        _ => None,
    };
    let basic_auth = match (&authorization, user.username) {
        (None, Some(u)) if !u.is_empty() => Some(BasicAuth {
            username: u,
            username_file: None,
            password: user.password.map(Secret),
            password_file: None,
            username_ref: None,
            password_ref: None,
        }),
        _ => None,
    };
    let http = HttpClientConfig {
        basic_auth,
        authorization,
        tls_config,
        proxy_url: cluster.proxy_url,
        ..HttpClientConfig::default()
    };
    http.validate().map_err(|e| err(e.to_string()))?;
    Ok((cluster.server, http))
}

/// Checks a field selector: comma-separated `key=value`, `key==value` or `key!=value` terms
/// (`\` escapes `,`, `=`, `!` and `\` in values); empty selects everything.
pub fn check_field_selector(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    let mut terms = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push(c);
                match chars.next() {
                    Some(n) => cur.push(n),
                    None => return Err(format!("invalid field selector {s:?}: trailing '\\'")),
                }
            }
            ',' => terms.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    terms.push(cur);
    for t in terms {
        let op = ["!=", "==", "="]
            .iter()
            .filter_map(|op| t.find(op).map(|i| (i, *op)))
            .min_by_key(|(i, op)| (*i, std::cmp::Reverse(op.len())));
        let Some((i, _)) = op else {
            return Err(format!(
                "invalid field selector {s:?}: can't understand {t:?}"
            ));
        };
        if t[..i].trim().is_empty() {
            return Err(format!("invalid field selector {s:?}: empty key in {t:?}"));
        }
    }
    Ok(())
}

/// A label selector token.
#[derive(Debug, PartialEq)]
enum Tok<'a> {
    Word(&'a str),
    Op(&'static str),
}

fn lex(s: &str) -> Vec<Tok<'_>> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let two = s.get(i..i + 2);
        match b[i] {
            c if c.is_ascii_whitespace() => i += 1,
            _ if two == Some("==") || two == Some("!=") => {
                out.push(Tok::Op(if two == Some("==") { "==" } else { "!=" }));
                i += 2;
            }
            b'=' | b'!' | b'(' | b')' | b',' | b'<' | b'>' => {
                out.push(Tok::Op(match b[i] {
                    b'=' => "=",
                    b'!' => "!",
                    b'(' => "(",
                    b')' => ")",
                    b',' => ",",
                    b'<' => "<",
                    _ => ">",
                }));
                i += 1;
            }
            _ => {
                let start = i;
                while i < b.len()
                    && !b[i].is_ascii_whitespace()
                    && !matches!(b[i], b'=' | b'!' | b'(' | b')' | b',' | b'<' | b'>')
                {
                    i += 1;
                }
                out.push(Tok::Word(&s[start..i]));
            }
        }
    }
    out
}

/// Checks a label selector in Kubernetes' syntax: comma-separated requirements `key`, `!key`,
/// `key=value`, `key==value`, `key!=value`, `key in (v1,v2)`, `key notin (v1,v2)`, `key>n`,
/// `key<n`, with Kubernetes' rules for keys and values; empty selects everything.
pub fn check_label_selector(s: &str) -> Result<(), String> {
    let toks = lex(s);
    let fail = |m: String| Err(format!("invalid label selector {s:?}: {m}"));
    let mut i = 0;
    if toks.is_empty() {
        return Ok(());
    }
    loop {
        let negated = toks.get(i) == Some(&Tok::Op("!"));
        if negated {
            i += 1;
        }
        let Some(Tok::Word(key)) = toks.get(i) else {
            return fail("expected a label key".into());
        };
        if let Err(m) = check_label_key(key) {
            return fail(m);
        }
        i += 1;
        if !negated {
            match toks.get(i) {
                Some(Tok::Op(op @ ("=" | "==" | "!=" | "<" | ">"))) => {
                    i += 1;
                    let value = match toks.get(i) {
                        Some(Tok::Word(v)) => {
                            i += 1;
                            *v
                        }
                        _ => "",
                    };
                    if matches!(*op, "<" | ">") {
                        if value.parse::<i64>().is_err() {
                            return fail(format!("{value:?} is not an integer"));
                        }
                    } else if let Err(m) = check_label_value(value) {
                        return fail(m);
                    }
                }
                Some(Tok::Word(w @ ("in" | "notin"))) => {
                    i += 1;
                    if toks.get(i) != Some(&Tok::Op("(")) {
                        return fail(format!("expected '(' after {w}"));
                    }
                    i += 1;
                    loop {
                        match toks.get(i) {
                            Some(Tok::Word(v)) => {
                                if let Err(m) = check_label_value(v) {
                                    return fail(m);
                                }
                                i += 1;
                            }
                            Some(Tok::Op(",")) | Some(Tok::Op(")")) => {}
                            _ => return fail("unterminated value set".into()),
                        }
                        match toks.get(i) {
                            Some(Tok::Op(",")) => i += 1,
                            Some(Tok::Op(")")) => {
                                i += 1;
                                break;
                            }
                            _ => return fail("unterminated value set".into()),
                        }
                    }
                }
                Some(Tok::Op(",")) | None => {}
                Some(t) => return fail(format!("unexpected {t:?}")),
            }
        }
        match toks.get(i) {
            None => return Ok(()),
            Some(Tok::Op(",")) => i += 1,
            Some(t) => return fail(format!("unexpected {t:?}")),
        }
    }
}

/// `[prefix/]name`: prefix a DNS subdomain (at most 253), name at most 63 characters of
/// `[A-Za-z0-9._-]`, starting and ending alphanumeric.
fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !ok {
            return Err(format!("{key:?}: prefix must be a DNS subdomain"));
        }
    }
    if name.is_empty() || !name_chars_ok(name) {
        return Err(format!(
            "{key:?}: name part must consist of at most 63 alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

fn check_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() || name_chars_ok(v) {
        Ok(())
    } else {
        Err(format!(
            "{v:?}: a label value must be empty or at most 63 alphanumeric characters, '-', '_' or '.', starting and ending with an alphanumeric character"
        ))
    }
}

fn name_chars_ok(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() <= 63
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> KubernetesSdConfig {
        serde_yaml::from_str(yaml).expect("parses")
    }

    #[test]
    fn validation_follows_prometheus() {
        let cases: &[(&str, Result<(), &str>)] = &[
            ("role: pod", Ok(())),
            (
                "api_server: https://k8s:6443\nrole: node\ntls_config: {insecure_skip_verify: true}\nbearer_token: x",
                Ok(()),
            ),
            (
                "namespaces: {names: [a]}",
                Err("role missing (one of: pod, service, endpoints, endpointslice, node, ingress)"),
            ),
            (
                "role: pod\napi_server: https://k\nkubeconfig_file: kc",
                Err("cannot use 'kubeconfig_file' and 'api_server' simultaneously"),
            ),
            (
                "role: pod\nkubeconfig_file: kc\nbasic_auth: {username: u}",
                Err(
                    "cannot use a custom HTTP client configuration together with 'kubeconfig_file'",
                ),
            ),
            (
                "role: pod\nfollow_redirects: false",
                Err(
                    "to use custom HTTP client configuration please provide the 'api_server' URL explicitly",
                ),
            ),
            (
                "role: pod\napi_server: https://k\nnamespaces: {own_namespace: true}",
                Err("cannot use 'api_server' and 'namespaces.own_namespace' simultaneously"),
            ),
            (
                "role: pod\nkubeconfig_file: kc\nnamespaces: {own_namespace: true}",
                Err("cannot use 'kubeconfig_file' and 'namespaces.own_namespace' simultaneously"),
            ),
            ("role: pod\nnamespaces: {own_namespace: true}", Ok(())),
            (
                "role: pod\nselectors: [{role: pod, label: a=b}, {role: pod, field: c=d}]",
                Err("duplicated selector role: pod"),
            ),
            (
                "role: pod\nselectors: [{role: node}]",
                Err("pod role supports only pod selectors"),
            ),
            (
                "role: endpoints\nselectors: [{role: node}]",
                Err("endpoints role supports only pod, service, endpoints selectors"),
            ),
            (
                "role: endpointslice\nselectors: [{role: pod, label: 'app in (a, b),!canary,tier!=x', field: 'spec.nodeName=n1,status.phase!=Failed'}, {role: service, label: 'app.kubernetes.io/name'}]",
                Ok(()),
            ),
            (
                "role: pod\napi_server: ftp://k",
                Err("api_server: URL scheme must be 'http' or 'https'"),
            ),
        ];
        for (yaml, want) in cases {
            assert_eq!(
                parse(yaml).validate(),
                want.map_err(str::to_owned),
                "{yaml}"
            );
        }
        let e = serde_yaml::from_str::<KubernetesSdConfig>("role: pods")
            .expect_err("unknown role")
            .to_string();
        assert!(e.contains("unknown Kubernetes SD role \"pods\""), "{e}");
    }

    #[test]
    fn selectors_are_checked() {
        for ok in [
            "",
            "app",
            "!app",
            "app=web",
            "app==web,tier!=db",
            "env in (prod, staging),team notin (x)",
            "example.com/owner=me",
            "replicas>2",
            "a=",
        ] {
            assert_eq!(check_label_selector(ok), Ok(()), "{ok}");
        }
        for bad in [
            "app=web,",
            "=web",
            "app in prod",
            "app in (a",
            "-app=x",
            "app=bad value",
            "Example.com/x=y",
            "replicas>two",
        ] {
            assert!(check_label_selector(bad).is_err(), "{bad}");
        }
        for ok in [
            "",
            "spec.nodeName=n1",
            "a==b,c!=d",
            "metadata.name=a\\,b",
            "a=",
        ] {
            assert_eq!(check_field_selector(ok), Ok(()), "{ok}");
        }
        for bad in ["spec.nodeName", "=x", "a=b,", "a=b\\"] {
            assert!(check_field_selector(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kubeconfig_current_context_and_refusals() {
        use base64::Engine;
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_b64 = base64::engine::general_purpose::STANDARD.encode("CA PEM");
        let text = format!(
            r#"apiVersion: v1
kind: Config
current-context: edge
clusters:
- name: other
  cluster: {{server: "https://other:6443"}}
- name: k3s
  cluster:
    server: https://10.0.0.1:6443
    certificate-authority-data: {ca_b64}
    tls-server-name: kubernetes
contexts:
- name: edge
  context: {{cluster: k3s, user: agent, namespace: monitoring}}
users:
- name: agent
  user:
    tokenFile: token
    client-certificate: certs/c.crt
    client-key: certs/c.key
preferences: {{}}
"#
        );
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, &text).expect("write");
        let (server, http) = kubeconfig(&path).expect("parses");
        assert_eq!(server, "https://10.0.0.1:6443");
        assert_eq!(http.tls_config.ca.as_deref(), Some("CA PEM"));
        assert_eq!(http.tls_config.server_name.as_deref(), Some("kubernetes"));
        assert_eq!(
            http.tls_config.cert_file,
            Some(dir.path().join("certs/c.crt"))
        );
        let auth = http.authorization.expect("token");
        assert_eq!(auth.credentials_file, Some(dir.path().join("token")));

        let exec = text.replace(
            "    tokenFile: token\n",
            "    exec: {command: aws, apiVersion: client.authentication.k8s.io/v1}\n",
        );
        std::fs::write(&path, exec).expect("write");
        let e = kubeconfig(&path).expect_err("exec").to_string();
        assert!(e.contains("exec is not supported"), "{e}");

        std::fs::write(
            &path,
            text.replace("current-context: edge", "current-context: x"),
        )
        .expect("write");
        let e = kubeconfig(&path).expect_err("no context").to_string();
        assert!(e.contains("context \"x\" not found"), "{e}");
    }

    #[test]
    fn in_cluster_needs_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = parse("role: pod");
        let mut ic = InCluster {
            host: None,
            port: None,
            token_file: dir.path().join("token"),
            ca_file: dir.path().join("ca.crt"),
            namespace_file: dir.path().join("namespace"),
        };
        assert!(matches!(
            connect(&cfg, dir.path(), &ic, "t"),
            Err(ConnectError::NotInCluster)
        ));
        ic.host = Some("fd00::1".into());
        ic.port = Some("443".into());
        // The CA file is missing: the client cannot be built.
        assert!(matches!(
            connect(&cfg, dir.path(), &ic, "t"),
            Err(ConnectError::Client(_))
        ));
    }
}
