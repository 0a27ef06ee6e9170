//! Writes seed inputs for the fuzz targets into `<dir>/<target>/` (real frames, batches and
//! bodies made by the encoders), so fuzzing starts from valid inputs. The committed seeds in
//! `fuzz/seeds/` come from it; regenerate them after a format change with
//! `cargo run --manifest-path fuzz/Cargo.toml --release --bin seeds -- fuzz/seeds` (without
//! the fuzzing RUSTFLAGS: this binary is not instrumented).

use std::collections::HashMap;
use std::path::Path;

use uplink_shared::codec::{TunnelEncoder, split};
use uplink_shared::remote_write::{Label, Sample, TimeSeries, WriteRequest, encode_snappy};
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
        let (set, rec) = split(scrape(t, 4 + k), t);
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
}
