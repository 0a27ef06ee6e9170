//! `uplink-gateway` binary: flags, config, telemetry, run, exit code; and `certs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Accepts Uplink agents over mTLS QUIC and forwards Prometheus remote write.
#[derive(Parser, Debug)]
#[command(name = "uplink-gateway", version)]
struct Flags {
    /// Gateway configuration file.
    #[arg(long = "config.file", default_value = "gateway.yml")]
    config_file: PathBuf,
    /// Address for /metrics, /-/healthy and /-/ready.
    #[arg(long = "web.listen-address", default_value = "0.0.0.0:9702", value_parser = uplink_shared::web::parse_listen_address)]
    web_listen_address: SocketAddr,
    /// Validate the configuration and exit (0 valid, 64 invalid).
    #[arg(long = "check-config")]
    check_config: bool,
    /// Log level: debug, info, warn, error.
    #[arg(long = "log.level", default_value = "info")]
    log_level: String,
    /// Log format: logfmt or json.
    #[arg(long = "log.format", default_value = "logfmt")]
    log_format: uplink_shared::telemetry::LogFormat,
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
    let web = flags.web_listen_address;
    uplink_shared::telemetry::run_binary(
        "uplink-gateway",
        uplink_gateway::config::Config::load(&flags.config_file),
        &flags.config_file,
        flags.check_config,
        &flags.log_level,
        flags.log_format,
        |cfg, shutdown, traces| uplink_gateway::run(cfg, web, shutdown, traces),
    )
}
