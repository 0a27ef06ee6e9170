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
}
