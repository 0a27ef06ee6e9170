//! Parser for the OpenMetrics 1.0 text format (`Content-Type: application/openmetrics-text;
//! version=1.0.0`, and `version=0.0.1`, which Prometheus parses the same way).
//!
//! It produces the same [`Exposition`] and [`ParsedSample`]s as the text-format parser
//! ([`super::parse`]), under the same [`Limits`], so everything after parsing is shared. The
//! grammar is that of Prometheus's `model/textparse` (`openmetricslex.l` +
//! `openmetricsparse.go`) in one of two [`Dialect`]s: a body is accepted here exactly when
//! that Prometheus accepts it, except for the deviations listed below, and yields the samples
//! it ingests. Prometheus 2.42's grammar is described first; the Prometheus 3 changes follow.
//!
//! # Accepted grammar
//!
//! The body is a sequence of lines, each ending in `\n`, and its last line is `# EOF`, optionally
//! followed by one `\n` and nothing else. A body without `# EOF`, or with anything after it
//! (even a blank line), is an error. There is no whitespace freedom: separators are exactly one
//! space, and spaces or tabs anywhere else are errors. Blank lines are errors. `\r` is an
//! ordinary character, so a `\r\n` body fails on its first value or type.
//!
//! * `# HELP <name> <text>`, `# TYPE <name> <type>`, `# UNIT <name> <unit>`: `<name>` is
//!   `[a-zA-Z_:][a-zA-Z0-9_:]*`, followed by exactly one space and the rest of the line (which may
//!   be empty). `<type>` is exactly one of `counter`, `gauge`, `histogram`, `gaugehistogram`,
//!   `stateset`, `info`, `summary`, `unknown` (kept in [`Exposition::types`]). A non-empty
//!   `<unit>` must be a suffix of `<name>` preceded by `_` (`# UNIT foo_seconds seconds`);
//!   units and HELP text are validated but not kept. A later `# TYPE` for a name replaces an
//!   earlier one. Every other line starting with `#` is an error (OpenMetrics has no comments).
//! * Samples: `name[{labels}] value[ timestamp][ # {exemplar labels} value[ timestamp]]`.
//!   - Labels are `name="value"` pairs separated by a single `,`, with no spaces, no leading
//!     and no trailing comma; `{}` is allowed. Label names are `[a-zA-Z_][a-zA-Z0-9_]*`.
//!     Label values are double-quoted on one line; escapes are those of the text format
//!     (`\\`, `\"`, `\n` are replaced, any other backslash pair is kept as it is), and a
//!     backslash at the end of the line is an error.
//!   - The value is the run of characters after one space up to the next space or line end,
//!     parsed exactly as the text format's values (Go's `ParseFloat` before Go 1.13: decimal
//!     floats, `NaN`, `Inf`/`Infinity` with optional sign, any case; overflow is an error).
//!   - The timestamp is in seconds, a float of the same syntax (so `-1.5` and `1e9` are valid),
//!     `NaN` and infinities rejected. It becomes milliseconds as Prometheus's Go code does it:
//!     `int64(seconds * 1000)`, a float multiplication then truncation toward zero (so
//!     `1.001` → `1000`, not `1001`). A product outside `i64` becomes `i64::MIN`, which is
//!     what Go's conversion gives on amd64.
//!   - The exemplar is allowed only on a sample whose metric name ends in `_total` or
//!     `_bucket` (anything else fails the body, as in Prometheus 2.42, whatever the `# TYPE`).
//!     Its labels follow the sample-label grammar, its value the value grammar, its optional
//!     timestamp the timestamp grammar; then the line must end. A well-formed exemplar is
//!     dropped (the agent does not ship exemplars) and counted in [`Exposition::exemplars`]
//!     when Prometheus would store it: after removing labels with empty values, no label name
//!     repeated and at most [`EXEMPLAR_MAX_LABEL_SET_CHARS`] characters of names and (still
//!     escaped, as Prometheus measures them) values. Exemplars failing those two checks are
//!     dropped without failing the scrape, as Prometheus drops them.
//!
//! # Prometheus 3 ([`Dialect::Prometheus3`], the default)
//!
//! * Quoted UTF-8 names, as in the text format but without any whitespace: a line may start
//!   with `{` and its quoted metric name (`{"my.metric_total","a.b"="c"} 1`), label names may be
//!   quoted, and `# HELP`, `# TYPE`, `# UNIT` take a quoted name. Exemplar labels may have
//!   quoted names, but an exemplar has no metric name.
//! * A label set, an exemplar's included, may end with a comma (`{a="1",}`).
//! * An exemplar is allowed on any sample, whatever its name.
//! * `le` (type `histogram`) and `quantile` (type `summary`) values are rewritten to Go's float
//!   form, by the most recent `# TYPE` line, as in the text format ([`parse::normalize_label`]);
//!   a gauge histogram's `le` is left as it is.
//!
//! # What is ingested
//!
//! Every sample line becomes one sample with its own name, exactly as written: neither
//! Prometheus 2.42 nor Prometheus 3 (without `created-timestamp-zero-ingestion`) treats
//! OpenMetrics families specially. So `foo_created`, `foo_total`,
//! `foo_info`, a stateset's per-state samples and a gauge histogram's `_bucket`, `_gcount`
//! and `_gsum` are all ordinary series, and `_created` lines are stored as samples (the
//! created-timestamp handling of later Prometheus releases does not exist in 2.42). Nothing
//! checks that samples match their `# TYPE` (a counter without `_total`, a histogram without
//! `+Inf`, interleaved families are all accepted), as in Prometheus 2.42.
//!
//! # Semantic checks and limits
//!
//! As in [`super::parse`]: `__name__` inside braces and a repeated label name fail the body,
//! and [`Limits`] are checked the same way. Errors carry the 1-based line of the problem;
//! problems shared with the text format (values, label names, limits) are
//! [`ParseErrorKind::Sample`].
//!
//! # Deviations from Prometheus 2.42
//!
//! * Error messages differ; which bodies fail does not (except as below). A body whose last
//!   line lacks its `\n` is reported as missing `# EOF` whatever else is wrong with that line.
//! * NUL bytes: here a NUL is an ordinary character inside quoted label values (exemplars'
//!   included) and `# HELP`/`# TYPE`/`# UNIT` text, and an error anywhere else. Prometheus's
//!   lexer rejects NULs in exemplar label values, and silently skips NULs directly after a
//!   sample label value's closing quote (storing a corrupted value: `{a="x"\0}` gives `a` the
//!   value `x"`), after a backslash inside such a value, inside and after the
//!   `HELP`/`TYPE`/`UNIT`/`EOF` keywords, and at the start of the line after a metadata line,
//!   accepting bodies that fail here.
//! * The body must be UTF-8 (the scraper checks this first). Prometheus rejects invalid UTF-8
//!   in every position where it could occur in an otherwise valid body too.
//! * Prometheus agent mode drops samples whose timestamp is older than the series' last one
//!   (for example negative timestamps after a positive one); here they are passed on.
//!
//! # No-panic invariant
//!
//! [`parse()`] never panics: byte access goes through `get`, slices are taken at ASCII
//! delimiters through `str::get`, nothing is unwrapped, and error snippets are bounded by
//! [`super::parse::ERROR_SNIPPET_CHARS`]. The unit tests run it on many mutations of every seed
//! body under `agent/tests/fixtures/openmetrics/`.

