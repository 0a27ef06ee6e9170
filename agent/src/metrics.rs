//! Every instrument the agent exports on `/metrics`. Names follow Prometheus conventions;
//! label values are bounded (job names come from the configuration).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::queue::QueueStats;

type JobLabels = Vec<(String, String)>;

#[derive(Clone, Default)]
pub struct Metrics {
    pub config_last_reload_successful: Gauge,
    pub config_last_reload_success_timestamp: Gauge,
    pub scrapes: Family<JobLabels, Counter>,
    pub scrape_failures: Family<JobLabels, Counter>,
    pub samples_scraped: Counter,
    pub samples_queued: Counter,
    pub samples_shipped: Counter,
    pub samples_acked: Counter,
    pub batches_sent: Counter,
    pub batches_acked: Counter,
    pub batches_retried: Counter,
    pub bytes_sent: Counter,
    pub queue_append_errors: Counter,
    pub stale_markers: Counter,
    pub scrape_samples_refused: Family<Vec<(String, String)>, Counter>,
    pub targets: Family<Vec<(String, String)>, Gauge>,
    pub records_corrupt: Counter,
    pub samples_dropped: Counter,
    pub retention_dropped: Family<Vec<(String, String)>, Counter>,
    pub queue_records: Gauge,
    pub queue_bytes: Gauge,
    pub queue_max_bytes: Gauge,
    pub ack_duration: AckDuration,
    pub certificate_expiry: Family<Vec<(String, String)>, Gauge>,
    pub tls: uplink_shared::tls::ReloadMetrics,
    pub queue_degraded: Gauge,
    pub queue_buffered_records: Gauge,
    pub queue_buffered_bytes: Gauge,
    pub queue_write_errors: Counter,
    pub queue_unverified_records: Counter,
    pub queue_quarantined: Counter,
    pub connected: Gauge,
    pub connection_attempts: Counter,
    pub connection_failures: Counter,
    pub sd_refresh_failures: Family<Vec<(String, String)>, Counter>,
    pub remote_write_requests: Family<Vec<(String, String)>, Counter>,
    pub remote_write_samples: Counter,
    pub remote_write_dropped: Family<Vec<(String, String)>, Counter>,
}

