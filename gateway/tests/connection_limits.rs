//! Connection hardening: with `retry_above_handshakes: 0` every new peer proves its address
//! first (QUIC Retry) and still connects; an identity holding
//! `max_connections_per_identity` connections gets its next one closed with code 8, and can
//! connect again once one of them is gone. Real QUIC, the gateway in process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{
    batch, close_code, connect, handshake, handshake_at, send_batch, start_full, wait_for,
};
use uplink_loadtest::harness;
use uplink_shared::wire::{AckStatus, CloseCode};

fn metric(web: std::net::SocketAddr, key: &str) -> f64 {
    tokio::task::block_in_place(|| harness::metrics(web))
        .ok()
        .and_then(|m| m.get(key).copied())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_validation_and_a_connection_limit_per_identity() {
    let dir = tempfile::tempdir().unwrap();
    harness::write_certs(dir.path(), &["good".into(), "other".into()]).unwrap();
    let s = start_full(
        dir,
        "",
        "max_connections_per_identity: 2, retry_above_handshakes: 0",
        "",
    )
    .await;
    let first = connect(&s.dir, "good", s.quic).await.unwrap();
    let _c1 = handshake(&first).await;
    let second = connect(&s.dir, "good", s.quic).await.unwrap();
    let _c2 = handshake(&second).await;
    assert!(metric(s.web, "uplink_gateway_handshake_retries_total") >= 2.0);

    let third = connect(&s.dir, "good", s.quic).await.unwrap();
    assert_eq!(
        close_code(&third).await,
        Some(CloseCode::TooManyConnections)
    );
    // Other identities are not affected, nor are the two open connections.
    let other = connect(&s.dir, "other", s.quic).await.unwrap();
    let _c3 = handshake(&other).await;
    assert_eq!(
        send_batch(&first, batch(0, 1, 1.0)).await.status,
        AckStatus::Accepted
    );

    // One goes away: there is room again.
    first.close(0u32.into(), b"bye");
    wait_for("the slot to free", || {
        metric(s.web, "uplink_gateway_agents_connected") == 2.0
    })
    .await;
    let again = connect(&s.dir, "good", s.quic).await.unwrap();
    // It resumes where `first` stopped (its batch 0 is stored).
    let _c4 = handshake_at(&again, 1).await;
    assert_eq!(
        send_batch(&again, batch(1, 1, 2.0)).await.status,
        AckStatus::Accepted
    );
    assert_eq!(
        metric(s.web, "uplink_gateway_connection_closes_total{code=\"8\"}"),
        1.0
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.stop.cancel();
    s.run.await.unwrap().unwrap();
}
