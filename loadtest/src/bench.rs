//! Benchmarks of the tunnel encoding (issue: 2 bytes per sample or less).
//!
//! - [`codec`]: in process, on the probe's mix: bytes per sample and CPU per sample of the
//!   compact encoding against remote write 1.0 (snappy) and 2.0 (+ zstd) on the same data, in
//!   steady state and in the worst case (every series new at every scrape).
//! - `tunnel` (in `bench_tunnel.rs`): live, side by side in one run: probe targets and a real
//!   node_exporter scraped by an Uplink agent (bytes counted on the UDP socket, QUIC and TLS
//!   included) and by Prometheus in agent mode and vmagent (bytes counted on the TCP socket of
//!   their remote write).
//!
//! Build with `--release` for CPU figures; byte figures do not depend on the build.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use prost::Message;
use uplink_shared::codec::{self, ScrapeRecord, TunnelDecoder, TunnelEncoder};
use uplink_shared::model::{self, Label, Sample, TimeSeries};
use uplink_shared::remote_write::{self, WriteRequest};

use crate::probe::{self, ProbeSpec};

/// Settings of the codec benchmark.
#[derive(clap::Args, Debug, Clone)]
pub struct CodecArgs {
    /// Targets (each a separate series set).
    #[arg(long, default_value_t = 20)]
    pub targets: usize,
    /// Metric families per target.
    #[arg(long, default_value_t = 300)]
    pub families: usize,
    /// Scrapes per target.
    #[arg(long, default_value_t = 120)]
    pub scrapes: u64,
    /// Churn: 1% of series replaced every this many scrapes (60 = every 10 min at 10 s).
    #[arg(long, default_value_t = 60)]
    pub churn_every: u64,
    /// Scrape records per batch (one scrape round of all targets by default).
    #[arg(long)]
    pub batch: Option<usize>,
    /// zstd level.
    #[arg(long, default_value_t = 3)]
    pub level: i32,
}

/// One scrape of one target as series, with job/instance/site labels, Prometheus-like
/// timestamps (10 s interval, a few ms of jitter).
pub fn probe_scrape(spec: &ProbeSpec, t: usize, n: u64) -> Vec<TimeSeries> {
    let ts = 1_700_000_000_000 + n as i64 * 10_000 + ((n * 7 + t as u64) % 5) as i64;
    probe::expected(spec, t, n)
        .into_iter()
        .map(|(labels, value)| {
            let mut labels: Vec<Label> =
                labels.into_iter().map(|(k, v)| Label::new(k, v)).collect();
            labels.push(Label::new("job", "probe"));
            labels.push(Label::new(
                "instance",
                format!("10.0.{}.{}:9100", t / 250, t % 250),
            ));
            labels.push(Label::new("site", "plant-7"));
            model::normalize(&mut labels);
            TimeSeries {
                labels,
                samples: vec![Sample {
                    value,
                    timestamp: ts,
                }],
                ..Default::default()
            }
        })
        .collect()
}

/// Results, per sample.
#[derive(Debug, serde::Serialize)]
pub struct CodecReport {
    pub samples: u64,
    pub zstd_level: i32,
    /// Queue record bytes per sample on disk (series sets stored once, not counted).
    pub queue_record_bytes_per_sample: f64,
    /// The foundation's queue format (remote-write protobuf per scrape), for comparison.
    pub rw1_protobuf_record_bytes_per_sample: f64,
    pub compact_bytes_per_sample: f64,
    pub rw1_snappy_bytes_per_sample: f64,
    pub rw2_zstd_bytes_per_sample: f64,
    pub encode_ns_per_sample: f64,
    pub decode_samples_per_sec: f64,
    pub worst_case_compact_bytes_per_sample: f64,
    pub worst_case_rw2_zstd_bytes_per_sample: f64,
}

