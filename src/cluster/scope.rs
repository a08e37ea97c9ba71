//! Step 4 of the flow, admission across replicas: one scope's (a tenant's, or the edge's) capacity on Redis, as the gate's `SharedCapacity`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{scripts, Mode, Shared};
use crate::admission::capacity::{BackendError, BoxFuture, Fast, SharedCapacity, Taken, Tokens};
use crate::metrics::ScopeMetrics;

mod ask;

/// `counts`: the live count is the low 24 bits, then [`ASKING`] and [`SEEN`], the
/// version the rest; every change of the count (or of what Redis is told of it) adds
/// one to the version in the same atomic operation.
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// The count includes a slot Redis is being asked for ([`Pending`]; one ask at a time:
/// only the scope's pump or arbiter asks). A count published meanwhile says so, and
/// what replicas report as the cluster's sessions leaves that slot out.
const ASKING: u64 = 1 << COUNT_BITS;
/// A count was published (heartbeat, flusher) while [`ASKING`]: once the slot is
/// granted, Redis may still hold it as asked for, so the count is published again.
const SEEN: u64 = 1 << (COUNT_BITS + 1);
/// Where the version starts in `counts`.
const VERSION_SHIFT: u32 = COUNT_BITS + 2;
const VERSION_ONE: u64 = 1 << VERSION_SHIFT;

/// Marks a [`Taken`] from Redis (in the interval's top bit), so that its refund goes
/// back to Redis, not to the local bucket.
const FROM_REDIS: u64 = 1 << 63;

/// How long a token taken with a slot stays usable: one round trip's slack. An older one
/// goes back (a handshake long after its token would bunch handshakes).
const PREFETCH_FRESH: Duration = Duration::from_millis(100);

/// Longest wait for a notice before asking Redis again (a lost notice, a dead replica
/// whose queue head blocks ours until its lease ends).
const FALLBACK_POLL: Duration = Duration::from_secs(1);

/// One scope's shared capacity (see the module docs of [`super`]).
#[derive(Debug)]
pub(crate) struct ScopeState {
    shared: Arc<Shared>,
    /// `sluice:t:NAME` or `sluice:edge`.
    prefix: String,
    /// `sluice:freed:t:NAME` or `sluice:freed:edge`.
    channel: String,
    /// Tells this scope's counts from those of an earlier scope of the same name (an
    /// earlier process under the same replica id, or a tenant a reload removed and
    /// brought back): Redis replaces a count only by a newer version of the same one.
    incarnation: String,
    /// Keeps the cluster-wide FIFO (tenants; the edge's arbiter is fair, not FIFO).
    fifo: bool,
    /// Takes the handshake token in the slot's script.
    prefetch: bool,
    /// The tenant (and weight) the edge's arbiter gives its next turn to: the edge
    /// orders the replicas' arbiters by it (fair queuing across replicas).
    candidate: Mutex<Option<(Arc<str>, u32)>>,
    /// The tenant the arbiter's turn after that is for (registered among the waiters
    /// when the candidate's turn is served).
    candidate_then: Mutex<Option<Arc<str>>>,
    cap: AtomicU32,
    /// The rate tokens are spaced for, as `f64` bits: the configured
    /// `handshake_rate`, or the adaptive one below it after edge trouble.
    rate: AtomicU64,
    burst: AtomicU32,
    /// This replica's live slots and their version (see [`COUNT_BITS`]).
    counts: AtomicU64,
    /// `counts` changed since it was last published.
    dirty: AtomicBool,
    /// Capacity may have freed (a notice, a local release, the breaker changed).
    freed: Notify,
    /// Local µs (after `shared.start`) before which Redis said no token is ready.
    ready_at: AtomicU64,
    /// Local µs until which the edge asked, through any replica, that the scope send
    /// nothing (0: never).
    paused_until: AtomicU64,
    /// A token taken with the slot, and when.
    prefetched: Mutex<Option<(Taken, Instant)>>,
    /// The head whose slot Redis granted in FIFO order (its arrival in local µs, plus
    /// one; 0: none): its place is decided, so its token's ask does not check the
    /// FIFO again ([`Self::ask_token`]).
    placed: AtomicU64,
    /// The head's arrival this replica registered among the scope's waiters (Redis
    /// µs), to withdraw it when the queue empties; `i64::MIN`: none.
    waiting: std::sync::atomic::AtomicI64,
    /// The arrival of the client after the head (Redis µs; -1: none), registered as
    /// the head when the head is served.
    following: std::sync::atomic::AtomicI64,
    /// The bucket of local decisions (breaker open, settling), and the `(rate, burst)`
    /// it is set to.
    local: Tokens,
    local_rate: Mutex<(f64, u32)>,
    /// Slots of all replicas as last seen; `u32::MAX`: unknown.
    cluster_live: AtomicU32,
    metrics: Option<ScopeMetrics>,
}

