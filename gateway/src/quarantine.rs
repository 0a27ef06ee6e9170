//! The quarantine: series a destination refused for good, kept for inspection and replay.
//!
//! One JSON-lines file per destination, `<storage.directory>/quarantine/<destination>.jsonl`
//! (the name with anything but `[A-Za-z0-9._-]` replaced by `_`). Each line is one refused
//! series: when, why (`reason`, `status`, the receiver's `message`), its labels and its samples
//! as `[timestamp_ms, value]` pairs (non-finite values as strings: `"NaN"`, `"+Inf"`).
//! A file over [`Quarantine::max_bytes`] is renamed to `.jsonl.1` (replacing the previous one)
//! and a new one started, so the quarantine holds at most twice that per destination.
//!
//! Invariant: the counters (`uplink_gateway_remote_write_samples_dropped_total`) are the record
//! of what was dropped; the quarantine is best effort. A failed write is logged and counted
//! (`uplink_gateway_store_errors_total{op="quarantine"}`), never retried.

use std::io::Write;
use std::path::PathBuf;

use serde_json::json;
use tracing::error;
use uplink_shared::remote_write::TimeSeries;

use crate::metrics::{Metrics, labels};

/// Where refused series go.
#[derive(Clone)]
pub struct Quarantine {
    dir: PathBuf,
    max_bytes: u64,
    metrics: Metrics,
}

impl Quarantine {
    pub fn new(dir: PathBuf, max_bytes: u64, metrics: Metrics) -> Quarantine {
        Quarantine {
            dir,
            max_bytes,
            metrics,
        }
    }

    /// The file a destination's refused series go to.
    pub fn path(&self, destination: &str) -> PathBuf {
        let name: String = destination
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{name}.jsonl"))
    }

    /// Appends refused series (off the async runtime's threads).
    pub async fn record(
        &self,
        destination: &str,
        reason: &str,
        status: u16,
        message: &str,
        series: Vec<TimeSeries>,
    ) {
        let path = self.path(destination);
        let max = self.max_bytes;
        let now = uplink_shared::telemetry::rfc3339_ms(crate::store::now_ms());
        let mut text = String::new();
        for ts in &series {
            let labels: serde_json::Map<String, serde_json::Value> = ts
                .labels
                .iter()
                .map(|l| (l.name.clone(), json!(l.value)))
                .collect();
            let samples: Vec<serde_json::Value> = ts
                .samples
                .iter()
                .map(|s| {
                    if s.value.is_finite() {
                        json!([s.timestamp, s.value])
                    } else {
                        json!([s.timestamp, go_float(s.value)])
                    }
                })
                .collect();
            let line = json!({
                "time": now,
                "destination": destination,
                "reason": reason,
                "status": status,
                "message": message,
                "labels": labels,
                "samples": samples,
            });
            text.push_str(&line.to_string());
            text.push('\n');
        }
        let written = tokio::task::spawn_blocking(move || append(&path, max, text.as_bytes()))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        if let Err(e) = written {
            error!(destination, error = %e, "Writing to the quarantine failed.");
            self.metrics
                .store_errors
                .get_or_create(&labels(&[("op", "quarantine")]))
                .inc();
        }
    }
}

/// Prometheus's text for non-finite values.
fn go_float(v: f64) -> &'static str {
    if v.is_nan() {
        "NaN"
    } else if v > 0.0 {
        "+Inf"
    } else {
        "-Inf"
    }
}

fn append(path: &std::path::Path, max: u64, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::metadata(path).is_ok_and(|m| m.len() > 0 && m.len() + bytes.len() as u64 > max) {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        std::fs::rename(path, old)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uplink_shared::remote_write::{Label, Sample};

    #[tokio::test]
    async fn records_lines_and_rotates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = Quarantine::new(dir.path().join("q"), 300, Metrics::default());
        let ts = TimeSeries {
            labels: vec![Label::new("__name__", "m"), Label::new("job", "a/b")],
            samples: vec![
                Sample {
                    value: 1.5,
                    timestamp: 7,
                },
                Sample {
                    value: f64::NAN,
                    timestamp: 8,
                },
            ],
            ..Default::default()
        };
        q.record("prom:9090", "invalid", 400, "bad", vec![ts.clone()])
            .await;
        let path = q.path("prom:9090");
        assert!(path.ends_with("prom_9090.jsonl"));
        let text = std::fs::read_to_string(&path).expect("written");
        let v: serde_json::Value = serde_json::from_str(text.trim()).expect("json");
        assert_eq!(v["reason"], "invalid");
        assert_eq!(v["labels"]["job"], "a/b");
        assert_eq!(v["samples"], json!([[7, 1.5], [8, "NaN"]]));
        q.record("prom:9090", "invalid", 400, "bad", vec![ts.clone()])
            .await;
        let mut rotated = path.as_os_str().to_owned();
        rotated.push(".1");
        assert!(std::path::Path::new(&rotated).exists());
        assert_eq!(
            std::fs::read_to_string(&path).expect("new").lines().count(),
            1
        );
    }
}
