//! The compact tunnel encoding: how a scrape is stored in the agent's queue and how batches of
//! scrapes travel to the gateway. No I/O.
//!
//! # On disk: [`ScrapeRecord`] and [`SeriesSet`]
//! A scrape of one target is split into its *series set* (the ordered label sets of its
//! series, identified by a 64-bit hash, [`SeriesSet::id`]) and a record holding only the set id,
//! one timestamp, and the values in set order (8 bytes each), plus the rare samples that carry
//! their own timestamp. The agent stores each set's definition once, beside the records, so a
//! scrape costs about 8 bytes per sample on disk instead of its labels.
//!
//! # On the wire: [`TunnelEncoder`] / [`TunnelDecoder`]
//! Both ends keep per-connection state: a string table (label names and values, each sent
//! once), the series sets defined so far (connection-local small ids, series as pairs of string
//! references) and, per set, the previous timestamp and values. A batch carries the new strings
//! and the definitions of sets it uses for the first time on this connection, then each scrape
//! as: set id, timestamp as
//! delta-of-delta, and each value against the same series' previous value: identical (1 byte),
//! or, for values that are exactly `m / 10^k` (integers, and the few-decimal values expositions
//! print, k <= 6), delta-of-delta or delta of the mantissa `m` (1-2 bytes for steady counters),
//! else the XOR of the IEEE-754 bits with zero bytes trimmed at both ends. The whole body is then compressed with
//! zstd. Everything is exact: stale-marker NaN bits and `-0.0` survive. A flag in the batch
//! resets both sides' state, which the encoder uses when its tables outgrow fixed thresholds,
//! so memory stays bounded on long-lived connections with series churn.
//!
//! Why any gateway can decode every batch: the state starts empty on both sides with each
//! connection, and the gateway decodes a connection's batches strictly in sequence order (the
//! same order the agent encoded them). A batch only refers to definitions and previous values
//! sent earlier *on the same connection*, so after a reconnect, a gateway restart or a failover
//! the agent simply starts again from empty state (ADR 002).
//!
//! # Histograms, exemplars, metadata
//! A series' native histogram sample or exemplars are *extras* of its record ([`Extra`]: the
//! series index and the remote-write protobuf of the `Histogram` or `Exemplar`, kept encoded
//! so that neither the queue nor the shipper decodes them); a histogram series has 0 as its
//! float value. A set may carry its families' metadata ([`SeriesSet::metadata`]). On disk both
//! are a trailer written only when present, so float-only records and sets keep the encoding
//! (and set ids) they had before. On the wire a batch flag says that its set definitions carry
//! metadata and its scrapes carry extras (set only when some do, so float-only batches still
//! decode on older gateways); the decoder validates every extra's protobuf, writes histograms
//! and exemplars into their series, and writes a set's metadata once per connection, with the
//! batch that first uses the set.
//!
//! # Limits
//! The decoder checks every declared count against the bytes that remain before allocating,
//! bounds the decompressed size, the number of sets per connection and series per set, and
//! never panics on any input.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use bytes::{BufMut, Bytes, BytesMut};

use crate::remote_write::{Label, MetricMetadata, Sample, TimeSeries};

/// Version byte of [`ScrapeRecord`].
pub const RECORD_VERSION: u8 = 2;
/// Most labels one series of a [`SeriesSet`] may have (larger sets do not decode).
pub const MAX_LABELS_PER_SERIES: usize = 1024;
/// Longest label name or value in a [`SeriesSet`], in bytes (longer ones do not decode).
pub const MAX_LABEL_BYTES: usize = u16::MAX as usize;

/// Why bytes could not be encoded or decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// Input ended early.
    #[error("truncated {what}")]
    Truncated { what: &'static str },
    /// A declared count or size exceeds what the input can hold or the limits allow.
    #[error("{what} of {value} exceeds limit {limit}")]
    TooLarge {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    /// A value is not valid where it appears.
    #[error("invalid {what}")]
    Invalid { what: &'static str },
    /// A scrape refers to a set that was never defined on this connection.
    #[error("unknown series set {0}")]
    UnknownSet(u64),
    /// The encoder was not given the definition of a set it must send.
    #[error("missing definition of series set {0:016x}")]
    MissingDefinition(u64),
    /// zstd failed (corrupt input, or output over the limit).
    #[error("zstd: {0}")]
    Zstd(String),
    /// Trailing bytes after a complete message.
    #[error("trailing bytes after {what}")]
    Trailing { what: &'static str },
}

// ---------------------------------------------------------------------------------------------
// Primitive readers and writers.

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

struct Reader<'a> {
    buf: &'a [u8],
}

/// An index read from the wire, checked to be below `n`.
fn below(i: u64, n: usize, what: &'static str) -> Result<usize, CodecError> {
    usize::try_from(i)
        .ok()
        .filter(|i| *i < n)
        .ok_or(CodecError::Invalid { what })
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or(CodecError::Truncated { what })?;
        self.buf = rest;
        Ok(b)
    }
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(CodecError::Truncated { what });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u64_le(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn varint(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8(what)?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::Invalid { what })
    }
    /// A count whose every element needs at least `min_each` bytes, bounded by `limit`.
    fn count(
        &mut self,
        what: &'static str,
        min_each: usize,
        limit: u64,
    ) -> Result<usize, CodecError> {
        let n = self.varint(what)?;
        let fits = (self.buf.len() / min_each.max(1)) as u64;
        if n > limit.min(fits) {
            return Err(CodecError::TooLarge {
                what,
                value: n,
                limit: limit.min(fits),
            });
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &'static str) -> Result<String, CodecError> {
        let n = self.count(what, 1, MAX_LABEL_BYTES as u64)?;
        let b = self.bytes(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| CodecError::Invalid { what })
    }
}

// ---------------------------------------------------------------------------------------------
// Series sets and scrape records (the queue's format).

/// The ordered label sets of one target's scrape, and the metadata (TYPE, HELP, UNIT) of its
/// metric families.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SeriesSet {
    pub series: Vec<Vec<Label>>,
    /// Empty for most sets; encoded after the series only when present, so sets without
    /// metadata keep the encoding (and id) they had before metadata was carried.
    pub metadata: Vec<MetricMetadata>,
}

impl SeriesSet {
    /// Stable 64-bit identity (SipHash with fixed keys over the label sets). Only needs to be
    /// unique within one agent's queue; definitions are stored beside the records.
    pub fn id(&self) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        self.series.len().hash(&mut h);
        for s in &self.series {
            s.len().hash(&mut h);
            for l in s {
                l.name.hash(&mut h);
                l.value.hash(&mut h);
            }
        }
        if !self.metadata.is_empty() {
            self.metadata.hash(&mut h);
        }
        h.finish()
    }

    /// A set of series without metadata.
    pub fn of(series: Vec<Vec<Label>>) -> SeriesSet {
        SeriesSet {
            series,
            metadata: Vec::new(),
        }
    }

    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        put_varint(&mut out, self.series.len() as u64);
        for s in &self.series {
            put_varint(&mut out, s.len() as u64);
            for l in s {
                put_varint(&mut out, l.name.len() as u64);
                out.put_slice(l.name.as_bytes());
                put_varint(&mut out, l.value.len() as u64);
                out.put_slice(l.value.as_bytes());
            }
        }
        if !self.metadata.is_empty() {
            put_messages(&mut out, &self.metadata);
        }
        out.freeze()
    }

    pub fn decode(buf: &[u8], max_series: usize) -> Result<SeriesSet, CodecError> {
        let mut r = Reader::new(buf);
        let set = Self::read(&mut r, max_series)?;
        if !r.is_empty() {
            return Err(CodecError::Trailing { what: "series set" });
        }
        Ok(set)
    }

    fn read(r: &mut Reader<'_>, max_series: usize) -> Result<SeriesSet, CodecError> {
        let n = r.count("series count", 1, max_series as u64)?;
        let mut series = Vec::with_capacity(n);
        for _ in 0..n {
            let nl = r.count("label count", 2, MAX_LABELS_PER_SERIES as u64)?;
            let mut labels = Vec::with_capacity(nl);
            for _ in 0..nl {
                let name = r.string("label name")?;
                let value = r.string("label value")?;
                labels.push(Label { name, value });
            }
            series.push(labels);
        }
        let metadata = if r.is_empty() {
            Vec::new()
        } else {
            read_messages(r, "metadata")?
        };
        Ok(SeriesSet { series, metadata })
    }
}

/// A count, then each message length-delimited.
fn put_messages<M: prost::Message>(out: &mut BytesMut, items: &[M]) {
    put_varint(out, items.len() as u64);
    for m in items {
        put_varint(out, m.encoded_len() as u64);
        m.encode_raw(out);
    }
}

