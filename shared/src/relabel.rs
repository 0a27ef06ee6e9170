//! Relabeling (`relabel_configs`, `metric_relabel_configs`) with Prometheus's semantics.
//!
//! - Regexes are RE2 syntax, fully anchored (`^(?s:REGEX)$`, as current Prometheus compiles
//!   them). `\d`, `\w`, `\s` (and their negations outside classes) match ASCII only, as in
//!   Go; the `regex` crate would otherwise match Unicode digits and letters.
//! - Defaults: `action: replace`, `separator: ;`, `regex: (.*)`, `replacement: $1`.
//! - The source value is the source labels' values (empty for a missing label) joined by the
//!   separator.
//! - `$1`, `${1}`, `$name`, `${name}` expand exactly as Go's `Regexp.Expand`: the longest name
//!   of letters, digits and `_` is taken (`$1x` is the group named `1x`, which is empty), `$$`
//!   is a literal `$`, a malformed reference is kept as text.
//! - Setting a label to the empty string deletes it.
//! - `hashmod` takes the MD5 of the source value, reads its last 8 bytes big-endian, and takes
//!   the remainder by `modulus`.
//! - `labelmap`, `labeldrop` and `labelkeep` look at the label set as it was before the step.
//! - Every action name is accepted in any case (`Replace`, `LABELDROP`), as Prometheus does.
//!
//! Validation mirrors Prometheus's configuration errors (a missing `target_label`, a zero
//! `modulus`, fields that `labeldrop`/`keepequal` do not take). Label names follow Prometheus
//! 3's UTF-8 rules (any non-empty name, whatever the job's `metric_name_validation_scheme`:
//! a name the scheme refuses fails the scrape after relabeling, not the configuration);
//! [`RelabelConfig::check_legacy_names`] adds Prometheus 2's legacy rules, and
//! [`process_with`] applies them to expanded targets.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

/// Labels of one target or series, by name.
pub type LabelSet = BTreeMap<String, String>;

/// What one step does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Action {
    #[default]
    Replace,
    Keep,
    Drop,
    KeepEqual,
    DropEqual,
    HashMod,
    LabelMap,
    LabelDrop,
    LabelKeep,
    Lowercase,
    Uppercase,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        Some(match s.to_ascii_lowercase().as_str() {
            "replace" => Action::Replace,
            "keep" => Action::Keep,
            "drop" => Action::Drop,
            "keepequal" => Action::KeepEqual,
            "dropequal" => Action::DropEqual,
            "hashmod" => Action::HashMod,
            "labelmap" => Action::LabelMap,
            "labeldrop" => Action::LabelDrop,
            "labelkeep" => Action::LabelKeep,
            "lowercase" => Action::Lowercase,
            "uppercase" => Action::Uppercase,
            _ => return None,
        })
    }

    /// The action's name, as Prometheus prints it (lower case).
    pub fn name(self) -> &'static str {
        match self {
            Action::Replace => "replace",
            Action::Keep => "keep",
            Action::Drop => "drop",
            Action::KeepEqual => "keepequal",
            Action::DropEqual => "dropequal",
            Action::HashMod => "hashmod",
            Action::LabelMap => "labelmap",
            Action::LabelDrop => "labeldrop",
            Action::LabelKeep => "labelkeep",
            Action::Lowercase => "lowercase",
            Action::Uppercase => "uppercase",
        }
    }
}

/// A compiled, anchored relabel regex; compares by its source text.
#[derive(Clone)]
pub struct Regex {
    source: String,
    re: regex::Regex,
}

impl fmt::Debug for Regex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl PartialEq for Regex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Default for Regex {
    fn default() -> Self {
        Regex::new(DEFAULT_REGEX).unwrap_or_else(|_| unreachable!("the default regex compiles"))
    }
}

const DEFAULT_REGEX: &str = "(.*)";

