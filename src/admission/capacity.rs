//! Step 4 of the flow, admission (DESIGN.md): the capacity it hands out — session slots and handshake tokens — and the seam a shared backend plugs into.
//!
//! # The interface
//!
//! Every scope (a tenant's gate, the `[edge]` gate) answers [`Scope::capacity`] with a
//! [`Capacity`]: either [`Capacity::Local`], today's in-process [`Limit`] (lock-free
//! atomics: a GCRA for tokens, a counter with a release notice for slots), or
//! [`Capacity::Shared`], a [`SharedCapacity`] backend that several replicas share
//! (issue 15: Redis). The queue, the pump ([`super::gate`]) and the fair edge arbiter
//! ([`super::edge`]) stay local and touch capacity only through [`Capacity`]:
//!
//! | operation | synchronous fast path | asynchronous, fallible |
//! |---|---|---|
//! | session slot | [`Capacity::try_acquire_slot`] | [`Capacity::acquire_slot`] (waits on [`SharedCapacity::freed`]) |
//! | handshake token | [`Capacity::try_take`] | [`Capacity::take`] |
//! | give back | [`Capacity::release_slot`], [`Capacity::refund`] (never block) | — |
//!
//! A fast-path answer is [`Fast::Yes`], [`Fast::No`] or [`Fast::Ask`] ("only the backend
//! knows"): the fast path ([`super::Admission::try_admit`]) treats `Ask` like `No`, so
//! the client queues and its tenant's pump asks the backend, in FIFO order. Nothing on
//! the fast path waits for a network round trip, and a backend that keeps a local view
//! may answer `No` itself, so a connect the local state refuses costs no round trip.
//!
//! # Why an enum over a borrowed view, not a generic or `Box<dyn>`
//!
//! `Capacity<'_>` is a two-word `Copy` view built on each call from the scope: `Local`
//! borrows the [`Limit`] kept inline in the gate, `Shared` borrows the backend behind
//! the gate's `Arc<dyn SharedCapacity>`. Which one is decided by a `bool` that sits in
//! the padding of the gate's first cache line (next to `queued`), so the in-process fast
//! path reads exactly the cache line it read before, calls no virtual function and
//! allocates nothing; only a shared scope pays a virtual call (and its boxed futures,
//! next to a network round trip they are noise). A generic gate (`TenantGate<C>`) would
//! have spread a type parameter through `Admission`, the tenant table and every caller
//! for no measurable gain (`docs/benchmarks.md`, admission).
//!
//! # Failure semantics
//!
//! A [`BackendError`] (timeout, connection lost) is "not now", never a refusal by
//! itself: the pump and the arbiter give back what they reserved for the head of the
//! queue (the RAII guards do, exactly once), sleep [`BACKOFF`] and try again, holding no
//! lock across any `.await`. A queued client is therefore refused only by its own
//! `queue_timeout` (or a full queue, a drain), as with the local backend; a failing
//! backend delays it and leaks nothing. Giving back never fails from the caller's side:
//! [`SharedCapacity::release_slot`] and [`SharedCapacity::refund`] are synchronous and
//! must not block, so a network backend queues or spawns the call (and owns its
//! retries; issue 15's leases bound what a lost release can cost). What a breaker does
//! after consecutive failures (local share, open, closed) is the backend's business:
//! it answers from its local share instead of failing.
//!
//! # Tokens
//!
//! Tokens are a GCRA, the algorithm `governor` implements. `governor` itself cannot be
//! used for this job: admission must take a tenant token and an edge token together
//! or neither, and must hand back the token of a client that left between being chosen
//! and being told, which needs `ready_at` (a peek) and `refund` — operations governor
//! does not have. Its clock is also not tokio's, so the scheduler could not be tested
//! under paused time.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How long the pump or the arbiter waits before asking a backend that failed again.
pub const BACKOFF: Duration = Duration::from_millis(50);

/// A boxed future, what a [`SharedCapacity`] returns (object safety).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A shared backend could not decide (timed out, lost its connection, …). The caller
/// treats it as "not now" and asks again after [`BACKOFF`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("capacity backend: {0}")]
pub struct BackendError(pub std::sync::Arc<str>);

