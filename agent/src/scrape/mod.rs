//! Scraping, as Prometheus does it.
//!
//! One task per target, each on its own timer with a stable per-target offset inside the
//! interval (a hash of job and instance), so load is spread and a failing or slow target never
//! delays another. A scrape's result (every sample plus the synthetic `up`,
//! `scrape_duration_seconds`, `scrape_samples_scraped` and
//! `scrape_samples_post_metric_relabeling` series) becomes one queue record in the compact
//! format of `uplink_shared::codec` (series set stored once, then values only). The scrape
//! counts as collected once that append returned.
//!
//! Label handling follows Prometheus: target labels (`job`, `instance`, static labels) are
//! attached to every sample; with `honor_labels: false` a scraped label that collides with a
//! target label is kept as `exported_<name>`; with `honor_labels: true` the scraped value wins.
//! Labels with empty values are dropped. External labels are then added to series that lack
//! them.

pub mod parse;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use uplink_shared::codec::{self, ScrapeRecord, SeriesSet};
use uplink_shared::model::{self, Label, METRIC_NAME, Sample, TimeSeries};

use crate::config::{Config, ScrapeConfig};
use crate::metrics::Metrics;
use crate::queue::{Queue, SetUse};

/// `Accept` header: the text format only, as this scraper parses (OpenMetrics slots in later).
const ACCEPT: &str = "text/plain;version=0.0.4;q=1,*/*;q=0.1";

/// A target resolved from the configuration.
#[derive(Clone, Debug)]
pub struct Target {
    pub job: Arc<str>,
    pub url: String,
    /// `job`, `instance` and static labels, sorted, no empty values.
    pub labels: Vec<Label>,
    pub interval: Duration,
    pub timeout: Duration,
    pub honor_labels: bool,
    pub honor_timestamps: bool,
    pub sample_limit: usize,
    pub body_size_limit: usize,
}

/// Resolves every static target of every job.
pub fn targets(cfg: &Config) -> Vec<Target> {
    let mut out = Vec::new();
    for job in &cfg.scrape_configs {
        for sc in &job.static_configs {
            for addr in &sc.targets {
                out.push(target(cfg, job, addr, sc.labels.iter()));
            }
        }
    }
    out
}

fn target<'a>(
    cfg: &Config,
    job: &ScrapeConfig,
    addr: &str,
    extra: impl Iterator<Item = (&'a String, &'a String)>,
) -> Target {
    let mut labels = vec![
        Label::new("job", job.job_name.clone()),
        Label::new("instance", addr),
    ];
    // Static labels override job and instance, as in Prometheus.
    labels.extend(extra.map(|(k, v)| Label::new(k.clone(), v.clone())));
    model::normalize(&mut labels);
    labels.retain(|l| !l.value.is_empty());
    let mut url = format!("{}://{}{}", job.scheme.as_str(), addr, job.metrics_path);
    let query: Vec<String> = job
        .params
        .iter()
        .flat_map(|(k, vs)| vs.iter().map(move |v| format!("{k}={v}")))
        .collect();
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query.join("&"));
    }
    Target {
        job: job.job_name.as_str().into(),
        url,
        labels,
        interval: cfg.interval(job),
        timeout: cfg.timeout(job),
        honor_labels: job.honor_labels,
        honor_timestamps: job.honor_timestamps,
        sample_limit: job.sample_limit,
        body_size_limit: job.body_size_limit,
    }
}

