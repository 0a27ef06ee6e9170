//! `uplink-agent`: scrape like Prometheus, queue durably in RocksDB, ship over one outbound
//! mTLS QUIC connection.
//!
//! Data flow: [`scrape`] (one task per target) → [`queue`] (RocksDB; a scrape is collected once
//! appended) → [`ship`] (batches on QUIC streams; records are deleted only when acknowledged).
//! With `--web.enable-remote-write-receiver`, [`receive`] is a second source: remote-write
//! requests are appended to the same queue before they are answered.
//!
//! Shutdown order: stop scraping (each target finishes the append it is doing), then stop the
//! shipper (no new batches; wait for the acks in flight; close with code 0), flush the queue's
//! WAL, stop the web endpoints.

pub mod api;
pub mod config;
pub mod discovery;
pub mod effective;
pub use uplink_shared::http_client;
pub mod metrics;
pub mod queue;
pub mod receive;
pub use uplink_shared::relabel;
pub mod scrape;
pub mod ship;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use uplink_shared::web::{self, WebState};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::queue::Queue;

/// The web listener's command-line options.
#[derive(Clone, Copy, Debug)]
pub struct WebOptions {
    /// `--web.listen-address`.
    pub listen_address: SocketAddr,
    /// `--web.enable-remote-write-receiver`: serve `POST /api/v1/write` ([`receive`]).
    pub enable_remote_write_receiver: bool,
}

