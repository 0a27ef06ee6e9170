//! Content negotiation as Prometheus does it: the `Accept` header a job sends, and the parser
//! a response's `Content-Type` selects.
//!
//! # `Accept`
//!
//! Without `scrape_protocols` (job or global), every scrape sends Prometheus 2.42's header,
//! [`DEFAULT_ACCEPT`]: OpenMetrics 1.0.0, then 0.0.1 (q=0.75), then the text format 0.0.4
//! (q=0.5), then anything (q=0.1); with `--enable-feature=native-histograms`, the protobuf
//! format comes first, as in Prometheus 2.42 ([`NATIVE_HISTOGRAMS_ACCEPT`]).
//!
//! With `scrape_protocols` (Prometheus ≥ 2.49 syntax; a job's list replaces the global one),
//! the header is built as Prometheus builds it: each protocol's media range in list order,
//! with `q=0.<w>` where `w` starts at the number of protocol names (5) plus one and drops by
//! one per entry, then `*/*` with the next weight. Deviations:
//!
//! * `PrometheusText1.0.0` is asked for with `escaping=underscores`, so that a target escapes
//!   UTF-8 metric and label names into the legacy names the text parser reads. Other ranges
//!   carry no escaping parameter, as in Prometheus 2.x.
//!
//! # `Content-Type`
//!
//! As in Prometheus 2.42's `textparse.New`: the header (its first value) is parsed by the rules
//! of Go 1.19's `mime.ParseMediaType`; when that succeeds and the media type is
//! `application/openmetrics-text` (any case, any parameters), the body is OpenMetrics
//! ([`super::openmetrics`]). Anything else — another type, a missing header, or one Go fails to
//! parse (an empty parameter value, a duplicate parameter, stray text) — selects the text format
//! 0.0.4 ([`super::parse`]), except `application/vnd.google.protobuf`, which selects the
//! protobuf format ([`super::protobuf`]), as in Prometheus 2.42.

use std::collections::HashSet;

use crate::config::ScrapeProtocol;

use super::{ScrapeError, openmetrics, parse};

/// Prometheus 2.42's `Accept` header (`scrapeAcceptHeader` in `scrape/scrape.go`).
pub const DEFAULT_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// The media range of the protobuf format.
const PROTOBUF_RANGE: &str =
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";

/// Prometheus 2.42's `Accept` header with `--enable-feature=native-histograms`
/// (`scrapeAcceptHeaderWithProtobuf`): protobuf first.
pub const NATIVE_HISTOGRAMS_ACCEPT: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// How many protocol names `scrape_protocols` knows (Prometheus's `ScrapeProtocolsHeaders`).
const KNOWN_PROTOCOLS: u32 = 5;

/// The media type that selects the OpenMetrics parser.
const OPENMETRICS: &str = "application/openmetrics-text";

/// Which parser a body goes to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// The text format 0.0.4 ([`super::parse`]).
    #[default]
    Text,
    /// OpenMetrics 1.0 ([`super::openmetrics`]).
    OpenMetrics,
    /// The delimited protobuf format ([`super::protobuf`]).
    Protobuf,
}

impl Format {
    /// The format a `Content-Type` header value selects (`None`: no header).
    pub fn from_content_type(content_type: Option<&str>) -> Format {
        match content_type.and_then(go_media_type) {
            Some(t) if t == OPENMETRICS => Format::OpenMetrics,
            Some(t) if t == super::protobuf::MEDIA_TYPE => Format::Protobuf,
            _ => Format::Text,
        }
    }

    /// Parses a body in this format; the text formats must be UTF-8.
    pub fn parse(
        self,
        data: &[u8],
        limits: &parse::Limits,
    ) -> Result<parse::Exposition, ScrapeError> {
        if self == Format::Protobuf {
            return Ok(super::protobuf::parse(data, limits)?);
        }
        let text = std::str::from_utf8(data).map_err(|_| ScrapeError::Utf8)?;
        Ok(match self {
            Format::OpenMetrics => openmetrics::parse(text, limits)?,
            _ => parse::parse(text, limits)?,
        })
    }
}

