//! `kubernetes_sd_configs`: targets from the Kubernetes API, as Prometheus discovers them.
//!
//! `run(cfg, base, out, failures, shutdown)` connects to the API server ([`config`]: explicit
//! `api_server`, `kubeconfig_file`, or in-cluster), then keeps one reflector ([`api`]: LIST,
//! then WATCH with bookmarks, re-list on 410 Gone) per watched collection and publishes the
//! role's groups ([`targets`]) built from what they hold. As in Prometheus:
//!
//! - Watched collections: the role's own objects; for `endpoints` and `endpointslice` also
//!   pods and services (pod and service labels on endpoint targets). `attach_metadata` adds,
//!   as Prometheus 3.14 does: with `node` (roles `pod`, `endpoints`, `endpointslice`) the
//!   nodes; with `namespace` (every role but `node`, Prometheus 3.6) the namespaces; with
//!   `deployment` (the three pod-backed roles, 3.11) the ReplicaSets, whose controller names
//!   the Deployment; with `cronjob` (same roles, 3.11) the Jobs, whose controller names the
//!   CronJob. `job` alone needs no watch (the pod's controller names the Job): Prometheus
//!   watches Jobs for it all the same, Uplink does not, and the labels are the same. Each
//!   namespaced collection is watched once per namespace of `namespaces.names` (plus the
//!   pod's own namespace with `own_namespace`), or across all namespaces when none is given;
//!   nodes and namespaces are cluster-scoped. `selectors` of the matching role become
//!   `labelSelector`/`fieldSelector` (namespaces, ReplicaSets and Jobs are never filtered).
//! - The first publish waits until every collection has been listed once (or its first list
//!   has failed), like Prometheus waiting for its informers' caches to sync; then every change
//!   republishes the complete list, at most once per `min_publish_interval` (1s).
//! - A failing API server keeps the last good objects, hence the last good groups; every
//!   failed list, dropped watch, 410 and failed connection set-up is counted in `failures`
//!   (Prometheus's `prometheus_sd_kubernetes_failures_total`).
//! - If the connection cannot be set up (no in-cluster environment, unreadable kubeconfig or
//!   CA), the provider publishes an empty list once, logs, counts and retries with backoff
//!   (a deviation: Prometheus drops such an entry until the next reload).
//!
//! Not provided: Prometheus's `prometheus_sd_kubernetes_events_total` and client-go's
//! request metrics (only the failure counter exists).
//!
//! Not implemented, deliberately: the `v1beta1` EndpointSlice and Ingress APIs of Kubernetes
//! older than 1.21 and 1.19; kubeconfig `exec`/`auth-provider` plugins; protobuf encoding.
//! Duplicate namespaces in `namespaces.names` are watched once (Prometheus watches them twice,
//! with the same groups).

pub mod api;
pub mod config;
pub mod targets;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use api::Tuning;
use api::{Event, Kind, Resource, Sink, WatchSpec};
use config::{Connection, connect};
pub use config::{InCluster, KubernetesSdConfig, Role};
use targets::Stores;

use super::{Publisher, TargetGroup, publish};
use crate::ship::Backoff;

/// The user agent sent to the API server.
const USER_AGENT: &str = concat!("uplink-agent/", env!("CARGO_PKG_VERSION"));

/// Runs until `shutdown` is cancelled, with the real in-cluster environment and default
/// timings; see the module docs.
pub async fn run(
    cfg: KubernetesSdConfig,
    base: PathBuf,
    out: Publisher,
    failures: Counter,
    shutdown: CancellationToken,
) {
    run_with(
        cfg,
        base,
        InCluster::from_env(),
        Tuning::default(),
        out,
        failures,
        shutdown,
    )
    .await;
}

