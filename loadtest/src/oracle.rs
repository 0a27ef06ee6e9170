//! Checks received samples against the probe's exact oracle.
//!
//! Samples of `probe_*` series are grouped by target (from the `instance` label) and timestamp:
//! one group is one scrape. The group's `probe_scrape_number` gives the scrape number `n`, and
//! the group must then equal [`expected`]`(spec, t, n)` with `instance` and the caller's labels
//! (`job`, external labels) added to every series. Other series (`up`,
//! `scrape_duration_seconds`, ...) are only counted.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;

use uplink_shared::model::{METRIC_NAME, display, get};
use uplink_shared::remote_write::Label;

use crate::capture::Received;
use crate::probe::{ProbeSpec, SCRAPE_NUMBER, expected, scrape_number_from_counter0, target_of};

/// How many error descriptions a report keeps.
pub const MAX_ERRORS: usize = 20;

/// Bit pattern of Prometheus' staleness marker.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Outcome of [`check`].
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Report {
    /// Per target, the scrape numbers received (at least one series of that scrape arrived).
    pub scrapes: Vec<BTreeSet<u64>>,
    /// Every sample given, probe or not.
    pub total_samples: u64,
    /// Samples of `probe_*` series.
    pub probe_samples: u64,
    /// Samples of other series (`up`, ...), not checked.
    pub other_samples: u64,
    /// Staleness markers on probe series, not checked.
    pub stale_markers: u64,
    /// Probe samples with a wrong value, an unexpected label set, an unknown instance, or in a
    /// scrape whose number could not be determined.
    pub wrong: u64,
    /// Expected series absent from a scrape of which other series arrived.
    pub missing_in_scrape: u64,
    /// Samples with the same labels and timestamp as an earlier one.
    pub duplicates: u64,
    /// The same scrape number seen at two timestamps, or scrape numbers not increasing with
    /// time, for one target.
    pub conflicts: u64,
    /// The first [`MAX_ERRORS`] problems, described.
    pub errors: Vec<String>,
}

impl Report {
    /// Scrape numbers in `0..served_upto` of which nothing was received for `target`.
    pub fn missing_scrapes(&self, target: usize, served_upto: u64) -> Vec<u64> {
        let got = self.scrapes.get(target);
        (0..served_upto)
            .filter(|n| !got.is_some_and(|s| s.contains(n)))
            .collect()
    }

    /// No wrong values, no series missing from a received scrape, no duplicates, no conflicts.
    pub fn is_clean(&self) -> bool {
        self.wrong == 0
            && self.missing_in_scrape == 0
            && self.duplicates == 0
            && self.conflicts == 0
    }

    fn error(&mut self, msg: impl FnOnce() -> String) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(msg());
        }
    }
}

/// The labels besides `instance` of the probe series an agent of `site` scrapes as job `probe`
/// (what the harness starts).
pub fn probe_labels(site: &str) -> [Label; 2] {
    [
        Label::new("job", "probe"),
        Label::new("site", site.to_owned()),
    ]
}

/// [`check`] against a running probe, and the scrapes it served of which nothing arrived, as
/// (target, scrape number).
pub fn check_served(
    probe: &crate::probe::Probe,
    extra_labels: &[Label],
    samples: &[Received],
) -> (Report, Vec<(usize, u64)>) {
    let report = check(&probe.spec, &probe.addrs, extra_labels, samples);
    let missing = (0..probe.addrs.len())
        .flat_map(|t| {
            report
                .missing_scrapes(t, probe.served(t))
                .into_iter()
                .map(move |n| (t, n))
        })
        .collect();
    (report, missing)
}

fn sorted(mut labels: Vec<Label>) -> Vec<Label> {
    labels.sort();
    labels
}

