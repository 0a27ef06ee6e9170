//! End to end against real receivers: one agent, one gateway, and three destinations at once —
//! a real Prometheus (remote-write receiver) and a real VictoriaMetrics single node, each behind
//! a fault-injecting relay, plus the capture receiver as the untouched reference.
//!
//! Both real destinations are configured for remote write 2.0: Prometheus 3 takes it (its
//! `Written` headers count every sample), the relay in front of VictoriaMetrics answers 415, so
//! that destination falls back to 1.0. Then the relays script, while the agent
//! keeps scraping: 503s and 429s with `Retry-After`, 401s (the destination pauses), 500s, a
//! window of 413 for requests over five series, and a 400 for any request holding one chosen
//! series, all run long.
//!
//! Exact oracle: the capture holds every sample (checked complete against the probe); each
//! real destination, read back through PromQL and VictoriaMetrics's export API, holds exactly
//! the capture's samples minus the refused series, and the gateway's
//! `remote_write_samples_dropped_total{reason="invalid"}` for it equals the capture's count of
//! that series' samples.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use uplink_loadtest::capture::{Capture, Received, Scripted};
use uplink_loadtest::faults::FaultProxy;
use uplink_loadtest::harness::{
    self, AgentSpec, Bins, free_addr, metrics, prometheus_installed, start_agent_with,
    start_gateway_yaml, start_prometheus, start_victoria_metrics, victoria_metrics_installed,
    write_certs,
};
use uplink_loadtest::oracle::{self, STALE_NAN_BITS};
use uplink_loadtest::probe::{Probe, ProbeSpec};
use uplink_shared::model::{self, Label};

use uplink_loadtest::harness::block;

type Key = (Vec<Label>, i64, u64);

/// Samples as (labels, timestamp, value bits), staleness markers left out (Prometheus's range
/// selectors do not return them).
fn keys(v: &[Received]) -> HashSet<Key> {
    v.iter()
        .filter(|r| r.value.to_bits() != STALE_NAN_BITS)
        .map(|r| (r.labels.clone(), r.timestamp, r.value.to_bits()))
        .collect()
}

fn gateway_metric(web: std::net::SocketAddr, key: &str) -> f64 {
    block(|| metrics(web))
        .ok()
        .and_then(|m| m.get(key).copied())
        .unwrap_or(0.0)
}

