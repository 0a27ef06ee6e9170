//! Power loss at the gateway, emulated (`uplink_loadtest::powerloss`: the gateway runs with the
//! `synclog` library; after a kill -9, every byte and directory entry it had not synced is
//! taken away, the worst case a power loss allows):
//!
//! - With `storage.fsync: true` (the default): three power losses at random points while an
//!   agent ships and the destination is down (everything acknowledged waits in the store).
//!   After each, the gateway restarts on what is left; at the end every scrape the probe served
//!   reaches the destination, once.
//! - With `storage.fsync: false`, the same power loss takes batches the agent saw acknowledged
//!   (and deleted): the emulation has teeth, and the default matters.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use uplink_loadtest::capture::Capture;
use uplink_loadtest::harness::{
    Bins, Proc, block, free_addr, metric_at, serial, start_probed_agent, wait_for, write_certs,
};
use uplink_loadtest::oracle;
use uplink_loadtest::powerloss;
use uplink_loadtest::probe::ProbeSpec;

struct Gateway {
    quic: std::net::SocketAddr,
    web: std::net::SocketAddr,
    config: std::path::PathBuf,
}

fn spawn(bins: &Bins, g: &Gateway, dir: &Path, run: u32, env: &[(String, String)]) -> Proc {
    let log = dir.join(format!("gateway.{run}.log"));
    powerloss::spawn_logged(
        ("uplink-gateway", &bins.gateway),
        &g.config,
        g.web,
        &log,
        env,
    )
    .unwrap()
}

