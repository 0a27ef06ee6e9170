//! A small development PKI: one CA, a gateway certificate and one certificate per agent.
//!
//! The agent's identity is the certificate's subject common name (see [`crate::tls`]); the
//! gateway certificate carries the DNS names and IP addresses agents dial. Keys are ECDSA
//! P-256. Validity starts a day before issuance and lasts `valid_days` days. Certificates from any other PKI
//! (openssl, cert-manager, Vault) work the same way as long as they follow those two rules.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Why a certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or could not sign.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A name was not usable as an identity.
    #[error("invalid name {0:?}: use 1-128 characters from [A-Za-z0-9._-]")]
    InvalidName(String),
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What [`Authority::issue_leaf`] puts in a certificate.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub common_name: String,
    /// URI SANs (SPIFFE IDs).
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// The clientAuth extended key usage (serverAuth otherwise).
    pub client_auth: bool,
    /// A CA certificate used as a leaf.
    pub is_ca: bool,
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
}

impl LeafSpec {
    /// A well-formed agent certificate: CN `site`, clientAuth, valid from a day ago.
    pub fn agent(site: &str, valid_days: i64) -> LeafSpec {
        let now = time::OffsetDateTime::now_utc();
        LeafSpec {
            common_name: site.into(),
            uris: vec![],
            dns: vec![],
            client_auth: true,
            is_ca: false,
            not_before: now - time::Duration::days(1),
            not_after: now + time::Duration::days(valid_days.max(1)),
        }
    }
}

/// A certificate authority that can issue gateway and agent certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    pub key_pem: String,
}

fn params(cn: &str, valid_days: i64) -> Result<CertificateParams, CertError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationName, "Uplink");
    // Valid from a day ago (clock skew between hosts) for `valid_days` days.
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(valid_days.max(1));
    Ok(p)
}

impl Authority {
    /// Mints a new self-signed CA.
    pub fn generate(name: &str, valid_days: i64) -> Result<Self, CertError> {
        let mut p = params(name, valid_days)?;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(p, key)?;
        let cert_pem = ca.pem();
        Self::from_pem(&cert_pem, &key_pem).map(|mut a| {
            a.cert_pem = cert_pem;
            a
        })
    }

    /// Loads an existing CA from PEM text.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Authority {
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// Loads a CA from `ca.crt` and `ca.key` in `dir`.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let cert = read(&dir.join("ca.crt"))?;
        let key = read(&dir.join("ca.key"))?;
        Self::from_pem(&cert, &key)
    }

    /// Issues a server certificate for the gateway, valid for `names` (DNS names or IPs).
    pub fn issue_gateway(&self, names: &[String], valid_days: i64) -> Result<Pair, CertError> {
        let cn = names
            .first()
            .map(String::as_str)
            .unwrap_or("uplink-gateway");
        let mut p = params(cn, valid_days)?;
        for n in names {
            p.subject_alt_names.push(match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into()?),
            });
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(p)
    }

    /// Issues a client certificate whose identity (subject CN) is `site`.
    pub fn issue_agent(&self, site: &str, valid_days: i64) -> Result<Pair, CertError> {
        if !crate::tls::valid_identity(site) {
            return Err(CertError::InvalidName(site.into()));
        }
        let mut p = params(site, valid_days)?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(p)
    }

    /// Issues an agent certificate with a SPIFFE identity,
    /// `spiffe://<trust_domain>/tenant/<tenant>/site/<site>` as its one URI SAN (CN `site`).
    pub fn issue_agent_spiffe(
        &self,
        trust_domain: &str,
        tenant: &str,
        site: &str,
        valid_days: i64,
    ) -> Result<Pair, CertError> {
        self.issue_leaf(&LeafSpec {
            uris: vec![format!(
                "spiffe://{trust_domain}/tenant/{tenant}/site/{site}"
            )],
            ..LeafSpec::agent(site, valid_days)
        })
    }

    /// Issues a leaf certificate exactly as `spec` says, good or bad (tests use it for the
    /// certificate matrix).
    pub fn issue_leaf(&self, spec: &LeafSpec) -> Result<Pair, CertError> {
        let mut p = params(&spec.common_name, 1)?;
        p.not_before = spec.not_before;
        p.not_after = spec.not_after;
        for u in &spec.uris {
            p.subject_alt_names
                .push(SanType::URI(u.clone().try_into()?));
        }
        for d in &spec.dns {
            p.subject_alt_names
                .push(SanType::DnsName(d.clone().try_into()?));
        }
        if spec.client_auth {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        } else {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.is_ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages.push(KeyUsagePurpose::KeyCertSign);
        }
        self.sign(p)
    }

    fn sign(&self, p: CertificateParams) -> Result<Pair, CertError> {
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A CRL (PEM) revoking the certificates given (PEM), valid for a week.
    pub fn revoke(&self, certs_pem: &[&str]) -> Result<String, CertError> {
        let mut serials = Vec::new();
        for pem in certs_pem {
            for der in rustls_pemfile::certs(&mut pem.as_bytes()).flatten() {
                let (_, serial) = crate::tls::issuer_serial(der.as_ref())
                    .ok_or(CertError::Generate(rcgen::Error::CouldNotParseCertificate))?;
                serials.push(serial);
            }
        }
        self.revoke_serials(&serials)
    }

    /// A CRL (PEM) revoking these serial numbers, valid for a week (reissue it before then).
    pub fn revoke_serials(&self, serials: &[Vec<u8>]) -> Result<String, CertError> {
        let now = time::OffsetDateTime::now_utc();
        let crl = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(1),
            next_update: now + time::Duration::days(7),
            crl_number: rcgen::SerialNumber::from(now.unix_timestamp() as u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(s),
                    revocation_time: now,
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)?;
        Ok(crl.pem()?)
    }

    /// Writes `ca.crt`, `ca.key` and an empty CRL, `ca.crl`, into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), CertError> {
        write(&dir.join("ca.crt"), &self.cert_pem, false)?;
        write(&dir.join("ca.key"), &self.key_pem, true)?;
        write(&dir.join("ca.crl"), &self.revoke_serials(&[])?, false)
    }

    /// Adds the certificate in `cert` to `dir/ca.crl` (created if missing), keeping the
    /// serial numbers it already lists.
    pub fn revoke_into(&self, dir: &Path, cert: &Path) -> Result<(), CertError> {
        let crl_path = dir.join("ca.crl");
        let mut serials: Vec<Vec<u8>> = if crl_path.exists() {
            let files = crate::tls::TlsFiles {
                crl_file: Some(crl_path.clone()),
                ..crate::tls::TlsFiles::new(cert.into(), cert.into(), cert.into())
            };
            crate::tls::revoked(&files)
                .map_err(|e| CertError::Io {
                    path: crl_path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?
                .into_iter()
                .map(|(_, s)| s)
                .collect()
        } else {
            Vec::new()
        };
        let pem = read(cert)?;
        for der in rustls_pemfile::certs(&mut pem.as_bytes()).flatten() {
            if let Some((_, serial)) = crate::tls::issuer_serial(der.as_ref()) {
                serials.push(serial);
            }
        }
        serials.sort();
        serials.dedup();
        write(&crl_path, &self.revoke_serials(&serials)?, false)
    }
}

impl Pair {
    /// Writes `<stem>.crt` and `<stem>.key` into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), CertError> {
        write(&dir.join(format!("{stem}.crt")), &self.cert_pem, false)?;
        write(&dir.join(format!("{stem}.key")), &self.key_pem, true)
    }
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.into(),
        source,
    })
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.into(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, text).map_err(io)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    Ok(())
}
