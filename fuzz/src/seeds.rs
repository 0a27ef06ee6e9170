//! Writes seed inputs for the fuzz targets into `<dir>/<target>/` (real frames, batches and
//! bodies made by the encoders), so fuzzing starts from valid inputs. The committed seeds in
//! `fuzz/seeds/` come from it; regenerate them after a format change with
//! `cargo run --manifest-path fuzz/Cargo.toml --release --bin seeds -- fuzz/seeds` (without
//! the fuzzing RUSTFLAGS: this binary is not instrumented).

use std::collections::HashMap;
use std::path::Path;

use uplink_shared::codec::{TunnelEncoder, split_with};
use uplink_shared::remote_write::{
    BucketSpan, Exemplar, Histogram, Label, MetricMetadata, MetricType, Sample, TimeSeries,
    WriteRequest, encode_snappy, histogram,
};
use uplink_shared::wire::{Ack, AckStatus, Batch, Encoding, Frame, Hello, Status, TraceContext};

fn scrape(t: i64, n: usize) -> Vec<TimeSeries> {
    (0..n)
        .map(|i| TimeSeries {
            labels: vec![
                Label::new("__name__", format!("m{}", i % 3)),
                Label::new("cluster", "c1"),
                Label::new("instance", format!("host:{i}")),
            ],
            samples: vec![Sample {
                value: i as f64 * 1.5,
                timestamp: t,
            }],
            ..Default::default()
        })
        .collect()
}

fn write(dir: &Path, target: &str, name: &str, data: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("corpus dir");
    std::fs::write(d.join(name), data).expect("seed");
}

fn main() {
    let dir = std::env::args().nth(1).expect("usage: seeds <corpus dir>");
    let dir = Path::new(&dir);
    let mut enc = TunnelEncoder::new(1);
    let mut batches = Vec::new();
    for (k, t) in [1000, 2000, 3000].into_iter().enumerate() {
        let mut series = scrape(t, 4 + k);
        let mut metadata = vec![];
        if k == 2 {
            // The last batch carries a native histogram, an exemplar and metadata.
            series[0].samples.clear();
            series[0].histograms = vec![Histogram {
                count: Some(histogram::Count::CountInt(3)),
                sum: 1.5,
                schema: 1,
                positive_spans: vec![BucketSpan {
                    offset: 0,
                    length: 2,
                }],
                positive_deltas: vec![1, 1],
                timestamp: t,
                ..Default::default()
            }];
            series[1].exemplars = vec![Exemplar {
                labels: vec![Label::new("trace_id", "4bf92f3577b34da6")],
                value: 1.5,
                timestamp: t,
            }];
            metadata.push(MetricMetadata {
                r#type: MetricType::Histogram as i32,
                metric_family_name: "m0".into(),
                help: "seed".into(),
                unit: String::new(),
            });
        }
        let (set, rec) = split_with(series, metadata, t);
        let defs = HashMap::from([(set.id(), set.encode())]);
        let (payload, _) = enc.encode(&[rec], &defs).expect("encode");
        let body = zstd::bulk::decompress(&payload, 1 << 20).expect("body");
        write(dir, "tunnel_bodies", &format!("body-{k}"), &body);
        batches.push(payload);
    }
    let mut seq = Vec::new();
    for p in &batches {
        seq.extend_from_slice(&(p.len() as u16).to_be_bytes());
        seq.extend_from_slice(p);
    }
    write(dir, "tunnel_batches", "three", &seq);
    let req = WriteRequest {
        timeseries: scrape(5000, 5),
        metadata: vec![],
    };
    write(dir, "remote_write", "v1", &encode_snappy(&req));
    let frames = [
        Frame::Hello(Hello {
            version: 1,
            queue_id: 7,
            resume_seq: 3,
            agent: "uplink-agent/0".into(),
        }),
        Frame::Batch(Batch {
            first_seq: 3,
            count: 1,
            encoding: Encoding::Compact,
            trace: Some(TraceContext {
                trace_id: [1; 16],
                span_id: [2; 8],
                flags: 1,
            }),
            payload: batches[0].clone(),
        }),
        Frame::Ack(Ack {
            first_seq: 3,
            count: 1,
            status: AckStatus::Accepted,
            message: String::new(),
        }),
        Frame::Status(Status::default()),
    ];
    let mut all = Vec::new();
    for f in &frames {
        all.extend_from_slice(&f.to_bytes());
    }
    write(dir, "wire_frames", "all", &all);
    scrape_seeds(dir);
}

/// The exposition formats (first byte: 0 text, 1 OpenMetrics, 2 protobuf).
fn scrape_seeds(dir: &Path) {
    let text = "# HELP m Help.\n# TYPE m counter\nm{a=\"b\"} 1 1700000000000\nh_bucket{le=\"+Inf\"} 3\n";
    write(dir, "scrape_bodies", "text", &[b"\x00", text.as_bytes()].concat());
    let om = concat!(
        "# TYPE req counter\n# UNIT req_seconds seconds\n",
        "req_total{a=\"b\"} 1 1.5 # {trace_id=\"x\"} 0.5 1.4\n",
        "req_created 1.0\n# EOF\n"
    );
    write(dir, "scrape_bodies", "openmetrics", &[b"\x01", om.as_bytes()].concat());
    #[derive(Clone, PartialEq, prost::Message)]
    struct Family {
        #[prost(string, optional, tag = "1")]
        name: Option<String>,
        #[prost(int32, optional, tag = "3")]
        r#type: Option<i32>,
        #[prost(message, repeated, tag = "4")]
        metric: Vec<Metric>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Metric {
        #[prost(message, optional, tag = "7")]
        histogram: Option<Hist>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Hist {
        #[prost(uint64, optional, tag = "1")]
        sample_count: Option<u64>,
        #[prost(sint32, optional, tag = "5")]
        schema: Option<i32>,
        #[prost(double, optional, tag = "6")]
        zero_threshold: Option<f64>,
        #[prost(message, repeated, tag = "12")]
        positive_span: Vec<Span>,
        #[prost(sint64, repeated, packed = "false", tag = "13")]
        positive_delta: Vec<i64>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Span {
        #[prost(sint32, optional, tag = "1")]
        offset: Option<i32>,
        #[prost(uint32, optional, tag = "2")]
        length: Option<u32>,
    }
    let family = Family {
        name: Some("lat_seconds".into()),
        r#type: Some(4),
        metric: vec![Metric {
            histogram: Some(Hist {
                sample_count: Some(3),
                schema: Some(2),
                zero_threshold: Some(1e-128),
                positive_span: vec![Span {
                    offset: Some(-1),
                    length: Some(2),
                }],
                positive_delta: vec![1, 1],
            }),
        }],
    };
    let mut pb = vec![2u8];
    prost::Message::encode_length_delimited(&family, &mut pb).expect("encodes");
    write(dir, "scrape_bodies", "protobuf", &pb);
}
