//! Step 4 of the flow, admission: the `[edge]` ceiling, shared between tenants by weight.
//!
//! The edge ceiling (`[edge]`), shared between tenants by weight.
//!
//! Each tenant with a queue has one pump asking for one turn at a time. When nobody
//! else waits and the edge has room, the pump takes its turn directly
//! ([`EdgeGate::try_turn`]); otherwise turns are handed out by start-time fair queueing
//! (SFQ): a request gets the start tag `S = max(V, F_prev)` and finish tag
//! `F = S + 1/weight`, where `F_prev` is the tenant's previous finish tag and `V` the
//! start tag of the turn last granted; the request with the smallest start tag goes
//! next (so `V` never goes back). Two backlogged tenants of weights 2 and 1 therefore get
//! turns 2:1, and a tenant arriving late starts at `V`, not behind the whole backlog of a
//! flooding one. Inside a tenant, order is its FIFO queue.
//!
//! One arbiter task per edge runs while there are requests: it waits for an edge
//! session slot and the next edge token (pacing at `handshake_rate`), then grants.
//! The number of requests is at most the number of configured tenants.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::adaptive::Adaptive;
use super::capacity::{Capacity, Limit, Scope, SharedCapacity};
use super::gate::{slot, token, try_slot, try_token, Slot, Token};
use crate::config::EdgeLimits;

/// Virtual time units per unit of service at weight 1.
const SCALE: u128 = 1 << 32;

/// A granted turn: an edge session slot and an edge token.
pub(crate) type Turn = (Slot<EdgeGate>, Token<EdgeGate>);

#[derive(Debug)]
struct Request {
    weight: u32,
    /// Its tenant (a shared backend orders turns by tenant across replicas).
    tenant: Arc<str>,
    grant: oneshot::Sender<Turn>,
}

/// A request in the map; withdrawn when dropped if the arbiter has not taken it.
struct Pending<'a> {
    edge: &'a EdgeGate,
    key: (u128, u64),
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let mut fair = self.edge.lock();
        if let Some(request) = fair.requests.remove(&self.key) {
            self.edge.forget(&request);
            if fair.requests.is_empty() {
                // The arbiter may hold a slot for nobody while it waits for a token.
                self.edge.withdrawn.notify_waiters();
            }
        }
    }
}

#[derive(Debug, Default)]
struct Fair {
    /// Virtual time: start tag of the last granted turn.
    vtime: u128,
    seq: u64,
    /// By (start tag, arrival): the next to serve first.
    requests: BTreeMap<(u128, u64), Request>,
    arbiter: bool,
}

/// The edge ceiling's state; what the fast path reads first.
#[derive(Debug)]
#[repr(C, align(64))]
pub(crate) struct EdgeGate {
    /// Number of pending requests, readable without the lock.
    waiting: AtomicU32,
    /// Whether `backend` is set (in `waiting`'s padding: the fast path reads one line).
    shared: bool,
    pub(crate) limit: Limit,
    fair: Mutex<Fair>,
    /// Sum of the weights of pending requests.
    weight_sum: AtomicU64,
    /// Whether the arbiter is waiting for an edge session to end (not for a token).
    slot_bound: AtomicBool,
    /// Signalled when the last pending request is withdrawn.
    withdrawn: Notify,
    /// The adaptive handshake rate of the ceiling.
    pub(crate) adaptive: Adaptive,
    /// The shared capacity backend of the ceiling, if any.
    backend: Option<Arc<dyn SharedCapacity>>,
}

impl Scope for EdgeGate {
    #[inline]
    fn capacity(&self) -> Capacity<'_> {
        match &self.backend {
            Some(backend) if self.shared => Capacity::Shared(&**backend),
            _ => Capacity::Local(&self.limit),
        }
    }
}

impl EdgeGate {
    /// Applies reloaded `[edge]` limits; slots held over a lowered cap are kept.
    pub(crate) fn reconfigure(&self, limits: &EdgeLimits) {
        self.adaptive.reconfigure(
            &self.limit.tokens,
            limits.handshake_rate,
            limits.handshake_burst,
        );
        self.limit.slots.set_cap(limits.max_sessions);
        if let Some(backend) = &self.backend {
            backend.reconfigure(
                limits.max_sessions,
                limits.handshake_rate,
                limits.handshake_burst,
            );
        }
        self.sync_rate();
    }

    /// Hands the adaptive rate to a shared backend (after it moved).
    pub(crate) fn sync_rate(&self) {
        if let Some(backend) = &self.backend {
            backend.set_rate(self.adaptive.effective());
        }
    }

    pub(crate) fn new(
        limits: &EdgeLimits,
        gauge: prometheus::Gauge,
        backend: Option<Arc<dyn SharedCapacity>>,
        epoch: Instant,
    ) -> Self {
        Self {
            shared: backend.is_some(),
            backend,
            limit: Limit::new_at(
                limits.max_sessions,
                limits.handshake_rate,
                limits.handshake_burst,
                epoch,
            ),
            fair: Mutex::default(),
            waiting: AtomicU32::new(0),
            weight_sum: AtomicU64::new(0),
            slot_bound: AtomicBool::new(false),
            withdrawn: Notify::new(),
            adaptive: Adaptive::new(limits.handshake_rate, limits.handshake_burst, gauge),
        }
    }

