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
//! Memory: per tenant a fixed-size gate; per queued client one queue entry (16 bytes)
//! and a oneshot channel. Queues are bounded by `queue_depth`, the edge's request list
//! by the number of tenants; nothing is keyed by anything a client sends.
//!
//! The capacity primitives live in [`capacity`]: the seam for a shared backend.

pub mod adaptive;
pub mod capacity;
mod edge;
mod gate;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::reject::{Reason, Rejection};
use crate::upstream::Pools;
use edge::EdgeGate;
use gate::{Blocker, Closed, TenantGate};

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

/// Admission state of every configured tenant and of the edge ceiling.
#[derive(Debug)]
pub struct Admission {
    tenants: DashMap<String, Arc<TenantGate>>,
    edge: Option<Arc<EdgeGate>>,
    policy: adaptive::Policy,
    /// The last tenant that reported request-level edge trouble, and when: the edge
    /// ceiling backs off on such trouble only when a second tenant reports it too
    /// ([`Admission::upstream_trouble`]).
    last_trouble: std::sync::Mutex<Option<(Arc<str>, Instant)>>,
}

/// An admitted session's hold on capacity: its tenant's session slot and, with an
/// `[edge]` ceiling, an edge session slot. Dropping it releases both, so exactly once.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<TenantGate>,
    /// Whether it holds an edge slot (of `gate.edge`).
    edge: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.limit.slots.release();
        if self.edge {
            if let Some(edge) = &self.gate.edge {
                edge.limit.slots.release();
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
    /// Admission for every tenant of `config` (and `_default` when configured); queue
    /// depths are published to `metrics`; a tenant's clients are held back while the
    /// edge has paused all of its group in `pools`.
    pub fn new(config: &Config, metrics: &Metrics, pools: &Pools) -> Self {
        let edge = config.edge.as_ref().map(|e| {
            let gauge = metrics.edge_rate().unwrap_or_else(|| {
                prometheus::Gauge::new("sluice_unregistered", "edge rate").expect("valid")
            });
            Arc::new(EdgeGate::new(e, gauge))
        });
        let tenants = DashMap::new();
        for tenant in config
            .tenants
            .values()
            .chain(config.default_tenant.as_ref())
        {
            tenants.insert(
                tenant.name.clone(),
                Arc::new(TenantGate::new(
                    &tenant.name,
                    &tenant.limits,
                    edge.clone(),
                    pools.get(&tenant.group.name),
                    &metrics.tenant(&tenant.name),
                )),
            );
        }
        let policy = adaptive::Policy {
            enabled: config.upstream.adaptive,
            factor: config.upstream.adaptive_factor,
            floor: config.upstream.adaptive_floor,
        };
        Self {
            tenants,
            edge,
            policy,
            last_trouble: std::sync::Mutex::new(None),
        }
    }

    fn gate(&self, tenant: &str) -> Option<Arc<TenantGate>> {
        self.tenants.get(tenant).map(|g| g.value().clone())
    }

    /// The fast path alone: admits now if the tenant has no queue and everything is
    /// free, else `None` (nothing is held then).
    pub fn try_admit(&self, tenant: &str) -> Option<Permit> {
        let gate = self.tenants.get(tenant)?;
        self.try_now(&gate, Instant::now())
    }

    fn try_now(&self, gate: &Arc<TenantGate>, now: Instant) -> Option<Permit> {
        if gate.queued() > 0
            || self.edge.as_ref().is_some_and(|e| e.waiting() > 0)
            || gate.paused(now).is_some()
        {
            return None;
        }
        if !gate.limit.slots.try_acquire() {
            return None;
        }
        // From here the permit owns what it holds: returning early releases it.
        let mut permit = Permit {
            gate: gate.clone(),
            edge: false,
        };
        if let Some(edge) = &self.edge {
            if !edge.limit.slots.try_acquire() {
                return None;
            }
            permit.edge = true;
        }
        let taken = gate.limit.tokens.try_take(now).ok()?;
        if let Some(edge) = &self.edge {
            if edge.limit.tokens.try_take(now).is_err() {
                gate.limit.tokens.refund(taken);
                return None;
            }
        }
        Some(permit)
    }

    /// Decides a connect for `tenant` (a name from the config): admits it now, or
    /// queues it and waits until it is admitted or refused. Dropping the future while
    /// queued takes the client out of the queue.
    ///
    /// # Errors
    /// The [`Rejection`] to send: `queue-full` / `queue-timeout` when the tenant's own
    /// limits hold it back, `edge-capacity` when the edge ceiling does, each with an
    /// estimated `Retry-After`.
    pub async fn admit(&self, tenant: &str) -> Result<Admitted, Rejection> {
        let Some(gate) = self.gate(tenant) else {
            return Err(Rejection::new(
                Reason::TenantUnknown,
                format!("tenant {tenant:?} is not configured"),
            ));
        };
        if let Some(why) = gate.closed() {
            return Err(closed_rejection(why, tenant));
        }
        let since = Instant::now();
        if let Some(permit) = self.try_now(&gate, since) {
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
            return Err(self.refusal(&gate, queued, false));
        }
        let Some((id, mut grant)) = gate.enqueue(self.edge.as_ref()) else {
            if let Some(why) = gate.closed() {
                return Err(closed_rejection(why, tenant));
            }
            let queued = gate.queued();
            return Err(self.refusal(&gate, queued, true));
        };
        let mut ticket = Ticket {
            gate: &gate,
            id,
            queued: true,
        };
        let deadline = since + gate.queue_timeout();
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
                        let mut refusal = self.refusal(&gate, ahead as u32, false);
                        refusal.waited = waited;
                        return Err(refusal);
                    }
                    // Chosen at the last moment: take it.
                    None => match grant.try_recv() {
                        Ok(reserved) => reserved,
                        Err(_) => {
                            let mut refusal = self.refusal(&gate, 0, false);
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

    /// The refusal of a client of `gate` with `ahead` clients in front of it, for a
    /// full queue (`full`) or a timeout.
    fn refusal(&self, gate: &TenantGate, ahead: u32, full: bool) -> Rejection {
        let cause = self.cause(gate);
        let paused = gate.paused(Instant::now());
        let edge = self.edge.as_deref().filter(|_| cause == Blocker::Edge);
        let (reason, detail) = match (edge, full) {
            _ if paused.is_some() => (
                Reason::EdgeCapacity,
                format!(
                    "the edge asked for a pause (Retry-After) for tenant {} or its upstream group; {} queued",
                    gate.name,
                    gate.queued()
                ),
            ),
            (Some(_), _) => (
                Reason::EdgeCapacity,
                format!(
                    "the edge ceiling is in use by all tenants; tenant {} has {} queued (queue_depth {})",
                    gate.name,
                    gate.queued(),
                    gate.queue_depth()
                ),
            ),
            (None, true) => (
                Reason::QueueFull,
                format!(
                    "tenant {} has {} queued (queue_depth {}) and {} of {} sessions",
                    gate.name,
                    gate.queued(),
                    gate.queue_depth(),
                    gate.limit.slots.live(),
                    gate.limit.slots.cap()
                ),
            ),
            (None, false) => (
                Reason::QueueTimeout,
                format!(
                    "waited queue_timeout ({}) in tenant {}'s queue with {ahead} still ahead",
                    humantime::format_duration(gate.queue_timeout()),
                    gate.name
                ),
            ),
        };
        let mut after = retry_after(gate, cause, edge, ahead);
        if let Some(until) = paused {
            // Never sooner than the pause ends.
            after = after.max(until.saturating_duration_since(Instant::now()));
        }
        Rejection::new(reason, detail).retry_after(after)
    }

    /// What holds `gate`'s clients back: what its pump waits for while it has a queue;
    /// without one (a tenant with `queue_depth = 0`), whichever limit is exhausted now.
    fn cause(&self, gate: &TenantGate) -> Blocker {
        if gate.paused(Instant::now()).is_some() {
            Blocker::Edge
        } else if gate.queued() > 0 {
            gate.blocker()
        } else if gate.limit.slots.live() >= gate.limit.slots.cap() {
            Blocker::Slot
        } else if gate.limit.tokens.ready_at() > Instant::now() || self.edge.is_none() {
            Blocker::Token
        } else {
            Blocker::Edge
        }
    }

    /// A sign of edge trouble on a handshake of `tenant` (a `503` or `429`, a timeout, a
    /// handshake slower than `slow_handshake`): the tenant's adaptive rate steps down
    /// ([`adaptive`]). The edge ceiling's, shared by every tenant, steps down only when
    /// the trouble cannot depend on the tenant's request (`request_level` false: a
    /// connect timeout), or when another tenant reported request-level trouble within
    /// [`adaptive::WITNESS_WINDOW`]: one tenant drawing refusals on its own path slows
    /// only itself.
    pub fn upstream_trouble(&self, tenant: &str, request_level: bool) {
        let now = Instant::now();
        let gate = self.gate(tenant);
        if let Some(gate) = &gate {
            gate.adaptive.trouble(&gate.limit.tokens, self.policy, now);
        }
        let Some(edge) = &self.edge else {
            return;
        };
        let seen_by_others = request_level && gate.is_some_and(|g| self.witness(&g.name, now));
        if !request_level || seen_by_others {
            edge.adaptive.trouble(&edge.limit.tokens, self.policy, now);
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
        for gate in &self.tenants {
            gate.close(Closed::Draining);
        }
    }

    /// Applies a reloaded config: tenants that stay get their new limits in place (their
    /// live sessions and queued clients are kept; a lower cap only holds new sessions
    /// back), new tenants get a gate, removed tenants stop being admitted (their queued
    /// clients are refused, their live sessions go on; their gate is kept, closed, and
    /// reopened if they come back). The `[edge]` ceiling's limits
    /// change in place; adding or removing the section takes a restart (returned as a
    /// warning).
    pub fn reconcile(&self, config: &Config, metrics: &Metrics, pools: &Pools) -> Option<String> {
        let mut warning = None;
        match (&self.edge, &config.edge) {
            (Some(edge), Some(limits)) => edge.reconfigure(limits),
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                warning = Some(
                    "adding or removing the [edge] section takes a restart; the ceiling in force is kept".to_owned(),
                );
            }
        }
        let wanted: Vec<&Arc<crate::config::Tenant>> = config
            .tenants
            .values()
            .chain(config.default_tenant.as_ref())
            .collect();
        for tenant in &wanted {
            let pool = pools.get(&tenant.group.name);
            if let Some(gate) = self.gate(&tenant.name) {
                // A tenant removed by an earlier reload keeps its gate (its live
                // sessions still count against it) and is taken back here.
                if gate.closed() == Some(Closed::Removed) {
                    gate.reopen();
                }
                gate.reconfigure(&tenant.limits, pool);
            } else {
                self.tenants.insert(
                    tenant.name.clone(),
                    Arc::new(TenantGate::new(
                        &tenant.name,
                        &tenant.limits,
                        self.edge.clone(),
                        pool,
                        &metrics.tenant(&tenant.name),
                    )),
                );
            }
        }
        // Removed tenants' gates stay, closed: their live sessions hold permits on them,
        // and if the tenant comes back it must count those.
        for gate in &self.tenants {
            if !wanted.iter().any(|t| t.name == *gate.key()) && gate.closed().is_none() {
                gate.close(Closed::Removed);
            }
        }
        warning
    }

    /// The effective handshake rate of `tenant` now.
    pub fn effective_rate(&self, tenant: &str) -> Option<f64> {
        self.gate(tenant).map(|g| g.adaptive.effective())
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
                for gate in &admission.tenants {
                    gate.adaptive.recover(&gate.limit.tokens, now);
                }
                if let Some(edge) = &admission.edge {
                    edge.adaptive.recover(&edge.limit.tokens, now);
                }
            }
        });
    }

    /// Holds `tenant`'s clients back for `after`: the edge answered one of them `429`
    /// with this `Retry-After`. Queued clients wait; refusals meanwhile say so.
    pub fn pause_tenant(&self, tenant: &str, after: Duration) {
        if let Some(gate) = self.gate(tenant) {
            gate.pause(Instant::now() + after);
        }
    }

    /// Before an upstream retry of a client of `tenant`: waits out a pause the edge
    /// asked for (the tenant's or its group's), then takes an edge handshake token, since
    /// every attempt counts against the edge's rate, not only a client's first. `false`
    /// when that cannot happen before `deadline`. Without an `[edge]` ceiling, no token
    /// is needed.
    pub async fn retry_token(&self, tenant: &str, deadline: Instant) -> bool {
        if let Some(gate) = self.gate(tenant) {
            while let Some(until) = gate.paused(Instant::now()) {
                if until >= deadline {
                    return false;
                }
                tokio::time::sleep_until(until).await;
            }
        }
        let Some(edge) = &self.edge else {
            return true;
        };
        loop {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            if edge.limit.tokens.try_take(now).is_ok() {
                return true;
            }
            let ready = edge.limit.tokens.ready_at();
            if ready >= deadline {
                return false;
            }
            tokio::time::sleep_until(ready).await;
        }
    }

    /// The admission state of `tenant`.
    pub fn tenant_load(&self, tenant: &str) -> Option<TenantLoad> {
        let gate = self.gate(tenant)?;
        Some(TenantLoad {
            live: gate.limit.slots.live(),
            max_sessions: gate.limit.slots.cap(),
            queued: gate.queued(),
        })
    }

    /// The state of the edge ceiling, when there is one.
    pub fn edge_load(&self) -> Option<EdgeLoad> {
        let edge = self.edge.as_ref()?;
        Some(EdgeLoad {
            live: edge.limit.slots.live(),
            max_sessions: edge.limit.slots.cap(),
            waiting: edge.waiting(),
        })
    }
}