use std::collections::HashSet;

use uplink_shared::remote_write::{Label, MetricType};

use super::parse::{
    self, Dialect, Exposition, FloatError, Limits, ParsedExemplar, ParsedSample, check_label_names,
    check_limits, is_label_char, is_label_start, is_name_char, is_name_start, parse_go_float,
    snippet, unescape,
};

/// Most characters (names plus values) an exemplar's labels may have: the OpenMetrics limit,
/// Prometheus's `ExemplarMaxLabelSetLength`.
pub const EXEMPLAR_MAX_LABEL_SET_CHARS: usize = 128;

/// The line that ends a body.
const EOF_LINE: &str = "# EOF";

/// What separates a sample (or its timestamp) from its exemplar.
const EXEMPLAR_START: &str = " # {";

/// Why a body was rejected, and on which line.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {kind}")]
pub struct ParseError {
    /// 1-based line number of the problem.
    pub line: usize,
    /// What is wrong.
    pub kind: ParseErrorKind,
}

/// The kinds of problem [`parse()`] reports. `found` fields describe the offending input: a
/// quoted character, a quoted token or `end of line`.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseErrorKind {
    /// The body ends without a `# EOF` line.
    #[error("data does not end with `# EOF`")]
    MissingEof,
    /// Something follows the `# EOF` line.
    #[error("unexpected data after `# EOF`")]
    DataAfterEof,
    /// A line starts with something other than a metric name or `#` (blank lines included).
    #[error("expected a metric name or `#`, found {found}")]
    UnexpectedLineStart {
        /// What the line starts with.
        found: String,
    },
    /// A `#` line that is not `# HELP`, `# TYPE`, `# UNIT` or `# EOF`.
    #[error("expected `# HELP`, `# TYPE`, `# UNIT` or `# EOF`, found {found}")]
    InvalidComment {
        /// The line.
        found: String,
    },
    /// `# HELP`, `# TYPE` or `# UNIT` not followed by a metric name.
    #[error("expected a metric name after `# {keyword}`, found {found}")]
    MissingMetadataName {
        /// `HELP`, `TYPE` or `UNIT`.
        keyword: &'static str,
        /// What came instead of the name.
        found: String,
    },
    /// The metric name in `# HELP`/`# TYPE`/`# UNIT` not followed by one space.
    #[error("expected a space and text after the metric name in `# {keyword}`, found {found}")]
    MissingMetadataText {
        /// `HELP`, `TYPE` or `UNIT`.
        keyword: &'static str,
        /// What came instead of the space.
        found: String,
    },
    /// `# TYPE` names no OpenMetrics type.
    #[error("invalid metric type {found:?}")]
    InvalidMetricType {
        /// The type text, exactly as given.
        found: String,
    },
    /// `# UNIT` gives a unit that is not a `_`-separated suffix of the metric name.
    #[error("unit {unit:?} is not a suffix of metric {metric:?}")]
    UnitNotSuffix {
        /// The metric name.
        metric: String,
        /// The unit.
        unit: String,
    },
    /// Inside braces, something other than a label name where one must be.
    #[error("expected a label name, found {found}")]
    ExpectedLabelName {
        /// What came instead.
        found: String,
    },
    /// A label name not followed by `=`.
    #[error("expected `=` after label name {label:?}, found {found}")]
    ExpectedEquals {
        /// The label name.
        label: String,
        /// What came instead of `=`.
        found: String,
    },
    /// `=` not followed by `"`.
    #[error("expected a double-quoted value for label {label:?}, found {found}")]
    ExpectedLabelValue {
        /// The label name.
        label: String,
        /// What came instead of `"`.
        found: String,
    },
    /// A label value without its closing quote on the same line.
    #[error("unterminated value for label {label:?}")]
    UnterminatedLabelValue {
        /// The label name.
        label: String,
    },
    /// A label value not followed by `,` or `}`.
    #[error("expected `,` or `}}` after a label value, found {found}")]
    ExpectedCommaOrBrace {
        /// What came instead.
        found: String,
    },
    /// The metric name and labels not followed by one space and a value.
    #[error("expected a space and a sample value, found {found}")]
    MissingValue {
        /// What came instead.
        found: String,
    },
    /// The timestamp is not a float, or is NaN or infinite.
    #[error("invalid timestamp {value:?}")]
    InvalidTimestamp {
        /// The timestamp token.
        value: String,
    },
    /// The value is followed by something other than a timestamp, an exemplar or the line end.
    #[error("expected a timestamp, an exemplar or end of line, found {found}")]
    ExpectedTimestampOrExemplar {
        /// What came instead.
        found: String,
    },
    /// The timestamp is followed by something other than an exemplar or the line end.
    #[error("expected an exemplar or end of line after the timestamp, found {found}")]
    ExpectedEndOfLine {
        /// What came instead.
        found: String,
    },
    /// An exemplar on a metric whose name ends in neither `_total` nor `_bucket`.
    #[error("metric {metric:?} does not support exemplars")]
    ExemplarNotAllowed {
        /// The metric name.
        metric: String,
    },
    /// The exemplar's labels not followed by one space and a value.
    #[error("expected a space and the exemplar value, found {found}")]
    MissingExemplarValue {
        /// What came instead.
        found: String,
    },
    /// The exemplar value is not a float in Prometheus's syntax.
    #[error("invalid exemplar value {value:?}")]
    InvalidExemplarValue {
        /// The value token.
        value: String,
    },
    /// The exemplar timestamp is not a float, or is NaN or infinite.
    #[error("invalid exemplar timestamp {value:?}")]
    InvalidExemplarTimestamp {
        /// The timestamp token.
        value: String,
    },
    /// Something after the exemplar's value or timestamp.
    #[error("expected end of line after the exemplar, found {found}")]
    ExpectedEndOfExemplar {
        /// What came instead.
        found: String,
    },
    /// A problem the text format shares: an invalid or out-of-range value, `__name__` in
    /// braces, a repeated label name, or a [`Limits`] violation.
    #[error(transparent)]
    Sample(#[from] parse::ParseErrorKind),
}

