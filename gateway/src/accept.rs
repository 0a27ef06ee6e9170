//! Accepting agents: QUIC endpoint, mTLS identity, handshake, batch streams, ordered durable
//! storage, acks.
//!
//! Per connection: the TLS handshake verifies the client certificate against the client CA
//! (quinn/rustls refuse anything else); the identity is read from the certificate (no identity:
//! close 4). The first stream must carry a valid hello within `handshake_timeout` (else close 6,
//! or 3 for a version mismatch). Each later stream carries one batch: it is read with a hard
//! size limit (over it: close 2), decoded (malformed: close 1), then handed to the connection's
//! [`Sequencer`], which releases batches in sequence order to one storing task. That task
//! decodes compact batches (their codec state is connection-scoped, so order matters), stores
//! them ([`Store::commit`]: the remote-write body for every destination and the agent queue's
//! dedupe cursor, one atomic write) and only then answers `Accepted`. Delivery to the
//! destinations happens later, independently (`fanout.rs`); with `storage.ack: delivered` the
//! answer also waits until every destination has answered for everything stored so far
//! (`Store::wait_delivered`), a retransmission's answer included. If storing fails, that batch and
//! every later one are answered `Retry`, so the agent resends in order. A bad peer only ever
//! closes its own connection.
//!
//! # Dedupe
//! Per (identity, queue id) a *lane* holds the dedupe cursor (one past the last record stored),
//! loaded from the store on first use, behind a lock that every connection of that queue holds
//! while it stores a batch. Records below the cursor were stored before (on this connection, an
//! earlier one, or before a restart) and are acknowledged without being stored again. A
//! connection that ends never abandons a commit half-way: its storing task finishes the batches
//! already released before it lets the lane go. With `dedupe.etcd`, the lane also follows the
//! cursor several gateways share (`dedupe.rs`): read when a connection stores its first batch,
//! raised before any batch is acknowledged, so a resend to another gateway after a lost ack is
//! skipped there too.
//!
//! # Shutdown
//! New connections are refused; each session stops accepting batch streams, finishes the
//! batches already received (storing and acking them, bounded by [`FINISH_ACKS`]), then closes
//! with code 7 (going away).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};
use uplink_shared::codec::{CodecError, Decoded, LabelLimits, LabelReject, TunnelDecoder};
use uplink_shared::model;
use uplink_shared::quic::{self, ReadFrameError};
use uplink_shared::remote_write::{self, TimeSeries, WriteRequest};
use uplink_shared::traces::{self, TraceContext};
use uplink_shared::wire::{
    self, Ack, AckStatus, CloseCode, Encoding, Frame, MAX_CONTROL_FRAME, Offered, Sequencer,
};

use crate::config::{AckPolicy, Limits};
use crate::ledger::Ledger;
use crate::metrics::{Metrics, labels};
use crate::store::{Commit, Entry, Store};
use uplink_shared::model::Stamp;

/// On shutdown, how long a session may take to store and ack the batches it already received.
pub const FINISH_ACKS: Duration = Duration::from_secs(3);

/// What every connection handler needs.
pub struct Context {
    pub limits: Limits,
    pub store: Store,
    pub metrics: Metrics,
    pub ledger: Arc<Ledger>,
    /// The dedupe lanes, see the module docs.
    pub lanes: Lanes,
    /// Acknowledge once stored, or once delivered everywhere.
    pub ack: AckPolicy,
    /// How agents' identities are read from their certificates.
    pub identity: uplink_shared::tls::IdentityRules,
    /// Labels stamped from identities, if configured.
    pub tenancy: Option<crate::config::TenancyConfig>,
    /// Per-tenant ingest rates.
    pub rates: crate::limits::TenantLimits,
    /// HA replica elections, if configured.
    pub ha: Option<Arc<crate::ha::Tracker>>,
    /// Dedupe cursors shared with other gateways, if configured.
    pub shared_cursors: Option<Arc<crate::dedupe::SharedCursors>>,
    /// Open agent connections (for the per-identity limit and CRL reloads).
    pub conns: Mutex<OpenConns>,
    /// Handshakes in progress (for `limits.retry_above_handshakes`).
    pub handshakes: std::sync::atomic::AtomicU32,
    /// Active-series budgets of the tenants with `max_series`.
    pub series_budgets: HashMap<String, Arc<crate::limits::SeriesBudget>>,
}

/// The open agent connections: by quinn's stable id, with the certificate's issuer and serial
/// (a CRL reload closes those it revokes), and how many each identity holds.
#[derive(Default)]
pub struct OpenConns {
    by_id: HashMap<usize, (quinn::Connection, Option<uplink_shared::tls::IssuerSerial>)>,
    per_identity: HashMap<String, u32>,
}

