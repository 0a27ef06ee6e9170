//! Remote-write request bodies (what the agent's receiver and every remote-write decoder
//! read): 1.0 and 2.0, snappy-framed, with the receiver's limits; and the 1.0 to 2.0
//! conversion from stored bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uplink_shared::remote_write::{WriteRequest, decode_snappy, receive, v2};

fuzz_target!(|data: &[u8]| {
    let limits = receive::Limits {
        max_decoded_bytes: 1 << 20,
        max_series: 10_000,
    };
    let _ = receive::decode(receive::Proto::V1, data, limits);
    let _ = receive::decode(receive::Proto::V2, data, limits);
    let _ = decode_snappy::<WriteRequest>(data, 1 << 20);
    let _ = v2::from_v1_bytes(data);
});
