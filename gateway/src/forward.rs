//! Remote-write forwarding: the only module that builds HTTP requests, and the one place that
//! says what each response status means (the [`StatusPolicy`]).
//!
//! Each destination gets one tower stack (built in [`Destination::new`], outermost first):
//! retry with exponential backoff and jitter (only answers whose action is
//! [`Action::Retry`], transport errors and timeouts; a `Retry-After` header lengthens the wait;
//! until the request's budget `limits.max_retry_duration` is spent), then a per-attempt timeout
//! (`remote_timeout`), then the HTTP call. [`Destination::send`] returns an [`Outcome`]; the
//! caller (`fanout.rs`) acts on it: split, bisect, pause, fall back, count.
//!
//! # Default status policy (overridable per destination with `status_policy`)
//! | status | action |
//! |---|---|
//! | 2xx (2.0: with a `*-Written` header) | accepted |
//! | 2xx without any `*-Written` header, to a 2.0 request | fallback (a 1.0 receiver read nothing) |
//! | 5xx, transport errors, timeouts | retry, honouring `Retry-After` |
//! | 429 | retry, honouring `Retry-After` (drop when `retry_on_http_429: false`) |
//! | 400 | bisect: isolate the refused series, deliver the rest |
//! | 413 | split in halves down to single series |
//! | 401, 403 | pause the destination, alert, keep queueing |
//! | 409 | done (the receiver has the data) |
//! | 415 to a 2.0 request | fallback to 1.0, remembered for the process's lifetime |
//! | other 4xx | drop, counted and quarantined |
//!
//! Protocol: a destination configured for 2.0 sends `io.prometheus.write.v2.Request` until it
//! falls back; then 1.0 until the gateway restarts (and logs it, and exports
//! `uplink_gateway_remote_write_protocol`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rand::Rng;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tracing::{info, warn};
use uplink_shared::http_client::HttpClient;
use uplink_shared::remote_write::v2::Families;
use uplink_shared::remote_write::{self, MetricMetadata, TimeSeries};

use crate::config::{Action, ProtobufMessage, RemoteWriteConfig};
use crate::metrics::{Metrics, labels};

/// Longest `Retry-After` honoured; a longer one waits this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Headers a configuration may not set: the protocol's own, and the transport's.
pub const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "host",
    "content-encoding",
    "content-length",
    "content-type",
    "user-agent",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "www-authenticate",
    "retry-after",
    "x-prometheus-remote-write-version",
];

/// Why a remote-write attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The receiver answered something other than success.
    #[error("HTTP {status}: {message}")]
    Status {
        status: u16,
        message: String,
        action: Action,
        retry_after: Option<Duration>,
    },
    /// The request could not be sent or the response not read.
    #[error("request: {0}")]
    Request(#[from] reqwest::Error),
    /// Authentication could not be prepared (an OAuth2 token request failed, a credentials
    /// file is unreadable): retried, it may be fixed on disk.
    #[error("authentication: {0}")]
    Auth(String),
    /// The destination's client could not be built from its configuration.
    #[error("client: {0}")]
    Setup(String),
}

fn retryable(e: &BoxError) -> bool {
    match e.downcast_ref::<ForwardError>() {
        Some(ForwardError::Status { action, .. }) => *action == Action::Retry,
        Some(ForwardError::Setup(_)) => false,
        // Transport and authentication errors, and timeouts (tower's Elapsed).
        _ => true,
    }
}

/// What each response status means for a destination.
#[derive(Clone, Debug)]
pub struct StatusPolicy {
    /// Exact statuses first, then classes (`4` for 4xx, `5` for 5xx).
    exact: Vec<(u16, Action)>,
    class: Vec<(u16, Action)>,
    retry_429: bool,
}

impl StatusPolicy {
    /// Parses a `status_policy` key: `(true, 404)` for a status, `(false, 4)` for `4xx`.
    pub fn parse_key(key: &str) -> Option<(bool, u16)> {
        let k = key.trim().to_ascii_lowercase();
        match k.as_bytes() {
            [c @ (b'4' | b'5'), b'x', b'x'] => Some((false, u16::from(c - b'0'))),
            _ => k
                .parse()
                .ok()
                .filter(|s| (400..600).contains(s))
                .map(|s| (true, s)),
        }
    }

