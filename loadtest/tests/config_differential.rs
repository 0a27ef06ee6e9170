//! Configuration parity with Prometheus 3.5, file by file: what loads, and what the loaded
//! configuration is.
//!
//! The corpus is `tests/fixtures/config-corpus/corpus/*.yml` (our own cases, one rule each,
//! with the helper files beside them; `/CORPUS_ROOT` in them is replaced by the copy's
//! directory), plus the example configurations of the Prometheus 3.5 package the peers come
//! from (`usr/share/doc/prometheus/examples/*.yml` beside its `usr/bin/promtool`), read where
//! they are installed. The schema blocks of the package's `configuration.md` are templates
//! (`<duration>`, `[ ... ]`), not files, so they are not used.
//!
//! 1. Verdicts: `promtool check config` 3.5 and `uplink-agent --check-config` must both accept
//!    or both refuse each file, except for the deliberate differences of [`DELIBERATE`], each
//!    of which must occur as listed (so the list cannot rot). Every refusal of Uplink must name
//!    `file:line:column` and the field.
//! 2. Effective configuration: one Prometheus 3.5 agent (`--agent --web.enable-lifecycle`) and
//!    one `uplink-agent` (its `uplink:` section in a file of its own, a gateway that is never
//!    there) run on one work file; each file Uplink accepts is copied over it and both are
//!    reloaded (`POST /-/reload`). Prometheus must load it unless the list says it refuses it;
//!    when both loaded it, `global`, `scrape_config_files` and `scrape_configs` of
//!    `GET /api/v1/status/config` must be equal as parsed YAML (a readable diff otherwise).
//!
//! The environment variables the external-label cases expand are set on every child process.
//! The peers are required: without them the test fails, naming `deploy/dev/peers.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_yaml::Value;
use uplink_loadtest::harness::{self, Bins, Peer, Proc};

/// Why a file may load differently in Uplink and in Prometheus 3.5 (docs/configuration.md,
/// "Prometheus 3 compatibility of the configuration").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    /// (a) A discovery mechanism Uplink does not implement: refused, naming it, its job and
    /// the mechanisms Uplink has.
    Unimplemented,
    /// (b) A key Prometheus added after 3.5 (up to 3.14), which Uplink takes.
    After35,
    /// (c) A job setting only `metric_name_validation_scheme: legacy`: Prometheus ≥ 3.7 infers
    /// `underscores` escaping; 3.5 refuses the job.
    LegacyEscaping,
    /// (d) A check `promtool` makes but the 3.5 agent does not make when it loads the file
    /// (missing TLS and credential files, the relabeling dry run of static targets): Uplink
    /// loads what the agent loads.
    PromtoolOnly,
    /// (e) `refresh_interval: 0s` on file, DNS or HTTP discovery: Prometheus loads it and then
    /// crashes; Uplink refuses it.
    ZeroRefresh,
    /// (f) Refused by Uplink although Prometheus 3.5 loads it, for the reason given.
    Stricter(&'static str),
    /// (f) Loaded by Uplink although the 3.5 agent refuses it, for the reason given.
    Laxer(&'static str),
}

impl Why {
    /// (promtool accepts, Uplink accepts, the Prometheus agent accepts: `None` when it is not
    /// tried, because Uplink refuses the file or Prometheus would crash).
    fn expected(self) -> (bool, bool, Option<bool>) {
        match self {
            Why::Unimplemented | Why::Stricter(_) | Why::ZeroRefresh => (true, false, None),
            Why::After35 | Why::LegacyEscaping => (false, true, Some(false)),
            Why::PromtoolOnly => (false, true, Some(true)),
            Why::Laxer(_) => (true, true, Some(false)),
        }
    }

    fn category(self) -> &'static str {
        match self {
            Why::Unimplemented => "(a) unimplemented discovery",
            Why::After35 => "(b) keys after 3.5",
            Why::LegacyEscaping => "(c) legacy-only job escaping",
            Why::PromtoolOnly => "(d) promtool-only checks",
            Why::ZeroRefresh => "(e) zero SD refresh interval",
            Why::Stricter(_) | Why::Laxer(_) => "(f) other",
        }
    }
}

const SCHEME_STRICTER: &str = "a scheme other than http or https fails every scrape, so it is \
    refused when loading";
