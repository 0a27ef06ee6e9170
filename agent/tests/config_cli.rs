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
