//! `uplink-loadtest demo`: the whole relay path on one machine, live.
//!
//! Starts, on loopback: one probe exporter per site (in process), a global view (a real
//! Prometheus with its remote-write receiver when installed, else the capture receiver in
//! process), one `uplink-gateway`, and one `uplink-agent` per site (separate processes, own
//! certificates minted on the spot, own queues). Every configuration is generated from the
//! embedded defaults below. Shows per site, every two seconds, samples scraped, queued,
//! shipped and acknowledged, then checks everything that arrived against the probe's oracle.
//!
//! With Alertmanager installed, the global Prometheus runs deploy/global's rules and
//! Alertmanager routes to a tickets webhook that prints "ticket opened / resolved". Each site
//! reaches the gateway through its own UDP link; `--offline-after` (or Enter) cuts the last
//! site's link, so the ticket opens, and restoring it drains the site's backlog and resolves
//! the ticket.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use uplink_shared::model::Label;

use std::sync::atomic::Ordering;

use tokio::io::AsyncBufReadExt;

use crate::capture::{Capture, Received};
use crate::harness::{self, AgentSpec, Bins};
use crate::oracle;
use crate::probe::{Probe, ProbeSpec, spec_series_count};
use crate::proxy::UdpProxy;
use crate::tickets::Tickets;

/// Demo settings (all have embedded defaults).
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Stop by itself after this long (Prometheus syntax, e.g. 60s); runs until Ctrl-C if unset.
    #[arg(long)]
    pub duration: Option<uplink_shared::duration::PromDuration>,
    /// Number of sites (one agent each).
    #[arg(long, default_value_t = 3)]
    pub sites: usize,
    /// Probe targets per site.
    #[arg(long, default_value_t = 3)]
    pub targets: usize,
    /// Metric families per target (counters, gauges, histograms).
    #[arg(long, default_value_t = 12)]
    pub families: usize,
    /// Scrape interval.
    #[arg(long, default_value = "2s")]
    pub interval: String,
    /// Global view: auto (Prometheus if installed), prometheus, or capture.
    #[arg(long, default_value = "auto")]
    pub receiver: String,
    /// Working directory for certificates, configs, queues and logs (default: a new one in /tmp).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Cut the last site's link (a partition: its agent keeps scraping into its queue) this
    /// long after the start. Pressing Enter also toggles it.
    #[arg(long)]
    pub offline_after: Option<uplink_shared::duration::PromDuration>,
    /// How long the site stays cut off (the gateway notices after its idle timeout, 20 s, and
    /// the demo's alert fires 10 s later).
    #[arg(long, default_value = "60s")]
    pub offline_for: uplink_shared::duration::PromDuration,
}

enum View {
    Prometheus(harness::Prometheus),
    /// A global Prometheus with deploy/global's rules, Alertmanager, and a tickets webhook.
    Global(harness::GlobalView, Tickets),
    Capture(Capture),
}

