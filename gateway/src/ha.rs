//! HA-pair dedupe in front of any destination, as Mimir's HA tracker does it, but before the
//! data reaches a backend: a site may run two agents (replicas) whose series carry the same
//! cluster label and different replica labels (`global.external_labels: {cluster: eu-1,
//! __replica__: a}`); the gateway forwards one elected replica per (tenant, cluster).
//!
//! # Election (per batch)
//! A batch's cluster and replica are the label values of its first series (Mimir's rule).
//! - Without both labels: accepted, nothing tracked.
//! - The elected replica: accepted. The time it was last seen is written to the shared state
//!   at most every `update_timeout`.
//! - Another replica: acknowledged and dropped (counted in
//!   `uplink_gateway_ha_samples_dropped_total`), unless the elected one has not been seen for
//!   `failover_timeout`: then this replica is elected (compare-and-swap, so two gateways never
//!   elect two replicas) and accepted. No election yet: the first replica to send is elected.
//!
//! The replica label is removed from every series of every agent (it is in the decoder's
//! stamp), so both replicas' series are the same series downstream.
//!
//! # Shared state
//! Without `etcd`, in memory: one gateway, and a restart holds a new election. With `etcd`, in
//! etcd v3 through its JSON API (`/v3/kv/range`, `/v3/kv/txn`), one key per (tenant, cluster)
//! under `prefix` holding `{"replica", "seen_ms"}`; each gateway caches what it read and
//! compares against the key's `mod_revision` when it writes. An etcd error answers the batch
//! `Retry`: the agent keeps it; nothing is dropped on doubt.
//!
//! # Invariants
//! - At most one replica per (tenant, cluster) is accepted at a time, across gateways that
//!   share an etcd (a write only lands on the revision it decided from).
//! - A tenant's clusters are keyed by the tenant from its certificate: one tenant cannot take
//!   over another's election.
//! - Data loss on failover is bounded by `failover_timeout`: the standby's batches of that
//!   window, dropped while the elected replica still counted as alive (as with Mimir).

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uplink_shared::duration::PromDuration;

use crate::etcd::{Etcd, EtcdConfig, Kv};

use crate::metrics::{Metrics, labels};
use crate::store::now_ms;

/// The `ha:` section.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// Label naming the HA group (Mimir's `ha_cluster_label`).
    #[serde(default = "default_cluster_label")]
    pub cluster_label: String,
    /// Label naming the replica (Mimir's `ha_replica_label`); removed from every series.
    #[serde(default = "default_replica_label")]
    pub replica_label: String,
    /// How long the elected replica may be silent before another one is elected.
    #[serde(default = "default_failover")]
    pub failover_timeout: PromDuration,
    /// How often the elected replica's last-seen time is written to etcd at most.
    #[serde(default = "default_update")]
    pub update_timeout: PromDuration,
    /// Shared election state for several gateways; unset: in memory.
    #[serde(default)]
    pub etcd: Option<EtcdConfig>,
}

fn default_cluster_label() -> String {
    "cluster".into()
}
fn default_replica_label() -> String {
    "__replica__".into()
}
fn default_failover() -> PromDuration {
    PromDuration(Duration::from_secs(30))
}
fn default_update() -> PromDuration {
    PromDuration(Duration::from_secs(15))
}
/// The default `ha.etcd.prefix`.
pub const DEFAULT_PREFIX: &str = "/uplink/ha/";

impl HaConfig {
    /// Cross-field rules: (field, message).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (field, v) in [
            ("cluster_label", &self.cluster_label),
            ("replica_label", &self.replica_label),
        ] {
            if !uplink_shared::model::valid_label_name(v) {
                return Err((field, format!("invalid label name {v:?}")));
            }
        }
        if self.failover_timeout.0 <= self.update_timeout.0 {
            return Err((
                "failover_timeout",
                format!(
                    "must be longer than update_timeout ({}): other gateways learn that the \
                     elected replica is alive only that often",
                    self.update_timeout
                ),
            ));
        }
        match &self.etcd {
            Some(e) => e.check(),
            None => Ok(()),
        }
    }
}

/// Why a batch's election could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("etcd: the election of cluster {0:?} keeps changing under us")]
    Contended(String),
}

/// What to do with a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Accept,
    /// Another replica is elected: acknowledge, do not store.
    Drop,
}

/// One election as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Record {
    replica: String,
    seen_ms: i64,
}

