//! The Kubernetes API: the few fields of each object the roles need, and one reflector per
//! watched resource that keeps the main task's copy of it current.
//!
//! Objects are small typed structs read leniently: unknown fields are ignored, missing or
//! `null` fields take their empty value, and an object whose known fields have the wrong type
//! is skipped with a warning (the API server is network input: nothing it sends may panic the
//! agent). Bodies are bounded: a list page at most [`MAX_PAGE`] bytes, a watch event line at
//! most [`MAX_EVENT`] bytes.
//!
//! A reflector ([`reflect`]) does what client-go's reflector does for Prometheus:
//!
//! 1. LIST the resource (`labelSelector`, `fieldSelector`, `limit`, following `continue`
//!    tokens) and send the whole list as [`Event::Replace`]. A failed list is counted, the
//!    main task is told ([`Event::Failed`], so a first publish need not wait), and it is
//!    retried after a jittered exponential backoff; the main task keeps the last list.
//! 2. WATCH from the list's `resourceVersion` with `allowWatchBookmarks=true` and a
//!    randomised `timeoutSeconds`, sending ADDED and MODIFIED as [`Event::Upsert`] and
//!    DELETED as [`Event::Delete`]; every event, BOOKMARKs included, advances the
//!    resourceVersion to resume from.
//! 3. A watch the server ends cleanly is resumed at once from the last resourceVersion. One
//!    that drops (connection error, truncated chunk) or outlives its deadline is counted and
//!    resumed from the last resourceVersion after a backoff. 410 Gone (as the HTTP status or as
//!    an ERROR event with code 410) means the resourceVersion is too old: counted, and the
//!    resource is listed again at once. Any other HTTP error or ERROR event, or an
//!    undecodable event, is counted and the resource is listed again after a backoff (as
//!    client-go does). The backoff restarts from its minimum after a watch that made progress.
//! 4. The deadline (`timeoutSeconds` plus a 30 s grace) is also what detects a silently dead
//!    connection: at worst after about 10.5 minutes.
//!
//! Deviations from Prometheus (client-go): JSON instead of protobuf; only
//! `discovery.k8s.io/v1` EndpointSlices (Kubernetes 1.21+) and `networking.k8s.io/v1`
//! Ingresses (1.19+), no `v1beta1` fallback; lists are paginated consistent reads (no
//! `resourceVersion=0` watch-cache read).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::ACCEPT;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::config::Connection;
use crate::http_client::HttpClientError;
use crate::ship::Backoff;

/// Largest list page accepted, in bytes.
pub const MAX_PAGE: usize = 64 << 20;
/// Largest watch event (one JSON line) accepted, in bytes; etcd caps objects at 1.5 MiB.
pub const MAX_EVENT: usize = 16 << 20;

/// Why a list or watch request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Client(#[from] HttpClientError),
    #[error("request failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error("{url}: HTTP status {status}: {message}")]
    Status {
        url: String,
        status: StatusCode,
        message: String,
    },
    #[error("resource version too old (410 Gone)")]
    Gone,
    #[error("watch ERROR event: {code} {reason}: {message}")]
    ErrorEvent {
        code: i64,
        reason: String,
        message: String,
    },
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    #[error("undecodable response: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("unknown watch event type {0:?}")]
    EventType(String),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("the API server URL cannot take a path")]
    BadBase,
}

/// `null` as the type's default (Kubernetes omits empty fields, but a proxy or an old server
/// may send `null`).
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub namespace: String,
    #[serde(default, deserialize_with = "nullable")]
    pub uid: String,
    #[serde(default, deserialize_with = "nullable")]
    pub resource_version: String,
    #[serde(default, deserialize_with = "nullable")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub owner_references: Vec<OwnerReference>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct OwnerReference {
    #[serde(default, deserialize_with = "nullable")]
    pub kind: String,
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default)]
    pub controller: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ObjectReference {
    #[serde(default, deserialize_with = "nullable")]
    pub kind: String,
    #[serde(default, deserialize_with = "nullable")]
    pub namespace: String,
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
}

