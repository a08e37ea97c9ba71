//! Step 4 of the flow, admission: one tenant's gate — its FIFO queue and the pump that paces it.
//!
//! One tenant's admission state, its FIFO queue, and the pump that releases the queue
//! at the tenant's pace.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::adaptive::Adaptive;
use super::capacity::{Capacity, Fast, Limit, Scope, SharedCapacity, Taken, BACKOFF};
use super::edge::EdgeGate;
use super::{Gauges, PauseSource, Pauses};

/// A slot now, if the answer is known without waiting (a shared backend's "ask me" is
/// a no here).
pub(crate) fn try_slot<S: Scope>(scope: &Arc<S>) -> Option<Slot<S>> {
    matches!(scope.capacity().try_acquire_slot(), Fast::Yes(())).then(|| Slot(Some(scope.clone())))
}

/// Waits for a free slot. Only one task per scope waits here (the tenant's pump or the
/// edge's arbiter). A backend that fails is asked again after [`BACKOFF`]: a failure
/// delays, it never refuses.
pub(crate) async fn slot<S: Scope>(
    scope: &Arc<S>,
    head: &(dyn Fn() -> Option<Instant> + Send + Sync),
) -> Slot<S> {
    while scope.capacity().acquire_slot(head).await.is_err() {
        tokio::time::sleep(BACKOFF).await;
    }
    Slot(Some(scope.clone()))
}

/// A token now, if one is ready and the answer is known without waiting.
pub(crate) fn try_token<S: Scope>(scope: &Arc<S>, now: Instant) -> Option<Token<S>> {
    match scope.capacity().try_take(now) {
        Fast::Yes(taken) => Some(Token {
            scope: scope.clone(),
            taken: Some(taken),
        }),
        Fast::No | Fast::Ask => None,
    }
}

/// A token at `now`, asking a shared backend if need be; `None` when none is ready (or
/// the backend failed: then after [`BACKOFF`], so that a caller starting over does not
/// spin on a failing backend).
pub(crate) async fn token<S: Scope>(
    scope: &Arc<S>,
    now: Instant,
    head: Option<Instant>,
) -> Option<Token<S>> {
    match scope.capacity().take(now, head).await {
        Ok(Ok(taken)) => Some(Token {
            scope: scope.clone(),
            taken: Some(taken),
        }),
        Ok(Err(_)) => None,
        Err(_) => {
            tokio::time::sleep(BACKOFF).await;
            None
        }
    }
}

/// A held session slot; released when dropped, so exactly once, unless handed on to
/// a [`Permit`](super::Permit) by [`Slot::into_permit_part`].
#[derive(Debug)]
pub(crate) struct Slot<S: Scope>(Option<Arc<S>>);

impl<S: Scope> Slot<S> {
    /// Gives up the guard without releasing: the caller's permit now owns the slot.
    pub(crate) fn into_permit_part(mut self) -> Arc<S> {
        self.0
            .take()
            .expect("a slot guard holds its scope until dropped")
    }
}

impl<S: Scope> Drop for Slot<S> {
    fn drop(&mut self) {
        if let Some(scope) = self.0.take() {
            scope.capacity().release_slot();
        }
    }
}

/// A taken handshake token; handed back when dropped unless [`Token::spend`] was
/// called (its client was told to go ahead).
#[derive(Debug)]
pub(crate) struct Token<S: Scope> {
    scope: Arc<S>,
    /// `None` once spent.
    taken: Option<Taken>,
}

impl<S: Scope> Token<S> {
    pub(crate) fn spend(mut self) {
        self.taken = None;
    }
}

impl<S: Scope> Drop for Token<S> {
    fn drop(&mut self) {
        if let Some(taken) = self.taken.take() {
            self.scope.capacity().refund(taken);
        }
    }
}

/// Why a tenant's queue was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Closed {
    /// The server is draining.
    Draining = 1,
    /// A reload removed the tenant.
    Removed = 2,
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What a queued client is waiting for right now: decides between `queue-*` (the
/// tenant's own limits) and `edge-capacity` (the shared ceiling), and how long the
/// `Retry-After` estimate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Blocker {
    /// A session of the tenant to end.
    Slot = 0,
    /// The tenant's next handshake token.
    Token = 1,
    /// Its turn at the edge ceiling.
    Edge = 2,
}

