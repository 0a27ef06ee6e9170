//! Target groups from the watched objects, label for label as Prometheus 3.5 builds them
//! (`discovery/kubernetes/{node,pod,service,endpoints,endpointslice,ingress}.go`), plus the
//! `attach_metadata` labels of Prometheus 3.6 and 3.11:
//!
//! - `namespace`: `__meta_kubernetes_namespace_label_<n>`, `…_labelpresent_<n>`,
//!   `…_annotation_<n>`, `…_annotationpresent_<n>` of the object's namespace, on the group of
//!   every role but `node` (nothing while the namespace is not in the store);
//! - `deployment`: `__meta_kubernetes_pod_deployment_name`, when the pod's controller is a
//!   ReplicaSet in the store whose own controller is a Deployment;
//! - `job`: `__meta_kubernetes_pod_job_name`, when the pod's controller is a Job;
//! - `cronjob`: `__meta_kubernetes_pod_cronjob_name`, when the pod's controller is a Job in
//!   the store whose own controller is a CronJob.
//!
//! The three pod keys apply wherever pod labels go: `pod` targets and the pod-backed targets
//! of `endpoints` and `endpointslice`.
//!
//! One group per object, `source` `node/<name>`, `pod/<ns>/<name>`, `svc/<ns>/<name>`,
//! `endpoints/<ns>/<name>`, `endpointslice/<ns>/<name>` or `ingress/<ns>/<name>`; groups are
//! listed by source. Kubernetes label and annotation names become label names with every
//! character outside `[a-zA-Z0-9_]` replaced by `_` (Prometheus's `SanitizeLabelName`), each
//! with a `..._labelpresent_...`/`..._annotationpresent_...` companion set to `true`.
//!
//! Deviations (labels and addresses are unaffected except where the last item says):
//!
//! - A deleted object's group disappears from the list; Prometheus sends an empty group with
//!   its source (the consumer's effect is the same).
//! - `endpoints`/`endpointslice` extra targets for container ports no endpoint port covers
//!   are listed in the order the pods were first seen in the object; Prometheus's order is
//!   Go's random map order.
//! - Every group is rebuilt whenever any watched object changes; Prometheus rebuilds
//!   `endpoints`/`endpointslice` groups on service changes and on pod phase changes only
//!   (and on node, namespace, ReplicaSet and Job changes with `attach_metadata`), so its pod
//!   labels can lag until the next Endpoints update. Here they are always current.

use std::collections::BTreeMap;

use super::api::{
    EndpointSlice, Endpoints, Event, Ingress, Job, Namespace, Node, ObjectMeta, Pod, ReplicaSet,
    Resource, Service, SlicePort,
};
use super::config::{AttachMetadata, Role};
use crate::discovery::{ADDRESS_LABEL, LabelSet, TargetGroup};

const P: &str = "__meta_kubernetes_";

/// The objects of one kind, per watch (a watch is one namespace, or all).
#[derive(Debug)]
pub struct Store<T> {
    by_watch: BTreeMap<usize, BTreeMap<(String, String), T>>,
}

impl<T> Default for Store<T> {
    fn default() -> Self {
        Store {
            by_watch: BTreeMap::new(),
        }
    }
}

