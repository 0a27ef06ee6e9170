//! From the store to the destinations: one forwarder task per destination, and the retention
//! task that enforces each destination's budget and publishes the queue gauges.
//!
//! A forwarder reads its destination's entries in log order from its cursor, merges consecutive
//! entries into one remote-write request (up to `queue_config.max_samples_per_send` samples; an
//! entry, one agent batch, is never split), delivers it through the destination's tower stack
//! (`forward.rs`), and only then moves its cursor past the request's entries. One request is in
//! flight per destination, so a destination receives the log in order, and the log holds each
//! agent queue's records in sequence order: per-series order survives.
//!
//! Outcomes of a request:
//! - 2xx: the cursor moves; the samples are counted delivered.
//! - permanent 4xx for merged entries: they are sent again one by one, so a poison entry (a
//!   remote write 1.0 receiver refuses a whole request for one bad sample) costs only its own
//!   samples, never its neighbours' from other sites.
//! - permanent 4xx for one entry: the cursor moves; the samples are counted dropped
//!   (`reason="refused"`) and charged to their site in the ledger.
//! - still failing after `limits.max_retry_duration`: logged; the same request is tried again
//!   after the destination's `max_backoff`, forever. A destination that is down grows only its
//!   own backlog, bounded by the retention budget; agents' acks never wait for it.
//!
//! # Crash window
//! Before sending, the forwarder records the request's end in its cursor key
//! ([`Store::set_inflight`]); after the destination's answer it moves the cursor
//! ([`Store::advance`]). A crash between the receiver's commit and that write (the time is
//! exported as `uplink_gateway_cursor_commit_duration_seconds`) resends the request after the
//! restart: the first request covers exactly the entries of the one in flight, merged the same
//! way, so the resend carries nothing the receiver has not seen. Prometheus drops an identical
//! resend of the newest sample silently, or refuses older ones as out of order (400, counted as
//! refused although the data is there); a capture receiver counts them as duplicates.
//!
//! # Shutdown
//! `drain`: a forwarder stops once its backlog is empty. `stop`: it stops at once, abandoning a
//! request in flight (resent after the restart, as after a crash).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::forward::{Delivery, Destination};
use crate::ledger::Ledger;
use crate::metrics::{Metrics, labels};
use crate::store::{self, Skipped, Store, Stored};

/// Compressed bytes read for one request at most (entries are never split).
const MAX_READ_BYTES: u64 = 16 << 20;
/// Uncompressed bytes of a merged request at most.
const MAX_MERGED_BYTES: usize = 64 << 20;
/// How often retention runs and the queue gauges are refreshed.
const RETENTION_INTERVAL: Duration = Duration::from_secs(1);

/// One destination's forwarder.
pub struct Forwarder {
    /// The destination's position in the configuration (and in the store).
    pub index: usize,
    pub destination: Destination,
    pub store: Store,
    pub ledger: Arc<Ledger>,
    pub metrics: Metrics,
    pub max_samples: u64,
    /// Pause after a request exhausted its retry budget.
    pub pause: Duration,
}

/// A request built from consecutive entries.
struct Request {
    body: Bytes,
    samples: u64,
    /// One past the last entry it carries.
    end: u64,
    /// How many entries it carries.
    entries: usize,
    sites: Vec<(Arc<str>, u64)>,
}

/// How a request ended.
enum Sent {
    /// Accepted, or refused and dropped: the cursor moved past it.
    Done,
    /// Refused, and it merged several entries: send them one by one.
    Split,
    /// Shutdown came first.
    Stopped,
}

