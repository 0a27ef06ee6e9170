//! Scrape bodies, through the agent's three exposition parsers (text, OpenMetrics 1.0,
//! delimited protobuf) in both dialects (Prometheus 3 and 2), then the classic-to-native
//! histogram conversion and the native histogram resolution limits, compiled here from the agent's own source files so the fuzz build
//! does not pull in the agent's RocksDB. The first byte picks the parser, the dialect and the
//! histogram options.
#![no_main]
#![allow(dead_code)]

use libfuzzer_sys::fuzz_target;

#[path = "../../agent/src/scrape/gofloat.rs"]
mod gofloat;
#[path = "../../agent/src/scrape/nhcb.rs"]
mod nhcb;
#[path = "../../agent/src/scrape/openmetrics.rs"]
mod openmetrics;
#[path = "../../agent/src/scrape/parse.rs"]
mod parse;
#[path = "../../agent/src/scrape/protobuf.rs"]
mod protobuf;
#[path = "../../agent/src/scrape/resolution.rs"]
mod resolution;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let limits = parse::Limits {
        max_samples: 10_000,
        ..Default::default()
    };
    let dialect = if which & 0x10 == 0 {
        parse::Dialect::Prometheus3
    } else {
        parse::Dialect::Prometheus2
    };
    let histograms = protobuf::Histograms {
        native: which & 0x20 == 0,
        classic: which & 0x40 != 0,
    };
    let parsed = match which % 3 {
        0 => std::str::from_utf8(body)
            .ok()
            .and_then(|text| parse::parse_with(text, &limits, dialect).ok()),
        1 => std::str::from_utf8(body)
            .ok()
            .and_then(|text| openmetrics::parse_with(text, &limits, dialect).ok()),
        _ => protobuf::parse_with(body, &limits, histograms, dialect).ok(),
    };
    if let Some(mut exp) = parsed {
        nhcb::convert(&mut exp, which & 0x80 != 0);
        // The resolution limits on whatever histograms came out (native or converted).
        let limits = resolution::Limits {
            bucket_limit: 3,
            max_schema: 2,
        };
        for s in &mut exp.samples {
            if let Some(h) = &mut s.histogram {
                limits.apply(h);
                resolution::reduce(h, resolution::SCHEMA_MIN);
            }
        }
    }
});
