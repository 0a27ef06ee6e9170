use std::path::PathBuf;

use super::*;
use crate::scrape::parse::{ERROR_SNIPPET_CHARS, NORMAL_NAN_BITS};

type Common = parse::ParseErrorKind;

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

/// The one sample of `line` followed by `# EOF`.
fn one(line: &str) -> ParsedSample {
    let mut e = ok(&format!("{line}\n# EOF\n"));
    assert_eq!(e.samples.len(), 1, "{line:?}");
    e.samples.remove(0)
}

/// The error kind for `line` followed by `# EOF`.
fn bad(line: &str) -> ParseErrorKind {
    err(&format!("{line}\n# EOF\n")).kind
}

fn labels(pairs: &[(&str, &str)]) -> Vec<Label> {
    pairs.iter().map(|(n, v)| Label::new(*n, *v)).collect()
}

fn fixtures() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openmetrics");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("fixture directory")
        .map(|e| {
            let path = e.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("fixture text");
            (path.display().to_string(), text)
        })
        .collect();
    out.sort();
    assert!(out.len() >= 5, "seed corpus in {}", dir.display());
    out
}

fn fixture(name: &str) -> String {
    fixtures()
        .into_iter()
        .find(|(path, _)| path.ends_with(name))
        .map(|(_, text)| text)
        .expect("named fixture")
}

#[test]
fn families_fixture() {
    let e = ok(&fixture("families.om"));
    // Prometheus 2.42 reports scrape_samples_scraped 25 for this body.
    assert_eq!(e.samples.len(), 25);
    assert_eq!(e.exemplars, 3);
    let t = |n: &str| e.types.get(n).copied();
    assert_eq!(t("http_requests"), Some(MetricType::Counter));
    assert_eq!(t("request_duration_seconds"), Some(MetricType::Histogram));
    assert_eq!(t("queue_depth"), Some(MetricType::Gaugehistogram));
    assert_eq!(t("feature_state"), Some(MetricType::Stateset));
    assert_eq!(t("build"), Some(MetricType::Info));
    assert_eq!(t("rpc_latency_seconds"), Some(MetricType::Summary));
    assert_eq!(t("temperature_celsius"), Some(MetricType::Gauge));
    assert_eq!(t("mystery"), Some(MetricType::Unknown));
    assert_eq!(e.types.len(), 8);

    let names: Vec<&str> = e.samples.iter().map(|s| s.name.as_str()).collect();
    // Every OpenMetrics series is ingested under its own name, `_created` included.
    for n in [
        "http_requests_total",
        "http_requests_created",
        "request_duration_seconds_created",
        "queue_depth_gcount",
        "queue_depth_gsum",
        "feature_state",
        "build_info",
        "rpc_latency_seconds_created",
    ] {
        assert!(names.contains(&n), "{n}");
    }
    let s = &e.samples[0];
    assert_eq!(s.labels, labels(&[("method", "get"), ("code", "200")]));
    assert_eq!(s.value, 1027.0);
    assert_eq!(s.timestamp_ms, Some(1_700_000_000_123));
    assert_eq!(e.samples[1].value, 1.6999e9);
    assert_eq!(e.samples[1].timestamp_ms, None);
    let info = e.samples.iter().find(|s| s.name == "build_info");
    assert_eq!(
        info.map(|s| s.labels.clone()),
        Some(labels(&[
            ("version", "1.2.3"),
            ("revision", "abc\"d\\e\nf")
        ]))
    );
    let nan = e.samples.iter().find(|s| s.value.is_nan());
    assert_eq!(nan.map(|s| s.value.to_bits()), Some(NORMAL_NAN_BITS));
    let last = e.samples.last().expect("samples");
    assert_eq!(last.labels, labels(&[("x", "")]));
    assert_eq!(last.value, f64::INFINITY);
}

