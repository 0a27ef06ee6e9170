//! OTLP traces: Prometheus's `tracing:` configuration section, an exporter that a reload can
//! replace, and the bridge between `tracing` spans and the tunnel's [`TraceContext`].
//!
//! # What is traced
//! Only spans named `uplink.*` become OpenTelemetry spans (plus the warnings and errors logged
//! inside them, as span events); the spans that scope log lines (`session`, a scrape's target)
//! do not. A batch's journey is one trace:
//! - `uplink.agent.ship` (agent, root): from sending a batch to its ack. Its context travels
//!   with the batch ([`crate::wire::Batch::trace`]) when it is sampled.
//! - `uplink.gateway.ingest` (gateway, child of the agent's span): from receiving the batch
//!   to answering it; `uplink.gateway.dedupe` below it (recognising retransmitted records and
//!   the durable commit). The ingest span's context is stored with the entry.
//! - `uplink.gateway.write` (gateway, one per destination and read): delivering stored entries
//!   to one destination; child of the first traced entry it carries, linked to the others.
//!
//! # Configuration
//! Prometheus's `tracing:` section (`client_type`, `endpoint`, `sampling_fraction`,
//! `insecure`, `headers`, `compression`, `timeout`, `tls_config`), read by both binaries.
//! Differences, chosen for these deployments:
//! - `client_type: http` exports OTLP/HTTP protobuf to `<endpoint>/v1/traces` (`http://` when
//!   `insecure`, else `https://`; an endpoint with a scheme is taken as the base URL). The
//!   default `grpc` is not built in (it would double the agent's HTTP stack): the section is
//!   then accepted, a warning says so, and tracing stays off.
//! - Sampling is parent-based: a span whose parent was sampled (the gateway's spans under an
//!   agent's) is sampled whatever the local `sampling_fraction`; root spans are sampled with
//!   that fraction (Prometheus's default 0: configure it on the agents).
//!
//! # Invariants
//! - Without an endpoint nothing is sampled and nothing is sent; the layer stays installed,
//!   so a reload can turn tracing on or off ([`Traces::apply`]).
//! - A changed section builds a new exporter first; only if that succeeds is it swapped in,
//!   and the old one is flushed. An invalid section keeps the old one.
//! - [`Traces::shutdown`] flushes what is buffered; binaries call it last, after every task
//!   that makes spans has ended.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample, Span,
    SpanData, SpanProcessor,
};
use serde::Deserialize;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::duration::PromDuration;
use crate::http_client::{HttpClient, HttpClientConfig, TlsConfig};
pub use crate::wire::TraceContext;

/// Prometheus's `tracing:` section.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    #[serde(default)]
    pub client_type: ClientType,
    /// `host:port` (or a base URL); empty: tracing off.
    #[serde(default)]
    pub endpoint: String,
    /// Fraction of root spans sampled, 0 to 1.
    #[serde(default)]
    pub sampling_fraction: f64,
    /// Plain HTTP instead of HTTPS.
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub headers: HashMap<String, String>,
    /// `gzip`, or none.
    #[serde(default)]
    pub compression: Option<String>,
    /// Per export request; 10s when unset.
    #[serde(default)]
    pub timeout: Option<PromDuration>,
    #[serde(default)]
    pub tls_config: TlsConfig,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientType {
    #[default]
    Grpc,
    Http,
}

/// Why a `tracing:` section cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    #[error("sampling_fraction {0} is not between 0 and 1")]
    Fraction(f64),
    #[error("invalid compression {0:?} (valid: gzip)")]
    Compression(String),
    #[error("invalid header {0:?}")]
    Header(String),
    #[error("{0}")]
    Client(#[from] crate::http_client::HttpClientError),
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

impl TracesError {
    /// The `tracing:` field at fault, for the error's location.
    pub fn field(&self) -> &'static str {
        match self {
            TracesError::Fraction(_) => "sampling_fraction",
            TracesError::Compression(_) => "compression",
            TracesError::Header(_) => "headers",
            TracesError::Client(_) => "tls_config",
            TracesError::Exporter(_) => "endpoint",
        }
    }
}

