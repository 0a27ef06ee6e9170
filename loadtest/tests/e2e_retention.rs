//! The retention budget, end to end: a partition keeps the agent from shipping while its queue
//! is capped at a few kilobytes. The oldest data is dropped, the newest kept, and the agent's
//! dropped-samples counter equals exactly what the oracle finds missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use uplink_loadtest::capture::Capture;
use uplink_loadtest::harness::{self, AgentSpec, Bins};
use uplink_loadtest::oracle;
use uplink_loadtest::probe::{Probe, ProbeSpec, spec_series_count};
use uplink_loadtest::proxy::UdpProxy;
use uplink_shared::model::Label;

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn metric(a: &harness::Agent, name: &str) -> f64 {
    harness::metrics(a.web).map_or(-1.0, |m| harness::metric_sum(&m, name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_drops_oldest_counts_exactly_keeps_newest() {
    let bins = Bins::locate().expect("binaries built by cargo test --workspace");
    let dir = tempfile::tempdir().unwrap();
    let site = "capped".to_string();
    harness::write_certs(dir.path(), std::slice::from_ref(&site)).unwrap();
    let spec = ProbeSpec {
        targets: 2,
        families: 6,
        churn_every: 0,
    };
    let probe = Probe::start(spec, IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
        .await
        .unwrap();
    let capture = Capture::start(harness::free_addr().unwrap()).await.unwrap();
    let gateway = block(|| harness::start_gateway(&bins, dir.path(), &[capture.url()])).unwrap();
    let link = UdpProxy::start(harness::free_addr().unwrap(), gateway.quic)
        .await
        .unwrap();
    let targets = probe.instances();
    let agent_spec = AgentSpec {
        site: &site,
        gateway: link.addr,
        targets: &targets,
        interval: "500ms",
        job: "probe",
    };
    // A record here is about 200 bytes: the budget holds roughly a dozen scrapes.
    let mut agent =
        block(|| harness::start_agent_with(&bins, dir.path(), &agent_spec, "max_bytes: 2500"))
            .unwrap();
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
        let dropped = block(|| metric(&agent, "uplink_agent_retention_dropped_samples_total"));
        let queued = block(|| metric(&agent, "uplink_agent_queue_records"));
        if dropped > 0.0 && queued == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queue did not drain (dropped {dropped}, queued {queued})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dropped = block(|| metric(&agent, "uplink_agent_retention_dropped_samples_total")) as u64;
    assert!(block(|| agent.proc.terminate(Duration::from_secs(20))));

    let received = capture.snapshot();
    let extra = [Label::new("job", "probe"), Label::new("site", site.clone())];
    let report = oracle::check(&spec, &probe.addrs, &extra, &received);
    assert_eq!(report.wrong, 0, "{:?}", report.errors);
    assert_eq!(report.missing_in_scrape, 0, "{:?}", report.errors);
    // Each scrape record holds the probe's series plus up, scrape_duration_seconds,
    // scrape_samples_scraped and scrape_samples_post_metric_relabeling.
    let per_scrape = spec_series_count(&spec) as u64 + 4;
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
