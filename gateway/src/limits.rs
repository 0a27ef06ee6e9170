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
//!
//! Active series (`max_series`): a [`SeriesBudget`] per tenant counts the series of the sets
//! (a target's shape) its agents used within [`ACTIVE_WINDOW`], across its connections. A set
//! new to the tenant that would exceed the budget is refused for that connection (its samples
//! counted as rejected, reason `max_series`); sets already admitted keep flowing, and a set
//! unused for the window frees its series. Slowing a tenant down would not bring it under a
//! series limit, so this one rejects.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest a batch's ack is held for its tenant's rate; longer, it is answered `Retry`.
pub const MAX_WAIT: Duration = Duration::from_secs(5);
/// A set unused this long no longer counts against its tenant's `max_series`.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(600);

/// A tenant's active-series budget (see the module docs).
#[derive(Debug)]
pub struct SeriesBudget {
    max: u64,
    window: Duration,
    state: Mutex<Sets>,
}

#[derive(Debug, Default)]
struct Sets {
    /// Set hash -> (series, last used).
    sets: HashMap<u64, (u64, Instant)>,
    series: u64,
    swept: Option<Instant>,
}

impl SeriesBudget {
    pub fn new(max: u64, window: Duration) -> SeriesBudget {
        SeriesBudget {
            max,
            window,
            state: Mutex::default(),
        }
    }

    /// Series currently counted.
    pub fn active(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).series
    }
}

impl uplink_shared::codec::SeriesGate for SeriesBudget {
    fn admit(&self, set_hash: u64, series: usize) -> bool {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some(e) = g.sets.get_mut(&set_hash) {
            e.1 = now;
            return true;
        }
        // Sweep idle sets at most once a second.
        if g.swept
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            let window = self.window;
            let mut freed = 0;
            g.sets.retain(|_, (n, last)| {
                let keep = now.duration_since(*last) < window;
                if !keep {
                    freed += *n;
                }
                keep
            });
            g.series -= freed;
            g.swept = Some(now);
        }
        let n = series as u64;
        if g.series + n > self.max {
            return false;
        }
        g.series += n;
        g.sets.insert(set_hash, (n, now));
        true
    }

    fn touch(&self, set_hash: u64) {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = g.sets.get_mut(&set_hash) {
            e.1 = Instant::now();
        }
    }
}

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
    fn a_series_budget_admits_known_sets_and_frees_idle_ones() {
        use uplink_shared::codec::SeriesGate;
        let b = SeriesBudget::new(10, Duration::from_millis(50));
        assert!(b.admit(1, 6));
        assert!(!b.admit(2, 6), "over the budget");
        assert!(b.admit(1, 6), "a known set is always admitted");
        assert!(b.admit(3, 4));
        assert_eq!(b.active(), 10);
        std::thread::sleep(Duration::from_millis(1100));
        assert!(b.admit(2, 6), "the idle sets freed their series");
        assert_eq!(b.active(), 6);
    }

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