impl Forwarder {
    /// Delivers the destination's backlog and everything appended later, until `drain` (and an
    /// empty backlog) or `stop`.
    pub async fn run(self, drain: CancellationToken, stop: CancellationToken) {
        let mut head = self.store.subscribe();
        let (cursor, inflight) = self.store.cursor(self.index);
        // After a crash: first resend exactly the request that was in flight.
        let mut replay = (inflight > cursor).then_some(inflight);
        if replay.is_some() {
            info!(destination = %self.destination.name, entries = inflight - cursor,
                "Resending the request that was in flight when the gateway stopped.");
        }
        loop {
            let visible = *head.borrow_and_update();
            let (cursor, _) = self.store.cursor(self.index);
            if cursor >= visible {
                if drain.is_cancelled() {
                    return;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = drain.cancelled() => {}
                    changed = head.changed() => if changed.is_err() { return },
                }
                continue;
            }
            let until = replay.take().unwrap_or(u64::MAX);
            let entries = match self
                .store
                .read(cursor, until, self.max_samples, MAX_READ_BYTES)
                .await
            {
                Ok(e) if !e.is_empty() => e,
                Ok(_) => continue,
                Err(error) => {
                    self.store_error("read", &error);
                    if pause(&stop, self.pause).await {
                        return;
                    }
                    continue;
                }
            };
            let request = merge(&entries);
            let taken = request.entries;
            match self.deliver(request, &stop).await {
                Sent::Done => {}
                Sent::Stopped => return,
                Sent::Split => {
                    for e in &entries[..taken] {
                        if let Sent::Stopped = self.deliver(single(e), &stop).await {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Sends one request until it is accepted or refused.
    async fn deliver(&self, r: Request, stop: &CancellationToken) -> Sent {
        if let Err(error) = self.store.set_inflight(self.index, r.end).await {
            // Only the exactness of a resend after a crash depends on it.
            self.store_error("inflight", &error);
        }
        let name = &self.destination.name;
        let mut failing_since: Option<Instant> = None;
        loop {
            let outcome = tokio::select! {
                _ = stop.cancelled() => return Sent::Stopped,
                d = self.destination.deliver(r.body.clone(), r.samples) => d,
            };
            match outcome {
                Delivery::Accepted => {}
                Delivery::Dropped(error) if r.entries > 1 => {
                    warn!(destination = %name, %error, entries = r.entries,
                        "Destination refused a merged request; sending its entries one by one.");
                    return Sent::Split;
                }
                Delivery::Dropped(error) => {
                    self.destination.dropped(r.samples, &error);
                    for (site, samples) in &r.sites {
                        self.ledger.dropped(site, *samples);
                    }
                }
                Delivery::Failed(error) => {
                    if failing_since.is_none() {
                        warn!(destination = %name, %error, samples = r.samples,
                            "Destination still failing; the data stays queued and is retried.");
                    }
                    failing_since.get_or_insert_with(Instant::now);
                    if pause(stop, self.pause).await {
                        return Sent::Stopped;
                    }
                    continue;
                }
            }
            if let Some(since) = failing_since {
                info!(destination = %name, after = ?since.elapsed(), "Destination recovered.");
            }
            self.commit(r.end).await;
            return Sent::Done;
        }
    }

    /// Moves the cursor past a request the destination answered.
    async fn commit(&self, end: u64) {
        let answered = Instant::now();
        match self.store.advance(self.index, end).await {
            Ok(_) => self
                .metrics
                .cursor_commit_duration
                .get_or_create(&labels(&[("destination", &self.destination.name)]))
                .observe(answered.elapsed().as_secs_f64()),
            // The request will be sent again: a duplicate, never a loss.
            Err(error) => self.store_error("advance", &error),
        }
    }

    fn store_error(&self, op: &str, error: &store::StoreError) {
        error!(destination = %self.destination.name, %error, op, "Store operation failed.");
        self.metrics
            .store_errors
            .get_or_create(&labels(&[("op", op)]))
            .inc();
    }
}

/// Waits `d` unless `stop` comes first (then true).
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// Merges consecutive entries into one request. Each entry is a snappy-compressed
/// `WriteRequest`; concatenating the uncompressed protobuf of several is a valid
/// `WriteRequest` holding all their series in order. One entry goes as stored. An entry that
/// does not decompress (or would make the request too large) ends the request before it; if it
/// is the first, it goes alone and the receiver refuses it (counted).
fn merge(entries: &[Stored]) -> Request {
    let Some(first) = entries.first() else {
        return Request {
            body: Bytes::new(),
            samples: 0,
            end: 0,
            entries: 0,
            sites: vec![],
        };
    };
    if entries.len() == 1 {
        return single(first);
    }
    let mut raw = Vec::new();
    let mut taken = 0;
    for e in entries {
        let fits = snap::raw::decompress_len(&e.body)
            .is_ok_and(|n| raw.len() + n <= MAX_MERGED_BYTES || taken == 0);
        let decoded = fits
            .then(|| snap::raw::Decoder::new().decompress_vec(&e.body).ok())
            .flatten();
        match decoded {
            Some(d) => raw.extend_from_slice(&d),
            None => break,
        }
        taken += 1;
    }
    if taken <= 1 {
        return single(first);
    }
    let Ok(body) = snap::raw::Encoder::new().compress_vec(&raw) else {
        return single(first);
    };
    let used = &entries[..taken];
    let mut sites: Vec<(Arc<str>, u64)> = Vec::new();
    for e in used {
        match sites.iter_mut().find(|(s, _)| *s == e.meta.site) {
            Some((_, n)) => *n += e.meta.samples,
            None => sites.push((e.meta.site.clone(), e.meta.samples)),
        }
    }
    Request {
        body: Bytes::from(body),
        samples: used.iter().map(|e| e.meta.samples).sum(),
        end: used[taken - 1].seq + 1,
        entries: taken,
        sites,
    }
}

/// One entry as a request of its own, as stored.
fn single(e: &Stored) -> Request {
    Request {
        body: e.body.clone(),
        samples: e.meta.samples,
        end: e.seq + 1,
        entries: 1,
        sites: vec![(e.meta.site.clone(), e.meta.samples)],
    }
}

/// Per destination: its name and retention budget.
#[derive(Clone, Debug)]
pub struct Budget {
    pub name: Arc<str>,
    pub max_bytes: u64,
    pub max_age: Option<Duration>,
}

/// Every second until `stop`: applies each destination's retention budget (drops counted by
/// reason and charged to their sites) and refreshes the queue gauges.
pub async fn run_retention(
    store: Store,
    budgets: Vec<Budget>,
    metrics: Metrics,
    ledger: Arc<Ledger>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(RETENTION_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (i, b) in budgets.iter().enumerate() {
            if b.max_bytes > 0 || b.max_age.is_some() {
                enforce(&store, i, b, &metrics, &ledger).await;
            }
            publish_usage(&store, i, &b.name, &metrics);
        }
    }
}

async fn enforce(store: &Store, i: usize, b: &Budget, metrics: &Metrics, ledger: &Ledger) {
    let min_ms = b
        .max_age
        .map(|a| store::now_ms() - a.as_millis().min(i64::MAX as u128) as i64);
    let dropped = match store.enforce_retention(i, b.max_bytes, min_ms).await {
        Ok(d) => d,
        Err(error) => {
            error!(destination = %b.name, %error, "Enforcing the retention budget failed.");
            metrics
                .store_errors
                .get_or_create(&labels(&[("op", "retention")]))
                .inc();
            return;
        }
    };
    for (reason, s) in [("bytes", &dropped.bytes), ("age", &dropped.age)] {
        count_drop(b, reason, s, metrics, ledger);
    }
}

fn count_drop(b: &Budget, reason: &str, s: &Skipped, metrics: &Metrics, ledger: &Ledger) {
    if s.entries == 0 {
        return;
    }
    metrics
        .samples_dropped
        .get_or_create(&labels(&[("destination", &b.name), ("reason", reason)]))
        .inc_by(s.samples);
    for (site, samples) in &s.by_site {
        ledger.dropped(site, *samples);
    }
    warn!(destination = %b.name, reason, entries = s.entries, samples = s.samples,
        "Retention budget exceeded; dropped the oldest entries for this destination.");
}

fn publish_usage(store: &Store, i: usize, name: &str, metrics: &Metrics) {
    let u = store.usage(i);
    let d = labels(&[("destination", name)]);
    metrics
        .queue_entries
        .get_or_create(&d)
        .set(u.entries as i64);
    metrics.queue_bytes.get_or_create(&d).set(u.bytes as i64);
    let age = u
        .oldest_ms
        .map_or(0.0, |t| (store::now_ms() - t).max(0) as f64 / 1000.0);
    metrics.queue_oldest_age.get_or_create(&d).set(age);
}

#[cfg(test)]
mod tests {
    use super::*;
    use uplink_shared::remote_write::{self, Label, Sample, TimeSeries, WriteRequest};

    fn entry(seq: u64, site: &str, values: &[f64]) -> Stored {
        let req = WriteRequest {
            timeseries: values
                .iter()
                .map(|v| TimeSeries {
                    labels: vec![Label::new("__name__", "m")],
                    samples: vec![Sample {
                        value: *v,
                        timestamp: seq as i64,
                    }],
                })
                .collect(),
            metadata: vec![],
        };
        let body = remote_write::encode_snappy(&req);
        Stored {
            seq,
            meta: store::Meta {
                stored_ms: 0,
                samples: values.len() as u64,
                bytes: body.len() as u64,
                site: site.into(),
            },
            body,
        }
    }

    #[test]
    fn merged_entries_are_one_valid_request_in_order() {
        let e = [
            entry(4, "a", &[1.0]),
            entry(5, "b", &[2.0, 3.0]),
            entry(6, "a", &[4.0]),
        ];
        let r = merge(&e);
        assert_eq!((r.samples, r.end, r.entries), (4, 7, 3));
        let sites: Vec<(Arc<str>, u64)> = vec![("a".into(), 2), ("b".into(), 2)];
        assert_eq!(r.sites, sites);
        let req: WriteRequest = remote_write::decode_snappy(&r.body, 1 << 20).expect("valid");
        let values: Vec<f64> = req
            .timeseries
            .iter()
            .flat_map(|t| t.samples.iter().map(|s| s.value))
            .collect();
        assert_eq!(values, vec![1.0, 2.0, 3.0, 4.0]);
        // One entry goes as stored.
        let one = merge(&e[1..2]);
        assert_eq!((one.body.clone(), one.end), (e[1].body.clone(), 6));
    }

    #[test]
    fn a_corrupt_entry_ends_the_request_or_goes_alone() {
        let mut bad = entry(2, "a", &[1.0]);
        bad.body = Bytes::from_static(b"\xff\xff\xff\xff\xff not snappy");
        let good = entry(1, "a", &[1.0]);
        let r = merge(&[good.clone(), bad.clone(), entry(3, "a", &[2.0])]);
        assert_eq!((r.body, r.end), (good.body, 2));
        let r = merge(&[bad.clone(), entry(3, "a", &[2.0])]);
        assert_eq!((r.body, r.end), (bad.body, 3));
    }
}
