use super::*;

fn pair(name: &str, value: &str) -> LabelPair {
    LabelPair {
        name: Some(name.into()),
        value: Some(value.into()),
    }
}

fn family(name: &str, ty: i32, metric: Vec<Metric>) -> MetricFamily {
    MetricFamily {
        name: Some(name.into()),
        help: Some(format!("help of {name}")),
        r#type: Some(ty),
        metric,
    }
}

fn delimited(families: &[MetricFamily]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in families {
        f.encode_length_delimited(&mut out).expect("encodes");
    }
    out
}

fn ex(trace: &str, value: f64, ts: Option<(i64, i32)>) -> Exemplar {
    Exemplar {
        label: vec![pair("trace_id", trace), pair("a", "b")],
        value: Some(value),
        timestamp: ts.map(|(seconds, nanos)| Timestamp { seconds, nanos }),
    }
}

fn native(count: u64) -> Histogram {
    Histogram {
        sample_count: Some(count),
        sample_sum: Some(4.5),
        schema: Some(3),
        zero_threshold: Some(1e-128),
        zero_count: Some(1),
        positive_span: vec![Span {
            offset: Some(-1),
            length: Some(2),
        }],
        positive_delta: vec![2, -1],
        bucket: vec![Bucket {
            cumulative_count: Some(1),
            upper_bound: Some(0.5),
            exemplar: Some(ex("n1", 0.4, Some((1_700_000_000, 5_000_000)))),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn names(e: &Exposition) -> Vec<String> {
    e.samples
        .iter()
        .map(|s| {
            let l: Vec<String> = s
                .labels
                .iter()
                .map(|l| format!("{}={}", l.name, l.value))
                .collect();
            format!("{}{{{}}}", s.name, l.join(","))
        })
        .collect()
}

#[test]
fn every_type_yields_prometheus_2_42s_samples() {
    let body = delimited(&[
        family(
            "c_total",
            COUNTER,
            vec![Metric {
                label: vec![pair("x", "1")],
                counter: Some(Counter {
                    value: Some(7.0),
                    exemplar: Some(ex("t1", 1.0, None)),
                    created_timestamp: Some(Timestamp {
                        seconds: 1_700_000_000,
                        nanos: 250_000_000,
                    }),
                }),
                timestamp_ms: Some(1234),
                ..Default::default()
            }],
        ),
        family(
            "g",
            GAUGE,
            vec![Metric {
                gauge: Some(Value { value: Some(-2.5) }),
                ..Default::default()
            }],
        ),
        family("empty", GAUGE, vec![]),
        family(
            "u",
            UNTYPED,
            vec![Metric {
                untyped: Some(Value { value: Some(3.0) }),
                timestamp_ms: Some(0),
                ..Default::default()
            }],
        ),
        family(
            "s",
            SUMMARY,
            vec![Metric {
                summary: Some(Summary {
                    sample_count: Some(10),
                    sample_sum: Some(2.0),
                    quantile: vec![
                        Quantile {
                            quantile: Some(0.5),
                            value: Some(0.1),
                        },
                        Quantile {
                            quantile: Some(1.0),
                            value: Some(0.9),
                        },
                    ],
                    created_timestamp: None,
                }),
                ..Default::default()
            }],
        ),
        family(
            "h",
            HISTOGRAM,
            vec![Metric {
                histogram: Some(Histogram {
                    sample_count: Some(5),
                    sample_sum: Some(1.5),
                    bucket: vec![
                        Bucket {
                            cumulative_count: Some(2),
                            upper_bound: Some(0.00001),
                            ..Default::default()
                        },
                        Bucket {
                            cumulative_count: Some(4),
                            upper_bound: Some(10.0),
                            exemplar: Some(ex("t2", 7.0, Some((1, 2_000_000)))),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }),
                ..Default::default()
            }],
        ),
        family(
            "n",
            HISTOGRAM,
            vec![Metric {
                label: vec![pair("k", "v")],
                histogram: Some(native(4)),
                ..Default::default()
            }],
        ),
    ]);
    let e = parse(&body, &Limits::default()).expect("parses");
    assert_eq!(
        names(&e),
        [
            "c_total{x=1}",
            "g{}",
            "u{}",
            "s_count{}",
            "s_sum{}",
            "s{quantile=0.5}",
            "s{quantile=1.0}",
            "h_count{}",
            "h_sum{}",
            "h_bucket{le=1e-05}",
            "h_bucket{le=10.0}",
            "h_bucket{le=+Inf}",
            "n{k=v}",
        ]
    );
    let values: Vec<f64> = e.samples.iter().map(|s| s.value).collect();
    assert_eq!(
        values[..12],
        [7.0, -2.5, 3.0, 10.0, 2.0, 0.1, 0.9, 5.0, 1.5, 2.0, 4.0, 5.0]
    );
    // Created timestamps go with the counter.
    assert_eq!(e.samples[0].created_ms, Some(1_700_000_000_250));
    assert_eq!(e.samples[1].created_ms, None);
    // Timestamps: set, and 0 meaning unset.
    assert_eq!(e.samples[0].timestamp_ms, Some(1234));
    assert_eq!(e.samples[2].timestamp_ms, None);
    // Exemplars: labels sorted; the timestamp from seconds and nanos.
    let c = e.samples[0].exemplar.as_deref().expect("counter exemplar");
    assert_eq!(
        (c.labels[0].name.as_str(), c.value, c.timestamp_ms),
        ("a", 1.0, None)
    );
    let b = e.samples[10].exemplar.as_deref().expect("bucket exemplar");
    assert_eq!(b.timestamp_ms, Some(1002));
    // The native histogram, its exemplar taken from its first classic bucket.
    let n = &e.samples[12];
    let h = n.histogram.as_deref().expect("native");
    assert_eq!(h.count, Some(histogram::Count::CountInt(4)));
    assert_eq!(h.zero_count, Some(histogram::ZeroCount::ZeroCountInt(1)));
    assert_eq!(
        (h.schema, h.sum, h.positive_deltas.clone()),
        (3, 4.5, vec![2, -1])
    );
    assert_eq!(
        h.positive_spans,
        [BucketSpan {
            offset: -1,
            length: 2
        }]
    );
    assert_eq!(
        n.exemplar.as_deref().map(|e| e.timestamp_ms),
        Some(Some(1_700_000_000_005))
    );
    // Metadata for every family with metrics.
    assert_eq!(e.types.get("s"), Some(&MetricType::Summary));
    assert_eq!(e.types.get("u"), Some(&MetricType::Unknown));
    assert_eq!(e.help.get("n").map(String::as_str), Some("help of n"));
    assert!(!e.types.contains_key("empty"));
}

#[test]
fn float_and_gauge_histograms() {
    let h = Histogram {
        sample_count_float: Some(2.5),
        sample_sum: Some(1.0),
        schema: Some(0),
        zero_count_float: Some(0.5),
        positive_span: vec![Span {
            offset: Some(0),
            length: Some(1),
        }],
        positive_count: vec![2.0],
        ..Default::default()
    };
    let body = delimited(&[family(
        "gh",
        GAUGE_HISTOGRAM,
        vec![Metric {
            histogram: Some(h),
            ..Default::default()
        }],
    )]);
    let e = parse(&body, &Limits::default()).expect("parses");
    let h = e.samples[0].histogram.as_deref().expect("native");
    assert_eq!(h.count, Some(histogram::Count::CountFloat(2.5)));
    assert_eq!(
        h.zero_count,
        Some(histogram::ZeroCount::ZeroCountFloat(0.5))
    );
    assert_eq!(h.positive_counts, [2.0]);
    assert_eq!(h.reset_hint, histogram::ResetHint::Gauge as i32);
    assert_eq!(e.types.get("gh"), Some(&MetricType::Gaugehistogram));
}

#[test]
fn a_family_is_native_by_its_first_metric() {
    // The second metric has no native part but is sent as a (empty) native histogram, as
    // Prometheus 2.42 decides per family.
    let body = delimited(&[family(
        "n",
        HISTOGRAM,
        vec![
            Metric {
                label: vec![pair("i", "0")],
                histogram: Some(native(1)),
                ..Default::default()
            },
            Metric {
                label: vec![pair("i", "1")],
                histogram: Some(Histogram {
                    sample_count: Some(0),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ],
    )]);
    let e = parse(&body, &Limits::default()).expect("parses");
    assert_eq!(e.samples.len(), 2);
    assert!(e.samples.iter().all(|s| s.histogram.is_some()));
}

#[test]
fn bad_bodies_fail_with_their_family() {
    let ok = delimited(&[family(
        "g",
        GAUGE,
        vec![Metric {
            gauge: Some(Value { value: Some(1.0) }),
            ..Default::default()
        }],
    )]);
    let err = |body: &[u8]| parse(body, &Limits::default()).expect_err("fails");
    // Names: Prometheus 3 takes any non-empty UTF-8 name; the legacy rules of Prometheus 2
    // are checked below.
    let err2 = |body: &[u8]| {
        parse_with(
            body,
            &Limits::default(),
            Histograms::default(),
            crate::scrape::parse::Dialect::Prometheus2,
        )
        .expect_err("fails")
    };
    let mut truncated = ok.clone();
    truncated.pop();
    assert!(matches!(
        err(&truncated).kind,
        ParseErrorKind::Truncated { .. }
    ));
    let mut twice = ok.clone();
    twice.extend_from_slice(&[0xff; 11]);
    assert_eq!(err(&twice).family, 2);
    assert_eq!(err(&twice).kind, ParseErrorKind::InvalidLength);
    let bad = |mf: MetricFamily| err2(&delimited(&[mf])).kind;
    let mut m = Metric {
        gauge: Some(Value { value: Some(1.0) }),
        ..Default::default()
    };
    assert!(matches!(
        bad(family("1x", GAUGE, vec![m.clone()])),
        ParseErrorKind::InvalidMetricName(_)
    ));
    assert_eq!(
        bad(family("g", 9, vec![m.clone()])),
        ParseErrorKind::UnknownType(9)
    );
    m.label = vec![pair("a-b", "x")];
    assert!(matches!(
        bad(family("g", GAUGE, vec![m.clone()])),
        ParseErrorKind::InvalidLabelName(_)
    ));
    m.label = vec![pair("__name__", "x")];
    assert!(matches!(
        bad(family("g", GAUGE, vec![m.clone()])),
        ParseErrorKind::Sample(_)
    ));
    m.label = vec![pair("a", "x"), pair("a", "y")];
    assert!(matches!(
        bad(family("g", GAUGE, vec![m])),
        ParseErrorKind::Sample(_)
    ));
    // Limits apply per sample, as in the text formats.
    let limits = Limits {
        max_samples: 2,
        ..Default::default()
    };
    let three = delimited(&[family(
        "s",
        SUMMARY,
        vec![Metric {
            summary: Some(Summary {
                quantile: vec![Quantile::default()],
                ..Default::default()
            }),
            ..Default::default()
        }],
    )]);
    assert!(parse(&three, &limits).is_err());
}

#[test]
fn arbitrary_bytes_never_panic() {
    let body = delimited(&[family(
        "n",
        HISTOGRAM,
        vec![Metric {
            histogram: Some(native(3)),
            ..Default::default()
        }],
    )]);
    for i in 0..body.len() {
        for b in [0u8, 0x7f, 0x80, 0xff] {
            let mut m = body.clone();
            m[i] = b;
            let _ = parse(&m, &Limits::default());
            let _ = parse(&m[..i], &Limits::default());
        }
    }
}

#[test]
fn floats_print_as_go_does() {
    for (f, want) in [
        (1.0, "1.0"),
        (0.0, "0.0"),
        (-1.0, "-1.0"),
        (0.25, "0.25"),
        (0.005, "0.005"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (2.5e-7, "2.5e-07"),
        (10.0, "10.0"),
        (123_456_789.0, "1.23456789e+08"),
        (100_000.0, "100000.0"),
        (1e6, "1e+06"),
        (1e20, "1e+20"),
        (1e21, "1e+21"),
        (1.5e300, "1.5e+300"),
        (f64::INFINITY, "+Inf"),
        (f64::NEG_INFINITY, "-Inf"),
        (f64::NAN, "NaN"),
    ] {
        assert_eq!(go_float(f), want, "{f}");
    }
}

#[test]
fn prometheus_3_histogram_options_and_utf8_names() {
    let body = delimited(&[family(
        "h.dotted",
        HISTOGRAM,
        vec![Metric {
            label: vec![pair("a.b", "x")],
            histogram: Some(native(3)),
            ..Default::default()
        }],
    )]);
    let bare =
        |e: &Exposition| -> Vec<String> { e.samples.iter().map(|s| s.name.clone()).collect() };
    let read = |native, classic| {
        parse_with(
            &body,
            &Limits::default(),
            Histograms { native, classic },
            crate::scrape::parse::Dialect::Prometheus3,
        )
        .expect("parses")
    };
    // Native only (Prometheus 3.5's flag, or `scrape_native_histograms: true`).
    let e = read(true, false);
    assert_eq!(bare(&e), ["h.dotted"]);
    assert!(e.samples[0].histogram.is_some());
    assert_eq!(e.samples[0].labels, [Label::new("a.b", "x")]);
    // And the classic series (`always_scrape_classic_histograms: true`).
    let e = read(true, true);
    assert_eq!(
        bare(&e),
        [
            "h.dotted",
            "h.dotted_count",
            "h.dotted_sum",
            "h.dotted_bucket",
            "h.dotted_bucket"
        ]
    );
    // Native ingestion off: read as a classic histogram (Prometheus >= 3.8).
    let e = read(false, false);
    assert_eq!(
        bare(&e),
        [
            "h.dotted_count",
            "h.dotted_sum",
            "h.dotted_bucket",
            "h.dotted_bucket"
        ]
    );
    assert!(e.samples.iter().all(|s| s.histogram.is_none()));
}
