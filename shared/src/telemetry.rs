//! Logging setup shared by the binaries: `tracing` to stderr, filtered by `--log.level` (a
//! level, or per-module directives in `RUST_LOG` syntax such as
//! `info,uplink_agent::ship=debug`; `RUST_LOG`, when set, wins), formatted as `--log.format`
//! says: `logfmt` (Prometheus's default: `ts=… level=… msg="…" key=value …`, with the
//! fields of the enclosing spans such as `job` and `url` of a scrape) or `json` (one object
//! per line). One line per state change at `info`; per-batch detail only at `debug`. Secrets
//! are never fields: configuration secrets are a type whose `Debug` prints `<secret>`.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// `--log.format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Logfmt,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "logfmt" => Ok(LogFormat::Logfmt),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?} (logfmt or json)")),
        }
    }
}

/// Installs the global subscriber: log lines to stderr, filtered by `level` (a
/// Prometheus-style level such as `debug`, `info`, `warn`, `error`, or filter directives;
/// `RUST_LOG`, when set, wins), and `extra` (the traces layer) with its own filter, so that
/// the log level never decides which spans are exported.
pub fn init<L>(level: &str, format: LogFormat, extra: L)
where
    L: Layer<Registry> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Logfmt => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .event_format(Logfmt)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(extra)
        .with(logs.with_filter(filter))
        .try_init();
}

/// logfmt lines: `ts`, `level`, the enclosing spans' fields, `msg`, then the event's fields.
struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        write!(
            w,
            "ts={} level={}",
            rfc3339_ms(now),
            event.metadata().level().as_str().to_ascii_lowercase()
        )?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(w, " {fields}")?;
                }
            }
        }
        let mut v = Fields::default();
        event.record(&mut v);
        write!(w, " msg={}", quote(&v.message))?;
        w.write_str(&v.rest)?;
        writeln!(w)
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            let _ = write!(self.rest, " {}={}", field.name(), quote(value));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            let _ = write!(self.rest, " {}={}", field.name(), quote(&text));
        }
    }
}

/// A logfmt value: bare when it is a single token, otherwise quoted with `"` and `\` escaped.
fn quote(s: &str) -> String {
    let bare = !s.is_empty()
        && s.chars()
            .all(|c| !c.is_whitespace() && c != '"' && c != '=' && c != '\\' && !c.is_control());
    if bare {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Milliseconds since the epoch as RFC 3339 UTC (`2026-11-24T22:13:20.123Z`).
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
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
/// logging and traces, a runtime, signals, and the exit code (64 invalid configuration, 1
/// runtime failure, 0 clean shutdown). `run` gets the traces pipeline to configure (at start
/// and on reload); spans still buffered when it returns are flushed last.
#[cfg(feature = "otlp")]
pub fn run_binary<C, E, F, Fut>(
    name: &'static str,
    config: Result<C, E>,
    config_path: &std::path::Path,
    check_only: bool,
    log_level: &str,
    log_format: LogFormat,
    run: F,
) -> std::process::ExitCode
where
    E: std::fmt::Display,
    F: FnOnce(C, tokio_util::sync::CancellationToken, crate::traces::Traces) -> Fut,
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
    let traces = crate::traces::Traces::new(name);
    init(log_level, log_format, traces.layer());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        cancel_on_signals(shutdown.clone());
        match run(cfg, shutdown, traces.clone()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "{name} failed.");
                ExitCode::FAILURE
            }
        }
    });
    // Last: every span has ended, and the runtime's workers (still running until `runtime`
    // drops) carry the exporter's final requests.
    traces.shutdown(std::time::Duration::from_secs(5));
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_values_are_quoted_only_when_needed() {
        assert_eq!(quote("node"), "node");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("say \"hi\"\n"), "\"say \\\"hi\\\"\\n\"");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert!("text".parse::<LogFormat>().is_err());
    }
}
