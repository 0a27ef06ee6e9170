//! The freshness and gap ledger: the gateway's own series about every site, written to the
//! destinations beside the sites' data, so the global view can tell "site offline, data on its
//! way" (`uplink_site_up == 0` with a backlog) from "data lost" (drops counted).
//!
//! Series, each with `site="<identity>"` plus the configured `ledger.labels`:
//!
//! | series | meaning |
//! | --- | --- |
//! | `uplink_site_up` | 1 while the site has a connection to this gateway, else 0 |
//! | `uplink_site_last_seen_timestamp_seconds` | when the site was last connected |
//! | `uplink_site_lag_seconds` | now minus the newest sample forwarded for the site |
//! | `uplink_site_backlog_records`, `uplink_site_backlog_bytes` | the site's unacknowledged queue, as it last reported |
//! | `uplink_site_oldest_backlog_timestamp_seconds` | oldest unacknowledged sample at the site (absent when empty) |
//! | `uplink_site_forwarded_samples_total` | samples of the site this gateway accepted (stored durably for its destinations) |
//! | `uplink_site_dropped_samples_total` | samples dropped for the site: agent-reported, plus refused downstream or dropped by the gateway's retention budget (summed over destinations) |
//!
//! `uplink_site_lag_seconds` measures the newest sample accepted, not delivered: a
//! destination's own backlog at the gateway shows in `uplink_gateway_queue_*`.
//!
//! The ledger is written straight to each destination, not through the store's queues: it is
//! a snapshot of now, the next interval supersedes it, and a destination that is down simply
//! misses those intervals (each destination has its own writer, so one that is down never
//! delays another). Queuing it would put snapshots behind a backlog and replay stale values.
//!
//! Sites are known from their first connection since the gateway started, and forgotten after
//! `forget_after` offline.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uplink_shared::model::{self, Label, Sample, TimeSeries};
use uplink_shared::wire::Status;

use crate::forward::{Destination, Outcome};

#[derive(Debug, Default, Clone)]
struct Site {
    connections: u32,
    last_seen: Option<SystemTime>,
    /// When the site last connected (while connected) or disconnected (while offline).
    since: Option<SystemTime>,
    /// When a batch of the site was last stored.
    last_batch: Option<SystemTime>,
    newest_ts: Option<i64>,
    forwarded: u64,
    dropped_downstream: u64,
    status: Status,
    /// Samples per second stored, decaying average over about a minute, as of `rate_at`.
    rate: f64,
    rate_at: Option<SystemTime>,
}

/// Time constant of the per-site rate.
const RATE_TAU: f64 = 60.0;

impl Site {
    /// The rate decayed to `now` (no samples since `rate_at`).
    fn rate_at(&self, now: SystemTime) -> f64 {
        let dt = self
            .rate_at
            .and_then(|t| now.duration_since(t).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        self.rate * (-dt / RATE_TAU).exp()
    }
}

/// One site as the status page shows it (`GET /api/v1/fleet`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SiteView {
    /// The tenant of a SPIFFE identity, else empty.
    pub tenant: String,
    pub site: String,
    pub connected: bool,
    /// When it connected (connected) or disconnected (offline), Unix seconds.
    pub since: Option<f64>,
    /// When a batch of it was last stored, Unix seconds.
    pub last_batch: Option<f64>,
    /// Now minus its newest sample stored, seconds.
    pub lag_seconds: Option<f64>,
    /// Its unacknowledged queue, as it last reported.
    pub backlog_records: u64,
    pub backlog_bytes: u64,
    /// Age of its oldest unacknowledged sample, seconds.
    pub oldest_backlog_age_seconds: Option<f64>,
    /// Samples per second stored, averaged over about a minute.
    pub samples_per_second: f64,
    pub forwarded_samples: u64,
    /// Agent-reported drops plus samples refused downstream or dropped by retention.
    pub dropped_samples: u64,
}

/// Per-site state, shared by every connection handler.
#[derive(Debug, Default)]
pub struct Ledger {
    sites: Mutex<HashMap<String, Site>>,
}

impl Ledger {
    fn with(&self, site: &str, f: impl FnOnce(&mut Site)) {
        // A poisoned lock only means a panic elsewhere mid-update; the counters stay usable.
        let mut g = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        f(g.entry(site.to_owned()).or_default());
    }

    pub fn connected(&self, site: &str) {
        self.with(site, |s| {
            let now = SystemTime::now();
            if s.connections == 0 {
                s.since = Some(now);
            }
            s.connections += 1;
            s.last_seen = Some(now);
        });
    }

