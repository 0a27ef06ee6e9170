//! Every instrument the gateway exports on `/metrics`. Label values are bounded: destination
//! names come from the configuration, close codes, outcomes and drop reasons are fixed sets.
//! Per-agent series are deliberately absent (fleets of thousands of sites); the logs and the
//! freshness ledger carry the identity.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub type Labels = Vec<(String, String)>;

#[derive(Clone)]
pub struct Metrics {
    pub agents_connected: Gauge,
    pub connections: Counter,
    pub closes: Family<Labels, Counter>,
    pub handshake_failures: Family<Labels, Counter>,
    pub identity_refusals: Family<Labels, Counter>,
    pub batches_received: Counter,
    pub batches_duplicate: Counter,
    pub samples_deduplicated: Counter,
    pub batches_acked: Family<Labels, Counter>,
    pub samples_received: Counter,
    pub samples_forwarded: Family<Labels, Counter>,
    pub samples_dropped: Family<Labels, Counter>,
    pub requests: Family<Labels, Counter>,
    pub retries: Family<Labels, Counter>,
    pub splits: Family<Labels, Counter>,
    pub samples_duplicate: Family<Labels, Counter>,
    pub paused: Family<Labels, Gauge>,
    pub protocol: Family<Labels, Gauge>,
    pub shards: Family<Labels, Gauge>,
    pub live_first: Family<Labels, Gauge>,
    pub request_duration: Family<Labels, Histogram>,
    pub queue_entries: Family<Labels, Gauge>,
    pub queue_bytes: Family<Labels, Gauge>,
    pub queue_oldest_age: Family<Labels, Gauge<f64, AtomicU64>>,
    pub store_commit_duration: Histogram,
    pub cursor_commit_duration: Family<Labels, Histogram>,
    pub store_errors: Family<Labels, Counter>,
    pub storage_max_bytes: Gauge,
    pub store_quarantined: Counter,
    pub tenant_throttled: Family<Labels, Counter>,
    pub tenant_received: Family<Labels, Counter>,
    pub tenant_deduplicated: Family<Labels, Counter>,
    pub tenant_forwarded: Family<Labels, Counter>,
    pub tenant_dropped: Family<Labels, Counter>,
    pub certificate_expiry: Family<Labels, Gauge>,
    pub ha_elections: Family<Labels, Counter>,
    pub ha_samples_dropped: Family<Labels, Counter>,
    pub ha_errors: Counter,
    pub shared_cursor_duration: Histogram,
    pub shared_cursor_errors: Family<Labels, Counter>,
    pub tls: uplink_shared::tls::ReloadMetrics,
    pub revoked_disconnects: Counter,
    pub handshake_retries: Counter,
    pub tenant_rejected: Family<Labels, Counter>,
}

/// Buckets from 10 µs to about 20 s, for RocksDB writes.
fn write_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 4.0, 12))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            agents_connected: Gauge::default(),
            connections: Counter::default(),
            closes: Family::default(),
            handshake_failures: Family::default(),
            identity_refusals: Family::default(),
            batches_received: Counter::default(),
            batches_duplicate: Counter::default(),
            samples_deduplicated: Counter::default(),
            batches_acked: Family::default(),
            samples_received: Counter::default(),
            samples_forwarded: Family::default(),
            samples_dropped: Family::default(),
            requests: Family::default(),
            retries: Family::default(),
            splits: Family::default(),
            samples_duplicate: Family::default(),
            paused: Family::default(),
            protocol: Family::default(),
            shards: Family::default(),
            live_first: Family::default(),
            request_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 12))
            }),
            queue_entries: Family::default(),
            queue_bytes: Family::default(),
            queue_oldest_age: Family::default(),
            store_commit_duration: write_buckets(),
            cursor_commit_duration: Family::new_with_constructor(write_buckets),
            store_errors: Family::default(),
            storage_max_bytes: Gauge::default(),
            store_quarantined: Counter::default(),
            tenant_throttled: Family::default(),
            tenant_received: Family::default(),
            tenant_deduplicated: Family::default(),
            ha_elections: Family::default(),
            ha_samples_dropped: Family::default(),
            ha_errors: Counter::default(),
            shared_cursor_duration: write_buckets(),
            shared_cursor_errors: Family::default(),
            tls: Default::default(),
            revoked_disconnects: Counter::default(),
            handshake_retries: Counter::default(),
            tenant_rejected: Family::default(),
            tenant_forwarded: Family::default(),
            tenant_dropped: Family::default(),
            certificate_expiry: Family::default(),
        }
    }
}

