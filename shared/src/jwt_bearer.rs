//! OAuth 2.0's JWT-bearer grant (RFC 7523 §2.1), as Prometheus ≥ 3.8 requests tokens with it
//! (`prometheus/common` `config/oauth_assertion.go`): an assertion signed with the client's
//! RSA key, posted to the token URL instead of a client secret.
//!
//! The assertion, as Prometheus builds it:
//!
//! - header `{"alg": <RS256|RS384|RS512, default RS256>, "kid": <client_certificate_key_id,
//!   when set>, "typ": "JWT"}`;
//! - claims `iss` (`iss`, else the client ID), `sub` (the client ID), `aud` (`audience`, else
//!   the token URL), `jti` (a random UUID), `iat` (now) and `exp` (now + 10 minutes) in whole
//!   seconds, `scope` (the scopes joined by spaces, when there are some), then the configured
//!   `claims`, which may replace any of these;
//! - JSON objects with their keys sorted (as Go writes maps), base64url without padding,
//!   signed RSASSA-PKCS1-v1_5 with the key read from PEM (PKCS#1 or PKCS#8).
//!
//! The token request's form: `grant_type` (the JWT-bearer URN), `assertion`, `scope` (when
//! there are scopes), then `endpoint_params`, which may replace `grant_type` but no other
//! parameter (a clash is an error, as in Prometheus). No client authentication.
//!
//! Pure: the caller supplies the time and posts the form.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, RsaKeyPair};

/// The grant type URN.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// How long an assertion is valid.
const LIFETIME: Duration = Duration::from_secs(600);

/// Why no assertion could be made.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("no RSA private key in the PEM data")]
    NoKey,
    #[error("invalid RSA private key: {0}")]
    Key(String),
    #[error("signing failed")]
    Sign,
    #[error("oauth2: cannot overwrite parameter {0:?}")]
    Parameter(String),
}

/// What an assertion is made of.
pub struct Assertion<'a> {
    /// The PEM text of the RSA private key.
    pub key_pem: &'a [u8],
    pub key_id: Option<&'a str>,
    /// `RS256`, `RS384` or `RS512` (anything else: `RS256`).
    pub algorithm: Option<&'a str>,
    pub client_id: &'a str,
    pub iss: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub token_url: &'a str,
    pub scopes: &'a [String],
    pub claims: &'a BTreeMap<String, serde_json::Value>,
}

fn rsa_key(pem: &[u8]) -> Result<RsaKeyPair, JwtError> {
    let mut reader = pem;
    loop {
        match rustls_pemfile::read_one(&mut reader) {
            Ok(Some(rustls_pemfile::Item::Pkcs1Key(k))) => {
                return RsaKeyPair::from_der(k.secret_pkcs1_der())
                    .map_err(|e| JwtError::Key(e.to_string()));
            }
            Ok(Some(rustls_pemfile::Item::Pkcs8Key(k))) => {
                return RsaKeyPair::from_pkcs8(k.secret_pkcs8_der())
                    .map_err(|e| JwtError::Key(e.to_string()));
            }
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return Err(JwtError::NoKey),
        }
    }
}

/// A version 4 UUID from the system's random source.
fn uuid_v4(rng: &SystemRandom) -> Result<String, JwtError> {
    let mut b = [0u8; 16];
    rng.fill(&mut b).map_err(|_| JwtError::Sign)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

impl Assertion<'_> {
    /// The signed assertion at `now`.
    pub fn sign(&self, now: SystemTime) -> Result<String, JwtError> {
        let key = rsa_key(self.key_pem)?;
        let rng = SystemRandom::new();
        let (alg, padding): (&str, &'static dyn signature::RsaEncoding) = match self.algorithm {
            Some("RS384") => ("RS384", &signature::RSA_PKCS1_SHA384),
            Some("RS512") => ("RS512", &signature::RSA_PKCS1_SHA512),
            _ => ("RS256", &signature::RSA_PKCS1_SHA256),
        };
        let mut header: BTreeMap<&str, &str> = BTreeMap::from([("alg", alg), ("typ", "JWT")]);
        if let Some(kid) = self.key_id.filter(|k| !k.is_empty()) {
            header.insert("kid", kid);
        }
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        let mut claims: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        let iss = self.iss.filter(|i| !i.is_empty()).unwrap_or(self.client_id);
        let aud = self
            .audience
            .filter(|a| !a.is_empty())
            .unwrap_or(self.token_url);
        claims.insert("iss".into(), iss.into());
        claims.insert("sub".into(), self.client_id.into());
        claims.insert("jti".into(), uuid_v4(&rng)?.into());
        claims.insert("aud".into(), aud.into());
        claims.insert("iat".into(), secs(now).into());
        claims.insert("exp".into(), secs(now + LIFETIME).into());
        if !self.scopes.is_empty() {
            claims.insert("scope".into(), self.scopes.join(" ").into());
        }
        claims.extend(self.claims.iter().map(|(k, v)| (k.clone(), v.clone())));
        // BTreeMaps: keys sorted, as Go writes maps.
        let json = |r: serde_json::Result<Vec<u8>>| r.map_err(|_| JwtError::Sign);
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(json(serde_json::to_vec(&header))?),
            URL_SAFE_NO_PAD.encode(json(serde_json::to_vec(&claims))?)
        );
        let mut sig = vec![0u8; key.public().modulus_len()];
        key.sign(padding, &rng, signing_input.as_bytes(), &mut sig)
            .map_err(|_| JwtError::Sign)?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}

