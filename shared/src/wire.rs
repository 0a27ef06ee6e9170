//! The agent-gateway protocol, as code without I/O.
//!
//! # Transport
//! One QUIC connection per agent, ALPN [`ALPN`], mutual TLS. The agent opens the first
//! bidirectional stream (the *control stream*) and sends [`Hello`]; the gateway answers
//! [`Welcome`] or closes the connection with a [`CloseCode`]; afterwards the agent sends a
//! [`Status`] frame on the control stream now and then. After that, each batch travels on
//! a bidirectional stream of its own: the agent writes one [`Batch`] frame and finishes its
//! side; the gateway answers one [`Ack`] frame and finishes. Streams are independent, so
//! several batches are in flight at once and one slow batch never blocks another.
//!
//! # Tracing
//! A batch may carry the W3C trace context of the agent's span that sent it ([`TraceContext`],
//! frame type 6 instead of 3), so the gateway's spans for it join the agent's trace. Only a
//! sampled context is sent; without one the frame is the plain batch frame.
//!
//! # Framing
//! Every message is a frame: `type: u8`, `length: u32` (big-endian, length of the body), then
//! the body. Integers are big-endian. Strings are `u16` length + UTF-8. A decoder refuses a
//! frame whose declared length exceeds its limit *before* buffering it, so a peer cannot make
//! the other side allocate more than the limit.
//!
//! # Order
//! Batches carry contiguous ranges of the agent's queue, starting at [`Hello::resume_seq`].
//! The gateway may receive them concurrently but stores them strictly in sequence order, and
//! delivers its store to each destination in that order, so per-series sample order survives
//! pipelining (receivers reject out-of-order samples). Once a batch cannot be stored, the
//! gateway answers [`AckStatus::Retry`] to it and to every later batch on that connection; the
//! agent then reconnects and resends from its first unacknowledged record. Acks therefore
//! arrive in order, and the agent's queue always holds a contiguous suffix.
//!
//! # Ack semantics
//! [`AckStatus::Accepted`] means the gateway stored the batch durably for every destination
//! (one atomic write in its own store, synced when its `storage.fsync` is on) together with the
//! queue's position, or had stored those records before; the agent may delete the batch. Delivery
//! downstream happens afterwards, from the gateway's store, and never delays an ack.
//! [`AckStatus::Retry`] means nothing is promised: the agent keeps the batch and sends it again.
//! A batch without an ack (stream or connection lost) is sent again too: sending is
//! at-least-once, and record identity (certificate identity, [`Hello::queue_id`], sequence
//! number) lets the gateway recognise retransmissions, also across its own restarts.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// ALPN protocol identifier; a change in framing gets a new one.
pub const ALPN: &[u8] = b"uplink/1";
/// Protocol version carried in the handshake.
pub const VERSION: u16 = 1;
/// Frame header size: type (1) + length (4).
pub const HEADER_LEN: usize = 5;
/// Hard limit on control frames (hello, welcome, ack).
pub const MAX_CONTROL_FRAME: usize = 4096;
/// Default hard limit on a batch frame; the gateway announces its own in [`Welcome`].
pub const DEFAULT_MAX_BATCH_FRAME: usize = 16 << 20;

/// Stable, documented QUIC application close codes. Numbers never change meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum CloseCode {
    /// 0: orderly shutdown by the side that closes; the agent reconnects with backoff.
    Normal = 0,
    /// 1: a frame had an unknown type, came out of order, or had a malformed body.
    ProtocolViolation = 1,
    /// 2: a frame's declared length exceeded the receiver's limit.
    FrameTooLarge = 2,
    /// 3: the handshake version is not supported by the gateway.
    UnsupportedVersion = 3,
    /// 4: the client certificate carries no usable identity.
    Unauthorized = 4,
    /// 5: the gateway failed internally; the agent reconnects with backoff.
    Internal = 5,
    /// 6: no valid hello arrived in time.
    HandshakeTimeout = 6,
    /// 7: the gateway is shutting down; the agent reconnects (to another gateway if listed).
    GoingAway = 7,
    /// 8: this identity already has `limits.max_connections_per_identity` connections open;
    /// the agent reconnects with backoff (its stale connection times out meanwhile).
    TooManyConnections = 8,
}

