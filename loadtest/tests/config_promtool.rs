//! A full Prometheus configuration that the real Prometheus 3 `promtool check config` accepts
//! loads in `uplink-agent` unchanged (the wider comparison, verdict by verdict and effective
//! configuration by effective configuration, is `config_differential.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use uplink_loadtest::harness::{Bins, Peer};

/// A Prometheus configuration that `promtool check config` accepts (most scrape_config fields,
/// every discovery mechanism the agent has, relabeling, auth, TLS, ignored sections) loads
/// unchanged, with the uplink settings in their own file.
#[test]
fn prometheus_config_that_promtool_accepts_loads_unchanged() {
    let fixture = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../agent/tests/fixtures/prometheus-full.yml"
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let prom = dir.path().join("prometheus.yml");
    std::fs::copy(fixture, &prom).expect("copy");
    let promtool = Peer::Promtool
        .command()
        .arg("check")
        .arg("config")
        .arg(&prom)
        .output()
        .expect("Prometheus 3's promtool is installed (deploy/dev/setup.sh fetches it)");
    assert!(
        promtool.status.success(),
        "promtool refuses the fixture: {}",
        String::from_utf8_lossy(&promtool.stdout)
    );
    let uplink = dir.path().join("uplink.yml");
    std::fs::write(
        &uplink,
        "gateways: ['gw:4433']\ntls: {cert_file: a.crt, key_file: a.key, ca_file: ca.crt}\nqueue: {directory: q}\n",
    )
    .expect("write");
    let before = std::fs::read(&prom).expect("read");
    let bins = Bins::locate().expect("binaries built by cargo test --workspace");
    let out = Command::new(&bins.agent)
        .arg(format!("--config.file={}", prom.display()))
        .arg(format!("--uplink.config.file={}", uplink.display()))
        .arg("--check-config")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&prom).expect("read"), before, "unchanged");
    let cfg = uplink_agent::config::Config::load_from(&uplink_agent::config::Source {
        prometheus: prom,
        uplink: Some(uplink),
        ..Default::default()
    })
    .expect("loads");
    let node = &cfg.scrape_configs[0];
    assert_eq!(cfg.limits(node).body_size_limit, 10 << 20);
    assert_eq!(node.relabel_configs.len(), 8);
    assert_eq!(cfg.scrape_configs[1].dns_sd_configs.len(), 2);
    assert_eq!(
        cfg.ignored_sections(),
        vec!["rule_files", "alerting", "remote_write", "storage"]
    );
}
