//! From the store to the destinations: one forwarder task per destination, and the retention
//! task that enforces each destination's budget and publishes the queue gauges.
//!
//! A forwarder reads its destination's entries in log order from its cursor (up to
//! `max_samples_per_send` × `max_shards` samples), turns them into requests, delivers them
//! through the destination's tower stack (`forward.rs`), and only then moves its cursor past
//! them. Each read is finished before the next begins, so a destination receives the log in
//! order, and the log holds each agent queue's records in sequence order: per-series order
//! survives.
//!
//! # Live data first (`replay.live_first`)
//! For a destination that accepts out-of-order samples, a forwarder that finds its oldest
//! undelivered entry older than `replay.split_after` starts a *live lane* at the head
//! ([`Store::split`]): from then on each turn delivers one read of the live lane (entries
//! stored since), then one read of the backlog below it. Live data is late by at most one
//! backlog read; the backlog drains with whatever the destination has left. Each lane keeps
//! log order (so per-series order within it) and its own in-flight mark; when the backlog
//! reaches the lane's start the lanes merge (see `store.rs`). Without it, strict log order.
//!
//! Requests of one read:
//! - Fast path (no relabeling or age limit): consecutive entries are merged without decoding
//!   into requests of up to `max_samples_per_send` samples; a 2.0 destination gets them
//!   converted from the bytes (`v2::from_v1_bytes`), labels interned without decoding.
//! - Shards: a read is spread over `ceil(samples / max_samples_per_send)` shards, bounded by
//!   `min_shards` and `max_shards`, sent concurrently (each shard's requests in order); the
//!   count adapts to the backlog by construction. On the fast path entries are grouped by the
//!   site that sent them (a series has one source); when the series are decoded
//!   (`write_relabel_configs`, `sample_age_limit`, both filters counted) by label hash. Either
//!   way a series is in exactly one shard, so its order holds.
//!
//! Outcomes of a request (the status policy in `forward.rs` maps statuses to them):
//! - accepted: counted delivered. done (409): counted as duplicates, delivered.
//! - split (413) and bisect (400): the request is halved, first half first, down to single
//!   series. A single series still refused is dropped: counted by reason (`too_large`;
//!   `invalid` or `too_old` from the receiver's message; `duplicate` counts as delivered),
//!   charged to its site in the ledger, and written to the quarantine (`quarantine.rs`). So a
//!   poison series costs only its own samples, never its neighbours'. A series refused as
//!   `invalid` is remembered by the destination (`forward::Refused`, 10 minutes or until
//!   accepted): reads then decode, and its next samples go in a request of their own, so a
//!   lasting poison series is not bisected out of everyone's requests again.
//! - refused (other 4xx): the request is dropped, counted and quarantined the same way.
//! - pause (401, 403): the destination's `uplink_gateway_remote_write_paused` is 1 while any
//!   of its requests is paused, one error is logged, and the same request is tried every
//!   `paused_retry_interval` until accepted; the backlog grows in the store meanwhile.
//! - fallback (415 or 2xx without `*-Written` to a 2.0 request): sent again as 1.0.
//! - still failing after `limits.max_retry_duration`: logged; the same request is tried again
//!   after the destination's `max_backoff`, forever. A destination that is down grows only its
//!   own backlog, bounded by the retention budget; agents' acks never wait for it.
//!
//! # Crash window
//! Before sending, the forwarder records the request's end in its cursor key
//! ([`Store::set_inflight`]); after the destination's answer it moves the cursor
//! ([`Store::advance`]). A crash between the receiver's commit and that write (the time is
//! exported as `uplink_gateway_cursor_commit_duration_seconds`) resends the request after the
//! restart: the first read covers exactly the entries of the one in flight, so the resend
//! carries nothing the receiver has not seen. Prometheus drops an identical
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
use tracing::{Instrument, error, info, warn};
use uplink_shared::relabel::{self, RelabelConfig};
use uplink_shared::remote_write::{self, Label, MetricMetadata, TimeSeries, WriteRequest, extras};
use uplink_shared::traces;

