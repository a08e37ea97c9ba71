//! The two kinds of capacity admission hands out: session slots and handshake tokens.
//!
//! This is the seam DESIGN.md asks for ("acquire a session slot, take a handshake
//! token, release"): the scheduler in [`super`] touches capacity only through
//! [`Slots::try_acquire`] / [`Slots::release`] and [`Tokens::try_take`] /
//! [`Tokens::refund`] / [`Tokens::ready_at`]. Both are lock-free here (one atomic
//! each); a shared backend for several replicas would implement the same operations.
//!
//! Tokens are a GCRA, the algorithm `governor` implements. `governor` itself cannot be
//! used for this job: admission must take a tenant token and an edge token together
//! or neither, and must hand back the token of a client that left between being chosen
//! and being told, which needs `ready_at` (a peek) and `refund` — operations governor
//! does not have. Its clock is also not tokio's, so the scheduler could not be tested
//! under paused time.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Session slots: at most `cap` held at once.
#[derive(Debug)]
#[repr(C)] // hot fields first
pub struct Slots {
    live: AtomicU32,
    /// Changed by a reload: a lower cap only holds new sessions back.
    cap: AtomicU32,
    /// Releases so far, wrapping (on the hot cache line, which `release` holds
    /// exclusively anyway; 32 bits keep the hot fields of a tenant in one line).
    released: AtomicU32,
    /// Set while the one task that may wait for a slot (a tenant's pump, the edge's
    /// arbiter) waits; only then does a release signal `freed`, so the fast path pays
    /// for no wake-up.
    waiting: AtomicBool,
    freed: Notify,
    /// Windows over `released` for the release rate; only read on the refusal path.
    windows: std::sync::Mutex<ReleaseWindows>,
}

/// Two consecutive windows of releases: the one running and the one before.
#[derive(Debug)]
struct ReleaseWindows {
    start: Instant,
    count_at_start: u32,
    previous: Option<(Duration, u32)>,
}

/// Length of a release-rate window.
const RELEASE_WINDOW: Duration = Duration::from_secs(60);

impl Slots {
    /// `cap` slots, none held.
    pub fn new(cap: u32) -> Self {
        Self {
            live: AtomicU32::new(0),
            cap: AtomicU32::new(cap),
            waiting: AtomicBool::new(false),
            released: AtomicU32::new(0),
            freed: Notify::new(),
            windows: std::sync::Mutex::new(ReleaseWindows {
                start: Instant::now(),
                count_at_start: 0,
                previous: None,
            }),
        }
    }

