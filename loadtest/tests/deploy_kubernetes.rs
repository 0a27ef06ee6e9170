//! The Kubernetes manifests in deploy/kubernetes fit together, as `kubectl apply -k` would need
//! them to, without a cluster:
//! - every kustomization (or component) names files that exist and lists every manifest in its
//!   folder; a kustomization's patches target resources it builds;
//! - every namespace a resource lives in is created by the manifests (or is the user's
//!   `monitoring` stack, or cert-manager's own);
//! - what a pod refers to exists in its namespace: ConfigMaps, Secrets (a cert-manager
//!   Certificate's `secretName`), its ServiceAccount, a StatefulSet's headless governing Service,
//!   the volume of every mount; probes ask `/-/ready` and `/-/healthy` on a declared port; the
//!   `--config.file` is a key of the ConfigMap mounted as that directory;
//! - Services select pods and name their ports; an HPA, a PDB and RBAC bindings point at what
//!   exists; Certificates name an issuer that exists;
//! - the gateway's UDP Service reaches the port its configuration listens on;
//! - the sidecar's Helm values carry the same container, volumes and remote write as its
//!   kustomize patch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

/// Namespaces the manifests use but do not create: the user's Prometheus stack (sidecar mode)
/// and cert-manager's cluster resource namespace (the ClusterIssuer's CA Secret).
const EXTERNAL_NAMESPACES: &[&str] = &["monitoring", "cert-manager"];

/// YAML files in kustomize folders that are not resources: Helm values for the same sidecar.
const NOT_RESOURCES: &[&str] = &["values.yaml"];

fn kubernetes() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes")).to_path_buf()
}

/// The kustomize folders of deploy/kubernetes (other files there, e.g. a README, are skipped).
fn folders() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(kubernetes())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    assert!(out.len() >= 5, "kustomize folders: {out:?}");
    out
}

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn seq<'a>(v: &'a Value, path: &[&str]) -> Vec<&'a Value> {
    let mut cur = v;
    for p in path {
        match cur.get(*p) {
            Some(next) => cur = next,
            None => return Vec::new(),
        }
    }
    cur.as_sequence()
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

/// One resource, with the namespace it lands in and the folder it came from.
#[derive(Clone)]
struct Resource {
    kind: String,
    name: String,
    namespace: Option<String>,
    folder: String,
    /// From a patch file: checked like a resource, but not a patch target.
    patch: bool,
    body: Value,
}

impl Resource {
    fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "ClusterIssuer",
];

/// Every resource of every kustomize folder, namespaced as the folder's kustomization says.
fn resources() -> Vec<Resource> {
    let mut out = Vec::new();
    for dir in folders() {
        let k = &docs(&dir.join("kustomization.yaml"))[0];
        let default_ns = s(k, &["namespace"]).map(str::to_owned);
        let folder = dir.file_name().unwrap().to_str().unwrap().to_owned();
        let patches = seq(k, &["patches"])
            .into_iter()
            .filter_map(|p| s(p, &["path"]))
            .map(|p| (p, true));
        let files = seq(k, &["resources"])
            .into_iter()
            .map(|r| (r.as_str().unwrap(), false))
            .chain(patches);
        for (file, patch) in files {
            let path = dir.join(file);
            if path.is_dir() {
                continue; // a base, read as its own folder
            }
            for body in docs(&path) {
                let what = path.display();
                let kind = s(&body, &["kind"])
                    .unwrap_or_else(|| panic!("{what}: a document without kind"))
                    .to_owned();
                let name = s(&body, &["metadata", "name"])
                    .unwrap_or_else(|| panic!("{what}: a {kind} without metadata.name"))
                    .to_owned();
                let namespace = if CLUSTER_SCOPED.contains(&kind.as_str()) {
                    None
                } else {
                    let ns = default_ns
                        .clone()
                        .or_else(|| s(&body, &["metadata", "namespace"]).map(str::to_owned));
                    // Applied alone, it would land in whatever namespace kubectl points at.
                    assert!(ns.is_some(), "{what}: {kind} {name} has no namespace");
                    ns
                };
                out.push(Resource {
                    kind,
                    name,
                    namespace,
                    folder: folder.clone(),
                    patch,
                    body,
                });
            }
        }
    }
    out
}

