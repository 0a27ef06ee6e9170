//! `http_sd_configs`: targets from an HTTP endpoint answering Prometheus's HTTP SD JSON.

use serde::Deserialize;
use uplink_shared::duration::PromDuration;

use crate::http_client::{Authorization, BasicAuth, OAuth2, TlsConfig};

/// One `http_sd_configs` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpSdConfig {
    pub url: String,
    /// Prometheus default: 1m.
    #[serde(default = "default_refresh")]
    pub refresh_interval: PromDuration,
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    #[serde(default)]
    pub authorization: Option<Authorization>,
    #[serde(default)]
    pub oauth2: Option<OAuth2>,
    #[serde(default)]
    pub tls_config: TlsConfig,
    #[serde(default)]
    pub proxy_url: Option<String>,
    #[serde(default = "crate::http_client::default_true")]
    pub follow_redirects: bool,
    #[serde(default = "crate::http_client::default_true")]
    pub enable_http2: bool,
}

fn default_refresh() -> PromDuration {
    PromDuration(std::time::Duration::from_secs(60))
}
