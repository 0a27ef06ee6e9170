//! Dedupe cursors shared by several gateways (`dedupe.etcd`), so that a batch one gateway
//! stored and acknowledged (the ack lost on the way) and that the agent resends to another
//! gateway is acknowledged there without being stored a second time.
//!
//! Each gateway keeps its own durable cursor per agent queue in its store (`accept.rs`); this
//! module keeps a copy in etcd, one key per (identity, queue id):
//! `<prefix><identity, '/' escaped>/<queue id>`, holding the cursor in decimal (one past the
//! last record stored by any gateway).
//!
//! # Protocol (what `accept.rs` does)
//! - When a connection stores its first batch, the lane's cursor becomes the larger of its
//!   local cursor and the shared one, read afresh: whatever another gateway stored since this
//!   one last served the queue is skipped.
//! - Before any batch is acknowledged (stored now, or found stored before), the shared cursor
//!   is raised to the lane's cursor. One write covers every batch released together. A
//!   failed write answers those batches `Retry`: they are stored locally, the resend is
//!   deduplicated by the local cursor and acknowledged once the write succeeds.
//!
//! # Invariants
//! - The shared cursor only grows (a compare-and-swap on the key's revision; a larger value
//!   already there is kept).
//! - No batch is acknowledged while the shared cursor is below its end, so a resend that
//!   follows a lost ack is skipped by every gateway that reads the cursor afterwards.
//! - Nothing is skipped that no gateway stored: the shared cursor is raised only after the
//!   local commit.
//!
//! # Windows left (a duplicate at most, never a loss)
//! - A gateway that crashes after storing a batch and before raising the shared cursor: the
//!   agent's resend to another gateway is stored there too (one etcd round trip wide).
//! - A gateway still storing a batch of a connection that the agent already gave up on, after
//!   the agent's new connection read the cursor elsewhere (only when storing lags the agent's
//!   reconnect, seconds).

use serde::Deserialize;

use crate::etcd::{Etcd, EtcdConfig, EtcdError, Kv, segment};

/// The default `dedupe.etcd.prefix`.
pub const DEFAULT_PREFIX: &str = "/uplink/dedupe/";

/// The `dedupe:` section.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// Where the shared cursors live (may be the etcd of `ha.etcd`).
    pub etcd: EtcdConfig,
}

/// Why a shared cursor could not be read or raised.
#[derive(Debug, thiserror::Error)]
pub enum DedupeError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("the shared cursor of {0:?} keeps changing under us")]
    Contended(String),
}

/// A shared cursor as this gateway last saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shared {
    pub cursor: u64,
    /// The key's `mod_revision` (0: absent).
    pub revision: i64,
}

/// The shared cursors.
pub struct SharedCursors {
    etcd: Etcd,
}

/// How often a swap may lose to another gateway's write before the batch is answered `Retry`.
const SWAP_ATTEMPTS: usize = 8;

impl SharedCursors {
    pub fn new(cfg: &DedupeConfig) -> anyhow::Result<SharedCursors> {
        Ok(SharedCursors {
            etcd: Etcd::new(&cfg.etcd, DEFAULT_PREFIX)?,
        })
    }

    fn key(&self, identity: &str, queue_id: u64) -> String {
        format!("{}{}/{queue_id}", self.etcd.prefix, segment(identity))
    }

    /// Reads the shared cursor of an agent queue (0 when no gateway stored any of it).
    pub async fn read(&self, identity: &str, queue_id: u64) -> Result<Shared, DedupeError> {
        let kv = self.etcd.get(&self.key(identity, queue_id)).await?;
        Ok(shared_of(kv, identity))
    }

    /// Raises the shared cursor to at least `to`, starting from `known`; returns what is
    /// there afterwards.
    pub async fn raise(
        &self,
        identity: &str,
        queue_id: u64,
        mut known: Shared,
        to: u64,
    ) -> Result<Shared, DedupeError> {
        let key = self.key(identity, queue_id);
        for _ in 0..SWAP_ATTEMPTS {
            if known.cursor >= to {
                return Ok(known);
            }
            match self
                .etcd
                .put_if(&key, known.revision, to.to_string().as_bytes())
                .await?
            {
                Ok(revision) => {
                    return Ok(Shared {
                        cursor: to,
                        revision,
                    });
                }
                Err(now) => known = shared_of(now, identity),
            }
        }
        Err(DedupeError::Contended(key))
    }
}

/// A key's value as a cursor. A value that is not one (written by hand) counts as 0 and is
/// overwritten by the next raise: at worst a resend is stored twice, nothing is skipped.
fn shared_of(kv: Option<Kv>, identity: &str) -> Shared {
    let Some(kv) = kv else {
        return Shared::default();
    };
    let cursor = std::str::from_utf8(&kv.value)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            tracing::warn!(
                identity,
                "A shared dedupe cursor is not a number; ignoring it."
            );
            0
        });
    Shared {
        cursor,
        revision: kv.revision,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Cursors in an etcd nobody listens on.
    fn unreachable() -> SharedCursors {
        let cfg = DedupeConfig {
            etcd: EtcdConfig {
                endpoints: vec!["http://127.0.0.1:1".into()],
                prefix: None,
                timeout: uplink_shared::duration::PromDuration(Duration::from_secs(1)),
                tls_config: Default::default(),
            },
        };
        SharedCursors::new(&cfg).expect("client")
    }

    #[test]
    fn keys_and_values() {
        let s = unreachable();
        assert_eq!(
            s.key("spiffe://acme/site-1", 7),
            "/uplink/dedupe/spiffe:%2F%2Facme%2Fsite-1/7"
        );
        let kv = |v: &[u8]| {
            Some(Kv {
                value: v.to_vec(),
                revision: 3,
            })
        };
        assert_eq!(
            shared_of(kv(b"42"), "x"),
            Shared {
                cursor: 42,
                revision: 3
            }
        );
        assert_eq!(shared_of(kv(b"x"), "x").cursor, 0);
        assert_eq!(shared_of(None, "x"), Shared::default());
    }

    #[tokio::test]
    async fn an_unreachable_etcd_is_an_error_not_a_guess() {
        let s = unreachable();
        assert!(s.read("site", 1).await.is_err());
        assert!(s.raise("site", 1, Shared::default(), 5).await.is_err());
        // Nothing to raise: no request.
        let known = Shared {
            cursor: 9,
            revision: 2,
        };
        assert_eq!(s.raise("site", 1, known, 5).await.expect("no-op"), known);
    }
}
