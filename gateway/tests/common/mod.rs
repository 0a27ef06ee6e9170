//! Helpers shared by the gateway's integration tests: an in-process gateway with a capture
//! receiver behind it, and a hand-driven agent side of the protocol.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use uplink_loadtest::capture::Capture;
use uplink_loadtest::harness;
use uplink_shared::remote_write::{self, Label, Sample, TimeSeries, WriteRequest};
use uplink_shared::tls::{self, TlsFiles};
use uplink_shared::wire::{self, Batch, CloseCode, Encoding, Frame, Hello};

pub struct Setup {
    pub _dir: tempfile::TempDir,
    pub dir: std::path::PathBuf,
    pub quic: SocketAddr,
    pub capture: Capture,
    pub stop: CancellationToken,
    /// The gateway's `run`, to wait for an orderly stop.
    pub run: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub config: std::path::PathBuf,
    /// The gateway's web listener (`/metrics`).
    pub web: SocketAddr,
}

impl Setup {
    /// Stops the gateway in order and starts it again on the same configuration and store.
    pub async fn restart(&mut self) {
        self.restart_with(|_| {}).await;
    }

    /// As [`Setup::restart`], running `between` on the directory while the gateway is down.
    pub async fn restart_with(&mut self, between: impl FnOnce(&Path)) {
        self.stop.cancel();
        (&mut self.run).await.unwrap().unwrap();
        between(&self.dir);
        let (stop, run, web) = run_gateway(&self.config).await;
        self.stop = stop;
        self.run = run;
        self.web = web;
    }
}

async fn run_gateway(
    config: &Path,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
    SocketAddr,
) {
    let cfg = uplink_gateway::config::Config::load(config).unwrap();
    let stop = CancellationToken::new();
    let web = harness::free_addr().unwrap();
    let traces = uplink_shared::traces::Traces::new("uplink-gateway");
    let run = tokio::spawn(uplink_gateway::run(cfg, web, stop.clone(), traces));
    tokio::task::block_in_place(|| harness::wait_ready(web, Duration::from_secs(10))).unwrap();
    (stop, run, web)
}

/// Development PKI (rcgen): agents `good` and `bad`, plus a foreign CA in `other/` with agent
/// `intruder`.
pub async fn setup_with_dev_pki() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    harness::write_certs(&path, &["good".into(), "bad".into()]).unwrap();
    // A second CA whose agents the gateway must refuse.
    let other = path.join("other");
    harness::write_certs(&other, &["intruder".into()]).unwrap();
    start(dir).await
}

/// Starts a gateway on the certificates already in `dir` (`gateway.crt/key`, `ca.crt`).
pub async fn start(dir: tempfile::TempDir) -> Setup {
    start_with(dir, "").await
}

/// As [`start`], with extra top-level configuration (YAML lines).
pub async fn start_with(dir: tempfile::TempDir, extra: &str) -> Setup {
    start_with_tls(dir, "", extra).await
}

/// As [`start_with`], with extra keys for the `tls:` mapping (e.g. `crl_file: ca.crl`).
pub async fn start_with_tls(dir: tempfile::TempDir, tls_extra: &str, extra: &str) -> Setup {
    start_full(dir, tls_extra, "", extra).await
}

