//! `uplink-loadtest drain`: how fast a site's backlog drains after an outage, as a multiple of
//! its live ingest rate, how soon data scraped after the outage is seen, and whether the
//! backlog arrives whole; for Uplink and, in the same run, for Prometheus agent mode and
//! vmagent.
//!
//! One site runs until data flows: a probe exporter scraped by the relay, and the capture
//! receiver as the destination. For Uplink the relay is an agent, a UDP chaos link and a
//! gateway; the peers (`--relay prometheus|vmagent|all`) remote-write straight to the receiver,
//! on their default queue settings. Then the outage, for `--outage`, at `--at`:
//! - `link`: the link is cut; the agent keeps scraping into its queue. When the link returns it
//!   ships backlog and live data together, in order. For the peers, whose only link is the
//!   destination, `link` and `destination` are the same outage.
//! - `destination`: the capture receiver answers 503; Uplink's gateway store absorbs the
//!   backlog. With `--live-first`, the destination has `replay.live_first` (split after 5 s).
//!
//! With `--restart term|kill` the relay (the Uplink agent, or the peer) is stopped halfway
//! through the outage, by SIGTERM as a rollout does or SIGKILL as a crash does, and started
//! again on the same data directory.
//!
//! Measured from the heal: until the destination has received every sample scraped before the
//! heal that it will get (`delivered`), and the first sample scraped after it (`first_live`: how
//! stale the global view stays); for Uplink at `link`, also until the agent's queue was stored
//! by the gateway. Once live data arrives, the run ends when every probe sample scraped before
//! the heal has arrived and nothing more for a second (`complete`), or after 65 s without
//! another (`quiet`: longer than vmagent's largest retry backoff; some never arrive). Ingest
//! rate = samples per scrape times targets over the interval; drain rate = backlog / time.
//! Finally the relay stops in order and every received sample is checked against the probe's
//! oracle: scrapes served before the heal of which nothing arrived are `missing`.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::capture::Capture;
use crate::harness::{self, Proc, Rig, block};
use crate::oracle;
use crate::probe::{Probe, ProbeSpec};

/// Which relay holds the backlog.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Relay {
    /// Uplink agent and gateway.
    Uplink,
    /// Prometheus 3 in agent mode (`--agent`).
    Prometheus,
    /// A current vmagent.
    Vmagent,
    /// Debian 12's Prometheus 2.42 in agent mode (`--enable-feature=agent`).
    Prometheus2,
    /// Debian 12's vmagent 1.79.
    Vmagent1,
    /// Uplink and the current peers in turn, in one run.
    All,
    /// Uplink, the current peers and Debian 12's, in one run.
    AllWithOld,
}

impl Relay {
    /// The peer program a relay other than Uplink runs.
    fn peer(self) -> Option<crate::peers::Peer> {
        use crate::peers::Peer;
        match self {
            Relay::Prometheus => Some(Peer::Prometheus),
            Relay::Vmagent => Some(Peer::Vmagent),
            Relay::Prometheus2 => Some(Peer::Prometheus2),
            Relay::Vmagent1 => Some(Peer::Vmagent1),
            _ => None,
        }
    }
}

/// Where the outage is.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum At {
    /// Between the agent and the gateway.
    Link,
    /// Between the relay and the receiver.
    Destination,
}

/// How a drain run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum End {
    /// Every probe sample scraped before the heal arrived.
    Complete,
    /// Some never arrived; the run ended after `QUIET` without another.
    Quiet,
}

/// How the relay is restarted halfway through the outage.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Restart {
    /// Not restarted.
    None,
    /// SIGTERM, then started again (a rollout, an upgrade, a node drain).
    Term,
    /// SIGKILL, then started again (a crash, an OOM kill).
    Kill,
}

/// Settings of a drain run.
#[derive(clap::Args, Debug, Clone)]
pub struct DrainArgs {
    /// Probe targets.
    #[arg(long, default_value_t = 20)]
    pub targets: usize,
    /// Metric families per target (about 2.7 series each).
    #[arg(long, default_value_t = 100)]
    pub families: usize,
    /// Scrape interval.
    #[arg(long, default_value = "1s")]
    pub interval: String,
    /// How long the outage lasts.
    #[arg(long, default_value = "60s")]
    pub outage: uplink_shared::duration::PromDuration,
    /// Where the outage is.
    #[arg(long, value_enum, default_value = "link")]
    pub at: At,
    /// The destination takes live data first (`replay.live_first`; Uplink only).
    #[arg(long)]
    pub live_first: bool,
    /// Which relay holds the backlog.
    #[arg(long, value_enum, default_value = "uplink")]
    pub relay: Relay,
    /// Restart the relay halfway through the outage.
    #[arg(long, value_enum, default_value = "none")]
    pub restart: Restart,
}

