//! deploy/ cannot rot: every YAML file parses (every document of multi-document files), every
//! configuration embedded in a Kubernetes ConfigMap and every example passes the binaries'
//! `--check-config`, every kustomization names files that exist, and the systemd units
//! validate their configuration before starting.

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
    // Every kustomization names files that exist.
    for f in files.iter().filter(|f| f.ends_with("kustomization.yaml")) {
        let k: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(f).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let dir = f.parent().unwrap();
        let resources = k["resources"].as_sequence().cloned().unwrap_or_default();
        let patches = k["patches"].as_sequence().cloned().unwrap_or_default();
        let named = resources
            .iter()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .chain(
                patches
                    .iter()
                    .filter_map(|p| p["path"].as_str().map(str::to_owned)),
            );
        for r in named {
            assert!(dir.join(&r).exists(), "{}: {r} does not exist", f.display());
        }
    }
    check(&bins.agent, &deploy().join("examples/agent.yml"));
    check(&bins.gateway, &deploy().join("examples/gateway.yml"));
    check(&bins.agent, &deploy().join("examples/relay-agent.yml"));
}

#[test]
fn systemd_units_check_their_config_before_starting() {
    for unit in ["uplink-agent.service", "uplink-gateway.service"] {
        let text = std::fs::read_to_string(deploy().join("systemd").join(unit)).unwrap();
        assert!(text.contains("--check-config"), "{unit}");
        assert!(
            text.contains("ExecStart=") && text.contains("--config.file="),
            "{unit}"
        );
        assert!(text.contains("ProtectSystem=strict"), "{unit}");
    }
}
