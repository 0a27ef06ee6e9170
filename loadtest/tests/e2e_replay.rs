//! Live data first after a downstream outage (`remote_write[].replay.live_first`), into a real
//! Prometheus that accepts out-of-order samples (`out_of_order_time_window`) and the capture
//! receiver:
//!
//! 1. An agent ships a probe's scrapes through the gateway to both destinations.
//! 2. Both destinations answer 503 for 10 s: the gateway's store absorbs the backlog.
//! 3. They recover, slowly (100 ms per request, one stored entry per request, one request
//!    at a time), so the backlog takes seconds to drain. The gateway splits a live lane off: scrapes
//!    taken after the recovery arrive while the backlog is still draining behind them.
//!
//! Exact oracle at the capture (every scrape, once, right values), and the same samples in
//! Prometheus, which refused none of the backlog (its out-of-order window took it) and counted
//! out-of-order appends: the backlog really arrived after newer data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use uplink_loadtest::capture::Capture;
use uplink_loadtest::faults::FaultProxy;
use uplink_loadtest::harness::{
    Bins, block, free_addr, metric_at, now_ms, prometheus_installed, prometheus_samples,
    start_gateway_yaml, start_probed_agent, start_prometheus_config, wait_for, write_certs,
};
use uplink_loadtest::oracle;
use uplink_loadtest::probe::ProbeSpec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_live_data_goes_ahead_of_the_backlog() {
    assert!(
        prometheus_installed(),
        "prometheus must be installed (deploy/dev/setup.sh)"
    );
    let bins = Bins::locate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &["site1".to_owned()]).unwrap();
    let prometheus = block(|| {
        start_prometheus_config(
            dir.path(),
            "global:\n  scrape_interval: 15s\nstorage:\n  tsdb:\n    out_of_order_time_window: 1h\n",
            &[],
        )
    })
    .unwrap();
    let relay = FaultProxy::start(free_addr().unwrap(), &prometheus.remote_write_url())
        .await
        .unwrap();
    let capture = Capture::start(free_addr().unwrap()).await.unwrap();
    let rw: String = [capture.url(), relay.url()]
        .iter()
        .map(|u| {
            format!(
                "  - url: {u}\n    remote_timeout: 5s\n    queue_config: {{min_backoff: 50ms, \
                 max_backoff: 500ms, max_samples_per_send: 20, min_shards: 1, max_shards: 1}}\n    \
                 replay: {{live_first: true, split_after: 2s}}\n"
            )
        })
        .collect();
    let gateway = block(|| start_gateway_yaml(&bins, dir.path(), &rw, "0s", "")).unwrap();
    let spec = ProbeSpec {
        targets: 2,
        families: 10,
        churn_every: 0,
    };
    // One scrape per batch, so one per stored entry: the backlog is many requests.
    let (probe, mut agent) = start_probed_agent(
        &bins,
        dir.path(),
        "site1",
        gateway.quic,
        (spec, "500ms"),
        "max_batch_records: 1",
    )
    .await
    .unwrap();
    let forwarded = "uplink_gateway_remote_write_samples_total";
    wait_for("data flowing", Duration::from_secs(30), || {
        metric_at(gateway.web, forwarded) > 0.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Outage.
    capture.set_fail_next(u32::MAX, 503);
    relay.rules(|r| r.fail_next(u32::MAX, 503));
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Recovery, slow.
    let slow = Duration::from_millis(100);
    capture.rules(|r| {
        r.fail_next(0, 503);
        r.delay = slow;
    });
    relay.rules(|r| {
        r.fail_next(0, 503);
        r.delay = slow;
    });
    let healed_ms = now_ms();
    wait_for("the live lane", Duration::from_secs(30), || {
        metric_at(gateway.web, "uplink_gateway_remote_write_live_first") > 0.0
    })
    .await;
    // The lanes merge once the backlog reached the live lane's start.
    wait_for("the backlog drained", Duration::from_secs(120), || {
        metric_at(gateway.web, "uplink_gateway_remote_write_live_first") == 0.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(block(|| agent.proc.terminate(Duration::from_secs(30))));
    assert!(block(|| gateway.wait_drained(Duration::from_secs(60))));

    // Exact at the capture.
    let received = capture.snapshot();
    let (report, missing) = oracle::check_served(&probe, &oracle::probe_labels("site1"), &received);
    assert_eq!(report.wrong, 0);
    assert_eq!(report.missing_in_scrape, 0);
    assert!(missing.is_empty(), "missing scrapes {missing:?}");
    assert_eq!(capture.duplicates(), 0);

    // Live first: a scrape taken after the recovery arrived before the end of the backlog
    // (scrapes taken during the outage).
    let arrival = |pick: &dyn Fn(i64) -> bool| -> Vec<usize> {
        received
            .iter()
            .enumerate()
            .filter(|(_, r)| pick(r.timestamp))
            .map(|(i, _)| i)
            .collect()
    };
    let live = arrival(&|ts| ts > healed_ms + 200);
    let backlog = arrival(&|ts| ts < healed_ms - 1000);
    let (first_live, last_backlog) = (live[0], *backlog.last().unwrap());
    println!(
        "capture: {} samples; first live sample arrived {first_live}th, last backlog sample \
         {last_backlog}th",
        received.len()
    );
    assert!(
        first_live < last_backlog,
        "live data went ahead of the backlog"
    );

    // Prometheus: the same samples, none refused, some appended out of order.
    let dropped = metric_at(
        gateway.web,
        "uplink_gateway_remote_write_samples_dropped_total",
    );
    assert_eq!(dropped, 0.0, "the out-of-order window took the backlog");
    let in_prometheus = prometheus_samples(prometheus.web, "{job=\"probe\"}[10m]")
        .await
        .unwrap();
    let key =
        |r: &uplink_loadtest::capture::Received| (r.labels.clone(), r.timestamp, r.value.to_bits());
    let a: HashSet<_> = in_prometheus.iter().map(key).collect();
    let b: HashSet<_> = received.iter().map(key).collect();
    assert_eq!(a.len(), b.len());
    assert!(a == b, "Prometheus holds exactly the capture's samples");
    let ooo = metric_at(
        prometheus.web,
        "prometheus_tsdb_head_out_of_order_samples_appended_total",
    );
    println!("Prometheus appended {ooo} samples out of order");
    assert!(ooo > 0.0, "the backlog reached Prometheus after newer data");
}
