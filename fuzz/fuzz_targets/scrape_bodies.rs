//! Scrape bodies, through the agent's three exposition parsers (text 0.0.4, OpenMetrics 1.0,
//! delimited protobuf), compiled here from the agent's own source files so the fuzz build
//! does not pull in the agent's RocksDB. The first byte picks the parser.
#![no_main]
#![allow(dead_code)]

use libfuzzer_sys::fuzz_target;

#[path = "../../agent/src/scrape/gofloat.rs"]
mod gofloat;
#[path = "../../agent/src/scrape/openmetrics.rs"]
mod openmetrics;
#[path = "../../agent/src/scrape/parse.rs"]
mod parse;
#[path = "../../agent/src/scrape/protobuf.rs"]
mod protobuf;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let limits = parse::Limits {
        max_samples: 10_000,
        ..Default::default()
    };
    match which % 3 {
        0 => {
            if let Ok(text) = std::str::from_utf8(body) {
                let _ = parse::parse(text, &limits);
            }
        }
        1 => {
            if let Ok(text) = std::str::from_utf8(body) {
                let _ = openmetrics::parse(text, &limits);
            }
        }
        _ => {
            let _ = protobuf::parse(body, &limits);
        }
    }
});
