//! Step 4 of the flow: admission (DESIGN.md). Decides, per connect, whether it goes on
//! now, waits in its tenant's queue, or is refused.
//!
//! Per tenant: a cap on live sessions (`max_sessions`), a GCRA token bucket on
//! handshakes (`handshake_rate`, `handshake_burst`) and a bounded FIFO queue
//! (`queue_depth`, `queue_timeout`). Above all tenants, optionally: the `[edge]` ceiling
//! on sessions and handshakes, shared by `weight` between tenants with queued clients
//! ([`edge`]).
//!
//! # How a connect is decided
//!
//! * **Fast path** ([`Admission::try_admit`]): when the tenant's queue is empty and no
//!   tenant waits for the edge, take a tenant slot, an edge slot, a tenant token and an
//!   edge token, each one atomic operation; if any is missing, give back what was taken
//!   and queue. No lock is taken: the tenant is found in a concurrent map and its state
//!   is atomics.
//! * **Queue**: otherwise the client joins the back of its tenant's queue (or is
//!   refused if the queue is full) and its request stays pending. A per-tenant pump
//!   task releases the head when a slot and a token are both free (and the edge gives
//!   the tenant its turn), so releases are spaced `1/handshake_rate` apart after the
//!   burst, however spiky the arrivals.
//! * A client that leaves while queued (its connection closes, hyper drops the request
//!   future) is removed from the queue at once by its [`Ticket`]'s `Drop`. If the pump
//!   had just chosen it, what was reserved for it goes back (slots released, tokens
//!   refunded), so it takes nothing.
//! * An admitted client holds a [`Permit`]: its tenant slot and edge slot, released
//!   when the permit drops, exactly once, however the session ends.
//!
//! Memory: per tenant a fixed-size gate; per queued client one queue entry (24 bytes)
//! and a oneshot channel. Queues are bounded by `queue_depth`, the edge's request list
//! by the number of tenants; nothing is keyed by anything a client sends.
//!
//! Slots and tokens come from a scope's [`capacity::Capacity`]: in process (the lock-free
//! path above) or a [`capacity::SharedCapacity`] backend that
//! several replicas share, built with [`Admission::shared`] / [`Admission::shared_gate`].
//! A shared scope's fast path answers "ask the backend", so its clients queue and the
//! pump asks, in FIFO order; a backend failure delays, it never refuses (see
//! [`capacity`]).
//!
//! A tenant in shadow mode (`enforce = false`) is not decided here but admitted at once
//! by [`Admission::admit_shadow`]: its session counts in its gate and the edge without
//! waiting, and what enforcing would have done is decided on a model gate and counted
//! ([`shadow`]).

pub mod adaptive;
pub mod capacity;
mod edge;
mod gate;
pub mod shadow;

use std::sync::Arc;
use std::time::Duration;

use std::sync::{Mutex, PoisonError, Weak};

use tokio::time::Instant;

use crate::config::{EdgeLimits, Limits};
use crate::reject::{Reason, Rejection};
use capacity::{Fast, Scope, SharedCapacity, SharedScopes};
use edge::EdgeGate;
use gate::Closed;
pub use gate::TenantGate;
pub use jitter::Jitter;
pub use standalone::{Scheduler, ShadowTally};

mod estimate;
mod inputs;
mod jitter;
mod refusal;
mod standalone;

pub(crate) use inputs::PauseSource;
pub use inputs::{Gauges, Pauses};

/// The longest a client of a tenant without a queue (`queue_depth = 0`) waits for a
/// shared backend's decision (a Redis round trip is well under it; a Redis that does
/// not answer opens the breaker, after which the decision is local).
const SHARED_DECISION_WAIT: Duration = Duration::from_millis(500);

/// The refusal of a client whose tenant's queue is closed.
fn closed_rejection(why: Closed, tenant: &str) -> Rejection {
    match why {
        Closed::Draining => Rejection::draining(),
        Closed::Removed => Rejection::new(
            Reason::TenantUnknown,
            format!("tenant {tenant:?} was removed by a config reload"),
        ),
    }
}