/// The session slot, tokens and edge share reserved for the client at the head of a
/// queue; it becomes the client's permit, or everything goes back if the client has
/// left in the meantime.
#[derive(Debug)]
pub(crate) struct Reserved {
    pub(crate) permit: super::Permit,
    pub(crate) tenant_token: Token<TenantGate>,
    pub(crate) edge_token: Option<Token<EdgeGate>>,
}

impl Reserved {
    pub(crate) fn commit(self) -> super::Permit {
        let Self {
            permit,
            tenant_token,
            edge_token,
        } = self;
        tenant_token.spend();
        if let Some(t) = edge_token {
            t.spend();
        }
        permit
    }
}

/// A queued client, as the queue holds it.
#[derive(Debug)]
struct Waiter {
    id: u64,
    /// When it joined the queue, in µs after the gate's `epoch` (a shared backend
    /// keeps FIFO across replicas by it; 8 bytes where an `Instant` takes 16).
    since: u64,
    grant: oneshot::Sender<Reserved>,
}

#[derive(Debug, Default)]
struct Queue {
    /// FIFO, ids ascending.
    waiters: VecDeque<Waiter>,
    next_id: u64,
    /// Whether a pump task is running for this tenant.
    pump: bool,
}

/// One tenant's admission state. The fields a fast-path decision reads come first,
/// in one cache line of their own.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct TenantGate {
    /// `queue.waiters.len()`, readable without the lock.
    queued: AtomicU32,
    /// Whether `backend` is set: read from this cache line (in `queued`'s padding), so
    /// the in-process fast path reads no other.
    shared: bool,
    /// Whether `pauses` is set (also in the padding): a gate without a group's pauses
    /// (a planner's, a bench's) does not load them on the fast path. Changed by a
    /// reload, after `pauses`.
    grouped: AtomicBool,
    pub(crate) limit: Limit,
    blocker: AtomicU8,
    pub(crate) name: Arc<str>,
    /// `queue_depth`, `queue_timeout` (nanoseconds) and `weight`: changed by a reload.
    queue_depth: AtomicU32,
    queue_timeout: AtomicU64,
    weight: AtomicU32,
    /// Why the queue takes nobody any more ([`Closed`]), as its `u8`; 0: open.
    closed: AtomicU8,
    /// `!enforce`: the tenant is in shadow mode; its clients go on untouched (no pause,
    /// no wait for an edge token on a retry) and its decisions are modelled elsewhere
    /// ([`super::shadow`]). Changed by a reload.
    shadow: std::sync::atomic::AtomicBool,
    queue: Mutex<Queue>,
    /// `sluice_queue_depth` of this tenant, set wherever `queued` changes.
    depth_gauge: prometheus::IntGauge,
    /// The adaptive handshake rate.
    pub(crate) adaptive: Adaptive,
    /// Signalled when the last queued client leaves.
    emptied: Notify,
    /// Signalled by a reload: a raised rate may make the next token due sooner.
    reconfigured: Notify,
    /// The edge ceiling (the same one as [`super::Admission`]'s), so that a permit
    /// releases its edge slot through its tenant without holding the edge itself.
    pub(crate) edge: Option<Arc<EdgeGate>>,
    /// The tenant's upstream group's pauses: while the edge has paused all of it for
    /// this tenant (for everyone, or for this tenant alone), none of this tenant's
    /// clients is sent. Swapped when a reload moves the tenant or rebuilds its group.
    pauses: arc_swap::ArcSwapOption<PauseSource>,
    /// The shared capacity backend, if the tenant's slots and tokens are not (only) in
    /// process.
    backend: Option<Arc<dyn SharedCapacity>>,
    /// Nanoseconds after the epoch (the token bucket's) until which the edge asked
    /// (`429` + `Retry-After`) that this tenant send nothing; 0: not paused.
    paused_until: AtomicU64,
}

