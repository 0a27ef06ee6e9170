//! `uplink-loadtest isolation`: one tenant at ten times its rate limit must not slow another.
//!
//! One gateway, two tenants from SPIFFE certificates, each routed to a destination of its own
//! (counting capture receivers that record delivery latency, now minus sample timestamp):
//! - `quiet` (tenant `b`, no limit) scrapes its probe for the whole run;
//! - `noisy` (tenant `a`, `max_samples_per_second` set to a tenth of what it scrapes) joins for
//!   the second phase.
//!
//! Reported: the quiet tenant's delivery latency (p50, p99) alone and while the noisy one is
//! throttled, their ratio, whether everything stored for the quiet tenant was delivered, and the
//! noisy tenant's delivered rate against its limit and the batches the gateway throttled (its
//! backlog waits on its own disk). Figures, not assertions: run it where the peers run.

use std::time::{Duration, Instant};

use crate::capture::Capture;
use crate::harness::{
    AgentSpec, Bins, block, free_addr, metric_sum, metrics, start_agent_with, start_gateway_yaml,
    write_certs,
};
use crate::probe::{Probe, ProbeSpec};

/// Settings of an isolation run.
#[derive(clap::Args, Debug, Clone)]
pub struct IsolationArgs {
    /// Probe targets of the quiet tenant (the noisy one scrapes ten times as many series).
    #[arg(long, default_value_t = 4)]
    pub targets: usize,
    /// Metric families per target (about 2.7 series each).
    #[arg(long, default_value_t = 50)]
    pub families: usize,
    /// Scrape interval of both agents.
    #[arg(long, default_value = "1s")]
    pub interval: String,
    /// Length of each phase (quiet alone, then both).
    #[arg(long, default_value = "30s")]
    pub phase: uplink_shared::duration::PromDuration,
}

/// What an isolation run measured.
#[derive(Debug, serde::Serialize)]
pub struct IsolationReport {
    pub quiet_series: usize,
    pub noisy_series: usize,
    pub noisy_limit_samples_per_second: f64,
    pub quiet_alone_p50_ms: u32,
    pub quiet_alone_p99_ms: u32,
    pub quiet_contended_p50_ms: u32,
    pub quiet_contended_p99_ms: u32,
    /// Contended p99 over the p99 alone.
    pub quiet_p99_ratio: f64,
    /// What the gateway stored for the quiet tenant (everything its agent queued: it stopped
    /// in order) and what its destination received.
    pub quiet_stored_samples: u64,
    pub quiet_delivered_samples: u64,
    pub noisy_delivered_samples_per_second: f64,
    pub noisy_throttled_batches: u64,
    pub noisy_backlog_records: u64,
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn quantiles(mut v: Vec<u32>) -> (u32, u32) {
    v.sort_unstable();
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

pub async fn run(args: IsolationArgs) -> anyhow::Result<IsolationReport> {
    let bins = Bins::locate()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path();
    write_certs(path, &[])?;
    let ca = uplink_shared::certs::Authority::load(path)?;
    for (tenant, site) in [("a", "noisy"), ("b", "quiet")] {
        ca.issue_agent_spiffe("uplink.test", tenant, site, 1)?
            .write(path, site)?;
    }
    let quiet_spec = ProbeSpec {
        targets: args.targets,
        families: args.families,
        churn_every: 0,
    };
    let noisy_spec = ProbeSpec {
        targets: args.targets * 10,
        ..quiet_spec
    };
    let per_target = crate::probe::spec_series_count(&quiet_spec);
    let interval = uplink_shared::duration::PromDuration::parse(&args.interval)?.0;
    let noisy_series = per_target * noisy_spec.targets;
    let limit = noisy_series as f64 / interval.as_secs_f64() / 10.0;
    let (quiet_probe, noisy_probe) = (
        Probe::start_local(quiet_spec).await?,
        Probe::start_local(noisy_spec).await?,
    );
    let (quiet_dest, noisy_dest) = (
        Capture::start_counting(free_addr()?).await?,
        Capture::start_counting(free_addr()?).await?,
    );
    let rw = format!(
        "  - {{url: {}, name: quiet, queue_config: {{min_backoff: 50ms, max_backoff: 1s}}}}\n\
         \x20 - {{url: {}, name: noisy, queue_config: {{min_backoff: 50ms, max_backoff: 1s}}}}\n\
         identity: {{trust_domain: uplink.test}}\n\
         tenancy: {{tenants: {{a: {{max_samples_per_second: {limit}, destinations: [noisy]}}, \
         b: {{destinations: [quiet]}}}}}}\n",
        quiet_dest.url(),
        noisy_dest.url(),
    );
    let gateway = block(|| start_gateway_yaml(&bins, path, &rw, "0s", ""))?;
    let start = |site: &'static str, probe: &Probe| {
        let targets = probe.instances();
        block(|| {
            start_agent_with(
                &bins,
                path,
                &AgentSpec {
                    self_scrape: false,
                    site,
                    gateway: gateway.quic,
                    targets: &targets,
                    interval: &args.interval,
                    job: "probe",
                },
                "",
                "batch_delay: 100ms",
            )
        })
    };
    let mut quiet = start("quiet", &quiet_probe)?;
    tokio::time::sleep(args.phase.0).await;
    let alone = quiet_dest.latencies_ms();
    let mut noisy = start("noisy", &noisy_probe)?;
    let contended_from = Instant::now();
    let noisy_before = noisy_dest.report().samples;
    tokio::time::sleep(args.phase.0).await;
    let contended: Vec<u32> = quiet_dest.latencies_ms()[alone.len()..].to_vec();
    let noisy_rate = (noisy_dest.report().samples - noisy_before) as f64
        / contended_from.elapsed().as_secs_f64();
    let noisy_metrics = block(|| metrics(noisy.web))?;
    let gw = block(|| metrics(gateway.web))?;
    block(|| noisy.proc.terminate(Duration::from_secs(20)));
    let quiet_metrics_final = {
        block(|| quiet.proc.terminate(Duration::from_secs(30)));
        // The agent is gone: what it queued is what the gateway stored for it.
        block(|| gateway.wait_drained(Duration::from_secs(120)));
        block(|| metrics(gateway.web))?
    };
    let quiet_stored = quiet_metrics_final
        .get("uplink_gateway_tenant_samples_received_total{tenant=\"b\"}")
        .copied()
        .unwrap_or(0.0);
    let (a50, a99) = quantiles(alone);
    let (c50, c99) = quantiles(contended);
    Ok(IsolationReport {
        quiet_series: per_target * quiet_spec.targets,
        noisy_series,
        noisy_limit_samples_per_second: limit,
        quiet_alone_p50_ms: a50,
        quiet_alone_p99_ms: a99,
        quiet_contended_p50_ms: c50,
        quiet_contended_p99_ms: c99,
        quiet_p99_ratio: f64::from(c99) / f64::from(a99.max(1)),
        quiet_stored_samples: quiet_stored as u64,
        quiet_delivered_samples: quiet_dest.report().samples,
        noisy_delivered_samples_per_second: noisy_rate,
        noisy_throttled_batches: metric_sum(&gw, "uplink_gateway_tenant_throttled_batches_total")
            as u64,
        noisy_backlog_records: metric_sum(&noisy_metrics, "uplink_agent_queue_records") as u64,
    })
}