/// What a drain run measured.
#[derive(Debug, serde::Serialize)]
pub struct DrainReport {
    pub relay: Relay,
    pub at: At,
    pub live_first: bool,
    pub restart: Restart,
    pub series: usize,
    /// How long the relay's link was down: `--outage`, or longer when a restart took longer
    /// than half of it (a Prometheus agent stopping tries to flush for up to a minute).
    pub outage_seconds: f64,
    /// With a restart: whether the relay exited by itself (SIGTERM), not killed after the
    /// grace period.
    pub restart_clean: Option<bool>,
    /// How the run ended: every probe sample scraped before the heal arrived, or `QUIET`
    /// passed without another (some never arrive: lost, or scrapes that failed).
    pub ended_by: End,
    /// The site's scrape rate: samples per scrape (probe series and the scraper's own) times
    /// targets over the interval.
    pub ingest_samples_per_second: f64,
    /// Samples scraped before the heal that arrived after it.
    pub backlog_samples: u64,
    /// Until the destination received the last of them.
    pub delivered_seconds: f64,
    /// `backlog_samples / delivered_seconds`, as a multiple of the ingest rate.
    pub delivered_to_ingest: f64,
    /// Until the destination received the first sample scraped after the heal.
    pub first_live_seconds: f64,
    /// Uplink at `link`, no restart: records in the agent's queue at the heal, and until the
    /// gateway had stored all of them (the agent's own drain), also as a multiple of ingest.
    pub queue_records: Option<u64>,
    pub to_store_seconds: Option<f64>,
    pub to_store_to_ingest: Option<f64>,
    /// Scrapes served before the heal of which nothing arrived: lost (or failed, below).
    pub missing_scrapes: u64,
    /// Series missing from scrapes of which other series arrived.
    pub missing_in_scrape: u64,
    /// Scrapes the Uplink agent counted as failed since it last started (e.g. timed out on a
    /// busy machine): served by the probe, never stored, so missing without any delivery loss.
    pub scrape_failures: Option<u64>,
    pub wrong: u64,
    pub duplicates: u64,
}

/// After live data arrives, how long without another backlog sample ends a run whose backlog
/// never completes (longer than vmagent's largest retry backoff, one minute).
const QUIET: Duration = Duration::from_secs(65);

/// One site under test, whichever relay holds its backlog.
trait Site {
    fn probe(&self) -> &Probe;
    fn capture(&self) -> &Capture;
    /// The labels besides `instance` on every probe series that arrives.
    fn labels(&self) -> [uplink_shared::model::Label; 2];
    fn outage(&self, on: bool);
    /// Stops the relay as `how` says and starts it again on the same data (blocking); whether
    /// it exited by itself.
    fn restart(&mut self, how: Restart) -> anyhow::Result<bool>;
    /// Scrapes the relay counted as failed since it last started, where it says.
    fn scrape_failures(&self) -> Option<u64> {
        None
    }
    /// At the heal, just before the outage ends.
    fn at_heal(&mut self) {}
    /// Every poll after the heal, with the seconds since.
    fn poll(&mut self, _since_heal: f64) {}
    /// Stops the relay in order once measured (blocking).
    fn stop(&mut self);
}

/// SIGKILL, or SIGTERM with `grace` (then SIGKILL); whether the process exited by itself.
fn halt(proc: &mut Proc, how: Restart, grace: Duration) -> bool {
    match how {
        Restart::Kill => {
            proc.kill9();
            false
        }
        _ => proc.terminate(grace),
    }
}

/// Per target, the scrapes the probe has served.
fn served(probe: &Probe) -> Vec<u64> {
    (0..probe.addrs.len()).map(|t| probe.served(t)).collect()
}

