//! mTLS for the agent-gateway QUIC connection, and identity from certificates.
//!
//! Invariants:
//! - One crypto provider (ring), TLS 1.3 only (QUIC requires it), ALPN [`crate::wire::ALPN`].
//! - The gateway requires a client certificate that chains to its client CA; anonymous
//!   clients fail the handshake.
//! - The agent verifies the gateway's certificate against its CA bundle and the configured
//!   server name.
//! - No 0-RTT: early data is replayable, and batches must not be.
//! - An agent's identity comes only from its verified leaf certificate ([`identify`]): a
//!   SPIFFE ID `spiffe://<trust domain>/tenant/<tenant>/site/<site>` when the certificate has
//!   one (exactly one; in the configured trust domain), else the subject common name, or its
//!   first DNS name when the subject has no CN. Every part must match [`valid_identity`].
//!   rustls (webpki) already refuses, at the handshake: no certificate, another CA, expired or
//!   not yet valid, a CA certificate as leaf, and a leaf without the clientAuth usage.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// Why TLS material could not be loaded or a configuration built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file held no certificate or key of the expected kind.
    #[error("{}: no {what} found in PEM file", path.display())]
    Empty { path: PathBuf, what: &'static str },
    /// rustls refused the material or settings.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built (for example an empty CA bundle).
    #[error("client verifier: {0}")]
    Verifier(String),
    /// quinn refused the rustls configuration.
    #[error("quic crypto: {0}")]
    Quic(String),
}

/// Paths of the PEM files one side needs.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// This side's certificate chain.
    pub cert_file: PathBuf,
    /// This side's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA bundle that the peer's certificate must chain to.
    pub ca_file: PathBuf,
    /// PEM certificate revocation lists: a peer certificate they list is refused (and, on
    /// the gateway, a connection made with it is closed at the next reload).
    #[serde(default)]
    pub crl_file: Option<PathBuf>,
    /// How often the files are read again; a change applies to new connections (`0s`: never).
    #[serde(default = "default_reload_interval")]
    pub reload_interval: crate::duration::PromDuration,
}

fn default_reload_interval() -> crate::duration::PromDuration {
    crate::duration::PromDuration(Duration::from_secs(60))
}

impl TlsFiles {
    /// The three required files, with the defaults for the rest.
    pub fn new(cert_file: PathBuf, key_file: PathBuf, ca_file: PathBuf) -> TlsFiles {
        TlsFiles {
            cert_file,
            key_file,
            ca_file,
            crl_file: None,
            reload_interval: default_reload_interval(),
        }
    }

    /// Resolves relative paths against `base` (the config file's directory).
    pub fn resolve(&mut self, base: &Path) {
        let crl = self.crl_file.as_mut();
        for p in [&mut self.cert_file, &mut self.key_file, &mut self.ca_file]
            .into_iter()
            .chain(crl)
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// A digest of every file's bytes, to notice a change (a missing file is an error).
    pub fn digest(&self) -> Result<u64, TlsError> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for p in [&self.cert_file, &self.key_file, &self.ca_file]
            .into_iter()
            .chain(self.crl_file.as_ref())
        {
            read(p)?.hash(&mut h);
        }
        Ok(h.finish())
    }
}

/// The CRLs of `files` (none without `crl_file`).
fn crls(files: &TlsFiles) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    match &files.crl_file {
        None => Ok(Vec::new()),
        Some(path) => load_pem(path, "certificate revocation list", |r| {
            rustls_pemfile::crls(r).collect()
        }),
    }
}

/// Every item of one kind in a PEM file; none is an error.
fn load_pem<T>(
    path: &Path,
    what: &'static str,
    items: impl FnOnce(&mut &[u8]) -> std::io::Result<Vec<T>>,
) -> Result<Vec<T>, TlsError> {
    let data = read(path)?;
    let all = items(&mut data.as_slice()).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })?;
    if all.is_empty() {
        return Err(TlsError::Empty {
            path: path.into(),
            what,
        });
    }
    Ok(all)
}

