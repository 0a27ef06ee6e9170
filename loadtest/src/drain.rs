//! `uplink-loadtest drain`: how fast a site's backlog drains after an outage, as a multiple of
//! its live ingest rate, and whether the backlog arrives whole.
//!
//! One site (probe exporter, agent, UDP chaos link, gateway, capture receiver) runs until data
//! flows; the link is then cut for `--outage` while the agent keeps scraping into its queue.
//! When the link returns, the agent ships backlog and live data together; the run measures the
//! time until the agent has acknowledged everything it had queued at the moment the link
//! returned (the gateway has stored it) and until the destination has received as many
//! samples since the heal (backlog and live data share the link, so this is an upper bound). Drain rate = backlog samples / that time; ingest rate = samples queued per
//! second during the outage. Finally the agent stops in order and every received sample is checked
//! against the probe's oracle.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::harness::Rig;
use crate::oracle;
use crate::probe::ProbeSpec;

/// Settings of a drain run.
#[derive(clap::Args, Debug, Clone)]
pub struct DrainArgs {
    /// Probe targets.
    #[arg(long, default_value_t = 20)]
    pub targets: usize,
    /// Metric families per target (about 2.7 series each).
    #[arg(long, default_value_t = 100)]
    pub families: usize,
    /// Scrape interval.
    #[arg(long, default_value = "1s")]
    pub interval: String,
    /// How long the link is cut.
    #[arg(long, default_value = "60s")]
    pub outage: uplink_shared::duration::PromDuration,
}

/// What a drain run measured.
#[derive(Debug, serde::Serialize)]
pub struct DrainReport {
    pub series: usize,
    pub outage_seconds: f64,
    pub backlog_samples: u64,
    pub backlog_records: u64,
    pub ingest_samples_per_second: f64,
    pub drain_seconds: f64,
    pub drain_samples_per_second: f64,
    /// Drain rate (agent to gateway store) as a multiple of the ingest rate.
    pub drain_to_ingest: f64,
    /// Until the destination received the backlog too.
    pub delivered_seconds: f64,
    pub delivered_to_ingest: f64,
    pub missing_scrapes: u64,
    pub wrong: u64,
}

pub async fn run(args: DrainArgs) -> anyhow::Result<DrainReport> {
    let spec = ProbeSpec {
        targets: args.targets,
        families: args.families,
        churn_every: 0,
    };
    let mut rig = Rig::start("drain", spec, &args.interval, "").await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while rig.agent_metric("uplink_agent_samples_acked_total") <= 0.0 {
        anyhow::ensure!(Instant::now() < deadline, "no delivery before the outage");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let queued_before = rig.agent_metric("uplink_agent_samples_queued_total");
    rig.link.faults.blackhole.store(true, Ordering::Relaxed);
    let cut = Instant::now();
    tokio::time::sleep(args.outage.0).await;
    let queued_at_heal = rig.agent_metric("uplink_agent_samples_queued_total");
    let acked_at_heal = rig.agent_metric("uplink_agent_samples_acked_total");
    let backlog_records = rig.agent_metric("uplink_agent_queue_records") as u64;
    let outage_seconds = cut.elapsed().as_secs_f64();
    let received_at_heal = rig.capture.len() as f64;
    rig.link.faults.blackhole.store(false, Ordering::Relaxed);
    let healed = Instant::now();
    let backlog = queued_at_heal - acked_at_heal;
    // Drained: everything queued up to the heal has been acknowledged.
    let deadline = healed + Duration::from_secs(600);
    loop {
        let acked = rig.agent_metric("uplink_agent_samples_acked_total");
        if acked >= queued_at_heal {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "backlog did not drain in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_seconds = healed.elapsed().as_secs_f64();
    // Delivered: the destination has received at least the backlog since the heal.
    while (rig.capture.len() as f64) < received_at_heal + backlog {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the destination did not receive the backlog"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered_seconds = healed.elapsed().as_secs_f64();
    let ingest = (queued_at_heal - queued_before) / outage_seconds;
    let drain_rate = backlog / drain_seconds;
    tokio::task::block_in_place(|| rig.agent.proc.terminate(Duration::from_secs(30)));
    tokio::task::block_in_place(|| rig.gateway.wait_drained(Duration::from_secs(120)));
    let received = rig.capture.snapshot();
    let (report, missing) = oracle::check_served(&rig.probe, &rig.oracle_labels(), &received);
    let missing = missing.len() as u64;
    Ok(DrainReport {
        series: crate::probe::spec_series_count(&spec) * spec.targets,
        outage_seconds,
        backlog_samples: backlog as u64,
        backlog_records,
        ingest_samples_per_second: ingest,
        drain_seconds,
        drain_samples_per_second: drain_rate,
        drain_to_ingest: drain_rate / ingest,
        delivered_seconds,
        delivered_to_ingest: backlog / delivered_seconds / ingest,
        missing_scrapes: missing,
        wrong: report.wrong,
    })
}