/// Runs the outage and measures; relay-specific fields are left empty.
async fn measure(
    site: &mut dyn Site,
    args: &DrainArgs,
    relay: Relay,
) -> anyhow::Result<DrainReport> {
    let spec = site.probe().spec;
    let series_per_target = crate::probe::spec_series_count(&spec);
    // Data flows, and what one scrape adds besides the probe's series (`up`, ...).
    harness::wait_for(
        "delivery before the outage",
        Duration::from_secs(60),
        || !site.capture().is_empty(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = oracle::check_served(site.probe(), &site.labels(), &site.capture().snapshot()).0;
    let scrapes: usize = before.scrapes.iter().map(|s| s.len()).sum();
    anyhow::ensure!(scrapes > 0, "no probe scrape arrived before the outage");
    // For the nominal ingest rate only; the end of the drain is judged on probe series alone.
    let per_scrape =
        series_per_target as u64 + (before.other_samples as f64 / scrapes as f64).round() as u64;
    let interval = uplink_shared::duration::PromDuration::parse(&args.interval)
        .map_err(|e| anyhow::anyhow!("--interval: {e}"))?;
    let ingest = (per_scrape * spec.targets as u64) as f64 / interval.0.as_secs_f64();

    site.outage(true);
    let cut = Instant::now();
    let mut restart_clean = None;
    if args.restart != Restart::None {
        tokio::time::sleep(args.outage.0 / 2).await;
        restart_clean = Some(block(|| site.restart(args.restart))?);
    }
    tokio::time::sleep(args.outage.0.saturating_sub(cut.elapsed())).await;
    let served_at_heal = served(site.probe());
    let outage_seconds = cut.elapsed().as_secs_f64();
    let heal_ms = harness::now_ms();
    site.capture().mark(heal_ms);
    site.at_heal();
    site.outage(false);
    let healed = Instant::now();
    let at_heal = site.capture().before_mark();
    // Every probe series of every scrape served before the heal (a scrape served just after
    // it may count too; a failed one never arrives, and the quiet period ends the run).
    let expected: u64 = served_at_heal.iter().sum::<u64>() * series_per_target as u64;

    // Every 20 ms: when the count of samples scraped before the heal last grew, and when the
    // first sample scraped after it arrived. The run ends once live data flows and every
    // probe sample scraped before the heal is in with nothing more for a second, or after
    // `QUIET` without any.
    let deadline = healed + QUIET + Duration::from_secs(600).max(args.outage.0 * 10);
    let (mut last, mut last_at, mut changed) = (at_heal, 0.0, Instant::now());
    let mut first_live = None;
    let ended_by = loop {
        let now = healed.elapsed().as_secs_f64();
        site.poll(now);
        let n = site.capture().before_mark();
        if n != last {
            (last, last_at, changed) = (n, now, Instant::now());
        }
        if first_live.is_none() && site.capture().newest_timestamp() >= heal_ms {
            first_live = Some(now);
        }
        if first_live.is_some() {
            if site.capture().probe_before_mark() >= expected
                && changed.elapsed() >= Duration::from_secs(1)
            {
                break End::Complete;
            }
            if changed.elapsed() >= QUIET {
                break End::Quiet;
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no end to the drain ({} of {expected} probe samples scraped before the heal, live data: {})",
            site.capture().probe_before_mark(),
            first_live.is_some()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let scrape_failures = site.scrape_failures();
    block(|| site.stop());
    let received = site.capture().snapshot();
    let (report, missing) = oracle::check_served(site.probe(), &site.labels(), &received);
    let missing = missing
        .iter()
        .filter(|(t, n)| *n < served_at_heal[*t])
        .count() as u64;
    let backlog = last - at_heal;
    Ok(DrainReport {
        relay,
        at: args.at,
        live_first: args.live_first && relay == Relay::Uplink,
        restart: args.restart,
        series: series_per_target * spec.targets,
        outage_seconds,
        restart_clean,
        ended_by,
        ingest_samples_per_second: ingest,
        backlog_samples: backlog,
        delivered_seconds: last_at,
        delivered_to_ingest: backlog as f64 / last_at / ingest,
        first_live_seconds: first_live.unwrap_or(f64::NAN),
        queue_records: None,
        to_store_seconds: None,
        to_store_to_ingest: None,
        missing_scrapes: missing,
        missing_in_scrape: report.missing_in_scrape,
        scrape_failures,
        wrong: report.wrong,
        duplicates: site.capture().duplicates(),
    })
}

/// Uplink: agent, chaos link, gateway.
struct UplinkSite {
    rig: Rig,
    at: At,
    /// Whether the agent's own drain is measured (`link`, no restart: its counters run on).
    to_store: bool,
    queued_at_heal: f64,
    acked_at_heal: f64,
    records_at_heal: u64,
    stored_after: Option<f64>,
}

impl Site for UplinkSite {
    fn probe(&self) -> &Probe {
        &self.rig.probe
    }
    fn capture(&self) -> &Capture {
        &self.rig.capture
    }
    fn labels(&self) -> [uplink_shared::model::Label; 2] {
        self.rig.oracle_labels()
    }
    fn outage(&self, on: bool) {
        match self.at {
            At::Destination => self
                .rig
                .capture
                .set_fail_next(if on { u32::MAX } else { 0 }, 503),
            At::Link => self.rig.link.faults.blackhole.store(on, Ordering::Relaxed),
        }
    }
    fn restart(&mut self, how: Restart) -> anyhow::Result<bool> {
        let clean = halt(&mut self.rig.agent.proc, how, Duration::from_secs(30));
        self.rig.restart_agent()?;
        Ok(clean)
    }
    fn scrape_failures(&self) -> Option<u64> {
        let failed = self.rig.agent_metric("uplink_agent_scrape_failures_total");
        (failed >= 0.0).then_some(failed as u64)
    }
    fn at_heal(&mut self) {
        self.queued_at_heal = self.rig.agent_metric("uplink_agent_samples_queued_total");
        self.acked_at_heal = self.rig.agent_metric("uplink_agent_samples_acked_total");
        self.records_at_heal = self.rig.agent_metric("uplink_agent_queue_records").max(0.0) as u64;
    }
    fn poll(&mut self, since_heal: f64) {
        if self.to_store
            && self.stored_after.is_none()
            && self.rig.agent_metric("uplink_agent_samples_acked_total") >= self.queued_at_heal
        {
            self.stored_after = Some(since_heal);
        }
    }
    fn stop(&mut self) {
        self.rig.agent.proc.terminate(Duration::from_secs(30));
        self.rig.gateway.wait_drained(Duration::from_secs(120));
    }
}

async fn run_uplink(args: &DrainArgs, spec: ProbeSpec) -> anyhow::Result<DrainReport> {
    let rw_extra = if args.live_first {
        "    replay: {live_first: true, split_after: 5s}\n"
    } else {
        ""
    };
    let opts = harness::RigOptions {
        rw_extra,
        ..Default::default()
    };
    let rig = Rig::start_with("drain", spec, &args.interval, &opts).await?;
    let mut site = UplinkSite {
        rig,
        at: args.at,
        to_store: args.at == At::Link && args.restart == Restart::None,
        queued_at_heal: 0.0,
        acked_at_heal: 0.0,
        records_at_heal: 0,
        stored_after: None,
    };
    let mut report = measure(&mut site, args, Relay::Uplink).await?;
    if site.to_store {
        let unacked_at_heal = site.queued_at_heal - site.acked_at_heal;
        report.queue_records = Some(site.records_at_heal);
        report.to_store_seconds = site.stored_after;
        report.to_store_to_ingest = site
            .stored_after
            .map(|s| unacked_at_heal / s / report.ingest_samples_per_second);
    }
    Ok(report)
}

/// A peer remote-writing straight to the capture receiver.
struct PeerSite {
    relay: Relay,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    probe: Probe,
    capture: Capture,
    proc: Proc,
}

impl PeerSite {
    fn name(relay: Relay) -> &'static str {
        relay.peer().map_or("uplink", crate::peers::Peer::slug)
    }

    fn spawn(relay: Relay, dir: &Path, config: &Path, url: &str) -> anyhow::Result<Proc> {
        let peer = relay
            .peer()
            .ok_or_else(|| anyhow::anyhow!("{relay:?} is not a peer"))?;
        Ok(if peer.is_prometheus() {
            harness::spawn_prometheus_agent_of(peer, dir, config, &[])?.proc
        } else {
            let scrape = format!("-promscrape.config={}", config.display());
            harness::spawn_vmagent_of(peer, dir, url, &[scrape])?.0
        })
    }
}

impl Site for PeerSite {
    fn probe(&self) -> &Probe {
        &self.probe
    }
    fn capture(&self) -> &Capture {
        &self.capture
    }
    fn labels(&self) -> [uplink_shared::model::Label; 2] {
        oracle::probe_labels(Self::name(self.relay))
    }
    fn outage(&self, on: bool) {
        self.capture
            .set_fail_next(if on { u32::MAX } else { 0 }, 503);
    }
    fn restart(&mut self, how: Restart) -> anyhow::Result<bool> {
        // Longer than Prometheus's flush deadline (1m), so SIGTERM ends as Prometheus ends it.
        let clean = halt(&mut self.proc, how, Duration::from_secs(90));
        self.proc = Self::spawn(
            self.relay,
            self.dir.path(),
            &self.config,
            &self.capture.url(),
        )?;
        Ok(clean)
    }
    fn stop(&mut self) {
        self.proc.terminate(Duration::from_secs(60));
    }
}

async fn run_peer(args: &DrainArgs, spec: ProbeSpec, relay: Relay) -> anyhow::Result<DrainReport> {
    let name = PeerSite::name(relay);
    if let Some(p) = relay.peer() {
        p.require()?;
    }
    let dir = tempfile::tempdir()?;
    let probe = Probe::start_local(spec).await?;
    let capture = Capture::start(harness::free_addr()?).await?;
    let config = dir.path().join(format!("{name}.yml"));
    let url = capture.url();
    let remote_write = relay
        .peer()
        .is_some_and(|p| p.is_prometheus())
        .then_some(url.as_str());
    std::fs::write(
        &config,
        crate::compare::prom_config(
            "probe",
            &probe.instances(),
            &args.interval,
            name,
            remote_write,
        ),
    )?;
    let proc = block(|| PeerSite::spawn(relay, dir.path(), &config, &url))?;
    let mut site = PeerSite {
        relay,
        dir,
        config,
        probe,
        capture,
        proc,
    };
    measure(&mut site, args, relay).await
}

/// Runs the relays `--relay` names, one after another.
pub async fn run(args: DrainArgs) -> anyhow::Result<Vec<DrainReport>> {
    let spec = ProbeSpec {
        targets: args.targets,
        families: args.families,
        churn_every: 0,
    };
    let relays = match args.relay {
        Relay::All => vec![Relay::Uplink, Relay::Prometheus, Relay::Vmagent],
        Relay::AllWithOld => vec![
            Relay::Uplink,
            Relay::Prometheus,
            Relay::Vmagent,
            Relay::Prometheus2,
            Relay::Vmagent1,
        ],
        one => vec![one],
    };
    let mut out = Vec::new();
    let mut failed = Vec::new();
    for relay in relays {
        let report = match relay {
            Relay::Uplink => run_uplink(&args, spec).await,
            peer => run_peer(&args, spec, peer).await,
        };
        // One relay failing does not cancel the others' runs.
        match report {
            Ok(report) => {
                eprintln!("{}", serde_json::to_string(&report)?);
                out.push(report);
            }
            Err(e) => {
                eprintln!("{relay:?}: {e:#}");
                failed.push(format!("{relay:?}: {e:#}"));
            }
        }
    }
    anyhow::ensure!(!out.is_empty(), "every run failed: {}", failed.join("; "));
    Ok(out)
}

/// The reports as a markdown table, ratios against the first.
pub fn markdown(reports: &[DrainReport]) -> String {
    let mut md = String::from(
        "| relay | outage s | backlog samples | delivered s | x ingest | vs first | first live s | vs first | missing scrapes | duplicates | wrong | ended |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    let base = reports.first();
    // A figure, or a dash where there is none (nothing delivered after the heal).
    let fig = |v: f64, unit: &str| match v.is_finite() && v > 0.0 {
        true => format!("{v:.2}{unit}"),
        false => "-".to_owned(),
    };
    let ratio = crate::compare::ratio;
    for r in reports {
        md.push_str(&format!(
            "| {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:?}{} |\n",
            r.relay
                .peer()
                .map_or_else(|| "Uplink".to_owned(), |p| p.label()),
            r.outage_seconds,
            r.backlog_samples,
            fig(r.delivered_seconds, ""),
            fig(r.delivered_to_ingest, "x"),
            fig(
                ratio(r.delivered_seconds, base.map(|b| b.delivered_seconds)),
                "x"
            ),
            fig(r.first_live_seconds, ""),
            fig(
                ratio(r.first_live_seconds, base.map(|b| b.first_live_seconds)),
                "x"
            ),
            r.missing_scrapes,
            r.duplicates,
            r.wrong,
            r.ended_by,
            match r.restart_clean {
                Some(false) if r.restart == Restart::Term => ", killed after the grace period",
                _ => "",
            },
        ));
    }
    md
}