fn read_messages<M: prost::Message + Default>(
    r: &mut Reader<'_>,
    what: &'static str,
) -> Result<Vec<M>, CodecError> {
    let n = r.count(what, 1, u32::MAX as u64)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.count(what, 1, u32::MAX as u64)?;
        out.push(M::decode(r.bytes(len, what)?).map_err(|_| CodecError::Invalid { what })?);
    }
    Ok(out)
}

/// What a series carries besides its float sample, in a [`ScrapeRecord`] and on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExtraKind {
    /// A native histogram sample (`prompb.Histogram`); the series' float value is unused.
    Histogram = 1,
    /// An exemplar (`prompb.Exemplar`) of the series' sample.
    Exemplar = 2,
    /// The series' created (start) timestamp, ms, 8 bytes little-endian.
    Created = 3,
}

impl ExtraKind {
    fn from_u8(b: u8) -> Result<ExtraKind, CodecError> {
        match b {
            1 => Ok(ExtraKind::Histogram),
            2 => Ok(ExtraKind::Exemplar),
            3 => Ok(ExtraKind::Created),
            _ => Err(CodecError::Invalid { what: "extra kind" }),
        }
    }
}

/// A histogram sample or an exemplar of series `index`, kept protobuf-encoded (the message it
/// is forwarded as), so neither the queue nor the shipper decodes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extra {
    pub index: u32,
    pub kind: ExtraKind,
    pub body: Bytes,
}

impl Extra {
    pub fn histogram(index: u32, h: &crate::remote_write::Histogram) -> Extra {
        Extra {
            index,
            kind: ExtraKind::Histogram,
            body: Bytes::from(prost::Message::encode_to_vec(h)),
        }
    }
    pub fn created(index: u32, ms: i64) -> Extra {
        Extra {
            index,
            kind: ExtraKind::Created,
            body: Bytes::copy_from_slice(&ms.to_le_bytes()),
        }
    }
    pub fn exemplar(index: u32, e: &crate::remote_write::Exemplar) -> Extra {
        Extra {
            index,
            kind: ExtraKind::Exemplar,
            body: Bytes::from(prost::Message::encode_to_vec(e)),
        }
    }
}

fn put_extras(out: &mut BytesMut, extras: &[Extra]) {
    put_varint(out, extras.len() as u64);
    for e in extras {
        put_varint(out, u64::from(e.index));
        out.put_u8(e.kind as u8);
        put_varint(out, e.body.len() as u64);
        out.put_slice(&e.body);
    }
}

/// Reads extras of a scrape of `n` series: (index, kind, body), in input order.
fn read_extras<'a>(
    r: &mut Reader<'a>,
    n: usize,
    out: &mut Vec<(usize, ExtraKind, &'a [u8])>,
) -> Result<(), CodecError> {
    let count = r.count("extra count", 3, u32::MAX as u64)?;
    for _ in 0..count {
        let i = below(r.varint("extra index")?, n, "extra index")?;
        let kind = ExtraKind::from_u8(r.u8("extra kind")?)?;
        let len = r.count("extra body", 1, u32::MAX as u64)?;
        out.push((i, kind, r.bytes(len, "extra body")?));
    }
    Ok(())
}

/// One scrape as stored in the queue: which set, when, and the values in set order.
#[derive(Clone, Debug, PartialEq)]
pub struct ScrapeRecord {
    pub set_id: u64,
    /// Default timestamp (ms) of every sample.
    pub timestamp: i64,
    pub values: Vec<f64>,
    /// Samples with their own timestamp: (index into `values`, timestamp ms).
    pub exceptions: Vec<(u32, i64)>,
    /// Histogram samples and exemplars, by series index (encoded after the exceptions only
    /// when present).
    pub extras: Vec<Extra>,
}

impl ScrapeRecord {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(24 + 8 * self.values.len());
        out.put_u8(RECORD_VERSION);
        out.put_u64_le(self.set_id);
        put_varint(&mut out, zigzag(self.timestamp));
        put_varint(&mut out, self.values.len() as u64);
        for v in &self.values {
            out.put_u64_le(v.to_bits());
        }
        put_varint(&mut out, self.exceptions.len() as u64);
        for (i, ts) in &self.exceptions {
            put_varint(&mut out, u64::from(*i));
            put_varint(&mut out, zigzag(*ts));
        }
        if !self.extras.is_empty() {
            put_extras(&mut out, &self.extras);
        }
        out.freeze()
    }

    pub fn decode(buf: &[u8]) -> Result<ScrapeRecord, CodecError> {
        let mut r = Reader::new(buf);
        if r.u8("record version")? != RECORD_VERSION {
            return Err(CodecError::Invalid {
                what: "record version",
            });
        }
        let set_id = r.u64_le("set id")?;
        let timestamp = unzigzag(r.varint("timestamp")?);
        let n = r.count("value count", 8, u32::MAX as u64)?;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            values.push(f64::from_bits(r.u64_le("value")?));
        }
        let ne = r.count("exception count", 2, n as u64)?;
        let mut exceptions = Vec::with_capacity(ne);
        for _ in 0..ne {
            let i = r.varint("exception index")?;
            if i >= n as u64 {
                return Err(CodecError::Invalid {
                    what: "exception index",
                });
            }
            exceptions.push((i as u32, unzigzag(r.varint("exception timestamp")?)));
        }
        let mut extras = Vec::new();
        if !r.is_empty() {
            let mut found = Vec::new();
            read_extras(&mut r, n, &mut found)?;
            extras = found
                .into_iter()
                .map(|(index, kind, body)| Extra {
                    index: index as u32,
                    kind,
                    body: Bytes::copy_from_slice(body),
                })
                .collect();
        }
        if !r.is_empty() {
            return Err(CodecError::Trailing { what: "record" });
        }
        Ok(ScrapeRecord {
            set_id,
            timestamp,
            values,
            exceptions,
            extras,
        })
    }

    /// Reads only the set id, without decoding the values.
    pub fn peek_set_id(buf: &[u8]) -> Result<u64, CodecError> {
        let mut r = Reader::new(buf);
        if r.u8("record version")? != RECORD_VERSION {
            return Err(CodecError::Invalid {
                what: "record version",
            });
        }
        r.u64_le("set id")
    }

    pub fn sample_count(&self) -> usize {
        self.values.len()
    }
}

/// Splits a scrape (one sample per series) into its set and record. `timestamp` is the scrape's
/// default timestamp; samples with another one become exceptions. A series with a histogram
/// sample keeps it (and its timestamp) as an extra, with 0 as its float value; exemplars
/// become extras.
pub fn split(series: Vec<TimeSeries>, timestamp: i64) -> (SeriesSet, ScrapeRecord) {
    split_with(series, Vec::new(), timestamp)
}

/// [`split`], with the metadata of the scrape's families in the set.
pub fn split_with(
    series: Vec<TimeSeries>,
    metadata: Vec<MetricMetadata>,
    timestamp: i64,
) -> (SeriesSet, ScrapeRecord) {
    let mut set = Vec::with_capacity(series.len());
    let mut values = Vec::with_capacity(series.len());
    let mut exceptions = Vec::new();
    let mut extras = Vec::new();
    for (i, ts) in series.into_iter().enumerate() {
        let s = match ts.histograms.first() {
            Some(h) => {
                extras.push(Extra::histogram(i as u32, h));
                Sample {
                    value: 0.0,
                    timestamp: h.timestamp,
                }
            }
            None => ts.samples.first().copied().unwrap_or(Sample {
                value: f64::NAN,
                timestamp,
            }),
        };
        extras.extend(ts.exemplars.iter().map(|e| Extra::exemplar(i as u32, e)));
        if ts.created_timestamp != 0 {
            extras.push(Extra::created(i as u32, ts.created_timestamp));
        }
        if s.timestamp != timestamp {
            exceptions.push((i as u32, s.timestamp));
        }
        values.push(s.value);
        set.push(ts.labels);
    }
    let set = SeriesSet {
        series: set,
        metadata,
    };
    let record = ScrapeRecord {
        set_id: set.id(),
        timestamp,
        values,
        exceptions,
        extras,
    };
    (set, record)
}

/// Joins a set and a record back into series (one sample each).
pub fn join(set: &SeriesSet, rec: &ScrapeRecord) -> Result<Vec<TimeSeries>, CodecError> {
    if set.series.len() != rec.values.len() {
        return Err(CodecError::Invalid {
            what: "record length for its series set",
        });
    }
    let mut out: Vec<TimeSeries> = set
        .series
        .iter()
        .zip(&rec.values)
        .map(|(labels, v)| {
            TimeSeries::floats(
                labels.clone(),
                vec![Sample {
                    value: *v,
                    timestamp: rec.timestamp,
                }],
            )
        })
        .collect();
    for (i, ts) in &rec.exceptions {
        if let Some(s) = out.get_mut(*i as usize).and_then(|t| t.samples.first_mut()) {
            s.timestamp = *ts;
        }
    }
    for e in &rec.extras {
        let Some(ts) = out.get_mut(e.index as usize) else {
            return Err(CodecError::Invalid {
                what: "extra index",
            });
        };
        attach(ts, e.kind, &e.body)?;
    }
    Ok(out)
}