/// Runs the agent until `shutdown` is cancelled, then shuts down in order.
///
/// `source` is where `cfg` came from: SIGHUP and `POST /-/reload` read it again. A valid new
/// configuration replaces the scrapers (targets, intervals, labels) without touching the queue
/// or the gateway connection; changes to the `uplink:` section need a restart (logged). An
/// invalid one keeps the running configuration and reports the error.
pub async fn run(
    cfg: Config,
    source: config::Source,
    web: WebOptions,
    shutdown: CancellationToken,
    traces: uplink_shared::traces::Traces,
) -> anyhow::Result<()> {
    traces
        .apply(cfg.tracing.as_ref())
        .context("configuring traces")?;
    warn_accepted_only(&cfg);
    if cfg.uplink.queue.fsync.is_some() {
        warn!("uplink.queue.fsync is deprecated: use sync: always or sync: interval.");
    }
    let dir = cfg.uplink.queue.directory.clone();
    let opts = queue::QueueOptions {
        inspect: record_info,
        ..cfg.uplink.queue.options()
    };
    let queue = tokio::task::spawn_blocking(move || Queue::open_with(&dir, opts))
        .await?
        .with_context(|| format!("opening queue at {}", cfg.uplink.queue.directory.display()))?;
    let (records, bytes) = queue.usage();
    info!(
        records,
        bytes,
        first = queue.head() - records,
        "Queue opened."
    );

    let metrics = Metrics::default();
    metrics.queue_records.set(records as i64);
    metrics.queue_bytes.set(bytes as i64);
    metrics
        .queue_max_bytes
        .set(i64::try_from(cfg.uplink.queue.max_bytes).unwrap_or(i64::MAX));
    publish_expiry(&metrics, &cfg.uplink.tls);
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<web::ReloadRequest>(4);
    spawn_sighup(reload_tx.clone());
    if let Some(every) = source.auto_reload {
        spawn_auto_reload(reload_tx.clone(), source.clone(), every, shutdown.clone());
    }
    let receiver = web
        .enable_remote_write_receiver
        .then(|| receive::Receiver::new(&cfg, queue.clone(), metrics.clone(), shutdown.clone()));
    let scrape_token = CancellationToken::new();
    let scrapers = TaskTracker::new();
    let base = source
        .prometheus
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let mut manager = scrape::manager::Manager::new(
        scrape::Context {
            queue: queue.clone(),
            metrics: metrics.clone(),
        },
        base,
        scrapers.clone(),
        scrape_token.clone(),
    );
    let api = api::Api {
        targets: manager.view.clone(),
        config: Arc::new(std::sync::RwLock::new(effective::yaml(
            &cfg,
            &source.prometheus,
        ))),
    };
    let mut routes = api.clone().router();
    if let Some(r) = &receiver {
        routes = routes.merge(r.router());
    }
    let web_state = WebState {
        registry: Arc::new(registry),
        ready: ready.clone(),
        reload: Some(reload_tx),
        routes: Some(routes),
    };
    metrics.config_last_reload_successful.set(1);
    metrics
        .config_last_reload_success_timestamp
        .set(unix_seconds());

    let timers = (
        cfg.uplink.shipper.keep_alive.0,
        cfg.uplink.shipper.idle_timeout.0,
    );
    let transport = uplink_shared::tls::transport(timers.0, timers.1);
    let client = uplink_shared::tls::quic_client(&cfg.uplink.tls, transport)
        .context("building the QUIC client configuration")?;
    let (client_tx, client) = tokio::sync::watch::channel(client);

    let web_token = CancellationToken::new();
    let mut web_task = tokio::spawn(web::serve(web.listen_address, web_state, web_token.clone()));

    let cfg = Arc::new(cfg);
    manager.apply(Arc::new(cfg.with_self_scrape(web.listen_address)));
    info!(jobs = cfg.scrape_configs.len(), "Scraping started.");

    let ship_token = CancellationToken::new();
    let shipper = ship::Shipper {
        gateways: cfg.uplink.gateways.clone(),
        server_name: cfg.server_name(),
        client,
        cfg: cfg.uplink.shipper.clone(),
        queue: queue.clone(),
        metrics: metrics.clone(),
    };
    let ship_task = tokio::spawn(shipper.run(ship_token.clone()));
    tokio::spawn(reload_tls(
        cfg.uplink.tls.clone(),
        timers,
        client_tx,
        metrics.clone(),
        ship_token.clone(),
    ));
    let health_task = tokio::spawn(queue_health(
        queue.clone(),
        metrics.clone(),
        ship_token.clone(),
    ));
    let retention_task = tokio::spawn(retention(
        queue.clone(),
        cfg.uplink.queue.max_bytes,
        cfg.uplink.queue.max_age.map(|d| d.0),
        metrics.clone(),
        ship_token.clone(),
    ));
    ready.store(true, Ordering::Release);

    let started_uplink = cfg.uplink.clone();
    let mut running = cfg;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = &mut web_task => {
                // The web server ended on its own: that is a bind failure or a crash.
                shutdown.cancel();
                r?.context("web endpoints failed")?;
                return Ok(());
            }
            Some(reply) = reload_rx.recv() => {
                let loaded = Config::load_from(&source).map_err(|e| e.to_string()).and_then(|new| {
                    traces.apply(new.tracing.as_ref()).map_err(|e| e.to_string())?;
                    Ok(new)
                });
                let outcome = match loaded {
                    Ok(new) => {
                        if new.uplink != running.uplink {
                            warn!("The uplink section changed; restart the agent to apply it.");
                        }
                        info!("Configuration reloaded; applying it to the scrapers.");
                        warn_accepted_only(&new);
                        if let Some(r) = &receiver {
                            r.reload(&new);
                        }
                        running = Arc::new(new);
                        manager.apply(Arc::new(running.with_self_scrape(web.listen_address)));
                        if let Ok(mut c) = api.config.write() {
                            // The uplink section in effect is the one the agent started with.
                            let shown = Config {
                                uplink: started_uplink.clone(),
                                ..(*running).clone()
                            };
                            *c = effective::yaml(&shown, &source.prometheus);
                        }
                        metrics.config_last_reload_successful.set(1);
                        metrics.config_last_reload_success_timestamp.set(unix_seconds());
                        Ok(())
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "Reloading the configuration failed; keeping the running one.");
                        metrics.config_last_reload_successful.set(0);
                        Err(e)
                    }
                };
                let _ = reply.send(outcome);
            }
        }
    }
    ready.store(false, Ordering::Release);
    info!("Stopping scrapers.");
    scrape_token.cancel();
    scrapers.close();
    scrapers.wait().await;
    info!("Stopping shipper (waiting for in-flight acks).");
    ship_token.cancel();
    ship_task.await?;
    retention_task.await?;
    health_task.await?;
    web_token.cancel();
    info!("Shutdown complete.");
    Ok(())
}

/// One warning naming every setting the agent accepts but does not act on.
fn warn_accepted_only(cfg: &Config) {
    let keys = cfg.accepted_only();
    if !keys.is_empty() {
        warn!(
            keys = keys.join(", "),
            "Configuration settings accepted but not acted on by the agent."
        );
    }
}

/// The certificates' expiry, for the expiry alert.
fn publish_expiry(metrics: &Metrics, tls: &uplink_shared::tls::TlsFiles) {
    uplink_shared::tls::publish_expiry(
        &metrics.certificate_expiry,
        &[("client", &tls.cert_file), ("ca", &tls.ca_file)],
    );
}