impl Regex {
    /// Compiles `source` as Prometheus does: anchored at both ends, `.` matching newlines.
    pub fn new(source: &str) -> Result<Regex, regex::Error> {
        let re = regex::Regex::new(&format!("^(?s:{})$", ascii_classes(source)))?;
        Ok(Regex {
            source: source.to_owned(),
            re,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, s: &str) -> bool {
        self.re.is_match(s)
    }
}

/// Rewrites Perl classes to Go's ASCII meaning (`\d` is `[0-9]` in RE2, Unicode in `regex`).
fn ascii_classes(src: &str) -> String {
    let mut out = String::with_capacity(src.len() + 8);
    let mut chars = src.chars();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let Some(n) = chars.next() else {
                    out.push('\\');
                    break;
                };
                let (inside, outside) = match n {
                    'd' => ("0-9", "[0-9]"),
                    'w' => ("0-9A-Za-z_", "[0-9A-Za-z_]"),
                    's' => ("\\t\\n\\f\\r ", "[\\t\\n\\f\\r ]"),
                    'D' if !in_class => ("", "[^0-9]"),
                    'W' if !in_class => ("", "[^0-9A-Za-z_]"),
                    'S' if !in_class => ("", "[^\\t\\n\\f\\r ]"),
                    _ => {
                        out.push('\\');
                        out.push(n);
                        continue;
                    }
                };
                out.push_str(if in_class { inside } else { outside });
            }
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                // A leading `^` and a leading `]` belong to the class.
                let mut rest = chars.clone();
                if let Some('^') = rest.next() {
                    out.push('^');
                    chars.next();
                }
                let mut rest = chars.clone();
                if let Some(']') = rest.next() {
                    out.push_str("\\]");
                    chars.next();
                }
            }
            '[' if in_class => {
                // `[:alpha:]` inside a class.
                out.push('[');
                let mut rest = chars.clone();
                if let Some(':') = rest.next() {
                    for c in chars.by_ref() {
                        out.push(c);
                        if c == ']' {
                            break;
                        }
                    }
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            _ => out.push(c),
        }
    }
    out
}

/// One relabeling step, validated.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct RelabelConfig {
    pub source_labels: Vec<String>,
    pub separator: String,
    pub regex: Regex,
    pub modulus: u64,
    pub target_label: String,
    pub replacement: String,
    pub action: Action,
}

impl Default for RelabelConfig {
    fn default() -> Self {
        RelabelConfig {
            source_labels: Vec::new(),
            separator: ";".into(),
            regex: Regex::default(),
            modulus: 0,
            target_label: String::new(),
            replacement: "$1".into(),
            action: Action::Replace,
        }
    }
}

/// A YAML scalar that Go would read into a string (`regex: 1` is the string "1").
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    S(String),
    I(i64),
    U(u64),
    F(f64),
    B(bool),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Scalar::S(s) => s,
            Scalar::I(i) => i.to_string(),
            Scalar::U(u) => u.to_string(),
            Scalar::F(f) => f.to_string(),
            Scalar::B(b) => b.to_string(),
        }
    }
}

/// A key that is present, even with a null value (serde's `Option` makes null and absent
/// alike).
fn given<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Scalar>>, D::Error> {
    Option::<Scalar>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    source_labels: Vec<String>,
    #[serde(default)]
    separator: Option<Scalar>,
    /// `None`: not given; `Some(None)`: given as null or empty (the empty regex).
    #[serde(default, deserialize_with = "given")]
    regex: Option<Option<Scalar>>,
    #[serde(default)]
    modulus: u64,
    #[serde(default)]
    target_label: Option<Scalar>,
    #[serde(default)]
    replacement: Option<Scalar>,
    #[serde(default)]
    action: Option<String>,
}

impl TryFrom<RawConfig> for RelabelConfig {
    type Error = String;