/// Runs the scenario; returns the scrapes missing at the end, the bytes the power losses took,
/// and the duplicates the destination received.
async fn run(fsync: bool, losses: u32) -> (Vec<(usize, u64)>, u64, u64) {
    let bins = Bins::locate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &["site1".to_owned()]).unwrap();
    let lib = powerloss::build_synclog(dir.path()).unwrap();
    let capture = Capture::start(free_addr().unwrap()).await.unwrap();
    capture.set_fail_next(u32::MAX, 503);
    let g = Gateway {
        quic: free_addr().unwrap(),
        web: free_addr().unwrap(),
        config: dir.path().join("gateway.yml"),
    };
    std::fs::write(
        &g.config,
        format!(
            "listen_address: {}\n\
             tls: {{cert_file: gateway.crt, key_file: gateway.key, ca_file: ca.crt}}\n\
             ledger: {{interval: 0s}}\n\
             storage: {{directory: gateway-store, fsync: {fsync}, drain_timeout: 2s}}\n\
             remote_write:\n  - url: {}\n    remote_timeout: 5s\n    \
             queue_config: {{min_backoff: 50ms, max_backoff: 500ms}}\n",
            g.quic,
            capture.url()
        ),
    )
    .unwrap();
    let store = dir.path().join("gateway-store");
    let sync_log = dir.path().join("sync.log");
    let env = powerloss::env(&lib, &sync_log);
    let mut gateway = spawn(&bins, &g, dir.path(), 0, &env);

    let spec = ProbeSpec {
        targets: 2,
        families: 4,
        churn_every: 0,
    };
    let (probe, mut agent) =
        start_probed_agent(&bins, dir.path(), "site1", g.quic, (spec, "200ms"), "")
            .await
            .unwrap();
    let acked = "uplink_agent_samples_acked_total";
    let mut taken = 0;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(fsync);
    for run in 1..=losses {
        let before = metric_at(agent.web, acked);
        wait_for("batches acknowledged", Duration::from_secs(30), || {
            metric_at(agent.web, acked) > before
        })
        .await;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(500 + rng % 2000)).await;
        block(|| gateway.kill9());
        let lost = powerloss::apply(&sync_log, &store).unwrap();
        println!("power loss {run}: {lost:?}");
        taken += lost.truncated_bytes;
        // The log stays: what earlier runs synced stays durable.
        gateway = spawn(&bins, &g, dir.path(), run, &env);
    }
    // The destination comes back; the agent stops in order; the gateway delivers everything.
    capture.set_fail_next(0, 503);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(block(|| agent.proc.terminate(Duration::from_secs(30))));
    wait_for("the gateway drained", Duration::from_secs(60), || {
        metric_at(g.web, "uplink_gateway_queue_entries") == 0.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = capture.snapshot();
    let (report, missing) = oracle::check_served(&probe, &oracle::probe_labels("site1"), &received);
    println!(
        "fsync {fsync}: {} samples received, {} duplicates, {} scrapes missing, {taken} bytes \
         taken by {losses} power losses",
        received.len(),
        capture.duplicates(),
        missing.len()
    );
    assert_eq!(report.wrong, 0);
    (missing, taken, capture.duplicates())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fsync_a_power_loss_loses_nothing_acknowledged() {
    let _serial = serial().await;
    let (missing, taken, duplicates) = run(true, 3).await;
    assert!(taken > 0, "the power losses took unsynced bytes");
    assert!(missing.is_empty(), "missing scrapes: {missing:?}");
    assert_eq!(duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fsync_the_same_power_loss_loses_acknowledged_batches() {
    let _serial = serial().await;
    let (missing, _, _) = run(false, 1).await;
    assert!(
        !missing.is_empty(),
        "unsynced acknowledged batches are gone"
    );
}

/// Power loss at the agent, with `queue.sync: always`: three at random points, each followed by
/// a restart on what is left of the queue. Only the scrape in progress at each loss may be
/// missing (it was never stored); everything the queue had stored arrives, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_sync_always_loses_only_the_scrape_in_progress() {
    let _serial = serial().await;
    let bins = Bins::locate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &["site1".to_owned()]).unwrap();
    let lib = powerloss::build_synclog(dir.path()).unwrap();
    let capture = Capture::start(free_addr().unwrap()).await.unwrap();
    let gateway =
        block(|| uplink_loadtest::harness::start_gateway(&bins, dir.path(), &[capture.url()]))
            .unwrap();
    let spec = ProbeSpec {
        targets: 2,
        families: 4,
        churn_every: 0,
    };
    let (probe, mut agent) = start_probed_agent(
        &bins,
        dir.path(),
        "site1",
        gateway.quic,
        (spec, "200ms"),
        "",
    )
    .await
    .unwrap();
    // The same agent again, with every append synced and the synclog library loaded.
    assert!(block(|| agent.proc.terminate(Duration::from_secs(30))));
    let config = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        config.replace("sync: interval", "sync: always"),
    )
    .unwrap();
    let sync_log = dir.path().join("agent-sync.log");
    let env = powerloss::env(&lib, &sync_log);
    let respawn = |run: u32| {
        let log = dir.path().join(format!("site1.power.{run}.log"));
        let bin = ("uplink-agent[site1]", bins.agent.as_path());
        powerloss::spawn_logged(bin, &agent.config, agent.web, &log, &env).unwrap()
    };
    let mut proc = respawn(0);
    let losses = 3;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for run in 1..=losses {
        let before = metric_at(agent.web, "uplink_agent_samples_queued_total");
        wait_for("scrapes queued", Duration::from_secs(30), || {
            metric_at(agent.web, "uplink_agent_samples_queued_total") > before
        })
        .await;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(300 + rng % 1500)).await;
        block(|| proc.kill9());
        let lost = powerloss::apply(&sync_log, &agent.queue_dir).unwrap();
        println!("agent power loss {run}: {lost:?}");
        proc = respawn(run);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(block(|| proc.terminate(Duration::from_secs(30))));
    assert!(block(|| gateway.wait_drained(Duration::from_secs(60))));
    let received = capture.snapshot();
    let (report, missing) = oracle::check_served(&probe, &oracle::probe_labels("site1"), &received);
    println!(
        "agent: {} samples received, {} duplicates, missing scrapes {missing:?}",
        received.len(),
        capture.duplicates()
    );
    assert_eq!(report.wrong, 0);
    assert_eq!(report.missing_in_scrape, 0);
    assert!(
        missing.len() as u64 <= u64::from(losses) * spec.targets as u64,
        "at most the scrape in progress per target per loss: {missing:?}"
    );
}
