//! The remote-write receiver (sidecar mode): `POST /api/v1/write` on the agent's web listener,
//! off unless the agent runs with `--web.enable-remote-write-receiver` (Prometheus's flag). An
//! existing Prometheus, Prometheus agent, vmagent or OpenTelemetry Collector remote-writes to
//! the agent, and its samples take the scrape path: queue, shipper, gateway.
//!
//! # Durability, and who deletes what
//! - A request is answered 2xx only after every sample it carried was appended to the queue,
//!   in one atomic write ([`Queue::append_many`]); from then on it is as durable as a scrape
//!   (per `uplink.queue.fsync`). A crash never keeps part of a request.
//! - If the append fails, the answer is 500 and nothing of the request is stored, so the
//!   sender's retry (remote-write senders retry 5xx) neither loses nor duplicates data.
//! - Once the agent is shutting down, requests are answered 503 and nothing is stored; the
//!   sender retries against the restarted agent.
//! - This module never deletes anything. Records leave the queue only through the shipper
//!   (after the gateway acknowledged them) or the retention budget (counted as dropped), and
//!   series sets through `Queue::gc_sets`: exactly as for scrapes.
//!
//! # What is stored
//! Float samples (stale markers bit-exact), native histogram samples, exemplars and metadata,
//! so they reach the gateway as a scrape's do:
//! - **Native histograms** are stored as extras of their record (see `uplink_shared::codec`).
//! - **Exemplars** go with their series' newest sample in the request; an exemplar of a series
//!   without any sample in the request cannot be placed and is counted
//!   (`uplink_agent_remote_write_dropped_total{kind="exemplar",reason="no_sample"}`).
//! - **Metadata**: each set carries the metadata of its series' families (2.0 sends it per
//!   series; 1.0 in the request's `metadata`). A 1.0 request with metadata and no series (what
//!   Prometheus sends every `metadata_config.send_interval`) becomes a record without series.
//! - **Invalid series** (empty or repeated label name, no `__name__`, bad 2.0 symbol
//!   reference, more labels or longer labels than the queue's series sets hold) are not
//!   stored: the valid series are queued, the answer is 400 naming the first problems (a
//!   partial write, which both specifications allow with 4xx; a 4xx is not retried, so the
//!   queued samples are not sent twice). For 2.0 the `*-Written` headers carry exact counts.
//!
//! A request invalid as a whole is refused before anything is stored: unsupported
//! `Content-Type` or `Content-Encoding` 415; body, decoded size or series count over the limits
//! ([`ReceiverConfig`]) 413; bad snappy or protobuf 400. 2.0 answers always carry the three
//! `*-Written` headers; success is 204 for both versions.
//!
//! # Records
//! Labels are sorted, empty values dropped, and the agent's `global.external_labels` added
//! where absent (as for scrapes; a reload updates them). Samples are then grouped by
//! timestamp: each distinct timestamp of a request becomes one queue record, its series set
//! being the request's series with a sample at that timestamp, sorted by labels. A sender
//! batches whole scrapes, whose samples share one timestamp, so a record is usually one
//! target's scrape (or the part of it in this request) and its set repeats from request to
//! request: the queue stores the labels once and then about 8 bytes per sample, as for the
//! agent's own scrapes, with no per-sample timestamps. Records go into the queue in timestamp
//! order, which keeps each series' samples in order. A sender whose every sample has its own
//! timestamp costs one small record per sample; raise `uplink.shipper.max_batch_records` if
//! it sends many.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uplink_shared::codec::{self, Extra, ScrapeRecord, SeriesSet};
use uplink_shared::model::{self, Label, Sample};
use uplink_shared::remote_write::receive::{self as rw, Proto, RequestError, Unsupported};
use uplink_shared::remote_write::{DecodeError, Exemplar, Histogram, MetricMetadata};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::queue::{Queue, QueueError, SetUse};

/// The path senders write to, as on Prometheus.
pub const PATH: &str = "/api/v1/write";

/// How many problems a 400 answer describes.
const MAX_PROBLEMS: usize = 3;

/// The optional `uplink.remote_write_receiver:` section: limits per request. A request over
/// a limit is refused whole with 413, which senders do not retry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverConfig {
    /// Largest request body (snappy-compressed), in bytes. Default 16 MiB: remote-write bodies
    /// compress 4-10 times, so this admits any request within `max_decoded_bytes`.
    pub max_body_bytes: NonZeroU32,
    /// Largest decoded (uncompressed) protobuf, in bytes, checked before decompressing.
    /// Default 32 MiB: four times vmagent's largest block (8 MiB), about a hundred times a
    /// Prometheus batch; it bounds the receiver's memory per request.
    pub max_decoded_bytes: NonZeroU32,
    /// Most series in one request, counted before they are decoded. Default 100 000 (Prometheus
    /// sends at most `max_samples_per_send`, 2000 by default; vmagent 10 000 samples per block).
    pub max_series_per_request: NonZeroU32,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        let n = |v| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        ReceiverConfig {
            max_body_bytes: n(16 << 20),
            max_decoded_bytes: n(32 << 20),
            max_series_per_request: n(100_000),
        }
    }
}

