//! Step 4 of the flow, admission, in shadow mode (`enforce = false`): every decision computed and counted, none applied.
//!
//! A tenant with `enforce = false` is admitted at once, always: its connect goes on to
//! the edge untouched. Beside it, what enforcing would have done is decided by the same
//! machinery an enforced tenant goes through, and counted
//! (`sluice_shadow_decisions_total{tenant,would}`, `sluice_shadow_wait_seconds{tenant}`
//! through a [`ShadowSink`] the caller hands in: admission imports no metrics).
//!
//! # Two gates per shadow tenant
//!
//! * The tenant's **real gate** counts what is really there. A shadow session takes a
//!   slot of it without waiting ([`super::capacity::Slots::force_acquire`], which may
//!   take the count over `max_sessions`), so that when a reload flips the tenant to
//!   `enforce = true` its cap at once counts every live session, and the next connect
//!   waits until the real count is under the cap. (Its handshake tokens are not taken:
//!   pacing starts from the flip.)
//! * A **model gate** ([`Shadow`], one per shadow tenant, built when the tenant becomes
//!   shadow) is a [`TenantGate`] like any other — the tenant's `max_sessions`,
//!   `handshake_rate`/`handshake_burst`, `queue_depth`, `queue_timeout`, its FIFO queue
//!   and its pump — through which every connect sends a *ticket*. A ticket the model would
//!   admit at once counts `admit` and holds a model slot; one it would queue counts
//!   `queue` and waits in the model's queue (a task of its own, at most `queue_depth` of
//!   them), then either holds a model slot (its wait observed) or counts its refusal
//!   (`queue-full`, `queue-timeout`, `edge-capacity`, `draining`: the reasons of
//!   [`Reason`], so the same strings as real refusals). A model slot is held as long as
//!   the real session lives and released with it, exactly once (it sits in the session's
//!   [`super::Permit`]): later decisions see the load the tenant would have had.
//!
//! # The edge
//!
//! A shadow session counts in the `[edge]` ceiling's totals, not held back by them: it
//! takes an edge slot and an edge token without waiting ([`super::capacity::Tokens::force_take`]
//! moves the edge's TAT, so enforced tenants are paced after its handshakes; the debt is
//! bounded by one burst, see there), released with the session. So an enforced
//! neighbour waits when the shadow tenant's sessions fill the edge, as it would if
//! they had come through an enforced tenant.
//!
//! Its ticket does not take a second edge turn (that would count the session twice and
//! take turns from enforced tenants for a client that is already connected). Instead,
//! what the edge said to the real handshake is kept: whether its edge slot fitted under
//! the cap, and when its edge token would have been ready (the GCRA conformance time of
//! that handshake). A ticket whose edge did not fit would have queued; once the model
//! gate would let it go, it waits (still holding its model slot, as an enforced head of
//! queue does) until that token time and until the edge's sessions are back within the
//! cap (looked at every [`EDGE_POLL`]), or counts `edge-capacity` at its
//! `queue_timeout`. This is an estimate: the weighted share between tenants is not
//! modelled (the edge's own order of handshakes, first come first served, is), a
//! ticket waiting for the edge has already left the model's queue, so while the edge
//! binds the would-be queue can look shorter than an enforced one would be, and several
//! tickets waiting for edge sessions to end all go when one does; the token time comes
//! from the edge's own bucket, so it shares its bound of one burst of debt (a storm far
//! over the edge's rate is told shorter would-be edge waits than it would have had). At most the model's
//! `max_sessions` tickets wait for the edge at once (each holds a model slot), each for
//! at most its `queue_timeout`.
//!
//! # A ticket's life
//!
//! * The real session ends (or its upstream handshake fails) while its ticket is still
//!   queued: the ticket goes on waiting. Enforcing, that client would still be in the
//!   queue, its session still to come: withdrawing it would empty the would-be queue
//!   whenever sessions are shorter than the waits, and count none of the timeouts
//!   enforcing has (tests/attack_issue18.rs). A ticket let through holds its model slot
//!   as long as its session lasts or lasted, counted from the moment it would have gone
//!   on; so its task may outlive the session, by at most its wait.
//! * A reload flips the tenant to `enforce = true`, or removes it: the model is retired,
//!   its tickets' tasks end at once (queued or holding a model slot) and count nothing
//!   more than their `queue`.
//!   Sessions already live keep counting in the real gate (above). A flip back to shadow
//!   builds a fresh model, which starts empty: sessions admitted while the tenant was
//!   enforced are not in its would-be count.
//! * The drain: like every gate, the model is closed; queued tickets count `draining`.
//!
//! The other way round, clients already queued in the real gate when a reload flips the
//! tenant to shadow stay queued under the enforced rules (the flip applies to the next
//! connect); they are admitted or refused as before.
//!
//! # Bounds
//!
//! Per shadow tenant one model gate; per queued ticket one queue entry and one small
//! task, at most `queue_depth` of them (a ticket the full queue refuses is counted and
//! gone), and at most `max_sessions` tasks of tickets let through (each holds a model
//! slot); per shadow session one boxed [`Watch`]. Nothing is keyed by what a client
//! sends. The would-be rate is the configured one (the adaptive back-off acts on real
//! handshakes of enforced tenants only), and an edge `429` pause is not modelled.
//!
//! # `[cluster]`
//!
//! Shadow mode is local only: the config refuses `enforce = false` with `[cluster]`, since
//! a shared (Redis) capacity has no operation to count a session without waiting for it,
//! and without one a shadow tenant's sessions would not count in the ceiling the
//! replicas share.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::capacity::{Capacity, Scope};
use super::edge::EdgeGate;
use super::gate::{try_slot, try_token, Closed, Reserved};
use super::{closed_rejection, Admission, Admitted, Gauges, Permit, TenantGate, TenantLoad};
use crate::config::Limits;
use crate::reject::{Reason, Rejection};

