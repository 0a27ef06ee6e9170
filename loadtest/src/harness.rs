//! Running real Uplink processes (and a real Prometheus) for the demo and end-to-end tests:
//! certificates, configuration files, child processes, and reading their `/metrics`.
//!
//! Every child process is killed when its handle drops, so a failing test leaves nothing
//! behind. All addresses are on loopback.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use uplink_shared::certs::Authority;

pub use crate::peers::Peer;

/// Paths of the Uplink binaries built by cargo.
#[derive(Clone, Debug)]
pub struct Bins {
    pub agent: PathBuf,
    pub gateway: PathBuf,
}

impl Bins {
    /// Finds the binaries next to the running executable (`target/<profile>/`), also when it
    /// runs from `target/<profile>/deps/` as a test does.
    pub fn locate() -> anyhow::Result<Bins> {
        let exe = std::env::current_exe()?;
        let mut dirs = vec![];
        if let Some(d) = exe.parent() {
            dirs.push(d.to_path_buf());
            if let Some(p) = d.parent() {
                dirs.push(p.to_path_buf());
            }
        }
        for d in dirs {
            let agent = d.join("uplink-agent");
            let gateway = d.join("uplink-gateway");
            if agent.is_file() && gateway.is_file() {
                return Ok(Bins { agent, gateway });
            }
        }
        bail!(
            "uplink-agent and uplink-gateway not found next to {}: run `cargo build --workspace` first",
            exe.display()
        )
    }
}

/// Runs blocking harness code (process control, HTTP polls) from an async test; needs the
/// multi-threaded runtime.
pub fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Held by end-to-end tests that share a test binary, so that they run one at a time: each
/// starts several processes on "free" ports, and two rigs starting at once can race for one.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// Polls `cond` every 100 ms until it holds; panics naming `what` after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free TCP port on 127.0.0.1 (also free for UDP at the time of asking).
///
/// A port is handed out once per process: tests running in parallel start processes that bind
/// their ports a little later, and the kernel could otherwise give the same free port twice.
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..200 {
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if given.contains(&port) {
            continue;
        }
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return Ok(port);
        }
    }
    bail!("no free port")
}

/// A loopback address with a free port.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// Writes a CA, a gateway certificate for `localhost`/`127.0.0.1`, and one client certificate
/// per site into `dir`.
pub fn write_certs(dir: &Path, sites: &[String]) -> anyhow::Result<()> {
    let ca = Authority::generate("Uplink test CA", 30)?;
    ca.write(dir)?;
    ca.issue_gateway(&["localhost".into(), "127.0.0.1".into()], 30)?
        .write(dir, "gateway")?;
    for s in sites {
        ca.issue_agent(s, 30)?.write(dir, s)?;
    }
    Ok(())
}

/// `dir/name`, created, with a copy of the gateway's certificates from `dir` (for a second
/// gateway of the same test).
pub fn gateway_subdir(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub)?;
    for f in ["ca.crt", "gateway.crt", "gateway.key"] {
        std::fs::copy(dir.join(f), sub.join(f))?;
    }
    Ok(sub)
}

/// A child process killed (SIGKILL) on drop unless it already exited.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Proc> {
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.into(),
            child,
        })
    }

    /// SIGKILL, as a crash or OOM kill would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `grace` for an orderly exit (SIGKILL after). Returns whether
    /// the process exited by itself with status 0.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
        false
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill9();
        }
    }
}

/// A gateway process and where it listens.
pub struct Gateway {
    pub proc: Proc,
    pub quic: SocketAddr,
    pub web: SocketAddr,
    pub config: PathBuf,
    /// Restarts so far (each writes `gateway.restart-<n>.log`).
    pub restarts: u32,
}

/// Writes `gateway.yml` in `dir` (certificates must be there) and starts the gateway. Its
/// store lives in `dir/gateway-store` (not synced: a kill -9 loses nothing, a power loss could).
pub fn start_gateway(
    bins: &Bins,
    dir: &Path,
    remote_write_urls: &[String],
) -> anyhow::Result<Gateway> {
    start_gateway_with(bins, dir, remote_write_urls, "0s")
}

/// As [`start_gateway`], writing the freshness ledger every `ledger_interval` (`0s`: off).
pub fn start_gateway_with(
    bins: &Bins,
    dir: &Path,
    remote_write_urls: &[String],
    ledger_interval: &str,
) -> anyhow::Result<Gateway> {
    start_gateway_yaml(
        bins,
        dir,
        &rw_entries(remote_write_urls),
        ledger_interval,
        "",
    )
}

/// `, extra` for a YAML flow mapping, or nothing.
fn more(extra: &str) -> String {
    if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    }
}

/// `remote_write:` items for capture-like receivers: short timeouts and backoffs.
pub fn rw_entries(urls: &[String]) -> String {
    urls.iter()
        .map(|u| {
            format!(
                "  - url: {u}\n    remote_timeout: 5s\n    \
                 queue_config: {{min_backoff: 50ms, max_backoff: 1s}}\n"
            )
        })
        .collect()
}