#[test]
fn kustomizations_list_their_folders() {
    let all = resources();
    for dir in folders() {
        let kfile = dir.join("kustomization.yaml");
        let k = &docs(&kfile)[0];
        let kind = s(k, &["kind"]).unwrap();
        assert!(
            matches!(kind, "Kustomization" | "Component"),
            "{}: {kind}",
            kfile.display()
        );
        let mut named = BTreeSet::new();
        for r in seq(k, &["resources"]) {
            named.insert(r.as_str().unwrap().to_owned());
        }
        for p in seq(k, &["patches"]) {
            if let Some(path) = s(p, &["path"]) {
                named.insert(path.to_owned());
            }
        }
        for r in &named {
            assert!(
                dir.join(r).exists(),
                "{}: {r} does not exist",
                kfile.display()
            );
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().file_name().into_string().unwrap();
            if f == "kustomization.yaml" || NOT_RESOURCES.contains(&f.as_str()) {
                continue;
            }
            assert!(named.contains(&f), "{}: {f} is not listed", kfile.display());
        }
        // A kustomization (not a component) patches only what it builds.
        if kind == "Kustomization" {
            let folder = dir.file_name().unwrap().to_str().unwrap();
            let bases = seq(k, &["resources"]);
            let own: Vec<&Resource> = all
                .iter()
                .filter(|r| !r.patch)
                .filter(|r| {
                    r.folder == folder
                        || bases
                            .iter()
                            .any(|b| b.as_str() == Some(&format!("../{}", r.folder)))
                })
                .collect();
            for p in seq(k, &["patches"]) {
                let (kind, name) = match (s(p, &["target", "kind"]), s(p, &["path"])) {
                    (Some(kind), _) => (
                        kind.to_owned(),
                        s(p, &["target", "name"]).map(str::to_owned),
                    ),
                    (None, Some(path)) => {
                        let body = docs(&dir.join(path)).remove(0);
                        (
                            s(&body, &["kind"]).unwrap().to_owned(),
                            s(&body, &["metadata", "name"]).map(str::to_owned),
                        )
                    }
                    (None, None) => panic!("{}: a patch without target or path", kfile.display()),
                };
                assert!(
                    own.iter()
                        .any(|r| r.kind == kind && name.as_ref().is_none_or(|n| &r.name == n)),
                    "{}: the patch of {kind} {name:?} targets nothing this kustomization builds",
                    kfile.display()
                );
            }
        }
    }
}

/// The pod template of a workload, or the spec of a Prometheus (sidecar patch).
fn pod_spec(r: &Resource) -> Option<&Value> {
    match r.kind.as_str() {
        "StatefulSet" | "Deployment" | "DaemonSet" => {
            r.body.get("spec")?.get("template")?.get("spec")
        }
        "Prometheus" => r.body.get("spec"),
        _ => None,
    }
}