impl<T: Resource> Store<T> {
    /// Applies a reflector's event from watch `watch`.
    pub fn apply(&mut self, watch: usize, ev: Event<T>) {
        let key = |t: &T| (t.meta().namespace.clone(), t.meta().name.clone());
        match ev {
            Event::Replace(items) => {
                let map = items.into_iter().map(|t| (key(&t), t)).collect();
                self.by_watch.insert(watch, map);
            }
            Event::Upsert(t) => {
                self.by_watch.entry(watch).or_default().insert(key(&t), t);
            }
            Event::Delete(t) => {
                if let Some(m) = self.by_watch.get_mut(&watch) {
                    m.remove(&key(&t));
                }
            }
            Event::Failed => {}
        }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&T> {
        let key = (namespace.to_owned(), name.to_owned());
        self.by_watch.values().find_map(|m| m.get(&key))
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.by_watch.values().flat_map(|m| m.values())
    }
}

/// Everything the reflectors keep.
#[derive(Debug, Default)]
pub struct Stores {
    pub nodes: Store<Node>,
    pub pods: Store<Pod>,
    pub services: Store<Service>,
    pub endpoints: Store<Endpoints>,
    pub slices: Store<EndpointSlice>,
    pub ingresses: Store<Ingress>,
    pub namespaces: Store<Namespace>,
    pub replica_sets: Store<ReplicaSet>,
    pub jobs: Store<Job>,
}

/// Prometheus's `strutil.SanitizeLabelName`: every character outside `[a-zA-Z0-9_]` becomes
/// `_` (one per character, not per byte).
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Go's `net.JoinHostPort`.
fn join_host_port(host: &str, port: impl std::fmt::Display) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn set(ls: &mut LabelSet, name: &str, value: impl Into<String>) {
    ls.insert(format!("{P}{name}"), value.into());
}

/// `addObjectMetaLabels`: `<role>_name`, labels and annotations with their `present` twins.
fn meta_labels(ls: &mut LabelSet, meta: &ObjectMeta, role: &str) {
    set(ls, &format!("{role}_name"), meta.name.as_str());
    object_labels(ls, meta, role);
}

/// `addObjectAnnotationsAndLabels`: labels and annotations with their `present` twins.
fn object_labels(ls: &mut LabelSet, meta: &ObjectMeta, resource: &str) {
    for (kind, map) in [("label", &meta.labels), ("annotation", &meta.annotations)] {
        for (k, v) in map {
            let n = sanitize(k);
            set(ls, &format!("{resource}_{kind}_{n}"), v.as_str());
            set(ls, &format!("{resource}_{kind}present_{n}"), "true");
        }
    }
}

/// What labels take from objects other than the group's own: the stores, and the
/// `attach_metadata` lookups the configuration asks for.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    stores: &'a Stores,
    attach: &'a AttachMetadata,
}

impl Ctx<'_> {
    /// `addNodeLabels` (with `attach_metadata.node`): the node's name, labels and
    /// annotations; nothing for a node not in the store.
    fn node_labels(&self, ls: &mut LabelSet, name: &str) {
        if self.attach.node
            && let Some(n) = self.stores.nodes.get("", name)
        {
            meta_labels(ls, &n.metadata, "node");
        }
    }

    /// `addNamespaceLabels` (with `attach_metadata.namespace`): the namespace's labels and
    /// annotations (its name is `__meta_kubernetes_namespace` already).
    fn namespace_labels(&self, ls: &mut LabelSet, namespace: &str) {
        if self.attach.namespace
            && let Some(n) = self.stores.namespaces.get("", namespace)
        {
            object_labels(ls, &n.metadata, "namespace");
        }
    }
}

/// The groups of `role` from `stores`, by source. `previous` is the last result: a node
/// without any address keeps its previous group, as in Prometheus (which sends nothing for it).
pub fn build(
    role: Role,
    stores: &Stores,
    attach: &AttachMetadata,
    previous: &[TargetGroup],
) -> Vec<TargetGroup> {
    let ctx = Ctx { stores, attach };
    let mut groups: BTreeMap<String, TargetGroup> = BTreeMap::new();
    let mut add = |g: TargetGroup| {
        groups.insert(g.source.clone(), g);
    };
    match role {
        Role::Node => {
            for n in stores.nodes.iter() {
                match node_group(n) {
                    Some(g) => add(g),
                    None => {
                        let source = format!("node/{}", n.metadata.name);
                        if let Some(g) = previous.iter().find(|g| g.source == source) {
                            add(g.clone());
                        }
                    }
                }
            }
        }
        Role::Pod => stores.pods.iter().for_each(|p| add(pod_group(p, ctx))),
        Role::Service => stores
            .services
            .iter()
            .for_each(|s| add(service_group(s, ctx))),
        Role::Endpoints => stores
            .endpoints
            .iter()
            .for_each(|e| add(endpoints_group(e, ctx))),
        Role::EndpointSlice => stores.slices.iter().for_each(|e| add(slice_group(e, ctx))),
        Role::Ingress => stores
            .ingresses
            .iter()
            .for_each(|i| add(ingress_group(i, ctx))),
    }
    groups.into_values().collect()
}

