//! `uplink-loadtest chaos`: the delivery scenarios as named, repeatable runs with the exact
//! oracle's verdict (missing, duplicated, wrong).
//!
//! Each scenario runs real processes on loopback: a probe exporter, an agent, a UDP chaos proxy
//! between agent and gateway, a gateway, and the capture receiver as the destination. After
//! the faults, links are healed, the agent is stopped in order (so everything it queued is
//! delivered), and every received sample is checked against the probe's oracle.
//!
//! Scenarios: `kill-loop` (kill -9 the agent repeatedly at random points), `gateway-kill` (kill
//! -9 the gateway repeatedly at random points and restart it on its store), `partition` (drop
//! every packet for a while, repeatedly), `lost-acks` (drop only gateway-to-agent packets),
//! `loss30` (30% loss both ways), `delay` (300 ms each way), `reorder` (each packet delayed by
//! a random 0 to 40 ms, so packets overtake each other), `flap` (the link up 1 s, down 1 s),
//! `outage` (the destination answers 503; the gateway's store absorbs it), `throttled` (the
//! destination answers 429 with `Retry-After: 1`), `link` (every link scenario), `all`. For the
//! destination scenarios the verdict also gives the gateway's resident memory at the fault's
//! start, its peak during the fault, and at the end: the backlog waits on disk, not in memory.
//!
//! Verdict rules: nothing may be wrong or missing inside a scrape; scrapes may only be missing
//! in `kill-loop`, at most one per target per kill (the scrape in progress when killed, never
//! acknowledged to anyone). Duplicates (retransmissions after a lost ack) are reported; the
//! receiver keeps the first copy.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::harness::{Bins, Rig, status_mib};
use crate::oracle;
use crate::probe::ProbeSpec;

