//! Revocation and rotation under load, without a restart and with nothing lost: a running
//! agent's certificate is revoked (`uplink-gateway certs revoke`, CRL reloaded by the
//! gateway); the gateway closes its connection (code 4) and refuses it from then on while the
//! agent keeps scraping into its queue. A new certificate for the same site is written to the
//! agent's files; the agent reloads them, reconnects, and drains its backlog. The probe's
//! oracle finds every scrape, exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use uplink_loadtest::harness::{Rig, RigOptions, block, wait_for};
use uplink_loadtest::oracle;
use uplink_loadtest::probe::ProbeSpec;
use uplink_shared::certs::Authority;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_agent_is_cut_off_and_a_new_certificate_brings_it_back_with_nothing_lost() {
    let spec = ProbeSpec {
        targets: 2,
        families: 4,
        churn_every: 0,
    };
    let opts = RigOptions {
        shipper_extra: "batch_delay: 50ms",
        tls_extra: "crl_file: ca.crl, reload_interval: 200ms",
        ..RigOptions::default()
    };
    let rig = Rig::start_with("rotating", spec, "250ms", &opts)
        .await
        .unwrap();
    let dir = rig.dir.path().to_path_buf();
    wait_for("data", Duration::from_secs(30), || !rig.capture.is_empty()).await;

    // Revoke the running agent's certificate with the CLI.
    let status = Command::new(&rig.bins.gateway)
        .args(["certs", "revoke", "--site", "rotating", "--dir"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    wait_for(
        "the gateway to cut the agent off",
        Duration::from_secs(20),
        || rig.gateway_metric("uplink_gateway_revoked_disconnects_total") == 1.0,
    )
    .await;
    wait_for("the agent to notice", Duration::from_secs(20), || {
        rig.agent_metric("uplink_agent_gateway_connected") == 0.0
    })
    .await;
    // Cut off for a while: it keeps scraping into its queue, its reconnects are refused.
    let served_at_cut: Vec<u64> = (0..spec.targets).map(|t| rig.probe.served(t)).collect();
    wait_for("scrapes while cut off", Duration::from_secs(30), || {
        (0..spec.targets).all(|t| rig.probe.served(t) >= served_at_cut[t] + 4)
    })
    .await;
    assert_eq!(rig.agent_metric("uplink_agent_gateway_connected"), 0.0);
    assert!(rig.agent_metric("uplink_agent_queue_records") > 0.0);

    // A new certificate for the same site, written over the agent's files: it reloads them
    // and reconnects, without a restart.
    let ca = Authority::load(&dir).unwrap();
    ca.issue_agent("rotating", 30)
        .unwrap()
        .write(&dir, "rotating")
        .unwrap();
    wait_for("the reconnect", Duration::from_secs(30), || {
        rig.agent_metric("uplink_agent_gateway_connected") == 1.0
    })
    .await;
    assert!(rig.agent_metric("uplink_agent_tls_reloads_total") >= 1.0);
    assert_eq!(
        rig.agent_metric("uplink_agent_tls_last_reload_successful"),
        1.0
    );
    let mut rig = rig;
    assert!(block(|| rig.agent.proc.terminate(Duration::from_secs(30))));
    assert!(rig.wait_gateway_drained(Duration::from_secs(30)).await);

    let received = rig.capture.snapshot();
    let report = oracle::check(&spec, &rig.probe.addrs, &rig.oracle_labels(), &received);
    assert_eq!(report.wrong, 0, "{:?}", report.errors);
    assert_eq!(report.missing_in_scrape, 0, "{:?}", report.errors);
    assert_eq!(rig.capture.duplicates(), 0);
    for (t, cut) in served_at_cut.iter().enumerate() {
        let last = report.scrapes[t].iter().next_back().copied().unwrap_or(0);
        // `served` counts scrapes; the oracle numbers them from 0.
        assert!(
            last + 1 >= cut + 4,
            "target {t}: the scrapes made while cut off arrived (last {last}, cut at {cut})"
        );
        assert!(
            report.missing_scrapes(t, last + 1).is_empty(),
            "target {t}: scrapes missing across the revocation"
        );
    }
    println!(
        "{} samples, none lost across a revocation and a certificate rotation",
        received.len()
    );
}