// ---- core/v1 Node ----

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Node {
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "nullable")]
    pub spec: NodeSpec,
    #[serde(default, deserialize_with = "nullable")]
    pub status: NodeStatus,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct NodeSpec {
    #[serde(default, rename = "providerID", deserialize_with = "nullable")]
    pub provider_id: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    #[serde(default, deserialize_with = "nullable")]
    pub addresses: Vec<NodeAddress>,
    #[serde(default, deserialize_with = "nullable")]
    pub daemon_endpoints: DaemonEndpoints,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct NodeAddress {
    #[serde(default, rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    #[serde(default, deserialize_with = "nullable")]
    pub address: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DaemonEndpoints {
    #[serde(default, deserialize_with = "nullable")]
    pub kubelet_endpoint: DaemonEndpoint,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct DaemonEndpoint {
    /// Capitalised in the API, unlike every other field.
    #[serde(default, rename = "Port", deserialize_with = "nullable")]
    pub port: i64,
}

// ---- core/v1 Pod ----

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Pod {
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "nullable")]
    pub spec: PodSpec,
    #[serde(default, deserialize_with = "nullable")]
    pub status: PodStatus,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default, deserialize_with = "nullable")]
    pub node_name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub containers: Vec<Container>,
    #[serde(default, deserialize_with = "nullable")]
    pub init_containers: Vec<Container>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Container {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub image: String,
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<ContainerPort>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub container_port: i64,
    #[serde(default, deserialize_with = "nullable")]
    pub protocol: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default, deserialize_with = "nullable")]
    pub phase: String,
    #[serde(default, rename = "podIP", deserialize_with = "nullable")]
    pub pod_ip: String,
    #[serde(default, rename = "hostIP", deserialize_with = "nullable")]
    pub host_ip: String,
    #[serde(default, deserialize_with = "nullable")]
    pub conditions: Vec<PodCondition>,
    #[serde(default, deserialize_with = "nullable")]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default, deserialize_with = "nullable")]
    pub init_container_statuses: Vec<ContainerStatus>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct PodCondition {
    #[serde(default, rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    #[serde(default, deserialize_with = "nullable")]
    pub status: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ContainerStatus {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, rename = "containerID", deserialize_with = "nullable")]
    pub container_id: String,
}

// ---- core/v1 Service ----

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Service {
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "nullable")]
    pub spec: ServiceSpec,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<ServicePort>,
    #[serde(default, rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    #[serde(default, rename = "clusterIP", deserialize_with = "nullable")]
    pub cluster_ip: String,
    #[serde(default, deserialize_with = "nullable")]
    pub external_name: String,
    #[serde(default, rename = "loadBalancerIP", deserialize_with = "nullable")]
    pub load_balancer_ip: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ServicePort {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub port: i64,
    #[serde(default, deserialize_with = "nullable")]
    pub protocol: String,
}