    /// Takes a slot if one is free.
    pub fn try_acquire(&self) -> bool {
        // SeqCst even when it fails: a failed attempt is the load that must not be
        // reordered before the waiter's flag store in `acquire`.
        self.live
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |live| {
                (live < self.cap.load(Ordering::SeqCst)).then_some(live + 1)
            })
            .is_ok()
    }

    /// About how long sessions take to free a slot: the time between releases over
    /// the last one to two minutes (counting the silence since, so it grows while
    /// nothing ends); `None` before any release.
    pub fn release_interval(&self) -> Option<Duration> {
        let now = Instant::now();
        let count = self.released.load(Ordering::Relaxed);
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let mut elapsed = now.saturating_duration_since(w.start);
        if elapsed >= RELEASE_WINDOW {
            w.previous = Some((elapsed, count.wrapping_sub(w.count_at_start)));
            w.start = now;
            w.count_at_start = count;
            elapsed = Duration::ZERO;
        }
        let (prev_time, prev_count) = w.previous.unwrap_or_default();
        let releases = count
            .wrapping_sub(w.count_at_start)
            .saturating_add(prev_count);
        (releases > 0).then(|| (elapsed + prev_time) / releases)
    }

    /// Gives a slot back. Called exactly once per successful [`Self::try_acquire`], by
    /// the RAII owner of the slot.
    pub fn release(&self) {
        // SeqCst pairs with `acquire`: either the waiter sees this release in its
        // retry, or this release sees the waiter's flag and wakes it.
        let before = self.live.fetch_sub(1, Ordering::SeqCst);
        debug_assert!(before > 0, "slot released more often than acquired");
        self.released.fetch_add(1, Ordering::Relaxed);
        if self.waiting.load(Ordering::SeqCst) {
            self.freed.notify_one();
        }
    }

    /// Waits for a free slot and takes it. Only one task at a time may wait on a given
    /// `Slots` (the tenant's pump, or the edge's arbiter).
    pub async fn acquire(&self) {
        if self.try_acquire() {
            return;
        }
        self.waiting.store(true, Ordering::SeqCst);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the retry, so a release between the retry and the
            // await still wakes us.
            freed.as_mut().enable();
            if self.try_acquire() {
                break;
            }
            freed.await;
        }
        self.waiting.store(false, Ordering::SeqCst);
    }

    /// Slots held now.
    pub fn live(&self) -> u32 {
        self.live.load(Ordering::Acquire)
    }

    /// The cap.
    pub fn cap(&self) -> u32 {
        self.cap.load(Ordering::Relaxed)
    }

    /// Changes the cap (a reload). Sessions over a lowered cap go on; new ones wait until
    /// enough have ended. A raised cap wakes the waiting task, which takes a slot at once.
    pub fn set_cap(&self, cap: u32) {
        self.cap.store(cap, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) {
            self.freed.notify_one();
        }
    }
}

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
        let (interval, tolerance) = Self::params(rate, burst);
        Self {
            epoch: Instant::now(),
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

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX / 2)
    }

    /// Takes a token at `now`, or says from when one can be taken. `Ok` carries the
    /// state it left, which [`Self::refund`] needs.
    pub fn try_take(&self, now: Instant) -> Result<Taken, Instant> {
        let now = self.nanos(now);
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

/// Proof of a token taken from [`Tokens`]: the state the take left, and the interval
/// it added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a taken token is spent, or refunded with it"]
pub struct Taken(u64, u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_one_token_per_interval() {
        let t = Tokens::new(20.0, 5);
        let start = Instant::now();
        for _ in 0..5 {
            assert!(t.try_take(start).is_ok());
        }
        let ready = t.try_take(start).unwrap_err();
        assert_eq!(ready - start, Duration::from_millis(50));
        assert!(t.try_take(ready - Duration::from_millis(1)).is_err());
        assert!(t.try_take(ready).is_ok());
        assert_eq!(t.ready_at() - start, Duration::from_millis(100));
        // Idle long enough, the burst is back, and no more than the burst.
        let later = start + Duration::from_secs(10);
        let taken = (0..10).filter(|_| t.try_take(later).is_ok()).count();
        assert_eq!(taken, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn refund_restores_the_token() {
        let t = Tokens::new(10.0, 1);
        let now = Instant::now();
        let taken = t.try_take(now).unwrap();
        assert!(t.try_take(now).is_err());
        t.refund(taken);
        assert!(t.try_take(now).is_ok());
        // A refund of a token taken long after an idle spell does not bank extra ones.
        let later = now + Duration::from_secs(60);
        let taken = t.try_take(later).unwrap();
        t.refund(taken);
        assert!(t.try_take(later).is_ok());
        assert!(t.try_take(later).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_refund_never_lets_more_than_the_burst_through() {
        let t = Tokens::new(10.0, 1);
        let t0 = Instant::now();
        let reserved = t.try_take(t0).unwrap(); // for a client that then leaves
        let t1 = t0 + Duration::from_millis(100);
        let _used = t.try_take(t1).unwrap(); // by the next client
        t.refund(reserved); // too late: dropped
        assert!(t.try_take(t1).is_err(), "burst 1: one handshake at t1");
    }

    #[tokio::test(start_paused = true)]
    async fn the_release_interval_follows_how_fast_sessions_end() {
        let s = Slots::new(10);
        assert_eq!(s.release_interval(), None);
        for _ in 0..3 {
            assert!(s.try_acquire());
        }
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(2)).await;
            s.release();
        }
        assert_eq!(s.release_interval(), Some(Duration::from_secs(2)));
        // Nothing ends for a while: the estimate grows with the silence.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(s.release_interval(), Some(Duration::from_secs(12)));
        // A new window: the last one still counts, then it is forgotten.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(s.release_interval(), Some(Duration::from_secs(22)));
        tokio::time::advance(Duration::from_secs(120)).await;
        assert_eq!(s.release_interval(), None);
    }

    #[test]
    fn slots_never_exceed_the_cap() {
        let s = Slots::new(2);
        assert!(s.try_acquire());
        assert!(s.try_acquire());
        assert!(!s.try_acquire());
        s.release();
        assert_eq!(s.live(), 1);
        assert!(s.try_acquire());
    }
}
