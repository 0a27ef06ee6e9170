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

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use uplink_shared::codec::{self, Extra, ScrapeRecord, SeriesSet};
use uplink_shared::model::{self, Label, METRIC_NAME, Sample, TimeSeries};
use uplink_shared::remote_write::{Exemplar, MetricMetadata};

use super::target::Job;
use super::{Body, ScrapeError, Target, parse};
use crate::config::NameValidation;
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
    /// Samples refused as repeats of a series in this scrape.
    pub duplicates: usize,
    /// Samples refused for an explicit timestamp not newer than their series' last.
    pub out_of_order: usize,
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
    /// The last accepted timestamp of every series with explicit timestamps (by series key),
    /// for the agent's out-of-order rule.
    last_explicit: HashMap<u64, i64>,
    /// For the fast path: the position and series key of every kept sample that carried an
    /// explicit timestamp in the remembered shape.
    explicit: Vec<(u32, u64)>,
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

/// The three extra report series (`extra_scrape_metrics`), in record order.
const EXTRA_REPORT: [&str; 3] = [
    "scrape_timeout_seconds",
    "scrape_sample_limit",
    "scrape_body_size_bytes",
];

/// `scrape_body_size_bytes` of a scrape result: the body's length once it was read, -1 when it
/// exceeded `body_size_limit`, 0 when none was read.
fn body_size(body: &Result<Body, ScrapeError>) -> f64 {
    match body {
        Ok(b) => b.data.len() as f64,
        Err(ScrapeError::BodyTooLarge(_)) => -1.0,
        Err(ScrapeError::ContentType { body_bytes, .. }) => *body_bytes as f64,
        Err(_) => 0.0,
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
        let extra = job.extra_metrics.then(|| {
            [
                t.timeout.as_secs_f64(),
                job.limits.sample_limit as f64,
                body_size(&body),
            ]
        });
        let parsed = body.and_then(|b| b.parse(&limits, dialect, job.histograms));
        let mut exp = match parsed {
            Ok(exp) => exp,
            Err(error) => return self.failed(t, ext, error, ts, duration, extra),
        };
        if job.nhcb && dialect == parse::Dialect::Prometheus3 {
            super::nhcb::convert(&mut exp, job.histograms.classic);
        }
        let over_limit = histogram_limits(&mut exp.samples, &job.histogram_limits);
        let scraped = exp.samples.len();
        let shape = fingerprint(&exp);
        // A histogram over the bucket limit fails the scrape if relabeling keeps it: the
        // slow path decides.
        if self.shape == Some(shape) && over_limit.is_empty() {
            match self.fast(t, &exp.samples, ts, duration, extra) {
                Some(shaped) => return shaped,
                None => self.forget(),
            }
        }
        let metadata = metadata(&exp);
        let built = match build(
            t,
            ext,
            exp.samples,
            &over_limit,
            ts,
            &mut self.last_explicit,
        ) {
            Ok(b) => b,
            Err(error) => return self.failed(t, ext, error, ts, duration, extra),
        };
        let live = built.series.len();
        let added = self.added(&built.series);
        let mut series = built.series;
        let values = [
            1.0,
            duration,
            scraped as f64,
            built.post as f64,
            added as f64,
        ];
        series.extend(report(t, ext, values, extra, ts));
        let stale = self.stale_since_last(&mut series, live, ts);
        // Every series counts as seen; only those stamped with the scrape's time (or all, with
        // track_timestamps_staleness) can go stale. Usually both are the same set: compress once.
        let tracked = |s: &TimeSeries| {
            let own = s.samples.first().map(|x| x.timestamp);
            let own = own.or_else(|| s.histograms.first().map(|h| h.timestamp));
            t.job.track_timestamps_staleness || own == Some(ts)
        };
        let live = &series[..live];
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
        if stale == 0 && !built.irregular {
            self.shape = Some(shape);
            self.set_id = record.set_id;
            self.kept = (built.kept.len() != scraped).then_some(built.kept);
            self.explicit = built.explicit;
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
            duplicates: built.duplicates,
            out_of_order: built.out_of_order,
        }
    }

    /// The record of a scrape with the remembered shape, from its values alone; `None` when
    /// an explicit timestamp makes it differ (a sample the out-of-order rule refuses, or one
    /// that had no explicit timestamp before): the slow path then rebuilds it.
    fn fast(
        &mut self,
        t: &Target,
        samples: &[parse::ParsedSample],
        ts: i64,
        duration: f64,
        extra: Option<[f64; 3]>,
    ) -> Option<Shaped> {
        let scraped = samples.len();
        let honor = t.job.honor_timestamps;
        let mut values = Vec::with_capacity(scraped + REPORT.len() + EXTRA_REPORT.len());
        let mut exceptions = Vec::new();
        let mut extras = Vec::new();
        let mut accepted = Vec::new();
        let mut explicit = self.explicit.iter().peekable();
        let mut push = |s: &parse::ParsedSample| -> Option<()> {
            let i = values.len() as u32;
            let mut sample_ts = ts;
            if let Some(ms) = s.timestamp_ms.filter(|_| honor) {
                let (_, key) = explicit
                    .find(|(pos, _)| *pos >= i)
                    .filter(|(pos, _)| *pos == i)?;
                if out_of_order(&t.job, ms, self.last_explicit.get(key).copied()) {
                    return None;
                }
                accepted.push((*key, ms));
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
            Some(())
        };
        match &self.kept {
            None => samples.iter().try_for_each(&mut push)?,
            Some(kept) => kept
                .iter()
                .try_for_each(|&i| samples.get(i as usize).and_then(&mut push))?,
        }
        for (key, ms) in accepted {
            self.last_explicit.insert(key, ms);
        }
        let post = values.len();
        values.extend([1.0, duration, scraped as f64, post as f64, 0.0]);
        values.extend(extra.into_iter().flatten());
        Some(Shaped {
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
            duplicates: 0,
            out_of_order: 0,
        })
    }

    fn failed(
        &mut self,
        t: &Target,
        ext: &[Label],
        error: ScrapeError,
        ts: i64,
        duration: f64,
        extra: Option<[f64; 3]>,
    ) -> Shaped {
        let mut series = report(t, ext, [0.0, duration, 0.0, 0.0, 0.0], extra, ts);
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
            duplicates: 0,
            out_of_order: 0,
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
        let extra = t.job.extra_metrics.then_some([0.0; EXTRA_REPORT.len()]);
        let mut series = report(t, ext, [0.0; REPORT.len()], extra, ts);
        for s in &mut series {
            s.samples = vec![stale_sample(ts)];
        }
        let stale = series.len() + self.stale_since_last(&mut series, 0, ts);
        self.last = None;
        self.forget();
        let (set, record) = codec::split(series, ts);
        Some(Shaped {
            record,
            set: Some(set),
            scraped: 0,
            stale,
            error: None,
            duplicates: 0,
            out_of_order: 0,
        })
    }

    /// Forgets the remembered shape (its set may not have been stored).
    pub fn forget(&mut self) {
        self.shape = None;
        self.kept = None;
        self.explicit.clear();
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
    Ok(build(t, ext, exp.samples, &[], ts, &mut HashMap::new())?.series)
}

/// What [`build`] makes of a parsed body.
struct Built {
    /// The series to append, with target and external labels.
    series: Vec<TimeSeries>,
    /// The parsed-sample index of each of `series`.
    kept: Vec<u32>,
    /// Samples left after metric relabeling, the refused repeats and out-of-order samples
    /// included (`scrape_samples_post_metric_relabeling`, as Prometheus counts it).
    post: usize,
    /// Whether the body repeated a series, or the out-of-order rule refused a sample: the
    /// kept indices then hold for this scrape only, and the fast path is not used.
    irregular: bool,
    /// Samples refused as repeats, and for their timestamps.
    duplicates: usize,
    out_of_order: usize,
    /// For each of `series` that carries an explicit timestamp: its position and series key.
    explicit: Vec<(u32, u64)>,
}

/// Which samples repeat an earlier series of the same body (same name and labels, in the same
/// order), for Prometheus 3's rule: a repeat without an explicit timestamp is refused.
/// Prometheus compares the lines' raw text; the agent compares what it parsed, so a repeat that
/// differs only in spelling (quoting, escapes, `le="1"` against `le="1.0"`) is refused too,
/// where Prometheus would forward both values for one series and timestamp.
fn repeats(parsed: &[parse::ParsedSample]) -> Option<Vec<bool>> {
    use std::collections::hash_map::Entry;
    use std::hash::{Hash, Hasher};
    let mut first: std::collections::HashMap<u64, usize> =
        std::collections::HashMap::with_capacity(parsed.len());
    let mut out: Option<Vec<bool>> = None;
    for (i, s) in parsed.iter().enumerate() {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        s.name.hash(&mut h);
        s.labels.hash(&mut h);
        match first.entry(h.finish()) {
            Entry::Vacant(v) => {
                v.insert(i);
            }
            Entry::Occupied(o) => {
                let f = &parsed[*o.get()];
                if f.name == s.name && f.labels == s.labels {
                    out.get_or_insert_with(|| vec![false; parsed.len()])[i] = true;
                }
            }
        }
    }
    out
}

/// A series key for the out-of-order rule: a hash of its labels.
fn series_key(labels: &[Label]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    labels.hash(&mut h);
    h.finish()
}

/// Whether Prometheus's agent refuses a sample at `ts` on a series whose last one was at `last`:
/// Prometheus 3 refuses one not newer, Prometheus 2.42 one older.
fn out_of_order(job: &Job, ts: i64, last: Option<i64>) -> bool {
    match (last, job.compatibility) {
        (None, _) => false,
        (Some(l), crate::config::Compatibility::Prometheus3) => ts <= l,
        (Some(l), crate::config::Compatibility::Prometheus2) => ts < l,
    }
}

/// Brings every native histogram under the job's resolution limits
/// ([`super::resolution`]); returns the (increasing) indices of those that stay over the
/// bucket limit.
fn histogram_limits(
    samples: &mut [parse::ParsedSample],
    limits: &super::resolution::Limits,
) -> Vec<u32> {
    if limits.is_none() {
        return Vec::new();
    }
    let mut over = Vec::new();
    for (i, s) in samples.iter_mut().enumerate() {
        if let Some(h) = &mut s.histogram
            && !limits.apply(h)
        {
            over.push(i as u32);
        }
    }
    over
}

/// Series from parsed samples (see [`Built`]). `over_limit` lists the samples (increasing
/// indices) over `native_histogram_bucket_limit`: one that relabeling keeps fails the
/// scrape, after the sample limit's check. `last_explicit` holds the last accepted timestamp
/// of every series with explicit timestamps, and is updated.
fn build(
    t: &Target,
    ext: &[Label],
    parsed: Vec<parse::ParsedSample>,
    over_limit: &[u32],
    ts: i64,
    last_explicit: &mut std::collections::HashMap<u64, i64>,
) -> Result<Built, ScrapeError> {
    let job: &Job = &t.job;
    let prometheus3 = job.compatibility == crate::config::Compatibility::Prometheus3;
    let repeat = if prometheus3 { repeats(&parsed) } else { None };
    let legacy = !prometheus3;
    let mut out = Vec::with_capacity(parsed.len());
    let mut kept = Vec::with_capacity(parsed.len());
    let mut explicit = Vec::new();
    let mut post = 0;
    let mut bucket_limited = false;
    let (mut duplicates, mut out_of_order_count) = (0, 0);
    // Timestamps accepted in this scrape; each sample is judged against the scrapes before it
    // (Prometheus's agent updates a series' last timestamp when the scrape commits), so two
    // samples of one series in one scrape are both taken.
    let mut accepted = Vec::new();
    for (i, s) in parsed.into_iter().enumerate() {
        let mut labels = s.labels;
        labels.push(Label::new(METRIC_NAME, s.name));
        merge_target_labels(&mut labels, &t.labels, job.honor_labels);
        if !job.metric_relabel.is_empty() {
            let mut set: relabel::LabelSet =
                labels.into_iter().map(|l| (l.name, l.value)).collect();
            if !relabel::process_with(&mut set, &job.metric_relabel, legacy) {
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
        check_names(&labels, job.validation)?;
        check_label_limits(&labels, &job.limits)?;
        post += 1;
        if over_limit.binary_search(&(i as u32)).is_ok() {
            bucket_limited = true;
            continue;
        }
        let explicit_ts = s.timestamp_ms.filter(|_| job.honor_timestamps);
        if explicit_ts.is_none() && repeat.as_ref().is_some_and(|r| r[i]) {
            // Prometheus 3: a second sample for a series in one scrape (ErrDuplicateSampleForTimestamp).
            duplicates += 1;
            continue;
        }
        add_external(&mut labels, ext);
        let timestamp = explicit_ts.unwrap_or(ts);
        if let Some(ms) = explicit_ts {
            let key = series_key(&labels);
            if out_of_order(job, ms, last_explicit.get(&key).copied()) {
                out_of_order_count += 1;
                continue;
            }
            accepted.push((key, ms));
            explicit.push((out.len() as u32, key));
        }
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
    if bucket_limited {
        return Err(ScrapeError::BucketLimit(job.histogram_limits.bucket_limit));
    }
    last_explicit.extend(accepted);
    Ok(Built {
        series: out,
        kept,
        post,
        irregular: repeat.is_some() || out_of_order_count > 0,
        explicit,
        duplicates,
        out_of_order: out_of_order_count,
    })
}

/// Prometheus's `lset.IsValid(scheme)` after relabeling: under utf8 every name non-empty,
/// under legacy the metric name and label names legacy-valid.
fn check_names(labels: &[Label], scheme: NameValidation) -> Result<(), ScrapeError> {
    let ok = labels.iter().all(|l| {
        if l.name == METRIC_NAME {
            scheme.metric_name(&l.value)
        } else {
            scheme.label_name(&l.name)
        }
    });
    if ok {
        return Ok(());
    }
    Err(ScrapeError::InvalidNames(prometheus_labels_string(labels)))
}

/// A label set as Prometheus 3 prints it (`labels.String()`): sorted, `, ` between pairs, a
/// name that is not legacy-valid in quotes.
pub fn prometheus_labels_string(labels: &[Label]) -> String {
    let mut sorted: Vec<&Label> = labels.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let pairs: Vec<String> = sorted
        .iter()
        .map(|l| {
            if model::valid_label_name(&l.name) {
                format!("{}={:?}", l.name, l.value)
            } else {
                format!("{:?}={:?}", l.name, l.value)
            }
        })
        .collect();
    format!("{{{}}}", pairs.join(", "))
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

/// The synthetic series with `values` in [`REPORT`] order, then the [`EXTRA_REPORT`] series
/// with `extra` when the job writes them.
fn report(
    t: &Target,
    ext: &[Label],
    values: [f64; REPORT.len()],
    extra: Option<[f64; EXTRA_REPORT.len()]>,
    ts: i64,
) -> Vec<TimeSeries> {
    let extra = extra
        .into_iter()
        .flat_map(|values| EXTRA_REPORT.iter().zip(values));
    REPORT
        .iter()
        .zip(values)
        .chain(extra)
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
        // A newer explicit timestamp for `y` (the same one would be refused as out of order).
        let text2 = text
            .replace(" 1\n", " 5\n")
            .replace(" 3\n", " 4.5\n")
            .replace("1700000000000", "1700000001000");
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

    /// The values of a record by series name (the first sample of each).
    fn by_name(out: &Shaped) -> Vec<(String, f64, i64)> {
        let all = match &out.set {
            Some(set) => codec::join(set, &out.record).expect("join"),
            None => panic!("no set"),
        };
        all.iter()
            .map(|s| {
                let name = model::get(&s.labels, METRIC_NAME)
                    .unwrap_or_default()
                    .to_owned();
                (name, s.samples[0].value, s.samples[0].timestamp)
            })
            .collect()
    }

    #[test]
    fn prometheus_3_refuses_repeats_and_samples_not_newer() {
        let tg = t(false, "[]");
        let mut sh = Shaper::default();
        // A repeat without timestamp is refused (counted after relabeling); one with a
        // timestamp is kept, even at the same timestamp (each is judged against the scrapes
        // before, as Prometheus 3.5's agent judges them).
        let body = "m 1\nm 2\nn 1 1000\nn 2 1000\n";
        let out = sh.shape(&tg, &[], Ok(body.into()), 5000, 0.1);
        assert_eq!((out.duplicates, out.out_of_order), (1, 0));
        let got = by_name(&out);
        assert_eq!(got[0], ("m".into(), 1.0, 5000));
        assert_eq!(got[1], ("n".into(), 1.0, 1000));
        assert_eq!(got[2], ("n".into(), 2.0, 1000));
        assert_eq!(got.len(), 3 + REPORT.len(), "{got:?}");
        let post = got
            .iter()
            .find(|g| g.0 == "scrape_samples_post_metric_relabeling");
        assert_eq!(post.map(|p| p.1), Some(4.0));
        // The same explicit timestamp again: refused (Prometheus 3); newer: accepted.
        let out = sh.shape(&tg, &[], Ok("e 1 2000\n".into()), 6000, 0.1);
        assert!(by_name(&out).iter().any(|g| g.0 == "e"));
        let out = sh.shape(&tg, &[], Ok("e 1 2000\n".into()), 7000, 0.1);
        assert_eq!((out.duplicates, out.out_of_order), (0, 1));
        let samples = codec::join(out.set.as_ref().expect("slow path"), &out.record).expect("join");
        assert!(
            !samples
                .iter()
                .any(|s| model::get(&s.labels, METRIC_NAME) == Some("e"))
        );
        let out = sh.shape(&tg, &[], Ok("e 1 3000\n".into()), 8000, 0.1);
        let rec = &out.record;
        assert!(rec.values.contains(&1.0) && rec.exceptions.iter().any(|e| e.1 == 3000));
        // Prometheus 2.42 forwards repeats and equal timestamps, refusing only older ones.
        let two = Target {
            job: Arc::new(Job {
                compatibility: crate::config::Compatibility::Prometheus2,
                ..Job::new("node").expect("job")
            }),
            ..tg.clone()
        };
        let mut sh = Shaper::default();
        let got = by_name(&sh.shape(&two, &[], Ok(body.into()), 5000, 0.1));
        assert_eq!(got.iter().filter(|g| g.0 == "m").count(), 2);
        sh.forget();
        let out = sh.shape(&two, &[], Ok("n 3 1000\nn 4 999\n".into()), 6000, 0.1);
        let got = by_name(&out);
        assert_eq!(got.iter().filter(|g| g.0 == "n").count(), 1, "{got:?}");
    }

    #[test]
    fn names_are_checked_after_relabeling_and_extra_report_series() {
        let tg = t(false, "[{target_label: 'a.b', replacement: x}]");
        let out = Shaper::default().shape(&tg, &[], Ok("m 1\n".into()), 5, 0.1);
        assert!(out.error.is_none(), "UTF-8 names are valid in Prometheus 3");
        let tg = Target {
            job: Arc::new(Job {
                metric_relabel: tg.job.metric_relabel.clone(),
                validation: NameValidation::Legacy,
                extra_metrics: true,
                limits: crate::config::JobLimits {
                    sample_limit: 10,
                    ..Default::default()
                },
                ..Job::new("node").expect("job")
            }),
            ..tg
        };
        let out = Shaper::default().shape(&tg, &[], Ok("m 1\n".into()), 5, 0.1);
        let e = out
            .error
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert_eq!(
            e,
            r#"invalid metric name or label names: {__name__="m", "a.b"="x", instance="h:1", job="node"}"#
        );
        let got = by_name(&out);
        let extra: Vec<_> = got
            .iter()
            .filter(|g| EXTRA_REPORT.contains(&g.0.as_str()))
            .collect();
        assert_eq!(extra.len(), 3);
        assert_eq!(extra[0].1, 10.0, "timeout");
        assert_eq!(extra[1].1, 10.0, "sample limit");
        assert_eq!(extra[2].1, 4.0, "body bytes");
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