/// An honest estimate of when a refused client could get in: the clients ahead of it
/// (plus itself) times the interval at which the queue moves, jittered by ±20 % so that
/// refused clients do not return in lockstep.
///
/// The interval is the tenant's token interval, or its weighted share of the edge's when
/// the edge binds; when sessions rather than handshakes hold the queue (a cap reached),
/// it is the recent time between session ends of that scope. The estimate is capped at
/// `queue_timeout` (by then everyone now queued has been admitted or has given up, so
/// there is room), which is also the answer before any session has ended.
fn retry_after(gate: &TenantGate, cause: Blocker, edge: Option<&EdgeGate>, ahead: u32) -> Duration {
    let interval = match (cause, edge) {
        (Blocker::Slot, _) => gate.limit.slots.release_interval(),
        (_, Some(edge)) if edge.slot_bound() => edge
            .limit
            .slots
            .release_interval()
            .map(|i| i.mul_f64(edge.share_of(gate.weight()))),
        (_, Some(edge)) => Some(
            edge.limit
                .tokens
                .interval()
                .mul_f64(edge.share_of(gate.weight())),
        ),
        (_, None) => Some(gate.limit.tokens.interval()),
    };
    let base = interval
        .and_then(|i| i.checked_mul(ahead + 1))
        .map_or(gate.queue_timeout(), |w| w.min(gate.queue_timeout()));
    base.mul_f64(rand::random_range(0.8..1.2))
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
mod tests {
    //! The scheduler under tokio's paused clock: times are exact, so pacing, order and
    //! shares are asserted without slack.

    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    fn admission(text: &str) -> Arc<Admission> {
        let text = format!("[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:9\"]\n{text}");
        let config = Config::parse(&text, &HashMap::new()).expect("valid test config");
        Arc::new(Admission::new(
            &config,
            &Metrics::new(&config),
            &Pools::new(&config),
        ))
    }

    fn tenant(name: &str, limits: &str) -> String {
        format!("[tenants.{name}]\nauth = {{ kind = \"none\" }}\n{limits}\n")
    }

    type Log = Arc<Mutex<Vec<(String, usize, Instant)>>>;

    /// `n` connects of `tenant`, each a task that ends with its admission's result (a
    /// permit is dropped at once).
    fn spawn_waiters(
        a: &Arc<Admission>,
        tenant: &str,
        n: usize,
    ) -> Vec<tokio::task::JoinHandle<Result<(), Rejection>>> {
        (0..n)
            .map(|_| {
                let (a, tenant) = (a.clone(), tenant.to_owned());
                tokio::spawn(async move { a.admit(&tenant).await.map(|_| ()) })
            })
            .collect()
    }

    /// Spawns `n` connects of `tenant`, in order, each recording (tenant, index, time)
    /// when admitted and ending its session at once.
    fn spawn_connects(a: &Arc<Admission>, log: &Log, tenant: &str, n: usize) {
        for i in 0..n {
            let (a, log, tenant) = (a.clone(), log.clone(), tenant.to_owned());
            tokio::spawn(async move {
                let admitted = a.admit(&tenant).await.expect("admitted");
                log.lock().unwrap().push((tenant, i, Instant::now()));
                drop(admitted);
            });
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_spike_is_paced_at_the_token_rate_in_arrival_order() {
        let a = admission(&tenant(
            "t",
            "handshake_rate = 20.0\nhandshake_burst = 5\nqueue_depth = 200\nqueue_timeout = \"60s\"",
        ));
        let log: Log = Arc::default();
        let start = Instant::now();
        spawn_connects(&a, &log, "t", 100);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 100);
        let order: Vec<usize> = log.iter().map(|e| e.1).collect();
        assert_eq!(order, (0..100).collect::<Vec<_>>(), "FIFO");
        // The burst at once, then one every 50 ms exactly.
        for (k, (_, _, at)) in log.iter().enumerate() {
            let expected = Duration::from_millis(50 * (k.saturating_sub(4)) as u64);
            assert_eq!(*at - start, expected, "admission {k}");
        }
        assert_eq!(a.tenant_load("t").unwrap().queued, 0);
        assert_eq!(a.tenant_load("t").unwrap().live, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_holds_and_waiters_follow_in_order_as_sessions_end() {
        let a = admission(&tenant(
            "t",
            "max_sessions = 3\nhandshake_rate = 1000.0\nhandshake_burst = 100",
        ));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..8 {
            let (a, tx) = (a.clone(), tx.clone());
            tokio::spawn(async move {
                let admitted = a.admit("t").await.expect("admitted");
                tx.send((i, admitted)).unwrap();
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut held = Vec::new();
        while let Ok(x) = rx.try_recv() {
            held.push(x);
        }
        assert_eq!(held.iter().map(|h| h.0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(
            a.tenant_load("t").unwrap(),
            TenantLoad {
                live: 3,
                max_sessions: 3,
                queued: 5
            }
        );
        // Each end lets exactly the next one in.
        for next in 3..8 {
            held.remove(0);
            tokio::time::sleep(Duration::from_millis(10)).await;
            let (i, admitted) = rx.try_recv().expect("the next waiter is admitted");
            assert_eq!(i, next);
            assert!(admitted.waited.is_some());
            held.push((i, admitted));
            assert!(rx.try_recv().is_err());
        }
        drop(held);
        assert_eq!(a.tenant_load("t").unwrap().live, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_and_timeout_are_refused_with_an_estimate() {
        let a = admission(&tenant(
            "t",
            "max_sessions = 1\nqueue_depth = 2\nqueue_timeout = \"5s\"",
        ));
        let held = a.admit("t").await.unwrap();
        let waiters: Vec<_> = spawn_waiters(&a, "t", 2);
        tokio::task::yield_now().await;
        let full = a.admit("t").await.unwrap_err();
        assert_eq!(full.reason, Reason::QueueFull);
        // Sessions, not the rate, hold the queue: the estimate is about queue_timeout.
        let after = full.retry_after.unwrap();
        assert!(
            after >= Duration::from_secs(4) && after <= Duration::from_secs(6),
            "{after:?}"
        );
        for w in waiters {
            let refused = w.await.unwrap().unwrap_err();
            assert_eq!(refused.reason, Reason::QueueTimeout);
            assert!(refused.retry_after.is_some());
            // The wait is reported, for sluice_queue_wait_seconds and the log line.
            assert_eq!(refused.waited, Some(Duration::from_secs(5)));
        }
        assert_eq!(a.tenant_load("t").unwrap().queued, 0);
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_bound_estimates_grow_with_the_queue_ahead() {
        let a = admission(&tenant(
            "t",
            "handshake_rate = 2.0\nhandshake_burst = 1\nqueue_depth = 10\nqueue_timeout = \"60s\"",
        ));
        let _first = a.admit("t").await.unwrap();
        let waiters: Vec<_> = spawn_waiters(&a, "t", 10);
        tokio::task::yield_now().await;
        let full = a.admit("t").await.unwrap_err();
        assert_eq!(full.reason, Reason::QueueFull);
        // 10 ahead + itself at 2/s: about 5.5 s, ±20 %.
        let after = full.retry_after.unwrap().as_secs_f64();
        assert!((4.4..=6.6).contains(&after), "{after}");
        for w in waiters {
            w.abort();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn clients_that_leave_the_queue_take_nothing() {
        let a = admission(&tenant(
            "t",
            "handshake_rate = 1.0\nhandshake_burst = 1\nqueue_depth = 100\nqueue_timeout = \"60s\"",
        ));
        let start = Instant::now();
        let first = a.admit("t").await.unwrap();
        assert!(first.waited.is_none());
        let waiters: Vec<_> = spawn_waiters(&a, "t", 50);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(a.tenant_load("t").unwrap().queued, 50);
        for w in &waiters {
            w.abort();
        }
        tokio::task::yield_now().await;
        assert_eq!(a.tenant_load("t").unwrap().queued, 0, "left at once");
        // The next token is at 1 s; the pump wakes then, finds nobody, and gives back
        // what it reserved. A new client gets exactly that one token.
        tokio::time::sleep_until(start + Duration::from_secs(1)).await;
        tokio::task::yield_now().await;
        let next = a.admit("t").await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
        drop(next);
        let after = a.admit("t").await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
        assert!(after.waited.is_some());
        drop((first, after));
        assert_eq!(a.tenant_load("t").unwrap().live, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_tenant_is_not_starved_by_a_flooding_one() {
        let limits = "handshake_rate = 1000.0\nhandshake_burst = 1000\nqueue_depth = 1000\nqueue_timeout = \"120s\"";
        let a = admission(&format!(
            "[edge]\nmax_sessions = 10000\nhandshake_rate = 20.0\nhandshake_burst = 1\n{}{}",
            tenant("a", limits),
            tenant("b", limits)
        ));
        let log: Log = Arc::default();
        let start = Instant::now();
        spawn_connects(&a, &log, "a", 400);
        tokio::time::sleep(Duration::from_millis(500)).await;
        spawn_connects(&a, &log, "b", 20);
        tokio::time::sleep(Duration::from_secs(30)).await;
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 420);
        let waits = |t: &str, from: Instant| {
            let mut w: Vec<Duration> = log
                .iter()
                .filter(|e| e.0 == t)
                .map(|e| e.2 - from)
                .collect();
            w.sort();
            w
        };
        let (wa, wb) = (
            waits("a", start),
            waits("b", start + Duration::from_millis(500)),
        );
        // Turns alternate once b arrives: b's 20 are in within about 2 s (40 edge
        // tokens), while a's backlog takes 21 s.
        assert!(
            *wb.last().unwrap() <= Duration::from_millis(2100),
            "{:?}",
            wb.last()
        );
        assert!(
            wb[10] * 5 < wa[200],
            "b median {:?}, a median {:?}",
            wb[10],
            wa[200]
        );
        // The edge never saw more than its rate.
        let mut times: Vec<Instant> = log.iter().map(|e| e.2).collect();
        times.sort();
        for pair in times.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_millis(50));
        }
        // FIFO inside each tenant.
        for t in ["a", "b"] {
            let order: Vec<usize> = log.iter().filter(|e| e.0 == t).map(|e| e.1).collect();
            assert!(order.windows(2).all(|p| p[0] < p[1]), "{t} out of order");
        }
        assert_eq!(a.edge_load().unwrap().live, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_edge_ceiling_is_named_when_it_is_the_cause() {
        let a = admission(&format!(
            "[edge]\nhandshake_rate = 1.0\nhandshake_burst = 1\n{}{}",
            tenant("busy", "queue_depth = 10\nqueue_timeout = \"3s\""),
            tenant("direct", "queue_depth = 0")
        ));
        let first = a.admit("busy").await.unwrap();
        let queued = {
            let a = a.clone();
            tokio::spawn(async move { a.admit("busy").await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(a.edge_load().unwrap().waiting, 1);
        // A tenant without a queue, within its own limits, refused because the edge is
        // spoken for: 503 edge-capacity, not 429.
        let refused = a.admit("direct").await.unwrap_err();
        assert_eq!(refused.reason, Reason::EdgeCapacity);
        assert_eq!(
            refused.reason.status(),
            http::StatusCode::SERVICE_UNAVAILABLE
        );
        // The queued one gets the edge's next token at 1 s.
        queued.await.unwrap().unwrap();
        drop(first);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_whose_clients_all_leave_gives_back_its_edge_turn_at_once() {
        let limits = "handshake_rate = 1000.0\nhandshake_burst = 1000\nqueue_depth = 1000\nqueue_timeout = \"120s\"";
        let a = admission(&format!(
            "[edge]\nhandshake_rate = 10.0\nhandshake_burst = 1\n{}{}",
            tenant("a", limits),
            tenant("b", limits)
        ));
        let log: Log = Arc::default();
        let start = Instant::now();
        spawn_connects(&a, &log, "a", 10);
        tokio::task::yield_now().await;
        let b = {
            let a = a.clone();
            tokio::spawn(async move { a.admit("b").await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(a.edge_load().unwrap().waiting, 2, "a and b wait for turns");
        b.abort();
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let load = a.tenant_load("b").unwrap();
        assert_eq!((load.queued, load.live), (0, 0), "b holds nothing");
        assert_eq!(a.edge_load().unwrap().waiting, 1, "b's turn withdrawn");
        // a's ten go at the edge's pace with no turn lost to b.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let last = log.lock().unwrap().iter().map(|e| e.2).max().unwrap();
        assert_eq!(last - start, Duration::from_millis(900));
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_bound_estimate_follows_how_fast_sessions_end() {
        let a = admission(&tenant(
            "t",
            "max_sessions = 1\nqueue_depth = 3\nqueue_timeout = \"60s\"",
        ));
        // Sessions end one every 2 s.
        for _ in 0..3 {
            let s = a.admit("t").await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(s);
        }
        let _held = a.admit("t").await.unwrap();
        let waiters: Vec<_> = spawn_waiters(&a, "t", 3);
        tokio::task::yield_now().await;
        let full = a.admit("t").await.unwrap_err();
        assert_eq!(full.reason, Reason::QueueFull);
        // 3 ahead + itself, one per 2 s: about 8 s, not the 60 s queue_timeout.
        let after = full.retry_after.unwrap().as_secs_f64();
        assert!((6.4..=9.6).contains(&after), "{after}");
        for w in waiters {
            w.abort();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backlogged_tenants_share_the_edge_by_weight() {
        let limits = "handshake_rate = 1000.0\nhandshake_burst = 1000\nqueue_depth = 1000\nqueue_timeout = \"120s\"";
        let a = admission(&format!(
            "[edge]\nhandshake_rate = 50.0\nhandshake_burst = 1\n{}weight = 2\n{}weight = 1\n",
            tenant("heavy", limits),
            tenant("light", limits)
        ));
        let log: Log = Arc::default();
        spawn_connects(&a, &log, "heavy", 200);
        spawn_connects(&a, &log, "light", 200);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let log = log.lock().unwrap();
        // The first admission is the fast path; then both are backlogged.
        let heavy = log[1..91].iter().filter(|e| e.0 == "heavy").count();
        assert_eq!(heavy, 60, "2:1 of 90 turns");
    }
}
