//! A batch's journey is one trace, exported over OTLP/HTTP to a receiver that decodes the
//! real OTLP protobuf (`uplink_loadtest::otlp`):
//!
//! 1. Off by default: the gateway has a `tracing:` section with `sampling_fraction: 0` and the
//!    agent none; data flows and no span is exported.
//! 2. The agent's `prometheus.yml` gains a `tracing:` section (`sampling_fraction: 1`) and is
//!    reloaded (`POST /-/reload`): from then on every batch is traced, and because sampling is
//!    parent-based the gateway traces those batches too, although its own fraction is 0.
//! 3. Each trace: `uplink.agent.ship` (service `uplink-agent`, root) → `uplink.gateway.ingest`
//!    (service `uplink-gateway`) → `uplink.gateway.dedupe`, and one `uplink.gateway.write` per
//!    destination, a child of the ingest span or (when a read merged several batches) linked
//!    to it.
//! 4. Flushed on shutdown: both processes are stopped with SIGTERM within the exporters' 5 s
//!    batch delay of their last spans; afterwards every ingest span has its agent span, every
//!    agent span its ingest span, and every ingest span a write for each destination.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use uplink_loadtest::capture::Capture;
use uplink_loadtest::harness::{
    AgentSpec, Bins, block, free_addr, rw_entries, start_agent_with, start_gateway_yaml, wait_for,
    write_certs,
};
use uplink_loadtest::otlp::{OtlpReceiver, ReceivedSpan};
use uplink_loadtest::probe::{Probe, ProbeSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_agent_ship_gateway_ingest_dedupe_and_each_destination_write() {
    let bins = Bins::locate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let site = "traced";
    write_certs(dir.path(), &[site.to_owned()]).unwrap();
    let otlp = OtlpReceiver::start(free_addr().unwrap()).await.unwrap();
    let (a, b) = (
        Capture::start(free_addr().unwrap()).await.unwrap(),
        Capture::start(free_addr().unwrap()).await.unwrap(),
    );
    let tracing_yaml = |fraction: &str| {
        format!(
            "tracing:\n  client_type: http\n  endpoint: {}\n  insecure: true\n  \
             sampling_fraction: {fraction}\n",
            otlp.endpoint()
        )
    };
    // The gateway's own fraction is 0: it exports only what an agent sampled.
    let rw = format!("{}{}", rw_entries(&[a.url(), b.url()]), tracing_yaml("0"));
    let mut gateway = block(|| start_gateway_yaml(&bins, dir.path(), &rw, "0s", "")).unwrap();
    let probe = Probe::start_local(ProbeSpec {
        targets: 2,
        families: 3,
        churn_every: 0,
    })
    .await
    .unwrap();
    let targets = probe.instances();
    let spec = AgentSpec {
        self_scrape: false,
        site,
        gateway: gateway.quic,
        targets: &targets,
        interval: "300ms",
        job: "probe",
    };
    let mut agent =
        block(|| start_agent_with(&bins, dir.path(), &spec, "", "batch_delay: 20ms")).unwrap();

    // 1. Off: data flows, nothing is exported (5 s is the exporters' batch delay).
    wait_for("data at both destinations", Duration::from_secs(30), || {
        !a.is_empty() && !b.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        otlp.spans().is_empty(),
        "no span without an agent that samples: {:?}",
        otlp.spans().first()
    );

    // 2. The agent turns tracing on by reload.
    let mut text = std::fs::read_to_string(&agent.config).unwrap();
    text.push_str(&tracing_yaml("1.0"));
    std::fs::write(&agent.config, text).unwrap();
    let reload = reqwest::Client::new()
        .post(format!("http://{}/-/reload", agent.web))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200, "reload: {:?}", reload.text().await);

    // 3. Whole traces arrive.
    wait_for("a whole trace", Duration::from_secs(30), || {
        let spans = otlp.spans();
        by_name(&spans, "uplink.gateway.write").len() >= 2
            && !by_name(&spans, "uplink.agent.ship").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 4. Stop both within the batch delay of their last spans: only the flush at shutdown
    // delivers those.
    assert!(block(|| agent.proc.terminate(Duration::from_secs(30))));
    assert!(block(|| gateway.proc.terminate(Duration::from_secs(30))));

    let spans = otlp.spans();
    assert_eq!(otlp.requests().1, 0, "every export decoded");
    let ships = by_name(&spans, "uplink.agent.ship");
    let ingests = by_name(&spans, "uplink.gateway.ingest");
    let dedupes = by_name(&spans, "uplink.gateway.dedupe");
    let writes = by_name(&spans, "uplink.gateway.write");
    eprintln!(
        "spans: {} agent ship, {} ingest, {} dedupe, {} write",
        ships.len(),
        ingests.len(),
        dedupes.len(),
        writes.len()
    );
    assert!(ships.len() >= 3, "several traced batches: {}", ships.len());
    for s in &ships {
        assert_eq!(s.service, "uplink-agent");
        assert!(s.parent_span_id.is_empty(), "the agent's span is the root");
        assert_eq!(
            s.attributes.get("uplink.ack").map(String::as_str),
            Some("accepted")
        );
    }
    let ship_ids: HashMap<&str, &ReceivedSpan> =
        ships.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let mut traced_ships = HashSet::new();
    for i in &ingests {
        assert_eq!(i.service, "uplink-gateway");
        let parent = ship_ids
            .get(i.parent_span_id.as_str())
            .unwrap_or_else(|| panic!("ingest span without its agent span (flushed?): {i:?}"));
        assert_eq!(parent.trace_id, i.trace_id, "one trace");
        assert_eq!(
            parent.attributes["uplink.first_seq"],
            i.attributes["uplink.first_seq"]
        );
        traced_ships.insert(parent.span_id.as_str());
        let dedupe: Vec<_> = dedupes
            .iter()
            .filter(|d| d.parent_span_id == i.span_id)
            .collect();
        assert_eq!(dedupe.len(), 1, "one dedupe span under each ingest span");
        assert_eq!(dedupe[0].trace_id, i.trace_id);
        // Every batch reaches both destinations: a write span under it, or linked to it.
        let mut destinations: HashSet<&str> = HashSet::new();
        for w in &writes {
            let child = w.parent_span_id == i.span_id && w.trace_id == i.trace_id;
            let linked = w
                .links
                .iter()
                .any(|(t, s)| *t == i.trace_id && *s == i.span_id);
            if child || linked {
                destinations.insert(w.attributes["uplink.destination"].as_str());
            }
        }
        assert_eq!(
            destinations.len(),
            2,
            "a write per destination for batch {}: {destinations:?}",
            i.attributes["uplink.first_seq"]
        );
    }
    assert_eq!(
        traced_ships.len(),
        ships.len(),
        "every agent span has its gateway span (the gateway flushed at shutdown)"
    );
    assert!(writes.iter().all(|w| w.service == "uplink-gateway"));
}

fn by_name<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.name == name).collect()
}
