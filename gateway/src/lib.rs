//! `uplink-gateway`: accept agents over mTLS QUIC, store their batches durably, forward
//! standard Prometheus remote write.
//!
//! Data flow: [`accept`] (QUIC endpoint; identity from the client certificate; one task per
//! connection, one per batch stream; a per-connection sequencer) → [`store`] (RocksDB: one
//! atomic write per batch holds its remote-write body, queued for every destination, and the
//! agent queue's dedupe cursor; then the agent gets its ack) → [`fanout`] (one forwarder per
//! destination reads the log from its own cursor) → [`forward`] (one tower stack per
//! destination; remote write 1.0). The [`ledger`] writes the gateway's own per-site freshness
//! series straight to each destination.
//!
//! Invariants: an ack means the batch is in the store (synced when `storage.fsync`); a
//! destination's cursor moves only after it answered; a destination that is down delays no
//! ack and no other destination.
//!
//! Shutdown order: refuse new agents; sessions stop taking batches, store and ack those
//! received, close with code 7 (going away); the ledger stops; the forwarders drain their
//! backlogs for up to `storage.drain_timeout`, then stop (a request in flight is resent after
//! the restart); the store is flushed; the web endpoints stop.

pub mod accept;
pub mod certs_cmd;
pub mod config;
pub mod dedupe;
pub mod etcd;
pub mod fanout;
pub mod forward;
pub mod ha;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod quarantine;
pub mod scratch;
pub mod status;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uplink_shared::web::{self, WebState};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;

