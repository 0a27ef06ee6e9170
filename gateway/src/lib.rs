//! `uplink-gateway`: accept agents over mTLS QUIC, forward standard Prometheus remote write.
//!
//! The [`ledger`] writes the gateway's own per-site freshness series to the destinations.
//!
//! Data flow: [`accept`] (QUIC endpoint; identity from the client certificate; one task per
//! connection, one per batch stream; a per-connection sequencer) → [`forward`] (one tower stack
//! per destination; remote write 1.0). An ack is sent to the agent only after every destination
//! accepted the batch or refused it permanently; until then the agent keeps it on disk.
//!
//! Shutdown order: stop accepting, close agent connections with code 7 (going away; batches
//! not yet acknowledged are resent by the agents elsewhere or later), stop the web endpoints.

pub mod accept;
pub mod certs_cmd;
pub mod config;
pub mod forward;
pub mod ledger;
pub mod metrics;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::info;
use uplink_shared::web::{self, WebState};

use crate::config::Config;
use crate::metrics::Metrics;

/// Runs the gateway until `shutdown`. `bound` receives the QUIC address once listening.
pub async fn run(
    cfg: Config,
    web_addr: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let destinations = cfg
        .remote_write
        .iter()
        .map(|rw| {
            forward::Destination::new(rw, cfg.limits.max_retry_duration.0, metrics.clone())
                .with_context(|| format!("remote_write {}", rw.url))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let transport =
        uplink_shared::tls::transport(cfg.limits.keep_alive.0, cfg.limits.idle_timeout.0);
    let server = uplink_shared::tls::quic_server(
        &cfg.tls,
        transport,
        cfg.limits.max_streams_per_agent.get(),
    )
    .context("building the QUIC server configuration")?;
    let endpoint = quinn::Endpoint::server(server, cfg.listen_address)
        .with_context(|| format!("binding QUIC endpoint on {}", cfg.listen_address))?;
    info!(address = %endpoint.local_addr()?, "Accepting agents.");

    let ready = Arc::new(AtomicBool::new(true));
    let web_token = CancellationToken::new();
    let mut web_task = tokio::spawn(web::serve(
        web_addr,
        WebState {
            registry: Arc::new(registry),
            ready: ready.clone(),
            reload: None,
        },
        web_token.clone(),
    ));
    let ledger = Arc::new(ledger::Ledger::default());
    let ctx = Arc::new(accept::Context {
        limits: cfg.limits.clone(),
        destinations: destinations.clone(),
        metrics,
        ledger: ledger.clone(),
        forwarded: Default::default(),
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
    let mut accept_task = tokio::spawn(accept::serve(endpoint, ctx, accept_token.clone()));
    tokio::select! {
        _ = shutdown.cancelled() => {}
        r = &mut web_task => {
            accept_token.cancel();
            r?.context("web endpoints failed")?;
            return Ok(());
        }
        r = &mut accept_task => {
            r?;
            anyhow::bail!("QUIC endpoint stopped unexpectedly");
        }
    }
    ready.store(false, Ordering::Release);
    info!("Closing agent connections.");
    accept_token.cancel();
    accept_task.await?;
    ledger_token.cancel();
    web_token.cancel();
    let _ = web_task.await;
    info!("Shutdown complete.");
    Ok(())
}