const GLOBAL_SCHEME_STRICTER: &str = "an invalid global name scheme is refused even before a \
    job uses it (the agent's own job and every job added later would)";
const AGENT_SECTIONS_LAXER: &str = "the agent reads the server's prometheus.yml unchanged: \
    rule_files, alerting and remote_read are ignored with a warning";

/// The cases whose verdicts differ on purpose (corpus file stems; `examples/` for the
/// package's examples).
const DELIBERATE: &[(&str, Why)] = &[
    ("147_sd_docker", Why::Unimplemented),
    ("148_sd_ec2", Why::Unimplemented),
    ("examples/prometheus-digitalocean", Why::Unimplemented),
    ("examples/prometheus-docker", Why::Unimplemented),
    ("examples/prometheus-dockerswarm", Why::Unimplemented),
    ("examples/prometheus-eureka", Why::Unimplemented),
    ("examples/prometheus-hetzner", Why::Unimplemented),
    ("examples/prometheus-ionos", Why::Unimplemented),
    ("examples/prometheus-linode", Why::Unimplemented),
    ("examples/prometheus-marathon", Why::Unimplemented),
    ("examples/prometheus-ovhcloud", Why::Unimplemented),
    ("examples/prometheus-puppetdb", Why::Unimplemented),
    ("examples/prometheus-scaleway", Why::Unimplemented),
    ("examples/prometheus-uyuni", Why::Unimplemented),
    ("examples/prometheus-vultr", Why::Unimplemented),
    ("300_post35_scrape_native_histograms", Why::After35),
    ("301_post35_extra_scrape_metrics", Why::After35),
    ("302_post35_k8s_attach_metadata_namespace", Why::After35),
    ("303_post35_storage_tsdb_retention", Why::After35),
    (
        "045_jobscheme_emptyblock_v-legacy_e-unset",
        Why::LegacyEscaping,
    ),
    ("045_jobscheme_gutf8_v-legacy_e-unset", Why::LegacyEscaping),
    ("045_jobscheme_none_v-legacy_e-unset", Why::LegacyEscaping),
    ("050_job_scheme_matrix_default_global", Why::LegacyEscaping),
    ("151_scrape_config_files_only", Why::LegacyEscaping),
    ("153_scrape_config_files_doublestar", Why::LegacyEscaping),
    ("077_promtool_relabel_drops_address", Why::PromtoolOnly),
    ("096_http_tls_missing_files", Why::PromtoolOnly),
    ("108_http_missing_secret_files", Why::PromtoolOnly),
    ("examples/prometheus-kubernetes", Why::PromtoolOnly),
    ("116_sd_file_refresh_zero", Why::ZeroRefresh),
    ("125_sd_dns_refresh_zero", Why::ZeroRefresh),
    ("126_sd_http_refresh_zero", Why::ZeroRefresh),
    (
        "053_bad_validation_scheme_global",
        Why::Stricter(GLOBAL_SCHEME_STRICTER),
    ),
    (
        "055_bad_escaping_scheme_global",
        Why::Stricter(GLOBAL_SCHEME_STRICTER),
    ),
    ("105_http_scheme_bad", Why::Stricter(SCHEME_STRICTER)),
    ("186_rule_files_in_agent", Why::Laxer(AGENT_SECTIONS_LAXER)),
    ("187_alerting_in_agent", Why::Laxer(AGENT_SECTIONS_LAXER)),
    ("examples/prometheus", Why::Laxer(AGENT_SECTIONS_LAXER)),
];

/// What the external-label cases expand (`UPLINK_EL_UNSET` stays unset).
const ENV: [(&str, &str); 2] = [("UPLINK_EL_VAR", "fromenv"), ("UPLINK_EL_OTHER", "other")];

/// The keys of the effective configuration compared.
const COMPARED: [&str; 3] = ["global", "scrape_config_files", "scrape_configs"];

/// One file: its name in reports and where its copy is.
struct Case {
    name: String,
    path: PathBuf,
}