/// A synchronous answer of the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fast<T> {
    /// Taken.
    Yes(T),
    /// Not now (nothing taken).
    No,
    /// Only the backend can tell (nothing taken): queue, and let the pump ask.
    Ask,
}

/// Capacity that several replicas share (issue 15: Redis), implemented beside the
/// in-process [`Limit`]. One value per scope (a tenant, or the edge).
///
/// Contract:
/// - the futures are cancel-safe: dropped before they complete, they leave nothing
///   taken (the pump drops them when its queue empties);
/// - [`Self::release_slot`] and [`Self::refund`] do not block: a network backend queues
///   or spawns them; each is called exactly once per slot or token handed out;
/// - [`Self::freed`] completes on any notice sent after it was called (a slot released
///   here or on another replica, a raised cap), so a waiting pump never misses one.
pub trait SharedCapacity: Send + Sync + std::fmt::Debug {
    /// A slot without waiting for the backend, when this replica knows; by default
    /// [`Fast::Ask`].
    fn try_acquire_slot(&self) -> Fast<()> {
        Fast::Ask
    }
    /// Asks the backend for a session slot: `Ok(true)` taken, `Ok(false)` full now (or
    /// not this replica's turn). `head` is when the client it is for joined the queue
    /// (`None` for the edge's arbiter), so a backend can keep a cluster-wide FIFO.
    fn acquire_slot(&self, head: Option<Instant>) -> BoxFuture<'_, Result<bool, BackendError>>;
    /// Gives a slot back (exactly once per slot taken; must not block).
    fn release_slot(&self);
    /// A token without waiting for the backend, when this replica knows; by default
    /// [`Fast::Ask`].
    fn try_take(&self, _now: Instant) -> Fast<Taken> {
        Fast::Ask
    }
    /// Asks the backend for a handshake token: `Ok(Err(at))` when not before `at`.
    /// `head` as for [`Self::acquire_slot`].
    fn take(
        &self,
        now: Instant,
        head: Option<Instant>,
    ) -> BoxFuture<'_, Result<Result<Taken, Instant>, BackendError>>;
    /// Gives back a token that was not used (must not block).
    fn refund(&self, taken: Taken);
    /// When the next token may be ready, as far as this replica knows (after a `take`
    /// answered "not before `at`", at least `at`); the pump sleeps until then.
    fn ready_at(&self) -> Instant;
    /// Completes when capacity may have freed (here or on another replica).
    fn freed(&self) -> BoxFuture<'_, ()>;
    /// A reload changed the scope's limits (`max_sessions`, the configured
    /// `handshake_rate` and `handshake_burst`). Must not block; a raised cap should
    /// complete [`Self::freed`], which is what wakes a waiting pump.
    fn reconfigure(&self, _max_sessions: u32, _rate: f64, _burst: u32) {}
    /// The edge's arbiter will give its next turn to a client of `tenant`, of
    /// `weight`, and the turn after it to one of `then` (as far as it knows now): a
    /// backend shared by several arbiters (one per replica) can order their turns by the
    /// tenants' weights across all of them, and register `then` in the same step that
    /// serves `tenant`, so that another replica does not take the next turn only because
    /// this one had not asked yet. Must not block.
    fn candidate(&self, _tenant: &str, _weight: u32, _then: Option<&str>) {}
    /// The edge asked (`429`/`503` with `Retry-After`) that this scope send nothing
    /// until `until`: a shared backend tells the other replicas. Must not block.
    fn pause(&self, _until: Instant) {}
    /// Until when another replica was asked to hold this scope's clients back, as far
    /// as this replica knows; `None` when not paused at `now`.
    fn paused_until(&self, _now: Instant) -> Option<Instant> {
        None
    }
    /// The adaptive rate moved (edge trouble, recovery, a reload): tokens this replica
    /// takes are spaced for `rate` (at most the configured one). Must not block.
    fn set_rate(&self, _rate: f64) {}
    /// Slots this replica holds now (admitted sessions and the one reserved for the
    /// head of the queue).
    fn live(&self) -> u32;
    /// Slots held by all replicas together, as last seen; `None` when unknown.
    fn cluster_live(&self) -> Option<u32> {
        None
    }
    /// The client after the head of the queue joined at `next` (`None`: nobody waits
    /// behind the head). A backend keeping a cluster-wide FIFO registers it as this
    /// replica's head in the same step that serves the head, so that a later client of
    /// another replica cannot slip in between (and then have to give its edge turn
    /// back). Must not block.
    fn following(&self, _next: Option<Instant>) {}
    /// The pump stopped: its queue is empty, nobody of this replica waits for this
    /// scope any more (a backend that keeps a cluster-wide queue withdraws from it).
    /// Must not block.
    fn idle(&self) {}
}

