//! rustls client configuration for scrapes and HTTP discovery, from Prometheus's `tls_config`.
//!
//! Without `ca`/`ca_file` the system's roots (`/etc/ssl/certs`) are trusted, as Prometheus
//! does. `server_name` changes the name the certificate is verified against (the SNI sent is
//! still the URL's host). `insecure_skip_verify` accepts any certificate but still checks the
//! handshake signatures. Only TLS 1.2 and 1.3 exist here: `min_version: TLS10` or `TLS11`
//! behave as TLS12.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::http_client::{HttpClientError, TlsConfig, pem};

fn invalid(message: impl Into<String>) -> HttpClientError {
    HttpClientError::Invalid {
        what: "tls_config",
        message: message.into(),
    }
}

static TLS12_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn versions(
    t: &TlsConfig,
) -> Result<&'static [&'static rustls::SupportedProtocolVersion], HttpClientError> {
    let rank = |v: &Option<String>, default: u8| -> Result<u8, HttpClientError> {
        match v.as_deref() {
            None | Some("") => Ok(default),
            Some("TLS10" | "TLS11" | "TLS12") => Ok(12),
            Some("TLS13") => Ok(13),
            Some(other) => Err(invalid(format!("unknown TLS version: {other}"))),
        }
    };
    match (rank(&t.min_version, 12)?, rank(&t.max_version, 13)?) {
        (12, 13) => Ok(rustls::ALL_VERSIONS),
        (12, 12) => Ok(TLS12_ONLY),
        (13, 13) => Ok(TLS13_ONLY),
        _ => Err(invalid("min_version is greater than max_version")),
    }
}

/// Builds the rustls configuration for `t`.
pub fn client_config(t: &TlsConfig) -> Result<rustls::ClientConfig, HttpClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    match pem(t.ca.as_deref(), t.ca_file.as_deref())? {
        Some(bytes) => {
            for cert in rustls_pemfile::certs(&mut bytes.as_slice()) {
                let cert = cert.map_err(|e| invalid(format!("CA certificate: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| invalid(format!("CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(invalid("no certificate found in the CA bundle"));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A bad system certificate is skipped, as Go's x509 pool does.
                let _ = roots.add(cert);
            }
        }
    }
    let inner: Arc<dyn ServerCertVerifier> = if t.insecure_skip_verify {
        Arc::new(AcceptAny(provider.clone(), true))
    } else if roots.is_empty() {
        // No system roots on this host: every certificate is unknown.
        Arc::new(AcceptAny(provider.clone(), false))
    } else {
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| invalid(e.to_string()))?
    };
    let verifier: Arc<dyn ServerCertVerifier> = match &t.server_name {
        Some(name) if !t.insecure_skip_verify => {
            let name = ServerName::try_from(name.clone())
                .map_err(|e| invalid(format!("server_name: {e}")))?;
            Arc::new(Renamed { inner, name })
        }
        _ => inner,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(t)?)
        .map_err(|e| invalid(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let cert = pem(t.cert.as_deref(), t.cert_file.as_deref())?;
    let key = pem(t.key.as_ref().map(|k| k.0.as_str()), t.key_file.as_deref())?;
    let mut cfg = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert.as_slice())
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(format!("client certificate: {e}")))?;
            let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key.as_slice())
                .map_err(|e| invalid(format!("client key: {e}")))?
                .ok_or_else(|| invalid("no private key found"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| invalid(format!("client certificate: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Verifies against a configured name instead of the URL's host.
#[derive(Debug)]
struct Renamed {
    inner: Arc<dyn ServerCertVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for Renamed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecure_skip_verify` (`true`): any certificate, but handshake signatures are still
/// checked. With `false`: no certificate (there are no trusted roots).
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>, bool);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.1 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