/// A certificate's issuer (DER) and serial number: what a CRL entry names.
pub type IssuerSerial = (Vec<u8>, Vec<u8>);

/// The issuer and serial of a DER certificate.
pub fn issuer_serial(der: &[u8]) -> Option<IssuerSerial> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    Some((c.issuer().as_raw().to_vec(), c.raw_serial().to_vec()))
}

/// Every certificate the CRLs of `files` revoke.
pub fn revoked(files: &TlsFiles) -> Result<std::collections::HashSet<IssuerSerial>, TlsError> {
    let mut out = std::collections::HashSet::new();
    for crl in crls(files)? {
        let (_, parsed) = x509_parser::parse_x509_crl(crl.as_ref())
            .map_err(|e| TlsError::Verifier(format!("CRL: {e}")))?;
        let issuer = parsed.issuer().as_raw().to_vec();
        for r in parsed.iter_revoked_certificates() {
            out.insert((issuer.clone(), r.raw_serial().to_vec()));
        }
    }
    Ok(out)
}

/// The verified leaf certificate of an established quinn connection's peer (DER).
pub fn peer_cert(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    conn.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?
        .first()
        .cloned()
}

/// Sets `gauge{file=<name>}` to the earliest expiry of each named certificate file (a file
/// that cannot be read is logged and left as it was).
pub fn publish_expiry(
    gauge: &prometheus_client::metrics::family::Family<
        Vec<(String, String)>,
        prometheus_client::metrics::gauge::Gauge,
    >,
    files: &[(&str, &Path)],
) {
    for (name, path) in files {
        match earliest_expiry(path) {
            Ok(t) => {
                gauge
                    .get_or_create(&vec![("file".to_owned(), (*name).to_owned())])
                    .set(t);
            }
            Err(error) => tracing::warn!(%error, "Cannot read the certificate's expiry."),
        }
    }
}

/// The reload metrics both binaries export (under their own prefix).
#[derive(Clone, Debug, Default)]
pub struct ReloadMetrics {
    pub last_successful: prometheus_client::metrics::gauge::Gauge,
    pub reloads: prometheus_client::metrics::family::Family<
        Vec<(String, String)>,
        prometheus_client::metrics::counter::Counter,
    >,
}

impl ReloadMetrics {
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "tls_last_reload_successful",
            "Whether the last reload of the TLS files (certificate, key, CA bundle, CRL) \
             succeeded; 0 while the last good ones are kept.",
            self.last_successful.clone(),
        );
        r.register(
            "tls_reloads",
            "Reloads of changed TLS files, by result (success, failure).",
            self.reloads.clone(),
        );
    }

    fn report(&self, ok: bool) {
        self.last_successful.set(i64::from(ok));
        let result = if ok { "success" } else { "failure" };
        self.reloads
            .get_or_create(&vec![("result".to_owned(), result.to_owned())])
            .inc();
    }
}

/// Reads `files` again every `reload_interval` and calls `apply` when their bytes changed
/// (after `apply` fails, also when they did not, so a transient error is retried); the
/// outcome is logged and counted in `metrics`. Ends with `shutdown`.
pub async fn watch_files(
    files: TlsFiles,
    shutdown: tokio_util::sync::CancellationToken,
    metrics: ReloadMetrics,
    mut apply: impl FnMut() -> Result<(), TlsError>,
) {
    metrics.last_successful.set(1);
    let every = files.reload_interval.0;
    if every.is_zero() {
        return;
    }
    let mut last = files.digest().ok();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let digest = files.digest();
        if let Ok(d) = &digest
            && last == Some(*d)
        {
            continue;
        }
        let outcome = digest.and_then(|d| {
            apply()?;
            last = Some(d);
            Ok(())
        });
        match &outcome {
            Ok(()) => tracing::info!("TLS files changed; new connections use them."),
            Err(error) => tracing::error!(%error,
                "Reloading the TLS files failed; keeping the last good ones."),
        }
        if outcome.is_err() {
            last = None;
        }
        metrics.report(outcome.is_ok());
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })
}

/// Loads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    load_pem(path, "certificate", |r| rustls_pemfile::certs(r).collect())
}

