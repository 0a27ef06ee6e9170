//! Prometheus remote-write 1.0 messages (`prometheus.WriteRequest`), written as prost derives
//! because these machines have no `protoc`.
//!
//! Field numbers follow `prompb/remote.proto` and `prompb/types.proto` exactly. Decoding is
//! bounded: [`decode_snappy`] refuses a body whose declared uncompressed size exceeds the
//! caller's limit before allocating it. [`v2`] holds the 2.0 messages; [`receive`] is the
//! receiving side of both versions (content negotiation, decoding, label validation).

use bytes::Bytes;
use prost::Message;

pub mod receive;

/// `Content-Type` of a remote-write 1.0 request.
pub const CONTENT_TYPE: &str = "application/x-protobuf";
/// `Content-Encoding` of a remote-write request.
pub const CONTENT_ENCODING: &str = "snappy";
/// `X-Prometheus-Remote-Write-Version` sent with 1.0 requests.
pub const VERSION_1: &str = "0.1.0";

#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    /// Sorted by name, names unique; `__name__` included.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// In timestamp order.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub exemplars: Vec<Exemplar>,
    /// Native histogram samples, in timestamp order. A series carries floats or histograms.
    #[prost(message, repeated, tag = "4")]
    pub histograms: Vec<Histogram>,
    /// Uplink's own field, not in `prompb`: the series' created (start) timestamp in ms, 0 for
    /// none, kept in the gateway's stored 1.0 bodies so that 2.0 requests can carry it
    /// (`created_timestamp`). Requests to 1.0 destinations leave it out (see `extras`).
    #[prost(int64, tag = "1001")]
    pub created_timestamp: i64,
}

impl TimeSeries {
    /// A series with float samples only.
    pub fn floats(labels: Vec<Label>, samples: Vec<Sample>) -> TimeSeries {
        TimeSeries {
            labels,
            samples,
            exemplars: Vec::new(),
            histograms: Vec::new(),
            created_timestamp: 0,
        }
    }

    /// Float samples plus histogram samples.
    pub fn sample_count(&self) -> usize {
        self.samples.len() + self.histograms.len()
    }
}

/// An exemplar: a sample of one observation, usually with a `trace_id` label.
#[derive(Clone, PartialEq, Message)]
pub struct Exemplar {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(double, tag = "2")]
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "3")]
    pub timestamp: i64,
}

/// A native (sparse, exponential-bucket) histogram sample, as `prompb.Histogram`: integer
/// histograms carry bucket counts as deltas, float histograms as absolute counts. The same
/// message (and field numbers) serves remote write 2.0; `custom_values` only travels there.
#[derive(Clone, PartialEq, Message)]
pub struct Histogram {
    #[prost(oneof = "histogram::Count", tags = "1, 2")]
    pub count: Option<histogram::Count>,
    #[prost(double, tag = "3")]
    pub sum: f64,
    /// Resolution: buckets are powers of `2^(2^-schema)`.
    #[prost(sint32, tag = "4")]
    pub schema: i32,
    #[prost(double, tag = "5")]
    pub zero_threshold: f64,
    #[prost(oneof = "histogram::ZeroCount", tags = "6, 7")]
    pub zero_count: Option<histogram::ZeroCount>,
    #[prost(message, repeated, tag = "8")]
    pub negative_spans: Vec<BucketSpan>,
    #[prost(sint64, repeated, tag = "9")]
    pub negative_deltas: Vec<i64>,
    #[prost(double, repeated, tag = "10")]
    pub negative_counts: Vec<f64>,
    #[prost(message, repeated, tag = "11")]
    pub positive_spans: Vec<BucketSpan>,
    #[prost(sint64, repeated, tag = "12")]
    pub positive_deltas: Vec<i64>,
    #[prost(double, repeated, tag = "13")]
    pub positive_counts: Vec<f64>,
    #[prost(enumeration = "histogram::ResetHint", tag = "14")]
    pub reset_hint: i32,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "15")]
    pub timestamp: i64,
    #[prost(double, repeated, tag = "16")]
    pub custom_values: Vec<f64>,
    /// Remote write 2.0 (Prometheus ≥ 3.8, spec 2.0-rc.4): the series' start timestamp, ms, 0
    /// for unknown. Only ever set between decoding a 2.0 request and taking it into a series'
    /// created timestamp; Uplink's stored series carry it per series.
    #[prost(int64, tag = "17")]
    pub start_timestamp: i64,
}