/// The admission scheduler: the `[edge]` ceiling and its fair arbiter, the adaptive
/// policy, and every tenant gate it made ([`Admission::gate`]). A connect is decided
/// against its tenant's gate, which the caller resolved once and hands in.
#[derive(Debug)]
pub struct Admission {
    /// Every gate made and still alive (a retired tenant's gate lives while its
    /// sessions do): the drain closes them, the recovery task steps their rates up.
    gates: Mutex<Vec<Weak<TenantGate>>>,
    edge: Option<Arc<EdgeGate>>,
    /// Draws the jitter of `Retry-After` estimates; seedable for a planner.
    jitter: Jitter,
    policy: adaptive::Policy,
    /// The last tenant that reported request-level edge trouble, and when: the edge
    /// ceiling backs off on such trouble only when a second tenant reports it too
    /// ([`Admission::upstream_trouble`]).
    last_trouble: std::sync::Mutex<Option<(Arc<str>, Instant)>>,
    /// Set by [`Admission::drain`]: gates made from now on start closed.
    draining: std::sync::atomic::AtomicBool,
    /// Where every gate's capacity lives when it is shared between replicas
    /// ([`Admission::clustered`]).
    scopes: Option<Arc<dyn SharedScopes>>,
    /// Time zero of every gate's times (the edge's and each tenant's), so that a
    /// decision converts its one reading of the clock once for all of them.
    epoch: Instant,
}

/// An admitted session's hold on capacity: its tenant's session slot and, with an
/// `[edge]` ceiling, an edge session slot. Dropping it releases both, so exactly once.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<TenantGate>,
    /// Whether it holds an edge slot (of `gate.edge`).
    edge: bool,
    /// A shadow tenant's session: its would-be decision ([`shadow`]), withdrawn or
    /// released after the slots above (held for its `Drop`).
    #[allow(dead_code)]
    shadow: Option<Box<shadow::Watch>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.capacity().release_slot();
        if self.edge {
            if let Some(edge) = &self.gate.edge {
                edge.capacity().release_slot();
            }
        }
    }
}

/// A connect that may go on to the edge.
#[derive(Debug)]
pub struct Admitted {
    /// Held for the life of the session.
    pub permit: Permit,
    /// How long it waited in the queue; `None` when it did not queue.
    pub waited: Option<Duration>,
}

/// A tenant's admission state, for status and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantLoad {
    /// Session slots held: admitted sessions, plus one reserved for the head of the
    /// queue while it waits for its token or its edge turn.
    pub live: u32,
    /// Slots held by all replicas together (`[cluster]`), as last seen.
    pub cluster_live: Option<u32>,
    /// The tenant's `max_sessions`.
    pub max_sessions: u32,
    /// Clients in its queue.
    pub queued: u32,
}

/// The edge ceiling's state, for status and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeLoad {
    /// Edge session slots held.
    pub live: u32,
    /// `[edge] max_sessions`.
    pub max_sessions: u32,
    /// Tenants waiting for their turn at the edge.
    pub waiting: u32,
}

impl Admission {
    /// A scheduler with the `[edge]` ceiling `edge` (its effective rate published to
    /// `edge_rate` when given) under the adaptive `policy`, and no tenant yet.
    pub fn new(
        edge: Option<&EdgeLimits>,
        policy: adaptive::Policy,
        edge_rate: Option<prometheus::Gauge>,
        jitter: Jitter,
    ) -> Self {
        Self::shared(edge, policy, edge_rate, jitter, None)
    }

    /// [`Self::new`] with the `[edge]` ceiling's capacity in a shared `backend`.
    pub fn shared(
        edge: Option<&EdgeLimits>,
        policy: adaptive::Policy,
        edge_rate: Option<prometheus::Gauge>,
        jitter: Jitter,
        backend: Option<Arc<dyn SharedCapacity>>,
    ) -> Self {
        let epoch = Instant::now();
        let edge = edge.map(|e| {
            let gauge = edge_rate.unwrap_or_else(|| {
                prometheus::Gauge::new("sluice_unregistered", "edge rate").expect("valid")
            });
            Arc::new(EdgeGate::new(e, gauge, backend, epoch))
        });
        Self {
            gates: Mutex::default(),
            edge,
            jitter,
            policy,
            last_trouble: std::sync::Mutex::new(None),
            draining: std::sync::atomic::AtomicBool::new(false),
            scopes: None,
            epoch,
        }
    }