/// Why a request was not written, or not wholly.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The agent is stopping (503).
    #[error("the agent is shutting down; retry later")]
    ShuttingDown,
    /// Content-Type or Content-Encoding not supported (415).
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    /// The body exceeds `max_body_bytes` (413).
    #[error("request body exceeds max_body_bytes ({0} bytes)")]
    BodyTooLarge(u32),
    /// The body could not be read (400).
    #[error("reading the request body: {0}")]
    Body(String),
    /// The body is malformed (400) or over a decoding limit (413).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Part of the request was not written: native histograms, invalid series (400). The rest
    /// was queued.
    #[error("{0}")]
    NotWritten(String),
    /// The queue append failed; nothing was stored (500, the sender retries).
    #[error("appending to the queue failed: {0}")]
    Queue(#[from] QueueError),
}

impl ReceiveError {
    /// The HTTP status answered for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ReceiveError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ReceiveError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ReceiveError::BodyTooLarge(_)
            | ReceiveError::Request(RequestError::TooManySeries { .. })
            | ReceiveError::Request(RequestError::Decode(DecodeError::TooLarge { .. })) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ReceiveError::Body(_) | ReceiveError::Request(_) | ReceiveError::NotWritten(_) => {
                StatusCode::BAD_REQUEST
            }
            ReceiveError::Queue(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// What one request wrote: the 2.0 `*-Written` header values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub samples: u64,
    pub histograms: u64,
    pub exemplars: u64,
}

/// The receiver; cheap to clone. Serve it with [`Receiver::router`].
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
}

struct Inner {
    limits: ReceiverConfig,
    queue: Queue,
    metrics: Metrics,
    external_labels: RwLock<Arc<[Label]>>,
    stop: CancellationToken,
}

fn external_labels(cfg: &Config) -> Arc<[Label]> {
    cfg.global
        .external_labels
        .iter()
        .map(|(k, v)| Label::new(k.clone(), v.clone()))
        .collect()
}

impl Receiver {
    /// A receiver appending to `queue` with `cfg`'s limits and external labels. Once `stop` is
    /// cancelled it answers 503.
    pub fn new(cfg: &Config, queue: Queue, metrics: Metrics, stop: CancellationToken) -> Self {
        Receiver {
            inner: Arc::new(Inner {
                limits: cfg.uplink.remote_write_receiver.clone(),
                queue,
                metrics,
                external_labels: RwLock::new(external_labels(cfg)),
                stop,
            }),
        }
    }

    /// Applies a reloaded configuration's external labels. (Limits are part of the `uplink:`
    /// section, which needs a restart.)
    pub fn reload(&self, cfg: &Config) {
        *self
            .inner
            .external_labels
            .write()
            .unwrap_or_else(|p| p.into_inner()) = external_labels(cfg);
    }

    /// `POST /api/v1/write`, with the body limit, to merge into the web router.
    pub fn router(&self) -> Router {
        let max_body = self.inner.limits.max_body_bytes.get() as usize;
        Router::new()
            .route(PATH, post(write))
            .layer(DefaultBodyLimit::max(max_body))
            .with_state(self.clone())
    }

