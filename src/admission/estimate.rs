//! Step 4 of the flow, admission: the `Retry-After` estimate of a refusal.

use std::time::Duration;

use super::edge::EdgeGate;
use super::gate::{Blocker, TenantGate};
use super::Jitter;

/// An honest estimate of when a refused client could get in: the clients ahead of it
/// (plus itself) times the interval at which the queue moves, jittered by ±20 % so that
/// refused clients do not return in lockstep.
///
/// The interval is the tenant's token interval, or its weighted share of the edge's when
/// the edge binds; when sessions rather than handshakes hold the queue (a cap reached),
/// it is the recent time between session ends of that scope. The estimate is capped at
/// `queue_timeout` (by then everyone now queued has been admitted or has given up, so
/// there is room), which is also the answer before any session has ended.
pub(super) fn retry_after(
    gate: &TenantGate,
    cause: Blocker,
    edge: Option<&EdgeGate>,
    ahead: u32,
    jitter: &Jitter,
) -> Duration {
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
    base.mul_f64(jitter.between(0.8, 1.2))
}