impl OpenConns {
    /// Registers `conn` of `identity`, unless the identity already holds `max`; returns how
    /// many it holds then.
    fn open(&mut self, conn: &quinn::Connection, identity: &str, max: u32) -> Result<u32, u32> {
        let held = self.per_identity.get(identity).copied().unwrap_or(0);
        if held >= max {
            return Err(held + 1);
        }
        self.per_identity.insert(identity.to_owned(), held + 1);
        let cert_id = uplink_shared::tls::peer_cert(conn)
            .and_then(|c| uplink_shared::tls::issuer_serial(c.as_ref()));
        self.by_id.insert(conn.stable_id(), (conn.clone(), cert_id));
        Ok(held + 1)
    }

    fn closed(&mut self, conn: &quinn::Connection, identity: &str) {
        self.by_id.remove(&conn.stable_id());
        if let Some(n) = self.per_identity.get_mut(identity) {
            *n -= 1;
            if *n == 0 {
                self.per_identity.remove(identity);
            }
        }
    }
}

/// Per (identity, queue id): the dedupe lane.
pub type Lanes = Mutex<HashMap<(String, u64), Lane>>;
type Lane = Arc<tokio::sync::Mutex<LaneState>>;

/// What a lane knows.
#[derive(Default)]
pub struct LaneState {
    /// The dedupe cursor; `None` until loaded from the store.
    floor: Option<u64>,
    /// The shared cursor as last read or written (with `dedupe.etcd`).
    shared: crate::dedupe::Shared,
}

impl Context {
    /// With `ack: delivered`, waits until everything stored so far has been answered by every
    /// destination (so the batch just stored, or stored before, is delivered or counted).
    async fn delivered(&self) {
        if self.ack == AckPolicy::Delivered {
            self.store.wait_delivered(self.store.head()).await;
        }
    }

    /// What the decoder stamps on an agent's series: its tenancy labels, and the removal of
    /// the HA replica label. `None` when neither is configured.
    fn stamp(&self, id: &uplink_shared::tls::Identity) -> Option<Arc<Stamp>> {
        if self.tenancy.is_none() && self.ha.is_none() {
            return None;
        }
        let mut stamp = self
            .tenancy
            .as_ref()
            .map(|t| t.stamp(id))
            .unwrap_or_default();
        if let Some(ha) = &self.ha {
            stamp.remove.push(ha.labels().1.to_owned());
        }
        Some(Arc::new(stamp))
    }

    /// Closes every open connection whose certificate `revoked` lists (code 4, unauthorized);
    /// returns how many.
    pub fn close_revoked(
        &self,
        revoked: &std::collections::HashSet<uplink_shared::tls::IssuerSerial>,
    ) -> usize {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let mut closed = 0;
        for (conn, id) in conns.by_id.values() {
            if id.as_ref().is_some_and(|id| revoked.contains(id)) {
                warn!(remote = %conn.remote_address(), "Agent certificate revoked; disconnecting.");
                close(self, conn, CloseCode::Unauthorized);
                closed += 1;
            }
        }
        closed
    }

    /// The largest batch frame an identity may send: `limits.max_batch_bytes`, or its tenant's
    /// `max_batch_bytes` when smaller (announced in the welcome, so agents keep to it).
    fn max_batch_bytes(&self, identity: &str) -> u32 {
        let global = self.limits.max_batch_bytes.get();
        crate::metrics::tenant_of(identity)
            .and_then(|t| self.tenancy.as_ref()?.tenants.get(t)?.max_batch_bytes)
            .map_or(global, |t| t.min(global))
    }

    /// The label limits of an identity's tenant, if it has any.
    fn label_limits(&self, identity: &str) -> Option<LabelLimits> {
        let tenant = crate::metrics::tenant_of(identity)?;
        self.tenancy.as_ref()?.tenants.get(tenant)?.label_limits()
    }

    fn lane(&self, identity: &str, queue_id: u64) -> Lane {
        let mut g = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        g.entry((identity.to_owned(), queue_id))
            .or_default()
            .clone()
    }
}

