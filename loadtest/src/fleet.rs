//! `uplink-loadtest fleet`: many sites against one gateway.
//!
//! Simulated agents share this process (one task per site, a few QUIC endpoints) but each has
//! its own certificate and identity, its own QUIC connection, and speaks the real protocol with
//! the real codec: hello, a compact batch per scrape interval, acks, reconnect with jittered
//! exponential backoff. The gateway is the real binary, writing to a counting receiver.
//!
//! Measured: time for the whole fleet to connect; gateway RSS per connection (with every site
//! connected, sending a batch per interval); gateway CPU; end-to-end latency p50/p99 from
//! scrape timestamp to acceptance by the receiver; and the reconnect storm after a gateway
//! restart (time until every site is connected again; nobody gives up).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use tokio_util::sync::CancellationToken;
use uplink_shared::codec::{ScrapeRecord, SeriesSet, TunnelEncoder};
use uplink_shared::model::Label;
use uplink_shared::tls::{self, TlsFiles};
use uplink_shared::wire::{self, AckStatus, Batch, Encoding, Frame, Hello};

use crate::capture::Capture;
use crate::compare::cpu_seconds;
use crate::harness::now_ms;
use crate::harness::{self, Bins};

/// Settings of a fleet run.
#[derive(clap::Args, Debug, Clone)]
pub struct FleetArgs {
    /// Number of sites.
    #[arg(long, default_value_t = 1000)]
    pub sites: usize,
    /// Series per site.
    #[arg(long, default_value_t = 100)]
    pub series: usize,
    /// Scrape interval of every site.
    #[arg(long, default_value = "10s")]
    pub interval: uplink_shared::duration::PromDuration,
    /// How long the connected fleet runs before the gateway restart.
    #[arg(long, default_value = "60s")]
    pub run: uplink_shared::duration::PromDuration,
    /// QUIC endpoints (UDP sockets) the simulated sites share.
    #[arg(long, default_value_t = 4)]
    pub endpoints: usize,
}

/// Results.
#[derive(Debug, serde::Serialize)]
pub struct FleetReport {
    pub sites: usize,
    pub series_per_site: usize,
    pub connect_all_seconds: f64,
    pub gateway_rss_base_mib: f64,
    pub gateway_rss_connected_mib: f64,
    pub gateway_rss_per_connection_kib: f64,
    pub gateway_cpu_seconds: f64,
    pub samples_delivered: u64,
    pub latency_p50_ms: u32,
    pub latency_p99_ms: u32,
    pub reconnect_all_seconds: f64,
    pub connection_attempts: u64,
}

#[derive(Default)]
struct Stats {
    connected: AtomicUsize,
    attempts: AtomicU64,
}

fn rss_mib(pid: u32) -> f64 {
    crate::harness::status_mib(pid, "VmRSS")
}

struct Site {
    client: quinn::ClientConfig,
    set_id: u64,
    def: Bytes,
    series: usize,
}

