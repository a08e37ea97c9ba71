//! Step 4 of the flow, admission: what a refused client is told — the reason, the detail and an honest `Retry-After`.

use tokio::time::Instant;

use super::capacity::Scope;
use super::gate::{Blocker, TenantGate};
use super::{estimate, Admission};
use crate::reject::{Reason, Rejection};

impl Admission {
    /// The refusal of a client of `gate` with `ahead` clients in front of it, for a
    /// full queue (`full`) or a timeout.
    pub(super) fn refusal(&self, gate: &TenantGate, ahead: u32, full: bool) -> Rejection {
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
                    // Sessions, not this replica's slots: those count a slot a pump
                    // is asking a shared backend for (one too many for a moment),
                    // and a shared cap is the cluster's.
                    gate.capacity()
                        .cluster_live()
                        .unwrap_or(gate.capacity().live()),
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
        let mut after = estimate::retry_after(gate, cause, edge, ahead, &self.jitter);
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
        } else if gate
            .capacity()
            .cluster_live()
            .unwrap_or(gate.capacity().live())
            >= gate.limit.slots.cap()
        {
            Blocker::Slot
        } else if gate.limit.tokens.ready_at() > Instant::now() || self.edge.is_none() {
            Blocker::Token
        } else {
            Blocker::Edge
        }
    }
}