/// Accepts connections until `shutdown`; then refuses new ones, lets sessions finish their
/// acks and close with [`CloseCode::GoingAway`].
pub async fn serve(endpoint: quinn::Endpoint, ctx: Arc<Context>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        // Under a handshake flood, make new peers prove their address first (stateless).
        let busy = ctx.handshakes.load(std::sync::atomic::Ordering::Relaxed);
        if busy >= ctx.limits.retry_above_handshakes && !incoming.remote_address_validated() {
            if incoming.retry().is_ok() {
                ctx.metrics.handshake_retries.inc();
            }
            continue;
        }
        let ctx = ctx.clone();
        let remote = incoming.remote_address();
        let shutdown = shutdown.clone();
        tracker.spawn(
            async move { handle(incoming, ctx, shutdown).await }
                .instrument(info_span!("agent", %remote)),
        );
    }
    // Refuse new connections; sessions finish their acks (bounded) and close themselves.
    endpoint.set_server_config(None);
    tracker.close();
    let _ = tokio::time::timeout(FINISH_ACKS + Duration::from_secs(2), tracker.wait()).await;
    endpoint.close(
        CloseCode::GoingAway.as_u32().into(),
        CloseCode::GoingAway.reason(),
    );
    endpoint.wait_idle().await;
}

/// A failed handshake's reason: the TLS alert the handshake ended with, by name.
fn handshake_reason(error: &quinn::ConnectionError) -> &'static str {
    let code = match error {
        quinn::ConnectionError::TransportError(e) => u64::from(e.code),
        quinn::ConnectionError::ConnectionClosed(c) => u64::from(c.error_code),
        quinn::ConnectionError::TimedOut => return "timeout",
        _ => return "other",
    };
    match code.checked_sub(0x100) {
        Some(42) => "bad_certificate",
        Some(43) => "unsupported_certificate",
        Some(44) => "certificate_revoked",
        Some(45) => "certificate_expired",
        Some(46) => "certificate_unknown",
        Some(48) => "unknown_ca",
        Some(116) => "certificate_required",
        Some(0..=0xff) => "tls_other",
        _ => "other",
    }
}

fn close(ctx: &Context, conn: &quinn::Connection, code: CloseCode) {
    ctx.metrics
        .closes
        .get_or_create(&labels(&[("code", &code.as_u32().to_string())]))
        .inc();
    quic::close(conn, code);
}

async fn handle(incoming: quinn::Incoming, ctx: Arc<Context>, shutdown: CancellationToken) {
    let hs = ctx.limits.handshake_timeout.0;
    let failed = |reason: &str| {
        ctx.metrics
            .handshake_failures
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
    };
    ctx.handshakes
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let handshake = tokio::time::timeout(hs, incoming).await;
    ctx.handshakes
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    let conn = match handshake {
        Ok(Ok(c)) => c,
        Ok(Err(error)) => {
            debug!(%error, "TLS/QUIC handshake failed.");
            failed(handshake_reason(&error));
            return;
        }
        Err(_) => {
            debug!("TLS/QUIC handshake timed out.");
            failed("timeout");
            return;
        }
    };
    let (identity, stamp) = match uplink_shared::tls::peer_identity_with(&conn, &ctx.identity) {
        Ok(id) => (id.key(), ctx.stamp(&id)),
        Err(error) => {
            warn!(%error, "Client certificate carries no usable identity; closing.");
            ctx.metrics
                .identity_refusals
                .get_or_create(&labels(&[("reason", error.reason())]))
                .inc();
            close(&ctx, &conn, CloseCode::Unauthorized);
            return;
        }
    };
    let max = ctx.limits.max_connections_per_identity.get();
    let opened = ctx
        .conns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .open(&conn, &identity, max);
    if let Err(held) = opened {
        warn!(agent = %identity, held, "Too many connections for one identity; closing the new one.");
        close(&ctx, &conn, CloseCode::TooManyConnections);
        return;
    }
    let span = info_span!("session", agent = %identity);
    async {
        ctx.metrics.connections.inc();
        ctx.metrics.agents_connected.inc();
        ctx.ledger.connected(&identity);
        let code = session(&conn, &identity, stamp, &ctx, &shutdown).await;
        ctx.ledger.disconnected(&identity);
        ctx.metrics.agents_connected.dec();
        if let Some(code) = code {
            close(&ctx, &conn, code);
        }
    }
    .instrument(span)
    .await;
    ctx.conns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .closed(&conn, &identity);
}

/// A batch's content: ready to store, or still in the connection-scoped compact encoding
/// (decoded by the storing task, in sequence order).
enum Payload {
    Ready {
        body: Bytes,
        samples: u64,
        newest: i64,
        /// HA (cluster, replica) of the first series, as sent.
        ha: Option<(String, String)>,
        /// Samples the tenant's label limits refused, by reason.
        rejected: [u64; 4],
        /// `remote_write::extras` bits of the body.
        extras: u8,
    },
    Compact(Bytes),
}

/// One batch on its way to the storing task, with where to send the answer.
struct Pending {
    payload: Payload,
    reply: oneshot::Sender<Ack>,
    first_seq: u64,
    count: u32,
    /// The batch's `uplink.gateway.ingest` span (see `uplink_shared::traces`).
    span: tracing::Span,
}