// ---- node ----

/// Prometheus's address preference (from Kubernetes' `GetPreferredNodeAddress`).
const NODE_ADDRESS_PREFERENCE: [&str; 6] = [
    "InternalIP",
    "InternalDNS",
    "ExternalIP",
    "ExternalDNS",
    "LegacyHostIP",
    "Hostname",
];

fn node_group(n: &Node) -> Option<TargetGroup> {
    let mut first: BTreeMap<&str, &str> = BTreeMap::new();
    for a in &n.status.addresses {
        first.entry(a.kind.as_str()).or_insert(a.address.as_str());
    }
    let Some(addr) = NODE_ADDRESS_PREFERENCE
        .iter()
        .find_map(|t| first.get(t).copied())
    else {
        tracing::warn!(node = %n.metadata.name, "No node address found; keeping its previous targets.");
        return None;
    };
    let mut labels = LabelSet::new();
    set(&mut labels, "node_provider_id", n.spec.provider_id.as_str());
    meta_labels(&mut labels, &n.metadata, "node");
    let mut t = LabelSet::from([
        (
            ADDRESS_LABEL.to_owned(),
            join_host_port(addr, n.status.daemon_endpoints.kubelet_endpoint.port),
        ),
        ("instance".to_owned(), n.metadata.name.clone()),
    ]);
    for (kind, a) in first {
        t.insert(sanitize(&format!("{P}node_address_{kind}")), a.to_owned());
    }
    Some(TargetGroup {
        source: format!("node/{}", n.metadata.name),
        targets: vec![t],
        labels,
    })
}

// ---- pod ----

/// `podLabels`: the labels every target of a pod shares, with the owner names
/// `attach_metadata` asks for.
fn pod_labels(p: &Pod, ctx: Ctx<'_>) -> LabelSet {
    let mut ls = LabelSet::new();
    set(&mut ls, "pod_ip", p.status.pod_ip.as_str());
    let ready = p
        .status
        .conditions
        .iter()
        .find(|c| c.kind == "Ready")
        .map_or("unknown".to_owned(), |c| c.status.to_lowercase());
    set(&mut ls, "pod_ready", ready);
    set(&mut ls, "pod_phase", p.status.phase.as_str());
    set(&mut ls, "pod_node_name", p.spec.node_name.as_str());
    set(&mut ls, "pod_host_ip", p.status.host_ip.as_str());
    set(&mut ls, "pod_uid", p.metadata.uid.as_str());
    meta_labels(&mut ls, &p.metadata, "pod");
    let Some(c) = p.metadata.controller() else {
        return ls;
    };
    if !c.kind.is_empty() {
        set(&mut ls, "pod_controller_kind", c.kind.as_str());
    }
    if !c.name.is_empty() {
        set(&mut ls, "pod_controller_name", c.name.as_str());
    }
    // The owner's own controller, of the kind `kind`.
    let grand = |meta: Option<&ObjectMeta>, kind: &str| {
        meta.and_then(ObjectMeta::controller)
            .filter(|o| o.kind == kind)
            .map(|o| o.name.clone())
    };
    let (a, stores, ns) = (ctx.attach, ctx.stores, p.metadata.namespace.as_str());
    match c.kind.as_str() {
        "ReplicaSet" if a.deployment => {
            let rs = stores.replica_sets.get(ns, &c.name).map(|r| &r.metadata);
            if let Some(d) = grand(rs, "Deployment") {
                set(&mut ls, "pod_deployment_name", d);
            }
        }
        "Job" => {
            if a.job {
                set(&mut ls, "pod_job_name", c.name.as_str());
            }
            if a.cronjob {
                let job = stores.jobs.get(ns, &c.name).map(|j| &j.metadata);
                if let Some(cj) = grand(job, "CronJob") {
                    set(&mut ls, "pod_cronjob_name", cj);
                }
            }
        }
        _ => {}
    }
    ls
}

