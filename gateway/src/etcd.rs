//! A minimal etcd v3 client over its JSON gateway (`/v3/kv/range`, `/v3/kv/txn`), for the state
//! several gateways share: HA elections (`ha.rs`) and the agents' dedupe cursors
//! (`dedupe.rs`). It reads one key and writes one key with a compare-and-swap on the key's
//! `mod_revision`; nothing else. Endpoints are tried in turn, starting with the last one that
//! answered (so one that silently drops traffic costs one `timeout`, not one per request);
//! each request is bounded by `timeout`.
//!
//! # Invariants
//! - A write lands only on the revision the caller decided from (0: the key is absent), so two
//!   gateways never both win the same swap.
//! - Every failure is an [`EtcdError`]; callers answer `Retry` on it and never guess.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use uplink_shared::duration::PromDuration;
use uplink_shared::http_client::{HttpClient, HttpClientConfig, TlsConfig};

/// An `etcd:` section (`ha.etcd`, `dedupe.etcd`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs (`http://etcd-0:2379`), tried in order.
    pub endpoints: Vec<String>,
    /// Key prefix; each user has its own default.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Per request.
    #[serde(default = "default_timeout")]
    pub timeout: PromDuration,
    #[serde(default)]
    pub tls_config: TlsConfig,
}

fn default_timeout() -> PromDuration {
    PromDuration(Duration::from_secs(5))
}

impl EtcdConfig {
    /// Cross-field rules: (field, message).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.endpoints.is_empty() {
            return Err(("etcd", "endpoints must not be empty".into()));
        }
        Ok(())
    }
}

/// Why an etcd request failed.
#[derive(Debug, thiserror::Error)]
#[error("etcd: {0}")]
pub struct EtcdError(pub String);

/// A key's value and `mod_revision`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub value: Vec<u8>,
    pub revision: i64,
}

/// The client.
pub struct Etcd {
    client: HttpClient,
    endpoints: Vec<String>,
    /// The configured prefix, or the user's default.
    pub prefix: String,
    timeout: Duration,
    /// The endpoint that answered last.
    preferred: std::sync::atomic::AtomicUsize,
}

impl Etcd {
    pub fn new(cfg: &EtcdConfig, default_prefix: &str) -> anyhow::Result<Etcd> {
        let client = HttpClient::new(
            &HttpClientConfig {
                tls_config: cfg.tls_config.clone(),
                compression: false,
                ..HttpClientConfig::default()
            },
            concat!("uplink-gateway/", env!("CARGO_PKG_VERSION")),
        )?;
        Ok(Etcd {
            client,
            endpoints: cfg
                .endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_owned())
                .collect(),
            prefix: cfg
                .prefix
                .clone()
                .unwrap_or_else(|| default_prefix.to_owned()),
            timeout: cfg.timeout.0,
            preferred: Default::default(),
        })
    }

    /// POSTs `body` to `path` on the first endpoint that answers.
    async fn call(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, EtcdError> {
        use std::sync::atomic::Ordering;
        let mut last = String::new();
        let start = self.preferred.load(Ordering::Relaxed);
        let n = self.endpoints.len();
        for i in (0..n).map(|k| (start + k) % n) {
            let ep = &self.endpoints[i];
            let url = match reqwest::Url::parse(&format!("{ep}{path}")) {
                Ok(u) => u,
                Err(e) => {
                    last = format!("{ep}: {e}");
                    continue;
                }
            };
            let sent = async {
                let resp = self
                    .client
                    .post(url)
                    .await
                    .map_err(|e| e.to_string())?
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = resp.status();
                let text = resp.text().await.map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!("{status}: {text}"));
                }
                serde_json::from_str(&text).map_err(|e| format!("answer: {e}"))
            };
            match tokio::time::timeout(self.timeout, sent).await {
                Ok(Ok(v)) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(e)) => last = format!("{ep}: {e}"),
                Err(_) => last = format!("{ep}: no answer within {:?}", self.timeout),
            }
        }
        Err(EtcdError(last))
    }

    /// The key's value, if it exists.
    pub async fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        let v = self
            .call(
                "/v3/kv/range",
                serde_json::json!({ "key": B64.encode(key) }),
            )
            .await?;
        Ok(first_kv(&v))
    }

    /// Writes `value` if the key is still at `revision` (0: absent): `Ok(Ok(new revision))`,
    /// or `Ok(Err(what is there now))`.
    pub async fn put_if(
        &self,
        key: &str,
        revision: i64,
        value: &[u8],
    ) -> Result<Result<i64, Option<Kv>>, EtcdError> {
        let k = B64.encode(key);
        let compare = if revision == 0 {
            serde_json::json!({"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
        } else {
            serde_json::json!({"key": k, "target": "MOD", "result": "EQUAL", "mod_revision": revision.to_string()})
        };
        let body = serde_json::json!({
            "compare": [compare],
            "success": [{"request_put": {"key": k, "value": B64.encode(value)}}],
            "failure": [{"request_range": {"key": k}}],
        });
        let v = self.call("/v3/kv/txn", body).await?;
        // Protobuf JSON leaves out false and zero fields.
        if v.get("succeeded").and_then(|s| s.as_bool()) == Some(true) {
            let rev = int(v.pointer("/header/revision"))
                .ok_or_else(|| EtcdError("txn answer without a revision".into()))?;
            return Ok(Ok(rev));
        }
        let range = v
            .pointer("/responses/0/response_range")
            .cloned()
            .unwrap_or_default();
        Ok(Err(first_kv(&range)))
    }
}

/// Escapes a key segment that may hold `/` (a cluster label value, a SPIFFE identity).
pub fn segment(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F")
}

/// The first key-value of a range answer.
fn first_kv(range: &serde_json::Value) -> Option<Kv> {
    let kv = range.pointer("/kvs/0")?;
    let value = B64.decode(kv.get("value")?.as_str()?).ok()?;
    Some(Kv {
        value,
        revision: int(kv.get("mod_revision"))?,
    })
}

/// An int64 as protobuf JSON writes it (a string), or a number.
fn int(v: Option<&serde_json::Value>) -> Option<i64> {
    match v? {
        serde_json::Value::String(s) => s.parse().ok(),
        n => n.as_i64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decode_and_segments_escape() {
        let range = serde_json::json!({"kvs": [{
            "key": B64.encode("k"),
            "value": B64.encode(b"12"),
            "mod_revision": "42"
        }]});
        assert_eq!(
            first_kv(&range),
            Some(Kv {
                value: b"12".to_vec(),
                revision: 42
            })
        );
        assert!(first_kv(&serde_json::json!({"header": {}})).is_none());
        assert_eq!(segment("spiffe://a/b%"), "spiffe:%2F%2Fa%2Fb%25");
    }
}