/// Runs a session; returns the close code to use, or `None` if the connection is already gone.
async fn session(
    conn: &quinn::Connection,
    identity: &str,
    stamp: Option<Arc<Stamp>>,
    ctx: &Arc<Context>,
    shutdown: &CancellationToken,
) -> Option<CloseCode> {
    let hs = ctx.limits.handshake_timeout.0;
    let (mut ctl_send, mut ctl_recv) = match tokio::time::timeout(hs, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => return None,
        Err(_) => return Some(CloseCode::HandshakeTimeout),
    };
    let hello = match quic::read_frame(&mut ctl_recv, MAX_CONTROL_FRAME, hs).await {
        Ok(f) => f,
        Err(ReadFrameError::Connection(_)) => return None,
        Err(e) => {
            warn!(error = %e, "Bad hello.");
            return Some(e.close_code());
        }
    };
    let Frame::Hello(h) = &hello else {
        return Some(CloseCode::ProtocolViolation);
    };
    let (queue_id, resume_seq) = (h.queue_id, h.resume_seq);
    // The batch size this agent is told to keep to: the global limit, or its tenant's.
    let max_batch = ctx.max_batch_bytes(identity);
    let welcome = match wire::accept_hello(hello, identity, max_batch) {
        Ok(w) => w,
        Err(code) => {
            warn!(?code, "Refusing hello.");
            return Some(code);
        }
    };
    if ctl_send
        .write_all(&Frame::Welcome(welcome).to_bytes())
        .await
        .is_err()
    {
        return None;
    }
    info!(
        queue_id = format!("{queue_id:016x}"),
        resume_seq, "Agent connected."
    );

    let label_limits = ctx.label_limits(identity);
    let (tx, rx) = mpsc::channel::<Pending>(ctx.limits.max_streams_per_agent.get() as usize);
    let (violation_tx, mut violation_rx) = mpsc::channel::<CloseCode>(1);
    // Not aborted when the session ends: it finishes the batches already released (a commit is
    // never abandoned half-way) and ends when every sender is gone.
    tokio::spawn(store_in_order(
        rx,
        resume_seq,
        ctx.clone(),
        (identity.to_owned(), stamp.clone()),
        queue_id,
        violation_tx.clone(),
    ));
    // The control stream now carries the agent's status reports.
    let control = tokio::spawn(read_status(
        ctl_recv,
        ctx.clone(),
        identity.to_owned(),
        violation_tx.clone(),
    ));
    let mut streams = tokio::task::JoinSet::new();
    let code = loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                // Stop taking batches; answer those received.
                let finish = async { while streams.join_next().await.is_some() {} };
                let _ = tokio::time::timeout(FINISH_ACKS, finish).await;
                break Some(CloseCode::GoingAway);
            }
            Some(code) = violation_rx.recv() => break Some(code),
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    streams.spawn(batch_stream(send, recv, ctx.clone(), (stamp.clone(), label_limits, max_batch), tx.clone(), violation_tx.clone()));
                }
                Err(error) => {
                    info!(%error, "Agent disconnected.");
                    break None;
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    };
    streams.abort_all();
    control.abort();
    code
}

/// Reads the agent's status frames from the control stream into the ledger.
async fn read_status(
    mut recv: quinn::RecvStream,
    ctx: Arc<Context>,
    identity: String,
    violation: mpsc::Sender<CloseCode>,
) {
    loop {
        match quic::read_frame(&mut recv, MAX_CONTROL_FRAME, Duration::from_secs(86_400)).await {
            Ok(Frame::Status(st)) => ctx.ledger.status(&identity, st),
            Ok(other) => {
                warn!(
                    frame = other.name(),
                    "Unexpected frame on the control stream; closing."
                );
                let _ = violation.try_send(CloseCode::ProtocolViolation);
                return;
            }
            Err(ReadFrameError::Wire(e)) => {
                if e != wire::WireError::Truncated {
                    warn!(error = %e, "Bad frame on the control stream; closing.");
                    let _ = violation.try_send(e.close_code());
                }
                return;
            }
            Err(_) => return,
        }
    }
}