/// As [`start_gateway_with`], with the `remote_write:` list given as YAML (items indented by
/// two spaces) and extra keys for the `storage:` mapping (e.g. `ack: delivered`).
pub fn start_gateway_yaml(
    bins: &Bins,
    dir: &Path,
    rw: &str,
    ledger_interval: &str,
    storage_extra: &str,
) -> anyhow::Result<Gateway> {
    start_gateway_full(bins, dir, rw, ledger_interval, storage_extra, "")
}

/// As [`start_gateway_yaml`], with extra keys for the `tls:` mapping.
pub fn start_gateway_full(
    bins: &Bins,
    dir: &Path,
    rw: &str,
    ledger_interval: &str,
    storage_extra: &str,
    tls_extra: &str,
) -> anyhow::Result<Gateway> {
    let quic = free_addr()?;
    let web = free_addr()?;
    let (storage_extra, tls_extra) = (more(storage_extra), more(tls_extra));
    let config = dir.join("gateway.yml");
    std::fs::write(
        &config,
        format!(
            "listen_address: {quic}\n\
             tls: {{cert_file: gateway.crt, key_file: gateway.key, ca_file: ca.crt{tls_extra}}}\n\
             limits: {{max_retry_duration: 5s}}\n\
             ledger: {{interval: {ledger_interval}}}\n\
             storage: {{directory: gateway-store, fsync: false, drain_timeout: 2s{storage_extra}}}\n\
             remote_write:\n{rw}"
        ),
    )?;
    let proc = Proc::spawn(
        "uplink-gateway",
        Command::new(&bins.gateway)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address={web}")),
        &dir.join("gateway.log"),
    )?;
    wait_ready(web, Duration::from_secs(20))?;
    Ok(Gateway {
        proc,
        quic,
        web,
        config,
        restarts: 0,
    })
}

impl Gateway {
    /// Starts the same gateway again (same config, addresses and store) after it stopped.
    pub fn restart(&mut self, dir: &Path, bins: &Bins) -> anyhow::Result<()> {
        self.restarts += 1;
        self.proc = Proc::spawn(
            "uplink-gateway",
            Command::new(&bins.gateway)
                .arg(format!("--config.file={}", self.config.display()))
                .arg(format!("--web.listen-address={}", self.web)),
            &dir.join(format!("gateway.restart-{}.log", self.restarts)),
        )?;
        wait_ready(self.web, Duration::from_secs(20))
    }

    /// Sum over labels of one of the gateway's metrics; `None` when unreachable.
    pub fn metric(&self, name: &str) -> Option<f64> {
        metrics(self.web).ok().map(|m| metric_sum(&m, name))
    }

