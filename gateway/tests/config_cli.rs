//! The shipped example parses; `--check-config` exits 64 with file:line:column and the field;
//! `certs init` / `certs issue-agent` produce a working PKI without openssl.

use std::path::Path;
use std::process::Command;

fn examples() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples"))
}

#[test]
fn example_config_parses_and_check_config_reports_errors() {
    let cfg = uplink_gateway::config::Config::load(&examples().join("gateway.yml"));
    let cfg = cfg.unwrap_or_else(|e| panic!("deploy/examples/gateway.yml: {e}"));
    assert_eq!(cfg.remote_write.len(), 2);

    let bin = env!("CARGO_BIN_EXE_uplink-gateway");
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("gw.yml");
    let text = std::fs::read_to_string(examples().join("gateway.yml"))
        .expect("example")
        .replace("handshake_timeout: 10s", "handshake_timeout: soon");
    std::fs::write(&bad, text).expect("write");
    let out = Command::new(bin)
        .arg(format!("--config.file={}", bad.display()))
        .arg("--check-config")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gw.yml:12:3: limits.handshake_timeout"),
        "{err}"
    );
}

#[test]
fn certs_commands_mint_a_pki() {
    let bin = env!("CARGO_BIN_EXE_uplink-gateway");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8 path");
    let init = Command::new(bin)
        .args([
            "certs",
            "init",
            "--dir",
            d,
            "--name",
            "gw.example",
            "--name",
            "10.1.2.3",
        ])
        .output()
        .expect("runs");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let issue = Command::new(bin)
        .args(["certs", "issue-agent", "--dir", d, "--site", "plant-7"])
        .output()
        .expect("runs");
    assert!(
        issue.status.success(),
        "{}",
        String::from_utf8_lossy(&issue.stderr)
    );
    let der = uplink_shared::tls::load_certs(&dir.path().join("plant-7.crt")).expect("pem");
    assert_eq!(
        uplink_shared::tls::identity_from_cert(der[0].as_ref()).as_deref(),
        Some("plant-7")
    );
    let bad = Command::new(bin)
        .args(["certs", "issue-agent", "--dir", d, "--site", "no spaces"])
        .output()
        .expect("runs");
    assert!(!bad.status.success());
}
