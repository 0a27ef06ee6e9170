//! The global side end to end, real parts: two sites (agents, certificates, probes) through a
//! gateway that writes its freshness ledger into a real Prometheus running deploy/global's
//! rules (with shortened `for:`), a real Alertmanager running deploy/global's routing, and a
//! webhook standing in for the ticketing system. Taking one site offline opens exactly one
//! ticket, for that site; bringing it back resolves it; the healthy site gets none.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use uplink_loadtest::harness::{self, AgentSpec, Bins, Timings};
use uplink_loadtest::probe::{Probe, ProbeSpec};
use uplink_loadtest::tickets::Tickets;

use uplink_loadtest::harness::block;

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_site_opens_one_ticket_and_resolves_it() {
    assert!(
        harness::prometheus_installed() && harness::alertmanager_installed(),
        "Debian's prometheus and prometheus-alertmanager are required (deploy/dev/setup.sh)"
    );
    let bins = Bins::locate().expect("binaries built by cargo test --workspace");
    let dir = tempfile::tempdir().unwrap();
    let sites = ["site-a".to_string(), "site-b".to_string()];
    harness::write_certs(dir.path(), &sites).unwrap();
    let tickets = Tickets::start(harness::free_addr().unwrap(), false)
        .await
        .unwrap();
    let timings = Timings {
        alert_for: "3s".into(),
        evaluation_interval: "1s".into(),
        group_wait: "1s".into(),
        group_interval: "1s".into(),
    };
    let global =
        block(|| harness::start_global_view(dir.path(), &tickets.url(), &timings)).unwrap();
    let prom = global.prometheus.web;
    let gateway = block(|| {
        harness::start_gateway_with(
            &bins,
            dir.path(),
            &[global.prometheus.remote_write_url()],
            "1s",
        )
    })
    .unwrap();

    let spec = ProbeSpec {
        targets: 1,
        families: 3,
        churn_every: 0,
    };
    let mut probes = Vec::new();
    let mut agents = Vec::new();
    for site in &sites {
        let probe = Probe::start(spec, IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
            .await
            .unwrap();
        let targets = probe.instances();
        agents.push(
            block(|| {
                harness::start_agent(
                    &bins,
                    dir.path(),
                    &AgentSpec {
                        self_scrape: false,
                        site,
                        gateway: gateway.quic,
                        targets: &targets,
                        interval: "1s",
                        job: "probe",
                    },
                )
            })
            .unwrap(),
        );
        probes.push(probe);
    }
    wait_until(
        "both sites online in the global view",
        Duration::from_secs(60),
        || async {
            harness::prometheus_value(prom, "fleet:sites_online:count")
                .await
                .ok()
                .flatten()
                == Some(2.0)
        },
    )
    .await;
    assert!(
        tickets.events().is_empty(),
        "healthy fleet: {:?}",
        tickets.events()
    );

    // Site b goes offline.
    assert!(block(|| agents[1].proc.terminate(Duration::from_secs(20))));
    // Bound: ledger interval (1s) + evaluation (1s) + for (3s) + group_wait (1s), with slack for
    // a loaded machine.
    wait_until("a ticket for site-b", Duration::from_secs(30), || async {
        !tickets.events().is_empty()
    })
    .await;
    // Give Alertmanager a few more group intervals to send anything else it would.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let events = tickets.events();
    assert_eq!(events.len(), 1, "exactly one ticket: {events:?}");
    assert_eq!(events[0].action, "opened");
    assert_eq!(events[0].alertname, "UplinkSiteOffline");
    assert_eq!(
        events[0].labels.get("site").map(String::as_str),
        Some("site-b")
    );

    // Site b returns: the ticket is resolved, nothing else is opened.
    block(|| agents[1].restart(&bins, dir.path())).unwrap();
    wait_until("the ticket resolved", Duration::from_secs(60), || async {
        tickets.events().len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = tickets.events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1].action, "resolved");
    assert_eq!(
        events[1].labels.get("site").map(String::as_str),
        Some("site-b")
    );
    assert!(
        events
            .iter()
            .all(|e| e.labels.get("site").map(String::as_str) != Some("site-a"))
    );
}
