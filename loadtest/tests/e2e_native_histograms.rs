//! Native histograms, exemplars and metadata, end to end, side by side with Prometheus agent
//! mode: a target exposes the protobuf format (a native histogram, a float gauge histogram, a
//! counter and a classic histogram with exemplars, a summary), and both the real Prometheus 3
//! (`--agent --enable-feature=native-histograms`) and `uplink-agent
//! --enable-feature=native-histograms` scrape it with their default `Accept` header, in two
//! jobs: as it is, and with `convert_classic_histograms_to_nhcb`; three more bring native
//! histograms under `native_histogram_bucket_limit` and `native_histogram_min_bucket_factor`
//! (reduced resolution; a converted histogram no reduction fits fails the scrape). Both write
//! into one real Prometheus (`--enable-feature=native-histograms,exemplar-storage`), told apart
//! by an external label; the gateway also writes remote write 2.0 to the capture receiver.
//!
//! The target stamps every metric with an explicit timestamp and derives every value from it,
//! so both scrapers store the same samples at the timestamps they both scraped. Checked:
//! identical native histograms (PromQL's histogram values) at every common timestamp, the
//! classic histogram converted to the same native histogram with custom buckets, identical
//! float series sets and values, identical exemplars (Prometheus's exemplar API) at common
//! timestamps, and stale markers on both sides once a native histogram (one without explicit
//! timestamps) leaves the target. Over 2.0:
//! histograms, exemplars, and metadata inline (type, help) with no series mixing floats and
//! histograms.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::get;
use prost::Message;
use uplink_loadtest::capture::Capture;
use uplink_loadtest::harness::{self, Bins, block};
use uplink_shared::remote_write::MetricType;

use uplink_loadtest::dto;

/// The target's clock step: twice the scrape interval, so both scrapers, whatever their phase,
/// see every step.
const STEP_MS: i64 = 2000;

fn pair(name: &str, value: &str) -> dto::LabelPair {
    dto::LabelPair {
        name: Some(name.into()),
        value: Some(value.into()),
    }
}

fn exemplar(trace: String, value: f64, ts_ms: i64) -> dto::Exemplar {
    dto::Exemplar {
        label: vec![pair("trace_id", &trace)],
        value: Some(value),
        timestamp: Some(dto::Timestamp {
            seconds: ts_ms / 1000,
            nanos: ((ts_ms % 1000) * 1_000_000) as i32,
        }),
    }
}