impl CloseCode {
    pub fn from_u64(v: u64) -> Option<Self> {
        use CloseCode::*;
        Some(match v {
            0 => Normal,
            1 => ProtocolViolation,
            2 => FrameTooLarge,
            3 => UnsupportedVersion,
            4 => Unauthorized,
            5 => Internal,
            6 => HandshakeTimeout,
            7 => GoingAway,
            8 => TooManyConnections,
            _ => return None,
        })
    }
    pub fn as_u32(self) -> u32 {
        self as u32
    }
    /// Short reason sent with the close.
    pub fn reason(self) -> &'static [u8] {
        use CloseCode::*;
        match self {
            Normal => b"normal",
            ProtocolViolation => b"protocol violation",
            FrameTooLarge => b"frame too large",
            UnsupportedVersion => b"unsupported version",
            Unauthorized => b"unauthorized",
            Internal => b"internal error",
            HandshakeTimeout => b"handshake timeout",
            GoingAway => b"going away",
            TooManyConnections => b"too many connections",
        }
    }
}

/// Payload encoding of a [`Batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Encoding {
    /// Snappy block format of a remote-write 1.0 `WriteRequest`; stateless.
    RemoteWriteV1Snappy = 1,
    /// The compact stateful encoding of [`crate::codec`]; decoded in sequence order.
    Compact = 2,
}

/// First frame on the control stream, agent to gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    /// Random identity of the agent's queue: sequence numbers are unique within it.
    pub queue_id: u64,
    /// Sequence number of the first batch the agent will send on this connection; batches
    /// follow contiguously (`next.first_seq == prev.first_seq + prev.count`).
    pub resume_seq: u64,
    /// Software name and version, for logs only (identity comes from the certificate).
    pub agent: String,
}

/// The gateway's answer to [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    pub version: u16,
    /// Largest batch frame body the gateway accepts.
    pub max_batch_bytes: u32,
    /// Identity the gateway read from the agent's certificate (echoed for the agent's logs).
    pub identity: String,
}

/// A range of queued records, sent on its own stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Queue sequence number of the first record in the batch.
    pub first_seq: u64,
    /// Number of queue records in the batch (`first_seq..first_seq + count`).
    pub count: u32,
    pub encoding: Encoding,
    /// The sender's span, when that span is sampled.
    pub trace: Option<TraceContext>,
    pub payload: Bytes,
}

/// A W3C trace context (`traceparent` without its version): which trace a batch belongs to and
/// which span sent it. 25 bytes on the wire: trace id, span id, flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// W3C trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceContext {
    /// Encoded size.
    pub const LEN: usize = 25;

    pub fn put(&self, out: &mut impl BufMut) {
        out.put_slice(&self.trace_id);
        out.put_slice(&self.span_id);
        out.put_u8(self.flags);
    }

    /// Reads one from the front of `b`; `None` when fewer than [`Self::LEN`] bytes remain.
    pub fn get(b: &mut impl Buf) -> Option<Self> {
        if b.remaining() < Self::LEN {
            return None;
        }
        let mut t = TraceContext {
            trace_id: [0; 16],
            span_id: [0; 8],
            flags: 0,
        };
        b.copy_to_slice(&mut t.trace_id);
        b.copy_to_slice(&mut t.span_id);
        t.flags = b.get_u8();
        Some(t)
    }

    /// Valid per W3C: neither id is all zeros.
    pub fn is_valid(&self) -> bool {
        self.trace_id != [0; 16] && self.span_id != [0; 8]
    }
}

/// What the gateway did with a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum AckStatus {
    /// Stored durably by the gateway for every destination: delete it.
    Accepted = 0,
    /// Not stored: keep it and send it again later.
    Retry = 1,
}

/// The gateway's answer to one [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub first_seq: u64,
    pub count: u32,
    pub status: AckStatus,
    /// Human-readable detail (empty when accepted).
    pub message: String,
}