    fn external(&self) -> Arc<[Label]> {
        self.inner
            .external_labels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Handles one request up to the point of answering it.
    async fn handle(
        &self,
        req: Request,
        proto: &mut Option<Proto>,
        written: &mut Written,
    ) -> Result<(), ReceiveError> {
        if self.inner.stop.is_cancelled() {
            return Err(ReceiveError::ShuttingDown);
        }
        let p = rw::negotiate(
            header(req.headers(), header::CONTENT_TYPE).as_deref(),
            header(req.headers(), header::CONTENT_ENCODING).as_deref(),
        )?;
        *proto = Some(p);
        let body = Bytes::from_request(req, &()).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ReceiveError::BodyTooLarge(self.inner.limits.max_body_bytes.get())
            } else {
                ReceiveError::Body(rejection.body_text())
            }
        })?;
        self.ingest(p, &body, written).await
    }

    /// Decodes a snappy-compressed `proto` body and appends its float samples to the queue;
    /// `written` receives what was queued. See the module docs for the outcomes.
    pub async fn ingest(
        &self,
        proto: Proto,
        body: &[u8],
        written: &mut Written,
    ) -> Result<(), ReceiveError> {
        let limits = rw::Limits {
            max_decoded_bytes: self.inner.limits.max_decoded_bytes.get() as usize,
            max_series: self.inner.limits.max_series_per_request.get() as usize,
        };
        let (series, metadata) = rw::decode_with_metadata(proto, body, limits)?;
        let prepared = prepare(series, metadata, &self.external());
        if let Err(e) = self.inner.queue.append_many(prepared.batch()).await {
            self.inner.metrics.queue_append_errors.inc();
            return Err(e.into());
        }
        *written = prepared.written;
        self.count_queued(&prepared);
        match prepared.not_written() {
            None => Ok(()),
            Some(message) => Err(ReceiveError::NotWritten(message)),
        }
    }

    /// Metrics for a request whose records were appended.
    fn count_queued(&self, prepared: &Prepared) {
        let m = &self.inner.metrics;
        let w = prepared.written;
        m.samples_queued.inc_by(w.samples + w.histograms);
        m.remote_write_samples.inc_by(w.samples + w.histograms);
        let (records, bytes) = self.inner.queue.usage();
        m.queue_records.set(records as i64);
        m.queue_bytes.set(bytes as i64);
        for ((kind, reason), n) in &prepared.dropped {
            m.remote_write_dropped
                .get_or_create(&vec![
                    ("kind".to_owned(), (*kind).to_owned()),
                    ("reason".to_owned(), (*reason).to_owned()),
                ])
                .inc_by(*n);
        }
    }

    /// Turns the outcome into the answer, counting it.
    fn respond(
        &self,
        proto: Option<Proto>,
        written: Written,
        result: Result<(), ReceiveError>,
    ) -> Response {
        let status = result
            .as_ref()
            .err()
            .map_or(StatusCode::NO_CONTENT, ReceiveError::status);
        self.inner
            .metrics
            .remote_write_requests
            .get_or_create(&vec![("code".to_owned(), status.as_u16().to_string())])
            .inc();
        let mut resp = match &result {
            Ok(()) => status.into_response(),
            Err(error) => {
                if status.is_server_error() {
                    warn!(%error, "Remote-write request failed; the sender will retry.");
                } else {
                    debug!(%error, status = status.as_u16(), "Remote-write request refused.");
                }
                (status, format!("{error}\n")).into_response()
            }
        };
        if proto == Some(Proto::V2) {
            let h = resp.headers_mut();
            for (name, n) in [
                (rw::SAMPLES_WRITTEN, written.samples),
                (rw::HISTOGRAMS_WRITTEN, written.histograms),
                (rw::EXEMPLARS_WRITTEN, written.exemplars),
            ] {
                h.insert(name, HeaderValue::from(n));
            }
        }
        resp
    }
}

/// A header's value; a non-ASCII one is kept as unrecognisable rather than dropped.
fn header(h: &HeaderMap, name: header::HeaderName) -> Option<String> {
    h.get(name)
        .map(|v| v.to_str().unwrap_or("(not ASCII)").to_owned())
}

async fn write(State(r): State<Receiver>, req: Request) -> Response {
    let (mut proto, mut written) = (None, Written::default());
    let result = r.handle(req, &mut proto, &mut written).await;
    r.respond(proto, written, result)
}

/// A request as queue records, and what of it cannot be written.
#[derive(Debug, Default)]
struct Prepared {
    records: Vec<(SeriesSet, ScrapeRecord)>,
    /// What the records hold.
    written: Written,
    /// Items not written, by (kind, reason).
    dropped: BTreeMap<(&'static str, &'static str), u64>,
    invalid_series: u64,
    /// The first problems, described.
    problems: Vec<String>,
}

impl Prepared {
    /// The records with their set definitions, for one atomic append. Every definition is
    /// supplied; the queue skips those it already stores.
    fn batch(&self) -> Vec<(Bytes, Option<SetUse>)> {
        self.records
            .iter()
            .map(|(set, rec)| {
                let set_use = SetUse {
                    id: rec.set_id,
                    def: Some(set.encode()),
                };
                (rec.encode(), Some(set_use))
            })
            .collect()
    }

    fn drop_items(&mut self, kind: &'static str, reason: &'static str, n: u64) {
        if n > 0 {
            *self.dropped.entry((kind, reason)).or_default() += n;
        }
    }

    fn dropped(&self, kind: &'static str, reason: &'static str) -> u64 {
        self.dropped.get(&(kind, reason)).copied().unwrap_or(0)
    }

    /// The 400 message when invalid series were not written; `None` otherwise.
    fn not_written(&self) -> Option<String> {
        if self.invalid_series == 0 {
            return None;
        }
        Some(format!(
            "wrote {} samples and {} histogram samples; not written: {} samples and {} \
             histogram samples of {} invalid series ({})",
            self.written.samples,
            self.written.histograms,
            self.dropped("sample", "invalid"),
            self.dropped("histogram", "invalid"),
            self.invalid_series,
            self.problems.join("; ")
        ))
    }
}

/// A valid received series.
struct Valid {
    labels: Vec<Label>,
    samples: Vec<Sample>,
    histograms: Vec<Histogram>,
    exemplars: Vec<Exemplar>,
    family: Option<String>,
    created: i64,
}