impl View {
    fn prometheus_web(&self) -> Option<std::net::SocketAddr> {
        match self {
            View::Prometheus(p) => Some(p.web),
            View::Global(g, _) => Some(g.prometheus.web),
            View::Capture(_) => None,
        }
    }
}

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Runs the demo; returns an error if the final oracle check finds anything missing or wrong.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let bins = Bins::locate()?;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("uplink-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    let sites: Vec<String> = (0..args.sites)
        .map(|i| format!("site-{}", (b'a' + (i % 26) as u8) as char))
        .collect();
    harness::write_certs(&dir, &sites)?;
    println!("Uplink demo: working directory {}", dir.display());

    let spec = ProbeSpec {
        targets: args.targets,
        families: args.families,
        churn_every: 0,
    };
    let mut probes = Vec::new();
    for _ in &sites {
        probes.push(Probe::start(spec, IpAddr::V4(Ipv4Addr::LOCALHOST), 0).await?);
    }

    let use_prometheus = match args.receiver.as_str() {
        "prometheus" => true,
        "capture" => false,
        _ => harness::prometheus_installed(),
    };
    let view = if use_prometheus && harness::alertmanager_installed() {
        let tickets = Tickets::start(harness::free_addr()?, true).await?;
        // The shipped rules, with demo-sized durations.
        let timings = harness::Timings {
            alert_for: "10s".into(),
            evaluation_interval: "2s".into(),
            group_wait: "2s".into(),
            group_interval: "5s".into(),
        };
        let g = block(|| harness::start_global_view(&dir, &tickets.url(), &timings))
            .context("starting prometheus and alertmanager")?;
        println!(
            "Global view: Prometheus at http://{}/graph with deploy/global's rules (for: 10s), \
             Alertmanager at http://{}, tickets printed below",
            g.prometheus.web, g.alertmanager_web
        );
        View::Global(g, tickets)
    } else if use_prometheus {
        let p = block(|| harness::start_prometheus(&dir)).context("starting prometheus")?;
        println!(
            "Global view: Prometheus at http://{}/graph (install prometheus-alertmanager for tickets)",
            p.web
        );
        View::Prometheus(p)
    } else {
        let c = Capture::start(harness::free_addr()?).await?;
        println!(
            "Global view: capture receiver at {} (install Debian's `prometheus` for a real one)",
            c.url()
        );
        View::Capture(c)
    };
    let rw_url = match &view {
        View::Prometheus(p) => p.remote_write_url(),
        View::Global(g, _) => g.prometheus.remote_write_url(),
        View::Capture(c) => c.url(),
    };
    let mut gateway = block(|| harness::start_gateway_with(&bins, &dir, &[rw_url], "2s"))?;
    println!(
        "Gateway: QUIC {} (mTLS), metrics http://{}/metrics",
        gateway.quic, gateway.web
    );
    // Each site reaches the gateway through its own link, which the demo can cut.
    let mut links = Vec::new();
    for _ in &sites {
        links.push(UdpProxy::start(harness::free_addr()?, gateway.quic).await?);
    }
    let mut agents = Vec::new();
    for ((site, probe), link) in sites.iter().zip(&probes).zip(&links) {
        let targets = probe.instances();
        let a = block(|| {
            harness::start_agent(
                &bins,
                &dir,
                &AgentSpec {
                    self_scrape: true,
                    site,
                    gateway: link.addr,
                    targets: &targets,
                    interval: &args.interval,
                    job: "probe",
                },
            )
        })?;
        println!(
            "Agent {site}: {} targets x {} series, metrics http://{}/metrics",
            targets.len(),
            spec_series_count(&spec),
            a.web
        );
        agents.push(a);
    }

    if let Some(web) = view.prometheus_web() {
        println!(
            "\nTry these in Prometheus (http://{web}/graph) while the demo runs:\n  \
             count by (site) ({{__name__=~\"probe_.+\"}})\n  \
             sum by (site) (rate(probe_counter_total[1m]))\n  \
             up{{job=\"probe\"}}\n  \
             uplink_site_up  uplink_site_lag_seconds  uplink_site_backlog_records\n  \
             histogram_quantile(0.9, sum by (le, site) (rate(probe_histogram_bucket[1m])))"
        );
    }
    let cut_site = sites.len() - 1;
    println!(
        "\nPress Enter to cut (or restore) {}'s link: its agent keeps scraping into its queue.",
        sites[cut_site]
    );
    let started = Instant::now();
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let (mut cut_at, mut restore_at) = match args.offline_after {
        Some(after) => (Some(after.0), Some(after.0 + args.offline_for.0)),
        None => (None, None),
    };
    println!();
    loop {
        let elapsed = started.elapsed();
        let faults = &links[cut_site].faults;
        let cut = faults.blackhole.load(Ordering::Relaxed);
        if !cut && cut_at.is_some_and(|t| elapsed >= t) {
            cut_at = None;
            faults.blackhole.store(true, Ordering::Relaxed);
            println!(
                ">>> {} is now cut off (partition); watch its queue grow and a ticket open",
                sites[cut_site]
            );
        } else if cut && restore_at.is_some_and(|t| elapsed >= t) {
            restore_at = None;
            faults.blackhole.store(false, Ordering::Relaxed);
            println!(
                ">>> {} is back; its backlog drains and the ticket resolves",
                sites[cut_site]
            );
        }
        print_table(&agents);
        let remaining = args.duration.map(|d| d.0.saturating_sub(elapsed));
        if remaining == Some(Duration::ZERO) {
            break;
        }
        let tick = remaining.map_or(Duration::from_secs(2), |r| r.min(Duration::from_secs(2)));
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(tick) => {}
            line = stdin.next_line(), if stdin_open => match line {
                Ok(Some(_)) => {
                    let now_cut = !faults.blackhole.load(Ordering::Relaxed);
                    faults.blackhole.store(now_cut, Ordering::Relaxed);
                    println!(">>> {} link {}", sites[cut_site], if now_cut { "cut" } else { "restored" });
                }
                _ => stdin_open = false,
            },
        }
    }
    // Restore every link so queued data can drain before the orderly stop.
    for l in &links {
        l.faults.blackhole.store(false, Ordering::Relaxed);
    }

    println!("\nStopping agents (orderly: finish scrapes, wait for acks)...");
    for a in &mut agents {
        block(|| a.proc.terminate(Duration::from_secs(15)));
    }
    block(|| gateway.proc.terminate(Duration::from_secs(10)));

    // Verify what arrived against the oracle, per site.
    let mut all_clean = true;
    for (site, probe) in sites.iter().zip(&probes) {
        let received: Vec<Received> = match &view {
            View::Prometheus(_) | View::Global(..) => {
                let web = view.prometheus_web().context("prometheus address")?;
                harness::prometheus_samples(web, &format!("{{site=\"{site}\"}}[1h]")).await?
            }
            View::Capture(c) => c
                .snapshot()
                .into_iter()
                .filter(|r| {
                    r.labels
                        .iter()
                        .any(|l| l.name == "site" && &l.value == site)
                })
                .collect(),
        };
        let extra = [Label::new("job", "probe"), Label::new("site", site.clone())];
        let report = oracle::check(&spec, &probe.addrs, &extra, &received);
        let scrapes: usize = report.scrapes.iter().map(|s| s.len()).sum();
        let clean = report.wrong == 0 && report.missing_in_scrape == 0 && scrapes > 0;
        all_clean &= clean;
        println!(
            "{site}: {} samples in the global view, {scrapes} complete scrapes, wrong {}, missing in scrape {}, duplicates {} -> {}",
            report.total_samples,
            report.wrong,
            report.missing_in_scrape,
            report.duplicates,
            if clean { "exact" } else { "MISMATCH" }
        );
        for e in report.errors.iter().take(3) {
            println!("  {e}");
        }
    }
    if let View::Global(_, tickets) = &view {
        let events = tickets.events();
        let opened = events.iter().filter(|e| e.action == "opened").count();
        let resolved = events.iter().filter(|e| e.action == "resolved").count();
        println!("Tickets: {opened} opened, {resolved} resolved.");
    }
    println!("Logs, configs and certificates: {}", dir.display());
    if all_clean {
        Ok(())
    } else {
        anyhow::bail!("the global view does not match what the probes served")
    }
}

fn row(a: &harness::Agent) -> String {
    match harness::metrics(a.web) {
        Ok(m) => {
            let g = |n: &str| harness::metric_sum(&m, n) as u64;
            format!(
                "{:<8} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}",
                a.site,
                g("uplink_agent_samples_scraped_total"),
                g("uplink_agent_samples_queued_total"),
                g("uplink_agent_samples_shipped_total"),
                g("uplink_agent_samples_acked_total"),
                g("uplink_agent_queue_records"),
                if g("uplink_agent_gateway_connected") == 1 {
                    "yes"
                } else {
                    "no"
                },
            )
        }
        Err(_) => format!("{:<8} (not reachable)", a.site),
    }
}

fn print_table(agents: &[harness::Agent]) {
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "site", "scraped", "queued", "shipped", "acked", "in queue", "connected"
    );
    for a in agents {
        println!("{}", block(|| row(a)));
    }
}