/// A reflector's event, tagged with the watch it came from.
enum Msg {
    Node(usize, Event<api::Node>),
    Pod(usize, Event<api::Pod>),
    Service(usize, Event<api::Service>),
    Endpoints(usize, Event<api::Endpoints>),
    Slice(usize, Event<api::EndpointSlice>),
    Ingress(usize, Event<api::Ingress>),
    Namespace(usize, Event<api::Namespace>),
    ReplicaSet(usize, Event<api::ReplicaSet>),
    Job(usize, Event<api::Job>),
}

/// The collections `cfg` needs watched.
pub fn watches(cfg: &KubernetesSdConfig, own_namespace: Option<&str>) -> Vec<WatchSpec> {
    let Some(role) = cfg.role else {
        return Vec::new();
    };
    let mut namespaces: Vec<Option<String>> = Vec::new();
    for n in cfg
        .namespaces
        .names
        .iter()
        .map(String::as_str)
        .chain(own_namespace)
    {
        if !namespaces.iter().any(|x| x.as_deref() == Some(n)) {
            namespaces.push(Some(n.to_owned()));
        }
    }
    if namespaces.is_empty() {
        namespaces.push(None);
    }
    let kinds: &[(Kind, Role)] = match role {
        Role::Node => &[],
        Role::Pod => &[(Kind::Pod, Role::Pod)],
        Role::Service => &[(Kind::Service, Role::Service)],
        Role::Endpoints => &[
            (Kind::Endpoints, Role::Endpoints),
            (Kind::Service, Role::Service),
            (Kind::Pod, Role::Pod),
        ],
        Role::EndpointSlice => &[
            (Kind::EndpointSlice, Role::EndpointSlice),
            (Kind::Service, Role::Service),
            (Kind::Pod, Role::Pod),
        ],
        Role::Ingress => &[(Kind::Ingress, Role::Ingress)],
    };
    let attach = &cfg.attach_metadata;
    let pod_backed = matches!(role, Role::Pod | Role::Endpoints | Role::EndpointSlice);
    let mut out = Vec::new();
    let mut per_namespace = |kind: Kind, (label_selector, field_selector): (String, String)| {
        for ns in &namespaces {
            out.push(WatchSpec {
                kind,
                namespace: ns.clone(),
                label_selector: label_selector.clone(),
                field_selector: field_selector.clone(),
            });
        }
    };
    for (kind, sel_role) in kinds {
        per_namespace(*kind, cfg.selector(*sel_role));
    }
    if pod_backed && attach.deployment {
        per_namespace(Kind::ReplicaSet, Default::default());
    }
    if pod_backed && attach.cronjob {
        per_namespace(Kind::Job, Default::default());
    }
    if role == Role::Node || (pod_backed && attach.node) {
        let (label_selector, field_selector) = cfg.selector(Role::Node);
        out.push(WatchSpec {
            kind: Kind::Node,
            namespace: None,
            label_selector,
            field_selector,
        });
    }
    if role != Role::Node && attach.namespace {
        out.push(WatchSpec {
            kind: Kind::Namespace,
            namespace: None,
            label_selector: String::new(),
            field_selector: String::new(),
        });
    }
    out
}

/// Starts the reflector of `spec` (watch number `id`) on `tasks`.
fn spawn_reflector(
    tasks: &mut JoinSet<()>,
    conn: &Arc<Connection>,
    id: usize,
    spec: WatchSpec,
    tuning: &Tuning,
    tx: &mpsc::Sender<Msg>,
    failures: &Counter,
) {
    macro_rules! go {
        ($variant:ident) => {
            tasks.spawn(api::reflect(
                conn.clone(),
                spec,
                tuning.clone(),
                Sink {
                    tx: tx.clone(),
                    wrap: Box::new(move |e| Msg::$variant(id, e)),
                },
                failures.clone(),
            ))
        };
    }
    match spec.kind {
        Kind::Node => go!(Node),
        Kind::Pod => go!(Pod),
        Kind::Service => go!(Service),
        Kind::Endpoints => go!(Endpoints),
        Kind::EndpointSlice => go!(Slice),
        Kind::Ingress => go!(Ingress),
        Kind::Namespace => go!(Namespace),
        Kind::ReplicaSet => go!(ReplicaSet),
        Kind::Job => go!(Job),
    };
}

