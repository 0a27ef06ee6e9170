//! The shipper: one outbound mTLS QUIC connection to a gateway, batches in flight on streams
//! of their own, deletion only on acknowledgement.
//!
//! Batches use the compact encoding (`uplink_shared::codec`): the encoder's state lives as long
//! as the connection, so series definitions and previous values are sent again after every
//! reconnect.
//!
//! Session protocol (see `uplink_shared::wire`): hello on the control stream with the queue's
//! first unacknowledged sequence number, then contiguous batches, each on its own stream. The
//! gateway forwards in order and answers acks in order. Any trouble (retry ack, lost stream,
//! ack timeout, dead connection) ends the session: the connection is closed, and after a
//! jittered exponential backoff a new session resends everything from the first record still
//! in the queue. That keeps per-series order and makes loss impossible by construction: a
//! record leaves the queue only through [`Queue::delete`] after an [`AckStatus::Accepted`].
//!
//! Acks can arrive out of order (each travels on its batch's stream, and a lost packet delays
//! one but not the next). A batch is deleted only once every batch before it in the session was
//! acknowledged too ([`AckedPrefix`]), so the queue never has a hole: the next session resends
//! a contiguous range from its first record, which is what the gateway's dedupe cursor counts
//! in (it skips the first `cursor - first_seq` records of a resent batch by position).
//!
//! Shutdown (after the scrapers stopped, so the queue no longer grows): keep shipping until the
//! queue is empty and every ack is in, bounded by a drain deadline (the ack timeout, at most
//! 10 s); then close the connection with [`CloseCode::Normal`]. Whatever is left stays on disk
//! for the next start.

use std::net::SocketAddr;
use std::time::Duration;

use std::collections::HashMap;

use bytes::Bytes;
use rand::Rng;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use uplink_shared::codec::{CodecError, ScrapeRecord, TunnelEncoder};
use uplink_shared::quic;
use uplink_shared::traces;
use uplink_shared::wire::{
    self, Ack, AckStatus, Batch, CloseCode, Encoding, Frame, Hello, MAX_CONTROL_FRAME, Status,
    WireError,
};

use crate::config::ShipperConfig;
use crate::metrics::Metrics;
use crate::queue::{Queue, QueueError, Record};

/// Why a session ended (none of these lose data: the queue still holds every unacked record).
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// No gateway address resolved.
    #[error("cannot resolve gateway {0}")]
    Resolve(String),
    /// No local UDP socket could be bound.
    #[error("bind: {0}")]
    Bind(std::io::Error),
    /// The QUIC handshake failed (TLS, unreachable, refused).
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed by the gateway.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing a stream failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading a frame failed (lost stream, malformed or oversized frame, timeout).
    #[error("read: {0}")]
    Read(#[from] quic::ReadFrameError),
    /// The gateway sent something the protocol does not allow.
    #[error("protocol: {0}")]
    Wire(#[from] WireError),
    /// The gateway asked for the batch to be sent again.
    #[error("gateway asked to retry batch {first_seq}: {message}")]
    Retry { first_seq: u64, message: String },
    /// No ack within the ack timeout.
    #[error("no ack within {0:?}")]
    AckTimeout(Duration),
    /// The local queue failed.
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    /// Encoding a batch failed.
    #[error("encode: {0}")]
    Codec(#[from] CodecError),
}

/// Jittered exponential backoff ("full jitter" between half and the whole step).
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            step: min,
        }
    }
    pub fn reset(&mut self) {
        self.step = self.min;
    }
    /// The next delay; doubles the step up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }
}

/// The acknowledged batches of a session, deleted from the queue only as a contiguous prefix.
#[derive(Debug)]
struct AckedPrefix {
    /// The first record not yet deleted (the session's resume point at first).
    next: u64,
    /// Acknowledged batches beyond `next`: first seq → end.
    ahead: std::collections::BTreeMap<u64, u64>,
}

impl AckedPrefix {
    fn new(from: u64) -> AckedPrefix {
        AckedPrefix {
            next: from,
            ahead: Default::default(),
        }
    }

    /// Records batch `first..end` as acknowledged; returns the range that may be deleted now
    /// (empty when an earlier batch is still unacknowledged).
    fn acked(&mut self, first: u64, end: u64) -> std::ops::Range<u64> {
        if end > self.next {
            self.ahead.insert(first.max(self.next), end);
        }
        let from = self.next;
        while let Some(end) = self.ahead.remove(&self.next) {
            self.next = self.next.max(end);
        }
        from..self.next
    }
}

