//! `uplink-loadtest compare`: Uplink against Prometheus agent mode and vmagent, side by side in
//! one run: bytes on the wire per sample, CPU per sample and peak memory of each relay.
//!
//! Every sender scrapes identical data: each gets its own probe exporter with the same spec (so
//! each sees the same scrape-number sequence and the same 1% series churn), and all scrape the
//! same real node_exporter. Bytes are counted by relays in front of the receivers: on the UDP
//! socket for Uplink (agent to gateway: QUIC, TLS, acks, everything), on the TCP socket for the
//! peers' remote write (HTTP headers, bodies and responses). Samples are counted where they
//! arrive. Bytes and CPU are measured over a steady-state window after warm-up; CPU is the relay
//! process's user+system time from /proc, peak RSS its `VmHWM`. For Uplink the relay is the
//! agent (the gateway is the remote end). Results go to stdout, and to `--out` as
//! `results.json`, `results.md` and PNG charts. Run the release build for CPU figures.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use crate::capture::Capture;
use crate::harness::{self, AgentSpec, Bins, Proc};
use crate::probe::{Probe, ProbeSpec};
use crate::proxy::{Counters, TcpProxy, UdpProxy};

/// Settings of the live tunnel benchmark.
#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    /// Scenario: probe (the probe's mix), node (a real node_exporter), or both in sequence.
    #[arg(long, default_value = "both")]
    pub scenario: String,
    /// Scrape interval for every sender.
    #[arg(long, default_value = "2s")]
    pub interval: String,
    /// Measurement window after warm-up.
    #[arg(long, default_value = "90s")]
    pub window: uplink_shared::duration::PromDuration,
    /// Warm-up before the window opens.
    #[arg(long, default_value = "20s")]
    pub warmup: uplink_shared::duration::PromDuration,
    /// Probe targets.
    #[arg(long, default_value_t = 10)]
    pub targets: usize,
    /// Probe metric families per target.
    #[arg(long, default_value_t = 300)]
    pub families: usize,
    /// Probe churn: 1% of series replaced every this many scrapes.
    #[arg(long, default_value_t = 60)]
    pub churn_every: u64,
    /// Output folder for results.json, results.md and charts.
    #[arg(long, default_value = "compare-results")]
    pub out: std::path::PathBuf,
    /// Which peers run beside Uplink: the current ones (Prometheus 3, vmagent), Debian 12's
    /// (Prometheus 2.42, vmagent 1.79), or both.
    #[arg(long, value_enum, default_value = "current")]
    pub peers: crate::peers::Generation,
}

/// One sender's figures.
#[derive(Debug, serde::Serialize)]
pub struct SenderFigures {
    pub sender: String,
    pub bytes: u64,
    pub samples: u64,
    pub packets: u64,
    pub bytes_per_sample: f64,
    /// CPU seconds of the relay process during the window.
    pub cpu_seconds: f64,
    pub cpu_us_per_sample: f64,
    /// Peak resident memory of the relay process over its life, MiB.
    pub peak_rss_mib: f64,
}

/// One scenario's figures.
#[derive(Debug, serde::Serialize)]
pub struct Scenario {
    pub name: String,
    pub paths: Vec<SenderFigures>,
}

use crate::harness::installed;

struct Sender {
    name: String,
    /// The relay process whose CPU and memory are measured.
    pid: u32,
    capture: Capture,
    counters: std::sync::Arc<Counters>,
    _procs: Vec<Proc>,
    _keep: Vec<Box<dyn std::any::Any>>,
}

fn snapshot(s: &Sender) -> (u64, u64, u64, f64) {
    (
        s.counters.total_bytes(),
        s.capture.report().samples,
        s.counters.total_packets(),
        cpu_seconds(s.pid),
    )
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// User plus system CPU seconds of a process (children excluded), from /proc.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / clock_ticks()
}

/// Peak resident set size of a process, MiB (`VmHWM`).
pub fn peak_rss_mib(pid: u32) -> f64 {
    crate::harness::status_mib(pid, "VmHWM")
}

/// A Prometheus configuration scraping `targets` as `job` every `interval` (timeout the same),
/// with `site` as an external label, and remote-writing to `remote_write_url` unless it is
/// `None` (vmagent takes remote write from flags).
pub(crate) fn prom_config(
    job: &str,
    targets: &[String],
    interval: &str,
    site: &str,
    remote_write_url: Option<&str>,
) -> String {
    let t: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    let mut cfg = format!(
        "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  external_labels: {{site: {site}}}\n\
         scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
        t.join(", ")
    );
    if let Some(url) = remote_write_url {
        cfg.push_str(&format!("remote_write:\n  - url: {url}\n"));
    }
    cfg
}

