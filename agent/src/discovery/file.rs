//! `file_sd_configs`: targets from JSON or YAML files.
//!
//! `run(cfg, base, out, failures, shutdown)` publishes the groups of every file matched by
//! `cfg.files`, in pattern order, each pattern's matches sorted by name (a file matched by two
//! patterns counts once). As in Prometheus:
//!
//! - Relative paths are relative to `base`, the configuration file's directory; paths are
//!   cleaned lexically (`a/../b` is `b`) as Go's `filepath.Join` and `filepath.Glob` do.
//! - Globs (`*`, `?`, `[...]`, `[^...]`, `\` escapes; Go's `filepath.Match` syntax) are allowed
//!   in the last path element only ([`FileSdConfig::validate`] rejects them elsewhere, where
//!   Prometheus would expand them: a deliberate restriction). A pattern without glob
//!   characters names one file, which may be absent.
//! - A file holds a list of `{targets: [..], labels: {..}}` groups: `.json` as JSON, `.yml` and
//!   `.yaml` as YAML (extension case ignored); unknown keys are errors, an empty YAML document
//!   is an empty list. Each target becomes `{__address__: target}`; each group gets the label
//!   `__meta_filepath` (the file's absolute path) and the source `{path}:{index}`.
//! - Label names must match `[a-zA-Z_][a-zA-Z0-9_]*`; targets must be non-empty and contain no
//!   `/` (stricter than Prometheus, which leaves bad addresses to the scrape manager).
//! - A file that cannot be read or parsed keeps its last good groups; the error is logged
//!   (with line:column for parse errors) and counted in `failures`, once per attempt. A file
//!   that no longer matches (deleted, renamed) loses its groups.
//!
//! Watching: Prometheus uses inotify (fsnotify); the agent runs on modems, so instead of a
//! watcher crate it polls, which is cheap and also sees changes inotify misses (NFS, a
//! directory created later). Every second it `stat`s each pattern's directory (its mtime
//! changes when entries are created, removed or renamed) and each matched file (mtime, size,
//! inode: in-place edits, atomic renames, Kubernetes ConfigMap symlink swaps). Any difference
//! from the last refresh triggers a full refresh: glob every pattern again and re-read every
//! file, as Prometheus does on any event. A full refresh also runs at start and every
//! `refresh_interval`. The file system work runs on the blocking thread pool.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uplink_shared::duration::PromDuration;

use super::{Publisher, SpecError, TargetGroup, into_groups, parse_json, parse_yaml, publish};

/// The group label naming the file a group came from.
pub const FILEPATH_LABEL: &str = "__meta_filepath";

/// How often matched files and their directories are checked for changes.
const POLL: Duration = Duration::from_secs(1);

/// Extensions Prometheus accepts in `files` (its `patFileSDName`).
const EXTENSIONS: [&str; 6] = [".json", ".yml", ".yaml", ".JSON", ".YML", ".YAML"];

/// One `file_sd_configs` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSdConfig {
    /// Paths or globs (in the last path element) of `.json`, `.yml` or `.yaml` files.
    pub files: Vec<String>,
    /// Re-read every file this often, besides watching them (Prometheus default: 5m).
    #[serde(default = "default_refresh")]
    pub refresh_interval: PromDuration,
}

fn default_refresh() -> PromDuration {
    PromDuration(std::time::Duration::from_secs(300))
}

/// Why a file yielded no groups.
#[derive(Debug, thiserror::Error)]
pub enum FileSdError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Displays as `path:line:column: field: message`.
    #[error("{}:{source}", path.display())]
    Parse { path: PathBuf, source: SpecError },
    #[error("{}: not a .json, .yml or .yaml file", path.display())]
    Extension { path: PathBuf },
}

impl FileSdConfig {
    /// Checks what Prometheus checks at load time (at least one path, each ending in a known
    /// extension with any `*` in the last element), plus: glob characters only in the last
    /// element, well-formed brackets, and a positive `refresh_interval`.
    pub fn validate(&self) -> Result<(), String> {
        if self.files.is_empty() {
            return Err("file service discovery config must contain at least one path name".into());
        }
        if self.refresh_interval.0.is_zero() {
            return Err(super::ZERO_REFRESH.into());
        }
        self.files.iter().try_for_each(|f| check_path(f))
    }
}

