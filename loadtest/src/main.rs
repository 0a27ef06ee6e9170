//! `uplink-loadtest`: run a probe exporter or a capture receiver from the command line.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use uplink_loadtest::capture::Capture;
use uplink_loadtest::probe::{Probe, ProbeSpec, spec_series_count};

#[derive(Parser, Debug)]
#[command(name = "uplink-loadtest", about = "Uplink load and end-to-end tooling")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve deterministic exporters, one listener per target, until Ctrl-C.
    Probe(ProbeArgs),
    /// Receive remote write and record every sample until Ctrl-C; `GET /report` shows counts.
    Capture(CaptureArgs),
    /// Run the whole relay path live: probes, gateway, three agents, a global Prometheus.
    Demo(uplink_loadtest::demo::DemoArgs),
    /// Delivery under faults (kill -9 loops, partitions, lost acks, loss, outages) with the
    /// exact oracle's verdict.
    Chaos(uplink_loadtest::chaos::ChaosArgs),
    /// How fast a backlog drains after an outage (as a multiple of the live ingest rate), how
    /// soon live data is seen, and what is lost; for Uplink, Prometheus agent and vmagent.
    Drain(uplink_loadtest::drain::DrainArgs),
    /// One tenant at ten times its rate limit beside another: the other's delivery latency.
    Isolation(uplink_loadtest::isolation::IsolationArgs),
    /// Many sites (simulated agents, real protocol) against one gateway: connect and reconnect
    /// storms, gateway memory per connection, end-to-end latency.
    Fleet(uplink_loadtest::fleet::FleetArgs),
    /// An Alertmanager webhook receiver that prints "ticket opened / resolved" lines.
    Tickets {
        /// Address to listen on (Alertmanager posts to /tickets).
        #[arg(long, default_value = "127.0.0.1:9095")]
        listen_address: SocketAddr,
    },
    /// Benchmark the tunnel encoding in process against remote write 1.0 and 2.0.
    BenchCodec(uplink_loadtest::bench::CodecArgs),
    /// Uplink against Prometheus agent and vmagent on the same targets in the same run: bytes
    /// on the wire, CPU and peak memory per relay; a markdown table and PNG charts.
    Compare(uplink_loadtest::compare::CompareArgs),
    /// Uplink as a remote-write relay (sidecar agent and gateway, 1.0 and 2.0) against vmagent
    /// and Prometheus agent on the same input: samples per CPU second, bytes per sample out.
    Relay(uplink_loadtest::relay::RelayArgs),
}

#[derive(clap::Args, Debug)]
struct ProbeArgs {
    /// Number of targets (listeners).
    #[arg(long)]
    targets: usize,
    /// Metric families per target.
    #[arg(long)]
    series: usize,
    /// Replace 1% of series every this many scrapes (0: never).
    #[arg(long, default_value_t = 0)]
    churn_every: u64,
    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    listen_host: IpAddr,
    /// First port; target i listens on base-port + i. 0 picks ephemeral ports.
    #[arg(long, default_value_t = 0)]
    base_port: u16,
    /// Write the targets as a Prometheus file_sd list here (.yaml/.yml: YAML, else JSON).
    #[arg(long)]
    targets_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct CaptureArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9201")]
    listen_address: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Probe(args) => run_probe(args).await,
        Command::Capture(args) => run_capture(args).await,
        Command::Demo(args) => uplink_loadtest::demo::run(args).await,
        Command::Chaos(args) => {
            let verdicts = uplink_loadtest::chaos::run(args).await?;
            if verdicts.iter().all(|v| v.passed) {
                Ok(())
            } else {
                anyhow::bail!("a chaos scenario failed")
            }
        }
        Command::Drain(args) => {
            let reports = uplink_loadtest::drain::run(args).await?;
            println!("{}", serde_json::to_string_pretty(&reports)?);
            println!("{}", uplink_loadtest::drain::markdown(&reports));
            Ok(())
        }
        Command::Isolation(args) => {
            let report = uplink_loadtest::isolation::run(args).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Fleet(args) => {
            let report = uplink_loadtest::fleet::run(args).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Tickets { listen_address } => {
            let t = uplink_loadtest::tickets::Tickets::start(listen_address, true).await?;
            println!("tickets webhook at {}", t.url());
            tokio::signal::ctrl_c().await?;
            Ok(())
        }
        Command::Relay(args) => {
            let figures = uplink_loadtest::relay::run(args).await?;
            println!("{}", uplink_loadtest::relay::markdown(&figures));
            println!("{}", serde_json::to_string_pretty(&figures)?);
            Ok(())
        }
        Command::Compare(args) => {
            let report = uplink_loadtest::compare::run(args).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::BenchCodec(args) => {
            let report = uplink_loadtest::bench::codec(&args)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}

/// Renders a file_sd target list: YAML for `.yaml`/`.yml` paths, JSON otherwise.
fn file_sd(path: &Path, targets: &[String]) -> anyhow::Result<String> {
    let yaml = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
    if yaml {
        let mut out = String::from("- targets:\n");
        for t in targets {
            out.push_str(&format!("    - {t:?}\n"));
        }
        Ok(out)
    } else {
        let v = serde_json::json!([{ "targets": targets, "labels": {} }]);
        Ok(serde_json::to_string_pretty(&v)? + "\n")
    }
}

async fn run_probe(args: ProbeArgs) -> anyhow::Result<()> {
    let spec = ProbeSpec {
        targets: args.targets,
        families: args.series,
        churn_every: args.churn_every,
    };
    let probe = Probe::start(spec, args.listen_host, args.base_port)
        .await
        .context("starting probe listeners")?;
    let instances = probe.instances();
    if let Some(path) = &args.targets_file {
        let text = file_sd(path, &instances)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "probe: {} targets, {} series each",
        spec.targets,
        spec_series_count(&spec)
    );
    for i in &instances {
        println!("{i}");
    }
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    let served: Vec<u64> = (0..spec.targets).map(|t| probe.served(t)).collect();
    println!("served scrapes per target: {served:?}");
    probe.shutdown().await;
    Ok(())
}

async fn run_capture(args: CaptureArgs) -> anyhow::Result<()> {
    let capture = Capture::start(args.listen_address)
        .await
        .context("starting capture receiver")?;
    println!("capture: remote write URL {}", capture.url());
    println!("capture: report at http://{}/report", capture.addr());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    println!("{}", serde_json::to_string_pretty(&capture.report())?);
    capture.shutdown().await;
    Ok(())
}