/// Settings of a chaos run.
#[derive(clap::Args, Debug, Clone)]
pub struct ChaosArgs {
    /// kill-loop, gateway-kill, partition, lost-acks, loss30, delay, reorder, flap, outage,
    /// link (the link scenarios), or all.
    #[arg(long, default_value = "all")]
    pub scenario: String,
    /// Fault cycles per scenario.
    #[arg(long, default_value_t = 3)]
    pub cycles: u32,
    /// Length of each fault.
    #[arg(long, default_value = "8s")]
    pub fault: uplink_shared::duration::PromDuration,
    /// Healthy time between faults.
    #[arg(long, default_value = "4s")]
    pub heal: uplink_shared::duration::PromDuration,
    /// Seed for the random kill points.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// One scenario's verdict.
#[derive(Debug, serde::Serialize)]
pub struct Verdict {
    pub scenario: String,
    pub served_scrapes: u64,
    pub received_samples: u64,
    pub missing_scrapes: u64,
    pub allowed_missing_scrapes: u64,
    pub missing_in_scrape: u64,
    pub wrong: u64,
    pub duplicates_dropped_by_receiver: u64,
    /// Gateway RSS (MiB) at the first fault's start, its peak during the faults, at the end
    /// (destination scenarios).
    pub gateway_rss_mib: Option<[f64; 3]>,
    pub passed: bool,
    pub seconds: f64,
}

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn scenario(args: &ChaosArgs, name: &str, rng: &mut u64) -> anyhow::Result<Verdict> {
    let started = Instant::now();
    let spec = ProbeSpec {
        targets: 3,
        families: 9,
        churn_every: 0,
    };
    let mut rig = Rig::start("chaos", spec, "500ms", "").await?;
    let mut next = move || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    let mut kills = 0u64;
    let mut rss: Option<[f64; 3]> = None;
    for cycle in 0..args.cycles {
        tokio::time::sleep(args.heal.0).await;
        eprintln!("[{name}] fault {} of {}", cycle + 1, args.cycles);
        match name {
            "kill-loop" => {
                // Kill at a random point inside the fault window, then restart.
                let at = Duration::from_millis(next() % args.fault.0.as_millis().max(1) as u64);
                tokio::time::sleep(at).await;
                block(|| rig.agent.proc.kill9());
                kills += 1;
                tokio::time::sleep(args.fault.0.saturating_sub(at)).await;
                rig.restart_agent()?;
            }
            "gateway-kill" => {
                let at = Duration::from_millis(next() % args.fault.0.as_millis().max(1) as u64);
                tokio::time::sleep(at).await;
                block(|| rig.gateway.proc.kill9());
                tokio::time::sleep(args.fault.0.saturating_sub(at)).await;
                rig.restart_gateway()?;
            }
            "partition" | "lost-acks" | "loss30" | "delay" | "reorder" => {
                let f = &rig.link.faults;
                match name {
                    "partition" => f.blackhole.store(true, Ordering::Relaxed),
                    "lost-acks" => f.down_loss_ppm.store(1_000_000, Ordering::Relaxed),
                    "delay" => f.delay_us.store(300_000, Ordering::Relaxed),
                    "reorder" => f.jitter_us.store(40_000, Ordering::Relaxed),
                    _ => {
                        f.up_loss_ppm.store(300_000, Ordering::Relaxed);
                        f.down_loss_ppm.store(300_000, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(args.fault.0).await;
                f.blackhole.store(false, Ordering::Relaxed);
                f.up_loss_ppm.store(0, Ordering::Relaxed);
                f.down_loss_ppm.store(0, Ordering::Relaxed);
                f.delay_us.store(0, Ordering::Relaxed);
                f.jitter_us.store(0, Ordering::Relaxed);
            }
            "flap" => {
                let f = &rig.link.faults;
                let until = Instant::now() + args.fault.0;
                let mut down = true;
                while Instant::now() < until {
                    f.blackhole.store(down, Ordering::Relaxed);
                    down = !down;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                f.blackhole.store(false, Ordering::Relaxed);
            }
            "outage" | "throttled" => {
                if name == "outage" {
                    rig.capture.set_fail_next(u32::MAX, 503);
                } else {
                    rig.capture.rules(|r| {
                        r.fail_next(0, 429);
                        r.script.push_back((
                            crate::faults::Scripted {
                                status: 429,
                                retry_after: Some("1".into()),
                                message: "rate limited".into(),
                            },
                            u32::MAX,
                        ));
                    });
                }
                let pid = rig.gateway.proc.child.id();
                let until = Instant::now() + args.fault.0;
                while Instant::now() < until {
                    let now = status_mib(pid, "VmRSS");
                    let r = rss.get_or_insert([now, now, now]);
                    r[1] = r[1].max(now);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                rig.capture.set_fail_next(0, 503);
            }
            other => anyhow::bail!("unknown scenario {other}"),
        }
    }
    // Heal, let the backlog drain, stop in order: everything queued must arrive.
    tokio::time::sleep(args.heal.0).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && rig.agent_metric("uplink_agent_queue_records") != 0.0 {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    block(|| rig.agent.proc.terminate(Duration::from_secs(30)));
    // The gateway acked what it stored; let it deliver its own backlog (the outage scenario).
    rig.wait_gateway_drained(Duration::from_secs(60)).await;
    if let Some(r) = rss.as_mut() {
        r[2] = status_mib(rig.gateway.proc.child.id(), "VmRSS");
    }
    let received = rig.capture.snapshot();
    let report = oracle::check(&spec, &rig.probe.addrs, &rig.oracle_labels(), &received);
    let mut missing = 0u64;
    let mut served_total = 0u64;
    for t in 0..spec.targets {
        let served = rig.probe.served(t);
        served_total += served;
        missing += report.missing_scrapes(t, served).len() as u64;
    }
    let allowed = kills * spec.targets as u64;
    let passed = report.wrong == 0 && report.missing_in_scrape == 0 && missing <= allowed;
    Ok(Verdict {
        scenario: name.into(),
        served_scrapes: served_total,
        received_samples: received.len() as u64,
        missing_scrapes: missing,
        allowed_missing_scrapes: allowed,
        missing_in_scrape: report.missing_in_scrape,
        wrong: report.wrong,
        duplicates_dropped_by_receiver: rig.capture.duplicates(),
        gateway_rss_mib: rss,
        passed,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The scenarios that disturb the agent-gateway link.
pub const LINK: &[&str] = &[
    "partition",
    "lost-acks",
    "loss30",
    "delay",
    "reorder",
    "flap",
];

/// Runs the chosen scenarios; prints one verdict line each.
pub async fn run(args: ChaosArgs) -> anyhow::Result<Vec<Verdict>> {
    println!(
        "reproduce with: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    Bins::locate()?;
    let names: Vec<&str> = match args.scenario.as_str() {
        "all" => [
            &["kill-loop", "gateway-kill"][..],
            LINK,
            &["outage", "throttled"],
        ]
        .concat(),
        "link" => LINK.to_vec(),
        one => vec![one],
    };
    let mut rng = args.seed.max(1);
    let mut out = Vec::new();
    for name in names {
        let v = scenario(&args, name, &mut rng).await?;
        println!(
            "{:<10} {}  served scrapes {:>5}  missing {}/{} allowed  missing-in-scrape {}  wrong {}  duplicates {}  ({:.0}s)",
            v.scenario,
            if v.passed { "PASS" } else { "FAIL" },
            v.served_scrapes,
            v.missing_scrapes,
            v.allowed_missing_scrapes,
            v.missing_in_scrape,
            v.wrong,
            v.duplicates_dropped_by_receiver,
            v.seconds
        );
        if let Some([start, peak, end]) = v.gateway_rss_mib {
            println!(
                "{:<10} gateway RSS MiB: {start:.1} at the fault's start, {peak:.1} peak during it, {end:.1} at the end",
                v.scenario
            );
        }
        out.push(v);
    }
    Ok(out)
}