/// Reads and decodes one batch stream, hands it to the storing task, writes the ack.
async fn batch_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    ctx: Arc<Context>,
    (stamp, limits, max_batch): (Option<Arc<Stamp>>, Option<LabelLimits>, u32),
    tx: mpsc::Sender<Pending>,
    violation: mpsc::Sender<CloseCode>,
) {
    let limit = max_batch as usize;
    let frame = match quic::read_only_frame(&mut recv, limit).await {
        Ok(f) => f,
        Err(ReadFrameError::Connection(_)) => return,
        Err(e) => {
            warn!(error = %e, "Bad batch frame; closing connection.");
            let _ = violation.try_send(e.close_code());
            return;
        }
    };
    let batch = match wire::expect_batch(frame) {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, "Unexpected frame on a batch stream; closing connection.");
            let _ = violation.try_send(e.close_code());
            return;
        }
    };
    ctx.metrics.batches_received.inc();
    // Ends when the ack is written; a child of the agent's span when the batch carries one.
    let span = info_span!(
        "uplink.gateway.ingest",
        otel.kind = "server",
        uplink.first_seq = batch.first_seq,
        uplink.records = batch.count,
        uplink.bytes = batch.payload.len(),
        uplink.ack = tracing::field::Empty,
    );
    if let Some(parent) = batch.trace {
        traces::set_parent(&span, parent);
    }
    let payload = match batch.encoding {
        Encoding::Compact => Payload::Compact(batch.payload),
        Encoding::RemoteWriteV1Snappy => {
            let max = ctx.limits.max_uncompressed_bytes.get() as usize;
            match remote_write::decode_snappy::<WriteRequest>(&batch.payload, max) {
                Ok(req) => {
                    let newest = req
                        .timeseries
                        .iter()
                        .flat_map(|t| t.samples.iter().map(|s| s.timestamp))
                        .max()
                        .unwrap_or(i64::MIN);
                    let ha = ctx.ha.as_ref().and_then(|h| {
                        let (cluster, replica) = h.labels();
                        let first = &req.timeseries.first()?.labels;
                        let get = |n: &str| model::get(first, n).map(str::to_owned);
                        get(cluster).zip(get(replica))
                    });
                    let extras = remote_write::extras::of(&req.timeseries, &[]);
                    let (body, samples, rejected) =
                        to_remote_write(&ctx, req.timeseries, stamp.as_deref(), limits.as_ref());
                    Payload::Ready {
                        body,
                        samples,
                        newest,
                        ha,
                        rejected,
                        extras,
                    }
                }
                Err(e) => {
                    warn!(error = %e, first_seq = batch.first_seq, "Undecodable batch payload; closing connection.");
                    let code = match e {
                        remote_write::DecodeError::TooLarge { .. } => CloseCode::FrameTooLarge,
                        _ => CloseCode::ProtocolViolation,
                    };
                    let _ = violation.try_send(code);
                    return;
                }
            }
        }
    };
    let (reply, answer) = oneshot::channel();
    let pending = Pending {
        payload,
        reply,
        first_seq: batch.first_seq,
        count: batch.count,
        span: span.clone(),
    };
    async move {
        if tx.send(pending).await.is_err() {
            return;
        }
        let Ok(ack) = answer.await else { return };
        let status = match ack.status {
            AckStatus::Accepted => "accepted",
            AckStatus::Retry => "retry",
        };
        tracing::Span::current().record("uplink.ack", status);
        ctx.metrics
            .batches_acked
            .get_or_create(&labels(&[("status", status)]))
            .inc();
        if send.write_all(&Frame::Ack(ack).to_bytes()).await.is_ok() {
            let _ = send.finish();
        }
    }
    .instrument(span)
    .await
}

fn ack(p: &Pending, status: AckStatus, message: String) -> Ack {
    Ack {
        first_seq: p.first_seq,
        count: p.count,
        status,
        message,
    }
}

/// Normalizes labels (remote write requires them sorted and unique, whatever the agent sent)
/// and encodes a remote-write 1.0 body.
fn to_remote_write(
    ctx: &Context,
    mut timeseries: Vec<TimeSeries>,
    stamp: Option<&Stamp>,
    limits: Option<&LabelLimits>,
) -> (Bytes, u64, [u64; 4]) {
    let mut samples = 0u64;
    let mut rejected = [0u64; 4];
    for ts in &mut timeseries {
        match stamp {
            Some(s) => s.apply(&mut ts.labels),
            None => model::normalize(&mut ts.labels),
        }
    }
    timeseries.retain(|ts| {
        let verdict = limits.map_or(Ok(()), |l| {
            l.check(
                ts.labels
                    .iter()
                    .map(|l| (l.name.as_str(), l.value.as_str())),
            )
        });
        match verdict {
            Ok(()) => samples += ts.sample_count() as u64,
            Err(r) => rejected[r as usize] += ts.sample_count() as u64,
        }
        verdict.is_ok()
    });
    ctx.metrics.samples_received.inc_by(samples);
    let req = WriteRequest {
        timeseries,
        metadata: vec![],
    };
    (remote_write::encode_snappy(&req), samples, rejected)
}