/// Runs the gateway until `shutdown`.
pub async fn run(
    cfg: Config,
    web_addr: SocketAddr,
    shutdown: CancellationToken,
    traces: uplink_shared::traces::Traces,
) -> anyhow::Result<()> {
    traces
        .apply(cfg.tracing.as_ref())
        .context("configuring traces")?;
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    metrics
        .storage_max_bytes
        .set(i64::try_from(cfg.storage.max_bytes).unwrap_or(i64::MAX));
    publish_expiry(&metrics, &cfg.tls);
    let destinations = cfg
        .remote_write
        .iter()
        .map(|rw| {
            forward::Destination::new(
                rw,
                cfg.tenancy.as_ref(),
                cfg.limits.max_retry_duration.0,
                metrics.clone(),
            )
            .with_context(|| format!("remote_write {}", rw.url))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let store = open_store(&cfg, &metrics).await?;
    let transport = transport(&cfg.limits);
    let server = uplink_shared::tls::quic_server(
        &cfg.tls,
        transport,
        cfg.limits.max_streams_per_agent.get(),
    )
    .context("building the QUIC server configuration")?;
    let endpoint = bind(&cfg, server, &store)
        .with_context(|| format!("binding QUIC endpoint on {}", cfg.listen_address))?;
    info!(address = %endpoint.local_addr()?, "Accepting agents.");

    let ready = Arc::new(AtomicBool::new(true));
    let web_token = CancellationToken::new();
    let ledger = Arc::new(ledger::Ledger::default());
    let mut web_task = tokio::spawn(web::serve(
        web_addr,
        WebState {
            registry: Arc::new(registry),
            ready: ready.clone(),
            reload: None,
            routes: Some(status::routes(ledger.clone())),
        },
        web_token.clone(),
    ));
    let fan = Fanout::start(&cfg, &destinations, &store, &metrics, &ledger);
    let ha = match &cfg.ha {
        Some(h) => Some(Arc::new(
            ha::Tracker::new(h, metrics.clone()).context("building the HA tracker")?,
        )),
        None => None,
    };
    let shared_cursors = match &cfg.dedupe {
        Some(d) => Some(Arc::new(
            dedupe::SharedCursors::new(d).context("building the shared dedupe cursors")?,
        )),
        None => None,
    };
    let ctx = Arc::new(accept::Context {
        limits: cfg.limits.clone(),
        store: store.clone(),
        metrics,
        ledger: ledger.clone(),
        lanes: Default::default(),
        ack: cfg.storage.ack,
        identity: cfg.identity.clone(),
        tenancy: cfg.tenancy.clone(),
        rates: limits::TenantLimits::new(cfg.tenancy.as_ref()),
        ha,
        shared_cursors,
        conns: Default::default(),
        handshakes: Default::default(),
        series_budgets: cfg
            .tenancy
            .iter()
            .flat_map(|t| &t.tenants)
            .filter_map(|(id, t)| {
                let max = t.max_series?;
                let budget = limits::SeriesBudget::new(max, limits::ACTIVE_WINDOW);
                Some((id.clone(), Arc::new(budget)))
            })
            .collect(),
    });
    let ledger_token = CancellationToken::new();
    if !cfg.ledger.interval.0.is_zero() {
        tokio::spawn(ledger::run_writer(
            ledger,
            destinations,
            cfg.ledger.interval.0,
            cfg.ledger.labels.clone(),
            cfg.ledger.forget_after.0,
            ledger_token.clone(),
        ));
    }
    let accept_token = CancellationToken::new();
    tokio::spawn(reload_tls(
        cfg.clone(),
        endpoint.clone(),
        ctx.clone(),
        accept_token.clone(),
    ));
    let mut accept_task = tokio::spawn(accept::serve(endpoint, ctx, accept_token.clone()));
    let web_result = tokio::select! {
        _ = shutdown.cancelled() => None,
        r = &mut web_task => Some(r),
        r = &mut accept_task => {
            r?;
            anyhow::bail!("QUIC endpoint stopped unexpectedly");
        }
    };
    ready.store(false, Ordering::Release);
    info!("Refusing new agents; acknowledging the batches received.");
    accept_token.cancel();
    accept_task.await?;
    ledger_token.cancel();
    fan.drain(cfg.storage.drain_timeout.0).await;
    store.flush().await.context("flushing the store")?;
    match web_result {
        Some(r) => r?.context("web endpoints failed")?,
        None => {
            web_token.cancel();
            let _ = web_task.await;
        }
    }
    info!("Shutdown complete.");
    Ok(())
}

/// QUIC transport settings for agents: the agents' idle timeout, and receive windows bounded by
/// what an agent may legitimately have in flight (one batch frame per stream, a few bytes of
/// control), so a peer cannot make the gateway buffer more.
fn transport(l: &config::Limits) -> quinn::TransportConfig {
    let mut t = uplink_shared::tls::transport(l.keep_alive.0, l.idle_timeout.0);
    let frame = u64::from(l.max_batch_bytes.get()) + 64;
    let stream = quinn::VarInt::from_u64(frame).unwrap_or(quinn::VarInt::MAX);
    let conn = quinn::VarInt::from_u64(frame * (u64::from(l.max_streams_per_agent.get()) + 1))
        .unwrap_or(quinn::VarInt::MAX);
    t.stream_receive_window(stream);
    t.receive_window(conn);
    t
}

/// The certificates' expiry, for the expiry alert.
fn publish_expiry(metrics: &Metrics, tls: &uplink_shared::tls::TlsFiles) {
    uplink_shared::tls::publish_expiry(
        &metrics.certificate_expiry,
        &[("server", &tls.cert_file), ("client_ca", &tls.ca_file)],
    );
}

/// Applies changed TLS files every `tls.reload_interval`: new connections get the new
/// certificate, CA bundle and CRL; open connections keep theirs, except those the new CRL
/// revokes, which are closed (code 4). A bad file keeps the last good configuration.
async fn reload_tls(
    cfg: Config,
    endpoint: quinn::Endpoint,
    ctx: Arc<accept::Context>,
    shutdown: CancellationToken,
) {
    let files = cfg.tls.clone();
    let metrics = ctx.metrics.clone();
    let apply = || {
        let server = uplink_shared::tls::quic_server(
            &files,
            transport(&cfg.limits),
            cfg.limits.max_streams_per_agent.get(),
        )?;
        let revoked = uplink_shared::tls::revoked(&files)?;
        endpoint.set_server_config(Some(server));
        publish_expiry(&metrics, &files);
        let closed = ctx.close_revoked(&revoked);
        metrics.revoked_disconnects.inc_by(closed as u64);
        Ok(())
    };
    let reloads = metrics.tls.clone();
    uplink_shared::tls::watch_files(cfg.tls.clone(), shutdown, reloads, apply).await;
}

/// Binds the QUIC endpoint. Its stateless-reset key and connection-id key come from the store,
/// so after a crash the new process recognises the old process's connection ids and answers
/// their packets with a reset the agents accept: they reconnect at once instead of after their
/// idle timeout.
fn bind(
    cfg: &Config,
    server: quinn::ServerConfig,
    store: &Store,
) -> anyhow::Result<quinn::Endpoint> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &store.reset_key());
    let tag = ring::hmac::sign(&key, b"uplink connection ids");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&tag.as_ref()[..8]);
    let cid_key = u64::from_be_bytes(cid_key);
    let mut endpoint = quinn::EndpointConfig::new(Arc::new(key));
    endpoint.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let socket = std::net::UdpSocket::bind(cfg.listen_address)?;
    let runtime = quinn::default_runtime().context("no async runtime")?;
    Ok(quinn::Endpoint::new(
        endpoint,
        Some(server),
        socket,
        runtime,
    )?)
}