/// A slot counted before Redis is asked (so that every count this replica publishes
/// meanwhile includes it: Redis may count one too many for a moment, never one too
/// few; marked [`ASKING`], so that the sessions replicas report leave it out);
/// uncounted on drop unless Redis granted it ([`Pending::grant`]).
struct Pending<'a> {
    scope: &'a ScopeState,
    /// (count, version) with the slot counted.
    snapshot: (u64, u64),
    granted: bool,
}

impl<'a> Pending<'a> {
    fn new(scope: &'a ScopeState) -> Self {
        let step = |c: u64| (c | ASKING) + VERSION_ONE + 1;
        let before = scope
            .counts
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| Some(step(c)))
            .unwrap_or_else(|c| c);
        let after = step(before);
        Self {
            scope,
            snapshot: (after & COUNT_MASK, after >> VERSION_SHIFT),
            granted: false,
        }
    }

    /// Redis granted the slot: a session now, no longer asked for. A count published
    /// while it was asked for may have reached Redis after the grant (marked asked
    /// for): published again then, newer.
    fn grant(&mut self) {
        self.granted = true;
        let before = self
            .scope
            .counts
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                Some(if c & SEEN == 0 {
                    c & !ASKING
                } else {
                    (c & !(ASKING | SEEN)) + VERSION_ONE
                })
            })
            .unwrap_or_else(|c| c);
        if before & SEEN != 0 {
            self.scope.mark_dirty();
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.granted {
            // Version + 1, count - 1, no longer asked for (the count is at least the
            // slot being undone); published (Redis may hold it as asked for).
            self.scope
                .counts
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                    Some((c & !(ASKING | SEEN)).wrapping_add(VERSION_ONE.wrapping_sub(1)))
                })
                .ok();
            // Nothing freed: no local wake-up (the pump that asked would ask again at
            // once, in a loop).
            self.scope.mark_dirty();
        }
    }
}

impl ScopeState {
    pub(super) fn new(
        shared: Arc<Shared>,
        key: String,
        label: &str,
        fifo: bool,
        prefetch: bool,
    ) -> Self {
        let metrics = shared.metrics.as_ref().map(|m| m.scope(label));
        Self {
            prefix: format!("sluice:{key}"),
            channel: format!("sluice:freed:{key}"),
            incarnation: format!("{}.{:08x}", shared.incarnation, rand::random::<u32>()),
            shared,
            fifo,
            prefetch,
            candidate: Mutex::new(None),
            candidate_then: Mutex::new(None),
            cap: AtomicU32::new(0),
            rate: AtomicU64::new(1f64.to_bits()),
            burst: AtomicU32::new(1),
            counts: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            freed: Notify::new(),
            ready_at: AtomicU64::new(0),
            paused_until: AtomicU64::new(0),
            prefetched: Mutex::new(None),
            placed: AtomicU64::new(0),
            waiting: std::sync::atomic::AtomicI64::new(i64::MIN),
            following: std::sync::atomic::AtomicI64::new(-1),
            local: Tokens::new(1.0, 1),
            local_rate: Mutex::new((1.0, 1)),
            cluster_live: AtomicU32::new(u32::MAX),
            metrics,
        }
    }

    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(super) fn channel(&self) -> &str {
        &self.channel
    }

    pub(super) fn incarnation(&self) -> &str {
        &self.incarnation
    }