/// Makes the [`SharedCapacity`] of each scope: what [`super::Admission::clustered`]
/// hands every gate it makes (issue 15: one per tenant and one for the edge, on Redis).
pub trait SharedScopes: Send + Sync + std::fmt::Debug {
    /// The backend of tenant `name` with `limits`.
    fn tenant(
        &self,
        name: &str,
        limits: &crate::config::Limits,
    ) -> std::sync::Arc<dyn SharedCapacity>;
    /// The backend of the `[edge]` ceiling.
    fn edge(&self, limits: &crate::config::EdgeLimits) -> std::sync::Arc<dyn SharedCapacity>;
}

/// Session slots and handshake tokens of one scope (a tenant, or the edge), in
/// process. Kept inline in the scope's gate so that a decision touches one allocation
/// per scope.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Limit {
    pub(crate) tokens: Tokens,
    pub(crate) slots: Slots,
}

impl Limit {
    /// `max_sessions` slots and a full bucket whose times count from `epoch`.
    pub(crate) fn new_at(max_sessions: u32, rate: f64, burst: u32, epoch: Instant) -> Self {
        Self {
            tokens: Tokens::new_at(rate, burst, epoch),
            slots: Slots::new(max_sessions),
        }
    }
}

/// A gate with capacity: a tenant's, or the edge's.
pub(crate) trait Scope {
    /// Where slots and tokens come from.
    fn capacity(&self) -> Capacity<'_>;
}