/// Runs the codec benchmark.
pub fn codec(args: &CodecArgs) -> anyhow::Result<CodecReport> {
    let spec = ProbeSpec {
        targets: args.targets,
        families: args.families,
        churn_every: args.churn_every,
    };
    let batch = args.batch.unwrap_or(args.targets).max(1);
    // Build every scrape up front so only coding is timed.
    let mut scrapes: Vec<(Vec<TimeSeries>, ScrapeRecord, u64, Bytes)> = Vec::new();
    for n in 0..args.scrapes {
        for t in 0..args.targets {
            let series = probe_scrape(&spec, t, n);
            let ts = series
                .first()
                .and_then(|s| s.samples.first())
                .map_or(0, |s| s.timestamp);
            let (set, rec) = codec::split(series.clone(), ts);
            scrapes.push((series, rec, set.id(), set.encode()));
        }
    }
    let defs: HashMap<u64, Bytes> = scrapes
        .iter()
        .map(|(_, _, id, d)| (*id, d.clone()))
        .collect();
    let samples: u64 = scrapes.iter().map(|(s, ..)| s.len() as u64).sum();

    let mut enc = TunnelEncoder::new(args.level);
    let mut payloads = Vec::new();
    let started = Instant::now();
    for chunk in scrapes.chunks(batch) {
        let recs: Vec<ScrapeRecord> = chunk.iter().map(|(_, r, ..)| r.clone()).collect();
        payloads.push(enc.encode(&recs, &defs)?.0);
    }
    let encode_ns = started.elapsed().as_nanos() as f64 / samples as f64;
    let compact: usize = payloads.iter().map(Bytes::len).sum();

    // The gateway's path: compact batch to remote-write protobuf (before snappy).
    let mut dec = TunnelDecoder::new(1 << 30, 1 << 20, 1 << 22);
    let mut out = bytes::BytesMut::new();
    let started = Instant::now();
    let mut decoded = 0u64;
    for p in &payloads {
        out.clear();
        decoded += dec.decode_remote_write(p, &mut out, 0)?.samples;
    }
    let decode_rate = decoded as f64 / started.elapsed().as_secs_f64();

    let (mut rw1, mut rw2) = (0usize, 0usize);
    for chunk in scrapes.chunks(batch) {
        let series: Vec<TimeSeries> = chunk.iter().flat_map(|(s, ..)| s.clone()).collect();
        rw1 += remote_write::encode_snappy(&WriteRequest {
            timeseries: series.clone(),
            metadata: vec![],
        })
        .len();
        let v2 = remote_write::v2::from_v1(&series).encode_to_vec();
        rw2 += zstd::bulk::compress(&v2, args.level)?.len();
    }

    // Worst case: every series new at every scrape (a new label value each time).
    let (mut worst_compact, mut worst_rw2, mut worst_samples) = (0usize, 0usize, 0u64);
    let mut enc = TunnelEncoder::new(args.level);
    for chunk in scrapes.chunks(batch).take(10) {
        let mut recs = Vec::new();
        let mut defs = HashMap::new();
        let mut all = Vec::new();
        for (series, rec, ..) in chunk {
            let mut series = series.clone();
            for s in &mut series {
                s.labels.push(Label::new(
                    "uid",
                    format!("{:x}", rec.timestamp ^ rec.set_id as i64),
                ));
                model::normalize(&mut s.labels);
            }
            let (set, r) = codec::split(series.clone(), rec.timestamp);
            defs.insert(set.id(), set.encode());
            recs.push(r);
            worst_samples += series.len() as u64;
            all.extend(series);
        }
        worst_compact += enc.encode(&recs, &defs)?.0.len();
        worst_rw2 +=
            zstd::bulk::compress(&remote_write::v2::from_v1(&all).encode_to_vec(), args.level)?
                .len();
    }

    let record_bytes: usize = scrapes.iter().map(|(_, r, ..)| r.encode().len()).sum();
    let rw1_records: usize = scrapes
        .iter()
        .map(|(s, ..)| {
            WriteRequest {
                timeseries: s.clone(),
                metadata: vec![],
            }
            .encoded_len()
        })
        .sum();
    let per = |b: usize, n: u64| b as f64 / n as f64;
    Ok(CodecReport {
        samples,
        zstd_level: args.level,
        queue_record_bytes_per_sample: per(record_bytes, samples),
        rw1_protobuf_record_bytes_per_sample: per(rw1_records, samples),
        compact_bytes_per_sample: per(compact, samples),
        rw1_snappy_bytes_per_sample: per(rw1, samples),
        rw2_zstd_bytes_per_sample: per(rw2, samples),
        encode_ns_per_sample: encode_ns,
        decode_samples_per_sec: decode_rate,
        worst_case_compact_bytes_per_sample: per(worst_compact, worst_samples),
        worst_case_rw2_zstd_bytes_per_sample: per(worst_rw2, worst_samples),
    })
}