/// How often a ticket waiting for the edge's sessions to be back within the cap looks.
pub const EDGE_POLL: Duration = Duration::from_millis(50);

/// What enforcing would have done with one connect: the `would` label of
/// `sluice_shadow_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Would {
    /// Gone on at once.
    Admit,
    /// Waited in the tenant's queue (counted when it joined; its wait when it left).
    Queue,
    /// Refused for this reason (after queueing, or at once for `queue-full`).
    Refuse(Reason),
}

impl Would {
    /// Every label a shadow tenant's counter has, in order.
    pub const ALL: [Would; 6] = [
        Would::Admit,
        Would::Queue,
        Would::Refuse(Reason::QueueFull),
        Would::Refuse(Reason::QueueTimeout),
        Would::Refuse(Reason::EdgeCapacity),
        Would::Refuse(Reason::Draining),
    ];

    /// The label value: `admit`, `queue`, the refusal's reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admit => "admit",
            Self::Queue => "queue",
            Self::Refuse(reason) => reason.as_str(),
        }
    }
}

/// Where a shadow tenant's would-be decisions are counted: its metrics, handed in.
pub trait ShadowSink: Send + Sync + std::fmt::Debug {
    /// One would-be decision.
    fn decided(&self, would: Would);
    /// The would-be wait of a ticket that queued, however it left the queue (admitted,
    /// timed out, drained).
    fn waited(&self, waited: Duration);
}

/// A shadow tenant's would-be admission: its model gate and where it counts.
#[derive(Debug)]
pub struct Shadow {
    model: Arc<TenantGate>,
    sink: Arc<dyn ShadowSink>,
    edge: Option<Arc<EdgeGate>>,
    /// Set when the tenant stops being shadow (a flip to enforce, or removed): nothing
    /// more is counted.
    ended: AtomicBool,
    /// The same, for the tickets' tasks to end on (each holds a receiver).
    ended_tx: watch::Sender<bool>,
    ended_rx: watch::Receiver<bool>,
}

impl Shadow {
    /// The model's state: would-be live sessions (`live`) and would-be queue (`queued`).
    pub fn load(&self) -> TenantLoad {
        self.model.load()
    }

    /// A reload changed the tenant's limits (it stays shadow): they apply to the next
    /// ticket.
    pub fn configure(&self, limits: &Limits) {
        self.model.reconfigure(limits, None);
    }

