//! Sidecar mode end to end, real processes: a real Prometheus 3 agent (`--agent`) scrapes the
//! probe exporter and remote-writes to the uplink agent (`--web.enable-remote-write-receiver`,
//! no scrape targets of its own), which ships to the gateway, which forwards to the capture
//! receiver; once with remote write 1.0, once with 2.0 (`io.prometheus.write.v2.Request`).
//!
//! Oracle: every scrape Prometheus made of every target arrives whole with exact values and
//! the agent's external label, once; the stale markers Prometheus writes when the targets go
//! away arrive bit-exact; every sample the agent accepted reaches the receiver exactly once;
//! and the agent answered every remote-write request with 2xx.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use uplink_loadtest::capture::Capture;
use uplink_loadtest::harness::{self, AgentSpec, Bins};
use uplink_loadtest::oracle;
use uplink_loadtest::probe::{Probe, ProbeSpec, spec_series_count};
use uplink_shared::model::Label;

use uplink_loadtest::harness::block;

use uplink_loadtest::harness::wait_for;

/// `name{code="..."}` values of the agent's request counter, by code.
fn codes(m: &std::collections::HashMap<String, f64>) -> Vec<(String, f64)> {
    let prefix = "uplink_agent_remote_write_requests_total{code=\"";
    let mut out: Vec<(String, f64)> = m
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.get(..3)?.to_owned(), *v)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_agent_remote_writes_1_0_through_the_uplink_agent_exactly() {
    sidecar("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_agent_remote_writes_2_0_through_the_uplink_agent_exactly() {
    sidecar("    protobuf_message: io.prometheus.write.v2.Request\n").await;
}

/// One run, with `rw_extra` in the Prometheus agent's `remote_write` entry.
async fn sidecar(rw_extra: &str) {
    let _serial = harness::serial().await;
    assert!(
        harness::prometheus_installed(),
        "Prometheus 3 is required (deploy/dev/setup.sh installs it)"
    );
    let bins = Bins::locate().expect("binaries built by cargo test --workspace");
    let dir = tempfile::tempdir().unwrap();
    let site = "sidecar";
    harness::write_certs(dir.path(), &[site.to_owned()]).unwrap();
    let spec = ProbeSpec {
        targets: 2,
        families: 6,
        churn_every: 0,
    };

    let capture = Capture::start(harness::free_addr().unwrap()).await.unwrap();
    let gateway = block(|| harness::start_gateway(&bins, dir.path(), &[capture.url()])).unwrap();
    let mut agent = block(|| {
        harness::start_agent_with_args(
            &bins,
            dir.path(),
            &AgentSpec {
                self_scrape: false,
                site,
                gateway: gateway.quic,
                targets: &[],
                interval: "1s",
                job: "none",
            },
            "",
            "",
            &["--web.enable-remote-write-receiver"],
        )
    })
    .unwrap();
    let probe = Probe::start(spec, IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
        .await
        .unwrap();
    let write_url = format!("http://{}/api/v1/write", agent.web);
    let mut prometheus = block(|| {
        harness::start_prometheus_agent_with(
            dir.path(),
            "probe",
            &probe.instances(),
            "1s",
            &write_url,
            rw_extra,
        )
    })
    .unwrap();

    // A few scrapes flow through; then the targets go away, so Prometheus writes a stale marker
    // for each of their series, and stops (flushing its remote-write queue).
    wait_for(
        "five scrapes of every target",
        Duration::from_secs(30),
        || (0..spec.targets).all(|t| probe.served(t) >= 5),
    )
    .await;
    probe.cancel_token().cancel();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        block(|| prometheus.proc.terminate(Duration::from_secs(30))),
        "Prometheus exits cleanly"
    );

    // Everything the agent accepted is shipped, forwarded and received once, and acknowledged
    // (the receiver may have a batch before the agent has its ack).
    let m = || block(|| harness::metrics(agent.web)).unwrap();
    wait_for(
        "the receiver to have every accepted sample, acknowledged",
        Duration::from_secs(20),
        || {
            let m = m();
            let accepted = harness::metric_sum(&m, "uplink_agent_remote_write_samples_total");
            accepted > 0.0
                && capture.len() as f64 == accepted
                && harness::metric_sum(&m, "uplink_agent_queue_records") == 0.0
        },
    )
    .await;
    let metrics = m();
    let by_code = codes(&metrics);
    assert!(
        !by_code.is_empty() && by_code.iter().all(|(c, _)| c.starts_with('2')),
        "the agent answered only 2xx: {by_code:?}"
    );
    assert_eq!(
        harness::metric_sum(&metrics, "uplink_agent_remote_write_dropped_total"),
        0.0
    );
    assert!(
        block(|| agent.proc.terminate(Duration::from_secs(20))),
        "agent exits cleanly"
    );

    let received = capture.snapshot();
    let extra = [Label::new("job", "probe"), Label::new("site", site)];
    let report = oracle::check(&spec, &probe.addrs, &extra, &received);
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(capture.duplicates(), 0);
    for t in 0..spec.targets {
        let served = probe.served(t);
        let got: Vec<u64> = report.scrapes[t].iter().copied().collect();
        assert_eq!(
            got,
            (0..served).collect::<Vec<_>>(),
            "target {t}: every scrape Prometheus made must arrive"
        );
    }
    let series = spec_series_count(&spec) as u64;
    let scrapes: u64 = (0..spec.targets).map(|t| probe.served(t)).sum();
    assert_eq!(
        report.probe_samples - report.stale_markers,
        scrapes * series
    );
    assert_eq!(
        report.stale_markers,
        spec.targets as u64 * series,
        "one bit-exact stale marker per probe series"
    );
    println!(
        "{} samples received ({} probe, {} stale markers, {} other), requests {by_code:?}",
        received.len(),
        report.probe_samples,
        report.stale_markers,
        report.other_samples
    );
}
