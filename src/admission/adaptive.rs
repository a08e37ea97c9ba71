//! Step 4 of the flow, admission: the adaptive handshake rate (AIMD) of a tenant or the edge.
//!
//! The adaptive handshake rate (AIMD) of a tenant or of the edge ceiling.
//!
//! A sign that the edge is struggling — it answered `503` or `429`, a handshake timed
//! out, or one took longer than `upstream.slow_handshake` (half the 3 s danger mark by
//! default) — multiplies the effective rate by `adaptive_factor` (0.5), at most once a
//! second and never below `adaptive_floor` of the configured rate. Each second without
//! trouble adds back a tenth of the configured rate, up to the configured rate. So
//! sluice slows down before the edge starts refusing, and recovers step by step.
//!
//! A tenant's rate reacts to every sign on its own handshakes. The `[edge]` ceiling's,
//! shared by every tenant, reacts only to signs that cannot depend on one tenant's
//! request (a connect timeout), or that a second tenant shows within
//! [`WITNESS_WINDOW`]: a tenant drawing `503`s on a path of its own slows itself only
//! ([`super::Admission::upstream_trouble`]).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::capacity::Tokens;

/// Share of the configured rate added back per clean second.
pub const RECOVERY_STEP: f64 = 0.1;
/// A decrease at most this often; and how long without trouble counts as clean.
pub const CLEAN_PERIOD: Duration = Duration::from_secs(1);
/// Request-level trouble slows the edge ceiling when two tenants report it this close
/// together.
pub const WITNESS_WINDOW: Duration = Duration::from_secs(2);

/// `[upstream] adaptive`, `adaptive_factor`, `adaptive_floor`.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Whether the rate adapts at all.
    pub enabled: bool,
    /// Multiplier on trouble.
    pub factor: f64,
    /// Lowest rate, as a fraction of the configured one.
    pub floor: f64,
}

impl Policy {
    /// The policy `[upstream]` configures.
    pub fn of(upstream: &crate::config::Upstream) -> Self {
        Self {
            enabled: upstream.adaptive,
            factor: upstream.adaptive_factor,
            floor: upstream.adaptive_floor,
        }
    }
}

/// One scope's effective rate.
#[derive(Debug)]
pub(crate) struct Adaptive {
    /// `f64` bits of the configured rate (changed by a reload).
    configured: AtomicU64,
    /// The bucket's burst, unchanged by adaptation (changed by a reload).
    burst: AtomicU32,
    /// `f64` bits of the effective rate.
    current: AtomicU64,
    epoch: Instant,
    /// Nanoseconds after `epoch`, plus one; 0: never.
    last_trouble: AtomicU64,
    last_decrease: AtomicU64,
    /// `sluice_effective_handshake_rate` of this scope.
    gauge: prometheus::Gauge,
}

impl Adaptive {
    pub(crate) fn new(configured: f64, burst: u32, gauge: prometheus::Gauge) -> Self {
        gauge.set(configured);
        Self {
            configured: AtomicU64::new(configured.to_bits()),
            burst: AtomicU32::new(burst),
            current: AtomicU64::new(configured.to_bits()),
            epoch: Instant::now(),
            last_trouble: AtomicU64::new(0),
            last_decrease: AtomicU64::new(0),
            gauge,
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX / 2)
            + 1
    }

    fn configured(&self) -> f64 {
        f64::from_bits(self.configured.load(Ordering::Relaxed))
    }

    /// New configured rate and burst (a reload). Unchanged values change nothing (a
    /// reload during an edge brownout keeps the back-off); a changed rate scales the
    /// effective one by the same factor, so a backed-off scope stays backed off.
    pub(crate) fn reconfigure(&self, tokens: &Tokens, rate: f64, burst: u32) {
        let old = self.configured();
        let old_burst = self.burst.swap(burst, Ordering::Relaxed);
        if old == rate && old_burst == burst {
            return;
        }
        self.configured.store(rate.to_bits(), Ordering::Relaxed);
        self.update(tokens, |current| (current * rate / old).min(rate));
    }

