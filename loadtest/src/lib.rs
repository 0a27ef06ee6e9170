//! Uplink load and end-to-end tooling.
//!
//! * [`probe`]: a deterministic Prometheus exporter whose every value is known in advance,
//! * [`capture`]: a remote-write 1.0 receiver that records everything it is sent,
//! * [`oracle`]: checks what arrived against what the probe served.

pub mod capture;
pub mod oracle;
pub mod probe;
// pub mod demo; (added by the lead)

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