    /// Blocks until the gateway has delivered everything it stored (every destination's queue
    /// empty for longer than the gauges' 1 s refresh); false on timeout.
    pub fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut empty_since = None;
        while Instant::now() < deadline {
            if self.metric("uplink_gateway_queue_entries") == Some(0.0) {
                let since = *empty_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(1500) {
                    return true;
                }
            } else {
                empty_since = None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

/// An agent process.
pub struct Agent {
    pub site: String,
    pub proc: Proc,
    pub web: SocketAddr,
    pub config: PathBuf,
    pub queue_dir: PathBuf,
    /// Extra command-line flags, kept for restarts.
    pub args: Vec<String>,
}

/// Options for [`start_agent`].
pub struct AgentSpec<'a> {
    /// Whether the agent scrapes its own `/metrics` too (`uplink.self_scrape.enabled`); off
    /// where a test compares exact series sets.
    pub self_scrape: bool,
    pub site: &'a str,
    pub gateway: SocketAddr,
    pub targets: &'a [String],
    pub interval: &'a str,
    pub job: &'a str,
}

/// Writes `<site>.yml` (a Prometheus configuration plus `uplink:`) in `dir` and starts the
/// agent. Its queue lives in `dir/<site>-queue`.
pub fn start_agent(bins: &Bins, dir: &Path, spec: &AgentSpec<'_>) -> anyhow::Result<Agent> {
    start_agent_with(bins, dir, spec, "", "")
}

/// As [`start_agent`], with extra keys for the `uplink.queue` mapping (e.g. `max_bytes: 3000`)
/// and the `uplink.shipper` mapping (e.g. `batch_delay: 50ms`).
pub fn start_agent_with(
    bins: &Bins,
    dir: &Path,
    spec: &AgentSpec<'_>,
    queue_extra: &str,
    shipper_extra: &str,
) -> anyhow::Result<Agent> {
    start_agent_with_args(bins, dir, spec, queue_extra, shipper_extra, &[])
}

/// As [`start_agent_with`], with extra command-line flags (e.g.
/// `--web.enable-remote-write-receiver`).
pub fn start_agent_with_args(
    bins: &Bins,
    dir: &Path,
    spec: &AgentSpec<'_>,
    queue_extra: &str,
    shipper_extra: &str,
    args: &[&str],
) -> anyhow::Result<Agent> {
    start_agent_full(bins, dir, spec, [queue_extra, shipper_extra, ""], args)
}

/// As [`start_agent_with_args`], with extra keys for `uplink.queue`, `uplink.shipper` and
/// `uplink.tls`.
pub fn start_agent_full(
    bins: &Bins,
    dir: &Path,
    spec: &AgentSpec<'_>,
    [queue_extra, shipper_extra, tls_extra]: [&str; 3],
    args: &[&str],
) -> anyhow::Result<Agent> {
    let (queue_extra, shipper_extra, tls_extra) =
        (more(queue_extra), more(shipper_extra), more(tls_extra));
    let config = dir.join(format!("{}.yml", spec.site));
    let queue_dir = dir.join(format!("{}-queue", spec.site));
    let targets: Vec<String> = spec.targets.iter().map(|t| format!("'{t}'")).collect();
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: {iv}\n  scrape_timeout: {iv}\n  external_labels:\n    site: {site}\n\
             scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{targets}]\n\
             uplink:\n  gateways: ['{gw}']\n  server_name: localhost\n\
             \x20 tls: {{cert_file: {site}.crt, key_file: {site}.key, ca_file: ca.crt{tls_extra}}}\n\
             \x20 queue: {{directory: {site}-queue, sync: interval{queue_extra}}}\n\
             \x20 shipper: {{min_backoff: 100ms, max_backoff: 1s{shipper_extra}}}\n\
             \x20 self_scrape: {{enabled: {self_scrape}}}\n",
            iv = spec.interval,
            site = spec.site,
            job = spec.job,
            targets = targets.join(", "),
            gw = spec.gateway,
            self_scrape = spec.self_scrape,
        ),
    )?;
    let web = free_addr()?;
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let proc = Proc::spawn(
        &format!("uplink-agent[{}]", spec.site),
        Command::new(&bins.agent)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address={web}"))
            .args(&args),
        &dir.join(format!("{}.log", spec.site)),
    )?;
    wait_ready(web, Duration::from_secs(20))?;
    Ok(Agent {
        site: spec.site.into(),
        proc,
        web,
        config,
        queue_dir,
        args,
    })
}

/// A probe exporter with `spec` and an agent of `site` scraping it every `interval` as job
/// `probe`, shipping to `gateway`, with extra `uplink.shipper` keys (see [`start_agent_with`]).
pub async fn start_probed_agent(
    bins: &Bins,
    dir: &Path,
    site: &str,
    gateway: SocketAddr,
    (spec, interval): (crate::probe::ProbeSpec, &str),
    shipper_extra: &str,
) -> anyhow::Result<(crate::probe::Probe, Agent)> {
    let probe = crate::probe::Probe::start_local(spec).await?;
    let targets = probe.instances();
    let agent = block(|| {
        start_agent_with(
            bins,
            dir,
            &AgentSpec {
                self_scrape: false,
                site,
                gateway,
                targets: &targets,
                interval,
                job: "probe",
            },
            "",
            shipper_extra,
        )
    })?;
    Ok((probe, agent))
}

impl Agent {
    /// Starts the same agent again (same config, same queue) after it stopped.
    pub fn restart(&mut self, bins: &Bins, dir: &Path) -> anyhow::Result<()> {
        self.proc = Proc::spawn(
            &format!("uplink-agent[{}]", self.site),
            Command::new(&bins.agent)
                .arg(format!("--config.file={}", self.config.display()))
                .arg(format!("--web.listen-address={}", self.web))
                .args(&self.args),
            &dir.join(format!("{}.restart.log", self.site)),
        )?;
        wait_ready(self.web, Duration::from_secs(20))
    }
}

/// Blocking HTTP GET on loopback (no client library needed for these small bodies).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    // Chunked bodies are not decoded here; callers only parse line-oriented text.
    Ok((status, body))
}

/// Waits until `GET /-/ready` answers 200.
pub fn wait_ready(web: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    wait_http_ok(web, "/-/ready", timeout)
}

/// Blocks until `GET path` on `addr` answers 200 (polling every 100 ms), or fails after
/// `timeout`.
pub fn wait_http_ok(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok((200, _)) = http_get(addr, path) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{addr}{path} not 200 within {timeout:?}")
}

/// Reads a process's `/metrics` into `name{labels} -> value` (labels as printed).
pub fn metrics(web: SocketAddr) -> anyhow::Result<HashMap<String, f64>> {
    let (status, body) = http_get(web, "/metrics")?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect())
}