fn check_path(name: &str) -> Result<(), String> {
    let invalid = || format!("path name {name:?} is not valid for file discovery");
    if !EXTENSIONS.iter().any(|e| name.ends_with(e)) {
        return Err(invalid());
    }
    if let Some(star) = name.find('*')
        && name[star..].contains('/')
    {
        return Err(invalid());
    }
    let (dir, file) = name.rsplit_once('/').unwrap_or(("", name));
    if dir.contains(['*', '?', '[']) {
        return Err(format!(
            "path name {name:?}: glob characters are only supported in the last path element"
        ));
    }
    Glob::compile(file)
        .map(|_| ())
        .map_err(|e| format!("path name {name:?}: {e}"))
}

/// Runs until `shutdown` is cancelled; see the module docs.
pub async fn run(
    cfg: FileSdConfig,
    base: PathBuf,
    out: Publisher,
    failures: Counter,
    shutdown: CancellationToken,
) {
    let watcher = Arc::new(Mutex::new(Watcher::new(&cfg, &base, failures)));
    let mut refresh = tokio::time::interval(cfg.refresh_interval.0.max(Duration::from_millis(1)));
    refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        let full = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = refresh.tick() => true,
            _ = poll.tick() => false,
        };
        let w = watcher.clone();
        let step = tokio::task::spawn_blocking(move || {
            let mut w = w.lock().unwrap_or_else(PoisonError::into_inner);
            (full || w.changed()).then(|| w.refresh())
        });
        let groups = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = step => r,
        };
        match groups {
            Ok(Some(groups)) => {
                publish(&out, groups, first);
                first = false;
            }
            Ok(None) => {}
            Err(error) => warn!(%error, "A file_sd refresh did not complete."),
        }
    }
}

/// Identifies a version of a file or directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// The stamp of `path` (symlinks followed), `None` when it cannot be read.
fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode,
    })
}

/// One entry of `files`, split into a literal directory and a file name pattern.
#[derive(Debug)]
struct PathPattern {
    dir: PathBuf,
    name: NamePattern,
}

#[derive(Debug)]
enum NamePattern {
    Literal(String),
    Glob(Glob),
}

/// The files a path or glob (wildcards in its last element only) matches now, relative to
/// `base`, sorted, directories excluded; as Go's `filepath.Glob` (a literal path counts when it
/// exists).
pub fn expand_pattern(pattern: &str, base: &Path) -> Result<Vec<PathBuf>, String> {
    Ok(PathPattern::new(pattern, base)?.expand())
}

impl PathPattern {
    fn new(pattern: &str, base: &Path) -> Result<PathPattern, String> {
        let path = resolve(Path::new(pattern), base);
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Err(format!("{pattern:?} does not name a file"));
        };
        let name = if name.contains(['*', '?', '[', '\\']) {
            NamePattern::Glob(Glob::compile(name)?)
        } else {
            NamePattern::Literal(name.to_owned())
        };
        Ok(PathPattern {
            dir: dir.to_owned(),
            name,
        })
    }

    /// The files this pattern matches now, sorted by name (directories excluded).
    fn expand(&self) -> Vec<PathBuf> {
        match &self.name {
            NamePattern::Literal(n) => {
                let p = self.dir.join(n);
                // Like Go's Glob, a literal path counts if it exists at all (a broken symlink
                // then fails to read, and is reported).
                let exists = std::fs::symlink_metadata(&p).is_ok() && !p.is_dir();
                if exists { vec![p] } else { Vec::new() }
            }
            NamePattern::Glob(g) => {
                let Ok(entries) = std::fs::read_dir(&self.dir) else {
                    return Vec::new();
                };
                let mut names: Vec<String> = entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| g.matches(n))
                    .collect();
                names.sort();
                names
                    .into_iter()
                    .map(|n| self.dir.join(n))
                    .filter(|p| !p.is_dir())
                    .collect()
            }
        }
    }
}