/// Opens the store on the blocking pool and reports destinations no longer configured. A
/// corrupt one never crash-loops the gateway: it is moved aside to
/// `<dir>.corrupt-<unix seconds>` (its backlog kept there, not delivered; its dedupe cursors
/// gone, so agents' retransmissions may be stored twice: duplicates, not loss), logged, counted
/// in `uplink_gateway_store_quarantined_total`, and a fresh store is opened.
async fn open_store(cfg: &Config, metrics: &Metrics) -> anyhow::Result<Store> {
    let dir = cfg.storage.directory.clone();
    let (fsync, names) = (
        cfg.storage.fsync,
        cfg.remote_write
            .iter()
            .map(|rw| rw.display_name())
            .collect::<Vec<_>>(),
    );
    let open = {
        let (dir, names) = (dir.clone(), names.clone());
        move || Store::open(&dir, fsync, &names)
    };
    let opened = match tokio::task::spawn_blocking(open).await? {
        Err(e) if e.is_corruption() => {
            let mut name = dir.file_name().unwrap_or_default().to_os_string();
            name.push(format!(".corrupt-{}", store::now_ms() / 1000));
            let to = dir.with_file_name(name);
            std::fs::rename(&dir, &to)
                .with_context(|| format!("moving the corrupt store {} aside", dir.display()))?;
            tracing::error!(error = %e, store = %dir.display(), moved_to = %to.display(),
                "The store is corrupt; it was moved aside and a new one started. Its backlog \
                 is not delivered; agents' retransmissions may be stored twice.");
            metrics.store_quarantined.inc();
            tokio::task::spawn_blocking(move || Store::open(&dir, fsync, &names)).await?
        }
        other => other,
    };
    let (store, removed) = opened
        .with_context(|| format!("opening the store at {}", cfg.storage.directory.display()))?;
    for r in removed {
        warn!(destination = %r.name, entries = r.entries, samples = r.samples,
            "Destination no longer configured; what it had not received is dropped.");
    }
    let (entries, bytes) = (0..cfg.remote_write.len())
        .map(|i| store.usage(i))
        .fold((0, 0), |(e, b), u| (e.max(u.entries), b.max(u.bytes)));
    info!(directory = %cfg.storage.directory.display(), entries, bytes,
        "Store open (largest destination backlog).");
    Ok(store)
}

/// The forwarders and the retention task, with their shutdown tokens.
struct Fanout {
    forwarders: tokio::task::JoinSet<()>,
    retention: tokio::task::JoinHandle<()>,
    drain: CancellationToken,
    stop: CancellationToken,
}

impl Fanout {
    fn start(
        cfg: &Config,
        destinations: &[forward::Destination],
        store: &Store,
        metrics: &Metrics,
        ledger: &Arc<ledger::Ledger>,
    ) -> Fanout {
        let (drain, stop) = (CancellationToken::new(), CancellationToken::new());
        let quarantine = quarantine::Quarantine::new(
            cfg.storage.directory.join("quarantine"),
            cfg.storage.quarantine_max_bytes,
            metrics.clone(),
        );
        let mut forwarders = tokio::task::JoinSet::new();
        let mut budgets = Vec::new();
        for (index, (d, rw)) in destinations.iter().zip(&cfg.remote_write).enumerate() {
            let f = fanout::Forwarder::new(
                index,
                rw,
                d.clone(),
                store.clone(),
                ledger.clone(),
                metrics.clone(),
                quarantine.clone(),
            );
            forwarders.spawn(f.run(drain.clone(), stop.clone()));
            budgets.push(fanout::Budget {
                name: d.name.clone(),
                max_bytes: cfg.storage.max_bytes,
                max_age: cfg.storage.max_age.map(|a| a.0),
            });
        }
        let retention = tokio::spawn(fanout::run_retention(
            store.clone(),
            budgets,
            metrics.clone(),
            ledger.clone(),
            stop.clone(),
        ));
        Fanout {
            forwarders,
            retention,
            drain,
            stop,
        }
    }

    /// Lets the forwarders empty their backlogs for up to `grace`, then stops everything.
    async fn drain(mut self, grace: std::time::Duration) {
        info!(?grace, "Draining destination backlogs.");
        self.drain.cancel();
        let all = async { while self.forwarders.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_err() {
            warn!("Backlogs not drained in time; they are delivered after the restart.");
        }
        self.stop.cancel();
        while self.forwarders.join_next().await.is_some() {}
        let _ = self.retention.await;
    }
}
