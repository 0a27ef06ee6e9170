//! The gateway's store across restarts: a batch acknowledged before a restart and sent again
//! after it (its ack was lost) is acknowledged without being forwarded again, and a backlog
//! queued for a destination that was down survives the restart and arrives exactly once.
//! Real QUIC, the gateway in process, the capture receiver as the destination.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{batch, connect, handshake_at, send_batch, setup_with_dev_pki, wait_for};
use uplink_loadtest::harness;
use uplink_shared::wire::AckStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_and_backlog_survive_a_restart() {
    let mut s = setup_with_dev_pki().await;
    let c = connect(&s.dir, "good", s.quic).await.unwrap();
    let _ctl = handshake_at(&c, 0).await;
    for seq in 0..2 {
        let ack = send_batch(&c, batch(seq, 1, seq as f64)).await;
        assert_eq!(ack.status, AckStatus::Accepted);
    }
    wait_for("two samples", || s.capture.len() == 2).await;

    s.restart().await;

    // The acks "were lost": the agent resends from 0 on a new connection.
    let c = connect(&s.dir, "good", s.quic).await.unwrap();
    let _ctl = handshake_at(&c, 0).await;
    let ack = send_batch(&c, batch(0, 2, 0.0)).await;
    assert_eq!(ack.status, AckStatus::Accepted);
    let ack = send_batch(&c, batch(2, 1, 2.0)).await;
    assert_eq!(ack.status, AckStatus::Accepted);
    wait_for("the new sample", || s.capture.len() == 3).await;
    // The resent records' samples are counted as deduplicated, not received.
    let m = tokio::task::block_in_place(|| harness::metrics(s.web)).unwrap();
    assert_eq!(
        m.get("uplink_gateway_samples_deduplicated_total"),
        Some(&1.0)
    );
    assert_eq!(m.get("uplink_gateway_batches_duplicate_total"), Some(&1.0));

    // The destination goes down; the batch is acknowledged anyway, then the gateway restarts
    // with the backlog on disk (the drain on shutdown cannot deliver it).
    s.capture.set_fail_next(u32::MAX, 503);
    let ack = send_batch(&c, batch(3, 1, 3.0)).await;
    assert_eq!(ack.status, AckStatus::Accepted);
    wait_for("a refused attempt", || {
        s.capture.report().injected_failures > 0
    })
    .await;
    s.restart().await;
    assert_eq!(s.capture.len(), 3);
    s.capture.set_fail_next(0, 503);
    wait_for("the backlog after the restart", || s.capture.len() == 4).await;

    let got: Vec<(i64, f64)> = s
        .capture
        .snapshot()
        .iter()
        .map(|r| (r.timestamp, r.value))
        .collect();
    assert_eq!(
        got,
        vec![(1000, 0.0), (1001, 1.0), (1002, 2.0), (1003, 3.0)]
    );
    assert_eq!(s.capture.duplicates(), 0);
    s.stop.cancel();
    s.run.await.unwrap().unwrap();
}

/// A corrupt store never crash-loops the gateway: it is moved aside, counted, and a fresh one
/// takes batches again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_store_is_quarantined_and_the_gateway_starts() {
    let mut s = common::setup_with_dev_pki().await;
    let c = common::connect(&s.dir, "good", s.quic).await.unwrap();
    let _ctl = common::handshake(&c).await;
    let ack = common::send_batch(&c, common::batch(0, 1, 1.0)).await;
    assert_eq!(ack.status, uplink_shared::wire::AckStatus::Accepted);
    drop(c);
    s.restart_with(|dir| {
        std::fs::write(dir.join("store/CURRENT"), b"garbage without a newline").unwrap();
    })
    .await;
    let moved: Vec<String> = std::fs::read_dir(&s.dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("store.corrupt-"))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    let m = tokio::task::block_in_place(|| uplink_loadtest::harness::metrics(s.web)).unwrap();
    assert_eq!(m.get("uplink_gateway_store_quarantined_total"), Some(&1.0));
    // A new connection stores again (a new agent queue, so no dedupe history is needed).
    let c = common::connect(&s.dir, "bad", s.quic).await.unwrap();
    let _ctl = common::handshake(&c).await;
    let ack = common::send_batch(&c, common::batch(0, 1, 2.0)).await;
    assert_eq!(ack.status, uplink_shared::wire::AckStatus::Accepted);
}