/// Checks `samples` against the oracle of a probe with `spec` listening on `addrs`.
///
/// `extra_labels` are the labels every probe series must carry besides `instance` (which is
/// `addrs[t].to_string()`): `job` and any external labels.
pub fn check(
    spec: &ProbeSpec,
    addrs: &[SocketAddr],
    extra_labels: &[Label],
    samples: &[Received],
) -> Report {
    let mut rep = Report {
        scrapes: vec![BTreeSet::new(); addrs.len()],
        ..Report::default()
    };
    // (target, timestamp) -> labels -> value; first occurrence wins.
    let mut groups: BTreeMap<(usize, i64), HashMap<Vec<Label>, f64>> = BTreeMap::new();
    for s in samples {
        rep.total_samples += 1;
        let name = get(&s.labels, METRIC_NAME).unwrap_or_default();
        if !name.starts_with("probe_") {
            rep.other_samples += 1;
            continue;
        }
        rep.probe_samples += 1;
        if s.value.to_bits() == STALE_NAN_BITS {
            rep.stale_markers += 1;
            continue;
        }
        let Some(t) = get(&s.labels, "instance").and_then(|i| target_of(addrs, i)) else {
            rep.wrong += 1;
            rep.error(|| format!("unknown instance: {}", display(&s.labels)));
            continue;
        };
        let labels = sorted(s.labels.clone());
        let group = groups.entry((t, s.timestamp)).or_default();
        match group.entry(labels) {
            Entry::Occupied(e) => {
                rep.duplicates += 1;
                rep.error(|| format!("duplicate: {} @{}", display(e.key()), s.timestamp));
            }
            Entry::Vacant(e) => {
                e.insert(s.value);
            }
        }
    }

    // Per target, (timestamp, n) of each scrape, in timestamp order (BTreeMap order).
    let mut timeline: Vec<Vec<(i64, u64)>> = vec![Vec::new(); addrs.len()];
    for ((t, ts), group) in &groups {
        let (t, ts) = (*t, *ts);
        let instance = addrs[t].to_string();
        let with_target = |mut l: Vec<Label>| {
            l.push(Label::new("instance", instance.clone()));
            l.extend(extra_labels.iter().cloned());
            sorted(l)
        };
        // The scrape number: from probe_scrape_number, else inferred from family-0 counter.
        let n = group
            .iter()
            .find(|(l, _)| get(l, METRIC_NAME) == Some(SCRAPE_NUMBER))
            .map(|(_, v)| *v)
            .and_then(|v| (v >= 0.0 && v.fract() == 0.0).then_some(v as u64))
            .or_else(|| {
                let counter0 = with_target(vec![
                    Label::new(METRIC_NAME, crate::probe::COUNTER),
                    Label::new("family", "0"),
                ]);
                group
                    .get(&counter0)
                    .and_then(|v| scrape_number_from_counter0(t, *v))
            });
        let Some(n) = n else {
            rep.wrong += group.len() as u64;
            rep.error(|| format!("target {t} @{ts}: cannot determine scrape number"));
            continue;
        };
        rep.scrapes[t].insert(n);
        timeline[t].push((ts, n));

        let mut want: HashMap<Vec<Label>, f64> = expected(spec, t, n)
            .into_iter()
            .map(|(l, v)| {
                let l = l.into_iter().map(|(k, v)| Label::new(k, v)).collect();
                (with_target(l), v)
            })
            .collect();
        for (labels, value) in group {
            match want.remove(labels) {
                None => {
                    rep.wrong += 1;
                    rep.error(|| format!("unexpected series {} @{ts} (n={n})", display(labels)));
                }
                Some(v) if v.to_bits() != value.to_bits() => {
                    rep.wrong += 1;
                    rep.error(|| {
                        format!(
                            "wrong value {} @{ts} (n={n}): got {value}, want {v}",
                            display(labels)
                        )
                    });
                }
                Some(_) => {}
            }
        }
        rep.missing_in_scrape += want.len() as u64;
        if !want.is_empty() {
            let mut names: Vec<String> = want.keys().map(|l| display(l)).collect();
            names.sort();
            rep.error(|| format!("target {t} @{ts} (n={n}): missing {}", names.join(", ")));
        }
    }

    for (t, line) in timeline.iter().enumerate() {
        let mut seen = HashSet::new();
        for (i, (ts, n)) in line.iter().enumerate() {
            if !seen.insert(*n) {
                rep.conflicts += 1;
                rep.error(|| format!("target {t}: scrape {n} seen again @{ts}"));
            } else if i > 0 && line[i - 1].1 >= *n {
                rep.conflicts += 1;
                let prev = line[i - 1];
                rep.error(|| {
                    format!(
                        "target {t}: scrape {n} @{ts} after scrape {} @{}",
                        prev.1, prev.0
                    )
                });
            }
        }
    }
    rep
}