/// The media range asked for a protocol.
fn media_range(p: ScrapeProtocol) -> &'static str {
    match p {
        ScrapeProtocol::PrometheusProto => PROTOBUF_RANGE,
        ScrapeProtocol::PrometheusText0_0_4 => "text/plain;version=0.0.4",
        ScrapeProtocol::PrometheusText1_0_0 => "text/plain;version=1.0.0;escaping=underscores",
        ScrapeProtocol::OpenMetricsText0_0_1 => "application/openmetrics-text;version=0.0.1",
        ScrapeProtocol::OpenMetricsText1_0_0 => "application/openmetrics-text;version=1.0.0",
    }
}

/// The `Accept` header for a job's effective `scrape_protocols` (`None`: not configured, then
/// Prometheus 2.42's header, with protobuf first when native histograms are enabled).
pub fn accept_header(protocols: Option<&[ScrapeProtocol]>, native_histograms: bool) -> String {
    let Some(protocols) = protocols else {
        return if native_histograms {
            NATIVE_HISTOGRAMS_ACCEPT
        } else {
            DEFAULT_ACCEPT
        }
        .to_owned();
    };
    let mut weight = KNOWN_PROTOCOLS + 1;
    let mut parts = Vec::with_capacity(protocols.len() + 1);
    for range in protocols.iter().map(|p| media_range(*p)) {
        parts.push(format!("{range};q=0.{weight}"));
        weight = weight.saturating_sub(1);
    }
    parts.push(format!("*/*;q=0.{weight}"));
    parts.join(",")
}

/// The media type of a `Content-Type` value, lowercased and trimmed, when Go 1.19's
/// `mime.ParseMediaType` accepts the whole value; `None` when it reports an error.
fn go_media_type(v: &str) -> Option<String> {
    let (base, mut rest) = v.split_at(v.find(';').unwrap_or(v.len()));
    let media = go_to_lower(base).trim().to_owned();
    check_media_type(&media)?;
    let mut keys = HashSet::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return Some(media);
        }
        match consume_media_param(rest) {
            Some((key, after)) => {
                // Go keeps `foo*` keys apart by base name, but a key still repeats only
                // within one map, so one set of whole keys finds the same duplicates.
                if !keys.insert(key) {
                    return None;
                }
                rest = after;
            }
            // Trailing semicolons are allowed.
            None if rest.trim() == ";" => return Some(media),
            None => return None,
        }
    }
}