    fn try_from(raw: RawConfig) -> Result<Self, String> {
        let d = RelabelConfig::default();
        let action = match raw.action.as_deref() {
            None => Action::Replace,
            Some("") => return Err("relabel action cannot be empty".into()),
            Some(a) => Action::parse(a).ok_or_else(|| format!("unknown relabel action {a:?}"))?,
        };
        // A null or empty regex is the empty regex (it matches only the empty string), as in
        // Prometheus; only a missing one is the default `(.*)`.
        let regex_src = raw
            .regex
            .map(|r| r.map(Scalar::into_string).unwrap_or_default());
        let regex = match &regex_src {
            None => Regex::default(),
            Some(s) => Regex::new(s).map_err(|e| {
                // One line, as Prometheus's: the `regex` crate's last line names the fault.
                let reason = match &e {
                    regex::Error::Syntax(text) => text
                        .lines()
                        .last()
                        .unwrap_or_default()
                        .trim_start_matches("error: ")
                        .to_owned(),
                    other => other.to_string(),
                };
                format!("error parsing regexp: {reason}: `^(?s:{s})$`")
            })?,
        };
        let separator = raw.separator.map(Scalar::into_string);
        let replacement = raw.replacement.map(Scalar::into_string);
        let c = RelabelConfig {
            source_labels: raw.source_labels,
            separator: separator.clone().unwrap_or_else(|| d.separator.clone()),
            regex,
            modulus: raw.modulus,
            target_label: raw
                .target_label
                .map(Scalar::into_string)
                .unwrap_or_default(),
            replacement: replacement.clone().unwrap_or_else(|| d.replacement.clone()),
            action,
        };
        for s in &c.source_labels {
            if s.is_empty() {
                return Err(format!("{s:?} is not a valid label name"));
            }
        }
        let name = action.name();
        let needs_target = matches!(
            action,
            Action::Replace
                | Action::HashMod
                | Action::Lowercase
                | Action::Uppercase
                | Action::KeepEqual
                | Action::DropEqual
        );
        if needs_target && c.target_label.is_empty() {
            return Err(format!(
                "relabel configuration for {name} action requires 'target_label' value"
            ));
        }
        if action == Action::HashMod && c.modulus == 0 {
            return Err("relabel configuration for hashmod requires non-zero modulus".into());
        }
        if matches!(
            action,
            Action::Lowercase | Action::Uppercase | Action::KeepEqual | Action::DropEqual
        ) && c.replacement != d.replacement
        {
            return Err(format!("'replacement' can not be set for {name} action"));
        }
        if action == Action::LabelMap && c.replacement.is_empty() {
            return Err(format!(
                "{:?} is invalid 'replacement' for labelmap action",
                c.replacement
            ));
        }
        if matches!(action, Action::LabelDrop | Action::LabelKeep)
            && (!c.source_labels.is_empty()
                || !c.target_label.is_empty()
                || c.modulus != 0
                || c.separator != d.separator
                || c.replacement != d.replacement)
        {
            return Err(format!(
                "{name} action requires only 'regex', and no other fields"
            ));
        }
        if matches!(action, Action::KeepEqual | Action::DropEqual)
            && (regex_src.is_some()
                || c.modulus != 0
                || c.separator != d.separator
                || c.replacement != d.replacement)
        {
            return Err(format!(
                "{name} action requires only 'source_labels' and `target_label`, and no other fields"
            ));
        }
        Ok(c)
    }
}

impl RelabelConfig {
    /// Prometheus 2's stricter name rules: source labels legacy-valid, targets of `replace`,
    /// `lowercase`, `uppercase`, `keepequal` and `dropequal` (and a `labelmap` replacement)
    /// legacy label names with `$1`/`${name}` references, a `hashmod` target a legacy name.
    pub fn check_legacy_names(&self) -> Result<(), String> {
        for s in &self.source_labels {
            if !crate::model::valid_label_name(s) {
                return Err(format!("{s:?} is not a valid label name"));
            }
        }
        let name = self.action.name();
        if matches!(
            self.action,
            Action::Replace
                | Action::Lowercase
                | Action::Uppercase
                | Action::KeepEqual
                | Action::DropEqual
        ) && !valid_target_template(&self.target_label)
        {
            return Err(format!(
                "{:?} is invalid 'target_label' for {name} action",
                self.target_label
            ));
        }
        if self.action == Action::HashMod && !crate::model::valid_label_name(&self.target_label) {
            return Err(format!(
                "{:?} is invalid 'target_label' for {name} action",
                self.target_label
            ));
        }
        if self.action == Action::LabelMap && !valid_target_template(&self.replacement) {
            return Err(format!(
                "{:?} is invalid 'replacement' for labelmap action",
                self.replacement
            ));
        }
        Ok(())
    }
}

/// Prometheus's `relabelTarget`: label name characters, with `$1`/`${name}` references.
fn valid_target_template(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            c if c.is_ascii_alphanumeric() || c == b'_' => i += 1,
            b'$' => {
                i += 1;
                if b.get(i) == Some(&b'{') {
                    let start = i + 1;
                    let mut j = start;
                    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                        j += 1;
                    }
                    if j == start || b.get(j) != Some(&b'}') {
                        return false;
                    }
                    i = j + 1;
                } else {
                    let start = i;
                    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                        i += 1;
                    }
                    if i == start {
                        return false;
                    }
                }
            }
            _ => return false,
        }
    }
    // The first character may not be a digit (outside a reference).
    !b[0].is_ascii_digit()
}

