//! The receiving side of remote write, without I/O: content negotiation, bounded decoding of
//! 1.0 (`prometheus.WriteRequest`) and 2.0 (`io.prometheus.write.v2.Request`) bodies, and label
//! validation, per the receiver rules of both specifications.
//!
//! # Negotiation ([`negotiate`])
//! `Content-Type: application/x-protobuf` without a `proto` parameter, or with
//! `proto=prometheus.WriteRequest`, is 1.0; `proto=io.prometheus.write.v2.Request` is 2.0;
//! anything else is unsupported (the caller answers 415). `Content-Encoding` must be `snappy`
//! (block format). As Prometheus's own receiver does, a request without `Content-Type` is taken
//! as 1.0 and one without `Content-Encoding` as snappy, so old 1.0 clients keep working.
//!
//! # Decoding ([`decode`])
//! Bounded before anything is allocated: the snappy header's declared size is checked against
//! the decoded-bytes limit, and the top-level series are counted on the raw protobuf before
//! prost builds them. Never panics on any input.
//!
//! Every series' labels, float samples, native histograms and exemplars (2.0 exemplar labels
//! resolved through the symbol table), and its metadata: in 2.0 its own; in 1.0 the request's
//! `metadata` entry of its family (the series name, or the name without a `_bucket`, `_sum`,
//! `_count`, `_gsum`, `_gcount`, `_total`, `_created` or `_info` suffix). A 2.0 series'
//! metadata is named after its family the same way: the suffix its type implies is removed.
//!
//! # Validation (per series, [`Series::labels`])
//! Labels with an empty value are dropped (Prometheus treats them as absent). An empty label
//! name, a repeated name, a missing `__name__`, and in 2.0 a label or metadata reference outside
//! the symbol table make the series invalid; the rest of the request stays usable, so a
//! receiver can write the valid series and answer 400 for the others (a partial write, which
//! both specifications allow). Names need not be sorted: the result is sorted by name.
//! Only a malformed request as a whole (bad snappy, bad protobuf, 2.0 symbol table not
//! starting with `""`) is an error of [`decode`].

use prost::Message;

use super::{DecodeError, Exemplar, Histogram, Label, MetricMetadata, MetricType, Sample};
use crate::model::METRIC_NAME;

/// `X-Prometheus-Remote-Write-Version`.
pub const VERSION_HEADER: &str = "x-prometheus-remote-write-version";
/// `X-Prometheus-Remote-Write-Samples-Written` (2.0).
pub const SAMPLES_WRITTEN: &str = "x-prometheus-remote-write-samples-written";
/// `X-Prometheus-Remote-Write-Histograms-Written` (2.0).
pub const HISTOGRAMS_WRITTEN: &str = "x-prometheus-remote-write-histograms-written";
/// `X-Prometheus-Remote-Write-Exemplars-Written` (2.0).
pub const EXEMPLARS_WRITTEN: &str = "x-prometheus-remote-write-exemplars-written";

const MEDIA_TYPE: &str = "application/x-protobuf";
const PROTO_V1: &str = "prometheus.WriteRequest";
const PROTO_V2: &str = "io.prometheus.write.v2.Request";

/// Which message a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// `prometheus.WriteRequest` (remote write 1.0).
    V1,
    /// `io.prometheus.write.v2.Request` (remote write 2.0).
    V2,
}

impl Proto {
    /// The protobuf message name.
    pub fn message(self) -> &'static str {
        match self {
            Proto::V1 => PROTO_V1,
            Proto::V2 => PROTO_V2,
        }
    }
}

/// Why a request's headers are not acceptable (answered with 415).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    #[error(
        "unsupported Content-Type {0:?}: expected application/x-protobuf, optionally with \
         proto=prometheus.WriteRequest or proto=io.prometheus.write.v2.Request"
    )]
    ContentType(String),
    #[error("unsupported Content-Encoding {0:?}: only snappy is accepted")]
    ContentEncoding(String),
}