async fn scenario(
    args: &CompareArgs,
    bins: &Bins,
    dir: &Path,
    name: &str,
    node: Option<SocketAddr>,
) -> anyhow::Result<Scenario> {
    let spec = ProbeSpec {
        targets: args.targets,
        families: args.families,
        churn_every: args.churn_every,
    };
    let targets_for = |probe: Option<&Probe>| -> Vec<String> {
        match (probe, node) {
            (Some(p), _) => p.instances(),
            (None, Some(n)) => vec![n.to_string()],
            (None, None) => vec![],
        }
    };
    let use_probe = name == "probe";
    let mut senders = Vec::new();

    // Uplink: agent -> UDP relay -> gateway -> capture.
    {
        let probe = if use_probe {
            Some(Probe::start(spec, IpAddr::V4(Ipv4Addr::LOCALHOST), 0).await?)
        } else {
            None
        };
        let capture = Capture::start_counting(harness::free_addr()?).await?;
        let d = dir.join(format!("{name}-uplink"));
        std::fs::create_dir_all(&d)?;
        harness::write_certs(&d, &["bench".to_string()])?;
        let gw =
            tokio::task::block_in_place(|| harness::start_gateway(bins, &d, &[capture.url()]))?;
        let udp = UdpProxy::start(harness::free_addr()?, gw.quic).await?;
        let targets = targets_for(probe.as_ref());
        let agent = tokio::task::block_in_place(|| {
            harness::start_agent(
                bins,
                &d,
                &AgentSpec {
                    self_scrape: false,
                    site: "bench",
                    gateway: udp.addr,
                    targets: &targets,
                    interval: &args.interval,
                    job: "bench",
                },
            )
        })?;
        senders.push(Sender {
            name: "uplink (compact over QUIC)".into(),
            pid: agent.proc.child.id(),
            capture,
            counters: udp.counters.clone(),
            _procs: vec![agent.proc, gw.proc],
            _keep: vec![Box::new(udp), Box::new(probe)],
        });
    }

    // The peers: Prometheus agent mode and vmagent, each remote-writing through a counting TCP
    // relay to its own receiver.
    for peer in args.peers.peers() {
        if !peer.installed() {
            eprintln!("compare: {} is not installed, skipped", peer.label());
            continue;
        }
        let probe = if use_probe {
            Some(Probe::start(spec, IpAddr::V4(Ipv4Addr::LOCALHOST), 0).await?)
        } else {
            None
        };
        let capture = Capture::start_counting(harness::free_addr()?).await?;
        let tcp = TcpProxy::start(harness::free_addr()?, capture.addr()).await?;
        let d = dir.join(format!("{name}-{}", peer.slug()));
        std::fs::create_dir_all(&d)?;
        let rw_url = format!("http://{}/api/v1/write", tcp.addr);
        let targets = targets_for(probe.as_ref());
        let (label, proc) = if peer.is_prometheus() {
            let cfg = d.join("prometheus.yml");
            let full = prom_config(
                "bench",
                &targets,
                &args.interval,
                peer.slug(),
                Some(&rw_url),
            );
            std::fs::write(&cfg, full)?;
            let prom = tokio::task::block_in_place(|| {
                harness::spawn_prometheus_agent_of(peer, &d, &cfg, &[])
            })?;
            (
                format!("{} agent (remote write 1.0)", peer.label()),
                prom.proc,
            )
        } else {
            let cfg = d.join("scrape.yml");
            std::fs::write(
                &cfg,
                prom_config("bench", &targets, &args.interval, peer.slug(), None),
            )?;
            let scrape = format!("-promscrape.config={}", cfg.display());
            let (proc, _) = tokio::task::block_in_place(|| {
                harness::spawn_vmagent_of(peer, &d, &rw_url, &[scrape])
            })?;
            (format!("{} (remote write 1.0)", peer.label()), proc)
        };
        senders.push(Sender {
            name: label,
            pid: proc.child.id(),
            capture,
            counters: tcp.counters.clone(),
            _procs: vec![proc],
            _keep: vec![Box::new(tcp), Box::new(probe)],
        });
    }

    crate::progress::wait(&format!("{name}: warm-up"), args.warmup.0).await;
    let start: Vec<_> = senders.iter().map(snapshot).collect();
    crate::progress::wait(&format!("{name}: measuring"), args.window.0).await;
    let end: Vec<_> = senders.iter().map(snapshot).collect();
    let paths = senders
        .iter()
        .zip(start.iter().zip(&end))
        .map(|(s, (a, b))| {
            let (bytes, samples, packets, cpu) = (b.0 - a.0, b.1 - a.1, b.2 - a.2, b.3 - a.3);
            let per = |v: f64| {
                if samples == 0 {
                    f64::NAN
                } else {
                    v / samples as f64
                }
            };
            SenderFigures {
                sender: s.name.clone(),
                bytes,
                samples,
                packets,
                bytes_per_sample: per(bytes as f64),
                cpu_seconds: cpu,
                cpu_us_per_sample: per(cpu * 1e6),
                peak_rss_mib: peak_rss_mib(s.pid),
            }
        })
        .collect();
    Ok(Scenario {
        name: name.into(),
        paths,
    })
}

