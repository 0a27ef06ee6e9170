//! The shipped example parses, and `--check-config` reports bad input with file:line:column,
//! the field, and exit code 64 (as `promtool check config` users expect).

use std::path::Path;
use std::process::Command;

fn examples() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples"))
}

#[test]
fn example_config_parses() {
    let cfg = uplink_agent::config::Config::load(&examples().join("agent.yml"));
    let cfg = cfg.unwrap_or_else(|e| panic!("deploy/examples/agent.yml: {e}"));
    assert_eq!(cfg.scrape_configs.len(), 3);
    let targets: usize = cfg
        .scrape_configs
        .iter()
        .flat_map(|j| &j.static_configs)
        .map(|s| s.targets.len())
        .sum();
    assert_eq!(targets, 3);
}

#[test]
fn check_config_flags_errors_with_location_and_exit_64() {
    let bin = env!("CARGO_BIN_EXE_uplink-agent");
    let ok = Command::new(bin)
        .arg(format!(
            "--config.file={}",
            examples().join("agent.yml").display()
        ))
        .arg("--check-config")
        .output()
        .expect("runs");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let dir = std::env::temp_dir().join(format!("uplink-agent-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tempdir");
    let bad = dir.join("bad.yml");
    let text = std::fs::read_to_string(examples().join("agent.yml"))
        .expect("example")
        .replace("scrape_interval: 30s", "scrape_interval: 30 seconds");
    std::fs::write(&bad, text).expect("write");
    let out = Command::new(bin)
        .arg(format!("--config.file={}", bad.display()))
        .arg("--check-config")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yml:15:"), "{err}");
    assert!(err.contains("scrape_configs[1].scrape_interval"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Prometheus configuration that `promtool check config` accepts (most scrape_config fields,
/// every discovery mechanism the agent has, relabeling, auth, TLS, ignored sections) loads
/// unchanged, with the uplink settings in their own file.
#[test]
fn prometheus_config_that_promtool_accepts_loads_unchanged() {
    let fixture = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/prometheus-full.yml"
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let prom = dir.path().join("prometheus.yml");
    std::fs::copy(fixture, &prom).expect("copy");
    let promtool = Command::new("promtool")
        .arg("check")
        .arg("config")
        .arg(&prom)
        .output()
        .expect("promtool is installed (deploy/dev/setup.sh installs the prometheus package)");
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
    let out = Command::new(env!("CARGO_BIN_EXE_uplink-agent"))
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
