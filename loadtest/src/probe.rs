//! A deterministic Prometheus exporter whose every value is known in advance.
//!
//! A [`Probe`] serves `targets` independent exporters, one HTTP listener each. Target `t`
//! answering its `n`-th scrape (0-based) serves exactly [`expected`]`(spec, t, n)`, and the
//! extra gauge `probe_scrape_number` carries `n` itself, so a receiver can tell precisely which
//! scrape a sample came from and what its value must be.
//!
//! Family `f` of a target has a kind chosen by `f % 3`:
//!
//! * 0: counter `probe_counter_total{family="f"}`,
//! * 1: gauge `probe_gauge{family="f"}`,
//! * 2: histogram `probe_histogram{family="f"}` with buckets `le` in `0.1, 1, 10, +Inf` plus
//!   `_sum` and `_count`.
//!
//! All values are integers or multiples of 0.25, so they survive text formatting and parsing
//! exactly.

use std::io;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use flate2::Compression;
use flate2::write::GzEncoder;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// `Content-Type` of the exposition served by the probe.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Name of the per-target gauge carrying the scrape number.
pub const SCRAPE_NUMBER: &str = "probe_scrape_number";
/// Counter family name.
pub const COUNTER: &str = "probe_counter_total";
/// Gauge family name.
pub const GAUGE: &str = "probe_gauge";
/// Histogram family base name.
pub const HISTOGRAM: &str = "probe_histogram";
/// Histogram bucket bounds, as printed in `le`: already in the form Prometheus 3 stores
/// (`1.0`, not `1`), so the oracle holds for Prometheus 2 and 3 alike (the parity test covers
/// the rewriting of other forms).
pub const BUCKETS: [&str; 4] = ["0.1", "1.0", "10.0", "+Inf"];

/// Shape of a probe: how many targets, and how many metric families each exposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProbeSpec {
    pub targets: usize,
    pub families: usize,
    /// Series churn: when non-zero, 1% of the families get a new `gen` label value every
    /// `churn_every` scrapes (each family once per 100 periods), as pods come and go.
    #[serde(default)]
    pub churn_every: u64,
}

/// The `gen` label of family `f` at scrape `n` (churn; see [`ProbeSpec::churn_every`]).
fn generation(spec: &ProbeSpec, f: usize, n: u64) -> Option<String> {
    (spec.churn_every > 0).then(|| ((n / spec.churn_every + (f % 100) as u64) / 100).to_string())
}

fn family_labels(spec: &ProbeSpec, f: usize, n: u64) -> Vec<(&'static str, String)> {
    let mut l = vec![("family", f.to_string())];
    if let Some(g) = generation(spec, f, n) {
        l.push(("gen", g));
    }
    l
}

/// One expected series: labels (including `__name__`, excluding `job`/`instance`, sorted by
/// name) and value.
pub type ExpectedSeries = (Vec<(String, String)>, f64);

/// Number of series one target exposes per scrape, `probe_scrape_number` included.
pub fn spec_series_count(spec: &ProbeSpec) -> usize {
    let per_kind = |k: usize| (0..spec.families).filter(|f| f % 3 == k).count();
    per_kind(0) + per_kind(1) + per_kind(2) * (BUCKETS.len() + 2) + 1
}

fn series(name: &str, extra: &[(&str, String)]) -> Vec<(String, String)> {
    let mut labels = vec![("__name__".to_string(), name.to_string())];
    labels.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    labels.sort();
    labels
}

/// Counter value of family `f` of target `t` at scrape `n`: non-decreasing in `n`.
fn counter_value(t: usize, f: usize, n: u64) -> f64 {
    (t as u64 * 1000 + f as u64 + n * (f as u64 + 1)) as f64
}

/// Inverts [`counter_value`] for family 0: the scrape number a family-0 counter value implies.
pub fn scrape_number_from_counter0(t: usize, value: f64) -> Option<u64> {
    let base = (t as u64 * 1000) as f64;
    let n = value - base;
    (n >= 0.0 && n.fract() == 0.0).then_some(n as u64)
}