/// Adds a decoded extra to its series: a histogram replaces the float sample.
fn attach(ts: &mut TimeSeries, kind: ExtraKind, body: &[u8]) -> Result<(), CodecError> {
    match kind {
        ExtraKind::Histogram => {
            let h = <crate::remote_write::Histogram as prost::Message>::decode(body)
                .map_err(|_| CodecError::Invalid { what: "histogram" })?;
            ts.samples.clear();
            ts.histograms.push(h);
        }
        ExtraKind::Exemplar => ts.exemplars.push(
            <crate::remote_write::Exemplar as prost::Message>::decode(body)
                .map_err(|_| CodecError::Invalid { what: "exemplar" })?,
        ),
        ExtraKind::Created => ts.created_timestamp = created(body)?,
    }
    Ok(())
}

/// A created-timestamp extra's value.
fn created(body: &[u8]) -> Result<i64, CodecError> {
    <[u8; 8]>::try_from(body)
        .map(i64::from_le_bytes)
        .map_err(|_| CodecError::Invalid {
            what: "created timestamp",
        })
}

// ---------------------------------------------------------------------------------------------
// Value coding shared by encoder and decoder.

const C_SAME: u8 = 0;
const C_DOD_ZERO: u8 = 1;
const C_DOD: u8 = 2;
const C_DELTA: u8 = 3;
const C_ZERO: u8 = 4;
const C_SCALE: u8 = 5;
const C_XOR: u8 = 0x40;

const MAX_EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
/// Largest decimal scale tried: values with up to this many decimals code as integers.
const MAX_SCALE: u8 = 6;
const POW10: [f64; 7] = [1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0];

/// `v` as `m / 10^k` exactly (the smallest such `k` up to [`MAX_SCALE`]): what a value printed
/// with a few decimals in an exposition parses to. Division is correctly rounded, so `m / 10^k`
/// reproduces `v` bit for bit on both sides.
fn decimal(v: f64) -> Option<(u8, i64)> {
    if !v.is_finite() || (v == 0.0 && v.is_sign_negative()) {
        return None;
    }
    for (k, p) in POW10.iter().enumerate() {
        let x = v * p;
        if x.abs() >= MAX_EXACT {
            return None;
        }
        let m = x.round();
        if m / p == v {
            return Some((k as u8, m as i64));
        }
    }
    None
}

/// `v` as `m / 10^k` for a given scale, if exact.
fn decimal_at(v: f64, k: u8) -> Option<i64> {
    let p = *POW10.get(k as usize)?;
    let x = v * p;
    if !v.is_finite() || x.abs() >= MAX_EXACT || (v == 0.0 && v.is_sign_negative()) {
        return None;
    }
    let m = x.round();
    (m / p == v).then_some(m as i64)
}

/// The decimal form of `v` for a slot: the slot's current scale when it still fits (so trailing
/// zeros do not change the scale), else the smallest one.
fn decimal_for(slot: &Slot, v: f64) -> Option<(u8, i64)> {
    slot.dec
        .and_then(|(k, _)| decimal_at(v, k).map(|m| (k, m)))
        .or_else(|| decimal(v))
}

fn from_decimal(k: u8, m: i64) -> Result<f64, CodecError> {
    let p = POW10.get(k as usize).ok_or(CodecError::Invalid {
        what: "decimal scale",
    })?;
    if (m as f64).abs() >= MAX_EXACT {
        return Err(CodecError::Invalid {
            what: "decimal mantissa",
        });
    }
    Ok(m as f64 / p)
}

/// Per-series coding state: previous value, its decimal form, and the previous mantissa delta
/// (when the last two values shared a scale).
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    prev: Option<f64>,
    dec: Option<(u8, i64)>,
    delta: Option<i64>,
}

impl Slot {
    fn advance(&mut self, v: f64) {
        let dec = decimal_for(self, v);
        self.delta = match (self.dec, dec) {
            (Some((pk, pm)), Some((k, m))) if pk == k => m.checked_sub(pm),
            _ => None,
        };
        self.dec = dec;
        self.prev = Some(v);
    }
}

fn encode_value(out: &mut BytesMut, v: f64, slot: &mut Slot) {
    let bits = v.to_bits();
    let dec = decimal_for(slot, v);
    match (slot.prev, slot.dec, dec) {
        (Some(p), _, _) if p.to_bits() == bits => out.put_u8(C_SAME),
        (_, Some((pk, pm)), Some((k, m))) if pk == k && m.checked_sub(pm).is_some() => {
            let d = m - pm;
            match slot.delta.and_then(|pd| d.checked_sub(pd)) {
                Some(0) => out.put_u8(C_DOD_ZERO),
                Some(dod) => {
                    out.put_u8(C_DOD);
                    put_varint(out, zigzag(dod));
                }
                None => {
                    out.put_u8(C_DELTA);
                    put_varint(out, zigzag(d));
                }
            }
        }
        _ if bits == 0 => out.put_u8(C_ZERO),
        (_, _, Some((k, m))) => {
            out.put_u8(C_SCALE);
            out.put_u8(k);
            put_varint(out, zigzag(m));
        }
        (prev, _, None) => {
            let x = bits ^ prev.map_or(0, f64::to_bits);
            if x == 0 {
                out.put_u8(C_ZERO);
            } else {
                let lz = (x.leading_zeros() / 8).min(7);
                let tz = (x.trailing_zeros() / 8).min(7 - lz);
                out.put_u8(C_XOR | ((lz as u8) << 3) | tz as u8);
                let be = x.to_be_bytes();
                out.put_slice(&be[lz as usize..(8 - tz) as usize]);
            }
        }
    }
    slot.advance(v);
}

fn decode_value(r: &mut Reader<'_>, slot: &mut Slot) -> Result<f64, CodecError> {
    let c = r.u8("value control")?;
    let base = |slot: &Slot| {
        slot.dec.ok_or(CodecError::Invalid {
            what: "delta without a decimal base",
        })
    };
    let v = match c {
        C_SAME => slot.prev.ok_or(CodecError::Invalid {
            what: "repeat without previous value",
        })?,
        C_DOD_ZERO | C_DOD => {
            let (k, pm) = base(slot)?;
            let pd = slot.delta.ok_or(CodecError::Invalid {
                what: "delta-of-delta without delta",
            })?;
            let dod = if c == C_DOD {
                unzigzag(r.varint("delta of delta")?)
            } else {
                0
            };
            let m = pd
                .checked_add(dod)
                .and_then(|d| pm.checked_add(d))
                .ok_or(CodecError::Invalid { what: "mantissa" })?;
            from_decimal(k, m)?
        }
        C_DELTA => {
            let (k, pm) = base(slot)?;
            let d = unzigzag(r.varint("delta")?);
            let m = pm
                .checked_add(d)
                .ok_or(CodecError::Invalid { what: "mantissa" })?;
            from_decimal(k, m)?
        }
        C_ZERO => 0.0,
        C_SCALE => {
            let k = r.u8("decimal scale")?;
            if k > MAX_SCALE {
                return Err(CodecError::Invalid {
                    what: "decimal scale",
                });
            }
            from_decimal(k, unzigzag(r.varint("mantissa")?))?
        }
        c if c & 0xc0 == C_XOR => {
            let lz = u32::from((c >> 3) & 7);
            let tz = u32::from(c & 7);
            if lz + tz >= 8 {
                return Err(CodecError::Invalid {
                    what: "xor control",
                });
            }
            let n = (8 - lz - tz) as usize;
            let b = r.bytes(n, "xor bytes")?;
            let mut be = [0u8; 8];
            be[lz as usize..lz as usize + n].copy_from_slice(b);
            let x = u64::from_be_bytes(be);
            f64::from_bits(x ^ slot.prev.map_or(0, f64::to_bits))
        }
        _ => {
            return Err(CodecError::Invalid {
                what: "value control",
            });
        }
    };
    slot.advance(v);
    Ok(v)
}

/// Per-set state on one connection.
#[derive(Debug, Default)]
struct SetState {
    len: usize,
    prev_ts: Option<i64>,
    ts_delta: i64,
    slots: Vec<Slot>,
}

impl SetState {
    fn new(len: usize) -> Self {
        SetState {
            len,
            prev_ts: None,
            ts_delta: 0,
            slots: vec![Slot::default(); len],
        }
    }
    /// Timestamp coded as delta-of-delta against this set's previous scrape.
    fn ts_code(&mut self, ts: i64) -> i64 {
        let code = match self.prev_ts {
            None => ts,
            Some(p) => ts.wrapping_sub(p).wrapping_sub(self.ts_delta),
        };
        self.advance_ts(ts);
        code
    }
    fn ts_decode(&mut self, code: i64) -> i64 {
        let ts = match self.prev_ts {
            None => code,
            Some(p) => p.wrapping_add(self.ts_delta).wrapping_add(code),
        };
        self.advance_ts(ts);
        ts
    }
    fn advance_ts(&mut self, ts: i64) {
        if let Some(p) = self.prev_ts {
            self.ts_delta = ts.wrapping_sub(p);
        }
        self.prev_ts = Some(ts);
    }
}