impl Scope for TenantGate {
    #[inline]
    fn capacity(&self) -> Capacity<'_> {
        match &self.backend {
            Some(backend) if self.shared => Capacity::Shared(&**backend),
            _ => Capacity::Local(&self.limit),
        }
    }
}

impl TenantGate {
    pub(crate) fn new(
        name: &str,
        limits: &crate::config::Limits,
        edge: Option<Arc<EdgeGate>>,
        pauses: Option<Arc<dyn Pauses>>,
        gauges: Gauges,
        backend: Option<Arc<dyn SharedCapacity>>,
        epoch: Instant,
    ) -> Self {
        Self {
            shared: backend.is_some(),
            grouped: AtomicBool::new(pauses.is_some()),
            backend,
            name: name.into(),
            limit: Limit::new_at(
                limits.max_sessions,
                limits.handshake_rate,
                limits.handshake_burst,
                epoch,
            ),
            queue_depth: AtomicU32::new(limits.queue_depth),
            queue_timeout: AtomicU64::new(duration_nanos(limits.queue_timeout)),
            weight: AtomicU32::new(limits.weight),
            closed: AtomicU8::new(0),
            shadow: std::sync::atomic::AtomicBool::new(!limits.enforce),
            queue: Mutex::default(),
            depth_gauge: gauges.queue_depth,
            adaptive: Adaptive::new(
                limits.handshake_rate,
                limits.handshake_burst,
                gauges.effective_rate,
            ),
            emptied: Notify::new(),
            reconfigured: Notify::new(),
            edge,
            pauses: arc_swap::ArcSwapOption::new(pauses.map(|p| Arc::new(PauseSource(p)))),
            paused_until: AtomicU64::new(0),
            queued: AtomicU32::new(0),
            blocker: AtomicU8::new(Blocker::Slot as u8),
        }
    }

    /// Time zero of the gate's times (its token bucket's, its pauses', its queue's).
    fn epoch(&self) -> Instant {
        self.limit.tokens.epoch()
    }

    /// The tenant's admission state now.
    pub fn load(&self) -> super::TenantLoad {
        super::TenantLoad {
            live: self.capacity().live(),
            cluster_live: self.capacity().cluster_live(),
            max_sessions: self.limit.slots.cap(),
            queued: self.queued(),
        }
    }

    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The handshake rate allowed now (the adaptive one).
    pub fn effective_rate(&self) -> f64 {
        self.adaptive.effective()
    }

    /// Holds this tenant's clients back for `after` (the edge answered one of them
    /// `429` with this `Retry-After`). Queued clients wait; refusals meanwhile say so.
    pub fn pause_for(&self, after: Duration) {
        self.pause(Instant::now() + after);
    }

    /// A reload removed the tenant: its queued clients are refused (`tenant-unknown`),
    /// later ones too; its live sessions go on holding their permits on this gate.
    pub fn retire(&self) {
        if self.closed().is_none() {
            self.close(Closed::Removed);
        }
    }

    /// Whether a reload removed the tenant (and none brought it back).
    pub fn retired(&self) -> bool {
        self.closed() == Some(Closed::Removed)
    }

    /// A reload configured the tenant (again): `limits` and `pauses` apply; a retired
    /// gate takes clients again, counting the sessions it still has.
    pub fn configure(&self, limits: &crate::config::Limits, pauses: Option<Arc<dyn Pauses>>) {
        if self.closed() == Some(Closed::Removed) {
            self.reopen();
        }
        self.reconfigure(limits, pauses);
    }

    /// Holds this tenant's clients back until `until` (the edge answered `429` with a
    /// `Retry-After`).
    pub(crate) fn pause(&self, until: Instant) {
        let nanos = u64::try_from(until.saturating_duration_since(self.epoch()).as_nanos())
            .unwrap_or(u64::MAX / 2)
            .max(1);
        self.paused_until.fetch_max(nanos, Ordering::AcqRel);
        if let Some(backend) = &self.backend {
            backend.pause(until);
        }
    }

    /// Tells a shared backend (the other replicas) that this tenant's clients are held
    /// back until `until`.
    pub fn share_pause(&self, until: Instant) {
        if let Some(backend) = &self.backend {
            backend.pause(until);
        }
    }