#[test]
fn other_fixtures() {
    // Sample counts as Prometheus 2.42 reports them for the same bodies.
    assert_eq!(ok(&fixture("python_client.om")).samples.len(), 8);
    let e = ok(&fixture("edges.om"));
    assert_eq!(e.samples.len(), 12);
    // `{}`, the one with an empty-valued label, not the repeated name nor the 134-character one.
    assert_eq!(e.exemplars, 2);
    assert_eq!(ok(&fixture("eof_only.om")), Exposition::default());
    assert_eq!(ok(&fixture("no_final_newline.om")).samples.len(), 1);
}

#[test]
fn eof_rules() {
    use ParseErrorKind::*;
    assert_eq!(ok("m 1\n# EOF\n").samples.len(), 1);
    assert_eq!(ok("m 1\n# EOF").samples.len(), 1);
    assert_eq!(ok("# EOF"), Exposition::default());
    let cases: Vec<(&str, ParseError)> = vec![
        (
            "",
            ParseError {
                line: 1,
                kind: MissingEof,
            },
        ),
        (
            "m 1\n",
            ParseError {
                line: 2,
                kind: MissingEof,
            },
        ),
        (
            "m 1",
            ParseError {
                line: 1,
                kind: MissingEof,
            },
        ),
        (
            "m 1\n# EO",
            ParseError {
                line: 2,
                kind: MissingEof,
            },
        ),
        (
            "m 1\n# EOF\n\n",
            ParseError {
                line: 3,
                kind: DataAfterEof,
            },
        ),
        (
            "# EOF\n# EOF\n",
            ParseError {
                line: 2,
                kind: DataAfterEof,
            },
        ),
        (
            "# EOF\nm 1",
            ParseError {
                line: 2,
                kind: DataAfterEof,
            },
        ),
    ];
    for (input, want) in cases {
        assert_eq!(err(input), want, "{input:?}");
    }
    assert_eq!(
        err("m 1\n# EOF \n").kind,
        InvalidComment {
            found: "\"# EOF \"".into()
        }
    );
    assert!(matches!(
        err("m 1\r\n# EOF\r\n").kind,
        Sample(Common::InvalidValue { .. })
    ));
}

#[test]
fn metadata() {
    let e = ok(
        "# HELP m Some help.\n# HELP e \n# TYPE m counter\n# TYPE m gauge\n# UNIT m \n# UNIT m_seconds seconds\n# UNIT _s s\n# HELP x a\\x\\\n# HELP y a\0b\n# EOF\n",
    );
    assert_eq!(e.types.get("m"), Some(&MetricType::Gauge));
    assert_eq!(e.types.len(), 1);
    // Metadata is not checked against samples, and may come anywhere.
    assert_eq!(ok("m_total 1\n# TYPE m gauge\n# EOF\n").samples.len(), 1);
}