/// Why one scrape failed; the target's `up` is 0 for it.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// Connection refused, reset, DNS failure.
    #[error("request failed: {0}")]
    Request(#[from] reqwest::Error),
    /// The scrape did not finish within `scrape_timeout`.
    #[error("scrape timed out after {0:?}")]
    Timeout(Duration),
    /// The target answered with a non-2xx status.
    #[error("server returned HTTP status {0}")]
    Status(reqwest::StatusCode),
    /// The body exceeded `body_size_limit`.
    #[error("body size limit exceeded ({0} bytes)")]
    BodyTooLarge(usize),
    /// The body is not valid UTF-8.
    #[error("body is not valid UTF-8")]
    Utf8,
    /// The body does not parse as the text format.
    #[error("parse error: {0}")]
    Parse(#[from] parse::ParseError),
}

/// Runs every target's loop until `shutdown`.
pub struct ScrapeManager {
    pub targets: Vec<Target>,
    pub external_labels: Vec<Label>,
    pub client: reqwest::Client,
    pub queue: Queue,
    pub metrics: Metrics,
}

impl ScrapeManager {
    /// Starts one task per target on `tracker`.
    pub fn spawn(self, tracker: &TaskTracker, shutdown: CancellationToken) {
        let shared = Arc::new((self.external_labels, self.client, self.queue, self.metrics));
        for t in self.targets {
            let span = info_span!("scrape", job = %t.job, url = %t.url);
            let shared = shared.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(
                async move {
                    let (ext, client, queue, metrics) = &*shared;
                    run_target(t, ext, client, queue, metrics, shutdown).await;
                }
                .instrument(span),
            );
        }
    }
}

/// Offset of a target inside its interval: stable across restarts, spread across targets.
fn offset(t: &Target) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.job.hash(&mut h);
    t.url.hash(&mut h);
    let interval_ms = t.interval.as_millis().max(1) as u64;
    Duration::from_millis(h.finish() % interval_ms)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn run_target(
    t: Target,
    ext: &[Label],
    client: &reqwest::Client,
    queue: &Queue,
    metrics: &Metrics,
    shutdown: CancellationToken,
) {
    // First scrape at the next point in wall-clock time congruent to the offset.
    let interval_ms = t.interval.as_millis().max(1) as i64;
    let off = offset(&t).as_millis() as i64;
    let now = now_ms();
    let mut wait = (off - now.rem_euclid(interval_ms)).rem_euclid(interval_ms);
    if wait == 0 {
        wait = interval_ms;
    }
    let start = tokio::time::Instant::now() + Duration::from_millis(wait as u64);
    let mut ticker = tokio::time::interval_at(start, t.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let job = Metrics::job(&t.job);
    // The series set this target used last; its definition is already in the queue.
    let mut last_set: Option<u64> = None;
    let mut shaper = Shaper::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        metrics.scrapes.get_or_create(&job).inc();
        let ts = now_ms();
        let started = std::time::Instant::now();
        let result = scrape_once(&t, client).await;
        let duration = started.elapsed().as_secs_f64();
        let shaped = shaper.shape(&t, ext, result, ts, duration);
        if let Some(error) = &shaped.error {
            metrics.scrape_failures.get_or_create(&job).inc();
            debug!(%error, "Scrape failed.");
        }
        metrics.samples_scraped.inc_by(shaped.scraped as u64);
        let record = shaped.record;
        let samples = record.values.len() as u64;
        let set_use = SetUse {
            id: record.set_id,
            def: shaped
                .set
                .filter(|_| last_set != Some(record.set_id))
                .map(|set| set.encode()),
        };
        match queue.append(record.encode(), Some(set_use)).await {
            Ok(_) => {
                last_set = Some(record.set_id);
                metrics.samples_queued.inc_by(samples);
                let (records, bytes) = queue.usage();
                metrics.queue_records.set(records as i64);
                metrics.queue_bytes.set(bytes as i64);
            }
            Err(error) => {
                // The set's definition may not be stored: rebuild the shape next time.
                shaper.forget();
                last_set = None;
                metrics.queue_append_errors.inc();
                metrics.samples_dropped.inc_by(samples);
                warn!(%error, "Could not queue scrape result; it is lost.");
            }
        }
    }
}

async fn scrape_once(t: &Target, client: &reqwest::Client) -> Result<String, ScrapeError> {
    let req = client
        .get(&t.url)
        .header(reqwest::header::ACCEPT, ACCEPT)
        .header(
            "X-Prometheus-Scrape-Timeout-Seconds",
            format!("{}", t.timeout.as_secs_f64()),
        )
        .timeout(t.timeout);
    let fut = async {
        let mut resp = req.send().await?;
        if !resp.status().is_success() {
            return Err(ScrapeError::Status(resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            body.extend_from_slice(&chunk);
            if t.body_size_limit > 0 && body.len() > t.body_size_limit {
                return Err(ScrapeError::BodyTooLarge(t.body_size_limit));
            }
        }
        String::from_utf8(body).map_err(|_| ScrapeError::Utf8)
    };
    tokio::time::timeout(t.timeout, fut)
        .await
        .map_err(|_| ScrapeError::Timeout(t.timeout))?
}

/// Turns a parsed body into series with target and external labels (not yet synthetic ones).
pub fn build(
    t: &Target,
    ext: &[Label],
    text: &str,
    ts: i64,
) -> Result<Vec<TimeSeries>, ScrapeError> {
    let limits = parse::Limits {
        max_samples: t.sample_limit,
        ..Default::default()
    };
    let exp = parse::parse(text, &limits)?;
    Ok(build_from(t, ext, exp.samples, ts))
}

/// Series with target and external labels from parsed samples.
fn build_from(
    t: &Target,
    ext: &[Label],
    parsed: Vec<parse::ParsedSample>,
    ts: i64,
) -> Vec<TimeSeries> {
    let mut out = Vec::with_capacity(parsed.len());
    for s in parsed {
        let mut labels = s.labels;
        labels.push(Label::new(METRIC_NAME, s.name));
        merge_target_labels(&mut labels, &t.labels, t.honor_labels);
        add_external(&mut labels, ext);
        let timestamp = match s.timestamp_ms {
            Some(ms) if t.honor_timestamps => ms,
            _ => ts,
        };
        out.push(TimeSeries {
            labels,
            samples: vec![Sample {
                value: s.value,
                timestamp,
            }],
        });
    }
    out
}

/// The outcome of one scrape, ready for the queue.
pub struct Shaped {
    pub record: ScrapeRecord,
    /// The series set, when the record's shape was (re)built; `None` on the fast path, whose
    /// set is already stored.
    pub set: Option<SeriesSet>,
    /// Samples parsed from the target (synthetic series excluded).
    pub scraped: usize,
    /// Why the scrape failed (`up` is 0), if it did.
    pub error: Option<ScrapeError>,
}

/// Turns scrape results into queue records, remembering the last successful scrape's shape.
/// When a scrape has exactly the same series in the same order as the last one (the usual
/// case), its record is built from the values alone: no labels are built, merged, sorted or
/// hashed. The result is identical to the slow path's.
#[derive(Default)]
pub struct Shaper {
    /// 128-bit fingerprint of the remembered shape (every parsed name and label, in order):
    /// 16 bytes per target instead of a copy of its labels.
    shape: Option<u128>,
    set_id: u64,
}

/// Fingerprint of a scrape's shape: two independent 64-bit SipHashes over every sample's
/// name and labels, in order. An accidental collision (about 2^-128) is the only way a changed
/// shape could be mistaken for the remembered one.
fn fingerprint(samples: &[parse::ParsedSample]) -> u128 {
    use std::hash::{Hash, Hasher};
    let mut a = std::collections::hash_map::DefaultHasher::new();
    let mut b = std::collections::hash_map::DefaultHasher::new();
    0xa5u8.hash(&mut b);
    for h in [&mut a, &mut b] {
        samples.len().hash(h);
        for s in samples {
            s.name.hash(h);
            s.labels.len().hash(h);
            for l in &s.labels {
                l.name.hash(h);
                l.value.hash(h);
            }
        }
    }
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

impl Shaper {
    /// Shapes a scrape result taken at `ts` that lasted `duration` seconds.
    pub fn shape(
        &mut self,
        t: &Target,
        ext: &[Label],
        body: Result<String, ScrapeError>,
        ts: i64,
        duration: f64,
    ) -> Shaped {
        let limits = parse::Limits {
            max_samples: t.sample_limit,
            ..Default::default()
        };
        let parsed = body.and_then(|text| Ok(parse::parse(&text, &limits)?));
        let exp = match parsed {
            Ok(exp) => exp,
            Err(error) => {
                let (series, _) = with_synthetic(t, ext, Vec::new(), false, ts, duration);
                let (set, record) = codec::split(series, ts);
                return Shaped {
                    record,
                    set: Some(set),
                    scraped: 0,
                    error: Some(error),
                };
            }
        };
        let scraped = exp.samples.len();
        let shape = fingerprint(&exp.samples);
        if self.shape == Some(shape) {
            let mut values = Vec::with_capacity(scraped + 4);
            let mut exceptions = Vec::new();
            for (i, s) in exp.samples.iter().enumerate() {
                values.push(s.value);
                if let Some(ms) = s.timestamp_ms.filter(|_| t.honor_timestamps)
                    && ms != ts
                {
                    exceptions.push((i as u32, ms));
                }
            }
            // The synthetic series, in `with_synthetic`'s order.
            values.extend([1.0, duration, scraped as f64, scraped as f64]);
            return Shaped {
                record: ScrapeRecord {
                    set_id: self.set_id,
                    timestamp: ts,
                    values,
                    exceptions,
                },
                set: None,
                scraped,
                error: None,
            };
        }
        self.shape = Some(shape);
        let series = build_from(t, ext, exp.samples, ts);
        let (series, _) = with_synthetic(t, ext, series, true, ts, duration);
        let (set, record) = codec::split(series, ts);
        self.set_id = record.set_id;
        Shaped {
            record,
            set: Some(set),
            scraped,
            error: None,
        }
    }

    /// Forgets the remembered shape (its set may not have been stored).
    pub fn forget(&mut self) {
        self.shape = None;
    }
}

/// Applies target labels to a scraped sample's labels, Prometheus's way.
fn merge_target_labels(labels: &mut Vec<Label>, target: &[Label], honor: bool) {
    for tl in target {
        match labels.iter().position(|l| l.name == tl.name) {
            Some(_) if honor => {}
            Some(i) => {
                // Rename the scraped label to exported_<name>, repeating the prefix until free.
                let mut name = format!("exported_{}", tl.name);
                while labels.iter().any(|l| l.name == name) {
                    name = format!("exported_{name}");
                }
                labels[i].name = name;
                labels.push(tl.clone());
            }
            None => labels.push(tl.clone()),
        }
    }
    labels.retain(|l| !l.value.is_empty());
    model::normalize(labels);
}

fn add_external(labels: &mut Vec<Label>, ext: &[Label]) {
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

/// Appends the synthetic series; returns the series and the number of scraped samples.
fn with_synthetic(
    t: &Target,
    ext: &[Label],
    mut series: Vec<TimeSeries>,
    up: bool,
    ts: i64,
    duration: f64,
) -> (Vec<TimeSeries>, usize) {
    let scraped = series.len();
    for (name, value) in [
        ("up", if up { 1.0 } else { 0.0 }),
        ("scrape_duration_seconds", duration),
        ("scrape_samples_scraped", scraped as f64),
        ("scrape_samples_post_metric_relabeling", scraped as f64),
    ] {
        series.push(synthetic(t, ext, name, value, ts));
    }
    (series, scraped)
}

fn synthetic(t: &Target, ext: &[Label], name: &str, value: f64, ts: i64) -> TimeSeries {
    let mut labels = t.labels.clone();
    labels.push(Label::new(METRIC_NAME, name));
    add_external(&mut labels, ext);
    model::normalize(&mut labels);
    TimeSeries {
        labels,
        samples: vec![Sample {
            value,
            timestamp: ts,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(honor: bool) -> Target {
        Target {
            job: "node".into(),
            url: "http://h:1/metrics".into(),
            labels: vec![Label::new("instance", "h:1"), Label::new("job", "node")],
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
            honor_labels: honor,
            honor_timestamps: true,
            sample_limit: 0,
            body_size_limit: 0,
        }
    }

    fn names(ts: &TimeSeries) -> String {
        model::display(&ts.labels)
    }

    #[test]
    fn target_and_external_labels_follow_prometheus() {
        let ext = vec![Label::new("site", "a"), Label::new("job", "ignored")];
        let text = "# TYPE x counter\nx{job=\"inner\",site=\"b\"} 1\ny 2 1700000000000\n";
        let s = build(&t(false), &ext, text, 5).expect("parses");
        assert_eq!(
            names(&s[0]),
            r#"x{exported_job="inner",instance="h:1",job="node",site="b"}"#
        );
        assert_eq!(names(&s[1]), r#"y{instance="h:1",job="node",site="a"}"#);
        assert_eq!(s[0].samples[0].timestamp, 5);
        assert_eq!(s[1].samples[0].timestamp, 1_700_000_000_000);

        let s = build(&t(true), &ext, text, 5).expect("parses");
        assert_eq!(names(&s[0]), r#"x{instance="h:1",job="inner",site="b"}"#);

        let (all, scraped) = with_synthetic(&t(false), &ext, s, true, 5, 0.25);
        assert_eq!(scraped, 2);
        let up = &all[2];
        assert_eq!(names(up), r#"up{instance="h:1",job="node",site="a"}"#);
        assert_eq!(up.samples[0].value, 1.0);
        assert_eq!(all.len(), 6);
    }

    #[test]
    fn fast_path_records_equal_slow_path_records() {
        let ext = vec![Label::new("site", "a")];
        let text = "# TYPE x counter\nx{job=\"inner\"} 1\ny 2 1700000000000\nz{a=\"1\"} 3\n";
        let text2 = text.replace(" 1\n", " 5\n").replace(" 3\n", " 4.5\n");
        let mut warm = Shaper::default();
        let first = warm.shape(&t(false), &ext, Ok(text.into()), 10, 0.5);
        assert!(first.set.is_some());
        let fast = warm.shape(&t(false), &ext, Ok(text2.clone()), 20, 0.25);
        assert!(fast.set.is_none(), "same shape takes the fast path");
        let slow = Shaper::default().shape(&t(false), &ext, Ok(text2), 20, 0.25);
        assert_eq!(fast.record, slow.record);
        assert_eq!(slow.record.set_id, first.record.set_id);
        // A new series changes the shape; a failure is recorded with up = 0.
        let changed = warm.shape(&t(false), &ext, Ok(format!("{text}w 1\n")), 30, 0.1);
        assert!(changed.set.is_some());
        assert_ne!(changed.record.set_id, first.record.set_id);
        let failed = warm.shape(&t(false), &ext, Err(ScrapeError::Utf8), 40, 0.1);
        assert!(failed.error.is_some());
        assert_eq!(failed.record.values[0], 0.0);
    }
}
