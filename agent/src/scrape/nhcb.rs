//! Classic histograms as native histograms with custom buckets (NHCB), as Prometheus 3 converts
//! them under `convert_classic_histograms_to_nhcb` (`model/textparse/nhcbparse.go`,
//! `util/convertnhcb`), on a parsed body of any format.
//!
//! * A classic histogram is the run of consecutive `<base>_bucket`, `<base>_count` and
//!   `<base>_sum` samples of one label set (`le` aside), where the family `<base>` is typed
//!   `histogram`. A bucket whose `le` Go cannot parse as a number (or parses as NaN) is not part
//!   of it and stays a plain sample.
//! * Each becomes one native histogram sample named `<base>`, with the run's labels without
//!   `le`, schema −53, `custom_values` the finite bounds in order, and the run's first explicit
//!   timestamp, created timestamp and exemplar. A missing `+Inf` bucket is the count; a missing
//!   count is the `+Inf` bucket. Integral counts give an integer histogram (delta-coded
//!   buckets, spans compacted as Prometheus's `Compact(2)`), others a float histogram
//!   (`Compact(0)`).
//! * The sample comes right after its run; the run's classic samples stay only with
//!   `keep_classic` (`always_scrape_classic_histograms`).
//! * A run that does not convert (a negative or non-cumulative bucket, a count other than the
//!   `+Inf` bucket's) yields nothing, and its classic samples stay only with `keep_classic`, as
//!   in Prometheus.
//! * A native histogram of the same name and labels earlier in the body inhibits the conversion:
//!   its classic series stay as they are.
//!
//! Never panics.

use std::collections::HashSet;

use uplink_shared::model::Label;
use uplink_shared::remote_write::{BucketSpan, Histogram, MetricType, histogram};

use super::parse::{Exposition, ParsedSample};

/// The schema of native histograms with custom buckets.
pub const CUSTOM_BUCKETS_SCHEMA: i32 = -53;

/// Converts the classic histograms of `exp` in place (see the module docs).
pub fn convert(exp: &mut Exposition, keep_classic: bool) {
    let samples = std::mem::take(&mut exp.samples);
    let mut out = Vec::with_capacity(samples.len());
    let mut run: Option<Run> = None;
    let mut inhibited: HashSet<(String, Vec<Label>)> = HashSet::new();
    for s in samples {
        if s.histogram.is_some() {
            finish(&mut run, &mut out);
            inhibited.insert((s.name.clone(), sorted(&s.labels)));
            out.push(s);
            continue;
        }
        let Some((suffix, base)) = classic_part(&s.name, exp) else {
            finish(&mut run, &mut out);
            out.push(s);
            continue;
        };
        let key = sorted_without_le(&s.labels);
        if inhibited.contains(&(base.to_owned(), key.clone())) {
            finish(&mut run, &mut out);
            out.push(s);
            continue;
        }
        let bound = match suffix {
            Suffix::Bucket => {
                let le = s.labels.iter().find(|l| l.name == "le").map(|l| &l.value);
                match le
                    .and_then(|v| super::gofloat::parse(v))
                    .filter(|b| !b.is_nan())
                {
                    Some(b) => Some(b),
                    // Not part of a histogram: a plain sample.
                    None => {
                        out.push(s);
                        continue;
                    }
                }
            }
            _ => None,
        };
        if run.as_ref().is_some_and(|r| r.base != base || r.key != key) {
            finish(&mut run, &mut out);
        }
        let r = run.get_or_insert_with(|| Run {
            base: base.to_owned(),
            key,
            labels: s
                .labels
                .iter()
                .filter(|l| l.name != "le")
                .cloned()
                .collect(),
            timestamp_ms: s.timestamp_ms,
            created_ms: s.created_ms,
            exemplar: None,
            temp: Temp::default(),
        });
        match (suffix, bound) {
            (Suffix::Bucket, Some(le)) => r.temp.bucket(le, s.value),
            (Suffix::Count, _) => r.temp.count(s.value),
            _ => r.temp.sum = s.value,
        }
        if r.exemplar.is_none() {
            r.exemplar = s.exemplar.clone();
        }
        if keep_classic {
            out.push(s);
        }
    }
    finish(&mut run, &mut out);
    exp.samples = out;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Suffix {
    Bucket,
    Count,
    Sum,
}

/// The part of a classic histogram a sample name is, and its family, when that family is
/// typed `histogram`.
fn classic_part<'a>(name: &'a str, exp: &Exposition) -> Option<(Suffix, &'a str)> {
    let (suffix, base) = [
        ("_bucket", Suffix::Bucket),
        ("_count", Suffix::Count),
        ("_sum", Suffix::Sum),
    ]
    .into_iter()
    .find_map(|(s, kind)| name.strip_suffix(s).map(|base| (kind, base)))?;
    (exp.types.get(base) == Some(&MetricType::Histogram)).then_some((suffix, base))
}