impl TracingConfig {
    /// Checks what can be checked without I/O (used by `--check-config` and at load).
    pub fn validate(&self) -> Result<(), TracesError> {
        if !(0.0..=1.0).contains(&self.sampling_fraction) {
            return Err(TracesError::Fraction(self.sampling_fraction));
        }
        match self.compression.as_deref() {
            None | Some("") | Some("gzip") => {}
            Some(other) => return Err(TracesError::Compression(other.to_owned())),
        }
        for (k, v) in &self.headers {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err()
                || http::HeaderValue::from_str(v).is_err()
            {
                return Err(TracesError::Header(k.clone()));
            }
        }
        HttpClientConfig {
            tls_config: self.tls_config.clone(),
            ..HttpClientConfig::default()
        }
        .validate()?;
        Ok(())
    }

    /// Makes `tls_config` paths relative to the configuration file's directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        let mut c = HttpClientConfig {
            tls_config: std::mem::take(&mut self.tls_config),
            ..HttpClientConfig::default()
        };
        c.resolve(base);
        self.tls_config = c.tls_config;
    }

    /// Whether this section exports anything.
    pub fn enabled(&self) -> bool {
        !self.endpoint.is_empty() && self.client_type == ClientType::Http
    }

    /// The URL spans are posted to.
    pub fn url(&self) -> String {
        let base = if self.endpoint.contains("://") {
            self.endpoint.trim_end_matches('/').to_owned()
        } else {
            let scheme = if self.insecure { "http" } else { "https" };
            format!("{scheme}://{}", self.endpoint.trim_end_matches('/'))
        };
        format!("{base}/v1/traces")
    }
}

/// The process's tracing pipeline: install [`Traces::layer`] once, then [`Traces::apply`] the
/// configuration at start and on every reload.
#[derive(Clone)]
pub struct Traces {
    provider: SdkTracerProvider,
    processor: Arc<Swap>,
    /// `f64` bits of the root sampling fraction; `NaN` bits when off.
    fraction: Arc<AtomicU64>,
    current: Arc<Mutex<Option<TracingConfig>>>,
    service: &'static str,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

const OFF: u64 = u64::MAX;

impl Traces {
    /// A pipeline for `service` (`uplink-agent`, `uplink-gateway`), off until configured.
    pub fn new(service: &'static str) -> Traces {
        let processor = Arc::new(Swap::default());
        let fraction = Arc::new(AtomicU64::new(OFF));
        let provider = SdkTracerProvider::builder()
            .with_resource(resource(service))
            .with_sampler(Sampler(fraction.clone()))
            .with_span_processor(Shared(processor.clone()))
            .build();
        Traces {
            provider,
            processor,
            fraction,
            current: Arc::default(),
            service,
        }
    }

    /// The `tracing` layer that turns `uplink.*` spans into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let tracer = self.provider.tracer(self.service);
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                if m.is_span() {
                    m.name().starts_with("uplink.")
                } else {
                    *m.level() <= tracing::Level::WARN
                }
            }))
    }

    /// Applies a `tracing:` section (or its absence): an unchanged section is left alone, a
    /// changed one gets a new exporter, swapped in once built. Must run inside the runtime.
    pub fn apply(&self, cfg: Option<&TracingConfig>) -> Result<(), TracesError> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref() == cfg {
            return Ok(());
        }
        let new = match cfg {
            Some(c) if c.enabled() => {
                c.validate()?;
                Some(build_processor(c, self.service)?)
            }
            Some(c) => {
                c.validate()?;
                if !c.endpoint.is_empty() {
                    tracing::warn!(
                        "tracing: client_type grpc is not supported; set client_type: http \
                         (OTLP/HTTP, the Collector's port 4318). Tracing stays off."
                    );
                }
                None
            }
            None => None,
        };
        let fraction = match (&new, cfg) {
            (Some(_), Some(c)) => c.sampling_fraction.to_bits(),
            _ => OFF,
        };
        let enabled = new.is_some();
        let old = self.processor.replace(new);
        self.fraction.store(fraction, Ordering::Relaxed);
        if let Some(old) = old {
            // Flushing blocks on the exporter thread: not on a runtime worker.
            std::thread::spawn(move || {
                let _ = old.shutdown_with_timeout(Duration::from_secs(5));
            });
        }
        if let Some(c) = cfg.filter(|_| enabled) {
            tracing::info!(url = %c.url(), sampling_fraction = c.sampling_fraction, "Exporting traces.");
        }
        *current = cfg.cloned();
        Ok(())
    }

    /// Flushes buffered spans and stops the exporter (at most `timeout`). Call it last.
    pub fn shutdown(&self, timeout: Duration) {
        if let Some(old) = self.processor.replace(None) {
            let _ = old.shutdown_with_timeout(timeout);
        }
    }
}