fn pod_group(p: &Pod, ctx: Ctx<'_>) -> TargetGroup {
    let mut g = TargetGroup {
        source: format!("pod/{}/{}", p.metadata.namespace, p.metadata.name),
        ..TargetGroup::default()
    };
    // No IP yet (pending) or any more (evicted): an empty group.
    if p.status.pod_ip.is_empty() {
        return g;
    }
    g.labels = pod_labels(p, ctx);
    set(&mut g.labels, "namespace", p.metadata.namespace.as_str());
    ctx.node_labels(&mut g.labels, &p.spec.node_name);
    ctx.namespace_labels(&mut g.labels, &p.metadata.namespace);
    let ip = &p.status.pod_ip;
    let containers = p.spec.containers.iter().map(|c| (c, false));
    let inits = p.spec.init_containers.iter().map(|c| (c, true));
    for (c, init) in containers.chain(inits) {
        let statuses = if init {
            &p.status.init_container_statuses
        } else {
            &p.status.container_statuses
        };
        let id = statuses
            .iter()
            .find(|s| s.name == c.name)
            .map(|s| s.container_id.as_str())
            .unwrap_or_default();
        let mut base = LabelSet::new();
        set(&mut base, "pod_container_name", c.name.as_str());
        set(&mut base, "pod_container_id", id);
        set(&mut base, "pod_container_image", c.image.as_str());
        set(&mut base, "pod_container_init", init.to_string());
        if c.ports.is_empty() {
            base.insert(ADDRESS_LABEL.to_owned(), ip.clone());
            g.targets.push(base);
            continue;
        }
        for port in &c.ports {
            let mut t = base.clone();
            let n = port.container_port.to_string();
            t.insert(ADDRESS_LABEL.to_owned(), join_host_port(ip, &n));
            set(&mut t, "pod_container_port_number", n);
            set(&mut t, "pod_container_port_name", port.name.as_str());
            set(
                &mut t,
                "pod_container_port_protocol",
                port.protocol.as_str(),
            );
            g.targets.push(t);
        }
    }
    g
}

// ---- service ----

fn service_labels(s: &Service) -> LabelSet {
    let mut ls = LabelSet::new();
    set(&mut ls, "namespace", s.metadata.namespace.as_str());
    meta_labels(&mut ls, &s.metadata, "service");
    ls
}

fn service_group(s: &Service, ctx: Ctx<'_>) -> TargetGroup {
    let m = &s.metadata;
    let targets = s
        .spec
        .ports
        .iter()
        .map(|port| {
            let host = format!("{}.{}.svc", m.name, m.namespace);
            let mut t =
                LabelSet::from([(ADDRESS_LABEL.to_owned(), join_host_port(&host, port.port))]);
            set(&mut t, "service_port_name", port.name.as_str());
            set(&mut t, "service_port_number", port.port.to_string());
            set(&mut t, "service_port_protocol", port.protocol.as_str());
            set(&mut t, "service_type", s.spec.kind.as_str());
            if s.spec.kind == "ExternalName" {
                set(
                    &mut t,
                    "service_external_name",
                    s.spec.external_name.as_str(),
                );
            } else {
                set(&mut t, "service_cluster_ip", s.spec.cluster_ip.as_str());
            }
            if s.spec.kind == "LoadBalancer" {
                set(
                    &mut t,
                    "service_loadbalancer_ip",
                    s.spec.load_balancer_ip.as_str(),
                );
            }
            t
        })
        .collect();
    let mut labels = service_labels(s);
    ctx.namespace_labels(&mut labels, &m.namespace);
    TargetGroup {
        source: format!("svc/{}/{}", m.namespace, m.name),
        targets,
        labels,
    }
}