    pub fn new(cfg: &RemoteWriteConfig) -> StatusPolicy {
        let mut p = StatusPolicy {
            exact: vec![],
            class: vec![],
            retry_429: cfg.queue_config.retry_on_http_429,
        };
        for (k, a) in &cfg.status_policy {
            match Self::parse_key(k) {
                Some((true, s)) => p.exact.push((s, *a)),
                Some((false, c)) => p.class.push((c, *a)),
                None => {}
            }
        }
        p
    }

    /// The action for a non-2xx `status` answered to a 1.0 or (`v2`) 2.0 request.
    pub fn action(&self, status: u16, v2: bool) -> Action {
        if let Some((_, a)) = self.exact.iter().find(|(s, _)| *s == status) {
            return *a;
        }
        if let Some((_, a)) = self.class.iter().find(|(c, _)| *c == status / 100) {
            return *a;
        }
        match status {
            429 if self.retry_429 => Action::Retry,
            500..=599 => Action::Retry,
            400 => Action::Bisect,
            413 => Action::Split,
            401 | 403 => Action::Pause,
            409 => Action::Done,
            415 if v2 => Action::Fallback,
            _ => Action::Drop,
        }
    }
}

/// One encoded request body, the message it holds, and its tenant's headers.
#[derive(Clone)]
struct Encoded {
    body: Bytes,
    v2: bool,
    tenant_headers: Option<Arc<HeaderMap>>,
}

/// The innermost service: one HTTP POST of an encoded remote-write body.
#[derive(Clone)]
struct RemoteWrite {
    client: HttpClient,
    url: reqwest::Url,
    headers: HeaderMap,
    policy: Arc<StatusPolicy>,
    name: Arc<str>,
    metrics: Metrics,
}

impl Service<Encoded> for RemoteWrite {
    type Response = ();
    type Error = ForwardError;
    type Future = Pin<Box<dyn Future<Output = Result<(), ForwardError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Encoded) -> Self::Future {
        // The request's headers, built here; the future owns what it needs.
        let mut headers = self.headers.clone();
        if let Some(t) = &req.tenant_headers {
            for (k, v) in t.iter() {
                headers.insert(k, v.clone());
            }
        }
        let (content_type, version) = if req.v2 {
            (remote_write::v2::CONTENT_TYPE, remote_write::v2::VERSION)
        } else {
            (remote_write::CONTENT_TYPE, remote_write::VERSION_1)
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(
            HeaderName::from_static(remote_write::receive::VERSION_HEADER),
            HeaderValue::from_static(version),
        );
        let (client, url, policy) = (self.client.clone(), self.url.clone(), self.policy.clone());
        let (name, metrics) = (self.name.clone(), self.metrics.clone());
        Box::pin(async move {
            let builder = client
                .post(url)
                .await
                .map_err(|e| ForwardError::Auth(e.to_string()))?;
            let started = Instant::now();
            let result = builder.headers(headers).body(req.body).send().await;
            metrics
                .request_duration
                .get_or_create(&labels(&[("destination", &name)]))
                .observe(started.elapsed().as_secs_f64());
            let count = |outcome: &str| {
                metrics
                    .requests
                    .get_or_create(&labels(&[("destination", &name), ("outcome", outcome)]))
                    .inc();
            };
            let resp = match result {
                Ok(r) => r,
                Err(e) => {
                    count("error");
                    return Err(e.into());
                }
            };
            let status = resp.status().as_u16();
            count(match status {
                200..=299 => "2xx",
                400..=499 => "4xx",
                500..=599 => "5xx",
                _ => "other",
            });
            if resp.status().is_success() {
                if req.v2 && !wrote_headers(resp.headers()) {
                    return Err(ForwardError::Status {
                        status,
                        message: "2xx without X-Prometheus-Remote-Write-*-Written headers: a \
                                  1.0 receiver that read nothing"
                            .into(),
                        action: Action::Fallback,
                        retry_after: None,
                    });
                }
                return Ok(());
            }
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let mut message = resp.text().await.unwrap_or_default();
            if message.len() > 1024 {
                let mut end = 1024;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
            }
            Err(ForwardError::Status {
                status,
                message: message.trim().to_owned(),
                action: policy.action(status, req.v2),
                retry_after,
            })
        })
    }
}

/// Whether a 2.0 response carries any of the `*-Written` headers.
fn wrote_headers(h: &HeaderMap) -> bool {
    use remote_write::receive::{EXEMPLARS_WRITTEN, HISTOGRAMS_WRITTEN, SAMPLES_WRITTEN};
    [SAMPLES_WRITTEN, HISTOGRAMS_WRITTEN, EXEMPLARS_WRITTEN]
        .iter()
        .any(|n| h.contains_key(*n))
}

