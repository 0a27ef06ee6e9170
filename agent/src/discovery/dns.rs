//! `dns_sd_configs`: targets from DNS A, AAAA, SRV, MX or NS records.

use serde::Deserialize;
use uplink_shared::duration::PromDuration;

/// Record type to query.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum RecordType {
    #[default]
    SRV,
    A,
    AAAA,
    MX,
    NS,
}

/// One `dns_sd_configs` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsSdConfig {
    pub names: Vec<String>,
    /// Prometheus default: 30s.
    #[serde(default = "default_refresh")]
    pub refresh_interval: PromDuration,
    #[serde(default, rename = "type")]
    pub record_type: RecordType,
    /// Required for every type but SRV.
    #[serde(default)]
    pub port: Option<u16>,
}

fn default_refresh() -> PromDuration {
    PromDuration(std::time::Duration::from_secs(30))
}