// ---- endpoints and endpointslice: pods behind the addresses ----

/// The pods an Endpoints or EndpointSlice object points at, in order of first sight, with
/// the port numbers already covered by a target.
#[derive(Default)]
struct SeenPods<'a> {
    pods: Vec<(&'a Pod, Vec<i64>)>,
}

impl<'a> SeenPods<'a> {
    fn saw(&mut self, pod: &'a Pod, port: Option<i64>) {
        let i = match self.pods.iter().position(|(p, _)| std::ptr::eq(*p, pod)) {
            Some(i) => i,
            None => {
                self.pods.push((pod, Vec::new()));
                self.pods.len() - 1
            }
        };
        if let Some(port) = port {
            self.pods[i].1.push(port);
        }
    }

    /// Targets for the container ports of seen pods that no endpoint port covered.
    fn extra_targets(&self, targets: &mut Vec<LabelSet>, ctx: Ctx<'_>) {
        for (pod, covered) in &self.pods {
            if pod.status.pod_ip.is_empty() {
                continue;
            }
            for c in &pod.spec.containers {
                for cport in &c.ports {
                    if covered.contains(&cport.container_port) {
                        continue;
                    }
                    let n = cport.container_port.to_string();
                    let mut t = pod_labels(pod, ctx);
                    t.insert(
                        ADDRESS_LABEL.to_owned(),
                        join_host_port(&pod.status.pod_ip, &n),
                    );
                    set(&mut t, "pod_container_name", c.name.as_str());
                    set(&mut t, "pod_container_image", c.image.as_str());
                    set(&mut t, "pod_container_port_name", cport.name.as_str());
                    set(&mut t, "pod_container_port_number", n);
                    set(
                        &mut t,
                        "pod_container_port_protocol",
                        cport.protocol.as_str(),
                    );
                    targets.push(t);
                }
            }
        }
    }
}

/// Container labels of the pod's container port equal to `port` (the last container with such
/// a port wins, as in Prometheus); `protocol` is the endpoint's (Endpoints) or the container
/// port's (EndpointSlice), as in Prometheus.
fn container_port_labels(t: &mut LabelSet, pod: &Pod, port: i64, endpoint_protocol: Option<&str>) {
    for c in &pod.spec.containers {
        if let Some(cport) = c.ports.iter().find(|cp| cp.container_port == port) {
            set(t, "pod_container_name", c.name.as_str());
            set(t, "pod_container_image", c.image.as_str());
            set(t, "pod_container_port_name", cport.name.as_str());
            set(t, "pod_container_port_number", port.to_string());
            set(
                t,
                "pod_container_port_protocol",
                endpoint_protocol.unwrap_or(&cport.protocol),
            );
        }
    }
}

fn resolve_pod<'a>(stores: &'a Stores, r: Option<&super::api::ObjectReference>) -> Option<&'a Pod> {
    let r = r.filter(|r| r.kind == "Pod")?;
    stores.pods.get(&r.namespace, &r.name)
}