    /// Whether this replica has a head registered among the scope's waiters.
    pub(super) fn is_waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire) != i64::MIN
    }

    /// Sets the scope's limits (a new gate, or a reload).
    pub(super) fn configure(&self, cap: u32, rate: f64, burst: u32) {
        self.cap.store(cap, Ordering::Release);
        self.rate.store(rate.to_bits(), Ordering::Release);
        self.burst.store(burst, Ordering::Release);
        self.wake();
    }

    /// Any pump waiting on this scope asks again.
    pub(super) fn wake(&self) {
        self.freed.notify_waiters();
    }

    /// This replica's count and its version, as one snapshot.
    pub(super) fn snapshot(&self) -> (u64, u64) {
        let c = self.counts.load(Ordering::Acquire);
        (c & COUNT_MASK, c >> VERSION_SHIFT)
    }

    /// This replica's count, its version and whether it includes a slot being asked
    /// for, as one snapshot, to publish (marked [`SEEN`] when it does).
    pub(super) fn to_publish(&self) -> (u64, u64, bool) {
        let c = self
            .counts
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c & (ASKING | SEEN) == ASKING).then_some(c | SEEN)
            })
            .unwrap_or_else(|c| c);
        (c & COUNT_MASK, c >> VERSION_SHIFT, c & ASKING != 0)
    }

    /// Whether the count changed since it was published; clears the mark.
    pub(super) fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    pub(super) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
        self.shared.flush.notify_one();
    }

    pub(super) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// The cluster-wide count a heartbeat or a decision reported.
    pub(super) fn set_cluster_live(&self, total: i64) {
        let total = u32::try_from(total.max(0)).unwrap_or(u32::MAX - 1);
        self.cluster_live.store(total, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.sessions.set(i64::from(total));
        }
    }

    /// One slot fewer (a session ended): published, and this replica's waiting pump
    /// woken.
    fn uncount(&self) {
        // Version + 1, count - 1 (the count is at least the one being undone).
        self.counts
            .fetch_add(VERSION_ONE.wrapping_sub(1), Ordering::AcqRel);
        self.mark_dirty();
        self.freed.notify_waiters();
    }

    fn rate(&self) -> (f64, u32) {
        (
            f64::from_bits(self.rate.load(Ordering::Acquire)),
            self.burst.load(Ordering::Acquire),
        )
    }

    /// The GCRA's interval and tolerance in µs.
    fn gcra(&self) -> (i64, i64) {
        let (rate, burst) = self.rate();
        let interval = (1e6 / rate).round().clamp(1.0, 1e12) as i64;
        (interval, interval * i64::from(burst.max(1) - 1))
    }

    /// The local bucket, set for `mode`'s share of the rate.
    fn local_tokens(&self, mode: Mode) -> &Tokens {
        let (rate, burst) = self.rate();
        let want = if mode == Mode::Share {
            let n = self.shared.live_replicas();
            (rate / f64::from(n), self.shared.share(burst).max(1))
        } else {
            (rate, burst)
        };
        let mut set = self
            .local_rate
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *set != want {
            self.local.set_rate(want.0, want.1);
            *set = want;
        }
        &self.local
    }

    /// A slot decided here, without Redis (`mode` is `Share` or `Open`).
    fn local_slot(&self, mode: Mode) -> bool {
        let cap = self.cap.load(Ordering::Acquire);
        let cap = if mode == Mode::Share {
            self.shared.share(cap)
        } else {
            cap
        };
        let granted = self
            .counts
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                ((c & COUNT_MASK) < u64::from(cap)).then_some(c + VERSION_ONE + 1)
            })
            .is_ok();
        if granted {
            if let Some(m) = &self.metrics {
                m.local_share.inc();
            }
            self.mark_dirty();
        }
        granted
    }
}

impl SharedCapacity for ScopeState {
    fn candidate(&self, tenant: &str, weight: u32, then: Option<&str>) {
        let mut c = self
            .candidate
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if c.as_ref()
            .is_none_or(|(t, w)| &**t != tenant || *w != weight)
        {
            *c = Some((Arc::from(tenant), weight));
        }
        drop(c);
        let mut n = self
            .candidate_then
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if n.as_deref() != then {
            *n = then.map(Arc::from);
        }
    }

    fn following(&self, next: Option<Instant>) {
        let next = match next {
            Some(at) if self.fifo => self.shared.redis_us(at).unwrap_or(-1),
            _ => -1,
        };
        self.following.store(next, Ordering::Release);
    }

    fn set_rate(&self, rate: f64) {
        if rate.is_finite() && rate > 0.0 {
            self.rate.store(rate.to_bits(), Ordering::Release);
        }
    }

    fn try_acquire_slot(&self) -> Fast<()> {
        match self.shared.mode() {
            Mode::Redis => Fast::Ask,
            Mode::Closed | Mode::Conflict => Fast::No,
            mode => {
                if self.local_slot(mode) {
                    Fast::Yes(())
                } else {
                    Fast::No
                }
            }
        }
    }

