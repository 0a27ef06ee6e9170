//! Content negotiation as Prometheus does it: the `Accept` header a job sends, and the parser
//! a response's `Content-Type` selects. Prometheus 3's rules by default; Prometheus 2.42's in
//! the Prometheus 2 mode.
//!
//! # `Accept`
//!
//! Prometheus 3 builds the header from the job's effective `scrape_protocols` (see
//! `Config::scrape_protocols`: without a list, the text formats, or protobuf first when the job
//! ingests native histograms): each protocol's media range in list order, the two 1.0.0 ranges
//! (OpenMetrics and text) with `escaping=<the job's metric_name_escaping_scheme>`, then
//! `q=0.<w>` where `w` starts at the number of protocol names (5) plus one and drops by one per
//! entry, then `*/*` with the next weight, joined by `,` without spaces. The default:
//!
//! ```text
//! application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2
//! ```
//!
//! In the Prometheus 2 mode, a job without `scrape_protocols` sends Prometheus 2.42's fixed
//! header, [`DEFAULT_ACCEPT`] (with protobuf first under `--enable-feature=native-histograms`,
//! [`NATIVE_HISTOGRAMS_ACCEPT`]); with a list, the weights as above, no escaping parameter but
//! `escaping=underscores` on `PrometheusText1.0.0`, so that a target escapes UTF-8 names into
//! the legacy names the 2.42 grammar reads.
//!
//! # `Content-Type`
//!
//! The header (its first value) is parsed by the rules of Go's `mime.ParseMediaType`.
//!
//! * Prometheus 3 ([`Format::from_content_type_3`], `extractMediaType`): the media types
//!   `application/openmetrics-text`, `application/vnd.google.protobuf` and `text/plain` (any
//!   parameters, any version) select their parser. A missing header, one Go cannot parse, or
//!   another type selects the job's `fallback_scrape_protocol`, and without one fails the
//!   scrape (`up` 0, stale markers) with Prometheus's message. An empty body is a successful
//!   scrape whatever its `Content-Type` (the scraper checks that first).
//! * Prometheus 2.42 ([`Format::from_content_type`]): `application/openmetrics-text` selects
//!   OpenMetrics, `application/vnd.google.protobuf` protobuf, anything else (another type, a
//!   missing header, one Go fails to parse) the text format.

use std::collections::HashSet;

use crate::config::{Escaping, ScrapeProtocol};

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
    /// The parser of a protocol named in `scrape_protocols` or `fallback_scrape_protocol`.
    pub fn of(p: ScrapeProtocol) -> Format {
        match p {
            ScrapeProtocol::PrometheusProto => Format::Protobuf,
            ScrapeProtocol::OpenMetricsText0_0_1 | ScrapeProtocol::OpenMetricsText1_0_0 => {
                Format::OpenMetrics
            }
            ScrapeProtocol::PrometheusText0_0_4 | ScrapeProtocol::PrometheusText1_0_0 => {
                Format::Text
            }
        }
    }

    /// Prometheus 3's choice of parser (`extractMediaType`, see the module docs); the error
    /// is the message that fails the scrape.
    pub fn from_content_type_3(
        content_type: Option<&str>,
        fallback: Option<ScrapeProtocol>,
    ) -> Result<Format, String> {
        let ct = content_type.unwrap_or_default();
        if ct.is_empty() {
            return fallback.map(Format::of).ok_or_else(|| {
                "non-compliant scrape target sending blank Content-Type and no \
                 fallback_scrape_protocol specified for target"
                    .to_owned()
            });
        }
        let Some(media) = go_media_type(ct) else {
            return fallback.map(Format::of).ok_or_else(|| {
                format!(
                    "cannot parse Content-Type {ct:?} and no fallback_scrape_protocol for target"
                )
            });
        };
        match media.as_str() {
            OPENMETRICS => Ok(Format::OpenMetrics),
            super::protobuf::MEDIA_TYPE => Ok(Format::Protobuf),
            "text/plain" => Ok(Format::Text),
            _ => fallback.map(Format::of).ok_or_else(|| {
                format!(
                    "received unsupported Content-Type {ct:?} and no fallback_scrape_protocol \
                     specified for target"
                )
            }),
        }
    }

    /// Prometheus 2.42's choice of parser for a `Content-Type` header value (`None`: no
    /// header).
    pub fn from_content_type(content_type: Option<&str>) -> Format {
        match content_type.and_then(go_media_type) {
            Some(t) if t == OPENMETRICS => Format::OpenMetrics,
            Some(t) if t == super::protobuf::MEDIA_TYPE => Format::Protobuf,
            _ => Format::Text,
        }
    }

    /// Parses a body in this format, `dialect` and `histograms` (protobuf only); the text
    /// formats must be UTF-8.
    pub fn parse(
        self,
        data: &[u8],
        limits: &parse::Limits,
        dialect: parse::Dialect,
        histograms: super::protobuf::Histograms,
    ) -> Result<parse::Exposition, ScrapeError> {
        if self == Format::Protobuf {
            return Ok(super::protobuf::parse_with(
                data, limits, histograms, dialect,
            )?);
        }
        let text = std::str::from_utf8(data).map_err(|_| ScrapeError::Utf8)?;
        Ok(match self {
            Format::OpenMetrics => openmetrics::parse_with(text, limits, dialect)?,
            _ => parse::parse_with(text, limits, dialect)?,
        })
    }
}

