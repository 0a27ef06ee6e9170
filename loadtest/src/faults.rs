//! Scripted remote-write faults, for the capture receiver and for [`FaultProxy`], an HTTP
//! relay in front of a real receiver (Prometheus, VictoriaMetrics) that answers some requests
//! itself and forwards the rest unchanged.
//!
//! [`screen`] applies the [`Rules`] to one request, in this order:
//! 1. the script: the next requests answer chosen statuses (with `Retry-After` and a message);
//! 2. content negotiation (415 for an unsupported or missing `Content-Encoding`, an unsupported
//!    `Content-Type`, and for 2.0 when [`Rules::v1_only`]; with [`Rules::broken_v1`] every body
//!    is read as 1.0);
//! 3. decoding (400 when malformed);
//! 4. more series than [`Rules::max_series`]: 413;
//! 5. a series carrying every label of [`Rules::reject_labels`]: 400 for the whole request, as
//!    a 1.0 receiver refuses a request with one bad sample.
//!
//! Every answer given is counted in [`FaultCounts`].

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio_util::sync::CancellationToken;
use uplink_shared::remote_write::receive::{self, Proto};
use uplink_shared::remote_write::{Label, Sample, WriteRequest, decode_snappy};

/// Largest uncompressed (and compressed) request accepted.
pub const MAX_BODY: usize = 64 << 20;

/// Locks a mutex; a panic while holding it leaves consistent-enough data for a test tool.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One scripted answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scripted {
    pub status: u16,
    /// `Retry-After` value, as sent.
    pub retry_after: Option<String>,
    pub message: String,
}

impl Scripted {
    pub fn status(status: u16) -> Scripted {
        Scripted {
            status,
            retry_after: None,
            message: "injected failure".into(),
        }
    }
}

/// How the receiver misbehaves, on purpose.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    /// Answers for the next requests, each given the number of times it is paired with,
    /// consumed one per request; nothing is recorded or forwarded.
    pub script: VecDeque<(Scripted, u32)>,
    /// Requests with more series get 413.
    pub max_series: Option<usize>,
    /// A request holding a series with all these labels (name, value) is refused whole with
    /// 400 (empty: none is).
    pub reject_labels: Vec<(String, String)>,
    /// Answer 415 to remote write 2.0.
    pub v1_only: bool,
    /// Read every body as 1.0 and answer 204 without `Written` headers.
    pub broken_v1: bool,
    /// Wait this long before handling each request (a slow receiver).
    pub delay: std::time::Duration,
}

/// Waits [`Rules::delay`], then [`screen`]s the request.
#[allow(clippy::result_large_err)]
pub async fn screen_after_delay(
    rules: &Mutex<Rules>,
    counts: &Mutex<FaultCounts>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Proto, Vec<Decoded>), Response> {
    let delay = lock(rules).delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    screen(rules, counts, headers, body)
}

impl Rules {
    /// Replaces the script with `k` answers of `status`.
    pub fn fail_next(&mut self, k: u32, status: u16) {
        self.script.clear();
        if k > 0 {
            self.script.push_back((Scripted::status(status), k));
        }
    }

    /// Appends answers to the script, once each.
    pub fn push(&mut self, answers: impl IntoIterator<Item = Scripted>) {
        self.script.extend(answers.into_iter().map(|a| (a, 1)));
    }

    fn next_scripted(&mut self) -> Option<Scripted> {
        let (answer, left) = self.script.front_mut()?;
        let answer = answer.clone();
        *left -= 1;
        if *left == 0 {
            self.script.pop_front();
        }
        Some(answer)
    }
}

/// Answers given by the rules instead of the receiver.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FaultCounts {
    /// Scripted answers.
    pub injected: u64,
    /// 413 for too many series.
    pub too_large: u64,
    /// 400 for a rejected label.
    pub invalid: u64,
    /// 415.
    pub unsupported: u64,
    /// 400 for a body that does not decode.
    pub malformed: u64,
    /// Series refused with [`Rules::reject_labels`] (one per series per request).
    pub invalid_series: u64,
}

/// One decoded series: labels as sent, samples.
pub type Decoded = (Vec<Label>, Vec<Sample>);