/// The agent's periodic report of its own state, on the control stream, so the gateway can
/// tell "site offline, data on its way" from "data lost" (the freshness ledger).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Status {
    /// Records (scrapes) in the agent's queue, not yet acknowledged.
    pub backlog_records: u64,
    /// Bytes of those records.
    pub backlog_bytes: u64,
    /// Timestamp (ms) of the oldest unacknowledged sample; 0 when the queue is empty.
    pub oldest_timestamp_ms: i64,
    /// Samples the agent dropped so far (corrupt records, append failures), since it started.
    pub dropped_samples: u64,
}

/// Any frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Hello(Hello),
    Welcome(Welcome),
    Batch(Batch),
    Ack(Ack),
    Status(Status),
}

const T_HELLO: u8 = 1;
const T_WELCOME: u8 = 2;
const T_BATCH: u8 = 3;
const T_ACK: u8 = 4;
const T_STATUS: u8 = 5;
/// A batch with a [`TraceContext`] after its encoding byte.
const T_BATCH_TRACED: u8 = 6;

/// Why bytes from the peer could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The frame type byte is unknown.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// The declared body length exceeds the limit.
    #[error("frame of {len} bytes exceeds limit {limit}")]
    TooLarge { len: usize, limit: usize },
    /// The body ended early or had trailing bytes.
    #[error("malformed {frame} frame")]
    Malformed { frame: &'static str },
    /// A string was not UTF-8.
    #[error("invalid UTF-8 in {frame} frame")]
    Utf8 { frame: &'static str },
    /// An enum field had an unknown value.
    #[error("unknown {field} value {value} in {frame} frame")]
    UnknownValue {
        frame: &'static str,
        field: &'static str,
        value: u8,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// A valid frame arrived where another was expected.
    #[error("unexpected {got} frame, expected {expected}")]
    Unexpected {
        got: &'static str,
        expected: &'static str,
    },
}

impl WireError {
    /// The close code a receiver uses when it sees this error.
    pub fn close_code(&self) -> CloseCode {
        match self {
            WireError::TooLarge { .. } => CloseCode::FrameTooLarge,
            _ => CloseCode::ProtocolViolation,
        }
    }
}

impl Frame {
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::Welcome(_) => "welcome",
            Frame::Batch(_) => "batch",
            Frame::Ack(_) => "ack",
            Frame::Status(_) => "status",
        }
    }

    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u8(0);
        out.put_u32(0);
        let ty = match self {
            Frame::Hello(h) => {
                out.put_u16(h.version);
                out.put_u64(h.queue_id);
                out.put_u64(h.resume_seq);
                put_str(out, &h.agent);
                T_HELLO
            }
            Frame::Welcome(w) => {
                out.put_u16(w.version);
                out.put_u32(w.max_batch_bytes);
                put_str(out, &w.identity);
                T_WELCOME
            }
            Frame::Batch(b) => {
                out.put_u64(b.first_seq);
                out.put_u32(b.count);
                out.put_u8(b.encoding as u8);
                let ty = match &b.trace {
                    Some(t) => {
                        t.put(out);
                        T_BATCH_TRACED
                    }
                    None => T_BATCH,
                };
                out.put_slice(&b.payload);
                ty
            }
            Frame::Ack(a) => {
                out.put_u64(a.first_seq);
                out.put_u32(a.count);
                out.put_u8(a.status as u8);
                put_str(out, &a.message);
                T_ACK
            }
            Frame::Status(st) => {
                out.put_u64(st.backlog_records);
                out.put_u64(st.backlog_bytes);
                out.put_i64(st.oldest_timestamp_ms);
                out.put_u64(st.dropped_samples);
                T_STATUS
            }
        };
        let body_len = (out.len() - start - HEADER_LEN) as u32;
        out[start] = ty;
        out[start + 1..start + HEADER_LEN].copy_from_slice(&body_len.to_be_bytes());
    }

    /// Encodes into a fresh buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }

    /// Decodes one frame body of type `ty`.
    pub fn decode_body(ty: u8, mut body: Bytes) -> Result<Frame, WireError> {
        let frame = match ty {
            T_HELLO => {
                let f = "hello";
                let version = get_u16(&mut body, f)?;
                let queue_id = get_u64(&mut body, f)?;
                let resume_seq = get_u64(&mut body, f)?;
                let agent = get_str(&mut body, f)?;
                Frame::Hello(Hello {
                    version,
                    queue_id,
                    resume_seq,
                    agent,
                })
            }
            T_WELCOME => {
                let f = "welcome";
                let version = get_u16(&mut body, f)?;
                let max_batch_bytes = get_u32(&mut body, f)?;
                let identity = get_str(&mut body, f)?;
                Frame::Welcome(Welcome {
                    version,
                    max_batch_bytes,
                    identity,
                })
            }
            T_BATCH | T_BATCH_TRACED => {
                let f = "batch";
                let first_seq = get_u64(&mut body, f)?;
                let count = get_u32(&mut body, f)?;
                let encoding = match get_u8(&mut body, f)? {
                    1 => Encoding::RemoteWriteV1Snappy,
                    2 => Encoding::Compact,
                    value => {
                        return Err(WireError::UnknownValue {
                            frame: f,
                            field: "encoding",
                            value,
                        });
                    }
                };
                let trace = if ty == T_BATCH_TRACED {
                    let t =
                        TraceContext::get(&mut body).ok_or(WireError::Malformed { frame: f })?;
                    // An invalid context is ignored, not an error: it only links spans.
                    t.is_valid().then_some(t)
                } else {
                    None
                };
                if count == 0 {
                    return Err(WireError::Malformed { frame: f });
                }
                return Ok(Frame::Batch(Batch {
                    first_seq,
                    count,
                    encoding,
                    trace,
                    payload: body,
                }));
            }
            T_ACK => {
                let f = "ack";
                let first_seq = get_u64(&mut body, f)?;
                let count = get_u32(&mut body, f)?;
                let status = match get_u8(&mut body, f)? {
                    0 => AckStatus::Accepted,
                    1 => AckStatus::Retry,
                    value => {
                        return Err(WireError::UnknownValue {
                            frame: f,
                            field: "status",
                            value,
                        });
                    }
                };
                let message = get_str(&mut body, f)?;
                Frame::Ack(Ack {
                    first_seq,
                    count,
                    status,
                    message,
                })
            }
            T_STATUS => {
                let f = "status";
                Frame::Status(Status {
                    backlog_records: get_u64(&mut body, f)?,
                    backlog_bytes: get_u64(&mut body, f)?,
                    oldest_timestamp_ms: get_u64(&mut body, f)? as i64,
                    dropped_samples: get_u64(&mut body, f)?,
                })
            }
            other => return Err(WireError::UnknownType(other)),
        };
        if body.has_remaining() {
            return Err(WireError::Malformed {
                frame: frame.name(),
            });
        }
        Ok(frame)
    }
}