/// Validates series against the queue's limits, adds external labels, and groups the samples
/// by timestamp into records (see the module docs).
fn prepare(series: Vec<rw::Series>, metadata: Vec<MetricMetadata>, ext: &[Label]) -> Prepared {
    let mut out = Prepared::default();
    let mut families: BTreeMap<String, MetricMetadata> = metadata
        .into_iter()
        .map(|m| (m.metric_family_name.clone(), m))
        .collect();
    let mut valid: Vec<Valid> = Vec::with_capacity(series.len());
    for s in series {
        let labels = s.labels.and_then(|mut labels| {
            crate::scrape::shape::add_external(&mut labels, ext);
            fits_queue(&labels).map(|()| labels)
        });
        match labels {
            Ok(labels) => {
                let family = s.metadata.map(|m| {
                    let name = m.metric_family_name.clone();
                    families.insert(name.clone(), m);
                    name
                });
                if s.samples.is_empty() && s.histograms.is_empty() {
                    out.drop_items("exemplar", "no_sample", s.exemplars.len() as u64);
                    continue;
                }
                valid.push(Valid {
                    labels,
                    samples: s.samples,
                    histograms: s.histograms,
                    exemplars: s.exemplars,
                    family,
                    created: s.created_timestamp,
                });
            }
            Err(problem) => {
                out.invalid_series += 1;
                out.drop_items("sample", "invalid", s.samples.len() as u64);
                out.drop_items("histogram", "invalid", s.histograms.len() as u64);
                out.drop_items("exemplar", "invalid", s.exemplars.len() as u64);
                if out.problems.len() < MAX_PROBLEMS {
                    out.problems.push(problem);
                }
            }
        }
    }
    out.written = Written {
        samples: valid.iter().map(|v| v.samples.len() as u64).sum(),
        histograms: valid.iter().map(|v| v.histograms.len() as u64).sum(),
        exemplars: valid.iter().map(|v| v.exemplars.len() as u64).sum(),
    };
    out.records = group_by_timestamp(valid, families);
    out
}

/// Whether the queue's series sets can hold these labels (`uplink_shared::codec` limits).
fn fits_queue(labels: &[Label]) -> Result<(), String> {
    if labels.len() > codec::MAX_LABELS_PER_SERIES {
        return Err(format!(
            "series {}: {} labels exceed the limit of {}",
            model::display(labels),
            labels.len(),
            codec::MAX_LABELS_PER_SERIES
        ));
    }
    match labels
        .iter()
        .find(|l| l.name.len().max(l.value.len()) > codec::MAX_LABEL_BYTES)
    {
        Some(l) => Err(format!(
            "label {:?}: name or value longer than {} bytes",
            l.name.chars().take(64).collect::<String>(),
            codec::MAX_LABEL_BYTES
        )),
        None => Ok(()),
    }
}