/// Applies `rules` to a request: `Ok` with its message and series when it passes, or the
/// answer to give instead.
#[allow(clippy::result_large_err)]
pub fn screen(
    rules: &Mutex<Rules>,
    counts: &Mutex<FaultCounts>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Proto, Vec<Decoded>), Response> {
    let (scripted, max_series, reject, v1_only, broken_v1) = {
        let mut r = lock(rules);
        (
            r.next_scripted(),
            r.max_series,
            r.reject_labels.clone(),
            r.v1_only,
            r.broken_v1,
        )
    };
    let refuse = |status: StatusCode, msg: String| {
        let mut c = lock(counts);
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => c.too_large += 1,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => c.unsupported += 1,
            _ => c.malformed += 1,
        }
        (status, msg).into_response()
    };
    if let Some(f) = scripted {
        lock(counts).injected += 1;
        let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut resp = (status, f.message).into_response();
        if let Some(v) = f.retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Err(resp);
    }
    let text = |n| headers.get(n).and_then(|v| v.to_str().ok());
    // Strict where receivers may be lenient: a sender must say snappy.
    if text(header::CONTENT_ENCODING).is_none() {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Encoding must be snappy".into(),
        ));
    }
    let proto = if broken_v1 {
        Proto::V1
    } else {
        match receive::negotiate(text(header::CONTENT_TYPE), text(header::CONTENT_ENCODING)) {
            Ok(Proto::V2) if v1_only => {
                return Err(refuse(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "remote write 2.0 is not supported".into(),
                ));
            }
            Ok(p) => p,
            Err(e) => return Err(refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, e.to_string())),
        }
    };
    let series = match decode_body(proto, body) {
        Ok(s) => s,
        Err(e) => return Err(refuse(StatusCode::BAD_REQUEST, format!("decode: {e}"))),
    };
    if max_series.is_some_and(|m| series.len() > m) {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} series exceed the limit", series.len()),
        ));
    }
    if !reject.is_empty() {
        let bad = series
            .iter()
            .filter(|(labels, _)| {
                reject
                    .iter()
                    .all(|(n, v)| labels.iter().any(|l| &l.name == n && &l.value == v))
            })
            .count() as u64;
        if bad > 0 {
            let mut c = lock(counts);
            c.invalid += 1;
            c.invalid_series += bad;
            return Err((
                StatusCode::BAD_REQUEST,
                format!("invalid series: labels {reject:?} are not accepted"),
            )
                .into_response());
        }
    }
    Ok((proto, series))
}

fn decode_body(proto: Proto, body: &[u8]) -> Result<Vec<Decoded>, String> {
    match proto {
        Proto::V1 => {
            let req: WriteRequest = decode_snappy(body, MAX_BODY).map_err(|e| e.to_string())?;
            Ok(req
                .timeseries
                .into_iter()
                .map(|t| (t.labels, t.samples))
                .collect())
        }
        Proto::V2 => {
            let limits = receive::Limits {
                max_decoded_bytes: MAX_BODY,
                max_series: usize::MAX,
            };
            let series = receive::decode(proto, body, limits).map_err(|e| e.to_string())?;
            series
                .into_iter()
                .map(|s| Ok((s.labels?, s.samples)))
                .collect()
        }
    }
}

struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    rules: Mutex<Rules>,
    counts: Mutex<FaultCounts>,
}

/// An HTTP relay in front of a real remote-write receiver, applying [`Rules`].
pub struct FaultProxy {
    pub addr: SocketAddr,
    state: Arc<ProxyState>,
    cancel: CancellationToken,
}

impl FaultProxy {
    /// Listens on `addr` and relays `POST /api/v1/write` to `upstream` (a full URL) with the
    /// request's headers and body, answering with the upstream's status, headers and body.
    pub async fn start(addr: SocketAddr, upstream: &str) -> io::Result<FaultProxy> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ProxyState {
            upstream: upstream.to_owned(),
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .map_err(io::Error::other)?,
            rules: Mutex::default(),
            counts: Mutex::default(),
        });
        let app = Router::new()
            .route("/api/v1/write", post(relay))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(state.clone());
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "fault proxy listener failed");
            }
        });
        Ok(FaultProxy {
            addr,
            state,
            cancel,
        })
    }

    /// The remote-write URL to configure in the sender.
    pub fn url(&self) -> String {
        format!("http://{}/api/v1/write", self.addr)
    }

    /// Changes the rules (the script included).
    pub fn rules(&self, f: impl FnOnce(&mut Rules)) {
        f(&mut lock(&self.state.rules));
    }

    /// Answers given instead of the upstream.
    pub fn counts(&self) -> FaultCounts {
        lock(&self.state.counts).clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn relay(State(s): State<Arc<ProxyState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refusal) = screen_after_delay(&s.rules, &s.counts, &headers, &body).await {
        return refusal;
    }
    let mut req = s.client.post(&s.upstream).body(body);
    for (k, v) in &headers {
        if k != header::HOST && k != header::CONTENT_LENGTH {
            req = req.header(k, v);
        }
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = resp.status();
    let mut out_headers = HeaderMap::new();
    for (k, v) in resp.headers() {
        if k != header::CONTENT_LENGTH && k != header::TRANSFER_ENCODING {
            out_headers.insert(k, v.clone());
        }
    }
    let body = resp.bytes().await.unwrap_or_default();
    let code = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    (code, out_headers, body).into_response()
}
