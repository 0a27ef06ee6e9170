//! Scraping, as Prometheus does it.
//!
//! [`manager`] keeps one loop per target of every job, following discovery and reloads;
//! [`target`] turns discovered groups into targets (`relabel_configs`, Prometheus's
//! `PopulateLabels`); [`negotiate`] gives each job its `Accept` header and picks the parser
//! from each response's `Content-Type`: [`parse`] (text format 0.0.4) or [`openmetrics`]
//! (OpenMetrics 1.0), which produce the same samples; [`shape`] turns a scrape into a queue
//! record (target labels, `metric_relabel_configs`, synthetic series, stale markers). This
//! module holds the loop and the HTTP request.
//!
//! Each target scrapes on its own timer with a stable offset inside the interval (a hash of
//! job and URL), so load is spread and a failing or slow target never delays another. A
//! scrape's result (every sample plus the synthetic `up`, `scrape_duration_seconds`,
//! `scrape_samples_scraped` and `scrape_samples_post_metric_relabeling` series) becomes one
//! queue record in the compact format of `uplink_shared::codec` (series set stored once, then
//! values only). The scrape counts as collected once that append returned.
//!
//! A target that goes away (discovery or reload) keeps its loop for up to two more intervals
//! and then writes stale markers for everything it last reported, as Prometheus does; on
//! shutdown no markers are written.

pub mod gofloat;
pub mod manager;
pub mod negotiate;
pub mod nhcb;
pub mod openmetrics;
pub mod parse;
pub mod protobuf;
pub mod resolution;
pub mod shape;
pub mod target;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use uplink_shared::model::Label;

use crate::discovery::LabelSet;
use crate::metrics::Metrics;
use crate::queue::{Queue, SetUse};

pub use negotiate::Format;
pub use shape::{STALE_NAN, Shaped, Shaper, build_text};
pub use target::Job;

/// The body cap when `body_size_limit` is 0: a gzip bomb or a runaway target fails alone
/// instead of exhausting a small device's memory. Prometheus has no cap; 64 MiB is far above
/// any healthy exporter (kube-state-metrics on a large cluster serves tens of MiB).
pub const DEFAULT_BODY_CAP: usize = 64 << 20;

