//! The certificate matrix: every bad certificate is refused at the handshake (by rustls) or
//! right after it (identity rules, close code 4), counted by reason, and sends no data; a
//! SPIFFE identity `spiffe://uplink.test/tenant/<t>/site/<s>` is accepted, and the labels
//! stamped from it cannot be spoofed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{batch, connect, handshake, send_batch, start_with, wait_for};
use uplink_loadtest::harness;
use uplink_shared::certs::{Authority, LeafSpec};
use uplink_shared::wire::{AckStatus, CloseCode};

/// How a connection attempt was refused.
#[derive(Debug, PartialEq)]
enum Refusal {
    /// The TLS handshake failed (on our side, or the gateway's alert closed it).
    Tls,
    /// Closed by the gateway with an application close code.
    Code(Option<CloseCode>),
}

async fn refused(r: Result<quinn::Connection, String>) -> Refusal {
    let c = match r {
        Err(_) => return Refusal::Tls,
        Ok(c) => c,
    };
    match tokio::time::timeout(Duration::from_secs(5), c.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(a)) => {
            Refusal::Code(CloseCode::from_u64(a.error_code.into_inner()))
        }
        Ok(_) => Refusal::Tls,
        Err(_) => panic!("not closed within 5 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_are_refused_and_counted_spiffe_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    harness::write_certs(&path, &[]).unwrap();
    let ca = Authority::load(&path).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let leaf =
        |name: &str, spec: LeafSpec| ca.issue_leaf(&spec).unwrap().write(&path, name).unwrap();
    leaf(
        "expired",
        LeafSpec {
            not_before: now - 10 * day,
            not_after: now - day,
            ..LeafSpec::agent("expired", 1)
        },
    );
    leaf(
        "future",
        LeafSpec {
            not_before: now + day,
            not_after: now + 10 * day,
            ..LeafSpec::agent("future", 1)
        },
    );
    leaf(
        "no-eku",
        LeafSpec {
            client_auth: false,
            ..LeafSpec::agent("no-eku", 1)
        },
    );
    leaf(
        "ca-leaf",
        LeafSpec {
            is_ca: true,
            ..LeafSpec::agent("ca-leaf", 1)
        },
    );
    leaf(
        "two-ids",
        LeafSpec {
            uris: vec![
                "spiffe://uplink.test/tenant/a/site/x".into(),
                "spiffe://uplink.test/tenant/b/site/x".into(),
            ],
            ..LeafSpec::agent("two-ids", 1)
        },
    );
    ca.issue_agent_spiffe("other.test", "a", "x", 1)
        .unwrap()
        .write(&path, "wrong-domain")
        .unwrap();
    ca.issue_agent_spiffe("uplink.test", "team-a", "plant-7", 1)
        .unwrap()
        .write(&path, "spiffe")
        .unwrap();
    let other = Authority::generate("another CA", 1).unwrap();
    other
        .issue_agent("intruder", 1)
        .unwrap()
        .write(&path, "intruder")
        .unwrap();

    let s = start_with(dir, "identity: {trust_domain: uplink.test}\n").await;

    // Refused by rustls at the handshake.
    for name in ["expired", "future", "no-eku", "ca-leaf", "intruder"] {
        let how = refused(connect(&s.dir, name, s.quic).await).await;
        assert_eq!(how, Refusal::Tls, "{name}");
    }
    // No certificate at all.
    let mut roots = rustls::RootCertStore::empty();
    for c in uplink_shared::tls::load_certs(&s.dir.join("ca.crt")).unwrap() {
        roots.add(c).unwrap();
    }
    let mut anon = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    anon.alpn_protocols = vec![uplink_shared::wire::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(anon).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let attempt = ep.connect(s.quic, "localhost").unwrap().await;
    let how = refused(attempt.map_err(|e| e.to_string())).await;
    assert_eq!(how, Refusal::Tls, "no certificate");

    // Verified certificates with an unusable identity: closed with code 4.
    for name in ["two-ids", "wrong-domain"] {
        let how = refused(connect(&s.dir, name, s.quic).await).await;
        assert_eq!(how, Refusal::Code(Some(CloseCode::Unauthorized)), "{name}");
    }

    // A SPIFFE identity works end to end.
    let good = connect(&s.dir, "spiffe", s.quic).await.unwrap();
    let _ctl = handshake(&good).await;
    assert_eq!(
        send_batch(&good, batch(0, 1, 1.0)).await.status,
        AckStatus::Accepted
    );

    let m = tokio::task::block_in_place(|| harness::metrics(s.web)).unwrap();
    let sum = |prefix: &str| -> f64 {
        m.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| *v)
            .sum()
    };
    let handshakes: Vec<(&String, &f64)> = m
        .iter()
        .filter(|(k, _)| k.starts_with("uplink_gateway_handshake_failures_total"))
        .collect();
    println!("handshake failures: {handshakes:?}");
    assert_eq!(
        sum("uplink_gateway_handshake_failures_total"),
        6.0,
        "{handshakes:?}"
    );
    assert_eq!(
        m.get("uplink_gateway_identity_refusals_total{reason=\"several_ids\"}"),
        Some(&1.0)
    );
    assert_eq!(
        m.get("uplink_gateway_identity_refusals_total{reason=\"trust_domain\"}"),
        Some(&1.0)
    );
    assert_eq!(
        sum("uplink_gateway_batches_received_total"),
        1.0,
        "only the good agent's batch"
    );
    assert_eq!(sum("uplink_gateway_connections_total"), 1.0);
}

/// Spoofing: an agent whose certificate says tenant `team-a`, site `plant-7` sends series
/// labelled `tenant="team-b"` and `site="evil"`: the destination gets only the certificate's
/// tenant and site (plus the tenant's configured labels), the sent values kept as
/// `exported_*` with `conflicts: exported` and gone with the default `overwrite`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stamped_labels_come_from_the_certificate_only() {
    use uplink_shared::model::get;
    use uplink_shared::remote_write::{self, Label, Sample, TimeSeries, WriteRequest};
    use uplink_shared::wire::{Batch, Encoding, Frame};

    for conflicts in ["overwrite", "exported"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        harness::write_certs(&path, &[]).unwrap();
        let ca = Authority::load(&path).unwrap();
        ca.issue_agent_spiffe("uplink.test", "team-a", "plant-7", 1)
            .unwrap()
            .write(&path, "spiffe")
            .unwrap();
        let s = start_with(
            dir,
            &format!(
                "identity: {{trust_domain: uplink.test}}\n\
                 tenancy: {{conflicts: {conflicts}, tenants: {{team-a: {{labels: {{region: eu}}}}}}}}\n"
            ),
        )
        .await;
        let c = connect(&s.dir, "spiffe", s.quic).await.unwrap();
        let _ctl = handshake(&c).await;
        let req = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![
                    Label::new("__name__", "m"),
                    Label::new("site", "evil"),
                    Label::new("tenant", "team-b"),
                ],
                samples: vec![Sample {
                    value: 1.0,
                    timestamp: 1000,
                }],
                ..Default::default()
            }],
            metadata: vec![],
        };
        let frame = Frame::Batch(Batch {
            first_seq: 0,
            count: 1,
            encoding: Encoding::RemoteWriteV1Snappy,
            trace: None,
            payload: remote_write::encode_snappy(&req),
        })
        .to_bytes();
        assert_eq!(send_batch(&c, frame).await.status, AckStatus::Accepted);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while s.capture.is_empty() {
            assert!(std::time::Instant::now() < deadline, "nothing forwarded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let got = &s.capture.snapshot()[0].labels;
        assert_eq!(get(got, "tenant"), Some("team-a"), "{conflicts}");
        assert_eq!(get(got, "site"), Some("plant-7"), "{conflicts}");
        assert_eq!(get(got, "region"), Some("eu"), "{conflicts}");
        let exported = (get(got, "exported_tenant"), get(got, "exported_site"));
        if conflicts == "exported" {
            assert_eq!(exported, (Some("team-b"), Some("evil")));
        } else {
            assert_eq!(exported, (None, None));
        }
    }
}

