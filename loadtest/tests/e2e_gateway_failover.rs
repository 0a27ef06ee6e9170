//! Exactly once across a failover to another gateway: two gateways share their dedupe cursors
//! through a real etcd (`dedupe.etcd`) and forward to the same capture receiver; one agent
//! lists both (`uplink.gateways`), each behind a UDP chaos proxy.
//!
//! 1. The agent ships to gateway 1.
//! 2. Gateway 1's acks are lost (the proxy drops every gateway-to-agent packet): gateway 1
//!    stores and forwards the batches, the agent never hears so, declares the connection dead
//!    and fails over to gateway 2, resending them. Gateway 2 reads the shared cursor and
//!    acknowledges them without storing them again (counted in its
//!    `uplink_gateway_samples_deduplicated_total`).
//! 3. Back the other way: gateway 2's acks are lost, gateway 1 is reachable again. Gateway 1
//!    had served this queue before, so its own cursor is stale; it reads the shared one when the
//!    new connection stores its first batch and skips what gateway 2 stored.
//! 4. The agent stops (draining its queue); both gateways deliver everything.
//!
//! Exact oracle: every scrape the probe served is in the capture with the right values, and
//! the capture received no sample twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use uplink_loadtest::capture::Capture;
use uplink_loadtest::harness::{
    Bins, Proc, block, etcd_installed, free_addr, gateway_subdir, metric_at, rw_entries,
    start_etcd, start_gateway_yaml, wait_for, wait_ready, write_certs,
};
use uplink_loadtest::oracle;
use uplink_loadtest::probe::{Probe, ProbeSpec};
use uplink_loadtest::proxy::UdpProxy;

const DEDUPED: &str = "uplink_gateway_samples_deduplicated_total";
const FORWARDED: &str = "uplink_gateway_remote_write_samples_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_to_another_gateway_after_lost_acks_is_not_forwarded_twice() {
    assert!(
        etcd_installed(),
        "etcd must be installed (deploy/dev/setup.sh)"
    );
    let bins = Bins::locate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &["site1".to_owned()]).unwrap();
    let etcd = block(|| start_etcd(dir.path())).unwrap();
    let capture = Capture::start(free_addr().unwrap()).await.unwrap();
    let yaml = format!(
        "{}dedupe:\n  etcd:\n    endpoints: ['{}']\n",
        rw_entries(&[capture.url()]),
        etcd.client_url
    );
    let gateways: Vec<_> = ["gw1", "gw2"]
        .iter()
        .map(|g| {
            let sub = gateway_subdir(dir.path(), g).unwrap();
            block(|| start_gateway_yaml(&bins, &sub, &yaml, "0s", "")).unwrap()
        })
        .collect();
    let (gw1, gw2) = (gateways[0].web, gateways[1].web);
    let link1 = UdpProxy::start(free_addr().unwrap(), gateways[0].quic)
        .await
        .unwrap();
    let link2 = UdpProxy::start(free_addr().unwrap(), gateways[1].quic)
        .await
        .unwrap();

    let spec = ProbeSpec {
        targets: 2,
        families: 4,
        churn_every: 0,
    };
    let probe = Probe::start_local(spec).await.unwrap();
    let targets: Vec<String> = probe.instances().iter().map(|t| format!("'{t}'")).collect();
    let config = dir.path().join("site1.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 500ms\n  scrape_timeout: 500ms\n  external_labels:\n    \
             site: site1\n\
             scrape_configs:\n  - job_name: probe\n    static_configs:\n      - targets: [{}]\n\
             uplink:\n  gateways: ['{}', '{}']\n  server_name: localhost\n\
             \x20 tls: {{cert_file: site1.crt, key_file: site1.key, ca_file: ca.crt}}\n\
             \x20 queue: {{directory: site1-queue, sync: interval}}\n\
             \x20 shipper: {{min_backoff: 100ms, max_backoff: 500ms, batch_delay: 50ms, \
             keep_alive: 300ms, idle_timeout: 2s, ack_timeout: 1s}}\n\
             \x20 self_scrape: {{enabled: false}}\n",
            targets.join(", "),
            link1.addr,
            link2.addr
        ),
    )
    .unwrap();
    let web = free_addr().unwrap();
    let mut agent = Proc::spawn(
        "uplink-agent[site1]",
        Command::new(&bins.agent)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address={web}")),
        &dir.path().join("site1.log"),
    )
    .unwrap();
    wait_ready(web, Duration::from_secs(20)).unwrap();

    // 1. Through gateway 1.
    wait_for("data through gateway 1", Duration::from_secs(30), || {
        metric_at(gw1, FORWARDED) > 0.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2. Gateway 1's acks are lost: the agent fails over to gateway 2 and resends.
    link1
        .faults
        .down_loss_ppm
        .store(1_000_000, Ordering::Relaxed);
    wait_for(
        "gateway 2 skipping what gateway 1 stored",
        Duration::from_secs(60),
        || metric_at(gw2, DEDUPED) > 0.0,
    )
    .await;
    wait_for("data through gateway 2", Duration::from_secs(30), || {
        metric_at(gw2, FORWARDED) > 0.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. And back: gateway 2's acks are lost, gateway 1 is reachable again.
    let skipped_by_1 = metric_at(gw1, DEDUPED);
    link1.faults.down_loss_ppm.store(0, Ordering::Relaxed);
    link2
        .faults
        .down_loss_ppm
        .store(1_000_000, Ordering::Relaxed);
    wait_for(
        "gateway 1 skipping what gateway 2 stored",
        Duration::from_secs(60),
        || metric_at(gw1, DEDUPED) > skipped_by_1,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    link2.faults.down_loss_ppm.store(0, Ordering::Relaxed);

    // 4. Stop in order; both gateways deliver what they stored.
    wait_for("the agent's queue drained", Duration::from_secs(60), || {
        metric_at(web, "uplink_agent_queue_records") == 0.0
    })
    .await;
    assert!(block(|| agent.terminate(Duration::from_secs(30))));
    for g in &gateways {
        assert!(block(|| g.wait_drained(Duration::from_secs(30))));
    }
    let received = capture.snapshot();
    let (report, missing) = oracle::check_served(&probe, &oracle::probe_labels("site1"), &received);
    println!(
        "capture: {} samples, {} duplicates; gateway 1 forwarded {} and skipped {}, gateway 2 \
         forwarded {} and skipped {}; missing scrapes {missing:?}",
        received.len(),
        capture.duplicates(),
        metric_at(gw1, FORWARDED),
        metric_at(gw1, DEDUPED),
        metric_at(gw2, FORWARDED),
        metric_at(gw2, DEDUPED),
    );
    assert_eq!(report.wrong, 0, "values as served");
    assert_eq!(report.missing_in_scrape, 0, "whole scrapes");
    assert!(missing.is_empty(), "no scrape missing: {missing:?}");
    assert_eq!(capture.duplicates(), 0, "nothing forwarded twice");
    assert_eq!(
        metric_at(gw1, "uplink_gateway_shared_cursor_errors_total")
            + metric_at(gw2, "uplink_gateway_shared_cursor_errors_total"),
        0.0
    );
}