    /// Until when none of this tenant's clients may be sent: its own pause (an edge
    /// `429`) or its whole group's (every endpoint paused for everyone or for this
    /// tenant), whichever ends later; `None` when neither holds now.
    pub(crate) fn paused(&self, now: Instant) -> Option<Instant> {
        let own = self.paused_until.load(Ordering::Acquire);
        let own = (own != 0)
            .then(|| self.epoch() + std::time::Duration::from_nanos(own))
            .filter(|t| *t > now);
        let group = self
            .pauses
            .load()
            .as_ref()
            .and_then(|p| p.0.paused_until(&self.name, now));
        let shared = match &self.backend {
            Some(backend) => backend.paused_until(now),
            None => None,
        };
        own.max(group).max(shared)
    }

    /// Whether [`Self::paused`] holds at `now`, which is `nanos` after [`Self::epoch`]:
    /// the fast path's check, which converts no time and loads the group's pauses only
    /// when the gate has some.
    #[inline]
    pub(crate) fn paused_at(&self, now: Instant, nanos: u64) -> bool {
        if self.paused_until.load(Ordering::Acquire) > nanos {
            return true;
        }
        if self.grouped.load(Ordering::Acquire)
            && self
                .pauses
                .load()
                .as_ref()
                .is_some_and(|p| p.0.paused_until(&self.name, now).is_some())
        {
            return true;
        }
        match &self.backend {
            Some(backend) if self.shared => backend.paused_until(now).is_some(),
            _ => false,
        }
    }

    /// Whether the tenant is in shadow mode (`enforce = false`) now.
    pub fn shadow(&self) -> bool {
        self.shadow.load(Ordering::Acquire)
    }

    /// The tenant's queue depth.
    pub(crate) fn queue_depth(&self) -> u32 {
        self.queue_depth.load(Ordering::Relaxed)
    }

    /// The tenant's longest wait in the queue.
    pub(crate) fn queue_timeout(&self) -> Duration {
        Duration::from_nanos(self.queue_timeout.load(Ordering::Relaxed))
    }

    /// The tenant's weight at the edge ceiling.
    pub(crate) fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Applies a reloaded tenant's limits and group. Live sessions over a lowered cap go
    /// on; a raised cap or rate lets the pump release queued clients at once.
    pub(crate) fn reconfigure(
        &self,
        limits: &crate::config::Limits,
        pauses: Option<Arc<dyn Pauses>>,
    ) {
        self.queue_depth
            .store(limits.queue_depth, Ordering::Relaxed);
        self.queue_timeout
            .store(duration_nanos(limits.queue_timeout), Ordering::Relaxed);
        self.weight.store(limits.weight, Ordering::Relaxed);
        self.shadow.store(!limits.enforce, Ordering::Release);
        self.adaptive.reconfigure(
            &self.limit.tokens,
            limits.handshake_rate,
            limits.handshake_burst,
        );
        let grouped = pauses.is_some();
        self.pauses.store(pauses.map(|p| Arc::new(PauseSource(p))));
        self.grouped.store(grouped, Ordering::Release);
        self.limit.slots.set_cap(limits.max_sessions);
        if let Some(backend) = &self.backend {
            backend.reconfigure(
                limits.max_sessions,
                limits.handshake_rate,
                limits.handshake_burst,
            );
        }
        self.sync_rate();
        self.reconfigured.notify_waiters();
    }

    /// Hands the adaptive rate to a shared backend (after it moved).
    pub(crate) fn sync_rate(&self) {
        if let Some(backend) = &self.backend {
            backend.set_rate(self.adaptive.effective());
        }
    }

    /// Why the queue takes nobody any more, if it does not.
    pub(crate) fn closed(&self) -> Option<Closed> {
        match self.closed.load(Ordering::Acquire) {
            1 => Some(Closed::Draining),
            2 => Some(Closed::Removed),
            _ => None,
        }
    }

    /// Takes clients again (a reload brought a removed tenant back).
    pub(crate) fn reopen(&self) {
        let _q = self.lock();
        self.closed.store(0, Ordering::Release);
    }

