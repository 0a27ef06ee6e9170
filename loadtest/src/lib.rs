//! Uplink load and end-to-end tooling.
//!
//! * [`probe`]: a deterministic Prometheus exporter whose every value is known in advance,
//! * [`capture`]: a remote-write 1.0 and 2.0 receiver that records everything it is sent,
//! * [`faults`]: scripted remote-write faults, and an HTTP relay that injects them in front of
//!   a real receiver,
//! * [`dto`]: the protobuf exposition format's messages, for test targets,
//! * [`oracle`]: checks what arrived against what the probe served,
//! * [`otlp`]: an OTLP/HTTP trace receiver that decodes and keeps every span,
//! * [`proxy`]: counting UDP and TCP relays, with fault injection on UDP,
//! * [`tickets`]: an Alertmanager webhook receiver that stands in for a ticketing system,
//! * [`peers`]: the real Prometheus 3, vmagent and VictoriaMetrics (and the Prometheus 2.42 and
//!   vmagent 1.79 of the Prometheus 2 mode) that Uplink is checked and measured against,
//! * [`harness`]: real agent, gateway and Prometheus processes for the demo and tests,
//! * [`demo`]: the whole relay path, live, on an embedded default configuration.

pub mod bench;
pub mod capture;
pub mod chaos;
pub mod charts;
pub mod compare;
pub mod demo;
pub mod drain;
pub mod dto;
pub mod faults;
pub mod fleet;
pub mod harness;
pub mod isolation;
pub mod oracle;
pub mod otlp;
pub mod peers;
pub mod powerloss;
pub mod probe;
pub mod progress;
pub mod proxy;
pub mod relay;
pub mod tickets;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