fn endpoints_group(e: &Endpoints, ctx: Ctx<'_>) -> TargetGroup {
    let stores = ctx.stores;
    let m = &e.metadata;
    let mut labels = LabelSet::new();
    set(&mut labels, "namespace", m.namespace.as_str());
    if let Some(svc) = stores.services.get(&m.namespace, &m.name) {
        labels.extend(service_labels(svc));
    }
    meta_labels(&mut labels, m, "endpoints");
    ctx.namespace_labels(&mut labels, &m.namespace);
    let mut targets = Vec::new();
    let mut seen = SeenPods::default();
    for ss in &e.subsets {
        for port in &ss.ports {
            let ready = ss.addresses.iter().map(|a| (a, "true"));
            let not_ready = ss.not_ready_addresses.iter().map(|a| (a, "false"));
            for (addr, ready) in ready.chain(not_ready) {
                let mut t = LabelSet::from([(
                    ADDRESS_LABEL.to_owned(),
                    join_host_port(&addr.ip, port.port),
                )]);
                set(&mut t, "endpoint_port_name", port.name.as_str());
                set(&mut t, "endpoint_port_protocol", port.protocol.as_str());
                set(&mut t, "endpoint_ready", ready);
                if let Some(r) = &addr.target_ref {
                    set(&mut t, "endpoint_address_target_kind", r.kind.as_str());
                    set(&mut t, "endpoint_address_target_name", r.name.as_str());
                }
                if let Some(n) = &addr.node_name {
                    set(&mut t, "endpoint_node_name", n.as_str());
                }
                if !addr.hostname.is_empty() {
                    set(&mut t, "endpoint_hostname", addr.hostname.as_str());
                }
                match (&addr.node_name, &addr.target_ref) {
                    (Some(n), _) => ctx.node_labels(&mut t, n),
                    (None, Some(r)) if r.kind == "Node" => ctx.node_labels(&mut t, &r.name),
                    _ => {}
                }
                if let Some(pod) = resolve_pod(stores, addr.target_ref.as_ref()) {
                    seen.saw(pod, Some(port.port));
                    t.extend(pod_labels(pod, ctx));
                    container_port_labels(&mut t, pod, port.port, Some(&port.protocol));
                }
                targets.push(t);
            }
        }
    }
    seen.extra_targets(&mut targets, ctx);
    TargetGroup {
        source: format!("endpoints/{}/{}", m.namespace, m.name),
        targets,
        labels,
    }
}

/// The label naming an EndpointSlice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn slice_group(e: &EndpointSlice, ctx: Ctx<'_>) -> TargetGroup {
    let stores = ctx.stores;
    let m = &e.metadata;
    let mut labels = LabelSet::new();
    set(&mut labels, "namespace", m.namespace.as_str());
    set(
        &mut labels,
        "endpointslice_address_type",
        e.address_type.as_str(),
    );
    meta_labels(&mut labels, m, "endpointslice");
    if let Some(svc) = m
        .labels
        .get(SERVICE_NAME_LABEL)
        .and_then(|name| stores.services.get(&m.namespace, name))
    {
        labels.extend(service_labels(svc));
    }
    ctx.namespace_labels(&mut labels, &m.namespace);
    let mut targets = Vec::new();
    let mut seen = SeenPods::default();
    for ep in &e.endpoints {
        for port in &e.ports {
            for addr in &ep.addresses {
                targets.push(slice_target(addr, ep, port, ctx, &mut seen));
            }
        }
    }
    seen.extra_targets(&mut targets, ctx);
    TargetGroup {
        source: format!("endpointslice/{}/{}", m.namespace, m.name),
        targets,
        labels,
    }
}

fn slice_target<'a>(
    addr: &str,
    ep: &super::api::SliceEndpoint,
    port: &SlicePort,
    ctx: Ctx<'a>,
    seen: &mut SeenPods<'a>,
) -> LabelSet {
    let address = match port.port {
        Some(p) => join_host_port(addr, p),
        None => addr.to_owned(),
    };
    let mut t = LabelSet::from([(ADDRESS_LABEL.to_owned(), address)]);
    let mut opt = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            set(&mut t, name, v);
        }
    };
    opt("endpointslice_port_name", port.name.clone());
    opt("endpointslice_port_protocol", port.protocol.clone());
    opt("endpointslice_port", port.port.map(|p| p.to_string()));
    opt("endpointslice_port_app_protocol", port.app_protocol.clone());
    let c = &ep.conditions;
    opt(
        "endpointslice_endpoint_conditions_ready",
        c.ready.map(|b| b.to_string()),
    );
    opt(
        "endpointslice_endpoint_conditions_serving",
        c.serving.map(|b| b.to_string()),
    );
    opt(
        "endpointslice_endpoint_conditions_terminating",
        c.terminating.map(|b| b.to_string()),
    );
    opt("endpointslice_endpoint_hostname", ep.hostname.clone());
    if let Some(r) = &ep.target_ref {
        opt("endpointslice_address_target_kind", Some(r.kind.clone()));
        opt("endpointslice_address_target_name", Some(r.name.clone()));
    }
    opt("endpointslice_endpoint_node_name", ep.node_name.clone());
    opt("endpointslice_endpoint_zone", ep.zone.clone());
    for (k, v) in &ep.deprecated_topology {
        let n = sanitize(k);
        set(
            &mut t,
            &format!("endpointslice_endpoint_topology_{n}"),
            v.as_str(),
        );
        set(
            &mut t,
            &format!("endpointslice_endpoint_topology_present_{n}"),
            "true",
        );
    }
    match (&ep.target_ref, &ep.node_name) {
        (Some(r), _) if r.kind == "Node" => ctx.node_labels(&mut t, &r.name),
        (_, Some(n)) => ctx.node_labels(&mut t, n),
        _ => {}
    }
    if let Some(pod) = resolve_pod(ctx.stores, ep.target_ref.as_ref()) {
        seen.saw(pod, port.port);
        t.extend(pod_labels(pod, ctx));
        if let Some(p) = port.port {
            container_port_labels(&mut t, pod, p, None);
        }
    }
    t
}

