//! The sample/series model shared by agent and gateway.
//!
//! A series is identified by its label set, sorted by name with unique names (the order remote
//! write requires). Samples carry millisecond timestamps. The remote-write message types double
//! as the in-memory model so that a batch moves from scrape to queue to gateway to receiver
//! without conversion.

pub use crate::remote_write::{Label, Sample, TimeSeries};

/// The label that carries the metric name.
pub const METRIC_NAME: &str = "__name__";

/// Sorts labels by name, as remote write requires, keeping the last value of a duplicate name.
pub fn normalize(labels: &mut Vec<Label>) {
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    labels.dedup_by(|later, earlier| {
        if later.name == earlier.name {
            std::mem::swap(&mut earlier.value, &mut later.value);
            true
        } else {
            false
        }
    });
}

/// Returns the value of label `name`, if present.
pub fn get<'a>(labels: &'a [Label], name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|l| l.name == name)
        .map(|l| l.value.as_str())
}

/// Renders a label set the way Prometheus prints a series: `name{a="b",...}`.
pub fn display(labels: &[Label]) -> String {
    let name = get(labels, METRIC_NAME).unwrap_or("");
    let rest: Vec<String> = labels
        .iter()
        .filter(|l| l.name != METRIC_NAME)
        .map(|l| format!("{}={:?}", l.name, l.value))
        .collect();
    format!("{name}{{{}}}", rest.join(","))
}

/// Sets `l`, keeping a label already present under its name as `exported_<name>` (the prefix
/// repeated until the name is free), as Prometheus does for target labels without
/// `honor_labels`. Leaves `labels` unsorted.
pub fn set_exporting(labels: &mut Vec<Label>, l: &Label) {
    if let Some(i) = labels.iter().position(|x| x.name == l.name) {
        let mut name = format!("exported_{}", l.name);
        while labels.iter().any(|x| x.name == name) {
            name = format!("exported_{name}");
        }
        labels[i].name = name;
    }
    labels.push(l.clone());
}

/// Labels the gateway stamps on every series of an agent, from its verified identity: what an
/// agent or a target sends for those names is never trusted. A conflicting label is removed
/// (`rename_conflicts: false`) or kept as `exported_<name>` (as Prometheus does for target
/// labels without `honor_labels`).
/// Labels named in `remove` are dropped after stamping (the HA replica label).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    pub labels: Vec<Label>,
    pub rename_conflicts: bool,
    pub remove: Vec<String>,
}

impl Stamp {
    /// Applies the stamp; the result is sorted by name.
    pub fn apply(&self, labels: &mut Vec<Label>) {
        if !self.remove.is_empty() {
            labels.retain(|l| !self.remove.contains(&l.name));
        }
        for s in &self.labels {
            if self.rename_conflicts {
                set_exporting(labels, s);
            } else {
                labels.retain(|l| l.name != s.name);
                labels.push(s.clone());
            }
        }
        normalize(labels);
    }
}

/// Whether `s` is a valid Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn valid_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Whether `s` is a valid legacy Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn valid_metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_overwrite_or_export_what_was_sent() {
        let sent = || {
            vec![
                Label::new("__name__", "up"),
                Label::new("tenant", "b"),
                Label::new("exported_tenant", "x"),
            ]
        };
        let mut stamp = Stamp {
            labels: vec![Label::new("tenant", "a"), Label::new("site", "s1")],
            rename_conflicts: false,
            remove: vec![],
        };
        let mut l = sent();
        stamp.apply(&mut l);
        let names: Vec<(&str, &str)> = l
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("__name__", "up"),
                ("exported_tenant", "x"),
                ("site", "s1"),
                ("tenant", "a")
            ]
        );
        stamp.rename_conflicts = true;
        let mut l = sent();
        stamp.apply(&mut l);
        assert_eq!(get(&l, "tenant"), Some("a"));
        assert_eq!(get(&l, "exported_tenant"), Some("x"));
        assert_eq!(get(&l, "exported_exported_tenant"), Some("b"));
    }

    #[test]
    fn normalize_sorts_and_keeps_last() {
        let mut l = vec![
            Label::new("job", "a"),
            Label::new("__name__", "x"),
            Label::new("job", "b"),
        ];
        normalize(&mut l);
        assert_eq!(l, vec![Label::new("__name__", "x"), Label::new("job", "b")]);
        assert_eq!(display(&l), "x{job=\"b\"}");
    }
}