fn put_str(out: &mut BytesMut, s: &str) {
    // Strings are bounded by construction (names, messages); truncate defensively.
    let bytes = s.as_bytes();
    let mut n = bytes.len().min(u16::MAX as usize);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    out.put_u16(n as u16);
    out.put_slice(&bytes[..n]);
}

fn need(b: &Bytes, n: usize, frame: &'static str) -> Result<(), WireError> {
    if b.remaining() < n {
        Err(WireError::Malformed { frame })
    } else {
        Ok(())
    }
}
fn get_u8(b: &mut Bytes, f: &'static str) -> Result<u8, WireError> {
    need(b, 1, f)?;
    Ok(b.get_u8())
}
fn get_u16(b: &mut Bytes, f: &'static str) -> Result<u16, WireError> {
    need(b, 2, f)?;
    Ok(b.get_u16())
}
fn get_u32(b: &mut Bytes, f: &'static str) -> Result<u32, WireError> {
    need(b, 4, f)?;
    Ok(b.get_u32())
}
fn get_u64(b: &mut Bytes, f: &'static str) -> Result<u64, WireError> {
    need(b, 8, f)?;
    Ok(b.get_u64())
}
fn get_str(b: &mut Bytes, frame: &'static str) -> Result<String, WireError> {
    let n = get_u16(b, frame)? as usize;
    need(b, n, frame)?;
    let raw = b.split_to(n);
    String::from_utf8(raw.to_vec()).map_err(|_| WireError::Utf8 { frame })
}