type Kind = ParseErrorKind;

/// Parses a whole OpenMetrics body as Prometheus 3 does ([`parse_with`] with
/// [`Dialect::Prometheus3`]).
pub fn parse(input: &str, limits: &Limits) -> Result<Exposition, ParseError> {
    parse_with(input, limits, Dialect::Prometheus3)
}

/// What the parse of one body carries from line to line.
struct State {
    dialect: Dialect,
    /// The type of the most recent `# TYPE` line (for [`parse::normalize_label`]).
    current_type: Option<MetricType>,
    normalized: parse::Normalized,
}

/// Parses a whole OpenMetrics body in `dialect`.
///
/// Returns every sample and `# TYPE`, and the count of storable exemplars, or the first
/// problem found (see the module documentation). Never panics.
pub fn parse_with(
    input: &str,
    limits: &Limits,
    dialect: Dialect,
) -> Result<Exposition, ParseError> {
    let mut out = Exposition::default();
    let mut state = State {
        dialect,
        current_type: None,
        normalized: parse::Normalized::default(),
    };
    let mut rest = input;
    let mut line = 1usize;
    loop {
        let (text, after) = match rest.split_once('\n') {
            Some((text, after)) => (text, Some(after)),
            None => (rest, None),
        };
        if text == EOF_LINE {
            return match after {
                Some(after) if !after.is_empty() => Err(ParseError {
                    line: line + 1,
                    kind: Kind::DataAfterEof,
                }),
                _ => Ok(out),
            };
        }
        let Some(after) = after else {
            return Err(ParseError {
                line,
                kind: Kind::MissingEof,
            });
        };
        parse_line(text, limits, &mut out, &mut state).map_err(|kind| ParseError { line, kind })?;
        rest = after;
        line += 1;
    }
}