fn scripted(status: u16, k: usize, retry_after: Option<&str>) -> Vec<Scripted> {
    (0..k)
        .map(|_| Scripted {
            status,
            retry_after: retry_after.map(str::to_owned),
            message: format!("scripted {status}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_and_victoria_metrics_through_scripted_faults() {
    if !prometheus_installed() || !victoria_metrics_installed() {
        panic!("prometheus and victoria-metrics must be installed (deploy/dev/setup.sh)");
    }
    let bins = Bins::locate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let site = "edge";
    write_certs(dir.path(), &[site.to_owned()]).unwrap();
    let spec = ProbeSpec {
        targets: 3,
        families: 6,
        churn_every: 0,
    };
    let probe = Probe::start(spec, std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0)
        .await
        .unwrap();
    let prometheus = block(|| start_prometheus(dir.path())).unwrap();
    let vm = block(|| start_victoria_metrics(dir.path())).unwrap();
    let capture = Capture::start(free_addr().unwrap()).await.unwrap();
    let prom_relay = FaultProxy::start(free_addr().unwrap(), &prometheus.remote_write_url())
        .await
        .unwrap();
    let vm_relay = FaultProxy::start(free_addr().unwrap(), &vm.remote_write_url())
        .await
        .unwrap();

    // The refused series: the gauge family of target 1, at both real destinations.
    let instances = probe.instances();
    let bad = vec![
        ("family".to_owned(), "1".to_owned()),
        ("instance".to_owned(), instances[1].clone()),
    ];
    for r in [&prom_relay, &vm_relay] {
        r.rules(|r| r.reject_labels = bad.clone());
    }
    vm_relay.rules(|r| r.v1_only = true);

    let entry = |name: &str, url: &str, v2: bool| {
        format!(
            "  - url: {url}\n    name: {name}\n    remote_timeout: 5s\n    \
             paused_retry_interval: 1s\n{}    \
             queue_config: {{min_backoff: 50ms, max_backoff: 1s, max_shards: 4, \
             max_samples_per_send: 100}}\n",
            if v2 {
                "    protobuf_message: io.prometheus.write.v2.Request\n"
            } else {
                ""
            }
        )
    };
    let rw = [
        entry("prometheus", &prom_relay.url(), true),
        entry("victoria", &vm_relay.url(), true),
        entry("capture", &capture.url(), false),
    ]
    .concat();
    let gateway = block(|| start_gateway_yaml(&bins, dir.path(), &rw, "0s", "")).unwrap();
    let mut agent = block(|| {
        start_agent_with(
            &bins,
            dir.path(),
            &AgentSpec {
                self_scrape: false,
                site,
                gateway: gateway.quic,
                targets: &instances,
                interval: "500ms",
                job: "probe",
            },
            "",
            "",
        )
    })
    .unwrap();

    // The script, while the agent keeps scraping.
    let started = Instant::now();
    let at = |secs: u64| async move {
        let t = Duration::from_secs(secs);
        if let Some(left) = t.checked_sub(started.elapsed()) {
            tokio::time::sleep(left).await;
        }
    };
    at(4).await;
    prom_relay.rules(|r| r.push(scripted(503, 3, Some("1"))));
    vm_relay.rules(|r| r.push(scripted(429, 2, Some("1"))));
    at(8).await;
    prom_relay.rules(|r| r.push(scripted(401, 2, None)));
    vm_relay.rules(|r| r.max_series = Some(5));
    let paused_key = "uplink_gateway_remote_write_paused{destination=\"prometheus\"}";
    let mut saw_pause = false;
    while started.elapsed() < Duration::from_secs(12) {
        saw_pause |= gateway_metric(gateway.web, paused_key) == 1.0;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    vm_relay.rules(|r| r.max_series = None);
    prom_relay.rules(|r| r.push(scripted(500, 2, None)));
    vm_relay.rules(|r| r.push(scripted(502, 2, None)));
    at(16).await;

    // Orderly stop: the agent ships everything, the gateway delivers everything.
    assert!(block(|| agent.proc.terminate(Duration::from_secs(30))));
    assert!(block(|| gateway.wait_drained(Duration::from_secs(60))));

    // The reference: complete against the probe's oracle.
    let reference = capture.snapshot();
    let report = oracle::check(
        &spec,
        &probe.addrs,
        &[Label::new("job", "probe"), Label::new("site", site)],
        &reference,
    );
    assert!(report.is_clean(), "{:?}", report.errors);
    for t in 0..spec.targets {
        let missing = report.missing_scrapes(t, probe.served(t));
        assert!(
            missing.is_empty(),
            "target {t}: scrapes {missing:?} missing"
        );
    }
    let is_bad = |labels: &[Label]| {
        bad.iter()
            .all(|(n, v)| model::get(labels, n) == Some(v.as_str()))
    };
    let expected: HashSet<Key> = keys(&reference)
        .into_iter()
        .filter(|(l, _, _)| !is_bad(l))
        .collect();
    let refused = reference.iter().filter(|r| is_bad(&r.labels)).count() as f64;
    assert!(refused > 10.0, "the refused series was scraped: {refused}");

    // Each real destination: exactly the reference minus the refused series.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (from_prom, from_vm) = loop {
        let p = harness::prometheus_samples(prometheus.web, "{job=\"probe\"}[1h]")
            .await
            .unwrap();
        let v = vm.samples("{job=\"probe\"}").await.unwrap();
        let (p, v) = (keys(&p), keys(&v));
        if (p == expected && v == expected) || Instant::now() > deadline {
            break (p, v);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for (name, got) in [("prometheus", &from_prom), ("victoria", &from_vm)] {
        let missing = expected.difference(got).count();
        let extra = got.difference(&expected).count();
        assert_eq!(
            (missing, extra),
            (0, 0),
            "{name}: {missing} samples missing, {extra} unexpected, of {}",
            expected.len()
        );
        let dropped = gateway_metric(
            gateway.web,
            &format!(
                "uplink_gateway_remote_write_samples_dropped_total{{destination=\"{name}\",reason=\"invalid\"}}"
            ),
        );
        assert_eq!(dropped, refused, "{name}: refused samples counted exactly");
        let protocol = format!("uplink_gateway_remote_write_protocol{{destination=\"{name}\"}}");
        let want = if name == "prometheus" { 2.0 } else { 1.0 };
        assert_eq!(
            gateway_metric(gateway.web, &protocol),
            want,
            "{name}: Prometheus 3 speaks 2.0, the 415 makes VictoriaMetrics fall back"
        );
    }
    assert!(saw_pause, "the 401s paused the Prometheus destination");
    assert_eq!(gateway_metric(gateway.web, paused_key), 0.0);
    let m = block(|| metrics(gateway.web)).unwrap();
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    assert!(get("uplink_gateway_remote_write_retries_total{destination=\"prometheus\"}") >= 3.0);
    assert!(get("uplink_gateway_remote_write_retries_total{destination=\"victoria\"}") >= 2.0);
    assert!(get("uplink_gateway_remote_write_splits_total{destination=\"victoria\"}") >= 1.0);
    // Requests already in flight on other shards may get a 415 too; then it is remembered.
    let unsupported = vm_relay.counts().unsupported;
    assert!((1..=4).contains(&unsupported), "{unsupported} 415s");
    assert!(vm_relay.counts().too_large >= 1);
    assert_eq!(capture.duplicates(), 0);
    println!(
        "{} samples at each real destination, {refused} refused and counted; relays: \
         prometheus {:?}, victoria {:?}",
        expected.len(),
        prom_relay.counts(),
        vm_relay.counts()
    );
}