// ---- core/v1 Endpoints ----

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Endpoints {
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "nullable")]
    pub subsets: Vec<EndpointSubset>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSubset {
    #[serde(default, deserialize_with = "nullable")]
    pub addresses: Vec<EndpointAddress>,
    #[serde(default, deserialize_with = "nullable")]
    pub not_ready_addresses: Vec<EndpointAddress>,
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<ServicePort>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointAddress {
    #[serde(default, deserialize_with = "nullable")]
    pub ip: String,
    #[serde(default, deserialize_with = "nullable")]
    pub hostname: String,
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub target_ref: Option<ObjectReference>,
}

// ---- discovery.k8s.io/v1 EndpointSlice ----

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "nullable")]
    pub address_type: String,
    #[serde(default, deserialize_with = "nullable")]
    pub endpoints: Vec<SliceEndpoint>,
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<SlicePort>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SliceEndpoint {
    #[serde(default, deserialize_with = "nullable")]
    pub addresses: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub conditions: SliceConditions,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub target_ref: Option<ObjectReference>,
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub deprecated_topology: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct SliceConditions {
    #[serde(default)]
    pub ready: Option<bool>,
    #[serde(default)]
    pub serving: Option<bool>,
    #[serde(default)]
    pub terminating: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SlicePort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub port: Option<i64>,
    #[serde(default)]
    pub app_protocol: Option<String>,
}

// ---- networking.k8s.io/v1 Ingress ----

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Ingress {
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "nullable")]
    pub spec: IngressSpec,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    #[serde(default)]
    pub ingress_class_name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub tls: Vec<IngressTls>,
    #[serde(default, deserialize_with = "nullable")]
    pub rules: Vec<IngressRule>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct IngressTls {
    #[serde(default, deserialize_with = "nullable")]
    pub hosts: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct IngressRule {
    #[serde(default, deserialize_with = "nullable")]
    pub host: String,
    /// `None` (no `http`) means the path `/`; an empty path list means no target.
    #[serde(default)]
    pub http: Option<IngressHttp>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct IngressHttp {
    #[serde(default, deserialize_with = "nullable")]
    pub paths: Vec<IngressPath>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct IngressPath {
    #[serde(default, deserialize_with = "nullable")]
    pub path: String,
}

// ---- core/v1 Namespace, apps/v1 ReplicaSet, batch/v1 Job: metadata only ----

/// Watched for `attach_metadata.namespace`: its labels and annotations.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Namespace {
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: ObjectMeta,
}

/// Watched for `attach_metadata.deployment`: its controller names the Deployment.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ReplicaSet {
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: ObjectMeta,
}

/// Watched for `attach_metadata.cronjob`: its controller names the CronJob.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Job {
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: ObjectMeta,
}

impl ObjectMeta {
    /// client-go's `GetControllerOf`: the first owner reference marked `controller: true`.
    pub fn controller(&self) -> Option<&OwnerReference> {
        self.owner_references
            .iter()
            .find(|r| r.controller == Some(true))
    }
}

/// The kinds of object watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Node,
    Pod,
    Service,
    Endpoints,
    EndpointSlice,
    Ingress,
    Namespace,
    ReplicaSet,
    Job,
}

impl Kind {
    /// The collection's path segments, without and with a namespace.
    fn segments(self, namespace: Option<&str>) -> Vec<&str> {
        let (mut segs, plural) = match self {
            Kind::Node => (vec!["api", "v1"], "nodes"),
            Kind::Pod => (vec!["api", "v1"], "pods"),
            Kind::Service => (vec!["api", "v1"], "services"),
            Kind::Endpoints => (vec!["api", "v1"], "endpoints"),
            Kind::EndpointSlice => (vec!["apis", "discovery.k8s.io", "v1"], "endpointslices"),
            Kind::Ingress => (vec!["apis", "networking.k8s.io", "v1"], "ingresses"),
            Kind::Namespace => (vec!["api", "v1"], "namespaces"),
            Kind::ReplicaSet => (vec!["apis", "apps", "v1"], "replicasets"),
            Kind::Job => (vec!["apis", "batch", "v1"], "jobs"),
        };
        if let Some(ns) = namespace {
            segs.extend(["namespaces", ns]);
        }
        segs.push(plural);
        segs
    }
}

/// An object kind the reflector can keep.
pub trait Resource: DeserializeOwned + Send + Sync + 'static {
    const KIND: Kind;
    fn meta(&self) -> &ObjectMeta;
}

macro_rules! resource {
    ($t:ty, $k:expr) => {
        impl Resource for $t {
            const KIND: Kind = $k;
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
        }
    };
}
resource!(Node, Kind::Node);
resource!(Pod, Kind::Pod);
resource!(Service, Kind::Service);
resource!(Endpoints, Kind::Endpoints);
resource!(EndpointSlice, Kind::EndpointSlice);
resource!(Ingress, Kind::Ingress);
resource!(Namespace, Kind::Namespace);
resource!(ReplicaSet, Kind::ReplicaSet);
resource!(Job, Kind::Job);

/// What a reflector tells the main task.
#[derive(Debug)]
pub enum Event<T> {
    /// The complete current list (after a LIST).
    Replace(Vec<T>),
    Upsert(T),
    Delete(T),
    /// A LIST failed; the previous list stands.
    Failed,
}

/// One watched collection: a kind, a namespace (`None`: all, or cluster-scoped) and selectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchSpec {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub label_selector: String,
    pub field_selector: String,
}