/// Picks the message from `Content-Type` and checks `Content-Encoding` (header values as
/// received; `None` when absent).
pub fn negotiate(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
) -> Result<Proto, Unsupported> {
    let proto = match content_type {
        None => Proto::V1,
        Some(ct) => parse_content_type(ct).ok_or_else(|| Unsupported::ContentType(ct.into()))?,
    };
    match content_encoding.map(str::trim) {
        None => Ok(proto),
        Some(enc) if enc.eq_ignore_ascii_case(super::CONTENT_ENCODING) => Ok(proto),
        Some(enc) => Err(Unsupported::ContentEncoding(enc.into())),
    }
}

/// `application/x-protobuf[;proto=<message>]` (RFC 9110 media type: case-insensitive type and
/// parameter names, optional whitespace, optionally quoted values; other parameters ignored).
fn parse_content_type(ct: &str) -> Option<Proto> {
    let mut parts = ct.split(';');
    let media = parts.next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case(MEDIA_TYPE) {
        return None;
    }
    let mut proto = Proto::V1;
    for param in parts {
        let (name, value) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("proto") {
            continue;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        proto = match value {
            PROTO_V1 => Proto::V1,
            PROTO_V2 => Proto::V2,
            _ => return None,
        };
    }
    Some(proto)
}

/// Limits applied while decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest decoded (uncompressed) protobuf, in bytes.
    pub max_decoded_bytes: usize,
    /// Most series in one request.
    pub max_series: usize,
}

/// Why a body could not be decoded as a whole.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Bad snappy, bad protobuf, or decoded size over the limit.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// More series than [`Limits::max_series`].
    #[error("{count} series exceed the limit of {limit} per request")]
    TooManySeries { count: usize, limit: usize },
    /// The message is well-formed protobuf but breaks the specification as a whole.
    #[error("{0}")]
    Invalid(&'static str),
}

/// One received series.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Validated labels sorted by name, or why they are invalid (see the module docs).
    pub labels: Result<Vec<Label>, String>,
    /// Float samples, as sent (stale-marker NaN bits included).
    pub samples: Vec<Sample>,
    /// Native histogram samples.
    pub histograms: Vec<Histogram>,
    /// Exemplars (labels resolved).
    pub exemplars: Vec<Exemplar>,
    /// The metadata of the series' family, when the request gave it.
    pub metadata: Option<MetricMetadata>,
    /// The series' created (start) timestamp, ms; 0 for none: 2.0's `created_timestamp`
    /// (Prometheus 3.5 to 3.7) or else the first per-sample `start_timestamp` (Prometheus
    /// ≥ 3.8; a series whose samples in one request start at different times keeps the
    /// first), or Uplink's 1.0 field.
    pub created_timestamp: i64,
}

/// Decodes a snappy-compressed body carrying `proto`.
pub fn decode(proto: Proto, body: &[u8], limits: Limits) -> Result<Vec<Series>, RequestError> {
    decode_with_metadata(proto, body, limits).map(|(series, _)| series)
}