/// Decodes a compact batch straight into a snappy-compressed remote-write 1.0 body.
fn decode_compact(
    decoder: &mut TunnelDecoder,
    data: &[u8],
    skip: u64,
) -> Result<(Bytes, Decoded), CodecError> {
    let mut raw = bytes::BytesMut::new();
    let decoded = decoder.decode_remote_write(data, &mut raw, skip)?;
    let body = snap::raw::Encoder::new()
        .compress_vec(&raw)
        .map_err(|e| CodecError::Zstd(format!("snappy: {e}")))?;
    Ok((Bytes::from(body), decoded))
}

/// Why a batch was not stored.
enum Refusal {
    /// The batch cannot be decoded: close the connection with this code.
    Close(CloseCode),
    /// Storing failed: answer `Retry` (the agent resends later).
    Retry(String),
}

/// The connection's storing task: batches are decoded and stored in sequence order.
async fn store_in_order(
    mut rx: mpsc::Receiver<Pending>,
    resume_seq: u64,
    ctx: Arc<Context>,
    (identity, stamp): (String, Option<Arc<Stamp>>),
    queue_id: u64,
    violation: mpsc::Sender<CloseCode>,
) {
    let mut seq: Sequencer<Pending> = Sequencer::new(resume_seq);
    let lane = ctx.lane(&identity, queue_id);
    let site: Arc<str> = identity.as_str().into();
    let mut decoder = TunnelDecoder::new(
        ctx.limits.max_uncompressed_bytes.get() as usize,
        ctx.limits.max_series_sets_per_agent.get() as usize,
        ctx.limits.max_series_per_set.get() as usize,
    )
    .with_stamp(stamp)
    .with_ha_labels(ctx.ha.as_ref().map(|h| {
        let (cluster, replica) = h.labels();
        (cluster.to_owned(), replica.to_owned())
    }))
    .with_label_limits(ctx.label_limits(&identity))
    .with_series_gate(
        crate::metrics::tenant_of(&identity)
            .and_then(|t| ctx.series_budgets.get(t))
            .map(|b| b.clone() as Arc<dyn uplink_shared::codec::SeriesGate>),
    );
    // Whether this connection has read the shared cursor yet (with `dedupe.etcd`).
    let mut refreshed = false;
    // Batches stored (or found stored before) whose acks wait for the shared cursor.
    let mut accepted: Vec<Pending> = Vec::new();
    while let Some(p) = rx.recv().await {
        let (first, count) = (p.first_seq, p.count);
        match seq.offer(first, count, p) {
            Offered::Queued => {}
            Offered::Duplicate(p) => {
                ctx.metrics.batches_duplicate.inc();
                accepted.push(p);
            }
            Offered::Retry(p) => {
                let a = ack(&p, AckStatus::Retry, "an earlier batch failed".into());
                let _ = p.reply.send(a);
            }
            Offered::Violation(_) => {
                warn!(
                    first,
                    count, "Batch overlaps an earlier one; closing connection."
                );
                let _ = acknowledge(&ctx, &lane, (&site, queue_id), &mut accepted).await;
                let _ = violation.try_send(CloseCode::ProtocolViolation);
                return;
            }
        }
        while let Some((first, count, p)) = seq.pop_ready() {
            let dedupe = info_span!(
                parent: &p.span,
                "uplink.gateway.dedupe",
                uplink.duplicate_records = tracing::field::Empty,
                uplink.samples = tracing::field::Empty,
                uplink.ha_dropped = tracing::field::Empty,
            );
            let stored = store_batch(
                &ctx,
                (&lane, &mut refreshed),
                &mut decoder,
                (&site, queue_id),
                (first, count),
                (&p.payload, traces::context_of(&p.span)),
            )
            .instrument(dedupe)
            .await;
            match stored {
                Ok(()) => accepted.push(p),
                Err(Refusal::Close(code)) => {
                    let _ = acknowledge(&ctx, &lane, (&site, queue_id), &mut accepted).await;
                    let _ = violation.try_send(code);
                    return;
                }
                Err(Refusal::Retry(msg)) => {
                    let a = ack(&p, AckStatus::Retry, msg);
                    let _ = p.reply.send(a);
                    for later in seq.fail() {
                        let a = ack(&later, AckStatus::Retry, "an earlier batch failed".into());
                        let _ = later.reply.send(a);
                    }
                }
            }
        }
        if !acknowledge(&ctx, &lane, (&site, queue_id), &mut accepted).await {
            // As after a failed store: nothing later on this connection may be accepted, or
            // the agent could delete a later batch and keep an earlier one.
            for later in seq.fail() {
                let a = ack(&later, AckStatus::Retry, "an earlier batch failed".into());
                let _ = later.reply.send(a);
            }
        }
    }
}