    /// Tenants waiting for a turn now.
    pub(crate) fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Acquire)
    }

    /// Whether the ceiling on sessions (rather than on handshakes) holds tenants back.
    pub(crate) fn slot_bound(&self) -> bool {
        self.slot_bound.load(Ordering::Relaxed)
    }

    /// How many of the edge's intervals pass between this tenant's turns while the
    /// edge is shared: the waiting weight over the tenant's weight (at least 1).
    pub(crate) fn share_of(&self, weight: u32) -> f64 {
        let sum = self
            .weight_sum
            .load(Ordering::Relaxed)
            .max(u64::from(weight));
        sum as f64 / f64::from(weight.max(1))
    }

    fn lock(&self) -> MutexGuard<'_, Fair> {
        self.fair.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A turn now, without queueing, when no tenant waits for one and the edge has a
    /// slot and a token free.
    pub(crate) fn try_turn(self: &Arc<Self>, now: Instant) -> Option<Turn> {
        if self.waiting() > 0 {
            return None;
        }
        let slot = try_slot(self)?;
        let token = try_token(self, now)?;
        Some((slot, token))
    }

    /// Waits for this tenant's next turn. `finish` is the tenant's finish tag after
    /// its previous turn (kept by its pump); the new one comes back with the turn.
    /// `None` when the arbiter went away (shutdown). Cancel-safe: dropping the future
    /// withdraws the request, and a turn granted meanwhile goes back.
    pub(crate) async fn turn(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        weight: u32,
        finish: u128,
    ) -> Option<(Turn, u128)> {
        let (tx, rx) = oneshot::channel();
        let (pending, new_finish, start_arbiter) = {
            let mut fair = self.lock();
            let start = fair.vtime.max(finish);
            let new_finish = start + SCALE / u128::from(weight.max(1));
            fair.seq += 1;
            let key = (start, fair.seq);
            fair.requests.insert(
                key,
                Request {
                    weight,
                    tenant: tenant.clone(),
                    grant: tx,
                },
            );
            self.waiting.fetch_add(1, Ordering::AcqRel);
            self.weight_sum
                .fetch_add(u64::from(weight), Ordering::Relaxed);
            let start_arbiter = !std::mem::replace(&mut fair.arbiter, true);
            (Pending { edge: self, key }, new_finish, start_arbiter)
        };
        if start_arbiter {
            tokio::spawn(arbiter(self.clone()));
        }
        let turn = rx.await.ok();
        drop(pending);
        turn.map(|t| (t, new_finish))
    }

    /// Tells a shared backend whose turn comes next here (see
    /// [`SharedCapacity::candidate`]).
    fn announce(&self) {
        if let Some(backend) = &self.backend {
            if let Some((tenant, weight, then)) = self.peek() {
                backend.candidate(&tenant, weight, then.as_deref());
            }
        }
    }

    /// The tenant and weight of the request [`Self::next`] would take now, and the
    /// tenant of the one after it.
    fn peek(&self) -> Option<(Arc<str>, u32, Option<Arc<str>>)> {
        let fair = self.lock();
        let mut requests = fair.requests.values();
        let first = requests.next()?;
        let then = requests.next().map(|r| r.tenant.clone());
        Some((first.tenant.clone(), first.weight, then))
    }

    /// Removes the request with the smallest start tag and advances virtual time to it.
    fn next(&self) -> Option<Request> {
        let mut fair = self.lock();
        let ((start, _), request) = fair.requests.pop_first()?;
        fair.vtime = start;
        self.forget(&request);
        Some(request)
    }

    fn forget(&self, request: &Request) {
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        self.weight_sum
            .fetch_sub(u64::from(request.weight), Ordering::Relaxed);
    }

    fn keep_arbitrating(&self) -> bool {
        let mut fair = self.lock();
        if fair.requests.is_empty() {
            fair.arbiter = false;
        }
        fair.arbiter
    }
}

/// Grants turns at the edge while there are requests; at most one per edge.
async fn arbiter(edge: Arc<EdgeGate>) {
    while edge.keep_arbitrating() {
        edge.announce();
        let slot = match try_slot(&edge) {
            Some(slot) => slot,
            None => {
                edge.slot_bound.store(true, Ordering::Relaxed);
                let slot = slot(&edge, &|| None).await;
                edge.slot_bound.store(false, Ordering::Relaxed);
                slot
            }
        };
        let token = loop {
            // Registered before the check, so a withdrawal after it still wakes us.
            let withdrawn = edge.withdrawn.notified();
            tokio::pin!(withdrawn);
            withdrawn.as_mut().enable();
            if edge.waiting() == 0 {
                // Everyone withdrew: the slot goes back now, not at the next token.
                break None;
            }
            edge.announce();
            let now = Instant::now();
            // Only when one is due (a shared backend is not asked too early); a backend
            // that fails is "not now": `token` backs off first.
            if edge.capacity().ready_at() <= now {
                if let Some(token) = token(&edge, now, None).await {
                    break Some(token);
                }
            }
            tokio::select! {
                () = tokio::time::sleep_until(edge.capacity().ready_at()) => {}
                () = &mut withdrawn => {}
            }
        };
        let Some(token) = token else {
            drop(slot);
            continue;
        };
        if let Some(request) = edge.next() {
            // A pump never drops its request; if it did (shutdown), the turn goes back.
            let _ = request.grant.send((slot, token));
        }
    }
    edge.capacity().idle();
}
