//! The retention budget, end to end: a partition keeps the agent from shipping while its queue
//! is capped at a few kilobytes. The oldest data is dropped, the newest kept, and the agent's
//! dropped-samples counter equals exactly what the oracle finds missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use uplink_loadtest::harness::Rig;
use uplink_loadtest::oracle;
use uplink_loadtest::probe::{ProbeSpec, spec_series_count};

use uplink_loadtest::harness::block;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_drops_oldest_counts_exactly_keeps_newest() {
    let spec = ProbeSpec {
        targets: 2,
        families: 6,
        churn_every: 0,
    };
    // A record here is about 200 bytes: the budget holds roughly a dozen scrapes.
    let mut rig = Rig::start("capped", spec, "500ms", "max_bytes: 2500")
        .await
        .expect("rig starts");
    let (capture, link, probe) = (&rig.capture, &rig.link, &rig.probe);
    let deadline = Instant::now() + Duration::from_secs(30);
    while capture.len() < 100 {
        assert!(
            Instant::now() < deadline,
            "no delivery before the partition"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Partition long enough to overflow the budget several times over.
    link.faults.blackhole.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(15)).await;
    let served_before_heal: Vec<u64> = (0..spec.targets).map(|t| probe.served(t)).collect();
    link.faults.blackhole.store(false, Ordering::Relaxed);

    // Drain, then stop in order.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let dropped = rig.agent_metric("uplink_agent_retention_dropped_samples_total");
        let queued = rig.agent_metric("uplink_agent_queue_records");
        if dropped > 0.0 && queued == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queue did not drain (dropped {dropped}, queued {queued})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dropped = rig.agent_metric("uplink_agent_retention_dropped_samples_total") as u64;
    assert!(block(|| rig.agent.proc.terminate(Duration::from_secs(20))));
    assert!(rig.wait_gateway_drained(Duration::from_secs(30)).await);
    let (capture, probe) = (&rig.capture, &rig.probe);

    let received = capture.snapshot();
    let report = oracle::check(&spec, &probe.addrs, &rig.oracle_labels(), &received);
    assert_eq!(report.wrong, 0, "{:?}", report.errors);
    assert_eq!(report.missing_in_scrape, 0, "{:?}", report.errors);
    // Each scrape record holds the probe's series plus up, scrape_duration_seconds,
    // scrape_samples_scraped, scrape_samples_post_metric_relabeling and scrape_series_added.
    let per_scrape = spec_series_count(&spec) as u64 + 5;
    let mut missing_total = 0u64;
    for (t, before_heal) in served_before_heal.iter().enumerate() {
        let served = probe.served(t);
        let missing = report.missing_scrapes(t, served);
        missing_total += missing.len() as u64;
        // The newest data is kept: the last scrapes before the heal arrived.
        let last_before_heal = before_heal.saturating_sub(1);
        assert!(
            report.scrapes[t].contains(&last_before_heal),
            "target {t}: newest scrape {last_before_heal} was dropped; missing {missing:?}"
        );
        // What is missing is one contiguous run of the oldest undelivered scrapes.
        if let (Some(first), Some(last)) = (missing.first(), missing.last()) {
            assert_eq!(
                (last - first + 1) as usize,
                missing.len(),
                "target {t}: {missing:?}"
            );
        }
    }
    assert!(missing_total > 0, "the budget never overflowed");
    assert_eq!(
        dropped,
        missing_total * per_scrape,
        "dropped-samples counter must equal the oracle's count exactly"
    );
}