/// What this gateway knows of one election.
#[derive(Clone, Debug)]
struct Known {
    record: Record,
    /// The etcd key's `mod_revision` when read or written (local: a counter).
    revision: i64,
    /// When this gateway last wrote `seen_ms` (ms).
    written_ms: i64,
}

/// The elections of this gateway.
pub struct Tracker {
    cfg: HaConfig,
    known: tokio::sync::Mutex<HashMap<(String, String), Known>>,
    etcd: Option<Etcd>,
    metrics: Metrics,
}

impl Tracker {
    pub fn new(cfg: &HaConfig, metrics: Metrics) -> anyhow::Result<Tracker> {
        let etcd = match &cfg.etcd {
            Some(e) => Some(Etcd::new(e, DEFAULT_PREFIX)?),
            None => None,
        };
        Ok(Tracker {
            cfg: cfg.clone(),
            known: Default::default(),
            etcd,
            metrics,
        })
    }

    /// The (cluster, replica) label names the decoder reports.
    pub fn labels(&self) -> (&str, &str) {
        (&self.cfg.cluster_label, &self.cfg.replica_label)
    }

    /// Decides a batch of `tenant` (empty without one) from `replica` of `cluster`.
    pub async fn admit(
        &self,
        tenant: &str,
        cluster: &str,
        replica: &str,
    ) -> Result<Admit, HaError> {
        let key = (tenant.to_owned(), cluster.to_owned());
        // In memory, the lock makes each decision atomic. With etcd, it is released around
        // every etcd request (the compare-and-swap on the key's revision decides), so one
        // election's round trip never holds up the others.
        let mut known = self.known.lock().await;
        let now = now_ms();
        let failover = self.cfg.failover_timeout.0.as_millis() as i64;
        let update = self.cfg.update_timeout.0.as_millis() as i64;
        let mut current = match known.get(&key) {
            Some(k) => Some(k.clone()),
            None if self.etcd.is_none() => None,
            None => {
                drop(known);
                let read = self.read(&key).await?;
                known = self.known.lock().await;
                read
            }
        };
        for _ in 0..4 {
            let (revision, elected) = match &current {
                None => (0, None),
                Some(k) => (k.revision, Some(k.record.replica.as_str())),
            };
            match &current {
                Some(k)
                    if k.record.replica == replica
                        && (self.etcd.is_none() || now - k.written_ms < update) =>
                {
                    let k = known.entry(key).or_insert_with(|| k.clone());
                    k.record.seen_ms = now;
                    return Ok(Admit::Accept);
                }
                Some(k) if now - k.record.seen_ms < failover => {
                    known.insert(key, k.clone());
                    return Ok(Admit::Drop);
                }
                _ => {}
            }
            // Elect this replica, or write that the elected one is alive.
            let record = Record {
                replica: replica.to_owned(),
                seen_ms: now,
            };
            let swapped = if self.etcd.is_some() {
                drop(known);
                let r = self.swap(&key, revision, &record).await;
                known = self.known.lock().await;
                r?
            } else {
                self.swap(&key, revision, &record).await?
            };
            match swapped {
                Ok(new_revision) => {
                    if elected != Some(replica) {
                        tracing::info!(
                            tenant,
                            cluster,
                            replica,
                            previous = elected.unwrap_or(""),
                            "HA replica elected."
                        );
                        self.metrics
                            .ha_elections
                            .get_or_create(&labels(&[("tenant", tenant), ("cluster", cluster)]))
                            .inc();
                    }
                    // Unless another task of this gateway cached a later write meanwhile.
                    if known.get(&key).is_none_or(|k| k.revision < new_revision) {
                        known.insert(
                            key,
                            Known {
                                record,
                                revision: new_revision,
                                written_ms: now,
                            },
                        );
                    }
                    return Ok(Admit::Accept);
                }
                // Someone else wrote first: decide again from what is there now.
                Err(now_there) => current = now_there,
            }
        }
        Err(HaError::Contended(cluster.to_owned()))
    }

    async fn read(&self, key: &(String, String)) -> Result<Option<Known>, HaError> {
        match &self.etcd {
            None => Ok(None),
            Some(e) => match e.get(&self.etcd_key(key)).await {
                Ok(kv) => kv.map(known_of).transpose(),
                Err(error) => Err(HaError::Etcd(error.0)),
            },
        }
    }

