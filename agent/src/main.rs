//! `uplink-agent` binary: flags, config, telemetry, run, exit code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Scrapes like Prometheus, queues on disk, ships to an Uplink gateway over mTLS QUIC.
#[derive(Parser, Debug)]
#[command(name = "uplink-agent", version)]
struct Flags {
    /// Prometheus configuration file with an `uplink:` section.
    #[arg(long = "config.file", default_value = "prometheus.yml")]
    config_file: PathBuf,
    /// Address for /metrics, /-/healthy and /-/ready.
    #[arg(long = "web.listen-address", default_value = "0.0.0.0:9701")]
    web_listen_address: SocketAddr,
    /// Validate the configuration and exit (0 valid, 64 invalid).
    #[arg(long = "check-config")]
    check_config: bool,
    /// Log level: debug, info, warn, error.
    #[arg(long = "log.level", default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let web = flags.web_listen_address;
    uplink_shared::telemetry::run_binary(
        "uplink-agent",
        uplink_agent::config::Config::load(&flags.config_file),
        &flags.config_file,
        flags.check_config,
        &flags.log_level,
        |cfg, shutdown| uplink_agent::run(cfg, web, shutdown),
    )
}