/// Incremental frame decoder with a hard size limit: push bytes as they arrive, pull frames.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    limit: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frame bodies longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            limit,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// How many more bytes the decoder can usefully take before it must be drained: reading
    /// stops at this bound so a peer cannot make the receiver buffer beyond one frame.
    pub fn wanted(&self) -> usize {
        if self.buf.len() < HEADER_LEN {
            return HEADER_LEN - self.buf.len();
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        (HEADER_LEN + len as usize).saturating_sub(self.buf.len())
    }

    /// Returns the next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let ty = self.buf[0];
        if !(T_HELLO..=T_BATCH_TRACED).contains(&ty) {
            return Err(WireError::UnknownType(ty));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.limit {
            return Err(WireError::TooLarge {
                len,
                limit: self.limit,
            });
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let body = self.buf.split_to(len).freeze();
        Frame::decode_body(ty, body).map(Some)
    }

    /// Call at end of stream: errors if a partial frame is left.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Truncated)
        }
    }
}

/// Decodes exactly one frame from a complete buffer (a whole stream's contents).
pub fn decode_one(data: &[u8], limit: usize) -> Result<Frame, WireError> {
    let mut d = FrameDecoder::new(limit);
    d.push(data);
    let frame = d.next_frame()?.ok_or(WireError::Truncated)?;
    if d.buf.is_empty() {
        Ok(frame)
    } else {
        Err(WireError::Malformed {
            frame: frame.name(),
        })
    }
}

/// Gateway side of the handshake: validates a hello and builds the welcome, or names the
/// close code to use.
pub fn accept_hello(
    frame: Frame,
    identity: &str,
    max_batch_bytes: u32,
) -> Result<Welcome, CloseCode> {
    match frame {
        Frame::Hello(h) if h.version == VERSION => Ok(Welcome {
            version: VERSION,
            max_batch_bytes,
            identity: identity.to_owned(),
        }),
        Frame::Hello(_) => Err(CloseCode::UnsupportedVersion),
        _ => Err(CloseCode::ProtocolViolation),
    }
}

/// Gateway side of a batch stream: checks that the one frame is a batch within limits.
pub fn expect_batch(frame: Frame) -> Result<Batch, WireError> {
    match frame {
        Frame::Batch(b) => Ok(b),
        other => Err(WireError::Unexpected {
            got: other.name(),
            expected: "batch",
        }),
    }
}

/// Agent side of a batch stream: checks that the answer acknowledges the batch that was sent.
pub fn expect_ack(frame: Frame, sent: &Batch) -> Result<Ack, WireError> {
    match frame {
        Frame::Ack(a) if a.first_seq == sent.first_seq && a.count == sent.count => Ok(a),
        Frame::Ack(_) => Err(WireError::Malformed { frame: "ack" }),
        other => Err(WireError::Unexpected {
            got: other.name(),
            expected: "ack",
        }),
    }
}

/// What the gateway does with a batch offered to a [`Sequencer`].
#[derive(Debug, PartialEq, Eq)]
pub enum Offered<T> {
    /// Held until every earlier batch has been stored.
    Queued,
    /// Already stored on this connection: acknowledge without storing again.
    Duplicate(T),
    /// An earlier batch failed: answer [`AckStatus::Retry`].
    Retry(T),
    /// The range overlaps one already seen: close with [`CloseCode::ProtocolViolation`].
    Violation(T),
}

/// Gateway-side ordering of one connection's batches: they may arrive in any order, and are
/// stored in sequence order starting at [`Hello::resume_seq`]. No I/O; `T` is whatever the caller
/// needs to answer the batch later.
#[derive(Debug)]
pub struct Sequencer<T> {
    next: u64,
    pending: std::collections::BTreeMap<u64, (u32, T)>,
    failed: bool,
}

impl<T> Sequencer<T> {
    pub fn new(resume_seq: u64) -> Self {
        Sequencer {
            next: resume_seq,
            pending: std::collections::BTreeMap::new(),
            failed: false,
        }
    }