/// Go's `strings.ToLower`: as Rust's, except that `İ` becomes a plain `i` (Go has no
/// multi-character mappings).
fn go_to_lower(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '\u{130}' {
            out.push('i');
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// Go's `checkMediaTypeDisposition`: `token` or `token/token`, nothing else.
fn check_media_type(s: &str) -> Option<()> {
    let (kind, rest) = consume_token(s);
    if kind.is_empty() {
        return None;
    }
    if rest.is_empty() {
        return Some(());
    }
    let (subtype, rest) = consume_token(rest.strip_prefix('/')?);
    (!subtype.is_empty() && rest.is_empty()).then_some(())
}

/// RFC 2045 `tspecials`.
fn is_tspecial(c: char) -> bool {
    "()<>@,;:\\\"/[]?=".contains(c)
}

fn is_token_char(c: char) -> bool {
    ('\u{21}'..'\u{7f}').contains(&c) && !is_tspecial(c)
}

/// Go's `consumeToken`: the longest run of token characters, and the rest.
fn consume_token(v: &str) -> (&str, &str) {
    let end = v.find(|c| !is_token_char(c)).unwrap_or(v.len());
    v.split_at(end)
}

/// Go's `consumeMediaParam`: `; key = value`, returning the lowercased key and the rest.
fn consume_media_param(v: &str) -> Option<(String, &str)> {
    let rest = v.trim_start().strip_prefix(';')?.trim_start();
    let (key, rest) = consume_token(rest);
    if key.is_empty() {
        return None;
    }
    let rest = rest.trim_start().strip_prefix('=')?.trim_start();
    let after = consume_value(rest)?;
    Some((key.to_ascii_lowercase(), after))
}

/// Go's `consumeValue` (a token or a quoted string), returning only the rest; `None` when
/// Go's would fail (nothing consumed).
fn consume_value(v: &str) -> Option<&str> {
    let Some(quoted) = v.strip_prefix('"') else {
        let (token, rest) = consume_token(v);
        return (!token.is_empty()).then_some(rest);
    };
    let bytes = quoted.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => return quoted.get(i + 1..),
            b'\\'
                if bytes
                    .get(i + 1)
                    .is_some_and(|&n| is_tspecial(char::from(n))) =>
            {
                i += 2
            }
            b'\r' | b'\n' => return None,
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use ScrapeProtocol::*;

    #[test]
    fn default_header_is_prometheus_2_42s() {
        assert_eq!(accept_header(None, false), DEFAULT_ACCEPT);
        assert_eq!(accept_header(None, true), NATIVE_HISTOGRAMS_ACCEPT);
        assert_eq!(
            DEFAULT_ACCEPT,
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        );
    }

    #[test]
    fn configured_protocols_in_order() {
        assert_eq!(
            accept_header(
                Some(&[
                    OpenMetricsText1_0_0,
                    OpenMetricsText0_0_1,
                    PrometheusText0_0_4
                ]),
                false
            ),
            "application/openmetrics-text;version=1.0.0;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.3"
        );
        assert_eq!(
            accept_header(Some(&[PrometheusText0_0_4]), false),
            "text/plain;version=0.0.4;q=0.6,*/*;q=0.5"
        );
        // The configured list wins over the feature flag.
        assert_eq!(
            accept_header(
                Some(&[PrometheusProto, PrometheusText1_0_0, OpenMetricsText1_0_0]),
                true
            ),
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,text/plain;version=1.0.0;escaping=underscores;q=0.5,application/openmetrics-text;version=1.0.0;q=0.4,*/*;q=0.3"
        );
        let all = [
            PrometheusProto,
            PrometheusText0_0_4,
            PrometheusText1_0_0,
            OpenMetricsText0_0_1,
            OpenMetricsText1_0_0,
        ];
        assert!(accept_header(Some(&all), false).ends_with(",*/*;q=0.1"));
    }

    #[test]
    fn content_type_selects_the_parser_as_prometheus_2_42() {
        let om = |ct: &str| Format::from_content_type(Some(ct)) == Format::OpenMetrics;
        // Prometheus 2.42 was run against most of these (an OpenMetrics-only body served with
        // each header); the others follow Go 1.19's `mime` package.
        for ct in [
            "application/openmetrics-text",
            "application/openmetrics-text;version=1.0.0",
            "application/openmetrics-text ; version=1.0.0",
            "Application/OpenMetrics-Text; Version=0.0.1",
            "application/openmetrics-text; version=\"\"",
            "application/openmetrics-text;",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            " application/openmetrics-text\t; a=\"x\\\"y\";  b=c ; ",
            "applİcation/openmetrics-text",
        ] {
            assert!(om(ct), "{ct:?}");
        }
        for ct in [
            "",
            "text/plain",
            "text/plain; version=0.0.4",
            "application/openmetrics-text; version=",
            "application/openmetrics-text;;",
            "application/openmetrics-text; a=1; a=1",
            "application/openmetrics-text; A=1; a=2",
            "application/openmetrics-text x",
            "application/openmetrics-text; a=b c",
            "application/openmetrics-text; a=\"b",
            "application/openmetrics-text; a=\"b\rc\"",
            "application/openmetrics-text/x",
            "application/openmetrics-textx",
            "application/vnd.google.protobuf",
            "application/openmetrics-téxt",
        ] {
            assert!(!om(ct), "{ct:?}");
        }
        assert_eq!(Format::from_content_type(None), Format::Text);
    }

    #[test]
    fn go_media_type_details() {
        assert_eq!(
            go_media_type("TEXT/Plain ; q=1").as_deref(),
            Some("text/plain")
        );
        assert_eq!(go_media_type("text").as_deref(), Some("text"));
        assert_eq!(
            go_media_type("a/b; x*0=1; x*1=2; x*=3").as_deref(),
            Some("a/b")
        );
        assert_eq!(go_media_type("a/b; x*0=1; x*0=2"), None);
        assert_eq!(go_media_type("/b"), None);
        assert_eq!(go_media_type("a/"), None);
        assert_eq!(go_media_type("a/b; =1"), None);
        assert_eq!(go_media_type("a/b; k"), None);
        assert_eq!(go_media_type("a/b ;k = \"v\\;\""), Some("a/b".into()));
    }
}
