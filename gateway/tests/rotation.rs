//! TLS files reload without a restart: a CRL that starts revoking an agent closes that agent's
//! open connection (code 4) and refuses its new ones (counted as `certificate_revoked`),
//! while other agents keep going; new gateway certificates, swapped three times while agents
//! keep connecting, fail no handshake and are served to new connections while open ones keep
//! working; a bad file keeps the last good configuration and says so in a metric.
//! Real QUIC, the gateway in process, rcgen certificates and CRLs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{batch, close_code, connect, handshake, send_batch, start_with_tls, wait_for};
use uplink_loadtest::harness;
use uplink_shared::certs::Authority;
use uplink_shared::wire::{AckStatus, CloseCode};

fn metric(web: std::net::SocketAddr, key: &str) -> f64 {
    tokio::task::block_in_place(|| harness::metrics(web))
        .ok()
        .and_then(|m| m.get(key).copied())
        .unwrap_or(0.0)
}

/// The serial number of the certificate the gateway presented on `conn`.
fn server_serial(conn: &quinn::Connection) -> Vec<u8> {
    let cert = uplink_shared::tls::peer_cert(conn).expect("server certificate");
    uplink_shared::tls::issuer_serial(cert.as_ref())
        .expect("parse")
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_and_certificates_reload_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    harness::write_certs(&path, &["good".into(), "bad".into()]).unwrap();
    let ca = Authority::load(&path).unwrap();
    std::fs::write(path.join("ca.crl"), ca.revoke(&[]).unwrap()).unwrap();
    let s = start_with_tls(dir, "crl_file: ca.crl, reload_interval: 100ms", "").await;
    let reloads = |result: &str| {
        metric(
            s.web,
            &format!("uplink_gateway_tls_reloads_total{{result=\"{result}\"}}"),
        )
    };

    let good = connect(&s.dir, "good", s.quic).await.unwrap();
    let _good_ctl = handshake(&good).await;
    let bad = connect(&s.dir, "bad", s.quic).await.unwrap();
    let _bad_ctl = handshake(&bad).await;
    assert_eq!(
        send_batch(&bad, batch(0, 1, 1.0)).await.status,
        AckStatus::Accepted
    );
    let first_serial = server_serial(&good);

    // 1. Revoke `bad`: its open connection is closed, a new one is refused; `good` goes on.
    let bad_pem = std::fs::read_to_string(path.join("bad.crt")).unwrap();
    std::fs::write(path.join("ca.crl"), ca.revoke(&[&bad_pem]).unwrap()).unwrap();
    assert_eq!(close_code(&bad).await, Some(CloseCode::Unauthorized));
    assert_eq!(
        metric(s.web, "uplink_gateway_revoked_disconnects_total"),
        1.0
    );
    let again = connect(&s.dir, "bad", s.quic).await;
    let refused = match again {
        Err(_) => true,
        Ok(c) => tokio::time::timeout(Duration::from_secs(5), c.closed())
            .await
            .is_ok(),
    };
    assert!(refused, "a revoked certificate is refused at the handshake");
    wait_for("the refusal counted", || {
        metric(
            s.web,
            "uplink_gateway_handshake_failures_total{reason=\"certificate_revoked\"}",
        ) >= 1.0
    })
    .await;
    assert_eq!(
        send_batch(&good, batch(0, 1, 2.0)).await.status,
        AckStatus::Accepted
    );

    // 2. New gateway certificates, three times, while agents keep handshaking: not one
    // handshake fails (a handshake uses the configuration it started with). New connections
    // get the new certificate, the open one keeps working.
    let failures = || {
        tokio::task::block_in_place(|| harness::metrics(s.web))
            .map(|m| harness::metric_sum(&m, "uplink_gateway_handshake_failures_total"))
            .unwrap_or(-1.0)
    };
    let failed_before = failures();
    let (dir2, quic) = (s.dir.clone(), s.quic);
    let churn = tokio::spawn(async move {
        let mut ok = 0;
        for _ in 0..30 {
            let c = connect(&dir2, "good", quic)
                .await
                .expect("handshake during rotation");
            let _ctl = handshake(&c).await;
            c.close(0u32.into(), b"");
            ok += 1;
        }
        ok
    });
    for round in 0..3u32 {
        ca.issue_gateway(&["localhost".into(), "127.0.0.1".into()], 30)
            .unwrap()
            .write(&path, "gateway")
            .unwrap();
        let want = f64::from(2 + round);
        wait_for("the new certificate to apply", || {
            reloads("success") >= want
        })
        .await;
    }
    assert_eq!(churn.await.unwrap(), 30);
    assert_eq!(
        failures(),
        failed_before,
        "no handshake failed during the rotations"
    );
    let fresh = connect(&s.dir, "good", s.quic).await.unwrap();
    assert_ne!(
        server_serial(&fresh),
        first_serial,
        "the new certificate is served"
    );
    drop(fresh);
    assert_eq!(
        send_batch(&good, batch(1, 1, 3.0)).await.status,
        AckStatus::Accepted
    );

    // 3. A broken certificate file: the last good configuration stays, the metric says so.
    std::fs::write(path.join("gateway.crt"), "not a certificate").unwrap();
    wait_for("the failed reload", || reloads("failure") >= 1.0).await;
    assert_eq!(
        metric(s.web, "uplink_gateway_tls_last_reload_successful"),
        0.0
    );
    let still = connect(&s.dir, "good", s.quic).await.unwrap();
    let _ctl = handshake(&still).await;
    assert_eq!(
        send_batch(&good, batch(2, 1, 4.0)).await.status,
        AckStatus::Accepted
    );
    // `bad`'s one sample and `good`'s first share series and timestamp (the test batches
    // differ only by sequence number): the capture keeps one and counts the other.
    wait_for("every accepted sample", || s.capture.len() == 3).await;
    assert_eq!(s.capture.duplicates(), 1);
    s.stop.cancel();
    s.run.await.unwrap().unwrap();
}