/// Ships queue records to the gateway.
pub struct Shipper {
    pub gateways: Vec<String>,
    pub server_name: String,
    /// The QUIC client configuration, replaced when the TLS files change (used from the next
    /// connection on).
    pub client: tokio::sync::watch::Receiver<quinn::ClientConfig>,
    pub cfg: ShipperConfig,
    pub queue: Queue,
    pub metrics: Metrics,
}

enum End {
    Shutdown,
}

impl Shipper {
    /// Connects, ships, reconnects, until `shutdown`; then drains in-flight acks and closes.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.cfg.min_backoff.0, self.cfg.max_backoff.0);
        let mut endpoint: Option<quinn::Endpoint> = None;
        let mut next_gw = 0usize;
        while !shutdown.is_cancelled() {
            let gw = &self.gateways[next_gw % self.gateways.len()];
            next_gw += 1;
            self.metrics.connection_attempts.inc();
            let result = self
                .session(gw, &mut endpoint, &mut backoff, &shutdown)
                .await;
            self.metrics.connected.set(0);
            match result {
                Ok(End::Shutdown) => break,
                Err(error) => {
                    self.metrics.connection_failures.inc();
                    warn!(%error, gateway = %gw, "Gateway session ended; will reconnect.");
                }
            }
            let delay = backoff.next_delay();
            debug!(?delay, "Backing off before reconnecting.");
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        if let Some(ep) = endpoint {
            ep.close(
                CloseCode::Normal.as_u32().into(),
                CloseCode::Normal.reason(),
            );
            ep.wait_idle().await;
        }
        if let Err(error) = self.queue.flush().await {
            warn!(%error, "Flushing the queue on shutdown failed.");
        }
    }