    /// [`Self::new`] with every scope's capacity shared between replicas: the edge
    /// ceiling's and each tenant's gate's come from `scopes` (issue 15: Redis).
    pub fn clustered(
        edge: Option<&EdgeLimits>,
        policy: adaptive::Policy,
        edge_rate: Option<prometheus::Gauge>,
        jitter: Jitter,
        scopes: Arc<dyn SharedScopes>,
    ) -> Self {
        let backend = edge.map(|e| scopes.edge(e));
        Self {
            scopes: Some(scopes),
            ..Self::shared(edge, policy, edge_rate, jitter, backend)
        }
    }

    /// A gate for a tenant `name` with `limits`: its queue, its pump, its token bucket
    /// and session cap. `pauses` holds its clients back while the edge paused its whole
    /// group. A draining scheduler makes it closed.
    pub fn gate(
        &self,
        name: &str,
        limits: &Limits,
        gauges: Gauges,
        pauses: Option<Arc<dyn Pauses>>,
    ) -> Arc<TenantGate> {
        let backend = self.scopes.as_ref().map(|s| s.tenant(name, limits));
        self.shared_gate(name, limits, gauges, pauses, backend)
    }

    /// [`Self::gate`] with the tenant's capacity in a shared `backend` (`None`: in
    /// process).
    pub fn shared_gate(
        &self,
        name: &str,
        limits: &Limits,
        gauges: Gauges,
        pauses: Option<Arc<dyn Pauses>>,
        backend: Option<Arc<dyn SharedCapacity>>,
    ) -> Arc<TenantGate> {
        let gate = Arc::new(TenantGate::new(
            name,
            limits,
            self.edge.clone(),
            pauses,
            gauges,
            backend,
            self.epoch,
        ));
        self.register(&gate);
        gate
    }

    /// Keeps `gate` among the live gates (the drain closes it; a draining scheduler
    /// closes it now).
    fn register(&self, gate: &Arc<TenantGate>) {
        let mut gates = self.lock_gates();
        gates.retain(|g| g.strong_count() > 0);
        gates.push(Arc::downgrade(gate));
        if self.draining.load(std::sync::atomic::Ordering::Acquire) {
            gate.close(Closed::Draining);
        }
    }

    fn lock_gates(&self) -> std::sync::MutexGuard<'_, Vec<Weak<TenantGate>>> {
        self.gates.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every gate still alive.
    fn live_gates(&self) -> Vec<Arc<TenantGate>> {
        self.lock_gates().iter().filter_map(Weak::upgrade).collect()
    }

    /// Gates alive now: configured tenants' and retired ones whose sessions go on.
    pub fn gate_count(&self) -> usize {
        self.lock_gates()
            .iter()
            .filter(|g| g.strong_count() > 0)
            .count()
    }

    /// The fast path alone: admits now if the tenant has no queue and everything is
    /// free, else `None` (nothing is held then).
    pub fn try_admit(&self, gate: &Arc<TenantGate>) -> Option<Permit> {
        self.try_now(gate, Instant::now())
    }

    /// The fast path at `now`. One conversion of the clock serves the pause check and
    /// both token buckets (the gate's and the edge's count from [`Self::epoch`]); the
    /// in-process path takes no lock, loads no `Arc` and makes one atomic
    /// read-modify-write per slot and per token, the tenant's two before the edge's:
    /// each scope's hot cache line is taken once, not twice, while another core
    /// decides too.
    fn try_now(&self, gate: &Arc<TenantGate>, now: Instant) -> Option<Permit> {
        let epoch = gate.limit.tokens.epoch();
        let nanos = capacity::nanos_since(now, epoch);
        let edge = self.edge.as_deref();
        if gate.queued() > 0 || edge.is_some_and(|e| e.waiting() > 0) || gate.paused_at(now, nanos)
        {
            return None;
        }
        // A shared backend's "ask me" queues the client: its pump asks, in FIFO order.
        if gate.capacity().try_acquire_slot() != Fast::Yes(()) {
            return None;
        }
        // From here the permit owns what it holds: returning early releases it.
        let mut permit = Permit {
            gate: gate.clone(),
            edge: false,
            shadow: None,
        };
        let Fast::Yes(taken) = gate.capacity().try_take_at(now, epoch, nanos) else {
            return None;
        };
        if let Some(edge) = edge {
            // The tenant's token goes back if the edge has no slot or no token: the
            // refund restores the bucket unless another take came in between, and then
            // it is dropped (a lost token slows, it never lets one more through).
            if edge.capacity().try_acquire_slot() != Fast::Yes(()) {
                gate.capacity().refund(taken);
                return None;
            }
            permit.edge = true;
            if !matches!(edge.capacity().try_take_at(now, epoch, nanos), Fast::Yes(_)) {
                gate.capacity().refund(taken);
                return None;
            }
        }
        Some(permit)
    }