/// Every series target `t` serves at its `n`-th scrape (0-based), in exposition order.
pub fn expected(spec: &ProbeSpec, target: usize, n: u64) -> Vec<ExpectedSeries> {
    let t = target;
    let mut out = Vec::with_capacity(spec_series_count(spec));
    let fams = |k: usize| (0..spec.families).filter(move |f| f % 3 == k);
    for f in fams(0) {
        let labels = series(COUNTER, &family_labels(spec, f, n));
        out.push((labels, counter_value(t, f, n)));
    }
    for f in fams(1) {
        // Goes up and down, negative included, in steps of 0.25.
        let step = (n + t as u64 + f as u64) % 11;
        let labels = series(GAUGE, &family_labels(spec, f, n));
        out.push((labels, step as f64 * 0.25 - 1.0));
    }
    for f in fams(2) {
        // Per scrape the histogram gains n-dependent observations; cumulative buckets.
        let (t64, f64_) = (t as u64, f as u64);
        let b01 = n + t64 % 5;
        let b1 = b01 + 2 * n + f64_ % 3;
        let b10 = b1 + n;
        let inf = b10 + (n + t64) % 2 + n;
        let counts = [b01, b1, b10, inf];
        for (le, c) in BUCKETS.iter().zip(counts) {
            let mut l = family_labels(spec, f, n);
            l.push(("le", le.to_string()));
            let labels = series(&format!("{HISTOGRAM}_bucket"), &l);
            out.push((labels, c as f64));
        }
        // Sum: 0.05 per le=0.1 observation would not be exact; use multiples of 0.25.
        let sum = b01 as f64 * 0.25
            + (b1 - b01) as f64 * 0.5
            + (b10 - b1) as f64 * 5.0
            + (inf - b10) as f64 * 20.0;
        out.push((
            series(&format!("{HISTOGRAM}_sum"), &family_labels(spec, f, n)),
            sum,
        ));
        out.push((
            series(&format!("{HISTOGRAM}_count"), &family_labels(spec, f, n)),
            inf as f64,
        ));
    }
    out.push((series(SCRAPE_NUMBER, &[]), n as f64));
    out
}

fn render_labels(labels: &[(String, String)]) -> String {
    let rest: Vec<String> = labels
        .iter()
        .filter(|(k, _)| k != "__name__")
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect();
    if rest.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", rest.join(","))
    }
}

/// Renders scrape `n` of target `t` in the Prometheus text format 0.0.4.
pub fn render(spec: &ProbeSpec, target: usize, n: u64) -> String {
    use std::fmt::Write as _;
    let series = expected(spec, target, n);
    let mut out = String::with_capacity(series.len() * 48 + 256);
    let mut current_family = "";
    for (labels, value) in &series {
        let name = labels
            .iter()
            .find(|(k, _)| k == "__name__")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        let family = if name.starts_with(HISTOGRAM) {
            HISTOGRAM
        } else if name == COUNTER {
            COUNTER
        } else if name == GAUGE {
            GAUGE
        } else {
            SCRAPE_NUMBER
        };
        if family != current_family {
            current_family = family;
            let (help, kind) = match family {
                COUNTER => ("A deterministic counter.", "counter"),
                GAUGE => ("A deterministic gauge.", "gauge"),
                HISTOGRAM => ("A deterministic histogram.", "histogram"),
                _ => ("Scrapes this target served before this one.", "gauge"),
            };
            let _ = writeln!(out, "# HELP {family} {help}");
            let _ = writeln!(out, "# TYPE {family} {kind}");
        }
        let _ = writeln!(out, "{name}{} {value}", render_labels(labels));
    }
    out
}

/// Whether an `Accept-Encoding` header value admits gzip.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f64>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            coding.eq_ignore_ascii_case("gzip") && !refused
        })
}

#[derive(Clone)]
struct TargetState {
    spec: ProbeSpec,
    target: usize,
    served: Arc<Vec<AtomicU64>>,
}

