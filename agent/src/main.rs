//! `uplink-agent` binary: flags, config, telemetry, run, exit code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Scrapes like Prometheus, queues on disk, ships to an Uplink gateway over mTLS QUIC.
#[derive(Parser, Debug)]
#[command(name = "uplink-agent", version)]
struct Flags {
    /// Prometheus configuration file (with an `uplink:` section unless --uplink.config.file).
    #[arg(long = "config.file", default_value = "prometheus.yml")]
    config_file: PathBuf,
    /// The `uplink:` section in a file of its own, so prometheus.yml stays unchanged.
    #[arg(long = "uplink.config.file")]
    uplink_config_file: Option<PathBuf>,
    /// Address for /metrics, /-/healthy, /-/ready, /-/reload (and /api/v1/write when enabled).
    #[arg(long = "web.listen-address", default_value = "0.0.0.0:9701", value_parser = uplink_shared::web::parse_listen_address)]
    web_listen_address: SocketAddr,
    /// Accept Prometheus remote write (1.0 and 2.0) on POST /api/v1/write: every sample is
    /// queued before the request is answered, and shipped like a scrape (sidecar mode).
    #[arg(long = "web.enable-remote-write-receiver")]
    enable_remote_write_receiver: bool,
    /// Validate the configuration and exit (0 valid, 64 invalid).
    #[arg(long = "check-config")]
    check_config: bool,
    /// Log level: debug, info, warn, error.
    #[arg(long = "log.level", default_value = "info")]
    log_level: String,
    /// Log format: logfmt or json.
    #[arg(long = "log.format", default_value = "logfmt")]
    log_format: uplink_shared::telemetry::LogFormat,
    /// Features to enable, comma-separated, as in Prometheus 3.5: `native-histograms`
    /// (ingest native histograms; protobuf first), `extra-scrape-metrics`,
    /// `auto-reload-config`, and in the Prometheus 2 mode `expand-external-labels`.
    #[arg(long = "enable-feature")]
    enable_feature: Vec<String>,
    /// Accepted for Prometheus 3's agent-mode command lines (`prometheus --agent`): uplink-agent
    /// always is an agent.
    #[arg(long = "agent")]
    agent: bool,
    /// Reload the configuration when its files change (Prometheus 3.12's switch; 3.5's is
    /// `--enable-feature=auto-reload-config`).
    #[arg(long = "config.auto-reload")]
    config_auto_reload: bool,
    /// How often automatic reloading checks the configuration files (at least 1s).
    #[arg(long = "config.auto-reload-interval", default_value = "30s", value_parser = parse_duration)]
    config_auto_reload_interval: std::time::Duration,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    uplink_shared::duration::PromDuration::parse(s)
        .map(|d| d.0)
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let web = uplink_agent::WebOptions {
        listen_address: flags.web_listen_address,
        enable_remote_write_receiver: flags.enable_remote_write_receiver,
    };
    let (features, unknown) =
        uplink_agent::config::Features::parse(flags.enable_feature.iter().map(String::as_str));
    for name in unknown {
        // Logging starts later; Prometheus also only warns.
        eprintln!("warning: unknown --enable-feature value {name:?} ignored");
    }
    let auto_reload = (features.auto_reload_config || flags.config_auto_reload).then(|| {
        flags
            .config_auto_reload_interval
            .max(std::time::Duration::from_secs(1))
    });
    let source = uplink_agent::config::Source {
        prometheus: flags.config_file.clone(),
        uplink: flags.uplink_config_file.clone(),
        features,
        auto_reload,
    };
    uplink_shared::telemetry::run_binary(
        "uplink-agent",
        uplink_agent::config::Config::load_from(&source),
        &flags.config_file,
        flags.check_config,
        &flags.log_level,
        flags.log_format,
        |cfg, shutdown, traces| uplink_agent::run(cfg, source, web, shutdown, traces),
    )
}
