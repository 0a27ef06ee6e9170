//! The compact batch decoder below its zstd layer: the input is the decompressed body (string
//! table, set definitions, scrape records), compressed here, so the fuzzer explores the body's
//! structure rather than zstd's. Two batches per input, on one connection's decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uplink_shared::codec::TunnelDecoder;

fuzz_target!(|data: &[u8]| {
    let mut d = TunnelDecoder::new(1 << 20, 64, 4096)
        .with_ha_labels(Some(("cluster".into(), "__replica__".into())));
    let half = data.len() / 2;
    for body in [&data[..half], &data[half..], data] {
        let Ok(payload) = zstd::bulk::compress(body, 1) else {
            return;
        };
        let mut out = bytes::BytesMut::new();
        let _ = d.decode_remote_write(&payload, &mut out, 0);
    }
});
