//! `uplink-loadtest bench-tunnel`: bytes on the wire per sample, Uplink against Prometheus agent
//! mode and vmagent, side by side in one run.
//!
//! Every sender scrapes identical data: each gets its own probe exporter with the same spec (so
//! each sees the same scrape-number sequence and the same 1% series churn), and all scrape the
//! same real node_exporter. Bytes are counted by relays in front of the receivers: on the UDP
//! socket for Uplink (agent to gateway: QUIC, TLS, acks, everything), on the TCP socket for the
//! peers' remote write (HTTP headers, bodies and responses). Samples are counted where they
//! arrive. The figure is bytes per delivered sample over a steady-state window after warm-up.

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
pub struct TunnelArgs {
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
}

/// One sender's figures.
#[derive(Debug, serde::Serialize)]
pub struct SenderFigures {
    pub sender: String,
    pub bytes: u64,
    pub samples: u64,
    pub packets: u64,
    pub bytes_per_sample: f64,
}

/// One scenario's figures.
#[derive(Debug, serde::Serialize)]
pub struct Scenario {
    pub name: String,
    pub paths: Vec<SenderFigures>,
}

fn installed(bin: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

struct Sender {
    name: String,
    capture: Capture,
    counters: std::sync::Arc<Counters>,
    _procs: Vec<Proc>,
    _keep: Vec<Box<dyn std::any::Any>>,
}

fn snapshot(s: &Sender) -> (u64, u64, u64) {
    (
        s.counters.total_bytes(),
        s.capture.len() as u64,
        s.counters.total_packets(),
    )
}

fn prom_config(targets: &[String], interval: &str, site: &str, rw: SocketAddr) -> String {
    let t: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    format!(
        "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  external_labels: {{site: {site}}}\n\
         scrape_configs:\n  - job_name: bench\n    static_configs:\n      - targets: [{}]\n\
         remote_write:\n  - url: http://{rw}/api/v1/write\n",
        t.join(", ")
    )
}

async fn scenario(
    args: &TunnelArgs,
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
        let capture = Capture::start(harness::free_addr()?).await?;
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
            capture,
            counters: udp.counters.clone(),
            _procs: vec![agent.proc, gw.proc],
            _keep: vec![Box::new(udp), Box::new(probe)],
        });
    }

    // Prometheus agent mode, remote write 1.0.
    if installed("prometheus") {
        let probe = if use_probe {
            Some(Probe::start(spec, IpAddr::V4(Ipv4Addr::LOCALHOST), 0).await?)
        } else {
            None
        };
        let capture = Capture::start(harness::free_addr()?).await?;
        let tcp = TcpProxy::start(harness::free_addr()?, capture.addr()).await?;
        let d = dir.join(format!("{name}-prometheus"));
        std::fs::create_dir_all(&d)?;
        let cfg = d.join("prometheus.yml");
        std::fs::write(
            &cfg,
            prom_config(
                &targets_for(probe.as_ref()),
                &args.interval,
                "prometheus",
                tcp.addr,
            ),
        )?;
        let web = harness::free_addr()?;
        let proc = Proc::spawn(
            "prometheus-agent",
            Command::new("prometheus")
                .arg("--enable-feature=agent")
                .arg(format!("--config.file={}", cfg.display()))
                .arg(format!("--storage.agent.path={}", d.join("data").display()))
                .arg(format!("--web.listen-address={web}")),
            &d.join("prometheus.log"),
        )?;
        senders.push(Sender {
            name: "prometheus --enable-feature=agent (remote write 1.0)".into(),
            capture,
            counters: tcp.counters.clone(),
            _procs: vec![proc],
            _keep: vec![Box::new(tcp), Box::new(probe)],
        });
    }

    // vmagent, remote write to a Prometheus-compatible receiver.
    if installed("vmagent") {
        let probe = if use_probe {
            Some(Probe::start(spec, IpAddr::V4(Ipv4Addr::LOCALHOST), 0).await?)
        } else {
            None
        };
        let capture = Capture::start(harness::free_addr()?).await?;
        let tcp = TcpProxy::start(harness::free_addr()?, capture.addr()).await?;
        let d = dir.join(format!("{name}-vmagent"));
        std::fs::create_dir_all(&d)?;
        let cfg = d.join("scrape.yml");
        let full = prom_config(
            &targets_for(probe.as_ref()),
            &args.interval,
            "vmagent",
            tcp.addr,
        );
        // vmagent takes remote write from flags; keep only global and scrape_configs.
        let scrape_only = full
            .split("remote_write:")
            .next()
            .unwrap_or_default()
            .to_owned();
        std::fs::write(&cfg, scrape_only)?;
        let web = harness::free_addr()?;
        let proc = Proc::spawn(
            "vmagent",
            Command::new("vmagent")
                .arg(format!("-promscrape.config={}", cfg.display()))
                .arg(format!("-remoteWrite.url=http://{}/api/v1/write", tcp.addr))
                .arg(format!(
                    "-remoteWrite.tmpDataPath={}",
                    d.join("data").display()
                ))
                .arg(format!("-httpListenAddr={web}")),
            &d.join("vmagent.log"),
        )?;
        senders.push(Sender {
            name: "vmagent (remote write 1.0)".into(),
            capture,
            counters: tcp.counters.clone(),
            _procs: vec![proc],
            _keep: vec![Box::new(tcp), Box::new(probe)],
        });
    }

    eprintln!("[{name}] warming up for {}", args.warmup);
    tokio::time::sleep(args.warmup.0).await;
    let start: Vec<_> = senders.iter().map(snapshot).collect();
    eprintln!("[{name}] measuring for {}", args.window);
    tokio::time::sleep(args.window.0).await;
    let end: Vec<_> = senders.iter().map(snapshot).collect();
    let paths = senders
        .iter()
        .zip(start.iter().zip(&end))
        .map(|(s, (a, b))| {
            let (bytes, samples, packets) = (b.0 - a.0, b.1 - a.1, b.2 - a.2);
            SenderFigures {
                sender: s.name.clone(),
                bytes,
                samples,
                packets,
                bytes_per_sample: if samples == 0 {
                    f64::NAN
                } else {
                    bytes as f64 / samples as f64
                },
            }
        })
        .collect();
    Ok(Scenario {
        name: name.into(),
        paths,
    })
}

/// Runs the benchmark; prints a table and returns the figures.
pub async fn run(args: TunnelArgs) -> anyhow::Result<Vec<Scenario>> {
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
    for s in &out {
        println!("\nscenario: {}", s.name);
        println!(
            "{:<55} {:>12} {:>10} {:>9} {:>10}",
            "sender", "bytes", "samples", "packets", "B/sample"
        );
        let uplink = s.paths.first().map_or(f64::NAN, |p| p.bytes_per_sample);
        for p in &s.paths {
            println!(
                "{:<55} {:>12} {:>10} {:>9} {:>10.3}  ({:.1}x uplink)",
                p.sender,
                p.bytes,
                p.samples,
                p.packets,
                p.bytes_per_sample,
                p.bytes_per_sample / uplink
            );
        }
    }
    Ok(out)
}