fn env(cmd: &mut Command) -> &mut Command {
    cmd.envs(ENV).env_remove("UPLINK_EL_UNSET")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Replaces `/CORPUS_ROOT` by `root` in every file under `dir`.
fn place(dir: &Path, root: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            place(&path, root);
        } else if let Ok(text) = std::fs::read_to_string(&path)
            && text.contains("/CORPUS_ROOT")
        {
            let text = text.replace("/CORPUS_ROOT", &root.to_string_lossy());
            std::fs::write(&path, text).unwrap();
        }
    }
}

/// The corpus copied under `root` (`root/corpus`, `root/files`, `root/tmp` for logs), then
/// the package's examples copied into `root/corpus/examples/`.
fn cases(root: &Path, promtool: &Path) -> Vec<Case> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config-corpus");
    copy_dir(&fixtures, root);
    place(root, root);
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    let mut cases: Vec<Case> = std::fs::read_dir(root.join("corpus"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .map(|path| Case {
            name: path.file_stem().unwrap().to_string_lossy().into_owned(),
            path,
        })
        .collect();
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    let examples = promtool
        .parent()
        .and_then(Path::parent)
        .map(|usr| usr.join("share/doc/prometheus/examples"))
        .filter(|d| d.is_dir())
        .unwrap_or_else(|| {
            panic!(
                "the Prometheus package's examples are not beside {}: run deploy/dev/peers.sh",
                promtool.display()
            )
        });
    let copies = root.join("corpus/examples");
    std::fs::create_dir_all(&copies).unwrap();
    let mut found: Vec<PathBuf> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no examples in {}", examples.display());
    for example in found {
        let copy = copies.join(example.file_name().unwrap());
        std::fs::copy(&example, &copy).unwrap();
        cases.push(Case {
            name: format!(
                "examples/{}",
                example.file_stem().unwrap().to_string_lossy()
            ),
            path: copy,
        });
    }
    cases
}

/// Whether `cmd` accepted the file (exit 0) or refused it (`refused` exit code), with its
/// output; any other outcome is a failure of the checker itself.
fn verdict(cmd: &mut Command, refused: i32, what: &str) -> (bool, String) {
    let out = env(cmd).output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => (true, text),
        Some(c) if c == refused => (false, text),
        other => panic!("{what} ended with {other:?}:\n{text}"),
    }
}

/// The last line saying why, for reports.
fn reason(output: &str) -> &str {
    output
        .lines()
        .rev()
        .find(|l| l.contains("FAILED") || l.contains("invalid configuration"))
        .or_else(|| output.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or_default()
        .trim()
}

/// Whether an `--check-config` refusal reads `FILE:LINE:COLUMN: FIELD: MESSAGE`.
fn located(output: &str) -> bool {
    let Some(rest) = output.split("invalid configuration: ").nth(1) else {
        return false;
    };
    let mut parts = rest.splitn(3, ": ");
    let (Some(place), Some(field), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let mut numbers = place.rsplitn(3, ':');
    let column = numbers.next().unwrap_or_default();
    let line = numbers.next().unwrap_or_default();
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    number(column) && number(line) && numbers.next().is_some() && !field.contains(' ')
}

/// Every difference between two YAML values, as `path: left | right` lines.
fn diff(path: &str, left: Option<&Value>, right: Option<&Value>, out: &mut Vec<String>) {
    match (left, right) {
        (Some(Value::Mapping(a)), Some(Value::Mapping(b))) => {
            let mut keys: Vec<&Value> = a.keys().chain(b.keys()).collect();
            keys.dedup();
            let mut seen = Vec::new();
            for k in keys {
                if seen.contains(&k) {
                    continue;
                }
                seen.push(k);
                let name = k.as_str().map_or_else(|| format!("{k:?}"), str::to_owned);
                diff(&format!("{path}.{name}"), a.get(k), b.get(k), out);
            }
        }
        (Some(Value::Sequence(a)), Some(Value::Sequence(b))) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), Some(x), Some(y), out);
            }
        }
        (a, b) if a != b => {
            let show = |v: Option<&Value>| {
                v.map_or_else(
                    || "(absent)".to_owned(),
                    |v| {
                        serde_yaml::to_string(v)
                            .unwrap_or_default()
                            .trim_end()
                            .replace('\n', "\n      ")
                    },
                )
            };
            out.push(format!(
                "  {path}:\n    uplink:     {}\n    prometheus: {}",
                show(a),
                show(b)
            ));
        }
        _ => {}
    }
}