    /// The effective rate now.
    pub(crate) fn effective(&self) -> f64 {
        f64::from_bits(self.current.load(Ordering::Relaxed))
    }

    /// Moves the effective rate by `f` (a compare-and-swap loop, so concurrent
    /// decreases and recoveries never overwrite each other) and applies it.
    fn update(&self, tokens: &Tokens, f: impl Fn(f64) -> f64) {
        let mut applied = self.effective();
        let _ = self
            .current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                applied = f(f64::from_bits(bits));
                Some(applied.to_bits())
            });
        tokens.set_rate(applied, self.burst.load(Ordering::Relaxed));
        self.gauge.set(applied);
    }

    /// A sign of trouble at the edge.
    pub(crate) fn trouble(&self, tokens: &Tokens, policy: Policy, now: Instant) {
        if !policy.enabled {
            return;
        }
        let now_ns = self.nanos(now);
        self.last_trouble.store(now_ns, Ordering::Relaxed);
        let last = self.last_decrease.load(Ordering::Relaxed);
        // Saturating: another task may have stored a slightly later time.
        if last != 0 && now_ns.saturating_sub(last) < CLEAN_PERIOD.as_nanos() as u64 {
            return;
        }
        if self
            .last_decrease
            .compare_exchange(last, now_ns, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return; // another trouble report decreased it just now
        }
        let floor = self.configured() * policy.floor;
        self.update(tokens, |rate| (rate * policy.factor).max(floor));
    }

    /// Called about once a second: after a clean second, a step back up.
    pub(crate) fn recover(&self, tokens: &Tokens, now: Instant) {
        let current = self.effective();
        let configured = self.configured();
        if current >= configured {
            return;
        }
        let last = self.last_trouble.load(Ordering::Relaxed);
        if last != 0 && self.nanos(now).saturating_sub(last) < CLEAN_PERIOD.as_nanos() as u64 {
            return;
        }
        let step = configured * RECOVERY_STEP;
        self.update(tokens, |rate| (rate + step).min(configured));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn trouble_halves_the_rate_once_a_second_and_clean_seconds_bring_it_back() {
        let policy = Policy {
            enabled: true,
            factor: 0.5,
            floor: 0.1,
        };
        let tokens = Tokens::new(100.0, 1);
        let a = Adaptive::new(100.0, 1, prometheus::Gauge::new("g", "g").unwrap());
        let t0 = Instant::now();
        a.trouble(&tokens, policy, t0);
        a.trouble(&tokens, policy, t0 + Duration::from_millis(500));
        assert_eq!(a.effective(), 50.0, "at most one decrease per second");
        assert_eq!(tokens.interval(), Duration::from_millis(20));
        for s in 1..=6 {
            a.trouble(&tokens, policy, t0 + Duration::from_secs(s));
        }
        assert_eq!(a.effective(), 10.0, "never below the floor");
        // Not clean yet: no recovery.
        let t1 = t0 + Duration::from_millis(6500);
        a.recover(&tokens, t1);
        assert_eq!(a.effective(), 10.0);
        // Each clean second: +10 of 100.
        for s in 1..=10 {
            a.recover(&tokens, t1 + Duration::from_secs(s));
        }
        assert_eq!(a.effective(), 100.0);
        assert_eq!(a.gauge.get(), 100.0);
        // A time stored by another task a moment later than this one's `now` is fine.
        a.trouble(&tokens, policy, t1 + Duration::from_secs(20));
        a.recover(&tokens, t1 + Duration::from_secs(19));
        a.trouble(&tokens, policy, t1 + Duration::from_secs(19));
    }

    #[tokio::test(start_paused = true)]
    async fn a_disabled_policy_never_changes_the_rate() {
        let policy = Policy {
            enabled: false,
            factor: 0.5,
            floor: 0.1,
        };
        let tokens = Tokens::new(10.0, 1);
        let a = Adaptive::new(10.0, 1, prometheus::Gauge::new("g", "g").unwrap());
        a.trouble(&tokens, policy, Instant::now());
        assert_eq!(a.effective(), 10.0);
    }
}