async fn site_loop(
    site: Site,
    endpoint: quinn::Endpoint,
    gw: SocketAddr,
    interval: Duration,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let queue_id: u64 = rand::random();
    let mut seq = 0u64;
    let mut backoff = Duration::from_millis(100);
    let defs: HashMap<u64, Bytes> = HashMap::from([(site.set_id, site.def.clone())]);
    while !stop.is_cancelled() {
        stats.attempts.fetch_add(1, Ordering::Relaxed);
        let conn = match endpoint.connect_with(site.client.clone(), gw, "localhost") {
            Ok(c) => c.await.ok(),
            Err(_) => None,
        };
        let Some(conn) = conn else {
            let d = backoff / 2 + rand::rng().random_range(Duration::ZERO..=backoff / 2);
            backoff = (backoff * 2).min(Duration::from_secs(5));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(d) => continue,
            }
        };
        let handshake = async {
            let (mut send, mut recv) = conn.open_bi().await.ok()?;
            let hello = Frame::Hello(Hello {
                version: wire::VERSION,
                queue_id,
                resume_seq: seq,
                agent: "uplink-fleet-sim".into(),
            });
            send.write_all(&hello.to_bytes()).await.ok()?;
            let f = uplink_shared::quic::read_frame(&mut recv, 4096, Duration::from_secs(30))
                .await
                .ok()?;
            matches!(f, Frame::Welcome(_)).then_some((send, recv))
        };
        let Some(_control) = handshake.await else {
            continue;
        };
        backoff = Duration::from_millis(100);
        stats.connected.fetch_add(1, Ordering::Relaxed);
        let mut encoder = TunnelEncoder::new(3);
        let offset =
            Duration::from_millis(rand::rng().random_range(0..interval.as_millis().max(1) as u64));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    conn.close(0u32.into(), b"normal");
                    stats.connected.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                _ = conn.closed() => break,
                _ = tick.tick() => {
                    n += 1;
                    let record = ScrapeRecord {
                        set_id: site.set_id,
                        timestamp: now_ms(),
                        values: (0..site.series).map(|k| (n * (k as u64 + 1)) as f64).collect(),
                        exceptions: vec![],
                        extras: vec![],
                    };
                    let Ok((payload, _)) = encoder.encode(std::slice::from_ref(&record), &defs) else { break };
                    let batch = Batch { first_seq: seq, count: 1, encoding: Encoding::Compact, trace: None, payload };
                    let sent = async {
                        let (mut s, mut r) = conn.open_bi().await.ok()?;
                        s.write_all(&Frame::Batch(batch).to_bytes()).await.ok()?;
                        s.finish().ok()?;
                        match uplink_shared::quic::read_only_frame(&mut r, 4096).await.ok()? {
                            Frame::Ack(a) if a.status == AckStatus::Accepted => Some(()),
                            _ => None,
                        }
                    };
                    match tokio::time::timeout(Duration::from_secs(30), sent).await {
                        Ok(Some(())) => seq += 1,
                        _ => break,
                    }
                }
            }
        }
        stats.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn wait_all(stats: &Stats, n: usize, limit: Duration, what: &str) {
    let bar = crate::progress::counter(what, n as u64);
    let started = Instant::now();
    while stats.connected.load(Ordering::Relaxed) < n && started.elapsed() < limit {
        bar.set_position(stats.connected.load(Ordering::Relaxed) as u64);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish_and_clear();
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the fleet simulation.
pub async fn run(args: FleetArgs) -> anyhow::Result<FleetReport> {
    println!(
        "reproduce with: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    let bins = Bins::locate()?;
    let dir = tempfile::tempdir()?;
    let names: Vec<String> = (0..args.sites).map(|i| format!("site-{i:05}")).collect();
    eprintln!("minting {} certificates", names.len());
    tokio::task::block_in_place(|| harness::write_certs(dir.path(), &names))?;
    let capture = Capture::start_counting(harness::free_addr()?).await?;
    let mut gateway = tokio::task::block_in_place(|| {
        harness::start_gateway(&bins, dir.path(), &[capture.url()])
    })?;
    let gw_pid = gateway.proc.child.id();
    let base_rss = rss_mib(gw_pid);
    let cpu0 = cpu_seconds(gw_pid);

    let endpoints: Vec<quinn::Endpoint> = (0..args.endpoints.max(1))
        .map(|_| quinn::Endpoint::client("127.0.0.1:0".parse().expect("literal address")))
        .collect::<Result<_, _>>()?;
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let transport = || tls::transport(Duration::from_secs(5), Duration::from_secs(15));
    let started = Instant::now();
    for (i, name) in names.iter().enumerate() {
        let files = TlsFiles::new(
            dir.path().join(format!("{name}.crt")),
            dir.path().join(format!("{name}.key")),
            dir.path().join("ca.crt"),
        );
        let set = SeriesSet {
            series: (0..args.series)
                .map(|k| {
                    vec![
                        Label::new("__name__", "fleet_metric"),
                        Label::new("id", k.to_string()),
                        Label::new("site", name.clone()),
                    ]
                })
                .collect(),
            metadata: vec![],
        };
        let site = Site {
            client: tls::quic_client(&files, transport())?,
            set_id: set.id(),
            def: set.encode(),
            series: args.series,
        };
        tokio::spawn(site_loop(
            site,
            endpoints[i % endpoints.len()].clone(),
            gateway.quic,
            args.interval.0,
            stats.clone(),
            stop.clone(),
        ));
    }
    wait_all(
        &stats,
        args.sites,
        Duration::from_secs(600),
        "sites connected",
    )
    .await;
    let connect_all = started.elapsed().as_secs_f64();
    eprintln!(
        "{} sites connected in {connect_all:.1}s",
        stats.connected.load(Ordering::Relaxed)
    );
    crate::progress::wait("fleet running", args.run.0).await;
    let rss_connected = rss_mib(gw_pid);
    let cpu = cpu_seconds(gw_pid) - cpu0;

    // Reconnect storm: restart the gateway (orderly: agents see close code 7 at once).
    eprintln!("restarting the gateway");
    tokio::task::block_in_place(|| gateway.proc.terminate(Duration::from_secs(30)));
    let restarted = Instant::now();
    tokio::task::block_in_place(|| gateway.restart(dir.path(), &bins))?;
    // Give sites a moment to notice the close before counting reconnections.
    tokio::time::sleep(Duration::from_millis(200)).await;
    wait_all(
        &stats,
        args.sites,
        Duration::from_secs(600),
        "sites reconnected",
    )
    .await;
    let reconnect_all = restarted.elapsed().as_secs_f64();
    eprintln!(
        "{} sites reconnected",
        stats.connected.load(Ordering::Relaxed)
    );
    stop.cancel();

    let mut lat = capture.latencies_ms();
    lat.sort_unstable();
    let report = FleetReport {
        sites: args.sites,
        series_per_site: args.series,
        connect_all_seconds: connect_all,
        gateway_rss_base_mib: base_rss,
        gateway_rss_connected_mib: rss_connected,
        gateway_rss_per_connection_kib: (rss_connected - base_rss) * 1024.0 / args.sites as f64,
        gateway_cpu_seconds: cpu,
        samples_delivered: capture.report().samples,
        latency_p50_ms: percentile(&lat, 0.50),
        latency_p99_ms: percentile(&lat, 0.99),
        reconnect_all_seconds: reconnect_all,
        connection_attempts: stats.attempts.load(Ordering::Relaxed),
    };
    Ok(report)
}
