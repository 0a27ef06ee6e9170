//! One destination's forwarder against the capture receiver, on a real store: queued entries
//! are merged into one request; when a merged request is refused, its entries are sent again
//! one by one (a poison entry costs only its own samples); a refused single entry is dropped,
//! counted and charged to its site, and the queue moves on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use uplink_gateway::config::RemoteWriteConfig;
use uplink_gateway::fanout::Forwarder;
use uplink_gateway::forward::Destination;
use uplink_gateway::ledger::Ledger;
use uplink_gateway::metrics::Metrics;
use uplink_gateway::store::{Commit, Entry, Store};
use uplink_loadtest::capture::Capture;
use uplink_loadtest::harness::free_addr;
use uplink_shared::model;
use uplink_shared::remote_write::{self, Label, Sample, TimeSeries, WriteRequest};

fn entry(ts: i64) -> Entry {
    let req = WriteRequest {
        timeseries: vec![TimeSeries {
            labels: vec![Label::new("__name__", "m")],
            samples: vec![Sample {
                value: ts as f64,
                timestamp: ts,
            }],
        }],
        metadata: vec![],
    };
    Entry {
        samples: 1,
        body: remote_write::encode_snappy(&req),
    }
}

async fn commit(store: &Store, site: &str, seq: u64) {
    let c = Commit {
        identity: site.into(),
        queue_id: 1,
        next_seq: seq + 1,
        entry: Some(entry(seq as i64)),
    };
    store.commit(c).await.unwrap();
}

/// Runs a forwarder until the backlog is empty.
async fn drain(store: &Store, capture: &Capture, metrics: &Metrics, ledger: &Arc<Ledger>) {
    let rw: RemoteWriteConfig = serde_yaml::from_str(&format!(
        "url: {}\nname: capture\nqueue_config: {{min_backoff: 10ms, max_backoff: 50ms}}\n",
        capture.url()
    ))
    .unwrap();
    let f = Forwarder {
        index: 0,
        destination: Destination::new(&rw, Duration::from_secs(1), metrics.clone()).unwrap(),
        store: store.clone(),
        ledger: ledger.clone(),
        metrics: metrics.clone(),
        max_samples: 2000,
        pause: Duration::from_millis(50),
    };
    let drain = CancellationToken::new();
    drain.cancel();
    tokio::time::timeout(
        Duration::from_secs(10),
        f.run(drain, CancellationToken::new()),
    )
    .await
    .expect("the backlog drains");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_merged_requests_are_split_and_single_refusals_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let (store, _) =
        tokio::task::spawn_blocking(move || Store::open(&path, false, &["capture".into()]))
            .await
            .unwrap()
            .unwrap();
    let capture = Capture::start(free_addr().unwrap()).await.unwrap();
    let metrics = Metrics::default();
    let ledger = Arc::new(Ledger::default());

    // Three entries from two sites, one request; the receiver refuses it once.
    commit(&store, "a", 0).await;
    commit(&store, "b", 1).await;
    commit(&store, "a", 2).await;
    capture.set_fail_next(1, 400);
    drain(&store, &capture, &metrics, &ledger).await;
    assert_eq!(capture.report().injected_failures, 1);
    assert_eq!(capture.requests(), 3, "sent again one by one");
    let got: Vec<i64> = capture.snapshot().iter().map(|r| r.timestamp).collect();
    assert_eq!(got, vec![0, 1, 2]);
    assert_eq!(store.usage(0).entries, 0);

    // A single entry refused: dropped, counted, charged to its site; the next one flows.
    commit(&store, "b", 3).await;
    capture.set_fail_next(1, 400);
    drain(&store, &capture, &metrics, &ledger).await;
    commit(&store, "b", 4).await;
    drain(&store, &capture, &metrics, &ledger).await;
    let got: Vec<i64> = capture.snapshot().iter().map(|r| r.timestamp).collect();
    assert_eq!(got, vec![0, 1, 2, 4]);
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(
            "uplink_gateway_remote_write_samples_dropped_total{destination=\"capture\",reason=\"refused\"} 1"
        ),
        "{text}"
    );
    let series = ledger.series(0, &Default::default(), Duration::from_secs(60));
    let dropped = series
        .iter()
        .find(|t| {
            model::get(&t.labels, "__name__") == Some("uplink_site_dropped_samples_total")
                && model::get(&t.labels, "site") == Some("b")
        })
        .map(|t| t.samples[0].value);
    assert_eq!(dropped, Some(1.0));
}
