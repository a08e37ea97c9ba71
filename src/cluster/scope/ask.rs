//! Step 4 of the flow, admission across replicas: one scope's decisions on Redis (the `ACQUIRE` and `TAKE` scripts and what their answers mean here).

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::super::link::{int, items, text};
use super::super::scripts;
use super::{Pending, ScopeState, FROM_REDIS};
use crate::admission::capacity::{BackendError, Taken};

impl ScopeState {
    /// An invocation of a decision script (ACQUIRE, TAKE): the replica set and the
    /// epoch, then this scope's keys with these suffixes (in the script's order), then
    /// this replica's id and epoch as its first two arguments.
    fn decision<'s>(
        &self,
        script: &'s redis::Script,
        suffixes: &[&str],
    ) -> redis::ScriptInvocation<'s> {
        let mut invocation = script.prepare_invoke();
        invocation.key("sluice:replicas").key("sluice:epoch");
        for suffix in suffixes {
            invocation.key(format!("{}:{suffix}", self.prefix));
        }
        invocation
            .arg(&self.shared.replica_id)
            .arg(self.shared.epoch.load().as_str());
        invocation
    }

    /// The tenant and weight the edge's next turn is for ('' and 0: none, or a tenant
    /// scope, which keeps FIFO instead).
    pub(super) fn fair(&self) -> (Arc<str>, u32) {
        if self.fifo {
            return (Arc::from(""), 0);
        }
        self.candidate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| (Arc::from(""), 0))
    }

    /// The tenant the edge's turn after the next is for ('': none, or a tenant scope).
    fn fair_then(&self) -> Arc<str> {
        if self.fifo {
            return Arc::from("");
        }
        self.candidate_then
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| Arc::from(""))
    }

    /// The head's arrival on Redis's clock, or -1 (no FIFO).
    pub(super) fn head_us(&self, head: Option<Instant>) -> i64 {
        match head {
            Some(h) if self.fifo => self.shared.redis_us(h).unwrap_or(-1),
            _ => -1,
        }
    }

    /// The client after the head (see
    /// [`crate::admission::capacity::SharedCapacity::following`]) on Redis's clock,
    /// or -1: nobody, or no FIFO ask (`head_us` -1).
    fn next_us(&self, head_us: i64) -> i64 {
        if head_us < 0 {
            return -1;
        }
        self.following.load(Ordering::Acquire)
    }

    /// The head got what it asked for: the script registered the client after it as
    /// this replica's head among the waiters (or nobody), which `idle` withdraws; at the
    /// edge, `then_registered`: the tenant of the arbiter's turn after it, with a start
    /// tag only Redis knows (withdrawn whatever it is).
    fn served(&self, head_us: i64, then_registered: bool) {
        let next = self.next_us(head_us);
        let waiting = if next >= 0 {
            next
        } else if then_registered {
            -1
        } else {
            i64::MIN
        };
        self.waiting.store(waiting, Ordering::Release);
    }

    /// A reply that is neither a grant nor a refusal (`epoch`: Redis is not the one
    /// this replica republished to): heartbeat now, decide after.
    pub(super) fn not_decided(&self, status: &str) -> BackendError {
        self.shared.beat_now.notify_one();
        BackendError(
            format!(
                "Redis answered {status:?}: it is new, restarted or flushed; republishing this replica's counts first"
            )
            .into(),
        )
    }

    /// Runs a decision script (`ACQUIRE`, `TAKE`); its reply, and when it came. Every
    /// reply starts with its status and Redis's time, which keeps the clock offset.
    async fn decide(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<(redis::Value, Instant), BackendError> {
        let sent = Instant::now();
        let value = self.shared.link.run(invocation, true).await?;
        let received = Instant::now();
        self.shared
            .observe_clock(int(items(&value).get(1)), sent, received);
        Ok((value, received))
    }

    pub(super) async fn ask_slot(&self, head: Option<Instant>) -> Result<bool, BackendError> {
        let mut pending = Pending::new(self);
        let (count, version) = pending.snapshot;
        let head_us = self.head_us(head);
        // A new ask: no head has its place until Redis says so below.
        self.placed.store(0, Ordering::Release);
        let fair = self.fair();
        let then = self.fair_then();
        let (interval, tolerance) = self.gcra();
        let shared = &self.shared;
        let mut invocation = self.decision(
            &scripts::ACQUIRE,
            &["n", "v", "r", "w", "p", "f", "vt", "c", "a"],
        );
        invocation
            .arg(count)
            .arg(&self.incarnation)
            .arg(version)
            .arg(self.cap.load(Ordering::Acquire))
            .arg(interval)
            .arg(tolerance)
            .arg(head_us)
            .arg(u8::from(self.prefetch))
            .arg(shared.lease_ttl.as_micros() as i64)
            .arg(&self.channel)
            .arg(&*fair.0)
            .arg(fair.1)
            .arg(self.next_us(head_us))
            .arg(&*then);
        // Registered before the ask: if this future is dropped before the answer, the
        // pump's `idle` still withdraws the head the script may have registered.
        if head_us >= 0 {
            self.waiting.store(head_us, Ordering::Release);
        } else if !fair.0.is_empty() {
            // Registered with a start tag only Redis knows: withdrawn whatever it is.
            self.waiting.store(-1, Ordering::Release);
        }
        let (value, received) = self.decide(&invocation).await?;
        let reply = items(&value);
        match text(reply.first()).as_str() {
            "ok" => {
                pending.grant();
                if head_us >= 0 {
                    self.placed.store(self.head_key(head), Ordering::Release);
                }
                self.set_cluster_live(int(reply.get(2)));
                let tat = int(reply.get(3));
                if tat > 0 {
                    *self
                        .prefetched
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some((
                        Taken::new(tat as u64, interval as u64 | FROM_REDIS),
                        received,
                    ));
                    self.served(
                        head_us,
                        head_us < 0 && !fair.0.is_empty() && !then.is_empty(),
                    );
                } else {
                    self.set_ready(int(reply.get(4)));
                }
                Ok(true)
            }
            "full" => {
                self.set_cluster_live(int(reply.get(2)));
                Ok(false)
            }
            "turn" => Ok(false),
            "paused" => {
                self.set_paused(int(reply.get(2)));
                Ok(false)
            }
            other => Err(self.not_decided(other)),
        }
    }

    /// Another replica was asked to pause this scope until `until_us` (Redis time).
    pub(super) fn set_paused(&self, until_us: i64) {
        let at = self.shared.local_instant(until_us);
        self.paused_until
            .fetch_max(self.shared.local_us(at), Ordering::AcqRel);
    }

    pub(super) fn set_ready(&self, ready_us: i64) {
        let at = self.shared.local_instant(ready_us);
        self.ready_at
            .store(self.shared.local_us(at), Ordering::Release);
    }

    /// A head's arrival as [`ScopeState::placed`] keeps it (0: none).
    fn head_key(&self, head: Option<Instant>) -> u64 {
        head.map_or(0, |h| self.shared.local_us(h).saturating_add(1))
    }

    pub(super) async fn ask_token(
        &self,
        now: Instant,
        head: Option<Instant>,
    ) -> Result<Result<Taken, Instant>, BackendError> {
        let head_us = self.head_us(head);
        // The head whose slot Redis granted in FIFO order keeps its place while it
        // waits for its edge turn: checking the FIFO again at its token would let a
        // client of another replica that registered meanwhile (or only seems earlier,
        // both arrivals being converted to Redis's clock with a jittery offset) go
        // first, and this head would give back the edge turn its tenant was charged
        // for (the cross-replica weights fell toward 1 : 1 under CPU load).
        let placed = head_us >= 0 && self.placed.load(Ordering::Acquire) == self.head_key(head);
        let fair = self.fair();
        let then = self.fair_then();
        let (interval, tolerance) = self.gcra();
        let mut invocation = self.decision(&scripts::TAKE, &["r", "w", "p", "f", "vt"]);
        invocation
            .arg(interval)
            .arg(tolerance)
            .arg(head_us)
            .arg(&self.channel)
            .arg(&*fair.0)
            .arg(fair.1)
            .arg(self.next_us(head_us))
            .arg(&*then)
            .arg(u8::from(placed));
        if head_us < 0 && !fair.0.is_empty() {
            self.waiting.store(-1, Ordering::Release);
        }
        let (value, _) = self.decide(&invocation).await?;
        let reply = items(&value);
        match text(reply.first()).as_str() {
            "ok" => {
                self.served(
                    head_us,
                    head_us < 0 && !fair.0.is_empty() && !then.is_empty(),
                );
                Ok(Ok(Taken::new(
                    int(reply.get(2)) as u64,
                    interval as u64 | FROM_REDIS,
                )))
            }
            "rate" => {
                self.set_ready(int(reply.get(2)));
                Ok(Err(self.ready_instant().max(now)))
            }
            "paused" => {
                self.set_paused(int(reply.get(2)));
                Ok(Err(self.shared.local_instant(int(reply.get(2))).max(now)))
            }
            // Another replica's earlier client goes first: its grant sends a notice.
            // The edge's arbiter polls at the token interval meanwhile.
            "turn" => {
                let next = now + Duration::from_micros(interval as u64);
                self.ready_at
                    .store(self.shared.local_us(next), Ordering::Release);
                Ok(Err(next))
            }
            other => Err(self.not_decided(other)),
        }
    }

    pub(super) fn ready_instant(&self) -> Instant {
        self.shared.start + Duration::from_micros(self.ready_at.load(Ordering::Acquire))
    }
}