// ---- ingress ----

fn ingress_group(i: &Ingress, ctx: Ctx<'_>) -> TargetGroup {
    let m = &i.metadata;
    let mut labels = LabelSet::new();
    set(&mut labels, "namespace", m.namespace.as_str());
    if let Some(c) = &i.spec.ingress_class_name {
        set(&mut labels, "ingress_class_name", c.as_str());
    }
    meta_labels(&mut labels, m, "ingress");
    ctx.namespace_labels(&mut labels, &m.namespace);
    let tls_hosts: Vec<&str> = i
        .spec
        .tls
        .iter()
        .flat_map(|t| t.hosts.iter().map(String::as_str))
        .collect();
    let mut targets = Vec::new();
    for rule in &i.spec.rules {
        let scheme = if tls_hosts.iter().any(|p| host_matches(p, &rule.host)) {
            "https"
        } else {
            "http"
        };
        let paths: Vec<&str> = match &rule.http {
            None => vec!["/"],
            Some(h) => h
                .paths
                .iter()
                .map(|p| {
                    if p.path.is_empty() {
                        "/"
                    } else {
                        p.path.as_str()
                    }
                })
                .collect(),
        };
        for path in paths {
            let mut t = LabelSet::from([(ADDRESS_LABEL.to_owned(), rule.host.clone())]);
            set(&mut t, "ingress_scheme", scheme);
            set(&mut t, "ingress_host", rule.host.as_str());
            set(&mut t, "ingress_path", path);
            targets.push(t);
        }
    }
    TargetGroup {
        source: format!("ingress/{}/{}", m.namespace, m.name),
        targets,
        labels,
    }
}

/// Prometheus's `matchesHostnamePattern`: equal, or `*.rest` matching one leading label.
fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == host {
        return true;
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let h: Vec<&str> = host.split('.').collect();
    p.first() == Some(&"*") && p.len() == h.len() && p[1..] == h[1..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_like_prometheus() {
        assert_eq!(sanitize("app.kubernetes.io/name"), "app_kubernetes_io_name");
        assert_eq!(sanitize("k8s-app"), "k8s_app");
        assert_eq!(sanitize("héllo"), "h_llo");
        assert_eq!(sanitize("ok_1"), "ok_1");
    }

    #[test]
    fn wildcard_hosts_match_one_label() {
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(!host_matches("*.example.com", "a.b.example.com"));
        assert!(host_matches("example.com", "example.com"));
        assert!(!host_matches("a.*.com", "a.b.com"));
    }

    #[test]
    fn join_host_port_brackets_ipv6() {
        assert_eq!(join_host_port("fd00::1", 80), "[fd00::1]:80");
        assert_eq!(join_host_port("10.0.0.1", 80), "10.0.0.1:80");
    }
}
