//! Tests against a scripted API server (axum, in-process): LIST with pagination, WATCH as
//! chunked JSON lines with bookmarks, 410 Gone as a status or an ERROR event, dropped
//! connections, failing servers, bearer tokens, and TLS with the in-cluster configuration.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::*;
use crate::discovery::LabelSet;

// ---------------------------------------------------------------- the scripted API server

/// One logged change, replayed to watches.
#[derive(Clone)]
struct Change {
    rv: u64,
    plural: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

/// A request the server saw.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    query: BTreeMap<String, String>,
    auth: String,
}

impl Seen {
    fn is_watch(&self) -> bool {
        self.query.get("watch").is_some_and(|w| w == "1")
    }
}

#[derive(Default)]
struct Cluster {
    rv: u64,
    /// (plural, namespace, name) → object.
    objects: BTreeMap<(String, String, String), Value>,
    log: Vec<Change>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    gone_as_event: bool,
    /// Answer every request with this status.
    fail: Option<u16>,
    /// Bumped to drop every open watch mid-stream.
    drop_epoch: u64,
    token: String,
    seen: Vec<Seen>,
}

impl Cluster {
    fn key(plural: &str, obj: &Value) -> (String, String, String) {
        let m = &obj["metadata"];
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        (plural.to_owned(), s(&m["namespace"]), s(&m["name"]))
    }

    /// Creates or replaces an object; `logged: false` changes it without a watch event, as if
    /// the event had been compacted away.
    fn put(&mut self, plural: &str, mut obj: Value, logged: bool) {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let key = Self::key(plural, &obj);
        let kind = if self.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        if logged {
            self.log.push(Change {
                rv: self.rv,
                plural: plural.to_owned(),
                namespace: key.1.clone(),
                kind,
                object: obj.clone(),
            });
        }
        self.objects.insert(key, obj);
    }

    fn delete(&mut self, plural: &str, namespace: &str, name: &str) {
        self.rv += 1;
        let key = (plural.to_owned(), namespace.to_owned(), name.to_owned());
        if let Some(mut obj) = self.objects.remove(&key) {
            obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
            self.log.push(Change {
                rv: self.rv,
                plural: plural.to_owned(),
                namespace: namespace.to_owned(),
                kind: "DELETED",
                object: obj,
            });
        }
    }

    fn lists(&self, plural: &str) -> usize {
        self.seen
            .iter()
            .filter(|s| !s.is_watch() && s.path.ends_with(plural))
            .count()
    }

    fn watches(&self, plural: &str) -> Vec<Seen> {
        self.seen
            .iter()
            .filter(|s| s.is_watch() && s.path.ends_with(plural))
            .cloned()
            .collect()
    }
}

#[derive(Clone)]
struct Server(Arc<Mutex<Cluster>>);

impl Server {
    fn lock(&self) -> MutexGuard<'_, Cluster> {
        self.0.lock().expect("cluster lock")
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn error_response(code: u16, reason: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        status(code, reason, message).to_string(),
    )
        .into_response()
}

/// `/api/v1[/namespaces/<ns>]/<plural>` or `/apis/<group>/v1[/namespaces/<ns>]/<plural>`.
fn parse_path(path: &str) -> Option<(Option<String>, String)> {
    let rest = path.strip_prefix("/api/v1/").or_else(|| {
        path.strip_prefix("/apis/")
            .and_then(|p| p.split_once("/v1/").map(|x| x.1))
    })?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [plural] => Some((None, (*plural).to_owned())),
        ["namespaces", ns, plural] => Some((Some((*ns).to_owned()), (*plural).to_owned())),
        _ => None,
    }
}

/// How often an idle watch gets a BOOKMARK, and how long the server keeps a watch open.
const BOOKMARK_EVERY: Duration = Duration::from_millis(50);
const WATCH_LIFETIME: Duration = Duration::from_secs(3);