/// Answers the batches stored (or stored before): `Accepted` once the lane's cursor and, with
/// `dedupe.etcd`, the shared cursor cover them and, with `ack: delivered`, once delivered;
/// `Retry` otherwise (what is stored stays stored; the resend is skipped locally and
/// acknowledged when etcd answers). Whether they were accepted.
async fn acknowledge(
    ctx: &Context,
    lane: &Lane,
    (site, queue_id): (&Arc<str>, u64),
    accepted: &mut Vec<Pending>,
) -> bool {
    let Some(end) = accepted
        .iter()
        .map(|p| p.first_seq + u64::from(p.count))
        .max()
    else {
        return true;
    };
    let answer = match publish(ctx, lane, (site, queue_id), end).await {
        Ok(()) => {
            ctx.delivered().await;
            (AckStatus::Accepted, String::new())
        }
        Err(message) => (AckStatus::Retry, message),
    };
    for p in accepted.drain(..) {
        let a = ack(&p, answer.0, answer.1.clone());
        let _ = p.reply.send(a);
    }
    answer.0 == AckStatus::Accepted
}

/// Checks that the lane's cursor covers `end` (everything to acknowledge was stored) and
/// raises the shared cursor to it (with `dedupe.etcd`).
async fn publish(
    ctx: &Context,
    lane: &Lane,
    (site, queue_id): (&str, u64),
    end: u64,
) -> Result<(), String> {
    let mut state = lane.lock().await;
    let floor = state.floor.unwrap_or(0);
    if floor < end {
        return Err("the batch was not stored (an earlier attempt failed)".into());
    }
    let Some(shared) = &ctx.shared_cursors else {
        return Ok(());
    };
    if state.shared.cursor >= floor {
        return Ok(());
    }
    let started = Instant::now();
    match shared.raise(site, queue_id, state.shared, floor).await {
        Ok(now) => {
            state.shared = now;
            ctx.metrics
                .shared_cursor_duration
                .observe(started.elapsed().as_secs_f64());
            Ok(())
        }
        Err(error) => {
            ctx.metrics
                .shared_cursor_errors
                .get_or_create(&labels(&[("op", "raise")]))
                .inc();
            warn!(%error, site, queue_id, "Cannot raise the shared dedupe cursor; the agent will resend.");
            Err(format!("shared dedupe cursor: {error}"))
        }
    }
}