/// [`decode`], plus a 1.0 request's own `metadata` entries, all of them (Prometheus sends them
/// in requests of their own, without series); empty for 2.0, whose metadata is per series.
pub fn decode_with_metadata(
    proto: Proto,
    body: &[u8],
    limits: Limits,
) -> Result<(Vec<Series>, Vec<MetricMetadata>), RequestError> {
    let size = snap::raw::decompress_len(body).map_err(DecodeError::from)?;
    if size > limits.max_decoded_bytes {
        return Err(DecodeError::TooLarge {
            size,
            limit: limits.max_decoded_bytes,
        }
        .into());
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(DecodeError::from)?;
    let field = match proto {
        Proto::V1 => 1,
        Proto::V2 => 5,
    };
    let count = count_field(&raw, field);
    if count > limits.max_series {
        return Err(RequestError::TooManySeries {
            count,
            limit: limits.max_series,
        });
    }
    match proto {
        Proto::V1 => {
            let mut req = V1Request::decode(raw.as_slice()).map_err(DecodeError::from)?;
            let metadata = std::mem::take(&mut req.metadata);
            Ok((from_v1(req, &metadata), metadata))
        }
        Proto::V2 => Ok((
            from_v2(V2Request::decode(raw.as_slice()).map_err(DecodeError::from)?)?,
            Vec::new(),
        )),
    }
}

/// Occurrences of length-delimited top-level field `field` in a protobuf message, counted
/// without decoding them. Stops at the first malformed byte (prost then reports the error).
fn count_field(mut buf: &[u8], field: u64) -> usize {
    use prost::encoding::decode_varint;
    let mut n = 0;
    while !buf.is_empty() {
        let Ok(key) = decode_varint(&mut buf) else {
            break;
        };
        let skip = match key & 7 {
            0 => match decode_varint(&mut buf) {
                Ok(_) => 0,
                Err(_) => break,
            },
            1 => 8,
            2 => match decode_varint(&mut buf) {
                Ok(len) => usize::try_from(len).unwrap_or(usize::MAX),
                Err(_) => break,
            },
            5 => 4,
            _ => break,
        };
        if skip > buf.len() {
            break;
        }
        if key >> 3 == field && key & 7 == 2 {
            n += 1;
        }
        buf = &buf[skip..];
    }
    n
}

type V1Request = super::WriteRequest;

#[derive(Clone, PartialEq, Message)]
struct V2Request {
    #[prost(string, repeated, tag = "4")]
    symbols: Vec<String>,
    #[prost(message, repeated, tag = "5")]
    timeseries: Vec<V2Series>,
}

#[derive(Clone, PartialEq, Message)]
struct V2Series {
    #[prost(uint32, repeated, tag = "1")]
    labels_refs: Vec<u32>,
    #[prost(message, repeated, tag = "2")]
    samples: Vec<super::v2::Sample>,
    #[prost(message, repeated, tag = "3")]
    histograms: Vec<Histogram>,
    #[prost(message, repeated, tag = "4")]
    exemplars: Vec<super::v2::Exemplar>,
    #[prost(message, optional, tag = "5")]
    metadata: Option<super::v2::Metadata>,
    #[prost(int64, tag = "6")]
    created_timestamp: i64,
}

fn from_v1(req: V1Request, metadata: &[MetricMetadata]) -> Vec<Series> {
    let families: std::collections::HashMap<&str, &MetricMetadata> = metadata
        .iter()
        .map(|m| (m.metric_family_name.as_str(), m))
        .collect();
    let family = |labels: &[Label]| -> Option<MetricMetadata> {
        let name = crate::model::get(labels, METRIC_NAME)?;
        families
            .get(name)
            .or_else(|| {
                super::FAMILY_SUFFIXES
                    .iter()
                    .filter_map(|s| name.strip_suffix(s))
                    .find_map(|base| families.get(base))
            })
            .map(|m| (*m).clone())
    };
    req.timeseries
        .into_iter()
        .map(|ts| Series {
            metadata: family(&ts.labels),
            labels: validate(ts.labels),
            samples: ts.samples,
            histograms: ts.histograms,
            exemplars: ts.exemplars,
            // Only Uplink's own field (1001) carries it in 1.0.
            created_timestamp: ts.created_timestamp,
        })
        .collect()
}

/// The family a series of this type belongs to: its name without the suffix the type implies.
fn family_name(name: &str, ty: i32) -> &str {
    let suffixes: &[&str] = match ty {
        t if t == MetricType::Histogram as i32 => &["_bucket", "_sum", "_count"],
        t if t == MetricType::Gaugehistogram as i32 => &["_bucket", "_gsum", "_gcount"],
        t if t == MetricType::Summary as i32 => &["_sum", "_count"],
        _ => &[],
    };
    suffixes
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

fn from_v2(req: V2Request) -> Result<Vec<Series>, RequestError> {
    if req.symbols.first().is_some_and(|s| !s.is_empty()) {
        return Err(RequestError::Invalid(
            "the symbol table must start with the empty string",
        ));
    }
    let symbols = &req.symbols;
    Ok(req
        .timeseries
        .into_iter()
        .map(|ts| {
            let labels = resolve(symbols, &ts).and_then(validate);
            let exemplars = ts
                .exemplars
                .iter()
                .map(|e| {
                    Ok(Exemplar {
                        labels: resolve_refs(symbols, &e.labels_refs)?,
                        value: e.value,
                        timestamp: e.timestamp,
                    })
                })
                .collect::<Result<Vec<_>, String>>();
            let (labels, exemplars) = match (labels, exemplars) {
                (Ok(l), Ok(e)) => (Ok(l), e),
                (Err(p), _) | (_, Err(p)) => (Err(p), Vec::new()),
            };
            let metadata = match (&labels, ts.metadata) {
                (Ok(l), Some(m)) => crate::model::get(l, METRIC_NAME).map(|name| MetricMetadata {
                    r#type: m.r#type,
                    metric_family_name: family_name(name, m.r#type).to_owned(),
                    // References checked by `resolve`.
                    help: symbols
                        .get(m.help_ref as usize)
                        .cloned()
                        .unwrap_or_default(),
                    unit: symbols
                        .get(m.unit_ref as usize)
                        .cloned()
                        .unwrap_or_default(),
                }),
                _ => None,
            };
            // The created timestamp: 2.0-rc.3's series field (Prometheus 3.5 to 3.7), else the
            // first start timestamp of a sample or histogram (2.0-rc.4, Prometheus >= 3.8).
            let per_sample = ts
                .samples
                .iter()
                .map(|s| s.start_timestamp)
                .chain(ts.histograms.iter().map(|h| h.start_timestamp))
                .find(|st| *st != 0)
                .unwrap_or(0);
            let created_timestamp = match ts.created_timestamp {
                0 => per_sample,
                ct => ct,
            };
            let mut histograms = ts.histograms;
            for h in &mut histograms {
                h.start_timestamp = 0;
            }
            Series {
                labels,
                samples: ts
                    .samples
                    .iter()
                    .map(|s| Sample {
                        value: s.value,
                        timestamp: s.timestamp,
                    })
                    .collect(),
                histograms,
                exemplars,
                metadata,
                created_timestamp,
            }
        })
        .collect())
}

/// Pairs of symbol references as labels.
fn resolve_refs(symbols: &[String], refs: &[u32]) -> Result<Vec<Label>, String> {
    let symbol = |r: u32| {
        symbols.get(r as usize).ok_or_else(|| {
            format!(
                "symbol reference {r} outside the table of {}",
                symbols.len()
            )
        })
    };
    if refs.len() % 2 != 0 {
        return Err("odd number of label references".into());
    }
    refs.chunks_exact(2)
        .map(|pair| Ok(Label::new(symbol(pair[0])?, symbol(pair[1])?)))
        .collect()
}

/// A 2.0 series' labels from the symbol table.
fn resolve(symbols: &[String], ts: &V2Series) -> Result<Vec<Label>, String> {
    let symbol = |r: u32| {
        symbols.get(r as usize).ok_or_else(|| {
            format!(
                "symbol reference {r} outside the table of {}",
                symbols.len()
            )
        })
    };
    if let Some(m) = &ts.metadata {
        symbol(m.help_ref)?;
        symbol(m.unit_ref)?;
    }
    resolve_refs(symbols, &ts.labels_refs)
}

/// Validates and sorts one series' labels (see the module docs).
pub fn validate(mut labels: Vec<Label>) -> Result<Vec<Label>, String> {
    labels.retain(|l| !l.value.is_empty());
    if labels.iter().any(|l| l.name.is_empty()) {
        return Err("empty label name".into());
    }
    if !labels.windows(2).all(|w| w[0].name < w[1].name) {
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = labels.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(format!("duplicate label name {:?}", w[0].name));
        }
    }
    if !labels.iter().any(|l| l.name == METRIC_NAME) {
        return Err("no __name__ label".into());
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snappy(raw: &[u8]) -> Vec<u8> {
        snap::raw::Encoder::new()
            .compress_vec(raw)
            .expect("compresses")
    }

    const LIMITS: Limits = Limits {
        max_decoded_bytes: 1 << 20,
        max_series: 100,
    };

    #[test]
    fn negotiation_follows_both_specs() {
        let ok = |ct, enc| negotiate(ct, enc);
        assert_eq!(ok(None, None), Ok(Proto::V1));
        assert_eq!(
            ok(Some("application/x-protobuf"), Some("snappy")),
            Ok(Proto::V1)
        );
        assert_eq!(
            ok(
                Some("application/x-protobuf;proto=prometheus.WriteRequest"),
                Some("SNAPPY")
            ),
            Ok(Proto::V1)
        );
        assert_eq!(
            ok(
                Some("Application/X-Protobuf; charset=x; PROTO=\"io.prometheus.write.v2.Request\""),
                None
            ),
            Ok(Proto::V2)
        );
        for bad in [
            "text/plain",
            "application/x-protobuf;proto=io.prometheus.write.v3.Request",
            "application/x-protobuf;proto",
            "application/json",
        ] {
            assert!(
                matches!(ok(Some(bad), None), Err(Unsupported::ContentType(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            ok(None, Some("gzip")),
            Err(Unsupported::ContentEncoding(_))
        ));
    }

    #[test]
    fn v1_keeps_histograms_exemplars_metadata_and_nan_bits() {
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        // A 1.0 series with labels out of order, a stale marker, one exemplar, two histograms;
        // metadata for its family.
        let mut raw = Vec::new();
        let h = |t| Histogram {
            schema: 1,
            timestamp: t,
            ..Default::default()
        };
        let ex = Exemplar {
            labels: vec![Label::new("trace_id", "t")],
            value: 1.0,
            timestamp: 4,
        };
        let series = super::super::TimeSeries {
            labels: vec![Label::new("job", "a"), Label::new("__name__", "x_bucket")],
            samples: vec![Sample {
                value: stale,
                timestamp: 5,
            }],
            exemplars: vec![ex.clone()],
            histograms: vec![h(6), h(7)],
            created_timestamp: 0,
        };
        let md = MetricMetadata {
            r#type: MetricType::Histogram as i32,
            metric_family_name: "x".into(),
            help: "h".into(),
            unit: String::new(),
        };
        V1Request {
            timeseries: vec![series],
            metadata: vec![md.clone()],
        }
        .encode(&mut raw)
        .expect("encodes");
        let got = decode(Proto::V1, &snappy(&raw), LIMITS).expect("decodes");
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].labels,
            Ok(vec![
                Label::new("__name__", "x_bucket"),
                Label::new("job", "a")
            ])
        );
        assert_eq!(got[0].samples[0].value.to_bits(), stale.to_bits());
        assert_eq!(got[0].histograms, [h(6), h(7)]);
        assert_eq!(got[0].exemplars, [ex]);
        assert_eq!(got[0].metadata, Some(md));
    }

    #[test]
    fn v2_keeps_histograms_exemplars_and_metadata() {
        let req = V2Request {
            symbols: [
                "", "__name__", "lat_sum", "help", "seconds", "trace_id", "t",
            ]
            .map(String::from)
            .to_vec(),
            timeseries: vec![V2Series {
                labels_refs: vec![1, 2],
                histograms: vec![Histogram {
                    schema: 2,
                    ..Default::default()
                }],
                exemplars: vec![super::super::v2::Exemplar {
                    labels_refs: vec![5, 6],
                    value: 0.5,
                    timestamp: 9,
                }],
                metadata: Some(super::super::v2::Metadata {
                    r#type: MetricType::Histogram as i32,
                    help_ref: 3,
                    unit_ref: 4,
                }),
                created_timestamp: 77,
                ..Default::default()
            }],
        };
        let got = decode(Proto::V2, &snappy(&req.encode_to_vec()), LIMITS).expect("decodes");
        assert_eq!(got[0].histograms.len(), 1);
        assert_eq!(got[0].exemplars[0].labels, [Label::new("trace_id", "t")]);
        assert_eq!(got[0].created_timestamp, 77);
        let md = got[0].metadata.as_ref().expect("metadata");
        assert_eq!(
            (
                md.metric_family_name.as_str(),
                md.help.as_str(),
                md.unit.as_str()
            ),
            ("lat", "help", "seconds")
        );
    }

    #[test]
    fn v2_start_timestamps_from_either_specification() {
        use super::super::v2::Sample as S2;
        let series = |created, samples: Vec<S2>, hist_st: Option<i64>| V2Series {
            labels_refs: vec![1, 2],
            samples,
            histograms: hist_st
                .map(|st| Histogram {
                    timestamp: 5,
                    start_timestamp: st,
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            created_timestamp: created,
            ..Default::default()
        };
        let s = |t, st| S2 {
            value: 1.0,
            timestamp: t,
            start_timestamp: st,
        };
        let req = V2Request {
            symbols: vec!["".into(), "__name__".into(), "c_total".into()],
            timeseries: vec![
                // 3.5's series field.
                series(70, vec![s(100, 0)], None),
                // 3.8's per-sample field; the first one set counts.
                series(0, vec![s(100, 0), s(110, 90), s(120, 95)], None),
                // Both: the series field wins.
                series(70, vec![s(100, 80)], None),
                // A histogram's start timestamp.
                series(0, vec![], Some(60)),
                series(0, vec![s(1, 0)], None),
            ],
        };
        let got = decode(Proto::V2, &snappy(&req.encode_to_vec()), LIMITS).expect("decodes");
        let cts: Vec<i64> = got.iter().map(|s| s.created_timestamp).collect();
        assert_eq!(cts, [70, 90, 70, 60, 0]);
        assert_eq!(
            got[3].histograms[0].start_timestamp, 0,
            "kept per series only"
        );
        assert_eq!(got[1].samples.len(), 3);
    }

    #[test]
    fn v2_resolves_symbols_and_rejects_bad_references() {
        let req = V2Request {
            symbols: vec!["".into(), "__name__".into(), "up".into(), "job".into()],
            timeseries: vec![
                V2Series {
                    labels_refs: vec![1, 2, 3, 2],
                    samples: vec![super::super::v2::Sample {
                        value: 1.0,
                        timestamp: 1,
                        start_timestamp: 0,
                    }],
                    ..Default::default()
                },
                V2Series {
                    labels_refs: vec![1, 9],
                    ..Default::default()
                },
                V2Series {
                    labels_refs: vec![1],
                    ..Default::default()
                },
            ],
        };
        let got = decode(Proto::V2, &snappy(&req.encode_to_vec()), LIMITS).expect("decodes");
        assert_eq!(
            got[0].labels,
            Ok(vec![Label::new("__name__", "up"), Label::new("job", "up")])
        );
        assert!(got[1].labels.as_ref().is_err_and(|e| e.contains("9")));
        assert!(got[2].labels.is_err());

        let bad = V2Request {
            symbols: vec!["x".into()],
            timeseries: vec![],
        };
        assert!(matches!(
            decode(Proto::V2, &snappy(&bad.encode_to_vec()), LIMITS),
            Err(RequestError::Invalid(_))
        ));
    }

    #[test]
    fn labels_are_validated() {
        let l = |pairs: &[(&str, &str)]| pairs.iter().map(|(n, v)| Label::new(*n, *v)).collect();
        assert!(validate(l(&[("__name__", "x"), ("", "v")])).is_err());
        assert!(
            validate(l(&[("__name__", "x"), ("a", "1"), ("a", "2")]))
                .is_err_and(|e| e.contains("\"a\""))
        );
        assert!(validate(l(&[("job", "x")])).is_err());
        assert_eq!(
            validate(l(&[("z", ""), ("b", "1"), ("__name__", "x")])),
            Ok(l(&[("__name__", "x"), ("b", "1")]))
        );
    }

    #[test]
    fn limits_are_checked_before_building() {
        let req = V1Request {
            timeseries: vec![super::super::TimeSeries::default(); 101],
            metadata: vec![],
        };
        let body = snappy(&req.encode_to_vec());
        assert!(matches!(
            decode(Proto::V1, &body, LIMITS),
            Err(RequestError::TooManySeries {
                count: 101,
                limit: 100
            })
        ));
        let small = Limits {
            max_decoded_bytes: 10,
            ..LIMITS
        };
        assert!(matches!(
            decode(Proto::V1, &body, small),
            Err(RequestError::Decode(DecodeError::TooLarge { .. }))
        ));
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let valid = V1Request {
            timeseries: vec![super::super::TimeSeries {
                labels: vec![Label::new("__name__", "x")],
                samples: vec![Sample {
                    value: 1.0,
                    timestamp: 2,
                }],
                ..Default::default()
            }],
            metadata: vec![],
        }
        .encode_to_vec();
        for i in 0..5000 {
            let len = (next() % 64) as usize;
            let mut raw: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 2 == 0 {
                // Mutate a valid message instead of pure noise.
                raw = valid.clone();
                let at = (next() as usize) % raw.len();
                raw[at] = next() as u8;
                raw.truncate((next() as usize) % (raw.len() + 1));
            }
            for proto in [Proto::V1, Proto::V2] {
                let _ = decode(proto, &snappy(&raw), LIMITS);
                let _ = decode(proto, &raw, LIMITS);
            }
        }
    }
}