/// Resident memory of an agent with no targets after `settle`, MiB, and the binary's size.
pub async fn idle_agent(bins: &Bins, dir: &Path) -> anyhow::Result<(f64, u64)> {
    let d = dir.join("idle");
    std::fs::create_dir_all(&d)?;
    harness::write_certs(&d, &["idle".to_string()])?;
    let agent = tokio::task::block_in_place(|| {
        harness::start_agent(
            bins,
            &d,
            &AgentSpec {
                self_scrape: false,
                site: "idle",
                gateway: "127.0.0.1:9".parse().expect("literal address"),
                targets: &[],
                interval: "10s",
                job: "none",
            },
        )
    })?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rss = crate::harness::status_mib(agent.proc.child.id(), "VmRSS");
    let size = std::fs::metadata(&bins.agent).map_or(0, |m| m.len());
    Ok((rss, size))
}

/// Runs the benchmark; prints a table and returns the figures.
pub async fn run(args: CompareArgs) -> anyhow::Result<Vec<Scenario>> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    println!("reproduce with: {command}");
    let bins = Bins::locate()?;
    let dir = std::env::temp_dir().join(format!("uplink-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut node_proc = None;
    let mut node = None;
    if matches!(args.scenario.as_str(), "node" | "both") {
        anyhow::ensure!(
            installed("prometheus-node-exporter"),
            "the node scenario needs Debian's prometheus-node-exporter"
        );
        let addr = harness::free_addr()?;
        node_proc = Some(
            Proc::spawn(
                "node_exporter",
                Command::new("prometheus-node-exporter")
                    .arg(format!("--web.listen-address={addr}")),
                &dir.join("node_exporter.log"),
            )
            .context("starting node_exporter")?,
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        node = Some(addr);
    }
    let mut out = Vec::new();
    for name in ["probe", "node"] {
        if args.scenario == name || args.scenario == "both" {
            out.push(scenario(&args, &bins, &dir, name, node).await?);
        }
    }
    drop(node_proc);
    let (idle_rss, size) = idle_agent(&bins, &dir).await?;
    let mut table = format!("Command: `{command}`\n");
    table.push_str(&markdown(&out));
    table.push_str(&format!(
        "\nUplink agent with no targets: {idle_rss:.1} MiB RSS; binary {:.1} MiB ({}).\n",
        size as f64 / 1048576.0,
        bins.agent.display()
    ));
    println!("{table}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("results.md"), &table)?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&out)?,
    )?;
    match crate::charts::bars(&args.out, &out) {
        Ok(files) => println!("charts: {}", files.join(", ")),
        Err(e) => println!("charts skipped: {e}"),
    }
    println!("results in {}", args.out.display());
    Ok(out)
}

/// `v` as a multiple of the base figure (NaN without one), for the tables' ratio columns.
pub(crate) fn ratio(v: f64, base: Option<f64>) -> f64 {
    base.map_or(f64::NAN, |b| v / b)
}

/// The results as a markdown table, ratios against Uplink.
pub fn markdown(scenarios: &[Scenario]) -> String {
    let mut md = String::new();
    for s in scenarios {
        md.push_str(&format!("\n### Scenario: {}\n\n", s.name));
        md.push_str("| relay | samples | bytes | B/sample | vs uplink | CPU s | CPU µs/sample | vs uplink | peak RSS MiB | vs uplink |\n");
        md.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        let base = s.paths.first();
        for p in &s.paths {
            md.push_str(&format!(
                "| {} | {} | {} | {:.3} | {:.1}x | {:.2} | {:.3} | {:.1}x | {:.1} | {:.1}x |\n",
                p.sender,
                p.samples,
                p.bytes,
                p.bytes_per_sample,
                ratio(p.bytes_per_sample, base.map(|b| b.bytes_per_sample)),
                p.cpu_seconds,
                p.cpu_us_per_sample,
                ratio(p.cpu_us_per_sample, base.map(|b| b.cpu_us_per_sample)),
                p.peak_rss_mib,
                ratio(p.peak_rss_mib, base.map(|b| b.peak_rss_mib)),
            ));
        }
    }
    md
}
