//! A Prometheus remote-write 1.0 receiver that records every sample it accepts.
//!
//! `POST /api/v1/write` takes a snappy-compressed `WriteRequest`, records each sample in
//! arrival order (labels sorted), counts duplicates (same labels and timestamp again; the first
//! is kept) and label-order violations, and answers 204. `GET /report` returns the counters as
//! JSON. [`Capture::set_fail_next`] makes the next requests fail with a chosen status, recording
//! nothing, to exercise a sender's retries.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uplink_shared::remote_write::{Label, WriteRequest, decode_snappy};

/// Largest uncompressed (and compressed) request accepted.
pub const MAX_BODY: usize = 64 << 20;

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
    /// Requests failed on purpose by [`Capture::set_fail_next`].
    pub injected_failures: u64,
    /// Samples recorded (duplicates excluded).
    pub samples: u64,
    /// Distinct label sets recorded.
    pub series: u64,
    /// Samples whose labels and timestamp had been received before.
    pub duplicates: u64,
    /// Series sent with labels not sorted by name or with a repeated name.
    pub label_order_violations: u64,
}

#[derive(Default)]
struct Store {
    samples: Vec<Received>,
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
    fail_next: AtomicU32,
    fail_status: AtomicU16,
}

impl Inner {
    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves consistent-enough data for a test tool.
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running capture receiver.
pub struct Capture {
    addr: SocketAddr,
    inner: Arc<Inner>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

fn bad_request(inner: &Inner, msg: String) -> Response {
    inner.store().report.rejected += 1;
    (StatusCode::BAD_REQUEST, msg).into_response()
}

async fn write(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    // Fault injection: consume one pending failure, if any.
    let injected = inner
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| k.checked_sub(1))
        .is_ok();
    if injected {
        inner.store().report.injected_failures += 1;
        let status = StatusCode::from_u16(inner.fail_status.load(Ordering::SeqCst))
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return (status, "injected failure").into_response();
    }
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !encoding.eq_ignore_ascii_case("snappy") {
        return bad_request(
            &inner,
            format!("Content-Encoding must be snappy, got {encoding:?}"),
        );
    }
    let req: WriteRequest = match decode_snappy(&body, MAX_BODY) {
        Ok(r) => r,
        Err(e) => return bad_request(&inner, format!("decode: {e}")),
    };
    let mut store = inner.store();
    let store = &mut *store;
    store.report.requests += 1;
    if inner.counting {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for ts in req.timeseries {
            store.report.samples += ts.samples.len() as u64;
            if let Some(s) = ts.samples.last()
                && store.latencies_ms.len() < 20_000_000
            {
                store
                    .latencies_ms
                    .push((now - s.timestamp).clamp(0, u32::MAX as i64) as u32);
            }
        }
        return StatusCode::NO_CONTENT.into_response();
    }
    for ts in req.timeseries {
        let ordered = ts.labels.windows(2).all(|w| w[0].name < w[1].name);
        let mut labels = ts.labels;
        if !ordered {
            store.report.label_order_violations += 1;
            labels.sort();
        }
        if store.series.insert(labels.clone()) {
            store.report.series += 1;
        }
        for s in ts.samples {
            if store.seen.insert((labels.clone(), s.timestamp)) {
                store.report.samples += 1;
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
    StatusCode::NO_CONTENT.into_response()
}

async fn report(State(inner): State<Arc<Inner>>) -> Response {
    let report = inner.store().report.clone();
    match serde_json::to_string(&report) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
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
            fail_next: AtomicU32::new(0),
            fail_status: AtomicU16::new(503),
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
        self.inner.fail_status.store(status, Ordering::SeqCst);
        self.inner.fail_next.store(k, Ordering::SeqCst);
    }

    /// Every recorded sample, in arrival order (duplicates excluded).
    pub fn snapshot(&self) -> Vec<Received> {
        self.inner.store().samples.clone()
    }

    /// The counters `GET /report` serves.
    pub fn report(&self) -> CaptureReport {
        self.inner.store().report.clone()
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