/// The media range asked for a protocol: Prometheus's (`ScrapeProtocolsHeaders`), with the
/// escaping parameter on the two 1.0.0 ranges (`None`: the Prometheus 2 mode's, see the module
/// docs).
fn media_range(p: ScrapeProtocol, escaping: Option<Escaping>) -> String {
    let with_escaping = |range: &str| match escaping {
        Some(e) => format!("{range};escaping={}", e.as_str()),
        None => range.to_owned(),
    };
    match p {
        ScrapeProtocol::PrometheusProto => PROTOBUF_RANGE.into(),
        ScrapeProtocol::PrometheusText0_0_4 => "text/plain;version=0.0.4".into(),
        ScrapeProtocol::PrometheusText1_0_0 => match escaping {
            Some(_) => with_escaping("text/plain;version=1.0.0"),
            None => "text/plain;version=1.0.0;escaping=underscores".into(),
        },
        ScrapeProtocol::OpenMetricsText0_0_1 => "application/openmetrics-text;version=0.0.1".into(),
        ScrapeProtocol::OpenMetricsText1_0_0 => {
            with_escaping("application/openmetrics-text;version=1.0.0")
        }
    }
}

/// The `Accept` header of a job: from its effective `scrape_protocols` and escaping scheme
/// (Prometheus 3), or in the Prometheus 2 mode (`escaping` `None`) from its configured list,
/// else Prometheus 2.42's fixed header (protobuf first when native histograms are enabled).
pub fn accept_header(
    protocols: Option<&[ScrapeProtocol]>,
    native_histograms: bool,
    escaping: Option<Escaping>,
) -> String {
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
    for p in protocols {
        parts.push(format!("{};q=0.{weight}", media_range(*p, escaping)));
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
    fn prometheus_3_headers() {
        let text = [
            OpenMetricsText1_0_0,
            OpenMetricsText0_0_1,
            PrometheusText1_0_0,
            PrometheusText0_0_4,
        ];
        assert_eq!(
            accept_header(Some(&text), false, Some(Escaping::AllowUtf8)),
            "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        );
        let proto: Vec<_> = [PrometheusProto].into_iter().chain(text).collect();
        assert_eq!(
            accept_header(Some(&proto), true, Some(Escaping::AllowUtf8)),
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
        );
        assert_eq!(
            accept_header(Some(&text), false, Some(Escaping::Underscores)),
            "application/openmetrics-text;version=1.0.0;escaping=underscores;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=underscores;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        );
    }

    #[test]
    fn prometheus_3_content_types() {
        let f = |ct: Option<&str>, fb| Format::from_content_type_3(ct, fb);
        assert_eq!(
            f(Some("text/plain; version=0.0.4; charset=utf-8"), None),
            Ok(Format::Text)
        );
        assert_eq!(f(Some("Text/Plain"), None), Ok(Format::Text));
        assert_eq!(
            f(Some("application/openmetrics-text; version=1.0.0"), None),
            Ok(Format::OpenMetrics)
        );
        assert_eq!(
            f(
                Some(
                    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
                ),
                None
            ),
            Ok(Format::Protobuf)
        );
        for ct in [
            None,
            Some(""),
            Some("application/json"),
            Some("text/plain;;"),
        ] {
            assert!(f(ct, None).is_err(), "{ct:?}");
            assert_eq!(f(ct, Some(PrometheusText0_0_4)), Ok(Format::Text), "{ct:?}");
            assert_eq!(
                f(ct, Some(OpenMetricsText1_0_0)),
                Ok(Format::OpenMetrics),
                "{ct:?}"
            );
        }
        assert_eq!(
            f(None, None).err().unwrap_or_default(),
            "non-compliant scrape target sending blank Content-Type and no fallback_scrape_protocol specified for target"
        );
    }

    #[test]
    fn default_header_is_prometheus_2_42s() {
        assert_eq!(accept_header(None, false, None), DEFAULT_ACCEPT);
        assert_eq!(accept_header(None, true, None), NATIVE_HISTOGRAMS_ACCEPT);
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
                false,
                None
            ),
            "application/openmetrics-text;version=1.0.0;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.3"
        );
        assert_eq!(
            accept_header(Some(&[PrometheusText0_0_4]), false, None),
            "text/plain;version=0.0.4;q=0.6,*/*;q=0.5"
        );
        // The configured list wins over the feature flag.
        assert_eq!(
            accept_header(
                Some(&[PrometheusProto, PrometheusText1_0_0, OpenMetricsText1_0_0]),
                true,
                None
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
        assert!(accept_header(Some(&all), false, None).ends_with(",*/*;q=0.1"));
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
