//! Chaining, end to end with real processes: edge agent → regional gateway → relay agent →
//! global gateway → receiver. The regional gateway's destination is the relay agent's
//! remote-write receiver on its own host (`--web.enable-remote-write-receiver`, no scrape
//! targets), which answers 2xx only once a request is durable in its queue and ships it over
//! the QUIC tunnel to the global gateway, with its own certificate. Every hop deletes only what
//! the next acknowledged as durable, so the chain keeps the single-hop guarantees.
//!
//! Fault: the global gateway is killed with SIGKILL mid-run and started again; the relay's
//! backlog waits on its disk. Oracle: every scrape of every target arrives exactly once, with
//! the edge's labels (the relay's external label does not override them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use uplink_loadtest::capture::Capture;
use uplink_loadtest::harness::{
    self, AgentSpec, Bins, free_addr, start_agent_with, start_agent_with_args, start_gateway,
    write_certs,
};
use uplink_loadtest::oracle;
use uplink_loadtest::probe::{Probe, ProbeSpec};
use uplink_shared::model::Label;

use uplink_loadtest::harness::block;

/// Copies the test PKI (one CA for both tiers) into a tier's directory.
fn copy_pki(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".crt") || name.ends_with(".key") {
            std::fs::copy(e.path(), to.join(&*name)).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regional_tier_feeds_the_global_tier_exactly_once_across_a_global_crash() {
    let bins = Bins::locate().expect("binaries built by cargo test --workspace");
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &["edge".into(), "relay".into()]).unwrap();
    let (global_dir, region_dir) = (dir.path().join("global"), dir.path().join("region"));
    copy_pki(dir.path(), &global_dir);
    copy_pki(dir.path(), &region_dir);

    let spec = ProbeSpec {
        targets: 2,
        families: 6,
        churn_every: 0,
    };
    let probe = Probe::start(spec, IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
        .await
        .unwrap();
    let capture = Capture::start(free_addr().unwrap()).await.unwrap();

    // Global tier: a gateway forwarding to the receiver.
    let mut global = block(|| start_gateway(&bins, &global_dir, &[capture.url()])).unwrap();
    // Regional tier: the relay agent (a remote-write receiver shipping to the global gateway)
    // and the regional gateway whose destination it is.
    let relay = block(|| {
        start_agent_with_args(
            &bins,
            &region_dir,
            &AgentSpec {
                self_scrape: false,
                site: "relay",
                gateway: global.quic,
                targets: &[],
                interval: "1s",
                job: "none",
            },
            "",
            "batch_delay: 50ms",
            &["--web.enable-remote-write-receiver"],
        )
    })
    .unwrap();
    let relay_url = format!("http://{}/api/v1/write", relay.web);
    let regional = block(|| start_gateway(&bins, &region_dir, &[relay_url])).unwrap();
    // Edge: an agent scraping the probe, shipping to the regional gateway.
    let instances = probe.instances();
    let mut edge = block(|| {
        start_agent_with(
            &bins,
            &region_dir,
            &AgentSpec {
                self_scrape: false,
                site: "edge",
                gateway: regional.quic,
                targets: &instances,
                interval: "250ms",
                job: "probe",
            },
            "",
            "batch_delay: 50ms",
        )
    })
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    while capture.is_empty() {
        assert!(Instant::now() < deadline, "nothing crossed the chain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    block(|| global.proc.kill9());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = harness::metrics(relay.web)
        .map(|m| harness::metric_sum(&m, "uplink_agent_queue_records"))
        .unwrap_or(0.0);
    block(|| global.restart(&global_dir, &bins)).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Orderly stop from the edge inward; then every tier drains.
    assert!(block(|| edge.proc.terminate(Duration::from_secs(30))));
    assert!(block(|| regional.wait_drained(Duration::from_secs(60))));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let queued = harness::metrics(relay.web)
            .map(|m| harness::metric_sum(&m, "uplink_agent_queue_records"))
            .unwrap_or(-1.0);
        if queued == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "relay queue never drained: {queued}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(block(|| global.wait_drained(Duration::from_secs(60))));

    let received = capture.snapshot();
    let report = oracle::check(
        &spec,
        &probe.addrs,
        &[Label::new("job", "probe"), Label::new("site", "edge")],
        &received,
    );
    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(capture.duplicates(), 0, "exactly once across the chain");
    for t in 0..spec.targets {
        let missing = report.missing_scrapes(t, probe.served(t));
        assert!(
            missing.is_empty(),
            "target {t}: scrapes {missing:?} missing"
        );
    }
    println!(
        "{} samples across two tiers; the relay held {waiting} records while the global \
         gateway was down",
        received.len()
    );
    assert!(waiting > 0.0, "the relay buffered during the global outage");
}