/// `Retry-After`: delay-seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// Retry policy: exponential backoff from `min` to `max` with up to 25 % jitter, never shorter
/// than a `Retry-After`, while within `budget` of the first failure.
#[derive(Clone)]
struct Backoff {
    max: Duration,
    budget: Duration,
    next: Duration,
    first_failure: Option<Instant>,
    name: Arc<str>,
    metrics: Metrics,
}

impl tower::retry::Policy<Encoded, (), BoxError> for Backoff {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _: &mut Encoded,
        result: &mut Result<(), BoxError>,
    ) -> Option<Self::Future> {
        let err = result.as_ref().err()?;
        if !retryable(err) {
            return None;
        }
        let first = *self.first_failure.get_or_insert_with(Instant::now);
        if first.elapsed() >= self.budget {
            return None;
        }
        let jitter = rand::rng().random_range(0.0..0.25);
        let mut delay = self.next.mul_f64(1.0 + jitter);
        if let Some(ForwardError::Status {
            retry_after: Some(after),
            ..
        }) = err.downcast_ref::<ForwardError>()
        {
            delay = delay.max(*after);
        }
        self.next = (self.next * 2).min(self.max);
        self.metrics
            .retries
            .get_or_create(&labels(&[("destination", &self.name)]))
            .inc();
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, req: &Encoded) -> Option<Encoded> {
        Some(req.clone())
    }
}

/// What one request's sending came to, for the caller to act on.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// 2xx.
    Accepted,
    /// The policy says the receiver has the data already (409 by default).
    Done(u16),
    /// Split the request in halves (413 by default).
    Split(String),
    /// Bisect to isolate refused series (400 by default).
    Bisect(String),
    /// Pause the destination and try again later (401, 403 by default).
    Pause(u16, String),
    /// Refused for good: drop and count.
    Refused(u16, String),
    /// Still failing after the retry budget: the caller keeps the data and tries again later.
    Failed(String),
}

/// How long a series refused as invalid is dropped without asking the destination again.
const REFUSED_TTL: Duration = Duration::from_secs(600);
/// Refused series remembered per destination at most.
const MAX_REFUSED: usize = 10_000;

/// Series a destination refused as invalid (a 400 bisected down to them), by label hash, with
/// when: for [`REFUSED_TTL`], or until a request of them is accepted, they are sent in requests
/// of their own, so a 400 is bisected among them instead of through everyone's requests.
#[derive(Clone, Default)]
pub struct Refused(Arc<std::sync::Mutex<std::collections::HashMap<u64, Instant>>>);

impl Refused {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Instant>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether any is remembered (expired ones are forgotten first).
    pub fn any(&self) -> bool {
        let mut r = self.lock();
        r.retain(|_, at| at.elapsed() < REFUSED_TTL);
        !r.is_empty()
    }

    pub fn contains(&self, hash: u64) -> bool {
        self.lock().contains_key(&hash)
    }

    /// Forgets series the destination accepted.
    pub fn forget(&self, hashes: impl Iterator<Item = u64>) {
        let mut r = self.lock();
        if !r.is_empty() {
            for h in hashes {
                r.remove(&h);
            }
        }
    }

    pub fn remember(&self, hashes: impl Iterator<Item = u64>) {
        let mut r = self.lock();
        for h in hashes {
            if r.len() >= MAX_REFUSED {
                break;
            }
            r.insert(h, Instant::now());
        }
    }
}

/// One configured destination and its stack.
#[derive(Clone)]
pub struct Destination {
    pub name: Arc<str>,
    /// Series it refused as invalid, remembered for a while.
    pub refused: Refused,
    /// Which tenants it takes, and their request headers (`tenancy`).
    pub routes: crate::fanout::Routes,
    /// Requests currently paused by a `pause` status (the gauge is 1 while any is).
    pauses: Arc<std::sync::atomic::AtomicUsize>,
    svc: BoxCloneSyncService<Encoded, (), BoxError>,
    /// Configured for 2.0 and not fallen back.
    v2: Arc<AtomicBool>,
    /// Metadata seen in this destination's requests, so 2.0 series carry it in every request.
    families: Arc<std::sync::RwLock<Families>>,
    /// Where 2.0 requests carry created timestamps (`start_timestamps`).
    start_timestamps: remote_write::v2::StartTimestamps,
    metrics: Metrics,
}

