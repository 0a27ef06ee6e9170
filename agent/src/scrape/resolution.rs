//! Native histogram buckets as Prometheus 3.5 shapes them: compacted when parsed, then
//! brought under a job's `native_histogram_min_bucket_factor` and
//! `native_histogram_bucket_limit` (Prometheus's `Compact(0)` in `model/textparse`, its
//! `maxSchemaAppender` and `bucketLimitAppender` in `scrape/target.go`, and
//! `ReduceResolution` in `model/histogram`).
//!
//! - [`compact`]: empty buckets are dropped and the spans become the runs of consecutive
//!   buckets left (what `Compact(0)` leaves). The histogram means the same.
//! - [`Limits::max_schema`], from the factor: the highest schema whose buckets grow by at
//!   least the factor ([`pick_schema`]: `floor(-log2(log2(factor)))`, within -4..=8; a factor
//!   of 1 or less means none). A histogram with a higher exponential schema is reduced to it.
//! - [`Limits::bucket_limit`]: while a histogram has more buckets (positive and negative
//!   together) than the limit, its schema goes down by one. One that cannot get under it (a
//!   custom-bucket histogram, or one at schema -4) is refused: the scrape fails with
//!   "histogram bucket limit exceeded", unless it also exceeds the sample limit, whose error
//!   wins (see `shape.rs`).
//! - Reducing a schema merges neighbouring buckets: bucket `i` of schema `s` goes to bucket
//!   `((i - 1) >> (s - t)) + 1` of schema `t`, counts summed.
//!
//! Histograms whose spans do not match their bucket counts are left alone (the receiver
//! refuses them). Integer histograms' delta encoding is kept, with wrapping arithmetic as in
//! Go. Pure: no I/O, no panics.

use uplink_shared::remote_write::{BucketSpan, Histogram, histogram::Count};

/// The lowest and highest exponential schemas.
pub const SCHEMA_MIN: i32 = -4;
pub const SCHEMA_MAX: i32 = 8;

fn exponential(schema: i32) -> bool {
    (SCHEMA_MIN..=SCHEMA_MAX).contains(&schema)
}

/// A job's histogram limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most buckets per histogram; 0 for no limit.
    pub bucket_limit: usize,
    /// Highest schema kept; [`SCHEMA_MAX`] for no limit.
    pub max_schema: i32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            bucket_limit: 0,
            max_schema: SCHEMA_MAX,
        }
    }
}

/// Prometheus's `pickSchema`.
pub fn pick_schema(factor: f64) -> i32 {
    let factor = if factor <= 1.0 { 1.00271 } else { factor };
    let floor = (-factor.log2().log2()).floor();
    if floor >= f64::from(SCHEMA_MAX) {
        SCHEMA_MAX
    } else if floor <= f64::from(SCHEMA_MIN) {
        SCHEMA_MIN
    } else {
        floor as i32
    }
}

impl Limits {
    /// From a job's `native_histogram_bucket_limit` and `native_histogram_min_bucket_factor`.
    pub fn new(bucket_limit: Option<u64>, min_bucket_factor: Option<f64>) -> Limits {
        Limits {
            bucket_limit: usize::try_from(bucket_limit.unwrap_or(0)).unwrap_or(usize::MAX),
            max_schema: pick_schema(min_bucket_factor.unwrap_or(0.0)),
        }
    }

    pub fn is_none(&self) -> bool {
        *self == Limits::default()
    }

    /// Brings `h` under the limits; `false` when it stays over the bucket limit.
    pub fn apply(&self, h: &mut Histogram) -> bool {
        if exponential(h.schema) && h.schema > self.max_schema {
            reduce(h, self.max_schema);
        }
        if self.bucket_limit == 0 || buckets(h) <= self.bucket_limit {
            return true;
        }
        if !exponential(h.schema) {
            return false;
        }
        while buckets(h) > self.bucket_limit {
            if h.schema <= SCHEMA_MIN || !reduce(h, h.schema - 1) {
                return false;
            }
        }
        true
    }
}

/// The number of buckets, positive and negative.
pub fn buckets(h: &Histogram) -> usize {
    h.positive_deltas.len()
        + h.negative_deltas.len()
        + h.positive_counts.len()
        + h.negative_counts.len()
}

fn is_float(h: &Histogram) -> bool {
    matches!(h.count, Some(Count::CountFloat(_)))
}

/// Each bucket's index and count, in span order; `None` when the spans do not cover exactly
/// `counts`.
fn indexed<T: Copy>(spans: &[BucketSpan], counts: &[T]) -> Option<Vec<(i64, T)>> {
    let mut out = Vec::with_capacity(counts.len());
    let mut idx: i64 = 0;
    let mut it = counts.iter();
    for s in spans {
        idx += i64::from(s.offset);
        for _ in 0..s.length {
            out.push((idx, *it.next()?));
            idx += 1;
        }
    }
    it.next().is_none().then_some(out)
}

