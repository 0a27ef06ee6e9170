//! Keeps one loop per target of every job, following discovery updates and reloads.
//!
//! One task per job owns that job's discovery providers and target loops. Whenever a provider
//! publishes (or the job's configuration changes), the job's targets are computed again from
//! all groups ([`super::target`]) and compared with the running loops by key (URL and labels,
//! as Prometheus compares targets):
//! - a key that is gone: its loop is told the target was *removed* and writes stale markers
//!   after up to two intervals;
//! - a key whose settings changed (a reload changed the job, its interval or timeout): its loop
//!   stops at once, without stale markers, and a new one starts (the series continue);
//! - a new key: a loop starts.
//!
//! A job removed by a reload removes all its targets. Shutdown stops every loop at once
//! without stale markers, as Prometheus does. Discovery failures never remove targets: the
//! providers keep publishing their last good groups.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};
use uplink_shared::model::Label;

use super::target::{self, Job, Populated};
use super::{Context, Health, Stop, Target, run_target};
use crate::config::{Compatibility, Config, ScrapeConfig};
use crate::discovery::{LabelSet, TargetGroup};
use crate::http_client::HttpClient;

/// What `/api/v1/targets` shows of one job.
#[derive(Clone, Default)]
pub struct JobView {
    pub active: Vec<(Target, Arc<Mutex<Health>>)>,
    pub dropped: Vec<Arc<LabelSet>>,
}

/// Every job's targets, by job name.
pub type TargetsView = Arc<Mutex<BTreeMap<String, JobView>>>;

/// A job's configuration, with what it inherits.
struct JobSpec {
    cfg: Arc<Config>,
    index: usize,
}

impl JobSpec {
    fn sc(&self) -> &ScrapeConfig {
        &self.cfg.scrape_configs[self.index]
    }
    fn same_as(&self, other: &JobSpec) -> bool {
        self.sc() == other.sc() && self.cfg.global == other.cfg.global
    }
}

struct JobHandle {
    spec: watch::Sender<Arc<JobSpec>>,
    removed: CancellationToken,
}

/// Owns the job tasks; [`Manager::apply`] brings them in line with a configuration.
pub struct Manager {
    ctx: Context,
    base: PathBuf,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    jobs: HashMap<String, JobHandle>,
    pub view: TargetsView,
}

impl Manager {
    /// `base` is the configuration file's directory (relative `file_sd` paths resolve there).
    /// Tasks go on `tracker`; `shutdown` stops them all without stale markers.
    pub fn new(
        ctx: Context,
        base: PathBuf,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Manager {
        Manager {
            ctx,
            base,
            tracker,
            shutdown,
            jobs: HashMap::new(),
            view: TargetsView::default(),
        }
    }

    /// Starts, updates or removes job tasks to match `cfg`.
    pub fn apply(&mut self, cfg: Arc<Config>) {
        let names: Vec<&str> = cfg
            .scrape_configs
            .iter()
            .map(|s| s.job_name.as_str())
            .collect();
        self.jobs.retain(|name, h| {
            let keep = names.contains(&name.as_str());
            if !keep {
                info!(job = %name, "Job removed; its targets will be marked stale.");
                h.removed.cancel();
            }
            keep
        });
        if let Ok(mut v) = self.view.lock() {
            v.retain(|name, _| names.contains(&name.as_str()));
        }
        for index in 0..cfg.scrape_configs.len() {
            let spec = Arc::new(JobSpec {
                cfg: cfg.clone(),
                index,
            });
            let name = spec.sc().job_name.clone();
            if let Some(h) = self.jobs.get(&name) {
                if !h.spec.borrow().same_as(&spec) {
                    h.spec.send_replace(spec);
                }
                continue;
            }
            let (tx, rx) = watch::channel(spec);
            let removed = CancellationToken::new();
            let runner = JobRunner {
                name: name.clone(),
                ctx: self.ctx.clone(),
                base: self.base.clone(),
                tracker: self.tracker.clone(),
                shutdown: self.shutdown.clone(),
                view: self.view.clone(),
                loops: HashMap::new(),
            };
            self.tracker.spawn(
                runner
                    .run(rx, removed.clone())
                    .instrument(info_span!("job", job = %name)),
            );
            self.jobs.insert(name, JobHandle { spec: tx, removed });
        }
    }
}

struct Running {
    target: Target,
    health: Arc<Mutex<Health>>,
    stop: Stop,
}

struct JobRunner {
    name: String,
    ctx: Context,
    base: PathBuf,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    view: TargetsView,
    loops: HashMap<(String, Vec<Label>), Running>,
}

/// A job's discovery providers and the signal that one of them published.
struct Providers {
    receivers: Vec<watch::Receiver<Vec<TargetGroup>>>,
    changed: Arc<Notify>,
    token: CancellationToken,
}

impl Drop for Providers {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

impl JobRunner {
    async fn run(mut self, mut spec_rx: watch::Receiver<Arc<JobSpec>>, removed: CancellationToken) {
        let mut spec = spec_rx.borrow_and_update().clone();
        let mut providers = self.providers(&spec);
        let mut job = self.job(&spec);
        loop {
            self.sync(&spec, job.as_ref(), &providers);
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                _ = removed.cancelled() => return self.remove_all(),
                r = spec_rx.changed() => {
                    if r.is_err() {
                        // The manager dropped the job (removed with its handle).
                        return self.remove_all();
                    }
                    let new = spec_rx.borrow_and_update().clone();
                    let (old_sc, new_sc) = (spec.sc(), new.sc());
                    if old_sc.file_sd_configs != new_sc.file_sd_configs
                        || old_sc.http_sd_configs != new_sc.http_sd_configs
                        || old_sc.dns_sd_configs != new_sc.dns_sd_configs
                        || old_sc.kubernetes_sd_configs != new_sc.kubernetes_sd_configs
                    {
                        providers = self.providers(&new);
                    }
                    job = self.job(&new);
                    spec = new;
                }
                _ = providers.changed.notified() => {}
            }
        }
    }

