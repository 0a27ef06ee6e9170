//! The agent-gateway frame decoder: any bytes, fed in two pieces, decode into frames or an
//! error, never a panic, and never more than the limit buffered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uplink_shared::wire::FrameDecoder;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize).min(data.len());
    let mut d = FrameDecoder::new(1 << 16);
    for part in [&data[..split], &data[split..]] {
        d.push(part);
        while let Ok(Some(f)) = d.next_frame() {
            // A frame that decoded encodes again.
            let _ = f.to_bytes();
        }
    }
});