/// Spans and counts from increasing indices: one span per run of consecutive indices.
fn from_indexed<T>(pairs: Vec<(i64, T)>) -> (Vec<BucketSpan>, Vec<T>) {
    let mut spans: Vec<BucketSpan> = Vec::new();
    let mut counts = Vec::with_capacity(pairs.len());
    let mut last: Option<i64> = None;
    for (idx, c) in pairs {
        match (last, spans.last_mut()) {
            (Some(l), Some(s)) if idx == l + 1 => s.length += 1,
            _ => spans.push(BucketSpan {
                offset: i32::try_from(last.map_or(idx, |l| idx - l - 1)).unwrap_or(i32::MAX),
                length: 1,
            }),
        }
        last = Some(idx);
        counts.push(c);
    }
    (spans, counts)
}

fn absolute(deltas: &[i64]) -> Vec<i64> {
    let mut acc = 0i64;
    deltas
        .iter()
        .map(|d| {
            acc = acc.wrapping_add(*d);
            acc
        })
        .collect()
}

fn deltas(abs: &[i64]) -> Vec<i64> {
    let mut prev = 0i64;
    abs.iter()
        .map(|a| {
            let d = a.wrapping_sub(prev);
            prev = *a;
            d
        })
        .collect()
}

/// Rewrites both sides of `h` with `f` (on absolute counts); `false`, and `h` unchanged,
/// when a side's spans do not match its counts.
fn rewrite(
    h: &mut Histogram,
    f_int: impl Fn(Vec<(i64, i64)>) -> Vec<(i64, i64)>,
    f_float: impl Fn(Vec<(i64, f64)>) -> Vec<(i64, f64)>,
) -> bool {
    if is_float(h) {
        let (Some(p), Some(n)) = (
            indexed(&h.positive_spans, &h.positive_counts),
            indexed(&h.negative_spans, &h.negative_counts),
        ) else {
            return false;
        };
        (h.positive_spans, h.positive_counts) = from_indexed(f_float(p));
        (h.negative_spans, h.negative_counts) = from_indexed(f_float(n));
    } else {
        let (Some(p), Some(n)) = (
            indexed(&h.positive_spans, &absolute(&h.positive_deltas)),
            indexed(&h.negative_spans, &absolute(&h.negative_deltas)),
        ) else {
            return false;
        };
        let (ps, pc) = from_indexed(f_int(p));
        let (ns, nc) = from_indexed(f_int(n));
        (h.positive_spans, h.positive_deltas) = (ps, deltas(&pc));
        (h.negative_spans, h.negative_deltas) = (ns, deltas(&nc));
    }
    true
}

/// Prometheus's `Compact(0)`: empty buckets dropped, spans rebuilt. A custom-bucket
/// histogram is left alone (its buckets are positional).
pub fn compact(h: &mut Histogram) {
    if !exponential(h.schema) {
        return;
    }
    rewrite(
        h,
        |p| p.into_iter().filter(|(_, c)| *c != 0).collect(),
        |p| p.into_iter().filter(|(_, c)| *c != 0.0).collect(),
    );
}

/// The bucket of schema `to` that bucket `idx` of schema `from` falls into.
fn target_index(idx: i64, from: i32, to: i32) -> i64 {
    ((idx - 1) >> (from - to).clamp(0, 63)) + 1
}

/// Merges buckets by target index with `add`; as Prometheus's `reduceResolution`, a bucket
/// whose target lies before the previous one (only in malformed spans) is dropped.
fn merge<T: Copy>(
    pairs: Vec<(i64, T)>,
    from: i32,
    to: i32,
    add: impl Fn(T, T) -> T,
) -> Vec<(i64, T)> {
    let mut out: Vec<(i64, T)> = Vec::with_capacity(pairs.len());
    for (idx, c) in pairs {
        let t = target_index(idx, from, to);
        match out.last_mut() {
            Some((last, sum)) if *last == t => *sum = add(*sum, c),
            Some((last, _)) if *last > t => {}
            _ => out.push((t, c)),
        }
    }
    out
}

