//! Logging setup shared by the binaries: `tracing` to stderr, filtered by `--log.level` or
//! `RUST_LOG`, in `logfmt`-like text or JSON.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is a Prometheus-style level
/// (`debug`, `info`, `warn`, `error`); `RUST_LOG`, when set, wins.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Cancels `token` on the first SIGTERM or SIGINT; exits the process at once on the second.
pub fn cancel_on_signals(token: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("Received shutdown signal; shutting down in order (again to force).");
        token.cancel();
        wait_for_signal().await;
        tracing::warn!("Second shutdown signal; exiting now.");
        std::process::exit(1);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The common tail of both binaries' `main`: a loaded config (or its error), `--check-config`,
/// logging, a runtime, signals, and the exit code (64 invalid configuration, 1 runtime
/// failure, 0 clean shutdown).
pub fn run_binary<C, E, F, Fut>(
    name: &str,
    config: Result<C, E>,
    config_path: &std::path::Path,
    check_only: bool,
    log_level: &str,
    run: F,
) -> std::process::ExitCode
where
    E: std::fmt::Display,
    F: FnOnce(C, tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    use std::process::ExitCode;
    let cfg = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: invalid configuration: {e}");
            return ExitCode::from(64);
        }
    };
    if check_only {
        println!("{}: valid", config_path.display());
        return ExitCode::SUCCESS;
    }
    init(log_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        cancel_on_signals(shutdown.clone());
        match run(cfg, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "{name} failed.");
                ExitCode::FAILURE
            }
        }
    })
}