/// Types nested in [`Histogram`].
pub mod histogram {
    #[derive(Clone, Copy, PartialEq, prost::Oneof)]
    pub enum Count {
        #[prost(uint64, tag = "1")]
        CountInt(u64),
        #[prost(double, tag = "2")]
        CountFloat(f64),
    }

    #[derive(Clone, Copy, PartialEq, prost::Oneof)]
    pub enum ZeroCount {
        #[prost(uint64, tag = "6")]
        ZeroCountInt(u64),
        #[prost(double, tag = "7")]
        ZeroCountFloat(f64),
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum ResetHint {
        Unknown = 0,
        Yes = 1,
        No = 2,
        Gauge = 3,
    }
}

/// A run of consecutive buckets: `offset` from the end of the previous span (or from zero for
/// the first), then `length` buckets.
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct BucketSpan {
    #[prost(sint32, tag = "1")]
    pub offset: i32,
    #[prost(uint32, tag = "2")]
    pub length: u32,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, Copy, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

#[derive(Clone, PartialEq, Eq, Hash, Message)]
pub struct MetricMetadata {
    #[prost(enumeration = "MetricType", tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    #[prost(string, tag = "4")]
    pub help: String,
    #[prost(string, tag = "5")]
    pub unit: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MetricType {
    Unknown = 0,
    Counter = 1,
    Gauge = 2,
    Histogram = 3,
    Gaugehistogram = 4,
    Summary = 5,
    Info = 6,
    Stateset = 7,
}

impl Label {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Label {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// Suffixes a series name may add to its metric family's name (histogram, summary, counter,
/// info and gauge-histogram series): how metadata, given per family, is found for a series.
pub(crate) const FAMILY_SUFFIXES: [&str; 8] = [
    "_bucket", "_count", "_sum", "_total", "_created", "_info", "_gcount", "_gsum",
];

/// Bits saying what a request holds besides float samples, so a sender knows without decoding
/// whether a destination that does not take some of it needs the request rewritten.
pub mod extras {
    pub const HISTOGRAMS: u8 = 1;
    pub const EXEMPLARS: u8 = 2;
    pub const METADATA: u8 = 4;
    /// Created timestamps (Uplink's field 1001 of the stored 1.0 series).
    pub const CREATED: u8 = 8;

    /// The bits of decoded series and metadata.
    pub fn of(series: &[super::TimeSeries], metadata: &[super::MetricMetadata]) -> u8 {
        let mut bits = 0;
        for ts in series {
            if !ts.histograms.is_empty() {
                bits |= HISTOGRAMS;
            }
            if !ts.exemplars.is_empty() {
                bits |= EXEMPLARS;
            }
            if ts.created_timestamp != 0 {
                bits |= CREATED;
            }
        }
        if !metadata.is_empty() {
            bits |= METADATA;
        }
        bits
    }
}

/// Why a remote-write body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The snappy block header or body is corrupt.
    #[error("snappy: {0}")]
    Snappy(#[from] snap::Error),
    /// The declared uncompressed length exceeds the limit.
    #[error("uncompressed size {size} exceeds limit {limit}")]
    TooLarge { size: usize, limit: usize },
    /// The protobuf is malformed.
    #[error("protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

/// Encodes a request as snappy block format, as remote write requires.
pub fn encode_snappy(req: &WriteRequest) -> Bytes {
    let raw = req.encode_to_vec();
    let mut enc = snap::raw::Encoder::new();
    // Compressing an in-memory buffer cannot fail except for inputs over 4 GiB, which the
    // batch limits rule out.
    Bytes::from(enc.compress_vec(&raw).unwrap_or_default())
}

/// Decodes a snappy block-format protobuf, refusing anything larger than `limit` bytes
/// uncompressed.
pub fn decode_snappy<M: Message + Default>(body: &[u8], limit: usize) -> Result<M, DecodeError> {
    let size = snap::raw::decompress_len(body)?;
    if size > limit {
        return Err(DecodeError::TooLarge { size, limit });
    }
    let raw = snap::raw::Decoder::new().decompress_vec(body)?;
    Ok(M::decode(raw.as_slice())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(ts: i64) -> Histogram {
        Histogram {
            count: Some(histogram::Count::CountInt(5)),
            sum: 12.5,
            schema: 3,
            zero_threshold: 1e-128,
            zero_count: Some(histogram::ZeroCount::ZeroCountInt(1)),
            positive_spans: vec![BucketSpan {
                offset: -2,
                length: 2,
            }],
            positive_deltas: vec![3, -2],
            timestamp: ts,
            ..Default::default()
        }
    }

    #[test]
    fn v1_bytes_convert_to_v2_with_histograms_exemplars_and_metadata() {
        let labels = |name: &str, i: u32| {
            vec![
                Label::new("__name__", name),
                Label::new("i", i.to_string()),
                Label::new("job", if i % 2 == 0 { "a" } else { "b" }),
            ]
        };
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        let mut timeseries: Vec<TimeSeries> = (0..4)
            .map(|i| {
                TimeSeries::floats(
                    labels("up", i),
                    vec![
                        Sample {
                            value: f64::from(i),
                            timestamp: 7,
                        },
                        Sample {
                            value: stale,
                            timestamp: 8,
                        },
                    ],
                )
            })
            .collect();
        timeseries.push(TimeSeries {
            labels: labels("req_seconds", 9),
            histograms: vec![hist(7)],
            exemplars: vec![Exemplar {
                labels: vec![Label::new("trace_id", "abc")],
                value: 0.3,
                timestamp: 6,
            }],
            ..Default::default()
        });
        // Mixed: becomes two 2.0 series, the exemplar and metadata stay with the floats.
        timeseries.push(TimeSeries {
            labels: labels("req_seconds_count", 1),
            samples: vec![Sample {
                value: 5.0,
                timestamp: 7,
            }],
            histograms: vec![hist(8)],
            exemplars: vec![Exemplar {
                labels: vec![],
                value: 1.0,
                timestamp: 7,
            }],
            created_timestamp: 1_000,
        });
        let req = WriteRequest {
            timeseries,
            metadata: vec![
                MetricMetadata {
                    r#type: MetricType::Gauge as i32,
                    metric_family_name: "up".into(),
                    help: "h".into(),
                    unit: String::new(),
                },
                MetricMetadata {
                    r#type: MetricType::Histogram as i32,
                    metric_family_name: "req_seconds".into(),
                    help: "latency".into(),
                    unit: "seconds".into(),
                },
            ],
        };
        let raw = req.encode_to_vec();
        let v2 = v2::Request::decode(v2::from_v1_bytes(&raw).expect("converts").as_slice())
            .expect("valid 2.0");
        assert_eq!(v2.symbols[0], "");
        let sym = |i: u32| v2.symbols[i as usize].as_str();
        let resolve = |refs: &[u32]| -> Vec<Label> {
            refs.chunks(2)
                .map(|p| Label::new(sym(p[0]), sym(p[1])))
                .collect()
        };
        assert_eq!(v2.timeseries.len(), 7);
        for (i, ts) in v2.timeseries[..4].iter().enumerate() {
            assert_eq!(resolve(&ts.labels_refs), labels("up", i as u32));
            let bits: Vec<u64> = ts.samples.iter().map(|s| s.value.to_bits()).collect();
            assert_eq!(bits, [f64::from(i as u32).to_bits(), stale.to_bits()]);
            assert!(ts.samples.iter().all(|s| s.start_timestamp == 0));
            let md = ts.metadata.expect("metadata");
            assert_eq!((md.r#type, sym(md.help_ref), md.unit_ref), (2, "h", 0));
        }
        let h = &v2.timeseries[4];
        assert!(h.samples.is_empty());
        assert_eq!(h.histograms, [hist(7)]);
        assert_eq!(h.exemplars.len(), 1);
        assert_eq!(
            resolve(&h.exemplars[0].labels_refs),
            [Label::new("trace_id", "abc")]
        );
        assert_eq!((h.exemplars[0].value, h.exemplars[0].timestamp), (0.3, 6));
        let md = h.metadata.expect("metadata");
        assert_eq!((sym(md.help_ref), sym(md.unit_ref)), ("latency", "seconds"));
        let (floats, hists) = (&v2.timeseries[5], &v2.timeseries[6]);
        assert_eq!(floats.labels_refs, hists.labels_refs);
        assert_eq!((floats.samples.len(), floats.histograms.len()), (1, 0));
        assert_eq!((hists.samples.len(), hists.histograms.len()), (0, 1));
        assert_eq!((floats.exemplars.len(), hists.exemplars.len()), (1, 0));
        assert!(floats.metadata.is_some() && hists.metadata.is_none());
        // The current specification's place for the created timestamp: every sample's and
        // histogram's start timestamp; the 2.0-rc.3 series field only when asked for.
        assert_eq!(
            (
                floats.samples[0].start_timestamp,
                hists.histograms[0].start_timestamp
            ),
            (1_000, 1_000)
        );
        assert_eq!((floats.created_timestamp, hists.created_timestamp), (0, 0));
        assert_eq!(v2.timeseries[0].created_timestamp, 0);
        for (st, series, sample) in [
            (v2::StartTimestamps::Series, 1_000, 0),
            (v2::StartTimestamps::Both, 1_000, 1_000),
            (v2::StartTimestamps::None, 0, 0),
        ] {
            let mut out = Vec::new();
            v2::from_v1_into(&raw, None, st, &mut out, &mut Vec::new()).expect("converts");
            let v2 = v2::Request::decode(out.as_slice()).expect("valid 2.0");
            let (f, h) = (&v2.timeseries[5], &v2.timeseries[6]);
            assert_eq!(
                (f.created_timestamp, h.created_timestamp),
                (series, series),
                "{st:?}"
            );
            assert_eq!(f.samples[0].start_timestamp, sample, "{st:?}");
            assert_eq!(h.histograms[0].start_timestamp, sample, "{st:?}");
            assert_eq!(f.samples[0].value, 5.0);
        }
        // Without metadata in the request, from_v1 on the series gives the same message.
        let plain = v2::from_v1(&req.timeseries);
        assert_eq!(plain.timeseries.len(), 7);
        assert!(plain.timeseries.iter().all(|t| t.metadata.is_none()));
        assert!(v2::from_v1_bytes(&raw[..raw.len() - 3]).is_err());
        assert!(v2::from_v1_bytes(b"\x0a\xff\x01").is_err());
    }

    #[test]
    fn roundtrip_and_limit() {
        let req = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![Label::new("__name__", "up"), Label::new("job", "a")],
                samples: vec![Sample {
                    value: 1.0,
                    timestamp: 7,
                }],
                ..Default::default()
            }],
            metadata: vec![],
        };
        let body = encode_snappy(&req);
        let back: WriteRequest = decode_snappy(&body, 1 << 20).expect("decodes");
        assert_eq!(back, req);
        assert!(matches!(
            decode_snappy::<WriteRequest>(&body, 4),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(decode_snappy::<WriteRequest>(b"\xff\xff\xff\xff\x0f garbage", 1 << 30).is_err());
    }
}

/// Remote-write 2.0 messages (`io.prometheus.write.v2.Request`), field numbers as in
/// `prompb/io/prometheus/write/v2/types.proto`: a symbol table with `""` first, and series that
/// refer to it by index.
pub mod v2 {
    use prost::Message;

    /// `Content-Type` of a remote-write 2.0 request.
    pub const CONTENT_TYPE: &str = "application/x-protobuf;proto=io.prometheus.write.v2.Request";
    /// `X-Prometheus-Remote-Write-Version` sent with 2.0 requests.
    pub const VERSION: &str = "2.0.0";

    #[derive(Clone, PartialEq, Message)]
    pub struct Request {
        #[prost(string, repeated, tag = "4")]
        pub symbols: Vec<String>,
        #[prost(message, repeated, tag = "5")]
        pub timeseries: Vec<TimeSeries>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct TimeSeries {
        /// Pairs of symbol indexes: name, value, name, value, ...
        #[prost(uint32, repeated, tag = "1")]
        pub labels_refs: Vec<u32>,
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub histograms: Vec<Histogram>,
        #[prost(message, repeated, tag = "4")]
        pub exemplars: Vec<Exemplar>,
        #[prost(message, optional, tag = "5")]
        pub metadata: Option<Metadata>,
        /// The series' created timestamp as Prometheus 3.5 to 3.7 read it (spec 2.0-rc.3);
        /// reserved since Prometheus 3.8, which reads the per-sample start timestamps.
        #[prost(int64, tag = "6")]
        pub created_timestamp: i64,
    }

    /// A 2.0 sample: 1.0's fields, and the start timestamp (Prometheus ≥ 3.8).
    #[derive(Clone, Copy, PartialEq, Message)]
    pub struct Sample {
        #[prost(double, tag = "1")]
        pub value: f64,
        #[prost(int64, tag = "2")]
        pub timestamp: i64,
        #[prost(int64, tag = "3")]
        pub start_timestamp: i64,
    }

    /// 2.0 histograms are 1.0's, with `start_timestamp` (field 17).
    pub use super::Histogram;

    /// Where a 2.0 request carries a series' start (created) timestamp. The field moved
    /// between Prometheus releases and each side ignores the other's, so a sender chooses by
    /// its receiver (see the gateway's `remote_write[].start_timestamps`).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
    #[serde(rename_all = "lowercase")]
    pub enum StartTimestamps {
        /// `Sample.start_timestamp` and `Histogram.start_timestamp` on every sample of the
        /// series (the current specification, 2.0-rc.4; Prometheus ≥ 3.8).
        #[default]
        Sample,
        /// `TimeSeries.created_timestamp` (2.0-rc.3; Prometheus 3.5 to 3.7).
        Series,
        /// Both places.
        Both,
        /// Neither.
        None,
    }

    impl StartTimestamps {
        fn per_sample(self) -> bool {
            matches!(self, StartTimestamps::Sample | StartTimestamps::Both)
        }

        fn per_series(self) -> bool {
            matches!(self, StartTimestamps::Series | StartTimestamps::Both)
        }
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct Exemplar {
        /// Pairs of symbol indexes, as a series' labels.
        #[prost(uint32, repeated, tag = "1")]
        pub labels_refs: Vec<u32>,
        #[prost(double, tag = "2")]
        pub value: f64,
        #[prost(int64, tag = "3")]
        pub timestamp: i64,
    }

    #[derive(Clone, Copy, PartialEq, Message)]
    pub struct Metadata {
        #[prost(int32, tag = "1")]
        pub r#type: i32,
        #[prost(uint32, tag = "3")]
        pub help_ref: u32,
        #[prost(uint32, tag = "4")]
        pub unit_ref: u32,
    }

    /// Builds a 2.0 request from 1.0 series (no metadata), as [`from_v1_bytes`] does.
    pub fn from_v1(series: &[super::TimeSeries]) -> Request {
        let mut raw = Vec::new();
        for ts in series {
            prost::encoding::message::encode(1, ts, &mut raw);
        }
        // The bytes were just encoded from valid messages.
        from_v1_bytes(&raw)
            .ok()
            .and_then(|b| Request::decode(b.as_slice()).ok())
            .unwrap_or_default()
    }

    /// Encoded size of a request.
    pub fn encoded_len(r: &Request) -> usize {
        r.encoded_len()
    }

    /// Converts an uncompressed 1.0 `WriteRequest` straight into an uncompressed 2.0
    /// `Request`, without decoding labels into owned strings: names and values are interned
    /// as byte slices of `raw`; samples and histograms are copied as encoded (their messages
    /// are the same in both versions); exemplars get their labels interned; Uplink's created
    /// timestamp (field 1001) becomes the 2.0 `created_timestamp`.
    ///
    /// Metadata: the request's `metadata` entries (wherever they appear; merged requests
    /// carry them between series) are attached to every series of their family: the series
    /// name itself, else the name without a `_bucket`, `_count`, `_sum`, `_total`,
    /// `_created`, `_info`, `_gcount` or `_gsum` suffix. A series with both float and
    /// histogram samples becomes two series (2.0 forbids mixing). Unknown fields are dropped.
    pub fn from_v1_bytes(raw: &[u8]) -> Result<Vec<u8>, ConvertError> {
        let mut out = Vec::new();
        from_v1_into(
            raw,
            None,
            StartTimestamps::default(),
            &mut out,
            &mut Vec::new(),
        )?;
        Ok(out)
    }

    /// [`from_v1_bytes`] into `out` (cleared first), with `series` as scratch space, so a
    /// sender converting request after request reuses both buffers. With `known` (a sender's
    /// metadata cache, see [`Families`]), metadata comes from it alone: the caller has already
    /// learned this request's own ([`Families::learn`]), so it is not read again here. `st`
    /// says where a series' created timestamp goes.
    pub fn from_v1_into<'a>(
        raw: &'a [u8],
        known: Option<&'a Families>,
        st: StartTimestamps,
        out: &mut Vec<u8>,
        series: &mut Vec<u8>,
    ) -> Result<(), ConvertError> {
        use prost::encoding::{WireType, encode_key, encode_varint};
        out.clear();
        series.clear();
        let mut symbols: Vec<&[u8]> = vec![b""];
        let mut index: std::collections::HashMap<&[u8], u32> =
            std::collections::HashMap::from([(&b""[..], 0)]);
        // Pass 1, without a cache: metadata by family name (type, help, unit as slices of
        // `raw`).
        let mut families: std::collections::HashMap<&[u8], Meta<'_>> =
            std::collections::HashMap::new();
        if known.is_none() {
            for_each_metadata(raw, |name, m| {
                families.insert(name, m);
            })?;
        }

        series.reserve(raw.len());
        let (mut refs, mut samples, mut hists, mut exemplars) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut ts_buf, mut ex_buf, mut md_buf) = (Vec::new(), Vec::new(), Vec::new());
        let mut ex_refs = Vec::new();
        let mut buf = raw;
        while !buf.is_empty() {
            let (tag, wt) = key(&mut buf)?;
            if tag != 1 || wt != 2 {
                skip(&mut buf, wt)?;
                continue;
            }
            let mut ts = delimited(&mut buf)?;
            refs.clear();
            samples.clear();
            hists.clear();
            exemplars.clear();
            let mut metric: &[u8] = b"";
            let mut created = 0u64;
            while !ts.is_empty() {
                let (tag, wt) = key(&mut ts)?;
                match (tag, wt) {
                    (1, 2) => {
                        let (name, value) = label(delimited(&mut ts)?)?;
                        if name == b"__name__" {
                            metric = value;
                        }
                        refs.push(symbol(name, &mut symbols, &mut index));
                        refs.push(symbol(value, &mut symbols, &mut index));
                    }
                    (2, 2) => samples.push(delimited(&mut ts)?),
                    (3, 2) => exemplars.push(delimited(&mut ts)?),
                    (4, 2) => hists.push(delimited(&mut ts)?),
                    (1001, 0) => created = prost::encoding::decode_varint(&mut ts)?,
                    _ => skip(&mut ts, wt)?,
                }
            }
            // Metadata (2.0 field 5): type, help_ref, unit_ref.
            md_buf.clear();
            if let Some((ty, help, unit)) = family(&families, known, metric) {
                if ty != 0 {
                    encode_key(1, WireType::Varint, &mut md_buf);
                    encode_varint(ty, &mut md_buf);
                }
                for (tag, s) in [(3, help), (4, unit)] {
                    if !s.is_empty() {
                        encode_key(tag, WireType::Varint, &mut md_buf);
                        encode_varint(u64::from(symbol(s, &mut symbols, &mut index)), &mut md_buf);
                    }
                }
            }
            // Exemplars (2.0 field 4): labels_refs (1, packed), then value and timestamp as
            // encoded (same numbers).
            ex_buf.clear();
            for ex in &exemplars {
                let mut e = *ex;
                ex_refs.clear();
                let mut rest = Vec::new();
                while !e.is_empty() {
                    let before = e;
                    let (tag, wt) = key(&mut e)?;
                    if (tag, wt) == (1, 2) {
                        let (name, value) = label(delimited(&mut e)?)?;
                        ex_refs.push(symbol(name, &mut symbols, &mut index));
                        ex_refs.push(symbol(value, &mut symbols, &mut index));
                    } else {
                        skip(&mut e, wt)?;
                        if tag == 2 || tag == 3 {
                            rest.extend_from_slice(&before[..before.len() - e.len()]);
                        }
                    }
                }
                let mut one = Vec::new();
                packed_refs(1, &ex_refs, &mut one);
                one.extend_from_slice(&rest);
                encode_key(4, WireType::LengthDelimited, &mut ex_buf);
                encode_varint(one.len() as u64, &mut ex_buf);
                ex_buf.extend_from_slice(&one);
            }
            // TimeSeries (2.0): labels_refs (1), samples (2), histograms (3), exemplars (4),
            // metadata (5). Floats and histograms go in separate series; exemplars and
            // metadata stay with the floats when there are both.
            let mixed = !samples.is_empty() && !hists.is_empty();
            if hists.is_empty() || mixed {
                let extras = [&ex_buf[..], &md_buf[..]];
                series_v2(&refs, &samples, 2, extras, created, st, &mut ts_buf, series);
            }
            if !hists.is_empty() {
                let extras = if mixed {
                    [&[][..]; 2]
                } else {
                    [&ex_buf[..], &md_buf[..]]
                };
                series_v2(&refs, &hists, 3, extras, created, st, &mut ts_buf, series);
            }
        }
        out.reserve(series.len() + symbols.iter().map(|s| s.len() + 2).sum::<usize>());
        for s in &symbols {
            encode_key(4, WireType::LengthDelimited, out);
            encode_varint(s.len() as u64, out);
            out.extend_from_slice(s);
        }
        out.extend_from_slice(series);
        Ok(())
    }

    /// Calls `f(family name, (type, help, unit))` for every `metadata` entry of a 1.0
    /// request (the series are skipped, not parsed).
    fn for_each_metadata<'a>(
        raw: &'a [u8],
        mut f: impl FnMut(&'a [u8], Meta<'a>),
    ) -> Result<(), ConvertError> {
        let mut buf = raw;
        while !buf.is_empty() {
            let (tag, wt) = key(&mut buf)?;
            if tag != 3 || wt != 2 {
                skip(&mut buf, wt)?;
                continue;
            }
            let mut md = delimited(&mut buf)?;
            let (mut ty, mut name, mut help, mut unit) = (0u64, &b""[..], &b""[..], &b""[..]);
            while !md.is_empty() {
                let (tag, wt) = key(&mut md)?;
                match (tag, wt) {
                    (1, 0) => ty = prost::encoding::decode_varint(&mut md)?,
                    (2, 2) => name = delimited(&mut md)?,
                    (4, 2) => help = delimited(&mut md)?,
                    (5, 2) => unit = delimited(&mut md)?,
                    _ => skip(&mut md, wt)?,
                }
            }
            f(name, (ty, help, unit));
        }
        Ok(())
    }

    /// Metadata a sender has seen, by family name, so 2.0 series get it inline in every
    /// request although the stored 1.0 requests carry it only when it is new. Bounded: past
    /// [`Families::MAX`] families it starts over (the next metadata seen fills it again).
    #[derive(Debug, Default)]
    pub struct Families {
        map: std::collections::HashMap<Vec<u8>, OwnedMeta>,
    }

    /// A family's metadata as slices of a request: (type, help, unit).
    type Meta<'a> = (u64, &'a [u8], &'a [u8]);
    /// A family's metadata, owned: (type, help, unit).
    pub type OwnedMeta = (u64, Vec<u8>, Vec<u8>);

    impl Families {
        pub const MAX: usize = 100_000;

        /// The metadata of a 1.0 request, to [`Families::learn`] (without holding a lock).
        pub fn read(raw: &[u8]) -> Vec<(Vec<u8>, OwnedMeta)> {
            let mut out = Vec::new();
            // A request that does not parse is refused by the conversion itself.
            let _ = for_each_metadata(raw, |name, (ty, help, unit)| {
                out.push((name.to_vec(), (ty, help.to_vec(), unit.to_vec())));
            });
            out
        }

        pub fn learn(&mut self, found: Vec<(Vec<u8>, OwnedMeta)>) {
            if self.map.len() + found.len() > Self::MAX {
                self.map.clear();
            }
            self.map.extend(found);
        }

        pub fn len(&self) -> usize {
            self.map.len()
        }

        pub fn is_empty(&self) -> bool {
            self.map.is_empty()
        }
    }

    /// Appends one 2.0 `TimeSeries` (field 5 of the request) to `out`: label refs, `items`
    /// under field `tag` (samples 2, histograms 3), each with the start timestamp (sample field
    /// 3, histogram field 17) when `st` puts it there, then the encoded exemplars (field 4) and
    /// metadata (its body, wrapped here as field 5), and the created timestamp (6) when `st`
    /// puts it there. A zero created timestamp (unknown) is written nowhere.
    #[allow(clippy::too_many_arguments)]
    fn series_v2(
        refs: &[u32],
        items: &[&[u8]],
        tag: u32,
        [exemplars, metadata]: [&[u8]; 2],
        created: u64,
        st: StartTimestamps,
        ts_buf: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) {
        use prost::encoding::{WireType, encode_key, encode_varint};
        ts_buf.clear();
        packed_refs(1, refs, ts_buf);
        // A sample's start timestamp is its last field: appended to its encoded bytes.
        let mut start = Vec::new();
        if created != 0 && st.per_sample() {
            let field = if tag == 2 { 3 } else { 17 };
            encode_key(field, WireType::Varint, &mut start);
            encode_varint(created, &mut start);
        }
        for s in items {
            encode_key(tag, WireType::LengthDelimited, ts_buf);
            encode_varint((s.len() + start.len()) as u64, ts_buf);
            ts_buf.extend_from_slice(s);
            ts_buf.extend_from_slice(&start);
        }
        ts_buf.extend_from_slice(exemplars);
        if !metadata.is_empty() {
            encode_key(5, WireType::LengthDelimited, ts_buf);
            encode_varint(metadata.len() as u64, ts_buf);
            ts_buf.extend_from_slice(metadata);
        }
        if created != 0 && st.per_series() {
            encode_key(6, WireType::Varint, ts_buf);
            encode_varint(created, ts_buf);
        }
        encode_key(5, WireType::LengthDelimited, out);
        encode_varint(ts_buf.len() as u64, out);
        out.extend_from_slice(ts_buf);
    }

    /// The metadata of the family a series name belongs to, from the request's (`families`)
    /// or the cache (`known`): by the name itself, else by the name without a type suffix.
    fn family<'a>(
        families: &std::collections::HashMap<&'a [u8], Meta<'a>>,
        known: Option<&'a Families>,
        metric: &[u8],
    ) -> Option<Meta<'a>> {
        let known = known.filter(|k| !k.is_empty());
        if families.is_empty() && known.is_none() {
            return None;
        }
        let get = |name: &[u8]| {
            families.get(name).copied().or_else(|| {
                known
                    .and_then(|k| k.map.get(name))
                    .map(|(t, h, u)| (*t, h.as_slice(), u.as_slice()))
            })
        };
        get(metric).or_else(|| {
            super::FAMILY_SUFFIXES
                .iter()
                .filter_map(|s| metric.strip_suffix(s.as_bytes()))
                .find_map(get)
        })
    }

    fn symbol<'a>(
        s: &'a [u8],
        symbols: &mut Vec<&'a [u8]>,
        index: &mut std::collections::HashMap<&'a [u8], u32>,
    ) -> u32 {
        let next = symbols.len() as u32;
        *index.entry(s).or_insert_with(|| {
            symbols.push(s);
            next
        })
    }

    /// A 1.0 `Label`'s name and value.
    fn label(mut l: &[u8]) -> Result<(&[u8], &[u8]), ConvertError> {
        let (mut name, mut value): (&[u8], &[u8]) = (b"", b"");
        while !l.is_empty() {
            let (tag, wt) = key(&mut l)?;
            match (tag, wt) {
                (1, 2) => name = delimited(&mut l)?,
                (2, 2) => value = delimited(&mut l)?,
                _ => skip(&mut l, wt)?,
            }
        }
        Ok((name, value))
    }

    /// A packed repeated `uint32` field (nothing when empty).
    fn packed_refs(tag: u32, refs: &[u32], out: &mut Vec<u8>) {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
        if refs.is_empty() {
            return;
        }
        let len: usize = refs.iter().map(|r| encoded_len_varint(u64::from(*r))).sum();
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(len as u64, out);
        for r in refs {
            encode_varint(u64::from(*r), out);
        }
    }

    /// Why a 1.0 body could not be converted.
    #[derive(Debug, thiserror::Error)]
    pub enum ConvertError {
        #[error(transparent)]
        Varint(#[from] prost::DecodeError),
        #[error("malformed protobuf: {0}")]
        Malformed(&'static str),
    }

    fn key(buf: &mut &[u8]) -> Result<(u32, u64), ConvertError> {
        let k = prost::encoding::decode_varint(buf)?;
        Ok(((k >> 3) as u32, k & 7))
    }

    fn delimited<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], ConvertError> {
        let len = prost::encoding::decode_varint(buf)? as usize;
        if len > buf.len() {
            return Err(ConvertError::Malformed("length beyond the buffer"));
        }
        let (head, tail) = buf.split_at(len);
        *buf = tail;
        Ok(head)
    }

    fn skip(buf: &mut &[u8], wire_type: u64) -> Result<(), ConvertError> {
        let n = match wire_type {
            0 => {
                prost::encoding::decode_varint(buf)?;
                return Ok(());
            }
            1 => 8,
            2 => prost::encoding::decode_varint(buf)? as usize,
            5 => 4,
            _ => return Err(ConvertError::Malformed("unsupported wire type")),
        };
        if n > buf.len() {
            return Err(ConvertError::Malformed("field beyond the buffer"));
        }
        *buf = &buf[n..];
        Ok(())
    }
}