fn sorted(labels: &[Label]) -> Vec<Label> {
    let mut l = labels.to_vec();
    l.sort();
    l
}

fn sorted_without_le(labels: &[Label]) -> Vec<Label> {
    let mut l: Vec<Label> = labels.iter().filter(|l| l.name != "le").cloned().collect();
    l.sort();
    l
}

/// One classic histogram being collected.
struct Run {
    base: String,
    /// Its labels without `le`, sorted (what tells runs apart).
    key: Vec<Label>,
    /// Its labels without `le`, in exposition order.
    labels: Vec<Label>,
    timestamp_ms: Option<i64>,
    created_ms: Option<i64>,
    exemplar: Option<Box<super::parse::ParsedExemplar>>,
    temp: Temp,
}

/// Prometheus's `TempHistogram`: cumulative buckets by bound, count and sum; the first error
/// sticks.
#[derive(Default)]
struct Temp {
    buckets: Vec<(f64, f64)>,
    count: Option<f64>,
    sum: f64,
    failed: bool,
}

impl Temp {
    fn bucket(&mut self, le: f64, count: f64) {
        if self.failed {
            return;
        }
        if count < 0.0 {
            self.failed = true;
            return;
        }
        let i = self.buckets.partition_point(|(b, _)| *b < le);
        if self.buckets.get(i).is_some_and(|(b, _)| *b == le) {
            // A repeated bound: the first one counts.
            return;
        }
        let below = i.checked_sub(1).and_then(|j| self.buckets.get(j));
        let above = self.buckets.get(i);
        if below.is_some_and(|(_, c)| count < *c) || above.is_some_and(|(_, c)| count > *c) {
            self.failed = true;
            return;
        }
        self.buckets.insert(i, (le, count));
    }

    fn count(&mut self, count: f64) {
        if count < 0.0 {
            self.failed = true;
        }
        self.count = Some(count);
    }

    /// The native histogram, or `None` when the run does not convert.
    fn convert(mut self) -> Option<Histogram> {
        if self.failed {
            return None;
        }
        let count = match self.count {
            Some(c) => c,
            None => self.buckets.last()?.1,
        };
        if self.buckets.last().is_none_or(|(b, _)| *b != f64::INFINITY) {
            self.buckets.push((f64::INFINITY, count));
        }
        let last = self.buckets.last().map_or(0.0, |(_, c)| *c);
        if count != last {
            return None;
        }
        let custom_values: Vec<f64> = self
            .buckets
            .iter()
            .map(|(b, _)| *b)
            .filter(|b| b.is_finite())
            .collect();
        // Per-bucket (not cumulative) counts.
        let mut prev = 0.0;
        let counts: Vec<f64> = self
            .buckets
            .iter()
            .map(|(_, c)| {
                let n = c - prev;
                prev = *c;
                n
            })
            .collect();
        let integral = counts.iter().chain([&count]).all(|c| c.fract() == 0.0);
        let mut h = Histogram {
            sum: self.sum,
            schema: CUSTOM_BUCKETS_SCHEMA,
            custom_values,
            ..Default::default()
        };
        if integral {
            let (spans, kept) = compact(&counts, 2);
            let mut prev = 0i64;
            h.positive_deltas = kept
                .iter()
                .map(|c| {
                    let c = *c as i64;
                    let d = c - prev;
                    prev = c;
                    d
                })
                .collect();
            h.positive_spans = spans;
            h.count = Some(histogram::Count::CountInt(count as u64));
        } else {
            let (spans, kept) = compact(&counts, 0);
            h.positive_counts = kept;
            h.positive_spans = spans;
            h.count = Some(histogram::Count::CountFloat(count));
        }
        Some(h)
    }
}

/// Spans and bucket counts without the empty buckets at the edges and without runs of more than
/// `max_empty` empty buckets inside (Prometheus's `Compact`).
fn compact(counts: &[f64], max_empty: usize) -> (Vec<BucketSpan>, Vec<f64>) {
    let mut spans: Vec<BucketSpan> = Vec::new();
    let mut kept = Vec::new();
    // End (exclusive) of the last span, and the empty buckets seen since.
    let mut end: Option<usize> = None;
    let mut pending: Vec<usize> = Vec::new();
    for (i, c) in counts.iter().enumerate() {
        if *c == 0.0 {
            if end.is_some() {
                pending.push(i);
            }
            continue;
        }
        match (end, spans.last_mut()) {
            (Some(e), Some(last)) if pending.len() <= max_empty => {
                // Keep the few empty buckets between: the span goes on.
                kept.resize(kept.len() + pending.len(), 0.0);
                last.length += (i - e) as u32 + 1;
            }
            (Some(e), _) => spans.push(BucketSpan {
                offset: (i - e) as i32,
                length: 1,
            }),
            (None, _) => spans.push(BucketSpan {
                offset: i as i32,
                length: 1,
            }),
        }
        pending.clear();
        kept.push(*c);
        end = Some(i + 1);
    }
    (spans, kept)
}