/// `path` made absolute against `base` (itself made absolute against the working directory)
/// and cleaned lexically, as Go's `filepath.Join` and `filepath.Glob` do.
fn resolve(path: &Path, base: &Path) -> PathBuf {
    let joined = base.join(path);
    let joined = std::path::absolute(&joined).unwrap_or(joined);
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else if !out.has_root() {
                    out.push(c);
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// The provider's state between refreshes.
struct Watcher {
    patterns: Vec<PathPattern>,
    /// Distinct pattern directories, watched for entries appearing or disappearing.
    dirs: Vec<PathBuf>,
    /// Files matched at the last refresh, in publishing order.
    files: Vec<PathBuf>,
    /// Last good groups per file.
    good: HashMap<PathBuf, Vec<TargetGroup>>,
    /// Directories and files as they were when the last refresh looked at them.
    stamps: Vec<(PathBuf, Option<Stamp>)>,
    failures: Counter,
}

impl Watcher {
    fn new(cfg: &FileSdConfig, base: &Path, failures: Counter) -> Watcher {
        let mut patterns = Vec::new();
        for f in &cfg.files {
            match PathPattern::new(f, base) {
                Ok(p) => patterns.push(p),
                Err(error) => warn!(pattern = f, %error, "Ignoring an invalid file_sd path."),
            }
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        for p in &patterns {
            if !dirs.contains(&p.dir) {
                dirs.push(p.dir.clone());
            }
        }
        Watcher {
            patterns,
            dirs,
            files: Vec::new(),
            good: HashMap::new(),
            stamps: Vec::new(),
            failures,
        }
    }

    /// Whether a directory or file differs from when the last refresh looked at it.
    fn changed(&self) -> bool {
        self.stamps.iter().any(|(p, s)| stamp(p) != *s)
    }

    /// Globs every pattern, reads every matched file, and returns the complete list.
    fn refresh(&mut self) -> Vec<TargetGroup> {
        // Stamps are taken before looking, so a change made while reading is seen next poll.
        let mut stamps: Vec<(PathBuf, Option<Stamp>)> =
            self.dirs.iter().map(|d| (d.clone(), stamp(d))).collect();
        let mut seen = HashSet::new();
        let files: Vec<PathBuf> = self
            .patterns
            .iter()
            .flat_map(PathPattern::expand)
            .filter(|f| seen.insert(f.clone()))
            .collect();
        let mut good = HashMap::with_capacity(files.len());
        for path in &files {
            stamps.push((path.clone(), stamp(path)));
            match read_groups(path) {
                Ok(groups) => {
                    good.insert(path.clone(), groups);
                }
                Err(error) => {
                    self.failures.inc();
                    warn!(%error, "Reading a file_sd file failed; keeping its last good targets.");
                    if let Some(old) = self.good.remove(path) {
                        good.insert(path.clone(), old);
                    }
                }
            }
        }
        for gone in self.good.keys().filter(|p| !good.contains_key(*p)) {
            debug!(path = %gone.display(), "file_sd file gone; dropping its targets.");
        }
        self.good = good;
        self.files = files;
        self.stamps = stamps;
        self.files
            .iter()
            .filter_map(|f| self.good.get(f))
            .flatten()
            .cloned()
            .collect()
    }
}

/// Reads one file's groups.
pub fn read_groups(path: &Path) -> Result<Vec<TargetGroup>, FileSdError> {
    let bytes = std::fs::read(path).map_err(|source| FileSdError::Read {
        path: path.into(),
        source,
    })?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let specs = match ext.as_deref() {
        Some("json") => parse_json(&bytes),
        Some("yml" | "yaml") => utf8(&bytes).and_then(parse_yaml),
        _ => return Err(FileSdError::Extension { path: path.into() }),
    }
    .map_err(|source| FileSdError::Parse {
        path: path.into(),
        source,
    })?;
    let name = path.to_string_lossy();
    Ok(into_groups(specs, &name, (FILEPATH_LABEL, &name)))
}

fn utf8(bytes: &[u8]) -> Result<&str, SpecError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let before = &bytes[..e.valid_up_to()];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
        SpecError {
            line,
            column,
            field: "(root)".into(),
            message: "invalid UTF-8".into(),
        }
    })
}

/// A file name pattern in Go's `filepath.Match` syntax.
#[derive(Debug, PartialEq)]
struct Glob(Vec<Token>);

#[derive(Debug, PartialEq)]
enum Token {
    Literal(char),
    /// `?`
    AnyChar,
    /// `*`
    AnySeq,
    /// `[...]` or `[^...]`: inclusive ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    fn matches(&self, c: char) -> bool {
        match self {
            Token::Literal(l) => *l == c,
            Token::AnyChar => true,
            Token::AnySeq => false,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
            }
        }
    }
}