#[test]
fn references_resolve() {
    let all = resources();
    let find = |kind: &str, ns: &str, name: &str| {
        all.iter()
            .any(|r| r.kind == kind && r.name == name && (r.namespace.is_none() || r.ns() == ns))
    };
    let namespaces: BTreeSet<&str> = all
        .iter()
        .filter(|r| r.kind == "Namespace")
        .map(|r| r.name.as_str())
        .collect();
    let mut pods = 0;
    for r in &all {
        let what = format!("{}/{} {} ({})", r.ns(), r.kind, r.name, r.folder);
        if let Some(ns) = &r.namespace {
            assert!(
                namespaces.contains(ns.as_str()) || EXTERNAL_NAMESPACES.contains(&ns.as_str()),
                "{what}: namespace {ns} is not created"
            );
        }
        // Certificates name an issuer that exists.
        if r.kind == "Certificate" {
            let issuer = s(&r.body, &["spec", "issuerRef", "name"]).unwrap();
            let kind = s(&r.body, &["spec", "issuerRef", "kind"]).unwrap_or("Issuer");
            assert!(find(kind, r.ns(), issuer), "{what}: no {kind} {issuer}");
        }
        let Some(spec) = pod_spec(r) else { continue };
        pods += 1;
        let secret_exists = |name: &str| {
            find("Secret", r.ns(), name)
                || all.iter().any(|c| {
                    c.kind == "Certificate"
                        && c.ns() == r.ns()
                        && s(&c.body, &["spec", "secretName"]) == Some(name)
                })
        };
        // Volumes: ConfigMaps and Secrets exist in the pod's namespace.
        let mut volumes: BTreeMap<String, &Value> = BTreeMap::new();
        for v in seq(spec, &["volumes"]) {
            let name = s(v, &["name"]).unwrap().to_owned();
            if let Some(cm) = s(v, &["configMap", "name"]) {
                assert!(find("ConfigMap", r.ns(), cm), "{what}: no ConfigMap {cm}");
            }
            if let Some(secret) = s(v, &["secret", "secretName"]) {
                assert!(secret_exists(secret), "{what}: no Secret {secret}");
            }
            volumes.insert(name, v);
        }
        for t in seq(&r.body, &["spec", "volumeClaimTemplates"]) {
            volumes.insert(s(t, &["metadata", "name"]).unwrap().to_owned(), t);
        }
        if let Some(sa) = s(spec, &["serviceAccountName"]) {
            assert!(
                find("ServiceAccount", r.ns(), sa),
                "{what}: no ServiceAccount {sa}"
            );
        }
        if let Some(svc) = s(&r.body, &["spec", "serviceName"]) {
            let headless = all.iter().any(|x| {
                x.kind == "Service"
                    && x.name == svc
                    && x.ns() == r.ns()
                    && s(&x.body, &["spec", "clusterIP"]) == Some("None")
            });
            assert!(headless, "{what}: no headless Service {svc}");
        }
        for c in seq(spec, &["containers"]) {
            let cname = s(c, &["name"]).unwrap();
            let ports: BTreeSet<&str> = seq(c, &["ports"])
                .iter()
                .filter_map(|p| s(p, &["name"]))
                .collect();
            let mut mounts: BTreeMap<&str, &str> = BTreeMap::new();
            for m in seq(c, &["volumeMounts"]) {
                let (name, path) = (s(m, &["name"]).unwrap(), s(m, &["mountPath"]).unwrap());
                // The Prometheus Operator adds its data volume itself.
                assert!(
                    volumes.contains_key(name)
                        || (r.kind == "Prometheus" && name.starts_with("prometheus-")),
                    "{what}: container {cname} mounts unknown volume {name}"
                );
                mounts.insert(path, name);
            }
            for probe in ["readinessProbe", "livenessProbe"] {
                if let Some(p) = c.get(probe) {
                    let Some(path) = s(p, &["httpGet", "path"]) else {
                        continue; // exec or tcpSocket
                    };
                    // Uplink's own containers answer Prometheus's endpoints (etcd has /health);
                    // the image may carry a registry.
                    let ours = s(c, &["image"])
                        .and_then(|i| i.rsplit('/').next())
                        .is_some_and(|i| i.starts_with("uplink-"));
                    assert!(
                        !ours || matches!(path, "/-/ready" | "/-/healthy"),
                        "{what}: {probe} asks {path}"
                    );
                    if let Some(port) = s(p, &["httpGet", "port"]) {
                        assert!(
                            ports.contains(port),
                            "{what}: {probe} on undeclared port {port}"
                        );
                    }
                }
            }
            // The configuration file is a key of the ConfigMap mounted as its directory.
            let args: Vec<&str> = seq(c, &["args"])
                .iter()
                .filter_map(|a| a.as_str())
                .collect();
            if let Some(file) = args.iter().find_map(|a| a.strip_prefix("--config.file=")) {
                let (dir, key) = file.rsplit_once('/').unwrap();
                let volume = mounts
                    .get(dir)
                    .unwrap_or_else(|| panic!("{what}: nothing mounted at {dir}"));
                let cm = s(volumes[*volume], &["configMap", "name"])
                    .unwrap_or_else(|| panic!("{what}: {dir} is not a ConfigMap"));
                let has = all.iter().any(|x| {
                    x.kind == "ConfigMap"
                        && x.name == cm
                        && x.ns() == r.ns()
                        && x.body.get("data").and_then(|d| d.get(key)).is_some()
                });
                assert!(has, "{what}: ConfigMap {cm} has no {key}");
            }
        }
    }
    assert!(pods >= 4, "workloads found: {pods}");
}

/// Pod labels of the workloads in `ns`.
fn pod_labels<'a>(all: &'a [Resource], ns: &str) -> Vec<(&'a Resource, &'a Value)> {
    all.iter()
        .filter(|r| r.ns() == ns)
        .filter_map(|r| {
            let labels = r
                .body
                .get("spec")?
                .get("template")?
                .get("metadata")?
                .get("labels")?;
            Some((r, labels))
        })
        .collect()
}

fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_mapping()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