#[test]
fn metadata_errors() {
    use ParseErrorKind::*;
    let cases: Vec<(&str, ParseErrorKind)> = vec![
        (
            "# foo",
            InvalidComment {
                found: "\"# foo\"".into(),
            },
        ),
        (
            "#",
            InvalidComment {
                found: "\"#\"".into(),
            },
        ),
        (
            "#HELP m x",
            InvalidComment {
                found: "\"#HELP m x\"".into(),
            },
        ),
        (
            "#  HELP m x",
            InvalidComment {
                found: "\"#  HELP m x\"".into(),
            },
        ),
        (
            "# HELP",
            InvalidComment {
                found: "\"# HELP\"".into(),
            },
        ),
        (
            "# HELPm x",
            InvalidComment {
                found: "\"# HELPm x\"".into(),
            },
        ),
        (
            "# help m x",
            InvalidComment {
                found: "\"# help m x\"".into(),
            },
        ),
        (
            "# HELP m",
            MissingMetadataText {
                keyword: "HELP",
                found: "end of line".into(),
            },
        ),
        (
            "# TYPE m\tgauge",
            MissingMetadataText {
                keyword: "TYPE",
                found: "'\\t'".into(),
            },
        ),
        (
            "# HELP 0m x",
            MissingMetadataName {
                keyword: "HELP",
                found: "'0'".into(),
            },
        ),
        (
            "# UNIT  m x",
            MissingMetadataName {
                keyword: "UNIT",
                found: "' '".into(),
            },
        ),
        (
            "# TYPE m untyped",
            InvalidMetricType {
                found: "untyped".into(),
            },
        ),
        (
            "# TYPE m gauge ",
            InvalidMetricType {
                found: "gauge ".into(),
            },
        ),
        (
            "# TYPE m  gauge",
            InvalidMetricType {
                found: " gauge".into(),
            },
        ),
        (
            "# TYPE m Gauge",
            InvalidMetricType {
                found: "Gauge".into(),
            },
        ),
        ("# TYPE m ", InvalidMetricType { found: "".into() }),
        (
            "# UNIT m_seconds bytes",
            UnitNotSuffix {
                metric: "m_seconds".into(),
                unit: "bytes".into(),
            },
        ),
        (
            "# UNIT seconds seconds",
            UnitNotSuffix {
                metric: "seconds".into(),
                unit: "seconds".into(),
            },
        ),
        (
            "# UNIT mseconds seconds",
            UnitNotSuffix {
                metric: "mseconds".into(),
                unit: "seconds".into(),
            },
        ),
    ];
    for (line, want) in cases {
        assert_eq!(bad(line), want, "{line:?}");
    }
    let e = err("a 1\n# TYPE a gauge\n# TYPE b nope\n# EOF\n");
    assert_eq!(e.line, 3);
    assert_eq!(e.to_string(), "line 3: invalid metric type \"nope\"");
}

#[test]
fn labels_and_escapes() {
    let s = one(r#"m{a="x\\y",b="q\"q",c="l\nl",d="t\tt",e="\\n",f="\\",g="é\ü",h=""} 1"#);
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
            ("h", ""),
        ])
    );
    assert_eq!(one("m{} 1").labels, vec![]);
    assert_eq!(one("a:b_c:9 1").name, "a:b_c:9");
    assert_eq!(one("_x{_y=\"{}, =\"} 1").labels, labels(&[("_y", "{}, =")]));
    assert_eq!(one("m{a=\"x\0y\"} 1").labels, labels(&[("a", "x\0y")]));
}