    pub fn disconnected(&self, site: &str) {
        self.with(site, |s| {
            let now = SystemTime::now();
            s.connections = s.connections.saturating_sub(1);
            if s.connections == 0 {
                s.since = Some(now);
            }
            s.last_seen = Some(now);
        });
    }

    /// `samples` of the site were stored durably; `newest_ts` is the newest (`i64::MIN`: none).
    pub fn accepted(&self, site: &str, samples: u64, newest_ts: i64) {
        self.with(site, |s| {
            let now = SystemTime::now();
            s.rate = s.rate_at(now) + samples as f64 / RATE_TAU;
            s.rate_at = Some(now);
            s.last_batch = Some(now);
            s.forwarded += samples;
            if newest_ts != i64::MIN {
                s.newest_ts = Some(s.newest_ts.map_or(newest_ts, |n| n.max(newest_ts)));
            }
        });
    }

    /// `samples` of the site were dropped for one destination (refused, or retention).
    pub fn dropped(&self, site: &str, samples: u64) {
        self.with(site, |s| s.dropped_downstream += samples);
    }

    pub fn status(&self, site: &str, status: Status) {
        self.with(site, |s| s.status = status);
    }

    /// Every known site, by tenant and site name.
    pub fn snapshot(&self) -> Vec<SiteView> {
        let g = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        let secs = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        };
        let now_s = secs(now);
        let mut out: Vec<SiteView> = g
            .iter()
            .map(|(key, s)| {
                let (tenant, site) = key.split_once('/').unwrap_or(("", key));
                SiteView {
                    tenant: tenant.to_owned(),
                    site: site.to_owned(),
                    connected: s.connections > 0,
                    since: s.since.map(secs),
                    last_batch: s.last_batch.map(secs),
                    lag_seconds: s.newest_ts.map(|n| (now_s - n as f64 / 1000.0).max(0.0)),
                    backlog_records: s.status.backlog_records,
                    backlog_bytes: s.status.backlog_bytes,
                    oldest_backlog_age_seconds: (s.status.oldest_timestamp_ms > 0)
                        .then(|| (now_s - s.status.oldest_timestamp_ms as f64 / 1000.0).max(0.0)),
                    samples_per_second: s.rate_at(now),
                    forwarded_samples: s.forwarded,
                    dropped_samples: s.dropped_downstream + s.status.dropped_samples,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.tenant, &a.site).cmp(&(&b.tenant, &b.site)));
        out
    }

    /// The ledger's series at `now_ms`, sorted labels, one sample each.
    pub fn series(
        &self,
        now_ms: i64,
        extra: &BTreeMap<String, String>,
        forget_after: Duration,
    ) -> Vec<TimeSeries> {
        let mut g = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        g.retain(|_, s| {
            s.connections > 0
                || s.last_seen
                    .and_then(|t| now.duration_since(t).ok())
                    .is_none_or(|d| d < forget_after)
        });
        let mut out = Vec::new();
        for (site, s) in g.iter() {
            // A SPIFFE identity's key is `tenant/site`: two labels.
            let (tenant, site_name) = match site.split_once('/') {
                Some((t, s)) => (Some(t), s),
                None => (None, site.as_str()),
            };
            let mut push = |name: &str, value: f64| {
                let mut labels = vec![
                    Label::new(model::METRIC_NAME, name),
                    Label::new("site", site_name),
                ];
                if let Some(t) = tenant {
                    labels.push(Label::new("tenant", t));
                }
                labels.extend(extra.iter().map(|(k, v)| Label::new(k.clone(), v.clone())));
                model::normalize(&mut labels);
                out.push(TimeSeries {
                    labels,
                    samples: vec![Sample {
                        value,
                        timestamp: now_ms,
                    }],
                    ..Default::default()
                });
            };
            push("uplink_site_up", if s.connections > 0 { 1.0 } else { 0.0 });
            if let Some(t) = s.last_seen {
                let secs = if s.connections > 0 {
                    now_ms as f64 / 1000.0
                } else {
                    t.duration_since(UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64())
                };
                push("uplink_site_last_seen_timestamp_seconds", secs);
            }
            if let Some(n) = s.newest_ts {
                push(
                    "uplink_site_lag_seconds",
                    ((now_ms - n).max(0)) as f64 / 1000.0,
                );
            }
            push(
                "uplink_site_backlog_records",
                s.status.backlog_records as f64,
            );
            push("uplink_site_backlog_bytes", s.status.backlog_bytes as f64);
            if s.status.oldest_timestamp_ms > 0 {
                push(
                    "uplink_site_oldest_backlog_timestamp_seconds",
                    s.status.oldest_timestamp_ms as f64 / 1000.0,
                );
            }
            push("uplink_site_forwarded_samples_total", s.forwarded as f64);
            push(
                "uplink_site_dropped_samples_total",
                (s.dropped_downstream + s.status.dropped_samples) as f64,
            );
        }
        out
    }
}

