//! A Prometheus remote-write 1.0 and 2.0 receiver that records every sample it accepts.
//!
//! `POST /api/v1/write` takes a snappy-compressed `prometheus.WriteRequest` or
//! `io.prometheus.write.v2.Request` (chosen by `Content-Type`, 415 for anything else, as the
//! 2.0 receiver rules say), records each sample in arrival order (labels sorted), counts
//! duplicates (same labels and timestamp again; the first is kept) and label-order violations,
//! and answers 204, with the `X-Prometheus-Remote-Write-*-Written` headers for 2.0. `GET
//! /report` returns the counters as JSON.
//!
//! Scripted faults ([`Capture::script`], [`Capture::rules`]) come from [`crate::faults`]: the
//! next requests answer chosen statuses, too many series get 413, a chosen series gets its
//! request refused with 400, 2.0 gets 415, or every body is read as 1.0 (a broken receiver).

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uplink_shared::remote_write::receive::{self, Proto};
use uplink_shared::remote_write::{Exemplar, Histogram, Label, MetricMetadata};

pub use crate::faults::Scripted;
use crate::faults::{self, FaultCounts, Rules, lock};

pub use crate::faults::MAX_BODY;

/// One received sample. Plain data, so it can also be built from a Prometheus query result.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    /// Sorted by name.
    pub labels: Vec<Label>,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub value: f64,
}

/// Counters served by `GET /report`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CaptureReport {
    /// Requests accepted (204).
    pub requests: u64,
    /// Requests rejected as malformed (400).
    pub rejected: u64,
    /// Requests failed on purpose ([`Capture::set_fail_next`], [`Capture::script`]).
    pub injected_failures: u64,
    /// Requests refused with 413 for carrying more than [`Rules::max_series`] series.
    pub too_large: u64,
    /// Requests refused with 400 for carrying [`Rules::reject_labels`].
    pub invalid: u64,
    /// Requests refused with 415 (unsupported message or encoding, or 2.0 to a `v1_only`
    /// receiver).
    pub unsupported: u64,
    /// Accepted requests that carried remote write 2.0.
    pub v2_requests: u64,
    /// Samples accepted, by the request's `X-Scope-OrgID` header ("" when absent).
    #[serde(default)]
    pub samples_by_org_id: std::collections::BTreeMap<String, u64>,
    /// Samples recorded (duplicates excluded).
    pub samples: u64,
    /// Distinct label sets recorded.
    pub series: u64,
    /// Samples whose labels and timestamp had been received before.
    pub duplicates: u64,
    /// Series sent with labels not sorted by name or with a repeated name.
    pub label_order_violations: u64,
}

/// What a capture received besides float samples (not kept in counting mode).
#[derive(Clone, Debug, Default)]
pub struct Extras {
    /// Native histogram samples, with their series' labels, in arrival order.
    pub histograms: Vec<(Vec<Label>, Histogram)>,
    pub exemplars: Vec<(Vec<Label>, Exemplar)>,
    /// By family name, the last received.
    pub metadata: std::collections::BTreeMap<String, MetricMetadata>,
    /// 2.0 series carrying both float samples and histograms (the spec forbids it).
    pub mixed_series: u64,
    /// Requests that carried any metadata.
    pub metadata_requests: u64,
    /// Created timestamps of series that carried one, in arrival order.
    pub created: Vec<(Vec<Label>, i64)>,
}

#[derive(Default)]
struct Store {
    samples: Vec<Received>,
    /// See [`Capture::mark`]: the timestamp, and how many samples older than it arrived.
    mark: Option<i64>,
    before_mark: u64,
    /// Of those, samples of the probe's own series (`probe_*`).
    probe_before_mark: u64,
    /// The newest sample timestamp received.
    newest: i64,
    extras: Extras,
    seen: HashSet<(Vec<Label>, i64)>,
    series: HashSet<Vec<Label>>,
    report: CaptureReport,
    /// Counting mode: arrival time minus sample timestamp, ms, one entry per series per request
    /// (capped).
    latencies_ms: Vec<u32>,
}

struct Inner {
    /// Counting mode: count samples and latencies, keep nothing else (fleet runs).
    counting: bool,
    store: Mutex<Store>,
    rules: Mutex<Rules>,
    counts: Mutex<FaultCounts>,
}

impl Inner {
    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }
}

