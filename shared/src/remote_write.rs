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

#[derive(Clone, PartialEq, Message)]
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

    #[test]
    fn v1_bytes_convert_to_the_same_v2_message() {
        let req = WriteRequest {
            timeseries: (0..4)
                .map(|i| TimeSeries {
                    labels: vec![
                        Label::new("__name__", "up"),
                        Label::new("job", if i % 2 == 0 { "a" } else { "b" }),
                        Label::new("i", i.to_string()),
                    ],
                    samples: vec![
                        Sample {
                            value: f64::from(i),
                            timestamp: 7,
                        },
                        Sample {
                            value: f64::from_bits(0x7ff0_0000_0000_0002),
                            timestamp: 8,
                        },
                    ],
                })
                .collect(),
            metadata: vec![MetricMetadata {
                r#type: MetricType::Gauge as i32,
                metric_family_name: "up".into(),
                help: "h".into(),
                unit: String::new(),
            }],
        };
        let raw = req.encode_to_vec();
        let fast = v2::from_v1_bytes(&raw).expect("converts");
        let decoded = v2::Request::decode(fast.as_slice()).expect("valid 2.0");
        let want = v2::from_v1(&req.timeseries);
        assert_eq!(decoded.symbols, want.symbols);
        assert_eq!(decoded.timeseries.len(), want.timeseries.len());
        for (a, b) in decoded.timeseries.iter().zip(&want.timeseries) {
            assert_eq!(a.labels_refs, b.labels_refs);
            let bits = |s: &[Sample]| {
                s.iter()
                    .map(|x| (x.value.to_bits(), x.timestamp))
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(&a.samples), bits(&b.samples));
        }
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
        #[prost(message, optional, tag = "5")]
        pub metadata: Option<Metadata>,
        #[prost(int64, tag = "6")]
        pub created_timestamp: i64,
    }

    /// 2.0 samples have the same fields and numbers as 1.0's.
    pub use super::Sample;

    #[derive(Clone, Copy, PartialEq, Message)]
    pub struct Metadata {
        #[prost(int32, tag = "1")]
        pub r#type: i32,
        #[prost(uint32, tag = "3")]
        pub help_ref: u32,
        #[prost(uint32, tag = "4")]
        pub unit_ref: u32,
    }

    /// Builds a 2.0 request from 1.0 series, interning every string once.
    pub fn from_v1(series: &[super::TimeSeries]) -> Request {
        let mut symbols = vec![String::new()];
        let mut index = std::collections::HashMap::<String, u32>::new();
        index.insert(String::new(), 0);
        let mut intern = |s: &str| -> u32 {
            if let Some(i) = index.get(s) {
                return *i;
            }
            let i = symbols.len() as u32;
            symbols.push(s.to_owned());
            index.insert(s.to_owned(), i);
            i
        };
        let timeseries = series
            .iter()
            .map(|ts| TimeSeries {
                labels_refs: ts
                    .labels
                    .iter()
                    .flat_map(|l| [intern(&l.name), intern(&l.value)])
                    .collect(),
                samples: ts.samples.clone(),
                metadata: None,
                created_timestamp: 0,
            })
            .collect();
        Request {
            symbols,
            timeseries,
        }
    }

    /// Encoded size of a request.
    pub fn encoded_len(r: &Request) -> usize {
        r.encoded_len()
    }

    /// Converts an uncompressed 1.0 `WriteRequest` straight into an uncompressed 2.0
    /// `Request` with the same series and samples, without decoding labels into owned strings:
    /// names and values are interned as byte slices of `raw`, samples are copied as encoded
    /// (1.0 and 2.0 samples share field numbers). Metadata and unknown fields are dropped.
    /// Gives the same message as [`from_v1`] on the decoded request.
    pub fn from_v1_bytes(raw: &[u8]) -> Result<Vec<u8>, ConvertError> {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
        let mut symbols: Vec<&[u8]> = vec![b""];
        let mut index: std::collections::HashMap<&[u8], u32> =
            std::collections::HashMap::from([(&b""[..], 0)]);
        let mut series = Vec::with_capacity(raw.len());
        let (mut refs, mut samples, mut ts_buf) = (Vec::new(), Vec::new(), Vec::new());
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
            while !ts.is_empty() {
                let (tag, wt) = key(&mut ts)?;
                match (tag, wt) {
                    (1, 2) => {
                        let mut label = delimited(&mut ts)?;
                        let (mut name, mut value): (&[u8], &[u8]) = (b"", b"");
                        while !label.is_empty() {
                            let (tag, wt) = key(&mut label)?;
                            match (tag, wt) {
                                (1, 2) => name = delimited(&mut label)?,
                                (2, 2) => value = delimited(&mut label)?,
                                _ => skip(&mut label, wt)?,
                            }
                        }
                        for s in [name, value] {
                            let next = symbols.len() as u32;
                            let i = *index.entry(s).or_insert_with(|| {
                                symbols.push(s);
                                next
                            });
                            refs.push(i);
                        }
                    }
                    (2, 2) => samples.push(delimited(&mut ts)?),
                    _ => skip(&mut ts, wt)?,
                }
            }
            // TimeSeries (2.0): labels_refs (1, packed), samples (2).
            ts_buf.clear();
            let packed: usize = refs.iter().map(|r| encoded_len_varint(u64::from(*r))).sum();
            if !refs.is_empty() {
                encode_key(1, WireType::LengthDelimited, &mut ts_buf);
                encode_varint(packed as u64, &mut ts_buf);
                for r in &refs {
                    encode_varint(u64::from(*r), &mut ts_buf);
                }
            }
            for s in &samples {
                encode_key(2, WireType::LengthDelimited, &mut ts_buf);
                encode_varint(s.len() as u64, &mut ts_buf);
                ts_buf.extend_from_slice(s);
            }
            encode_key(5, WireType::LengthDelimited, &mut series);
            encode_varint(ts_buf.len() as u64, &mut series);
            series.extend_from_slice(&ts_buf);
        }
        let mut out =
            Vec::with_capacity(series.len() + symbols.iter().map(|s| s.len() + 2).sum::<usize>());
        for s in &symbols {
            encode_key(4, WireType::LengthDelimited, &mut out);
            encode_varint(s.len() as u64, &mut out);
            out.extend_from_slice(s);
        }
        out.extend_from_slice(&series);
        Ok(out)
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