// ---------------------------------------------------------------------------------------------
// Encoder and decoder.

/// Encoder thresholds past which it resets the connection's state (a flag in the batch), so
/// a long-lived connection under series churn keeps bounded memory on both sides. Kept well
/// below the gateway's default limits.
const RESET_STRING_BYTES: usize = 16 << 20;
const RESET_SETS: usize = 50_000;

const FLAG_RESET: u8 = 1;
/// Set definitions carry metadata and scrapes carry extras (histograms, exemplars). Only set
/// when the batch has some, so float-only batches stay readable by older gateways.
const FLAG_EXTRAS: u8 = 2;

/// Agent side, one per connection.
#[derive(Debug)]
pub struct TunnelEncoder {
    level: i32,
    ids: HashMap<u64, u32>,
    states: Vec<SetState>,
    strings: HashMap<String, u32>,
    string_bytes: usize,
    pending_reset: bool,
    reset_string_bytes: usize,
    reset_sets: usize,
}

impl TunnelEncoder {
    /// `level`: zstd level (3 is a good default on small CPUs).
    pub fn new(level: i32) -> Self {
        TunnelEncoder {
            level,
            ids: HashMap::new(),
            states: Vec::new(),
            strings: HashMap::new(),
            string_bytes: 0,
            pending_reset: false,
            reset_string_bytes: RESET_STRING_BYTES,
            reset_sets: RESET_SETS,
        }
    }

    /// Overrides the thresholds past which [`TunnelEncoder::prepare`] resets the state.
    pub fn with_reset_thresholds(mut self, string_bytes: usize, sets: usize) -> Self {
        self.reset_string_bytes = string_bytes;
        self.reset_sets = sets;
        self
    }

    /// Whether the set must be defined before use on this connection.
    pub fn knows(&self, set_id: u64) -> bool {
        self.ids.contains_key(&set_id)
    }

    fn reset(&mut self) {
        self.ids.clear();
        self.states.clear();
        self.strings.clear();
        self.string_bytes = 0;
    }

    /// Encodes a batch. `defs` must hold the encoded [`SeriesSet`] of every set this connection
    /// has not seen yet (a reset may make more sets unknown: callers look them up with
    /// [`TunnelEncoder::knows`] after [`TunnelEncoder::prepare`]). Returns the compressed
    /// payload and the number of samples in it.
    pub fn encode(
        &mut self,
        records: &[ScrapeRecord],
        defs: &HashMap<u64, Bytes>,
    ) -> Result<(Bytes, u64), CodecError> {
        // Resolve every new definition before touching any state.
        let mut new_sets: Vec<(u64, SeriesSet)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for r in records {
            if self.ids.contains_key(&r.set_id) || !seen.insert(r.set_id) {
                continue;
            }
            let def = defs
                .get(&r.set_id)
                .ok_or(CodecError::MissingDefinition(r.set_id))?;
            new_sets.push((r.set_id, SeriesSet::decode(def, usize::MAX)?));
        }
        for r in records {
            let len = match self.ids.get(&r.set_id) {
                Some(local) => self.states[*local as usize].len,
                None => new_sets
                    .iter()
                    .find(|(id, _)| *id == r.set_id)
                    .map_or(0, |(_, s)| s.series.len()),
            };
            if len != r.values.len() {
                return Err(CodecError::Invalid {
                    what: "record length for its series set",
                });
            }
        }

        let extras = new_sets.iter().any(|(_, s)| !s.metadata.is_empty())
            || records.iter().any(|r| !r.extras.is_empty());
        let mut body = BytesMut::new();
        let mut flags = if self.pending_reset { FLAG_RESET } else { 0 };
        if extras {
            flags |= FLAG_EXTRAS;
        }
        body.put_u8(flags);
        self.pending_reset = false;
        // New strings, then definitions referring to them.
        let mut strings_out = BytesMut::new();
        let mut n_strings = 0u64;
        let mut defs_out = BytesMut::new();
        for (set_id, set) in &new_sets {
            let local = self.ids.len() as u32;
            self.ids.insert(*set_id, local);
            self.states.push(SetState::new(set.series.len()));
            put_varint(&mut defs_out, u64::from(local));
            put_varint(&mut defs_out, set.series.len() as u64);
            for labels in &set.series {
                put_varint(&mut defs_out, labels.len() as u64);
                for l in labels {
                    for text in [&l.name, &l.value] {
                        let next = self.strings.len() as u32;
                        let id = *self.strings.entry(text.clone()).or_insert_with(|| {
                            put_varint(&mut strings_out, text.len() as u64);
                            strings_out.put_slice(text.as_bytes());
                            n_strings += 1;
                            next
                        });
                        if id == next {
                            self.string_bytes += text.len();
                        }
                        put_varint(&mut defs_out, u64::from(id));
                    }
                }
            }
            if extras {
                put_messages(&mut defs_out, &set.metadata);
            }
        }
        put_varint(&mut body, n_strings);
        body.put_slice(&strings_out);
        put_varint(&mut body, new_sets.len() as u64);
        body.put_slice(&defs_out);
        put_varint(&mut body, records.len() as u64);
        let mut samples = 0u64;
        for r in records {
            let local = self.ids[&r.set_id];
            let st = &mut self.states[local as usize];
            put_varint(&mut body, u64::from(local));
            put_varint(&mut body, zigzag(st.ts_code(r.timestamp)));
            put_varint(&mut body, r.exceptions.len() as u64);
            for (i, ts) in &r.exceptions {
                put_varint(&mut body, u64::from(*i));
                put_varint(&mut body, zigzag(*ts));
            }
            if extras {
                put_extras(&mut body, &r.extras);
            }
            for (v, slot) in r.values.iter().zip(st.slots.iter_mut()) {
                encode_value(&mut body, *v, slot);
            }
            samples += r.values.len() as u64;
        }
        let compressed =
            zstd::bulk::compress(&body, self.level).map_err(|e| CodecError::Zstd(e.to_string()))?;
        Ok((Bytes::from(compressed), samples))
    }

    /// Makes the next batch reset both sides' state and define every set it uses again (so
    /// the gateway writes their metadata again): the shipper calls it every
    /// `redefine_interval`, so a destination added later gets metadata too.
    pub fn reset_next(&mut self) {
        self.reset();
        self.pending_reset = true;
    }

    /// Call before looking up definitions for a batch: when the connection's tables have grown
    /// past their thresholds, the next batch resets them (both sides) and defines everything
    /// it uses again. Returns whether it will.
    pub fn prepare(&mut self) -> bool {
        if self.string_bytes > self.reset_string_bytes || self.ids.len() > self.reset_sets {
            self.reset();
            self.pending_reset = true;
        }
        self.pending_reset
    }
}

/// A series' labels as (name, value) references into the connection's string table.
type RefLabels = Vec<(u32, u32)>;

/// A set as the decoder holds it: label references, and (built on first use by
/// [`TunnelDecoder::decode_remote_write`]) each series' labels already encoded as remote-write
/// `Label` fields, sorted by name, so forwarding copies bytes instead of building messages.
#[derive(Debug, Default)]
struct SetDef {
    series: Vec<RefLabels>,
    /// Per series: its encoded labels, or why the label limits refuse it.
    encoded: Option<Vec<Result<Bytes, LabelReject>>>,
    /// Hash of the set's labels, for a [`SeriesGate`] (computed with `encoded`).
    hash: u64,
    /// The metadata of its families (usually none).
    metadata: Vec<MetricMetadata>,
}

/// Decides whether a series set (a target's shape) may be forwarded, for an active-series
/// limit shared by a tenant's connections: `admit` when a connection first uses a set,
/// `touch` every time a record uses it.
pub trait SeriesGate: Send + Sync + std::fmt::Debug {
    fn admit(&self, set_hash: u64, series: usize) -> bool;
    fn touch(&self, set_hash: u64);
}

/// Per-series label limits (a tenant's, at the gateway), checked on the labels as written
/// (after the stamp); 0 means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LabelLimits {
    /// Labels per series, `__name__` included.
    pub max_names: usize,
    pub max_name_length: usize,
    pub max_value_length: usize,
}

/// Why [`LabelLimits`] refuse a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelReject {
    TooManyLabels,
    NameTooLong,
    ValueTooLong,
    /// The [`SeriesGate`] refused the series' set (active-series limit).
    TooManySeries,
}

impl LabelReject {
    pub const ALL: [LabelReject; 4] = [
        LabelReject::TooManyLabels,
        LabelReject::NameTooLong,
        LabelReject::ValueTooLong,
        LabelReject::TooManySeries,
    ];