async fn metrics(State(st): State<TargetState>, headers: HeaderMap) -> Response {
    let n = st.served[st.target].fetch_add(1, Ordering::SeqCst);
    let body = render(&st.spec, st.target, n);
    let ctype = HeaderValue::from_static(CONTENT_TYPE);
    if accepts_gzip(&headers) {
        let mut enc = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
        // Writing into a Vec cannot fail.
        if enc.write_all(body.as_bytes()).is_ok()
            && let Ok(gz) = enc.finish()
        {
            return (
                [
                    (header::CONTENT_TYPE, ctype),
                    (header::CONTENT_ENCODING, HeaderValue::from_static("gzip")),
                ],
                gz,
            )
                .into_response();
        }
    }
    ([(header::CONTENT_TYPE, ctype)], body).into_response()
}

/// A running probe: one exporter listener per target.
pub struct Probe {
    pub spec: ProbeSpec,
    /// Listen address of each target; the `instance` label is `addrs[t].to_string()`.
    pub addrs: Vec<SocketAddr>,
    served: Arc<Vec<AtomicU64>>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Probe {
    /// [`Probe::start`] on loopback, ephemeral ports: what tests and benchmarks use.
    pub async fn start_local(spec: ProbeSpec) -> io::Result<Probe> {
        Self::start(spec, IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0).await
    }

    /// Binds one listener per target on `host`, port `base_port + t` (ephemeral ports when
    /// `base_port` is 0), and serves `GET /metrics` on each. Must run inside a Tokio runtime.
    pub async fn start(spec: ProbeSpec, host: IpAddr, base_port: u16) -> io::Result<Probe> {
        let served: Arc<Vec<AtomicU64>> =
            Arc::new((0..spec.targets).map(|_| AtomicU64::new(0)).collect());
        let cancel = CancellationToken::new();
        let mut listeners = Vec::with_capacity(spec.targets);
        for t in 0..spec.targets {
            let port = if base_port == 0 {
                0
            } else {
                u16::try_from(usize::from(base_port) + t).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, "probe port range overflows")
                })?
            };
            listeners.push(tokio::net::TcpListener::bind(SocketAddr::new(host, port)).await?);
        }
        let mut addrs = Vec::with_capacity(spec.targets);
        let mut tasks = Vec::with_capacity(spec.targets);
        for (t, listener) in listeners.into_iter().enumerate() {
            addrs.push(listener.local_addr()?);
            let app = Router::new()
                .route("/metrics", get(metrics))
                .with_state(TargetState {
                    spec,
                    target: t,
                    served: served.clone(),
                });
            let token = cancel.clone();
            tasks.push(tokio::spawn(async move {
                let res = axum::serve(listener, app)
                    .with_graceful_shutdown(token.cancelled_owned())
                    .await;
                if let Err(e) = res {
                    tracing::warn!(target_index = t, error = %e, "probe listener failed");
                }
            }));
        }
        Ok(Probe {
            spec,
            addrs,
            served,
            cancel,
            tasks,
        })
    }

    /// Scrapes target `t` has served so far (its next scrape number).
    pub fn served(&self, target: usize) -> u64 {
        self.served
            .get(target)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }

    /// The target whose `instance` label (`host:port`) is `instance`.
    pub fn target_of(&self, instance: &str) -> Option<usize> {
        target_of(&self.addrs, instance)
    }

    /// The target listening on `addr`.
    pub fn target_of_addr(&self, addr: SocketAddr) -> Option<usize> {
        self.addrs.iter().position(|a| *a == addr)
    }

    /// `instance` label of each target, in target order.
    pub fn instances(&self) -> Vec<String> {
        self.addrs.iter().map(ToString::to_string).collect()
    }

    /// A token that stops every listener when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops every listener and waits for them to finish.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Maps an `instance` label (`host:port`) to the index of the target listening there.