impl Metrics {
    /// Registers every instrument under the `uplink_agent_` prefix.
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("uplink_agent");
        r.register(
            "config_last_reload_successful",
            "Whether the last configuration reload succeeded (1) or failed (0).",
            self.config_last_reload_successful.clone(),
        );
        r.register(
            "config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully.",
            self.config_last_reload_success_timestamp.clone(),
        );
        r.register(
            "scrapes",
            "Scrapes attempted, by job.",
            self.scrapes.clone(),
        );
        r.register(
            "scrape_failures",
            "Scrapes that failed (target down, timeout, bad body), by job.",
            self.scrape_failures.clone(),
        );
        r.register(
            "samples_scraped",
            "Samples parsed from targets.",
            self.samples_scraped.clone(),
        );
        r.register(
            "samples_queued",
            "Samples durably appended to the queue (scraped, synthetic and remote-written).",
            self.samples_queued.clone(),
        );
        r.register(
            "samples_shipped",
            "Samples sent to the gateway (retransmissions included).",
            self.samples_shipped.clone(),
        );
        r.register(
            "samples_acked",
            "Samples acknowledged by the gateway and deleted from the queue.",
            self.samples_acked.clone(),
        );
        r.register("batches_sent", "Batches sent.", self.batches_sent.clone());
        r.register(
            "batches_acked",
            "Batches acknowledged.",
            self.batches_acked.clone(),
        );
        r.register(
            "batches_retried",
            "Batches that will be sent again (gateway asked, or no ack arrived).",
            self.batches_retried.clone(),
        );
        r.register(
            "sent_bytes",
            "Batch payload bytes sent.",
            self.bytes_sent.clone(),
        );
        r.register(
            "stale_markers",
            "Stale markers written (series gone from a scrape, failed scrapes, targets gone).",
            self.stale_markers.clone(),
        );
        r.register(
            "scrape_samples_refused",
            "Scraped samples not queued, as Prometheus 3 refuses them: a series repeated in one scrape (duplicate), an explicit timestamp not newer than the series' last (out_of_order).",
            self.scrape_samples_refused.clone(),
        );
        r.register(
            "targets",
            "Targets by job and state (active, dropped by relabeling, invalid).",
            self.targets.clone(),
        );
        r.register(
            "queue_append_errors",
            "Scrape results and remote-write requests that could not be appended to the queue.",
            self.queue_append_errors.clone(),
        );
        r.register(
            "samples_dropped",
            "Samples lost at the agent (queue append failures, corrupt records).",
            self.samples_dropped.clone(),
        );
        r.register(
            "retention_dropped_samples",
            "Samples dropped by the queue's retention budget, by reason (bytes, age, buffer_full: the memory buffer of a failing disk overflowed).",
            self.retention_dropped.clone(),
        );
        r.register(
            "queue_records_corrupt",
            "Queue records skipped because they could not be decoded (counted, then deleted).",
            self.records_corrupt.clone(),
        );
        r.register(
            "queue_records",
            "Records (scrapes) in the queue awaiting acknowledgement.",
            self.queue_records.clone(),
        );
        r.register(
            "batch_ack_duration_seconds",
            "From sending a batch to its ack: the round trip to the gateway plus its durable \
             commit (and, with the gateway's storage.ack: delivered, the delivery).",
            self.ack_duration.0.clone(),
        );
        r.register(
            "queue_max_bytes",
            "The queue's retention budget in bytes (uplink.queue.max_bytes; 0: unbounded).",
            self.queue_max_bytes.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When the agent's TLS files expire (earliest notAfter), by file: client (its \
             certificate chain), ca (the gateway CA bundle).",
            self.certificate_expiry.clone(),
        );
        self.tls.register(r);
        r.register(
            "queue_bytes",
            "Bytes of records in the queue awaiting acknowledgement.",
            self.queue_bytes.clone(),
        );
        r.register(
            "queue_degraded",
            "1 while writing the queue to disk fails and scrapes are held in memory.",
            self.queue_degraded.clone(),
        );
        r.register(
            "queue_buffered_records",
            "Records held in memory because the disk failed (written back when it works).",
            self.queue_buffered_records.clone(),
        );
        r.register(
            "queue_buffered_bytes",
            "Bytes held in memory because the disk failed.",
            self.queue_buffered_bytes.clone(),
        );
        r.register(
            "queue_write_errors",
            "Failed queue writes and syncs, retries included (disk full, I/O errors).",
            self.queue_write_errors.clone(),
        );
        r.register(
            "queue_unverified_records",
            "Records written since the last successful sync when a write or sync failed: possibly lost by a power loss until re-verified.",
            self.queue_unverified_records.clone(),
        );
        r.register(
            "queue_quarantined",
            "Corrupt queues moved aside at start-up (a fresh queue was started).",
            self.queue_quarantined.clone(),
        );
        r.register(
            "gateway_connected",
            "1 while a gateway connection is established.",
            self.connected.clone(),
        );
        r.register(
            "gateway_connection_attempts",
            "Connection attempts to a gateway.",
            self.connection_attempts.clone(),
        );
        r.register(
            "gateway_connection_failures",
            "Connection attempts that failed or sessions that ended abnormally.",
            self.connection_failures.clone(),
        );
        r.register(
            "sd_refresh_failures",
            "Service discovery refreshes that failed (unreadable file, HTTP error, DNS lookup), by mechanism.",
            self.sd_refresh_failures.clone(),
        );
        r.register(
            "remote_write_requests",
            "Remote-write requests received, by HTTP status answered.",
            self.remote_write_requests.clone(),
        );
        r.register(
            "remote_write_samples",
            "Float samples of remote-write requests durably appended to the queue.",
            self.remote_write_samples.clone(),
        );
        r.register(
            "remote_write_dropped",
            "Remote-written items not queued, by kind (sample, histogram, exemplar) and reason \
             (unsupported: the queue stores float samples only; invalid: the series was invalid).",
            self.remote_write_dropped.clone(),
        );
    }

    /// Mirrors the queue's health; `before` is the previous observation (counters grow by
    /// the difference).
    pub fn observe_queue(&self, before: &QueueStats, now: &QueueStats) {
        self.queue_degraded.set(i64::from(now.degraded));
        self.queue_buffered_records.set(now.buffered_records as i64);
        self.queue_buffered_bytes.set(now.buffered_bytes as i64);
        let grew = |a: u64, b: u64| b.saturating_sub(a);
        self.queue_write_errors
            .inc_by(grew(before.write_errors, now.write_errors));
        self.queue_unverified_records
            .inc_by(grew(before.unverified_records, now.unverified_records));
        self.queue_quarantined
            .inc_by(grew(before.quarantined, now.quarantined));
        let dropped = grew(before.dropped_samples, now.dropped_samples);
        if dropped > 0 || now.dropped_records > before.dropped_records {
            self.retention_dropped
                .get_or_create(&vec![("reason".to_owned(), "buffer_full".to_owned())])
                .inc_by(dropped);
            self.samples_dropped.inc_by(dropped);
        }
    }

    /// The failure counter a discovery provider of `mechanism` (`file`, `http`, `dns`) is given.
    pub fn sd_failures(&self, mechanism: &str) -> Counter {
        self.sd_refresh_failures
            .get_or_create(&vec![("mechanism".to_owned(), mechanism.to_owned())])
            .clone()
    }

    pub fn job(job: &str) -> JobLabels {
        vec![("job".to_owned(), job.to_owned())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_health_is_mirrored_and_buffer_drops_counted_by_reason() {
        let m = Metrics::default();
        let before = QueueStats::default();
        let now = QueueStats {
            degraded: true,
            buffered_records: 4,
            buffered_bytes: 400,
            write_errors: 2,
            unverified_records: 3,
            dropped_records: 1,
            dropped_samples: 50,
            quarantined: 1,
        };
        m.observe_queue(&before, &now);
        m.observe_queue(&now, &now);
        assert_eq!(m.queue_degraded.get(), 1);
        assert_eq!(m.queue_buffered_bytes.get(), 400);
        assert_eq!(m.queue_write_errors.get(), 2);
        assert_eq!(m.queue_unverified_records.get(), 3);
        assert_eq!(m.queue_quarantined.get(), 1);
        assert_eq!(m.samples_dropped.get(), 50);
        let reason = vec![("reason".to_owned(), "buffer_full".to_owned())];
        assert_eq!(m.retention_dropped.get_or_create(&reason).get(), 50);
    }
}

/// `batch_ack_duration_seconds`: a histogram from 1 ms to about 65 s.
#[derive(Clone)]
pub struct AckDuration(pub Histogram);

impl Default for AckDuration {
    fn default() -> Self {
        AckDuration(Histogram::new(exponential_buckets(0.001, 2.0, 17)))
    }
}

impl AckDuration {
    pub fn observe(&self, seconds: f64) {
        self.0.observe(seconds);
    }
}
