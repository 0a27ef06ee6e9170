//! End to end, real processes: kill -9 the agent while it cannot reach the gateway (a
//! partition, so its queue grows), restart it, and check with the probe's oracle that nothing
//! queued was lost.
//!
//! Oracle: every sample that was in the agent's RocksDB queue at the moment of the kill, and
//! every sample the receiver had before it, must be in the receiver at the end; every scrape
//! that arrived arrived whole with exact values; the only scrape a target may lose is the one
//! in progress at the kill (served, not yet appended).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use uplink_agent::queue::Queue;
use uplink_loadtest::harness::Rig;
use uplink_loadtest::oracle;
use uplink_loadtest::probe::ProbeSpec;
use uplink_shared::model::Label;

type Key = (Vec<Label>, i64);

use uplink_loadtest::harness::block;

use uplink_loadtest::harness::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_partition_loses_nothing_queued() {
    let spec = ProbeSpec {
        targets: 4,
        families: 9,
        churn_every: 0,
    };
    let mut rig = Rig::start("edge-1", spec, "500ms", "")
        .await
        .expect("rig starts");
    let capture = &rig.capture;

    // Healthy delivery first.
    wait_for(
        "first scrapes at the receiver",
        Duration::from_secs(30),
        || capture.len() > 4 * 3 * 20,
    )
    .await;

    // Partition: the agent cannot reach the gateway, so its queue grows.
    rig.link.faults.blackhole.store(true, Ordering::Relaxed);
    wait_for(
        "queue to grow during the partition",
        Duration::from_secs(30),
        || rig.agent_metric("uplink_agent_queue_records") >= 8.0,
    )
    .await;

    // Crash.
    block(|| rig.agent.proc.kill9());
    let before_kill: HashSet<Key> = capture
        .snapshot()
        .into_iter()
        .map(|r| (r.labels, r.timestamp))
        .collect();
    let served_at_kill: Vec<u64> = (0..spec.targets).map(|t| rig.probe.served(t)).collect();

    // What the dead agent had queued, read straight from its RocksDB.
    let queued: HashSet<Key> = {
        let q = Queue::open(&rig.agent.queue_dir, false).expect("queue reopens after kill -9");
        let records = q.read(0, usize::MAX, usize::MAX).await.unwrap();
        assert!(records.len() >= 8, "queue held {} records", records.len());
        let series = uplink_agent::stored_series(&q).await.unwrap();
        let mut set = HashSet::new();
        for ts in series {
            for s in ts.samples {
                set.insert((ts.labels.clone(), s.timestamp));
            }
        }
        set
    };
    assert!(!queued.is_empty());

    // Partition over; restart the agent on the same queue.
    rig.link.faults.blackhole.store(false, Ordering::Relaxed);
    let restarted = Instant::now();
    rig.restart_agent().unwrap();
    let capture = &rig.capture;
    wait_for(
        "shipping to resume after restart",
        Duration::from_secs(30),
        || rig.agent_metric("uplink_agent_samples_acked_total") > 0.0,
    )
    .await;
    println!("shipping resumed {:?} after restart", restarted.elapsed());
    wait_for("queue to drain", Duration::from_secs(60), || {
        rig.agent_metric("uplink_agent_queue_records") == 0.0
    })
    .await;
    wait_for(
        "every target scraped again",
        Duration::from_secs(30),
        || (0..spec.targets).all(|t| rig.probe.served(t) > served_at_kill[t] + 1),
    )
    .await;
    assert!(
        block(|| rig.agent.proc.terminate(Duration::from_secs(20))),
        "orderly exit"
    );
    assert!(
        rig.wait_gateway_drained(Duration::from_secs(30)).await,
        "gateway backlog"
    );

    let received = capture.snapshot();
    let have: HashSet<Key> = received
        .iter()
        .map(|r| (r.labels.clone(), r.timestamp))
        .collect();
    let lost_queued = queued.difference(&have).count();
    let lost_acked = before_kill.difference(&have).count();
    assert_eq!(lost_queued, 0, "samples queued at the kill are missing");
    assert_eq!(lost_acked, 0);
    // Batches the dead agent had in flight were stored by the gateway from its old connection;
    // the restarted agent resends them, and the gateway recognises them by queue sequence number.
    assert_eq!(capture.duplicates(), 0, "exactly one forward per sample");

    let report = oracle::check(&spec, &rig.probe.addrs, &rig.oracle_labels(), &received);
    assert_eq!(report.wrong, 0, "{:?}", report.errors);
    assert_eq!(report.missing_in_scrape, 0, "{:?}", report.errors);
    for (t, served) in served_at_kill.iter().enumerate() {
        let last = report.scrapes[t].iter().next_back().copied().unwrap_or(0);
        assert!(last >= *served, "target {t} did not resume scraping");
        let missing = report.missing_scrapes(t, last + 1);
        assert!(
            missing.len() <= 1 && missing.iter().all(|n| n + 2 >= *served),
            "target {t}: scrapes {missing:?} missing (kill at {served})"
        );
    }
    println!(
        "received {} samples, {} queued at kill, {} retransmitted duplicates dropped by the receiver",
        received.len(),
        queued.len(),
        capture.duplicates()
    );
}
