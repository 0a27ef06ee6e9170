//! Parser for the Prometheus text exposition format, 0.0.4 and 1.0.0
//! (`Content-Type: text/plain`: see [`super::negotiate`]; OpenMetrics bodies go to
//! [`super::openmetrics`], which produces the same [`Exposition`] and shares the value, label
//! and limit checks below).
//!
//! The grammar follows Prometheus's `model/textparse` (`promlex.l` + `promparse.go`) in one of
//! two [`Dialect`]s, so a scrape body is accepted here exactly when that Prometheus would
//! accept it, with the few deliberate deviations listed below. The Prometheus 2 grammar is
//! described first; the Prometheus 3 additions follow it.
//!
//! # Accepted subset
//!
//! * Lines are separated by `\n`; a `\r` directly before a `\n` is ignored (see deviations).
//!   The last line needs no line break. Blank lines and lines of only spaces/tabs are skipped.
//!   Spaces and tabs are allowed before any token.
//! * `# HELP <name> <text>` and `# TYPE <name> <type>`, where `<name>` is (in the Prometheus 2
//!   grammar)
//!   `[a-zA-Z_:][a-zA-Z0-9_:]*` and `<type>` is exactly one of `counter`, `gauge`,
//!   `histogram`, `summary`, `untyped` (`untyped` maps to [`MetricType::Unknown`]). As in
//!   Prometheus, exactly one character after the name is the separator and the rest of the line
//!   is the text, so `# TYPE m  counter` (two spaces) and `# TYPE m counter ` (trailing space)
//!   are invalid types, and `# HELP m` with nothing after the name is an error. HELP text is
//!   validated but not kept. A later `# TYPE` for the same name replaces an earlier one.
//!   Every other line starting with `#` (including `#HELP`, `# EOF`, `# foo`) is a comment.
//! * Samples: `name [{labels}] value [timestamp]`.
//!   - Label names are `[a-zA-Z_][a-zA-Z0-9_]*`; values are double-quoted. Pairs may be
//!     separated by a comma *or only by whitespace* (Prometheus' lexer allows this), and one
//!     trailing comma is allowed. `{}` is allowed.
//!   - Label value escapes: `\\` → `\`, `\"` → `"`, `\n` → newline. Any other escape (`\t`,
//!     `\x`, …) is kept literally, backslash included, as Prometheus' `strings.Replacer` does.
//!     A raw line break inside a quoted value is accepted (Prometheus' lexer accepts it too);
//!     a backslash directly before a raw line break or the end of input is an error.
//!   - The value is any run of characters other than space, tab, `{` and line break, parsed
//!     like Go's `strconv.ParseFloat` restricted to pre-Go-1.13 syntax (as Prometheus does):
//!     decimal floats with optional sign and exponent, `NaN` (any case, unsigned), `Inf` /
//!     `Infinity` (any case, optional sign). Hex floats and `_` separators are rejected, and a
//!     finite literal that overflows to ±Inf (`1e400`) is an error, as `ErrRange` is in Go.
//!     Every NaN is stored as Prometheus' canonical "normal NaN" bit pattern
//!     `0x7ff8000000000001`, never as a staleness marker.
//!   - The timestamp is milliseconds, ASCII digits only: Prometheus 2.x's lexer
//!     (`<sTimestamp>{D}+`) has no sign, so a negative or `+`-signed timestamp is an error.
//!     It must fit in `i64`.
//! * Only spaces/tabs may follow the value or the timestamp.
//!
//! # Prometheus 3 ([`Dialect::Prometheus3`], the default)
//!
//! * Quoted names (UTF-8, escapes as in label values): a sample line may start with `{` when
//!   its metric name is the first quoted string inside the braces not followed by `=`
//!   (`{"my.metric",le="1"} 3`; a second such string, or one after an unquoted name, is an
//!   error, and so is a line without a name); label names may be quoted (`m{"a.b"="c"} 1`);
//!   `# HELP` and `# TYPE` take a quoted name (kept as written between the quotes, as
//!   Prometheus keeps it).
//! * `le` while the current type is `histogram`, and `quantile` while it is `summary`, are
//!   rewritten to Go's float form ([`normalize_label`]): `le="1"` becomes `le="1.0"`. The current
//!   type is that of the most recent `# TYPE` line, whichever family it named.
//!
//! # Semantic checks and limits
//!
//! A label named `__name__` inside braces and a label name repeated within one sample are
//! errors (Prometheus rejects these series at append time; here the whole parse fails).
//! [`Limits`] mirror `sample_limit`, `label_limit`, `label_name_length_limit` and
//! `label_value_length_limit`, checked like Prometheus' `verifyLabelLimits`: the metric name
//! counts as the `__name__` label, so it adds one to the label count, `__name__` (8 bytes)
//! is subject to the name-length limit, and the metric name to the value-length limit. Lengths
//! are in bytes. Limits are checked here before relabelling and before target labels are
//! added, unlike in Prometheus, which checks after both.
//!
//! The first problem aborts the parse with a [`ParseError`] carrying its 1-based line number,
//! just as one bad line fails a whole Prometheus scrape.
//!
//! # Deviations from Prometheus 2.x
//!
//! * `\r\n` is accepted as a line break. Prometheus keeps the `\r` as part of the value,
//!   timestamp or TYPE text and so rejects such bodies.
//! * A NUL character at the start of a line makes Prometheus' lexer stop silently, treating
//!   it as end of input and dropping the rest of the body. Here it is an error.
//! * A label named `__name__` inside braces fails the body in both dialects (Prometheus 3
//!   would fail the sample's append instead).
//!
//! # No-panic invariant
//!
//! [`parse`] never panics, whatever the input: all byte access goes through `get`, all slicing
//! happens at ASCII delimiters through `str::get`, and no `unwrap`/`expect` is used. Strings
//! copied into errors are truncated to [`ERROR_SNIPPET_CHARS`] characters, so an error stays
//! small even for very long input. The unit tests run it on every prefix, every single-byte
//! deletion and many single-byte replacements of a realistic exposition.

use std::collections::{HashMap, HashSet};

use uplink_shared::remote_write::{Label, MetricType};

/// Bit pattern of Prometheus' canonical NaN (`value.NormalNaN`) given to every NaN sample.
pub(super) const NORMAL_NAN_BITS: u64 = 0x7ff8_0000_0000_0001;

/// Longest (in characters) a piece of input copied into a [`ParseErrorKind`] can be; longer
/// text is cut and ends in `…`.
pub const ERROR_SNIPPET_CHARS: usize = 64;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedSample {
    /// Metric name (what Prometheus stores as `__name__`).
    pub name: String,
    /// Labels inside the braces, unescaped, in input order; never contains `__name__`, and
    /// names are unique.
    pub labels: Vec<Label>,
    /// Sample value. NaN is always Prometheus' normal NaN (`0x7ff8000000000001`).
    pub value: f64,
    /// Explicit timestamp in milliseconds since the epoch, if the line had one.
    pub timestamp_ms: Option<i64>,
    /// The exemplar of the sample, when the format has them and Prometheus would store it.
    pub exemplar: Option<Box<ParsedExemplar>>,
    /// A native histogram sample (protobuf format only); `value` is then unused.
    pub histogram: Option<Box<uplink_shared::remote_write::Histogram>>,
    /// The series' created (start) timestamp, ms (protobuf format only).
    pub created_ms: Option<i64>,
}

impl ParsedSample {
    /// A float sample, without exemplar, histogram or created timestamp.
    pub fn new(name: String, labels: Vec<Label>, value: f64, timestamp_ms: Option<i64>) -> Self {
        ParsedSample {
            name,
            labels,
            value,
            timestamp_ms,
            exemplar: None,
            histogram: None,
            created_ms: None,
        }
    }
}