/// One line other than `# EOF`, without its `\n`.
fn parse_line(
    text: &str,
    limits: &Limits,
    out: &mut Exposition,
    state: &mut State,
) -> Result<(), Kind> {
    match text.as_bytes().first() {
        Some(b'#') => metadata(text, out, state),
        Some(&c) if is_name_start(c) || (c == b'{' && state.dialect == Dialect::Prometheus3) => {
            let (mut sample, exemplar) = sample(text, state.dialect)?;
            for l in &mut sample.labels {
                parse::normalize_label(state.dialect, state.current_type, l, &mut state.normalized);
            }
            check_label_names(&sample.labels)?;
            check_limits(&sample, limits, out.samples.len())?;
            if matches!(exemplar, Some(Some(_))) {
                out.exemplars += 1;
            }
            out.samples.push(sample);
            Ok(())
        }
        _ => Err(Kind::UnexpectedLineStart {
            found: Cursor::new(text, state.dialect).found(),
        }),
    }
}

/// A `# HELP`, `# TYPE` or `# UNIT` line.
fn metadata(text: &str, out: &mut Exposition, state: &mut State) -> Result<(), Kind> {
    let invalid = || Kind::InvalidComment {
        found: format!("{:?}", snippet(text)),
    };
    let rest = text.strip_prefix("# ").ok_or_else(invalid)?;
    let (keyword, rest) = ["HELP", "TYPE", "UNIT"]
        .into_iter()
        .find_map(|k| {
            rest.strip_prefix(k)
                .and_then(|r| r.strip_prefix(' '))
                .map(|r| (k, r))
        })
        .ok_or_else(invalid)?;
    let mut c = Cursor::new(rest, state.dialect);
    let name = if state.dialect == Dialect::Prometheus3 && c.peek() == Some(b'"') {
        // A quoted name, kept as written between the quotes (as Prometheus keeps it).
        c.quoted().ok_or_else(|| Kind::MissingMetadataName {
            keyword,
            found: "'\"'".into(),
        })?
    } else {
        if !c.peek().is_some_and(is_name_start) {
            let found = c.found();
            return Err(Kind::MissingMetadataName { keyword, found });
        }
        c.take_while(is_name_char)
    };
    if !c.eat(b' ') {
        let found = c.found();
        return Err(Kind::MissingMetadataText { keyword, found });
    }
    let text = c.rest();
    match keyword {
        "TYPE" => {
            let ty = metric_type(text)?;
            out.types.insert(name.to_owned(), ty);
            state.current_type = Some(ty);
        }
        "UNIT" => {
            check_unit(name, text)?;
            out.units.insert(name.to_owned(), text.to_owned());
        }
        _ => {
            out.help
                .insert(name.to_owned(), parse::unescape_help(text, true));
        }
    }
    Ok(())
}

