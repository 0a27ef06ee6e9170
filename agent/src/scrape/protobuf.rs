//! Parser for the Prometheus protobuf exposition format
//! (`application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily;
//! encoding=delimited`): a sequence of `MetricFamily` messages, each preceded by its length as a
//! varint. The only format that carries native histograms.
//!
//! It produces the same [`Exposition`] as the text parsers, so everything after parsing is
//! shared. Samples are what Prometheus 2.42's `model/textparse/protobufparse.go` yields:
//!
//! * counter, gauge, untyped: one sample named after the family; a counter's exemplar is kept.
//! * summary: `<name>_count`, `<name>_sum`, then one `<name>{quantile="q"}` per quantile.
//! * histogram and gauge histogram: a family is *native* when its first metric's histogram has
//!   a zero threshold or zero count above 0, or any native bucket (deltas or float counts).
//!   Then each metric is one native histogram sample named after the family: a float histogram
//!   when `sample_count_float` or `zero_count_float` is above 0, else an integer one with
//!   delta-coded buckets; a gauge histogram's has the reset hint `gauge`. Its exemplar is the
//!   first one found on its classic buckets. Otherwise, as classic series: `<name>_count`,
//!   `<name>_sum`, one `<name>_bucket{le="b"}` per bucket, and a `+Inf` bucket (the count) when
//!   the last bucket is not `+Inf`; each bucket's exemplar is kept.
//! * `quantile` and `le` values are printed as Prometheus prints them: Go's shortest float
//!   format with `.0` added to integers (`1.0`, `0.25`, `1e-05`, `1e+06`, `+Inf`).
//! * Prometheus 3 ([`parse::Dialect::Prometheus3`], with [`Histograms`]): names may be any
//!   non-empty UTF-8 (the exporter sends them unescaped when asked for `allow-utf-8`); a native
//!   family is read as native only while native histograms are ingested
//!   (`scrape_native_histograms`, or Prometheus 3.5's `--enable-feature=native-histograms`),
//!   otherwise as classic series (Prometheus ≥ 3.8; 3.5 would drop it); with
//!   `always_scrape_classic_histograms` a native histogram's classic series follow it.
//! * A metric's `timestamp_ms` is its sample's timestamp, except 0 (proto3 cannot tell it from
//!   unset). Exemplar timestamps are `seconds * 1000 + nanos / 10^6`; without one, an exemplar
//!   takes its sample's.
//! * Metadata: each family's name, type and help (the format has no units).
//! * Families without metrics are skipped.
//!
//! Deviations from Prometheus 2.42 (each as later Prometheus releases do):
//! * Float bucket counts make a histogram native; 2.42 looks at deltas only and reads a float
//!   histogram without a zero threshold or zero count as a classic one.
//! * A classic gauge histogram's series are `<name>_count`, `<name>_sum` and `<name>_bucket`;
//!   2.42 names the count and sum series `<name>` (one series for both) and its buckets too.
//!
//! # Limits and errors
//!
//! The same [`Limits`] as the text parsers, checked per sample. A length prefix that runs past
//! the body, a message that does not decode (prost checks UTF-8 in strings), an invalid metric
//! or label name, `__name__` among the labels or a repeated label name fails the whole body.
//! Errors name the family's position (1-based) in the body. Never panics (the fuzz target
//! `protobuf_exposition` runs it).

use prost::Message;
use uplink_shared::remote_write::{self, BucketSpan, MetricType, histogram};

use super::parse::{
    self, Exposition, Limits, ParsedExemplar, ParsedSample, check_label_names, check_limits,
    is_label_char, is_label_start, is_name_char, is_name_start,
};
use uplink_shared::model::Label;

/// The media type that selects this parser.
pub const MEDIA_TYPE: &str = "application/vnd.google.protobuf";