/// The tunnel's context of `span`, when it is sampled (else nothing travels).
pub fn context_of(span: &tracing::Span) -> Option<TraceContext> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    (sc.is_valid() && sc.is_sampled()).then(|| TraceContext {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8(),
    })
}

/// Makes `span` (not yet entered) a child of the remote span `parent`.
pub fn set_parent(span: &tracing::Span, parent: TraceContext) {
    let cx = Context::new().with_remote_span_context(span_context(parent));
    let _ = span.set_parent(cx);
}

/// Links `span` to `other` (a batch it carries besides its parent's).
pub fn add_link(span: &tracing::Span, other: TraceContext) {
    span.add_link(span_context(other));
}

fn span_context(t: TraceContext) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(t.trace_id),
        SpanId::from_bytes(t.span_id),
        TraceFlags::new(t.flags),
        true,
        TraceState::default(),
    )
}

/// Parent-based sampling with a root fraction that [`Traces::apply`] changes; all off when the
/// fraction is [`OFF`].
#[derive(Clone, Debug)]
struct Sampler(Arc<AtomicU64>);

impl ShouldSample for Sampler {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        kind: &opentelemetry::trace::SpanKind,
        attributes: &[KeyValue],
        links: &[opentelemetry::trace::Link],
    ) -> SamplingResult {
        let bits = self.0.load(Ordering::Relaxed);
        if bits == OFF {
            return SamplingResult {
                decision: SamplingDecision::Drop,
                attributes: Vec::new(),
                trace_state: TraceState::default(),
            };
        }
        // The SDK's own parent-based ratio sampler, at the fraction of the moment.
        opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
            opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(f64::from_bits(bits)),
        ))
        .should_sample(parent, trace_id, name, kind, attributes, links)
    }
}

/// The exporting processor, replaceable while spans keep ending.
#[derive(Debug, Default)]
struct Swap(RwLock<Option<Arc<BatchSpanProcessor>>>);

impl Swap {
    fn replace(&self, new: Option<BatchSpanProcessor>) -> Option<Arc<BatchSpanProcessor>> {
        let mut g = self.0.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *g, new.map(Arc::new))
    }
    fn get(&self) -> Option<Arc<BatchSpanProcessor>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[derive(Debug)]
struct Shared(Arc<Swap>);

impl SpanProcessor for Shared {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        if let Some(p) = self.0.get() {
            p.on_start(span, cx);
        }
    }
    fn on_end(&self, span: SpanData) {
        if let Some(p) = self.0.get() {
            p.on_end(span);
        }
    }
    fn force_flush(&self) -> OTelSdkResult {
        match self.0.get() {
            Some(p) => p.force_flush(),
            None => Ok(()),
        }
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        match self.0.get() {
            Some(p) => p.shutdown_with_timeout(timeout),
            None => Ok(()),
        }
    }
}