impl Glob {
    fn compile(pattern: &str) -> Result<Glob, String> {
        let bad = || format!("syntax error in pattern {pattern:?}");
        let mut chars = pattern.chars().peekable();
        let mut tokens = Vec::new();
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '*' => Token::AnySeq,
                '?' => Token::AnyChar,
                '\\' => Token::Literal(chars.next().ok_or_else(bad)?),
                '[' => Self::class(&mut chars).ok_or_else(bad)?,
                c => Token::Literal(c),
            });
        }
        Ok(Glob(tokens))
    }

    /// Parses a class after its `[`, up to and including its `]`.
    fn class(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<Token> {
        let negated = chars.next_if_eq(&'^').is_some();
        let mut ranges = Vec::new();
        loop {
            if !ranges.is_empty() && chars.next_if_eq(&']').is_some() {
                return Some(Token::Class { negated, ranges });
            }
            let lo = Self::class_char(chars)?;
            let hi = match chars.next_if_eq(&'-') {
                Some(_) => Self::class_char(chars)?,
                None => lo,
            };
            ranges.push((lo, hi));
        }
    }

    fn class_char(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<char> {
        match chars.next()? {
            '-' | ']' => None,
            '\\' => chars.next(),
            c => Some(c),
        }
    }

    /// Whether `name` (one path element) matches; `*` backtracks.
    fn matches(&self, name: &str) -> bool {
        let tokens = &self.0;
        let chars: Vec<char> = name.chars().collect();
        let (mut t, mut c) = (0, 0);
        // Where the last `*` was, and how much of the name it has swallowed so far.
        let mut star: Option<(usize, usize)> = None;
        while c < chars.len() {
            match tokens.get(t) {
                Some(Token::AnySeq) => {
                    star = Some((t, c));
                    t += 1;
                    continue;
                }
                Some(tok) if tok.matches(chars[c]) => {
                    t += 1;
                    c += 1;
                    continue;
                }
                _ => {}
            }
            let Some((st, sc)) = star else {
                return false;
            };
            star = Some((st, sc + 1));
            t = st + 1;
            c = sc + 1;
        }
        tokens[t..].iter().all(|t| *t == Token::AnySeq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::watch;

    fn cfg(files: &[&str], refresh: Duration) -> FileSdConfig {
        FileSdConfig {
            files: files.iter().map(|s| s.to_string()).collect(),
            refresh_interval: PromDuration(refresh),
        }
    }

    struct Running {
        rx: watch::Receiver<Vec<TargetGroup>>,
        failures: Counter,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    impl Running {
        fn start(cfg: FileSdConfig, base: &Path) -> Running {
            let (tx, rx) = watch::channel(Vec::new());
            let failures = Counter::default();
            let stop = CancellationToken::new();
            let task = tokio::spawn(run(
                cfg,
                base.to_owned(),
                tx,
                failures.clone(),
                stop.clone(),
            ));
            Running {
                rx,
                failures,
                stop,
                task,
            }
        }

        async fn next(&mut self) -> Vec<TargetGroup> {
            tokio::time::timeout(Duration::from_secs(5), self.rx.changed())
                .await
                .expect("an update within 5s")
                .expect("provider alive");
            self.rx.borrow_and_update().clone()
        }

        async fn stop(self) {
            self.stop.cancel();
            tokio::time::timeout(Duration::from_secs(2), self.task)
                .await
                .expect("stops promptly")
                .expect("no panic");
        }
    }

    fn addresses(g: &TargetGroup) -> Vec<&str> {
        g.targets
            .iter()
            .map(|t| t["__address__"].as_str())
            .collect()
    }

    #[tokio::test]
    async fn reads_json_and_yaml_through_globs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path();
        std::fs::create_dir(base.join("t")).expect("mkdir");
        std::fs::write(
            base.join("t/a.json"),
            r#"[{"targets": ["10.0.0.1:9100", "10.0.0.2:9100"], "labels": {"env": "prod"}},
                {"targets": ["10.0.0.3:9100"]}]"#,
        )
        .expect("write");
        std::fs::write(
            base.join("t/b.yml"),
            "# hosts\n- targets: ['h1:80']\n  labels:\n    port: 80\n    __meta_filepath: x\n",
        )
        .expect("write");
        std::fs::write(base.join("t/c.json.bak"), "not matched").expect("write");
        std::fs::write(base.join("t/empty.yml"), "# nothing yet\n").expect("write");
        let mut r = Running::start(
            cfg(
                &["t/*.json", "t/[a-c].yml", "./t/empty.yml"],
                Duration::from_secs(300),
            ),
            base,
        );
        let groups = r.next().await;
        let abs = std::path::absolute(base).expect("absolute");
        let a = abs.join("t/a.json").display().to_string();
        let b = abs.join("t/b.yml").display().to_string();
        assert_eq!(groups.len(), 3, "{groups:#?}");
        assert_eq!(groups[0].source, format!("{a}:0"));
        assert_eq!(addresses(&groups[0]), ["10.0.0.1:9100", "10.0.0.2:9100"]);
        assert_eq!(
            groups[0].labels,
            labels(&[("env", "prod"), (FILEPATH_LABEL, &a)])
        );
        assert_eq!(groups[1].source, format!("{a}:1"));
        assert_eq!(addresses(&groups[1]), ["10.0.0.3:9100"]);
        assert_eq!(groups[1].labels, labels(&[(FILEPATH_LABEL, &a)]));
        assert_eq!(groups[2].source, format!("{b}:0"));
        assert_eq!(addresses(&groups[2]), ["h1:80"]);
        // YAML scalars are label values as written; the file path overrides a group's own.
        assert_eq!(
            groups[2].labels,
            labels(&[("port", "80"), (FILEPATH_LABEL, &b)])
        );
        assert_eq!(r.failures.get(), 0);
        r.stop().await;
    }

    fn labels(pairs: &[(&str, &str)]) -> super::super::LabelSet {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn follows_modification_creation_and_deletion() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path();
        let one = base.join("one.json");
        std::fs::write(&one, r#"[{"targets": ["a:1"]}]"#).expect("write");
        let mut r = Running::start(cfg(&["*.json"], Duration::from_secs(300)), base);
        assert_eq!(addresses(&r.next().await[0]), ["a:1"]);

        std::fs::write(&one, r#"[{"targets": ["a:1", "b:2"]}]"#).expect("write");
        let groups = r.next().await;
        assert_eq!(addresses(&groups[0]), ["a:1", "b:2"]);

        std::fs::write(base.join("two.json"), r#"[{"targets": ["c:3"]}]"#).expect("write");
        let groups = r.next().await;
        assert_eq!(groups.len(), 2);
        assert_eq!(addresses(&groups[1]), ["c:3"]);

        std::fs::remove_file(&one).expect("remove");
        let groups = r.next().await;
        assert_eq!(groups.len(), 1);
        assert_eq!(addresses(&groups[0]), ["c:3"]);
        r.stop().await;
    }

    #[tokio::test]
    async fn refresh_interval_rereads_without_changes_and_publishes_only_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path();
        std::fs::write(base.join("x.yaml"), "- targets: [a:1]\n").expect("write");
        let mut r = Running::start(cfg(&["x.yaml"], Duration::from_millis(50)), base);
        assert_eq!(addresses(&r.next().await[0]), ["a:1"]);
        // Many refreshes of an unchanged file publish nothing.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!r.rx.has_changed().expect("alive"));
        r.stop().await;
    }

    #[tokio::test]
    async fn invalid_file_keeps_last_good_groups() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path();
        let f = base.join("t.json");
        std::fs::write(&f, r#"[{"targets": ["a:1"]}]"#).expect("write");
        std::fs::write(base.join("u.json"), r#"[{"targets": ["b:2"]}]"#).expect("write");
        let mut r = Running::start(cfg(&["*.json"], Duration::from_secs(300)), base);
        let good = r.next().await;
        assert_eq!(good.len(), 2);

        std::fs::write(
            &f,
            "[{\"targets\": [\"a:1\"],\n  \"labels\": {\"bad-name\": \"x\"}}]",
        )
        .expect("write");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while r.failures.get() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "failure not counted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(*r.rx.borrow(), good);

        // Fixed again: the new content replaces the kept groups.
        std::fs::write(&f, r#"[{"targets": ["a:9"]}]"#).expect("write");
        let groups = r.next().await;
        assert_eq!(addresses(&groups[0]), ["a:9"]);
        assert_eq!(addresses(&groups[1]), ["b:2"]);
        r.stop().await;
    }

    #[test]
    fn parse_errors_name_file_line_and_column() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases: [(&str, &str, &str); 6] = [
            (
                "a.json",
                "[{\"targets\": [\"a:1\"],\n  \"labels\": {\"bad-name\": \"x\"}}]",
                ":2:23: [0].labels.bad-name: \"bad-name\" is not a valid label name",
            ),
            (
                "b.json",
                "[{\"targets\": [\"http://a/\"]}]",
                ":1:26: [0].targets[0]: \"http://a/\" is not a valid target",
            ),
            (
                "c.yml",
                "- targets: [a:1]\n  lables: {}\n",
                ":2:3: [0].lables: unknown field `lables`",
            ),
            (
                "d.yaml",
                "- targets: ['']\n",
                "[0].targets[0]: empty target",
            ),
            ("e.json", "", ":1:0: (root): EOF while parsing a value"),
            ("f.json", "[] x", ":1:4: (root): trailing characters"),
        ];
        for (name, text, want) in cases {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write");
            let e = read_groups(&p).expect_err(name).to_string();
            assert!(e.starts_with(&p.display().to_string()), "{e}");
            assert!(e.contains(want), "{name}: {e}");
        }
        let p = dir.path().join("null.json");
        std::fs::write(&p, "null").expect("write");
        assert_eq!(read_groups(&p).expect("null is empty"), Vec::new());
        let p = dir.path().join("UPPER.JSON");
        std::fs::write(&p, "[]").expect("write");
        assert_eq!(read_groups(&p).expect("JSON ext"), Vec::new());
    }

    #[test]
    fn validate_follows_prometheus() {
        let ok = |f: &str| cfg(&[f], Duration::from_secs(1)).validate();
        assert_eq!(ok("targets/*.json"), Ok(()));
        assert_eq!(ok("/etc/t/node-*.yml"), Ok(()));
        assert_eq!(ok("t/[ab]?.YAML"), Ok(()));
        assert!(ok("t/*.txt").is_err());
        assert!(ok("t/x.Json").is_err());
        assert!(ok("*/x.json").is_err());
        assert!(ok("t?/x.json").is_err());
        assert!(ok("t/[a.json").is_err());
        assert!(ok("t/[]a].json").is_err());
        assert!(cfg(&[], Duration::from_secs(1)).validate().is_err());
        assert!(cfg(&["a.json"], Duration::ZERO).validate().is_err());
    }

    #[test]
    fn glob_matches_like_go() {
        let m = |p: &str, n: &str| Glob::compile(p).expect("pattern").matches(n);
        assert!(m("*.json", "a.json"));
        assert!(m("*.json", ".json"));
        assert!(m("*.json", ".hidden.json"));
        assert!(!m("*.json", "a.json.bak"));
        assert!(m("a*b*c.json", "a-b-b-c.json"));
        assert!(!m("a*b*c.json", "a-c.json"));
        assert!(m("?.yml", "x.yml"));
        assert!(!m("?.yml", "xy.yml"));
        assert!(m("[a-c].yml", "b.yml"));
        assert!(!m("[^a-c].yml", "b.yml"));
        assert!(m("[^a-c].yml", "d.yml"));
        assert!(m("\\*.json", "*.json"));
        assert!(!m("\\*.json", "a.json"));
        assert!(m("é*.json", "éa.json"));
        assert!(Glob::compile("a\\").is_err());
        assert!(Glob::compile("[a-]").is_err());
        assert!(Glob::compile("[]").is_err());
    }

    #[test]
    fn relative_paths_are_cleaned_against_base() {
        assert_eq!(
            resolve(Path::new("../t/./x.json"), Path::new("/etc/prom")),
            PathBuf::from("/etc/t/x.json")
        );
        assert_eq!(
            resolve(Path::new("/abs/x.json"), Path::new("/etc")),
            PathBuf::from("/abs/x.json")
        );
        assert_eq!(
            resolve(Path::new("/abs/../t//x.json"), Path::new("/etc")),
            PathBuf::from("/t/x.json")
        );
        assert_eq!(
            resolve(Path::new("../../../x.json"), Path::new("/a")),
            PathBuf::from("/x.json")
        );
    }
}