    async fn connect(
        &self,
        gw: &str,
        endpoint: &mut Option<quinn::Endpoint>,
    ) -> Result<quinn::Connection, ShipError> {
        let addr: SocketAddr = tokio::net::lookup_host(gw)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ShipError::Resolve(gw.into()))?;
        let ep = match endpoint {
            Some(ep) => ep.clone(),
            None => {
                let bind: SocketAddr = if addr.is_ipv6() {
                    "[::]:0".parse().unwrap_or(addr)
                } else {
                    "0.0.0.0:0".parse().unwrap_or(addr)
                };
                let ep = quinn::Endpoint::client(bind).map_err(ShipError::Bind)?;
                *endpoint = Some(ep.clone());
                ep
            }
        };
        let client = self.client.borrow().clone();
        Ok(ep.connect_with(client, addr, &self.server_name)?.await?)
    }

    async fn session(
        &self,
        gw: &str,
        endpoint: &mut Option<quinn::Endpoint>,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<End, ShipError> {
        let conn = self.connect(gw, endpoint).await?;
        let mut cursor = self.queue.first().await?;
        let mut acked = AckedPrefix::new(cursor);
        // Handshake on the control stream; it stays open for the session's lifetime.
        let (mut ctl_send, mut ctl_recv) = conn.open_bi().await?;
        let hello = Frame::Hello(Hello {
            version: wire::VERSION,
            queue_id: self.queue.queue_id(),
            resume_seq: cursor,
            agent: concat!("uplink-agent/", env!("CARGO_PKG_VERSION")).into(),
        });
        ctl_send.write_all(&hello.to_bytes()).await?;
        let welcome =
            quic::read_frame(&mut ctl_recv, MAX_CONTROL_FRAME, self.cfg.ack_timeout.0).await?;
        let Frame::Welcome(welcome) = welcome else {
            conn.close(
                CloseCode::ProtocolViolation.as_u32().into(),
                CloseCode::ProtocolViolation.reason(),
            );
            return Err(WireError::Unexpected {
                got: welcome.name(),
                expected: "welcome",
            }
            .into());
        };
        info!(
            gateway = %gw,
            identity = %welcome.identity,
            resume_seq = cursor,
            "Connected to gateway."
        );
        self.metrics.connected.set(1);
        backoff.reset();

        let max_bytes = (self.cfg.max_batch_bytes.get() as usize)
            .min(welcome.max_batch_bytes as usize)
            .saturating_sub(64);
        let max_in_flight = self.cfg.max_in_flight.get() as usize;
        let ack_timeout = self.cfg.ack_timeout.0;
        let mut head = self.queue.subscribe();
        let mut in_flight: JoinSet<Result<(Ack, u64), ShipError>> = JoinSet::new();
        let mut drain_deadline: Option<Instant> = None;
        // Connection-scoped codec state: starts empty with every connection (ADR 002).
        let mut encoder = TunnelEncoder::new(self.cfg.zstd_level);
        let mut defined_at = Instant::now();
        let mut acks_since_gc = 0u32;
        let max_records = self.cfg.max_batch_records.get() as usize;
        let batch_delay = self.cfg.batch_delay.0;
        let mut waiting_since: Option<Instant> = None;
        let mut status_tick = tokio::time::interval(self.cfg.status_interval.0);
        let mut last_status: Option<(Status, Instant)> = None;

        let result = loop {
            // Fill the pipeline with contiguous batches.
            while in_flight.len() < max_in_flight && cursor < self.queue.head() {
                // Small batches cost packets and compress worse: wait up to `batch_delay` for a
                // full batch (not while draining for shutdown).
                let available = self.queue.head() - cursor;
                let since = *waiting_since.get_or_insert_with(Instant::now);
                if drain_deadline.is_none()
                    && available < max_records as u64
                    && since.elapsed() < batch_delay
                {
                    break;
                }
                waiting_since = None;
                let records = self.queue.read(cursor, max_records, max_bytes).await?;
                let Some(last) = records.last() else { break };
                let first_seq = cursor;
                // The queue holds a contiguous suffix, so the read starts at the cursor.
                let count = (last.seq - first_seq + 1) as u32;
                cursor = last.seq + 1;
                let redefine = self.cfg.redefine_interval.0;
                if !redefine.is_zero() && defined_at.elapsed() >= redefine {
                    encoder.reset_next();
                    defined_at = Instant::now();
                }
                let (payload, samples) = self.encode(&mut encoder, &records).await?;
                // A root span per batch (exported only when tracing samples it); its context
                // travels with the batch so the gateway's spans join this trace.
                let span = info_span!(
                    parent: None,
                    "uplink.agent.ship",
                    otel.kind = "client",
                    uplink.first_seq = first_seq,
                    uplink.records = count,
                    uplink.samples = samples,
                    uplink.bytes = payload.len(),
                    uplink.ack = tracing::field::Empty,
                );
                let batch = Batch {
                    first_seq,
                    count,
                    encoding: Encoding::Compact,
                    trace: traces::context_of(&span),
                    payload,
                };
                self.metrics.batches_sent.inc();
                self.metrics.samples_shipped.inc_by(samples);
                self.metrics.bytes_sent.inc_by(batch.payload.len() as u64);
                let conn = conn.clone();
                let ack_duration = self.metrics.ack_duration.clone();
                in_flight.spawn(
                    async move {
                        let sent = Instant::now();
                        let ack = tokio::time::timeout(ack_timeout, send_batch(&conn, batch))
                            .await
                            .map_err(|_| ShipError::AckTimeout(ack_timeout))??;
                        // Send to ack: the round trip plus the gateway's durable commit.
                        ack_duration.observe(sent.elapsed().as_secs_f64());
                        tracing::Span::current().record(
                            "uplink.ack",
                            match ack.status {
                                AckStatus::Accepted => "accepted",
                                AckStatus::Retry => "retry",
                            },
                        );
                        Ok((ack, samples))
                    }
                    .instrument(span),
                );
            }
            if drain_deadline.is_some() && in_flight.is_empty() && cursor >= self.queue.head() {
                break Ok(End::Shutdown);
            }
            tokio::select! {
                Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                    let (ack, samples) = match joined {
                        Ok(r) => r?,
                        Err(join) => break Err(ShipError::Queue(QueueError::Join(join))),
                    };
                    match ack.status {
                        AckStatus::Accepted => {
                            let done = acked.acked(ack.first_seq, ack.first_seq + u64::from(ack.count));
                            let mut from = done.start;
                            while from < done.end {
                                let n = (done.end - from).min(u64::from(u32::MAX)) as u32;
                                self.queue.delete(from, n).await?;
                                from += u64::from(n);
                            }
                            acks_since_gc += 1;
                            if acks_since_gc >= 256 {
                                acks_since_gc = 0;
                                self.queue.gc_sets().await?;
                            }
                            self.metrics.batches_acked.inc();
                            self.metrics.samples_acked.inc_by(samples);
                            let (records, bytes) = self.queue.usage();
                            self.metrics.queue_records.set(records as i64);
                            self.metrics.queue_bytes.set(bytes as i64);
                        }
                        AckStatus::Retry => {
                            self.metrics.batches_retried.inc();
                            break Err(ShipError::Retry { first_seq: ack.first_seq, message: ack.message });
                        }
                    }
                }
                _ = sleep_until(waiting_since.map(|t| t + batch_delay)),
                    if waiting_since.is_some() && in_flight.len() < max_in_flight => {}
                changed = head.changed(), if drain_deadline.is_none() => {
                    if changed.is_err() { break Ok(End::Shutdown); }
                }
                reason = conn.closed() => break Err(reason.into()),
                _ = status_tick.tick() => {
                    // Every interval while backlogged or after a drop; otherwise a heartbeat
                    // every four intervals (bytes matter on metered links).
                    let status = self.status().await?;
                    let due = match &last_status {
                        None => true,
                        Some((prev, at)) => {
                            status.backlog_records > max_records as u64
                                || prev.backlog_records > max_records as u64
                                || status.dropped_samples != prev.dropped_samples
                                || at.elapsed() >= self.cfg.status_interval.0 * 4
                        }
                    };
                    if due {
                        ctl_send.write_all(&Frame::Status(status.clone()).to_bytes()).await?;
                        last_status = Some((status, Instant::now()));
                    }
                }
                _ = shutdown.cancelled(), if drain_deadline.is_none() => {
                    drain_deadline = Some(Instant::now() + ack_timeout.min(Duration::from_secs(10)));
                }
                _ = sleep_until(drain_deadline), if drain_deadline.is_some() => {
                    break Ok(End::Shutdown);
                }
            }
        };
        if result.is_err() {
            self.metrics.batches_retried.inc_by(in_flight.len() as u64);
        }
        in_flight.abort_all();
        let _ = ctl_send.finish();
        conn.close(
            CloseCode::Normal.as_u32().into(),
            CloseCode::Normal.reason(),
        );
        result
    }
}

