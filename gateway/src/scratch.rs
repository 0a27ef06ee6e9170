//! Per-thread scratch buffers for building remote-write requests, reused from request to
//! request, so a forwarder's steady state allocates little more than each request's compressed
//! body: the merged 1.0 protobuf of consecutive entries (`fanout::merge`), the decompressed
//! stored body and the 2.0 conversion (`forward::Destination::send_raw`), and the snappy
//! codecs' own tables.
//!
//! Invariants: [`with`] is never nested (the closures run synchronous code only, never an
//! `.await`, and do not call back into it), and a buffer grown past [`KEEP_BYTES`] by an
//! unusually large request is released afterwards, so an idle thread holds at most a few
//! times that.

use std::cell::RefCell;

/// Largest capacity a scratch buffer keeps between requests.
pub const KEEP_BYTES: usize = 16 << 20;

/// The buffers of one thread.
pub struct Scratch {
    /// An uncompressed 1.0 request (merged entries, or a stored body decompressed).
    pub raw: Vec<u8>,
    /// An uncompressed 2.0 request.
    pub v2: Vec<u8>,
    /// The 2.0 converter's series buffer.
    pub series: Vec<u8>,
    pub encoder: snap::raw::Encoder,
    pub decoder: snap::raw::Decoder,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        raw: Vec::new(),
        v2: Vec::new(),
        series: Vec::new(),
        encoder: snap::raw::Encoder::new(),
        decoder: snap::raw::Decoder::new(),
    });
}

/// Runs `f` with this thread's buffers (cleared), then trims any grown past [`KEEP_BYTES`].
pub fn with<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with_borrow_mut(|s| {
        for b in [&mut s.raw, &mut s.v2, &mut s.series] {
            b.clear();
        }
        let r = f(s);
        for b in [&mut s.raw, &mut s.v2, &mut s.series] {
            if b.capacity() > KEEP_BYTES {
                *b = Vec::new();
            }
        }
        r
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn buffers_are_reused_and_large_ones_released() {
        let ptr = super::with(|s| {
            s.raw.extend_from_slice(&[1; 1000]);
            s.raw.as_ptr()
        });
        super::with(|s| {
            assert!(s.raw.is_empty(), "cleared");
            assert_eq!(s.raw.as_ptr(), ptr, "the same allocation");
            s.v2.resize(super::KEEP_BYTES + 1, 0);
        });
        super::with(|s| assert_eq!(s.v2.capacity(), 0, "released"));
    }
}