/// Loads the first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = read(path)?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|source| TlsError::Read {
            path: path.into(),
            source,
        })?
        .ok_or_else(|| TlsError::Empty {
            path: path.into(),
            what: "private key",
        })
}

fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for c in load_certs(path)? {
        store.add(c)?;
    }
    Ok(store)
}

/// rustls server configuration for the gateway: client certificates required.
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    // Revocation is checked for the agent's own certificate, against the CRLs of its issuer;
    // a certificate from an issuer without a CRL is not refused for that.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(&files.ca_file)?),
        provider(),
    )
    .with_crls(crls(files)?)
    .only_check_end_entity_revocation()
    .allow_unknown_revocation_status()
    .build()
    .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&files.cert_file)?, load_key(&files.key_file)?)?;
    cfg.alpn_protocols = vec![crate::wire::ALPN.to_vec()];
    cfg.max_early_data_size = 0;
    Ok(cfg)
}

/// rustls client configuration for the agent: presents its certificate, verifies the gateway.
pub fn client_config(files: &TlsFiles) -> Result<rustls::ClientConfig, TlsError> {
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots(&files.ca_file)?),
        provider(),
    )
    .with_crls(crls(files)?)
    .only_check_end_entity_revocation()
    .allow_unknown_revocation_status()
    .build()
    .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(load_certs(&files.cert_file)?, load_key(&files.key_file)?)?;
    cfg.alpn_protocols = vec![crate::wire::ALPN.to_vec()];
    cfg.enable_early_data = false;
    Ok(cfg)
}

/// Transport settings: a dead path is noticed within `idle_timeout`. Only the agent needs
/// keep-alives (`Duration::ZERO` disables them): its pings keep NAT mappings open and the
/// connection alive for both sides, and every keep-alive costs bytes on metered links.
pub fn transport(keep_alive: Duration, idle_timeout: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval((!keep_alive.is_zero()).then_some(keep_alive));
    // Durations up to 2^62 µs are representable; config validation keeps these small.
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle_timeout).ok());
    t
}

/// quinn server configuration for the gateway.
pub fn quic_server(
    files: &TlsFiles,
    transport: quinn::TransportConfig,
    max_streams: u32,
) -> Result<quinn::ServerConfig, TlsError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_config(files)?)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut transport = transport;
    transport.max_concurrent_bidi_streams(max_streams.into());
    transport.max_concurrent_uni_streams(0u32.into());
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// quinn client configuration for the agent.
pub fn quic_client(
    files: &TlsFiles,
    transport: quinn::TransportConfig,
) -> Result<quinn::ClientConfig, TlsError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_config(files)?)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// The earliest `notAfter` (Unix seconds) of the certificates in a PEM file: when the file
/// stops being usable. Exported by both binaries for expiry alerts.
pub fn earliest_expiry(path: &Path) -> Result<i64, TlsError> {
    load_certs(path)?
        .iter()
        .filter_map(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
        .map(|(_, c)| c.validity().not_after.timestamp())
        .min()
        .ok_or_else(|| TlsError::Empty {
            path: path.into(),
            what: "parseable certificate",
        })
}

/// Whether `s` is usable as an agent identity (it ends up in labels and logs).
pub fn valid_identity(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Who an agent is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// From the SPIFFE ID; none for a CN identity.
    pub tenant: Option<String>,
    pub site: String,
}

impl Identity {
    /// The key the gateway stores and deduplicates under: `tenant/site`, or `site`.
    pub fn key(&self) -> String {
        match &self.tenant {
            Some(t) => format!("{t}/{}", self.site),
            None => self.site.clone(),
        }
    }
}

/// How identities are read: the gateway's `identity:` section.
#[derive(Clone, Debug, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityRules {
    /// SPIFFE IDs must be in this trust domain (any when unset).
    pub trust_domain: Option<String>,
    /// Refuse certificates without a SPIFFE ID (no CN fallback).
    pub require_spiffe: bool,
    /// For certificates without a SPIFFE ID: rules over the subject and DNS names, tried in
    /// order; the first that matches gives the identity. Empty: the subject CN, else the
    /// first DNS name, is the site.
    pub names: Vec<NameRule>,
}