/// Decodes one batch and stores the records not stored before, under the lane's lock.
async fn store_batch(
    ctx: &Context,
    (lane, refreshed): (&Lane, &mut bool),
    decoder: &mut TunnelDecoder,
    (site, queue_id): (&Arc<str>, u64),
    (first, count): (u64, u32),
    (payload, trace): (&Payload, Option<TraceContext>),
) -> Result<(), Refusal> {
    let mut state = lane.lock().await;
    let mut cursor = match state.floor {
        Some(c) => c,
        None => {
            let loaded = ctx.store.dedupe_cursor(site, queue_id).await;
            let c = loaded
                .map_err(|e| store_failed(ctx, "dedupe", e))?
                .unwrap_or(0);
            state.floor = Some(c);
            c
        }
    };
    if let Some(shared) = &ctx.shared_cursors
        && !*refreshed
    {
        // What other gateways stored of this queue since this one last served it.
        let now = shared.read(site, queue_id).await.map_err(|error| {
            ctx.metrics
                .shared_cursor_errors
                .get_or_create(&labels(&[("op", "read")]))
                .inc();
            warn!(%error, %site, queue_id, "Cannot read the shared dedupe cursor; the agent will resend.");
            Refusal::Retry(format!("shared dedupe cursor: {error}"))
        })?;
        if now.cursor > cursor {
            debug!(%site, queue_id, local = cursor, shared = now.cursor, "Another gateway stored part of this queue.");
            cursor = now.cursor;
            state.floor = Some(cursor);
        }
        state.shared = now;
        *refreshed = true;
    }
    let end = first + u64::from(count);
    let skip = cursor.saturating_sub(first).min(u64::from(count));
    // Compact batches are decoded even when every record is old: the codec state needs them.
    // (body to store, its samples, newest timestamp, samples of retransmitted records, HA key,
    // samples refused by the label limits).
    let (mut body, mut samples, newest, duplicate, ha, rejected, mut extras) = match payload {
        Payload::Ready { samples, .. } if skip == u64::from(count) => {
            (Bytes::new(), 0, i64::MIN, *samples, None, [0; 4], 0)
        }
        Payload::Ready {
            body,
            samples,
            newest,
            ha,
            rejected,
            extras,
        } => (
            body.clone(),
            *samples,
            *newest,
            0,
            ha.clone(),
            *rejected,
            *extras,
        ),
        Payload::Compact(data) => match decode_compact(decoder, data, skip) {
            Ok((body, d)) => {
                ctx.metrics.samples_received.inc_by(d.samples);
                (
                    body,
                    d.samples,
                    decoder.newest_timestamp(),
                    d.skipped,
                    d.ha,
                    d.rejected,
                    d.extras,
                )
            }
            Err(error) => {
                warn!(%error, first_seq = first, "Undecodable compact batch; closing connection.");
                return Err(Refusal::Close(match error {
                    CodecError::TooLarge { .. } => CloseCode::FrameTooLarge,
                    _ => CloseCode::ProtocolViolation,
                }));
            }
        },
    };
    let tenant = crate::metrics::tenant_of(site);
    if skip > 0 {
        ctx.metrics.batches_duplicate.inc();
        ctx.metrics.samples_deduplicated.inc_by(duplicate);
        if let Some(t) = tenant {
            ctx.metrics
                .tenant_deduplicated
                .get_or_create(&labels(&[("tenant", t)]))
                .inc_by(duplicate);
        }
    }
    let span = tracing::Span::current();
    span.record("uplink.duplicate_records", skip);
    span.record("uplink.samples", samples);
    if end <= cursor {
        return Ok(());
    }
    for (reason, n) in LabelReject::ALL.iter().zip(rejected) {
        if n > 0 {
            ctx.metrics
                .tenant_rejected
                .get_or_create(&labels(&[
                    ("tenant", tenant.unwrap_or("")),
                    ("reason", reason.reason()),
                ]))
                .inc_by(n);
            ctx.ledger.dropped(site, n);
        }
    }
    if let (Some(tracker), Some((cluster, replica))) = (&ctx.ha, ha)
        && samples > 0
    {
        match tracker
            .admit(tenant.unwrap_or(""), &cluster, &replica)
            .await
        {
            Ok(crate::ha::Admit::Accept) => {}
            Ok(crate::ha::Admit::Drop) => {
                // Another replica of the cluster is elected: acknowledged, not stored.
                ctx.metrics
                    .ha_samples_dropped
                    .get_or_create(&labels(&[
                        ("tenant", tenant.unwrap_or("")),
                        ("cluster", &cluster),
                    ]))
                    .inc_by(samples);
                span.record("uplink.ha_dropped", true);
                (body, samples, extras) = (Bytes::new(), 0, 0);
            }
            Err(error) => {
                ctx.metrics.ha_errors.inc();
                warn!(%error, cluster, "Cannot decide the HA election; the agent will resend.");
                return Err(Refusal::Retry(format!("HA election: {error}")));
            }
        }
    }
    if let Some(t) = tenant {
        let throttled = ctx.rates.delay(t, samples);
        if throttled != Some(Duration::ZERO) {
            ctx.metrics
                .tenant_throttled
                .get_or_create(&labels(&[("tenant", t)]))
                .inc();
        }
        match throttled {
            // Back-pressure: the ack waits, the agent's in-flight window fills, it slows down.
            Some(wait) if wait.is_zero() => {}
            Some(wait) => tokio::time::sleep(wait).await,
            None => {
                return Err(Refusal::Retry(format!(
                    "tenant {t} is over its max_samples_per_second; sent again later"
                )));
            }
        }
    }
    let commit = Commit {
        identity: site.clone(),
        queue_id,
        next_seq: end,
        // A batch of metadata alone (a sidecar's metadata-only request) is stored too.
        entry: (samples > 0 || extras & remote_write::extras::METADATA != 0).then_some(Entry {
            samples,
            body,
            trace,
            extras,
        }),
    };
    let started = Instant::now();
    ctx.store
        .commit(commit)
        .await
        .map_err(|e| store_failed(ctx, "commit", e))?;
    ctx.metrics
        .store_commit_duration
        .observe(started.elapsed().as_secs_f64());
    state.floor = Some(end);
    drop(state);
    ctx.ledger.accepted(site, samples, newest);
    if let Some(t) = tenant {
        ctx.metrics
            .tenant_received
            .get_or_create(&labels(&[("tenant", t)]))
            .inc_by(samples);
    }
    Ok(())
}

fn store_failed(ctx: &Context, op: &str, error: crate::store::StoreError) -> Refusal {
    error!(%error, op, "Storing a batch failed; the agent will resend it.");
    ctx.metrics
        .store_errors
        .get_or_create(&labels(&[("op", op)]))
        .inc();
    Refusal::Retry(format!("gateway store: {error}"))
}