fn metric_type(text: &str) -> Result<MetricType, Kind> {
    Ok(match text {
        "counter" => MetricType::Counter,
        "gauge" => MetricType::Gauge,
        "histogram" => MetricType::Histogram,
        "gaugehistogram" => MetricType::Gaugehistogram,
        "summary" => MetricType::Summary,
        "info" => MetricType::Info,
        "stateset" => MetricType::Stateset,
        "unknown" => MetricType::Unknown,
        other => {
            return Err(Kind::InvalidMetricType {
                found: snippet(other),
            });
        }
    })
}

/// An empty unit is fine; otherwise `name` must end in `_<unit>`.
fn check_unit(name: &str, unit: &str) -> Result<(), Kind> {
    let ok = unit.is_empty()
        || name
            .strip_suffix(unit)
            .is_some_and(|stem| stem.ends_with('_'));
    if ok {
        Ok(())
    } else {
        Err(Kind::UnitNotSuffix {
            metric: snippet(name),
            unit: snippet(unit),
        })
    }
}

/// An exemplar after a sample: `None` inside when it is well-formed but not storable.
type Stored = Option<Box<ParsedExemplar>>;

/// A sample line, and its exemplar if it had one.
fn sample(text: &str, dialect: Dialect) -> Result<(ParsedSample, Option<Stored>), Kind> {
    let mut c = Cursor::new(text, dialect);
    let mut name = (c.peek() != Some(b'{')).then(|| c.take_while(is_name_char).to_owned());
    let mut labels = Vec::new();
    if c.eat(b'{') {
        let (quoted, pairs) = c.labels(false)?;
        if let Some(q) = quoted {
            if name.is_some() {
                return Err(Kind::Sample(parse::ParseErrorKind::MetricNameAlreadySet {
                    name: snippet(q),
                }));
            }
            name = Some(unescape(q));
        }
        for (label, raw) in pairs {
            // A quoted label name is unescaped as a value is (a bare one has no backslash).
            labels.push(Label::new(unescape(label), unescape(raw)));
        }
    }
    let Some(name) = name else {
        return Err(Kind::Sample(parse::ParseErrorKind::MetricNameNotSet));
    };
    let Some(raw) = c.token() else {
        let found = c.found();
        return Err(Kind::MissingValue { found });
    };
    let value = value(raw)?;
    let (timestamp_ms, exemplar) = c.after_value(&name)?;
    let sample = ParsedSample {
        exemplar: exemplar.clone().flatten(),
        ..ParsedSample::new(name, labels, value, timestamp_ms)
    };
    Ok((sample, exemplar))
}

/// A sample value, with the text format's syntax and errors.
fn value(raw: &str) -> Result<f64, Kind> {
    parse_go_float(raw).map_err(|e| {
        let value = snippet(raw);
        Kind::Sample(match e {
            FloatError::Syntax => parse::ParseErrorKind::InvalidValue { value },
            FloatError::Range => parse::ParseErrorKind::ValueOutOfRange { value },
        })
    })
}

/// A timestamp in float seconds as Prometheus turns it into milliseconds: `int64(s * 1000)`.
/// `None` for a syntax error, an overflowing literal, NaN or an infinity.
fn seconds_to_ms(raw: &str) -> Option<i64> {
    let seconds = parse_go_float(raw).ok().filter(|s| s.is_finite())?;
    Some(go_f64_to_i64(seconds * 1000.0))
}