    /// The job is gone: every loop writes its stale markers and ends.
    fn remove_all(&mut self) {
        for r in self.loops.values() {
            r.stop.removed.cancel();
        }
        self.loops.clear();
        self.set_target_gauges(0, 0, 0);
    }

    /// The job's shared settings, or `None` (logged) when its HTTP client cannot be built.
    fn job(&self, spec: &JobSpec) -> Option<Arc<Job>> {
        let sc = spec.sc();
        let mut http = sc.http_client();
        http.resolve(&sc.base(&self.base));
        let client = match HttpClient::new(
            &http,
            concat!("uplink-agent/", env!("CARGO_PKG_VERSION")),
        ) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "Cannot build the job's HTTP client; its targets are not scraped.");
                return None;
            }
        };
        Some(Arc::new(Job {
            accept: accept_header(&spec.cfg, sc),
            name: sc.job_name.as_str().into(),
            honor_labels: sc.honor_labels,
            honor_timestamps: sc.honor_timestamps,
            track_timestamps_staleness: sc.track_timestamps_staleness,
            limits: spec.cfg.limits(sc),
            over_target_limit: Default::default(),
            metric_relabel: sc.metric_relabel_configs.clone(),
            client,
            // An external label whose value expanded to nothing is absent, as in Prometheus.
            external_labels: spec
                .cfg
                .global
                .external_labels
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| Label::new(k.clone(), v.clone()))
                .collect(),
            compatibility: spec.cfg.compatibility(),
            fallback: sc.fallback_scrape_protocol,
            validation: spec.cfg.validation(sc),
            extra_metrics: spec.cfg.extra_scrape_metrics(sc),
            histograms: super::protobuf::Histograms {
                native: spec.cfg.native_histograms(sc),
                classic: spec.cfg.always_scrape_classic_histograms(sc),
            },
            nhcb: spec.cfg.convert_classic_histograms_to_nhcb(sc),
            histogram_limits: super::resolution::Limits::new(
                sc.native_histogram_bucket_limit,
                sc.native_histogram_min_bucket_factor,
            ),
            failure_log: spec.cfg.scrape_failure_log_file(sc).and_then(|f| {
                // The job's own file resolves against the job's file; the global one against
                // the main file's directory.
                let base = match sc.scrape_failure_log_file.as_deref().filter(|f| !f.is_empty()) {
                    Some(_) => sc.base(&self.base),
                    None => self.base.clone(),
                };
                let path = base.join(f);
                super::FailureLog::open(&path)
                    .map_err(|error| {
                        error!(%error, path = %path.display(), "Cannot open the scrape failure log; failures are not logged.");
                    })
                    .ok()
                    .map(Arc::new)
            }),
        }))
    }

    fn providers(&self, spec: &JobSpec) -> Providers {
        let token = self.shutdown.child_token();
        let changed = Arc::new(Notify::new());
        let receivers = crate::discovery::spawn(
            spec.sc(),
            &spec.sc().base(&self.base),
            &self.ctx.metrics,
            &self.tracker,
            &token,
        );
        for rx in &receivers {
            let mut rx = rx.clone();
            let changed = changed.clone();
            let token = token.clone();
            self.tracker.spawn(async move {
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        r = rx.changed() => {
                            if r.is_err() {
                                return;
                            }
                            changed.notify_one();
                        }
                    }
                }
            });
        }
        Providers {
            receivers,
            changed,
            token,
        }
    }

    /// Brings the loops in line with the targets of every group (see the module docs).
    fn sync(&mut self, spec: &JobSpec, job: Option<&Arc<Job>>, providers: &Providers) {
        let sc = spec.sc();
        let mut groups = target::static_groups(sc);
        for rx in &providers.receivers {
            groups.extend(rx.borrow().iter().cloned());
        }
        let mut next: HashMap<(String, Vec<Label>), Target> = HashMap::new();
        let mut dropped = Vec::new();
        let mut invalid = 0;
        let mut dropped_total = 0;
        if let Some(job) = job {
            for p in target::from_groups(&spec.cfg, sc, job, &groups) {
                match p {
                    Populated::Active(t) => {
                        next.entry(t.key()).or_insert(t);
                    }
                    Populated::Dropped(labels) => dropped.push(Arc::new(labels)),
                    Populated::Invalid(labels, e) => {
                        invalid += 1;
                        warn!(error = %e, target = ?labels.get("__address__"), "Skipping invalid target.");
                    }
                }
            }
        }
        if let Some(job) = job {
            let limit = job.limits.target_limit;
            let over = limit > 0 && next.len() as u64 > limit;
            if over
                != job
                    .over_target_limit
                    .swap(over, std::sync::atomic::Ordering::Relaxed)
            {
                if over {
                    error!(
                        targets = next.len(),
                        limit,
                        "target_limit exceeded: every target of the job fails until fewer are discovered."
                    );
                } else {
                    info!(targets = next.len(), limit, "Back under target_limit.");
                }
            }
            dropped_total = dropped.len();
            let keep = job.limits.keep_dropped_targets;
            if keep > 0 {
                dropped.truncate(usize::try_from(keep).unwrap_or(usize::MAX));
            }
        }
        self.loops.retain(|key, run| match next.get(key) {
            None => {
                run.stop.removed.cancel();
                false
            }
            Some(t) if !same_settings(t, &run.target) => {
                run.stop.now.cancel();
                false
            }
            Some(_) => true,
        });
        for (key, t) in next {
            if self.loops.contains_key(&key) {
                continue;
            }
            let stop = Stop {
                now: self.shutdown.child_token(),
                removed: CancellationToken::new(),
            };
            let health = Arc::new(Mutex::new(Health::default()));
            // The job is on the enclosing job span already.
            let span = info_span!("scrape", url = %t.url);
            self.tracker.spawn(
                run_target(t.clone(), self.ctx.clone(), health.clone(), stop.clone())
                    .instrument(span),
            );
            self.loops.insert(
                key,
                Running {
                    target: t,
                    health,
                    stop,
                },
            );
        }
        self.set_target_gauges(self.loops.len(), dropped_total, invalid);
        if let Ok(mut v) = self.view.lock() {
            let mut active: Vec<(Target, Arc<Mutex<Health>>)> = self
                .loops
                .values()
                .map(|r| (r.target.clone(), r.health.clone()))
                .collect();
            active.sort_by(|a, b| a.0.url.cmp(&b.0.url));
            v.insert(self.name.clone(), JobView { active, dropped });
        }
    }

    fn set_target_gauges(&self, active: usize, dropped: usize, invalid: usize) {
        for (state, n) in [
            ("active", active),
            ("dropped", dropped),
            ("invalid", invalid),
        ] {
            self.ctx
                .metrics
                .targets
                .get_or_create(&vec![
                    ("job".to_owned(), self.name.clone()),
                    ("state".to_owned(), state.to_owned()),
                ])
                .set(n as i64);
        }
    }
}

/// Whether a running loop can keep scraping `new` (same key assumed).
fn same_settings(new: &Target, old: &Target) -> bool {
    Arc::ptr_eq(&new.job, &old.job) && new.interval == old.interval && new.timeout == old.timeout
}

/// The job's `Accept` header from its effective `scrape_protocols` and escaping scheme (see
/// [`super::negotiate`]).
fn accept_header(cfg: &Config, sc: &ScrapeConfig) -> String {
    let escaping = (cfg.compatibility() == Compatibility::Prometheus3).then(|| cfg.escaping(sc));
    super::negotiate::accept_header(
        cfg.scrape_protocols(sc).as_deref(),
        cfg.native_histograms(sc),
        escaping,
    )
}
