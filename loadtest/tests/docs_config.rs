//! docs/configuration.md cannot drift from the configuration types: every field of every
//! deserialized configuration struct of both binaries (its serde name) is named in the
//! document.
//!
//! The fields are read from the sources: each struct deriving `Deserialize` in the files below,
//! with `#[serde(rename = "...")]` honoured and `#[serde(skip)]` fields left out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

const SOURCES: &[&str] = &[
    "agent/src/config.rs",
    "shared/src/http_client.rs",
    "shared/src/relabel.rs",
    "agent/src/receive.rs",
    "agent/src/discovery/file.rs",
    "agent/src/discovery/http.rs",
    "agent/src/discovery/dns.rs",
    "agent/src/discovery/kubernetes/config.rs",
    "gateway/src/config.rs",
    "gateway/src/ha.rs",
    "gateway/src/etcd.rs",
    "gateway/src/dedupe.rs",
    "shared/src/tls.rs",
    "shared/src/traces.rs",
];

/// (struct, field) for every field of every `Deserialize` struct in `text`.
fn fields(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if line.starts_with("#[derive(") && line.contains("Deserialize") {
            // Find the struct header (attributes may follow the derive).
            let mut j = i + 1;
            while j < lines.len() && lines[j].trim().starts_with("#[") {
                j += 1;
            }
            let header = lines.get(j).map_or("", |l| l.trim());
            let Some(rest) = header
                .strip_prefix("pub struct ")
                .or_else(|| header.strip_prefix("struct "))
                .or_else(|| header.strip_prefix("pub(crate) struct "))
            else {
                i = j;
                continue;
            };
            if !header.ends_with('{') {
                i = j;
                continue;
            }
            let name = rest.split([' ', '<', '{']).next().unwrap_or("").to_owned();
            let mut rename: Option<String> = None;
            let mut skip = false;
            let mut k = j + 1;
            while k < lines.len() && !lines[k].starts_with('}') {
                let l = lines[k].trim();
                if l.starts_with("#[serde(") {
                    if l.contains("skip") {
                        skip = true;
                    }
                    if let Some(r) = l.split("rename = \"").nth(1) {
                        rename = r.split('"').next().map(str::to_owned);
                    }
                } else if !l.starts_with("//") && !l.starts_with("#[") {
                    let decl = l
                        .strip_prefix("pub(crate) ")
                        .or_else(|| l.strip_prefix("pub "))
                        .unwrap_or(l);
                    if let Some((field, _)) = decl.split_once(':')
                        && !field.is_empty()
                        && field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        if !skip {
                            out.push((name.clone(), rename.take().unwrap_or(field.to_owned())));
                        }
                        rename = None;
                        skip = false;
                    }
                }
                k += 1;
            }
            i = k;
        }
        i += 1;
    }
    out
}

/// Deserialized structs that are not Uplink configuration: the kubeconfig file format (read as
/// kubectl writes it), an OAuth2 token response, and the HA election record kept in etcd.
const NOT_CONFIG: &[&str] = &[
    "Kubeconfig",
    "Named",
    "Cluster",
    "Context",
    "User",
    "Token",
    "Record",
];

#[test]
fn every_configuration_field_is_documented() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let doc = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    // Names as the document writes them: inside backticks, possibly dotted (`tls.cert_file`).
    let mut named = BTreeSet::new();
    for chunk in doc.split('`').skip(1).step_by(2) {
        for part in chunk.split(['.', ',', ' ', '[', ']', ':', '/', '(', ')']) {
            named.insert(part.to_owned());
        }
    }
    let mut missing = Vec::new();
    let mut total = 0;
    for src in SOURCES {
        let text = std::fs::read_to_string(root.join(src)).unwrap();
        for (strukt, field) in fields(&text) {
            if NOT_CONFIG.contains(&strukt.as_str()) {
                continue;
            }
            total += 1;
            if !named.contains(&field) {
                missing.push(format!("{src}: {strukt}.{field}"));
            }
        }
    }
    assert!(
        total > 100,
        "only {total} fields found: the source scan is broken"
    );
    assert!(
        missing.is_empty(),
        "fields missing from docs/configuration.md:\n{}",
        missing.join("\n")
    );
}