/// As [`start_with_tls`], with extra keys for the `limits:` mapping too.
pub async fn start_full(
    dir: tempfile::TempDir,
    tls_extra: &str,
    limits_extra: &str,
    extra: &str,
) -> Setup {
    let more = |e: &str| {
        if e.is_empty() {
            String::new()
        } else {
            format!(", {e}")
        }
    };
    let (tls_extra, limits_extra) = (more(tls_extra), more(limits_extra));
    let path = dir.path().to_path_buf();
    let capture = Capture::start(harness::free_addr().unwrap()).await.unwrap();
    let quic = harness::free_addr().unwrap();
    let cfg_path = path.join("gateway.yml");
    std::fs::write(
        &cfg_path,
        format!(
            "listen_address: {quic}\n\
             tls: {{cert_file: gateway.crt, key_file: gateway.key, ca_file: ca.crt{tls_extra}}}\n\
             limits: {{max_batch_bytes: 65536, handshake_timeout: 1s, max_retry_duration: 1s{limits_extra}}}\n\
             storage: {{directory: store, fsync: false, drain_timeout: 1s}}\n\
             remote_write:\n  - url: {}\n    queue_config: {{min_backoff: 20ms, max_backoff: 200ms}}\n{extra}",
            capture.url()
        ),
    )
    .unwrap();
    let (stop, run, web) = run_gateway(&cfg_path).await;
    Setup {
        _dir: dir,
        dir: path,
        quic,
        capture,
        stop,
        run,
        config: cfg_path,
        web,
    }
}

pub async fn connect(
    dir: &Path,
    site: &str,
    quic: SocketAddr,
) -> Result<quinn::Connection, String> {
    let files = TlsFiles::new(
        dir.join(format!("{site}.crt")),
        dir.join(format!("{site}.key")),
        dir.join("ca.crt"),
    );
    let transport = tls::transport(Duration::from_secs(1), Duration::from_secs(5));
    let client = tls::quic_client(&files, transport).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(client);
    let conn = ep
        .connect(quic, "localhost")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

pub fn hello(version: u16, resume_seq: u64) -> Bytes {
    Frame::Hello(Hello {
        version,
        queue_id: 1,
        resume_seq,
        agent: "test".into(),
    })
    .to_bytes()
}

/// Opens the control stream and completes the handshake (resume at sequence 0).
pub async fn handshake(conn: &quinn::Connection) -> (quinn::SendStream, quinn::RecvStream, String) {
    handshake_at(conn, 0).await
}

/// Opens the control stream and completes the handshake, announcing `resume_seq`.
pub async fn handshake_at(
    conn: &quinn::Connection,
    resume_seq: u64,
) -> (quinn::SendStream, quinn::RecvStream, String) {
    let (send, recv, w) = welcome(conn, resume_seq).await;
    (send, recv, w.identity)
}

/// As [`handshake_at`], returning the whole welcome.
pub async fn welcome(
    conn: &quinn::Connection,
    resume_seq: u64,
) -> (quinn::SendStream, quinn::RecvStream, wire::Welcome) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&hello(wire::VERSION, resume_seq))
        .await
        .unwrap();
    let f = uplink_shared::quic::read_frame(&mut recv, 4096, Duration::from_secs(5))
        .await
        .unwrap();
    let Frame::Welcome(w) = f else {
        panic!("expected welcome, got {f:?}")
    };
    (send, recv, w)
}

pub async fn close_code(conn: &quinn::Connection) -> Option<CloseCode> {
    match tokio::time::timeout(Duration::from_secs(10), conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => {
            CloseCode::from_u64(c.error_code.into_inner())
        }
        other => panic!("expected an application close, got {other:?}"),
    }
}

pub fn batch(first_seq: u64, count: u32, value: f64) -> Bytes {
    let req = WriteRequest {
        timeseries: vec![TimeSeries {
            labels: vec![Label::new("__name__", "m"), Label::new("site", "good")],
            samples: vec![Sample {
                value,
                timestamp: 1000 + first_seq as i64,
            }],
            ..Default::default()
        }],
        metadata: vec![],
    };
    Frame::Batch(Batch {
        first_seq,
        count,
        encoding: Encoding::RemoteWriteV1Snappy,
        trace: None,
        payload: remote_write::encode_snappy(&req),
    })
    .to_bytes()
}

pub async fn send_batch(conn: &quinn::Connection, frame: Bytes) -> wire::Ack {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&frame).await.unwrap();
    send.finish().unwrap();
    match uplink_shared::quic::read_only_frame(&mut recv, 4096)
        .await
        .unwrap()
    {
        Frame::Ack(a) => a,
        other => panic!("expected ack, got {other:?}"),
    }
}

/// Waits up to 10 s for `cond`.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