/// An exemplar as scraped.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedExemplar {
    /// Sorted by name, no empty values.
    pub labels: Vec<Label>,
    pub value: f64,
    /// Its own timestamp; without one it takes the sample's (as in Prometheus).
    pub timestamp_ms: Option<i64>,
}

/// Everything a successfully parsed body contains.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    /// Samples in input order.
    pub samples: Vec<ParsedSample>,
    /// Metric family name → type from `# TYPE` lines (`untyped` is [`MetricType::Unknown`]).
    pub types: HashMap<String, MetricType>,
    /// Metric family name → text of its `# HELP` line, unescaped.
    pub help: HashMap<String, String>,
    /// Metric family name → its `# UNIT` (OpenMetrics only).
    pub units: HashMap<String, String>,
    /// Exemplars seen that Prometheus would store (OpenMetrics only; see
    /// [`super::openmetrics`]). They are validated and counted, not kept.
    pub exemplars: usize,
}

/// Per-scrape limits; `0` means unlimited for each of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Most samples a body may contain (Prometheus `sample_limit`).
    pub max_samples: usize,
    /// Most labels a sample may have, the metric name counting as one (`label_limit`).
    pub max_label_names: usize,
    /// Longest label name in bytes, `__name__` included (`label_name_length_limit`).
    pub max_label_name_len: usize,
    /// Longest label value in bytes, the metric name included (`label_value_length_limit`).
    pub max_label_value_len: usize,
}

/// Why a body was rejected, and on which line.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {kind}")]
pub struct ParseError {
    /// 1-based line number where the problem was found (for per-sample checks such as limits
    /// and duplicate labels: the line the sample starts on).
    pub line: usize,
    /// What is wrong.
    pub kind: ParseErrorKind,
}