use crate::config::{RemoteWriteConfig, TenancyConfig};
use crate::forward::{Destination, Outcome};
use crate::ledger::Ledger;
use crate::metrics::{Labels, Metrics, labels};
use crate::quarantine::Quarantine;
use crate::store::{self, Lane, Skipped, Store, Stored};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// Compressed bytes read for one request at most (entries are never split).
const MAX_READ_BYTES: u64 = 16 << 20;
/// Uncompressed bytes of a merged request at most.
const MAX_MERGED_BYTES: usize = 64 << 20;
/// Traced entries a write span links to at most, besides its parent.
const MAX_LINKS: usize = 32;
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
    pub quarantine: Quarantine,
    pub max_samples: u64,
    /// Requests in flight at most, and at least when the backlog allows (`queue_config`).
    pub max_shards: usize,
    pub min_shards: usize,
    /// Pause after a request exhausted its retry budget.
    pub pause: Duration,
    /// Pause while the destination refuses our credentials.
    pub paused_retry: Duration,
    pub write_relabel: Vec<RelabelConfig>,
    /// Oldest sample the destination takes, as an age (`sample_age_limit`).
    pub age_limit: Option<Duration>,
    /// What the destination takes besides float samples (`remote_write::extras` bits):
    /// native histograms (`send_native_histograms`; always with 2.0), exemplars
    /// (`send_exemplars`), metadata (`metadata_config.send`; always with 2.0, inline), created
    /// timestamps (2.0 only: 1.0 requests never carry Uplink's field for them).
    pub takes: u8,
    /// Live data first after an outage, if the destination takes out-of-order samples: the
    /// backlog's age that starts a live lane (`replay.split_after`); `None`: strict order.
    pub live_first_after: Option<Duration>,
}

/// A request built from consecutive entries.
struct Request {
    payload: Payload,
    /// How many of the entries given it carries.
    taken: usize,
}

/// What one request carries.
enum Payload {
    /// Snappy-compressed 1.0 protobuf, as stored or merged from consecutive entries, with the
    /// entries' samples per site; decoded only if the destination wants it split.
    Raw {
        body: Bytes,
        samples: u64,
        sites: Vec<(Arc<str>, u64)>,
    },
    /// Decoded series, each with the site it came from.
    Series(Sited),
}

/// Series and, in parallel, the site that sent each (for the ledger's per-site drop counts).
/// Kept apart so that requests encode straight from `series`.
#[derive(Default)]
struct Sited {
    series: Vec<TimeSeries>,
    sites: Vec<Arc<str>>,
    /// Metadata sent with the series (each half of a split request gets all of it).
    metadata: Vec<MetricMetadata>,
}

impl Sited {
    fn push(&mut self, site: Arc<str>, ts: TimeSeries) {
        self.series.push(ts);
        self.sites.push(site);
    }

    fn len(&self) -> usize {
        self.series.len()
    }

    fn samples(&self) -> u64 {
        self.series.iter().map(|t| t.sample_count() as u64).sum()
    }

    fn split_off(&mut self, at: usize) -> Sited {
        Sited {
            series: self.series.split_off(at),
            sites: self.sites.split_off(at),
            metadata: self.metadata.clone(),
        }
    }
}

impl Payload {
    fn samples(&self) -> u64 {
        match self {
            Payload::Raw { samples, .. } => *samples,
            Payload::Series(v) => v.samples(),
        }
    }
}

/// Shutdown came first.
struct Stopped;

/// Requests sent in order, concurrently with the read's other shards, with their tenant's
/// headers.
struct Shard {
    headers: Option<Arc<HeaderMap>>,
    payloads: Vec<Payload>,
}

fn same_headers(a: &Option<Arc<HeaderMap>>, b: &Option<Arc<HeaderMap>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => Arc::ptr_eq(x, y),
        _ => false,
    }
}

/// Per destination: which tenants it takes and their request headers, from `tenancy`.
#[derive(Clone, Default)]
pub struct Routes {
    /// Tenant id to (routed here, headers).
    tenants: std::collections::HashMap<String, (bool, Option<Arc<HeaderMap>>)>,
}

impl Routes {
    /// The routes of destination `name` under `tenancy`; invalid header names or values are
    /// refused when the configuration loads.
    pub fn new(tenancy: Option<&TenancyConfig>, name: &str) -> Routes {
        let mut tenants = std::collections::HashMap::new();
        for (id, t) in tenancy.map(|t| &t.tenants).into_iter().flatten() {
            let routed = t
                .destinations
                .as_ref()
                .is_none_or(|d| d.iter().any(|n| n == name));
            let mut headers = HeaderMap::new();
            for (k, v) in &t.headers {
                if let (Ok(k), Ok(v)) = (
                    HeaderName::try_from(k.as_str()),
                    HeaderValue::try_from(v.as_str()),
                ) {
                    headers.insert(k, v);
                }
            }
            let headers = (!headers.is_empty()).then(|| Arc::new(headers));
            tenants.insert(id.clone(), (routed, headers));
        }
        Routes { tenants }
    }

    /// Whether an entry from identity `site` (`tenant/site` for SPIFFE identities) goes to this
    /// destination, and with which extra headers.
    fn route(&self, site: &str) -> (bool, Option<Arc<HeaderMap>>) {
        self.for_tenant(site.split_once('/').map(|(t, _)| t))
    }