    /// The tenant is no longer shadow (flipped to enforce, or removed): every ticket's
    /// task ends now (queued, or holding a would-be slot), nothing more is counted. Would-be
    /// slots of sessions admitted at once go with their sessions.
    pub fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.ended_tx.send_replace(true);
        self.model.retire();
    }

    fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// The ticket of a connect that went on at `now`, whose handshake the edge saw as
    /// `seen`: decided now when it can be, else queued in the model.
    fn decide(self: &Arc<Self>, seen: EdgeSeen, now: Instant) -> Watch {
        let model = &self.model;
        if model.closed().is_some() || self.ended() {
            return Watch::Done;
        }
        let edge_fits = seen.fits(now);
        if model.queued() == 0 && edge_fits {
            if let Some(slot) = try_slot(model) {
                if let Some(token) = try_token(model, now) {
                    token.spend();
                    self.sink.decided(Would::Admit);
                    return Watch::Admitted(Permit {
                        gate: slot.into_permit_part(),
                        edge: false,
                        shadow: None,
                    });
                }
            }
        }
        let Some((id, grant)) = model.enqueue(None) else {
            if model.closed().is_none() {
                // Full: the edge's doing when the tenant's own limits had room (the
                // reason an enforced tenant without a queue place gets then).
                let own_room = model.queue_depth() == 0
                    && model.limit.slots.live() < model.limit.slots.cap()
                    && model.limit.tokens.ready_at() <= now;
                let reason = if own_room && !edge_fits {
                    Reason::EdgeCapacity
                } else {
                    Reason::QueueFull
                };
                self.sink.decided(Would::Refuse(reason));
            }
            return Watch::Done;
        };
        self.sink.decided(Would::Queue);
        let place = Place {
            shadow: self.clone(),
            id,
            queued: true,
        };
        let (end, session) = oneshot::channel();
        // Its own task, at most `queue_depth` queued and `max_sessions` holding a model
        // slot; it ends when the tenant stops being shadow.
        tokio::spawn(ticket(place, grant, seen, now, session));
        Watch::Queued {
            end: Some(end),
            since: now,
        }
    }
}

/// What the edge said to a shadow session's real handshake.
#[derive(Debug, Clone, Copy)]
struct EdgeSeen {
    /// Its edge slot fitted under `[edge] max_sessions`.
    slot_fit: bool,
    /// When its edge token would have been ready (its GCRA conformance time).
    ready: Instant,
}

impl EdgeSeen {
    fn fits(&self, now: Instant) -> bool {
        self.slot_fit && self.ready <= now
    }

    /// Waits until the edge would have let the client go (its token time, then the
    /// edge's sessions within the cap, its own included); `false` at `deadline`.
    async fn room(&self, edge: Option<&EdgeGate>, deadline: Instant) -> bool {
        if self.ready > deadline {
            tokio::time::sleep_until(deadline).await;
            return false;
        }
        if self.ready > Instant::now() {
            tokio::time::sleep_until(self.ready).await;
        }
        let Some(edge) = edge.filter(|_| !self.slot_fit) else {
            return true;
        };
        loop {
            if edge.limit.slots.live() <= edge.limit.slots.cap() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            tokio::time::sleep_until((now + EDGE_POLL).min(deadline)).await;
        }
    }
}

/// A queued ticket's place in the model's queue; leaving it is its `Drop` (so an
/// aborted task leaves at once).
#[derive(Debug)]
struct Place {
    shadow: Arc<Shadow>,
    id: u64,
    queued: bool,
}

impl Place {
    /// Leaves the queue: how many were ahead, or `None` when the pump chose it already.
    fn leave(&mut self) -> Option<usize> {
        std::mem::replace(&mut self.queued, false)
            .then(|| self.shadow.model.leave(self.id))
            .flatten()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.leave();
    }
}

/// A queued ticket's session, seen from its task: the real session's length once it
/// has ended (sent by the [`Watch`]'s `Drop`).
type SessionEnd = oneshot::Receiver<Duration>;

/// A shadow session's would-be decision, held in its permit for its life.
#[derive(Debug)]
pub(crate) enum Watch {
    /// Refused, or not counted: nothing held.
    Done,
    /// Admitted at once: its would-be slot (held for its `Drop`).
    Admitted(#[allow(dead_code)] Permit),
    /// Queued: its task decides, and learns the session's length when it ends.
    Queued {
        /// Where the session's length goes when it ends.
        end: Option<oneshot::Sender<Duration>>,
        /// When the session went on (its ticket joined the would-be queue).
        since: Instant,
    },
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Watch::Queued { end, since } = self {
            // The ticket goes on without its session: the client would still be
            // waiting, and its session (this long) still to come. Its task may be gone
            // already (decided and released, or the model retired).
            if let Some(end) = end.take() {
                let _ = end.send(since.elapsed());
            }
        }
    }
}

impl Shadow {
    /// Counts one would-be decision, unless the tenant is no longer shadow.
    fn count(&self, would: Would, waited: Option<Duration>) {
        if self.ended() {
            return;
        }
        self.sink.decided(would);
        if let Some(waited) = waited {
            self.sink.waited(waited);
        }
    }
}

/// A queued ticket's life, until the tenant stops being shadow: [`wait`], whose end
/// releases whatever it holds (RAII), at once when the model is retired.
async fn ticket(
    place: Place,
    grant: oneshot::Receiver<Reserved>,
    seen: EdgeSeen,
    since: Instant,
    end: SessionEnd,
) {
    let mut ended = place.shadow.ended_rx.clone();
    tokio::select! {
        () = wait(place, grant, seen, since, end) => {}
        _ = ended.wait_for(|ended| *ended) => {}
    }
}

