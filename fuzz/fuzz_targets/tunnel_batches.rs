//! The gateway's decoder of the agents' compact batches: any payloads, in sequence on one
//! connection's decoder (state carried from batch to batch), decode or fail, never panic and
//! never allocate past the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uplink_shared::codec::{LabelLimits, TunnelDecoder};

fuzz_target!(|data: &[u8]| {
    let mut rw = TunnelDecoder::new(1 << 20, 64, 4096)
        .with_ha_labels(Some(("cluster".into(), "__replica__".into())))
        .with_label_limits(Some(LabelLimits {
            max_names: 8,
            max_name_length: 32,
            max_value_length: 64,
        }));
    let mut plain = TunnelDecoder::new(1 << 20, 64, 4096);
    // Several batches on one connection: each a u16 length (big-endian), then its bytes.
    let mut rest = data;
    while rest.len() >= 2 {
        let len = (usize::from(rest[0]) << 8 | usize::from(rest[1])).min(rest.len() - 2);
        let (payload, tail) = rest[2..].split_at(len);
        rest = tail;
        let mut out = bytes::BytesMut::new();
        let _ = rw.decode_remote_write(payload, &mut out, 1);
        let _ = plain.decode(payload);
    }
});
