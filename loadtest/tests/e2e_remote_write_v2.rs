//! Remote write 2.0 into the real Prometheus 3, start timestamps included.
//!
//! `uplink-agent` scrapes a target serving the protobuf format, whose counter carries a
//! created timestamp; the gateway writes remote write 2.0 to two real Prometheus 3 servers that
//! accept nothing but `io.prometheus.write.v2.Request` and ingest start timestamps as zero
//! samples (`--enable-feature=created-timestamp-zero-ingestion`). One destination puts the start
//! timestamp where Prometheus 3.5 reads it (`start_timestamps: series`,
//! `TimeSeries.created_timestamp`), the other in both places (`both`). Checked: every scrape
//! arrives over 2.0 (a 1.0 fallback would be refused with 415, and the gateway reports the
//! protocol it speaks), with the zero sample at exactly the created timestamp in both.
//! Prometheus 3.5 ignores the per-sample field of Prometheus 3.8 (`Sample.start_timestamp`,
//! the default of `start_timestamps`), so that one is checked by the capture receiver in
//! `e2e_native_histograms` and by the codec's unit tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use prost::Message;
use uplink_loadtest::dto;
use uplink_loadtest::harness::{self, Bins, Peer, block};

/// Serves a protobuf counter created at `created_ms`, counting scrapes.
async fn target(created_ms: i64) -> SocketAddr {
    let scrapes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let n = scrapes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                let family = dto::MetricFamily {
                    name: Some("orders_total".into()),
                    help: Some("Orders.".into()),
                    r#type: Some(0),
                    metric: vec![dto::Metric {
                        counter: Some(dto::Counter {
                            value: Some(n as f64 + 1.0),
                            exemplar: None,
                            created_timestamp: Some(dto::Timestamp {
                                seconds: created_ms / 1000,
                                nanos: ((created_ms % 1000) * 1_000_000) as i32,
                            }),
                        }),
                        ..Default::default()
                    }],
                };
                let mut body = Vec::new();
                family.encode_length_delimited(&mut body).unwrap();
                (
                    [(
                        "content-type",
                        "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited",
                    )],
                    body,
                )
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

/// Every raw sample of `orders_total` in a Prometheus, as (ms, value), sorted.
async fn orders(web: SocketAddr) -> Vec<(i64, f64)> {
    let mut got: Vec<(i64, f64)> = harness::prometheus_samples(web, "orders_total[1h]")
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.timestamp, r.value))
        .collect();
    got.sort_by(|a, b| a.partial_cmp(b).unwrap());
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_writes_remote_write_2_with_start_timestamps_to_prometheus_3() {
    assert!(
        Peer::Prometheus.installed(),
        "{} is required (deploy/dev/setup.sh installs it)",
        Peer::Prometheus.label()
    );
    let bins = Bins::locate().expect("binaries built by cargo test --workspace");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    harness::write_certs(d, &["rw2".to_owned()]).unwrap();
    let v2_only = [
        "--web.remote-write-receiver.accepted-protobuf-messages=io.prometheus.write.v2.Request",
        "--enable-feature=created-timestamp-zero-ingestion",
    ];
    let series_dir = d.join("series");
    let both_dir = d.join("both");
    std::fs::create_dir_all(&series_dir).unwrap();
    std::fs::create_dir_all(&both_dir).unwrap();
    let p_series = block(|| harness::start_prometheus_args(&series_dir, &v2_only)).unwrap();
    let p_both = block(|| harness::start_prometheus_args(&both_dir, &v2_only)).unwrap();
    let entry = |name: &str, url: String, st: &str| {
        format!(
            "  - url: {url}\n    name: {name}\n    protobuf_message: io.prometheus.write.v2.Request\n    \
             start_timestamps: {st}\n    queue_config: {{min_backoff: 50ms, max_backoff: 1s}}\n"
        )
    };
    let rw = entry("p-series", p_series.remote_write_url(), "series")
        + &entry("p-both", p_both.remote_write_url(), "both");
    let gateway = block(|| harness::start_gateway_yaml(&bins, d, &rw, "15s", "")).unwrap();

    // A recent created timestamp: the receivers take a zero sample only inside their head.
    let created_ms = harness::now_ms() - 30_000;
    let t = target(created_ms).await;
    let prom_yml = d.join("prometheus.yml");
    std::fs::write(
        &prom_yml,
        format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\nscrape_configs:\n  - job_name: orders\n    \
             scrape_protocols: [PrometheusProto]\n    static_configs: [{{targets: ['{t}']}}]\n"
        ),
    )
    .unwrap();
    let (_agent, web) =
        harness::start_agent_beside(&bins, d, "rw2", &prom_yml, gateway.quic, &[]).unwrap();
    block(|| harness::wait_ready(web, Duration::from_secs(20))).unwrap();

    for p in [&p_series, &p_both] {
        let mut got = Vec::new();
        for _ in 0..100 {
            got = orders(p.web).await;
            if got.len() >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(got.len() >= 4, "samples over 2.0: {got:?}");
        assert_eq!(
            got[0],
            (created_ms, 0.0),
            "the start timestamp became a zero sample: {got:?}"
        );
        assert!(
            got[1..].iter().all(|(ts, v)| *ts > created_ms && *v >= 1.0),
            "{got:?}"
        );
    }
    // Both destinations still speak 2.0 (no fallback).
    let protocol = |name: &str| {
        gateway
            .metric(&format!(
                "uplink_gateway_remote_write_protocol{{destination=\"{name}\"}}"
            ))
            .unwrap_or_default()
    };
    assert_eq!((protocol("p-series"), protocol("p-both")), (2.0, 2.0));
}
