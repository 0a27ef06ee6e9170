//! The Grafana dashboards in deploy/monitoring/dashboards cannot rot: every panel query parses
//! as PromQL (`promtool check rules` on a generated rule file), and every `uplink_*` metric it
//! names is one that a running agent or gateway exports on `/metrics` or that the gateway
//! writes into the global view (the freshness series).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use std::net::{IpAddr, Ipv4Addr};

use uplink_loadtest::capture::Capture;
use uplink_loadtest::harness::{self, AgentSpec, Bins};
use uplink_loadtest::probe::{Probe, ProbeSpec};
use uplink_shared::model;

fn dashboards() -> Vec<(String, serde_json::Value)> {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/monitoring/dashboards"
    ));
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let v = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            out.push((p.file_name().unwrap().to_string_lossy().into_owned(), v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every panel query, with dashboard variables replaced by plausible values.
fn exprs(d: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let e = t["expr"].as_str().unwrap();
            out.push(e.replace("$site", "plant-7").replace("$instance", ".*"));
        }
    }
    out
}

fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("uplink_") {
        let start = i + pos;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        out.insert(expr[start..end].to_owned());
        i = end;
    }
    out
}

/// Names in a `/metrics` text (from `# TYPE` lines, with the suffixes their samples carry).
fn exported(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            out.insert(name.to_owned());
            match kind {
                "counter" => {
                    out.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        out.insert(format!("{name}{s}"));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

#[test]
fn dashboard_queries_parse_as_promql() {
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (name, d) in dashboards() {
        for (i, e) in exprs(&d).into_iter().enumerate() {
            let record = format!(
                "dashboard:{}:{i}",
                name.trim_end_matches(".json").replace('-', "_")
            );
            rules.push_str(&format!(
                "      - record: {record}\n        expr: {}\n",
                serde_json::to_string(&e).unwrap()
            ));
        }
    }
    let file = dir.path().join("dashboards.yml");
    std::fs::write(&file, rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool is installed (deploy/dev/setup.sh)");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_name_only_metrics_that_exist() {
    let spec = ProbeSpec {
        targets: 1,
        families: 2,
        churn_every: 0,
    };
    let bins = Bins::locate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    harness::write_certs(dir.path(), &["dash".to_owned()]).unwrap();
    let probe = Probe::start(spec, IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
        .await
        .unwrap();
    let capture = Capture::start(harness::free_addr().unwrap()).await.unwrap();
    let gateway = tokio::task::block_in_place(|| {
        harness::start_gateway_with(&bins, dir.path(), &[capture.url()], "1s")
    })
    .unwrap();
    let targets = probe.instances();
    let agent = tokio::task::block_in_place(|| {
        harness::start_agent(
            &bins,
            dir.path(),
            &AgentSpec {
                self_scrape: false,
                site: "dash",
                gateway: gateway.quic,
                targets: &targets,
                interval: "500ms",
                job: "probe",
            },
        )
    })
    .unwrap();
    // Wait for the freshness series to reach the destination.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut known = BTreeSet::new();
    while Instant::now() < deadline {
        known = capture
            .snapshot()
            .iter()
            .filter_map(|r| model::get(&r.labels, "__name__"))
            .filter(|n| n.starts_with("uplink_site_"))
            .map(str::to_owned)
            .collect();
        if known.contains("uplink_site_lag_seconds") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Series the ledger writes only in some states (absent when the backlog is empty).
    known.insert("uplink_site_oldest_backlog_timestamp_seconds".into());
    for web in [agent.web, gateway.web] {
        let (code, text) = harness::http_get(web, "/metrics").unwrap();
        assert_eq!(code, 200);
        known.extend(exported(&text));
    }
    let mut unknown = Vec::new();
    for (name, d) in dashboards() {
        for e in exprs(&d) {
            for m in metric_names(&e) {
                if !known.contains(&m) {
                    unknown.push(format!("{name}: {m} in {e}"));
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "unknown metrics: {unknown:#?}\nknown: {known:#?}"
    );
}