/// Sum of every series of metric `name` (any labels).
pub fn metric_sum(m: &HashMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

/// A `/proc/<pid>/status` memory field (`VmRSS`, `VmHWM`), MiB; 0 when unreadable.
pub fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// [`metric_sum`] of the process serving `/metrics` on `web`, from async tests; 0 when
/// unreachable.
pub fn metric_at(web: SocketAddr, name: &str) -> f64 {
    block(|| metrics(web))
        .map(|m| metric_sum(&m, name))
        .unwrap_or(0.0)
}

/// A real Prometheus server with the remote-write receiver enabled.
pub struct Prometheus {
    pub proc: Proc,
    pub web: SocketAddr,
}

/// Whether Prometheus 3, the reference, is installed (see [`crate::peers`]).
pub fn prometheus_installed() -> bool {
    Peer::Prometheus.installed()
}

/// Whether `bin` is on the `PATH`.
pub fn installed(bin: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts Prometheus 3 with an empty scrape configuration, TSDB under `dir/prometheus`.
pub fn start_prometheus(dir: &Path) -> anyhow::Result<Prometheus> {
    start_prometheus_args(dir, &[])
}

/// [`start_prometheus`] with more flags (`--enable-feature=...`).
pub fn start_prometheus_args(dir: &Path, args: &[&str]) -> anyhow::Result<Prometheus> {
    start_prometheus_config(dir, "global:\n  scrape_interval: 15s\n", args)
}

/// [`start_prometheus_args`] with the given `prometheus.yml` (e.g. a `storage.tsdb` section).
pub fn start_prometheus_config(
    dir: &Path,
    config: &str,
    args: &[&str],
) -> anyhow::Result<Prometheus> {
    let web = free_addr()?;
    let cfg = dir.join("prometheus.yml");
    std::fs::write(&cfg, config)?;
    let proc = Proc::spawn(
        "prometheus",
        Peer::Prometheus
            .command()
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .arg("--web.enable-remote-write-receiver")
            .args(args),
        &dir.join("prometheus.log"),
    )?;
    wait_ready(web, Duration::from_secs(60))?;
    Ok(Prometheus { proc, web })
}

impl Prometheus {
    pub fn remote_write_url(&self) -> String {
        format!("http://{}/api/v1/write", self.web)
    }
}

/// Starts a Prometheus 3 agent (WAL under `dir/prometheus-agent`) scraping `targets` as `job`
/// every `interval`, and remote-writing to `remote_write_url` with short batch deadlines and
/// backoffs, so tests see samples within about a second.
pub fn start_prometheus_agent(
    dir: &Path,
    job: &str,
    targets: &[String],
    interval: &str,
    remote_write_url: &str,
) -> anyhow::Result<Prometheus> {
    start_prometheus_agent_with(dir, job, targets, interval, remote_write_url, "")
}

/// [`start_prometheus_agent`] with more keys for its `remote_write` entry, each line indented
/// by four spaces and ending in a newline (`"    protobuf_message: ...\n"`).
pub fn start_prometheus_agent_with(
    dir: &Path,
    job: &str,
    targets: &[String],
    interval: &str,
    remote_write_url: &str,
    rw_extra: &str,
) -> anyhow::Result<Prometheus> {
    let cfg = dir.join("prometheus-agent.yml");
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n\
             scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{targets}]\n\
             remote_write:\n  - url: {remote_write_url}\n{rw_extra}    queue_config:\n\
             \x20     batch_send_deadline: 500ms\n      max_samples_per_send: 50\n\
             \x20     min_backoff: 50ms\n      max_backoff: 500ms\n",
            targets = targets.join(", "),
        ),
    )?;
    spawn_prometheus_agent(dir, &cfg, &[])
}

/// Starts a Prometheus 3 agent on the configuration file `config`, with more flags
/// (`--enable-feature=...` may repeat); WAL under `dir/prometheus-agent`, log in
/// `dir/prometheus-agent.log`. Returns once it is ready.
pub fn spawn_prometheus_agent(
    dir: &Path,
    config: &Path,
    args: &[&str],
) -> anyhow::Result<Prometheus> {
    spawn_prometheus_agent_of(Peer::Prometheus, dir, config, args)
}

/// [`spawn_prometheus_agent`] of a given Prometheus ([`Peer::Prometheus`] or
/// [`Peer::Prometheus2`]), each with its own agent-mode flag.
pub fn spawn_prometheus_agent_of(
    peer: Peer,
    dir: &Path,
    config: &Path,
    args: &[&str],
) -> anyhow::Result<Prometheus> {
    let web = free_addr()?;
    let proc = Proc::spawn(
        "prometheus-agent",
        peer.command()
            .arg(peer.agent_flag())
            .args(args)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.agent.path={}",
                dir.join("prometheus-agent").display()
            ))
            .arg(format!("--web.listen-address={web}")),
        &dir.join("prometheus-agent.log"),
    )?;
    wait_ready(web, Duration::from_secs(60))?;
    Ok(Prometheus { proc, web })
}

