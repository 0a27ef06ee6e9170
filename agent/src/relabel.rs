//! Relabeling, with Prometheus's semantics (work in progress).

use serde::Deserialize;

/// One `relabel_configs` / `metric_relabel_configs` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct RelabelConfig {}
