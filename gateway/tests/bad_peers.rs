//! A bad peer is disconnected with a documented close code, never panics the gateway, and
//! never affects other agents. Real QUIC, real certificates, the gateway in process, the
//! capture receiver as the destination.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use uplink_loadtest::capture::Capture;
use uplink_loadtest::harness;
use uplink_shared::remote_write::{self, Label, Sample, TimeSeries, WriteRequest};
use uplink_shared::tls::{self, TlsFiles};
use uplink_shared::wire::{self, AckStatus, Batch, CloseCode, Encoding, Frame, Hello};

struct Setup {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    quic: SocketAddr,
    capture: Capture,
    stop: CancellationToken,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    harness::write_certs(&path, &["good".into(), "bad".into()]).unwrap();
    // A second CA whose agents the gateway must refuse.
    let other = path.join("other");
    harness::write_certs(&other, &["intruder".into()]).unwrap();
    let capture = Capture::start(harness::free_addr().unwrap()).await.unwrap();
    let quic = harness::free_addr().unwrap();
    let cfg_path = path.join("gateway.yml");
    std::fs::write(
        &cfg_path,
        format!(
            "listen_address: {quic}\n\
             tls: {{cert_file: gateway.crt, key_file: gateway.key, ca_file: ca.crt}}\n\
             limits: {{max_batch_bytes: 65536, handshake_timeout: 1s, max_retry_duration: 2s}}\n\
             remote_write:\n  - url: {}\n",
            capture.url()
        ),
    )
    .unwrap();
    let cfg = uplink_gateway::config::Config::load(&cfg_path).unwrap();
    let stop = CancellationToken::new();
    let web = harness::free_addr().unwrap();
    tokio::spawn(uplink_gateway::run(cfg, web, stop.clone()));
    tokio::task::block_in_place(|| harness::wait_ready(web, Duration::from_secs(10))).unwrap();
    Setup {
        _dir: dir,
        dir: path,
        quic,
        capture,
        stop,
    }
}

async fn connect(dir: &Path, site: &str, quic: SocketAddr) -> Result<quinn::Connection, String> {
    let files = TlsFiles {
        cert_file: dir.join(format!("{site}.crt")),
        key_file: dir.join(format!("{site}.key")),
        ca_file: dir.join("ca.crt"),
    };
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

fn hello(version: u16, resume_seq: u64) -> Bytes {
    Frame::Hello(Hello {
        version,
        queue_id: 1,
        resume_seq,
        agent: "test".into(),
    })
    .to_bytes()
}

/// Opens the control stream and completes the handshake.
async fn handshake(conn: &quinn::Connection) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&hello(wire::VERSION, 0)).await.unwrap();
    let f = uplink_shared::quic::read_frame(&mut recv, 4096, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(f, Frame::Welcome(w) if w.identity == "good" || w.identity == "bad"));
    (send, recv)
}

async fn close_code(conn: &quinn::Connection) -> Option<CloseCode> {
    match tokio::time::timeout(Duration::from_secs(10), conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => {
            CloseCode::from_u64(c.error_code.into_inner())
        }
        other => panic!("expected an application close, got {other:?}"),
    }
}

fn batch(first_seq: u64, count: u32, value: f64) -> Bytes {
    let req = WriteRequest {
        timeseries: vec![TimeSeries {
            labels: vec![Label::new("__name__", "m"), Label::new("site", "good")],
            samples: vec![Sample {
                value,
                timestamp: 1000 + first_seq as i64,
            }],
        }],
        metadata: vec![],
    };
    Frame::Batch(Batch {
        first_seq,
        count,
        encoding: Encoding::RemoteWriteV1Snappy,
        payload: remote_write::encode_snappy(&req),
    })
    .to_bytes()
}