impl Metrics {
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("uplink_gateway");
        r.register(
            "agents_connected",
            "Agent connections currently established.",
            self.agents_connected.clone(),
        );
        r.register(
            "connections",
            "Agent connections accepted (TLS verified).",
            self.connections.clone(),
        );
        r.register(
            "connection_closes",
            "Agent connections closed by the gateway, by close code.",
            self.closes.clone(),
        );
        r.register(
            "handshake_failures",
            "TLS/QUIC handshakes that failed, by reason (the TLS alert: bad_certificate, \
             unknown_ca, certificate_expired, certificate_required, unsupported_certificate, \
             certificate_revoked, certificate_unknown, tls_other; timeout; other).",
            self.handshake_failures.clone(),
        );
        r.register(
            "identity_refusals",
            "Verified certificates refused for their identity (closed with code 4), by reason \
             (several_ids, trust_domain, spiffe_path, spiffe_required, no_name, unparseable).",
            self.identity_refusals.clone(),
        );
        r.register(
            "batches_received",
            "Batches received from agents.",
            self.batches_received.clone(),
        );
        r.register(
            "batches_duplicate",
            "Retransmitted batches acknowledged without forwarding again.",
            self.batches_duplicate.clone(),
        );
        r.register(
            "samples_deduplicated",
            "Samples in retransmitted records (already stored from an earlier connection or \
             before a restart), dropped instead of forwarded again.",
            self.samples_deduplicated.clone(),
        );
        r.register(
            "batches_acked",
            "Batch acks sent, by status (accepted, retry).",
            self.batches_acked.clone(),
        );
        r.register(
            "samples_received",
            "Samples received from agents.",
            self.samples_received.clone(),
        );
        r.register(
            "remote_write_samples",
            "Samples accepted by a destination (2xx), by destination.",
            self.samples_forwarded.clone(),
        );
        r.register(
            "remote_write_samples_dropped",
            "Samples dropped for a destination, by destination and reason (refused: a 4xx the \
             status policy drops; invalid: a series a 400 refused after bisection; too_large: a \
             single series refused with 413; rate_limited: 429 with retry_on_http_429 false; \
             too_old: older than queue_config.sample_age_limit; write_relabel: dropped by \
             write_relabel_configs; bytes, age: the storage retention budget).",
            self.samples_dropped.clone(),
        );
        r.register(
            "remote_write_requests",
            "Remote-write requests, by destination and outcome (2xx, 4xx, 5xx, error).",
            self.requests.clone(),
        );
        r.register(
            "remote_write_retries",
            "Remote-write attempts retried after a 5xx, 429, timeout or transport error, by \
             destination.",
            self.retries.clone(),
        );
        r.register(
            "remote_write_splits",
            "Requests split in halves after a 413 (split) or 400 (bisect), by destination.",
            self.splits.clone(),
        );
        r.register(
            "remote_write_samples_duplicate",
            "Samples a destination reported it already had (409, or a 400 naming a duplicate \
             sample): delivered, not sent again, by destination.",
            self.samples_duplicate.clone(),
        );
        r.register(
            "remote_write_paused",
            "1 while a destination is paused because it refuses our credentials (401, 403), by \
             destination.",
            self.paused.clone(),
        );
        r.register(
            "remote_write_protocol",
            "Remote-write protocol major version a destination is sent (2, or 1 after a \
             fallback), by destination.",
            self.protocol.clone(),
        );
        r.register(
            "remote_write_shards",
            "Requests in flight in the last send, by destination.",
            self.shards.clone(),
        );
        r.register(
            "remote_write_live_first",
            "1 while a destination's new data goes ahead of its backlog (replay.live_first), by \
             destination.",
            self.live_first.clone(),
        );
        r.register(
            "remote_write_request_duration_seconds",
            "Remote-write request latency per attempt, by destination.",
            self.request_duration.clone(),
        );
        r.register(
            "queue_entries",
            "Stored entries (agent batches) not yet delivered, by destination.",
            self.queue_entries.clone(),
        );
        r.register(
            "queue_bytes",
            "Bytes of stored entries not yet delivered, by destination.",
            self.queue_bytes.clone(),
        );
        r.register(
            "queue_oldest_entry_age_seconds",
            "Age of the oldest entry not yet delivered, by destination (0 when none).",
            self.queue_oldest_age.clone(),
        );
        r.register(
            "store_commit_duration_seconds",
            "Time to store an accepted batch durably (one atomic write, synced per storage.fsync).",
            self.store_commit_duration.clone(),
        );
        r.register(
            "cursor_commit_duration_seconds",
            "Time from a destination's answer to its cursor being written: a crash inside it \
             resends that request after restart.",
            self.cursor_commit_duration.clone(),
        );
        r.register(
            "tenant_samples_received",
            "Samples stored for a tenant (SPIFFE identities), by tenant.",
            self.tenant_received.clone(),
        );
        r.register(
            "ha_elections",
            "HA replicas elected (a first election or a failover), by tenant and cluster.",
            self.ha_elections.clone(),
        );
        r.register(
            "ha_samples_dropped",
            "Samples of a replica that is not the elected one of its cluster, acknowledged and \
             not forwarded, by tenant and cluster.",
            self.ha_samples_dropped.clone(),
        );
        r.register(
            "ha_errors",
            "HA elections that could not be decided (etcd unreachable or contended); the batch \
             was answered retry.",
            self.ha_errors.clone(),
        );
        r.register(
            "shared_cursor_write_duration_seconds",
            "Time to raise an agent queue's shared dedupe cursor in etcd (dedupe.etcd) before \
             acknowledging; a crash inside it lets another gateway store the resend again.",
            self.shared_cursor_duration.clone(),
        );
        r.register(
            "shared_cursor_errors",
            "Shared dedupe cursors that could not be read or raised (etcd unreachable or \
             contended), by op (read, raise); the batches were answered retry.",
            self.shared_cursor_errors.clone(),
        );
        self.tls.register(r);
        r.register(
            "tenant_samples_rejected",
            "Samples of a tenant not forwarded because their series break the tenant's label \
             limits, by tenant and reason (label_count, label_name_length, label_value_length).",
            self.tenant_rejected.clone(),
        );
        r.register(
            "handshake_retries",
            "New connections asked to prove their address first (QUIC Retry) because more \
             than limits.retry_above_handshakes handshakes were in progress.",
            self.handshake_retries.clone(),
        );
        r.register(
            "revoked_disconnects",
            "Agent connections closed (code 4) because a reloaded CRL revokes their \
             certificate.",
            self.revoked_disconnects.clone(),
        );
        r.register(
            "tenant_samples_deduplicated",
            "Samples of a tenant in retransmitted records, dropped instead of forwarded again, by \
             tenant.",
            self.tenant_deduplicated.clone(),
        );
        r.register(
            "tenant_samples_forwarded",
            "Samples of a tenant accepted by a destination, by tenant and destination.",
            self.tenant_forwarded.clone(),
        );
        r.register(
            "tenant_samples_dropped",
            "Samples of a tenant a destination refused for good, by tenant, destination and \
             reason (as remote_write_samples_dropped_total).",
            self.tenant_dropped.clone(),
        );
        r.register(
            "tenant_throttled_batches",
            "Agent batches answered Retry because their tenant was over its \
             max_samples_per_second (kept by the agent, sent again later), by tenant.",
            self.tenant_throttled.clone(),
        );
        r.register(
            "store_quarantined",
            "Corrupt stores moved aside at start-up (a fresh one was started).",
            self.store_quarantined.clone(),
        );
        r.register(
            "storage_max_bytes",
            "The retention budget per destination in bytes (storage.max_bytes; 0: unbounded).",
            self.storage_max_bytes.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When the gateway's TLS files expire (earliest notAfter), by file: server (its \
             certificate chain), client_ca (the CA bundle agents' certificates chain to).",
            self.certificate_expiry.clone(),
        );
        r.register(
            "store_errors",
            "Failed store operations, by operation (commit, read, advance, retention).",
            self.store_errors.clone(),
        );
    }
}

/// The tenant of an identity key (`tenant/site`), if it has one.
pub fn tenant_of(site: &str) -> Option<&str> {
    site.split_once('/').map(|(t, _)| t)
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