    /// The `reason` label value of the counters.
    pub fn reason(self) -> &'static str {
        match self {
            LabelReject::TooManyLabels => "label_count",
            LabelReject::NameTooLong => "label_name_length",
            LabelReject::ValueTooLong => "label_value_length",
            LabelReject::TooManySeries => "max_series",
        }
    }
}

impl LabelLimits {
    /// Checks one series' labels (name, value).
    pub fn check<'a>(
        &self,
        labels: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), LabelReject> {
        if self.max_names > 0 && labels.len() > self.max_names {
            return Err(LabelReject::TooManyLabels);
        }
        for (n, v) in labels {
            if self.max_name_length > 0 && n.len() > self.max_name_length {
                return Err(LabelReject::NameTooLong);
            }
            if self.max_value_length > 0 && v.len() > self.max_value_length {
                return Err(LabelReject::ValueTooLong);
            }
        }
        Ok(())
    }
}

fn put_len_field(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    put_varint(out, body.len() as u64);
    out.put_slice(body);
}

/// A set's identity for a [`SeriesGate`]: the hash of its series' encoded labels.
fn set_hash(encoded: &[Result<Bytes, LabelReject>]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    for e in encoded {
        match e {
            Ok(b) => b.hash(&mut h),
            Err(r) => (*r as u8).hash(&mut h),
        }
    }
    h.finish()
}

/// Encodes a series' labels as repeated `Label` fields of a remote-write `TimeSeries`, with
/// `stamp` applied.
fn encode_labels(
    labels: &RefLabels,
    strings: &[String],
    stamp: Option<&crate::model::Stamp>,
    limits: Option<&LabelLimits>,
) -> Result<Bytes, LabelReject> {
    let mut sorted: Vec<(&str, &str)> = labels
        .iter()
        .map(|(n, v)| (strings[*n as usize].as_str(), strings[*v as usize].as_str()))
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    sorted.dedup_by(|later, earlier| later.0 == earlier.0);
    let stamped: Vec<Label>;
    if let Some(s) = stamp {
        let mut owned: Vec<Label> = sorted.iter().map(|(n, v)| Label::new(*n, *v)).collect();
        s.apply(&mut owned);
        stamped = owned;
        sorted = stamped
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
    }
    if let Some(l) = limits {
        l.check(sorted.iter().copied())?;
    }
    let mut out = BytesMut::new();
    let mut label = BytesMut::new();
    for (name, value) in sorted {
        label.clear();
        put_len_field(&mut label, 0x0a, name.as_bytes());
        put_len_field(&mut label, 0x12, value.as_bytes());
        put_len_field(&mut out, 0x0a, &label);
    }
    Ok(out.freeze())
}

/// What [`TunnelDecoder::decode_remote_write`] wrote, and what it passed over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Samples written.
    pub samples: u64,
    /// Samples of the skipped records (retransmissions), not written.
    pub skipped: u64,
    /// The HA (cluster, replica) label values of the first series written, as sent (before
    /// any stamp), when [`TunnelDecoder::with_ha_labels`] is set and that series has both.
    pub ha: Option<(String, String)>,
    /// Samples not written because [`TunnelDecoder::with_label_limits`] or the series gate
    /// refuse their series, by [`LabelReject`] (in [`LabelReject::ALL`] order).
    pub rejected: [u64; 4],
    /// What the written request holds besides float samples ([`crate::remote_write::extras`]
    /// bits).
    pub extras: u8,
}

/// Gateway side, one per connection. Batches must be decoded in sequence order.
#[derive(Debug)]
pub struct TunnelDecoder {
    max_body: usize,
    max_sets: usize,
    max_series: usize,
    max_string_bytes: usize,
    sets: Vec<SetDef>,
    states: Vec<SetState>,
    strings: Vec<String>,
    string_bytes: usize,
    /// Label pairs held in all sets, bounded like the string table.
    pairs: usize,
    /// Newest sample timestamp seen in the last decoded batch.
    newest: i64,
    /// Labels stamped on every series (the agent's identity), if any.
    stamp: Option<std::sync::Arc<crate::model::Stamp>>,
    /// Names of the HA cluster and replica labels, when the gateway elects replicas.
    ha_labels: Option<(String, String)>,
    /// Label limits on the series written by `decode_remote_write`.
    label_limits: Option<LabelLimits>,
    /// Active-series limit on the sets written by `decode_remote_write`.
    gate: Option<std::sync::Arc<dyn SeriesGate>>,
    /// Sets whose labels were encoded (first used) in the last walk: their metadata is
    /// written with that batch.
    fresh: Vec<usize>,
}

impl TunnelDecoder {
    /// `max_body`: largest decompressed batch; `max_sets`: sets per connection;
    /// `max_series`: series per set; string table bytes are bounded by 4 × `max_body`.
    pub fn new(max_body: usize, max_sets: usize, max_series: usize) -> Self {
        TunnelDecoder {
            max_body,
            max_sets,
            max_series,
            max_string_bytes: max_body.saturating_mul(4),
            sets: Vec::new(),
            states: Vec::new(),
            strings: Vec::new(),
            string_bytes: 0,
            pairs: 0,
            newest: i64::MIN,
            stamp: None,
            ha_labels: None,
            label_limits: None,
            gate: None,
            fresh: Vec::new(),
        }
    }

    /// Asks `gate` before writing a set's series (counted in [`Decoded::rejected`] when
    /// refused; a refused set stays refused for this connection).
    pub fn with_series_gate(mut self, gate: Option<std::sync::Arc<dyn SeriesGate>>) -> Self {
        self.gate = gate;
        self
    }

    /// Refuses series over these limits in [`Self::decode_remote_write`] (counted in
    /// [`Decoded::rejected`]).
    pub fn with_label_limits(mut self, limits: Option<LabelLimits>) -> Self {
        self.label_limits = limits;
        self
    }

    /// Reports the values of these (cluster, replica) labels in [`Decoded::ha`].
    pub fn with_ha_labels(mut self, labels: Option<(String, String)>) -> Self {
        self.ha_labels = labels;
        self
    }

    /// Stamps `stamp` on every series decoded from now on (applied once per series set).
    pub fn with_stamp(mut self, stamp: Option<std::sync::Arc<crate::model::Stamp>>) -> Self {
        self.stamp = stamp;
        self
    }

    /// Newest sample timestamp (ms) in the last decoded batch; `i64::MIN` if it had none.
    pub fn newest_timestamp(&self) -> i64 {
        self.newest
    }

    /// Decodes one batch into series with one sample each; returns them and the sample count.
    pub fn decode(&mut self, payload: &[u8]) -> Result<(Vec<TimeSeries>, u64), CodecError> {
        let mut out = Vec::new();
        let stamp = self.stamp.clone();
        let mut bad = None;
        let samples = self.walk(
            payload,
            false,
            |set, strings, _, i, value, timestamp, extras| {
                let mut labels: Vec<Label> = set.series[i]
                    .iter()
                    .map(|(n, v)| Label {
                        name: strings[*n as usize].clone(),
                        value: strings[*v as usize].clone(),
                    })
                    .collect();
                if let Some(s) = &stamp {
                    s.apply(&mut labels);
                }
                let mut ts = TimeSeries::floats(labels, vec![Sample { value, timestamp }]);
                for (_, kind, body) in extras {
                    if let Err(e) = attach(&mut ts, *kind, body) {
                        bad = Some(e);
                    }
                }
                out.push(ts);
            },
        )?;
        match bad {
            Some(e) => Err(e),
            None => Ok((out, samples)),
        }
    }