    /// Refuses every queued client and every later one: their `admit` calls return
    /// the refusal for `why`.
    pub(crate) fn close(&self, why: Closed) {
        let waiters = {
            let mut q = self.lock();
            self.closed.store(why as u8, Ordering::Release);
            let waiters = std::mem::take(&mut q.waiters);
            self.set_queued(0);
            self.emptied.notify_waiters();
            waiters
        };
        // Dropping a waiter's sender tells its client (outside the lock).
        drop(waiters);
    }

    /// Clients waiting in the queue now.
    pub(crate) fn queued(&self) -> u32 {
        self.queued.load(Ordering::Acquire)
    }

    pub(crate) fn blocker(&self) -> Blocker {
        match self.blocker.load(Ordering::Relaxed) {
            0 => Blocker::Slot,
            1 => Blocker::Token,
            _ => Blocker::Edge,
        }
    }

    /// Publishes the queue length (called with the queue locked).
    fn set_queued(&self, n: usize) {
        self.queued.store(n as u32, Ordering::Release);
        self.depth_gauge.set(n as i64);
    }

    fn set_blocker(&self, b: Blocker) {
        self.blocker.store(b as u8, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue is consistent at every unlock; a panic elsewhere cannot poison it
        // half-updated, so a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a client at the back of the queue; `None` when the queue is full. Starts
    /// the pump if none runs.
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        edge: Option<&Arc<EdgeGate>>,
    ) -> Option<(u64, oneshot::Receiver<Reserved>)> {
        let (tx, rx) = oneshot::channel();
        let mut q = self.lock();
        // A shared backend decides only in the pump: a tenant without a queue still
        // gets one place, for the one decision (see `Admission::admit`).
        let depth = self.queue_depth().max(u32::from(self.shared));
        if q.waiters.len() >= depth as usize || self.closed().is_some() {
            return None;
        }
        let id = q.next_id;
        q.next_id += 1;
        q.waiters.push_back(Waiter {
            id,
            since: u64::try_from(self.epoch().elapsed().as_micros()).unwrap_or(u64::MAX),
            grant: tx,
        });
        self.set_queued(q.waiters.len());
        let start_pump = !std::mem::replace(&mut q.pump, true);
        drop(q);
        if start_pump {
            tokio::spawn(pump::pump(self.clone(), edge.cloned()));
        }
        Some((id, rx))
    }

    /// Takes a client out of the queue (it left, or timed out). Returns how many were
    /// ahead of it, or `None` when it is no longer queued (the pump already chose it).
    pub(crate) fn leave(&self, id: u64) -> Option<usize> {
        let mut q = self.lock();
        let pos = q.waiters.binary_search_by_key(&id, |w| w.id).ok()?;
        q.waiters.remove(pos);
        self.set_queued(q.waiters.len());
        if q.waiters.is_empty() {
            // The pump stops reserving for a head that is no longer there.
            self.emptied.notify_waiters();
        }
        Some(pos)
    }

    /// When the client at the head of the queue joined it.
    fn head_since(&self) -> Option<Instant> {
        let since = self.lock().waiters.front().map(|w| w.since)?;
        Some(self.epoch() + Duration::from_micros(since))
    }

    /// When the client after the head joined the queue.
    fn next_since(&self) -> Option<Instant> {
        let since = self.lock().waiters.get(1).map(|w| w.since)?;
        Some(self.epoch() + Duration::from_micros(since))
    }

    /// Whether the queue has a client; when it has none, the pump stops (under the
    /// lock, so an enqueue either sees the pump running or starts a new one).
    fn keep_pumping(&self) -> bool {
        let mut q = self.lock();
        if q.waiters.is_empty() {
            q.pump = false;
        }
        q.pump
    }

    /// Gives `reserved` to the client at the head of the queue. If there is none, or it
    /// left just now, `reserved` is dropped and everything in it goes back.
    fn grant(&self, reserved: Reserved) {
        let head = {
            let mut q = self.lock();
            let head = q.waiters.pop_front();
            self.set_queued(q.waiters.len());
            head
        };
        if let Some(head) = head {
            let _ = head.grant.send(reserved);
        }
    }
}

mod pump;

#[cfg(test)]
mod tests;