#[test]
fn services_autoscalers_and_bindings_point_at_what_exists() {
    let all = resources();
    for r in &all {
        let what = format!("{}/{} {}", r.ns(), r.kind, r.name);
        match r.kind.as_str() {
            "Service" => {
                let selector = r.body["spec"]["selector"].clone();
                let targets: Vec<_> = pod_labels(&all, r.ns())
                    .into_iter()
                    .filter(|(_, l)| selects(&selector, l))
                    .collect();
                assert!(!targets.is_empty(), "{what} selects no pods");
                for port in seq(&r.body, &["spec", "ports"]) {
                    // targetPort: a name, a number, or absent (then the port's number).
                    let target = port.get("targetPort").or_else(|| port.get("port"));
                    let target = target.unwrap_or_else(|| panic!("{what}: a port without port"));
                    let by = if target.is_string() {
                        "name"
                    } else {
                        "containerPort"
                    };
                    let proto = s(port, &["protocol"]).unwrap_or("TCP");
                    let declared = targets.iter().any(|(w, _)| {
                        seq(pod_spec(w).unwrap(), &["containers"]).iter().any(|c| {
                            seq(c, &["ports"]).iter().any(|p| {
                                p.get(by) == Some(target)
                                    && s(p, &["protocol"]).unwrap_or("TCP") == proto
                            })
                        })
                    });
                    assert!(declared, "{what}: no {proto} container port {target:?}");
                }
            }
            "PodDisruptionBudget" => {
                let selector = &r.body["spec"]["selector"]["matchLabels"];
                assert!(
                    pod_labels(&all, r.ns())
                        .iter()
                        .any(|(_, l)| selects(selector, l)),
                    "{what} selects no pods"
                );
            }
            "HorizontalPodAutoscaler" => {
                let target = &r.body["spec"]["scaleTargetRef"];
                let (kind, name) = (s(target, &["kind"]).unwrap(), s(target, &["name"]).unwrap());
                assert!(
                    all.iter()
                        .any(|x| x.kind == kind && x.name == name && x.ns() == r.ns()),
                    "{what}: no {kind} {name}"
                );
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                let role = &r.body["roleRef"];
                let (kind, name) = (s(role, &["kind"]).unwrap(), s(role, &["name"]).unwrap());
                assert!(
                    all.iter().any(|x| x.kind == kind && x.name == name),
                    "{what}: no {kind} {name}"
                );
                for subject in seq(&r.body, &["subjects"]) {
                    let name = s(subject, &["name"]).unwrap();
                    let ns = s(subject, &["namespace"]).unwrap_or(r.ns());
                    assert!(
                        all.iter()
                            .any(|x| x.kind == "ServiceAccount" && x.name == name && x.ns() == ns),
                        "{what}: no ServiceAccount {ns}/{name}"
                    );
                }
            }
            _ => {}
        }
    }
}

#[test]
fn the_gateway_service_reaches_the_configured_port() {
    let all = resources();
    let mut configs = 0;
    for cm in all
        .iter()
        .filter(|r| r.kind == "ConfigMap" && r.body["data"].get("gateway.yml").is_some())
    {
        configs += 1;
        let config: Value =
            serde_yaml::from_str(cm.body["data"]["gateway.yml"].as_str().unwrap()).unwrap();
        let listen = s(&config, &["listen_address"]).unwrap();
        let port: u64 = listen.rsplit_once(':').unwrap().1.parse().unwrap();
        let gateway = all
            .iter()
            .find(|r| r.kind == "StatefulSet" && r.name == "uplink-gateway")
            .unwrap();
        let quic = seq(pod_spec(gateway).unwrap(), &["containers"])
            .iter()
            .flat_map(|c| seq(c, &["ports"]))
            .find(|p| s(p, &["protocol"]) == Some("UDP"))
            .expect("a UDP container port");
        assert_eq!(
            quic["containerPort"].as_u64(),
            Some(port),
            "{} listens on {listen}",
            cm.folder
        );
        let service = all
            .iter()
            .find(|r| r.kind == "Service" && s(&r.body, &["spec", "type"]) == Some("LoadBalancer"))
            .expect("a LoadBalancer Service");
        assert!(
            seq(&service.body, &["spec", "ports"])
                .iter()
                .any(|p| s(p, &["protocol"]) == Some("UDP")),
            "the LoadBalancer carries UDP"
        );
    }
    assert!(configs >= 2, "gateway configurations found: {configs}");
}

#[test]
fn sidecar_helm_values_match_the_kustomize_patch() {
    let dir = kubernetes().join("sidecar");
    let patch = &docs(&dir.join("prometheus-patch.yaml"))[0]["spec"];
    let values = &docs(&dir.join("values.yaml"))[0]["prometheus"]["prometheusSpec"];
    for key in ["containers", "volumes", "remoteWrite"] {
        assert!(!patch[key].is_null(), "sidecar: the patch has no {key}");
        assert_eq!(patch[key], values[key], "sidecar: {key} differ");
    }
}