/// Starts a current `vmagent` remote-writing to `remote_write_url` (its on-disk queue under
/// `dir/data`, log in `dir/vmagent.log`) with more flags (`-promscrape.config=...` to scrape).
/// Returns once `/health` answers, with the web address.
pub fn spawn_vmagent(
    dir: &Path,
    remote_write_url: &str,
    args: &[String],
) -> anyhow::Result<(Proc, SocketAddr)> {
    spawn_vmagent_of(Peer::Vmagent, dir, remote_write_url, args)
}

/// [`spawn_vmagent`] of a given vmagent ([`Peer::Vmagent`] or [`Peer::Vmagent1`]).
pub fn spawn_vmagent_of(
    peer: Peer,
    dir: &Path,
    remote_write_url: &str,
    args: &[String],
) -> anyhow::Result<(Proc, SocketAddr)> {
    let web = free_addr()?;
    let proc = Proc::spawn(
        "vmagent",
        peer.command()
            .arg(format!("-remoteWrite.url={remote_write_url}"))
            .arg(format!(
                "-remoteWrite.tmpDataPath={}",
                dir.join("data").display()
            ))
            .arg(format!("-httpListenAddr={web}"))
            .args(args),
        &dir.join("vmagent.log"),
    )?;
    wait_http_ok(web, "/health", Duration::from_secs(60))?;
    Ok((proc, web))
}

/// Starts `uplink-agent` on an unchanged Prometheus file `prometheus_yml`, beside a Prometheus
/// agent in the parity tests: its uplink settings in a file of their own (identity
/// `<name>.crt`, queue `<name>-queue`, 200 ms batches, no self-scrape), shipping to `gateway`,
/// with `args` added. Returns the process and its web address.
pub fn start_agent_beside(
    bins: &Bins,
    dir: &Path,
    name: &str,
    prometheus_yml: &Path,
    gateway: SocketAddr,
    args: &[&str],
) -> anyhow::Result<(Proc, SocketAddr)> {
    start_agent_beside_with(bins, dir, name, prometheus_yml, gateway, "", args)
}

/// [`start_agent_beside`] with more lines for the uplink file (`compatibility: prometheus2`).
pub fn start_agent_beside_with(
    bins: &Bins,
    dir: &Path,
    name: &str,
    prometheus_yml: &Path,
    gateway: SocketAddr,
    uplink_extra: &str,
    args: &[&str],
) -> anyhow::Result<(Proc, SocketAddr)> {
    let uplink_file = dir.join("uplink.yml");
    std::fs::write(
        &uplink_file,
        format!(
            "gateways: ['{gateway}']\nserver_name: localhost\n\
             tls: {{cert_file: {name}.crt, key_file: {name}.key, ca_file: ca.crt}}\n\
             queue: {{directory: {name}-queue, sync: interval}}\nshipper: {{batch_delay: 200ms}}\n\
             self_scrape: {{enabled: false}}\n{uplink_extra}"
        ),
    )?;
    let web = free_addr()?;
    let proc = Proc::spawn(
        "uplink-agent",
        Command::new(&bins.agent)
            .arg(format!("--config.file={}", prometheus_yml.display()))
            .arg(format!("--uplink.config.file={}", uplink_file.display()))
            .arg(format!("--web.listen-address={web}"))
            .args(args),
        &dir.join("uplink-agent.log"),
    )?;
    Ok((proc, web))
}

/// The `data` of a Prometheus HTTP API answer (`path` e.g. `/api/v1/query`), which must have
/// succeeded.
pub async fn prometheus_api(
    web: SocketAddr,
    path: &str,
    query: &[(&str, &str)],
) -> anyhow::Result<serde_json::Value> {
    let text = reqwest::Client::new()
        .get(format!("http://{web}{path}"))
        .query(query)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let mut v: serde_json::Value = serde_json::from_str(&text)?;
    anyhow::ensure!(v["status"] == "success", "unexpected answer: {v}");
    Ok(v["data"].take())
}

/// How many series an instant PromQL query returns now (stale series are absent).
pub async fn prometheus_live(web: SocketAddr, query: &str) -> anyhow::Result<usize> {
    let data = prometheus_api(web, "/api/v1/query", &[("query", query)]).await?;
    Ok(data["result"].as_array().map_or(0, Vec::len))
}

/// Every raw sample of the range-vector selector `selector` (e.g. `{site="a"}[1h]`) from a
/// Prometheus server's HTTP API, evaluated now.
pub async fn prometheus_samples(
    web: SocketAddr,
    selector: &str,
) -> anyhow::Result<Vec<crate::capture::Received>> {
    let data = prometheus_api(web, "/api/v1/query", &[("query", selector)]).await?;
    let result = data["result"]
        .as_array()
        .with_context(|| format!("unexpected answer: {data}"))?;
    let mut out = Vec::new();
    for series in result {
        let labels = json_labels(&series["metric"])?;
        for pair in series["values"].as_array().context("values")? {
            let ts = pair[0].as_f64().context("timestamp")?;
            let value: f64 = pair[1].as_str().context("value")?.parse()?;
            out.push(crate::capture::Received {
                labels: labels.clone(),
                timestamp: (ts * 1000.0).round() as i64,
                value,
            });
        }
    }
    Ok(out)
}