/// The body at `ts` (ms, a multiple of [`STEP_MS`]): every value is a function of `ts`.
fn body(ts: i64, with_histogram: bool) -> Vec<u8> {
    let n = (ts / STEP_MS) as u64;
    let metric = |histogram: Option<dto::Histogram>| dto::Metric {
        timestamp_ms: Some(ts),
        histogram,
        ..Default::default()
    };
    let mut families = Vec::new();
    if with_histogram {
        // An integer native histogram: schema 1, buckets 1..=3 filled as n grows.
        families.push(dto::MetricFamily {
            name: Some("rpc_duration_seconds".into()),
            help: Some("RPC latency.".into()),
            r#type: Some(4),
            metric: vec![metric(Some(dto::Histogram {
                sample_count: Some(3 * n + 1),
                sample_sum: Some(n as f64 * 1.25),
                schema: Some(1),
                zero_threshold: Some(1e-128),
                zero_count: Some(1),
                positive_span: vec![dto::Span {
                    offset: Some(1),
                    length: Some(3),
                }],
                positive_delta: vec![n as i64, 0, 0],
                ..Default::default()
            }))],
        });
        // Without a timestamp, so that it goes stale when it leaves (series with explicit
        // timestamps never do, in Prometheus or here).
        families.push(dto::MetricFamily {
            name: Some("ephemeral_seconds".into()),
            help: None,
            r#type: Some(4),
            metric: vec![dto::Metric {
                histogram: Some(dto::Histogram {
                    sample_count: Some(1),
                    sample_sum: Some(0.5),
                    schema: Some(0),
                    positive_span: vec![dto::Span {
                        offset: Some(0),
                        length: Some(1),
                    }],
                    positive_delta: vec![1],
                    ..Default::default()
                }),
                ..Default::default()
            }],
        });
    }
    // A float gauge histogram.
    families.push(dto::MetricFamily {
        name: Some("queue_fill".into()),
        help: Some("Queue fill.".into()),
        r#type: Some(5),
        metric: vec![metric(Some(dto::Histogram {
            sample_count_float: Some(2.5 + (n % 7) as f64),
            sample_sum: Some(3.0),
            schema: Some(0),
            // Native by Prometheus 2.42's rule too (which ignores float bucket counts).
            zero_threshold: Some(1e-128),
            zero_count_float: Some(0.5),
            positive_span: vec![dto::Span {
                offset: Some(0),
                length: Some(1),
            }],
            positive_count: vec![2.0 + (n % 7) as f64],
            ..Default::default()
        }))],
    });
    // A counter with an exemplar, a classic histogram with bucket exemplars, a summary.
    families.push(dto::MetricFamily {
        name: Some("jobs_total".into()),
        help: Some("Jobs done.".into()),
        r#type: Some(0),
        metric: vec![dto::Metric {
            label: vec![pair("kind", "batch")],
            counter: Some(dto::Counter {
                value: Some(n as f64),
                exemplar: Some(exemplar(format!("{n:016x}"), 1.0, ts - 100)),
                created_timestamp: Some(dto::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 5_000_000,
                }),
            }),
            timestamp_ms: Some(ts),
            ..Default::default()
        }],
    });
    families.push(dto::MetricFamily {
        name: Some("payload_bytes".into()),
        help: Some("Payload size.".into()),
        r#type: Some(4),
        metric: vec![metric(Some(dto::Histogram {
            sample_count: Some(2 * n),
            sample_sum: Some(n as f64 * 300.0),
            bucket: vec![
                dto::Bucket {
                    cumulative_count: Some(n),
                    upper_bound: Some(100.0),
                    exemplar: Some(exemplar(format!("b{n}"), 42.0, ts - 200)),
                },
                dto::Bucket {
                    cumulative_count: Some(2 * n),
                    upper_bound: Some(0.5e6),
                    exemplar: None,
                },
            ],
            ..Default::default()
        }))],
    });
    families.push(dto::MetricFamily {
        name: Some("gc_pause_seconds".into()),
        help: Some("GC pauses.".into()),
        r#type: Some(2),
        metric: vec![dto::Metric {
            summary: Some(dto::Summary {
                sample_count: Some(n),
                sample_sum: Some(n as f64 * 0.01),
                quantile: vec![
                    dto::Quantile {
                        quantile: Some(0.5),
                        value: Some(0.001),
                    },
                    dto::Quantile {
                        quantile: Some(1.0),
                        value: Some(0.02),
                    },
                ],
            }),
            timestamp_ms: Some(ts),
            ..Default::default()
        }],
    });
    let mut out = Vec::new();
    for f in families {
        f.encode_length_delimited(&mut out).unwrap();
    }
    out
}