fn build_processor(c: &TracingConfig, service: &str) -> Result<BatchSpanProcessor, TracesError> {
    let client = HttpClient::new(
        &HttpClientConfig {
            tls_config: c.tls_config.clone(),
            compression: false,
            ..HttpClientConfig::default()
        },
        &format!("{service}/{}", env!("CARGO_PKG_VERSION")),
    )?;
    let mut b = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Exporter {
            client,
            runtime: tokio::runtime::Handle::current(),
        })
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(c.url())
        .with_timeout(c.timeout.map_or(Duration::from_secs(10), |d| d.0))
        .with_headers(c.headers.clone());
    if c.compression.as_deref() == Some("gzip") {
        b = b.with_compression(opentelemetry_otlp::Compression::Gzip);
    }
    let exporter = b
        .build()
        .map_err(|e| TracesError::Exporter(e.to_string()))?;
    let mut p = BatchSpanProcessor::builder(exporter).build();
    // The provider hands its resource to its own processor only (`Shared`), not to this one.
    p.set_resource(&resource(service));
    Ok(p)
}

fn resource(service: &str) -> Resource {
    Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", service.to_owned()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build()
}

/// The exporter's HTTP client: the shared Prometheus HTTP client (its TLS settings), run on
/// the binary's runtime from the processor's own thread.
#[derive(Debug)]
struct Exporter {
    client: HttpClient,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Exporter {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let url = reqwest::Url::parse(&parts.uri.to_string())?;
            let resp = client
                .post(url)
                .await?
                .headers(parts.headers)
                .body(body)
                .send()
                .await?;
            let mut out = http::Response::builder().status(resp.status());
            for (k, v) in resp.headers() {
                out = out.header(k, v);
            }
            // Bounded: an OTLP answer is a small status message.
            let mut body = Vec::new();
            let mut resp = resp;
            while let Some(chunk) = resp.chunk().await? {
                if body.len() + chunk.len() > 1 << 20 {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, opentelemetry_http::HttpError>(out.body(Bytes::from(body))?)
        });
        task.await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_and_validation() {
        let mut c = TracingConfig {
            client_type: ClientType::Http,
            endpoint: "otel:4318".into(),
            insecure: true,
            sampling_fraction: 0.5,
            ..TracingConfig::default()
        };
        assert_eq!(c.url(), "http://otel:4318/v1/traces");
        assert!(c.enabled());
        c.insecure = false;
        assert_eq!(c.url(), "https://otel:4318/v1/traces");
        c.endpoint = "http://collector:4318/".into();
        assert_eq!(c.url(), "http://collector:4318/v1/traces");
        assert!(c.validate().is_ok());
        c.sampling_fraction = 1.5;
        assert!(matches!(c.validate(), Err(TracesError::Fraction(_))));
        c.sampling_fraction = 1.0;
        c.compression = Some("zstd".into());
        assert!(matches!(c.validate(), Err(TracesError::Compression(_))));
        c.compression = None;
        c.client_type = ClientType::Grpc;
        assert!(!c.enabled());
    }

    #[test]
    fn sampling_follows_the_parent_and_the_fraction() {
        let s = Sampler(Arc::new(AtomicU64::new(OFF)));
        let kind = opentelemetry::trace::SpanKind::Internal;
        let id = TraceId::from_bytes([0xff; 16]);
        let decide = |s: &Sampler, parent: Option<&Context>| {
            s.should_sample(parent, id, "x", &kind, &[], &[]).decision
        };
        assert_eq!(decide(&s, None), SamplingDecision::Drop);
        let sampled = Context::new().with_remote_span_context(span_context(TraceContext {
            trace_id: [1; 16],
            span_id: [2; 8],
            flags: 1,
        }));
        // Off means off, even under a sampled parent.
        assert_eq!(decide(&s, Some(&sampled)), SamplingDecision::Drop);
        s.0.store(0f64.to_bits(), Ordering::Relaxed);
        assert_eq!(decide(&s, None), SamplingDecision::Drop);
        assert_eq!(
            decide(&s, Some(&sampled)),
            SamplingDecision::RecordAndSample
        );
        s.0.store(1f64.to_bits(), Ordering::Relaxed);
        assert_eq!(decide(&s, None), SamplingDecision::RecordAndSample);
        let unsampled = Context::new().with_remote_span_context(span_context(TraceContext {
            trace_id: [1; 16],
            span_id: [2; 8],
            flags: 0,
        }));
        assert_eq!(decide(&s, Some(&unsampled)), SamplingDecision::Drop);
    }
}
