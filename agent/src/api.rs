//! Prometheus's HTTP API pages that tooling reads from an agent: `/api/v1/targets` and
//! `/api/v1/status/config`, in Prometheus's JSON shapes.
//!
//! `/api/v1/targets?state=active|dropped|any` lists, per target, its discovered labels, its
//! labels, scrape pool, URL, health (`up`, `down`, `unknown` before the first scrape), last
//! error, last scrape (RFC 3339) and its duration, interval and timeout; dropped targets show
//! their discovered labels (at most `keep_dropped_targets` per job when set).
//! `/api/v1/status/config` returns the effective configuration as YAML, as Prometheus 3.5's
//! agent prints it, with Uplink's `uplink:` section (see [`crate::effective`]).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::header::{CONTENT_TYPE, HeaderName};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use uplink_shared::duration::PromDuration;

use crate::scrape::manager::TargetsView;

/// What the pages read.
#[derive(Clone)]
pub struct Api {
    pub targets: TargetsView,
    /// The effective configuration ([`crate::effective::yaml`]).
    pub config: Arc<RwLock<String>>,
}

#[derive(Deserialize)]
struct TargetsQuery {
    #[serde(default)]
    state: Option<String>,
}

impl Api {
    pub fn router(self) -> Router {
        Router::new()
            .route("/api/v1/targets", get(targets))
            .route("/api/v1/status/config", get(config))
            .with_state(self)
    }
}

async fn config(State(api): State<Api>) -> ([(HeaderName, &'static str); 1], String) {
    let yaml = api.config.read().map(|c| c.clone()).unwrap_or_default();
    json_body(json!({"status": "success", "data": {"yaml": yaml}}))
}

async fn targets(
    State(api): State<Api>,
    Query(q): Query<TargetsQuery>,
) -> ([(HeaderName, &'static str); 1], String) {
    let state = q.state.as_deref().unwrap_or("any").to_ascii_lowercase();
    let (want_active, want_dropped) = match state.as_str() {
        "active" => (true, false),
        "dropped" => (false, true),
        _ => (true, true),
    };
    let mut active = Vec::new();
    let mut dropped = Vec::new();
    if let Ok(view) = api.targets.lock() {
        for (job, v) in view.iter() {
            if want_active {
                for (t, health) in &v.active {
                    let h = health.lock().map(|h| h.clone()).unwrap_or_default();
                    let labels: BTreeMap<&str, &str> = t
                        .labels
                        .iter()
                        .map(|l| (l.name.as_str(), l.value.as_str()))
                        .collect();
                    active.push(json!({
                        "discoveredLabels": &*t.discovered,
                        "labels": labels,
                        "scrapePool": job,
                        "scrapeUrl": t.url,
                        "globalUrl": t.url,
                        "lastError": h.last_error,
                        "lastScrape": rfc3339(h.last_scrape_ms),
                        "lastScrapeDuration": h.last_duration,
                        "health": match h.up { None => "unknown", Some(true) => "up", Some(false) => "down" },
                        "scrapeInterval": PromDuration(t.interval).to_string(),
                        "scrapeTimeout": PromDuration(t.timeout).to_string(),
                    }));
                }
            }
            if want_dropped {
                for d in &v.dropped {
                    dropped.push(json!({ "discoveredLabels": &**d }));
                }
            }
        }
    }
    json_body(json!({
        "status": "success",
        "data": {"activeTargets": active, "droppedTargets": dropped},
    }))
}

fn json_body(v: Value) -> ([(HeaderName, &'static str); 1], String) {
    ([(CONTENT_TYPE, "application/json")], v.to_string())
}

/// Milliseconds since the epoch as RFC 3339 (UTC, millisecond precision); the zero time as
/// Go prints it before the first scrape.
pub fn rfc3339(ms: i64) -> String {
    if ms <= 0 {
        return "0001-01-01T00:00:00Z".into();
    }
    uplink_shared::telemetry::rfc3339_ms(ms)
}

/// Keys whose values are secrets in Prometheus's configuration.
const SECRET_KEYS: [&str; 5] = [
    "password",
    "credentials",
    "client_secret",
    "bearer_token",
    "key",
];

/// Replaces the value of every secret key (at any depth) by `<secret>`.
pub fn redact(v: &mut serde_yaml::Value) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            for (k, val) in m.iter_mut() {
                if k.as_str().is_some_and(|k| SECRET_KEYS.contains(&k)) && !val.is_null() {
                    *val = serde_yaml::Value::String("<secret>".into());
                } else {
                    redact(val);
                }
            }
        }
        serde_yaml::Value::Sequence(s) => s.iter_mut().for_each(redact),
        serde_yaml::Value::Tagged(t) => redact(&mut t.value),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "0001-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn secrets_are_redacted() {
        let mut v: serde_yaml::Value = serde_yaml::from_str(
            "tracing: {endpoint: e, headers: {a: b}, tls_config: {key: k, key_file: k.pem}}\n\
             x: [{password: p, credentials: c, client_secret: s, bearer_token: t}]\n",
        )
        .expect("yaml");
        redact(&mut v);
        let y = serde_yaml::to_string(&v).expect("yaml");
        assert_eq!(y.matches("<secret>").count(), 5, "{y}");
        assert!(
            y.contains("key_file: k.pem") && y.contains("endpoint: e"),
            "{y}"
        );
    }
}