/// Where a reflector sends its events: the main task's channel, each event wrapped into the
/// main task's message type (which names the watch it came from).
pub struct Sink<T, M> {
    pub tx: mpsc::Sender<M>,
    pub wrap: Box<dyn Fn(Event<T>) -> M + Send + Sync>,
}

impl<T, M> Sink<T, M> {
    /// Sends `ev`; `false` when the main task is gone.
    async fn send(&self, ev: Event<T>) -> bool {
        self.tx.send((self.wrap)(ev)).await.is_ok()
    }
}

/// Timing of requests and retries.
#[derive(Clone, Debug)]
pub struct Tuning {
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Deadline of each LIST page request.
    pub request_timeout: Duration,
    /// The watch's `timeoutSeconds` is random in `[watch_timeout, 2 × watch_timeout)`, as
    /// client-go does (5 minutes).
    pub watch_timeout: Duration,
    /// How long past `timeoutSeconds` a watch may last before the agent drops it.
    pub watch_grace: Duration,
    /// `limit` of each LIST page.
    pub page_size: u32,
    /// Least time between two publishes after the first.
    pub min_publish_interval: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            watch_timeout: Duration::from_secs(300),
            watch_grace: Duration::from_secs(30),
            page_size: 500,
            min_publish_interval: Duration::from_secs(1),
        }
    }
}

/// A list page or a watch event's object: kept as JSON until its kind is known.
#[derive(Deserialize)]
struct ListPage {
    #[serde(default, deserialize_with = "nullable")]
    metadata: ListMeta,
    #[serde(default, deserialize_with = "nullable")]
    items: Vec<serde_json::Value>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    #[serde(default, deserialize_with = "nullable")]
    resource_version: String,
    #[serde(default, rename = "continue", deserialize_with = "nullable")]
    continue_token: String,
}

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    object: serde_json::Value,
}

/// A `Status` object, as sent with errors.
#[derive(Default, Deserialize)]
struct Status {
    #[serde(default, deserialize_with = "nullable")]
    code: i64,
    #[serde(default, deserialize_with = "nullable")]
    reason: String,
    #[serde(default, deserialize_with = "nullable")]
    message: String,
}

fn url(conn: &Connection, spec: &WatchSpec) -> Result<reqwest::Url, ApiError> {
    let mut u = conn.base.clone();
    {
        let mut segs = u.path_segments_mut().map_err(|()| ApiError::BadBase)?;
        segs.pop_if_empty();
        segs.extend(spec.kind.segments(spec.namespace.as_deref()));
    }
    {
        let mut q = u.query_pairs_mut();
        if !spec.label_selector.is_empty() {
            q.append_pair("labelSelector", &spec.label_selector);
        }
        if !spec.field_selector.is_empty() {
            q.append_pair("fieldSelector", &spec.field_selector);
        }
    }
    Ok(u)
}

/// Reads a body of at most `limit` bytes before `deadline`.
async fn read_body(
    mut resp: reqwest::Response,
    limit: usize,
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<u8>, ApiError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge(limit));
    }
    let mut body = Vec::new();
    loop {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .map_err(|_| ApiError::Timeout(timeout))??;
        let Some(chunk) = chunk else {
            return Ok(body);
        };
        if body.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
}