/// Why a protobuf body was rejected.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("metric family {family}: {kind}")]
pub struct ParseError {
    /// 1-based position of the family in the body.
    pub family: usize,
    pub kind: ParseErrorKind,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseErrorKind {
    #[error("length prefix is not a valid varint")]
    InvalidLength,
    #[error("message of {declared} bytes runs past the end of the body ({left} left)")]
    Truncated { declared: u64, left: usize },
    #[error("invalid protobuf: {0}")]
    Decode(String),
    #[error("invalid metric name {0:?}")]
    InvalidMetricName(String),
    #[error("invalid label name {0:?}")]
    InvalidLabelName(String),
    #[error("unknown metric type {0}")]
    UnknownType(i32),
    #[error(transparent)]
    Sample(#[from] parse::ParseErrorKind),
}

// ---------------------------------------------------------------------------------------------
// io.prometheus.client messages (proto2; prost derives, as these machines have no protoc).

#[derive(Clone, PartialEq, Message)]
struct MetricFamily {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    help: Option<String>,
    #[prost(int32, optional, tag = "3")]
    r#type: Option<i32>,
    #[prost(message, repeated, tag = "4")]
    metric: Vec<Metric>,
}

#[derive(Clone, PartialEq, Message)]
struct Metric {
    #[prost(message, repeated, tag = "1")]
    label: Vec<LabelPair>,
    #[prost(message, optional, tag = "2")]
    gauge: Option<Value>,
    #[prost(message, optional, tag = "3")]
    counter: Option<Counter>,
    #[prost(message, optional, tag = "4")]
    summary: Option<Summary>,
    #[prost(message, optional, tag = "5")]
    untyped: Option<Value>,
    #[prost(int64, optional, tag = "6")]
    timestamp_ms: Option<i64>,
    #[prost(message, optional, tag = "7")]
    histogram: Option<Histogram>,
}

#[derive(Clone, PartialEq, Message)]
struct LabelPair {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    value: Option<String>,
}

/// `Gauge` and `Untyped`.
#[derive(Clone, PartialEq, Message)]
struct Value {
    #[prost(double, optional, tag = "1")]
    value: Option<f64>,
}

#[derive(Clone, PartialEq, Message)]
struct Counter {
    #[prost(double, optional, tag = "1")]
    value: Option<f64>,
    #[prost(message, optional, tag = "2")]
    exemplar: Option<Exemplar>,
    #[prost(message, optional, tag = "3")]
    created_timestamp: Option<Timestamp>,
}

#[derive(Clone, PartialEq, Message)]
struct Quantile {
    #[prost(double, optional, tag = "1")]
    quantile: Option<f64>,
    #[prost(double, optional, tag = "2")]
    value: Option<f64>,
}

#[derive(Clone, PartialEq, Message)]
struct Summary {
    #[prost(uint64, optional, tag = "1")]
    sample_count: Option<u64>,
    #[prost(double, optional, tag = "2")]
    sample_sum: Option<f64>,
    #[prost(message, repeated, tag = "3")]
    quantile: Vec<Quantile>,
    #[prost(message, optional, tag = "4")]
    created_timestamp: Option<Timestamp>,
}

#[derive(Clone, PartialEq, Message)]
struct Histogram {
    #[prost(uint64, optional, tag = "1")]
    sample_count: Option<u64>,
    #[prost(double, optional, tag = "4")]
    sample_count_float: Option<f64>,
    #[prost(double, optional, tag = "2")]
    sample_sum: Option<f64>,
    #[prost(message, repeated, tag = "3")]
    bucket: Vec<Bucket>,
    #[prost(sint32, optional, tag = "5")]
    schema: Option<i32>,
    #[prost(double, optional, tag = "6")]
    zero_threshold: Option<f64>,
    #[prost(uint64, optional, tag = "7")]
    zero_count: Option<u64>,
    #[prost(double, optional, tag = "8")]
    zero_count_float: Option<f64>,
    #[prost(message, repeated, tag = "9")]
    negative_span: Vec<Span>,
    #[prost(sint64, repeated, packed = "false", tag = "10")]
    negative_delta: Vec<i64>,
    #[prost(double, repeated, packed = "false", tag = "11")]
    negative_count: Vec<f64>,
    #[prost(message, repeated, tag = "12")]
    positive_span: Vec<Span>,
    #[prost(sint64, repeated, packed = "false", tag = "13")]
    positive_delta: Vec<i64>,
    #[prost(double, repeated, packed = "false", tag = "14")]
    positive_count: Vec<f64>,
    #[prost(message, optional, tag = "15")]
    created_timestamp: Option<Timestamp>,
}

#[derive(Clone, PartialEq, Message)]
struct Bucket {
    #[prost(uint64, optional, tag = "1")]
    cumulative_count: Option<u64>,
    #[prost(double, optional, tag = "4")]
    cumulative_count_float: Option<f64>,
    #[prost(double, optional, tag = "2")]
    upper_bound: Option<f64>,
    #[prost(message, optional, tag = "3")]
    exemplar: Option<Exemplar>,
}

#[derive(Clone, PartialEq, Message)]
struct Span {
    #[prost(sint32, optional, tag = "1")]
    offset: Option<i32>,
    #[prost(uint32, optional, tag = "2")]
    length: Option<u32>,
}

#[derive(Clone, PartialEq, Message)]
struct Exemplar {
    #[prost(message, repeated, tag = "1")]
    label: Vec<LabelPair>,
    #[prost(double, optional, tag = "2")]
    value: Option<f64>,
    #[prost(message, optional, tag = "3")]
    timestamp: Option<Timestamp>,
}

#[derive(Clone, PartialEq, Message)]
struct Timestamp {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

// The family types (`io.prometheus.client.MetricType`).
const COUNTER: i32 = 0;
const GAUGE: i32 = 1;
const SUMMARY: i32 = 2;
const UNTYPED: i32 = 3;
const HISTOGRAM: i32 = 4;
const GAUGE_HISTOGRAM: i32 = 5;

// ---------------------------------------------------------------------------------------------

/// How histograms are read (Prometheus 3's `scrape_native_histograms` and
/// `always_scrape_classic_histograms`; the Prometheus 2 mode reads a native family as native
/// only, a classic one as classic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Histograms {
    /// Native histograms are ingested; otherwise every histogram is read as classic series
    /// (Prometheus ≥ 3.8's `scrape_native_histograms: false`).
    pub native: bool,
    /// A native histogram's classic series are kept too.
    pub classic: bool,
}

impl Default for Histograms {
    /// Prometheus 2's `--enable-feature=native-histograms` behaviour: native only.
    fn default() -> Self {
        Histograms {
            native: true,
            classic: false,
        }
    }
}

/// Parses a delimited protobuf body as Prometheus 3 does, native histograms ingested.
pub fn parse(body: &[u8], limits: &Limits) -> Result<Exposition, ParseError> {
    parse_with(
        body,
        limits,
        Histograms::default(),
        parse::Dialect::Prometheus3,
    )
}

/// Parses a delimited protobuf body, with `histograms` (Prometheus 3 only) and `dialect`'s
/// name rules (Prometheus 3: any non-empty UTF-8 metric and label name).
pub fn parse_with(
    mut body: &[u8],
    limits: &Limits,
    histograms: Histograms,
    dialect: parse::Dialect,
) -> Result<Exposition, ParseError> {
    let histograms = match dialect {
        parse::Dialect::Prometheus3 => histograms,
        parse::Dialect::Prometheus2 => Histograms::default(),
    };
    let utf8 = dialect == parse::Dialect::Prometheus3;
    let mut out = Exposition::default();
    let mut family = 0;
    while !body.is_empty() {
        family += 1;
        let err = |kind| ParseError { family, kind };
        let mut rest = body;
        let len = prost::encoding::decode_varint(&mut rest)
            .map_err(|_| err(ParseErrorKind::InvalidLength))?;
        let Some(msg) = usize::try_from(len).ok().and_then(|n| rest.get(..n)) else {
            return Err(err(ParseErrorKind::Truncated {
                declared: len,
                left: rest.len(),
            }));
        };
        let mf =
            MetricFamily::decode(msg).map_err(|e| err(ParseErrorKind::Decode(e.to_string())))?;
        body = &rest[msg.len()..];
        family_samples(mf, limits, histograms, utf8, &mut out).map_err(err)?;
    }
    Ok(out)
}

fn family_samples(
    mf: MetricFamily,
    limits: &Limits,
    histograms: Histograms,
    utf8: bool,
    out: &mut Exposition,
) -> Result<(), ParseErrorKind> {
    if mf.metric.is_empty() {
        return Ok(());
    }
    let name = mf.name.unwrap_or_default();
    let valid = if utf8 {
        !name.is_empty()
    } else {
        name.bytes().next().is_some_and(is_name_start) && name.bytes().all(is_name_char)
    };
    if !valid {
        return Err(ParseErrorKind::InvalidMetricName(parse::snippet(&name)));
    }
    let ty = mf.r#type.unwrap_or(COUNTER);
    let metadata_type = match ty {
        COUNTER => MetricType::Counter,
        GAUGE => MetricType::Gauge,
        SUMMARY => MetricType::Summary,
        UNTYPED => MetricType::Unknown,
        HISTOGRAM => MetricType::Histogram,
        GAUGE_HISTOGRAM => MetricType::Gaugehistogram,
        other => return Err(ParseErrorKind::UnknownType(other)),
    };
    out.types.insert(name.clone(), metadata_type);
    out.help
        .insert(name.clone(), mf.help.clone().unwrap_or_default());
    let native = histograms.native
        && matches!(ty, HISTOGRAM | GAUGE_HISTOGRAM)
        && mf.metric[0].histogram.as_ref().is_some_and(is_native);
    let push = |out: &mut Exposition, s: ParsedSample| -> Result<(), ParseErrorKind> {
        check_label_names(&s.labels)?;
        check_limits(&s, limits, out.samples.len())?;
        out.samples.push(s);
        Ok(())
    };
    for m in mf.metric {
        let labels = labels(&m.label, utf8)?;
        // proto3 habits: 0 means no timestamp.
        let timestamp_ms = m.timestamp_ms.filter(|t| *t != 0);
        let sample = |name: String, labels: Vec<Label>, value: f64| {
            ParsedSample::new(name, labels, value, timestamp_ms)
        };
        match ty {
            COUNTER => {
                let c = m.counter.unwrap_or_default();
                let mut s = sample(name.clone(), labels, c.value.unwrap_or(0.0));
                s.exemplar = c.exemplar.as_ref().map(exemplar).transpose()?;
                s.created_ms = ms(c.created_timestamp.as_ref());
                push(out, s)?;
            }
            GAUGE => {
                let v = m.gauge.and_then(|g| g.value).unwrap_or(0.0);
                push(out, sample(name.clone(), labels, v))?;
            }
            UNTYPED => {
                let v = m.untyped.and_then(|g| g.value).unwrap_or(0.0);
                push(out, sample(name.clone(), labels, v))?;
            }
            SUMMARY => {
                let s = m.summary.unwrap_or_default();
                let created_ms = ms(s.created_timestamp.as_ref());
                let count = s.sample_count.unwrap_or(0) as f64;
                let mut c = sample(format!("{name}_count"), labels.clone(), count);
                c.created_ms = created_ms;
                push(out, c)?;
                let sum = s.sample_sum.unwrap_or(0.0);
                let mut c = sample(format!("{name}_sum"), labels.clone(), sum);
                c.created_ms = created_ms;
                push(out, c)?;
                for q in &s.quantile {
                    let mut l = labels.clone();
                    l.push(Label::new("quantile", go_float(q.quantile.unwrap_or(0.0))));
                    push(out, sample(name.clone(), l, q.value.unwrap_or(0.0)))?;
                }
            }
            _ if native => {
                let h = m.histogram.unwrap_or_default();
                let mut s = sample(name.clone(), labels.clone(), 0.0);
                s.exemplar = h
                    .bucket
                    .iter()
                    .find_map(|b| b.exemplar.as_ref())
                    .map(exemplar)
                    .transpose()?;
                s.histogram = Some(Box::new(to_native(&h, ty == GAUGE_HISTOGRAM)));
                s.created_ms = ms(h.created_timestamp.as_ref());
                push(out, s)?;
                if histograms.classic {
                    classic(&name, labels, &h, timestamp_ms, &mut |s| push(out, s))?;
                }
            }
            _ => {
                let h = m.histogram.unwrap_or_default();
                classic(&name, labels, &h, timestamp_ms, &mut |s| push(out, s))?;
            }
        }
    }
    Ok(())
}

/// A histogram's classic series: `<name>_count`, `<name>_sum`, one `<name>_bucket{le="b"}`
/// per bucket (its exemplar kept), and a `+Inf` bucket (the count) when the last is not one.
fn classic(
    name: &str,
    labels: Vec<Label>,
    h: &Histogram,
    timestamp_ms: Option<i64>,
    push: &mut dyn FnMut(ParsedSample) -> Result<(), ParseErrorKind>,
) -> Result<(), ParseErrorKind> {
    let created_ms = ms(h.created_timestamp.as_ref());
    let sample = |name, labels, value| ParsedSample {
        created_ms,
        ..ParsedSample::new(name, labels, value, timestamp_ms)
    };
    let count = match h.sample_count_float.filter(|c| *c > 0.0) {
        Some(c) => c,
        None => h.sample_count.unwrap_or(0) as f64,
    };
    push(sample(format!("{name}_count"), labels.clone(), count))?;
    let sum = h.sample_sum.unwrap_or(0.0);
    push(sample(format!("{name}_sum"), labels.clone(), sum))?;
    let mut infinite = false;
    for b in &h.bucket {
        let bound = b.upper_bound.unwrap_or(0.0);
        let mut l = labels.clone();
        l.push(Label::new("le", go_float(bound)));
        let v = match b.cumulative_count_float.filter(|c| *c > 0.0) {
            Some(c) => c,
            None => b.cumulative_count.unwrap_or(0) as f64,
        };
        let mut s = sample(format!("{name}_bucket"), l, v);
        s.exemplar = b.exemplar.as_ref().map(exemplar).transpose()?;
        push(s)?;
        if bound == f64::INFINITY {
            infinite = true;
            break;
        }
    }
    if !infinite {
        let mut l = labels;
        l.push(Label::new("le", "+Inf"));
        push(sample(format!("{name}_bucket"), l, count))?;
    }
    Ok(())
}

/// Whether a histogram is native (see the module docs).
fn is_native(h: &Histogram) -> bool {
    h.zero_threshold.unwrap_or(0.0) > 0.0
        || h.zero_count.unwrap_or(0) > 0
        || !h.negative_delta.is_empty()
        || !h.positive_delta.is_empty()
        || !h.negative_count.is_empty()
        || !h.positive_count.is_empty()
}

/// The remote-write form of a native histogram.
fn to_native(h: &Histogram, gauge: bool) -> remote_write::Histogram {
    let spans = |s: &[Span]| -> Vec<BucketSpan> {
        s.iter()
            .map(|s| BucketSpan {
                offset: s.offset.unwrap_or(0),
                length: s.length.unwrap_or(0),
            })
            .collect()
    };
    let float =
        h.sample_count_float.unwrap_or(0.0) > 0.0 || h.zero_count_float.unwrap_or(0.0) > 0.0;
    let mut out = remote_write::Histogram {
        sum: h.sample_sum.unwrap_or(0.0),
        schema: h.schema.unwrap_or(0),
        zero_threshold: h.zero_threshold.unwrap_or(0.0),
        negative_spans: spans(&h.negative_span),
        positive_spans: spans(&h.positive_span),
        reset_hint: if gauge {
            histogram::ResetHint::Gauge as i32
        } else {
            histogram::ResetHint::Unknown as i32
        },
        ..Default::default()
    };
    if float {
        out.count = Some(histogram::Count::CountFloat(
            h.sample_count_float.unwrap_or(0.0),
        ));
        out.zero_count = Some(histogram::ZeroCount::ZeroCountFloat(
            h.zero_count_float.unwrap_or(0.0),
        ));
        out.negative_counts = h.negative_count.clone();
        out.positive_counts = h.positive_count.clone();
    } else {
        out.count = Some(histogram::Count::CountInt(h.sample_count.unwrap_or(0)));
        out.zero_count = Some(histogram::ZeroCount::ZeroCountInt(
            h.zero_count.unwrap_or(0),
        ));
        out.negative_deltas = h.negative_delta.clone();
        out.positive_deltas = h.positive_delta.clone();
    }
    // Empty buckets dropped, as Prometheus's parser does (`Compact(0)`).
    super::resolution::compact(&mut out);
    out
}

fn labels(pairs: &[LabelPair], utf8: bool) -> Result<Vec<Label>, ParseErrorKind> {
    pairs
        .iter()
        .map(|p| {
            let name = p.name.clone().unwrap_or_default();
            let valid = if utf8 {
                !name.is_empty()
            } else {
                name.bytes().next().is_some_and(is_label_start) && name.bytes().all(is_label_char)
            };
            if !valid {
                return Err(ParseErrorKind::InvalidLabelName(parse::snippet(&name)));
            }
            Ok(Label::new(name, p.value.clone().unwrap_or_default()))
        })
        .collect()
}

/// A protobuf timestamp in ms.
fn ms(t: Option<&Timestamp>) -> Option<i64> {
    t.map(|t| {
        t.seconds
            .wrapping_mul(1000)
            .wrapping_add(i64::from(t.nanos / 1_000_000))
    })
}

/// An exemplar as Prometheus 2.42 takes it from protobuf: labels sorted, kept as sent.
fn exemplar(e: &Exemplar) -> Result<Box<ParsedExemplar>, ParseErrorKind> {
    let mut labels = labels(&e.label, true)?;
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Box::new(ParsedExemplar {
        labels,
        value: e.value.unwrap_or(0.0),
        timestamp_ms: ms(e.timestamp.as_ref()),
    }))
}

/// A float as Prometheus prints `le` and `quantile` values of the protobuf format (as it has
/// since before 2.42, and as Prometheus 3 also rewrites them in the text formats).
pub use super::gofloat::format_openmetrics_float as go_float;

#[cfg(test)]
mod tests;
