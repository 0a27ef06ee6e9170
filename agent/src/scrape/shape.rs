//! From a scrape's body to a queue record: labels, metric relabeling, synthetic series and
//! staleness, as Prometheus does them.
//!
//! Per sample: the scraped labels and the name; target labels merged (with `honor_labels:
//! false`, a colliding scraped label becomes `exported_<name>`; with `true` the scraped value
//! wins); `metric_relabel_configs`; labels with empty values removed; a series without
//! `__name__` after relabeling fails the scrape; `sample_limit` counts samples after
//! relabeling. External labels are added last, where absent.
//!
//! Staleness: a series present in the last successful scrape and absent from this one gets a
//! stale marker (the NaN with bits `0x7ff0000000000002`) at this scrape's timestamp; a failed
//! scrape marks every series of the last one stale; [`Shaper::end_of_run`] marks everything,
//! the synthetic series included, when the target goes away. Stale markers are appended after
//! the scrape's own series in the same record.
//!
//! Known gap: when a body fails to parse (or a sample fails a label check), Prometheus still
//! reports in `scrape_samples_scraped`, `scrape_samples_post_metric_relabeling` and
//! `scrape_series_added` the samples it handled before the failure; here a failed scrape
//! reports 0 for all three.
//!
//! Fast path: when a scrape has exactly the same parsed series in the same order as the last
//! one (a 128-bit fingerprint compares them), its record is built from the values alone,
//! through the remembered indices that metric relabeling kept. The result equals the slow
//! path's (a unit test checks it).

use std::collections::HashSet;

use bytes::Bytes;
use uplink_shared::codec::{self, Extra, ScrapeRecord, SeriesSet};
use uplink_shared::model::{self, Label, METRIC_NAME, Sample, TimeSeries};
use uplink_shared::remote_write::{Exemplar, MetricMetadata};

use super::target::Job;
use super::{Body, ScrapeError, Target, parse};
use crate::relabel;