/// Where a scope's slots and tokens come from: the in-process [`Limit`] or a shared
/// backend (see the module docs).
#[derive(Debug, Clone, Copy)]
pub enum Capacity<'a> {
    /// In process, lock-free.
    #[allow(private_interfaces)]
    Local(&'a Limit),
    /// Shared with other replicas.
    Shared(&'a dyn SharedCapacity),
}

impl Capacity<'_> {
    /// A session slot now, if the answer is known without waiting.
    #[inline]
    pub fn try_acquire_slot(self) -> Fast<()> {
        match self {
            Capacity::Local(l) => {
                if l.slots.try_acquire() {
                    Fast::Yes(())
                } else {
                    Fast::No
                }
            }
            Capacity::Shared(b) => b.try_acquire_slot(),
        }
    }

    /// Waits for a session slot and takes it. Only one task per scope waits here (the
    /// tenant's pump, the edge's arbiter); `head` says when the client it is for (the
    /// head of the queue at each ask) joined the queue. Cancel-safe.
    ///
    /// # Errors
    /// The backend failed (never for a local scope); nothing is held then.
    pub async fn acquire_slot(
        self,
        head: &(dyn Fn() -> Option<Instant> + Send + Sync),
    ) -> Result<(), BackendError> {
        match self {
            Capacity::Local(l) => {
                l.slots.acquire().await;
                Ok(())
            }
            Capacity::Shared(b) => loop {
                if b.try_acquire_slot() == Fast::Yes(()) {
                    return Ok(());
                }
                // Asked for before the attempt, so a release between the attempt and
                // the wait still wakes us.
                let freed = b.freed();
                // The head now: the one of the last ask may have left.
                if b.acquire_slot(head()).await? {
                    return Ok(());
                }
                freed.await;
            },
        }
    }

    /// Gives a slot back; exactly once per slot taken (the RAII guards call it).
    #[inline]
    pub fn release_slot(self) {
        match self {
            Capacity::Local(l) => l.slots.release(),
            Capacity::Shared(b) => b.release_slot(),
        }
    }

    /// A handshake token at `now`, if the answer is known without waiting.
    #[inline]
    pub fn try_take(self, now: Instant) -> Fast<Taken> {
        match self {
            Capacity::Local(l) => match l.tokens.try_take(now) {
                Ok(taken) => Fast::Yes(taken),
                Err(_) => Fast::No,
            },
            Capacity::Shared(b) => b.try_take(now),
        }
    }

    /// A handshake token at `now`, asking the backend if need be (for the client that
    /// joined the queue at `head`); `Ok(Err(at))` when not before `at`.
    ///
    /// # Errors
    /// The backend failed (never for a local scope); nothing is held then.
    pub async fn take(
        self,
        now: Instant,
        head: Option<Instant>,
    ) -> Result<Result<Taken, Instant>, BackendError> {
        match self {
            Capacity::Local(l) => Ok(l.tokens.try_take(now)),
            Capacity::Shared(b) => match b.try_take(now) {
                Fast::Yes(taken) => Ok(Ok(taken)),
                Fast::No => Ok(Err(b.ready_at().max(now))),
                Fast::Ask => b.take(now, head).await,
            },
        }
    }

    /// [`Self::try_take`] for the fast path, which read the clock once: `now` and, for
    /// a local scope, `nanos`, which is `now` in nanoseconds after `epoch` (converted
    /// here only when the bucket counts from another epoch).
    #[inline]
    pub(crate) fn try_take_at(self, now: Instant, epoch: Instant, nanos: u64) -> Fast<Taken> {
        match self {
            Capacity::Local(l) => {
                let nanos = if l.tokens.epoch() == epoch {
                    nanos
                } else {
                    l.tokens.nanos(now)
                };
                match l.tokens.try_take_nanos(nanos) {
                    Ok(taken) => Fast::Yes(taken),
                    Err(_) => Fast::No,
                }
            }
            Capacity::Shared(b) => b.try_take(now),
        }
    }

    /// Gives back a token that was not used.
    #[inline]
    pub fn refund(self, taken: Taken) {
        match self {
            Capacity::Local(l) => l.tokens.refund(taken),
            Capacity::Shared(b) => b.refund(taken),
        }
    }

    /// Who comes after the head ([`SharedCapacity::following`]); `next` is only
    /// asked (it takes the queue's lock) for a shared backend.
    pub fn following(self, next: impl FnOnce() -> Option<Instant>) {
        if let Capacity::Shared(b) = self {
            b.following(next());
        }
    }

    /// Nobody of this replica waits for this scope any more ([`SharedCapacity::idle`]).
    pub fn idle(self) {
        if let Capacity::Shared(b) = self {
            b.idle();
        }
    }

    /// Slots held on this replica.
    pub fn live(self) -> u32 {
        match self {
            Capacity::Local(l) => l.slots.live(),
            Capacity::Shared(b) => b.live(),
        }
    }

    /// Slots held by all replicas, when shared and known.
    pub fn cluster_live(self) -> Option<u32> {
        match self {
            Capacity::Local(_) => None,
            Capacity::Shared(b) => b.cluster_live(),
        }
    }

    /// When the next token may be ready.
    pub fn ready_at(self) -> Instant {
        match self {
            Capacity::Local(l) => l.tokens.ready_at(),
            Capacity::Shared(b) => b.ready_at(),
        }
    }
}

