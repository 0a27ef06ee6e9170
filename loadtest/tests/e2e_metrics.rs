//! Uplink's own metrics tell the truth: after a scripted run (a partition long enough for the
//! agent to declare its connection dead and reconnect, then a burst of 503s from the
//! destination), both binaries' `/metrics` counters agree with each other and with what the
//! receiver got, exactly:
//!
//! - agent: everything queued was acknowledged (`samples_queued_total ==
//!   samples_acked_total`), nothing dropped, the queue empty, the reconnect counted;
//! - gateway: `samples_received_total` equals the agent's acknowledged samples,
//!   `remote_write_samples_total` equals what the receiver recorded, each injected 503 is one
//!   5xx outcome and one retry;
//! - receiver: the probe's oracle finds every scrape whole, no duplicates, and the agent's own
//!   metrics (its self-scrape) arrived with the site's label.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use uplink_loadtest::harness::{Rig, RigOptions, metric_sum, metrics};
use uplink_loadtest::oracle;
use uplink_loadtest::probe::ProbeSpec;

use uplink_loadtest::harness::block;

use uplink_loadtest::harness::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_agree_with_the_oracle_after_a_partition_a_reconnect_and_5xx() {
    let spec = ProbeSpec {
        targets: 3,
        families: 6,
        churn_every: 0,
    };
    let opts = RigOptions {
        shipper_extra: "batch_delay: 50ms, keep_alive: 300ms, idle_timeout: 1500ms",
        self_scrape: true,
        ..RigOptions::default()
    };
    let mut rig = Rig::start_with("metered", spec, "250ms", &opts)
        .await
        .expect("rig starts");
    wait_for("data", Duration::from_secs(30), || !rig.capture.is_empty()).await;
    let attempts = rig.agent_metric("uplink_agent_gateway_connection_attempts_total");

    // A partition longer than the agent's idle timeout: the connection dies, the agent keeps
    // scraping into its queue, then reconnects.
    rig.link.faults.blackhole.store(true, Ordering::Relaxed);
    wait_for("the agent to notice", Duration::from_secs(20), || {
        rig.agent_metric("uplink_agent_gateway_connected") == 0.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    rig.link.faults.blackhole.store(false, Ordering::Relaxed);
    wait_for("the reconnect", Duration::from_secs(30), || {
        rig.agent_metric("uplink_agent_gateway_connected") == 1.0
    })
    .await;

    // A burst of 503s.
    rig.capture.set_fail_next(5, 503);
    wait_for("the burst to pass", Duration::from_secs(30), || {
        rig.capture.report().injected_failures == 5
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The agent's counters are read once its queue is empty, just before the orderly stop (its
    // last scrapes, shipped during the stop, are in the gateway's and the receiver's counts).
    wait_for(
        "the agent's queue to drain",
        Duration::from_secs(30),
        || rig.agent_metric("uplink_agent_queue_records") == 0.0,
    )
    .await;
    let agent_before = block(|| metrics(rig.agent.web)).unwrap();
    assert!(block(|| rig.agent.proc.terminate(Duration::from_secs(30))));
    assert!(rig.wait_gateway_drained(Duration::from_secs(30)).await);
    let gw = block(|| metrics(rig.gateway.web)).unwrap();
    let get = |m: &std::collections::HashMap<String, f64>, k: &str| metric_sum(m, k);

    let report = rig.capture.report();
    let received = rig.capture.snapshot();
    let check = oracle::check(&spec, &rig.probe.addrs, &rig.oracle_labels(), &received);
    assert!(check.is_clean(), "{:?}", check.errors);
    for t in 0..spec.targets {
        let missing = check.missing_scrapes(t, rig.probe.served(t));
        assert!(missing.is_empty(), "target {t}: {missing:?} missing");
    }
    assert_eq!(report.duplicates, 0);
    // The agent's own metrics travelled through the tunnel, with the site's label.
    let own = received.iter().any(|r| {
        uplink_shared::model::get(&r.labels, "__name__")
            == Some("uplink_agent_samples_queued_total")
            && uplink_shared::model::get(&r.labels, "job") == Some("uplink-agent")
            && uplink_shared::model::get(&r.labels, "site") == Some("metered")
    });
    assert!(own, "the agent's self-scrape arrived");

    // Agent.
    let queued = get(&agent_before, "uplink_agent_samples_queued_total");
    let acked = get(&agent_before, "uplink_agent_samples_acked_total");
    assert_eq!(queued, acked, "everything queued was acknowledged");
    assert_eq!(
        get(&agent_before, "uplink_agent_samples_dropped_total"),
        0.0
    );
    assert!(
        get(
            &agent_before,
            "uplink_agent_gateway_connection_attempts_total"
        ) > attempts,
        "the reconnect is counted"
    );
    assert!(
        get(
            &agent_before,
            "uplink_agent_gateway_connection_failures_total"
        ) >= 1.0
    );

    // Gateway against the receiver, exactly.
    let received_gw = get(&gw, "uplink_gateway_samples_received_total");
    let forwarded = get(&gw, "uplink_gateway_remote_write_samples_total");
    assert_eq!(
        forwarded, report.samples as f64,
        "forwarded = recorded by the receiver"
    );
    assert_eq!(received_gw, forwarded, "everything received was forwarded");
    assert!(
        received_gw >= acked,
        "the gateway received at least what the agent had acked before its shutdown"
    );
    assert_eq!(
        get(&gw, "uplink_gateway_remote_write_samples_dropped_total"),
        0.0
    );
    let fivexx: f64 = gw
        .iter()
        .filter(|(k, _)| {
            k.starts_with("uplink_gateway_remote_write_requests_total{")
                && k.contains("outcome=\"5xx\"")
        })
        .map(|(_, v)| *v)
        .sum();
    assert_eq!(fivexx, 5.0, "each 503 counted once");
    assert_eq!(get(&gw, "uplink_gateway_remote_write_retries_total"), 5.0);
    assert_eq!(get(&gw, "uplink_gateway_queue_entries"), 0.0);
    println!(
        "{} samples: agent queued {queued} and acked {acked} before its shutdown; gateway \
         received {received_gw}, forwarded {forwarded}; 5xx {fivexx}",
        report.samples
    );
}
