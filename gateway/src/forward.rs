//! Remote-write forwarding: the only module that builds HTTP requests.
//!
//! Each destination gets one tower stack (built in [`Destination::new`], outermost first):
//! retry with exponential backoff (only errors that say [`ForwardError::is_retryable`], until the
//! request's retry budget `limits.max_retry_duration` is spent), then a per-attempt timeout
//! (`remote_timeout`), then the HTTP call. A request is done when the destination accepted it
//! (2xx) or refused it permanently (4xx other than 429; the caller logs the receiver's message
//! and counts what it drops with reason `refused`, so one bad request cannot jam the queue behind
//! it). Callers: the per-destination forwarders (`fanout.rs`) and the ledger writer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{
    CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, USER_AGENT,
};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tracing::warn;
use uplink_shared::remote_write;

use crate::config::RemoteWriteConfig;
use crate::metrics::{Metrics, labels};

/// Why a remote-write attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The receiver answered with a non-2xx status.
    #[error("HTTP {status}: {message}")]
    Status {
        status: u16,
        message: String,
        retry_429: bool,
    },
    /// The request could not be sent or the response not read.
    #[error("request: {0}")]
    Request(#[from] reqwest::Error),
    /// The destination's client could not be built from its configuration.
    #[error("client: {0}")]
    Setup(String),
}

impl ForwardError {
    /// 5xx, 429 (when configured) and transport errors are worth retrying.
    pub fn is_retryable(&self) -> bool {
        match self {
            ForwardError::Status {
                status, retry_429, ..
            } => *status >= 500 || (*status == 429 && *retry_429),
            ForwardError::Request(_) => true,
            ForwardError::Setup(_) => false,
        }
    }
}

fn retryable(e: &BoxError) -> bool {
    if let Some(f) = e.downcast_ref::<ForwardError>() {
        f.is_retryable()
    } else {
        // Timeouts (tower's Elapsed) and anything else transient.
        true
    }
}

/// The innermost service: one HTTP POST of an encoded remote-write body.
#[derive(Clone)]
struct RemoteWrite {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    auth: Option<(String, Option<String>)>,
    retry_429: bool,
    name: Arc<str>,
    metrics: Metrics,
}

impl Service<Bytes> for RemoteWrite {
    type Response = ();
    type Error = ForwardError;
    type Future = Pin<Box<dyn Future<Output = Result<(), ForwardError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, body: Bytes) -> Self::Future {
        let mut req = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .body(body);
        if let Some((user, pass)) = &self.auth {
            req = req.basic_auth(user, pass.as_ref());
        }
        let retry_429 = self.retry_429;
        let name = self.name.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let started = Instant::now();
            let result = req.send().await;
            metrics
                .request_duration
                .get_or_create(&labels(&[("destination", &name)]))
                .observe(started.elapsed().as_secs_f64());
            let resp = match result {
                Ok(r) => r,
                Err(e) => {
                    metrics
                        .requests
                        .get_or_create(&labels(&[("destination", &name), ("outcome", "error")]))
                        .inc();
                    return Err(e.into());
                }
            };
            let status = resp.status().as_u16();
            let class = match status {
                200..=299 => "2xx",
                400..=499 => "4xx",
                _ => "5xx",
            };
            metrics
                .requests
                .get_or_create(&labels(&[("destination", &name), ("outcome", class)]))
                .inc();
            if resp.status().is_success() {
                return Ok(());
            }
            let mut message = resp.text().await.unwrap_or_default();
            message.truncate(512);
            Err(ForwardError::Status {
                status,
                message: message.trim().to_owned(),
                retry_429,
            })
        })
    }
}

/// Retry policy: exponential backoff from `min` to `max`, while within `budget` of the first
/// failure.
#[derive(Clone)]
struct Backoff {
    max: Duration,
    budget: Duration,
    next: Duration,
    first_failure: Option<Instant>,
}

impl tower::retry::Policy<Bytes, (), BoxError> for Backoff {
    type Future = tokio::time::Sleep;

