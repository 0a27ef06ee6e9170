//! `uplink-loadtest relay`: Uplink as a remote-write relay, against vmagent and Prometheus in
//! agent mode, on the same input in the same run.
//!
//! The input is the probe's series (`--targets` × `--families`, `--scrapes` scrapes each, with
//! timestamps ending now), pre-encoded as remote-write 1.0 requests, one per target and scrape.
//! `--senders` tasks push them as fast as each relay takes them, each task owning a disjoint set
//! of targets so that every series arrives in order. Each relay forwards to a counting receiver
//! through a counting TCP relay. Relays run one after the other (two cores would otherwise
//! measure contention):
//!
//! - Uplink 1.0 and Uplink 2.0: an agent in sidecar mode (`--web.enable-remote-write-receiver`,
//!   no targets) ships over QUIC to a gateway that remote-writes 1.0, or 2.0, to the receiver;
//! - vmagent (`-remoteWrite.url`), remote write 1.0 (`vmagent`: the current one; `vmagent1`:
//!   Debian 12's 1.79);
//! - a Prometheus agent with `--web.enable-remote-write-receiver`, 1.0 (`prometheus`:
//!   Prometheus 3, `--agent`; `prometheus2`: Debian 12's 2.42, `--enable-feature=agent`).
//!
//! Per relay: CPU seconds of its processes (utime + stime from `/proc`) from the first push to
//! the last sample received, samples per CPU second (per core), wall time, bytes per sample on
//! the outgoing remote-write link (HTTP headers included), and peak RSS. For Uplink also the
//! gateway's share: samples per gateway CPU second, from a decoded batch to an encoded,
//! compressed request on the wire.
//!
//! Build with `--release`: CPU figures of a debug build mean nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use uplink_shared::remote_write::{self, WriteRequest};

use crate::capture::Capture;
use crate::compare::{cpu_seconds, peak_rss_mib};
use crate::harness::{self, AgentSpec, Bins, Peer, Proc};
use crate::probe::ProbeSpec;
use crate::proxy::TcpProxy;

/// Settings of the relay benchmark.
#[derive(clap::Args, Debug, Clone)]
pub struct RelayArgs {
    /// Targets (series sets) in the input.
    #[arg(long, default_value_t = 40)]
    pub targets: usize,
    /// Metric families per target (about 2.6 series each).
    #[arg(long, default_value_t = 100)]
    pub families: usize,
    /// Scrapes per target.
    #[arg(long, default_value_t = 60)]
    pub scrapes: u64,
    /// Concurrent pushing tasks (each owns a disjoint set of targets).
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Where the relays keep their data (a temporary directory by default).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The Uplink gateway's `queue_config.max_shards` toward the receiver.
    #[arg(long, default_value_t = 4)]
    pub gateway_max_shards: u32,
    /// Which relays, in order: uplink-1.0, uplink-2.0, vmagent, prometheus (the current
    /// peers), vmagent1, prometheus2 (Debian 12's).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "uplink-1.0,uplink-2.0,vmagent,prometheus"
    )]
    pub relays: Vec<String>,
    /// Give up on a relay after this long.
    #[arg(long, default_value = "300s")]
    pub timeout: uplink_shared::duration::PromDuration,
}

/// One relay's figures.
#[derive(Debug, serde::Serialize)]
pub struct RelayFigures {
    pub relay: String,
    pub samples: u64,
    pub wall_seconds: f64,
    pub cpu_seconds: f64,
    /// Samples forwarded per CPU second of the relay's processes (per core).
    pub samples_per_cpu_second: f64,
    /// Uplink only: samples per CPU second of the gateway alone.
    pub gateway_samples_per_cpu_second: Option<f64>,
    pub out_bytes_per_sample: f64,
    pub peak_rss_mib: f64,
}

