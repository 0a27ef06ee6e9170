//! One destination's forwarder against the capture receiver, on a real store: the status
//! policy (bisect on 400, split on 413, retry with `Retry-After` on 429, pause on 401, done on
//! 409), remote write 2.0 with its fallbacks, write relabeling, the sample age limit, and
//! sharding. Every case checks the exact samples the receiver got and the counters.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use uplink_gateway::config::RemoteWriteConfig;
use uplink_gateway::fanout::Forwarder;
use uplink_gateway::forward::Destination;
use uplink_gateway::ledger::Ledger;
use uplink_gateway::metrics::Metrics;
use uplink_gateway::quarantine::Quarantine;
use uplink_gateway::store::{Commit, Entry, Store};
use uplink_loadtest::capture::{Capture, Scripted};
use uplink_loadtest::harness::free_addr;
use uplink_shared::model;
use uplink_shared::remote_write::{self, Label, Sample, TimeSeries, WriteRequest};

/// An entry holding one sample at `ts` for each named series `m{s="<name>"}`.
fn entry(ts: i64, series: &[&str]) -> Entry {
    let req = WriteRequest {
        timeseries: series
            .iter()
            .map(|s| TimeSeries {
                labels: vec![Label::new("__name__", "m"), Label::new("s", *s)],
                samples: vec![Sample {
                    value: ts as f64,
                    timestamp: ts,
                }],
                ..Default::default()
            })
            .collect(),
        metadata: vec![],
    };
    Entry {
        samples: series.len() as u64,
        body: remote_write::encode_snappy(&req),
        trace: None,
        extras: 0,
    }
}

struct Rig {
    /// The last destination built, by configuration: what a destination remembers (refused
    /// series, a fallback) lives as long as it does.
    last: std::sync::Mutex<Option<(String, Destination)>>,
    _dir: tempfile::TempDir,
    store: Store,
    capture: Capture,
    metrics: Metrics,
    ledger: Arc<Ledger>,
    quarantine: Quarantine,
    next: u64,
}

impl Rig {
    async fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let (store, _) =
            tokio::task::spawn_blocking(move || Store::open(&path, false, &["capture".into()]))
                .await
                .unwrap()
                .unwrap();
        let metrics = Metrics::default();
        let quarantine = Quarantine::new(dir.path().join("quarantine"), 1 << 20, metrics.clone());
        Rig {
            store,
            capture: Capture::start(free_addr().unwrap()).await.unwrap(),
            metrics,
            ledger: Arc::new(Ledger::default()),
            quarantine,
            next: 0,
            last: std::sync::Mutex::new(None),
            _dir: dir,
        }
    }

    /// Stores one entry from `site`.
    async fn commit(&mut self, site: &str, ts: i64, series: &[&str]) {
        let c = Commit {
            identity: site.into(),
            queue_id: 1,
            next_seq: self.next + 1,
            entry: Some(entry(ts, series)),
        };
        self.next += 1;
        self.store.commit(c).await.unwrap();
    }

    /// Runs a forwarder configured by `extra` (YAML lines of the remote_write entry) until
    /// the backlog is empty.
    async fn drain(&self, extra: &str) {
        self.drain_with(extra, None).await;
    }

    /// As [`Rig::drain`], with `tenancy` routes and headers.
    async fn drain_with(
        &self,
        extra: &str,
        tenancy: Option<&uplink_gateway::config::TenancyConfig>,
    ) {
        let rw: RemoteWriteConfig = serde_yaml::from_str(&format!(
            "url: {}\nname: capture\npaused_retry_interval: 200ms\n{extra}",
            self.capture.url()
        ))
        .unwrap();
        let key = format!("{extra}{tenancy:?}");
        let d = {
            let mut last = self.last.lock().unwrap();
            match &*last {
                Some((cfg, d)) if *cfg == key => d.clone(),
                _ => {
                    let d = Destination::new(
                        &rw,
                        tenancy,
                        Duration::from_secs(5),
                        self.metrics.clone(),
                    )
                    .unwrap();
                    *last = Some((key, d.clone()));
                    d
                }
            }
        };
        let f = Forwarder::new(
            0,
            &rw,
            d,
            self.store.clone(),
            self.ledger.clone(),
            self.metrics.clone(),
            self.quarantine.clone(),
        );
        let drain = CancellationToken::new();
        drain.cancel();
        tokio::time::timeout(
            Duration::from_secs(20),
            f.run(drain, CancellationToken::new()),
        )
        .await
        .expect("the backlog drains");
        assert_eq!(self.store.usage(0).entries, 0);
    }

    /// Received samples as (series name, timestamp), in arrival order.
    fn received(&self) -> Vec<(String, i64)> {
        self.capture
            .snapshot()
            .iter()
            .map(|r| {
                let s = model::get(&r.labels, "s").unwrap_or_default().to_owned();
                (s, r.timestamp)
            })
            .collect()
    }

    fn metric(&self, needle: &str) -> f64 {
        let mut registry = Registry::default();
        self.metrics.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(needle)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    fn ledger_dropped(&self, site: &str) -> Option<f64> {
        let series = self
            .ledger
            .series(0, &BTreeMap::new(), Duration::from_secs(60));
        series
            .iter()
            .find(|t| {
                model::get(&t.labels, "__name__") == Some("uplink_site_dropped_samples_total")
                    && model::get(&t.labels, "site") == Some(site)
            })
            .map(|t| t.samples[0].value)
    }
}