    /// Offers batch `first..first + count`.
    pub fn offer(&mut self, first: u64, count: u32, item: T) -> Offered<T> {
        let end = first.saturating_add(count as u64);
        if end <= self.next {
            return Offered::Duplicate(item);
        }
        if first < self.next || self.pending.contains_key(&first) {
            return Offered::Violation(item);
        }
        if self.failed {
            return Offered::Retry(item);
        }
        self.pending.insert(first, (count, item));
        Offered::Queued
    }

    /// The next batch to store, if it has arrived.
    pub fn pop_ready(&mut self) -> Option<(u64, u32, T)> {
        if self.failed {
            return None;
        }
        let entry = self.pending.first_entry()?;
        if *entry.key() != self.next {
            return None;
        }
        let (first, (count, item)) = entry.remove_entry();
        self.next = first + count as u64;
        Some((first, count, item))
    }

    /// Marks the connection failed; returns every held batch, to be answered with retry.
    pub fn fail(&mut self) -> Vec<T> {
        self.failed = true;
        std::mem::take(&mut self.pending)
            .into_values()
            .map(|(_, t)| t)
            .collect()
    }

    /// Batches held, waiting for an earlier one.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello {
                version: VERSION,
                queue_id: 7,
                resume_seq: 40,
                agent: "uplink-agent/0.1.0".into(),
            }),
            Frame::Welcome(Welcome {
                version: VERSION,
                max_batch_bytes: 1 << 20,
                identity: "site-a".into(),
            }),
            Frame::Batch(Batch {
                first_seq: 42,
                count: 3,
                encoding: Encoding::RemoteWriteV1Snappy,
                trace: None,
                payload: Bytes::from_static(b"\x01\x02\x03"),
            }),
            Frame::Batch(Batch {
                first_seq: 45,
                count: 1,
                encoding: Encoding::Compact,
                trace: Some(TraceContext {
                    trace_id: [7; 16],
                    span_id: [9; 8],
                    flags: 1,
                }),
                payload: Bytes::from_static(b"\x04"),
            }),
            Frame::Ack(Ack {
                first_seq: 42,
                count: 3,
                status: AckStatus::Retry,
                message: "downstream 503".into(),
            }),
            Frame::Status(Status {
                backlog_records: 12,
                backlog_bytes: 3400,
                oldest_timestamp_ms: 1_700_000_000_000,
                dropped_samples: 1,
            }),
        ]
    }

    #[test]
    fn roundtrip_byte_by_byte() {
        let mut all = BytesMut::new();
        for f in frames() {
            f.encode(&mut all);
        }
        let mut d = FrameDecoder::new(1 << 20);
        let mut got = vec![];
        for b in all.iter() {
            d.push(&[*b]);
            while let Some(f) = d.next_frame().expect("valid") {
                got.push(f);
            }
        }
        d.finish().expect("nothing left");
        assert_eq!(got, frames());
    }

    #[test]
    fn oversized_frame_refused_from_header_alone() {
        let mut d = FrameDecoder::new(16);
        d.push(&[T_BATCH, 0, 0, 1, 0]);
        let err = d.next_frame().expect_err("too large");
        assert_eq!(err.close_code(), CloseCode::FrameTooLarge);
    }

    #[test]
    fn malformed_inputs_are_errors_not_panics() {
        for f in frames() {
            let bytes = f.to_bytes();
            for cut in 0..bytes.len() {
                let mut d = FrameDecoder::new(1 << 20);
                d.push(&bytes[..cut]);
                // A prefix is either incomplete or, when the header is patched below, malformed.
                assert!(matches!(d.next_frame(), Ok(None)) || cut >= HEADER_LEN);
            }
            // Lie about the length: shorter body than the fields need.
            let mut short = BytesMut::from(&bytes[..]);
            short[1..5].copy_from_slice(&1u32.to_be_bytes());
            short.truncate(HEADER_LEN + 1);
            let r = decode_one(&short, 1 << 20);
            assert!(r.is_err(), "{f:?}");
        }
        assert_eq!(
            decode_one(&[9, 0, 0, 0, 0], 10),
            Err(WireError::UnknownType(9))
        );
        assert!(decode_one(&[T_HELLO, 0, 0, 0, 4, 0, 1, 0, 9], 100).is_err());
        // Invalid UTF-8.
        assert_eq!(
            decode_one(
                &[
                    T_HELLO, 0, 0, 0, 21, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    1, 0xff
                ],
                100
            ),
            Err(WireError::Utf8 { frame: "hello" })
        );
    }

    #[test]
    fn handshake_and_ack_matching() {
        let hello = frames().remove(0);
        let w = accept_hello(hello, "site-a", 1024).expect("accepted");
        assert_eq!(w.identity, "site-a");
        let old = Frame::Hello(Hello {
            version: 99,
            queue_id: 0,
            resume_seq: 0,
            agent: String::new(),
        });
        assert_eq!(
            accept_hello(old, "x", 1),
            Err(CloseCode::UnsupportedVersion)
        );
        let Frame::Batch(b) = frames().remove(2) else {
            unreachable!()
        };
        let Frame::Ack(a) = frames().remove(4) else {
            unreachable!()
        };
        assert_eq!(expect_ack(Frame::Ack(a.clone()), &b), Ok(a.clone()));
        let wrong = Ack { first_seq: 1, ..a };
        assert!(expect_ack(Frame::Ack(wrong), &b).is_err());
        for code in 0..9 {
            assert_eq!(
                CloseCode::from_u64(code).map(|c| c.as_u32() as u64),
                Some(code)
            );
        }
        assert_eq!(CloseCode::from_u64(9), None);
    }

    #[test]
    fn sequencer_forwards_in_order_and_fails_forward() {
        let mut s = Sequencer::new(10);
        assert_eq!(s.offer(13, 2, "b"), Offered::Queued);
        assert_eq!(s.pop_ready(), None);
        assert_eq!(s.offer(10, 3, "a"), Offered::Queued);
        assert_eq!(s.pop_ready(), Some((10, 3, "a")));
        assert_eq!(s.pop_ready(), Some((13, 2, "b")));
        assert_eq!(s.offer(10, 3, "again"), Offered::Duplicate("again"));
        assert_eq!(s.offer(14, 2, "overlap"), Offered::Violation("overlap"));
        assert_eq!(s.offer(17, 1, "d"), Offered::Queued);
        assert_eq!(s.fail(), vec!["d"]);
        assert_eq!(s.offer(15, 2, "c"), Offered::Retry("c"));
        assert_eq!(s.pop_ready(), None);
        assert_eq!(s.pending(), 0);
    }

    /// Deterministic mutation fuzzing of the frame decoder (the stable toolchain has no
    /// cargo-fuzz): random bytes, and valid frames with bytes flipped, cut or lengths lied
    /// about, pushed in random chunk sizes. The decoder must return frames or errors, never
    /// panic, and never buffer more than one frame past its limit.
    #[test]
    fn decoder_survives_mutated_input() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut valid = BytesMut::new();
        for f in frames() {
            f.encode(&mut valid);
        }
        for round in 0..20_000 {
            let mut input: Vec<u8> = if round % 4 == 0 {
                (0..(next() % 64)).map(|_| next() as u8).collect()
            } else {
                valid.to_vec()
            };
            for _ in 0..(next() % 4) {
                if input.is_empty() {
                    break;
                }
                let i = (next() as usize) % input.len();
                match next() % 3 {
                    0 => input[i] = next() as u8,
                    1 => input.truncate(i),
                    _ => input.insert(i, next() as u8),
                }
            }
            let limit = 64 + (next() as usize % 256);
            let mut d = FrameDecoder::new(limit);
            let mut pos = 0;
            'feed: while pos < input.len() {
                let n = 1 + (next() as usize % 16);
                let end = (pos + n).min(input.len());
                d.push(&input[pos..end]);
                pos = end;
                loop {
                    match d.next_frame() {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
                assert!(d.buf.len() <= HEADER_LEN + limit + 16);
            }
            let _ = d.finish();
            let _ = decode_one(&input, limit);
            let _ = crate::remote_write::decode_snappy::<crate::remote_write::WriteRequest>(
                &input,
                1 << 16,
            );
        }
    }
}