/// The kinds of problem [`parse`] reports. `found` fields describe the offending input: a
/// quoted character, a quoted token, `end of line` or `end of input`.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseErrorKind {
    /// A line starts with something other than a metric name, `#`, or a line break.
    #[error("expected a metric name, a comment or a blank line, found {found}")]
    UnexpectedLineStart {
        /// What the line starts with.
        found: String,
    },
    /// `# HELP` or `# TYPE` is not followed by a valid metric name.
    #[error("expected a metric name after `# {keyword}`, found {found}")]
    MissingMetadataName {
        /// `HELP` or `TYPE`.
        keyword: &'static str,
        /// What came instead of the name.
        found: String,
    },
    /// `# HELP name` or `# TYPE name` with nothing after the name.
    #[error("expected text after the metric name in `# {keyword}`")]
    MissingMetadataText {
        /// `HELP` or `TYPE`.
        keyword: &'static str,
    },
    /// The name in `# HELP`/`# TYPE` is followed by a non-ASCII character, which Prometheus
    /// would split into invalid UTF-8.
    #[error("expected a separator after the metric name in `# {keyword}`, found {found:?}")]
    InvalidMetadataSeparator {
        /// `HELP` or `TYPE`.
        keyword: &'static str,
        /// The character after the name.
        found: char,
    },
    /// `# TYPE` names a type other than counter, gauge, histogram, summary or untyped.
    #[error("invalid metric type {found:?}")]
    InvalidMetricType {
        /// The type text, exactly as given (after the one separator character).
        found: String,
    },
    /// Inside braces, something other than a label name or `}`.
    #[error("expected a label name or `}}`, found {found}")]
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
    /// `=` not followed by a double-quoted string.
    #[error("expected a double-quoted value for label {label:?}, found {found}")]
    ExpectedLabelValue {
        /// The label name.
        label: String,
        /// What came instead of `"`.
        found: String,
    },
    /// A label value whose closing quote is missing, or with a backslash right before a line
    /// break or the end of input.
    #[error("unterminated value for label {label:?}")]
    UnterminatedLabelValue {
        /// The label name.
        label: String,
    },
    /// The same label name twice in one sample.
    #[error("label name {name:?} appears more than once")]
    DuplicateLabelName {
        /// The repeated name.
        name: String,
    },
    /// A label named `__name__` inside braces.
    #[error("label `__name__` is not allowed inside braces")]
    NameLabelInBraces,
    /// A line whose braces hold no quoted metric name, and none before them (Prometheus 3).
    #[error("metric name not set")]
    MetricNameNotSet,
    /// A second metric name in one line (Prometheus 3's quoted names).
    #[error("metric name already set, found {name:?}")]
    MetricNameAlreadySet {
        /// The second name.
        name: String,
    },
    /// The metric name (and labels) are not followed by a value.
    #[error("expected a sample value, found {found}")]
    MissingValue {
        /// What came instead of the value.
        found: String,
    },
    /// The value is not a float in Prometheus' syntax.
    #[error("invalid sample value {value:?}")]
    InvalidValue {
        /// The value token.
        value: String,
    },
    /// A finite value literal too large for `f64` (Go's `ErrRange`).
    #[error("sample value {value:?} is out of range")]
    ValueOutOfRange {
        /// The value token.
        value: String,
    },
    /// Something other than digits where the timestamp goes (includes signed timestamps).
    #[error("invalid timestamp, found {found}")]
    InvalidTimestamp {
        /// The offending token.
        found: String,
    },
    /// A timestamp too large for `i64`.
    #[error("timestamp {value:?} is out of range")]
    TimestampOutOfRange {
        /// The timestamp digits.
        value: String,
    },
    /// Extra content after the timestamp (or after a label value's closing brace and value).
    #[error("expected end of line after timestamp, found {found}")]
    ExpectedEndOfLine {
        /// What came instead.
        found: String,
    },
    /// More samples than [`Limits::max_samples`].
    #[error("sample limit of {limit} exceeded")]
    SampleLimitExceeded {
        /// The limit.
        limit: usize,
    },
    /// More labels (metric name included) than [`Limits::max_label_names`].
    #[error("metric {metric:?} has {count} labels, exceeding the label limit of {limit}")]
    LabelLimitExceeded {
        /// The metric name.
        metric: String,
        /// Its label count, metric name included.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A label name longer than [`Limits::max_label_name_len`] bytes.
    #[error("label name {name:?} is {len} bytes long, exceeding the limit of {limit}")]
    LabelNameTooLong {
        /// The label name (`__name__` for the metric name).
        name: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A label value longer than [`Limits::max_label_value_len`] bytes.
    #[error("value of label {name:?} is {len} bytes long, exceeding the limit of {limit}")]
    LabelValueTooLong {
        /// The label name (`__name__` for the metric name).
        name: String,
        /// The value's length in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

/// Which Prometheus release a body is read like.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dialect {
    /// Prometheus 3: quoted UTF-8 metric and label names, and `le` (in a histogram) and
    /// `quantile` (in a summary) values rewritten to Go's float form ([`normalize_label`]).
    #[default]
    Prometheus3,
    /// Prometheus 2.42: legacy names only, label values as exposed.
    Prometheus2,
}

/// Prometheus 3's `normalizeFloatsInLabelValues`: under the [`Dialect::Prometheus3`] grammar,
/// the value of `le` while the current `# TYPE` is `histogram`, and of `quantile` while it is
/// `summary`, becomes Go's float form (`1` → `1.0`, `1e3` → `1000.0`; a value Go cannot parse
/// stays). The current type is that of the most recent `# TYPE` line, whichever family it
/// named, as in Prometheus.
pub fn normalize_label(
    dialect: Dialect,
    current: Option<MetricType>,
    label: &mut Label,
    memo: &mut Normalized,
) {
    if dialect != Dialect::Prometheus3 {
        return;
    }
    let applies = match label.name.as_str() {
        "le" => current == Some(MetricType::Histogram),
        "quantile" => current == Some(MetricType::Summary),
        _ => false,
    };
    if applies {
        memo.rewrite(&mut label.value);
    }
}

/// The rewritten forms of the `le` and `quantile` values a body used last: a body repeats the
/// same few bounds for every series of a histogram or summary, so each is parsed and formatted
/// once, not once per series.
#[derive(Debug, Default)]
pub struct Normalized {
    seen: Vec<(String, Option<String>)>,
}

impl Normalized {
    /// How many distinct values are remembered (more are rewritten without being kept).
    const CAPACITY: usize = 64;

    fn rewrite(&mut self, value: &mut String) {
        if let Some((_, to)) = self.seen.iter().find(|(from, _)| from == value) {
            if let Some(to) = to {
                value.clone_from(to);
            }
            return;
        }
        let to = super::gofloat::normalize(value);
        if self.seen.len() < Self::CAPACITY {
            self.seen.push((value.clone(), to.clone()));
        }
        if let Some(to) = to {
            *value = to;
        }
    }
}

/// Parses a whole text-format body as Prometheus 3 does ([`parse_with`] with
/// [`Dialect::Prometheus3`]).
pub fn parse(input: &str, limits: &Limits) -> Result<Exposition, ParseError> {
    parse_with(input, limits, Dialect::Prometheus3)
}

/// Parses a whole text-format body in `dialect`.
///
/// Returns every sample and `# TYPE` in the body, or the first problem found (see the module
/// documentation for the grammar and [`ParseErrorKind`] for the problems). Never panics.
pub fn parse_with(
    input: &str,
    limits: &Limits,
    dialect: Dialect,
) -> Result<Exposition, ParseError> {
    let mut p = Parser {
        src: input,
        bytes: input.as_bytes(),
        pos: 0,
        line: 1,
        dialect,
        current_type: None,
        normalized: Normalized::default(),
    };
    let mut out = Exposition::default();
    loop {
        p.skip_ws();
        if p.at_eol() {
            if p.peek().is_none() {
                return Ok(out);
            }
            p.consume_eol();
            continue;
        }
        match p.peek() {
            Some(b'#') => p.comment(&mut out)?,
            Some(c) if is_name_start(c) || (c == b'{' && dialect == Dialect::Prometheus3) => {
                let line = p.line;
                let sample = p.sample()?;
                check_limits(&sample, limits, out.samples.len())
                    .map_err(|kind| ParseError { line, kind })?;
                out.samples.push(sample);
            }
            _ => return Err(p.err(ParseErrorKind::UnexpectedLineStart { found: p.found() })),
        }
    }
}

pub(super) fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

pub(super) fn is_name_char(c: u8) -> bool {
    is_name_start(c) || c.is_ascii_digit()
}

pub(super) fn is_label_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

pub(super) fn is_label_char(c: u8) -> bool {
    is_label_start(c) || c.is_ascii_digit()
}

/// Cuts `s` to [`ERROR_SNIPPET_CHARS`] characters for inclusion in an error.
pub(super) fn snippet(s: &str) -> String {
    match s.char_indices().nth(ERROR_SNIPPET_CHARS) {
        Some((i, _)) => format!("{}…", s.get(..i).unwrap_or_default()),
        None => s.to_owned(),
    }
}

struct Parser<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// 1-based line of `pos`.
    line: usize,
    dialect: Dialect,
    /// The type of the most recent `# TYPE` line (for [`normalize_label`]).
    current_type: Option<MetricType>,
    normalized: Normalized,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<u8> {
        self.bytes.get(self.pos.saturating_add(offset)).copied()
    }

    fn err(&self, kind: ParseErrorKind) -> ParseError {
        ParseError {
            line: self.line,
            kind,
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// At end of input, `\n`, or `\r\n`.
    fn at_eol(&self) -> bool {
        match self.peek() {
            None | Some(b'\n') => true,
            Some(b'\r') => self.peek_at(1) == Some(b'\n'),
            Some(_) => false,
        }
    }

    /// Consumes a line break (`\n` or `\r\n`) if there is one.
    fn consume_eol(&mut self) {
        if self.peek() == Some(b'\r') && self.peek_at(1) == Some(b'\n') {
            self.pos += 1;
        }
        if self.peek() == Some(b'\n') {
            self.pos += 1;
            self.line += 1;
        }
    }

    /// Advances over bytes matching `pred` and returns them.
    fn take_while(&mut self, pred: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&pred) {
            self.pos += 1;
        }
        self.src.get(start..self.pos).unwrap_or_default()
    }

    /// Advances to the end of the line (before `\n`/`\r\n`) and returns what was skipped.
    fn rest_of_line(&mut self) -> &'a str {
        let start = self.pos;
        while !self.at_eol() {
            self.pos += 1;
        }
        self.src.get(start..self.pos).unwrap_or_default()
    }

    /// The token at `pos` (up to whitespace or line break), without advancing.
    fn token_here(&self) -> &'a str {
        let mut end = self.pos;
        while let Some(c) = self.bytes.get(end) {
            if matches!(c, b' ' | b'\t' | b'\n')
                || (*c == b'\r' && self.bytes.get(end + 1) == Some(&b'\n'))
            {
                break;
            }
            end += 1;
        }
        self.src.get(self.pos..end).unwrap_or_default()
    }

    /// Describes the character at `pos` for an error message.
    fn found(&self) -> String {
        if self.peek().is_none() {
            return "end of input".to_owned();
        }
        if self.at_eol() {
            return "end of line".to_owned();
        }
        match self.src.get(self.pos..).and_then(|s| s.chars().next()) {
            Some(c) => format!("{c:?}"),
            None => "invalid position".to_owned(),
        }
    }

    /// Describes the token at `pos` for an error message.
    fn found_token(&self) -> String {
        if self.at_eol() {
            return self.found();
        }
        format!("{:?}", snippet(self.token_here()))
    }

    /// A line starting with `#` (at `pos`).
    fn comment(&mut self, out: &mut Exposition) -> Result<(), ParseError> {
        self.pos += 1;
        if matches!(self.peek(), Some(b' ' | b'\t')) {
            self.skip_ws();
            let rest = self.src.get(self.pos..).unwrap_or_default();
            let keyword = if rest.starts_with("HELP") {
                Some("HELP")
            } else if rest.starts_with("TYPE") {
                Some("TYPE")
            } else {
                None
            };
            if let Some(keyword) = keyword
                && matches!(self.peek_at(4), Some(b' ' | b'\t'))
            {
                self.pos += 4;
                return self.metadata(keyword, out);
            }
        }
        self.rest_of_line();
        self.consume_eol();
        Ok(())
    }

    /// The part of a `# HELP`/`# TYPE` line after the keyword's whitespace (at `pos`).
    fn metadata(&mut self, keyword: &'static str, out: &mut Exposition) -> Result<(), ParseError> {
        self.skip_ws();
        let name = if self.peek() == Some(b'"') && self.dialect == Dialect::Prometheus3 {
            // A quoted name, kept as written between the quotes (as Prometheus keeps it).
            let start = self.pos + 1;
            if self.quoted().is_none() {
                let found = self.found();
                return Err(self.err(ParseErrorKind::MissingMetadataName { keyword, found }));
            }
            self.src.get(start..self.pos - 1).unwrap_or_default()
        } else {
            if !self.peek().is_some_and(is_name_start) {
                let found = self.found();
                return Err(self.err(ParseErrorKind::MissingMetadataName { keyword, found }));
            }
            self.take_while(is_name_char)
        };
        let rest = self.rest_of_line();
        let mut chars = rest.chars();
        match chars.next() {
            None => return Err(self.err(ParseErrorKind::MissingMetadataText { keyword })),
            Some(c) if !c.is_ascii() => {
                return Err(
                    self.err(ParseErrorKind::InvalidMetadataSeparator { keyword, found: c })
                );
            }
            Some(_) => {}
        }
        let text = chars.as_str();
        if keyword == "TYPE" {
            let ty = match text {
                "counter" => MetricType::Counter,
                "gauge" => MetricType::Gauge,
                "histogram" => MetricType::Histogram,
                "summary" => MetricType::Summary,
                "untyped" => MetricType::Unknown,
                other => {
                    let found = snippet(other);
                    return Err(self.err(ParseErrorKind::InvalidMetricType { found }));
                }
            };
            out.types.insert(name.to_owned(), ty);
            self.current_type = Some(ty);
        } else {
            out.help.insert(name.to_owned(), unescape_help(text, false));
        }
        self.consume_eol();
        Ok(())
    }

    /// A sample line (at the first character of the metric name, or at the `{` of a line
    /// whose name is quoted inside the braces).
    fn sample(&mut self) -> Result<ParsedSample, ParseError> {
        let start_line = self.line;
        let mut name =
            (self.peek() != Some(b'{')).then(|| self.take_while(is_name_char).to_owned());
        self.skip_ws();
        let mut labels = Vec::new();
        if self.peek() == Some(b'{') {
            self.pos += 1;
            self.labels(&mut labels, &mut name)?;
            check_label_names(&labels).map_err(|kind| ParseError {
                line: start_line,
                kind,
            })?;
            self.skip_ws();
        }
        let Some(name) = name else {
            return Err(ParseError {
                line: start_line,
                kind: ParseErrorKind::MetricNameNotSet,
            });
        };

        if self.at_eol() || self.peek() == Some(b'{') {
            let found = self.found();
            return Err(self.err(ParseErrorKind::MissingValue { found }));
        }
        let raw = self.take_while(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'{'));
        // `take_while` stops only at `\n`; give back a `\r` that belongs to `\r\n`.
        let raw = match raw.strip_suffix('\r') {
            Some(r) if self.peek() == Some(b'\n') => {
                self.pos -= 1;
                r
            }
            _ => raw,
        };
        let value = parse_go_float(raw).map_err(|e| {
            let value = snippet(raw);
            self.err(match e {
                FloatError::Syntax => ParseErrorKind::InvalidValue { value },
                FloatError::Range => ParseErrorKind::ValueOutOfRange { value },
            })
        })?;

        self.skip_ws();
        let mut timestamp_ms = None;
        if !self.at_eol() {
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                let found = self.found_token();
                return Err(self.err(ParseErrorKind::InvalidTimestamp { found }));
            }
            let digits = self.take_while(|c| c.is_ascii_digit());
            match digits.parse::<i64>() {
                Ok(ts) => timestamp_ms = Some(ts),
                Err(_) => {
                    let value = snippet(digits);
                    return Err(self.err(ParseErrorKind::TimestampOutOfRange { value }));
                }
            }
            self.skip_ws();
            if !self.at_eol() {
                let found = self.found_token();
                return Err(self.err(ParseErrorKind::ExpectedEndOfLine { found }));
            }
        }
        self.consume_eol();
        for l in &mut labels {
            normalize_label(self.dialect, self.current_type, l, &mut self.normalized);
        }
        Ok(ParsedSample::new(name, labels, value, timestamp_ms))
    }

    /// The inside of `{…}` (at the first character after `{`), through the closing `}`.
    /// In the Prometheus 3 grammar, a quoted string followed by `,` or `}` is the metric
    /// name (`metric`, which must not be set yet), and a quoted string followed by `=` a
    /// label name.
    fn labels(
        &mut self,
        labels: &mut Vec<Label>,
        metric: &mut Option<String>,
    ) -> Result<(), ParseError> {
        loop {
            self.skip_ws();
            let quoted_name = match self.peek() {
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'"') if self.dialect == Dialect::Prometheus3 => {
                    let unterminated = ParseErrorKind::UnterminatedLabelValue {
                        label: String::new(),
                    };
                    let q = self.quoted().ok_or_else(|| self.err(unterminated))?;
                    self.skip_ws();
                    if matches!(self.peek(), Some(b',' | b'}')) {
                        if metric.is_some() {
                            return Err(self
                                .err(ParseErrorKind::MetricNameAlreadySet { name: snippet(&q) }));
                        }
                        *metric = Some(q);
                        if self.peek() == Some(b',') {
                            self.pos += 1;
                        }
                        continue;
                    }
                    Some(q)
                }
                Some(c) if is_label_start(c) => None,
                _ => {
                    let found = self.found();
                    return Err(self.err(ParseErrorKind::ExpectedLabelName { found }));
                }
            };
            let name = match quoted_name {
                Some(q) => q,
                None => self.take_while(is_label_char).to_owned(),
            };
            let name = name.as_str();
            self.skip_ws();
            if self.peek() != Some(b'=') {
                let (label, found) = (snippet(name), self.found());
                return Err(self.err(ParseErrorKind::ExpectedEquals { label, found }));
            }
            self.pos += 1;
            self.skip_ws();
            if self.peek() != Some(b'"') {
                let (label, found) = (snippet(name), self.found());
                return Err(self.err(ParseErrorKind::ExpectedLabelValue { label, found }));
            }
            let value = self.quoted().ok_or_else(|| {
                self.err(ParseErrorKind::UnterminatedLabelValue {
                    label: snippet(name),
                })
            })?;
            labels.push(Label::new(name, value));
            self.skip_ws();
            if self.peek() == Some(b',') {
                self.pos += 1;
            }
        }
    }

    /// A double-quoted label value (at the opening quote), unescaped; `None` if unterminated.
    /// Matches promlex's `\"(\\.|[^\\"])*\"`, where `.` is anything but a line break.
    fn quoted(&mut self) -> Option<String> {
        self.pos += 1;
        let start = self.pos;
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' => {
                    match self.peek_at(1)? {
                        b'\n' => return None,
                        _ => self.pos += 2,
                    }
                    continue;
                }
                b'\n' => self.line += 1,
                _ => {}
            }
            self.pos += 1;
        }
        let raw = self.src.get(start..self.pos)?;
        self.pos += 1;
        Some(unescape(raw))
    }
}