pub fn target_of(addrs: &[SocketAddr], instance: &str) -> Option<usize> {
    if let Ok(sa) = instance.parse::<SocketAddr>() {
        return addrs.iter().position(|a| *a == sa);
    }
    addrs.iter().position(|a| a.to_string() == instance)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_string(), v.parse::<f64>().unwrap())
            })
            .collect()
    }

    #[test]
    fn series_count_and_consistency() {
        let spec = ProbeSpec {
            targets: 3,
            families: 7,
            churn_every: 0,
        };
        // kinds: 0,1,2,0,1,2,0 -> 3 counters, 2 gauges, 2 histograms
        assert_eq!(spec_series_count(&spec), 3 + 2 + 2 * 6 + 1);
        for t in 0..3 {
            let mut prev: Option<Vec<ExpectedSeries>> = None;
            for n in 0..50 {
                let e = expected(&spec, t, n);
                assert_eq!(e.len(), spec_series_count(&spec));
                let mut names: Vec<_> = e.iter().map(|(l, _)| l.clone()).collect();
                names.sort();
                names.dedup();
                assert_eq!(names.len(), e.len(), "series unique");
                for (labels, _) in &e {
                    assert!(labels.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
                }
                let get = |name: &str, fam: usize, le: Option<&str>| {
                    e.iter()
                        .find(|(l, _)| {
                            l.iter().any(|(k, v)| k == "__name__" && v == name)
                                && l.iter()
                                    .any(|(k, v)| k == "family" && *v == fam.to_string())
                                && le.is_none_or(|le| l.iter().any(|(k, v)| k == "le" && v == le))
                        })
                        .map(|(_, v)| *v)
                        .unwrap()
                };
                for f in (0..7).filter(|f| f % 3 == 2) {
                    let b: Vec<f64> = BUCKETS
                        .iter()
                        .map(|le| get("probe_histogram_bucket", f, Some(le)))
                        .collect();
                    assert!(b.windows(2).all(|w| w[0] <= w[1]), "cumulative");
                    assert_eq!(get("probe_histogram_count", f, None), b[3]);
                }
                assert_eq!(
                    scrape_number_from_counter0(t, get(COUNTER, 0, None)),
                    Some(n)
                );
                if let Some(p) = prev {
                    for ((l0, v0), (l1, v1)) in p.iter().zip(&e) {
                        assert_eq!(l0, l1);
                        let name = &l0[0].1;
                        if name == COUNTER || name.starts_with(HISTOGRAM) {
                            assert!(v1 >= v0, "{name} non-decreasing");
                        }
                    }
                }
                prev = Some(e);
            }
        }
    }

    #[test]
    fn render_parses_back_exactly() {
        let spec = ProbeSpec {
            targets: 2,
            families: 6,
            churn_every: 0,
        };
        let text = render(&spec, 1, 17);
        let e = expected(&spec, 1, 17);
        let parsed = parse(&text);
        assert_eq!(parsed.len(), e.len());
        for ((line, v), (labels, ev)) in parsed.iter().zip(&e) {
            assert_eq!(v.to_bits(), ev.to_bits(), "{line}");
            assert!(line.starts_with(&labels[0].1), "{line}");
        }
        // One TYPE line per family name, declared before its samples.
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        assert_eq!(
            types,
            vec![
                "# TYPE probe_counter_total counter",
                "# TYPE probe_gauge gauge",
                "# TYPE probe_histogram histogram",
                "# TYPE probe_scrape_number gauge",
            ]
        );
        assert!(text.contains("probe_histogram_bucket{family=\"2\",le=\"+Inf\"} "));
        assert!(text.contains("\nprobe_scrape_number 17\n"));
    }

    #[test]
    fn gzip_negotiation() {
        let mut h = HeaderMap::new();
        assert!(!accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity, GZIP;q=0.5"),
        );
        assert!(accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0"),
        );
        assert!(!accepts_gzip(&h));
    }

    #[test]
    fn target_lookup() {
        let addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:9000".parse().unwrap(),
            "[::1]:9001".parse().unwrap(),
        ];
        assert_eq!(target_of(&addrs, "127.0.0.1:9000"), Some(0));
        assert_eq!(target_of(&addrs, "[::1]:9001"), Some(1));
        assert_eq!(target_of(&addrs, "localhost:9001"), None);
    }
}