/// One record per distinct timestamp, in timestamp order; each record's series sorted by
/// labels (a series sent twice keeps its samples in the order sent). A histogram sample is an
/// extra of its record (0 as the float value); a series' exemplars go with its newest sample.
/// Each set carries the metadata of its series' families; metadata of no series here (a 1.0
/// sender's metadata-only request) becomes a record of its own, with no series.
fn group_by_timestamp(
    mut series: Vec<Valid>,
    mut families: BTreeMap<String, MetricMetadata>,
) -> Vec<(SeriesSet, ScrapeRecord)> {
    series.sort_by(|a, b| a.labels.cmp(&b.labels));
    enum Item<'a> {
        Float(f64),
        Histogram(&'a Histogram),
    }
    let mut groups: BTreeMap<i64, Vec<(usize, Item<'_>)>> = BTreeMap::new();
    let mut newest: Vec<i64> = Vec::with_capacity(series.len());
    for (i, v) in series.iter().enumerate() {
        for s in &v.samples {
            groups
                .entry(s.timestamp)
                .or_default()
                .push((i, Item::Float(s.value)));
        }
        for h in &v.histograms {
            groups
                .entry(h.timestamp)
                .or_default()
                .push((i, Item::Histogram(h)));
        }
        let last = v.samples.iter().map(|s| s.timestamp);
        let last = last.chain(v.histograms.iter().map(|h| h.timestamp)).max();
        newest.push(last.unwrap_or(i64::MIN));
    }
    let mut out: Vec<(SeriesSet, ScrapeRecord)> = groups
        .into_iter()
        .map(|(timestamp, members)| {
            let mut values = Vec::with_capacity(members.len());
            let mut extras = Vec::new();
            let mut metadata: Vec<MetricMetadata> = Vec::new();
            for (k, (i, item)) in members.iter().enumerate() {
                let v = &series[*i];
                match item {
                    Item::Float(f) => values.push(*f),
                    Item::Histogram(h) => {
                        values.push(0.0);
                        extras.push(Extra::histogram(k as u32, h));
                    }
                }
                if v.created != 0 {
                    extras.push(Extra::created(k as u32, v.created));
                }
                if newest[*i] == timestamp {
                    // Once per series: its newest sample's record.
                    newest[*i] = i64::MIN;
                    extras.extend(v.exemplars.iter().map(|e| Extra::exemplar(k as u32, e)));
                }
                if let Some(m) = v.family.as_ref().and_then(|f| families.get(f))
                    && !metadata.contains(m)
                {
                    metadata.push(m.clone());
                }
            }
            metadata.sort_by(|a, b| a.metric_family_name.cmp(&b.metric_family_name));
            let set = SeriesSet {
                series: members
                    .iter()
                    .map(|(i, _)| series[*i].labels.clone())
                    .collect(),
                metadata,
            };
            let record = ScrapeRecord {
                set_id: set.id(),
                timestamp,
                values,
                exceptions: Vec::new(),
                extras,
            };
            (set, record)
        })
        .collect();
    for v in &series {
        if let Some(f) = &v.family {
            families.remove(f);
        }
    }
    if !families.is_empty() {
        let set = SeriesSet {
            series: Vec::new(),
            metadata: families.into_values().collect(),
        };
        let record = ScrapeRecord {
            set_id: set.id(),
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            values: Vec::new(),
            exceptions: Vec::new(),
            extras: Vec::new(),
        };
        out.push((set, record));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::body::Body;
    use prost::Message;
    use std::collections::HashSet;
    use tower::ServiceExt;
    use uplink_shared::remote_write::{TimeSeries, v2};

    const STALE: u64 = 0x7ff0_0000_0000_0002;
    const V2: &str = "application/x-protobuf;proto=io.prometheus.write.v2.Request";

    struct Fixture {
        _dir: tempfile::TempDir,
        queue: Queue,
        metrics: Metrics,
        stop: CancellationToken,
        receiver: Receiver,
    }

    fn config(receiver_section: &str) -> Config {
        let text = format!(
            "global:\n  external_labels: {{site: edge, zone: z1}}\n\
             uplink:\n  gateways: ['gw:4433']\n  tls: {{cert_file: a, key_file: b, ca_file: c}}\n\
             \x20 queue: {{directory: q}}\n{receiver_section}"
        );
        serde_yaml::from_str(&text).unwrap()
    }

    fn fixture(receiver_section: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path(), false).unwrap();
        let metrics = Metrics::default();
        let stop = CancellationToken::new();
        let receiver = Receiver::new(
            &config(receiver_section),
            queue.clone(),
            metrics.clone(),
            stop.clone(),
        );
        Fixture {
            _dir: dir,
            queue,
            metrics,
            stop,
            receiver,
        }
    }

    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: String,
    }

    impl Answer {
        fn written(&self, which: &str) -> Option<u64> {
            self.headers.get(which)?.to_str().ok()?.parse().ok()
        }
    }

    async fn post(f: &Fixture, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
        let mut req = Request::builder().method("POST").uri(PATH);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = f
            .receiver
            .router()
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<Label> {
        pairs.iter().map(|(n, v)| Label::new(*n, *v)).collect()
    }

    fn sample(value: f64, timestamp: i64) -> Sample {
        Sample { value, timestamp }
    }

    fn snappy(raw: &[u8]) -> Vec<u8> {
        snap::raw::Encoder::new().compress_vec(raw).unwrap()
    }

    /// A 1.0 body; `extra[i]` is appended to series `i` (histogram or exemplar fields).
    fn v1_body(series: &[TimeSeries], extra: &[&[u8]]) -> Vec<u8> {
        let mut raw = Vec::new();
        for (i, ts) in series.iter().enumerate() {
            let mut msg = ts.encode_to_vec();
            msg.extend_from_slice(extra.get(i).copied().unwrap_or_default());
            prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut raw);
            prost::encoding::encode_varint(msg.len() as u64, &mut raw);
            raw.extend_from_slice(&msg);
        }
        snappy(&raw)
    }

    /// A 2.0 body built from 1.0 series; `extra[i]` is appended to series `i`.
    fn v2_body(series: &[TimeSeries], extra: &[&[u8]]) -> Vec<u8> {
        let mut req = v2::from_v1(series);
        let timeseries = std::mem::take(&mut req.timeseries);
        let mut raw = req.encode_to_vec();
        for (i, ts) in timeseries.iter().enumerate() {
            let mut msg = ts.encode_to_vec();
            msg.extend_from_slice(extra.get(i).copied().unwrap_or_default());
            prost::encoding::encode_key(5, prost::encoding::WireType::LengthDelimited, &mut raw);
            prost::encoding::encode_varint(msg.len() as u64, &mut raw);
            raw.extend_from_slice(&msg);
        }
        snappy(&raw)
    }

    fn series(pairs: &[(&str, &str)], samples: Vec<Sample>) -> TimeSeries {
        TimeSeries {
            labels: labels(pairs),
            samples,
            ..Default::default()
        }
    }

    /// Every stored sample as (labels, timestamp, value bits).
    async fn stored(q: &Queue) -> HashSet<(Vec<Label>, i64, u64)> {
        crate::stored_series(q)
            .await
            .unwrap()
            .into_iter()
            .flat_map(|ts| {
                ts.samples
                    .into_iter()
                    .map(move |s| (ts.labels.clone(), s.timestamp, s.value.to_bits()))
            })
            .collect()
    }

    fn dropped(m: &Metrics, kind: &str, reason: &str) -> u64 {
        m.remote_write_dropped
            .get_or_create(&vec![
                ("kind".to_owned(), kind.to_owned()),
                ("reason".to_owned(), reason.to_owned()),
            ])
            .get()
    }

    fn requests(m: &Metrics, code: u16) -> u64 {
        m.remote_write_requests
            .get_or_create(&vec![("code".to_owned(), code.to_string())])
            .get()
    }

    #[tokio::test]
    async fn v1_is_queued_with_external_labels_and_exact_stale_markers() {
        let f = fixture("");
        let body = v1_body(
            &[
                // Labels out of order; the sender's own `site` wins over the external label.
                series(
                    &[("job", "node"), ("__name__", "up"), ("site", "own")],
                    vec![sample(1.0, 1000), sample(f64::from_bits(STALE), 2000)],
                ),
                series(
                    &[("__name__", "temp"), ("empty", "")],
                    vec![sample(f64::NAN, 1000), sample(21.5, 3000)],
                ),
            ],
            &[],
        );
        // Old 1.0 clients may omit both headers.
        let a = post(&f, &[], body.clone()).await;
        assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
        assert!(a.written(rw::SAMPLES_WRITTEN).is_none(), "1.0: no headers");
        let a = post(
            &f,
            &[
                ("content-type", "application/x-protobuf"),
                ("content-encoding", "snappy"),
                ("x-prometheus-remote-write-version", "0.1.0"),
            ],
            body,
        )
        .await;
        assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);

        let up = labels(&[
            ("__name__", "up"),
            ("job", "node"),
            ("site", "own"),
            ("zone", "z1"),
        ]);
        let temp = labels(&[("__name__", "temp"), ("site", "edge"), ("zone", "z1")]);
        let want: HashSet<_> = [
            (up.clone(), 1000, 1.0f64.to_bits()),
            (up, 2000, STALE),
            (temp.clone(), 1000, f64::NAN.to_bits()),
            (temp, 3000, 21.5f64.to_bits()),
        ]
        .into_iter()
        .collect();
        assert_eq!(stored(&f.queue).await, want);
        // Three timestamps, twice: six records; the sets repeat.
        assert_eq!(f.queue.usage().0, 6);
        assert_eq!(f.metrics.remote_write_samples.get(), 8);
        assert_eq!(f.metrics.samples_queued.get(), 8);
        assert_eq!(requests(&f.metrics, 204), 2);
    }

    #[tokio::test]
    async fn v2_keeps_histograms_exemplars_and_metadata() {
        use uplink_shared::remote_write::{MetricType, WriteRequest};
        let f = fixture("");
        let mut floats = series(
            &[("__name__", "http_requests_total"), ("code", "200")],
            vec![sample(5.0, 10), sample(7.0, 20), sample(9.0, 30)],
        );
        let ex = Exemplar {
            labels: labels(&[("trace_id", "abc")]),
            value: 1.0,
            timestamp: 25,
        };
        floats.exemplars = vec![ex.clone()];
        floats.created_timestamp = 3;
        let h = |t| Histogram {
            count: Some(uplink_shared::remote_write::histogram::Count::CountInt(
                t as u64,
            )),
            schema: 3,
            timestamp: t,
            ..Default::default()
        };
        let mut hist = series(&[("__name__", "latency_seconds")], vec![]);
        hist.histograms = vec![h(10), h(20)];
        let md = MetricMetadata {
            r#type: MetricType::Counter as i32,
            metric_family_name: "http_requests_total".into(),
            help: "Requests.".into(),
            unit: String::new(),
        };
        let raw = WriteRequest {
            timeseries: vec![floats, hist],
            metadata: vec![md.clone()],
        }
        .encode_to_vec();
        let body = snappy(&v2::from_v1_bytes(&raw).unwrap());
        let a = post(
            &f,
            &[("content-type", V2), ("content-encoding", "snappy")],
            body,
        )
        .await;
        assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
        assert_eq!(a.written(rw::SAMPLES_WRITTEN), Some(3));
        assert_eq!(a.written(rw::HISTOGRAMS_WRITTEN), Some(2));
        assert_eq!(a.written(rw::EXEMPLARS_WRITTEN), Some(1));
        let stored = crate::stored_series(&f.queue).await.unwrap();
        let hists: Vec<i64> = stored
            .iter()
            .flat_map(|t| t.histograms.iter().map(|h| h.timestamp))
            .collect();
        assert_eq!(hists, [10, 20]);
        let exemplars: Vec<&Exemplar> = stored.iter().flat_map(|t| &t.exemplars).collect();
        assert_eq!(exemplars, [&ex], "once, with the series' newest sample");
        let created: Vec<i64> = stored
            .iter()
            .filter(|t| t.histograms.is_empty())
            .map(|t| t.created_timestamp)
            .collect();
        assert_eq!(created, [3, 3, 3], "every record of the series carries it");
        assert_eq!(f.metrics.samples_queued.get(), 5);
        // The sets carry the family's metadata.
        let recs = f.queue.read(0, usize::MAX, usize::MAX).await.unwrap();
        let ids: Vec<u64> = recs
            .iter()
            .map(|r| ScrapeRecord::decode(&r.data).unwrap().set_id)
            .collect();
        let sets = f.queue.sets(ids).await.unwrap();
        assert!(
            sets.values()
                .any(|d| { SeriesSet::decode(d, usize::MAX).unwrap().metadata == [md.clone()] })
        );
    }

    #[tokio::test]
    async fn a_metadata_only_request_is_queued_as_a_record_without_series() {
        use uplink_shared::remote_write::{MetricType, WriteRequest};
        let f = fixture("");
        let md = MetricMetadata {
            r#type: MetricType::Gauge as i32,
            metric_family_name: "temperature".into(),
            help: "Degrees.".into(),
            unit: "celsius".into(),
        };
        let raw = WriteRequest {
            timeseries: vec![],
            metadata: vec![md.clone()],
        }
        .encode_to_vec();
        let a = post(&f, &[], snappy(&raw)).await;
        assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
        let recs = f.queue.read(0, usize::MAX, usize::MAX).await.unwrap();
        assert_eq!(recs.len(), 1);
        let rec = ScrapeRecord::decode(&recs[0].data).unwrap();
        let sets = f.queue.sets(vec![rec.set_id]).await.unwrap();
        let set = SeriesSet::decode(&sets[&rec.set_id], usize::MAX).unwrap();
        assert!(set.series.is_empty());
        assert_eq!(set.metadata, [md]);
    }

    #[tokio::test]
    async fn invalid_series_are_refused_and_the_valid_ones_queued() {
        let f = fixture("");
        let body = v1_body(
            &[
                series(&[("__name__", "ok")], vec![sample(1.0, 1)]),
                series(
                    &[("__name__", "dup"), ("a", "1"), ("a", "2")],
                    vec![sample(1.0, 1), sample(2.0, 2)],
                ),
                series(&[("__name__", "x"), ("", "v")], vec![sample(1.0, 1)]),
                series(&[("job", "no_name")], vec![sample(1.0, 1)]),
            ],
            &[],
        );
        let a = post(&f, &[], body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(a.body.contains("3 invalid series"), "{}", a.body);
        assert!(a.body.contains("duplicate label name \"a\""), "{}", a.body);
        assert!(a.body.contains("empty label name"), "{}", a.body);
        assert_eq!(stored(&f.queue).await.len(), 1);
        assert_eq!(dropped(&f.metrics, "sample", "invalid"), 4);

        // 2.0: a reference outside the symbol table invalidates its series only.
        let mut req = v2::from_v1(&[series(&[("__name__", "ok2")], vec![sample(1.0, 1)])]);
        let mut bad = req.timeseries[0].clone();
        bad.labels_refs = vec![1, 99];
        req.timeseries.push(bad);
        let a = post(&f, &[("content-type", V2)], snappy(&req.encode_to_vec())).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(a.body.contains("symbol reference 99"), "{}", a.body);
        assert_eq!(a.written(rw::SAMPLES_WRITTEN), Some(1));
    }

    #[tokio::test]
    async fn unsupported_content_type_or_encoding_is_415() {
        let f = fixture("");
        let body = v1_body(&[series(&[("__name__", "a")], vec![sample(1.0, 1)])], &[]);
        for (ct, enc) in [
            ("text/plain", "snappy"),
            (
                "application/x-protobuf;proto=io.prometheus.write.v3.Request",
                "snappy",
            ),
            ("application/x-protobuf", "gzip"),
            ("application/x-protobuf", "zstd"),
        ] {
            let a = post(
                &f,
                &[("content-type", ct), ("content-encoding", enc)],
                body.clone(),
            )
            .await;
            assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct} {enc}");
            assert!(a.body.contains("unsupported"), "{}", a.body);
        }
        assert_eq!(f.queue.usage().0, 0);
        assert_eq!(requests(&f.metrics, 415), 4);
    }

    #[tokio::test]
    async fn limits_answer_413_before_anything_is_stored() {
        let three = [
            series(&[("__name__", "a")], vec![sample(1.0, 1)]),
            series(&[("__name__", "b")], vec![sample(1.0, 1)]),
            series(&[("__name__", "c")], vec![sample(1.0, 1)]),
        ];
        let body = v1_body(&three, &[]);
        for (section, what) in [
            ("max_body_bytes: 10", "max_body_bytes"),
            ("max_decoded_bytes: 20", "uncompressed size"),
            ("max_series_per_request: 2", "3 series exceed"),
        ] {
            let f = fixture(&format!("  remote_write_receiver: {{{section}}}\n"));
            let a = post(&f, &[("content-type", V2)], v2_body(&three, &[])).await;
            assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{section}");
            assert_eq!(a.written(rw::SAMPLES_WRITTEN), Some(0), "{section}");
            let a = post(&f, &[], body.clone()).await;
            assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{section}");
            assert!(a.body.contains(what), "{section}: {}", a.body);
            assert_eq!(f.queue.usage().0, 0);
        }
    }

    #[tokio::test]
    async fn shutting_down_answers_503_and_queue_failures_map_to_500() {
        let f = fixture("");
        f.stop.cancel();
        let body = v1_body(&[series(&[("__name__", "a")], vec![sample(1.0, 1)])], &[]);
        let a = post(&f, &[], body).await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(f.queue.usage().0, 0);
        // A queue failure (here: the blocking task died) is retriable.
        let join = tokio::spawn(async { panic!("boom") }).await.unwrap_err();
        let e = ReceiveError::Queue(QueueError::Join(join));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn random_and_truncated_bodies_never_panic_nor_fail_the_server() {
        let f = fixture("");
        let valid = |proto: Proto| {
            let s = [
                series(
                    &[("__name__", "a"), ("x", "y")],
                    vec![sample(1.0, 1), sample(2.0, 2)],
                ),
                series(&[("__name__", "b")], vec![sample(f64::NAN, 1)]),
            ];
            let body = match proto {
                // An empty exemplar on the first series (field 3 in 1.0, 4 in 2.0).
                Proto::V1 => v1_body(&s, &[&[0x1a, 0]]),
                Proto::V2 => v2_body(&s, &[&[0x22, 0]]),
            };
            snap::raw::Decoder::new().decompress_vec(&body).unwrap()
        };
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for i in 0..3000 {
            for proto in [Proto::V1, Proto::V2] {
                let mut raw = valid(proto);
                match i % 3 {
                    0 => raw.truncate(next() as usize % raw.len()),
                    1 => {
                        let at = next() as usize % raw.len();
                        raw[at] = next() as u8;
                    }
                    _ => raw = (0..next() % 200).map(|_| next() as u8).collect(),
                }
                // Compressed properly, and also sent raw (not snappy at all).
                for body in [snappy(&raw), raw] {
                    let mut written = Written::default();
                    let result = f.receiver.ingest(proto, &body, &mut written).await;
                    if let Err(e) = &result {
                        assert!(e.status().is_client_error(), "{e}");
                    }
                }
            }
        }
        // And through HTTP, whole and truncated.
        let body = v2_body(&[series(&[("__name__", "a")], vec![sample(1.0, 1)])], &[]);
        for cut in [0, 1, body.len() / 2, body.len() - 1] {
            let a = post(&f, &[("content-type", V2)], body[..cut].to_vec()).await;
            assert!(a.status.is_client_error() || a.status.is_success(), "{cut}");
        }
        assert_eq!(requests(&f.metrics, 500), 0);
    }

    #[test]
    fn records_group_by_timestamp_in_order_with_stable_sets() {
        let a = labels(&[("__name__", "a")]);
        let b = labels(&[("__name__", "b")]);
        let valid = |labels: &Vec<Label>, samples| Valid {
            labels: labels.clone(),
            samples,
            histograms: vec![],
            exemplars: vec![],
            family: None,
            created: 0,
        };
        let input = || {
            vec![
                valid(&b, vec![sample(1.0, 10), sample(2.0, 20)]),
                valid(&a, vec![sample(3.0, 10), sample(4.0, 30)]),
            ]
        };
        let records = group_by_timestamp(input(), BTreeMap::new());
        let got: Vec<(i64, Vec<f64>, usize)> = records
            .iter()
            .map(|(set, r)| (r.timestamp, r.values.clone(), set.series.len()))
            .collect();
        assert_eq!(
            got,
            vec![
                (10, vec![3.0, 1.0], 2),
                (20, vec![2.0], 1),
                (30, vec![4.0], 1)
            ]
        );
        assert_eq!(records[0].0.series, vec![a.clone(), b.clone()]);
        // The same scrape sent in another order gives the same set (stored once).
        let again = group_by_timestamp(input().into_iter().rev().collect(), BTreeMap::new());
        assert_eq!(again[0].1.set_id, records[0].1.set_id);
        // Joined back, every sample is there.
        let joined: usize = records
            .iter()
            .map(|(set, r)| codec::join(set, r).unwrap().len())
            .sum();
        assert_eq!(joined, 4);
    }

    #[test]
    fn labels_beyond_the_queue_limits_make_the_series_invalid() {
        let mut many = vec![Label::new("__name__", "x")];
        many.extend((0..codec::MAX_LABELS_PER_SERIES).map(|i| Label::new(format!("l{i:04}"), "v")));
        many.sort();
        let long = labels(&[("__name__", "x")])
            .into_iter()
            .chain([Label::new("big", "v".repeat(codec::MAX_LABEL_BYTES + 1))])
            .collect::<Vec<_>>();
        let ok = labels(&[("__name__", "ok")]);
        let input = [many, long, ok]
            .into_iter()
            .map(|l| rw::Series {
                labels: Ok(l),
                samples: vec![sample(1.0, 1)],
                histograms: vec![],
                exemplars: vec![],
                metadata: None,
                created_timestamp: 0,
            })
            .collect();
        let p = prepare(input, vec![], &[]);
        assert_eq!(p.invalid_series, 2);
        assert_eq!(p.written.samples, 1);
        assert!(
            p.not_written()
                .is_some_and(|m| m.contains("exceed the limit"))
        );
    }
}