/// Ends the run being collected: its histogram, when it converts, goes to `out`.
fn finish(run: &mut Option<Run>, out: &mut Vec<ParsedSample>) {
    let Some(r) = run.take() else {
        return;
    };
    if let Some(h) = r.temp.convert() {
        out.push(ParsedSample {
            histogram: Some(Box::new(h)),
            exemplar: r.exemplar,
            created_ms: r.created_ms,
            ..ParsedSample::new(r.base, r.labels, 0.0, r.timestamp_ms)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::parse;

    fn exp(text: &str) -> Exposition {
        parse::parse(text, &parse::Limits::default()).expect("parses")
    }

    const BODY: &str = "# TYPE h histogram\n\
        h_bucket{a=\"x\",le=\"0.5\"} 1\n\
        h_bucket{a=\"x\",le=\"1\"} 1\n\
        h_bucket{a=\"x\",le=\"5\"} 4\n\
        h_bucket{a=\"x\",le=\"+Inf\"} 6\n\
        h_sum{a=\"x\"} 12.5\n\
        h_count{a=\"x\"} 6\n\
        # TYPE g gauge\n\
        g 1\n";

    #[test]
    fn a_classic_histogram_becomes_one_with_custom_buckets() {
        let mut e = exp(BODY);
        convert(&mut e, false);
        let names: Vec<&str> = e.samples.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["h", "g"]);
        let s = &e.samples[0];
        assert_eq!(s.labels, vec![Label::new("a", "x")]);
        let h = s.histogram.as_deref().expect("histogram");
        assert_eq!(h.schema, CUSTOM_BUCKETS_SCHEMA);
        assert_eq!(h.custom_values, [0.5, 1.0, 5.0]);
        assert_eq!(h.count, Some(histogram::Count::CountInt(6)));
        assert_eq!(h.sum, 12.5);
        // Counts per bucket 1, 0, 3, 2: one span (a single empty bucket inside is kept).
        assert_eq!(
            h.positive_spans,
            [BucketSpan {
                offset: 0,
                length: 4
            }]
        );
        assert_eq!(h.positive_deltas, [1, -1, 3, -1]);
        // Kept classic series come first, the histogram right after them.
        let mut e = exp(BODY);
        convert(&mut e, true);
        let names: Vec<&str> = e.samples.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "h_bucket", "h_bucket", "h_bucket", "h_bucket", "h_sum", "h_count", "h", "g"
            ]
        );
    }

    #[test]
    fn float_counts_missing_inf_runs_and_failures() {
        let mut e = exp(
            "# TYPE f histogram\nf_bucket{le=\"1\"} 0.5\nf_count 2.5\nf_sum 3\n\
             f_bucket{b=\"2\",le=\"1\"} 3\nf_bucket{b=\"2\",le=\"2\"} 2\nf_count{b=\"2\"} 3\n\
             f_bucket{b=\"3\",le=\"abc\"} 1\n",
        );
        convert(&mut e, false);
        let names: Vec<&str> = e.samples.iter().map(|s| s.name.as_str()).collect();
        // The non-cumulative run yields nothing; `le="abc"` stays a plain sample.
        assert_eq!(names, ["f", "f_bucket"]);
        let h = e.samples[0].histogram.as_deref().expect("histogram");
        assert_eq!(h.count, Some(histogram::Count::CountFloat(2.5)));
        assert_eq!(h.custom_values, [1.0]);
        assert_eq!(h.positive_counts, [0.5, 2.0]);
        assert_eq!(e.samples[1].labels[1], Label::new("le", "abc"));
    }

    #[test]
    fn compaction_as_prometheus() {
        let (spans, kept) = compact(&[0.0, 1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 3.0, 0.0], 2);
        assert_eq!(
            spans,
            [
                BucketSpan {
                    offset: 1,
                    length: 1
                },
                BucketSpan {
                    offset: 3,
                    length: 4
                }
            ]
        );
        assert_eq!(kept, [1.0, 2.0, 0.0, 0.0, 3.0]);
        let (spans, kept) = compact(&[1.0, 0.0, 2.0], 0);
        assert_eq!(spans.len(), 2);
        assert_eq!(kept, [1.0, 2.0]);
    }

    #[test]
    fn a_native_histogram_inhibits_its_classic_twin() {
        let mut e = exp(BODY);
        let mut native = e.samples[0].clone();
        native.name = "h".into();
        native.labels = vec![Label::new("a", "x")];
        native.histogram = Some(Box::default());
        e.samples.insert(0, native);
        convert(&mut e, false);
        assert_eq!(e.samples.len(), 8, "nothing converted");
    }
}