impl Destination {
    /// Builds the client and the one tower stack for this destination.
    pub fn new(
        cfg: &RemoteWriteConfig,
        tenancy: Option<&crate::config::TenancyConfig>,
        retry_budget: Duration,
        metrics: Metrics,
    ) -> Result<Self, ForwardError> {
        let name: Arc<str> = cfg.display_name().into();
        let url = reqwest::Url::parse(&cfg.url).map_err(|e| ForwardError::Setup(e.to_string()))?;
        let mut headers = HeaderMap::new();
        for (k, v) in &cfg.headers {
            let k =
                HeaderName::try_from(k.as_str()).map_err(|e| ForwardError::Setup(e.to_string()))?;
            if RESERVED_HEADERS.contains(&k.as_str()) {
                return Err(ForwardError::Setup(format!("{k} is a reserved header")));
            }
            let v = HeaderValue::try_from(v.as_str())
                .map_err(|e| ForwardError::Setup(e.to_string()))?;
            headers.insert(k, v);
        }
        headers.insert(
            CONTENT_ENCODING,
            HeaderValue::from_static(remote_write::CONTENT_ENCODING),
        );
        let client = HttpClient::new(
            &cfg.http_client(),
            concat!("uplink-gateway/", env!("CARGO_PKG_VERSION")),
        )
        .map_err(|e| ForwardError::Setup(e.to_string()))?;
        let inner = RemoteWrite {
            client,
            url,
            headers,
            policy: Arc::new(StatusPolicy::new(cfg)),
            name: name.clone(),
            metrics: metrics.clone(),
        };
        let policy = Backoff {
            max: cfg.queue_config.max_backoff.0,
            budget: retry_budget,
            next: cfg.queue_config.min_backoff.0,
            first_failure: None,
            name: name.clone(),
            metrics: metrics.clone(),
        };
        let svc = ServiceBuilder::new()
            // Retry outermost: each attempt gets its own timeout, and only answers whose
            // action is Retry (and transport errors) are retried, within the budget.
            .retry(policy)
            // Per-attempt deadline, as Prometheus's remote_timeout.
            .timeout(cfg.remote_timeout.0)
            // Adapt the error type so retry and timeout see one error type.
            .map_err(BoxError::from)
            .service(inner);
        let v2 = cfg.protobuf_message == ProtobufMessage::V2;
        metrics
            .protocol
            .get_or_create(&labels(&[("destination", &name)]))
            .set(if v2 { 2 } else { 1 });
        Ok(Destination {
            name,
            refused: Refused::default(),
            routes: crate::fanout::Routes::new(tenancy, &cfg.display_name()),
            pauses: Arc::default(),
            svc: BoxCloneSyncService::new(svc),
            v2: Arc::new(AtomicBool::new(v2)),
            families: Arc::default(),
            start_timestamps: cfg.start_timestamps,
            metrics,
        })
    }

    /// Whether requests go out as remote write 2.0 (decoded and re-encoded).
    pub fn sends_v2(&self) -> bool {
        self.v2.load(Ordering::Relaxed)
    }

    /// Sends a stored (snappy 1.0) body, converted to 2.0 when the destination takes 2.0
    /// (straight from the bytes, see `v2::from_v1_bytes`).
    pub async fn send_raw(&self, body: &Bytes, tenant: Option<&Arc<HeaderMap>>) -> Outcome {
        let as_v1 = || Encoded {
            body: body.clone(),
            v2: false,
            tenant_headers: tenant.cloned(),
        };
        if !self.sends_v2() {
            return self.send(as_v1()).await.unwrap_or_else(fallen_back_twice);
        }
        // Decompressed and converted in this thread's reused buffers.
        let converted = crate::scratch::with(|s| {
            let n = snap::raw::decompress_len(body).ok()?;
            s.raw.resize(n, 0);
            s.decoder.decompress(body, &mut s.raw).ok()?;
            self.to_v2(s).then(|| s.encoder.compress_vec(&s.v2).ok())?
        });
        let Some(v2) = converted else {
            // Undecodable: the receiver says what it thinks of it (and the caller counts).
            return self.send(as_v1()).await.unwrap_or_else(fallen_back_twice);
        };
        let encoded = Encoded {
            body: Bytes::from(v2),
            v2: true,
            tenant_headers: tenant.cloned(),
        };
        match self.send(encoded).await {
            // The destination takes 1.0 only, from now on: the same data again, as stored.
            None => self.send(as_v1()).await.unwrap_or_else(fallen_back_twice),
            Some(o) => o,
        }
    }

