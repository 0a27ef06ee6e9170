//! `uplink-agent` binary: flags, config, telemetry, run, exit code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

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
    let cfg = match uplink_agent::config::Config::load(&flags.config_file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("uplink-agent: invalid configuration: {e}");
            return ExitCode::from(64);
        }
    };
    if flags.check_config {
        println!("{}: valid", flags.config_file.display());
        return ExitCode::SUCCESS;
    }
    uplink_shared::telemetry::init(&flags.log_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("uplink-agent: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        uplink_shared::telemetry::cancel_on_signals(shutdown.clone());
        match uplink_agent::run(cfg, flags.web_listen_address, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "Agent failed.");
                ExitCode::FAILURE
            }
        }
    })
}