async fn handle(
    State(server): State<Server>,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let auth = headers
        .get("authorization")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let mut c = server.lock();
    c.seen.push(Seen {
        path: uri.path().to_owned(),
        query: query.clone(),
        auth: auth.clone(),
    });
    if auth != format!("Bearer {}", c.token) {
        return error_response(401, "Unauthorized", "Unauthorized");
    }
    if let Some(code) = c.fail {
        return error_response(code, "InternalError", "etcd is having a bad day");
    }
    let Some((namespace, plural)) = parse_path(uri.path()) else {
        return error_response(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let in_scope = |ns: &str| namespace.as_deref().is_none_or(|n| n == ns);
    if query.get("watch").is_some_and(|w| w == "1") {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if from < c.compacted {
            let message = format!("too old resource version: {from} ({})", c.compacted);
            if !c.gone_as_event {
                return error_response(410, "Expired", &message);
            }
            let line = json!({"type": "ERROR", "object": status(410, "Expired", &message)});
            return (StatusCode::OK, format!("{line}\n")).into_response();
        }
        let epoch = c.drop_epoch;
        drop(c);
        let started = tokio::time::Instant::now();
        let stream = futures_util::stream::unfold(
            (server, from, started, false),
            move |(server, cursor, started, done)| {
                let plural = plural.clone();
                let namespace = namespace.clone();
                async move {
                    if done {
                        return None;
                    }
                    let mut waited = Duration::ZERO;
                    loop {
                        {
                            let c = server.lock();
                            if c.drop_epoch != epoch {
                                let e = std::io::Error::other("connection reset");
                                return Some((Err(e), (server.clone(), cursor, started, true)));
                            }
                            let next = c.log.iter().find(|ch| {
                                ch.rv > cursor
                                    && ch.plural == plural
                                    && namespace.as_deref().is_none_or(|n| n == ch.namespace)
                            });
                            if let Some(ch) = next {
                                let line = json!({"type": ch.kind, "object": ch.object});
                                let rv = ch.rv;
                                return Some((
                                    Ok(Bytes::from(format!("{line}\n"))),
                                    (server.clone(), rv, started, false),
                                ));
                            }
                            if waited >= BOOKMARK_EVERY {
                                // The newest logged version, whatever its kind.
                                let rv = c.log.last().map_or(cursor, |ch| ch.rv).max(cursor);
                                let kind = match plural.as_str() {
                                    "pods" => "Pod",
                                    "nodes" => "Node",
                                    _ => "Object",
                                };
                                let line = json!({"type": "BOOKMARK", "object": {"kind": kind,
                                    "metadata": {"resourceVersion": rv.to_string()}}});
                                return Some((
                                    Ok(Bytes::from(format!("{line}\n"))),
                                    (server.clone(), rv, started, false),
                                ));
                            }
                        }
                        if started.elapsed() > WATCH_LIFETIME {
                            return None;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        waited += Duration::from_millis(10);
                    }
                }
            },
        );
        return (
            [("content-type", "application/json")],
            Body::from_stream(stream),
        )
            .into_response();
    }
    // LIST: `limit` items from offset `continue`.
    let items: Vec<&Value> = c
        .objects
        .iter()
        .filter(|((p, ns, _), _)| *p == plural && in_scope(ns))
        .map(|(_, v)| v)
        .collect();
    let offset: usize = query
        .get("continue")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let limit: usize = query
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);
    let page: Vec<&Value> = items.iter().skip(offset).take(limit).copied().collect();
    let cont = if offset + page.len() < items.len() {
        (offset + page.len()).to_string()
    } else {
        String::new()
    };
    let body = json!({"kind": "List", "apiVersion": "v1",
        "metadata": {"resourceVersion": c.rv.to_string(), "continue": cont},
        "items": page});
    ([("content-type", "application/json")], body.to_string()).into_response()
}

fn router(server: Server) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(server)
}

async fn start(objects: &[(&str, Value)]) -> (String, Server) {
    let server = Server(Arc::new(Mutex::new(Cluster {
        token: "t0k3n".into(),
        ..Cluster::default()
    })));
    for (plural, obj) in objects {
        server.lock().put(plural, obj.clone(), true);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = router(server.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), server)
}

// ---------------------------------------------------------------- realistic objects

const POD_UID: &str = "6b1e3b5e-8f3c-4d7e-9a51-0c2f3e4d5a6b";

fn node() -> Value {
    json!({
      "kind": "Node", "apiVersion": "v1",
      "metadata": {
        "name": "edge-1", "uid": "0d6c5a4e-1f2b-4c3d-8e9f-a0b1c2d3e4f5",
        "labels": {"beta.kubernetes.io/arch": "arm64", "kubernetes.io/hostname": "edge-1",
                   "node-role.kubernetes.io/control-plane": "true"},
        "annotations": {"k3s.io/node-args": "[\"server\"]"}
      },
      "spec": {"podCIDR": "10.42.0.0/24", "providerID": "k3s://edge-1"},
      "status": {
        "addresses": [{"type": "Hostname", "address": "edge-1"},
                      {"type": "InternalIP", "address": "192.168.1.10"},
                      {"type": "InternalIP", "address": "fd00::10"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        "nodeInfo": {"kubeletVersion": "v1.29.4+k3s1", "architecture": "arm64"}
      }
    })
}

fn coredns_pod() -> Value {
    json!({
      "kind": "Pod", "apiVersion": "v1",
      "metadata": {
        "name": "coredns-6799fbcd5-x7k2p", "generateName": "coredns-6799fbcd5-",
        "namespace": "kube-system", "uid": POD_UID,
        "labels": {"k8s-app": "kube-dns", "pod-template-hash": "6799fbcd5"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "name": "coredns-6799fbcd5", "uid": "a1b2", "controller": true,
            "blockOwnerDeletion": true}]
      },
      "spec": {
        "nodeName": "edge-1", "priorityClassName": "system-cluster-critical",
        "containers": [{
          "name": "coredns", "image": "rancher/mirrored-coredns-coredns:1.10.1",
          "args": ["-conf", "/etc/coredns/Corefile"],
          "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                    {"name": "metrics", "containerPort": 9153, "protocol": "TCP"}],
          "resources": {"limits": {"memory": "170Mi"}}
        }]
      },
      "status": {
        "phase": "Running", "hostIP": "192.168.1.10", "podIP": "10.42.0.5",
        "podIPs": [{"ip": "10.42.0.5"}],
        "conditions": [{"type": "Initialized", "status": "True"},
                       {"type": "Ready", "status": "True"},
                       {"type": "ContainersReady", "status": "True"},
                       {"type": "PodScheduled", "status": "True"}],
        "containerStatuses": [{"name": "coredns", "ready": true, "restartCount": 0,
            "image": "docker.io/rancher/mirrored-coredns-coredns:1.10.1",
            "containerID": "containerd://4f2c9d"}]
      }
    })
}

fn backup_pod() -> Value {
    json!({
      "kind": "Pod", "apiVersion": "v1",
      "metadata": {"name": "backup-0", "namespace": "default", "uid": "b-uid",
        "annotations": {"backup.example.com/schedule": "@daily"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "backup"}]},
      "spec": {"nodeName": "edge-1",
        "initContainers": [{"name": "init-perms", "image": "busybox:1.36"}],
        "containers": [{"name": "restic", "image": "restic/restic:0.16.4"}]},
      "status": {"phase": "Running", "hostIP": "192.168.1.10", "podIP": "10.42.0.7",
        "conditions": [{"type": "Ready", "status": "False"}],
        "initContainerStatuses": [{"name": "init-perms", "containerID": "containerd://1111"}],
        "containerStatuses": [{"name": "restic", "containerID": "containerd://2222"}]}
    })
}

fn pending_pod() -> Value {
    json!({"kind": "Pod", "apiVersion": "v1",
      "metadata": {"name": "job-x", "namespace": "default", "uid": "p-uid"},
      "spec": {"containers": [{"name": "job", "image": "alpine"}]},
      "status": {"phase": "Pending"}})
}

fn kube_dns_service() -> Value {
    json!({
      "kind": "Service", "apiVersion": "v1",
      "metadata": {"name": "kube-dns", "namespace": "kube-system",
        "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"},
        "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"}},
      "spec": {"clusterIP": "10.43.0.10", "clusterIPs": ["10.43.0.10"], "type": "ClusterIP",
        "selector": {"k8s-app": "kube-dns"},
        "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                  {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}
    })
}

fn traefik_service() -> Value {
    json!({
      "kind": "Service", "apiVersion": "v1",
      "metadata": {"name": "traefik", "namespace": "kube-system"},
      "spec": {"clusterIP": "10.43.0.20", "type": "LoadBalancer",
        "ports": [{"name": "web", "port": 80, "protocol": "TCP", "nodePort": 30080}]},
      "status": {"loadBalancer": {"ingress": [{"ip": "192.168.1.10"}]}}
    })
}