/// Writes the ledger to every destination every `interval` until `shutdown`; each destination
/// has its own loop, so one that is slow or down never delays the others.
pub async fn run_writer(
    ledger: Arc<Ledger>,
    destinations: Vec<Destination>,
    interval: Duration,
    labels: BTreeMap<String, String>,
    forget_after: Duration,
    shutdown: CancellationToken,
) {
    let mut writers = tokio::task::JoinSet::new();
    for d in destinations {
        writers.spawn(write_loop(
            ledger.clone(),
            d,
            interval,
            labels.clone(),
            forget_after,
            shutdown.clone(),
        ));
    }
    while writers.join_next().await.is_some() {}
}

async fn write_loop(
    ledger: Arc<Ledger>,
    destination: Destination,
    interval: Duration,
    labels: BTreeMap<String, String>,
    forget_after: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let series = ledger.series(crate::store::now_ms(), &labels, forget_after);
        if series.is_empty() {
            continue;
        }
        // Per tenant: only to the destinations it may reach, with its headers.
        let mut groups: Vec<(Option<String>, Vec<TimeSeries>)> = Vec::new();
        for ts in series {
            let tenant = model::get(&ts.labels, "tenant").map(str::to_owned);
            match groups.iter_mut().find(|(t, _)| *t == tenant) {
                Some((_, v)) => v.push(ts),
                None => groups.push((tenant, vec![ts])),
            }
        }
        for (tenant, group) in groups {
            let (routed, headers) = destination.routes.for_tenant(tenant.as_deref());
            if !routed {
                continue;
            }
            let samples = group.len() as u64;
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                o = destination.send_series(&group, &[], headers.as_ref()) => o,
            };
            match outcome {
                Outcome::Accepted | Outcome::Done(_) => {
                    destination.forwarded(samples);
                    debug!(destination = %destination.name, samples, "Ledger written.")
                }
                other => warn!(
                    destination = %destination.name, outcome = ?other,
                    "Writing the freshness ledger failed; the next interval writes fresh values."
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spiffe_identity_is_reported_as_tenant_and_site() {
        let l = Ledger::default();
        l.connected("team-a/plant-7");
        let series = l.series(0, &BTreeMap::new(), Duration::from_secs(60));
        let up = series
            .iter()
            .find(|t| model::get(&t.labels, "__name__") == Some("uplink_site_up"))
            .expect("up");
        assert_eq!(model::get(&up.labels, "tenant"), Some("team-a"));
        assert_eq!(model::get(&up.labels, "site"), Some("plant-7"));
    }

    #[test]
    fn offline_with_backlog_is_distinguishable_from_loss() {
        let l = Ledger::default();
        l.connected("a");
        l.accepted("a", 10, 1_000);
        l.status(
            "a",
            Status {
                backlog_records: 3,
                backlog_bytes: 300,
                oldest_timestamp_ms: 900,
                dropped_samples: 2,
            },
        );
        l.disconnected("a");
        l.accepted("b", 5, 2_000);
        l.dropped("b", 5);
        let extra = BTreeMap::from([("region".to_string(), "eu".to_string())]);
        let s = l.series(3_000, &extra, Duration::from_secs(3600));
        let get = |site: &str, name: &str| {
            s.iter()
                .find(|t| {
                    model::get(&t.labels, "site") == Some(site)
                        && model::get(&t.labels, "__name__") == Some(name)
                })
                .map(|t| t.samples[0].value)
        };
        assert_eq!(get("a", "uplink_site_up"), Some(0.0));
        assert_eq!(get("a", "uplink_site_backlog_records"), Some(3.0));
        assert_eq!(get("a", "uplink_site_lag_seconds"), Some(2.0));
        assert_eq!(get("a", "uplink_site_dropped_samples_total"), Some(2.0));
        assert_eq!(get("b", "uplink_site_dropped_samples_total"), Some(5.0));
        assert_eq!(
            get("a", "uplink_site_oldest_backlog_timestamp_seconds"),
            Some(0.9)
        );
        assert!(
            s.iter()
                .all(|t| model::get(&t.labels, "region") == Some("eu"))
        );
        // Forgotten after the offline horizon.
        assert!(
            l.series(3_000, &extra, Duration::ZERO)
                .iter()
                .all(|t| model::get(&t.labels, "site") != Some("a"))
        );
    }
}
