//! Content negotiation end to end: the job's `Accept` header reaches the target, and the
//! response's `Content-Type` picks the parser (OpenMetrics or the text format), with the
//! results landing in the real RocksDB queue. A response without `Content-Type` fails the
//! scrape as in Prometheus 3, unless the job has a `fallback_scrape_protocol`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uplink_agent::config::{Escaping, ScrapeProtocol};
use uplink_agent::metrics::Metrics;
use uplink_agent::queue::Queue;
use uplink_agent::scrape::{Context, Job, Stop, Target, negotiate, run_target};
use uplink_shared::model::{self, Label};

const OPENMETRICS_BODY: &str = "# TYPE req counter\n# UNIT req \n\
req_total{code=\"200\"} 3 1700000000.001 # {trace_id=\"x\"} 1\n\
req_created{code=\"200\"} 1.6e9\n\
# TYPE build info\nbuild_info{v=\"1\"} 1\n# EOF\n";

/// Serves `body` with `content_type` (none when `None`) and records each request's `Accept`.
async fn server(content_type: Option<&'static str>, seen: Arc<Mutex<Vec<String>>>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                if let Some(accept) = request.lines().find_map(|l| l.strip_prefix("accept: ")) {
                    seen.lock().unwrap().push(accept.to_owned());
                }
                let ct = content_type
                    .map(|c| format!("Content-Type: {c}\r\n"))
                    .unwrap_or_default();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\n{ct}Content-Length: {}\r\nConnection: close\r\n\r\n{OPENMETRICS_BODY}",
                    OPENMETRICS_BODY.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

fn target(addr: &str, job: &str, accept: String, fallback: Option<ScrapeProtocol>) -> Target {
    Target {
        job: Arc::new(Job {
            accept,
            fallback,
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
async fn accept_header_goes_out_and_content_type_picks_the_parser() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), false).unwrap();
    let om_seen = Arc::new(Mutex::new(Vec::new()));
    let text_seen = Arc::new(Mutex::new(Vec::new()));
    let om = server(
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        om_seen.clone(),
    )
    .await;
    // The same body labelled as the text format fails to parse there (as in Prometheus).
    let text = server(Some("text/plain; version=0.0.4"), text_seen.clone()).await;
    let bare = server(None, Arc::default()).await;
    let configured = negotiate::accept_header(
        Some(&[
            ScrapeProtocol::PrometheusProto,
            ScrapeProtocol::OpenMetricsText1_0_0,
            ScrapeProtocol::PrometheusText0_0_4,
        ]),
        false,
        Some(Escaping::AllowUtf8),
    );
    let default_accept = Job::new("x").unwrap().accept.clone();
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let ctx = Context {
        queue: queue.clone(),
        metrics: Metrics::default(),
    };
    for t in [
        target(&om, "om", default_accept.clone(), None),
        target(&text, "text", configured.clone(), None),
        target(&bare, "bare", default_accept.clone(), None),
        target(
            &bare,
            "fallback",
            default_accept.clone(),
            Some(ScrapeProtocol::OpenMetricsText1_0_0),
        ),
    ] {
        let stop = Stop {
            now: stop.clone(),
            removed: CancellationToken::new(),
        };
        tracker.spawn(run_target(t, ctx.clone(), Arc::default(), stop));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.cancel();
    tracker.close();
    tracker.wait().await;

    let om_seen = om_seen.lock().unwrap().clone();
    assert!(!om_seen.is_empty());
    assert!(om_seen.iter().all(|a| *a == default_accept), "{om_seen:?}");
    assert_eq!(
        default_accept,
        "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
    );
    let text_seen = text_seen.lock().unwrap().clone();
    assert!(!text_seen.is_empty());
    assert!(text_seen.iter().all(|a| *a == configured), "{text_seen:?}");
    assert_eq!(
        configured,
        "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.3"
    );

    // Last value and timestamp per series name and job.
    let mut last: HashMap<(String, String), (f64, i64)> = HashMap::new();
    for ts in uplink_agent::stored_series(&queue).await.unwrap() {
        let name = model::get(&ts.labels, "__name__").unwrap().to_owned();
        let job = model::get(&ts.labels, "job").unwrap().to_owned();
        let s = ts.samples[0];
        last.insert((job, name), (s.value, s.timestamp));
    }
    let get = |job: &str, name: &str| last.get(&(job.to_owned(), name.to_owned())).copied();
    assert_eq!(get("om", "up").map(|v| v.0), Some(1.0));
    assert_eq!(get("om", "req_total"), Some((3.0, 1_700_000_000_001)));
    assert_eq!(get("om", "req_created").map(|v| v.0), Some(1.6e9));
    assert_eq!(get("om", "build_info").map(|v| v.0), Some(1.0));
    assert_eq!(get("om", "scrape_samples_scraped").map(|v| v.0), Some(3.0));
    assert_eq!(get("text", "up").map(|v| v.0), Some(0.0));
    assert_eq!(get("text", "req_total"), None);
    // No Content-Type: a failed scrape, unless a fallback protocol is configured.
    assert_eq!(get("bare", "up").map(|v| v.0), Some(0.0));
    assert_eq!(get("bare", "req_total"), None);
    assert_eq!(get("fallback", "up").map(|v| v.0), Some(1.0));
    assert_eq!(get("fallback", "req_total"), Some((3.0, 1_700_000_000_001)));
}