/// Per-tenant label limits: only the series over them are held back, counted per tenant and
/// reason, on both batch encodings (the agents' compact one and remote write 1.0); and the
/// active-series limit refuses a new target shape that would exceed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_limits_hold_back_only_the_series_over_them() {
    use std::collections::HashMap;
    use uplink_shared::codec::{TunnelEncoder, split};
    use uplink_shared::model::get;
    use uplink_shared::remote_write::{self, Label, Sample, TimeSeries, WriteRequest};
    use uplink_shared::wire::{Batch, Encoding, Frame};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    harness::write_certs(&path, &[]).unwrap();
    Authority::load(&path)
        .unwrap()
        .issue_agent_spiffe("uplink.test", "team-a", "plant-7", 1)
        .unwrap()
        .write(&path, "spiffe")
        .unwrap();
    // Stamped: tenant and site, so a series has at most three labels of its own.
    let s = start_with(
        dir,
        "identity: {trust_domain: uplink.test}\n\
         tenancy: {tenants: {team-a: {max_label_names_per_series: 5, \
         max_label_value_length: 16, max_series: 4}}}\n",
    )
    .await;
    let c = connect(&s.dir, "spiffe", s.quic).await.unwrap();
    let _ctl = handshake(&c).await;
    let series = |name: &str, extra: &[(&str, &str)], ts: i64| TimeSeries {
        labels: std::iter::once(Label::new("__name__", name))
            .chain(extra.iter().map(|(n, v)| Label::new(*n, *v)))
            .collect(),
        samples: vec![Sample {
            value: 1.0,
            timestamp: ts,
        }],
        ..Default::default()
    };
    let three = |ts: i64| {
        vec![
            series("ok", &[("job", "a")], ts),
            series("long_value", &[("path", "/a/very/long/request/path")], ts),
            series("many", &[("a", "1"), ("b", "2"), ("c", "3")], ts),
        ]
    };
    // Compact, as an agent sends it.
    let (set, rec) = split(three(1000), 1000);
    let defs = HashMap::from([(set.id(), set.encode())]);
    let mut enc = TunnelEncoder::new(1);
    let (payload, _) = enc.encode(&[rec], &defs).unwrap();
    let compact = Frame::Batch(Batch {
        first_seq: 0,
        count: 1,
        encoding: Encoding::Compact,
        trace: None,
        payload,
    });
    assert_eq!(
        send_batch(&c, compact.to_bytes()).await.status,
        AckStatus::Accepted
    );
    // Remote write 1.0.
    let req = WriteRequest {
        timeseries: three(2000),
        metadata: vec![],
    };
    let v1 = Frame::Batch(Batch {
        first_seq: 1,
        count: 1,
        encoding: Encoding::RemoteWriteV1Snappy,
        trace: None,
        payload: remote_write::encode_snappy(&req),
    });
    assert_eq!(
        send_batch(&c, v1.to_bytes()).await.status,
        AckStatus::Accepted
    );
    // A new shape of two series: with the first set's three, over `max_series: 4`.
    let (set, rec) = split(
        vec![series("new_a", &[], 3000), series("new_b", &[], 3000)],
        3000,
    );
    let defs = HashMap::from([(set.id(), set.encode())]);
    let (payload, _) = enc.encode(&[rec], &defs).unwrap();
    let over = Frame::Batch(Batch {
        first_seq: 2,
        count: 1,
        encoding: Encoding::Compact,
        trace: None,
        payload,
    });
    assert_eq!(
        send_batch(&c, over.to_bytes()).await.status,
        AckStatus::Accepted
    );
    wait_for("the accepted series", || s.capture.len() == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = s.capture.snapshot();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|r| get(&r.labels, "__name__") == Some("ok")));
    let m = tokio::task::block_in_place(|| harness::metrics(s.web)).unwrap();
    for reason in ["label_count", "label_value_length", "max_series"] {
        let key = format!(
            "uplink_gateway_tenant_samples_rejected_total{{tenant=\"team-a\",reason=\"{reason}\"}}"
        );
        assert_eq!(m.get(&key), Some(&2.0), "{key}");
    }
}