/// Session slots: at most `cap` held at once.
#[derive(Debug)]
#[repr(C)] // hot fields first
pub struct Slots {
    /// Slots held (low 32 bits) and releases so far, wrapping (high 32 bits): one word,
    /// so that a release is one atomic operation, not two (a decision's release costs
    /// one read-modify-write per scope; `docs/benchmarks.md`, issue 16).
    state: AtomicU64,
    /// Changed by a reload: a lower cap only holds new sessions back.
    cap: AtomicU32,
    /// Set while the one task that may wait for a slot (a tenant's pump, the edge's
    /// arbiter) waits; only then does a release signal `freed`, so the fast path pays
    /// for no wake-up.
    waiting: AtomicBool,
    freed: Notify,
    /// Windows over the release count for the release rate; only read on the refusal
    /// path.
    windows: std::sync::Mutex<ReleaseWindows>,
}

/// The slots held, from a [`Slots::state`] word.
#[inline]
fn held(state: u64) -> u32 {
    state as u32
}

/// The releases so far (wrapping), from a [`Slots::state`] word.
#[inline]
fn releases(state: u64) -> u32 {
    (state >> 32) as u32
}

/// Added to [`Slots::state`] by a release: one slot fewer held (there is one, so the
/// low half does not borrow; its carry is the high half's one release more).
const RELEASE: u64 = (1 << 32) - 1;

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
            state: AtomicU64::new(0),
            cap: AtomicU32::new(cap),
            waiting: AtomicBool::new(false),
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
        self.take_or_undo(true)
    }

    /// Takes a slot and keeps it if it was under the cap: one read-modify-write whether
    /// or not it fits, where a compare-and-swap loop is retried while the other cores
    /// take slots too (`docs/benchmarks.md`, issue 16). A slot taken over the cap is
    /// given back at once, and it is no release: the count of releases stays. For that
    /// moment the count is one too high, and another attempt may fail on it: so the
    /// give-back wakes the waiting task, as a release would (unless `wake` is false: the
    /// waiting task's own attempts, which would only wake itself).
    fn take_or_undo(&self, wake: bool) -> bool {
        // SeqCst even when it fails: a failed attempt is the read that must not be
        // reordered before the waiter's flag store in `acquire`.
        let before = self.state.fetch_add(1, Ordering::SeqCst);
        if held(before) < self.cap.load(Ordering::SeqCst) {
            return true;
        }
        self.state.fetch_sub(1, Ordering::SeqCst);
        if wake && self.waiting.load(Ordering::SeqCst) {
            self.freed.notify_one();
        }
        false
    }

    /// Takes a slot whether or not one is free (a shadow tenant's session, which is
    /// counted but never held back: it may take the count over the cap). Whether it
    /// fitted under the cap. Released like any other, exactly once.
    pub fn force_acquire(&self) -> bool {
        let before = self.state.fetch_add(1, Ordering::SeqCst);
        held(before) < self.cap.load(Ordering::SeqCst)
    }

    /// About how long sessions take to free a slot: the time between releases over
    /// the last one to two minutes (counting the silence since, so it grows while
    /// nothing ends); `None` before any release.
    pub fn release_interval(&self) -> Option<Duration> {
        let now = Instant::now();
        let count = releases(self.state.load(Ordering::Relaxed));
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
        // One operation: a slot fewer held, a release more counted.
        let before = self.state.fetch_add(RELEASE, Ordering::SeqCst);
        debug_assert!(held(before) > 0, "slot released more often than acquired");
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
            if self.take_or_undo(false) {
                break;
            }
            freed.await;
        }
        self.waiting.store(false, Ordering::SeqCst);
    }

    /// Slots held now.
    pub fn live(&self) -> u32 {
        held(self.state.load(Ordering::Acquire))
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

/// Proof of a token taken from [`Tokens`]: the state the take left, and the interval
/// it added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a taken token is spent, or refunded with it"]
pub struct Taken(u64, u64);

impl Taken {
    /// A token's proof as a backend records it: the state its take left and the
    /// interval it added (both in the backend's units), handed back to its `refund`.
    pub fn new(state: u64, interval: u64) -> Self {
        Self(state, interval)
    }

    /// The state the take left and the interval it added.
    pub fn parts(self) -> (u64, u64) {
        (self.0, self.1)
    }
}

mod tokens;
pub(crate) use tokens::nanos_since;
pub use tokens::Tokens;

#[cfg(test)]
mod tests;