/// Applies `cfgs` in order, as Prometheus 3 does. Returns `false` when a step dropped the
/// target or series (the labels are then unspecified).
pub fn process(labels: &mut LabelSet, cfgs: &[RelabelConfig]) -> bool {
    process_with(labels, cfgs, false)
}

/// [`process`], with Prometheus 2's rule for a `replace` target expanded from references
/// when `legacy` (it must be a legacy label name; Prometheus 3 takes any non-empty name).
pub fn process_with(labels: &mut LabelSet, cfgs: &[RelabelConfig], legacy: bool) -> bool {
    cfgs.iter().all(|c| apply(labels, c, legacy))
}

fn set(labels: &mut LabelSet, name: &str, value: String) {
    if value.is_empty() {
        labels.remove(name);
    } else {
        labels.insert(name.to_owned(), value);
    }
}

fn apply(labels: &mut LabelSet, c: &RelabelConfig, legacy: bool) -> bool {
    let val = {
        let mut parts = c
            .source_labels
            .iter()
            .map(|n| labels.get(n).map_or("", String::as_str));
        let mut v = String::new();
        if let Some(first) = parts.next() {
            v.push_str(first);
            for p in parts {
                v.push_str(&c.separator);
                v.push_str(p);
            }
        }
        v
    };
    let get = |labels: &LabelSet, n: &str| labels.get(n).cloned().unwrap_or_default();
    match c.action {
        Action::Drop => return !c.regex.is_match(&val),
        Action::Keep => return c.regex.is_match(&val),
        Action::DropEqual => return get(labels, &c.target_label) != val,
        Action::KeepEqual => return get(labels, &c.target_label) == val,
        Action::Replace => {
            let Some(caps) = c.regex.re.captures(&val) else {
                return true;
            };
            let target = expand(&c.regex.re, &caps, &c.target_label);
            let valid = if legacy {
                crate::model::valid_label_name(&target)
            } else {
                !target.is_empty()
            };
            if !valid {
                return true;
            }
            let res = expand(&c.regex.re, &caps, &c.replacement);
            set(labels, &target, res);
        }
        Action::Lowercase => set(labels, &c.target_label, val.to_lowercase()),
        Action::Uppercase => set(labels, &c.target_label, val.to_uppercase()),
        Action::HashMod => {
            let digest = md5::compute(val.as_bytes());
            let mut tail = [0u8; 8];
            tail.copy_from_slice(&digest.0[8..]);
            let m = u64::from_be_bytes(tail) % c.modulus;
            set(labels, &c.target_label, m.to_string());
        }
        Action::LabelMap => {
            let before: Vec<(String, String)> =
                labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            for (name, value) in before {
                if let Some(caps) = c.regex.re.captures(&name) {
                    // ReplaceAllString on an anchored regex: the whole name is replaced.
                    let res = expand(&c.regex.re, &caps, &c.replacement);
                    set(labels, &res, value);
                }
            }
        }
        Action::LabelDrop => labels.retain(|name, _| !c.regex.is_match(name)),
        Action::LabelKeep => labels.retain(|name, _| c.regex.is_match(name)),
    }
    true
}

/// Go's `Regexp.ExpandString` over one match.
fn expand(re: &regex::Regex, caps: &regex::Captures<'_>, template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        let Some((name, after)) = extract(rest) else {
            out.push('$');
            continue;
        };
        rest = after;
        let group = match group_number(name) {
            Some(n) => caps.get(n),
            None => re
                .capture_names()
                .position(|n| n == Some(name))
                .and_then(|i| caps.get(i)),
        };
        if let Some(m) = group {
            out.push_str(m.as_str());
        }
    }
    out.push_str(rest);
    out
}

/// Go's `extract`: a name of letters, digits and `_`, optionally in braces.
fn extract(s: &str) -> Option<(&str, &str)> {
    let (body, brace) = match s.strip_prefix('{') {
        Some(b) => (b, true),
        None => (s, false),
    };
    let end = body
        .char_indices()
        .find(|(_, c)| !(c.is_alphabetic() || c.is_numeric() || *c == '_'))
        .map_or(body.len(), |(i, _)| i);
    if end == 0 {
        return None;
    }
    let name = &body[..end];
    let rest = &body[end..];
    if brace {
        let rest = rest.strip_prefix('}')?;
        return Some((name, rest));
    }
    Some((name, rest))
}