impl Shipper {
    /// The agent's state for the gateway's freshness ledger.
    async fn status(&self) -> Result<Status, ShipError> {
        let (records, bytes) = self.queue.usage();
        let first = self.queue.first().await?;
        let oldest = self
            .queue
            .read(first, 1, 0)
            .await?
            .first()
            .and_then(|r| ScrapeRecord::decode(&r.data).ok())
            .map_or(0, |r| r.timestamp);
        Ok(Status {
            backlog_records: records,
            backlog_bytes: bytes,
            oldest_timestamp_ms: oldest,
            dropped_samples: self.metrics.samples_dropped.get(),
        })
    }

    /// Encodes queue records for this connection. A record that cannot be decoded, or whose
    /// series set definition is missing, is skipped and counted (it is still covered by the
    /// batch's range, so it is deleted with the ack instead of jamming the queue).
    async fn encode(
        &self,
        encoder: &mut TunnelEncoder,
        records: &[Record],
    ) -> Result<(Bytes, u64), ShipError> {
        let mut decoded = Vec::with_capacity(records.len());
        for r in records {
            match ScrapeRecord::decode(&r.data) {
                Ok(rec) => decoded.push(rec),
                Err(error) => {
                    self.metrics.records_corrupt.inc();
                    warn!(%error, seq = r.seq, "Skipping undecodable queue record.");
                }
            }
        }
        encoder.prepare();
        let mut missing: Vec<u64> = decoded
            .iter()
            .map(|r| r.set_id)
            .filter(|id| !encoder.knows(*id))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        let defs = if missing.is_empty() {
            HashMap::new()
        } else {
            self.queue.sets(missing).await?
        };
        decoded.retain(|r| {
            let ok = encoder.knows(r.set_id) || defs.contains_key(&r.set_id);
            if !ok {
                self.metrics.records_corrupt.inc();
                self.metrics.samples_dropped.inc_by(r.values.len() as u64);
                warn!(
                    set = format!("{:016x}", r.set_id),
                    "Skipping record whose series set is missing."
                );
            }
            ok
        });
        Ok(encoder.encode(&decoded, &defs)?)
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Sends one batch on its own stream and waits for its ack.
async fn send_batch(conn: &quinn::Connection, batch: Batch) -> Result<Ack, ShipError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&Frame::Batch(batch.clone()).to_bytes())
        .await?;
    send.finish()
        .map_err(|_| ShipError::Connection(quinn::ConnectionError::LocallyClosed))?;
    let frame = quic::read_only_frame(&mut recv, MAX_CONTROL_FRAME).await?;
    Ok(wire::expect_ack(frame, &batch)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_delete_only_a_contiguous_prefix() {
        let mut a = AckedPrefix::new(10);
        // The second batch's ack arrives first: nothing may go (a hole would follow).
        assert!(a.acked(15, 20).is_empty());
        // Its duplicate changes nothing.
        assert!(a.acked(15, 20).is_empty());
        // The first arrives: both go.
        assert_eq!(a.acked(10, 15), 10..20);
        // A duplicate ack of something deleted frees nothing.
        assert!(a.acked(12, 15).is_empty());
        assert_eq!(a.acked(20, 21), 20..21);
        // Out of order by more than one.
        assert!(a.acked(23, 24).is_empty());
        assert!(a.acked(22, 23).is_empty());
        assert_eq!(a.acked(21, 22), 21..24);
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let d: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[5] >= Duration::from_millis(400) && d[5] <= Duration::from_millis(800));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