    /// Decides a connect for the tenant of `gate`: admits it now, or
    /// queues it and waits until it is admitted or refused. Dropping the future while
    /// queued takes the client out of the queue.
    ///
    /// # Errors
    /// The [`Rejection`] to send: `queue-full` / `queue-timeout` when the tenant's own
    /// limits hold it back, `edge-capacity` when the edge ceiling does, each with an
    /// estimated `Retry-After`.
    pub async fn admit(&self, gate: &Arc<TenantGate>) -> Result<Admitted, Rejection> {
        let tenant = &*gate.name;
        if let Some(why) = gate.closed() {
            return Err(closed_rejection(why, tenant));
        }
        let since = Instant::now();
        if let Some(permit) = self.try_now(gate, since) {
            return Ok(Admitted {
                permit,
                waited: None,
            });
        }
        // Paused by the edge beyond this client's whole wait: no point queueing.
        if gate
            .paused(since)
            .is_some_and(|until| until >= since + gate.queue_timeout())
        {
            let queued = gate.queued();
            return Err(self.refusal(gate, queued, false));
        }
        let Some((id, mut grant)) = gate.enqueue(self.edge.as_ref()) else {
            if let Some(why) = gate.closed() {
                return Err(closed_rejection(why, tenant));
            }
            let queued = gate.queued();
            return Err(self.refusal(gate, queued, true));
        };
        let mut ticket = Ticket {
            gate,
            id,
            queued: true,
        };
        // A tenant without a queue (`queue_depth = 0`) on a shared backend waits for
        // its one decision, not longer, and is refused as if its queue were full.
        let no_queue = gate.queue_depth() == 0;
        let wait = if no_queue {
            gate.queue_timeout().min(SHARED_DECISION_WAIT)
        } else {
            gate.queue_timeout()
        };
        let deadline = since + wait;
        let reserved = match tokio::time::timeout_at(deadline, &mut grant).await {
            Ok(Ok(reserved)) => reserved,
            Ok(Err(_)) => {
                // Its queue was closed (drain, tenant removed), or the pump popped this
                // client but its reservation was dropped (the runtime shuts down).
                ticket.queued = false;
                let mut refusal =
                    closed_rejection(gate.closed().unwrap_or(Closed::Draining), tenant);
                refusal.waited = Some(since.elapsed());
                return Err(refusal);
            }
            Err(_) => {
                let waited = Some(since.elapsed());
                match ticket.leave() {
                    Some(ahead) => {
                        let mut refusal = self.refusal(gate, ahead as u32, no_queue);
                        refusal.waited = waited;
                        return Err(refusal);
                    }
                    // Chosen at the last moment: take it.
                    None => match grant.try_recv() {
                        Ok(reserved) => reserved,
                        Err(_) => {
                            let mut refusal = self.refusal(gate, 0, false);
                            refusal.waited = waited;
                            return Err(refusal);
                        }
                    },
                }
            }
        };
        ticket.queued = false;
        Ok(Admitted {
            permit: reserved.commit(),
            waited: Some(since.elapsed()),
        })
    }

    /// A sign of edge trouble on a handshake of `gate`'s tenant (a `503` or `429`, a timeout, a
    /// handshake slower than `slow_handshake`): the tenant's adaptive rate steps down
    /// ([`adaptive`]). The edge ceiling's, shared by every tenant, steps down only when
    /// the trouble cannot depend on the tenant's request (`request_level` false: a
    /// connect timeout), or when another tenant reported request-level trouble within
    /// [`adaptive::WITNESS_WINDOW`]: one tenant drawing refusals on its own path slows
    /// only itself.
    pub fn upstream_trouble(&self, gate: &TenantGate, request_level: bool) {
        let now = Instant::now();
        gate.adaptive.trouble(&gate.limit.tokens, self.policy, now);
        gate.sync_rate();
        let Some(edge) = &self.edge else {
            return;
        };
        let seen_by_others = request_level && self.witness(&gate.name, now);
        if !request_level || seen_by_others {
            edge.adaptive.trouble(&edge.limit.tokens, self.policy, now);
            edge.sync_rate();
        }
    }