/// The input: per sender task, its requests in order. Timestamps start at now and are 10 ms
/// apart per scrape: Prometheus's WAL watcher ignores samples older than its own start.
fn input(args: &RelayArgs) -> (Vec<Vec<Bytes>>, u64) {
    let spec = ProbeSpec {
        targets: args.targets,
        families: args.families,
        churn_every: 0,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut tasks = vec![Vec::new(); args.senders.max(1)];
    let mut total = 0;
    for n in 0..args.scrapes {
        for t in 0..args.targets {
            let mut series = crate::bench::probe_scrape(&spec, t, n);
            for s in &mut series {
                for x in &mut s.samples {
                    x.timestamp = now + n as i64 * 10 + (t % 7) as i64;
                }
            }
            total += series.len() as u64;
            let body = remote_write::encode_snappy(&WriteRequest {
                timeseries: series,
                metadata: vec![],
            });
            let k = tasks.len();
            tasks[t % k].push(body);
        }
    }
    (tasks, total)
}

/// Pushes every request to `url`, each task in order, retrying until 2xx.
async fn push(url: &str, tasks: &[Vec<Bytes>]) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let mut set = tokio::task::JoinSet::new();
    for bodies in tasks {
        let (client, url, bodies) = (client.clone(), url.to_owned(), bodies.clone());
        set.spawn(async move {
            let mut reported = false;
            for body in bodies {
                loop {
                    let r = client
                        .post(&url)
                        .header("Content-Encoding", "snappy")
                        .header("Content-Type", "application/x-protobuf")
                        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                        .body(body.clone())
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => break,
                        Ok(r) if !reported => {
                            reported = true;
                            let status = r.status();
                            let text = r.text().await.unwrap_or_default();
                            eprintln!("relay: {url} answered {status}: {}", text.trim());
                        }
                        Err(e) if !reported => {
                            reported = true;
                            eprintln!("relay: {url}: {e}");
                        }
                        _ => {}
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r?;
    }
    Ok(())
}

/// A relay under test: its input URL, its processes (the gateway's pid too, for Uplink).
struct Relay {
    name: String,
    url: String,
    procs: Vec<Proc>,
    gateway_pid: Option<u32>,
}

fn uplink(
    bins: &Bins,
    dir: &Path,
    out: SocketAddr,
    v2: bool,
    shards: u32,
) -> anyhow::Result<Relay> {
    harness::write_certs(dir, &["relay".into()])?;
    let rw = format!(
        "  - url: http://{out}/api/v1/write\n    name: out\n{}    \
         queue_config: {{max_shards: {shards}, max_samples_per_send: 2000}}\n",
        if v2 {
            "    protobuf_message: io.prometheus.write.v2.Request\n"
        } else {
            ""
        }
    );
    let gw = harness::start_gateway_yaml(bins, dir, &rw, "0s", "")?;
    let agent = harness::start_agent_with_args(
        bins,
        dir,
        &AgentSpec {
            self_scrape: false,
            site: "relay",
            gateway: gw.quic,
            targets: &[],
            interval: "10s",
            job: "none",
        },
        "",
        "",
        &["--web.enable-remote-write-receiver"],
    )?;
    Ok(Relay {
        name: format!(
            "uplink agent + gateway (remote write {})",
            if v2 { "2.0" } else { "1.0" }
        ),
        url: format!("http://{}/api/v1/write", agent.web),
        gateway_pid: Some(gw.proc.child.id()),
        procs: vec![agent.proc, gw.proc],
    })
}

fn vmagent(peer: Peer, dir: &Path, out: SocketAddr) -> anyhow::Result<Relay> {
    let (proc, web) =
        harness::spawn_vmagent_of(peer, dir, &format!("http://{out}/api/v1/write"), &[])?;
    Ok(Relay {
        name: format!("{} (remote write 1.0)", peer.label()),
        url: format!("http://{web}/api/v1/write"),
        procs: vec![proc],
        gateway_pid: None,
    })
}

fn prometheus_agent(peer: Peer, dir: &Path, out: SocketAddr) -> anyhow::Result<Relay> {
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!("remote_write:\n  - url: http://{out}/api/v1/write\n"),
    )?;
    let prom = harness::spawn_prometheus_agent_of(
        peer,
        dir,
        &cfg,
        &["--web.enable-remote-write-receiver"],
    )?;
    Ok(Relay {
        name: format!("{} agent (remote write 1.0)", peer.label()),
        url: format!("http://{}/api/v1/write", prom.web),
        procs: vec![prom.proc],
        gateway_pid: None,
    })
}

/// Runs every relay on the same input, one after the other.
pub async fn run(args: RelayArgs) -> anyhow::Result<Vec<RelayFigures>> {
    let bins = Bins::locate()?;
    let tmp = tempfile::tempdir()?;
    let root = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    let mut out = Vec::new();
    for which in args.relays.iter().map(String::as_str) {
        let peer = match which {
            "vmagent" => Some(Peer::Vmagent),
            "vmagent1" => Some(Peer::Vmagent1),
            "prometheus" => Some(Peer::Prometheus),
            "prometheus2" => Some(Peer::Prometheus2),
            _ => None,
        };
        if let Some(p) = peer.filter(|p| !p.installed()) {
            eprintln!("relay: {} not installed, skipped", p.label());
            continue;
        }
        let dir = root.join(which);
        std::fs::create_dir_all(&dir)?;
        let capture = Capture::start_counting(harness::free_addr()?).await?;
        let tcp = TcpProxy::start(harness::free_addr()?, capture.addr()).await?;
        let relay = tokio::task::block_in_place(|| match which {
            "uplink-1.0" => uplink(&bins, &dir, tcp.addr, false, args.gateway_max_shards),
            "uplink-2.0" => uplink(&bins, &dir, tcp.addr, true, args.gateway_max_shards),
            _ => match peer {
                Some(p) if p.is_prometheus() => prometheus_agent(p, &dir, tcp.addr),
                Some(p) => vmagent(p, &dir, tcp.addr),
                None => anyhow::bail!("unknown relay {which:?}"),
            },
        })
        .with_context(|| format!("starting {which}"))?;
        let (tasks, total) = input(&args);
        eprintln!(
            "relay: {which}: {total} samples in {} requests",
            tasks.iter().map(Vec::len).sum::<usize>()
        );
        let pids: Vec<u32> = relay.procs.iter().map(|p| p.child.id()).collect();
        let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
        let (cpu0, gw0) = (cpu(&pids), relay.gateway_pid.map(cpu_seconds));
        let started = Instant::now();
        push(&relay.url, &tasks).await?;
        let deadline = started + args.timeout.0;
        while capture.report().samples < total {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{which}: {} of {total} samples after {:?}",
                capture.report().samples,
                args.timeout.0
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu_used = cpu(&pids) - cpu0;
        let gw_used = relay
            .gateway_pid
            .map(|p| cpu_seconds(p) - gw0.unwrap_or(0.0));
        let samples = capture.report().samples;
        let bytes = tcp
            .counters
            .up_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        let rss = pids.iter().map(|p| peak_rss_mib(*p)).sum();
        let f = RelayFigures {
            relay: relay.name.clone(),
            samples,
            wall_seconds: wall,
            cpu_seconds: cpu_used,
            samples_per_cpu_second: samples as f64 / cpu_used.max(1e-9),
            gateway_samples_per_cpu_second: gw_used.map(|g| samples as f64 / g.max(1e-9)),
            out_bytes_per_sample: bytes as f64 / samples.max(1) as f64,
            peak_rss_mib: rss,
        };
        eprintln!("relay: {f:?}");
        out.push(f);
        drop(relay);
    }
    Ok(out)
}

/// The figures as a Markdown table, with ratios against Uplink 1.0.
pub fn markdown(figures: &[RelayFigures]) -> String {
    let mut s = String::from(
        "| relay | samples | wall s | CPU s | samples per CPU second | gateway samples per CPU second | bytes/sample out | peak RSS MiB |\n|---|---|---|---|---|---|---|---|\n",
    );
    for f in figures {
        s.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.0} | {} | {:.3} | {:.1} |\n",
            f.relay,
            f.samples,
            f.wall_seconds,
            f.cpu_seconds,
            f.samples_per_cpu_second,
            f.gateway_samples_per_cpu_second
                .map_or("".into(), |g| format!("{g:.0}")),
            f.out_bytes_per_sample,
            f.peak_rss_mib
        ));
    }
    s
}