/// The error for a non-2xx response, with the `Status` message when there is one.
async fn status_error(url: &reqwest::Url, resp: reqwest::Response, deadline: Instant) -> ApiError {
    let status = resp.status();
    if status == StatusCode::GONE {
        return ApiError::Gone;
    }
    let body = read_body(resp, 64 << 10, deadline, Duration::ZERO)
        .await
        .unwrap_or_default();
    let message = serde_json::from_slice::<Status>(&body)
        .map(|s| s.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
    let mut url = url.clone();
    url.set_query(None);
    ApiError::Status {
        url: url.to_string(),
        status,
        message,
    }
}

/// Decodes one object, or `None` (with a warning) when its fields have the wrong types.
fn decode<T: Resource>(v: serde_json::Value) -> Option<T> {
    match serde_json::from_value::<T>(v) {
        Ok(t) => Some(t),
        Err(error) => {
            warn!(kind = ?T::KIND, %error, "Skipping an undecodable Kubernetes object.");
            None
        }
    }
}

/// LISTs `spec`, following `continue` tokens: the objects and the list's resourceVersion.
pub async fn list<T: Resource>(
    conn: &Connection,
    spec: &WatchSpec,
    tuning: &Tuning,
) -> Result<(Vec<T>, String), ApiError> {
    let base = url(conn, spec)?;
    let mut items = Vec::new();
    let mut cont = String::new();
    loop {
        let mut u = base.clone();
        u.query_pairs_mut()
            .append_pair("limit", &tuning.page_size.max(1).to_string());
        if !cont.is_empty() {
            u.query_pairs_mut().append_pair("continue", &cont);
        }
        let deadline = Instant::now() + tuning.request_timeout;
        let req = conn
            .client
            .get(u.as_str())
            .await?
            .header(ACCEPT, "application/json");
        let resp = tokio::time::timeout_at(deadline, req.send())
            .await
            .map_err(|_| ApiError::Timeout(tuning.request_timeout))??;
        if !resp.status().is_success() {
            return Err(status_error(&u, resp, deadline).await);
        }
        let body = read_body(resp, MAX_PAGE, deadline, tuning.request_timeout).await?;
        let page: ListPage = serde_json::from_slice(&body)?;
        items.extend(page.items.into_iter().filter_map(decode::<T>));
        if page.metadata.continue_token.is_empty() {
            return Ok((items, page.metadata.resource_version));
        }
        cont = page.metadata.continue_token;
    }
}

/// How a watch ended.
#[derive(Debug)]
enum WatchEnd {
    /// The server closed the stream cleanly (its timeout).
    Closed,
    /// The main task is gone.
    Stopped,
    /// Connection error or deadline: resume from the last resourceVersion.
    Dropped(ApiError),
    /// 410 Gone: list again now.
    Gone,
    /// Anything else: list again after a backoff.
    Failed(ApiError),
}

/// Watches `spec` from `*rv`, forwarding events and advancing `*rv`.
async fn watch<T: Resource, M: Send>(
    conn: &Connection,
    spec: &WatchSpec,
    tuning: &Tuning,
    rv: &mut String,
    tx: &Sink<T, M>,
) -> WatchEnd {
    let mut u = match url(conn, spec) {
        Ok(u) => u,
        Err(e) => return WatchEnd::Failed(e),
    };
    let base = tuning.watch_timeout.as_secs().max(1);
    let secs = rand::rng().random_range(base..base * 2);
    u.query_pairs_mut()
        .append_pair("watch", "1")
        .append_pair("allowWatchBookmarks", "true")
        .append_pair("resourceVersion", rv)
        .append_pair("timeoutSeconds", &secs.to_string());
    let limit = Duration::from_secs(secs) + tuning.watch_grace;
    let deadline = Instant::now() + limit;
    let req = match conn.client.get(u.as_str()).await {
        Ok(r) => r.header(ACCEPT, "application/json"),
        Err(e) => return WatchEnd::Failed(e.into()),
    };
    let mut resp = match tokio::time::timeout_at(deadline, req.send()).await {
        Err(_) => return WatchEnd::Dropped(ApiError::Timeout(limit)),
        Ok(Err(e)) => return WatchEnd::Dropped(e.into()),
        Ok(Ok(r)) => r,
    };
    if !resp.status().is_success() {
        return match status_error(&u, resp, deadline).await {
            ApiError::Gone => WatchEnd::Gone,
            e => WatchEnd::Failed(e),
        };
    }
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let chunk = match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Err(_) => return WatchEnd::Dropped(ApiError::Timeout(limit)),
            Ok(Err(e)) => return WatchEnd::Dropped(e.into()),
            Ok(Ok(c)) => c,
        };
        let Some(chunk) = chunk else {
            // A last line without its newline still counts.
            if let Some(end) = handle_line(&buf, rv, tx).await {
                return end;
            }
            return WatchEnd::Closed;
        };
        buf.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|b| *b == b'\n') {
            let line = &buf[start..start + nl];
            start += nl + 1;
            if let Some(end) = handle_line(line, rv, tx).await {
                return end;
            }
        }
        buf.drain(..start);
        if buf.len() > MAX_EVENT {
            return WatchEnd::Failed(ApiError::TooLarge(MAX_EVENT));
        }
    }
}