    /// As [`Routes::route`], by tenant (none: a site without a tenant goes everywhere).
    pub fn for_tenant(&self, tenant: Option<&str>) -> (bool, Option<Arc<HeaderMap>>) {
        tenant
            .and_then(|t| self.tenants.get(t).cloned())
            .unwrap_or((true, None))
    }
}

impl Forwarder {
    /// A forwarder for destination `index`, configured by its `remote_write` entry.
    pub fn new(
        index: usize,
        rw: &RemoteWriteConfig,
        destination: Destination,
        store: Store,
        ledger: Arc<Ledger>,
        metrics: Metrics,
        quarantine: Quarantine,
    ) -> Forwarder {
        let q = &rw.queue_config;
        Forwarder {
            index,
            destination,
            store,
            ledger,
            metrics,
            quarantine,
            max_samples: u64::from(q.max_samples_per_send.get()),
            max_shards: q.max_shards.get() as usize,
            min_shards: q.min_shards.get() as usize,
            pause: q.max_backoff.0,
            paused_retry: rw.paused_retry_interval.0,
            write_relabel: rw.write_relabel_configs.clone(),
            age_limit: Some(q.sample_age_limit.0).filter(|a| !a.is_zero()),
            takes: takes(rw),
            live_first_after: rw.replay.live_first.then_some(rw.replay.split_after.0),
        }
    }

