//! End to end with a real Prometheus (Debian's `prometheus`, remote-write receiver on): three
//! sites, real certificates, real binaries, the probe exporter. After a few scrape intervals and
//! an orderly stop, PromQL over Prometheus's HTTP API must return every scrape of every probe
//! series of every site, with exactly the oracle's labels (external labels included) and values.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use uplink_loadtest::harness::{self, AgentSpec, Bins};
use uplink_loadtest::oracle;
use uplink_loadtest::probe::{Probe, ProbeSpec, spec_series_count};
use uplink_shared::model::{self, Label};

use uplink_loadtest::harness::block;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_of_every_site_reaches_prometheus_exactly() {
    assert!(
        harness::prometheus_installed(),
        "Prometheus 3 is required (deploy/dev/setup.sh fetches it)"
    );
    let bins = Bins::locate().expect("binaries built by cargo test --workspace");
    let dir = tempfile::tempdir().unwrap();
    let sites: Vec<String> = ["site-a", "site-b", "site-c"].map(String::from).to_vec();
    harness::write_certs(dir.path(), &sites).unwrap();
    let spec = ProbeSpec {
        targets: 2,
        families: 6,
        churn_every: 0,
    };
    let prom = block(|| harness::start_prometheus(dir.path())).unwrap();
    let gateway =
        block(|| harness::start_gateway(&bins, dir.path(), &[prom.remote_write_url()])).unwrap();

    let mut probes = Vec::new();
    let mut agents = Vec::new();
    for site in &sites {
        let probe = Probe::start(spec, IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
            .await
            .unwrap();
        let targets = probe.instances();
        let agent = block(|| {
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
        .unwrap();
        probes.push(probe);
        agents.push(agent);
    }
    // A few scrape intervals, then an orderly stop: every scrape served must be delivered.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for a in &mut agents {
        assert!(
            block(|| a.proc.terminate(Duration::from_secs(20))),
            "{} exits cleanly",
            a.site
        );
    }
    // The gateway acked what it stored; its forwarder delivers right after.
    assert!(block(|| gateway.wait_drained(Duration::from_secs(30))));

    for (site, probe) in sites.iter().zip(&probes) {
        let received = harness::prometheus_samples(prom.web, &format!("{{site=\"{site}\"}}[1h]"))
            .await
            .unwrap();
        let extra = [Label::new("job", "probe"), Label::new("site", site.clone())];
        let report = oracle::check(&spec, &probe.addrs, &extra, &received);
        assert!(report.is_clean(), "{site}: {report:?}");
        for t in 0..spec.targets {
            let served = probe.served(t);
            assert!(served >= 3, "{site} target {t} scraped only {served} times");
            let got: Vec<u64> = report.scrapes[t].iter().copied().collect();
            let want: Vec<u64> = (0..served).collect();
            assert_eq!(
                got, want,
                "{site} target {t}: every served scrape must arrive"
            );
        }
        assert_eq!(
            report.probe_samples,
            (0..spec.targets).map(|t| probe.served(t)).sum::<u64>()
                * spec_series_count(&spec) as u64,
            "{site}: sample count"
        );
        // The synthetic `up` series carries target and external labels and is 1.
        let ups: Vec<_> = received
            .iter()
            .filter(|r| model::get(&r.labels, "__name__") == Some("up"))
            .collect();
        assert_eq!(
            ups.len() as u64,
            (0..spec.targets).map(|t| probe.served(t)).sum::<u64>()
        );
        for u in ups {
            assert_eq!(u.value, 1.0);
            let names: Vec<&str> = u.labels.iter().map(|l| l.name.as_str()).collect();
            assert_eq!(names, ["__name__", "instance", "job", "site"]);
        }
    }
}