/// A running process and its web address.
struct Peer3 {
    name: &'static str,
    proc: Proc,
    web: SocketAddr,
}

impl Peer3 {
    /// `POST /-/reload`: whether the configuration was loaded, and the answer.
    async fn reload(&mut self, http: &reqwest::Client) -> (bool, String) {
        let url = format!("http://{}/-/reload", self.web);
        let resp = http
            .post(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {url}: {e}", self.name));
        let ok = resp.status().is_success();
        let body = resp.text().await.unwrap_or_default();
        assert!(
            harness::block(|| self.proc.is_running()),
            "{} exited after a reload: {body}",
            self.name
        );
        (ok, body)
    }

    /// The effective configuration (`data.yaml` of `/api/v1/status/config`), parsed.
    async fn config(&self, http: &reqwest::Client) -> Value {
        let url = format!("http://{}/api/v1/status/config", self.web);
        let body: serde_json::Value = http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|e| panic!("{}: {url}: {e}", self.name))
            .bytes()
            .await
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| panic!("{}: {url}: {e}", self.name));
        assert_eq!(body["status"], "success", "{}: {body}", self.name);
        let yaml = body["data"]["yaml"].as_str().unwrap_or_default();
        serde_yaml::from_str(yaml).unwrap_or_else(|e| {
            panic!(
                "{}: the configuration is not YAML ({e}):\n{yaml}",
                self.name
            )
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_loads_and_shows_configurations_as_prometheus_3_5_does() {
    let promtool = Peer::Promtool.require().expect("promtool 3.5");
    let prometheus = Peer::Prometheus.require().expect("Prometheus 3.5");
    let bins = Bins::locate().expect("the Uplink binaries");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("c");
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let cases = harness::block(|| cases(&root, &promtool));
    harness::write_certs(&run, &["agent".to_owned()]).unwrap();
    let uplink_file = run.join("uplink.yml");
    let gateway = harness::free_addr().unwrap();
    std::fs::write(
        &uplink_file,
        format!(
            "gateways: ['{gateway}']\nserver_name: localhost\n\
             tls: {{cert_file: agent.crt, key_file: agent.key, ca_file: ca.crt}}\n\
             queue: {{directory: queue, sync: interval}}\nself_scrape: {{enabled: false}}\n"
        ),
    )
    .unwrap();

    let mut failures = Vec::new();
    let deliberate: BTreeMap<&str, Why> = DELIBERATE.iter().copied().collect();
    assert_eq!(deliberate.len(), DELIBERATE.len(), "a case listed twice");
    for name in deliberate.keys() {
        if !cases.iter().any(|c| c.name == *name) {
            failures.push(format!(
                "{name}: listed as a deliberate difference, not in the corpus"
            ));
        }
    }

    // 1. Verdicts.
    let mut accepted = Vec::new();
    let mut agree = 0;
    let mut by_category: BTreeMap<&str, usize> = BTreeMap::new();
    for case in &cases {
        let (p, p_out) = harness::block(|| {
            verdict(
                Command::new(&promtool)
                    .arg("check")
                    .arg("config")
                    .arg(&case.path),
                1,
                &format!("promtool on {}", case.name),
            )
        });
        let (u, u_out) = harness::block(|| {
            verdict(
                Command::new(&bins.agent)
                    .arg("--check-config")
                    .arg(format!("--config.file={}", case.path.display()))
                    .arg(format!("--uplink.config.file={}", uplink_file.display())),
                64,
                &format!("uplink-agent --check-config on {}", case.name),
            )
        });
        let shown = |ok: bool| if ok { "accepts" } else { "refuses" };
        match deliberate.get(case.name.as_str()) {
            None if p == u => agree += 1,
            None => failures.push(format!(
                "{}: promtool {} it, uplink-agent {} it (not a listed deliberate difference)\n  \
                 promtool: {}\n  uplink:   {}",
                case.name,
                shown(p),
                shown(u),
                reason(&p_out),
                reason(&u_out)
            )),
            Some(why) => {
                let (want_p, want_u, _) = why.expected();
                if (p, u) == (want_p, want_u) {
                    *by_category.entry(why.category()).or_default() += 1;
                } else {
                    failures.push(format!(
                        "{}: listed as {why:?} (promtool {}, uplink-agent {}), but promtool {} \
                         it and uplink-agent {} it\n  promtool: {}\n  uplink:   {}",
                        case.name,
                        shown(want_p),
                        shown(want_u),
                        shown(p),
                        shown(u),
                        reason(&p_out),
                        reason(&u_out)
                    ));
                }
            }
        }
        if u {
            accepted.push(case);
        } else if !located(&u_out) {
            failures.push(format!(
                "{}: uplink-agent's error does not name file:line:column and the field:\n  {}",
                case.name,
                reason(&u_out)
            ));
        }
    }

    // 2. The effective configuration of every file Uplink loads.
    let work = root.join("corpus/prometheus.yml");
    std::fs::write(&work, "scrape_configs: []\n").unwrap();
    let mut prom = harness::block(|| {
        let web = harness::free_addr().unwrap();
        let proc = Proc::spawn(
            "prometheus-agent",
            env(Command::new(&prometheus)
                .arg("--agent")
                .arg("--web.enable-lifecycle")
                .arg(format!("--config.file={}", work.display()))
                .arg(format!(
                    "--storage.agent.path={}",
                    run.join("prometheus-data").display()
                ))
                .arg(format!("--web.listen-address={web}"))),
            &run.join("prometheus-agent.log"),
        )
        .unwrap();
        harness::wait_ready(web, Duration::from_secs(60)).unwrap();
        Peer3 {
            name: "prometheus-agent",
            proc,
            web,
        }
    });
    let mut uplink = harness::block(|| {
        let web = harness::free_addr().unwrap();
        let proc = Proc::spawn(
            "uplink-agent",
            env(Command::new(&bins.agent)
                .arg(format!("--config.file={}", work.display()))
                .arg(format!("--uplink.config.file={}", uplink_file.display()))
                .arg(format!("--web.listen-address={web}"))),
            &run.join("uplink-agent.log"),
        )
        .unwrap();
        harness::wait_ready(web, Duration::from_secs(30)).unwrap();
        Peer3 {
            name: "uplink-agent",
            proc,
            web,
        }
    });
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut compared = 0;
    for case in accepted {
        std::fs::copy(&case.path, &work).unwrap();
        let (u_ok, u_body) = uplink.reload(&http).await;
        if !u_ok {
            failures.push(format!(
                "{}: --check-config accepts it, the reload does not: {}",
                case.name,
                u_body.trim()
            ));
            continue;
        }
        let want = match deliberate.get(case.name.as_str()) {
            Some(why) => why.expected().2,
            None => Some(true),
        };
        let Some(want) = want else { continue };
        let (p_ok, p_body) = prom.reload(&http).await;
        if p_ok != want {
            failures.push(format!(
                "{}: the Prometheus agent {} it ({}), expected it to {}",
                case.name,
                if p_ok { "loads" } else { "refuses" },
                p_body.trim(),
                if want { "load it" } else { "refuse it" }
            ));
        }
        if !p_ok {
            continue;
        }
        let (mut mine, theirs) = (uplink.config(&http).await, prom.config(&http).await);
        let uplink_section = mine.as_mapping_mut().and_then(|m| m.remove("uplink"));
        assert!(uplink_section.is_some(), "{}: no uplink section", case.name);
        let mut lines = Vec::new();
        for key in COMPARED {
            diff(key, mine.get(key), theirs.get(key), &mut lines);
        }
        compared += 1;
        if !lines.is_empty() {
            failures.push(format!(
                "{}: the effective configuration differs\n{}",
                case.name,
                lines.join("\n")
            ));
        }
    }

    drop((prom, uplink));
    let listed: usize = by_category.values().sum();
    eprintln!(
        "{} files: {agree} with the same verdict, {listed} deliberate differences {by_category:?}; \
         {compared} effective configurations compared",
        cases.len()
    );
    if !failures.is_empty() {
        let kept = dir.keep();
        panic!(
            "{} of {} files differ from Prometheus 3.5 (copies and logs kept in {}):\n\n{}",
            failures.len(),
            cases.len(),
            kept.display(),
            failures.join("\n\n")
        );
    }
}