    /// Decodes one batch straight into the protobuf encoding of a remote-write 1.0
    /// `WriteRequest` (labels sorted by name, one sample per series), appended to `out`.
    /// This is the gateway's fast path: no per-sample allocation.
    ///
    /// The first `skip` scrapes (queue records) are decoded, to keep the connection's state in
    /// step, but not written: the gateway uses this to drop what it already forwarded for the
    /// same queue on an earlier connection. They are counted apart ([`Decoded::skipped`]).
    pub fn decode_remote_write(
        &mut self,
        payload: &[u8],
        out: &mut BytesMut,
        skip: u64,
    ) -> Result<Decoded, CodecError> {
        let mut ts_body = BytesMut::new();
        let mut sample = BytesMut::new();
        let mut written = 0u64;
        let mut skipped = 0u64;
        let mut rejected = [0u64; 4];
        let mut ha = None;
        let mut found = 0u8;
        let ha_labels = self.ha_labels.take();
        let walked = self.walk(
            payload,
            true,
            |set, strings, scrape, i, value, timestamp, extras| {
                if scrape < skip {
                    skipped += 1;
                    return;
                }
                if written == 0
                    && let Some((cluster, replica)) = &ha_labels
                {
                    let find = |name: &str| {
                        set.series[i]
                            .iter()
                            .find(|(n, _)| strings[*n as usize] == *name)
                            .map(|(_, v)| strings[*v as usize].clone())
                    };
                    ha = find(cluster).zip(find(replica));
                }
                let labels = match set.encoded.as_ref().and_then(|e| e.get(i)) {
                    Some(Err(reject)) => {
                        rejected[*reject as usize] += 1;
                        return;
                    }
                    Some(Ok(l)) => Some(l),
                    None => None,
                };
                written += 1;
                ts_body.clear();
                if let Some(l) = labels {
                    ts_body.put_slice(l);
                }
                // TimeSeries: samples (2), exemplars (3), histograms (4), created (1001). A
                // histogram replaces the float sample.
                let histogram = extras.iter().find(|e| e.1 == ExtraKind::Histogram);
                if histogram.is_none() {
                    sample.clear();
                    sample.put_u8(0x09);
                    sample.put_u64_le(value.to_bits());
                    sample.put_u8(0x10);
                    put_varint(&mut sample, timestamp as u64);
                    put_len_field(&mut ts_body, 0x12, &sample);
                }
                for (_, kind, body) in extras {
                    if *kind == ExtraKind::Exemplar {
                        put_len_field(&mut ts_body, 0x1a, body);
                        found |= crate::remote_write::extras::EXEMPLARS;
                    }
                }
                if let Some((_, _, body)) = histogram {
                    put_len_field(&mut ts_body, 0x22, body);
                    found |= crate::remote_write::extras::HISTOGRAMS;
                }
                // Uplink's created timestamp (field 1001, varint; validated by `walk`).
                if let Some(ms) = extras
                    .iter()
                    .find(|e| e.1 == ExtraKind::Created)
                    .and_then(|e| created(e.2).ok())
                    && ms != 0
                {
                    put_varint(&mut ts_body, (1001 << 3) as u64);
                    put_varint(&mut ts_body, ms as u64);
                    found |= crate::remote_write::extras::CREATED;
                }
                put_len_field(out, 0x0a, &ts_body);
            },
        );
        self.ha_labels = ha_labels;
        walked?;
        // WriteRequest.metadata (3) of the sets first used on this connection.
        let mut md = BytesMut::new();
        for &local in &self.fresh {
            for m in &self.sets[local].metadata {
                md.clear();
                prost::Message::encode_raw(m, &mut md);
                put_len_field(out, 0x1a, &md);
                found |= crate::remote_write::extras::METADATA;
            }
        }
        Ok(Decoded {
            samples: written,
            skipped,
            ha,
            rejected,
            extras: found,
        })
    }

    /// Parses a batch, updating the connection state, and calls `f(set, strings, scrape index
    /// in the batch, series index, value, timestamp)` for every sample in order. With `encode_labels`, sets get their
    /// remote-write label encoding before their first sample.
    fn walk(
        &mut self,
        payload: &[u8],
        want_encoded: bool,
        mut f: impl FnMut(&SetDef, &[String], u64, usize, f64, i64, &[(usize, ExtraKind, &[u8])]),
    ) -> Result<u64, CodecError> {
        let body = zstd::bulk::decompress(payload, self.max_body)
            .map_err(|e| CodecError::Zstd(e.to_string()))?;
        let mut r = Reader::new(&body);
        self.newest = i64::MIN;
        self.fresh.clear();
        let flags = r.u8("flags")?;
        if flags & !(FLAG_RESET | FLAG_EXTRAS) != 0 {
            return Err(CodecError::Invalid { what: "flags" });
        }
        if flags & FLAG_RESET != 0 {
            self.sets.clear();
            self.states.clear();
            self.strings.clear();
            self.string_bytes = 0;
            self.pairs = 0;
        }
        let n_strings = r.count("string count", 1, u32::MAX as u64)?;
        for _ in 0..n_strings {
            let s = r.string("string")?;
            self.string_bytes += s.len() + 16;
            if self.string_bytes > self.max_string_bytes {
                return Err(CodecError::TooLarge {
                    what: "string table bytes",
                    value: self.string_bytes as u64,
                    limit: self.max_string_bytes as u64,
                });
            }
            self.strings.push(s);
        }
        let nd = r.count("definition count", 2, self.max_sets as u64)?;
        for _ in 0..nd {
            let local = r.varint("set id")?;
            if local != self.sets.len() as u64 {
                return Err(CodecError::Invalid {
                    what: "set id out of order",
                });
            }
            if self.sets.len() >= self.max_sets {
                return Err(CodecError::TooLarge {
                    what: "series sets",
                    value: self.sets.len() as u64 + 1,
                    limit: self.max_sets as u64,
                });
            }
            let n = r.count("series count", 1, self.max_series as u64)?;
            let mut series = Vec::with_capacity(n);
            for _ in 0..n {
                let nl = r.count("label count", 2, MAX_LABELS_PER_SERIES as u64)?;
                self.pairs += nl + 1;
                if self.pairs * 8 > self.max_string_bytes {
                    return Err(CodecError::TooLarge {
                        what: "series definitions",
                        value: self.pairs as u64,
                        limit: (self.max_string_bytes / 8) as u64,
                    });
                }
                let mut labels = Vec::with_capacity(nl);
                for _ in 0..nl {
                    let name = r.varint("label name ref")?;
                    let value = r.varint("label value ref")?;
                    let known = self.strings.len() as u64;
                    if name >= known || value >= known {
                        return Err(CodecError::Invalid {
                            what: "string reference",
                        });
                    }
                    labels.push((name as u32, value as u32));
                }
                series.push(labels);
            }
            let metadata = if flags & FLAG_EXTRAS != 0 {
                read_messages(&mut r, "metadata")?
            } else {
                Vec::new()
            };
            self.sets.push(SetDef {
                series,
                encoded: None,
                hash: 0,
                metadata,
            });
            self.states.push(SetState::new(n));
        }
        let ns = r.count("scrape count", 3, u32::MAX as u64)?;
        let mut samples = 0u64;
        let mut exceptions: Vec<(usize, i64)> = Vec::new();
        let mut extras: Vec<(usize, ExtraKind, &[u8])> = Vec::new();
        for scrape in 0..ns as u64 {
            let local = r.varint("set id")? as usize;
            let (Some(set), Some(st)) = (self.sets.get_mut(local), self.states.get_mut(local))
            else {
                return Err(CodecError::UnknownSet(local as u64));
            };
            if want_encoded && set.encoded.is_none() {
                let strings = &self.strings;
                let stamp = self.stamp.as_deref();
                let limits = self.label_limits.as_ref();
                let mut encoded: Vec<Result<Bytes, LabelReject>> = set
                    .series
                    .iter()
                    .map(|l| encode_labels(l, strings, stamp, limits))
                    .collect();
                if let Some(gate) = &self.gate {
                    set.hash = set_hash(&encoded);
                    if !gate.admit(set.hash, set.series.len()) {
                        encoded.fill(Err(LabelReject::TooManySeries));
                    }
                }
                set.encoded = Some(encoded);
                self.fresh.push(local);
            } else if want_encoded && let Some(gate) = &self.gate {
                gate.touch(set.hash);
            }
            let ts = st.ts_decode(unzigzag(r.varint("timestamp")?));
            let n = set.series.len();
            let ne = r.count("exception count", 2, n as u64)?;
            exceptions.clear();
            for _ in 0..ne {
                let i = r.varint("exception index")?;
                let ets = unzigzag(r.varint("exception timestamp")?);
                let i = below(i, n, "exception index")?;
                exceptions.push((i, ets));
            }
            extras.clear();
            if flags & FLAG_EXTRAS != 0 {
                read_extras(&mut r, n, &mut extras)?;
                for (_, kind, b) in &extras {
                    let valid = match kind {
                        ExtraKind::Histogram => {
                            <crate::remote_write::Histogram as prost::Message>::decode(*b).is_ok()
                        }
                        ExtraKind::Exemplar => {
                            <crate::remote_write::Exemplar as prost::Message>::decode(*b).is_ok()
                        }
                        ExtraKind::Created => created(b).is_ok(),
                    };
                    if !valid {
                        return Err(CodecError::Invalid { what: "extra body" });
                    }
                }
                extras.sort_by_key(|e| e.0);
            }
            let mut next_extra = 0;
            let mut next_exc = 0;
            exceptions.sort_unstable();
            for (i, slot) in st.slots.iter_mut().enumerate() {
                let value = decode_value(&mut r, slot)?;
                let mut t = ts;
                while let Some((ei, ets)) = exceptions.get(next_exc).copied() {
                    if ei > i {
                        break;
                    }
                    if ei == i {
                        t = ets;
                    }
                    next_exc += 1;
                }
                self.newest = self.newest.max(t);
                let first = next_extra;
                while extras.get(next_extra).is_some_and(|e| e.0 == i) {
                    next_extra += 1;
                }
                f(
                    set,
                    &self.strings,
                    scrape,
                    i,
                    value,
                    t,
                    &extras[first..next_extra],
                );
            }
            samples += n as u64;
        }
        if !r.is_empty() {
            return Err(CodecError::Trailing { what: "batch" });
        }
        Ok(samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(t: usize, n: u64, series: usize) -> Vec<TimeSeries> {
        (0..series)
            .map(|s| {
                let value = match s % 5 {
                    0 => (n * 10 + s as u64) as f64,            // steady counter
                    1 => (n as f64) * 0.25 + s as f64,          // gauge with fractions
                    2 => f64::from_bits(0x7ff0_0000_0000_0002), // stale marker
                    3 => {
                        if n % 2 == 0 {
                            -0.0
                        } else {
                            1e300
                        }
                    }
                    _ => (n * n) as f64, // accelerating counter
                };
                TimeSeries {
                    labels: vec![
                        Label::new("__name__", format!("m{s}")),
                        Label::new("instance", format!("t{t}")),
                    ],
                    samples: vec![Sample {
                        value,
                        timestamp: 1_700_000_000_000 + n as i64 * 15_000 + (n as i64 % 3),
                    }],
                    ..Default::default()
                }
            })
            .collect()
    }

    fn same(a: &[TimeSeries], b: &[TimeSeries]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.labels == y.labels
                    && x.samples.len() == y.samples.len()
                    && x.samples.iter().zip(&y.samples).all(|(p, q)| {
                        p.timestamp == q.timestamp && p.value.to_bits() == q.value.to_bits()
                    })
            })
    }