/// Applies `msg`; returns the watch it came from and whether it settled that watch's list
/// (a list, or a failed list).
fn apply(stores: &mut Stores, msg: Msg) -> (usize, bool) {
    fn one<T: Resource>(store: &mut targets::Store<T>, id: usize, e: Event<T>) -> (usize, bool) {
        let listed = matches!(e, Event::Replace(_) | Event::Failed);
        store.apply(id, e);
        (id, listed)
    }
    match msg {
        Msg::Node(id, e) => one(&mut stores.nodes, id, e),
        Msg::Pod(id, e) => one(&mut stores.pods, id, e),
        Msg::Service(id, e) => one(&mut stores.services, id, e),
        Msg::Endpoints(id, e) => one(&mut stores.endpoints, id, e),
        Msg::Slice(id, e) => one(&mut stores.slices, id, e),
        Msg::Ingress(id, e) => one(&mut stores.ingresses, id, e),
        Msg::Namespace(id, e) => one(&mut stores.namespaces, id, e),
        Msg::ReplicaSet(id, e) => one(&mut stores.replica_sets, id, e),
        Msg::Job(id, e) => one(&mut stores.jobs, id, e),
    }
}

/// [`run`] with an explicit in-cluster environment and timings (tests use short ones).
pub async fn run_with(
    cfg: KubernetesSdConfig,
    base: PathBuf,
    in_cluster: InCluster,
    tuning: Tuning,
    out: Publisher,
    failures: Counter,
    shutdown: CancellationToken,
) {
    let Some(role) = cfg.role else {
        warn!("kubernetes_sd_configs entry without a role; it discovers nothing.");
        publish(&out, Vec::new(), true);
        shutdown.cancelled().await;
        return;
    };
    let mut first = true;
    let mut backoff = Backoff::new(tuning.min_backoff, tuning.max_backoff);
    let conn = loop {
        match connect(&cfg, &base, &in_cluster, USER_AGENT) {
            Ok(c) => break Arc::new(c),
            Err(error) => {
                failures.inc();
                warn!(%role, %error, "Cannot connect to the Kubernetes API server; retrying.");
                if first {
                    publish(&out, Vec::new(), true);
                    first = false;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    };
    info!(%role, api_server = %conn.base, "Kubernetes service discovery started.");
    let specs = watches(&cfg, conn.own_namespace.as_deref());
    let (tx, mut rx) = mpsc::channel::<Msg>(64);
    let mut tasks = JoinSet::new();
    for (id, spec) in specs.iter().enumerate() {
        spawn_reflector(&mut tasks, &conn, id, spec.clone(), &tuning, &tx, &failures);
    }
    drop(tx);
    let mut pending: Vec<bool> = vec![true; specs.len()];
    let mut stores = Stores::default();
    let mut groups: Vec<TargetGroup> = Vec::new();
    let mut dirty = false;
    let mut next_publish = Instant::now();
    loop {
        let waiting = pending.iter().any(|p| *p);
        let publish_due = dirty && !waiting;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            msg = rx.recv() => {
                let Some(msg) = msg else {
                    // Every reflector ended: only possible if they all panicked.
                    warn!(%role, "Kubernetes reflectors stopped.");
                    shutdown.cancelled().await;
                    return;
                };
                let (id, listed) = apply(&mut stores, msg);
                if listed && let Some(p) = pending.get_mut(id) {
                    *p = false;
                }
                dirty = true;
            }
            _ = tokio::time::sleep_until(next_publish), if publish_due || (first && !waiting) => {
                groups = targets::build(role, &stores, &cfg.attach_metadata, &groups);
                publish(&out, groups.clone(), first);
                first = false;
                dirty = false;
                next_publish = Instant::now() + tuning.min_publish_interval;
            }
        }
    }
}
