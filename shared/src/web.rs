//! The HTTP endpoints every Uplink binary serves, following Prometheus conventions:
//! `GET /metrics` (the process's own metrics, OpenMetrics text), `GET /-/healthy` (200 while
//! the process runs), `GET /-/ready` (200 once the component can do its job, 503 before) and
//! `POST /-/reload` (re-read the configuration, as SIGHUP does). A binary may add endpoints of
//! its own ([`WebState::routes`], e.g. the agent's remote-write receiver) on the same listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// A reload request carries where to send its outcome (an error names file:line:column).
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<(), String>>;
/// The sending side of the reload channel.
pub type ReloadSender = tokio::sync::mpsc::Sender<ReloadRequest>;

/// What the endpoints read.
#[derive(Clone)]
pub struct WebState {
    pub registry: Arc<Registry>,
    pub ready: Arc<AtomicBool>,
    /// Asked on `POST /-/reload`, answered with the outcome; `None` answers 501.
    pub reload: Option<ReloadSender>,
    /// Extra endpoints served beside the common ones, with their own state and layers. Their
    /// paths must not overlap the common ones (`/metrics`, `/-/*`).
    pub routes: Option<Router>,
}

/// Parses a `--web.listen-address` value as Prometheus does: `host:port` with an IP address or
/// a host name (the first address it resolves to), `[v6]:port`, or `:port` for every interface,
/// IPv6 and IPv4 (`[::]:port`; [`serve`] falls back to IPv4 alone on a host without IPv6).
/// Used as the flag's clap value parser by both binaries.
pub fn parse_listen_address(value: &str) -> Result<SocketAddr, String> {
    if let Some(port) = value.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("invalid port in {value:?}"))?;
        return Ok(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)));
    }
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs as _;
    let mut addrs = value
        .to_socket_addrs()
        .map_err(|e| format!("{value:?} is not host:port ({e})"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{value:?} resolves to no address"))
}

/// A listener on every IPv6 and IPv4 address (`[::]` with `IPV6_V6ONLY` off, whatever the
/// host's `net.ipv6.bindv6only`), as Go's `:port` listens.
fn bind_every_address(port: u16) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The router, for embedding or tests.
pub fn router(mut state: WebState) -> Router {
    let extra = state.routes.take();
    let common = Router::new()
        .route("/metrics", get(metrics))
        .route("/-/healthy", get(|| async { "Healthy.\n" }))
        .route("/-/ready", get(ready))
        .route("/-/reload", post(reload).put(reload))
        .with_state(state);
    match extra {
        Some(extra) => common.merge(extra),
        None => common,
    }
}

/// Binds `addr` and serves until `shutdown` is cancelled. Every IPv6 address (`[::]`, what
/// `:port` means) takes IPv4 too; where the host has no IPv6, it binds every IPv4 address
/// instead.
pub async fn serve(
    addr: SocketAddr,
    state: WebState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED {
        match bind_every_address(addr.port()) {
            Ok(listener) => tokio::net::TcpListener::from_std(listener)?,
            // No IPv6 (EAFNOSUPPORT, EADDRNOTAVAIL); a port in use or forbidden fails as it is.
            Err(e)
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                tracing::info!(error = %e, "No IPv6 here; listening on IPv4 only.");
                tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], addr.port()))).await?
            }
            Err(e) => return Err(e),
        }
    } else {
        tokio::net::TcpListener::bind(addr).await?
    };
    tracing::info!(address = %listener.local_addr()?, "Web endpoints listening.");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn metrics(State(s): State<WebState>) -> impl IntoResponse {
    let mut out = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &s.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

async fn ready(State(s): State<WebState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "Ready.\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "Not ready.\n")
    }
}

async fn reload(State(s): State<WebState>) -> impl IntoResponse {
    let Some(tx) = &s.reload else {
        return (
            StatusCode::NOT_IMPLEMENTED,
            "Reload not supported.\n".to_owned(),
        );
    };
    let (reply, outcome) = tokio::sync::oneshot::channel();
    if tx.send(reply).await.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "Shutting down.\n".to_owned(),
        );
    }
    match outcome.await {
        Ok(Ok(())) => (StatusCode::OK, "Configuration reloaded.\n".to_owned()),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to reload config: {e}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Shutting down.\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_listen_address;

    #[test]
    fn listen_addresses_as_prometheus_takes_them() {
        let text = |v: &str| parse_listen_address(v).map(|a| a.to_string());
        assert_eq!(text(":9701"), Ok("[::]:9701".into()));
        assert_eq!(text("127.0.0.1:9090"), Ok("127.0.0.1:9090".into()));
        assert_eq!(text("[::1]:9090"), Ok("[::1]:9090".into()));
        assert_eq!(
            parse_listen_address("localhost:9701").map(|a| a.ip().is_loopback()),
            Ok(true)
        );
        for bad in [":", ":http", "9701", "host", ":70000"] {
            assert!(parse_listen_address(bad).is_err(), "{bad}");
        }
    }
}