#[test]
fn label_syntax_errors() {
    use ParseErrorKind::*;
    // A trailing comma: Prometheus 2.42 refused it, Prometheus 3 takes it.
    assert_eq!(
        parse_with(
            "m{a=\"1\",} 1\n# EOF\n",
            &Limits::default(),
            Dialect::Prometheus2
        )
        .map_err(|e| e.kind)
        .err(),
        Some(ExpectedLabelName {
            found: "'}'".into()
        })
    );
    let cases: Vec<(&str, ParseErrorKind)> = vec![
        (
            "m{a=\"1\", b=\"2\"} 1",
            ExpectedLabelName {
                found: "' '".into(),
            },
        ),
        (
            "m{,a=\"1\"} 1",
            ExpectedLabelName {
                found: "','".into(),
            },
        ),
        (
            "m{ a=\"1\"} 1",
            ExpectedLabelName {
                found: "' '".into(),
            },
        ),
        (
            "m{0=\"1\"} 1",
            ExpectedLabelName {
                found: "'0'".into(),
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
            "m{a =\"1\"} 1",
            ExpectedEquals {
                label: "a".into(),
                found: "' '".into(),
            },
        ),
        (
            "m{a= \"1\"} 1",
            ExpectedLabelValue {
                label: "a".into(),
                found: "' '".into(),
            },
        ),
        (
            "m{a='1'} 1",
            ExpectedLabelValue {
                label: "a".into(),
                found: "'\\''".into(),
            },
        ),
        (
            "m{a=\"1\" } 1",
            ExpectedCommaOrBrace {
                found: "' '".into(),
            },
        ),
        (
            "m{a=\"1\"b=\"2\"} 1",
            ExpectedCommaOrBrace {
                found: "'b'".into(),
            },
        ),
        (
            "m{a=\"1\"\0} 1",
            ExpectedCommaOrBrace {
                found: "'\\0'".into(),
            },
        ),
        (
            "m{a=\"1\"",
            ExpectedCommaOrBrace {
                found: "end of line".into(),
            },
        ),
        ("m{a=\"1} 1", UnterminatedLabelValue { label: "a".into() }),
        ("m{a=\"1\\", UnterminatedLabelValue { label: "a".into() }),
        (
            "m{a=\"1\\\"} 1",
            UnterminatedLabelValue { label: "a".into() },
        ),
        (
            "m{",
            ExpectedLabelName {
                found: "end of line".into(),
            },
        ),
    ];
    for (line, want) in cases {
        assert_eq!(bad(line), want, "{line:?}");
    }
    // A raw line break ends the value's line: the value is unterminated.
    assert_eq!(
        err("m{a=\"x\ny\"} 1\n# EOF\n"),
        ParseError {
            line: 1,
            kind: UnterminatedLabelValue { label: "a".into() }
        }
    );
    assert_eq!(
        bad("m{a=\"1\",a=\"2\"} 1"),
        Sample(Common::DuplicateLabelName { name: "a".into() })
    );
    assert_eq!(
        bad("m{__name__=\"x\"} 1"),
        Sample(Common::NameLabelInBraces)
    );
}

#[test]
fn values_and_layout() {
    use ParseErrorKind::*;
    let v = |s: &str| one(&format!("m {s}")).value;
    assert_eq!(v("1"), 1.0);
    assert_eq!(v("-1.5e3"), -1500.0);
    assert_eq!(v("+Inf"), f64::INFINITY);
    assert_eq!(v("-Infinity"), f64::NEG_INFINITY);
    assert_eq!(v(".5"), 0.5);
    assert_eq!(v("nan").to_bits(), NORMAL_NAN_BITS);
    for bad_value in ["+NaN", "0x1p3", "1_0", "1,5", "x", "1\r", "1\t2", "1}"] {
        assert_eq!(
            bad(&format!("m {bad_value}")),
            Sample(Common::InvalidValue {
                value: bad_value.into()
            }),
            "{bad_value:?}"
        );
    }
    assert_eq!(
        bad("m 1e400"),
        Sample(Common::ValueOutOfRange {
            value: "1e400".into()
        })
    );
    let cases: Vec<(&str, ParseErrorKind)> = vec![
        (
            "m",
            MissingValue {
                found: "end of line".into(),
            },
        ),
        (
            "m  1",
            MissingValue {
                found: "' '".into(),
            },
        ),
        (
            "m\t1",
            MissingValue {
                found: "'\\t'".into(),
            },
        ),
        (
            "m ",
            MissingValue {
                found: "' '".into(),
            },
        ),
        (
            "m{}1",
            MissingValue {
                found: "'1'".into(),
            },
        ),
        (
            "m{a=\"1\"}{b=\"2\"} 1",
            MissingValue {
                found: "'{'".into(),
            },
        ),
        (
            "m 1 ",
            ExpectedTimestampOrExemplar {
                found: "' '".into(),
            },
        ),
        (
            "m 1  2",
            ExpectedTimestampOrExemplar {
                found: "' '".into(),
            },
        ),
        (
            "m 1\0",
            ExpectedTimestampOrExemplar {
                found: "'\\0'".into(),
            },
        ),
        (
            "m 1 2 3",
            ExpectedEndOfLine {
                found: "\"3\"".into(),
            },
        ),
        (
            "m 1 2 ",
            ExpectedEndOfLine {
                found: "' '".into(),
            },
        ),
        (
            "-m 1",
            UnexpectedLineStart {
                found: "'-'".into(),
            },
        ),
        (
            " m 1",
            UnexpectedLineStart {
                found: "' '".into(),
            },
        ),
        (
            "",
            UnexpectedLineStart {
                found: "end of line".into(),
            },
        ),
        (
            "\0m 1",
            UnexpectedLineStart {
                found: "'\\0'".into(),
            },
        ),
    ];
    for (line, want) in cases {
        assert_eq!(bad(line), want, "{line:?}");
    }
    // A space between the name and the braces makes the braces the value.
    assert_eq!(
        bad("m {a=\"b\"} 1"),
        Sample(Common::InvalidValue {
            value: "{a=\"b\"}".into()
        })
    );
}

#[test]
fn timestamps_are_float_seconds() {
    let ts = |s: &str| one(&format!("m 1 {s}")).timestamp_ms;
    assert_eq!(ts("1700000000"), Some(1_700_000_000_000));
    assert_eq!(ts("1700000000.123"), Some(1_700_000_000_123));
    assert_eq!(ts("1e3"), Some(1_000_000));
    assert_eq!(ts("-1.5"), Some(-1500));
    assert_eq!(ts("0"), Some(0));
    assert_eq!(ts("-0"), Some(0));
    assert_eq!(ts("+5"), Some(5000));
    // Float multiplication, then truncation toward zero, as Go's int64(ts * 1000).
    assert_eq!(ts("1.001"), Some(1000));
    assert_eq!(ts("0.0016"), Some(1));
    assert_eq!(ts("-0.0016"), Some(-1));
    // Prometheus 2.42 stored these at .001 and 176.000 s (checked against the real thing).
    assert_eq!(ts("1795557175.0016"), Some(1_795_557_175_001));
    assert_eq!(ts("1795557175.9999999"), Some(1_795_557_176_000));
    // Out of the i64 range: Go on amd64 gives i64::MIN.
    assert_eq!(ts("1e300"), Some(i64::MIN));
    assert_eq!(ts("-1e300"), Some(i64::MIN));
    assert_eq!(ts("9223372036854775.807"), Some(i64::MIN));
    assert_eq!(ts("-9223372036854775.808"), Some(i64::MIN));
    assert_eq!(ts("1e15"), Some(1_000_000_000_000_000_000));
    for bad_ts in [
        "NaN",
        "Inf",
        "-Inf",
        "1e400",
        "x",
        "0x10",
        "1_0",
        "#",
        "#{a=\"b\"}",
    ] {
        assert_eq!(
            bad(&format!("m 1 {bad_ts}")),
            ParseErrorKind::InvalidTimestamp {
                value: bad_ts.into()
            },
            "{bad_ts:?}"
        );
    }
}

#[test]
fn exemplars() {
    use ParseErrorKind::*;
    // Prometheus 2.42 took exemplars on `_total` and `_bucket` samples only.
    let two = |line: &str| {
        parse_with(
            &format!("{line}\n# EOF\n"),
            &Limits::default(),
            Dialect::Prometheus2,
        )
        .map_err(|e| e.kind)
    };
    assert_eq!(
        two("m 1 # {a=\"b\"} 1").err(),
        Some(ExemplarNotAllowed { metric: "m".into() })
    );
    assert_eq!(
        two("m_count 1 # {a=\"b\"} 1").err(),
        Some(ExemplarNotAllowed {
            metric: "m_count".into()
        })
    );
    let count = |line: &str| ok(&format!("{line}\n# EOF\n")).exemplars;
    assert_eq!(count("m_total 1 # {a=\"b\"} 1"), 1);
    assert_eq!(count("m_total 1 # {a=\"b\"} NaN 1700000000.5"), 1);
    assert_eq!(count("m_total 1 1700000000 # {a=\"b\",c=\"d\"} -1 -2"), 1);
    assert_eq!(count("h_bucket{le=\"1\"} 1 # {} 0.5"), 1);
    assert_eq!(count("m_total 1 # {a=\"\"} 1"), 1);
    assert_eq!(count("m_total 1 # {a=\"\\q\"} 1"), 1);
    // Dropped as Prometheus drops them, without failing the body.
    assert_eq!(count("m_total 1 # {a=\"b\",a=\"c\"} 1"), 0);
    let at_limit = format!("m_total 1 # {{a=\"{}\"}} 1", "é".repeat(127));
    assert_eq!(count(&at_limit), 1);
    let over = format!("m_total 1 # {{a=\"{}\"}} 1", "é".repeat(128));
    assert_eq!(count(&over), 0);
    // Escapes count as written (Prometheus does not unescape exemplar values).
    let escaped = format!("m_total 1 # {{a=\"{}\\\\\"}} 1", "x".repeat(126));
    assert_eq!(count(&escaped), 0);
    // Empty-valued labels do not count toward the limit.
    let with_empty = format!("m_total 1 # {{a=\"{}\",empty=\"\"}} 1", "x".repeat(127));
    assert_eq!(count(&with_empty), 1);
    // The sample itself is unaffected.
    let s = one("m_total{x=\"y\"} 2 3 # {t=\"1\"} 4 5");
    assert_eq!((s.value, s.timestamp_ms), (2.0, Some(3000)));
    assert_eq!(s.labels, labels(&[("x", "y")]));

    let cases: Vec<(&str, ParseErrorKind)> = vec![
        (
            "m_total 1 # {a=\"b\"}",
            MissingExemplarValue {
                found: "end of line".into(),
            },
        ),
        (
            "m_total 1 # {a=\"b\"}  1",
            MissingExemplarValue {
                found: "' '".into(),
            },
        ),
        (
            "m_total 1 # {a=\"b\"} x",
            InvalidExemplarValue { value: "x".into() },
        ),
        (
            "m_total 1 # {a=\"b\"} 1e999",
            InvalidExemplarValue {
                value: "1e999".into(),
            },
        ),
        (
            "m_total 1 # {a=\"b\"} 1 NaN",
            InvalidExemplarTimestamp {
                value: "NaN".into(),
            },
        ),
        (
            "m_total 1 # {a=\"b\"} 1 2 3",
            ExpectedEndOfExemplar {
                found: "\"3\"".into(),
            },
        ),
        (
            "m_total 1 # {a=\"b\"} 1 ",
            ExpectedEndOfExemplar {
                found: "' '".into(),
            },
        ),
        (
            "m_total 1 # {a=\"b\"} 1 2 ",
            ExpectedEndOfExemplar {
                found: "' '".into(),
            },
        ),
        (
            "m_total 1 # {a=\"b\" } 1",
            ExpectedCommaOrBrace {
                found: "' '".into(),
            },
        ),
        (
            "m_total 1 # { a=\"b\"} 1",
            ExpectedLabelName {
                found: "' '".into(),
            },
        ),
        (
            "m_total 1 #{a=\"b\"} 1",
            InvalidTimestamp {
                value: "#{a=\"b\"}".into(),
            },
        ),
        ("m_total 1 # a", InvalidTimestamp { value: "#".into() }),
        (
            "m_total 1 2 # a",
            ExpectedEndOfLine {
                found: "\"#\"".into(),
            },
        ),
        (
            "m_total 1 # {a=\"b\"} 1 # {c=\"d\"} 1",
            InvalidExemplarTimestamp { value: "#".into() },
        ),
    ];
    for (line, want) in cases {
        assert_eq!(bad(line), want, "{line:?}");
    }
    // An exemplar at the very end still needs its line break and `# EOF`.
    assert_eq!(err("m_total 1 # {a=\"b\"} 1").kind, MissingEof);
}

#[test]
fn limits_are_those_of_the_text_format() {
    let body = "a{x=\"1\",y=\"22\"} 1\nbb{x=\"1\"} 2\nccc 3\n# EOF\n";
    let with = |l: Limits| parse(body, &l);
    assert_eq!(with(Limits::default()).map(|e| e.samples.len()), Ok(3));
    assert_eq!(
        with(Limits {
            max_samples: 2,
            ..Limits::default()
        }),
        Err(ParseError {
            line: 3,
            kind: ParseErrorKind::Sample(Common::SampleLimitExceeded { limit: 2 })
        })
    );
    assert_eq!(
        err_with(
            body,
            &Limits {
                max_label_names: 2,
                ..Limits::default()
            }
        )
        .kind,
        ParseErrorKind::Sample(Common::LabelLimitExceeded {
            metric: "a".into(),
            count: 3,
            limit: 2
        })
    );
    assert_eq!(
        err_with(
            body,
            &Limits {
                max_label_name_len: 7,
                ..Limits::default()
            }
        )
        .kind,
        ParseErrorKind::Sample(Common::LabelNameTooLong {
            name: "__name__".into(),
            len: 8,
            limit: 7
        })
    );
    assert_eq!(
        err_with(
            body,
            &Limits {
                max_label_value_len: 2,
                ..Limits::default()
            }
        ),
        ParseError {
            line: 3,
            kind: ParseErrorKind::Sample(Common::LabelValueTooLong {
                name: "__name__".into(),
                len: 3,
                limit: 2
            })
        }
    );
}

#[test]
fn errors_display_and_stay_small() {
    let e = err("m 1\nm{a=\"1\",a=\"2\"} 1\n# EOF\n");
    assert_eq!(
        e.to_string(),
        "line 2: label name \"a\" appears more than once"
    );
    assert_eq!(
        err("m 1\n").to_string(),
        "line 2: data does not end with `# EOF`"
    );
    let long = "x".repeat(10_000);
    match bad(&format!("m {long}")) {
        ParseErrorKind::Sample(Common::InvalidValue { value }) => {
            assert_eq!(value.chars().count(), ERROR_SNIPPET_CHARS + 1);
        }
        other => panic!("unexpected {other:?}"),
    }
    match bad(&format!("# {long}")) {
        ParseErrorKind::InvalidComment { found } => assert!(found.len() < 200),
        other => panic!("unexpected {other:?}"),
    }
}

/// Checks what must hold for any `Ok` result, and that errors point at a real line.
fn check_invariants(input: &str, limits: &Limits) {
    match parse(input, limits) {
        Ok(e) => {
            assert!(
                input.ends_with("# EOF") || input.ends_with("# EOF\n"),
                "{input:?}"
            );
            if limits.max_samples > 0 {
                assert!(e.samples.len() <= limits.max_samples);
            }
            assert!(e.exemplars <= e.samples.len());
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

const LIMIT_SETS: [Limits; 2] = [
    Limits {
        max_samples: 0,
        max_label_names: 0,
        max_label_name_len: 0,
        max_label_value_len: 0,
    },
    Limits {
        max_samples: 5,
        max_label_names: 4,
        max_label_name_len: 10,
        max_label_value_len: 12,
    },
];

fn run(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for limits in &LIMIT_SETS {
        check_invariants(&text, limits);
    }
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that matter to the grammar, substituted and inserted by the mutations.
const INTERESTING: &[u8] = b"{}\"\\,=# \n\0\rx0._eE+-";

/// Every seed: all prefixes, single-byte deletions, replacements and insertions, then a
/// bounded number of random multi-byte mutations. Nothing may panic, every `Ok` must satisfy
/// the invariants, and every seed itself must parse.
#[test]
fn fuzzish_mutations_of_every_seed_never_panic() {
    const RANDOM_ROUNDS: usize = 3_000;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut runs = 0usize;
    for (path, seed) in fixtures() {
        assert!(
            parse(&seed, &Limits::default()).is_ok(),
            "seed {path} parses"
        );
        let base = seed.as_bytes();
        for end in 0..=base.len() {
            run(base.get(..end).unwrap_or_default());
            runs += 1;
        }
        for i in 0..base.len() {
            let mut v = base.to_vec();
            v.remove(i);
            run(&v);
            for &r in INTERESTING {
                let mut v = base.to_vec();
                if let Some(b) = v.get_mut(i) {
                    *b = r;
                }
                run(&v);
                let mut v = base.to_vec();
                v.insert(i, r);
                run(&v);
            }
            runs += 1 + 2 * INTERESTING.len();
        }
        for _ in 0..RANDOM_ROUNDS {
            let mut v = base.to_vec();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(v.len() + 1);
                match rng.below(4) {
                    0 if i < v.len() => {
                        v.remove(i);
                    }
                    1 if i < v.len() => {
                        let r = INTERESTING[rng.below(INTERESTING.len())];
                        v[i] = r;
                    }
                    2 => {
                        // Duplicate a chunk of the body somewhere else.
                        let start = rng.below(v.len());
                        let len = rng.below(40).min(v.len() - start);
                        let chunk: Vec<u8> = v[start..start + len].to_vec();
                        let at = rng.below(v.len() + 1);
                        v.splice(at..at, chunk);
                    }
                    _ => v.insert(i.min(v.len()), rng.next() as u8),
                }
            }
            run(&v);
            runs += 1;
        }
    }
    assert!(runs > 10_000, "{runs}");
}

#[test]
fn odd_inputs_never_panic() {
    for input in [
        "#",
        "# ",
        "# EOF\n\0",
        "# HELP",
        "# HELP ",
        "# TYPE m ",
        "# UNIT m ",
        "m",
        "m ",
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
        "m 1 # {",
        "m_total 1 # {",
        "m_total 1 # {}",
        "m_total 1 # {} ",
        "m_total 1 # {a=\"é\\",
        "m_total 1 # {} 1 ",
        "\r",
        "\n",
        "é",
        "m é",
        "m{é=\"\"} 1",
        "m{a=\"é\\",
        "# TYPE mé",
        "\u{0}",
        "m\u{0} 1",
        "m 1 é",
        "m 1 \u{0}",
    ] {
        for suffix in ["", "\n", "\n# EOF", "\n# EOF\n"] {
            let text = format!("{input}{suffix}");
            check_invariants(&text, &Limits::default());
            check_invariants(
                &text,
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

#[test]
fn prometheus_3_normalises_histogram_le_and_summary_quantile() {
    let body = "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"1000000\"} 2\n\
                # TYPE gh gaugehistogram\ngh_bucket{le=\"1\"} 1\n\
                # TYPE s summary\ns{quantile=\"0.5\"} 1\ns{quantile=\"1\"} 2\n# EOF\n";
    let values = |d: Dialect| -> Vec<String> {
        parse_with(body, &Limits::default(), d)
            .expect("valid")
            .samples
            .into_iter()
            .map(|s| s.labels[0].value.clone())
            .collect()
    };
    assert_eq!(
        values(Dialect::Prometheus3),
        ["1.0", "1e+06", "1", "0.5", "1.0"]
    );
    assert_eq!(
        values(Dialect::Prometheus2),
        ["1", "1000000", "1", "0.5", "1"]
    );
}

#[test]
fn prometheus_3_quoted_names_trailing_commas_and_exemplars_anywhere() {
    let e = ok(concat!(
        "# TYPE \"my.metric\" counter\n",
        "# HELP \"my.metric\" Dotted.\n",
        "{\"my.metric_total\",\"a.b\"=\"c\"} 1 # {\"trace.id\"=\"x\"} 1\n",
        "m{a=\"1\",} 2\n",
        "{\"q\\\"uote\"} 3\n",
        "g 4 # {t=\"y\"} 0.5\n",
        "# EOF\n"
    ));
    assert_eq!(e.types.get("my.metric"), Some(&MetricType::Counter));
    assert_eq!(e.samples[0].name, "my.metric_total");
    assert_eq!(e.samples[0].labels, labels(&[("a.b", "c")]));
    assert_eq!(e.samples[1].labels, labels(&[("a", "1")]));
    assert_eq!(e.samples[2].name, "q\"uote");
    assert!(e.samples[3].exemplar.is_some(), "an exemplar on a gauge");
    assert_eq!(
        bad("{a=\"1\"} 1"),
        Kind::Sample(parse::ParseErrorKind::MetricNameNotSet)
    );
    // Prometheus 2.42's grammar: none of these.
    for line in [
        "{\"m\"} 1",
        "m{\"a.b\"=\"c\"} 1",
        "m{a=\"1\",} 2",
        "g 4 # {t=\"y\"} 0.5",
    ] {
        let body = format!("{line}\n# EOF\n");
        assert!(
            parse_with(&body, &Limits::default(), Dialect::Prometheus2).is_err(),
            "{line}"
        );
    }
}