    #[test]
    fn records_roundtrip_through_disk_and_wire() {
        let mut enc = TunnelEncoder::new(3);
        let mut dec = TunnelDecoder::new(1 << 24, 1000, 10_000);
        let mut rw_dec = TunnelDecoder::new(1 << 24, 1000, 10_000);
        let mut defs = HashMap::new();
        for batch in 0..6u64 {
            let mut records = vec![];
            let mut want = vec![];
            for n in batch * 3..batch * 3 + 3 {
                for t in 0..3 {
                    let mut series = scrape(t, n, 12);
                    // One sample with its own timestamp.
                    series[7].samples[0].timestamp = 42;
                    let ts = series[0].samples[0].timestamp;
                    let (set, rec) = split(series.clone(), ts);
                    let rec = ScrapeRecord::decode(&rec.encode()).expect("record roundtrip");
                    assert_eq!(SeriesSet::decode(&set.encode(), 100).as_ref(), Ok(&set));
                    assert_eq!(join(&set, &rec).map(|j| same(&j, &series)), Ok(true));
                    defs.insert(set.id(), set.encode());
                    records.push(rec);
                    want.extend(series);
                }
            }
            let (payload, samples) = enc.encode(&records, &defs).expect("encode");
            assert_eq!(samples, want.len() as u64);
            let (got, n) = dec.decode(&payload).expect("decode");
            assert_eq!(n, samples);
            assert!(same(&got, &want), "batch {batch}");
            let mut rw = BytesMut::new();
            assert_eq!(
                rw_dec
                    .decode_remote_write(&payload, &mut rw, 0)
                    .map(|d| d.samples),
                Ok(samples)
            );
            let req = <crate::remote_write::WriteRequest as prost::Message>::decode(rw.freeze())
                .expect("valid remote-write protobuf");
            let mut sorted = want.clone();
            for ts in &mut sorted {
                crate::model::normalize(&mut ts.labels);
            }
            assert!(same(&req.timeseries, &sorted), "remote-write batch {batch}");
        }
    }

    #[test]
    fn histograms_exemplars_and_metadata_roundtrip_through_disk_and_wire() {
        use crate::remote_write::{BucketSpan, Exemplar, Histogram, MetricType, WriteRequest};
        let hist = |n: u64, ts: i64| Histogram {
            count: Some(crate::remote_write::histogram::Count::CountInt(n)),
            sum: n as f64 * 0.5,
            schema: 2,
            zero_threshold: 1e-128,
            positive_spans: vec![BucketSpan {
                offset: 1,
                length: 2,
            }],
            positive_deltas: vec![n as i64, -1],
            timestamp: ts,
            ..Default::default()
        };
        let metadata = vec![MetricMetadata {
            r#type: MetricType::Histogram as i32,
            metric_family_name: "lat".into(),
            help: "latency".into(),
            unit: "seconds".into(),
        }];
        let mut enc = TunnelEncoder::new(3);
        let mut dec = TunnelDecoder::new(1 << 24, 1000, 10_000);
        let mut rw_dec = TunnelDecoder::new(1 << 24, 1000, 10_000);
        let mut defs = HashMap::new();
        for n in 0..4u64 {
            let ts = 1_700_000_000_000 + n as i64 * 1000;
            let mut series = scrape(0, n, 3);
            series[1].samples.clear();
            series[1].histograms = vec![hist(n, if n == 2 { ts - 5 } else { ts })];
            series[1].labels[0].value = "lat".into();
            series[2].samples[0].value = 1.5; // not a NaN, so that series compare equal
            series[0].created_timestamp = 1_600_000_000_000 + n as i64;
            series[2].exemplars = vec![Exemplar {
                labels: vec![Label::new("trace_id", format!("{n:032x}"))],
                value: 0.25,
                timestamp: ts - 1,
            }];
            for s in &mut series {
                s.samples.iter_mut().for_each(|x| x.timestamp = ts);
            }
            let (set, rec) = split_with(series.clone(), metadata.clone(), ts);
            assert_eq!(rec.exceptions.len(), usize::from(n == 2));
            let rec = ScrapeRecord::decode(&rec.encode()).expect("record roundtrip");
            let set = SeriesSet::decode(&set.encode(), 100).expect("set roundtrip");
            assert_eq!(set.metadata, metadata);
            assert_eq!(join(&set, &rec).expect("joins"), series);
            defs.insert(set.id(), set.encode());
            let (payload, samples) = enc.encode(&[rec], &defs).expect("encode");
            assert_eq!(samples, 3);
            let (got, _) = dec.decode(&payload).expect("decode");
            assert_eq!(got, series);
            let mut rw = BytesMut::new();
            rw_dec
                .decode_remote_write(&payload, &mut rw, 0)
                .expect("decodes");
            let req = <WriteRequest as prost::Message>::decode(rw.freeze()).expect("protobuf");
            assert_eq!(req.timeseries, series);
            // Metadata goes with the batch that first uses the set on the connection.
            let want: &[MetricMetadata] = if n == 0 { &metadata } else { &[] };
            assert_eq!(req.metadata, want);
        }
        // After `reset_next`, the sets are defined again and their metadata written again.
        enc.reset_next();
        let (set, rec) = split_with(scrape(0, 9, 3), metadata.clone(), 9);
        defs.insert(set.id(), set.encode());
        let (payload, _) = enc.encode(&[rec], &defs).expect("encode");
        let mut rw = BytesMut::new();
        rw_dec
            .decode_remote_write(&payload, &mut rw, 0)
            .expect("decodes after a reset");
        let req = <WriteRequest as prost::Message>::decode(rw.freeze()).expect("protobuf");
        assert_eq!(req.metadata, metadata);
        // Metadata alone (a sidecar's metadata-only request): a set without series.
        let (only, rec) = split_with(vec![], metadata.clone(), 5);
        let defs = HashMap::from([(only.id(), only.encode())]);
        let (payload, samples) = enc.encode(&[rec], &defs).expect("encode");
        assert_eq!(samples, 0);
        let mut rw = BytesMut::new();
        let d = rw_dec
            .decode_remote_write(&payload, &mut rw, 0)
            .expect("decodes");
        assert_eq!(d.extras, crate::remote_write::extras::METADATA);
        let req = <WriteRequest as prost::Message>::decode(rw.freeze()).expect("protobuf");
        assert!(req.timeseries.is_empty());
        assert_eq!(req.metadata, metadata);
        // A set without metadata keeps the id and encoding it had before metadata existed.
        let (plain, _) = split(scrape(0, 0, 2), 0);
        let mut legacy = BytesMut::new();
        put_varint(&mut legacy, 2);
        for s in &plain.series {
            put_varint(&mut legacy, s.len() as u64);
            for l in s {
                for t in [&l.name, &l.value] {
                    put_varint(&mut legacy, t.len() as u64);
                    legacy.put_slice(t.as_bytes());
                }
            }
        }
        assert_eq!(plain.encode(), legacy.freeze());
        // Float-only batches do not set the extras flag (older gateways read them).
        let mut enc = TunnelEncoder::new(1);
        let defs = HashMap::from([(plain.id(), plain.encode())]);
        let (_, rec) = split(scrape(0, 0, 2), 0);
        let (payload, _) = enc.encode(&[rec], &defs).expect("encode");
        let body = zstd::bulk::decompress(&payload, 1 << 20).expect("zstd");
        assert_eq!(body[0], 0);
    }

