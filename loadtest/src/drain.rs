//! `uplink-loadtest drain`: how fast a site's backlog drains after an outage, as a multiple of
//! its live ingest rate, how soon data scraped after the outage is seen, and whether the
//! backlog arrives whole.
//!
//! One site (probe exporter, agent, UDP chaos link, gateway, capture receiver) runs until data
//! flows; then the outage, for `--outage`, at `--at`:
//! - `link`: the link is cut; the agent keeps scraping into its queue. When the link returns it
//!   ships backlog and live data together, in order.
//! - `destination`: the capture receiver answers 503; the gateway's store absorbs the backlog.
//!   With `--live-first`, the destination has `replay.live_first` (split after 5 s).
//!
//! Measured from the heal: until the agent has acknowledged everything it had queued at the
//! heal (`link` only: the gateway stored it); until the destination has received every sample
//! scraped before the heal (`delivered`); and until it received the first sample scraped after
//! the heal (`first_live`: how stale the global view stays). Drain rate = backlog samples / that
//! time; ingest rate = samples queued per second during the outage. Finally the agent stops in
//! order and every received sample is checked against the probe's oracle.

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
    /// How long the outage lasts.
    #[arg(long, default_value = "60s")]
    pub outage: uplink_shared::duration::PromDuration,
    /// Where the outage is: `link` (agent to gateway) or `destination` (gateway to receiver).
    #[arg(long, default_value = "link")]
    pub at: String,
    /// The destination takes live data first (`replay.live_first`).
    #[arg(long)]
    pub live_first: bool,
}

/// What a drain run measured.
#[derive(Debug, serde::Serialize)]
pub struct DrainReport {
    pub at: String,
    pub live_first: bool,
    pub series: usize,
    pub outage_seconds: f64,
    pub backlog_samples: u64,
    pub backlog_records: u64,
    pub ingest_samples_per_second: f64,
    pub drain_seconds: f64,
    pub drain_samples_per_second: f64,
    /// Drain rate (agent to gateway store) as a multiple of the ingest rate.
    pub drain_to_ingest: f64,
    /// Until the destination received every sample scraped before the heal.
    pub delivered_seconds: f64,
    pub delivered_to_ingest: f64,
    /// Until the destination received the first sample scraped after the heal.
    pub first_live_seconds: f64,
    pub missing_scrapes: u64,
    /// Scrapes the agent counted as failed (e.g. timed out on a busy machine): served by the
    /// probe, never stored, so missing without any delivery loss.
    pub scrape_failures: u64,
    pub wrong: u64,
}

pub async fn run(args: DrainArgs) -> anyhow::Result<DrainReport> {
    let spec = ProbeSpec {
        targets: args.targets,
        families: args.families,
        churn_every: 0,
    };
    let at_destination = match args.at.as_str() {
        "link" => false,
        "destination" => true,
        other => anyhow::bail!("--at must be link or destination, not {other:?}"),
    };
    let rw_extra = if args.live_first {
        "    replay: {live_first: true, split_after: 5s}\n"
    } else {
        ""
    };
    let opts = crate::harness::RigOptions {
        rw_extra,
        ..Default::default()
    };
    let mut rig = Rig::start_with("drain", spec, &args.interval, &opts).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while rig.agent_metric("uplink_agent_samples_acked_total") <= 0.0 {
        anyhow::ensure!(Instant::now() < deadline, "no delivery before the outage");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let queued_before = rig.agent_metric("uplink_agent_samples_queued_total");
    let outage = |on: bool| match at_destination {
        true => rig
            .capture
            .set_fail_next(if on { u32::MAX } else { 0 }, 503),
        false => rig.link.faults.blackhole.store(on, Ordering::Relaxed),
    };
    outage(true);
    let cut = Instant::now();
    tokio::time::sleep(args.outage.0).await;
    let queued_at_heal = rig.agent_metric("uplink_agent_samples_queued_total");
    let acked_at_heal = rig.agent_metric("uplink_agent_samples_acked_total");
    let backlog_records = rig.agent_metric("uplink_agent_queue_records") as u64;
    let outage_seconds = cut.elapsed().as_secs_f64();
    let received_at_heal = rig.capture.len() as f64;
    let heal_ms = crate::harness::now_ms();
    rig.capture.mark(heal_ms);
    outage(false);
    let healed = Instant::now();
    let backlog = match at_destination {
        true => queued_at_heal - received_at_heal,
        false => queued_at_heal - acked_at_heal,
    };
    // Until: the agent acknowledged everything queued up to the heal (link), the destination
    // received the first sample scraped since, and every sample scraped before.
    let deadline = healed + Duration::from_secs(600);
    let (mut drain, mut first_live) = (None, None);
    loop {
        let now = healed.elapsed().as_secs_f64();
        if drain.is_none()
            && !at_destination
            && rig.agent_metric("uplink_agent_samples_acked_total") >= queued_at_heal
        {
            drain = Some(now);
        }
        if first_live.is_none() && rig.capture.newest_timestamp() >= heal_ms {
            first_live = Some(now);
        }
        if rig.capture.before_mark() as f64 >= queued_at_heal {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the destination did not receive the backlog in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered_seconds = healed.elapsed().as_secs_f64();
    while first_live.is_none() {
        anyhow::ensure!(Instant::now() < deadline, "no live data after the heal");
        if rig.capture.newest_timestamp() >= heal_ms {
            first_live = Some(healed.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // At the destination there is no agent-side drain: the figure is the delivery.
    let drain_seconds = match at_destination {
        true => delivered_seconds,
        false => drain.unwrap_or(delivered_seconds),
    };
    let ingest = (queued_at_heal - queued_before) / outage_seconds;
    let drain_rate = backlog / drain_seconds;
    let scrape_failures = rig
        .agent_metric("uplink_agent_scrape_failures_total")
        .max(0.0) as u64;
    tokio::task::block_in_place(|| rig.agent.proc.terminate(Duration::from_secs(30)));
    tokio::task::block_in_place(|| rig.gateway.wait_drained(Duration::from_secs(120)));
    let received = rig.capture.snapshot();
    let (report, missing) = oracle::check_served(&rig.probe, &rig.oracle_labels(), &received);
    let missing = missing.len() as u64;
    Ok(DrainReport {
        at: args.at.clone(),
        live_first: args.live_first,
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
        first_live_seconds: first_live.unwrap_or(f64::NAN),
        missing_scrapes: missing,
        scrape_failures,
        wrong: report.wrong,
    })
}
