//! HA-pair dedupe across two gateways that share their election through a real etcd, in
//! front of a real Prometheus (and the capture receiver):
//!
//! - Two agents scrape the same targets as replicas `r1` and `r2` of cluster `c1` (their
//!   external labels differ only in `__replica__`); `r1` ships to gateway 1, `r2` to gateway 2.
//! - `r1` starts first and is elected; gateway 2 acknowledges `r2`'s batches and drops them
//!   (counted), forwarding nothing.
//! - `r1` is killed (-9); after `failover_timeout` gateway 2 elects `r2` through etcd and its
//!   samples flow, into the same series (the replica label is removed everywhere).
//! - Exact: the capture holds exactly what the two gateways say they forwarded, no duplicate,
//!   no `__replica__` label, and no series beyond one replica's; Prometheus holds the same
//!   series, and refused nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use uplink_loadtest::capture::Capture;
use uplink_loadtest::harness::{
    Bins, Proc, block, etcd_installed, free_addr, gateway_subdir, metric_at, metric_sum, metrics,
    prometheus_installed, prometheus_samples, rw_entries, start_etcd, start_gateway_yaml,
    start_prometheus, wait_for, wait_ready, write_certs,
};
use uplink_loadtest::probe::{Probe, ProbeSpec};
use uplink_shared::model;

/// A replica: same targets and external labels as its twin but `__replica__`.
fn start_replica(
    bins: &Bins,
    dir: &Path,
    replica: &str,
    gateway: std::net::SocketAddr,
    targets: &[String],
) -> (Proc, std::net::SocketAddr) {
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    let config = dir.join(format!("{replica}.yml"));
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 500ms\n  scrape_timeout: 500ms\n  external_labels:\n    \
             cluster: c1\n    __replica__: {replica}\n\
             scrape_configs:\n  - job_name: probe\n    static_configs:\n      - targets: [{}]\n\
             uplink:\n  gateways: ['{gateway}']\n  server_name: localhost\n\
             \x20 tls: {{cert_file: {replica}.crt, key_file: {replica}.key, ca_file: ca.crt}}\n\
             \x20 queue: {{directory: {replica}-queue, sync: interval}}\n\
             \x20 shipper: {{min_backoff: 100ms, max_backoff: 1s, batch_delay: 50ms}}\n\
             \x20 self_scrape: {{enabled: false}}\n",
            targets.join(", ")
        ),
    )
    .unwrap();
    let web = free_addr().unwrap();
    let proc = Proc::spawn(
        &format!("uplink-agent[{replica}]"),
        Command::new(&bins.agent)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address={web}")),
        &dir.join(format!("{replica}.log")),
    )
    .unwrap();
    wait_ready(web, Duration::from_secs(20)).unwrap();
    (proc, web)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_elect_one_replica_through_etcd_and_fail_over() {
    if !etcd_installed() || !prometheus_installed() {
        panic!("etcd and prometheus must be installed (deploy/dev/setup.sh)");
    }
    let bins = Bins::locate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &["r1".to_owned(), "r2".to_owned()]).unwrap();
    let etcd = block(|| start_etcd(dir.path())).unwrap();
    let prometheus = block(|| start_prometheus(dir.path())).unwrap();
    let capture = Capture::start(free_addr().unwrap()).await.unwrap();
    let rw = format!(
        "{}ha:\n  failover_timeout: 3s\n  update_timeout: 1s\n  etcd:\n    endpoints: ['{}']\n",
        rw_entries(&[capture.url(), prometheus.remote_write_url()]),
        etcd.client_url
    );
    let mut gateways: Vec<_> = ["gw1", "gw2"]
        .iter()
        .map(|g| {
            let sub = gateway_subdir(dir.path(), g).unwrap();
            block(|| start_gateway_yaml(&bins, &sub, &rw, "0s", "")).unwrap()
        })
        .collect();
    let (gw1, gw2) = (gateways[0].web, gateways[1].web);
    let probe = Probe::start_local(ProbeSpec {
        targets: 2,
        families: 3,
        churn_every: 0,
    })
    .await
    .unwrap();
    let targets = probe.instances();

    // r1 first: elected.
    let (mut r1, _) = start_replica(&bins, dir.path(), "r1", gateways[0].quic, &targets);
    wait_for("r1's data", Duration::from_secs(30), || !capture.is_empty()).await;
    let (mut r2, _) = start_replica(&bins, dir.path(), "r2", gateways[1].quic, &targets);
    wait_for("r2's batches dropped", Duration::from_secs(30), || {
        metric_at(gw2, "uplink_gateway_ha_samples_dropped_total") > 0.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let forwarded = "uplink_gateway_remote_write_samples_total";
    assert_eq!(
        metric_at(gw2, forwarded),
        0.0,
        "the standby's gateway forwards nothing"
    );
    let series_before: HashSet<Vec<model::Label>> =
        capture.snapshot().into_iter().map(|r| r.labels).collect();

    // r1 dies; r2 takes over through etcd.
    block(|| r1.kill9());
    wait_for("the failover", Duration::from_secs(30), || {
        metric_at(gw2, forwarded) > 0.0
    })
    .await;
    assert_eq!(metric_at(gw2, "uplink_gateway_ha_elections_total"), 1.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(block(|| r2.terminate(Duration::from_secs(30))));
    for g in &mut gateways {
        assert!(g.wait_drained(Duration::from_secs(30)));
    }
    let (g1, g2) = (
        block(|| metrics(gw1)).unwrap(),
        block(|| metrics(gw2)).unwrap(),
    );
    for g in &mut gateways {
        assert!(block(|| g.proc.terminate(Duration::from_secs(30))));
    }

    let received = capture.snapshot();
    // Destinations are named by host:port when unnamed.
    let key = format!("{forwarded}{{destination=\"{}\"}}", capture.addr());
    let to_capture =
        |m: &std::collections::HashMap<String, f64>| m.get(&key).copied().unwrap_or(0.0);
    let (from1, from2) = (to_capture(&g1), to_capture(&g2));
    println!(
        "capture: {} samples; gateway 1 forwarded {from1}, gateway 2 {from2}; gateway 2 dropped \
         {} standby samples",
        received.len(),
        metric_sum(&g2, "uplink_gateway_ha_samples_dropped_total")
    );
    assert!(from1 > 0.0 && from2 > 0.0);
    assert_eq!(
        received.len() as f64,
        from1 + from2,
        "exactly what was forwarded"
    );
    assert_eq!(capture.duplicates(), 0);
    assert!(
        received
            .iter()
            .all(|r| model::get(&r.labels, "__replica__").is_none()
                && model::get(&r.labels, "cluster") == Some("c1")),
        "replica label removed, cluster kept"
    );
    let series_after: HashSet<Vec<model::Label>> =
        received.iter().map(|r| r.labels.clone()).collect();
    assert_eq!(series_after, series_before, "r2 continued r1's series");
    for m in [&g1, &g2] {
        assert_eq!(
            metric_sum(m, "uplink_gateway_remote_write_samples_dropped_total"),
            0.0,
            "no destination refused anything"
        );
    }

    // Prometheus holds the same series (no replica dimension), each with samples after the
    // failover too.
    let in_prometheus = prometheus_samples(prometheus.web, "{cluster=\"c1\"}[10m]")
        .await
        .unwrap();
    let prom_series: HashSet<Vec<model::Label>> =
        in_prometheus.iter().map(|r| r.labels.clone()).collect();
    assert_eq!(prom_series, series_after);
}
