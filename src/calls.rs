//! Beside step 6 (DESIGN.md, "SIP awareness"): per-tenant SIP call caps in `accept` mode.
//!
//! A tenant with call limits (`max_calls`, `call_rate`, … in its config) gets a
//! [`CallGate`]; each of its `accept`-mode sessions that chose subprotocol `sip` relays
//! through a [`CallHook`], which parses every message ([`crate::sip`]) and counts calls
//! against the gate.
//!
//! # The gate is admission's
//!
//! A call gate is an admission [`TenantGate`] of its own: `max_calls` is its slot cap,
//! `call_rate` and `call_burst` its GCRA token bucket, `invite_queue_depth` and
//! `invite_queue_timeout` its bounded FIFO queue. So held INVITEs are released in order,
//! paced, as calls end, by the same scheduler that paces connects, with its guarantees:
//! a call's slot is released exactly once (its [`CallPermit`] drops), a held INVITE
//! whose session ends leaves the queue at once, and the queue is bounded. Call gates sit
//! under no `[edge]` ceiling and are not shared between replicas (`[cluster]`): each
//! replica counts the calls of its own sessions.
//!
//! # What a call is
//!
//! A call counts from the initial INVITE a client sends (no To tag) until the edge's
//! final non-2xx answer to it, the final answer to the client's BYE, a BYE from the edge,
//! the session's end, or `call_idle_timeout` without a message of its dialog. The rest
//! is in [`CallHook`]'s docs.

mod dialog;
mod hook;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use prometheus::IntGauge;

use crate::admission::{adaptive, Admission, Gauges, Jitter, Permit, TenantGate};
use crate::config::{self, Calls, Limits, QueueMode};
use crate::metrics::TenantCallMetrics;
use crate::reject::Rejection;

pub use dialog::MAX_SESSION_CALLS;
pub use hook::CallHook;

/// The rate that stands for "not paced": one call per nanosecond.
const UNPACED_RATE: f64 = 1e9;

/// One SIP tenant's call state: its admission gate for INVITEs and its metrics. Kept
/// by the tenant's handle across reloads (a reload reconfigures it; live calls stay
/// counted).
#[derive(Debug)]
pub struct CallGate {
    admission: Admission,
    gate: Arc<TenantGate>,
    limits: ArcSwap<Calls>,
    /// The tenant's call metric children.
    pub metrics: TenantCallMetrics,
}

/// A call's place under `max_calls`: released exactly once, when it drops.
#[derive(Debug)]
pub struct CallPermit {
    _permit: Permit,
    active: IntGauge,
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// A held INVITE's wait for its place.
pub type CallWait = Pin<Box<dyn Future<Output = Result<CallPermit, Rejection>> + Send>>;

/// Calls and held INVITEs of a tenant now, for the status page and `/api/tenants`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CallLoad {
    /// Calls counted now.
    pub active: u32,
    /// `max_calls` (`None`: not capped).
    pub max_calls: Option<u32>,
    /// INVITEs held now.
    pub queued: u32,
}

/// The admission limits that enforce `calls`.
fn gate_limits(calls: &Calls) -> Limits {
    let (rate, burst) = match calls.call_rate {
        Some(rate) => (rate, calls.call_burst),
        None => (UNPACED_RATE, 1_000_000),
    };
    Limits {
        max_sessions: calls.max_calls.unwrap_or(u32::MAX),
        handshake_rate: rate,
        handshake_burst: burst,
        queue_depth: calls.invite_queue_depth,
        queue_timeout: calls.invite_queue_timeout,
        queue_mode: QueueMode::Accept,
        subprotocols: Vec::new(),
        weight: 1,
        enforce: true,
    }
}

impl CallGate {
    /// The gate of tenant `name` with `calls`.
    pub fn new(name: &str, calls: &Calls, metrics: TenantCallMetrics) -> Arc<Self> {
        let admission = Admission::new(
            None,
            adaptive::Policy {
                enabled: false,
                factor: 1.0,
                floor: 1.0,
            },
            None,
            Jitter::default(),
        );
        let mut gauges = Gauges::detached();
        gauges.queue_depth = metrics.queue_depth.clone();
        let gate = admission.gate(name, &gate_limits(calls), gauges, None);
        Arc::new(Self {
            admission,
            gate,
            limits: ArcSwap::from_pointee(calls.clone()),
            metrics,
        })
    }

    /// A reload's new limits: for INVITEs from now on; calls up stay counted.
    pub fn configure(&self, calls: &Calls) {
        self.gate.configure(&gate_limits(calls), None);
        self.limits.store(Arc::new(calls.clone()));
    }

    /// The limits in force.
    pub fn limits(&self) -> Arc<Calls> {
        self.limits.load_full()
    }

    fn permit(&self, permit: Permit) -> CallPermit {
        self.metrics.active.inc();
        CallPermit {
            _permit: permit,
            active: self.metrics.active.clone(),
        }
    }

    /// A place for a call now, when no INVITE is held and one is free.
    pub fn try_admit(&self) -> Option<CallPermit> {
        self.admission
            .try_admit(&self.gate)
            .map(|permit| self.permit(permit))
    }

    /// Waits for a place in the tenant's INVITE queue (FIFO, paced); dropping the
    /// future leaves the queue.
    pub fn admit(self: &Arc<Self>) -> CallWait {
        let me = self.clone();
        Box::pin(async move {
            let admitted = me.admission.admit(&me.gate).await?;
            Ok(me.permit(admitted.permit))
        })
    }

    /// Calls and held INVITEs now.
    pub fn load(&self) -> CallLoad {
        let load = self.gate.load();
        CallLoad {
            active: u32::try_from(self.metrics.active.get()).unwrap_or(0),
            max_calls: self.limits.load().max_calls,
            queued: load.queued,
        }
    }
}

/// The call gate a tenant's handle keeps after a reload to `calls`, and the one it
/// remembers: `before` is the gate in force, `gone` the one of call keys a reload
/// removed (alive while sessions still count on it). Keys that stay reconfigure their
/// gate (live calls stay counted); keys put back while `gone` lives find it again, so
/// the cap still counts the calls that never ended; removed keys leave their gate to
/// the sessions that hold it, remembered weakly.
pub fn reconcile(
    name: &str,
    (before, gone): (Option<&Arc<CallGate>>, &Weak<CallGate>),
    calls: Option<&config::Calls>,
    metrics: impl FnOnce() -> TenantCallMetrics,
) -> (Option<Arc<CallGate>>, Weak<CallGate>) {
    match (calls, before.cloned().or_else(|| gone.upgrade())) {
        (Some(calls), Some(gate)) => {
            gate.configure(calls);
            (Some(gate), Weak::new())
        }
        (Some(calls), None) => (Some(CallGate::new(name, calls, metrics())), Weak::new()),
        (None, Some(gate)) => (None, Arc::downgrade(&gate)),
        (None, None) => (None, Weak::new()),
    }
}

#[cfg(test)]
mod tests;