/// Replaces `\\`, `\"` and `\n`; keeps any other backslash sequence as it is.
/// HELP text unescaped in one pass as Prometheus does: `\\` and `\n`, and `\"` too in
/// OpenMetrics (`quotes`); any other backslash is kept.
pub(super) fn unescape_help(raw: &str, quotes: bool) -> String {
    if !raw.contains('\\') {
        return raw.to_owned();
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some('\\')) => out.push('\\'),
            ('\\', Some('n')) => out.push('\n'),
            ('\\', Some('"')) if quotes => out.push('"'),
            _ => {
                out.push(c);
                continue;
            }
        }
        chars.next();
    }
    out
}

pub(super) fn unescape(raw: &str) -> String {
    if !raw.contains('\\') {
        return raw.to_owned();
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some('n') => out.push('\n'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Rejects `__name__` and repeated names among the labels of one sample.
pub(super) fn check_label_names(labels: &[Label]) -> Result<(), ParseErrorKind> {
    if labels.iter().any(|l| l.name == "__name__") {
        return Err(ParseErrorKind::NameLabelInBraces);
    }
    let dup = if labels.len() <= 8 {
        labels.iter().enumerate().find_map(|(i, l)| {
            labels
                .get(..i)
                .unwrap_or_default()
                .iter()
                .any(|p| p.name == l.name)
                .then_some(&l.name)
        })
    } else {
        let mut seen = HashSet::with_capacity(labels.len());
        labels
            .iter()
            .find_map(|l| (!seen.insert(l.name.as_str())).then_some(&l.name))
    };
    match dup {
        Some(name) => Err(ParseErrorKind::DuplicateLabelName {
            name: snippet(name),
        }),
        None => Ok(()),
    }
}

/// Prometheus' `verifyLabelLimits` followed by `sample_limit`, for the sample that would be
/// number `already + 1`.
pub(super) fn check_limits(
    sample: &ParsedSample,
    limits: &Limits,
    already: usize,
) -> Result<(), ParseErrorKind> {
    let count = sample.labels.len().saturating_add(1);
    if limits.max_label_names > 0 && count > limits.max_label_names {
        return Err(ParseErrorKind::LabelLimitExceeded {
            metric: snippet(&sample.name),
            count,
            limit: limits.max_label_names,
        });
    }
    let all = std::iter::once(("__name__", sample.name.as_str())).chain(
        sample
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str())),
    );
    for (name, value) in all {
        let limit = limits.max_label_name_len;
        if limit > 0 && name.len() > limit {
            return Err(ParseErrorKind::LabelNameTooLong {
                name: snippet(name),
                len: name.len(),
                limit,
            });
        }
        let limit = limits.max_label_value_len;
        if limit > 0 && value.len() > limit {
            return Err(ParseErrorKind::LabelValueTooLong {
                name: snippet(name),
                len: value.len(),
                limit,
            });
        }
    }
    if limits.max_samples > 0 && already >= limits.max_samples {
        return Err(ParseErrorKind::SampleLimitExceeded {
            limit: limits.max_samples,
        });
    }
    Ok(())
}

pub(super) enum FloatError {
    Syntax,
    Range,
}

/// Go's `strconv.ParseFloat(s, 64)` restricted to pre-Go-1.13 syntax, as Prometheus uses it.
pub(super) fn parse_go_float(s: &str) -> Result<f64, FloatError> {
    let (negative, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if body.eq_ignore_ascii_case("inf") || body.eq_ignore_ascii_case("infinity") {
        return Ok(if negative {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        });
    }
    // Go accepts "nan" only without a sign.
    if s.eq_ignore_ascii_case("nan") {
        return Ok(f64::from_bits(NORMAL_NAN_BITS));
    }
    if !super::gofloat::is_decimal_float(body) {
        return Err(FloatError::Syntax);
    }
    let v: f64 = s.parse().map_err(|_| FloatError::Syntax)?;
    if v.is_infinite() {
        return Err(FloatError::Range);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: &str) -> Exposition {
        match parse(input, &Limits::default()) {
            Ok(e) => e,
            Err(e) => panic!("unexpected error for {input:?}: {e}"),
        }
    }

    fn err(input: &str) -> ParseError {
        err_with(input, &Limits::default())
    }

    fn err_with(input: &str, limits: &Limits) -> ParseError {
        match parse(input, limits) {
            Ok(e) => panic!("expected an error for {input:?}, got {e:?}"),
            Err(e) => e,
        }
    }

    fn one(input: &str) -> ParsedSample {
        let mut e = ok(input);
        assert_eq!(e.samples.len(), 1, "{input:?}");
        e.samples.remove(0)
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<Label> {
        pairs.iter().map(|(n, v)| Label::new(*n, *v)).collect()
    }

    const NODE: &str = r##"# HELP go_gc_duration_seconds A summary of the pause duration of garbage collection cycles.
# TYPE go_gc_duration_seconds summary
go_gc_duration_seconds{quantile="0"} 2.3e-05
go_gc_duration_seconds{quantile="0.25"} 3.1101e-05
go_gc_duration_seconds{quantile="1"} 0.000507634
go_gc_duration_seconds_sum 0.018364471
go_gc_duration_seconds_count 312
# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.
# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{cpu="0",mode="idle"} 123456.78
node_cpu_seconds_total{cpu="0",mode="iowait"} 12.5
node_cpu_seconds_total{cpu="1",mode="idle",} 123000
# HELP node_filesystem_avail_bytes Filesystem space available to non-root users in bytes.
# TYPE node_filesystem_avail_bytes gauge
node_filesystem_avail_bytes{device="/dev/sda1",fstype="ext4",mountpoint="/"} 4.2e+10
# HELP node_uname_info Labeled system information as provided by the uname system call.
# TYPE node_uname_info gauge
node_uname_info{domainname="(none)",machine="x86_64",nodename="host \"a\"",release="6.1.0-18-amd64",sysname="Linux",version="#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)"} 1
# HELP http_request_duration_seconds Latency. Escaped \\ and \n in help.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.05"} 24054
http_request_duration_seconds_bucket{le="0.1"} 33444
http_request_duration_seconds_bucket{le="+Inf"} 144320
http_request_duration_seconds_sum 53423
http_request_duration_seconds_count 144320
# A normal comment
#no space comment
# TYPE untyped_metric untyped
untyped_metric{path="C:\\dir",msg="é ünï ✓"} -Inf 1395066363000
something_weird{problem="division by zero"} +Inf -3982045
"##;

    #[test]
    fn node_exporter_like() {
        // The last line has a negative timestamp, which Prometheus 2.x rejects; check the
        // rest first.
        let (good, last) = NODE
            .trim_end()
            .rsplit_once('\n')
            .expect("fixture has lines");
        let e = ok(good);
        assert_eq!(e.samples.len(), 16);
        assert_eq!(
            e.types.get("go_gc_duration_seconds"),
            Some(&MetricType::Summary)
        );
        assert_eq!(
            e.types.get("node_cpu_seconds_total"),
            Some(&MetricType::Counter)
        );
        assert_eq!(
            e.types.get("node_filesystem_avail_bytes"),
            Some(&MetricType::Gauge)
        );
        assert_eq!(
            e.types.get("http_request_duration_seconds"),
            Some(&MetricType::Histogram)
        );
        assert_eq!(e.types.get("untyped_metric"), Some(&MetricType::Unknown));
        assert_eq!(e.types.len(), 6);

        let s = &e.samples[0];
        assert_eq!(s.name, "go_gc_duration_seconds");
        // Prometheus 3 rewrites a summary's quantile as Go formats the float.
        assert_eq!(s.labels, labels(&[("quantile", "0.0")]));
        assert_eq!(s.value, 2.3e-05);
        assert_eq!(s.timestamp_ms, None);

        let s = &e.samples[7];
        assert_eq!(s.name, "node_cpu_seconds_total");
        assert_eq!(s.labels, labels(&[("cpu", "1"), ("mode", "idle")]));
        assert_eq!(s.value, 123000.0);

        let s = &e.samples[9];
        assert_eq!(s.name, "node_uname_info");
        assert_eq!(s.labels.len(), 6);
        assert_eq!(s.labels[2], Label::new("nodename", "host \"a\""));

        let s = &e.samples[15];
        assert_eq!(s.name, "untyped_metric");
        assert_eq!(s.labels, labels(&[("path", "C:\\dir"), ("msg", "é ünï ✓")]));
        assert_eq!(s.value, f64::NEG_INFINITY);
        assert_eq!(s.timestamp_ms, Some(1_395_066_363_000));

        let e = err(NODE);
        assert_eq!(e.line, NODE.lines().count());
        assert!(matches!(e.kind, ParseErrorKind::InvalidTimestamp { .. }));
        assert!(last.contains("-3982045"));
    }

    #[test]
    fn prometheus_3_quoted_utf8_names() {
        let e = ok(concat!(
            "# HELP \"my.metric\" A dotted name.\n",
            "# TYPE \"my.metric\" histogram\n",
            "{\"my.metric\",le=\"1\"} 3\n",
            "{ \"my.metric\" , \"a.b\"=\"c\" } 1 1700000000000\n",
            "m{\"a.b\"=\"c\",\"café ☕\"=\"x\"} 2\n",
            "{\"esc\\\"aped\"} 4\n",
        ));
        assert_eq!(e.types.get("my.metric"), Some(&MetricType::Histogram));
        assert_eq!(
            e.help.get("my.metric").map(String::as_str),
            Some("A dotted name.")
        );
        let s = &e.samples;
        assert_eq!(s[0].name, "my.metric");
        assert_eq!(s[0].labels, labels(&[("le", "1.0")]));
        assert_eq!(s[1].name, "my.metric");
        assert_eq!(s[1].labels, labels(&[("a.b", "c")]));
        assert_eq!(s[1].timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(s[2].name, "m");
        assert_eq!(s[2].labels, labels(&[("a.b", "c"), ("café ☕", "x")]));
        assert_eq!(s[3].name, "esc\"aped");
        use ParseErrorKind::*;
        assert_eq!(err("{a=\"b\"} 1").kind, MetricNameNotSet);
        assert!(matches!(
            err("m{\"n\"} 1").kind,
            MetricNameAlreadySet { .. }
        ));
        assert!(matches!(
            err("{\"a\",\"b\"} 1").kind,
            MetricNameAlreadySet { .. }
        ));
        // Prometheus 2's grammar has none of it.
        for body in [
            "{\"my.metric\"} 1",
            "m{\"a.b\"=\"c\"} 1",
            "# TYPE \"m\" counter",
        ] {
            assert!(
                parse_with(body, &Limits::default(), Dialect::Prometheus2).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn prometheus_3_normalises_le_and_quantile_by_the_current_type() {
        let body = "# TYPE h histogram\n\
             h_bucket{le=\"1\"} 1\n\
             h_bucket{le=\"1e3\",quantile=\"1\"} 2\n\
             h_bucket{le=\"abc\"} 2\n\
             h_bucket{le=\"+inf\"} 3\n\
             untyped_after{le=\"5\"} 1\n\
             # TYPE s summary\n\
             s{quantile=\"0\",le=\"1\"} 1\n\
             # TYPE g gauge\n\
             g{le=\"1\",quantile=\"1\"} 1\n";
        let values = |d: Dialect| -> Vec<Vec<(String, String)>> {
            parse_with(body, &Limits::default(), d)
                .expect("valid")
                .samples
                .into_iter()
                .map(|s| s.labels.into_iter().map(|l| (l.name, l.value)).collect())
                .collect()
        };
        let p = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            values(Dialect::Prometheus3),
            vec![
                p(&[("le", "1.0")]),
                p(&[("le", "1000.0"), ("quantile", "1")]),
                p(&[("le", "abc")]),
                p(&[("le", "+Inf")]),
                // The type persists until the next `# TYPE` line, whatever family follows.
                p(&[("le", "5.0")]),
                p(&[("quantile", "0.0"), ("le", "1")]),
                p(&[("le", "1"), ("quantile", "1")]),
            ]
        );
        assert_eq!(
            values(Dialect::Prometheus2),
            vec![
                p(&[("le", "1")]),
                p(&[("le", "1e3"), ("quantile", "1")]),
                p(&[("le", "abc")]),
                p(&[("le", "+inf")]),
                p(&[("le", "5")]),
                p(&[("quantile", "0"), ("le", "1")]),
                p(&[("le", "1"), ("quantile", "1")]),
            ]
        );
        // Without a `# TYPE` line nothing is rewritten.
        assert_eq!(one("h_bucket{le=\"1\"} 1").labels, labels(&[("le", "1")]));
    }

    #[test]
    fn histogram_family() {
        let e = ok("# TYPE h histogram\n\
             h_bucket{le=\"0.1\"} 1\n\
             h_bucket{le=\"1\"} 2\n\
             h_bucket{le=\"+Inf\"} 3\n\
             h_sum 1.5\n\
             h_count 3\n");
        assert_eq!(e.types.get("h"), Some(&MetricType::Histogram));
        let names: Vec<_> = e.samples.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["h_bucket", "h_bucket", "h_bucket", "h_sum", "h_count"]
        );
        assert_eq!(e.samples[2].labels, labels(&[("le", "+Inf")]));
        assert_eq!(e.samples[3].value, 1.5);
    }

    #[test]
    fn empty_and_blank() {
        assert_eq!(ok(""), Exposition::default());
        assert_eq!(ok("\n\n  \t\n\r\n"), Exposition::default());
        assert_eq!(ok("# only a comment"), Exposition::default());
    }

    #[test]
    fn whitespace_and_layout() {
        let s = one("  \t m \t{ a = \"1\" , b=\"2\" , } \t 5 \t 7 \t");
        assert_eq!(s.name, "m");
        assert_eq!(s.labels, labels(&[("a", "1"), ("b", "2")]));
        assert_eq!(s.value, 5.0);
        assert_eq!(s.timestamp_ms, Some(7));
        // No space needed after `}`, and labels may be separated by whitespace alone.
        let s = one("m{a=\"1\" b=\"2\"}3");
        assert_eq!(s.labels, labels(&[("a", "1"), ("b", "2")]));
        assert_eq!(s.value, 3.0);
        // Sign right after the name (the name cannot contain `-`).
        assert_eq!(one("m-1").value, -1.0);
        assert_eq!(one("m{}1").labels, vec![]);
        assert_eq!(one("a:b_c:9 1").name, "a:b_c:9");
        assert_eq!(one("_x 1").name, "_x");
        // No trailing newline.
        assert_eq!(ok("a 1\nb 2").samples.len(), 2);
    }

    #[test]
    fn crlf() {
        let e = ok("# HELP m help\r\n# TYPE m counter\r\nm{a=\"b\"} 1 2\r\nn 3\r\n\r\n");
        assert_eq!(e.types.get("m"), Some(&MetricType::Counter));
        assert_eq!(e.samples[0].timestamp_ms, Some(2));
        assert_eq!(e.samples[1].value, 3.0);
        // A lone `\r` is not a line break.
        assert!(matches!(
            err("m 1\r").kind,
            ParseErrorKind::InvalidValue { .. }
        ));
    }

    #[test]
    fn escapes() {
        let s = one(r#"m{a="x\\y",b="q\"q",c="l\nl",d="t\tt",e="\\n",f="\\",g="é\ü"} 1"#);
        assert_eq!(
            s.labels,
            labels(&[
                ("a", "x\\y"),
                ("b", "q\"q"),
                ("c", "l\nl"),
                ("d", "t\\tt"),
                ("e", "\\n"),
                ("f", "\\"),
                ("g", "é\\ü"),
            ])
        );
        // A raw line break inside a value is accepted and counted as a line.
        let err = err("m{a=\"x\ny\"} 1\n{");
        assert_eq!(err.line, 3);
        let s = one("m{a=\"x\ny\"} 1");
        assert_eq!(s.labels, labels(&[("a", "x\ny")]));
        // Empty value.
        assert_eq!(one("m{a=\"\"} 1").labels, labels(&[("a", "")]));
    }

    #[test]
    fn values() {
        let v = |s: &str| one(&format!("m {s}")).value;
        assert_eq!(v("1"), 1.0);
        assert_eq!(v("-1.5e3"), -1500.0);
        assert_eq!(v("+2"), 2.0);
        assert_eq!(v(".5"), 0.5);
        assert_eq!(v("5."), 5.0);
        assert_eq!(v("1E2"), 100.0);
        assert_eq!(v("1e-2"), 0.01);
        assert_eq!(v("007"), 7.0);
        assert_eq!(v("1.e5"), 1e5);
        assert_eq!(v("-.5"), -0.5);
        assert_eq!(v("1e-400"), 0.0);
        assert_eq!(v("Inf"), f64::INFINITY);
        assert_eq!(v("+Inf"), f64::INFINITY);
        assert_eq!(v("-Inf"), f64::NEG_INFINITY);
        assert_eq!(v("inf"), f64::INFINITY);
        assert_eq!(v("-infinity"), f64::NEG_INFINITY);
        assert_eq!(v("+INFINITY"), f64::INFINITY);
        for nan in ["NaN", "nan", "NAN"] {
            assert_eq!(v(nan).to_bits(), NORMAL_NAN_BITS);
        }
        for bad in [
            "+NaN", "-nan", "0x1p3", "0x10", "1_000", "1e", "1e+", ".", "-", "+", "e5", "1.2.3",
            "infin", "abc", "1,5", "1}", "1\"", "١",
        ] {
            let e = err(&format!("m {bad}"));
            assert_eq!(
                e,
                ParseError {
                    line: 1,
                    kind: ParseErrorKind::InvalidValue { value: bad.into() }
                },
                "{bad}"
            );
        }
        assert_eq!(
            err("m 1e400").kind,
            ParseErrorKind::ValueOutOfRange {
                value: "1e400".into()
            }
        );
        assert_eq!(
            err("m -1e400").kind,
            ParseErrorKind::ValueOutOfRange {
                value: "-1e400".into()
            }
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(one("m 1 0").timestamp_ms, Some(0));
        assert_eq!(one("m 1 9223372036854775807").timestamp_ms, Some(i64::MAX));
        assert_eq!(one("m 1 0001").timestamp_ms, Some(1));
        assert_eq!(
            err("m 1 9223372036854775808").kind,
            ParseErrorKind::TimestampOutOfRange {
                value: "9223372036854775808".into()
            }
        );
        assert_eq!(
            err("m 1 -5").kind,
            ParseErrorKind::InvalidTimestamp {
                found: "\"-5\"".into()
            }
        );
        assert_eq!(
            err("m 1 +5").kind,
            ParseErrorKind::InvalidTimestamp {
                found: "\"+5\"".into()
            }
        );
        assert_eq!(
            err("m 1 1.5").kind,
            ParseErrorKind::ExpectedEndOfLine {
                found: "\".5\"".into()
            }
        );
        assert_eq!(
            err("m 1 2 3").kind,
            ParseErrorKind::ExpectedEndOfLine {
                found: "\"3\"".into()
            }
        );
        assert_eq!(
            err("m 1 # comment").kind,
            ParseErrorKind::InvalidTimestamp {
                found: "\"#\"".into()
            }
        );
    }

    #[test]
    fn metadata() {
        let e = ok(
            "# TYPE a counter\n# TYPE a gauge\n#\tTYPE\tb\tsummary\n# HELP\n#TYPE x y\n# TYPEX z\n# EOF\n# HELP d \n",
        );
        assert_eq!(e.types.get("a"), Some(&MetricType::Gauge));
        assert_eq!(e.types.get("b"), Some(&MetricType::Summary));
        assert_eq!(e.types.len(), 2);
        // Metadata is line-oriented and not checked against samples.
        assert_eq!(ok("# TYPE a counter\nb 1").samples.len(), 1);
        // Prometheus drops any one character after the name.
        assert_eq!(
            ok("# TYPE m-counter").types.get("m"),
            Some(&MetricType::Counter)
        );
        // Indented comments are fine.
        assert_eq!(
            ok("   # TYPE m gauge").types.get("m"),
            Some(&MetricType::Gauge)
        );
    }

    #[test]
    fn metadata_errors() {
        use ParseErrorKind::*;
        let k = |s: &str| err(s).kind;
        assert_eq!(
            k("# TYPE m  counter"),
            InvalidMetricType {
                found: " counter".into()
            }
        );
        assert_eq!(
            k("# TYPE m counter "),
            InvalidMetricType {
                found: "counter ".into()
            }
        );
        assert_eq!(
            k("# TYPE m Counter"),
            InvalidMetricType {
                found: "Counter".into()
            }
        );
        assert_eq!(
            k("# TYPE m info"),
            InvalidMetricType {
                found: "info".into()
            }
        );
        assert_eq!(k("# TYPE m"), MissingMetadataText { keyword: "TYPE" });
        assert_eq!(k("# HELP m\n"), MissingMetadataText { keyword: "HELP" });
        assert_eq!(
            k("# HELP 0m x"),
            MissingMetadataName {
                keyword: "HELP",
                found: "'0'".into()
            }
        );
        assert_eq!(
            k("# TYPE "),
            MissingMetadataName {
                keyword: "TYPE",
                found: "end of input".into()
            }
        );
        assert_eq!(
            k("# HELP \nm 1"),
            MissingMetadataName {
                keyword: "HELP",
                found: "end of line".into()
            }
        );
        assert_eq!(
            k("# HELP mé x"),
            InvalidMetadataSeparator {
                keyword: "HELP",
                found: 'é'
            }
        );
        let e = err("a 1\n\n# TYPE a gauge\n# TYPE b nope\n");
        assert_eq!(e.line, 4);
        assert_eq!(e.to_string(), "line 4: invalid metric type \"nope\"");
    }

    #[test]
    fn syntax_errors() {
        use ParseErrorKind::*;
        let cases: Vec<(&str, ParseErrorKind)> = vec![
            // Prometheus 3: a line may start with `{` when its name is quoted inside.
            ("{a=\"b\"} 1", MetricNameNotSet),
            (
                "0m 1",
                UnexpectedLineStart {
                    found: "'0'".into(),
                },
            ),
            (
                "m 1\n\r",
                UnexpectedLineStart {
                    found: "'\\r'".into(),
                },
            ),
            (
                "\0m 1",
                UnexpectedLineStart {
                    found: "'\\0'".into(),
                },
            ),
            (
                "m{0=\"b\"} 1",
                ExpectedLabelName {
                    found: "'0'".into(),
                },
            ),
            (
                "m{,} 1",
                ExpectedLabelName {
                    found: "','".into(),
                },
            ),
            (
                "m{a=\"1\",,} 1",
                ExpectedLabelName {
                    found: "','".into(),
                },
            ),
            (
                "m{a=\"1\"",
                ExpectedLabelName {
                    found: "end of input".into(),
                },
            ),
            (
                "m{a=\"1\"\n} 1",
                ExpectedLabelName {
                    found: "end of line".into(),
                },
            ),
            (
                "m{a=\"1\"=} 1",
                ExpectedLabelName {
                    found: "'='".into(),
                },
            ),
            (
                "m{a:b=\"1\"} 1",
                ExpectedEquals {
                    label: "a".into(),
                    found: "':'".into(),
                },
            ),
            (
                "m{a} 1",
                ExpectedEquals {
                    label: "a".into(),
                    found: "'}'".into(),
                },
            ),
            (
                "m{a=b} 1",
                ExpectedLabelValue {
                    label: "a".into(),
                    found: "'b'".into(),
                },
            ),
            (
                "m{a='b'} 1",
                ExpectedLabelValue {
                    label: "a".into(),
                    found: "'\\''".into(),
                },
            ),
            ("m{a=\"b} 1", UnterminatedLabelValue { label: "a".into() }),
            (
                "m{a=\"b\\\nc\"} 1",
                UnterminatedLabelValue { label: "a".into() },
            ),
            ("m{a=\"b\\", UnterminatedLabelValue { label: "a".into() }),
            (
                "m",
                MissingValue {
                    found: "end of input".into(),
                },
            ),
            (
                "m \nn 1",
                MissingValue {
                    found: "end of line".into(),
                },
            ),
            (
                "m{a=\"1\"}{b=\"2\"} 1",
                MissingValue {
                    found: "'{'".into(),
                },
            ),
            (
                "m 1{a=\"1\"}",
                InvalidTimestamp {
                    found: "\"{a=\\\"1\\\"}\"".into(),
                },
            ),
            (
                "m{a=\"1\"} 1 2 x",
                ExpectedEndOfLine {
                    found: "\"x\"".into(),
                },
            ),
        ];
        for (input, kind) in cases {
            assert_eq!(err(input).kind, kind, "{input:?}");
        }
    }

    #[test]
    fn label_name_checks() {
        use ParseErrorKind::*;
        let e = err("a 1\nm{a=\"1\",b=\"2\",a=\"3\"} 1");
        assert_eq!(
            e,
            ParseError {
                line: 2,
                kind: DuplicateLabelName { name: "a".into() }
            }
        );
        // Duplicate detection above the linear-scan threshold.
        let many: String = (0..20).map(|i| format!("l{i}=\"v\",")).collect();
        assert_eq!(one(&format!("m{{{many}}} 1")).labels.len(), 20);
        assert_eq!(
            err(&format!("m{{{many}l7=\"x\"}} 1")).kind,
            DuplicateLabelName { name: "l7".into() }
        );
        assert_eq!(err("m{__name__=\"x\"} 1").kind, NameLabelInBraces);
        assert_eq!(one("m{__name=\"x\",__x__=\"\"} 1").labels.len(), 2);
    }

    #[test]
    fn limits() {
        use ParseErrorKind::*;
        let body = "a{x=\"1\",y=\"22\"} 1\nbb{x=\"1\"} 2\nccc 3\n";
        assert_eq!(
            parse(body, &Limits::default()).map(|e| e.samples.len()),
            Ok(3)
        );

        let l = Limits {
            max_samples: 3,
            ..Limits::default()
        };
        assert_eq!(parse(body, &l).map(|e| e.samples.len()), Ok(3));
        let l = Limits {
            max_samples: 2,
            ..Limits::default()
        };
        assert_eq!(
            err_with(body, &l),
            ParseError {
                line: 3,
                kind: SampleLimitExceeded { limit: 2 }
            }
        );

        // The metric name counts as a label.
        let l = Limits {
            max_label_names: 3,
            ..Limits::default()
        };
        assert!(parse(body, &l).is_ok());
        let l = Limits {
            max_label_names: 2,
            ..Limits::default()
        };
        assert_eq!(
            err_with(body, &l),
            ParseError {
                line: 1,
                kind: LabelLimitExceeded {
                    metric: "a".into(),
                    count: 3,
                    limit: 2
                }
            }
        );

        // `__name__` is 8 bytes and is subject to the name-length limit.
        let l = Limits {
            max_label_name_len: 8,
            ..Limits::default()
        };
        assert!(parse(body, &l).is_ok());
        let l = Limits {
            max_label_name_len: 7,
            ..Limits::default()
        };
        assert_eq!(
            err_with(body, &l).kind,
            LabelNameTooLong {
                name: "__name__".into(),
                len: 8,
                limit: 7
            }
        );
        let l = Limits {
            max_label_name_len: 8,
            ..Limits::default()
        };
        assert_eq!(
            err_with("m{abcdefghi=\"\"} 1", &l).kind,
            LabelNameTooLong {
                name: "abcdefghi".into(),
                len: 9,
                limit: 8
            }
        );

        // The metric name is subject to the value-length limit; lengths are bytes.
        let l = Limits {
            max_label_value_len: 2,
            ..Limits::default()
        };
        assert_eq!(
            err_with(body, &l),
            ParseError {
                line: 3,
                kind: LabelValueTooLong {
                    name: "__name__".into(),
                    len: 3,
                    limit: 2
                }
            }
        );
        assert_eq!(
            err_with(
                "m{v=\"éé\"} 1",
                &Limits {
                    max_label_value_len: 3,
                    ..Limits::default()
                }
            )
            .kind,
            LabelValueTooLong {
                name: "v".into(),
                len: 4,
                limit: 3
            }
        );
    }

    #[test]
    fn long_input_is_truncated_in_errors() {
        let long = "x".repeat(10_000);
        let e = err(&format!("m {long}"));
        match e.kind {
            ParseErrorKind::InvalidValue { value } => {
                assert_eq!(value.chars().count(), ERROR_SNIPPET_CHARS + 1);
                assert!(value.ends_with('…'));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn display() {
        let e = err("m{a=\"1\",a=\"2\"} 1");
        assert_eq!(
            e.to_string(),
            "line 1: label name \"a\" appears more than once"
        );
        let e = err("\n\nm{a=b} 1");
        assert_eq!(
            e.to_string(),
            "line 3: expected a double-quoted value for label \"a\", found 'b'"
        );
    }

    /// Checks what must hold for any `Ok` result, and that errors point at a real line.
    fn check_invariants(input: &str, limits: &Limits) {
        match parse(input, limits) {
            Ok(e) => {
                if limits.max_samples > 0 {
                    assert!(e.samples.len() <= limits.max_samples);
                }
                for s in &e.samples {
                    assert!(!s.name.is_empty());
                    let mut seen = HashSet::new();
                    for l in &s.labels {
                        assert_ne!(l.name, "__name__");
                        assert!(seen.insert(l.name.as_str()), "duplicate in {input:?}");
                    }
                    if s.value.is_nan() {
                        assert_eq!(s.value.to_bits(), NORMAL_NAN_BITS);
                    }
                }
            }
            Err(e) => {
                let lines = input.bytes().filter(|&b| b == b'\n').count() + 1;
                assert!(e.line >= 1 && e.line <= lines, "{e:?} for {input:?}");
                let _ = e.to_string();
            }
        }
    }

    #[test]
    fn fuzzish_mutations_never_panic() {
        let base = NODE.as_bytes();
        let replacements = b"{}\"\\,=# \nx0";
        let limit_sets = [
            Limits::default(),
            Limits {
                max_samples: 5,
                max_label_names: 4,
                max_label_name_len: 10,
                max_label_value_len: 12,
            },
        ];
        let mut runs = 0usize;
        let mut run = |bytes: &[u8]| {
            let text = String::from_utf8_lossy(bytes);
            for limits in &limit_sets {
                check_invariants(&text, limits);
            }
            runs += 1;
        };
        for end in 0..=base.len() {
            run(base.get(..end).unwrap_or_default());
        }
        for i in 0..base.len() {
            let mut v = base.to_vec();
            v.remove(i);
            run(&v);
        }
        for i in 0..base.len() {
            for &r in replacements {
                let mut v = base.to_vec();
                if let Some(b) = v.get_mut(i) {
                    *b = r;
                }
                run(&v);
            }
        }
        for i in 0..base.len() {
            let mut v = base.to_vec();
            v.insert(i, b'\r');
            run(&v);
        }
        assert!(runs > 10 * base.len());
    }

    #[test]
    fn odd_inputs_never_panic() {
        for input in [
            "\\",
            "\"",
            "{",
            "}",
            "#",
            "# ",
            "# HELP",
            "# HELP ",
            "# TYPE m ",
            "m{",
            "m{a",
            "m{a=",
            "m{a=\"",
            "m{a=\"\\",
            "m{a=\"\\\"",
            "m{a=\"\"",
            "m{a=\"\",",
            "m 1 ",
            "m 1 1",
            "\r",
            "\r\n",
            "\n\r",
            "m\r",
            "m 1\r",
            "m{a=\"\r\n\"} 1\r\n",
            "é",
            "m é",
            "m{é=\"\"} 1",
            "m{a=\"é\\",
            "# TYPE mé",
            "# TYPE m\té",
            "\u{0}",
            "m{a=\"\u{0}\"} 1",
            "m\u{0} 1",
        ] {
            check_invariants(input, &Limits::default());
            check_invariants(
                input,
                &Limits {
                    max_samples: 1,
                    max_label_names: 1,
                    max_label_name_len: 1,
                    max_label_value_len: 1,
                },
            );
        }
    }
}
