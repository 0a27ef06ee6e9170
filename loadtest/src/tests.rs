//! In-process round trip: probe → HTTP → hand-built remote write → capture → oracle.

use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr};

use uplink_shared::remote_write::{
    CONTENT_TYPE, Label, Sample, TimeSeries, WriteRequest, encode_snappy,
};

use crate::capture::{Capture, CaptureReport, Received};
use crate::oracle::check;
use crate::probe::{Probe, ProbeSpec, expected, render};

const SPEC: ProbeSpec = ProbeSpec {
    targets: 2,
    families: 5,
    churn_every: 0,
};

fn extra() -> Vec<Label> {
    vec![Label::new("job", "probe"), Label::new("site", "a")]
}

/// What a correct relay would write for scrapes `0..n` of every target.
fn request(probe: &Probe, scrapes: u64) -> WriteRequest {
    let mut timeseries = Vec::new();
    for (t, addr) in probe.addrs.iter().enumerate() {
        for n in 0..scrapes {
            let ts = 1_000 * (n as i64 + 1) + t as i64;
            for (labels, value) in expected(&SPEC, t, n) {
                let mut labels: Vec<Label> =
                    labels.into_iter().map(|(k, v)| Label::new(k, v)).collect();
                labels.push(Label::new("instance", addr.to_string()));
                labels.extend(extra());
                labels.sort();
                timeseries.push(TimeSeries {
                    labels,
                    samples: vec![Sample {
                        value,
                        timestamp: ts,
                    }],
                    ..Default::default()
                });
            }
            let mut up = vec![
                Label::new("__name__", "up"),
                Label::new("instance", addr.to_string()),
            ];
            up.extend(extra());
            up.sort();
            timeseries.push(TimeSeries {
                labels: up,
                samples: vec![Sample {
                    value: 1.0,
                    timestamp: ts,
                }],
                ..Default::default()
            });
        }
    }
    WriteRequest {
        timeseries,
        metadata: vec![],
    }
}

