//! Per-tenant ingest limits: a token bucket of samples per second per tenant
//! (`tenancy.tenants.<id>.max_samples_per_second`, `burst`).
//!
//! An over-limit batch is not stored and not dropped: it is answered `Retry`, so the agent
//! keeps it on its disk and sends it again after its backoff. A tenant over its rate slows
//! down through the tunnel; nothing of it is lost (within its agents' queue budgets), and other
//! tenants are not affected. Counted in `uplink_gateway_tenant_throttled_batches_total{tenant}`.
//!
//! The bucket may go into debt by one batch: a batch larger than the burst is admitted when the
//! bucket is full, so a tenant always progresses at its rate on average.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

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

    /// Whether `samples` from identity `site` (`tenant/site`) may be stored now; if not, the
    /// tenant that is over its limit.
    pub fn admit<'a>(&self, site: &'a str, samples: u64) -> Result<(), &'a str> {
        let Some((tenant, _)) = site.split_once('/') else {
            return Ok(());
        };
        let Some(b) = self.buckets.get(tenant) else {
            return Ok(());
        };
        let mut b = b.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * b.rate).min(b.burst);
        b.last = now;
        let n = samples as f64;
        if b.tokens >= n.min(b.burst) {
            b.tokens -= n;
            Ok(())
        } else {
            Err(tenant)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_gets_its_burst_then_its_rate_and_others_are_free() {
        let cfg: TenancyConfig =
            serde_yaml::from_str("tenants: {a: {max_samples_per_second: 100, burst: 50}, b: {}}")
                .expect("valid");
        let l = TenantLimits::new(Some(&cfg));
        assert_eq!(l.admit("a/s", 30), Ok(()));
        assert_eq!(l.admit("a/s", 20), Ok(()));
        assert_eq!(l.admit("a/s", 10), Err("a"), "burst spent");
        assert_eq!(l.admit("b/s", 1_000_000), Ok(()), "no limit");
        assert_eq!(l.admit("plain", 1_000_000), Ok(()), "no tenant");
        std::thread::sleep(std::time::Duration::from_millis(150));
        assert_eq!(l.admit("a/s", 10), Ok(()), "refilled at 100/s");
        // A batch above the burst passes when the bucket is full, then the debt is repaid.
        std::thread::sleep(std::time::Duration::from_millis(600));
        assert_eq!(l.admit("a/s", 80), Ok(()));
        assert_eq!(l.admit("a/s", 1), Err("a"));
    }
}
