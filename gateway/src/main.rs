//! `uplink-gateway` binary: flags, config, telemetry, run, exit code; and `certs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// Accepts Uplink agents over mTLS QUIC and forwards Prometheus remote write.
#[derive(Parser, Debug)]
#[command(name = "uplink-gateway", version)]
struct Flags {
    /// Gateway configuration file.
    #[arg(long = "config.file", default_value = "gateway.yml")]
    config_file: PathBuf,
    /// Address for /metrics, /-/healthy and /-/ready.
    #[arg(long = "web.listen-address", default_value = "0.0.0.0:9702")]
    web_listen_address: SocketAddr,
    /// Validate the configuration and exit (0 valid, 64 invalid).
    #[arg(long = "check-config")]
    check_config: bool,
    /// Log level: debug, info, warn, error.
    #[arg(long = "log.level", default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Development certificates (CA, gateway, agents).
    #[command(subcommand)]
    Certs(uplink_gateway::certs_cmd::CertsCmd),
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    if let Some(Cmd::Certs(c)) = flags.cmd {
        return match uplink_gateway::certs_cmd::run(c) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("uplink-gateway certs: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cfg = match uplink_gateway::config::Config::load(&flags.config_file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("uplink-gateway: invalid configuration: {e}");
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
            eprintln!("uplink-gateway: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        uplink_shared::telemetry::cancel_on_signals(shutdown.clone());
        match uplink_gateway::run(cfg, flags.web_listen_address, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "Gateway failed.");
                ExitCode::FAILURE
            }
        }
    })
}