async fn post(client: &reqwest::Client, cap: &Capture, body: bytes::Bytes) -> u16 {
    client
        .post(cap.url())
        .header("Content-Encoding", "snappy")
        .header("Content-Type", CONTENT_TYPE)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip() {
    let probe = Probe::start(SPEC, IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
        .await
        .unwrap();
    assert_eq!(probe.addrs.len(), 2);
    assert_eq!(probe.target_of(&probe.addrs[1].to_string()), Some(1));

    // Plain.
    let plain = reqwest::Client::builder().no_gzip().build().unwrap();
    let url = format!("http://{}/metrics", probe.addrs[0]);
    let resp = plain.get(&url).send().await.unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(resp.headers().get("content-encoding").is_none());
    assert_eq!(resp.text().await.unwrap(), render(&SPEC, 0, 0));

    // Gzip, decoded by hand to prove the body really is gzip.
    let resp = plain
        .get(&url)
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let gz = resp.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, render(&SPEC, 0, 1));

    // Gzip, decoded by reqwest.
    let auto = reqwest::Client::new();
    let text = auto.get(&url).send().await.unwrap().text().await.unwrap();
    assert_eq!(text, render(&SPEC, 0, 2));
    assert_eq!(probe.served(0), 3);
    assert_eq!(probe.served(1), 0);
    let text = auto
        .get(format!("http://{}/metrics", probe.addrs[1]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, render(&SPEC, 1, 0));

    // Capture.
    let cap = Capture::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let req = request(&probe, 3);
    let body = encode_snappy(&req);
    assert_eq!(post(&plain, &cap, body.clone()).await, 204);
    let per_scrape = crate::probe::spec_series_count(&SPEC) as u64 + 1; // + up
    assert_eq!(cap.len() as u64, 2 * 3 * per_scrape);
    assert_eq!(cap.requests(), 1);
    assert_eq!(cap.duplicates(), 0);
    assert_eq!(cap.label_order_violations(), 0);

    let got = cap.snapshot();
    let rep = check(&SPEC, &probe.addrs, &extra(), &got);
    assert!(rep.is_clean(), "{rep:#?}");
    assert_eq!(rep.other_samples, 6);
    assert_eq!(
        rep.scrapes[0].iter().copied().collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(rep.missing_scrapes(1, 5), vec![3, 4]);
    assert!(rep.missing_scrapes(0, 3).is_empty());

    // Tamper with one value.
    let mut bad = got.clone();
    let i = bad
        .iter()
        .position(|r| r.labels.iter().any(|l| l.value == "probe_gauge"))
        .unwrap();
    bad[i].value += 0.25;
    let rep = check(&SPEC, &probe.addrs, &extra(), &bad);
    assert_eq!(
        (rep.wrong, rep.missing_in_scrape, rep.duplicates),
        (1, 0, 0)
    );
    assert!(!rep.is_clean());
    assert!(rep.errors[0].contains("wrong value"), "{:?}", rep.errors);

    // Drop one series (not the scrape number).
    let mut dropped = got.clone();
    let i = dropped
        .iter()
        .position(|r| r.labels.iter().any(|l| l.value == "probe_histogram_sum"))
        .unwrap();
    dropped.remove(i);
    let rep = check(&SPEC, &probe.addrs, &extra(), &dropped);
    assert_eq!(
        (rep.wrong, rep.missing_in_scrape, rep.duplicates),
        (0, 1, 0)
    );

    // Drop the scrape number: inferred from the family-0 counter, reported missing.
    let mut dropped = got.clone();
    let i = dropped
        .iter()
        .position(|r| r.labels.iter().any(|l| l.value == "probe_scrape_number"))
        .unwrap();
    dropped.remove(i);
    let rep = check(&SPEC, &probe.addrs, &extra(), &dropped);
    assert_eq!((rep.wrong, rep.missing_in_scrape), (0, 1));
    assert_eq!(rep.scrapes[0].len(), 3);

    // Missing external label: every series of the scrape is unexpected.
    let rep = check(&SPEC, &probe.addrs, &[Label::new("job", "probe")], &got);
    assert!(rep.wrong > 0 && !rep.is_clean());

    // Duplicates seen by the oracle.
    let mut twice = got.clone();
    twice.extend(got.iter().take(3).cloned());
    let rep = check(&SPEC, &probe.addrs, &extra(), &twice);
    assert_eq!(
        (rep.wrong, rep.missing_in_scrape, rep.duplicates),
        (0, 0, 3)
    );

    // Same scrape under a new timestamp.
    let mut moved = got.clone();
    moved.extend(
        got.iter()
            .filter(|r| r.timestamp == 1_000)
            .map(|r| Received {
                timestamp: 99_000,
                ..r.clone()
            }),
    );
    let rep = check(&SPEC, &probe.addrs, &extra(), &moved);
    assert_eq!(rep.conflicts, 1, "{rep:#?}");

    // Stale markers are ignored.
    let mut stale = got.clone();
    stale.push(Received {
        value: f64::from_bits(crate::oracle::STALE_NAN_BITS),
        timestamp: 50_000,
        ..got[0].clone()
    });
    assert!(check(&SPEC, &probe.addrs, &extra(), &stale).is_clean());

    // Resend: the capture counts duplicates and keeps the first copy.
    assert_eq!(post(&plain, &cap, body.clone()).await, 204);
    assert_eq!(cap.duplicates(), 2 * 3 * per_scrape);
    assert_eq!(cap.snapshot(), got);

    // Fault injection.
    cap.set_fail_next(2, 503);
    assert_eq!(post(&plain, &cap, body.clone()).await, 503);
    assert_eq!(post(&plain, &cap, body.clone()).await, 503);
    assert_eq!(post(&plain, &cap, body.clone()).await, 204);
    assert_eq!(cap.requests(), 3);

    // Garbage: 400.
    assert_eq!(
        post(
            &plain,
            &cap,
            bytes::Bytes::from_static(b"\xff\xff\xff\xff\x0f x")
        )
        .await,
        400
    );
    // No Content-Encoding: 415, as the 2.0 receiver rules say for an unsupported encoding.
    let resp = plain
        .post(cap.url())
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);

    // Unsorted labels are counted and stored sorted.
    let unsorted = WriteRequest {
        timeseries: vec![TimeSeries {
            labels: vec![Label::new("z", "1"), Label::new("__name__", "x")],
            samples: vec![Sample {
                value: 1.0,
                timestamp: 5,
            }],
            ..Default::default()
        }],
        metadata: vec![],
    };
    assert_eq!(post(&plain, &cap, encode_snappy(&unsorted)).await, 204);
    assert_eq!(cap.label_order_violations(), 1);
    assert_eq!(cap.snapshot().last().unwrap().labels[0].name, "__name__");

    let raw = plain
        .get(format!("http://{}/report", cap.addr()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let report: CaptureReport = serde_json::from_slice(&raw).unwrap();
    assert_eq!(report.requests, 4);
    assert_eq!((report.rejected, report.unsupported), (1, 1));
    assert_eq!(report.injected_failures, 2);
    assert_eq!(report.duplicates, 2 * 2 * 3 * per_scrape);
    assert_eq!(report.samples, 2 * 3 * per_scrape + 1);

    cap.shutdown().await;
    probe.shutdown().await;
}
