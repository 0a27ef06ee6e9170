//! The real programs Uplink is checked and measured against.
//!
//! The reference is **Prometheus 3** (3.5 LTS or newer) and a current **vmagent** and
//! **VictoriaMetrics**: `deploy/dev/peers.sh` fetches them from Debian's unstable archive into
//! a per-machine cache and records their paths in `peers.env`, which `deploy/dev/env.sh`
//! exports (`UPLINK_PROMETHEUS3`, `UPLINK_PROMTOOL3`, `UPLINK_VMAGENT`,
//! `UPLINK_VICTORIA_METRICS`). A test run without those variables (a bare `cargo test`) reads
//! the same `peers.env` from the default cache directory.
//!
//! Debian 12's own packages are the old peers, **Prometheus 2.42** and **vmagent 1.79**, on the
//! `PATH`: the Prometheus 2 mode is checked against them, and the benchmarks keep them as a
//! second table.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One peer program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// Prometheus 3 (the reference), server or agent (`--agent`).
    Prometheus,
    /// Prometheus 3's `promtool`.
    Promtool,
    /// A current vmagent.
    Vmagent,
    /// A current VictoriaMetrics single node.
    VictoriaMetrics,
    /// Debian 12's Prometheus 2.42 (agent mode is `--enable-feature=agent`).
    Prometheus2,
    /// Debian 12's promtool 2.42.
    Promtool2,
    /// Debian 12's vmagent 1.79.
    Vmagent1,
}

impl Peer {
    /// The variable of `peers.env` naming the binary (current peers only).
    fn env_var(self) -> Option<&'static str> {
        match self {
            Peer::Prometheus => Some("UPLINK_PROMETHEUS3"),
            Peer::Promtool => Some("UPLINK_PROMTOOL3"),
            Peer::Vmagent => Some("UPLINK_VMAGENT"),
            Peer::VictoriaMetrics => Some("UPLINK_VICTORIA_METRICS"),
            Peer::Prometheus2 | Peer::Promtool2 | Peer::Vmagent1 => None,
        }
    }

    /// The Debian 12 command on the `PATH` (old peers only).
    fn system_command(self) -> Option<&'static str> {
        match self {
            Peer::Prometheus2 => Some("prometheus"),
            Peer::Promtool2 => Some("promtool"),
            Peer::Vmagent1 => Some("vmagent"),
            _ => None,
        }
    }

    /// How the peer is named in reports and messages (`Prometheus 3.5.3`, `vmagent 1.79`).
    pub fn label(self) -> String {
        match self {
            Peer::Prometheus => format!("Prometheus {}", version("UPLINK_PROMETHEUS3_VERSION")),
            Peer::Promtool => format!("promtool {}", version("UPLINK_PROMETHEUS3_VERSION")),
            Peer::Vmagent => format!("vmagent {}", version("UPLINK_VICTORIA_METRICS_VERSION")),
            Peer::VictoriaMetrics => {
                format!(
                    "VictoriaMetrics {}",
                    version("UPLINK_VICTORIA_METRICS_VERSION")
                )
            }
            Peer::Prometheus2 => "Prometheus 2.42".into(),
            Peer::Promtool2 => "promtool 2.42".into(),
            Peer::Vmagent1 => "vmagent 1.79".into(),
        }
    }

    /// The binary's path, if the peer is there.
    pub fn path(self) -> Option<PathBuf> {
        if let Some(var) = self.env_var() {
            return setting(var).map(PathBuf::from).filter(|p| p.is_file());
        }
        let cmd = self.system_command()?;
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(cmd))
                .find(|p| p.is_file())
        })
    }

    /// Whether the peer is there.
    pub fn installed(self) -> bool {
        self.path().is_some()
    }

    /// A command running the peer; a missing peer gives a command that fails to spawn with
    /// a message naming the setup script.
    pub fn command(self) -> Command {
        match self.path() {
            Some(p) => Command::new(p),
            None => Command::new(format!(
                "{} (not found: run deploy/dev/setup.sh)",
                self.label()
            )),
        }
    }

    /// The flag that starts a Prometheus in agent mode.
    pub fn agent_flag(self) -> &'static str {
        match self {
            Peer::Prometheus2 => "--enable-feature=agent",
            _ => "--agent",
        }
    }

    /// The peer, or an error naming what to run to get it.
    pub fn require(self) -> anyhow::Result<PathBuf> {
        self.path().ok_or_else(|| {
            anyhow::anyhow!(
                "{} is not installed: run deploy/dev/setup.sh (the current peers come from \
                 deploy/dev/peers.sh)",
                self.label()
            )
        })
    }

    /// Whether the peer runs at all (`--version` or `-version` answers).
    pub fn runs(self) -> bool {
        let flag = match self {
            Peer::Vmagent | Peer::Vmagent1 | Peer::VictoriaMetrics => "-version",
            _ => "--version",
        };
        self.path().is_some_and(|p| {
            Command::new(p)
                .arg(flag)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    }
}

/// The `peers.env` written by `deploy/dev/peers.sh` in the default cache directory.
fn peers_env() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("UPLINK_PEERS") {
        return Some(Path::new(&dir).join("peers.env"));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(cache.join("uplink/peers/peers.env"))
}

/// A setting from the environment, else from `peers.env`.
fn setting(var: &str) -> Option<String> {
    if let Ok(v) = std::env::var(var)
        && !v.is_empty()
    {
        return Some(v);
    }
    let text = std::fs::read_to_string(peers_env()?).ok()?;
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == var)
        .map(|(_, v)| v.trim().to_owned())
}

fn version(var: &str) -> String {
    setting(var).unwrap_or_else(|| "(not installed)".into())
}

/// Which peers a benchmark runs beside Uplink.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Generation {
    /// Prometheus 3 and a current vmagent.
    #[default]
    Current,
    /// Debian 12's Prometheus 2.42 and vmagent 1.79.
    Debian12,
    /// Both.
    Both,
}

impl Generation {
    /// The Prometheus agents and vmagents of this generation, in run order.
    pub fn peers(self) -> Vec<Peer> {
        match self {
            Generation::Current => vec![Peer::Prometheus, Peer::Vmagent],
            Generation::Debian12 => vec![Peer::Prometheus2, Peer::Vmagent1],
            Generation::Both => vec![
                Peer::Prometheus,
                Peer::Vmagent,
                Peer::Prometheus2,
                Peer::Vmagent1,
            ],
        }
    }
}

impl Peer {
    /// Whether this is a Prometheus (server or agent).
    pub fn is_prometheus(self) -> bool {
        matches!(self, Peer::Prometheus | Peer::Prometheus2)
    }

    /// A short name for files and labels: `prometheus3`, `vmagent1.79`, ...
    pub fn slug(self) -> &'static str {
        match self {
            Peer::Prometheus => "prometheus3",
            Peer::Promtool => "promtool3",
            Peer::Vmagent => "vmagent",
            Peer::VictoriaMetrics => "victoria-metrics",
            Peer::Prometheus2 => "prometheus2",
            Peer::Promtool2 => "promtool2",
            Peer::Vmagent1 => "vmagent1",
        }
    }
}
