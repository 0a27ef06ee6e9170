//! An OTLP/HTTP trace receiver for tests (there is no OpenTelemetry Collector package here):
//! `POST /v1/traces` takes an `ExportTraceServiceRequest` in protobuf (gzip or not), as the
//! OTLP specification defines it, decodes it with the reference protobuf types, records every
//! span with its service, and answers an empty `ExportTraceServiceResponse`. Anything that
//! does not decode gets 400 and is counted.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One received span, ids in lowercase hex.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// Attribute values rendered as strings.
    pub attributes: BTreeMap<String, String>,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
}

#[derive(Default)]
struct Inner {
    spans: Vec<ReceivedSpan>,
    requests: u64,
    rejected: u64,
}

/// The running receiver; stops when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Binds `addr` and serves `POST /v1/traces`. Must run inside a Tokio runtime.
    pub async fn start(addr: SocketAddr) -> io::Result<OtlpReceiver> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/v1/traces", post(export))
            .layer(DefaultBodyLimit::max(16 << 20))
            .with_state(inner.clone());
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        });
        Ok(OtlpReceiver {
            addr,
            inner,
            cancel,
            task: Some(task),
        })
    }

    /// `host:port`, as Prometheus's `tracing.endpoint` takes it (with `insecure: true`).
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.lock().spans.clone()
    }

    /// (export requests accepted, requests refused as undecodable).
    pub fn requests(&self) -> (u64, u64) {
        let g = self.lock();
        (g.requests, g.rejected)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn export(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let decoded = decode(&headers, &body);
    let mut g = inner.lock().unwrap_or_else(|e| e.into_inner());
    match decoded {
        Ok(spans) => {
            g.requests += 1;
            g.spans.extend(spans);
            (
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                ExportTraceServiceResponse::default().encode_to_vec(),
            )
                .into_response()
        }
        Err(message) => {
            g.rejected += 1;
            (StatusCode::BAD_REQUEST, message).into_response()
        }
    }
}

fn decode(headers: &HeaderMap, body: &[u8]) -> Result<Vec<ReceivedSpan>, String> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type != "application/x-protobuf" {
        return Err(format!("unsupported content type {content_type:?}"));
    }
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let raw = if gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .map_err(|e| format!("gzip: {e}"))?;
        out
    } else {
        body.to_vec()
    };
    let req = ExportTraceServiceRequest::decode(raw.as_slice()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .map(render)
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    name: s.name,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    attributes: s
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), render(kv)))
                        .collect(),
                    links: s
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                });
            }
        }
    }
    Ok(out)
}

fn render(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v: &AnyValue| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