/// Per-tenant rate limits: a tenant over its `max_samples_per_second` has its acks held (its
/// agent slows down, its backlog waits on its disk) while another tenant is not slowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_rate_is_slowed_and_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    harness::write_certs(&path, &[]).unwrap();
    let ca = Authority::load(&path).unwrap();
    for (tenant, stem) in [("team-a", "a"), ("team-b", "b")] {
        ca.issue_agent_spiffe("uplink.test", tenant, "site", 1)
            .unwrap()
            .write(&path, stem)
            .unwrap();
    }
    let s = start_with(
        dir,
        "identity: {trust_domain: uplink.test}\n\
         tenancy: {tenants: {team-a: {max_samples_per_second: 2, burst: 3}}}\n",
    )
    .await;
    let a = connect(&s.dir, "a", s.quic).await.unwrap();
    let _ca = handshake(&a).await;
    let b = connect(&s.dir, "b", s.quic).await.unwrap();
    let _cb = handshake(&b).await;
    let (mut slow_a, mut slow_b) = (Duration::ZERO, Duration::ZERO);
    for seq in 0..5 {
        let t = std::time::Instant::now();
        assert_eq!(
            send_batch(&a, batch(seq, 1, 1.0)).await.status,
            AckStatus::Accepted
        );
        slow_a = slow_a.max(t.elapsed());
        let t = std::time::Instant::now();
        assert_eq!(
            send_batch(&b, batch(seq, 1, 1.0)).await.status,
            AckStatus::Accepted
        );
        slow_b = slow_b.max(t.elapsed());
    }
    assert!(
        slow_a >= Duration::from_millis(300),
        "team-a's acks were held: {slow_a:?}"
    );
    assert!(
        slow_b < Duration::from_millis(300),
        "team-b is not slowed: {slow_b:?}"
    );
    let m = tokio::task::block_in_place(|| harness::metrics(s.web)).unwrap();
    assert_eq!(
        m.get("uplink_gateway_tenant_throttled_batches_total{tenant=\"team-a\"}"),
        Some(&2.0),
        "the 4th and 5th batch waited"
    );
    assert_eq!(
        m.get("uplink_gateway_tenant_samples_received_total{tenant=\"team-b\"}"),
        Some(&5.0)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.capture.len() < 10 {
        assert!(std::time::Instant::now() < deadline, "all ten arrive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tenant's `max_batch_bytes` is announced in the welcome (agents size batches to it) and
/// enforced: a larger batch frame closes the connection with code 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_batch_size_is_announced_and_enforced() {
    use uplink_shared::wire;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    harness::write_certs(&path, &[]).unwrap();
    Authority::load(&path)
        .unwrap()
        .issue_agent_spiffe("uplink.test", "small", "s1", 1)
        .unwrap()
        .write(&path, "small")
        .unwrap();
    let s = start_with(
        dir,
        "identity: {trust_domain: uplink.test}\n\
         tenancy: {tenants: {small: {max_batch_bytes: 300}}}\n",
    )
    .await;
    let c = connect(&s.dir, "small", s.quic).await.unwrap();
    let (_send, _recv, w) = common::welcome(&c, 0).await;
    assert_eq!(w.max_batch_bytes, 300);
    // The common test batch is small enough; a padded one is not.
    assert_eq!(
        send_batch(&c, batch(0, 1, 1.0)).await.status,
        AckStatus::Accepted
    );
    let big = wire::Frame::Batch(wire::Batch {
        first_seq: 1,
        count: 1,
        encoding: wire::Encoding::Compact,
        trace: None,
        payload: bytes::Bytes::from(vec![0u8; 1000]),
    });
    let (mut bs, _br) = c.open_bi().await.unwrap();
    let _ = bs.write_all(&big.to_bytes()).await;
    let _ = bs.finish();
    assert_eq!(common::close_code(&c).await, Some(CloseCode::FrameTooLarge));
}
