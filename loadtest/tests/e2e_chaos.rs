//! The link scenarios of `uplink-loadtest chaos`, in CI with one short fault each: a UDP chaos
//! proxy between agent and gateway drops everything (partition), drops only gateway-to-agent
//! packets (lost acks), loses 30% both ways, delays every packet by 300 ms, reorders packets
//! (a random 0 to 40 ms each), and flaps (up 1 s, down 1 s). After each, the link heals, the
//! agent stops in order, and the probe's exact oracle checks every sample the destination
//! received: nothing missing, nothing wrong, nothing forwarded twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use uplink_loadtest::chaos::{self, ChaosArgs};
use uplink_loadtest::harness::serial;
use uplink_shared::duration::PromDuration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_faults_lose_nothing_and_forward_nothing_twice() {
    let _serial = serial().await;
    let verdicts = chaos::run(ChaosArgs {
        scenario: "link".into(),
        cycles: 1,
        fault: PromDuration(Duration::from_secs(4)),
        heal: PromDuration(Duration::from_secs(2)),
        seed: 7,
    })
    .await
    .unwrap();
    assert_eq!(verdicts.len(), chaos::LINK.len());
    for v in &verdicts {
        assert!(v.passed, "{v:?}");
        assert_eq!(v.missing_scrapes, 0, "{v:?}");
        assert_eq!(v.duplicates_dropped_by_receiver, 0, "{v:?}");
    }
}