/// One `identity.names` rule: a fully anchored regex over one certificate field, whose named
/// groups `site` (required) and `tenant` (optional) give the identity.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NameRule {
    pub source: NameSource,
    pub regex: String,
}

/// Where a [`NameRule`] looks.
#[derive(Clone, Copy, Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NameSource {
    /// The subject's common name.
    Cn,
    /// Every DNS subject alternative name (exactly one may match).
    DnsSan,
    /// The subject's organization (O).
    Organization,
    /// The subject's organizational unit (OU).
    OrganizationalUnit,
}

impl NameRule {
    /// The compiled, anchored regex; an error names what is wrong.
    pub fn compile(&self) -> Result<regex::Regex, String> {
        let re = regex::Regex::new(&format!("^(?:{})$", self.regex)).map_err(|e| e.to_string())?;
        if !re.capture_names().flatten().any(|n| n == "site") {
            return Err("the regex needs a named group `site`".into());
        }
        Ok(re)
    }
}

impl IdentityRules {
    /// Checks the naming rules (for the configuration's load).
    pub fn check(&self) -> Result<(), String> {
        for (i, r) in self.names.iter().enumerate() {
            r.compile().map_err(|e| format!("names[{i}]: {e}"))?;
        }
        Ok(())
    }
}

/// Why a verified certificate carries no usable identity (the connection is closed with code
/// 4, counted by reason).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the certificate cannot be parsed")]
    Unparseable,
    #[error("more than one SPIFFE ID")]
    SeveralIds,
    #[error("SPIFFE ID {0:?} is in another trust domain")]
    TrustDomain(String),
    #[error("SPIFFE ID {0:?} is not spiffe://<trust domain>/tenant/<tenant>/site/<site>")]
    SpiffePath(String),
    #[error("no SPIFFE ID, and one is required")]
    SpiffeRequired,
    #[error("no usable name (CN or DNS name) in the certificate")]
    NoName,
}

impl IdentityError {
    /// Metric label value.
    pub fn reason(&self) -> &'static str {
        match self {
            IdentityError::Unparseable => "unparseable",
            IdentityError::SeveralIds => "several_ids",
            IdentityError::TrustDomain(_) => "trust_domain",
            IdentityError::SpiffePath(_) => "spiffe_path",
            IdentityError::SpiffeRequired => "spiffe_required",
            IdentityError::NoName => "no_name",
        }
    }
}

/// Reads the identity from a verified leaf certificate, following `rules`.
pub fn identify(der: &[u8], rules: &IdentityRules) -> Result<Identity, IdentityError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| IdentityError::Unparseable)?;
    let spiffe: Vec<&str> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    x509_parser::extensions::GeneralName::URI(u)
                        if u.to_ascii_lowercase().starts_with("spiffe://") =>
                    {
                        Some(*u)
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match spiffe.as_slice() {
        [] if rules.require_spiffe => Err(IdentityError::SpiffeRequired),
        [] if !rules.names.is_empty() => by_rules(&cert, &rules.names),
        [] => cert_name(&cert)
            .map(|site| Identity { tenant: None, site })
            .ok_or(IdentityError::NoName),
        [id] => parse_spiffe(id, rules),
        _ => Err(IdentityError::SeveralIds),
    }
}