/// Go's `int64(f)` for a finite `f` on amd64: truncation toward zero, and `i64::MIN` for
/// anything outside the `i64` range (the CPU's "integer indefinite" value).
fn go_f64_to_i64(f: f64) -> i64 {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if (-TWO_63..TWO_63).contains(&f) {
        f as i64
    } else {
        i64::MIN
    }
}

/// Whether Prometheus would store an exemplar with these (name, still-escaped value) labels:
/// labels with empty values removed, no repeated name, and at most
/// [`EXEMPLAR_MAX_LABEL_SET_CHARS`] characters in all.
fn exemplar_storable(labels: &[(&str, &str)]) -> bool {
    let kept: Vec<&(&str, &str)> = labels.iter().filter(|(_, v)| !v.is_empty()).collect();
    let mut names = HashSet::with_capacity(kept.len());
    if !kept.iter().all(|(n, _)| names.insert(*n)) {
        return false;
    }
    let chars: usize = kept
        .iter()
        .map(|(n, v)| n.chars().count() + v.chars().count())
        .sum();
    chars <= EXEMPLAR_MAX_LABEL_SET_CHARS
}

/// A position in one line (which has no `\n`).
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
    dialect: Dialect,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str, dialect: Dialect) -> Self {
        Cursor {
            text,
            pos: 0,
            dialect,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn rest(&self) -> &'a str {
        self.text.get(self.pos..).unwrap_or_default()
    }

    /// Consumes `b` if it is next.
    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn take_while(&mut self, pred: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&pred) {
            self.pos += 1;
        }
        self.text.get(start..self.pos).unwrap_or_default()
    }

    /// One space and a non-empty run of characters other than space and NUL (the lexer's
    /// `{S}[^ \n]+`), or `None` without moving.
    fn token(&mut self) -> Option<&'a str> {
        let first = self.text.as_bytes().get(self.pos + 1).copied();
        if self.peek() != Some(b' ') || matches!(first, None | Some(b' ' | 0)) {
            return None;
        }
        self.pos += 1;
        Some(self.take_while(|c| c != b' ' && c != 0))
    }

    fn starts_exemplar(&self) -> bool {
        self.rest().starts_with(EXEMPLAR_START)
    }

    /// Describes the character at `pos` for an error message.
    fn found(&self) -> String {
        match self.rest().chars().next() {
            None => "end of line".to_owned(),
            Some(c) => format!("{c:?}"),
        }
    }

    /// Describes the next token (after one space, up to the next space) for an error message.
    fn found_token(&self) -> String {
        let rest = self.rest();
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        match rest.split(' ').next() {
            Some(token) if !token.is_empty() => format!("{:?}", snippet(token)),
            _ => self.found(),
        }
    }

    /// The inside of `{…}` (at the first character after `{`) through the closing `}`, as
    /// (name, still-escaped value) pairs. In the Prometheus 3 grammar a label name may be
    /// quoted (returned still escaped), a quoted string followed by `,` or `}` is the metric
    /// name (returned apart, still escaped; not in an exemplar), and a trailing comma is
    /// allowed.
    #[allow(clippy::type_complexity)]
    fn labels(
        &mut self,
        exemplar: bool,
    ) -> Result<(Option<&'a str>, Vec<(&'a str, &'a str)>), Kind> {
        let three = self.dialect == Dialect::Prometheus3;
        let mut out = Vec::new();
        let mut metric = None;
        if self.eat(b'}') {
            return Ok((metric, out));
        }
        loop {
            let name = if three && self.peek() == Some(b'"') {
                let q = self.quoted().ok_or_else(|| Kind::UnterminatedLabelValue {
                    label: String::new(),
                })?;
                if !exemplar && matches!(self.peek(), Some(b',' | b'}')) {
                    if metric.is_some() {
                        return Err(Kind::Sample(parse::ParseErrorKind::MetricNameAlreadySet {
                            name: snippet(q),
                        }));
                    }
                    metric = Some(q);
                    if self.eat(b'}') || (self.eat(b',') && self.eat(b'}')) {
                        return Ok((metric, out));
                    }
                    continue;
                }
                q
            } else if self.peek().is_some_and(is_label_start) {
                self.take_while(is_label_char)
            } else {
                let found = self.found();
                return Err(Kind::ExpectedLabelName { found });
            };
            if !self.eat(b'=') {
                let (label, found) = (snippet(name), self.found());
                return Err(Kind::ExpectedEquals { label, found });
            }
            if self.peek() != Some(b'"') {
                let (label, found) = (snippet(name), self.found());
                return Err(Kind::ExpectedLabelValue { label, found });
            }
            let raw = self.quoted().ok_or_else(|| Kind::UnterminatedLabelValue {
                label: snippet(name),
            })?;
            out.push((name, raw));
            if self.eat(b'}') {
                return Ok((metric, out));
            }
            if !self.eat(b',') {
                let found = self.found();
                return Err(Kind::ExpectedCommaOrBrace { found });
            }
            if three && self.eat(b'}') {
                return Ok((metric, out));
            }
        }
    }

    /// A double-quoted value (at the opening quote), still escaped; `None` if the line ends
    /// first. A backslash always takes the next byte with it.
    fn quoted(&mut self) -> Option<&'a str> {
        self.pos += 1;
        let start = self.pos;
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' => {
                    self.text.as_bytes().get(self.pos + 1)?;
                    self.pos += 2;
                }
                _ => self.pos += 1,
            }
        }
        let raw = self.text.get(start..self.pos)?;
        self.pos += 1;
        Some(raw)
    }

    /// What may follow a sample's value: nothing, a timestamp, an exemplar, or both (in that
    /// order). Returns the timestamp in milliseconds and, when there was an exemplar, whether
    /// it is storable.
    fn after_value(&mut self, metric: &str) -> Result<(Option<i64>, Option<Stored>), Kind> {
        if self.starts_exemplar() {
            return Ok((None, Some(self.exemplar(metric)?)));
        }
        if self.at_end() {
            return Ok((None, None));
        }
        let Some(raw) = self.token() else {
            let found = self.found();
            return Err(Kind::ExpectedTimestampOrExemplar { found });
        };
        let ms = seconds_to_ms(raw).ok_or_else(|| Kind::InvalidTimestamp {
            value: snippet(raw),
        })?;
        if self.starts_exemplar() {
            return Ok((Some(ms), Some(self.exemplar(metric)?)));
        }
        if !self.at_end() {
            let found = self.found_token();
            return Err(Kind::ExpectedEndOfLine { found });
        }
        Ok((Some(ms), None))
    }

    /// An exemplar (at ` # {`) through the end of the line, kept when it is storable.
    fn exemplar(&mut self, metric: &str) -> Result<Stored, Kind> {
        // Prometheus 2 took exemplars only on `_total` and `_bucket` samples; 3 on any.
        if self.dialect == Dialect::Prometheus2
            && !(metric.ends_with("_total") || metric.ends_with("_bucket"))
        {
            return Err(Kind::ExemplarNotAllowed {
                metric: snippet(metric),
            });
        }
        self.pos += EXEMPLAR_START.len();
        let (_, labels) = self.labels(true)?;
        let Some(raw) = self.token() else {
            let found = self.found();
            return Err(Kind::MissingExemplarValue { found });
        };
        let Ok(value) = parse_go_float(raw) else {
            return Err(Kind::InvalidExemplarValue {
                value: snippet(raw),
            });
        };
        let mut timestamp_ms = None;
        if !self.at_end() {
            let Some(raw) = self.token() else {
                let found = self.found();
                return Err(Kind::ExpectedEndOfExemplar { found });
            };
            timestamp_ms = seconds_to_ms(raw);
            if timestamp_ms.is_none() {
                return Err(Kind::InvalidExemplarTimestamp {
                    value: snippet(raw),
                });
            }
            if !self.at_end() {
                let found = self.found_token();
                return Err(Kind::ExpectedEndOfExemplar { found });
            }
        }
        if !exemplar_storable(&labels) {
            return Ok(None);
        }
        // Kept as Prometheus 2.42 stores it: empty-valued labels removed, sorted by name,
        // values as written (not unescaped).
        let mut labels: Vec<Label> = labels
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, v)| Label::new(*n, *v))
            .collect();
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Some(Box::new(ParsedExemplar {
            labels,
            value,
            timestamp_ms,
        })))
    }
}

#[cfg(test)]
mod tests;
