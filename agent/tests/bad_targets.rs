//! Hostile and broken targets fail alone: a gzip bomb, a target trickling one byte at a time,
//! invalid UTF-8, duplicate labels, a million series on one page, HTML and JSON answered with
//! 200 (refused for their `Content-Type`, as Prometheus 3 does). Each records `up` = 0 with its own reason on every scrape, while a healthy target
//! beside them is scraped on schedule, and every result lands in the real RocksDB queue.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uplink_agent::config::JobLimits;
use uplink_agent::metrics::Metrics;
use uplink_agent::queue::Queue;
use uplink_agent::scrape::{Context, Health, Job, Stop, Target, run_target};
use uplink_shared::model::{self, Label};

fn gzip_bomb() -> Vec<u8> {
    // 64 MiB of one repeated valid line, about 64 KiB compressed.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let line = b"bomb_total 1\n".repeat(1 << 16);
    for _ in 0..(64 << 20) / line.len() {
        enc.write_all(&line).unwrap();
    }
    enc.finish().unwrap()
}

fn million_series() -> String {
    let mut s = String::with_capacity(30 << 20);
    for i in 0..1_000_000 {
        s.push_str(&format!("wide{{i=\"{i}\"}} 1\n"));
    }
    s
}

async fn server() -> String {
    let bomb = Arc::new(gzip_bomb());
    let wide = Arc::new(million_series());
    let app = Router::new()
        .route("/good", get(|| async { "# TYPE ok gauge\nok 1\n" }))
        .route(
            "/bomb",
            get(move || {
                let bomb = bomb.clone();
                async move {
                    (
                        [
                            (header::CONTENT_ENCODING, "gzip"),
                            (header::CONTENT_TYPE, "text/plain; version=0.0.4"),
                        ],
                        (*bomb).clone(),
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/utf8",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    b"ok{a=\"\xff\xfe\"} 1\n".to_vec(),
                )
            }),
        )
        .route("/dup", get(|| async { "x{a=\"1\",a=\"2\"} 1\n" }))
        .route(
            "/wide",
            get(move || {
                let wide = wide.clone();
                async move { (*wide).clone() }
            }),
        )
        .route(
            "/html",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/html")],
                    "<!doctype html><html><body>Login</body></html>",
                )
            }),
        )
        .route(
            "/json",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    "{\"status\":\"ok\"}",
                )
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

/// A raw HTTP server that sends its headers, then one body byte every 100 ms, forever.
async fn trickler() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000000\r\n\r\n";
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if s.write_all(b"#").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn target(addr: &str, path: &str, limits: JobLimits) -> Target {
    Target {
        job: Arc::new(Job {
            limits,
            ..Job::new(path).unwrap()
        }),
        url: format!("http://{addr}/{path}"),
        labels: vec![Label::new("instance", addr), Label::new("job", path)],
        discovered: Arc::default(),
        interval: Duration::from_millis(500),
        timeout: Duration::from_millis(450),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_target_fails_alone_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), false).unwrap();
    let addr = server().await;
    let slow = trickler().await;
    let limits = JobLimits {
        body_size_limit: 4 << 20,
        sample_limit: 1000,
        ..JobLimits::default()
    };
    let paths = [
        "good", "bomb", "trickle", "utf8", "dup", "wide", "html", "json",
    ];
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let ctx = Context {
        queue: queue.clone(),
        metrics: Metrics::default(),
    };
    let mut health: HashMap<&str, Arc<Mutex<Health>>> = HashMap::new();
    for p in paths {
        let h = Arc::new(Mutex::new(Health::default()));
        health.insert(p, h.clone());
        let stop = Stop {
            now: stop.clone(),
            removed: CancellationToken::new(),
        };
        let host = if p == "trickle" { &slow } else { &addr };
        // The wide page (about 20 MB) fits the default 64 MiB cap and trips sample_limit.
        let limits = if p == "wide" {
            JobLimits {
                body_size_limit: 0,
                ..limits
            }
        } else {
            limits
        };
        tracker.spawn(run_target(target(host, p, limits), ctx.clone(), h, stop));
    }
    tokio::time::sleep(Duration::from_millis(4200)).await;
    stop.cancel();
    tracker.close();
    tracker.wait().await;

    let mut up: HashMap<String, Vec<f64>> = HashMap::new();
    for ts in uplink_agent::stored_series(&queue).await.unwrap() {
        if model::get(&ts.labels, "__name__") == Some("up") {
            let job = model::get(&ts.labels, "job").unwrap().to_owned();
            up.entry(job).or_default().push(ts.samples[0].value);
        }
    }
    let good = &up["good"];
    assert!(good.len() >= 7, "the healthy target was delayed: {good:?}");
    assert!(good.iter().all(|v| *v == 1.0));
    let reasons = [
        ("bomb", "body size limit exceeded"),
        ("trickle", "timed out"),
        ("utf8", "UTF-8"),
        ("dup", "appears more than once"),
        ("wide", "sample limit of 1000 exceeded"),
        // Prometheus 3 refuses a Content-Type it has no parser for (2.42 parsed it as text).
        ("html", "unsupported Content-Type \"text/html\""),
        ("json", "unsupported Content-Type \"application/json\""),
    ];
    for (p, reason) in reasons {
        let ups = &up[p];
        assert!(ups.len() >= 6, "{p} scraped only {} times", ups.len());
        assert!(ups.iter().all(|v| *v == 0.0), "{p}: {ups:?}");
        let err = health[p].lock().unwrap().last_error.clone();
        assert!(
            err.to_lowercase().contains(&reason.to_lowercase()),
            "{p}: {err}"
        );
    }
}