/// A queued ticket's wait: for the model's pump until `queue_timeout`, then for the
/// edge ([`EdgeSeen::room`]) until the same deadline; once let through, its would-be
/// session holds a model slot as long as the real one lasts (or lasted), counted from
/// the moment it would have gone on. Enforcing, the client would have waited whatever
/// its real session did meanwhile: a session that ends while its ticket waits does
/// not take the ticket out of the queue.
async fn wait(
    mut place: Place,
    mut grant: oneshot::Receiver<Reserved>,
    seen: EdgeSeen,
    since: Instant,
    end: SessionEnd,
) {
    let shadow = place.shadow.clone();
    let deadline = since + shadow.model.queue_timeout();
    let reserved = match tokio::time::timeout_at(deadline, &mut grant).await {
        Ok(Ok(reserved)) => {
            place.queued = false;
            Some(reserved)
        }
        Ok(Err(_)) => {
            // Closed: the drain (counted as an enforced queued client is), or the end
            // of shadow mode (nothing more counted).
            place.queued = false;
            if shadow.model.closed() == Some(Closed::Draining) {
                shadow.count(Would::Refuse(Reason::Draining), Some(since.elapsed()));
            }
            return;
        }
        Err(_) => match place.leave() {
            Some(_) => None,
            // Chosen at the last moment: take it.
            None => grant.try_recv().ok(),
        },
    };
    let Some(reserved) = reserved else {
        shadow.count(Would::Refuse(Reason::QueueTimeout), Some(since.elapsed()));
        return;
    };
    if !seen.room(shadow.edge.as_deref(), deadline).await {
        // Everything reserved for it goes back (its token refunded, its slot released).
        drop(reserved);
        shadow.count(Would::Refuse(Reason::EdgeCapacity), Some(since.elapsed()));
        return;
    }
    let permit = reserved.commit();
    let went_on = Instant::now();
    if !shadow.ended() {
        shadow.sink.waited(went_on - since);
    }
    // The would-be session: as long as the real one, from now.
    let lasted = end.await.unwrap_or_default();
    tokio::time::sleep_until(went_on + lasted).await;
    drop(permit);
}

impl Admission {
    /// The model of a shadow tenant `name` with `limits`, counting into `sink`: a gate
    /// with no edge and no pauses, local, closed by the drain like every gate.
    pub fn shadow(&self, name: &str, limits: &Limits, sink: Arc<dyn ShadowSink>) -> Arc<Shadow> {
        let model = Arc::new(TenantGate::new(
            name,
            limits,
            None,
            None,
            Gauges::detached(),
            None,
            self.epoch,
        ));
        self.register(&model);
        let (ended_tx, ended_rx) = watch::channel(false);
        Arc::new(Shadow {
            model,
            sink,
            edge: self.edge.clone(),
            ended: AtomicBool::new(false),
            ended_tx,
            ended_rx,
        })
    }

    /// Admits a connect of a shadow tenant at once: its session counts in `gate` and in
    /// the edge's totals without waiting, and its would-be decision goes to `shadow`.
    ///
    /// # Errors
    /// `draining` (or `tenant-unknown` for a removed tenant), as for any tenant: shadow
    /// mode does not keep a draining server open.
    pub fn admit_shadow(
        &self,
        gate: &Arc<TenantGate>,
        shadow: &Arc<Shadow>,
    ) -> Result<Admitted, Rejection> {
        if let Some(why) = gate.closed() {
            return Err(closed_rejection(why, &gate.name));
        }
        debug_assert!(
            matches!(gate.capacity(), Capacity::Local(_)),
            "shadow mode is refused with [cluster]"
        );
        let now = Instant::now();
        // Released by the permit below (its `Drop`), exactly once, like any other.
        let _ = gate.limit.slots.force_acquire();
        let seen = match &self.edge {
            Some(edge) => EdgeSeen {
                slot_fit: edge.limit.slots.force_acquire(),
                ready: edge.limit.tokens.force_take(now),
            },
            None => EdgeSeen {
                slot_fit: true,
                ready: now,
            },
        };
        let watch = shadow.decide(seen, now);
        Ok(Admitted {
            permit: Permit {
                gate: gate.clone(),
                edge: self.edge.is_some(),
                shadow: Some(Box::new(watch)),
            },
            waited: None,
        })
    }
}