fn pairs(v: &[(&str, i64)]) -> Vec<(String, i64)> {
    v.iter().map(|(s, t)| ((*s).to_owned(), *t)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bisect_isolates_the_refused_series_and_delivers_the_rest() {
    let mut rig = Rig::new().await;
    rig.commit("a", 1, &["x", "y"]).await;
    rig.commit("b", 2, &["bad", "z"]).await;
    rig.commit("a", 3, &["x", "y"]).await;
    rig.capture
        .rules(|r| r.reject_labels = vec![("s".into(), "bad".into())]);
    rig.drain("").await;
    let mut got = rig.received();
    got.sort();
    assert_eq!(
        got,
        pairs(&[("x", 1), ("x", 3), ("y", 1), ("y", 3), ("z", 2)])
    );
    let dropped = "uplink_gateway_remote_write_samples_dropped_total{destination=\"capture\",reason=\"invalid\"}";
    assert_eq!(rig.metric(dropped), 1.0);
    assert!(rig.metric("uplink_gateway_remote_write_splits_total{destination=\"capture\"}") >= 2.0);
    assert_eq!(rig.ledger_dropped("b"), Some(1.0));
    assert_eq!(rig.ledger_dropped("a").unwrap_or(0.0), 0.0);
    let q = std::fs::read_to_string(rig.quarantine.path("capture")).expect("quarantined");
    let line: serde_json::Value = serde_json::from_str(q.trim()).unwrap();
    assert_eq!(line["labels"]["s"], "bad");
    assert_eq!(line["reason"], "invalid");
    assert_eq!(line["status"], 400);
    assert!(line["message"].as_str().unwrap().contains("not accepted"));

    // The refused series is remembered: it goes in a request of its own (refused once more,
    // alone) instead of being bisected out of everyone's requests again, and is counted.
    let refusals = rig.capture.report().invalid;
    rig.commit("b", 4, &["bad", "z"]).await;
    rig.commit("a", 5, &["x"]).await;
    rig.drain("").await;
    assert_eq!(
        rig.capture.report().invalid,
        refusals + 1,
        "one request, the bad series alone"
    );
    assert_eq!(rig.metric(dropped), 2.0);
    assert!(rig.received().contains(&("z".to_owned(), 4)));
    assert!(rig.received().contains(&("x".to_owned(), 5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_on_413_down_to_what_the_receiver_takes_in_order() {
    let mut rig = Rig::new().await;
    for ts in 1..=3 {
        rig.commit("a", ts, &["a", "b", "c", "d", "e"]).await;
    }
    rig.capture.rules(|r| r.max_series = Some(2));
    rig.drain("").await;
    let got = rig.received();
    assert_eq!(got.len(), 15);
    for s in ["a", "b", "c", "d", "e"] {
        let ts: Vec<i64> = got.iter().filter(|(n, _)| n == s).map(|p| p.1).collect();
        assert_eq!(ts, vec![1, 2, 3], "series {s} in order");
    }
    assert!(rig.capture.report().too_large >= 2);
    assert_eq!(
        rig.metric("uplink_gateway_remote_write_samples_total{destination=\"capture\"}"),
        15.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_honours_retry_after_then_pause_on_401_and_done_on_409() {
    let mut rig = Rig::new().await;
    rig.commit("a", 1, &["x"]).await;
    rig.capture.script([Scripted {
        status: 429,
        retry_after: Some("1".into()),
        message: "slow down".into(),
    }]);
    let started = Instant::now();
    rig.drain("").await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited Retry-After"
    );
    assert_eq!(rig.received(), pairs(&[("x", 1)]));
    assert_eq!(
        rig.metric("uplink_gateway_remote_write_retries_total{destination=\"capture\"}"),
        1.0
    );

    // 401 pauses the destination; it resumes when the receiver takes the credentials again.
    rig.commit("a", 2, &["x"]).await;
    rig.capture.script((0..3).map(|_| Scripted::status(401)));
    let metrics = rig.metrics.clone();
    let watcher = tokio::spawn(async move {
        let g = metrics
            .paused
            .get_or_create(&uplink_gateway::metrics::labels(&[(
                "destination",
                "capture",
            )]))
            .clone();
        for _ in 0..200 {
            if g.get() == 1 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    });
    rig.drain("").await;
    assert!(watcher.await.unwrap(), "paused while refused");
    assert_eq!(
        rig.metric("uplink_gateway_remote_write_paused{destination=\"capture\"}"),
        0.0
    );
    assert_eq!(rig.received(), pairs(&[("x", 1), ("x", 2)]));

    // 409: the receiver has it; delivered, never resent.
    rig.commit("a", 3, &["x", "y"]).await;
    rig.capture.script([Scripted::status(409)]);
    rig.drain("").await;
    assert_eq!(rig.received(), pairs(&[("x", 1), ("x", 2)]));
    assert_eq!(
        rig.metric("uplink_gateway_remote_write_samples_duplicate_total{destination=\"capture\"}"),
        2.0
    );

    // 429 with retries off, and a 404: dropped, counted by reason.
    rig.commit("a", 4, &["x"]).await;
    rig.capture.script([Scripted::status(429)]);
    rig.drain("queue_config: {retry_on_http_429: false}\n")
        .await;
    rig.commit("a", 5, &["x"]).await;
    rig.capture.script([Scripted::status(404)]);
    rig.drain("").await;
    let dropped = |reason: &str| {
        rig.metric(&format!(
            "uplink_gateway_remote_write_samples_dropped_total{{destination=\"capture\",reason=\"{reason}\"}}"
        ))
    };
    assert_eq!((dropped("rate_limited"), dropped("refused")), (1.0, 1.0));
    assert_eq!(rig.received().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_2_and_both_fallbacks() {
    let v2 = "protobuf_message: io.prometheus.write.v2.Request\n";
    let mut rig = Rig::new().await;
    rig.commit("a", 1, &["x", "y"]).await;
    rig.drain(v2).await;
    assert_eq!(rig.capture.report().v2_requests, 1);
    let mut got = rig.received();
    got.sort();
    assert_eq!(got, pairs(&[("x", 1), ("y", 1)]));
    let protocol = "uplink_gateway_remote_write_protocol{destination=\"capture\"}";
    assert_eq!(rig.metric(protocol), 2.0);

    // A receiver that answers 415 to 2.0: the same data goes again as 1.0.
    rig.capture.rules(|r| r.v1_only = true);
    rig.commit("a", 2, &["x"]).await;
    rig.drain(&format!("{v2}remote_timeout: 28s\n")).await;
    assert_eq!(rig.capture.report().unsupported, 1);
    assert_eq!(rig.metric(protocol), 1.0);
    assert!(rig.received().contains(&("x".into(), 2)));

    // A broken 1.0 receiver that reads a 2.0 body as an empty 1.0 one and answers 204
    // without the Written headers: treated as 415.
    rig.capture.rules(|r| {
        r.v1_only = false;
        r.broken_v1 = true;
    });
    rig.commit("a", 3, &["x"]).await;
    rig.drain(&format!("{v2}remote_timeout: 29s\n")).await;
    assert!(rig.received().contains(&("x".into(), 3)));
    assert!(
        rig.metric(
            "uplink_gateway_remote_write_requests_total{destination=\"capture\",outcome=\"2xx\"}"
        ) >= 4.0,
        "the broken receiver's 204 and the resend"
    );
    assert_eq!(rig.capture.report().duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_relabel_age_limit_and_shards() {
    let mut rig = Rig::new().await;
    let now = uplink_gateway::store::now_ms();
    rig.commit("a", now - 3_600_000, &["x"]).await;
    rig.commit("a", now, &["x", "drop", "y"]).await;
    rig.drain(
        "queue_config: {sample_age_limit: 10m}\nwrite_relabel_configs:\n  \
         - {source_labels: [s], regex: drop, action: drop}\n  \
         - {target_label: env, replacement: prod}\n",
    )
    .await;
    let snap = rig.capture.snapshot();
    assert_eq!(snap.len(), 2);
    assert!(
        snap.iter()
            .all(|r| model::get(&r.labels, "env") == Some("prod"))
    );
    let dropped = |reason: &str| {
        rig.metric(&format!(
            "uplink_gateway_remote_write_samples_dropped_total{{destination=\"capture\",reason=\"{reason}\"}}"
        ))
    };
    assert_eq!((dropped("too_old"), dropped("write_relabel")), (1.0, 1.0));

    // Many series from four sites over four shards: the fast path shards by site, the decoded
    // path (here for a relabeling) by series; either way every sample once, each series in
    // order.
    for relabel in [
        "",
        "write_relabel_configs: [{target_label: env, replacement: prod}]\n",
    ] {
        rig.capture.clear();
        for ts in 1..=5 {
            for site in 0..4 {
                let names: Vec<String> = (0..5).map(|i| format!("{site}-{i}")).collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                rig.commit(&format!("site{site}"), ts, &names).await;
            }
        }
        rig.drain(&format!(
            "queue_config: {{max_shards: 4, max_samples_per_send: 10}}\n{relabel}"
        ))
        .await;
        let got = rig.received();
        assert_eq!(got.len(), 100, "{relabel}");
        for site in 0..4 {
            for i in 0..5 {
                let s = format!("{site}-{i}");
                let ts: Vec<i64> = got.iter().filter(|(n, _)| *n == s).map(|p| p.1).collect();
                assert_eq!(ts, vec![1, 2, 3, 4, 5], "series {s} in order {relabel}");
            }
        }
        assert!(rig.capture.requests() >= 10, "{}", rig.capture.requests());
    }
}

/// Tenancy at the destination: a tenant routed elsewhere is passed over, a tenant with headers
/// gets requests of its own carrying them, a site without a tenant goes as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_routed_and_get_their_own_headers() {
    let tenancy: uplink_gateway::config::TenancyConfig = serde_yaml::from_str(
        "tenants:\n  team-a: {headers: {X-Scope-OrgID: a}}\n  \
         team-b: {destinations: [elsewhere]}\n",
    )
    .unwrap();
    let mut rig = Rig::new().await;
    for ts in 1..=3 {
        rig.commit("team-a/s1", ts, &["a1", "a2"]).await;
        rig.commit("team-b/s2", ts, &["b1"]).await;
        rig.commit("plain", ts, &["p1"]).await;
    }
    rig.drain_with("", Some(&tenancy)).await;
    let mut got: Vec<String> = rig.received().into_iter().map(|(s, _)| s).collect();
    got.sort();
    got.dedup();
    assert_eq!(got, vec!["a1", "a2", "p1"], "team-b is not routed here");
    let by_org = rig.capture.report().samples_by_org_id;
    assert_eq!(by_org.get("a"), Some(&6), "{by_org:?}");
    assert_eq!(by_org.get(""), Some(&3), "{by_org:?}");
    let fwd =
        "uplink_gateway_tenant_samples_forwarded_total{tenant=\"team-a\",destination=\"capture\"}";
    assert_eq!(rig.metric(fwd), 6.0, "per-tenant counts");
}

/// Histograms, exemplars and metadata per destination, as Prometheus's `send_*` settings
/// say: 1.0 leaves out what is off (native histograms counted), 2.0 always carries histograms
/// and metadata inline (remembered from an earlier request), and every read is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histograms_exemplars_and_metadata_follow_each_destinations_settings() {
    use uplink_shared::remote_write::{
        Exemplar, Histogram, MetricMetadata, MetricType, Sample, TimeSeries, extras,
    };
    let mut rig = Rig::new().await;
    let md = MetricMetadata {
        r#type: MetricType::Histogram as i32,
        metric_family_name: "lat".into(),
        help: "Latency.".into(),
        unit: "seconds".into(),
    };
    // Entry 1: metadata, a histogram series, a float series with an exemplar. Entry 2: the
    // same series again, without metadata (as the agent sends it after the first batch).
    let batch = |ts: i64, with_md: bool| {
        let req = WriteRequest {
            timeseries: vec![
                TimeSeries {
                    labels: vec![Label::new("__name__", "lat"), Label::new("s", "h")],
                    histograms: vec![Histogram {
                        schema: 1,
                        timestamp: ts,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                TimeSeries {
                    labels: vec![Label::new("__name__", "lat_count"), Label::new("s", "f")],
                    samples: vec![Sample {
                        value: 1.0,
                        timestamp: ts,
                    }],
                    exemplars: vec![Exemplar {
                        labels: vec![Label::new("trace_id", "t")],
                        value: 0.5,
                        timestamp: ts,
                    }],
                    created_timestamp: 1_000,
                    ..Default::default()
                },
            ],
            metadata: if with_md { vec![md.clone()] } else { vec![] },
        };
        Entry {
            samples: 2,
            body: remote_write::encode_snappy(&req),
            trace: None,
            extras: extras::of(&req.timeseries, &req.metadata),
        }
    };
    let commit = |rig: &mut Rig, ts, with_md| {
        let c = Commit {
            identity: "a".into(),
            queue_id: 1,
            next_seq: rig.next + 1,
            entry: Some(batch(ts, with_md)),
        };
        rig.next += 1;
        c
    };
    let c = commit(&mut rig, 1, true);
    rig.store.commit(c).await.unwrap();
    let c = commit(&mut rig, 2, false);
    rig.store.commit(c).await.unwrap();

    // 1.0 with Prometheus's defaults: floats and metadata only; the histograms counted.
    rig.drain("").await;
    let x = rig.capture.extras();
    assert_eq!(rig.received(), pairs(&[("f", 1), ("f", 2)]));
    assert!(x.histograms.is_empty() && x.exemplars.is_empty());
    assert!(
        x.created.is_empty(),
        "1.0 requests never carry created timestamps"
    );
    assert_eq!(x.metadata.get("lat"), Some(&md));
    assert_eq!(
        rig.metric(
            "uplink_gateway_remote_write_samples_dropped_total{destination=\"capture\",reason=\"native_histograms_off\"}"
        ),
        2.0
    );

    // 1.0 with everything on, metadata off.
    rig.capture.clear();
    for ts in [3, 4] {
        let c = commit(&mut rig, ts, ts == 3);
        rig.store.commit(c).await.unwrap();
    }
    rig.drain(
        "send_exemplars: true\nsend_native_histograms: true\nmetadata_config: {send: false}\n",
    )
    .await;
    let x = rig.capture.extras();
    assert_eq!(x.histograms.len(), 2);
    assert_eq!(x.exemplars.len(), 2);
    assert!(x.metadata.is_empty());
    assert!(x.created.is_empty());

    // 2.0: histograms always, metadata inline on every request (the second entry, a request
    // of its own, has none: the destination remembers it); never a series with both floats
    // and histograms.
    rig.capture.clear();
    for ts in [5, 6] {
        let c = commit(&mut rig, ts, ts == 5);
        rig.store.commit(c).await.unwrap();
    }
    rig.drain(
        "protobuf_message: io.prometheus.write.v2.Request\nsend_exemplars: true\n\
         queue_config: {max_samples_per_send: 2}\n",
    )
    .await;
    let x = rig.capture.extras();
    assert_eq!((x.histograms.len(), x.exemplars.len()), (2, 2));
    assert_eq!(x.mixed_series, 0);
    assert_eq!(x.metadata.get("lat"), Some(&md));
    assert_eq!(rig.capture.report().v2_requests, 2);
    assert_eq!(x.metadata_requests, 2, "metadata inline in both requests");
    let created: Vec<i64> = x.created.iter().map(|c| c.1).collect();
    assert_eq!(created, [1_000, 1_000], "2.0 carries created timestamps");
}