/// A group number as Go reads it: ASCII digits only, no leading zero, below 10^8.
fn group_number(name: &str) -> Option<usize> {
    if !name.bytes().all(|b| b.is_ascii_digit()) || (name.len() > 1 && name.starts_with('0')) {
        return None;
    }
    name.parse::<usize>().ok().filter(|n| *n < 100_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> RelabelConfig {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    fn cfg_err(yaml: &str) -> String {
        match serde_yaml::from_str::<RelabelConfig>(yaml) {
            Ok(c) => panic!("{yaml} accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn ls(pairs: &[(&str, &str)]) -> LabelSet {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// (steps as YAML list, input, expected output or None when dropped)
    type Case<'a> = (
        &'a str,
        &'a [(&'a str, &'a str)],
        Option<&'a [(&'a str, &'a str)]>,
    );

    #[test]
    fn table_of_prometheus_documented_behaviour() {
        let cases: &[Case<'_>] = &[
            // replace with defaults: $1 of (.*) over the joined sources.
            (
                "[{source_labels: [a], target_label: b}]",
                &[("a", "foo")],
                Some(&[("a", "foo"), ("b", "foo")]),
            ),
            // Joined with the separator; missing labels are empty.
            (
                "[{source_labels: [a, x, c], target_label: d, separator: '|'}]",
                &[("a", "1"), ("c", "3")],
                Some(&[("a", "1"), ("c", "3"), ("d", "1||3")]),
            ),
            // Anchored: "f" does not match "foo", so nothing happens.
            (
                "[{source_labels: [a], regex: f, target_label: b, replacement: x}]",
                &[("a", "foo")],
                Some(&[("a", "foo")]),
            ),
            (
                "[{source_labels: [a], regex: 'f(.*)', target_label: b, replacement: 'x${1}y'}]",
                &[("a", "foo")],
                Some(&[("a", "foo"), ("b", "xooy")]),
            ),
            // $1x is the (absent) group named "1x": empty, so the label is deleted.
            (
                "[{source_labels: [a], regex: 'f(.*)', target_label: b, replacement: '$1x'}]",
                &[("a", "foo"), ("b", "keep?")],
                Some(&[("a", "foo")]),
            ),
            // $$ is a literal dollar; a malformed reference stays as text.
            (
                "[{source_labels: [a], target_label: b, replacement: '$$-$-${1'}]",
                &[("a", "v")],
                Some(&[("a", "v"), ("b", "$-$-${1")]),
            ),
            // Named groups, and a target label built from a group.
            (
                "[{source_labels: [a], regex: '(?P<n>[a-z]+)-(\\d+)', target_label: 'l_${n}', replacement: '$2'}]",
                &[("a", "abc-42")],
                Some(&[("a", "abc-42"), ("l_abc", "42")]),
            ),
            // Prometheus 3 takes any non-empty expanded target name (see below for 2's rule);
            // an empty one changes nothing.
            (
                "[{source_labels: [a], regex: '(.*)', target_label: '$1', replacement: x}]",
                &[("a", "1bad")],
                Some(&[("a", "1bad"), ("1bad", "x")]),
            ),
            (
                "[{source_labels: [n], regex: '(.*)', target_label: '$1', replacement: x}]",
                &[("a", "v")],
                Some(&[("a", "v")]),
            ),
            // Replacing with the empty string deletes.
            (
                "[{source_labels: [x], target_label: a}]",
                &[("a", "v")],
                Some(&[]),
            ),
            // Setting __address__ from a meta label, with a port.
            (
                "[{source_labels: [__meta_host], regex: '(.+)', target_label: __address__, replacement: '$1:9100'}]",
                &[("__address__", "old"), ("__meta_host", "h1")],
                Some(&[("__address__", "h1:9100"), ("__meta_host", "h1")]),
            ),
            // keep / drop.
            (
                "[{source_labels: [a], regex: 'x|y', action: keep}]",
                &[("a", "y")],
                Some(&[("a", "y")]),
            ),
            (
                "[{source_labels: [a], regex: 'x|y', action: keep}]",
                &[("a", "z")],
                None,
            ),
            (
                "[{source_labels: [a], regex: 'x|y', action: drop}]",
                &[("a", "x")],
                None,
            ),
            (
                "[{source_labels: [a], regex: 'x|y', action: drop}]",
                &[("a", "xy")],
                Some(&[("a", "xy")]),
            ),
            // Missing source label with the default regex: "" matches (.*), keep keeps.
            (
                "[{source_labels: [m], action: keep}]",
                &[("a", "1")],
                Some(&[("a", "1")]),
            ),
            (
                "[{source_labels: [m], regex: '.+', action: keep}]",
                &[("a", "1")],
                None,
            ),
            // keepequal / dropequal.
            (
                "[{source_labels: [a], target_label: b, action: keepequal}]",
                &[("a", "1"), ("b", "1")],
                Some(&[("a", "1"), ("b", "1")]),
            ),
            (
                "[{source_labels: [a], target_label: b, action: keepequal}]",
                &[("a", "1"), ("b", "2")],
                None,
            ),
            (
                "[{source_labels: [a], target_label: b, action: dropequal}]",
                &[("a", "1"), ("b", "1")],
                None,
            ),
            (
                "[{source_labels: [a], target_label: b, action: DropEqual}]",
                &[("a", "1")],
                Some(&[("a", "1")]),
            ),
            // lowercase / uppercase.
            (
                "[{source_labels: [a, b], target_label: c, action: lowercase}]",
                &[("a", "AbC"), ("b", "D")],
                Some(&[("a", "AbC"), ("b", "D"), ("c", "abc;d")]),
            ),
            (
                "[{source_labels: [a], target_label: a, action: uppercase}]",
                &[("a", "aé")],
                Some(&[("a", "AÉ")]),
            ),
            // labelmap: copies matching names; the originals stay.
            (
                "[{regex: '__meta_kubernetes_pod_label_(.+)', action: labelmap}]",
                &[("__meta_kubernetes_pod_label_app", "web"), ("x", "1")],
                Some(&[
                    ("__meta_kubernetes_pod_label_app", "web"),
                    ("app", "web"),
                    ("x", "1"),
                ]),
            ),
            (
                "[{regex: '(a)(b)?', replacement: 'x_${1}_$2', action: labelmap}]",
                &[("a", "1"), ("ab", "2")],
                Some(&[("a", "1"), ("ab", "2"), ("x_a_", "1"), ("x_a_b", "2")]),
            ),
            // labeldrop / labelkeep (anchored on the whole name).
            (
                "[{regex: 'tmp.*', action: labeldrop}]",
                &[("tmp1", "a"), ("atmp", "b")],
                Some(&[("atmp", "b")]),
            ),
            (
                "[{regex: 'job|instance', action: labelkeep}]",
                &[("job", "j"), ("instance", "i"), ("x", "y")],
                Some(&[("instance", "i"), ("job", "j")]),
            ),
            // Steps run in order; a __tmp label carries a value between them.
            (
                "[{source_labels: [a], target_label: __tmp_a}, {source_labels: [__tmp_a], regex: '(.)(.*)', target_label: b, replacement: '$2$1'}]",
                &[("a", "xyz")],
                Some(&[("__tmp_a", "xyz"), ("a", "xyz"), ("b", "yzx")]),
            ),
            // RE2's \d is ASCII only: an Arabic-Indic digit does not match.
            (
                "[{source_labels: [a], regex: '\\d+', action: keep}]",
                &[("a", "١٢")],
                None,
            ),
            (
                "[{source_labels: [a], regex: '[\\d]+', action: keep}]",
                &[("a", "12")],
                Some(&[("a", "12")]),
            ),
            // `.` matches a newline (?s).
            (
                "[{source_labels: [a], regex: 'a.b', action: keep}]",
                &[("a", "a\nb")],
                Some(&[("a", "a\nb")]),
            ),
        ];
        for (yaml, input, want) in cases {
            let steps: Vec<RelabelConfig> =
                serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
            let mut got = ls(input);
            let kept = process(&mut got, &steps);
            match want {
                None => assert!(!kept, "{yaml} on {input:?} should drop, got {got:?}"),
                Some(w) => {
                    assert!(kept, "{yaml} on {input:?} dropped");
                    assert_eq!(got, ls(w), "{yaml} on {input:?}");
                }
            }
        }
    }

    #[test]
    fn hashmod_matches_prometheus() {
        // Prometheus's relabel tests: "baz" modulo 1000 is 976.
        let c = cfg("{source_labels: [c], target_label: d, modulus: 1000, action: hashmod}");
        let mut l = ls(&[("c", "baz")]);
        assert!(process(&mut l, &[c]));
        assert_eq!(l.get("d").map(String::as_str), Some("976"));
    }

    #[test]
    fn validation_errors_match_prometheus() {
        assert!(cfg_err("{action: hashmod, target_label: a}").contains("non-zero modulus"));
        assert!(cfg_err("{action: replace}").contains("requires 'target_label'"));
        assert!(
            cfg_err("{action: lowercase, source_labels: [a]}").contains("requires 'target_label'")
        );
        assert!(
            cfg_err("{action: labeldrop, regex: a, source_labels: [b]}")
                .contains("requires only 'regex'")
        );
        assert!(
            cfg_err("{action: keepequal, source_labels: [a], target_label: b, regex: x}")
                .contains("requires only 'source_labels'")
        );
        assert!(cfg_err("{action: frobnicate}").contains("unknown relabel action"));
        assert!(cfg_err("{action: ''}").contains("cannot be empty"));
        assert!(cfg_err("{regex: '(', target_label: a}").contains("error parsing regexp"));
        assert!(
            cfg_err("{action: lowercase, source_labels: [a], target_label: b, replacement: c}")
                .contains("'replacement' can not be set for lowercase action")
        );
        // Prometheus 3 takes UTF-8 names in the configuration; Prometheus 2's legacy rules
        // are a separate check.
        let legacy = |yaml: &str| cfg(yaml).check_legacy_names().expect_err(yaml);
        assert!(legacy("{target_label: 'a-b'}").contains("invalid 'target_label'"));
        assert!(
            legacy("{action: labelmap, replacement: 'x-$1'}").contains("invalid 'replacement'")
        );
        assert!(
            legacy("{source_labels: ['a-b'], target_label: x}").contains("not a valid label name")
        );
        assert!(legacy("{action: hashmod, modulus: 2, target_label: 'a.b'}").contains("hashmod"));
        cfg("{target_label: 'a_$1', regex: '(.*)'}")
            .check_legacy_names()
            .expect("a template");
        assert!(
            cfg_err("{source_labels: [''], target_label: x}").contains("not a valid label name")
        );
        // An explicit default separator is no "other field" (Prometheus compares values).
        cfg("{action: labeldrop, regex: a, separator: ';'}");
        let mut two = ls(&[("a", "1bad")]);
        let steps: Vec<RelabelConfig> = serde_yaml::from_str(
            "[{source_labels: [a], regex: '(.*)', target_label: '$1', replacement: x}]",
        )
        .expect("valid");
        assert!(process_with(&mut two, &steps, true));
        assert_eq!(
            two,
            ls(&[("a", "1bad")]),
            "Prometheus 2 skips an invalid target"
        );
        assert!(cfg_err("{target_label: x, bogus: 1}").contains("unknown field"));
        // Accepted forms.
        let c = cfg("{action: Replace, target_label: 'x_${1}', regex: 1}");
        assert_eq!(c.regex.as_str(), "1");
        assert_eq!(c.separator, ";");
        assert_eq!(c.replacement, "$1");
        cfg("{action: labelmap, regex: '__meta_(.+)'}");
    }

    #[test]
    fn a_null_or_empty_regex_is_the_empty_regex() {
        for regex in ["regex: null", "regex: ~", "regex:", "regex: ''"] {
            let steps: Vec<RelabelConfig> = serde_yaml::from_str(&format!(
                "- source_labels: [a]\n  target_label: b\n  replacement: x\n  {regex}\n"
            ))
            .expect("valid");
            assert_eq!(steps[0].regex.as_str(), "", "{regex}");
            let mut set = ls(&[("a", "foo")]);
            assert!(process(&mut set, &steps));
            assert_eq!(set, ls(&[("a", "foo")]), "{regex}: only '' matches");
            let mut set = ls(&[("c", "1")]);
            assert!(process(&mut set, &steps));
            assert_eq!(set, ls(&[("b", "x"), ("c", "1")]), "{regex}");
            // An explicit regex, even an empty one, is a field keepequal does not take.
            assert!(
                cfg_err(&format!(
                    "action: keepequal\nsource_labels: [a]\ntarget_label: b\n{regex}\n"
                ))
                .contains("no other fields"),
                "{regex}"
            );
        }
    }
}
