//! `file_sd_configs`: targets from JSON or YAML files.

use serde::Deserialize;
use uplink_shared::duration::PromDuration;

/// One `file_sd_configs` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSdConfig {
    /// Paths or globs (in the last path element) of `.json`, `.yml` or `.yaml` files.
    pub files: Vec<String>,
    /// Re-read every file this often, besides watching them (Prometheus default: 5m).
    #[serde(default = "default_refresh")]
    pub refresh_interval: PromDuration,
}

fn default_refresh() -> PromDuration {
    PromDuration(std::time::Duration::from_secs(300))
}