    fn acquire_slot(&self, head: Option<Instant>) -> BoxFuture<'_, Result<bool, BackendError>> {
        Box::pin(async move {
            match self.shared.mode() {
                Mode::Redis => self.ask_slot(head).await,
                Mode::Closed | Mode::Conflict => Ok(false),
                mode => Ok(self.local_slot(mode)),
            }
        })
    }

    fn release_slot(&self) {
        self.uncount();
    }

    fn try_take(&self, now: Instant) -> Fast<Taken> {
        match self.shared.mode() {
            Mode::Redis => {
                let prefetched = self
                    .prefetched
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                match prefetched {
                    Some((taken, at)) if now.saturating_duration_since(at) <= PREFETCH_FRESH => {
                        Fast::Yes(taken)
                    }
                    Some((stale, _)) => {
                        self.refund(stale);
                        Fast::Ask
                    }
                    None => Fast::Ask,
                }
            }
            Mode::Closed | Mode::Conflict => Fast::No,
            mode => match self.local_tokens(mode).try_take(now) {
                Ok(taken) => Fast::Yes(taken),
                Err(_) => Fast::No,
            },
        }
    }

    fn take(
        &self,
        now: Instant,
        head: Option<Instant>,
    ) -> BoxFuture<'_, Result<Result<Taken, Instant>, BackendError>> {
        Box::pin(async move {
            match self.shared.mode() {
                Mode::Redis => self.ask_token(now, head).await,
                Mode::Closed | Mode::Conflict => Ok(Err(now + FALLBACK_POLL)),
                mode => Ok(self.local_tokens(mode).try_take(now)),
            }
        })
    }

    fn refund(&self, taken: Taken) {
        let (tat, interval) = taken.parts();
        if interval & FROM_REDIS == 0 {
            self.local.refund(taken);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // shutting down: a lost refund only slows the next client a little
        };
        let shared = self.shared.clone();
        let key = format!("{}:r", self.prefix);
        runtime.spawn(async move {
            let mut invocation = scripts::REFUND.prepare_invoke();
            invocation.key(key).arg(tat).arg(interval & !FROM_REDIS);
            // A lost refund only slows the next client a little.
            let _ = shared.link.run(&invocation, false).await;
        });
    }

    fn ready_at(&self) -> Instant {
        match self.shared.mode() {
            Mode::Redis => {
                // A token taken with the slot is ready since it was taken (not "now":
                // a caller compares this with a `now` it read before).
                if let Some((_, at)) = *self
                    .prefetched
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                {
                    return at;
                }
                self.ready_instant()
            }
            Mode::Closed | Mode::Conflict => Instant::now() + FALLBACK_POLL,
            mode => self.local_tokens(mode).ready_at(),
        }
    }

    fn freed(&self) -> BoxFuture<'_, ()> {
        // Created now: a notice sent after this call completes it, polled or not.
        let notified = self.freed.notified();
        // Asking again before a pause ends is pointless; after it, at once.
        let poll = self
            .paused_until(Instant::now())
            .unwrap_or_else(|| Instant::now() + FALLBACK_POLL);
        Box::pin(async move {
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(poll) => {}
            }
        })
    }

    fn pause(&self, until: Instant) {
        self.paused_until
            .fetch_max(self.shared.local_us(until), Ordering::AcqRel);
        let Some(until_us) = self.shared.redis_us(until) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = self.shared.clone();
        let key = format!("{}:p", self.prefix);
        runtime.spawn(async move {
            let mut invocation = scripts::PAUSE.prepare_invoke();
            invocation.key(key).arg(until_us);
            // Lost: the others learn of the pause from the edge's own answers.
            let _ = shared.link.run(&invocation, false).await;
        });
    }

    fn paused_until(&self, now: Instant) -> Option<Instant> {
        let us = self.paused_until.load(Ordering::Acquire);
        let at = self.shared.start + Duration::from_micros(us);
        (us != 0 && at > now).then_some(at)
    }

    fn reconfigure(&self, max_sessions: u32, rate: f64, burst: u32) {
        self.configure(max_sessions, rate, burst);
    }

    fn live(&self) -> u32 {
        (self.counts.load(Ordering::Acquire) & COUNT_MASK) as u32
    }

    fn cluster_live(&self) -> Option<u32> {
        let n = self.cluster_live.load(Ordering::Relaxed);
        (n != u32::MAX).then_some(n)
    }

    fn idle(&self) {
        let head = self.waiting.swap(i64::MIN, Ordering::AcqRel);
        if head == i64::MIN {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = self.shared.clone();
        let (key, channel) = (format!("{}:w", self.prefix), self.channel.clone());
        runtime.spawn(async move {
            let mut invocation = scripts::WITHDRAW.prepare_invoke();
            invocation
                .key(key)
                .arg(&shared.replica_id)
                .arg(head)
                .arg(channel);
            // Lost: the entry goes when this replica's lease does, or at its next ask.
            let _ = shared.link.run(&invocation, false).await;
        });
    }
}