    #[test]
    fn a_stamp_overrides_what_the_agent_sent_on_both_decode_paths() {
        let mut enc = TunnelEncoder::new(1);
        let stamp = std::sync::Arc::new(crate::model::Stamp {
            labels: vec![Label::new("site", "verified")],
            rename_conflicts: true,
            remove: vec!["__replica__".into()],
        });
        let mut dec = TunnelDecoder::new(1 << 24, 1000, 10_000).with_stamp(Some(stamp.clone()));
        let mut rw_dec = TunnelDecoder::new(1 << 24, 1000, 10_000)
            .with_stamp(Some(stamp))
            .with_ha_labels(Some(("cluster".into(), "__replica__".into())));
        let mut series = scrape(0, 0, 3);
        for ts in &mut series {
            ts.labels.push(Label::new("site", "spoofed"));
            ts.labels.push(Label::new("cluster", "eu"));
            ts.labels.push(Label::new("__replica__", "r2"));
            crate::model::normalize(&mut ts.labels);
        }
        let (set, rec) = split(series, 5);
        let defs = HashMap::from([(set.id(), set.encode())]);
        let (payload, _) = enc.encode(&[rec], &defs).expect("encode");
        let (got, _) = dec.decode(&payload).expect("decode");
        let mut rw = BytesMut::new();
        let decoded = rw_dec
            .decode_remote_write(&payload, &mut rw, 0)
            .expect("decode");
        // The HA labels as sent; the replica label itself is removed from every series.
        assert_eq!(decoded.ha, Some(("eu".into(), "r2".into())));
        let req = <crate::remote_write::WriteRequest as prost::Message>::decode(rw.freeze())
            .expect("valid");
        for labels in got
            .iter()
            .map(|t| &t.labels)
            .chain(req.timeseries.iter().map(|t| &t.labels))
        {
            assert_eq!(crate::model::get(labels, "site"), Some("verified"));
            assert_eq!(crate::model::get(labels, "exported_site"), Some("spoofed"));
            assert_eq!(crate::model::get(labels, "__replica__"), None);
            assert_eq!(crate::model::get(labels, "cluster"), Some("eu"));
            assert!(labels.windows(2).all(|w| w[0].name < w[1].name), "sorted");
        }
    }

    #[test]
    fn label_limits_refuse_series_and_count_their_samples() {
        let mut enc = TunnelEncoder::new(1);
        let mut series = scrape(0, 0, 4);
        series[1].labels.push(Label::new("long", "x".repeat(40)));
        series[2].labels.push(Label::new("n".repeat(40), "v"));
        for ts in &mut series {
            crate::model::normalize(&mut ts.labels);
        }
        let most = series.iter().map(|t| t.labels.len()).max().expect("series");
        series[3]
            .labels
            .extend((0..most).map(|i| Label::new(format!("x{i}"), "v")));
        crate::model::normalize(&mut series[3].labels);
        let (set, rec) = split(series, 5);
        let defs = HashMap::from([(set.id(), set.encode())]);
        let (payload, _) = enc.encode(&[rec], &defs).expect("encode");
        let mut dec =
            TunnelDecoder::new(1 << 24, 1000, 10_000).with_label_limits(Some(LabelLimits {
                max_names: most,
                max_name_length: 30,
                max_value_length: 30,
            }));
        let mut rw = BytesMut::new();
        let d = dec
            .decode_remote_write(&payload, &mut rw, 0)
            .expect("decode");
        assert_eq!(d.samples, 1);
        assert_eq!(d.rejected, [1, 1, 1, 0]);
        let req = <crate::remote_write::WriteRequest as prost::Message>::decode(rw.freeze())
            .expect("valid");
        assert_eq!(req.timeseries.len(), 1);
    }

    #[test]
    fn steady_counters_cost_about_a_byte_before_zstd() {
        let mut slot = Slot::default();
        let mut out = BytesMut::new();
        for n in 0..100u64 {
            encode_value(&mut out, (1000 + n * 7) as f64, &mut slot);
        }
        // First value raw (XOR vs zero), second a delta, then one byte each.
        assert!(out.len() < 100 + 12, "{}", out.len());
    }

    #[test]
    fn missing_definitions_and_unknown_sets_are_errors() {
        let (set, rec) = split(scrape(0, 0, 3), 5);
        let mut enc = TunnelEncoder::new(1);
        assert_eq!(
            enc.encode(std::slice::from_ref(&rec), &HashMap::new()),
            Err(CodecError::MissingDefinition(set.id()))
        );
        let mut defs = HashMap::new();
        defs.insert(set.id(), set.encode());
        let (payload, _) = enc
            .encode(std::slice::from_ref(&rec), &defs)
            .expect("encode");
        let (payload2, _) = enc
            .encode(std::slice::from_ref(&rec), &defs)
            .expect("encode");
        // A fresh decoder (another gateway) cannot decode the second batch alone.
        let mut fresh = TunnelDecoder::new(1 << 20, 10, 10);
        assert_eq!(fresh.decode(&payload2), Err(CodecError::UnknownSet(0)));
        let mut dec = TunnelDecoder::new(1 << 20, 10, 10);
        dec.decode(&payload).expect("first");
        dec.decode(&payload2).expect("second");
    }

    #[test]
    fn decoder_survives_mutated_input() {
        let (set, rec) = split(scrape(0, 1, 8), 5);
        let (_, rec2) = split(scrape(0, 2, 8), 6);
        let mut defs = HashMap::new();
        defs.insert(set.id(), set.encode());
        let mut enc = TunnelEncoder::new(1);
        let (p1, _) = enc.encode(&[rec], &defs).expect("encode");
        let (p2, _) = enc.encode(&[rec2], &defs).expect("encode");
        let raw1 = zstd::bulk::decompress(&p1, 1 << 20).expect("raw");
        let raw2 = zstd::bulk::decompress(&p2, 1 << 20).expect("raw");
        let mut rng = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..20_000 {
            let mut a = raw1.clone();
            let mut b = raw2.clone();
            let target = if round % 2 == 0 { &mut a } else { &mut b };
            for _ in 0..1 + next() % 3 {
                if target.is_empty() {
                    break;
                }
                let i = next() as usize % target.len();
                match next() % 3 {
                    0 => target[i] = next() as u8,
                    1 => target.truncate(i),
                    _ => target.insert(i, next() as u8),
                }
            }
            let mut dec = TunnelDecoder::new(1 << 16, 4, 64);
            let za = zstd::bulk::compress(&a, 1).expect("zstd");
            let zb = zstd::bulk::compress(&b, 1).expect("zstd");
            if dec.decode(&za).is_ok() {
                let _ = dec.decode(&zb);
            }
            let _ = ScrapeRecord::decode(&a);
            let _ = SeriesSet::decode(&a, 64);
            let _ = TunnelDecoder::new(1 << 16, 4, 64).decode(&a);
        }
    }

    #[test]
    fn reset_keeps_both_sides_in_step() {
        let mut enc = TunnelEncoder::new(1).with_reset_thresholds(1 << 20, 2);
        let mut dec = TunnelDecoder::new(1 << 20, 3, 100);
        let mut resets = 0;
        for n in 0..12u64 {
            // A new target shape every scrape: sets accumulate until the encoder resets.
            let mut series = scrape(n as usize, n, 4);
            let ts = series[0].samples[0].timestamp;
            series.truncate(2 + (n % 3) as usize);
            let (set, rec) = split(series.clone(), ts);
            if enc.prepare() {
                resets += 1;
            }
            let mut defs = HashMap::new();
            defs.insert(set.id(), set.encode());
            let (payload, _) = enc.encode(&[rec], &defs).expect("encode");
            let (got, _) = dec
                .decode(&payload)
                .expect("decoder stays within max_sets = 3");
            assert!(same(&got, &series));
        }
        assert!(resets >= 3);
    }

    #[test]
    fn decimals_code_as_integers_bit_exactly() {
        for v in [
            12345.67,
            0.1,
            -3.25,
            1e-6,
            99.999999,
            4.0,
            0.30000000000000004,
        ] {
            let mut slot = Slot::default();
            let mut out = BytesMut::new();
            let mut dslot = Slot::default();
            for i in 0..20 {
                let x = v + i as f64 * 0.01;
                encode_value(&mut out, x, &mut slot);
            }
            let mut r = Reader::new(&out);
            for i in 0..20 {
                let x = v + i as f64 * 0.01;
                let got = decode_value(&mut r, &mut dslot).expect("decodes");
                assert_eq!(got.to_bits(), x.to_bits(), "{v} step {i}");
            }
        }
        // A CPU-seconds-like counter with two decimals costs about a byte per sample.
        let mut slot = Slot::default();
        let mut out = BytesMut::new();
        for i in 0..100u64 {
            encode_value(&mut out, (1_234_567 + i * 1_003) as f64 / 100.0, &mut slot);
        }
        assert!(out.len() < 100 + 16, "{}", out.len());
        assert_eq!(decimal(-0.0), None);
        assert_eq!(decimal(f64::NAN), None);
        assert_eq!(decimal(2.5), Some((1, 25)));
    }
}
