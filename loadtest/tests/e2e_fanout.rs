//! End to end, real processes: a gateway with two destinations, one of which goes down (answers
//! 503) for a while. The other keeps receiving everything promptly, the agent's acks never
//! wait for the one that is down (its backlog grows at the gateway, not at the agent), and once
//! it recovers it receives its whole backlog exactly once: both end with the same samples,
//! which the probe's oracle finds complete and exact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use uplink_loadtest::capture::{Capture, Received};
use uplink_loadtest::harness::{Rig, RigOptions, metrics};
use uplink_loadtest::oracle;
use uplink_loadtest::probe::ProbeSpec;
use uplink_shared::model::Label;

use uplink_loadtest::harness::{block, now_ms};

/// How far behind now the newest sample a receiver holds is, in ms.
fn lag_ms(c: &Capture) -> i64 {
    let newest = c.snapshot().iter().map(|r| r.timestamp).max().unwrap_or(0);
    now_ms() - newest
}

/// A gauge of the gateway for one destination.
fn gauge(rig: &Rig, name: &str, dest: &Capture) -> f64 {
    let key = format!("{name}{{destination=\"{}\"}}", dest.addr());
    block(|| metrics(rig.gateway.web))
        .ok()
        .and_then(|m| m.get(&key).copied())
        .unwrap_or(-1.0)
}

fn keys(v: &[Received]) -> HashSet<(Vec<Label>, i64)> {
    v.iter().map(|r| (r.labels.clone(), r.timestamp)).collect()
}

use uplink_loadtest::harness::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_destination_delays_nobody_and_gets_its_backlog_once() {
    let _serial = uplink_loadtest::harness::serial().await;
    let spec = ProbeSpec {
        targets: 4,
        families: 9,
        churn_every: 0,
    };
    let opts = RigOptions {
        destinations: 2,
        ..RigOptions::default()
    };
    let mut rig = Rig::start_with("fan", spec, "250ms", &opts)
        .await
        .expect("rig starts");
    wait_for(
        "both destinations receiving",
        Duration::from_secs(30),
        || !rig.capture.is_empty() && !rig.others[0].is_empty(),
    )
    .await;

    // Destination "down" fails every request; "up" stays healthy.
    let (down, up) = (&rig.capture, &rig.others[0]);
    down.set_fail_next(u32::MAX, 503);
    let outage = Instant::now();
    let mut worst_lag = 0i64;
    let mut max_agent_queue = 0f64;
    while outage.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if outage.elapsed() > Duration::from_secs(2) {
            worst_lag = worst_lag.max(lag_ms(up));
            max_agent_queue = max_agent_queue.max(rig.agent_metric("uplink_agent_queue_records"));
        }
    }
    let backlog = gauge(&rig, "uplink_gateway_queue_entries", down);
    let oldest = gauge(&rig, "uplink_gateway_queue_oldest_entry_age_seconds", down);
    let up_backlog = gauge(&rig, "uplink_gateway_queue_entries", up);
    println!(
        "during the outage: healthy destination at most {worst_lag} ms behind; agent queue at \
         most {max_agent_queue} records; gateway backlog for the down destination {backlog} \
         entries (oldest {oldest:.1} s), for the healthy one {up_backlog}"
    );
    // The healthy destination stays fresh: scrape interval, the agent's batch delay and one
    // round trip, with slack for a loaded machine.
    assert!(
        worst_lag < 5_000,
        "healthy destination lagged {worst_lag} ms"
    );
    // Acks do not wait for the down destination: the agent's queue does not grow with it.
    assert!(
        max_agent_queue < 60.0,
        "agent queue grew to {max_agent_queue}"
    );
    assert!(backlog >= 5.0, "the backlog is at the gateway: {backlog}");
    assert!(
        oldest >= 5.0,
        "oldest entry waited since the outage: {oldest}"
    );
    assert!(
        up_backlog <= 3.0,
        "healthy destination backlog {up_backlog}"
    );

    // Recovery: the backlog drains; then an orderly stop.
    down.set_fail_next(0, 503);
    let recovered = Instant::now();
    wait_for("the backlog to drain", Duration::from_secs(60), || {
        gauge(&rig, "uplink_gateway_queue_entries", &rig.capture) == 0.0
    })
    .await;
    println!("backlog drained {:?} after recovery", recovered.elapsed());
    assert!(
        block(|| rig.agent.proc.terminate(Duration::from_secs(30))),
        "agent exits in order"
    );
    assert!(rig.wait_gateway_drained(Duration::from_secs(30)).await);

    let (down, up) = (rig.capture.snapshot(), rig.others[0].snapshot());
    assert_eq!(
        rig.capture.duplicates(),
        0,
        "backlog delivered exactly once"
    );
    assert_eq!(rig.others[0].duplicates(), 0);
    let (kd, ku) = (keys(&down), keys(&up));
    assert_eq!(
        kd.len(),
        ku.len(),
        "both destinations hold the same samples"
    );
    assert!(
        kd == ku,
        "{} samples differ",
        kd.symmetric_difference(&ku).count()
    );
    for received in [&down, &up] {
        let report = oracle::check(&spec, &rig.probe.addrs, &rig.oracle_labels(), received);
        assert_eq!(report.wrong, 0, "{:?}", report.errors);
        assert_eq!(report.missing_in_scrape, 0, "{:?}", report.errors);
        assert_eq!(report.conflicts, 0, "{:?}", report.errors);
        for t in 0..spec.targets {
            let missing = report.missing_scrapes(t, rig.probe.served(t));
            assert!(missing.is_empty(), "target {t}: {missing:?} missing");
        }
    }
    println!("{} samples at each destination", down.len());
}

