//! `uplink-shared`: everything the agent and the gateway must agree on.
//!
//! - [`model`]: labels, samples and series as both sides see them.
//! - [`remote_write`]: Prometheus remote-write 1.0 and 2.0 protobuf types, their snappy framing,
//!   and the receiving side (content negotiation, bounded decoding, label validation).
//! - [`codec`]: the compact tunnel encoding (queue records, series sets, stateful batch codec).
//! - [`wire`]: the agent-gateway protocol as code without I/O (frames, handshake, batches,
//!   acks, close codes).
//! - [`quic`]: thin glue from quinn streams to the `wire` codec.
//! - [`tls`]: rustls/quinn configuration builders for mTLS, and identity from certificates.
//! - [`certs`]: a small development PKI built with rcgen.
//! - [`duration`]: Prometheus duration syntax (`15s`, `1m30s`).
//! - [`relabel`]: Prometheus relabeling, every action, with its exact semantics.
//! - `http_client` (feature `http`): Prometheus's HTTP client settings (auth, TLS, proxy,
//!   extra headers), used by the agent's scrapes and discovery and by the gateway's
//!   destinations; `http_proxy` (feature `http`): which proxy a request takes, as Go decides.
//! - [`yaml`]: YAML loading with errors that name file:line:column and the field.
//! - [`web`]: the HTTP endpoints every binary serves (`/metrics`, `/-/healthy`, `/-/ready`,
//!   `/-/reload`).
//! - [`telemetry`]: logging setup shared by the binaries, and their common `main`.
//! - `traces` (feature `otlp`): OTLP trace export and the tunnel's trace context.
//!
//! Invariants: only [`quic`] and [`web`] perform I/O; the protocol itself ([`wire`]) has none.
//! This crate depends on neither RocksDB nor (without
//! the `http` feature) an HTTP client, so both sides, the tests and the fuzzers use one implementation.

pub mod certs;
pub mod codec;
pub mod duration;
#[cfg(feature = "http")]
pub mod http_client;
#[cfg(feature = "http")]
pub mod http_proxy;
#[cfg(feature = "http")]
mod http_tls;
#[cfg(feature = "http")]
pub mod jwt_bearer;
pub mod model;
pub mod quic;
pub mod relabel;
pub mod remote_write;
pub mod telemetry;
pub mod tls;
#[cfg(feature = "otlp")]
pub mod traces;
pub mod web;
pub mod wire;
pub mod yaml;