/// Serves the protobuf body to a scraper that accepts it (both must negotiate it).
async fn target(histogram: Arc<AtomicBool>) -> SocketAddr {
    let app = Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let histogram = histogram.clone();
            async move {
                let accept = headers
                    .get("accept")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if !accept.starts_with("application/vnd.google.protobuf") {
                    return (
                        axum::http::StatusCode::NOT_ACCEPTABLE,
                        [("content-type", "text/plain")],
                        format!("protobuf not asked for first: {accept}").into_bytes(),
                    );
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64;
                let ct = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";
                (
                    axum::http::StatusCode::OK,
                    [("content-type", ct)],
                    body(now / STEP_MS * STEP_MS, histogram.load(Ordering::SeqCst)),
                )
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

fn scrape_config(via: &str, target: SocketAddr) -> String {
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  external_labels: {{via: {via}}}\n\
         scrape_configs:\n  - job_name: nh\n    static_configs:\n      - targets: ['{target}']\n\
         \x20 - job_name: nhcb\n    convert_classic_histograms_to_nhcb: true\n    \
         static_configs:\n      - targets: ['{target}']\n\
         \x20 - job_name: nh-limit\n    native_histogram_bucket_limit: 2\n    \
         static_configs:\n      - targets: ['{target}']\n\
         \x20 - job_name: nh-factor\n    native_histogram_min_bucket_factor: 3\n    \
         static_configs:\n      - targets: ['{target}']\n\
         \x20 - job_name: nhcb-refused\n    convert_classic_histograms_to_nhcb: true\n    \
         native_histogram_bucket_limit: 1\n    static_configs:\n      - targets: ['{target}']\n"
    )
}

async fn api(prom: SocketAddr, path: &str, query: &[(&str, String)]) -> serde_json::Value {
    let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
    harness::prometheus_api(prom, path, &query).await.unwrap()
}

/// Every native histogram sample of `metric{job,via}` in the last 10 minutes, by timestamp
/// (ms), as PromQL returns it.
async fn histograms(prom: SocketAddr, metric: &str, job: &str, via: &str) -> BTreeMap<i64, String> {
    let q = format!("{metric}{{job=\"{job}\",via=\"{via}\"}}[10m]");
    let data = api(prom, "/api/v1/query", &[("query", q)]).await;
    let mut out = BTreeMap::new();
    for series in data["result"].as_array().unwrap() {
        for h in series["histograms"].as_array().into_iter().flatten() {
            let ts = (h[0].as_f64().unwrap() * 1000.0).round() as i64;
            out.insert(ts, h[1].to_string());
        }
    }
    out
}

/// Float samples of every series matching `{via}` (the via label removed), by series and
/// timestamp.
async fn floats(prom: SocketAddr, via: &str) -> BTreeMap<String, BTreeMap<i64, String>> {
    let q = format!("{{via=\"{via}\",__name__!~\"up|scrape_.*\"}}[10m]");
    let data = api(prom, "/api/v1/query", &[("query", q)]).await;
    let mut out = BTreeMap::new();
    for series in data["result"].as_array().unwrap() {
        let mut m = series["metric"].as_object().unwrap().clone();
        m.remove("via");
        let key = serde_json::Value::Object(m).to_string();
        let values: BTreeMap<i64, String> = series["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                (
                    (v[0].as_f64().unwrap() * 1000.0).round() as i64,
                    v[1].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        if !values.is_empty() {
            out.insert(key, values);
        }
    }
    out
}

/// Exemplars of series matching `{via}`: (series without via, exemplar labels, value, ts).
async fn exemplars(prom: SocketAddr, via: &str) -> BTreeSet<(String, String, String, i64)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let q = [
        ("query", format!("{{via=\"{via}\"}}")),
        ("start", (now - 600).to_string()),
        ("end", (now + 60).to_string()),
    ];
    let data = api(prom, "/api/v1/query_exemplars", &q).await;
    let mut out = BTreeSet::new();
    for s in data.as_array().into_iter().flatten() {
        let mut m = s["seriesLabels"].as_object().unwrap().clone();
        m.remove("via");
        let series = serde_json::Value::Object(m).to_string();
        for e in s["exemplars"].as_array().into_iter().flatten() {
            out.insert((
                series.clone(),
                e["labels"].to_string(),
                e["value"].as_str().unwrap().to_owned(),
                (e["timestamp"].as_f64().unwrap() * 1000.0).round() as i64,
            ));
        }
    }
    out
}

async fn live(prom: SocketAddr, query: &str) -> usize {
    harness::prometheus_live(prom, query).await.unwrap()
}

/// The entries of `a` and `b` at keys both have; panics on any difference.
fn common<K: Ord + Clone + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    what: &str,
    a: &BTreeMap<K, V>,
    b: &BTreeMap<K, V>,
) -> usize {
    let mut n = 0;
    for (k, va) in a {
        if let Some(vb) = b.get(k) {
            assert_eq!(va, vb, "{what} at {k:?}");
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_histograms_exemplars_and_metadata_match_prometheus_agent() {
    assert!(
        harness::prometheus_installed(),
        "Prometheus 3 is required (deploy/dev/setup.sh fetches it)"
    );
    let bins = Bins::locate().expect("binaries built by cargo test --workspace");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    harness::write_certs(d, &["nh".to_owned()]).unwrap();
    let prom = block(|| {
        harness::start_prometheus_args(d, &["--enable-feature=native-histograms,exemplar-storage"])
    })
    .unwrap();
    let capture = Capture::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let rw = format!(
        "  - url: {}\n    send_exemplars: true\n    send_native_histograms: true\n    \
         queue_config: {{min_backoff: 50ms, max_backoff: 1s}}\n  \
         - url: {}\n    name: capture-v2\n    protobuf_message: io.prometheus.write.v2.Request\n    \
         send_exemplars: true\n    queue_config: {{min_backoff: 50ms, max_backoff: 1s}}\n",
        prom.remote_write_url(),
        capture.url()
    );
    let gateway = block(|| harness::start_gateway_yaml(&bins, d, &rw, "15s", "")).unwrap();
    let histogram = Arc::new(AtomicBool::new(true));
    let t = target(histogram.clone()).await;

    // Prometheus in agent mode with native histograms, remote-writing straight to the view.
    let pcfg = d.join("prom-agent.yml");
    std::fs::write(
        &pcfg,
        format!(
            // Remote write 2.0: Prometheus 3.5's 1.0 requests carry converted histograms
            // (custom buckets) without their bounds, which its own receiver refuses.
            "{}remote_write:\n  - url: {}\n    send_exemplars: true\n    \
             send_native_histograms: true\n    protobuf_message: io.prometheus.write.v2.Request\n    \
             queue_config: {{batch_send_deadline: 1s}}\n",
            scrape_config("prometheus", t),
            prom.remote_write_url()
        ),
    )
    .unwrap();
    let _pagent = block(|| {
        harness::spawn_prometheus_agent(
            d,
            &pcfg,
            &["--enable-feature=native-histograms,exemplar-storage"],
        )
    })
    .unwrap();
    let ucfg = d.join("uplink-prom.yml");
    std::fs::write(&ucfg, scrape_config("uplink", t)).unwrap();
    let args = ["--enable-feature=native-histograms"];
    let (_uagent, uweb) =
        harness::start_agent_beside(&bins, d, "nh", &ucfg, gateway.quic, &args).unwrap();
    block(|| harness::wait_ready(uweb, Duration::from_secs(20))).unwrap();

    // Enough common timestamps on both sides.
    let mut ok = false;
    for _ in 0..120 {
        let p = histograms(prom.web, "rpc_duration_seconds", "nh", "prometheus").await;
        let u = histograms(prom.web, "rpc_duration_seconds", "nh", "uplink").await;
        if p.keys().filter(|k| u.contains_key(k)).count() >= 3 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if !ok {
        for log in [
            "prometheus-agent.log",
            "uplink-agent.log",
            "prometheus.log",
            "gateway.log",
        ] {
            let text = std::fs::read_to_string(d.join(log)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            eprintln!(
                "--- {log}\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let p = histograms(prom.web, "rpc_duration_seconds", "nh", "prometheus").await;
        let u = histograms(prom.web, "rpc_duration_seconds", "nh", "uplink").await;
        eprintln!("prometheus: {:?}\nuplink: {:?}", p.keys(), u.keys());
    }
    assert!(ok, "native histograms from both sides at common timestamps");
    assert_eq!(
        live(prom.web, "up{via=\"uplink\",job=\"nh\"} == 1").await,
        1,
        "the uplink agent scrapes the protobuf target"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Integer and float native histograms: identical at every common timestamp.
    for metric in ["rpc_duration_seconds", "queue_fill"] {
        let p = histograms(prom.web, metric, "nh", "prometheus").await;
        let u = histograms(prom.web, metric, "nh", "uplink").await;
        let n = common(metric, &p, &u);
        assert!(n >= 3, "{metric}: {n} common timestamps: {p:?} {u:?}");
    }
    // A classic histogram converted to a native one with custom buckets
    // (`convert_classic_histograms_to_nhcb`), identical on both sides.
    let p = histograms(prom.web, "payload_bytes", "nhcb", "prometheus").await;
    let u = histograms(prom.web, "payload_bytes", "nhcb", "uplink").await;
    let n = common("payload_bytes (NHCB)", &p, &u);
    assert!(
        n >= 3,
        "payload_bytes as NHCB: {n} common timestamps: {p:?} {u:?}"
    );
    assert!(
        p.values().any(|h| h.contains("500000")),
        "custom bucket bounds: {p:?}"
    );
    // Resolution limits (`native_histogram_bucket_limit`, `native_histogram_min_bucket_factor`):
    // reduced alike on both sides, to something else than the exposed resolution.
    for job in ["nh-limit", "nh-factor"] {
        for metric in ["rpc_duration_seconds", "queue_fill"] {
            let p = histograms(prom.web, metric, job, "prometheus").await;
            let u = histograms(prom.web, metric, job, "uplink").await;
            let n = common(&format!("{metric} ({job})"), &p, &u);
            assert!(
                n >= 3,
                "{metric} in {job}: {n} common timestamps: {p:?} {u:?}"
            );
        }
        let full = histograms(prom.web, "rpc_duration_seconds", "nh", "uplink").await;
        let reduced = histograms(prom.web, "rpc_duration_seconds", job, "uplink").await;
        assert!(
            reduced
                .iter()
                .any(|(ts, h)| full.get(ts).is_some_and(|f| f != h)),
            "{job} reduces the resolution: {reduced:?} {full:?}"
        );
    }
    // A converted histogram no reduction brings under the limit fails the scrape, on both sides.
    assert_eq!(
        live(prom.web, "up{job=\"nhcb-refused\"} == 0").await,
        2,
        "nhcb-refused fails on both sides"
    );
    assert_eq!(
        live(
            prom.web,
            "{job=\"nhcb-refused\",__name__!~\"up|scrape_.*\"}"
        )
        .await,
        0
    );
    // Float series (classic histogram, counter, summary): the same series, the same values.
    let p = floats(prom.web, "prometheus").await;
    let u = floats(prom.web, "uplink").await;
    assert_eq!(
        p.keys().collect::<Vec<_>>(),
        u.keys().collect::<Vec<_>>(),
        "float series sets"
    );
    for (series, pv) in &p {
        let n = common(series, pv, &u[series]);
        assert!(n >= 3, "{series}: {n} common timestamps");
    }
    assert!(p.keys().any(|k| k.contains("\"le\":\"100.0\"")), "{p:?}");
    assert!(
        p.keys().any(|k| k.contains("\"quantile\":\"1.0\"")),
        "{p:?}"
    );
    // Exemplars, compared per series over the timestamps both sides scraped (each job
    // starts at its own phase).
    let pe = exemplars(prom.web, "prometheus").await;
    let ue = exemplars(prom.web, "uplink").await;
    let key = |e: &(String, String, String, i64)| (e.0.clone(), e.3);
    let both: BTreeSet<(String, i64)> = pe
        .iter()
        .map(key)
        .filter(|k| ue.iter().any(|x| key(x) == *k))
        .collect();
    let stamps: BTreeSet<i64> = both.iter().map(|k| k.1).collect();
    assert!(
        stamps.len() >= 3,
        "common exemplar timestamps: {pe:?} {ue:?}"
    );
    let at = |s: &BTreeSet<(String, String, String, i64)>| -> BTreeSet<_> {
        s.iter()
            .filter(|e| both.contains(&key(e)))
            .cloned()
            .collect()
    };
    assert_eq!(at(&pe), at(&ue), "exemplars at common timestamps");
    assert!(
        ue.iter().any(|e| e.0.contains("payload_bytes_bucket")),
        "bucket exemplars: {ue:?}"
    );

    // Remote write 2.0 to the capture: histograms, exemplars, metadata inline.
    let x = capture.extras();
    assert_eq!(
        x.mixed_series, 0,
        "no 2.0 series mixes floats and histograms"
    );
    assert!(!x.created.is_empty());
    assert!(
        x.created
            .iter()
            .all(|(l, ms)| l.iter().any(|l| l.value == "jobs_total") && *ms == 1_700_000_000_005),
        "created timestamps of the counter: {:?}",
        x.created.first()
    );
    assert!(
        x.histograms
            .iter()
            .any(|(l, _)| l.iter().any(|l| l.value == "rpc_duration_seconds"))
    );
    assert!(!x.exemplars.is_empty());
    let md = |family: &str| x.metadata.get(family).cloned();
    assert_eq!(
        md("rpc_duration_seconds").map(|m| (m.r#type, m.help)),
        Some((MetricType::Histogram as i32, "RPC latency.".to_owned()))
    );
    assert_eq!(
        md("jobs_total").map(|m| m.r#type),
        Some(MetricType::Counter as i32)
    );
    assert_eq!(
        md("gc_pause_seconds").map(|m| m.r#type),
        Some(MetricType::Summary as i32)
    );

    // A native histogram leaves the target: both sides mark it stale.
    for via in ["prometheus", "uplink"] {
        let q = format!("ephemeral_seconds{{via=\"{via}\"}}");
        assert_eq!(
            live(prom.web, &q).await,
            4,
            "{via}: ephemeral_seconds before, in the four jobs that keep it"
        );
    }
    histogram.store(false, Ordering::SeqCst);
    for via in ["prometheus", "uplink"] {
        let q = format!("ephemeral_seconds{{via=\"{via}\"}}");
        let mut gone = false;
        for _ in 0..60 {
            if live(prom.web, &q).await == 0 {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(gone, "{via}: the native histogram is marked stale");
    }
    capture.shutdown().await;
}