/// The identity from the first naming rule that matches; several different identities from
/// that rule (two DNS names) are refused.
fn by_rules(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    rules: &[NameRule],
) -> Result<Identity, IdentityError> {
    let subject = cert.subject();
    let attr = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
        it.filter_map(|a| a.as_str().ok().map(str::to_owned))
            .collect::<Vec<String>>()
    };
    for rule in rules {
        let Ok(re) = rule.compile() else { continue };
        let values: Vec<String> = match rule.source {
            NameSource::Cn => attr(&mut subject.iter_common_name()),
            NameSource::Organization => attr(&mut subject.iter_organization()),
            NameSource::OrganizationalUnit => attr(&mut subject.iter_organizational_unit()),
            NameSource::DnsSan => cert
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|san| {
                    san.value
                        .general_names
                        .iter()
                        .filter_map(|g| match g {
                            x509_parser::extensions::GeneralName::DNSName(d) => {
                                Some((*d).to_owned())
                            }
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        let mut found: Vec<Identity> = Vec::new();
        for v in &values {
            let Some(c) = re.captures(v) else { continue };
            let site = c.name("site").map(|m| m.as_str().to_owned());
            let tenant = c.name("tenant").map(|m| m.as_str().to_owned());
            let (Some(site), true) = (
                site.filter(|s| valid_identity(s)),
                tenant.as_deref().is_none_or(valid_identity),
            ) else {
                continue;
            };
            let id = Identity { tenant, site };
            if !found.contains(&id) {
                found.push(id);
            }
        }
        match found.len() {
            0 => continue,
            1 => return Ok(found.remove(0)),
            _ => return Err(IdentityError::SeveralIds),
        }
    }
    Err(IdentityError::NoName)
}

/// `spiffe://<trust domain>/tenant/<tenant>/site/<site>`.
fn parse_spiffe(id: &str, rules: &IdentityRules) -> Result<Identity, IdentityError> {
    let rest = &id["spiffe://".len()..];
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    if let Some(td) = &rules.trust_domain
        && !domain.eq_ignore_ascii_case(td)
    {
        return Err(IdentityError::TrustDomain(id.into()));
    }
    match path.split('/').collect::<Vec<_>>().as_slice() {
        ["tenant", tenant, "site", site] if valid_identity(tenant) && valid_identity(site) => {
            Ok(Identity {
                tenant: Some((*tenant).to_owned()),
                site: (*site).to_owned(),
            })
        }
        _ => Err(IdentityError::SpiffePath(id.into())),
    }
}

/// Identity of the peer of an established quinn connection.
pub fn peer_identity_with(
    conn: &quinn::Connection,
    rules: &IdentityRules,
) -> Result<Identity, IdentityError> {
    identify(
        peer_cert(conn).ok_or(IdentityError::NoName)?.as_ref(),
        rules,
    )
}

/// Reads the identity from a verified leaf certificate: subject CN, else first DNS SAN.
pub fn identity_from_cert(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert_name(&cert)
}

/// A parsed certificate's name: subject CN, else first DNS SAN, if it is a valid identity.
fn cert_name(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let name = cn.or_else(|| {
        let san = cert.subject_alternative_name().ok()??;
        san.value.general_names.iter().find_map(|g| match g {
            x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
    })?;
    valid_identity(&name).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::Authority;

    #[test]
    fn identity_is_the_agent_cn_and_configs_build() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Authority::generate("test-ca", 30).expect("ca");
        ca.write(dir.path()).expect("write ca");
        let gw = ca
            .issue_gateway(&["localhost".into(), "127.0.0.1".into()], 30)
            .expect("gw");
        gw.write(dir.path(), "gateway").expect("write");
        let agent = ca.issue_agent("site-a", 30).expect("agent");
        agent.write(dir.path(), "site-a").expect("write");

        let der = &load_certs(&dir.path().join("site-a.crt")).expect("load")[0];
        assert_eq!(identity_from_cert(der).as_deref(), Some("site-a"));

        let files = |stem: &str| {
            TlsFiles::new(
                dir.path().join(format!("{stem}.crt")),
                dir.path().join(format!("{stem}.key")),
                dir.path().join("ca.crt"),
            )
        };
        server_config(&files("gateway")).expect("server config");
        client_config(&files("site-a")).expect("client config");
        assert!(ca.issue_agent("bad name!", 1).is_err());
        assert!(!valid_identity(""));
        let ca = crate::certs::Authority::generate("id CA", 3).expect("ca");
        let der = |p: &crate::certs::Pair| {
            rustls_pemfile::certs(&mut p.cert_pem.as_bytes())
                .next()
                .expect("one")
                .expect("pem")
        };
        let rules = IdentityRules {
            trust_domain: Some("uplink.test".into()),
            require_spiffe: false,
            names: vec![],
        };
        let good = ca
            .issue_agent_spiffe("uplink.test", "team-a", "plant-7", 3)
            .expect("cert");
        let id = identify(&der(&good), &rules).expect("identity");
        assert_eq!(
            (id.tenant.as_deref(), id.site.as_str(), id.key()),
            (Some("team-a"), "plant-7", "team-a/plant-7".to_owned())
        );
        let other = ca
            .issue_agent_spiffe("evil.test", "team-a", "plant-7", 3)
            .expect("cert");
        assert_eq!(
            identify(&der(&other), &rules).map_err(|e| e.reason()),
            Err("trust_domain")
        );
        let two = ca
            .issue_leaf(&crate::certs::LeafSpec {
                uris: vec![
                    "spiffe://uplink.test/tenant/a/site/b".into(),
                    "spiffe://uplink.test/tenant/c/site/d".into(),
                ],
                ..crate::certs::LeafSpec::agent("b", 3)
            })
            .expect("cert");
        assert_eq!(
            identify(&der(&two), &rules).map_err(|e| e.reason()),
            Err("several_ids")
        );
        let bad_path = ca
            .issue_leaf(&crate::certs::LeafSpec {
                uris: vec!["spiffe://uplink.test/tenant/a/../site/b".into()],
                ..crate::certs::LeafSpec::agent("b", 3)
            })
            .expect("cert");
        assert_eq!(
            identify(&der(&bad_path), &rules).map_err(|e| e.reason()),
            Err("spiffe_path")
        );
        let cn = ca.issue_agent("site-b", 3).expect("cert");
        assert_eq!(identify(&der(&cn), &rules).expect("cn").key(), "site-b");
        let strict = IdentityRules {
            require_spiffe: true,
            ..rules.clone()
        };
        assert_eq!(
            identify(&der(&cn), &strict).map_err(|e| e.reason()),
            Err("spiffe_required")
        );
        // Naming rules over DNS names and subject fields.
        let named = IdentityRules {
            names: vec![
                NameRule {
                    source: NameSource::DnsSan,
                    regex: r"(?P<site>[a-z0-9-]+)\.(?P<tenant>[a-z0-9-]+)\.edge\.example".into(),
                },
                NameRule {
                    source: NameSource::Cn,
                    regex: "lab-(?P<site>[0-9]+)".into(),
                },
            ],
            ..rules.clone()
        };
        assert!(named.check().is_ok());
        let dns = |names: &[&str], cn: &str| {
            ca.issue_leaf(&crate::certs::LeafSpec {
                dns: names.iter().map(|n| (*n).to_owned()).collect(),
                ..crate::certs::LeafSpec::agent(cn, 3)
            })
            .expect("cert")
        };
        let id = identify(&der(&dns(&["plant-7.team-a.edge.example"], "x")), &named)
            .expect("by DNS name");
        assert_eq!(id.key(), "team-a/plant-7");
        let id = identify(&der(&dns(&[], "lab-42")), &named).expect("by CN");
        assert_eq!(id.key(), "42");
        assert_eq!(
            identify(
                &der(&dns(&["a.t.edge.example", "b.t.edge.example"], "x")),
                &named
            )
            .map_err(|e| e.reason()),
            Err("several_ids")
        );
        assert_eq!(
            identify(&der(&dns(&["other.example"], "nothing")), &named).map_err(|e| e.reason()),
            Err("no_name")
        );
        let bad = NameRule {
            source: NameSource::Cn,
            regex: "(?P<tenant>.*)".into(),
        };
        assert!(bad.compile().is_err(), "no site group");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = crate::certs::Authority::generate("expiry CA", 3).expect("ca");
        ca.write(dir.path()).expect("write");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let t = earliest_expiry(&dir.path().join("ca.crt")).expect("expiry");
        assert!(
            (now + 2 * 86_400..=now + 4 * 86_400).contains(&t),
            "{t} vs {now}"
        );
    }
}