/// `storage.ack: delivered`: while the only destination is down, the gateway acknowledges
/// nothing new, so the backlog waits on the agent's disk, not the gateway's; once it recovers,
/// everything arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_after_delivery_keeps_the_backlog_at_the_agent() {
    let _serial = uplink_loadtest::harness::serial().await;
    let spec = ProbeSpec {
        targets: 2,
        families: 6,
        churn_every: 0,
    };
    let opts = RigOptions {
        gateway_storage_extra: "ack: delivered",
        shipper_extra: "batch_delay: 50ms, max_in_flight: 2",
        ..RigOptions::default()
    };
    let mut rig = Rig::start_with("acked", spec, "250ms", &opts)
        .await
        .expect("rig starts");
    wait_for("data", Duration::from_secs(30), || !rig.capture.is_empty()).await;
    rig.capture.set_fail_next(u32::MAX, 503);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let at_gateway = gauge(&rig, "uplink_gateway_queue_entries", &rig.capture);
    let at_agent = rig.agent_metric("uplink_agent_queue_records");
    println!(
        "during the outage: {at_gateway} entries at the gateway, {at_agent} records at the agent"
    );
    assert!(
        at_gateway <= 3.0,
        "the gateway holds at most the batches in flight: {at_gateway}"
    );
    assert!(at_agent >= 10.0, "the agent keeps the backlog: {at_agent}");

    rig.capture.set_fail_next(0, 503);
    wait_for(
        "the agent's backlog to drain",
        Duration::from_secs(60),
        || rig.agent_metric("uplink_agent_queue_records") == 0.0,
    )
    .await;
    assert!(block(|| rig.agent.proc.terminate(Duration::from_secs(30))));
    assert!(rig.wait_gateway_drained(Duration::from_secs(30)).await);
    let received = rig.capture.snapshot();
    let report = oracle::check(&spec, &rig.probe.addrs, &rig.oracle_labels(), &received);
    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(rig.capture.duplicates(), 0);
    for t in 0..spec.targets {
        let missing = report.missing_scrapes(t, rig.probe.served(t));
        assert!(missing.is_empty(), "target {t}: {missing:?} missing");
    }
}
