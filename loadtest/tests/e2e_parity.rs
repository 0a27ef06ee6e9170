//! Parity with Prometheus agent mode: the real Prometheus (`prometheus --enable-feature=agent`)
//! and `uplink-agent` scrape the same targets with the same scrape configuration (relabeling
//! with every action, metric_relabel_configs, honor_labels on and off, a label colliding with
//! target labels, escaped label values, an explicit timestamp; a static target and a file_sd
//! one), and both write into one real
//! Prometheus, told apart only by an external label. PromQL must then show identical series
//! sets and identical values (scrape durations aside), and the same stale markers: for a
//! series that leaves a scrape, and for a target that leaves the file_sd file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use uplink_loadtest::harness::{self, Bins, Proc};
use uplink_shared::model::Label;

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Serves `/metrics` (and `/honor`) on a fresh port; `gone` removes one series.
/// `ts_ms` is the explicit timestamp of `with_ts` (0: not exposed yet).
async fn exporter(name: &'static str, gone: Arc<AtomicBool>, ts_ms: Arc<AtomicI64>) -> SocketAddr {
    let body = move |honor: bool| {
        let mut s = String::new();
        if honor {
            s.push_str("# TYPE conflict gauge\nconflict{job=\"inner\",instance=\"inner:1\"} 1\n");
            return s;
        }
        s.push_str("# HELP conflict Labels colliding with target labels.\n# TYPE conflict gauge\n");
        s.push_str(&format!(
            "conflict{{job=\"inner\",instance=\"inner:1\",team=\"x\",src=\"{name}\"}} 1\n"
        ));
        s.push_str("# TYPE drop_me_total counter\ndrop_me_total 5\n");
        s.push_str("# TYPE keep_me gauge\nkeep_me{kind=\"a\",noisy=\"n1\"} 2\n");
        s.push_str("keep_me{kind=\"b\",noisy=\"n2\"} 3.5\n");
        if !gone.load(Ordering::SeqCst) {
            s.push_str("# TYPE gone_metric gauge\ngone_metric{v=\"1\"} 7\n");
        }
        let ts = ts_ms.load(Ordering::SeqCst);
        if ts != 0 {
            s.push_str(&format!("# TYPE with_ts gauge\nwith_ts 11 {ts}\n"));
        }
        s.push_str("empty_label{e=\"\",f=\"g\"} 4\n");
        s.push_str("escaped{path=\"C:\\\\dir\\\"q\\\"\\n\"} -0.5e-3\n");
        s.push_str(&format!("only_{name} +Inf\n"));
        s
    };
    let body = Arc::new(body);
    let b2 = body.clone();
    let app = Router::new()
        .route("/metrics", get(move || async move { body(false) }))
        .route("/honor", get(move || async move { b2(true) }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

/// The scrape configuration both scrapers run, with `external_labels: {via: <via>}`: target
/// `a` is static, the others come from the file_sd file `sd`.
fn scrape_config(via: &str, a: SocketAddr, sd: &std::path::Path) -> String {
    let static_configs = format!(
        "      - targets: ['{a}']\n        labels: {{team: Alpha, __tmp_keep: 'yes', zone: eu-1}}\n"
    );
    format!(
        r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  external_labels: {{via: {via}}}
scrape_configs:
  - job_name: parity
    static_configs:
{static_configs}      - targets: ['127.0.0.1:1']
        labels: {{__tmp_keep: 'no'}}
    file_sd_configs:
      - files: ['{sd}']
        refresh_interval: 1s
    relabel_configs:
      - {{source_labels: [__tmp_keep], regex: 'yes|no', action: keep}}
      - {{source_labels: [__tmp_keep], regex: 'no', action: drop}}
      - {{source_labels: [team], target_label: team_lower, action: lowercase}}
      - {{source_labels: [team], target_label: team_upper, action: uppercase}}
      - {{source_labels: [__address__], target_label: shard, modulus: 8, action: hashmod}}
      - {{source_labels: [zone], regex: '([a-z]+)-(\d)', target_label: region, replacement: '${{1}}_$2'}}
      - {{regex: 'zo(ne)', action: labelmap, replacement: 'copy_$1'}}
      - {{regex: 'zone', action: labeldrop}}
      - {{source_labels: [team], target_label: team, action: keepequal}}
      - {{source_labels: [team_lower], target_label: team, action: dropequal}}
      - {{regex: '__.*|job|team.*|shard|region|copy_ne', action: labelkeep}}
    metric_relabel_configs:
      - {{source_labels: [__name__], regex: 'drop_me_.*', action: drop}}
      - {{source_labels: [__name__, kind], separator: '@', regex: 'keep_me@(.*)', target_label: kind_copy, replacement: 'k-$1'}}
      - {{regex: 'noisy', action: labeldrop}}
  - job_name: honor
    honor_labels: true
    metrics_path: /honor
    static_configs:
      - targets: ['{a}']
"#,
        sd = sd.display(),
    )
}

struct Side {
    via: &'static str,
    _proc: Proc,
}

/// Every series (labels without `via`) with the set of its values, from the global view.
async fn view(prom: SocketAddr, via: &str) -> BTreeMap<String, BTreeSet<String>> {
    let got = harness::prometheus_samples(prom, &format!("{{via=\"{via}\"}}[1h]"))
        .await
        .unwrap();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in got {
        let labels: Vec<Label> = r.labels.into_iter().filter(|l| l.name != "via").collect();
        let key = uplink_shared::model::display(&labels);
        let name = labels
            .iter()
            .find(|l| l.name == "__name__")
            .map(|l| l.value.clone());
        let value = if name.as_deref() == Some("scrape_duration_seconds") {
            "duration".to_owned()
        } else if name.as_deref() == Some("with_ts") {
            format!("{}@{}", r.value, r.timestamp)
        } else {
            format!("{}", r.value)
        };
        out.entry(key).or_default().insert(value);
    }
    out
}

/// Series names present now (instant query, so stale series are absent).
async fn live(prom: SocketAddr, query: &str) -> usize {
    let url = format!("http://{prom}/api/v1/query");
    let v: serde_json::Value = reqwest::Client::new()
        .get(&url)
        .query(&[("query", query)])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    v["data"]["result"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_agent_and_prometheus_agent_write_the_same_series() {
    assert!(
        harness::prometheus_installed(),
        "Debian's `prometheus` package is required (deploy/dev/setup.sh installs it)"
    );
    let bins = Bins::locate().expect("binaries built by cargo test --workspace");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    harness::write_certs(d, &["parity".to_owned()]).unwrap();
    let prom = block(|| harness::start_prometheus(d)).unwrap();
    let gateway = block(|| harness::start_gateway(&bins, d, &[prom.remote_write_url()])).unwrap();

    let gone = Arc::new(AtomicBool::new(false));
    let ts_ms = Arc::new(AtomicI64::new(0));
    let a = exporter("a", gone.clone(), ts_ms.clone()).await;
    let b = exporter("b", gone.clone(), ts_ms.clone()).await;

    // Prometheus in agent mode, remote-writing straight into the global view.
    let pcfg = d.join("prom-agent.yml");
    let sd = d.join("targets.json");
    let write_sd = |targets: &[SocketAddr]| {
        let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let text = format!(
            r#"[{{"targets": [{}], "labels": {{"team": "Beta", "__tmp_keep": "yes", "zone": "us-2"}}}}]"#,
            list.join(", ")
        );
        // Written whole and renamed, as configuration management does.
        let tmp = d.join("targets.json.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &sd).unwrap();
    };
    write_sd(&[b]);
    let text = format!(
        "{}remote_write:\n  - url: {}\n    queue_config: {{batch_send_deadline: 1s}}\n",
        scrape_config("prometheus", a, &sd),
        prom.remote_write_url()
    );
    std::fs::write(&pcfg, text).unwrap();
    let pweb = harness::free_addr().unwrap();
    let pagent = Proc::spawn(
        "prometheus-agent",
        Command::new("prometheus")
            .arg("--enable-feature=agent")
            .arg(format!("--config.file={}", pcfg.display()))
            .arg(format!(
                "--storage.agent.path={}",
                d.join("agent-wal").display()
            ))
            .arg(format!("--web.listen-address={pweb}"))
            .arg("--web.enable-lifecycle"),
        &d.join("prom-agent.log"),
    )
    .unwrap();

    // uplink-agent on the same scrape configuration; its uplink settings in a file of their own.
    let ucfg = d.join("uplink-prom.yml");
    std::fs::write(&ucfg, scrape_config("uplink", a, &sd)).unwrap();
    let uplink_file = d.join("uplink.yml");
    std::fs::write(
        &uplink_file,
        format!(
            "gateways: ['{}']\nserver_name: localhost\ntls: {{cert_file: parity.crt, key_file: parity.key, ca_file: ca.crt}}\nqueue: {{directory: parity-queue, sync: interval}}\nshipper: {{batch_delay: 200ms}}\n",
            gateway.quic
        ),
    )
    .unwrap();
    let uweb = harness::free_addr().unwrap();
    let uagent = Proc::spawn(
        "uplink-agent",
        Command::new(&bins.agent)
            .arg(format!("--config.file={}", ucfg.display()))
            .arg(format!("--uplink.config.file={}", uplink_file.display()))
            .arg(format!("--web.listen-address={uweb}")),
        &d.join("uplink-agent.log"),
    )
    .unwrap();
    block(|| harness::wait_ready(pweb, Duration::from_secs(60))).unwrap();
    block(|| harness::wait_ready(uweb, Duration::from_secs(20))).unwrap();
    // Prometheus's remote write skips samples older than its WAL watcher's start, so the
    // explicit timestamp is exposed only from now on.
    ts_ms.store(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
        Ordering::SeqCst,
    );
    let sides = [
        Side {
            via: "prometheus",
            _proc: pagent,
        },
        Side {
            via: "uplink",
            _proc: uagent,
        },
    ];

    // Phase 1: everything present on both sides.
    let wait_for = |query: String, want: usize| {
        let web = prom.web;
        async move {
            for _ in 0..150 {
                if live(web, &query).await == want {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            false
        }
    };
    for s in &sides {
        assert!(
            wait_for(format!("gone_metric{{via=\"{}\"}}", s.via), 2).await,
            "{}: gone_metric from both targets",
            s.via
        );
        assert!(
            wait_for(format!("up{{via=\"{}\",job=\"parity\"}}", s.via), 2).await,
            "{}: two parity targets",
            s.via
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Phase 2: a series leaves the scrapes: stale markers end it at once on both sides
    // (without them it would stay visible for the 5-minute lookback).
    gone.store(true, Ordering::SeqCst);
    for s in &sides {
        assert!(
            wait_for(format!("gone_metric{{via=\"{}\"}}", s.via), 0).await,
            "{}: gone_metric marked stale",
            s.via
        );
    }

    // Phase 3: target b leaves the file_sd file: its series, `up` included, go stale.
    write_sd(&[]);
    for s in &sides {
        assert!(
            wait_for(format!("up{{via=\"{}\",job=\"parity\"}}", s.via), 1).await,
            "{}: removed target's up marked stale",
            s.via
        );
        assert!(
            wait_for(format!("only_b{{via=\"{}\"}}", s.via), 0).await,
            "{}: removed target's series marked stale",
            s.via
        );
    }
    // Let both senders flush what they have.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let p = view(prom.web, "prometheus").await;
    let u = view(prom.web, "uplink").await;
    let only_p: Vec<_> = p.keys().filter(|k| !u.contains_key(*k)).collect();
    let only_u: Vec<_> = u.keys().filter(|k| !p.contains_key(*k)).collect();
    if !(only_p.is_empty() && only_u.is_empty()) {
        for log in ["prom-agent.log", "prometheus.log"] {
            let text = std::fs::read_to_string(d.join(log)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            eprintln!("--- {log} (last lines, newest first)\n{}", tail.join("\n"));
        }
    }
    assert!(
        only_p.is_empty() && only_u.is_empty(),
        "series only from Prometheus: {only_p:#?}\nseries only from uplink: {only_u:#?}"
    );
    for (k, pv) in &p {
        assert_eq!(pv, &u[k], "values of {k}");
    }
    // The configuration exercised what it claims.
    let keys: Vec<&String> = p.keys().collect();
    let has = |needle: &str| keys.iter().any(|k| k.contains(needle));
    assert!(has("exported_job=\"inner\""), "{keys:#?}");
    assert!(
        has("conflict{instance=\"inner:1\",job=\"inner\"}"),
        "{keys:#?}"
    );
    assert!(has("kind_copy=\"k-a\"") && !has("noisy") && !has("drop_me"));
    assert!(has("team_lower=\"alpha\"") && has("team_upper=\"BETA\"") && has("region=\"eu_1\""));
    assert!(has("copy_ne=\"us-2\"") && has("shard=") && !has("zone="));
    assert!(p.len() > 20, "{keys:#?}");
}