async fn send_batch(conn: &quinn::Connection, frame: Bytes) -> wire::Ack {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peers_get_close_codes_and_good_agents_carry_on() {
    let s = setup().await;

    // A good agent connects first and keeps its connection through everything below.
    let good = connect(&s.dir, "good", s.quic).await.unwrap();
    let _ctl = handshake(&good).await;
    let ack = send_batch(&good, batch(0, 1, 1.0)).await;
    assert_eq!(ack.status, AckStatus::Accepted);

    // A certificate from another CA fails the TLS handshake.
    let other = s.dir.join("other");
    let files = TlsFiles {
        cert_file: other.join("intruder.crt"),
        key_file: other.join("intruder.key"),
        ca_file: s.dir.join("ca.crt"),
    };
    let client = tls::quic_client(
        &files,
        tls::transport(Duration::from_secs(1), Duration::from_secs(5)),
    )
    .unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(client);
    let refused = ep.connect(s.quic, "localhost").unwrap().await;
    let refused_ok = match refused {
        Err(_) => true,
        // TLS 1.3: the client may finish before the server rejects its certificate.
        Ok(c) => matches!(
            tokio::time::timeout(Duration::from_secs(5), c.closed()).await,
            Ok(quinn::ConnectionError::ConnectionClosed(_)
                | quinn::ConnectionError::TransportError(_))
        ),
    };
    assert!(refused_ok, "a certificate from another CA must be refused");

    // Garbage instead of a hello: 1 (protocol violation).
    let c = connect(&s.dir, "bad", s.quic).await.unwrap();
    let (mut send, _recv) = c.open_bi().await.unwrap();
    send.write_all(&[0xee, 0, 0, 0, 1, 0]).await.unwrap();
    assert_eq!(close_code(&c).await, Some(CloseCode::ProtocolViolation));

    // Unsupported version: 3.
    let c = connect(&s.dir, "bad", s.quic).await.unwrap();
    let (mut send, _recv) = c.open_bi().await.unwrap();
    send.write_all(&hello(99, 0)).await.unwrap();
    assert_eq!(close_code(&c).await, Some(CloseCode::UnsupportedVersion));

    // No hello at all: 6 (handshake timeout, 1s here).
    let c = connect(&s.dir, "bad", s.quic).await.unwrap();
    let (_send, _recv) = c.open_bi().await.unwrap();
    assert_eq!(close_code(&c).await, Some(CloseCode::HandshakeTimeout));

    // A batch frame declaring more than max_batch_bytes: 2 (frame too large).
    let c = connect(&s.dir, "bad", s.quic).await.unwrap();
    let _ctl = handshake(&c).await;
    let (mut send, _recv) = c.open_bi().await.unwrap();
    let mut huge = vec![3u8];
    huge.extend_from_slice(&(1u32 << 20).to_be_bytes());
    huge.extend_from_slice(&[0u8; 1024]);
    let _ = send.write_all(&huge).await;
    let _ = send.finish();
    assert_eq!(close_code(&c).await, Some(CloseCode::FrameTooLarge));

    // A batch whose payload is not snappy: 1.
    let c = connect(&s.dir, "bad", s.quic).await.unwrap();
    let _ctl = handshake(&c).await;
    let (mut send, _recv) = c.open_bi().await.unwrap();
    let frame = Frame::Batch(Batch {
        first_seq: 0,
        count: 1,
        encoding: Encoding::RemoteWriteV1Snappy,
        payload: Bytes::from_static(b"\xff\xff\xff\xff\xff not snappy"),
    });
    send.write_all(&frame.to_bytes()).await.unwrap();
    send.finish().unwrap();
    assert_eq!(close_code(&c).await, Some(CloseCode::ProtocolViolation));

    // Truncated stream (the stream ends inside a frame): 1.
    let c = connect(&s.dir, "bad", s.quic).await.unwrap();
    let _ctl = handshake(&c).await;
    let (mut send, _recv) = c.open_bi().await.unwrap();
    let whole = batch(0, 1, 5.0);
    send.write_all(&whole[..whole.len() - 3]).await.unwrap();
    send.finish().unwrap();
    assert_eq!(close_code(&c).await, Some(CloseCode::ProtocolViolation));

    // The good agent is unaffected: ordered, pipelined, and retransmissions are recognised.
    let a2 = send_batch(&good, batch(2, 1, 3.0));
    let a1 = send_batch(&good, batch(1, 1, 2.0));
    let (a2, a1) = tokio::join!(a2, a1);
    assert_eq!(
        (a1.status, a2.status),
        (AckStatus::Accepted, AckStatus::Accepted)
    );
    let again = send_batch(&good, batch(1, 1, 2.0)).await;
    assert_eq!(again.status, AckStatus::Accepted);
    let got: Vec<(i64, f64)> = s
        .capture
        .snapshot()
        .iter()
        .map(|r| (r.timestamp, r.value))
        .collect();
    assert_eq!(got, vec![(1000, 1.0), (1001, 2.0), (1002, 3.0)]);
    assert_eq!(
        s.capture.duplicates(),
        0,
        "a retransmission on the same connection is not forwarded twice"
    );

    // Downstream outage: the batch is answered retry, and so is every later one.
    s.capture.set_fail_next(u32::MAX, 503);
    let ack = send_batch(&good, batch(3, 1, 4.0)).await;
    assert_eq!(ack.status, AckStatus::Retry);
    assert!(ack.message.contains("503"), "{}", ack.message);
    let ack = send_batch(&good, batch(4, 1, 5.0)).await;
    assert_eq!(ack.status, AckStatus::Retry);
    s.stop.cancel();
}