/// `ReduceResolution(to)` for an exponential `h` of a higher schema; `false`, and `h`
/// unchanged, when its spans do not match its buckets.
pub fn reduce(h: &mut Histogram, to: i32) -> bool {
    let from = h.schema;
    if !exponential(from) || !exponential(to) || to >= from {
        return false;
    }
    let done = rewrite(
        h,
        |p| merge(p, from, to, i64::wrapping_add),
        |p| merge(p, from, to, |a, b| a + b),
    );
    if done {
        h.schema = to;
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use uplink_shared::remote_write::histogram::{Count, ZeroCount};

    fn span(offset: i32, length: u32) -> BucketSpan {
        BucketSpan { offset, length }
    }

    fn int(schema: i32, spans: Vec<BucketSpan>, deltas: Vec<i64>) -> Histogram {
        Histogram {
            count: Some(Count::CountInt(100)),
            zero_count: Some(ZeroCount::ZeroCountInt(0)),
            schema,
            positive_spans: spans,
            positive_deltas: deltas,
            ..Default::default()
        }
    }

    #[test]
    fn pick_schema_as_prometheus() {
        assert_eq!(pick_schema(0.0), 8);
        assert_eq!(pick_schema(1.0), 8);
        assert_eq!(pick_schema(1.001), 8);
        assert_eq!(pick_schema(1.003), 7);
        assert_eq!(pick_schema(1.1), 2);
        assert_eq!(pick_schema(1.5), 0);
        assert_eq!(pick_schema(2.0), 0);
        assert_eq!(pick_schema(4.0), -1);
        assert_eq!(pick_schema(1e300), -4);
    }

    /// Prometheus's `TestReduceResolution` case: schema 0 to -1, two spans.
    #[test]
    fn reduce_merges_neighbours() {
        // Buckets at indices -2..=1 and 3..=4 with absolute counts 1, 3, 1, 2, 1, 1.
        let mut h = int(0, vec![span(-2, 4), span(1, 2)], vec![1, 2, -2, 1, -1, 0]);
        assert!(reduce(&mut h, -1));
        assert_eq!(h.schema, -1);
        // Targets: -2→-1, -1→0, 0→0, 1→1, 3→2, 4→2.
        assert_eq!(h.positive_spans, vec![span(-1, 4)]);
        assert_eq!(absolute(&h.positive_deltas), vec![1, 4, 2, 2]);

        let mut f = Histogram {
            count: Some(Count::CountFloat(9.0)),
            schema: 0,
            positive_spans: vec![span(-2, 4), span(1, 2)],
            positive_counts: vec![1.0, 3.0, 1.0, 2.0, 1.0, 1.0],
            ..Default::default()
        };
        assert!(reduce(&mut f, -1));
        assert_eq!(f.positive_spans, vec![span(-1, 4)]);
        assert_eq!(f.positive_counts, vec![1.0, 4.0, 2.0, 2.0]);
    }

    #[test]
    fn compact_drops_empty_buckets() {
        // Absolute counts 0, 3, 0, 0, 2 at 0..=4, then 0 at 7, then 5, 0 at 9..=10.
        let mut h = int(
            3,
            vec![span(0, 5), span(2, 1), span(1, 2)],
            vec![0, 3, -3, 0, 2, -2, 5, -5],
        );
        compact(&mut h);
        assert_eq!(h.positive_spans, vec![span(1, 1), span(2, 1), span(4, 1)]);
        assert_eq!(absolute(&h.positive_deltas), vec![3, 2, 5]);
    }

    #[test]
    fn bucket_limit_reduces_until_it_fits_or_refuses() {
        let wide = || {
            int(
                3,
                vec![span(0, 16)],
                std::iter::once(1)
                    .chain(std::iter::repeat_n(0, 15))
                    .collect(),
            )
        };
        let limits = Limits::new(Some(4), None);
        let mut h = wide();
        assert!(limits.apply(&mut h));
        // 16 buckets at schema 3 → 9 at 2 → 5 at 1 → 3 at 0.
        assert_eq!(h.schema, 0);
        assert_eq!(buckets(&h), 3);
        assert_eq!(absolute(&h.positive_deltas), vec![1, 8, 7]);

        // A factor caps the schema first.
        let mut h = wide();
        assert!(Limits::new(None, Some(1.1)).apply(&mut h));
        assert_eq!(h.schema, 2);

        // Custom buckets cannot be reduced.
        let mut nhcb = int(-53, vec![span(0, 5)], vec![1, 0, 0, 0, 0]);
        assert!(!limits.apply(&mut nhcb));
        assert!(Limits::new(Some(5), None).apply(&mut nhcb));

        // Two far-apart buckets at schema -4 stay two.
        let mut h = int(-4, vec![span(0, 1), span(1000, 1)], vec![1, 0]);
        assert!(!Limits::new(Some(1), None).apply(&mut h));
        assert!(Limits::default().is_none());
    }

    #[test]
    fn malformed_spans_are_left_alone() {
        let mut h = int(3, vec![span(0, 5)], vec![1, 1]);
        let before = h.clone();
        compact(&mut h);
        assert!(!reduce(&mut h, 1));
        assert_eq!(h, before);
        let mut h = int(3, vec![span(i32::MIN, u32::MAX)], vec![]);
        assert!(!reduce(&mut h, 1));
    }
}
