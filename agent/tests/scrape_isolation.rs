//! A failing or slow target fails alone: it never delays another target's scrapes, its
//! scrapes record `up` = 0, and every result lands in the real RocksDB queue.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uplink_agent::metrics::Metrics;
use uplink_agent::queue::Queue;
use uplink_agent::scrape::{Context, Job, Stop, Target, run_target};
use uplink_shared::model::{self, Label};

/// A tiny HTTP server: `slow` never answers; otherwise a one-line exposition.
async fn server(slow: bool, hits: Arc<AtomicU64>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let hits = hits.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                hits.fetch_add(1, Ordering::SeqCst);
                if slow {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                }
                let body = "# TYPE fast_total counter\nfast_total 7\n";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

fn target(addr: &str, job: &str) -> Target {
    Target {
        job: Arc::new(Job {
            external_labels: vec![Label::new("site", "t")],
            ..Job::new(job).unwrap()
        }),
        url: format!("http://{addr}/metrics"),
        labels: vec![Label::new("instance", addr), Label::new("job", job)],
        discovered: Arc::default(),
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(200),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_dead_targets_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), false).unwrap();
    let fast_hits = Arc::new(AtomicU64::new(0));
    let fast = server(false, fast_hits.clone()).await;
    let slow = server(true, Arc::new(AtomicU64::new(0))).await;
    // Nothing listens here: connection refused.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let ctx = Context {
        queue: queue.clone(),
        metrics: Metrics::default(),
    };
    for t in [
        target(&fast, "fast"),
        target(&slow, "slow"),
        target(&dead, "dead"),
    ] {
        let stop = Stop {
            now: stop.clone(),
            removed: CancellationToken::new(),
        };
        tracker.spawn(run_target(t, ctx.clone(), Arc::default(), stop));
    }
    tokio::time::sleep(Duration::from_millis(2200)).await;
    stop.cancel();
    tracker.close();
    tracker.wait().await;

    // Collect `up` per job from the queue.
    let mut up: std::collections::HashMap<String, Vec<f64>> = Default::default();
    for ts in uplink_agent::stored_series(&queue).await.unwrap() {
        if model::get(&ts.labels, "__name__") == Some("up") {
            assert_eq!(model::get(&ts.labels, "site"), Some("t"));
            let job = model::get(&ts.labels, "job").unwrap().to_owned();
            up.entry(job).or_default().push(ts.samples[0].value);
        }
    }
    let fast_up = &up["fast"];
    // ~10 intervals passed; the slow target's timeouts must not have delayed the fast one.
    assert!(
        fast_up.len() >= 8,
        "fast target scraped only {} times",
        fast_up.len()
    );
    assert!(fast_up.iter().all(|v| *v == 1.0));
    assert!(up["slow"].len() >= 5 && up["slow"].iter().all(|v| *v == 0.0));
    assert!(up["dead"].len() >= 5 && up["dead"].iter().all(|v| *v == 0.0));
    assert_eq!(fast_hits.load(Ordering::SeqCst) as usize, fast_up.len());
}