/// A series' labels from a query API's `metric` object, sorted.
fn json_labels(metric: &serde_json::Value) -> anyhow::Result<Vec<uplink_shared::model::Label>> {
    use uplink_shared::model::{self, Label};
    let mut labels: Vec<Label> = metric
        .as_object()
        .context("metric")?
        .iter()
        .map(|(k, v)| Label::new(k.clone(), v.as_str().unwrap_or_default()))
        .collect();
    model::normalize(&mut labels);
    Ok(labels)
}

/// A real etcd server (Debian's `etcd-server`), for state shared between gateways.
pub struct Etcd {
    pub proc: Proc,
    /// `http://127.0.0.1:<port>`.
    pub client_url: String,
}

/// Whether the `etcd` binary is installed.
pub fn etcd_installed() -> bool {
    installed("etcd")
}

/// Starts a one-member `etcd` with its data under `dir/etcd`, on free loopback ports.
pub fn start_etcd(dir: &Path) -> anyhow::Result<Etcd> {
    let (client, peer) = (free_addr()?, free_addr()?);
    let client_url = format!("http://{client}");
    let peer_url = format!("http://{peer}");
    let proc = Proc::spawn(
        "etcd",
        Command::new("etcd")
            .arg("--name=uplink-test")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=uplink-test={peer_url}")),
        &dir.join("etcd.log"),
    )?;
    wait_http_ok(client, "/health", Duration::from_secs(60))?;
    Ok(Etcd { proc, client_url })
}

/// A real VictoriaMetrics single-node server.
pub struct VictoriaMetrics {
    pub proc: Proc,
    pub web: SocketAddr,
}

/// Whether a current VictoriaMetrics is installed (see [`crate::peers`]).
pub fn victoria_metrics_installed() -> bool {
    Peer::VictoriaMetrics.installed()
}

/// Starts `victoria-metrics` with its data under `dir/victoria-metrics`, keeping samples of
/// any age (`-retentionPeriod=100y`).
pub fn start_victoria_metrics(dir: &Path) -> anyhow::Result<VictoriaMetrics> {
    let web = free_addr()?;
    let proc = Proc::spawn(
        "victoria-metrics",
        Peer::VictoriaMetrics
            .command()
            .arg(format!(
                "-storageDataPath={}",
                dir.join("victoria-metrics").display()
            ))
            .arg(format!("-httpListenAddr={web}"))
            .arg("-retentionPeriod=100y")
            .arg("-search.disableCache"),
        &dir.join("victoria-metrics.log"),
    )?;
    wait_http_ok(web, "/health", Duration::from_secs(60))?;
    Ok(VictoriaMetrics { proc, web })
}

impl VictoriaMetrics {
    pub fn remote_write_url(&self) -> String {
        format!("http://{}/api/v1/write", self.web)
    }

    /// Every raw sample of the series matching `selector` (e.g. `{job="probe"}`), from
    /// `/api/v1/export`. Staleness markers come back as the Prometheus stale NaN.
    pub async fn samples(&self, selector: &str) -> anyhow::Result<Vec<crate::capture::Received>> {
        let text = reqwest::Client::new()
            .get(format!("http://{}/api/v1/export", self.web))
            .query(&[("match[]", selector)])
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let stale = f64::from_bits(crate::oracle::STALE_NAN_BITS);
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            // JSON has no NaN; VictoriaMetrics writes it bare (staleness markers).
            let line = line.replace("NaN", "null");
            let v: serde_json::Value = serde_json::from_str(&line)?;
            let labels = json_labels(&v["metric"])?;
            let values = v["values"].as_array().context("values")?;
            let stamps = v["timestamps"].as_array().context("timestamps")?;
            for (value, ts) in values.iter().zip(stamps) {
                out.push(crate::capture::Received {
                    labels: labels.clone(),
                    timestamp: ts.as_i64().context("timestamp")?,
                    value: value.as_f64().unwrap_or(stale),
                });
            }
        }
        Ok(out)
    }
}

/// The shipped global configuration (deploy/global), embedded so the demo runs anywhere.
pub mod global_files {
    pub const PROMETHEUS: &str = include_str!("../../deploy/global/prometheus.yml");
    pub const RECORDING: &str = include_str!("../../deploy/global/rules/recording.yml");
    pub const ALERTS: &str = include_str!("../../deploy/global/rules/alerts.yml");
    pub const ALERTMANAGER: &str = include_str!("../../deploy/global/alertmanager.yml");
}

