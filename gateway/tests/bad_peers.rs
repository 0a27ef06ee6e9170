//! A bad peer is disconnected with a documented close code, never panics the gateway, and
//! never affects other agents. Real QUIC, real certificates, the gateway in process, the
//! capture receiver as the destination.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{
    batch, close_code, connect, handshake, handshake_at, hello, send_batch, setup_with_dev_pki,
    wait_for,
};
use uplink_shared::tls::{self, TlsFiles};
use uplink_shared::wire::{AckStatus, Batch, CloseCode, Encoding, Frame};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peers_get_close_codes_and_good_agents_carry_on() {
    let s = setup_with_dev_pki().await;

    // A good agent connects first and keeps its connection through everything below.
    let good = connect(&s.dir, "good", s.quic).await.unwrap();
    let _ctl = handshake(&good).await;
    let ack = send_batch(&good, batch(0, 1, 1.0)).await;
    assert_eq!(ack.status, AckStatus::Accepted);

    // A certificate from another CA fails the TLS handshake.
    let other = s.dir.join("other");
    let files = TlsFiles::new(
        other.join("intruder.crt"),
        other.join("intruder.key"),
        s.dir.join("ca.crt"),
    );
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
        trace: None,
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
    wait_for("three samples", || s.capture.len() == 3).await;
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

    // The same queue reconnects (its ack was lost with the connection) and resends from 1:
    // what was already forwarded is acknowledged, not forwarded again.
    let again = connect(&s.dir, "good", s.quic).await.unwrap();
    let _ctl2 = handshake_at(&again, 1).await;
    let resent = send_batch(&again, batch(1, 2, 2.0)).await;
    assert_eq!(resent.status, AckStatus::Accepted);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        s.capture.len(),
        3,
        "records 1 and 2 were not forwarded twice"
    );
    again.close(0u32.into(), b"done");

    // Downstream outage: batches are still acknowledged (they are stored durably), and
    // delivered once the destination recovers.
    s.capture.set_fail_next(u32::MAX, 503);
    let ack = send_batch(&good, batch(3, 1, 4.0)).await;
    assert_eq!(ack.status, AckStatus::Accepted);
    let ack = send_batch(&good, batch(4, 1, 5.0)).await;
    assert_eq!(ack.status, AckStatus::Accepted);
    wait_for("a refused attempt", || {
        s.capture.report().injected_failures > 0
    })
    .await;
    s.capture.set_fail_next(0, 503);
    wait_for("the backlog", || s.capture.len() == 5).await;

    // A permanent 4xx: logged, counted as dropped, and the queue moves on.
    let refused = s.capture.report().injected_failures;
    s.capture.set_fail_next(1, 400);
    let c = connect(&s.dir, "good", s.quic).await.unwrap();
    let _ctl = handshake_at(&c, 10).await;
    let ack = send_batch(&c, batch(10, 1, 9.0)).await;
    assert_eq!(ack.status, AckStatus::Accepted);
    wait_for("the 400", || {
        s.capture.report().injected_failures == refused + 1
    })
    .await;
    let ack = send_batch(&c, batch(11, 1, 10.0)).await;
    assert_eq!(ack.status, AckStatus::Accepted);
    wait_for("batch 11", || s.capture.len() == 6).await;
    let got: Vec<i64> = s.capture.snapshot().iter().map(|r| r.timestamp).collect();
    assert_eq!(got, vec![1000, 1001, 1002, 1003, 1004, 1011]);
    assert_eq!(s.capture.duplicates(), 0);
    s.stop.cancel();
}
