//! deploy/ cannot rot: every YAML file parses (every document of multi-document files), every
//! configuration embedded in a Kubernetes ConfigMap and every example passes the binaries'
//! `--check-config`, the Kubernetes manifests fit together (`deploy_kubernetes.rs`), and the
//! systemd units validate their configuration before starting, pass `systemd-analyze verify`
//! without a warning and keep a low `systemd-analyze security` exposure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use uplink_loadtest::harness::Bins;

fn deploy() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy")).to_path_buf()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")) {
            out.push(p);
        }
    }
}

fn check(bin: &Path, file: &Path) {
    let out = Command::new(bin)
        .arg(format!("--config.file={}", file.display()))
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} --check-config {}: {}",
        bin.display(),
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_manifest_parses_and_every_embedded_config_is_valid() {
    let bins = Bins::locate().expect("binaries built by cargo test --workspace");
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    yaml_files(&deploy(), &mut files);
    assert!(files.len() >= 8, "{files:?}");
    let mut embedded = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let v = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} document {i}: {e}", f.display()));
            if v.get("kind").and_then(|k| k.as_str()) == Some("ConfigMap")
                && let Some(data) = v.get("data").and_then(|d| d.as_mapping())
            {
                for (k, body) in data {
                    let (Some(k), Some(body)) = (k.as_str(), body.as_str()) else {
                        continue;
                    };
                    let bin = match k {
                        "agent.yml" => &bins.agent,
                        "gateway.yml" => &bins.gateway,
                        _ => continue,
                    };
                    let path = tmp.path().join(format!("{embedded}-{k}"));
                    std::fs::write(&path, body).unwrap();
                    check(bin, &path);
                    embedded += 1;
                }
            }
        }
    }
    assert!(embedded >= 2, "no embedded configurations found");
    // Every example configuration, by the binary it is for.
    let mut examples = 0;
    for e in std::fs::read_dir(deploy().join("examples")).unwrap() {
        let p = e.unwrap().path();
        let v: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let bin = if v.get("listen_address").is_some() {
            &bins.gateway
        } else {
            &bins.agent
        };
        check(bin, &p);
        examples += 1;
    }
    assert!(examples >= 3, "examples: {examples}");
}

#[test]
fn systemd_units_check_their_config_before_starting() {
    let tmp = tempfile::tempdir().unwrap();
    let bins = Bins::locate().expect("binaries built by cargo test --workspace");
    let analyze = Path::new("/usr/bin/systemd-analyze").exists();
    for (unit, bin) in [
        ("uplink-agent.service", &bins.agent),
        ("uplink-gateway.service", &bins.gateway),
    ] {
        let text = std::fs::read_to_string(deploy().join("systemd").join(unit)).unwrap();
        assert!(text.contains("--check-config"), "{unit}");
        assert!(
            text.contains("ExecStart=") && text.contains("--config.file="),
            "{unit}"
        );
        for key in [
            "DynamicUser=yes",
            "SupplementaryGroups=uplink",
            "StateDirectory=",
            "ProtectSystem=strict",
        ] {
            assert!(text.contains(key), "{unit}: {key}");
        }
        if !analyze {
            eprintln!("systemd-analyze not installed: {unit} checked by its keys only");
            continue;
        }
        // The unit as installed, but with the binary where this build put it.
        let name = bin.file_name().unwrap().to_str().unwrap();
        let local = tmp.path().join(unit);
        std::fs::write(
            &local,
            text.replace(&format!("/usr/local/bin/{name}"), bin.to_str().unwrap()),
        )
        .unwrap();
        let verify = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&local)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&verify.stderr).to_string()
            + &String::from_utf8_lossy(&verify.stdout);
        assert!(
            verify.status.success() && said.trim().is_empty(),
            "{unit}: systemd-analyze verify: {said}"
        );
        let security = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&local)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&security.stdout).to_string()
            + &String::from_utf8_lossy(&security.stderr);
        let exposure: f64 = out
            .lines()
            .find_map(|l| l.split("exposure level for ").nth(1))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{unit}: no exposure level in {out}"));
        assert!(
            exposure <= 2.0,
            "{unit}: exposure {exposure} (was 1.5)\n{out}"
        );
    }
    let sysusers = std::fs::read_to_string(deploy().join("systemd/uplink.sysusers")).unwrap();
    assert!(
        sysusers
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["g", "uplink", "-"]),
        "uplink.sysusers creates the group uplink"
    );
}