    /// Encodes series as the destination's protocol and sends them.
    pub async fn send_series(
        &self,
        series: &[TimeSeries],
        metadata: &[MetricMetadata],
        tenant: Option<&Arc<HeaderMap>>,
    ) -> Outcome {
        let v2 = self.sends_v2();
        let encoded = Encoded {
            body: self.encode(series, metadata, v2),
            v2,
            tenant_headers: tenant.cloned(),
        };
        match self.send(encoded).await {
            // The destination takes 1.0 only, from now on: the same series again.
            None => self
                .send(Encoded {
                    body: self.encode(series, metadata, false),
                    v2: false,
                    tenant_headers: tenant.cloned(),
                })
                .await
                .unwrap_or_else(fallen_back_twice),
            Some(o) => o,
        }
    }

    /// The uncompressed 1.0 request in `s.raw` as 2.0 in `s.v2`, its series given the
    /// metadata of their family from this request or an earlier one (learned first, so the
    /// conversion reads it from the cache alone); false if it does not convert.
    fn to_v2(&self, s: &mut crate::scratch::Scratch) -> bool {
        let found = Families::read(&s.raw);
        if !found.is_empty()
            && let Ok(mut f) = self.families.write()
        {
            f.learn(found);
        }
        let Ok(known) = self.families.read() else {
            return false;
        };
        remote_write::v2::from_v1_into(
            &s.raw,
            Some(&known),
            self.start_timestamps,
            &mut s.v2,
            &mut s.series,
        )
        .is_ok()
    }

    /// Series and metadata as a snappy 1.0 `WriteRequest`, or 2.0 `Request` (see
    /// [`Destination::to_v2`]).
    fn encode(&self, series: &[TimeSeries], metadata: &[MetricMetadata], v2: bool) -> Bytes {
        crate::scratch::with(|s| {
            encode_raw(series, metadata, &mut s.raw);
            // The bytes were just encoded from valid messages: they convert.
            let raw = if v2 && self.to_v2(s) { &s.v2 } else { &s.raw };
            Bytes::from(s.encoder.compress_vec(raw).unwrap_or_default())
        })
    }

    /// Sends one encoded request; `None` when a 2.0 request made the destination fall back to
    /// 1.0 (the caller sends the same data again as 1.0, which cannot fall back).
    async fn send(&self, req: Encoded) -> Option<Outcome> {
        let v2 = req.v2;
        Some(match self.svc.clone().oneshot(req).await {
            Ok(()) => Outcome::Accepted,
            Err(e) => match e.downcast::<ForwardError>() {
                Ok(f) => match *f {
                    ForwardError::Status {
                        status,
                        message,
                        action,
                        ..
                    } => match action {
                        Action::Retry => Outcome::Failed(format!("HTTP {status}: {message}")),
                        Action::Split => Outcome::Split(message),
                        Action::Bisect => Outcome::Bisect(message),
                        Action::Pause => Outcome::Pause(status, message),
                        Action::Done => Outcome::Done(status),
                        Action::Fallback if v2 => {
                            self.fall_back(status, &message);
                            return None;
                        }
                        Action::Fallback | Action::Drop => Outcome::Refused(status, message),
                    },
                    other => Outcome::Failed(other.to_string()),
                },
                Err(e) => Outcome::Failed(e.to_string()),
            },
        })
    }

    fn fall_back(&self, status: u16, message: &str) {
        if self.v2.swap(false, Ordering::Relaxed) {
            warn!(destination = %self.name, status, message,
                "Destination does not take remote write 2.0; sending 1.0 from now on.");
            self.metrics
                .protocol
                .get_or_create(&labels(&[("destination", &self.name)]))
                .set(1);
        }
    }

    /// Counts samples this destination accepted.
    pub fn forwarded(&self, samples: u64) {
        self.metrics
            .samples_forwarded
            .get_or_create(&labels(&[("destination", &self.name)]))
            .inc_by(samples);
    }

    /// Logs and counts samples dropped for this destination, by `reason`.
    pub fn dropped(&self, samples: u64, reason: &str, error: &str) {
        self.metrics
            .samples_dropped
            .get_or_create(&labels(&[("destination", &self.name), ("reason", reason)]))
            .inc_by(samples);
        warn!(%error, destination = %self.name, samples, reason,
            "Samples dropped for this destination.");
    }