/// Timings for running the shipped global configuration quickly (tests, demo): every alert's
/// `for:`, Prometheus's evaluation interval, Alertmanager's grouping delays.
#[derive(Clone, Debug)]
pub struct Timings {
    pub alert_for: String,
    pub evaluation_interval: String,
    pub group_wait: String,
    pub group_interval: String,
}

/// A global Prometheus running deploy/global's rules, and an Alertmanager routing to a webhook.
pub struct GlobalView {
    pub prometheus: Prometheus,
    pub alertmanager: Proc,
    pub alertmanager_web: SocketAddr,
}

/// Whether Debian's `prometheus-alertmanager` is installed.
pub fn alertmanager_installed() -> bool {
    Command::new("prometheus-alertmanager")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Writes deploy/global's files into `dir/global` with local addresses and `timings`, then
/// starts Alertmanager (webhook to `tickets_url`) and Prometheus (remote-write receiver on).
pub fn start_global_view(dir: &Path, tickets_url: &str, t: &Timings) -> anyhow::Result<GlobalView> {
    let g = dir.join("global");
    std::fs::create_dir_all(g.join("rules"))?;
    let prom_web = free_addr()?;
    let am_web = free_addr()?;
    let mut alerts = global_files::ALERTS.to_owned();
    for d in ["5m", "10m", "15m"] {
        alerts = alerts.replace(&format!("for: {d}"), &format!("for: {}", t.alert_for));
    }
    std::fs::write(g.join("rules/alerts.yml"), alerts)?;
    std::fs::write(g.join("rules/recording.yml"), global_files::RECORDING)?;
    let prom = global_files::PROMETHEUS
        .replace("127.0.0.1:9093", &am_web.to_string())
        .replace("127.0.0.1:9090", &prom_web.to_string())
        .replace(
            "evaluation_interval: 30s",
            &format!("evaluation_interval: {}", t.evaluation_interval),
        )
        .replace(
            "scrape_interval: 30s",
            &format!("scrape_interval: {}", t.evaluation_interval),
        );
    std::fs::write(g.join("prometheus.yml"), prom)?;
    let am = global_files::ALERTMANAGER
        .replace("http://127.0.0.1:9095/tickets", tickets_url)
        .replace("group_wait: 30s", &format!("group_wait: {}", t.group_wait))
        .replace(
            "group_interval: 5m",
            &format!("group_interval: {}", t.group_interval),
        );
    std::fs::write(g.join("alertmanager.yml"), am)?;

    let alertmanager = Proc::spawn(
        "alertmanager",
        Command::new("prometheus-alertmanager")
            .arg(format!(
                "--config.file={}",
                g.join("alertmanager.yml").display()
            ))
            .arg(format!("--storage.path={}", g.join("am-data").display()))
            .arg(format!("--web.listen-address={am_web}"))
            .arg("--cluster.listen-address="),
        &g.join("alertmanager.log"),
    )?;
    wait_ready(am_web, Duration::from_secs(30))?;
    let proc = Proc::spawn(
        "prometheus",
        Peer::Prometheus
            .command()
            .arg(format!(
                "--config.file={}",
                g.join("prometheus.yml").display()
            ))
            .arg(format!("--storage.tsdb.path={}", g.join("tsdb").display()))
            .arg(format!("--web.listen-address={prom_web}"))
            .arg("--web.enable-remote-write-receiver"),
        &g.join("prometheus.log"),
    )?;
    wait_ready(prom_web, Duration::from_secs(60))?;
    Ok(GlobalView {
        prometheus: Prometheus {
            proc,
            web: prom_web,
        },
        alertmanager,
        alertmanager_web: am_web,
    })
}

/// Value of an instant PromQL query returning one series, if any.
pub async fn prometheus_value(web: SocketAddr, query: &str) -> anyhow::Result<Option<f64>> {
    let data = prometheus_api(web, "/api/v1/query", &[("query", query)]).await?;
    Ok(data["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok()))
}

/// Options of [`Rig::start_with`].
#[derive(Clone, Debug)]
pub struct RigOptions<'a> {
    /// Extra keys for the agent's `uplink.queue`.
    pub queue_extra: &'a str,
    /// Extra keys for the agent's `uplink.shipper`.
    pub shipper_extra: &'a str,
    /// Capture receivers behind the gateway (at least one).
    pub destinations: usize,
    /// Extra keys for the gateway's `storage:` (e.g. `ack: delivered`).
    pub gateway_storage_extra: &'a str,
    /// The agent scrapes its own `/metrics` too.
    pub self_scrape: bool,
    /// Extra keys for the `tls:` mappings of both the gateway and the agent (e.g.
    /// `reload_interval: 200ms`).
    pub tls_extra: &'a str,
    /// Extra YAML lines for every `remote_write` entry (indented by four spaces, each ending
    /// in a newline, e.g. `"    replay: {live_first: true}\n"`).
    pub rw_extra: &'a str,
}

impl Default for RigOptions<'_> {
    fn default() -> Self {
        RigOptions {
            queue_extra: "",
            shipper_extra: "",
            destinations: 1,
            gateway_storage_extra: "",
            self_scrape: false,
            tls_extra: "",
            rw_extra: "",
        }
    }
}

/// One site's whole path on loopback, for fault tests: a probe exporter, an agent scraping it,
/// a UDP chaos link, a gateway, and the capture receiver as the destination (plus further
/// capture receivers as further destinations, with [`Rig::start_with`]).
pub struct Rig {
    pub bins: Bins,
    pub dir: tempfile::TempDir,
    pub site: String,
    pub spec: crate::probe::ProbeSpec,
    pub probe: crate::probe::Probe,
    pub capture: crate::capture::Capture,
    /// Destinations after the first, in configuration order.
    pub others: Vec<crate::capture::Capture>,
    pub gateway: Gateway,
    pub link: crate::proxy::UdpProxy,
    pub agent: Agent,
}

impl Rig {
    /// Starts everything; `queue_extra` adds keys to the agent's `uplink.queue`. Must run on a
    /// multi-threaded Tokio runtime.
    pub async fn start(
        site: &str,
        spec: crate::probe::ProbeSpec,
        interval: &str,
        queue_extra: &str,
    ) -> anyhow::Result<Rig> {
        let opts = RigOptions {
            queue_extra,
            ..RigOptions::default()
        };
        Self::start_with(site, spec, interval, &opts).await
    }

    /// As [`Rig::start`], with more options.
    pub async fn start_with(
        site: &str,
        spec: crate::probe::ProbeSpec,
        interval: &str,
        opts: &RigOptions<'_>,
    ) -> anyhow::Result<Rig> {
        let bins = Bins::locate()?;
        let dir = tempfile::tempdir()?;
        write_certs(dir.path(), &[site.to_owned()])?;
        let probe = crate::probe::Probe::start_local(spec).await?;
        let capture = crate::capture::Capture::start(free_addr()?).await?;
        let mut others = Vec::new();
        for _ in 1..opts.destinations {
            others.push(crate::capture::Capture::start(free_addr()?).await?);
        }
        let urls: Vec<String> = std::iter::once(&capture)
            .chain(&others)
            .map(|c| c.url())
            .collect();
        let rw: String = urls
            .iter()
            .map(|u| rw_entries(std::slice::from_ref(u)) + opts.rw_extra)
            .collect();
        let gateway = tokio::task::block_in_place(|| {
            start_gateway_full(
                &bins,
                dir.path(),
                &rw,
                "0s",
                opts.gateway_storage_extra,
                opts.tls_extra,
            )
        })?;
        let link = crate::proxy::UdpProxy::start(free_addr()?, gateway.quic).await?;
        let targets = probe.instances();
        let agent = tokio::task::block_in_place(|| {
            start_agent_full(
                &bins,
                dir.path(),
                &AgentSpec {
                    self_scrape: opts.self_scrape,
                    site,
                    gateway: link.addr,
                    targets: &targets,
                    interval,
                    job: "probe",
                },
                [opts.queue_extra, opts.shipper_extra, opts.tls_extra],
                &[],
            )
        })?;
        Ok(Rig {
            bins,
            dir,
            site: site.to_owned(),
            spec,
            probe,
            capture,
            others,
            gateway,
            link,
            agent,
        })
    }

    /// Starts the gateway again on the same configuration and store.
    pub fn restart_gateway(&mut self) -> anyhow::Result<()> {
        block(|| self.gateway.restart(self.dir.path(), &self.bins))
    }

    /// A metric of the gateway (sum over labels); -1 when unreachable.
    pub fn gateway_metric(&self, name: &str) -> f64 {
        block(|| self.gateway.metric(name)).unwrap_or(-1.0)
    }

    /// Waits until the gateway has delivered everything it stored; false on timeout.
    pub async fn wait_gateway_drained(&self, timeout: Duration) -> bool {
        block(|| self.gateway.wait_drained(timeout))
    }

    /// Labels every probe series must carry besides `instance` (for the oracle).
    pub fn oracle_labels(&self) -> [uplink_shared::model::Label; 2] {
        [
            uplink_shared::model::Label::new("job", "probe"),
            uplink_shared::model::Label::new("site", self.site.clone()),
        ]
    }

    /// Starts the agent again on the same configuration and queue.
    pub fn restart_agent(&mut self) -> anyhow::Result<()> {
        block(|| self.agent.restart(&self.bins, self.dir.path()))
    }

    /// A metric of the agent (sum over labels); -1 when unreachable.
    pub fn agent_metric(&self, name: &str) -> f64 {
        block(|| metrics(self.agent.web)).map_or(-1.0, |m| metric_sum(&m, name))
    }
}
