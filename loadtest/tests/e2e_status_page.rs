//! The gateway's fleet status page, as a browser renders it: two sites, one shipping and one
//! stopped; headless Chromium (Debian's `chromium`) loads `/fleet`, the test checks the
//! rendered DOM (both sites, their states, the summary) and saves a screenshot
//! (`fleet-status.png` in the test directory, kept when `UPLINK_KEEP_SCREENSHOT` names a
//! path). `/api/v1/fleet` says the same in JSON.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use uplink_loadtest::harness::{
    AgentSpec, Rig, RigOptions, block, installed, start_agent, wait_for,
};
use uplink_loadtest::probe::ProbeSpec;
use uplink_shared::certs::Authority;

fn chromium(args: &[&str], url: &str) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_the_fleet_page_with_both_sites() {
    assert!(
        installed("chromium"),
        "chromium must be installed (deploy/dev/setup.sh)"
    );
    let spec = ProbeSpec {
        targets: 2,
        families: 3,
        churn_every: 0,
    };
    let rig = Rig::start_with("berlin", spec, "250ms", &RigOptions::default())
        .await
        .unwrap();
    let dir = rig.dir.path().to_path_buf();
    Authority::load(&dir)
        .unwrap()
        .issue_agent("lisbon", 30)
        .unwrap()
        .write(&dir, "lisbon")
        .unwrap();
    let targets = rig.probe.instances();
    let mut lisbon = block(|| {
        start_agent(
            &rig.bins,
            &dir,
            &AgentSpec {
                self_scrape: false,
                site: "lisbon",
                gateway: rig.gateway.quic,
                targets: &targets[..1],
                interval: "250ms",
                job: "probe",
            },
        )
    })
    .unwrap();
    let web = rig.gateway.web;
    let fleet = || async move {
        let text = reqwest::get(format!("http://{web}/api/v1/fleet"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    wait_for("both sites shipping", Duration::from_secs(30), || {
        rig.capture
            .snapshot()
            .iter()
            .any(|r| uplink_shared::model::get(&r.labels, "site") == Some("lisbon"))
            && !rig.capture.is_empty()
    })
    .await;
    // lisbon stops: offline, its data delivered.
    assert!(block(|| lisbon.proc.terminate(Duration::from_secs(20))));
    let sites = loop {
        let v = fleet().await;
        let sites = v["sites"].as_array().unwrap().clone();
        let lisbon_offline = sites
            .iter()
            .any(|s| s["site"] == "lisbon" && s["connected"] == false);
        if lisbon_offline {
            break sites;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(sites.len(), 2);
    let berlin = sites.iter().find(|s| s["site"] == "berlin").unwrap();
    assert_eq!(berlin["connected"], true);
    assert!(berlin["forwarded_samples"].as_u64().unwrap() > 0);
    assert!(berlin["lag_seconds"].as_f64().unwrap() < 60.0);
    assert!(berlin["samples_per_second"].as_f64().unwrap() > 0.0);

    // The page, as Chromium renders it.
    let url = format!("http://{web}/fleet");
    let dom = block(|| chromium(&["--dump-dom"], &url));
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    for needle in [
        "Uplink gateway: fleet",
        "2 sites",
        "1 connected",
        "1 offline",
        "Sites without a tenant",
        "data-site=\"berlin\"",
        "data-site=\"lisbon\"",
        "class=\"up\">connected",
        "class=\"down\">offline",
    ] {
        assert!(
            dom.contains(needle),
            "rendered page lacks {needle:?}:\n{dom}"
        );
    }
    let shot = dir.join("fleet-status.png");
    let arg = format!("--screenshot={}", shot.display());
    let out = block(|| chromium(&[&arg, "--window-size=1280,480"], &url));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5_000,
        "a real screenshot"
    );
    if let Some(keep) = std::env::var_os("UPLINK_KEEP_SCREENSHOT") {
        std::fs::write(keep, &png).unwrap();
    }
}