/// Applies changed TLS files every `uplink.tls.reload_interval` to the next connection (the
/// open one keeps its certificate); a bad file keeps the last good configuration.
async fn reload_tls(
    files: uplink_shared::tls::TlsFiles,
    (keep_alive, idle_timeout): (std::time::Duration, std::time::Duration),
    client: tokio::sync::watch::Sender<quinn::ClientConfig>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let apply = || {
        let transport = uplink_shared::tls::transport(keep_alive, idle_timeout);
        let new = uplink_shared::tls::quic_client(&files, transport)?;
        client.send_replace(new);
        publish_expiry(&metrics, &files);
        Ok(())
    };
    let reloads = metrics.tls.clone();
    uplink_shared::tls::watch_files(files.clone(), shutdown, reloads, apply).await;
}

fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Automatic reloading, as Prometheus 3's `--config.auto-reload`: every `every`, a checksum of
/// the configuration files ([`config::Source::checksum`]); a change asks for a reload (whose
/// outcome is logged, and retried only after the next change).
fn spawn_auto_reload(
    tx: web::ReloadSender,
    source: config::Source,
    every: std::time::Duration,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let checksum = |s: &config::Source| {
            let s = s.clone();
            tokio::task::spawn_blocking(move || s.checksum())
        };
        let Ok(mut last) = checksum(&source).await else {
            return;
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Ok(now) = checksum(&source).await else {
                return;
            };
            if now == last {
                continue;
            }
            last = now;
            info!("Configuration files changed; reloading.");
            let (reply, outcome) = tokio::sync::oneshot::channel();
            if tx.send(reply).await.is_err() {
                return;
            }
            let _ = outcome.await;
        }
    });
}

/// SIGHUP asks for a reload, as in Prometheus; the outcome is logged.
fn spawn_sighup(tx: web::ReloadSender) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            let (reply, outcome) = tokio::sync::oneshot::channel();
            if tx.send(reply).await.is_err() {
                return;
            }
            let _ = outcome.await;
        }
    });
    #[cfg(not(unix))]
    let _ = tx;
}

/// Enforces the queue's retention budget every second until `stop`: the oldest records go
/// first, every dropped sample is counted by reason and logged.
async fn retention(
    queue: Queue,
    max_bytes: u64,
    max_age: Option<std::time::Duration>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    if max_bytes == 0 && max_age.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Bytes first, then age, so each drop is counted under the rule that caused it.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let rules = [
            ("bytes", max_bytes, None),
            ("age", 0, max_age.map(|a| now - a.as_millis() as i64)),
        ];
        for (reason, bytes, min_ts) in rules {
            if bytes == 0 && min_ts.is_none() {
                continue;
            }
            match queue.enforce_retention(bytes, min_ts, record_info).await {
                Ok((0, _)) => {}
                Ok((records, samples)) => {
                    metrics
                        .retention_dropped
                        .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
                        .inc_by(samples);
                    metrics.samples_dropped.inc_by(samples);
                    let (left, bytes) = queue.usage();
                    metrics.queue_records.set(left as i64);
                    metrics.queue_bytes.set(bytes as i64);
                    warn!(
                        reason,
                        records,
                        samples,
                        "Queue retention budget exceeded; dropped the oldest data."
                    );
                }
                Err(error) => warn!(%error, "Enforcing the queue retention budget failed."),
            }
        }
    }
}

/// A queue record's timestamp and sample count.
fn record_info(data: &[u8]) -> Option<(i64, u64)> {
    uplink_shared::codec::ScrapeRecord::decode(data)
        .ok()
        .map(|r| (r.timestamp, r.values.len() as u64))
}

/// Copies the queue's health (degraded, memory buffer, write errors, quarantine) into the
/// metrics every second until `stop`; the queue logs each change of state itself.
async fn queue_health(queue: Queue, metrics: Metrics, stop: CancellationToken) {
    let mut seen = queue::QueueStats::default();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = queue.stats();
        metrics.observe_queue(&seen, &now);
        seen = now;
    }
}

/// Every series stored in a queue (records decoded and joined with their series sets), for
/// tests and inspection tools. Records that cannot be decoded are skipped.
pub async fn stored_series(
    queue: &Queue,
) -> Result<Vec<uplink_shared::model::TimeSeries>, queue::QueueError> {
    use uplink_shared::codec::{self, ScrapeRecord, SeriesSet};
    let records = queue.read(0, usize::MAX, usize::MAX).await?;
    let recs: Vec<ScrapeRecord> = records
        .iter()
        .filter_map(|r| ScrapeRecord::decode(&r.data).ok())
        .collect();
    let mut ids: Vec<u64> = recs.iter().map(|r| r.set_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let sets = queue.sets(ids).await?;
    let mut out = Vec::new();
    for r in &recs {
        if let Some(set) = sets
            .get(&r.set_id)
            .and_then(|d| SeriesSet::decode(d, usize::MAX).ok())
            && let Ok(series) = codec::join(&set, r)
        {
            out.extend(series);
        }
    }
    Ok(out)
}