/// The token request's form parameters for `assertion`.
pub fn form(
    assertion: String,
    scopes: &[String],
    endpoint_params: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, JwtError> {
    let mut form: Vec<(String, String)> = vec![
        ("grant_type".into(), GRANT_TYPE.into()),
        ("assertion".into(), assertion),
    ];
    if !scopes.is_empty() {
        form.push(("scope".into(), scopes.join(" ")));
    }
    for (k, v) in endpoint_params {
        match form.iter_mut().find(|(name, _)| name == k) {
            Some((name, value)) if name == "grant_type" => *value = v.clone(),
            Some(_) => return Err(JwtError::Parameter(k.clone())),
            None => form.push((k.clone(), v.clone())),
        }
    }
    Ok(form)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2048-bit RSA key made for this test (PKCS#8), and its PKCS#1 form.
    const KEY_PKCS8: &str = include_str!("../tests/fixtures/jwt-rsa-pkcs8.pem");
    const KEY_PKCS1: &str = include_str!("../tests/fixtures/jwt-rsa-pkcs1.pem");

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("json")
    }

    #[test]
    fn assertion_as_prometheus_builds_it() {
        let claims: BTreeMap<String, serde_json::Value> = [
            ("tenant".to_owned(), "edge".into()),
            ("sub".to_owned(), "svc".into()),
        ]
        .into();
        let scopes = ["metrics.read".to_owned(), "metrics.write".to_owned()];
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for (pem, alg, want) in [
            (KEY_PKCS8, None, "RS256"),
            (KEY_PKCS1, Some("RS512"), "RS512"),
        ] {
            let a = Assertion {
                key_pem: pem.as_bytes(),
                key_id: Some("key-1"),
                algorithm: alg,
                client_id: "uplink-agent",
                iss: None,
                audience: None,
                token_url: "https://auth.example.com/token",
                scopes: &scopes,
                claims: &claims,
            };
            let jwt = a.sign(now).expect("signed");
            let parts: Vec<&str> = jwt.split('.').collect();
            assert_eq!(parts.len(), 3);
            // Sorted keys, as Go writes them.
            let header =
                String::from_utf8(URL_SAFE_NO_PAD.decode(parts[0]).expect("b64")).expect("utf8");
            assert_eq!(
                header,
                format!(r#"{{"alg":"{want}","kid":"key-1","typ":"JWT"}}"#)
            );
            let c = decode(parts[1]);
            assert_eq!(c["iss"], "uplink-agent");
            assert_eq!(c["sub"], "svc", "configured claims win");
            assert_eq!(c["aud"], "https://auth.example.com/token");
            assert_eq!(c["iat"], 1_800_000_000u64);
            assert_eq!(c["exp"], 1_800_000_600u64);
            assert_eq!(c["scope"], "metrics.read metrics.write");
            assert_eq!(c["tenant"], "edge");
            assert_eq!(c["jti"].as_str().map(str::len), Some(36));
            // The signature verifies with the key's public half.
            let key = rsa_key(pem.as_bytes()).expect("key");
            let verify = match want {
                "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                _ => &signature::RSA_PKCS1_2048_8192_SHA256,
            };
            signature::UnparsedPublicKey::new(verify, key.public().as_ref())
                .verify(
                    format!("{}.{}", parts[0], parts[1]).as_bytes(),
                    &URL_SAFE_NO_PAD.decode(parts[2]).expect("sig"),
                )
                .expect("signature verifies");
        }
    }

    #[test]
    fn form_parameters_and_clashes() {
        let params: BTreeMap<String, String> = [("audience".to_owned(), "x".to_owned())].into();
        let f = form("a.b.c".into(), &[], &params).expect("form");
        assert_eq!(
            f,
            [
                ("grant_type".to_owned(), GRANT_TYPE.to_owned()),
                ("assertion".to_owned(), "a.b.c".to_owned()),
                ("audience".to_owned(), "x".to_owned()),
            ]
        );
        let over: BTreeMap<String, String> = [("grant_type".to_owned(), "other".to_owned())].into();
        assert_eq!(form("j".into(), &[], &over).expect("form")[0].1, "other");
        let clash: BTreeMap<String, String> = [("assertion".to_owned(), "x".to_owned())].into();
        assert!(matches!(
            form("j".into(), &[], &clash),
            Err(JwtError::Parameter(_))
        ));
    }

    #[test]
    fn bad_keys_are_errors() {
        let none = BTreeMap::new();
        let a = |pem: &'static str| Assertion {
            key_pem: pem.as_bytes(),
            key_id: None,
            algorithm: None,
            client_id: "c",
            iss: None,
            audience: None,
            token_url: "t",
            scopes: &[],
            claims: &none,
        };
        assert!(matches!(
            a("not pem").sign(SystemTime::now()),
            Err(JwtError::NoKey)
        ));
        assert!(
            a("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .sign(SystemTime::now())
                .is_err()
        );
    }
}