    fn retry(&mut self, _: &mut Bytes, result: &mut Result<(), BoxError>) -> Option<Self::Future> {
        let err = result.as_ref().err()?;
        if !retryable(err) {
            return None;
        }
        let first = *self.first_failure.get_or_insert_with(Instant::now);
        if first.elapsed() >= self.budget {
            return None;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, req: &Bytes) -> Option<Bytes> {
        Some(req.clone())
    }
}

/// What happened to a batch at one destination.
#[derive(Debug)]
pub enum Delivery {
    Accepted,
    /// Refused permanently (4xx other than a retried 429). The caller decides what to drop and
    /// counts it with [`Destination::dropped`].
    Dropped(String),
    /// Still failing after the retry budget: the caller keeps the data and tries again later.
    Failed(String),
}

/// One configured destination and its stack.
#[derive(Clone)]
pub struct Destination {
    pub name: Arc<str>,
    svc: BoxCloneSyncService<Bytes, (), BoxError>,
    metrics: Metrics,
}

impl Destination {
    /// Builds the client and the one tower stack for this destination.
    pub fn new(
        cfg: &RemoteWriteConfig,
        retry_budget: Duration,
        metrics: Metrics,
    ) -> Result<Self, ForwardError> {
        let name: Arc<str> = cfg.display_name().into();
        let url = reqwest::Url::parse(&cfg.url).map_err(|e| ForwardError::Setup(e.to_string()))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_ENCODING,
            HeaderValue::from_static(remote_write::CONTENT_ENCODING),
        );
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(remote_write::CONTENT_TYPE),
        );
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("uplink-gateway/", env!("CARGO_PKG_VERSION"))),
        );
        headers.insert(
            "x-prometheus-remote-write-version",
            HeaderValue::from_static(remote_write::VERSION_1),
        );
        for (k, v) in &cfg.headers {
            let k =
                HeaderName::try_from(k.as_str()).map_err(|e| ForwardError::Setup(e.to_string()))?;
            let v = HeaderValue::try_from(v.as_str())
                .map_err(|e| ForwardError::Setup(e.to_string()))?;
            headers.insert(k, v);
        }
        let auth = match &cfg.basic_auth {
            None => None,
            Some(b) => {
                let pass = match (&b.password, &b.password_file) {
                    (Some(p), _) => Some(p.clone()),
                    (None, Some(f)) => Some(
                        std::fs::read_to_string(f)
                            .map_err(|e| ForwardError::Setup(format!("{}: {e}", f.display())))?
                            .trim_end()
                            .to_owned(),
                    ),
                    (None, None) => None,
                };
                Some((b.username.clone(), pass))
            }
        };
        let mut builder = reqwest::Client::builder().no_proxy();
        if let Some(t) = &cfg.tls_config {
            if let Some(ca) = &t.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| ForwardError::Setup(format!("{}: {e}", ca.display())))?;
                for c in reqwest::Certificate::from_pem_bundle(&pem)? {
                    builder = builder.add_root_certificate(c);
                }
            }
            if let (Some(c), Some(k)) = (&t.cert_file, &t.key_file) {
                let mut pem = std::fs::read(c)
                    .map_err(|e| ForwardError::Setup(format!("{}: {e}", c.display())))?;
                pem.extend(
                    std::fs::read(k)
                        .map_err(|e| ForwardError::Setup(format!("{}: {e}", k.display())))?,
                );
                builder = builder.identity(reqwest::Identity::from_pem(&pem)?);
            }
            builder = builder.danger_accept_invalid_certs(t.insecure_skip_verify);
        }
        let client = builder.build()?;
        let inner = RemoteWrite {
            client,
            url,
            headers,
            auth,
            retry_429: cfg.queue_config.retry_on_http_429,
            name: name.clone(),
            metrics: metrics.clone(),
        };
        let policy = Backoff {
            max: cfg.queue_config.max_backoff.0,
            budget: retry_budget,
            next: cfg.queue_config.min_backoff.0,
            first_failure: None,
        };
        let svc = ServiceBuilder::new()
            // Retry outermost: each attempt gets its own timeout, and only errors that say
            // they are retryable are retried, within the batch's budget.
            .retry(policy)
            // Per-attempt deadline, as Prometheus's remote_timeout.
            .timeout(cfg.remote_timeout.0)
            // Adapt the error type so retry and timeout see one error type.
            .map_err(BoxError::from)
            .service(inner);
        Ok(Destination {
            name,
            svc: BoxCloneSyncService::new(svc),
            metrics,
        })
    }

    /// Sends one encoded body (snappy-compressed remote-write 1.0) with retries.
    pub async fn deliver(&self, body: Bytes, samples: u64) -> Delivery {
        let d = labels(&[("destination", &self.name)]);
        match self.svc.clone().oneshot(body).await {
            Ok(()) => {
                self.metrics
                    .samples_forwarded
                    .get_or_create(&d)
                    .inc_by(samples);
                Delivery::Accepted
            }
            Err(e) if !retryable(&e) => Delivery::Dropped(e.to_string()),
            Err(e) => Delivery::Failed(e.to_string()),
        }
    }

    /// Logs and counts samples this destination refused permanently (`reason="refused"`).
    pub fn dropped(&self, samples: u64, error: &str) {
        self.metrics
            .samples_dropped
            .get_or_create(&labels(&[
                ("destination", &self.name),
                ("reason", "refused"),
            ]))
            .inc_by(samples);
        warn!(%error, destination = %self.name, samples,
            "Destination refused samples permanently; dropped.");
    }
}
