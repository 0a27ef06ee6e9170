//! Per-tenant ingest limits: a token bucket of samples per second per tenant
//! (`tenancy.tenants.<id>.max_samples_per_second`, `burst`).
//!
//! Back-pressure through the tunnel: an over-limit batch waits (its ack is held) until the
//! bucket has room, at most [`MAX_WAIT`]; agents have a few batches in flight, so holding acks
//! slows them to the tenant's rate and their backlog waits on their own disks. A batch that
//! would wait longer is answered `Retry` (the agent keeps it and sends it again after its
//! backoff). Nothing is dropped, and other tenants are not affected. Both are counted in
//! `uplink_gateway_tenant_throttled_batches_total{tenant}`.
//!
//! A batch larger than the burst needs only a full bucket, and the bucket goes into debt, so a
//! tenant always progresses at its rate on average.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest a batch's ack is held for its tenant's rate; longer, it is answered `Retry`.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

use crate::config::TenancyConfig;

struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

/// The buckets of the tenants that have a limit.
#[derive(Default)]
pub struct TenantLimits {
    buckets: HashMap<String, Mutex<Bucket>>,
}

impl TenantLimits {
    pub fn new(tenancy: Option<&TenancyConfig>) -> TenantLimits {
        let mut buckets = HashMap::new();
        for (id, t) in tenancy.map(|t| &t.tenants).into_iter().flatten() {
            if let Some(rate) = t.max_samples_per_second.filter(|r| *r > 0.0) {
                let burst = t.burst.map_or(rate, |b| b as f64).max(1.0);
                buckets.insert(
                    id.clone(),
                    Mutex::new(Bucket {
                        rate,
                        burst,
                        tokens: burst,
                        last: Instant::now(),
                    }),
                );
            }
        }
        TenantLimits { buckets }
    }

    /// How long a batch of `samples` from `tenant` must wait before it may be stored (zero:
    /// now), reserving its tokens; `None` when that is over [`MAX_WAIT`] (nothing reserved).
    pub fn delay(&self, tenant: &str, samples: u64) -> Option<Duration> {
        let Some(b) = self.buckets.get(tenant) else {
            return Some(Duration::ZERO);
        };
        let mut b = b.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * b.rate).min(b.burst);
        b.last = now;
        let need = (samples as f64).min(b.burst);
        let wait = if b.tokens >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - b.tokens) / b.rate)
        };
        if wait > MAX_WAIT {
            return None;
        }
        b.tokens -= samples as f64;
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_rate_a_batch_waits_its_turn_then_retries() {
        let cfg: TenancyConfig =
            serde_yaml::from_str("tenants: {a: {max_samples_per_second: 10, burst: 10}}")
                .expect("valid");
        let l = TenantLimits::new(Some(&cfg));
        assert_eq!(l.delay("a", 10), Some(Duration::ZERO));
        let d = l.delay("a", 10).expect("waits");
        assert!(
            d > Duration::from_millis(900) && d <= Duration::from_secs(1),
            "{d:?}"
        );
        // The next one would wait about 2 s: still within MAX_WAIT.
        assert!(l.delay("a", 10).is_some());
        assert!(l.delay("a", 10).is_some());
        assert!(l.delay("a", 10).is_some());
        assert!(l.delay("a", 10).is_some());
        assert_eq!(l.delay("a", 10), None, "over MAX_WAIT");
        assert_eq!(l.delay("unlimited", 10), Some(Duration::ZERO));
    }
}
