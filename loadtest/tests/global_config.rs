//! deploy/global and deploy/monitoring cannot rot: `promtool check config`, `promtool check
//! rules`, `promtool test rules` (every rule has a unit test) and `amtool check-config` pass.

use std::path::Path;
use std::process::Command;

fn global() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/global"))
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(global())
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is required (deploy/dev/setup.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_and_amtool_accept_deploy_global() {
    run("promtool", &["check", "config", "prometheus.yml"]);
    run(
        "promtool",
        &["check", "rules", "rules/recording.yml", "rules/alerts.yml"],
    );
    run("promtool", &["test", "rules", "rules/alerts_test.yml"]);
    run("amtool", &["check-config", "alertmanager.yml"]);
    // Uplink's own alerts, in deploy/monitoring.
    run(
        "promtool",
        &["check", "rules", "../monitoring/uplink-rules.yml"],
    );
    run(
        "promtool",
        &["test", "rules", "../monitoring/uplink-rules_test.yml"],
    );
}

#[test]
fn every_rule_has_a_unit_test() {
    let alerts = std::fs::read_to_string(global().join("rules/alerts.yml")).expect("alerts");
    let tests = std::fs::read_to_string(global().join("rules/alerts_test.yml")).expect("tests");
    for line in alerts.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!("alertname: {name}")),
                "alert {name} has no test in rules/alerts_test.yml"
            );
        }
    }
    let own =
        std::fs::read_to_string(global().join("../monitoring/uplink-rules.yml")).expect("rules");
    let own_tests = std::fs::read_to_string(global().join("../monitoring/uplink-rules_test.yml"))
        .expect("tests");
    for line in own.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            assert!(
                own_tests.contains(&format!("alertname: {name}")),
                "alert {name} has no test in deploy/monitoring/uplink-rules_test.yml"
            );
        }
    }
    let recording = std::fs::read_to_string(global().join("rules/recording.yml")).expect("rules");
    for line in recording.lines() {
        if let Some(name) = line.trim().strip_prefix("- record: ") {
            assert!(
                tests.contains(&format!("expr: {name}")),
                "recording rule {name} has no test in rules/alerts_test.yml"
            );
        }
    }
}
