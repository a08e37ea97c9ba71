//! Step 4 of the flow, admission: handshake tokens in process, a GCRA on atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::Taken;

/// A token bucket as a GCRA ("generic cell rate algorithm"): `rate` tokens per second,
/// at most `burst` at once. The whole state is one theoretical arrival time (TAT): a
/// token may be taken at `now` when `TAT - now <= (burst - 1) · interval`, and taking
/// it moves the TAT to `max(TAT, now) + interval`. Taken tokens are therefore spaced
/// `interval` apart once the burst is spent: the pacing DESIGN.md asks for.
#[derive(Debug)]
#[repr(C)]
pub struct Tokens {
    /// Time zero of `tat`.
    epoch: Instant,
    /// Nanoseconds after `epoch`.
    tat: AtomicU64,
    /// Nanoseconds per token (changed by the adaptive rate).
    interval: AtomicU64,
    /// `(burst - 1) · interval`.
    tolerance: AtomicU64,
}

impl Tokens {
    /// A full bucket.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self::new_at(rate, burst, Instant::now())
    }

    /// A full bucket whose times count from `epoch` (not after any `now` it is given):
    /// scopes that share an epoch share a decision's reading of the clock
    /// ([`Self::try_take_nanos`]).
    pub(crate) fn new_at(rate: f64, burst: u32, epoch: Instant) -> Self {
        let (interval, tolerance) = Self::params(rate, burst);
        Self {
            epoch,
            tat: AtomicU64::new(0),
            interval: AtomicU64::new(interval),
            tolerance: AtomicU64::new(tolerance),
        }
    }

    fn params(rate: f64, burst: u32) -> (u64, u64) {
        let interval = (1e9 / rate).round().clamp(1.0, u64::MAX as f64 / 4.0) as u64;
        (
            interval,
            interval.saturating_mul(u64::from(burst.max(1) - 1)),
        )
    }

    /// Changes the rate (with the bucket's `burst`, which the caller keeps: it is not
    /// stored here, to keep a tenant's hot fields in one cache line); tokens already
    /// taken keep their spacing.
    ///
    /// The backlog (how far the TAT is ahead of now) is rescaled by the same factor as
    /// the interval, so the bucket is exactly as full as before: a lower rate must not
    /// turn an emptied bucket partly full again (a larger tolerance over the same
    /// backlog would), which would let handshakes through at once just when the edge
    /// signals trouble (found by the property tests, docs/fuzzing.md).
    pub fn set_rate(&self, rate: f64, burst: u32) {
        let (interval, tolerance) = Self::params(rate, burst);
        let old = self.interval.load(Ordering::Relaxed);
        let rescale = || {
            let now = self.nanos(Instant::now());
            let _ = self
                .tat
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                    (tat > now).then(|| {
                        let backlog =
                            u128::from(tat - now) * u128::from(interval) / u128::from(old.max(1));
                        now.saturating_add(u64::try_from(backlog).unwrap_or(u64::MAX / 4))
                    })
                });
        };
        // Whichever order is conservative meanwhile: a slower rate grows the backlog
        // before the tolerance, a faster one shrinks the tolerance before the backlog.
        if interval >= old {
            rescale();
            self.interval.store(interval, Ordering::Relaxed);
            self.tolerance.store(tolerance, Ordering::Relaxed);
        } else {
            self.interval.store(interval, Ordering::Relaxed);
            self.tolerance.store(tolerance, Ordering::Relaxed);
            rescale();
        }
    }

    /// Time between tokens once the burst is spent.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval.load(Ordering::Relaxed))
    }

    /// Time zero of the bucket's state.
    pub(crate) fn epoch(&self) -> Instant {
        self.epoch
    }

    /// `at` in nanoseconds after the epoch (0 before it).
    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        nanos_since(at, self.epoch)
    }

    /// Takes a token at `now`, or says from when one can be taken. `Ok` carries the
    /// state it left, which [`Self::refund`] needs.
    pub fn try_take(&self, now: Instant) -> Result<Taken, Instant> {
        self.try_take_nanos(self.nanos(now))
    }

    /// [`Self::try_take`] at `now` nanoseconds after the epoch ([`Self::nanos`]): a
    /// decision reads the clock once and converts it once for every scope of one epoch.
    pub(crate) fn try_take_nanos(&self, now: u64) -> Result<Taken, Instant> {
        let interval = self.interval.load(Ordering::Relaxed);
        let tolerance = self.tolerance.load(Ordering::Relaxed);
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            if tat > now + tolerance {
                return Err(self.epoch + Duration::from_nanos(tat - tolerance));
            }
            let next = tat.max(now) + interval;
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(Taken(next, interval)),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Takes a token at `now` whether or not one is ready (a shadow tenant's handshake:
    /// counted, never held back), and returns when it would have been ready: `now` when
    /// it was, else when an enforced client arriving now would have been let through.
    ///
    /// The debt this can build is bounded: the TAT never moves past `now + tolerance +
    /// burst · interval`, i.e. one burst beyond what the bucket holds. While a shadow
    /// storm lasts the bucket stays empty (every handshake the edge really gets counts),
    /// but once it ends enforced clients wait at most one burst's worth of intervals, not
    /// for every handshake the storm ever sent (docs/security.md, shadow mode).
    pub fn force_take(&self, now: Instant) -> Instant {
        let at = self.nanos(now);
        let interval = self.interval.load(Ordering::Relaxed);
        let tolerance = self.tolerance.load(Ordering::Relaxed);
        let ceiling = at
            .saturating_add(tolerance)
            .saturating_add(tolerance.saturating_add(interval));
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let next = (tat.max(at) + interval).min(ceiling.max(tat));
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let ready = tat.saturating_sub(tolerance).max(at);
                    return self.epoch + Duration::from_nanos(ready);
                }
                Err(actual) => tat = actual,
            }
        }
    }

    /// When the next token can be taken (`<= now` means now).
    pub fn ready_at(&self) -> Instant {
        let tat = self.tat.load(Ordering::Acquire);
        self.epoch
            + Duration::from_nanos(tat.saturating_sub(self.tolerance.load(Ordering::Relaxed)))
    }

    /// Whether the bucket is full again at `now` (every token back).
    pub fn full(&self, now: Instant) -> bool {
        self.tat.load(Ordering::Acquire) <= self.nanos(now)
    }

    /// Gives back a token taken by [`Self::try_take`] that was not used (its client
    /// left before its handshake): the bucket is left as if it had not been taken,
    /// provided nobody took a token since. If someone did, the refund is dropped: a
    /// lost token only slows the next client a little, while a late refund could let
    /// one handshake more than the burst through.
    pub fn refund(&self, taken: Taken) {
        let _ = self.tat.compare_exchange(
            taken.0,
            taken.0 - taken.1,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

/// `at` in nanoseconds after `epoch` (0 before it).
#[inline]
pub(crate) fn nanos_since(at: Instant, epoch: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX / 2)
}