fn kube_dns_endpoints() -> Value {
    json!({
      "kind": "Endpoints", "apiVersion": "v1",
      "metadata": {"name": "kube-dns", "namespace": "kube-system",
        "labels": {"k8s-app": "kube-dns"},
        "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2024-05-01T10:00:00Z"}},
      "subsets": [{
        "addresses": [{"ip": "10.42.0.5", "nodeName": "edge-1",
          "targetRef": {"kind": "Pod", "namespace": "kube-system",
                        "name": "coredns-6799fbcd5-x7k2p", "uid": POD_UID}}],
        "notReadyAddresses": [{"ip": "10.42.0.9", "hostname": "coredns-b",
          "targetRef": {"kind": "Pod", "namespace": "kube-system", "name": "coredns-gone"}}],
        "ports": [{"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                  {"name": "dns", "port": 53, "protocol": "UDP"}]
      }]
    })
}

fn kube_dns_slice() -> Value {
    json!({
      "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
      "metadata": {"name": "kube-dns-7x9qz", "namespace": "kube-system",
        "generateName": "kube-dns-",
        "labels": {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                   "k8s-app": "kube-dns", "kubernetes.io/service-name": "kube-dns"}},
      "addressType": "IPv4",
      "endpoints": [
        {"addresses": ["10.42.0.5"],
         "conditions": {"ready": true, "serving": true, "terminating": false},
         "nodeName": "edge-1", "zone": "zone-a",
         "targetRef": {"kind": "Pod", "namespace": "kube-system",
                       "name": "coredns-6799fbcd5-x7k2p", "uid": POD_UID}},
        {"addresses": ["10.42.0.9"], "conditions": {"ready": false},
         "deprecatedTopology": {"kubernetes.io/hostname": "edge-2"},
         "targetRef": {"kind": "Pod", "namespace": "kube-system", "name": "coredns-gone"}}
      ],
      "ports": [{"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP", "appProtocol": "dns"}]
    })
}

fn grafana_ingress() -> Value {
    json!({
      "kind": "Ingress", "apiVersion": "networking.k8s.io/v1",
      "metadata": {"name": "grafana", "namespace": "monitoring",
        "labels": {"app.kubernetes.io/name": "grafana"},
        "annotations": {"traefik.ingress.kubernetes.io/router.entrypoints": "websecure"}},
      "spec": {
        "ingressClassName": "traefik",
        "tls": [{"hosts": ["*.example.com"], "secretName": "wildcard"}],
        "rules": [
          {"host": "grafana.example.com", "http": {"paths": [
            {"path": "/", "pathType": "Prefix",
             "backend": {"service": {"name": "grafana", "port": {"number": 80}}}},
            {"path": "/api", "pathType": "Prefix",
             "backend": {"service": {"name": "grafana", "port": {"number": 80}}}}]}},
          {"host": "legacy.internal"}
        ]
      }
    })
}

fn cluster_objects() -> Vec<(&'static str, Value)> {
    vec![
        ("nodes", node()),
        ("pods", coredns_pod()),
        ("pods", backup_pod()),
        ("pods", pending_pod()),
        ("services", kube_dns_service()),
        ("services", traefik_service()),
        ("endpoints", kube_dns_endpoints()),
        ("endpointslices", kube_dns_slice()),
        ("ingresses", grafana_ingress()),
    ]
}

// ---------------------------------------------------------------- expectations

/// A label set; names starting with `~` get the `__meta_kubernetes_` prefix.
fn ls(pairs: &[(&str, &str)]) -> LabelSet {
    pairs
        .iter()
        .map(|(k, v)| {
            let k = match k.strip_prefix('~') {
                Some(rest) => format!("__meta_kubernetes_{rest}"),
                None => (*k).to_owned(),
            };
            (k, (*v).to_owned())
        })
        .collect()
}

fn with(base: &LabelSet, pairs: &[(&str, &str)]) -> LabelSet {
    let mut out = base.clone();
    out.extend(ls(pairs));
    out
}

fn group(source: &str, labels: LabelSet, targets: Vec<LabelSet>) -> TargetGroup {
    TargetGroup {
        source: source.into(),
        targets,
        labels,
    }
}

/// The labels every target of the coredns pod shares (Prometheus's `podLabels`).
fn coredns_pod_labels() -> LabelSet {
    ls(&[
        ("~pod_name", "coredns-6799fbcd5-x7k2p"),
        ("~pod_ip", "10.42.0.5"),
        ("~pod_ready", "true"),
        ("~pod_phase", "Running"),
        ("~pod_node_name", "edge-1"),
        ("~pod_host_ip", "192.168.1.10"),
        ("~pod_uid", POD_UID),
        ("~pod_label_k8s_app", "kube-dns"),
        ("~pod_labelpresent_k8s_app", "true"),
        ("~pod_label_pod_template_hash", "6799fbcd5"),
        ("~pod_labelpresent_pod_template_hash", "true"),
        ("~pod_controller_kind", "ReplicaSet"),
        ("~pod_controller_name", "coredns-6799fbcd5"),
    ])
}

fn kube_dns_service_labels() -> LabelSet {
    ls(&[
        ("~namespace", "kube-system"),
        ("~service_name", "kube-dns"),
        ("~service_label_k8s_app", "kube-dns"),
        ("~service_labelpresent_k8s_app", "true"),
        ("~service_label_kubernetes_io_name", "CoreDNS"),
        ("~service_labelpresent_kubernetes_io_name", "true"),
        ("~service_annotation_prometheus_io_port", "9153"),
        ("~service_annotationpresent_prometheus_io_port", "true"),
        ("~service_annotation_prometheus_io_scrape", "true"),
        ("~service_annotationpresent_prometheus_io_scrape", "true"),
    ])
}

fn node_meta_labels() -> LabelSet {
    ls(&[
        ("~node_name", "edge-1"),
        ("~node_label_beta_kubernetes_io_arch", "arm64"),
        ("~node_labelpresent_beta_kubernetes_io_arch", "true"),
        ("~node_label_kubernetes_io_hostname", "edge-1"),
        ("~node_labelpresent_kubernetes_io_hostname", "true"),
        ("~node_label_node_role_kubernetes_io_control_plane", "true"),
        (
            "~node_labelpresent_node_role_kubernetes_io_control_plane",
            "true",
        ),
        ("~node_annotation_k3s_io_node_args", "[\"server\"]"),
        ("~node_annotationpresent_k3s_io_node_args", "true"),
    ])
}

fn expected(role: Role) -> Vec<TargetGroup> {
    match role {
        Role::Node => vec![group(
            "node/edge-1",
            with(
                &node_meta_labels(),
                &[("~node_provider_id", "k3s://edge-1")],
            ),
            vec![ls(&[
                ("__address__", "192.168.1.10:10250"),
                ("instance", "edge-1"),
                ("~node_address_InternalIP", "192.168.1.10"),
                ("~node_address_Hostname", "edge-1"),
            ])],
        )],
        Role::Pod => {
            let backup = ls(&[
                ("~namespace", "default"),
                ("~pod_name", "backup-0"),
                ("~pod_ip", "10.42.0.7"),
                ("~pod_ready", "false"),
                ("~pod_phase", "Running"),
                ("~pod_node_name", "edge-1"),
                ("~pod_host_ip", "192.168.1.10"),
                ("~pod_uid", "b-uid"),
                ("~pod_annotation_backup_example_com_schedule", "@daily"),
                ("~pod_annotationpresent_backup_example_com_schedule", "true"),
            ]);
            let coredns_target = |port: &str, name: &str, proto: &str| {
                ls(&[
                    ("__address__", &format!("10.42.0.5:{port}")),
                    ("~pod_container_name", "coredns"),
                    ("~pod_container_id", "containerd://4f2c9d"),
                    (
                        "~pod_container_image",
                        "rancher/mirrored-coredns-coredns:1.10.1",
                    ),
                    ("~pod_container_init", "false"),
                    ("~pod_container_port_number", port),
                    ("~pod_container_port_name", name),
                    ("~pod_container_port_protocol", proto),
                ])
            };
            vec![
                group(
                    "pod/default/backup-0",
                    backup,
                    vec![
                        ls(&[
                            ("__address__", "10.42.0.7"),
                            ("~pod_container_name", "restic"),
                            ("~pod_container_id", "containerd://2222"),
                            ("~pod_container_image", "restic/restic:0.16.4"),
                            ("~pod_container_init", "false"),
                        ]),
                        ls(&[
                            ("__address__", "10.42.0.7"),
                            ("~pod_container_name", "init-perms"),
                            ("~pod_container_id", "containerd://1111"),
                            ("~pod_container_image", "busybox:1.36"),
                            ("~pod_container_init", "true"),
                        ]),
                    ],
                ),
                group("pod/default/job-x", LabelSet::new(), vec![]),
                group(
                    "pod/kube-system/coredns-6799fbcd5-x7k2p",
                    with(&coredns_pod_labels(), &[("~namespace", "kube-system")]),
                    vec![
                        coredns_target("53", "dns", "UDP"),
                        coredns_target("53", "dns-tcp", "TCP"),
                        coredns_target("9153", "metrics", "TCP"),
                    ],
                ),
            ]
        }
        Role::Service => vec![
            group(
                "svc/kube-system/kube-dns",
                kube_dns_service_labels(),
                [("dns", "UDP"), ("dns-tcp", "TCP")]
                    .iter()
                    .map(|(name, proto)| {
                        ls(&[
                            ("__address__", "kube-dns.kube-system.svc:53"),
                            ("~service_port_name", name),
                            ("~service_port_number", "53"),
                            ("~service_port_protocol", proto),
                            ("~service_type", "ClusterIP"),
                            ("~service_cluster_ip", "10.43.0.10"),
                        ])
                    })
                    .collect(),
            ),
            group(
                "svc/kube-system/traefik",
                ls(&[("~namespace", "kube-system"), ("~service_name", "traefik")]),
                vec![ls(&[
                    ("__address__", "traefik.kube-system.svc:80"),
                    ("~service_port_name", "web"),
                    ("~service_port_number", "80"),
                    ("~service_port_protocol", "TCP"),
                    ("~service_type", "LoadBalancer"),
                    ("~service_cluster_ip", "10.43.0.20"),
                    ("~service_loadbalancer_ip", ""),
                ])],
            ),
        ],
        Role::Endpoints => {
            let labels = with(
                &kube_dns_service_labels(),
                &[
                    ("~endpoints_name", "kube-dns"),
                    ("~endpoints_label_k8s_app", "kube-dns"),
                    ("~endpoints_labelpresent_k8s_app", "true"),
                    (
                        "~endpoints_annotation_endpoints_kubernetes_io_last_change_trigger_time",
                        "2024-05-01T10:00:00Z",
                    ),
                    (
                        "~endpoints_annotationpresent_endpoints_kubernetes_io_last_change_trigger_time",
                        "true",
                    ),
                ],
            );
            let ready = |name: &str, proto: &str| {
                with(
                    &coredns_pod_labels(),
                    &[
                        ("__address__", "10.42.0.5:53"),
                        ("~endpoint_port_name", name),
                        ("~endpoint_port_protocol", proto),
                        ("~endpoint_ready", "true"),
                        ("~endpoint_address_target_kind", "Pod"),
                        ("~endpoint_address_target_name", "coredns-6799fbcd5-x7k2p"),
                        ("~endpoint_node_name", "edge-1"),
                        ("~pod_container_name", "coredns"),
                        (
                            "~pod_container_image",
                            "rancher/mirrored-coredns-coredns:1.10.1",
                        ),
                        // The first container port numbered 53 is "dns"; the protocol is the
                        // endpoint port's.
                        ("~pod_container_port_name", "dns"),
                        ("~pod_container_port_number", "53"),
                        ("~pod_container_port_protocol", proto),
                    ],
                )
            };
            let not_ready = |name: &str, proto: &str| {
                ls(&[
                    ("__address__", "10.42.0.9:53"),
                    ("~endpoint_port_name", name),
                    ("~endpoint_port_protocol", proto),
                    ("~endpoint_ready", "false"),
                    ("~endpoint_address_target_kind", "Pod"),
                    ("~endpoint_address_target_name", "coredns-gone"),
                    ("~endpoint_hostname", "coredns-b"),
                ])
            };
            vec![group(
                "endpoints/kube-system/kube-dns",
                labels,
                vec![
                    ready("dns-tcp", "TCP"),
                    not_ready("dns-tcp", "TCP"),
                    ready("dns", "UDP"),
                    not_ready("dns", "UDP"),
                    metrics_extra_target(),
                ],
            )]
        }
        Role::EndpointSlice => {
            let labels = with(
                &kube_dns_service_labels(),
                &[
                    ("~endpointslice_address_type", "IPv4"),
                    ("~endpointslice_name", "kube-dns-7x9qz"),
                    (
                        "~endpointslice_label_endpointslice_kubernetes_io_managed_by",
                        "endpointslice-controller.k8s.io",
                    ),
                    (
                        "~endpointslice_labelpresent_endpointslice_kubernetes_io_managed_by",
                        "true",
                    ),
                    ("~endpointslice_label_k8s_app", "kube-dns"),
                    ("~endpointslice_labelpresent_k8s_app", "true"),
                    (
                        "~endpointslice_label_kubernetes_io_service_name",
                        "kube-dns",
                    ),
                    (
                        "~endpointslice_labelpresent_kubernetes_io_service_name",
                        "true",
                    ),
                ],
            );
            let port = |t: &mut LabelSet, name: &str, proto: &str| {
                t.extend(ls(&[
                    ("~endpointslice_port_name", name),
                    ("~endpointslice_port_protocol", proto),
                    ("~endpointslice_port", "53"),
                ]));
                if name == "dns" {
                    t.extend(ls(&[("~endpointslice_port_app_protocol", "dns")]));
                }
            };
            let ready = |name: &str, proto: &str| {
                let mut t = with(
                    &coredns_pod_labels(),
                    &[
                        ("__address__", "10.42.0.5:53"),
                        ("~endpointslice_endpoint_conditions_ready", "true"),
                        ("~endpointslice_endpoint_conditions_serving", "true"),
                        ("~endpointslice_endpoint_conditions_terminating", "false"),
                        ("~endpointslice_address_target_kind", "Pod"),
                        (
                            "~endpointslice_address_target_name",
                            "coredns-6799fbcd5-x7k2p",
                        ),
                        ("~endpointslice_endpoint_node_name", "edge-1"),
                        ("~endpointslice_endpoint_zone", "zone-a"),
                        ("~pod_container_name", "coredns"),
                        (
                            "~pod_container_image",
                            "rancher/mirrored-coredns-coredns:1.10.1",
                        ),
                        ("~pod_container_port_name", "dns"),
                        ("~pod_container_port_number", "53"),
                        // EndpointSlice targets take the container port's protocol.
                        ("~pod_container_port_protocol", "UDP"),
                    ],
                );
                port(&mut t, name, proto);
                t
            };
            let not_ready = |name: &str, proto: &str| {
                let mut t = ls(&[
                    ("__address__", "10.42.0.9:53"),
                    ("~endpointslice_endpoint_conditions_ready", "false"),
                    ("~endpointslice_address_target_kind", "Pod"),
                    ("~endpointslice_address_target_name", "coredns-gone"),
                    (
                        "~endpointslice_endpoint_topology_kubernetes_io_hostname",
                        "edge-2",
                    ),
                    (
                        "~endpointslice_endpoint_topology_present_kubernetes_io_hostname",
                        "true",
                    ),
                ]);
                port(&mut t, name, proto);
                t
            };
            vec![group(
                "endpointslice/kube-system/kube-dns-7x9qz",
                labels,
                vec![
                    ready("dns-tcp", "TCP"),
                    ready("dns", "UDP"),
                    not_ready("dns-tcp", "TCP"),
                    not_ready("dns", "UDP"),
                    metrics_extra_target(),
                ],
            )]
        }
        Role::Ingress => {
            let t = |host: &str, scheme: &str, path: &str| {
                ls(&[
                    ("__address__", host),
                    ("~ingress_scheme", scheme),
                    ("~ingress_host", host),
                    ("~ingress_path", path),
                ])
            };
            vec![group(
                "ingress/monitoring/grafana",
                ls(&[
                    ("~namespace", "monitoring"),
                    ("~ingress_class_name", "traefik"),
                    ("~ingress_name", "grafana"),
                    ("~ingress_label_app_kubernetes_io_name", "grafana"),
                    ("~ingress_labelpresent_app_kubernetes_io_name", "true"),
                    (
                        "~ingress_annotation_traefik_ingress_kubernetes_io_router_entrypoints",
                        "websecure",
                    ),
                    (
                        "~ingress_annotationpresent_traefik_ingress_kubernetes_io_router_entrypoints",
                        "true",
                    ),
                ]),
                vec![
                    t("grafana.example.com", "https", "/"),
                    t("grafana.example.com", "https", "/api"),
                    t("legacy.internal", "http", "/"),
                ],
            )]
        }
    }
}

/// The target for the coredns metrics port, which no endpoint port covers.
fn metrics_extra_target() -> LabelSet {
    with(
        &coredns_pod_labels(),
        &[
            ("__address__", "10.42.0.5:9153"),
            ("~pod_container_name", "coredns"),
            (
                "~pod_container_image",
                "rancher/mirrored-coredns-coredns:1.10.1",
            ),
            ("~pod_container_port_name", "metrics"),
            ("~pod_container_port_number", "9153"),
            ("~pod_container_port_protocol", "TCP"),
        ],
    )
}

// ---------------------------------------------------------------- running the provider

fn fast() -> Tuning {
    Tuning {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        request_timeout: Duration::from_secs(2),
        watch_timeout: Duration::from_secs(1),
        watch_grace: Duration::from_secs(2),
        page_size: 500,
        min_publish_interval: Duration::from_millis(10),
    }
}

fn config(role: &str, url: &str, token_file: &std::path::Path) -> KubernetesSdConfig {
    let yaml = format!(
        "role: {role}\napi_server: {url}\nauthorization: {{credentials_file: {}}}\n",
        token_file.display()
    );
    let cfg: KubernetesSdConfig = serde_yaml::from_str(&yaml).expect("config");
    cfg.validate().expect("valid");
    cfg
}

struct Running {
    rx: watch::Receiver<Vec<TargetGroup>>,
    failures: Counter,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn start(cfg: KubernetesSdConfig, tuning: Tuning, in_cluster: InCluster) -> Running {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, rx) = watch::channel(Vec::new());
        let failures = Counter::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_with(
            cfg,
            dir.path().to_path_buf(),
            in_cluster,
            tuning,
            tx,
            failures.clone(),
            stop.clone(),
        ));
        Running {
            rx,
            failures,
            stop,
            task,
            _dir: dir,
        }
    }

    async fn first(&mut self) -> Vec<TargetGroup> {
        tokio::time::timeout(Duration::from_secs(5), self.rx.changed())
            .await
            .expect("first publish")
            .expect("alive");
        self.rx.borrow_and_update().clone()
    }

    /// Waits until the published groups satisfy `cond`.
    async fn until(
        &mut self,
        what: &str,
        cond: impl Fn(&[TargetGroup]) -> bool,
    ) -> Vec<TargetGroup> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            {
                let g = self.rx.borrow_and_update();
                if cond(&g) {
                    return g.clone();
                }
            }
            match tokio::time::timeout_at(deadline, self.rx.changed()).await {
                Ok(Ok(())) => {}
                _ => panic!("timed out waiting for {what}: {:#?}", *self.rx.borrow()),
            }
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .expect("stops")
            .expect("no panic");
    }
}