/// Prometheus's stale marker: a NaN that no exposition can produce.
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// The synthetic series every scrape reports, in record order (Prometheus's report series).
const REPORT: [&str; 5] = [
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

/// The outcome of one scrape, ready for the queue.
pub struct Shaped {
    pub record: ScrapeRecord,
    /// The series set, when the record's shape was (re)built; `None` on the fast path, whose
    /// set is already stored.
    pub set: Option<SeriesSet>,
    /// Samples parsed from the target (synthetic series excluded).
    pub scraped: usize,
    /// Stale markers written into this record.
    pub stale: usize,
    /// Why the scrape failed (`up` is 0), if it did.
    pub error: Option<ScrapeError>,
}

/// Turns one target's scrape results into queue records; remembers what staleness and the
/// fast path need (a fingerprint, the kept indices, and the last series compressed).
#[derive(Default)]
pub struct Shaper {
    shape: Option<u128>,
    set_id: u64,
    /// Parsed-sample indices that metric relabeling kept; `None` when all were kept.
    kept: Option<Vec<u32>>,
    /// The last successful scrape's series (encoded set, zstd), for stale markers. Series with
    /// an explicit (honored) timestamp are left out: they never go stale, as in Prometheus.
    last: Option<Bytes>,
    /// Every series of the last successful scrape, for `scrape_series_added`; kept across a
    /// failed scrape, as Prometheus keeps its series cache.
    seen: Option<Bytes>,
    /// Whether any scrape was recorded (end-of-run staleness needs one).
    scraped_once: bool,
}

/// Fingerprint of a scrape's shape: two independent 64-bit SipHashes over every sample's
/// name and labels, in order, and the families' metadata (so a changed HELP text redefines
/// the set). An accidental collision (about 2^-128) is the only way a changed shape could be
/// mistaken for the remembered one. Hashes the exposition's maps in name order, without
/// building the metadata the fast path does not need.
fn fingerprint(exp: &parse::Exposition) -> u128 {
    use std::hash::{Hash, Hasher};
    let names = family_names(exp);
    let mut a = std::collections::hash_map::DefaultHasher::new();
    let mut b = std::collections::hash_map::DefaultHasher::new();
    0xa5u8.hash(&mut b);
    for h in [&mut a, &mut b] {
        exp.samples.len().hash(h);
        for s in &exp.samples {
            s.name.hash(h);
            s.labels.len().hash(h);
            for l in &s.labels {
                l.name.hash(h);
                l.value.hash(h);
            }
        }
        for n in &names {
            n.hash(h);
            exp.types.get(*n).map(|t| *t as i32).hash(h);
            exp.help.get(*n).hash(h);
            exp.units.get(*n).hash(h);
        }
    }
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// The names of the families a body has metadata for, sorted, deduplicated.
fn family_names(exp: &parse::Exposition) -> Vec<&String> {
    let mut names: Vec<&String> = exp
        .types
        .keys()
        .chain(exp.help.keys())
        .chain(exp.units.keys())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

fn stale_sample(ts: i64) -> Sample {
    Sample {
        value: f64::from_bits(STALE_NAN),
        timestamp: ts,
    }
}

impl Shaper {
    /// Shapes a scrape result taken at `ts` that lasted `duration` seconds.
    pub fn shape(
        &mut self,
        t: &Target,
        ext: &[Label],
        body: Result<Body, ScrapeError>,
        ts: i64,
        duration: f64,
    ) -> Shaped {
        self.scraped_once = true;
        let job = &*t.job;
        let limits = parse::Limits {
            // With metric relabeling the limit applies to what is left, as in Prometheus.
            max_samples: if job.metric_relabel.is_empty() {
                usize::try_from(job.limits.sample_limit).unwrap_or(usize::MAX)
            } else {
                0
            },
            ..Default::default()
        };
        let dialect = job.compatibility.dialect();
        let parsed = body.and_then(|b| b.parse(&limits, dialect));
        let exp = match parsed {
            Ok(exp) => exp,
            Err(error) => return self.failed(t, ext, error, ts, duration),
        };
        let scraped = exp.samples.len();
        let shape = fingerprint(&exp);
        if self.shape == Some(shape) {
            return self.fast(t, exp.samples, ts, duration);
        }
        let metadata = metadata(&exp);
        let (series, kept) = match build(t, ext, exp.samples, ts) {
            Ok(b) => b,
            Err(error) => return self.failed(t, ext, error, ts, duration),
        };
        let post = series.len();
        let added = self.added(&series);
        let mut series = series;
        let values = [1.0, duration, scraped as f64, post as f64, added as f64];
        series.extend(report(t, ext, values, ts));
        let stale = self.stale_since_last(&mut series, post, ts);
        // Every series counts as seen; only those stamped with the scrape's time (or all, with
        // track_timestamps_staleness) can go stale. Usually both are the same set: compress once.
        let tracked = |s: &TimeSeries| {
            let own = s.samples.first().map(|x| x.timestamp);
            let own = own.or_else(|| s.histograms.first().map(|h| h.timestamp));
            t.job.track_timestamps_staleness || own == Some(ts)
        };
        let live = &series[..post];
        self.seen = compress(live.iter().map(|s| s.labels.clone()).collect());
        self.last = if live.iter().all(tracked) {
            self.seen.clone()
        } else {
            compress(
                live.iter()
                    .filter(|s| tracked(s))
                    .map(|s| s.labels.clone())
                    .collect(),
            )
        };
        let (set, record) = codec::split_with(series, metadata, ts);
        if stale == 0 {
            self.shape = Some(shape);
            self.set_id = record.set_id;
            self.kept = (kept.len() != scraped).then_some(kept);
        } else {
            // The set holds the stale series too: the next scrape builds its own.
            self.forget();
        }
        Shaped {
            record,
            set: Some(set),
            scraped,
            stale,
            error: None,
        }
    }

    fn fast(
        &mut self,
        t: &Target,
        samples: Vec<parse::ParsedSample>,
        ts: i64,
        duration: f64,
    ) -> Shaped {
        let scraped = samples.len();
        let honor = t.job.honor_timestamps;
        let mut values = Vec::with_capacity(scraped + REPORT.len());
        let mut exceptions = Vec::new();
        let mut extras = Vec::new();
        let mut push = |s: &parse::ParsedSample| {
            let i = values.len() as u32;
            let mut sample_ts = ts;
            if let Some(ms) = s.timestamp_ms.filter(|_| honor) {
                sample_ts = ms;
                if ms != ts {
                    exceptions.push((i, ms));
                }
            }
            match &s.histogram {
                Some(h) => {
                    let mut h = (**h).clone();
                    h.timestamp = sample_ts;
                    extras.push(Extra::histogram(i, &h));
                    values.push(0.0);
                }
                None => values.push(s.value),
            }
            if let Some(e) = &s.exemplar {
                extras.push(Extra::exemplar(i, &exemplar((**e).clone(), sample_ts)));
            }
            if let Some(ms) = s.created_ms.filter(|ms| *ms != 0) {
                extras.push(Extra::created(i, ms));
            }
        };
        match &self.kept {
            None => samples.iter().for_each(&mut push),
            Some(kept) => kept.iter().for_each(|&i| push(&samples[i as usize])),
        }
        let post = values.len();
        values.extend([1.0, duration, scraped as f64, post as f64, 0.0]);
        Shaped {
            record: ScrapeRecord {
                set_id: self.set_id,
                timestamp: ts,
                values,
                exceptions,
                extras,
            },
            set: None,
            scraped,
            stale: 0,
            error: None,
        }
    }

    fn failed(
        &mut self,
        t: &Target,
        ext: &[Label],
        error: ScrapeError,
        ts: i64,
        duration: f64,
    ) -> Shaped {
        let mut series = report(t, ext, [0.0, duration, 0.0, 0.0, 0.0], ts);
        let stale = self.stale_since_last(&mut series, 0, ts);
        self.last = None;
        self.forget();
        let (set, record) = codec::split(series, ts);
        Shaped {
            record,
            set: Some(set),
            scraped: 0,
            stale,
            error: Some(error),
        }
    }

    /// How many of `series` were not in the last successful scrape (`scrape_series_added`).
    fn added(&self, series: &[TimeSeries]) -> usize {
        let Some(before) = self.seen.as_ref().and_then(decompress) else {
            return series.len();
        };
        let before: HashSet<Vec<Label>> = before.series.into_iter().collect();
        series
            .iter()
            .filter(|s| !before.contains(&s.labels))
            .count()
    }

    /// Appends a stale marker for every series of the last scrape missing from
    /// `series[..live]`.
    fn stale_since_last(&self, series: &mut Vec<TimeSeries>, live: usize, ts: i64) -> usize {
        let Some(last) = self.last.as_ref().and_then(decompress) else {
            return 0;
        };
        let now: HashSet<&Vec<Label>> = series[..live].iter().map(|s| &s.labels).collect();
        let gone: Vec<Vec<Label>> = last
            .series
            .into_iter()
            .filter(|l| !now.contains(l))
            .collect();
        let n = gone.len();
        series.extend(gone.into_iter().map(|labels| TimeSeries {
            labels,
            samples: vec![stale_sample(ts)],
            ..Default::default()
        }));
        n
    }

    /// Stale markers for every series of the last scrape and the synthetic series, for a
    /// target that went away; `None` if it was never scraped.
    pub fn end_of_run(&mut self, t: &Target, ext: &[Label], ts: i64) -> Option<Shaped> {
        if !self.scraped_once {
            return None;
        }
        let mut series = report(t, ext, [0.0; REPORT.len()], ts);
        for s in &mut series {
            s.samples = vec![stale_sample(ts)];
        }
        let stale = REPORT.len() + self.stale_since_last(&mut series, 0, ts);
        self.last = None;
        self.forget();
        let (set, record) = codec::split(series, ts);
        Some(Shaped {
            record,
            set: Some(set),
            scraped: 0,
            stale,
            error: None,
        })
    }

    /// Forgets the remembered shape (its set may not have been stored).
    pub fn forget(&mut self) {
        self.shape = None;
        self.kept = None;
    }
}

fn compress(series: Vec<Vec<Label>>) -> Option<Bytes> {
    if series.is_empty() {
        return None;
    }
    let raw = SeriesSet::of(series).encode();
    zstd::bulk::compress(&raw, 1).ok().map(Bytes::from)
}

fn decompress(b: &Bytes) -> Option<SeriesSet> {
    let raw = zstd::stream::decode_all(&b[..]).ok()?;
    SeriesSet::decode(&raw, usize::MAX).ok()
}

/// Turns a parsed body into series with target and external labels (not yet synthetic ones).
pub fn build_text(
    t: &Target,
    ext: &[Label],
    text: &str,
    ts: i64,
) -> Result<Vec<TimeSeries>, ScrapeError> {
    let exp = parse::parse(text, &parse::Limits::default())?;
    Ok(build(t, ext, exp.samples, ts)?.0)
}

/// Series from parsed samples, and the indices of the samples kept by metric relabeling.
fn build(
    t: &Target,
    ext: &[Label],
    parsed: Vec<parse::ParsedSample>,
    ts: i64,
) -> Result<(Vec<TimeSeries>, Vec<u32>), ScrapeError> {
    let job: &Job = &t.job;
    let mut out = Vec::with_capacity(parsed.len());
    let mut kept = Vec::with_capacity(parsed.len());
    for (i, s) in parsed.into_iter().enumerate() {
        let mut labels = s.labels;
        labels.push(Label::new(METRIC_NAME, s.name));
        merge_target_labels(&mut labels, &t.labels, job.honor_labels);
        if !job.metric_relabel.is_empty() {
            let mut set: relabel::LabelSet =
                labels.into_iter().map(|l| (l.name, l.value)).collect();
            if !relabel::process(&mut set, &job.metric_relabel) {
                continue;
            }
            if set.is_empty() {
                continue;
            }
            if !set.contains_key(METRIC_NAME) {
                return Err(ScrapeError::NameMissing);
            }
            labels = set
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(name, value)| Label { name, value })
                .collect();
        }
        check_label_limits(&labels, &job.limits)?;
        add_external(&mut labels, ext);
        let timestamp = match s.timestamp_ms {
            Some(ms) if job.honor_timestamps => ms,
            _ => ts,
        };
        let mut series = TimeSeries::floats(labels, Vec::new());
        match s.histogram {
            Some(mut h) => {
                h.timestamp = timestamp;
                series.histograms.push(*h);
            }
            None => series.samples.push(Sample {
                value: s.value,
                timestamp,
            }),
        }
        if let Some(e) = s.exemplar {
            series.exemplars.push(exemplar(*e, timestamp));
        }
        series.created_timestamp = s.created_ms.unwrap_or(0);
        out.push(series);
        kept.push(i as u32);
    }
    let limit = job.limits.sample_limit;
    if limit > 0 && out.len() as u64 > limit {
        return Err(ScrapeError::SampleLimit(limit));
    }
    Ok((out, kept))
}

/// A scraped exemplar as sent: without its own timestamp it takes its sample's.
fn exemplar(e: parse::ParsedExemplar, sample_ts: i64) -> Exemplar {
    Exemplar {
        labels: e.labels,
        value: e.value,
        timestamp: e.timestamp_ms.unwrap_or(sample_ts),
    }
}

/// The metadata of a body's families (from `# TYPE`, `# HELP` and `# UNIT`, or the protobuf
/// format's family fields), sorted by family name; a family without a type is `unknown`.
pub fn metadata(exp: &parse::Exposition) -> Vec<MetricMetadata> {
    family_names(exp)
        .into_iter()
        .map(|name| MetricMetadata {
            r#type: exp.types.get(name).map_or(0, |t| *t as i32),
            metric_family_name: name.clone(),
            help: exp.help.get(name).cloned().unwrap_or_default(),
            unit: exp.units.get(name).cloned().unwrap_or_default(),
        })
        .collect()
}

/// Prometheus's `verifyLabelLimits`, on a series' labels after relabeling (target labels
/// included, external labels not).
fn check_label_limits(labels: &[Label], l: &crate::config::JobLimits) -> Result<(), ScrapeError> {
    let name = || {
        labels
            .iter()
            .find(|x| x.name == METRIC_NAME)
            .map_or("", |x| x.value.as_str())
            .to_owned()
    };
    if l.label_limit > 0 && labels.len() as u64 > l.label_limit {
        return Err(ScrapeError::LabelLimit(format!(
            "label_limit exceeded (metric: {}, number of labels: {}, limit: {})",
            name(),
            labels.len(),
            l.label_limit
        )));
    }
    for x in labels {
        if l.label_name_length_limit > 0 && x.name.len() as u64 > l.label_name_length_limit {
            return Err(ScrapeError::LabelLimit(format!(
                "label_name_length_limit exceeded (metric: {}, label name: {}, limit: {})",
                name(),
                x.name,
                l.label_name_length_limit
            )));
        }
        if l.label_value_length_limit > 0 && x.value.len() as u64 > l.label_value_length_limit {
            return Err(ScrapeError::LabelLimit(format!(
                "label_value_length_limit exceeded (metric: {}, label name: {}, value: {:?}, limit: {})",
                name(),
                x.name,
                x.value,
                l.label_value_length_limit
            )));
        }
    }
    Ok(())
}

/// Applies target labels to a scraped sample's labels, Prometheus's way.
fn merge_target_labels(labels: &mut Vec<Label>, target: &[Label], honor: bool) {
    for tl in target {
        if honor && labels.iter().any(|l| l.name == tl.name) {
            continue;
        }
        model::set_exporting(labels, tl);
    }
    labels.retain(|l| !l.value.is_empty());
    model::normalize(labels);
}

/// Adds external labels where absent (keeps `labels` sorted).
pub fn add_external(labels: &mut Vec<Label>, ext: &[Label]) {
    let before = labels.len();
    for e in ext {
        if !labels[..before].iter().any(|l| l.name == e.name) {
            labels.push(e.clone());
        }
    }
    if labels.len() != before {
        model::normalize(labels);
    }
}

/// The synthetic series with `values` in [`REPORT`] order.
fn report(t: &Target, ext: &[Label], values: [f64; REPORT.len()], ts: i64) -> Vec<TimeSeries> {
    REPORT
        .iter()
        .zip(values)
        .map(|(name, value)| {
            let mut labels = t.labels.clone();
            labels.push(Label::new(METRIC_NAME, *name));
            add_external(&mut labels, ext);
            model::normalize(&mut labels);
            TimeSeries {
                labels,
                samples: vec![Sample {
                    value,
                    timestamp: ts,
                }],
                ..Default::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::relabel::RelabelConfig;

    fn t(honor: bool, relabel: &str) -> Target {
        let metric_relabel: Vec<RelabelConfig> =
            serde_yaml::from_str(relabel).expect("relabel yaml");
        Target {
            job: Arc::new(Job {
                honor_labels: honor,
                metric_relabel,
                ..Job::new("node").expect("job")
            }),
            url: "http://h:1/metrics".into(),
            labels: vec![Label::new("instance", "h:1"), Label::new("job", "node")],
            discovered: Arc::default(),
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
        }
    }

    fn names(ts: &TimeSeries) -> String {
        model::display(&ts.labels)
    }

    #[test]
    fn target_and_external_labels_follow_prometheus() {
        let ext = vec![Label::new("site", "a"), Label::new("job", "ignored")];
        let text = "# TYPE x counter\nx{job=\"inner\",site=\"b\"} 1\ny 2 1700000000000\n";
        let s = build_text(&t(false, "[]"), &ext, text, 5).expect("parses");
        assert_eq!(
            names(&s[0]),
            r#"x{exported_job="inner",instance="h:1",job="node",site="b"}"#
        );
        assert_eq!(names(&s[1]), r#"y{instance="h:1",job="node",site="a"}"#);
        assert_eq!(s[0].samples[0].timestamp, 5);
        assert_eq!(s[1].samples[0].timestamp, 1_700_000_000_000);

        let s = build_text(&t(true, "[]"), &ext, text, 5).expect("parses");
        assert_eq!(names(&s[0]), r#"x{instance="h:1",job="inner",site="b"}"#);

        let mut sh = Shaper::default();
        let out = sh.shape(&t(false, "[]"), &ext, Ok(text.into()), 5, 0.25);
        let all = codec::join(&out.set.expect("set"), &out.record).expect("join");
        assert_eq!(all.len(), 7);
        assert_eq!(names(&all[2]), r#"up{instance="h:1",job="node",site="a"}"#);
        assert_eq!(all[2].samples[0].value, 1.0);
    }

    #[test]
    fn fast_path_records_equal_slow_path_records() {
        let ext = vec![Label::new("site", "a")];
        let text = "# TYPE x counter\nx{job=\"inner\"} 1\ny 2 1700000000000\nz{a=\"1\"} 3\n";
        let text2 = text.replace(" 1\n", " 5\n").replace(" 3\n", " 4.5\n");
        for relabel in [
            "[]",
            "[{source_labels: [__name__], regex: y, action: drop}]",
        ] {
            let tg = t(false, relabel);
            let mut warm = Shaper::default();
            let first = warm.shape(&tg, &ext, Ok(text.into()), 10, 0.5);
            assert!(first.set.is_some());
            let fast = warm.shape(&tg, &ext, Ok(text2.clone().into()), 20, 0.25);
            assert!(fast.set.is_none(), "same shape takes the fast path");
            // The slow path, from a shaper that saw the same first scrape.
            let mut cold = Shaper::default();
            cold.shape(&tg, &ext, Ok(text.into()), 10, 0.5);
            cold.forget();
            let slow = cold.shape(&tg, &ext, Ok(text2.clone().into()), 20, 0.25);
            assert!(slow.set.is_some());
            assert_eq!(fast.record, slow.record, "{relabel}");
            assert_eq!(slow.record.set_id, first.record.set_id);
        }
    }

    #[test]
    fn metric_relabeling_drops_renames_and_counts() {
        let tg = t(
            false,
            "[{source_labels: [__name__], regex: 'go_.*', action: drop}, {source_labels: [a], target_label: b}, {regex: a, action: labeldrop}]",
        );
        let text = "go_x 1\nkeep{a=\"v\"} 2\n";
        let out = Shaper::default().shape(&tg, &[], Ok(text.into()), 7, 0.1);
        let all = codec::join(&out.set.expect("set"), &out.record).expect("join");
        assert_eq!(names(&all[0]), r#"keep{b="v",instance="h:1",job="node"}"#);
        assert_eq!(all.len(), 6);
        // scrape_samples_scraped counts 2, post_metric_relabeling 1.
        assert_eq!(all[3].samples[0].value, 2.0);
        assert_eq!(all[4].samples[0].value, 1.0);
        let bad = t(false, "[{regex: __name__, action: labeldrop}]");
        let out = Shaper::default().shape(&bad, &[], Ok(text.into()), 7, 0.1);
        assert!(matches!(out.error, Some(ScrapeError::NameMissing)));
    }

    #[test]
    fn stale_markers_for_gone_series_failures_and_end_of_run() {
        let tg = t(false, "[]");
        let mut sh = Shaper::default();
        let first = sh.shape(&tg, &[], Ok("a 1\nb 2\nc 3 1000\n".into()), 10, 0.1);
        assert_eq!(first.record.values[7], 3.0, "scrape_series_added");
        // b is gone: one stale marker after the scrape's series, at its timestamp. c has an
        // explicit timestamp, so it never goes stale (Prometheus's rule).
        let out = sh.shape(&tg, &[], Ok("a 1\n".into()), 20, 0.1);
        assert_eq!(out.stale, 1);
        assert_eq!(out.record.values[5], 0.0, "scrape_series_added");
        let all = codec::join(&out.set.expect("set"), &out.record).expect("join");
        let last = all.last().expect("stale");
        assert_eq!(names(last), r#"b{instance="h:1",job="node"}"#);
        assert_eq!(last.samples[0].value.to_bits(), STALE_NAN);
        assert_eq!(last.samples[0].timestamp, 20);
        // Same shape again: no marker, slow path once (the stale set is not remembered).
        let out = sh.shape(&tg, &[], Ok("a 3\n".into()), 30, 0.1);
        assert_eq!(out.stale, 0);
        let out = sh.shape(&tg, &[], Ok("a 4\n".into()), 40, 0.1);
        assert!(out.set.is_none());
        // A failed scrape marks a stale.
        let out = sh.shape(&tg, &[], Err(ScrapeError::Utf8), 50, 0.1);
        assert_eq!(out.stale, 1);
        assert_eq!(out.record.values[0], 0.0);
        // End of run: the report series (and nothing else: the last scrape failed).
        let out = sh.end_of_run(&tg, &[], 60).expect("was scraped");
        assert_eq!(out.stale, 5);
        assert!(out.record.values.iter().all(|v| v.to_bits() == STALE_NAN));
        assert!(Shaper::default().end_of_run(&tg, &[], 60).is_none());
    }

    #[test]
    fn label_limits_fail_the_scrape_alone() {
        let mut tg = t(false, "[]");
        Arc::get_mut(&mut tg.job)
            .expect("unique")
            .limits
            .label_limit = 3;
        // name, instance, job: 3 labels pass; one more fails.
        let ok = Shaper::default().shape(&tg, &[], Ok("a 1\n".into()), 1, 0.1);
        assert!(ok.error.is_none());
        let bad = Shaper::default().shape(&tg, &[], Ok("a{x=\"1\"} 1\n".into()), 1, 0.1);
        assert!(
            matches!(bad.error, Some(ScrapeError::LabelLimit(_))),
            "{:?}",
            bad.error
        );
        assert_eq!(bad.record.values[0], 0.0, "up is 0");
    }
}
