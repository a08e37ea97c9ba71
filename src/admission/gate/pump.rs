//! Step 4 of the flow, admission: the pump that releases one tenant's queue, paced, in order.

use std::sync::Arc;

use tokio::time::Instant;

use super::super::capacity::Scope;
use super::super::edge::EdgeGate;
use super::{slot, token, Blocker, Reserved, Slot, TenantGate};

/// Releases one tenant's queue: for the client at its head, a session slot, then the
/// tenant's next token (which spaces releases `1/handshake_rate` apart), then a turn at
/// the edge ceiling; the client is then told to go ahead. Runs while the queue has
/// clients; at most one per tenant. When the last queued client leaves, whatever was
/// reserved for the head goes back at once and the pump stops.
pub(super) async fn pump(gate: Arc<TenantGate>, edge: Option<Arc<EdgeGate>>) {
    // Virtual finish time of this tenant's last turn at the edge (start-time fair
    // queueing, see `edge`).
    let mut finish = 0u128;
    while gate.keep_pumping() {
        // Created before the check, so a `leave` that empties the queue after the check
        // still wakes the select below.
        let emptied = gate.emptied.notified();
        if gate.queued() == 0 {
            continue;
        }
        let reserved = tokio::select! {
            r = reserve(&gate, edge.as_ref(), finish) => r,
            () = emptied => continue,
        };
        let Some((reserved, new_finish)) = reserved else {
            // The arbiter is gone: the runtime is shutting down.
            return;
        };
        finish = new_finish;
        if let Some(reserved) = reserved {
            gate.grant(reserved);
        }
    }
    gate.capacity().idle();
}

/// What the head of `gate`'s queue needs: `Some((None, _))` when the token seen ready
/// was taken by a new client meanwhile (the queue emptied and refilled): try again.
async fn reserve(
    gate: &Arc<TenantGate>,
    edge: Option<&Arc<EdgeGate>>,
    finish: u128,
) -> Option<(Option<Reserved>, u128)> {
    gate.set_blocker(Blocker::Slot);
    // At each ask: the head now, and who comes after it.
    let slot = slot(gate, &|| {
        gate.capacity().following(|| gate.next_since());
        gate.head_since()
    })
    .await;
    gate.set_blocker(Blocker::Token);
    // Until the next token; a reload that raised the rate wakes this early (the token is
    // then taken below if it is due, or the pump starts over). A token due already is not
    // slept for: a timer, even one in the past, fires at the next tick (about 1 ms).
    let ready = gate.capacity().ready_at();
    if ready > Instant::now() {
        tokio::select! {
            () = tokio::time::sleep_until(ready) => {}
            () = gate.reconfigured.notified() => {}
        }
    }
    // While the edge has paused this tenant or its whole group, nobody is sent.
    while let Some(until) = gate.paused(Instant::now()) {
        gate.set_blocker(Blocker::Edge);
        tokio::time::sleep_until(until).await;
    }
    let (turn, finish) = match edge {
        Some(edge) => match edge.try_turn(Instant::now()) {
            Some(turn) => (Some(turn), finish),
            None => {
                gate.set_blocker(Blocker::Edge);
                let (turn, finish) = edge.turn(&gate.name, gate.weight(), finish).await?;
                (Some(turn), finish)
            }
        },
        None => (None, finish),
    };
    // A pause that began while this waited for its turn holds the client back too:
    // everything reserved goes back and the pump starts over.
    if gate.paused(Instant::now()).is_some() {
        return Some((None, finish));
    }
    // Only the pump takes this tenant's tokens while its queue is not empty, so the
    // token seen ready above is still there, unless the queue emptied meanwhile and a
    // new client took it directly (or, shared, another replica took it, or the backend
    // failed): then everything above goes back and the pump starts over.
    gate.capacity().following(|| gate.next_since());
    let Some(token) = token(gate, Instant::now(), gate.head_since()).await else {
        return Some((None, finish));
    };
    let (edge_slot, edge_token) = match turn {
        Some((s, t)) => (Some(s), Some(t)),
        None => (None, None),
    };
    Some((
        Some(Reserved {
            permit: super::super::Permit {
                gate: slot.into_permit_part(),
                edge: edge_slot.map(Slot::into_permit_part).is_some(),
                shadow: None,
            },
            tenant_token: token,
            edge_token,
        }),
        finish,
    ))
}