fn no_in_cluster() -> InCluster {
    InCluster {
        host: None,
        port: None,
        token_file: "/nonexistent/token".into(),
        ca_file: "/nonexistent/ca.crt".into(),
        namespace_file: "/nonexistent/namespace".into(),
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn token_file(dir: &tempfile::TempDir, token: &str) -> std::path::PathBuf {
    let p = dir.path().join("token");
    std::fs::write(&p, token).expect("token");
    p
}

fn pretty(groups: &[TargetGroup]) -> String {
    groups
        .iter()
        .map(|g| {
            format!(
                "{}\n  labels {:?}\n  targets {:#?}",
                g.source, g.labels, g.targets
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------- the tests

#[tokio::test]
async fn every_role_produces_prometheus_labels() {
    let (url, server) = start(&cluster_objects()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(&dir, "t0k3n\n");
    for role in [
        Role::Node,
        Role::Pod,
        Role::Service,
        Role::Endpoints,
        Role::EndpointSlice,
        Role::Ingress,
    ] {
        let mut r =
            Running::start(config(role.as_str(), &url, &token), fast(), no_in_cluster()).await;
        let got = r.first().await;
        let want = expected(role);
        assert!(
            got == want,
            "role {role}:\n--- got\n{}\n--- want\n{}",
            pretty(&got),
            pretty(&want)
        );
        assert_eq!(r.failures.get(), 0, "role {role}");
        r.stop().await;
    }
    let c = server.lock();
    assert!(c.seen.iter().all(|s| s.auth == "Bearer t0k3n"));
    let paths: std::collections::BTreeSet<&str> = c.seen.iter().map(|s| s.path.as_str()).collect();
    for p in [
        "/api/v1/nodes",
        "/api/v1/pods",
        "/api/v1/services",
        "/api/v1/endpoints",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/apis/networking.k8s.io/v1/ingresses",
    ] {
        assert!(paths.contains(p), "{p} not requested: {paths:?}");
    }
    let w = c.watches("pods");
    assert!(!w.is_empty());
    assert_eq!(w[0].query["allowWatchBookmarks"], "true");
    assert!(w[0].query.contains_key("timeoutSeconds"));
}

#[tokio::test]
async fn attach_metadata_adds_node_labels() {
    let (url, _server) = start(&cluster_objects()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(&dir, "t0k3n");
    let mut cfg = config("pod", &url, &token);
    cfg.attach_metadata.node = true;
    let mut r = Running::start(cfg, fast(), no_in_cluster()).await;
    let got = r.first().await;
    let coredns = got
        .iter()
        .find(|g| g.source == "pod/kube-system/coredns-6799fbcd5-x7k2p")
        .expect("coredns");
    for (k, v) in node_meta_labels() {
        assert_eq!(coredns.labels.get(&k), Some(&v), "{k}");
    }
    r.stop().await;
}

/// A Job of the CronJob `nightly` and a pod it controls, the ReplicaSet of the coredns pod
/// with its Deployment, and the namespaces with labels and annotations.
fn owner_objects() -> Vec<(&'static str, Value)> {
    let mut objects = cluster_objects();
    objects.extend([
        ("namespaces", kube_system_namespace()),
        (
            "namespaces",
            json!({"kind": "Namespace", "apiVersion": "v1",
              "metadata": {"name": "default", "labels": {"kubernetes.io/metadata.name": "default"}}}),
        ),
        (
            "namespaces",
            json!({"kind": "Namespace", "apiVersion": "v1",
              "metadata": {"name": "monitoring", "annotations": {"owner": "sre"}}}),
        ),
        ("replicasets", coredns_replica_set()),
        (
            "jobs",
            json!({"kind": "Job", "apiVersion": "batch/v1",
              "metadata": {"name": "nightly-29400480", "namespace": "default",
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob",
                                     "name": "nightly", "controller": true}]}}),
        ),
        (
            "pods",
            json!({"kind": "Pod", "apiVersion": "v1",
              "metadata": {"name": "nightly-29400480-k2x9", "namespace": "default", "uid": "j-uid",
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                     "name": "nightly-29400480", "controller": true}]},
              "spec": {"nodeName": "edge-1", "containers": [{"name": "dump", "image": "pg:16"}]},
              "status": {"phase": "Running", "podIP": "10.42.0.9"}}),
        ),
    ]);
    objects
}

fn coredns_replica_set() -> Value {
    json!({"kind": "ReplicaSet", "apiVersion": "apps/v1",
      "metadata": {"name": "coredns-6799fbcd5", "namespace": "kube-system",
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                             "name": "coredns", "controller": true}]},
      "spec": {"replicas": 1}})
}

fn kube_system_namespace() -> Value {
    json!({"kind": "Namespace", "apiVersion": "v1",
      "metadata": {"name": "kube-system", "labels": {"team.example.com/owner": "platform"},
                   "annotations": {"cost-center": "42"}}})
}

fn kube_system_namespace_labels() -> LabelSet {
    ls(&[
        ("~namespace_label_team_example_com_owner", "platform"),
        ("~namespace_labelpresent_team_example_com_owner", "true"),
        ("~namespace_annotation_cost_center", "42"),
        ("~namespace_annotationpresent_cost_center", "true"),
    ])
}

#[tokio::test]
async fn attach_metadata_adds_namespace_and_owner_labels() {
    let (url, server) = start(&owner_objects()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(&dir, "t0k3n");
    let attach: config::AttachMetadata =
        serde_yaml::from_str("{namespace: true, deployment: true, job: true, cronjob: true}")
            .expect("attach_metadata");
    let find = |groups: &[TargetGroup], source: &str| -> TargetGroup {
        groups
            .iter()
            .find(|g| g.source == source)
            .unwrap_or_else(|| panic!("no group {source} in\n{}", pretty(groups)))
            .clone()
    };
    let has_all = |got: &LabelSet, want: &LabelSet, what: &str| {
        for (k, v) in want {
            assert_eq!(got.get(k), Some(v), "{what}: {k}");
        }
    };

    // Pod role: namespace labels on the group, owner names on it too.
    let mut cfg = config("pod", &url, &token);
    cfg.attach_metadata = attach.clone();
    let mut r = Running::start(cfg, fast(), no_in_cluster()).await;
    let got = r.first().await;
    let coredns = find(&got, "pod/kube-system/coredns-6799fbcd5-x7k2p");
    has_all(&coredns.labels, &kube_system_namespace_labels(), "coredns");
    assert_eq!(
        coredns.labels.get("__meta_kubernetes_pod_deployment_name"),
        Some(&"coredns".to_owned())
    );
    assert!(
        !coredns
            .labels
            .contains_key("__meta_kubernetes_pod_job_name")
    );
    let nightly = find(&got, "pod/default/nightly-29400480-k2x9");
    has_all(
        &nightly.labels,
        &ls(&[
            ("~pod_job_name", "nightly-29400480"),
            ("~pod_cronjob_name", "nightly"),
            ("~namespace_label_kubernetes_io_metadata_name", "default"),
        ]),
        "nightly",
    );
    // A StatefulSet's pod gets no owner names; no namespace name label (it is `namespace`).
    let backup = find(&got, "pod/default/backup-0");
    assert!(
        backup
            .labels
            .keys()
            .all(|k| !k.ends_with("deployment_name") && !k.ends_with("job_name")),
        "{backup:?}"
    );
    assert!(
        !backup
            .labels
            .contains_key("__meta_kubernetes_namespace_name")
    );

    // The namespace's labels follow its changes; a ReplicaSet gone takes the name away.
    let mut ns = kube_system_namespace();
    ns["metadata"]["labels"]["team.example.com/owner"] = json!("edge");
    server.lock().put("namespaces", ns, true);
    server
        .lock()
        .delete("replicasets", "kube-system", "coredns-6799fbcd5");
    r.until("namespace relabeled, replicaset gone", |g| {
        let c = g
            .iter()
            .find(|g| g.source == "pod/kube-system/coredns-6799fbcd5-x7k2p");
        c.is_some_and(|c| {
            c.labels
                .get("__meta_kubernetes_namespace_label_team_example_com_owner")
                .is_some_and(|v| v == "edge")
                && !c
                    .labels
                    .contains_key("__meta_kubernetes_pod_deployment_name")
        })
    })
    .await;
    r.stop().await;
    {
        let c = server.lock();
        for p in [
            "/api/v1/namespaces",
            "/apis/apps/v1/replicasets",
            "/apis/batch/v1/jobs",
        ] {
            assert!(c.lists(p) > 0, "{p} not listed");
        }
    }

    // Every other role but node: namespace labels on the group; owner names on pod-backed
    // targets of endpoints and endpointslice.
    server
        .lock()
        .put("replicasets", coredns_replica_set(), true);
    for (role, source) in [
        ("service", "svc/kube-system/kube-dns"),
        ("endpoints", "endpoints/kube-system/kube-dns"),
        ("endpointslice", "endpointslice/kube-system/kube-dns-7x9qz"),
        ("ingress", "ingress/monitoring/grafana"),
    ] {
        let mut cfg = config(role, &url, &token);
        cfg.attach_metadata = attach.clone();
        let mut r = Running::start(cfg, fast(), no_in_cluster()).await;
        let got = r.first().await;
        let g = find(&got, source);
        let want = if role == "ingress" {
            ls(&[
                ("~namespace_annotation_owner", "sre"),
                ("~namespace_annotationpresent_owner", "true"),
            ])
        } else {
            let mut want = kube_system_namespace_labels();
            want.insert(
                "__meta_kubernetes_namespace_label_team_example_com_owner".into(),
                "edge".into(),
            );
            want
        };
        has_all(&g.labels, &want, role);
        if matches!(role, "endpoints" | "endpointslice") {
            let pod_backed: Vec<&LabelSet> = g
                .targets
                .iter()
                .filter(|t| t.contains_key("__meta_kubernetes_pod_controller_name"))
                .collect();
            assert!(!pod_backed.is_empty(), "{role}: {}", pretty(&got));
            for t in pod_backed {
                assert_eq!(
                    t.get("__meta_kubernetes_pod_deployment_name"),
                    Some(&"coredns".to_owned()),
                    "{role}"
                );
            }
        }
        r.stop().await;
    }
}

#[tokio::test]
async fn watch_events_bookmarks_drops_and_gone() {
    let (url, server) = start(&[("pods", coredns_pod()), ("services", kube_dns_service())]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(&dir, "t0k3n");
    let mut cfg = config("pod", &url, &token);
    cfg.namespaces.names = vec!["kube-system".into()];
    cfg.selectors =
        serde_yaml::from_str("[{role: pod, label: 'k8s-app', field: 'status.phase!=Failed'}]")
            .expect("selectors");
    let mut r = Running::start(cfg, fast(), no_in_cluster()).await;
    assert_eq!(r.first().await.len(), 1);
    {
        let c = server.lock();
        let list = c.seen.iter().find(|s| !s.is_watch()).expect("a list");
        assert_eq!(list.path, "/api/v1/namespaces/kube-system/pods");
        assert_eq!(list.query["labelSelector"], "k8s-app");
        assert_eq!(list.query["fieldSelector"], "status.phase!=Failed");
        assert_eq!(list.query["limit"], "500");
    }
    let has = |name: &'static str| {
        move |g: &[TargetGroup]| {
            g.iter()
                .any(|g| g.source == format!("pod/kube-system/{name}"))
        }
    };

    // ADDED, MODIFIED, DELETED.
    let mut web = coredns_pod();
    web["metadata"]["name"] = json!("web-1");
    web["metadata"]["ownerReferences"] = json!([]);
    server.lock().put("pods", web.clone(), true);
    r.until("web-1 added", has("web-1")).await;
    web["metadata"]["labels"]["k8s-app"] = json!("web");
    server.lock().put("pods", web.clone(), true);
    r.until("web-1 relabeled", |g| {
        g.iter().any(|g| {
            g.labels
                .get("__meta_kubernetes_pod_label_k8s_app")
                .map(String::as_str)
                == Some("web")
        })
    })
    .await;
    server.lock().delete("pods", "kube-system", "web-1");
    r.until("web-1 deleted", |g| !has("web-1")(g)).await;
    assert_eq!(r.failures.get(), 0);

    // Bookmarks carry a newer version (a service changed): a dropped watch resumes from it,
    // without listing again.
    server.lock().put("services", kube_dns_service(), true);
    let bumped = server.lock().rv;
    tokio::time::sleep(BOOKMARK_EVERY * 4).await;
    let lists = server.lock().lists("pods");
    let watches = server.lock().watches("pods").len();
    server.lock().drop_epoch += 1;
    wait_for("a new watch", || {
        server.lock().watches("pods").len() > watches
    })
    .await;
    {
        let c = server.lock();
        let w = c.watches("pods");
        let resumed = &w[watches];
        assert_eq!(resumed.query["resourceVersion"], bumped.to_string());
        assert_eq!(c.lists("pods"), lists, "no new list after a drop");
    }
    wait_for("the drop counted", || r.failures.get() >= 1).await;

    // 410 Gone as an HTTP status: a change the watch never saw shows up after the re-list.
    for as_event in [false, true] {
        let name = if as_event {
            "gone-event"
        } else {
            "gone-status"
        };
        let lists = server.lock().lists("pods");
        let failures = r.failures.get();
        {
            let mut c = server.lock();
            c.gone_as_event = as_event;
            c.compacted = c.rv + 1;
            let mut p = coredns_pod();
            p["metadata"]["name"] = json!(name);
            c.put("pods", p, false);
            c.drop_epoch += 1;
        }
        r.until("the silent change", has(name)).await;
        assert!(server.lock().lists("pods") > lists, "re-listed after 410");
        assert!(r.failures.get() > failures);
    }
    r.stop().await;
}

#[tokio::test]
async fn failing_server_keeps_last_good_groups() {
    let (url, server) = start(&[("pods", coredns_pod())]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(&dir, "t0k3n");
    let mut r = Running::start(config("pod", &url, &token), fast(), no_in_cluster()).await;
    let good = r.first().await;
    assert_eq!(good.len(), 1);
    {
        let mut c = server.lock();
        c.fail = Some(500);
        c.drop_epoch += 1;
    }
    let before = r.failures.get();
    wait_for("repeated failures", || r.failures.get() >= before + 3).await;
    assert!(!r.rx.has_changed().expect("alive"), "groups kept");
    assert_eq!(*r.rx.borrow(), good);
    // A wrong token is a failure too (401), groups still kept.
    {
        let mut c = server.lock();
        c.fail = None;
        c.token = "rotated".into();
    }
    let before = r.failures.get();
    wait_for("401 failures", || r.failures.get() > before).await;
    assert_eq!(*r.rx.borrow(), good);
    // The token file is re-read on every request: rotating it recovers.
    std::fs::write(&token, "rotated").expect("rotate");
    let mut web = coredns_pod();
    web["metadata"]["name"] = json!("web-1");
    server.lock().put("pods", web, true);
    r.until("recovered", |g| g.len() == 2).await;
    assert!(
        server
            .lock()
            .seen
            .iter()
            .any(|s| s.auth == "Bearer rotated")
    );
    r.stop().await;
}

#[tokio::test]
async fn lists_are_paginated() {
    let mut objects = Vec::new();
    for i in 0..5 {
        let mut p = coredns_pod();
        p["metadata"]["name"] = json!(format!("p{i}"));
        objects.push(("pods", p));
    }
    let (url, server) = start(&objects).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(&dir, "t0k3n");
    let tuning = Tuning {
        page_size: 2,
        ..fast()
    };
    let mut r = Running::start(config("pod", &url, &token), tuning, no_in_cluster()).await;
    assert_eq!(r.first().await.len(), 5);
    let conts: Vec<Option<String>> = server
        .lock()
        .seen
        .iter()
        .filter(|s| !s.is_watch())
        .map(|s| s.query.get("continue").cloned())
        .collect();
    assert_eq!(conts, [None, Some("2".to_owned()), Some("4".to_owned())]);
    r.stop().await;
}

#[tokio::test]
async fn endpoints_follow_pod_and_service_changes() {
    let (url, server) = start(&cluster_objects()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(&dir, "t0k3n");
    for role in ["endpoints", "endpointslice"] {
        let mut r = Running::start(config(role, &url, &token), fast(), no_in_cluster()).await;
        assert_eq!(r.first().await.len(), 1);
        let mut pod = coredns_pod();
        pod["metadata"]["labels"]["version"] = json!(format!("v2-{role}"));
        server.lock().put("pods", pod, true);
        let want = format!("v2-{role}");
        r.until("pod label on endpoint targets", |g| {
            g[0].targets[0].get("__meta_kubernetes_pod_label_version") == Some(&want)
        })
        .await;
        server.lock().delete("services", "kube-system", "kube-dns");
        r.until("service labels gone", |g| {
            !g[0].labels.contains_key("__meta_kubernetes_service_name")
        })
        .await;
        server.lock().put("services", kube_dns_service(), true);
        r.until("service labels back", |g| {
            g[0].labels.contains_key("__meta_kubernetes_service_name")
        })
        .await;
        r.stop().await;
    }
}

#[tokio::test]
async fn unreachable_api_server_publishes_empty_and_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(&dir, "t");
    // A port nothing listens on any more.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let cfg = config("node", &format!("http://127.0.0.1:{closed}"), &token);
    let mut r = Running::start(cfg, fast(), no_in_cluster()).await;
    assert!(r.first().await.is_empty());
    wait_for("failures", || r.failures.get() >= 2).await;
    r.stop().await;

    // No in-cluster environment: same.
    let cfg: KubernetesSdConfig = serde_yaml::from_str("role: pod").expect("config");
    let mut r = Running::start(cfg, fast(), no_in_cluster()).await;
    assert!(r.first().await.is_empty());
    wait_for("failures", || r.failures.get() >= 1).await;
    r.stop().await;
}

/// Serves `app` over TLS with `pair` (accepting one handshake at a time).
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

#[tokio::test]
async fn in_cluster_over_tls_with_rotating_token() {
    let ca = uplink_shared::certs::Authority::generate("k8s-ca", 1).expect("ca");
    let pair = ca.issue_gateway(&["127.0.0.1".into()], 1).expect("cert");
    let certs = rustls_pemfile::certs(&mut pair.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    let key = rustls_pemfile::private_key(&mut pair.key_pem.as_bytes())
        .expect("key")
        .expect("a key");
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let server = Server(Arc::new(Mutex::new(Cluster {
        token: "sa-token-1".into(),
        ..Cluster::default()
    })));
    for (plural, obj) in cluster_objects() {
        server.lock().put(plural, obj, true);
    }
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = tcp.local_addr().expect("addr").port();
    let listener = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
    };
    let app = router(server.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().expect("tempdir");
    let sa = dir.path();
    std::fs::write(sa.join("token"), "sa-token-1").expect("token");
    std::fs::write(sa.join("ca.crt"), &ca.cert_pem).expect("ca");
    std::fs::write(sa.join("namespace"), "kube-system").expect("namespace");
    let in_cluster = InCluster {
        host: Some("127.0.0.1".into()),
        port: Some(port.to_string()),
        token_file: sa.join("token"),
        ca_file: sa.join("ca.crt"),
        namespace_file: sa.join("namespace"),
    };
    let cfg: KubernetesSdConfig =
        serde_yaml::from_str("role: service\nnamespaces: {own_namespace: true}").expect("config");
    cfg.validate().expect("valid");
    let mut r = Running::start(cfg, fast(), in_cluster).await;
    let got = r.first().await;
    assert_eq!(got, expected(Role::Service));
    assert!(
        server
            .lock()
            .seen
            .iter()
            .all(|s| s.path == "/api/v1/namespaces/kube-system/services")
    );
    // The kubelet rotates the token: the next request carries the new one.
    std::fs::write(sa.join("token"), "sa-token-2").expect("rotate");
    server.lock().token = "sa-token-2".into();
    server.lock().drop_epoch += 1;
    server.lock().delete("services", "kube-system", "traefik");
    r.until("traefik deleted", |g| g.len() == 1).await;
    assert!(
        server
            .lock()
            .seen
            .iter()
            .any(|s| s.auth == "Bearer sa-token-2")
    );
    r.stop().await;
}

#[test]
fn watches_per_role_and_namespace() {
    let cfg: KubernetesSdConfig = serde_yaml::from_str(
        "role: endpointslice\nnamespaces: {names: [a, b, a]}\nattach_metadata: {node: true}\nselectors: [{role: service, label: x=y}]",
    )
    .expect("config");
    let w = watches(&cfg, Some("b"));
    let got: Vec<(Kind, Option<&str>, &str)> = w
        .iter()
        .map(|s| (s.kind, s.namespace.as_deref(), s.label_selector.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (Kind::EndpointSlice, Some("a"), ""),
            (Kind::EndpointSlice, Some("b"), ""),
            (Kind::Service, Some("a"), "x=y"),
            (Kind::Service, Some("b"), "x=y"),
            (Kind::Pod, Some("a"), ""),
            (Kind::Pod, Some("b"), ""),
            (Kind::Node, None, ""),
        ]
    );
    let cfg: KubernetesSdConfig = serde_yaml::from_str("role: node").expect("config");
    assert_eq!(watches(&cfg, None).len(), 1);

    // attach_metadata's lookups: ReplicaSets and Jobs per namespace, unfiltered; namespaces
    // cluster-wide; `job` alone needs none; the node role takes none of them.
    let kinds = |yaml: &str| -> Vec<(Kind, Option<String>, String)> {
        let cfg: KubernetesSdConfig = serde_yaml::from_str(yaml).expect("config");
        watches(&cfg, None)
            .into_iter()
            .map(|s| (s.kind, s.namespace, s.label_selector))
            .collect()
    };
    let a = Some("a".to_owned());
    assert_eq!(
        kinds(
            "role: pod\nnamespaces: {names: [a]}\nselectors: [{role: pod, label: x=y}]\n\
             attach_metadata: {namespace: true, deployment: true, cronjob: true}"
        ),
        [
            (Kind::Pod, a.clone(), "x=y".to_owned()),
            (Kind::ReplicaSet, a.clone(), String::new()),
            (Kind::Job, a, String::new()),
            (Kind::Namespace, None, String::new()),
        ]
    );
    assert_eq!(
        kinds("role: pod\nattach_metadata: {job: true}"),
        [(Kind::Pod, None, String::new())]
    );
    assert_eq!(
        kinds("role: ingress\nattach_metadata: {namespace: true, deployment: true}"),
        [
            (Kind::Ingress, None, String::new()),
            (Kind::Namespace, None, String::new()),
        ]
    );
    assert_eq!(
        kinds("role: node\nattach_metadata: {namespace: true, deployment: true}").len(),
        1
    );
}

#[test]
fn hostile_objects_do_not_panic() {
    // Wrong types are skipped, nulls are empty, missing everything is fine.
    let pod: Option<api::Pod> =
        serde_json::from_value(json!({"metadata": null, "spec": {"containers": null},
        "status": {"podIP": null, "conditions": [{"type": null}]}}))
        .ok();
    let pod = pod.expect("nulls are empty");
    assert!(pod.spec.containers.is_empty());
    assert!(
        serde_json::from_value::<api::Pod>(
            json!({"spec": {"containers": [{"ports": [{"containerPort": "x"}]}]}})
        )
        .is_err()
    );
    let mut stores = targets::Stores::default();
    stores.pods.apply(0, Event::Replace(vec![pod]));
    stores
        .nodes
        .apply(0, Event::Replace(vec![api::Node::default()]));
    stores
        .endpoints
        .apply(0, Event::Replace(vec![api::Endpoints::default()]));
    stores
        .namespaces
        .apply(0, Event::Replace(vec![api::Namespace::default()]));
    stores
        .jobs
        .apply(0, Event::Replace(vec![api::Job::default()]));
    let attach: config::AttachMetadata = serde_yaml::from_str(
        "{node: true, namespace: true, deployment: true, job: true, cronjob: true}",
    )
    .expect("attach_metadata");
    for role in [
        Role::Pod,
        Role::Node,
        Role::Service,
        Role::Endpoints,
        Role::EndpointSlice,
        Role::Ingress,
    ] {
        let _ = targets::build(role, &stores, &attach, &[]);
    }
}

#[tokio::test]
async fn discovery_spawn_starts_kubernetes_providers() {
    let (url, _server) = start(&cluster_objects()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), "t0k3n").expect("token");
    // A relative credentials file resolves against the configuration's directory.
    let sc: crate::config::ScrapeConfig = serde_yaml::from_str(&format!(
        "job_name: k8s\nkubernetes_sd_configs:\n  - role: ingress\n    api_server: {url}\n    bearer_token_file: token\n"
    ))
    .expect("scrape config");
    let metrics = crate::metrics::Metrics::default();
    let tracker = tokio_util::task::TaskTracker::new();
    let token = CancellationToken::new();
    let mut rxs = crate::discovery::spawn(&sc, dir.path(), &metrics, &tracker, &token);
    assert_eq!(rxs.len(), 1);
    tokio::time::timeout(Duration::from_secs(5), rxs[0].changed())
        .await
        .expect("published")
        .expect("alive");
    assert_eq!(*rxs[0].borrow(), expected(Role::Ingress));
    token.cancel();
    tracker.close();
    tokio::time::timeout(Duration::from_secs(2), tracker.wait())
        .await
        .expect("providers stop");
}

#[tokio::test]
async fn a_watch_past_its_deadline_is_dropped_and_resumed() {
    let (url, server) = start(&[("pods", coredns_pod())]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(&dir, "t0k3n");
    // timeoutSeconds is 1; the scripted server ignores it and keeps the watch for 3s, so the
    // agent's own deadline (no grace) ends it.
    let tuning = Tuning {
        watch_grace: Duration::ZERO,
        ..fast()
    };
    let mut r = Running::start(config("pod", &url, &token), tuning, no_in_cluster()).await;
    assert_eq!(r.first().await.len(), 1);
    let listed_rv = server.lock().rv.to_string();
    wait_for("a second watch", || {
        server.lock().watches("pods").len() >= 2
    })
    .await;
    wait_for("the timeout counted", || r.failures.get() >= 1).await;
    let (lists, w) = {
        let c = server.lock();
        (c.lists("pods"), c.watches("pods"))
    };
    assert_eq!(lists, 1, "resumed without listing");
    assert_eq!(w[0].query["timeoutSeconds"], "1");
    assert_eq!(w[1].query["resourceVersion"], listed_rv);
    r.stop().await;
}