/// Applies one watch event line; `Some` ends the watch.
async fn handle_line<T: Resource, M: Send>(
    line: &[u8],
    rv: &mut String,
    tx: &Sink<T, M>,
) -> Option<WatchEnd> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let ev: WatchEvent = match serde_json::from_slice(line) {
        Ok(ev) => ev,
        Err(e) => return Some(WatchEnd::Failed(e.into())),
    };
    let new_rv = |o: &serde_json::Value| {
        o.get("metadata")
            .and_then(|m| m.get("resourceVersion"))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let event = match ev.kind.as_str() {
        "ADDED" | "MODIFIED" | "DELETED" => {
            if let Some(v) = new_rv(&ev.object) {
                *rv = v;
            }
            let deleted = ev.kind == "DELETED";
            let obj = decode::<T>(ev.object)?;
            if deleted {
                Event::Delete(obj)
            } else {
                Event::Upsert(obj)
            }
        }
        "BOOKMARK" => {
            if let Some(v) = new_rv(&ev.object) {
                *rv = v;
            }
            return None;
        }
        "ERROR" => {
            let s: Status = serde_json::from_value(ev.object).unwrap_or_default();
            return Some(if s.code == 410 {
                WatchEnd::Gone
            } else {
                WatchEnd::Failed(ApiError::ErrorEvent {
                    code: s.code,
                    reason: s.reason,
                    message: s.message,
                })
            });
        }
        other => return Some(WatchEnd::Failed(ApiError::EventType(other.to_owned()))),
    };
    if !tx.send(event).await {
        return Some(WatchEnd::Stopped);
    }
    None
}

/// Keeps the main task's copy of `spec` current until the main task goes away; see the module
/// docs.
pub async fn reflect<T: Resource, M: Send>(
    conn: Arc<Connection>,
    spec: WatchSpec,
    tuning: Tuning,
    tx: Sink<T, M>,
    failures: Counter,
) {
    let mut backoff = Backoff::new(tuning.min_backoff, tuning.max_backoff);
    let what = |spec: &WatchSpec| {
        format!(
            "{:?} in {}",
            spec.kind,
            spec.namespace.as_deref().unwrap_or("all namespaces")
        )
    };
    'list: loop {
        let (items, mut rv) = match list::<T>(&conn, &spec, &tuning).await {
            Ok(l) => l,
            Err(error) => {
                failures.inc();
                warn!(watch = %what(&spec), %error, "Kubernetes LIST failed; keeping the last good objects.");
                if !tx.send(Event::Failed).await {
                    return;
                }
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        backoff.reset();
        if !tx.send(Event::Replace(items)).await {
            return;
        }
        loop {
            let started = Instant::now();
            let before = rv.clone();
            let end = watch(&conn, &spec, &tuning, &mut rv, &tx).await;
            if rv != before {
                // The watch worked for a while: a later failure starts the backoff afresh.
                backoff.reset();
            }
            match end {
                WatchEnd::Stopped => return,
                WatchEnd::Closed => {
                    debug!(watch = %what(&spec), "Kubernetes watch closed by the server; resuming.");
                    // A server that closes at once must not make this spin.
                    if started.elapsed() < tuning.min_backoff {
                        tokio::time::sleep(tuning.min_backoff).await;
                    }
                    backoff.reset();
                }
                WatchEnd::Dropped(error) => {
                    failures.inc();
                    warn!(watch = %what(&spec), %error, resource_version = %rv, "Kubernetes watch dropped; resuming from the last resource version.");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                WatchEnd::Gone => {
                    failures.inc();
                    warn!(watch = %what(&spec), resource_version = %rv, "Kubernetes resource version too old (410 Gone); listing again.");
                    continue 'list;
                }
                WatchEnd::Failed(error) => {
                    failures.inc();
                    warn!(watch = %what(&spec), %error, "Kubernetes watch failed; listing again.");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue 'list;
                }
            }
        }
    }
}