/// A running capture receiver.
pub struct Capture {
    addr: SocketAddr,
    inner: Arc<Inner>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

async fn write(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let (proto, series) =
        match faults::screen_after_delay(&inner.rules, &inner.counts, &headers, &body).await {
            Ok(accepted) => accepted,
            Err(refusal) => return refusal,
        };
    let broken_v1 = lock(&inner.rules).broken_v1;
    let org = headers
        .get("x-scope-orgid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut store = inner.store();
    let store = &mut *store;
    store.report.requests += 1;
    let in_request: u64 = series.iter().map(|(_, s)| s.len() as u64).sum();
    *store.report.samples_by_org_id.entry(org).or_default() += in_request;
    if proto == Proto::V2 {
        store.report.v2_requests += 1;
    }
    if inner.counting {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for (_, samples) in series {
            store.report.samples += samples.len() as u64;
            if let Some(s) = samples.last()
                && store.latencies_ms.len() < 20_000_000
            {
                store
                    .latencies_ms
                    .push((now - s.timestamp).clamp(0, u32::MAX as i64) as u32);
            }
        }
        return written(proto, broken_v1, [in_request, 0, 0]);
    }
    let limits = receive::Limits {
        max_decoded_bytes: MAX_BODY,
        max_series: usize::MAX,
    };
    let (mut histograms, mut exemplars) = (0u64, 0u64);
    if let Ok((full, metadata)) = receive::decode_with_metadata(proto, &body, limits) {
        let x = &mut store.extras;
        let with_metadata = !metadata.is_empty() || full.iter().any(|s| s.metadata.is_some());
        x.metadata_requests += u64::from(with_metadata);
        for m in metadata {
            x.metadata.insert(m.metric_family_name.clone(), m);
        }
        for s in full {
            let Ok(labels) = s.labels else { continue };
            if proto == Proto::V2 && !s.samples.is_empty() && !s.histograms.is_empty() {
                x.mixed_series += 1;
            }
            if let Some(m) = s.metadata {
                x.metadata.insert(m.metric_family_name.clone(), m);
            }
            if s.created_timestamp != 0 {
                x.created.push((labels.clone(), s.created_timestamp));
            }
            histograms += s.histograms.len() as u64;
            exemplars += s.exemplars.len() as u64;
            x.histograms
                .extend(s.histograms.into_iter().map(|h| (labels.clone(), h)));
            x.exemplars
                .extend(s.exemplars.into_iter().map(|e| (labels.clone(), e)));
        }
    }
    for (mut labels, samples) in series {
        let ordered = labels.windows(2).all(|w| w[0].name < w[1].name);
        if !ordered {
            store.report.label_order_violations += 1;
            labels.sort();
        }
        if store.series.insert(labels.clone()) {
            store.report.series += 1;
        }
        for s in samples {
            if store.seen.insert((labels.clone(), s.timestamp)) {
                store.report.samples += 1;
                store.newest = store.newest.max(s.timestamp);
                if store.mark.is_some_and(|m| s.timestamp < m) {
                    store.before_mark += 1;
                    if is_probe(&labels) {
                        store.probe_before_mark += 1;
                    }
                }
                store.samples.push(Received {
                    labels: labels.clone(),
                    timestamp: s.timestamp,
                    value: s.value,
                });
            } else {
                store.report.duplicates += 1;
            }
        }
    }
    written(proto, broken_v1, [in_request, histograms, exemplars])
}

/// 204, with the 2.0 `*-Written` headers (samples, histograms, exemplars) for a 2.0 request
/// (unless playing a broken receiver).
fn written(proto: Proto, broken_v1: bool, [samples, histograms, exemplars]: [u64; 3]) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if proto == Proto::V2 && !broken_v1 {
        let h = resp.headers_mut();
        h.insert(receive::SAMPLES_WRITTEN, samples.into());
        h.insert(receive::HISTOGRAMS_WRITTEN, histograms.into());
        h.insert(receive::EXEMPLARS_WRITTEN, exemplars.into());
    }
    resp
}

async fn report(State(inner): State<Arc<Inner>>) -> Response {
    let report = current_report(&inner);
    match serde_json::to_string(&report) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn current_report(inner: &Inner) -> CaptureReport {
    let mut r = inner.store().report.clone();
    let c = lock(&inner.counts).clone();
    r.injected_failures = c.injected;
    r.too_large = c.too_large;
    r.invalid = c.invalid;
    r.unsupported = c.unsupported;
    r.rejected = c.malformed;
    r
}

impl Capture {
    /// Binds `addr` and serves `POST /api/v1/write` and `GET /report`. Must run inside a Tokio
    /// runtime.
    pub async fn start(addr: SocketAddr) -> io::Result<Capture> {
        Self::start_with(addr, false).await
    }

    /// A receiver that only counts samples and records delivery latency (now minus sample
    /// timestamp) per series, for runs too large to keep every sample.
    pub async fn start_counting(addr: SocketAddr) -> io::Result<Capture> {
        Self::start_with(addr, true).await
    }

    /// Latencies recorded in counting mode, ms.
    pub fn latencies_ms(&self) -> Vec<u32> {
        self.inner.store().latencies_ms.clone()
    }

    async fn start_with(addr: SocketAddr, counting: bool) -> io::Result<Capture> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            counting,
            store: Mutex::new(Store::default()),
            rules: Mutex::new(Rules::default()),
            counts: Mutex::new(FaultCounts::default()),
        });
        let app = Router::new()
            .route("/api/v1/write", post(write))
            .route("/report", get(report))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(inner.clone());
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let task = tokio::spawn(async move {
            let res = axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
            if let Err(e) = res {
                tracing::warn!(error = %e, "capture listener failed");
            }
        });
        Ok(Capture {
            addr,
            inner,
            cancel,
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The remote-write URL: `http://addr/api/v1/write`.
    pub fn url(&self) -> String {
        format!("http://{}/api/v1/write", self.addr)
    }

    /// Makes the next `k` write requests answer `status` (e.g. 503) and record nothing.
    pub fn set_fail_next(&self, k: u32, status: u16) {
        lock(&self.inner.rules).fail_next(k, status);
    }

    /// Queues scripted answers for the next requests.
    pub fn script(&self, answers: impl IntoIterator<Item = Scripted>) {
        lock(&self.inner.rules).push(answers);
    }

    /// Changes the standing rules (the script included).
    pub fn rules(&self, f: impl FnOnce(&mut Rules)) {
        f(&mut lock(&self.inner.rules));
    }

    /// Every recorded sample, in arrival order (duplicates excluded).
    pub fn snapshot(&self) -> Vec<Received> {
        self.inner.store().samples.clone()
    }

    /// The counters `GET /report` serves.
    /// Histograms, exemplars and metadata received so far.
    pub fn extras(&self) -> Extras {
        self.inner.store().extras.clone()
    }

    pub fn report(&self) -> CaptureReport {
        current_report(&self.inner)
    }

    /// Samples received again with the same labels and timestamp.
    pub fn duplicates(&self) -> u64 {
        self.inner.store().report.duplicates
    }

    /// Write requests accepted.
    pub fn requests(&self) -> u64 {
        self.inner.store().report.requests
    }

    /// Series sent with unsorted or repeated label names.
    pub fn label_order_violations(&self) -> u64 {
        self.inner.store().report.label_order_violations
    }

    /// From now on, counts the samples older than `ts` (those received so far included), for
    /// [`Capture::before_mark`]: e.g. how much of a backlog has arrived.
    pub fn mark(&self, ts: i64) {
        let mut store = self.inner.store();
        let before = store.samples.iter().filter(|r| r.timestamp < ts);
        let (all, probe) = before.fold((0, 0), |(a, p), r| {
            (a + 1, p + u64::from(is_probe(&r.labels)))
        });
        (store.before_mark, store.probe_before_mark) = (all, probe);
        store.mark = Some(ts);
    }

    /// Of [`Capture::before_mark`], the samples of the probe's series (`probe_*`): a number
    /// known exactly per scrape, unlike the scraper's own series (`up`, ...).
    pub fn probe_before_mark(&self) -> u64 {
        self.inner.store().probe_before_mark
    }

    /// Samples received older than the [`Capture::mark`] (0 without one).
    pub fn before_mark(&self) -> u64 {
        self.inner.store().before_mark
    }

    /// The newest sample timestamp received (ms; 0 before any).
    pub fn newest_timestamp(&self) -> i64 {
        self.inner.store().newest
    }

    /// Samples recorded.
    pub fn len(&self) -> usize {
        self.inner.store().samples.len()
    }

    /// Whether nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every sample and counter (pending injected failures stay).
    pub fn clear(&self) {
        *self.inner.store() = Store::default();
        *lock(&self.inner.counts) = FaultCounts::default();
    }

    /// A token that stops the listener when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops the listener and waits for it.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Whether a series is one of the probe exporter's (`probe_*`).
fn is_probe(labels: &[Label]) -> bool {
    uplink_shared::model::get(labels, uplink_shared::model::METRIC_NAME)
        .is_some_and(|n| n.starts_with("probe_"))
}