    /// Notes that `tenant` saw request-level trouble at `now`; whether another tenant
    /// saw some within [`adaptive::WITNESS_WINDOW`] before.
    fn witness(&self, tenant: &Arc<str>, now: Instant) -> bool {
        let mut last = self
            .last_trouble
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let seen = last.as_ref().is_some_and(|(other, at)| {
            **other != **tenant && now.saturating_duration_since(*at) < adaptive::WITNESS_WINDOW
        });
        *last = Some((tenant.clone(), now));
        seen
    }

    /// Starts the drain: every queued client is refused with `draining`, and so is every
    /// later connect.
    pub fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
        for gate in self.live_gates() {
            gate.close(Closed::Draining);
        }
    }

    /// Applies reloaded `[edge]` limits in place; adding or removing the section takes
    /// a restart (returned as a warning).
    pub fn reconfigure_edge(&self, limits: Option<&EdgeLimits>) -> Option<String> {
        match (&self.edge, limits) {
            (Some(edge), Some(limits)) => {
                edge.reconfigure(limits);
                None
            }
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => Some(
                "adding or removing the [edge] section takes a restart; the ceiling in force is kept".to_owned(),
            ),
        }
    }

    /// Starts the task that steps adapted rates back up after clean seconds. It ends by
    /// itself when the admission state is dropped.
    pub fn spawn_recovery(self: &Arc<Self>) {
        if !self.policy.enabled {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(adaptive::CLEAN_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(admission) = weak.upgrade() else {
                    return;
                };
                let now = Instant::now();
                for gate in admission.live_gates() {
                    gate.adaptive.recover(&gate.limit.tokens, now);
                    gate.sync_rate();
                }
                if let Some(edge) = &admission.edge {
                    edge.adaptive.recover(&edge.limit.tokens, now);
                    edge.sync_rate();
                }
            }
        });
    }

    /// Before an upstream retry of a client of `tenant`: waits out a pause the edge
    /// asked for (the tenant's or its group's), then takes an edge handshake token, since
    /// every attempt counts against the edge's rate, not only a client's first. `false`
    /// when that cannot happen before `deadline`. Without an `[edge]` ceiling, no token
    /// is needed.
    pub async fn retry_token(&self, gate: &TenantGate, deadline: Instant) -> bool {
        if gate.shadow() {
            // A shadow tenant's retry goes on at once too; its handshake counts at the
            // edge all the same.
            if let Some(edge) = &self.edge {
                let _ = edge.limit.tokens.force_take(Instant::now());
            }
            return true;
        }
        while let Some(until) = gate.paused(Instant::now()) {
            // A pause the edge asked for (the tenant's, or its whole group's for it)
            // holds the tenant's clients on every replica of a cluster too.
            gate.share_pause(until);
            if until >= deadline {
                return false;
            }
            tokio::time::sleep_until(until).await;
        }
        let Some(edge) = &self.edge else {
            return true;
        };
        loop {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // A failing shared backend is "not now": ask again after the back-off; a slow
            // one is not waited for beyond the client's deadline.
            let ready =
                match tokio::time::timeout_at(deadline, edge.capacity().take(now, None)).await {
                    Err(_) => return false,
                    Ok(Ok(Ok(_))) => return true,
                    Ok(Ok(Err(at))) => at.max(edge.capacity().ready_at()),
                    Ok(Err(_)) => now + capacity::BACKOFF,
                };
            if ready >= deadline {
                return false;
            }
            tokio::time::sleep_until(ready).await;
        }
    }

    /// The state of the edge ceiling, when there is one.
    pub fn edge_load(&self) -> Option<EdgeLoad> {
        let edge = self.edge.as_ref()?;
        Some(EdgeLoad {
            live: edge.capacity().live(),
            max_sessions: edge.limit.slots.cap(),
            waiting: edge.waiting(),
        })
    }
}

/// A client's place in its tenant's queue; leaving the queue is its `Drop`.
struct Ticket<'a> {
    gate: &'a TenantGate,
    id: u64,
    queued: bool,
}

impl Ticket<'_> {
    fn leave(&mut self) -> Option<usize> {
        std::mem::replace(&mut self.queued, false)
            .then(|| self.gate.leave(self.id))
            .flatten()
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests;