    /// Writes `record` if the election is still at `revision` (0: absent). `Ok(Err(current))`
    /// when it is not.
    async fn swap(
        &self,
        key: &(String, String),
        revision: i64,
        record: &Record,
    ) -> Result<Result<i64, Option<Known>>, HaError> {
        match &self.etcd {
            None => Ok(Ok(revision + 1)),
            Some(e) => {
                let value = serde_json::to_vec(record).map_err(|e| HaError::Etcd(e.to_string()))?;
                match e.put_if(&self.etcd_key(key), revision, &value).await {
                    Ok(Ok(rev)) => Ok(Ok(rev)),
                    Ok(Err(now)) => Ok(Err(now.map(known_of).transpose()?)),
                    Err(error) => Err(HaError::Etcd(error.0)),
                }
            }
        }
    }

    fn etcd_key(&self, (tenant, cluster): &(String, String)) -> String {
        let prefix = self.etcd.as_ref().map_or("", |e| e.prefix.as_str());
        // Tenant ids hold no '/' (validated); a cluster value may: escape it.
        format!("{prefix}{tenant}/{}", crate::etcd::segment(cluster))
    }
}

/// An election as etcd holds it.
fn known_of(kv: Kv) -> Result<Known, HaError> {
    let record: Record = serde_json::from_slice(&kv.value)
        .map_err(|e| HaError::Etcd(format!("election record: {e}")))?;
    Ok(Known {
        record,
        revision: kv.revision,
        written_ms: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(failover_ms: u64) -> Tracker {
        let cfg = HaConfig {
            cluster_label: "cluster".into(),
            replica_label: "__replica__".into(),
            failover_timeout: PromDuration(Duration::from_millis(failover_ms)),
            update_timeout: PromDuration(Duration::from_millis(failover_ms / 2)),
            etcd: None,
        };
        Tracker::new(&cfg, Metrics::default()).expect("tracker")
    }

    #[tokio::test]
    async fn first_replica_is_elected_and_the_other_fails_over_after_the_timeout() {
        let t = tracker(300);
        assert_eq!(
            t.admit("t", "eu", "a").await.expect("decided"),
            Admit::Accept
        );
        assert_eq!(t.admit("t", "eu", "b").await.expect("decided"), Admit::Drop);
        assert_eq!(
            t.admit("t", "eu", "a").await.expect("decided"),
            Admit::Accept
        );
        // Another tenant's cluster of the same name is its own election.
        assert_eq!(
            t.admit("u", "eu", "b").await.expect("decided"),
            Admit::Accept
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        // a was seen 200 ms ago: still elected.
        assert_eq!(t.admit("t", "eu", "b").await.expect("decided"), Admit::Drop);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            t.admit("t", "eu", "b").await.expect("decided"),
            Admit::Accept
        );
        assert_eq!(t.admit("t", "eu", "a").await.expect("decided"), Admit::Drop);
    }

    #[test]
    fn checks_and_keys() {
        let mut cfg = HaConfig {
            cluster_label: "cluster".into(),
            replica_label: "__replica__".into(),
            failover_timeout: PromDuration(Duration::from_secs(30)),
            update_timeout: PromDuration(Duration::from_secs(15)),
            etcd: Some(EtcdConfig {
                endpoints: vec!["http://127.0.0.1:2379".into()],
                prefix: None,
                timeout: PromDuration(Duration::from_secs(5)),
                tls_config: Default::default(),
            }),
        };
        assert!(cfg.check().is_ok());
        let t = Tracker::new(&cfg, Metrics::default()).expect("tracker");
        assert_eq!(
            t.etcd_key(&("acme".into(), "eu/1%".into())),
            "/uplink/ha/acme/eu%2F1%25"
        );
        cfg.update_timeout = PromDuration(Duration::from_secs(30));
        assert_eq!(cfg.check().map_err(|e| e.0), Err("failover_timeout"));
        cfg.update_timeout = PromDuration(Duration::from_secs(1));
        cfg.replica_label = "bad-name".into();
        assert_eq!(cfg.check().map_err(|e| e.0), Err("replica_label"));
    }

    #[test]
    fn election_records_decode() {
        let k = known_of(Kv {
            value: br#"{"replica":"a","seen_ms":5}"#.to_vec(),
            revision: 42,
        })
        .expect("record");
        assert_eq!(
            (k.record.replica.as_str(), k.record.seen_ms, k.revision),
            ("a", 5, 42)
        );
        assert!(
            known_of(Kv {
                value: b"{".to_vec(),
                revision: 1
            })
            .is_err()
        );
    }
}