    /// Delivers the destination's backlog and everything appended later, until `drain` (and an
    /// empty backlog) or `stop`.
    pub async fn run(self, drain: CancellationToken, stop: CancellationToken) {
        let mut head = self.store.subscribe();
        let at = self.store.position(self.index);
        // After a crash: first resend exactly the requests that were in flight, per lane.
        let mut replay_backlog = (at.inflight > at.cursor).then_some(at.inflight);
        let mut replay_live = at
            .live
            .and_then(|l| (l.inflight > l.cursor).then_some(l.inflight));
        if replay_backlog.is_some() || replay_live.is_some() {
            info!(destination = %self.destination.name,
                "Resending the request that was in flight when the gateway stopped.");
        }
        let live_gauge = self
            .metrics
            .live_first
            .get_or_create(&labels(&[("destination", &self.destination.name)]))
            .clone();
        loop {
            let visible = *head.borrow_and_update();
            let at = self.store.position(self.index);
            live_gauge.set(i64::from(at.live.is_some()));
            let live = at.live.filter(|l| l.cursor < visible);
            let backlog_end = at.live.map_or(visible, |l| l.from);
            if live.is_none() && at.cursor >= backlog_end {
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
            if at.live.is_none() && self.split(at.cursor, visible).await {
                continue;
            }
            // The live lane first (everything it has, up to one read), then one read of the
            // backlog: the backlog drains at the destination's pace without delaying live data
            // by more than one read.
            if let Some(l) = live {
                let until = replay_live.take().unwrap_or(u64::MAX);
                if self
                    .read_and_deliver(Lane::Live, l.cursor, until, &stop)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // Again: retention may have moved the cursor or merged the lanes meanwhile.
            let at = self.store.position(self.index);
            let backlog_end = at.live.map_or(visible, |l| l.from);
            if at.cursor < backlog_end {
                let until = replay_backlog.take().unwrap_or(u64::MAX).min(backlog_end);
                if self
                    .read_and_deliver(Lane::Backlog, at.cursor, until, &stop)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }

    /// With `replay.live_first`, starts a live lane at `head` when the oldest undelivered entry
    /// is older than `split_after`: what is stored from now on goes first. Whether it did.
    async fn split(&self, cursor: u64, head: u64) -> bool {
        let Some(after) = self.live_first_after else {
            return false;
        };
        let Some(stored) = self.store.stored_ms(cursor) else {
            return false;
        };
        if store::now_ms() - stored < after.as_millis() as i64 {
            return false;
        }
        match self.store.split(self.index, head).await {
            Ok(false) => false,
            Ok(true) => {
                info!(destination = %self.destination.name, backlog = head - cursor,
                    "Behind by more than replay.split_after: new data goes first, the backlog behind it.");
                true
            }
            Err(error) => {
                self.store_error("split", &error);
                false
            }
        }
    }

    /// Reads one batch of entries of `lane` from `from` (up to `until`) and delivers it.
    async fn read_and_deliver(
        &self,
        lane: Lane,
        from: u64,
        until: u64,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        let budget = self.max_samples * self.max_shards as u64;
        let entries = match self.store.read(from, until, budget, MAX_READ_BYTES).await {
            Ok(e) if !e.is_empty() => e,
            Ok(_) => return Ok(()),
            Err(error) => {
                self.store_error("read", &error);
                return match pause(stop, self.pause).await {
                    true => Err(Stopped),
                    false => Ok(()),
                };
            }
        };
        let requests = self.prepare(&entries);
        let span = self.write_span(&entries);
        self.deliver(lane, requests, stop).instrument(span).await
    }

    /// The `uplink.gateway.write` span of a read, when one of its entries was traced: a child
    /// of the first traced entry's ingest span, linked to the others' (see
    /// `uplink_shared::traces`). Otherwise no span at all.
    fn write_span(&self, entries: &[Stored]) -> tracing::Span {
        let mut traced = entries.iter().filter_map(|e| e.meta.trace.as_deref());
        let Some(first) = traced.next() else {
            return tracing::Span::none();
        };
        let span = tracing::info_span!(
            parent: None,
            "uplink.gateway.write",
            otel.kind = "client",
            uplink.destination = %self.destination.name,
            uplink.entries = entries.len(),
            uplink.samples = entries.iter().map(|e| e.meta.samples).sum::<u64>(),
        );
        traces::set_parent(&span, *first);
        for other in traced.take(MAX_LINKS) {
            traces::add_link(&span, *other);
        }
        span
    }

    /// Whether series must be decoded before sending: to relabel or age-filter them, or to
    /// hold back series the destination refused before. (2.0 is converted from the stored
    /// bytes without decoding.)
    fn decodes(&self) -> bool {
        !self.write_relabel.is_empty() || self.age_limit.is_some() || self.destination.refused.any()
    }

    /// Whether an entry holds something the destination does not take (then it is decoded and
    /// that part left out).
    fn strips(&self, e: &Stored) -> bool {
        e.meta.extras & !self.takes != 0
    }

    /// Requests in flight for a read of `samples`: one per `max_samples_per_send`, within
    /// `min_shards..=max_shards`.
    fn shard_count(&self, samples: u64) -> usize {
        (samples.div_ceil(self.max_samples) as usize).clamp(self.min_shards, self.max_shards)
    }

    /// Turns entries read from the store into shards: each shard is a sequence of requests
    /// sent in order, the shards concurrently. Each series is in exactly one shard, so it
    /// keeps its order:
    /// - fast path (nothing to rewrite; 1.0, or 2.0 converted from the bytes): entries are not
    ///   decoded; they are grouped by the
    ///   site that sent them (hash of its identity), and each group's consecutive entries are
    ///   merged into requests of up to `max_samples_per_send`. A series has one source, so it
    ///   stays in one shard.
    /// - otherwise the series are decoded and spread by label hash.
    fn prepare(&self, entries: &[Stored]) -> (Vec<Shard>, u64) {
        let end = entries.last().map_or(0, |e| e.seq + 1);
        // Tenants the destination does not take are passed over (configuration, not a drop);
        // tenants with request headers get requests of their own.
        let mut parts: Vec<(Option<Arc<HeaderMap>>, Vec<&Stored>)> = Vec::new();
        for e in entries {
            let (routed, headers) = self.destination.routes.route(&e.meta.site);
            if !routed {
                continue;
            }
            match parts.iter_mut().find(|(h, _)| same_headers(h, &headers)) {
                Some((_, v)) => v.push(e),
                None => parts.push((headers, vec![e])),
            }
        }
        let mut shards = Vec::new();
        for (headers, part) in parts {
            for payloads in self.prepare_part(&part) {
                shards.push(Shard {
                    headers: headers.clone(),
                    payloads,
                });
            }
        }
        (shards, end)
    }

    /// [`Forwarder::prepare`] for entries that may share requests.
    fn prepare_part(&self, entries: &[&Stored]) -> Vec<Vec<Payload>> {
        let samples: u64 = entries.iter().map(|e| e.meta.samples).sum();
        let n = self.shard_count(samples);
        if self.decodes() || entries.iter().any(|e| self.strips(e)) {
            let (decoded, held) = self.decode(entries);
            let mut own: Vec<Vec<Payload>> = Vec::new();
            if held.len() > 0 {
                own.push(vec![Payload::Series(held)]);
            }
            if n == 1 {
                if decoded.len() > 0 {
                    own.push(vec![Payload::Series(decoded)]);
                }
                return own;
            }
            let mut shards: Vec<Sited> = (0..n).map(|_| Sited::default()).collect();
            for (ts, site) in decoded.series.into_iter().zip(decoded.sites) {
                let i = (hash_labels(&ts) % n as u64) as usize;
                shards[i].push(site, ts);
            }
            own.extend(
                shards
                    .into_iter()
                    .filter(|s| s.len() > 0)
                    .map(|s| vec![Payload::Series(s)]),
            );
            return own;
        }
        let mut groups: Vec<Vec<&Stored>> = vec![Vec::new(); n];
        for e in entries {
            let i = if n == 1 {
                0
            } else {
                (hash_str(&e.meta.site) % n as u64) as usize
            };
            groups[i].push(e);
        }
        groups
            .into_iter()
            .filter(|g| !g.is_empty())
            .map(|g| self.merged(&g))
            .collect()
    }

    /// Consecutive entries as merged requests of up to `max_samples_per_send` samples each
    /// (an entry is never split; a larger one goes alone), in order.
    fn merged(&self, mut group: &[&Stored]) -> Vec<Payload> {
        let mut out = Vec::new();
        while !group.is_empty() {
            let mut samples = 0;
            let fit = group
                .iter()
                .take_while(|e| {
                    samples += e.meta.samples;
                    samples <= self.max_samples
                })
                .count()
                .max(1);
            let r = merge(&group[..fit]);
            out.push(r.payload);
            group = &group[r.taken.max(1)..];
        }
        out
    }

    /// Decodes entries into series, applying `sample_age_limit` and `write_relabel_configs`
    /// (what they remove is counted). An entry that does not decode is dropped and counted.
    /// Series the destination refused before come back apart (the second value): they go in a
    /// request of their own, so a 400 is bisected among them, not through everyone's requests.
    fn decode(&self, entries: &[&Stored]) -> (Sited, Sited) {
        let min_ts = self
            .age_limit
            .map(|a| store::now_ms() - a.as_millis() as i64);
        let (mut out, mut held) = (Sited::default(), Sited::default());
        let known_refused = self.destination.refused.any();
        let (mut too_old, mut relabeled, mut not_taken) = (0u64, 0u64, 0u64);
        for e in entries {
            let req = match remote_write::decode_snappy::<WriteRequest>(&e.body, MAX_MERGED_BYTES) {
                Ok(r) => r,
                Err(error) => {
                    self.destination.dropped(
                        e.meta.samples,
                        "refused",
                        &format!("stored entry: {error}"),
                    );
                    self.ledger.dropped(&e.meta.site, e.meta.samples);
                    continue;
                }
            };
            if self.takes & extras::METADATA != 0 {
                out.metadata.extend(req.metadata);
            }
            for mut ts in req.timeseries {
                if self.takes & extras::EXEMPLARS == 0 {
                    ts.exemplars.clear();
                }
                if self.takes & extras::CREATED == 0 {
                    ts.created_timestamp = 0;
                }
                if self.takes & extras::HISTOGRAMS == 0 && !ts.histograms.is_empty() {
                    not_taken += ts.histograms.len() as u64;
                    ts.histograms.clear();
                }
                let before = ts.sample_count() as u64;
                if let Some(min) = min_ts {
                    ts.samples.retain(|s| s.timestamp >= min);
                    ts.histograms.retain(|h| h.timestamp >= min);
                    let gone = before - ts.sample_count() as u64;
                    if gone > 0 {
                        too_old += gone;
                        self.ledger.dropped(&e.meta.site, gone);
                    }
                }
                if ts.sample_count() == 0 {
                    continue;
                }
                if !self.write_relabel.is_empty() && !relabel_series(&mut ts, &self.write_relabel) {
                    relabeled += ts.sample_count() as u64;
                    continue;
                }
                if known_refused && self.destination.refused.contains(hash_labels(&ts)) {
                    held.push(e.meta.site.clone(), ts);
                    continue;
                }
                out.push(e.meta.site.clone(), ts);
            }
        }
        if too_old > 0 {
            self.destination
                .dropped(too_old, "too_old", "older than sample_age_limit");
        }
        for (n, reason) in [
            (relabeled, "write_relabel"),
            (not_taken, "native_histograms_off"),
        ] {
            if n > 0 {
                self.metrics
                    .samples_dropped
                    .get_or_create(&labels(&[
                        ("destination", &self.destination.name),
                        ("reason", reason),
                    ]))
                    .inc_by(n);
            }
        }
        held.metadata = out.metadata.clone();
        (out, held)
    }

    /// Sends the requests of one read concurrently (each until it is delivered or refused),
    /// then moves the cursor past them.
    async fn deliver(
        &self,
        lane: Lane,
        (shards, end): (Vec<Shard>, u64),
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        if let Err(error) = self.store.set_inflight(self.index, lane, end).await {
            // Only the exactness of a resend after a crash depends on it.
            self.store_error("inflight", &error);
        }
        self.metrics
            .shards
            .get_or_create(&labels(&[("destination", &self.destination.name)]))
            .set(shards.len() as i64);
        let results = futures_util::future::join_all(shards.into_iter().map(|shard| async move {
            for p in shard.payloads {
                self.deliver_one(p, shard.headers.as_ref(), stop).await?;
            }
            Ok::<(), Stopped>(())
        }))
        .await;
        if results.iter().any(Result::is_err) {
            return Err(Stopped);
        }
        self.commit(lane, end).await;
        Ok(())
    }

    /// Sends one request until all of it is delivered, refused or dropped, acting on each
    /// outcome as the status policy says: halves of a split request are sent first half
    /// first, so a series split across them keeps its order.
    async fn deliver_one(
        &self,
        payload: Payload,
        headers: Option<&Arc<HeaderMap>>,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        let name = &self.destination.name;
        let mut work = vec![payload];
        let mut failing_since: Option<Instant> = None;
        // Whether this request holds one of the destination's pauses (see `set_paused`).
        let mut paused_here = false;
        while let Some(p) = work.pop() {
            let outcome = tokio::select! {
                _ = stop.cancelled() => return Err(Stopped),
                o = self.send(&p, headers) => o,
            };
            if !matches!(outcome, Outcome::Failed(_) | Outcome::Pause(..)) {
                if let Some(since) = failing_since.take() {
                    info!(destination = %name, after = ?since.elapsed(), "Destination recovered.");
                }
                if paused_here {
                    paused_here = false;
                    self.destination.set_paused(None);
                }
            }
            let bisect = matches!(outcome, Outcome::Bisect(_));
            match outcome {
                Outcome::Accepted => {
                    self.destination.forwarded(p.samples());
                    self.per_tenant(&self.metrics.tenant_forwarded, &p);
                    if let Payload::Series(v) = &p {
                        self.destination
                            .refused
                            .forget(v.series.iter().map(hash_labels));
                    }
                }
                Outcome::Done(_) => self.duplicate(p.samples()),
                Outcome::Split(message) | Outcome::Bisect(message) => match self.halves(p) {
                    Ok((a, b)) => {
                        self.metrics
                            .splits
                            .get_or_create(&labels(&[("destination", name)]))
                            .inc();
                        work.push(b);
                        work.push(a);
                    }
                    Err(one) => {
                        let status = if bisect { 400 } else { 413 };
                        let reason = if bisect {
                            refusal_reason(&message)
                        } else {
                            "too_large"
                        };
                        if reason == "duplicate" {
                            self.duplicate(one.samples());
                        } else {
                            self.refuse(one, reason, status, &message).await;
                        }
                    }
                },
                Outcome::Refused(status, message) => {
                    let reason = if status == 429 {
                        "rate_limited"
                    } else {
                        "refused"
                    };
                    self.refuse(self.series(p), reason, status, &message).await;
                }
                Outcome::Pause(status, message) => {
                    if !paused_here {
                        paused_here = true;
                        self.destination.set_paused(Some((status, &message)));
                    }
                    work.push(p);
                    if pause(stop, self.paused_retry).await {
                        return Err(Stopped);
                    }
                }
                Outcome::Failed(error) => {
                    if failing_since.is_none() {
                        warn!(destination = %name, %error, samples = p.samples(),
                            "Destination still failing; the data stays queued and is retried.");
                    }
                    failing_since.get_or_insert_with(Instant::now);
                    work.push(p);
                    if pause(stop, self.pause).await {
                        return Err(Stopped);
                    }
                }
            }
        }
        Ok(())
    }

    async fn send(&self, p: &Payload, headers: Option<&Arc<HeaderMap>>) -> Outcome {
        match p {
            Payload::Raw { body, .. } => self.destination.send_raw(body, headers).await,
            Payload::Series(v) => {
                self.destination
                    .send_series(&v.series, &v.metadata, headers)
                    .await
            }
        }
    }

    /// Splits a request in two halves by series, or gives back its single series.
    fn halves(&self, p: Payload) -> Result<(Payload, Payload), Sited> {
        let mut series = self.series(p);
        if series.len() < 2 {
            return Err(series);
        }
        let b = series.split_off(series.len() / 2);
        Ok((Payload::Series(series), Payload::Series(b)))
    }

    /// A payload's series; a raw body that does not decode comes back as no series, its
    /// samples dropped and counted here.
    fn series(&self, p: Payload) -> Sited {
        match p {
            Payload::Series(v) => v,
            Payload::Raw {
                body,
                samples,
                sites,
            } => match remote_write::decode_snappy::<WriteRequest>(&body, MAX_MERGED_BYTES) {
                Ok(req) => {
                    // A merged body's series are in entry order; give each its entry's site.
                    let mut out = Sited {
                        metadata: req.metadata,
                        ..Sited::default()
                    };
                    let mut sites = sites.into_iter();
                    let mut current = sites.next();
                    for ts in req.timeseries {
                        while let Some((_, left)) = &current
                            && *left == 0
                        {
                            current = sites.next();
                        }
                        let site = match &mut current {
                            Some((site, left)) => {
                                *left = left.saturating_sub(ts.sample_count() as u64);
                                site.clone()
                            }
                            None => Arc::from(""),
                        };
                        out.push(site, ts);
                    }
                    out
                }
                Err(error) => {
                    self.destination
                        .dropped(samples, "refused", &format!("stored entry: {error}"));
                    for (site, n) in &sites {
                        self.ledger.dropped(site, *n);
                    }
                    Sited::default()
                }
            },
        }
    }

    /// Adds a payload's samples to a per-tenant counter, by the sites they came from (sites
    /// without a tenant are not counted there).
    fn per_tenant(&self, family: &Family<Labels, Counter>, p: &Payload) {
        let add = |site: &str, n: u64| {
            if let Some(t) = crate::metrics::tenant_of(site) {
                let l = [("tenant", t), ("destination", &*self.destination.name)];
                family.get_or_create(&labels(&l)).inc_by(n);
            }
        };
        match p {
            Payload::Raw { sites, .. } => {
                for (site, n) in sites {
                    add(site, *n);
                }
            }
            Payload::Series(v) => {
                for (ts, site) in v.series.iter().zip(&v.sites) {
                    add(site, ts.sample_count() as u64);
                }
            }
        }
    }

    fn duplicate(&self, samples: u64) {
        self.metrics
            .samples_duplicate
            .get_or_create(&labels(&[("destination", &self.destination.name)]))
            .inc_by(samples);
    }

    /// Drops series the destination refused: counted by reason, charged to their sites, and
    /// written to the quarantine for inspection.
    async fn refuse(&self, refused: Sited, reason: &str, status: u16, message: &str) {
        let samples = refused.samples();
        if samples == 0 {
            return;
        }
        self.destination.dropped(samples, reason, message);
        if reason == "invalid" {
            self.destination
                .refused
                .remember(refused.series.iter().map(hash_labels));
        }
        for (ts, site) in refused.series.iter().zip(&refused.sites) {
            self.ledger.dropped(site, ts.sample_count() as u64);
            if let Some(t) = crate::metrics::tenant_of(site) {
                self.metrics
                    .tenant_dropped
                    .get_or_create(&labels(&[
                        ("tenant", t),
                        ("destination", &self.destination.name),
                        ("reason", reason),
                    ]))
                    .inc_by(ts.sample_count() as u64);
            }
        }
        self.quarantine
            .record(
                &self.destination.name,
                reason,
                status,
                message,
                refused.series,
            )
            .await;
    }

    /// Moves the cursor past a request the destination answered.
    async fn commit(&self, lane: Lane, end: u64) {
        let answered = Instant::now();
        match self.store.advance(self.index, lane, end).await {
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

/// Why a receiver refused a single series with 400, from its message (receivers' wording
/// differs; Prometheus, Mimir, Thanos and VictoriaMetrics are covered): `duplicate` (the
/// receiver has a sample at that timestamp: delivered), `too_old` (out of order or out of
/// bounds), or `invalid`.
fn refusal_reason(message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if m.contains("duplicate sample") || m.contains("duplicate-timestamp") {
        "duplicate"
    } else if [
        "out of order",
        "out-of-order",
        "out of bounds",
        "too old",
        "too far in the past",
    ]
    .iter()
    .any(|k| m.contains(k))
    {
        "too_old"
    } else {
        "invalid"
    }
}

/// Applies relabeling to a series' labels; false when it is dropped.
fn relabel_series(ts: &mut TimeSeries, cfgs: &[RelabelConfig]) -> bool {
    let mut set: relabel::LabelSet = std::mem::take(&mut ts.labels)
        .into_iter()
        .map(|l| (l.name, l.value))
        .collect();
    if !relabel::process(&mut set, cfgs) || set.is_empty() {
        return false;
    }
    ts.labels = set.into_iter().map(|(n, v)| Label::new(n, v)).collect();
    true
}

/// A site's shard key.
fn hash_str(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// A series' shard key: a hash of its labels.
fn hash_labels(ts: &TimeSeries) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for l in &ts.labels {
        l.name.hash(&mut h);
        l.value.hash(&mut h);
    }
    h.finish()
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
fn merge(entries: &[&Stored]) -> Request {
    let Some(first) = entries.first() else {
        return Request {
            payload: Payload::Series(Sited::default()),
            taken: 0,
        };
    };
    if entries.len() == 1 {
        return single(first);
    }
    // The merged protobuf is built in this thread's reused buffer; only the compressed body
    // is a new allocation.
    let merged = crate::scratch::with(|s| {
        let mut taken = 0;
        for e in entries {
            // Each entry decompresses straight into its place at the end of the request.
            let Ok(n) = snap::raw::decompress_len(&e.body) else {
                break;
            };
            let start = s.raw.len();
            if start + n > MAX_MERGED_BYTES && taken > 0 {
                break;
            }
            s.raw.resize(start + n, 0);
            if s.decoder.decompress(&e.body, &mut s.raw[start..]).is_err() {
                s.raw.truncate(start);
                break;
            }
            taken += 1;
        }
        if taken <= 1 {
            return None;
        }
        let body = s.encoder.compress_vec(&s.raw).ok()?;
        Some((body, taken))
    });
    let Some((body, taken)) = merged else {
        return single(first);
    };
    let used = &entries[..taken];
    let mut sites: Vec<(Arc<str>, u64)> = Vec::new();
    for e in used {
        match sites.last_mut() {
            Some((s, n)) if *s == e.meta.site => *n += e.meta.samples,
            _ => sites.push((e.meta.site.clone(), e.meta.samples)),
        }
    }
    Request {
        payload: Payload::Raw {
            body: Bytes::from(body),
            samples: used.iter().map(|e| e.meta.samples).sum(),
            sites,
        },
        taken,
    }
}

/// One entry as a request of its own, as stored.
fn single(e: &Stored) -> Request {
    Request {
        payload: Payload::Raw {
            body: e.body.clone(),
            samples: e.meta.samples,
            sites: vec![(e.meta.site.clone(), e.meta.samples)],
        },
        taken: 1,
    }
}

/// What a destination configured by `rw` takes besides float samples (`extras` bits).
fn takes(rw: &RemoteWriteConfig) -> u8 {
    let v2 = rw.protobuf_message == crate::config::ProtobufMessage::V2;
    let mut bits = 0;
    if v2 || rw.send_native_histograms {
        bits |= extras::HISTOGRAMS;
    }
    if rw.send_exemplars {
        bits |= extras::EXEMPLARS;
    }
    if v2 || rw.metadata_config.send {
        bits |= extras::METADATA;
    }
    if v2 {
        bits |= extras::CREATED;
    }
    bits
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
                    ..Default::default()
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
                trace: None,
                extras: 0,
            },
            body,
        }
    }

    fn raw(r: &Request) -> (Bytes, u64, Vec<(Arc<str>, u64)>) {
        match &r.payload {
            Payload::Raw {
                body,
                samples,
                sites,
            } => (body.clone(), *samples, sites.clone()),
            Payload::Series(_) => panic!("not raw"),
        }
    }

    #[test]
    fn merged_entries_are_one_valid_request_in_order() {
        let e = [
            entry(4, "a", &[1.0]),
            entry(5, "b", &[2.0, 3.0]),
            entry(6, "a", &[4.0]),
        ];
        let r = merge(&e.iter().collect::<Vec<_>>());
        let (body, samples, sites) = raw(&r);
        assert_eq!((samples, r.taken), (4, 3));
        let want: Vec<(Arc<str>, u64)> = vec![("a".into(), 1), ("b".into(), 2), ("a".into(), 1)];
        assert_eq!(sites, want);
        let req: WriteRequest = remote_write::decode_snappy(&body, 1 << 20).expect("valid");
        let values: Vec<f64> = req
            .timeseries
            .iter()
            .flat_map(|t| t.samples.iter().map(|s| s.value))
            .collect();
        assert_eq!(values, vec![1.0, 2.0, 3.0, 4.0]);
        // One entry goes as stored.
        let one = merge(&[&e[1]]);
        assert_eq!((raw(&one).0, one.taken), (e[1].body.clone(), 1));
    }

    #[test]
    fn a_corrupt_entry_ends_the_request_or_goes_alone() {
        let mut bad = entry(2, "a", &[1.0]);
        bad.body = Bytes::from_static(b"\xff\xff\xff\xff\xff not snappy");
        let good = entry(1, "a", &[1.0]);
        let r = merge(&[&good, &bad, &entry(3, "a", &[2.0])]);
        assert_eq!((raw(&r).0, r.taken), (good.body, 1));
        let r = merge(&[&bad, &entry(3, "a", &[2.0])]);
        assert_eq!((raw(&r).0, r.taken), (bad.body, 1));
    }
}
