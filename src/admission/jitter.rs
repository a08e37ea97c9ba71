//! Step 4 of the flow (admission): the random spread of `Retry-After` estimates, from a
//! source that a planner or a test can seed so that a run repeats exactly.

use std::sync::atomic::{AtomicU64, Ordering};

/// A lock-free pseudo-random source (SplitMix64 over an atomic counter): one
/// `fetch_add` per draw, so contending connects never wait on it.
#[derive(Debug)]
pub struct Jitter {
    state: AtomicU64,
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

impl Jitter {
    /// A source that repeats: the same seed draws the same sequence.
    pub fn seeded(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }

    /// A source seeded from the operating system's randomness.
    pub fn from_entropy() -> Self {
        Self::seeded(rand::random())
    }

    /// The next draw, uniform in `[0, 1)`.
    pub fn unit(&self) -> f64 {
        let mut z = self
            .state
            .fetch_add(GOLDEN, Ordering::Relaxed)
            .wrapping_add(GOLDEN);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // The top 53 bits, as a fraction.
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next draw, uniform in `[low, high)`.
    pub fn between(&self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Self::from_entropy()
    }
}

#[cfg(test)]
mod tests {
    use super::Jitter;

    #[test]
    fn a_seed_repeats_and_draws_stay_in_range_and_spread() {
        let (a, b) = (Jitter::seeded(7), Jitter::seeded(7));
        let xs: Vec<f64> = (0..1000).map(|_| a.between(0.8, 1.2)).collect();
        let ys: Vec<f64> = (0..1000).map(|_| b.between(0.8, 1.2)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|x| (0.8..1.2).contains(x)));
        let low = xs.iter().filter(|x| **x < 1.0).count();
        assert!((400..600).contains(&low), "{low} of 1000 below the middle");
        let other: Vec<f64> = (0..10).map(|_| Jitter::seeded(8).unit()).collect();
        assert_ne!(other[0], Jitter::seeded(7).unit());
    }
}