    /// Sets the paused gauge, logging the change.
    ///
    /// Concurrent requests (shards) pause and resume on their own; the destination counts as
    /// paused while any of them is, so `Some` and `None` come in pairs from each request.
    pub fn set_paused(&self, paused: Option<(u16, &str)>) {
        let g = self
            .metrics
            .paused
            .get_or_create(&labels(&[("destination", &self.name)]));
        match paused {
            Some((status, message)) => {
                if self.pauses.fetch_add(1, Ordering::SeqCst) == 0 {
                    g.set(1);
                    tracing::error!(destination = %self.name, status, message,
                        "Destination refuses our credentials; paused, data stays queued.");
                }
            }
            None => {
                if self.pauses.fetch_sub(1, Ordering::SeqCst) == 1 {
                    g.set(0);
                    info!(destination = %self.name, "Destination resumed.");
                }
            }
        }
    }
}

/// A 1.0 request cannot make a destination fall back; should it be reported anyway, the data
/// is kept and tried again later.
fn fallen_back_twice() -> Outcome {
    Outcome::Failed("fallback reported for a remote write 1.0 request".into())
}

/// Encodes series and metadata as an uncompressed 1.0 `WriteRequest`: its series are
/// repeated field 1, its metadata field 3, encoded in place.
fn encode_raw(series: &[TimeSeries], metadata: &[MetricMetadata], raw: &mut Vec<u8>) {
    let len: usize = series
        .iter()
        .map(|t| prost::encoding::message::encoded_len(1, t))
        .sum();
    raw.reserve(len);
    for t in series {
        prost::encoding::message::encode(1, t, raw);
    }
    for m in metadata {
        prost::encoding::message::encode(3, m, raw);
    }
}

/// Encodes series as a snappy 1.0 `WriteRequest` or 2.0 `Request`, without metadata.
pub fn encode(series: &[TimeSeries], v2: bool) -> Bytes {
    let mut raw = Vec::new();
    encode_raw(series, &[], &mut raw);
    if v2 {
        // The bytes were just encoded from valid messages.
        raw = remote_write::v2::from_v1_bytes(&raw).unwrap_or_default();
    }
    Bytes::from(
        snap::raw::Encoder::new()
            .compress_vec(&raw)
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_and_overrides() {
        let mut cfg: RemoteWriteConfig =
            serde_yaml::from_str("url: http://x/api/v1/write").expect("valid");
        let p = StatusPolicy::new(&cfg);
        let table = [
            (500, false, Action::Retry),
            (503, true, Action::Retry),
            (429, false, Action::Retry),
            (400, false, Action::Bisect),
            (413, false, Action::Split),
            (401, false, Action::Pause),
            (403, true, Action::Pause),
            (409, false, Action::Done),
            (415, true, Action::Fallback),
            (415, false, Action::Drop),
            (404, false, Action::Drop),
        ];
        for (status, v2, want) in table {
            assert_eq!(p.action(status, v2), want, "{status} v2={v2}");
        }
        cfg.queue_config.retry_on_http_429 = false;
        cfg.status_policy = [("404".into(), Action::Pause), ("5xx".into(), Action::Drop)]
            .into_iter()
            .collect();
        let p = StatusPolicy::new(&cfg);
        assert_eq!(p.action(429, false), Action::Drop);
        assert_eq!(p.action(404, false), Action::Pause);
        assert_eq!(p.action(502, false), Action::Drop);
        assert_eq!(StatusPolicy::parse_key("4XX"), Some((false, 4)));
        assert_eq!(StatusPolicy::parse_key("200"), None);
        assert_eq!(StatusPolicy::parse_key("abc"), None);
    }

    #[test]
    fn encodes_like_the_message_types() {
        use uplink_shared::remote_write::{Label, Sample};
        let series: Vec<TimeSeries> = (0..3)
            .map(|i| TimeSeries {
                labels: vec![Label::new("__name__", "m"), Label::new("i", i.to_string())],
                samples: vec![Sample {
                    value: f64::from(i),
                    timestamp: 5,
                }],
                ..Default::default()
            })
            .collect();
        let v1 = remote_write::WriteRequest {
            timeseries: series.clone(),
            metadata: vec![],
        };
        assert_eq!(encode(&series, false), remote_write::encode_snappy(&v1));
        let back: remote_write::v2::Request =
            remote_write::decode_snappy(&encode(&series, true), 1 << 20).expect("2.0 decodes");
        assert_eq!(back, remote_write::v2::from_v1(&series));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("99999"), Some(MAX_RETRY_AFTER));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60));
        let d = parse_retry_after(&later).expect("date");
        assert!(
            d > Duration::from_secs(55) && d <= Duration::from_secs(60),
            "{d:?}"
        );
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(60));
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