/// One target to scrape.
#[derive(Clone, Debug)]
pub struct Target {
    pub job: Arc<Job>,
    pub url: String,
    /// The series labels it contributes (no `__` labels), sorted, no empty values.
    pub labels: Vec<Label>,
    /// Its labels before relabeling, for `/api/v1/targets`.
    pub discovered: Arc<LabelSet>,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Target {
    /// Identity across discovery updates: URL and labels, as Prometheus hashes targets.
    pub fn key(&self) -> (String, Vec<Label>) {
        (self.url.clone(), self.labels.clone())
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
    /// Prometheus 3: the response's `Content-Type` selects no parser and the job has no
    /// `fallback_scrape_protocol`.
    #[error("{message}")]
    ContentType {
        message: String,
        /// The body's length (for `scrape_body_size_bytes`).
        body_bytes: usize,
    },
    /// A metric or label name the job's `metric_name_validation_scheme` refuses, after
    /// relabeling.
    #[error("invalid metric name or label names: {0}")]
    InvalidNames(String),
    /// The body exceeded `body_size_limit`.
    #[error("body size limit exceeded ({0} bytes)")]
    BodyTooLarge(usize),
    /// The body is not valid UTF-8.
    #[error("body is not valid UTF-8")]
    Utf8,
    /// The body does not parse as the text format.
    #[error("parse error: {0}")]
    Parse(#[from] parse::ParseError),
    /// The body does not parse as OpenMetrics.
    #[error("OpenMetrics parse error: {0}")]
    OpenMetrics(#[from] openmetrics::ParseError),
    /// The body does not parse as the protobuf format.
    #[error("protobuf parse error: {0}")]
    Protobuf(#[from] protobuf::ParseError),
    /// Metric relabeling removed `__name__` from a series.
    #[error("__name__ label is mandatory (removed by metric_relabel_configs)")]
    NameMissing,
    /// More samples than `sample_limit` after metric relabeling.
    #[error("sample limit exceeded ({0})")]
    SampleLimit(u64),
    /// A native histogram over `native_histogram_bucket_limit` that no lower resolution
    /// brings under it (after metric relabeling).
    #[error("histogram bucket limit exceeded ({0})")]
    BucketLimit(usize),
    /// A series over `label_limit`, `label_name_length_limit` or `label_value_length_limit`.
    #[error("label limit exceeded: {0}")]
    LabelLimit(String),
    /// The job has more targets than `target_limit`.
    #[error("target_limit exceeded (limit: {0})")]
    TargetLimit(u64),
    /// The request could not be authenticated (unreadable credentials file, OAuth2 failure).
    #[error("{0}")]
    Client(#[from] crate::http_client::HttpClientError),
}

/// A scraped body and the parser its `Content-Type` selected.
#[derive(Clone, Debug, PartialEq)]
pub struct Body {
    pub data: Vec<u8>,
    pub format: Format,
}

impl Body {
    /// Parses the body in its format, `dialect` and `histograms` (the text formats must be
    /// UTF-8).
    pub fn parse(
        &self,
        limits: &parse::Limits,
        dialect: parse::Dialect,
        histograms: protobuf::Histograms,
    ) -> Result<parse::Exposition, ScrapeError> {
        self.format.parse(&self.data, limits, dialect, histograms)
    }
}

/// A text-format body.
impl From<String> for Body {
    fn from(text: String) -> Self {
        Body {
            data: text.into_bytes(),
            format: Format::Text,
        }
    }
}

/// A text-format body.
impl From<&str> for Body {
    fn from(text: &str) -> Self {
        Body::from(text.to_owned())
    }
}

/// `scrape_failure_log_file`: one JSON line per failed fetch (connection, timeout, status,
/// body size limit), as Prometheus 3 writes them: `time`, `level`, `source`, `msg` (the error),
/// `job_name`, `target` (the scrape URL). Like Prometheus, failures of a body that was fetched
/// (its `Content-Type`, parse errors, limits, names) are not written. The file is opened in
/// append mode when the job is (re)built, so a reload reopens it (log rotation).
#[derive(Debug)]
pub struct FailureLog {
    path: std::path::PathBuf,
    file: std::sync::Mutex<std::fs::File>,
}

impl FailureLog {
    /// Opens (or creates) `path` for appending.
    pub fn open(path: &std::path::Path) -> std::io::Result<FailureLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(FailureLog {
            path: path.to_owned(),
            file: std::sync::Mutex::new(file),
        })
    }

    /// Whether Prometheus logs this failure (a fetch or read failure).
    pub fn logs(error: &ScrapeError) -> bool {
        matches!(
            error,
            ScrapeError::Request(_)
                | ScrapeError::Timeout(_)
                | ScrapeError::Status(_)
                | ScrapeError::BodyTooLarge(_)
                | ScrapeError::Client(_)
        )
    }

    /// Appends the line of one failed scrape at `ts_ms`; a write error is logged, not fatal.
    pub fn write(&self, ts_ms: i64, job: &str, target: &str, error: &ScrapeError) {
        use std::io::Write as _;
        let line = serde_json::json!({
            "time": uplink_shared::telemetry::rfc3339_ms(ts_ms),
            "level": "ERROR",
            "source": "uplink-agent",
            "msg": error.to_string(),
            "job_name": job,
            "target": target,
        });
        let written = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(error) = written {
            warn!(%error, path = %self.path.display(), "Cannot write the scrape failure log.");
        }
    }
}

/// What every target loop shares.
#[derive(Clone)]
pub struct Context {
    pub queue: Queue,
    pub metrics: Metrics,
}

/// How a target loop is told to end.
#[derive(Clone, Default)]
pub struct Stop {
    /// Stop now, without stale markers (shutdown, or a restart with new settings).
    pub now: CancellationToken,
    /// The target went away: stop and write stale markers after up to two intervals.
    pub removed: CancellationToken,
}

/// Offset of a target inside its interval: stable across restarts, spread across targets.
fn offset(t: &Target) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.job.name.hash(&mut h);
    t.url.hash(&mut h);
    let interval_ms = t.interval.as_millis().max(1) as u64;
    Duration::from_millis(h.finish() % interval_ms)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Health of a target, for `/api/v1/targets`.
#[derive(Clone, Debug, Default)]
pub struct Health {
    /// `None` before the first scrape.
    pub up: Option<bool>,
    pub last_error: String,
    /// Start of the last scrape, ms since the epoch.
    pub last_scrape_ms: i64,
    pub last_duration: f64,
}

/// Scrapes `t` until stopped. `health` is updated after every scrape.
pub async fn run_target(
    t: Target,
    ctx: Context,
    health: Arc<std::sync::Mutex<Health>>,
    stop: Stop,
) {
    let mut writer = Writer::default();
    scrape_loop(t, &ctx, health, stop, &mut writer).await;
    writer.release(&ctx);
}

async fn scrape_loop(
    t: Target,
    ctx: &Context,
    health: Arc<std::sync::Mutex<Health>>,
    stop: Stop,
    writer: &mut Writer,
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
    let job = Metrics::job(&t.job.name);
    let ext = t.job.external_labels.clone();
    let mut shaper = Shaper::default();
    loop {
        tokio::select! {
            biased;
            _ = stop.now.cancelled() => return,
            _ = stop.removed.cancelled() => break,
            _ = ticker.tick() => {}
        }
        ctx.metrics.scrapes.get_or_create(&job).inc();
        let ts = now_ms();
        let started = std::time::Instant::now();
        let result = if t
            .job
            .over_target_limit
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            Err(ScrapeError::TargetLimit(t.job.limits.target_limit))
        } else {
            scrape_once(&t).await
        };
        let duration = started.elapsed().as_secs_f64();
        let shaped = shaper.shape(&t, &ext, result, ts, duration);
        if let Ok(mut h) = health.lock() {
            h.up = Some(shaped.error.is_none());
            h.last_error = shaped
                .error
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            h.last_scrape_ms = ts;
            h.last_duration = duration;
        }
        if let Some(error) = &shaped.error {
            ctx.metrics.scrape_failures.get_or_create(&job).inc();
            debug!(%error, "Scrape failed.");
            if let Some(log) = t
                .job
                .failure_log
                .as_ref()
                .filter(|_| FailureLog::logs(error))
            {
                log.write(ts, &t.job.name, &t.url, error);
            }
        }
        ctx.metrics.samples_scraped.inc_by(shaped.scraped as u64);
        for (reason, n) in [
            ("duplicate", shaped.duplicates),
            ("out_of_order", shaped.out_of_order),
        ] {
            if n > 0 {
                let labels = vec![
                    ("job".to_owned(), t.job.name.to_string()),
                    ("reason".to_owned(), reason.to_owned()),
                ];
                ctx.metrics
                    .scrape_samples_refused
                    .get_or_create(&labels)
                    .inc_by(n as u64);
            }
        }
        if !writer.append(ctx, shaped).await {
            shaper.forget();
        }
    }
    // End of run: wait for when the next scrape would have been (its time stamps the markers),
    // then one more interval and a tenth, so that a re-created target has scraped first.
    let stale_at = tokio::select! {
        _ = stop.now.cancelled() => return,
        _ = ticker.tick() => now_ms(),
    };
    tokio::select! {
        _ = stop.now.cancelled() => return,
        _ = ticker.tick() => {}
    }
    tokio::select! {
        _ = stop.now.cancelled() => return,
        _ = tokio::time::sleep(t.interval / 10) => {}
    }
    if let Some(shaped) = shaper.end_of_run(&t, &ext, stale_at) {
        writer.append(ctx, shaped).await;
    }
}

/// Appends shaped scrapes, storing a set's definition the first time in a row it is used.
///
/// Invariant: the set of `last_set` is pinned in the queue (never garbage-collected), because
/// later records refer to it without its definition; the pin moves with `last_set` and is
/// released when the loop ends.
#[derive(Default)]
struct Writer {
    /// The series set this target used last; its definition is already in the queue.
    last_set: Option<u64>,
}

impl Writer {
    fn release(&mut self, ctx: &Context) {
        if let Some(id) = self.last_set.take() {
            ctx.queue.unpin_set(id);
        }
    }
}

impl Writer {
    /// Returns false when the append failed (the record is lost and counted).
    async fn append(&mut self, ctx: &Context, shaped: Shaped) -> bool {
        let record = shaped.record;
        let samples = record.values.len() as u64;
        let set_use = SetUse {
            id: record.set_id,
            def: shaped
                .set
                .filter(|_| self.last_set != Some(record.set_id))
                .map(|set| set.encode()),
        };
        let m = &ctx.metrics;
        let new_set = self.last_set != Some(record.set_id);
        if new_set {
            ctx.queue.pin_set(record.set_id);
        }
        match ctx.queue.append(record.encode(), Some(set_use)).await {
            Ok(_) => {
                if new_set {
                    self.release(ctx);
                }
                self.last_set = Some(record.set_id);
                m.samples_queued.inc_by(samples);
                m.stale_markers.inc_by(shaped.stale as u64);
                let (records, bytes) = ctx.queue.usage();
                m.queue_records.set(records as i64);
                m.queue_bytes.set(bytes as i64);
                true
            }
            Err(error) => {
                // The set's definition may not be stored: rebuild it next time.
                if new_set {
                    ctx.queue.unpin_set(record.set_id);
                }
                self.release(ctx);
                m.queue_append_errors.inc();
                m.samples_dropped.inc_by(samples);
                warn!(%error, "Could not queue scrape result; it is lost.");
                false
            }
        }
    }
}

async fn scrape_once(t: &Target) -> Result<Body, ScrapeError> {
    let fut = async {
        let req = t
            .job
            .client
            .get(&t.url)
            .await?
            .header(reqwest::header::ACCEPT, t.job.accept.as_str())
            .header(
                "X-Prometheus-Scrape-Timeout-Seconds",
                format!("{}", t.timeout.as_secs_f64()),
            )
            .timeout(t.timeout);
        let mut resp = req.send().await?;
        if !resp.status().is_success() {
            return Err(ScrapeError::Status(resp.status()));
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let limit = match t.job.limits.body_size_limit {
            0 => DEFAULT_BODY_CAP,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            body.extend_from_slice(&chunk);
            if limit > 0 && body.len() > limit {
                return Err(ScrapeError::BodyTooLarge(limit));
            }
        }
        let format = match t.job.compatibility {
            crate::config::Compatibility::Prometheus2 => {
                Format::from_content_type(content_type.as_deref())
            }
            // An empty body is a successful scrape whatever its Content-Type.
            _ if body.is_empty() => Format::Text,
            _ => Format::from_content_type_3(content_type.as_deref(), t.job.fallback).map_err(
                |message| ScrapeError::ContentType {
                    message,
                    body_bytes: body.len(),
                },
            )?,
        };
        Ok(Body { data: body, format })
    };
    match tokio::time::timeout(t.timeout, fut).await {
        Err(_) => Err(ScrapeError::Timeout(t.timeout)),
        // The client's own deadline (the same timeout) can fire first, mid-body.
        Ok(Err(ScrapeError::Request(e))) if e.is_timeout() => Err(ScrapeError::Timeout(t.timeout)),
        Ok(r) => r,
    }
}
