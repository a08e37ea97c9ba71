//! Beside the flow (a mechanism): drain state, reload notices, what ends a live session early.
//!
//! The process's life beside the flow: graceful drain, hot-reload notices, and what
//! ends a live session early (DESIGN.md: "SIGTERM drains", "hot reload",
//! `[protection] idle_timeout / max_session`).
//!
//! [`Control`] is shared by every connection. Its state is a `watch` channel; a live
//! session does not hold a receiver of it but a registered [`AtomicWaker`] and the
//! control's epoch when it last looked, so it wakes only when something changes (a
//! reload, the start of the drain, the drain's deadline) and its relays' many other
//! wake-ups take no lock (see [`SessionStop::wait`]). [`SessionStop`] turns those, plus
//! the session's own idle and lifetime limits, into the one future the relays race
//! against.
//!
//! # Drain (SIGTERM / SIGINT)
//!
//! 1. [`Control::begin_drain`]: `/readyz` answers `503`, new upgrades are refused with
//!    `draining`, queued clients are refused with `draining` (admission empties the
//!    queues), the listener stops accepting.
//! 2. Live sessions get `shutdown.drain_timeout` to end by themselves
//!    ([`Control::wait_sessions`]).
//! 3. [`Control::close_sessions`]: the rest are closed with close `1001` — in `hold`
//!    mode a frame sluice injects where the tunnel is between frames
//!    ([`crate::relay::relay`]) — and the process exits 0.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::config::Protection;
use crate::relay::Moved;

/// What every live session watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct State {
    /// Set when the drain begins: no new connects.
    pub draining: bool,
    /// Set when the drain's time is up: close every live session now.
    pub closing: bool,
    /// Bumped by every applied reload.
    pub generation: u64,
}

/// Drain state, reload notices and the count of live sessions.
#[derive(Debug)]
pub struct Control {
    state: watch::Sender<State>,
    /// Bumped after every change of `state` is sent, before the live sessions are woken:
    /// a session re-reads `state` only when this moved (see [`SessionStop::wait`]).
    epoch: AtomicU64,
    /// The wakers of the live sessions' stop futures. Locked only when a session starts
    /// or ends and when `state` changes, never on a session's wake-up.
    wakers: Mutex<Wakers>,
    sessions: AtomicUsize,
    none_left: Notify,
}

impl Default for Control {
    fn default() -> Self {
        Self::new()
    }
}

impl Control {
    /// Serving, no session yet.
    pub fn new() -> Self {
        Self {
            state: watch::Sender::new(State::default()),
            epoch: AtomicU64::new(0),
            wakers: Mutex::new(Wakers::default()),
            sessions: AtomicUsize::new(0),
            none_left: Notify::new(),
        }
    }

    /// Whether the drain has begun.
    pub fn draining(&self) -> bool {
        self.state.borrow().draining
    }

    /// Starts the drain (idempotent).
    pub fn begin_drain(&self) {
        if self
            .state
            .send_if_modified(|s| !std::mem::replace(&mut s.draining, true))
        {
            self.changed();
        }
    }

    /// After a change of `state` was sent: moves the epoch, then wakes every live
    /// session. In this order a session either reads the new epoch after registering its
    /// waker (and then re-reads `state`, which is already the new one), or read the old
    /// one and is woken here.
    fn changed(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        for slot in &wakers.slots {
            if let Slot::Used(waker) = slot {
                waker.wake();
            }
        }
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Tells every live session to close now.
    pub fn close_sessions(&self) {
        self.state.send_modify(|s| {
            s.draining = true;
            s.closing = true;
        });
        self.changed();
    }

    /// Tells live sessions that a new config is in force.
    pub fn reloaded(&self) {
        self.state.send_modify(|s| s.generation += 1);
        self.changed();
    }

    /// Live sessions now.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Acquire)
    }

    /// Counts a live session — or a connect being served (queued, in its upstream
    /// handshake, being refused), which the drain waits for too — until the guard drops.
    pub fn session(self: &Arc<Self>) -> SessionCount {
        self.sessions.fetch_add(1, Ordering::AcqRel);
        SessionCount(self.clone())
    }

    /// Waits until no session is live, or `timeout` passed; whether none is left.
    pub async fn wait_sessions(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.none_left.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.sessions() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.sessions() == 0;
            }
        }
    }

    /// Completes once live sessions are told to close (the drain's deadline).
    pub async fn closed(&self) {
        let mut watch = self.state.subscribe();
        // Only fails when the sender is gone, which it is not while `self` lives.
        let _ = watch.wait_for(|s| s.closing).await;
    }

    /// A receiver of the state.
    pub fn watch(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }

    /// Registers a live session's waker until the returned guard drops.
    fn listen(self: &Arc<Self>) -> Listener {
        let waker = Arc::new(AtomicWaker::new());
        let key = self
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(waker.clone());
        Listener {
            control: self.clone(),
            waker,
            key,
            seen: 0,
        }
    }
}

/// The registered wakers: a slab (a free slot is reused before the vector grows), so
/// it holds no more slots than there were live sessions at once.
#[derive(Default)]
struct Wakers {
    slots: Vec<Slot>,
    /// The first free slot; `slots.len()` when none is.
    free: usize,
}

#[derive(Debug)]
enum Slot {
    Used(Arc<AtomicWaker>),
    /// Free; the next free slot.
    Free(usize),
}

impl std::fmt::Debug for Wakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used = self
            .slots
            .iter()
            .filter(|s| matches!(s, Slot::Used(_)))
            .count();
        f.debug_struct("Wakers")
            .field("registered", &used)
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl Wakers {
    fn insert(&mut self, waker: Arc<AtomicWaker>) -> usize {
        let key = self.free;
        if key == self.slots.len() {
            self.slots.push(Slot::Used(waker));
            self.free = self.slots.len();
        } else {
            let Slot::Free(next) = std::mem::replace(&mut self.slots[key], Slot::Used(waker))
            else {
                unreachable!("the free list leads to a used slot");
            };
            self.free = next;
        }
        key
    }

    fn remove(&mut self, key: usize) {
        debug_assert!(matches!(self.slots[key], Slot::Used(_)));
        self.slots[key] = Slot::Free(self.free);
        self.free = key;
    }
}

/// A live session's registration in [`Control`]: its waker, woken on every change of
/// the state, and the epoch it last saw. Unregistered on drop.
#[derive(Debug)]
struct Listener {
    control: Arc<Control>,
    waker: Arc<AtomicWaker>,
    key: usize,
    seen: u64,
}

impl Listener {
    /// Ready when the control's epoch moved since the last time this was ready (or
    /// [`Self::look`]). Registers the waker first, then reads the epoch (both lock-free),
    /// so a change after the read wakes this task: no wake-up is lost, however spurious
    /// the wake-ups before it.
    fn poll_changed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        let epoch = self.control.epoch();
        if epoch == self.seen {
            return Poll::Pending;
        }
        self.seen = epoch;
        Poll::Ready(())
    }

    /// Completes when the state may have changed since it was last looked at.
    async fn changed(&mut self) {
        std::future::poll_fn(|cx| self.poll_changed(cx)).await;
    }

    /// Notes the epoch before the state is read.
    fn look(&mut self) {
        self.seen = self.control.epoch();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.control
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.key);
    }
}

/// One live session in [`Control`]'s count.
#[derive(Debug)]
pub struct SessionCount(Arc<Control>);

impl Drop for SessionCount {
    fn drop(&mut self) {
        if self.0.sessions.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

/// Why sluice ends a live session itself (defined beside the relays that act on it).
pub use crate::relay::Stop;

/// Re-checks a live session's credential after a reload: `Some(false)` when the
/// config in force no longer accepts it, `None` when its tenant was removed (a removed
/// tenant keeps its live sessions).
pub trait Revocation: Send + Sync + std::fmt::Debug {
    /// Whether the credential is still accepted.
    fn still_authorised(&self) -> Option<bool>;
}

/// What may end one live session early.
#[derive(Debug)]
pub struct SessionStop {
    listener: Listener,
    /// Kept for `accept` mode, to re-check on reload; `None` in `hold` mode (nothing is
    /// closed there on revocation) or when the tenant needs none.
    revocation: Option<Box<dyn Revocation>>,
    idle: Option<Duration>,
    end_by: Option<Instant>,
}

impl SessionStop {
    /// For a session starting now under the `[protection]` limits `protection`.
    pub fn new(
        control: &Arc<Control>,
        protection: &Protection,
        revocation: Option<Box<dyn Revocation>>,
    ) -> Self {
        Self {
            listener: control.listen(),
            revocation,
            idle: protection.idle_timeout,
            end_by: protection.max_session.map(|m| Instant::now() + m),
        }
    }

    /// Whether the state in force now ends the session. Notes the epoch first, so any
    /// later change is seen by [`Listener::changed`].
    fn check(&mut self) -> Option<Stop> {
        self.listener.look();
        let state = *self.listener.control.state.borrow();
        if state.closing {
            return Some(Stop {
                code: CloseCode::Away,
                reason: "shutdown",
            });
        }
        // A tenant removed by a reload keeps its live sessions.
        if self.revocation.as_ref()?.still_authorised() == Some(false) {
            return Some(Stop {
                code: CloseCode::Policy,
                reason: "credential-revoked",
            });
        }
        None
    }

    /// Completes when the session must end: the drain's deadline, a reload that revoked
    /// its credential (`accept` mode), no byte moved for `idle_timeout`, or
    /// `max_session` reached.
    ///
    /// It borrows the stop signal, so that the session's task holds it once (an async
    /// fn keeps what it is given beside its own state).
    pub async fn wait(&mut self, activity: &Moved) -> Stop {
        if let Some(stop) = self.check() {
            return stop;
        }
        if self.idle.is_none() && self.end_by.is_none() {
            // The common case, kept small: every idle session holds this future, and
            // the relay polls it on each of its wake-ups. A `watch` waiter would take a
            // lock shared with every other session on each of those polls (tokio's
            // `Notified` in its waiting state), so the session's own `AtomicWaker` is
            // registered instead and the control's epoch read, both lock-free; the
            // state is read only when the epoch moved.
            loop {
                self.listener.changed().await;
                if let Some(stop) = self.check() {
                    return stop;
                }
            }
        }
        // With timers (their state is large): on the heap, only when configured.
        Box::pin(self.wait_timed(activity)).await
    }

    async fn wait_timed(&mut self, activity: &Moved) -> Stop {
        let mut seen = activity.total();
        let mut idle_at = self.idle.map(|d| Instant::now() + d);
        loop {
            let deadline = match (idle_at, self.end_by) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timer = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.listener.changed() => {
                    if let Some(stop) = self.check() {
                        return stop;
                    }
                }
                () = timer => {
                    let now = Instant::now();
                    if self.end_by.is_some_and(|end| now >= end) {
                        return Stop { code: CloseCode::Away, reason: "max-session" };
                    }
                    if let (Some(idle), Some(_)) = (self.idle, idle_at) {
                        let moved = activity.total();
                        if moved == seen {
                            return Stop { code: CloseCode::Away, reason: "idle-timeout" };
                        }
                        seen = moved;
                        idle_at = Some(now + idle);
                    }
                }
            }
        }
    }
}

/// After the drain's deadline, how long closed sessions get to finish their closing
/// handshakes before the process exits anyway.
pub const CLOSE_GRACE: Duration = Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use super::*;

    fn protection() -> Protection {
        Protection {
            preauth_rate_per_ip: 1.0,
            preauth_burst_per_ip: 1,
            max_pending_handshakes: 1,
            max_pending_per_ip: 1,
            max_header_bytes: 1,
            idle_timeout: None,
            max_session: None,
        }
    }

    fn registered(control: &Control) -> usize {
        let wakers = control.wakers.lock().unwrap();
        wakers
            .slots
            .iter()
            .filter(|s| matches!(s, Slot::Used(_)))
            .count()
    }

    #[test]
    fn ended_sessions_leave_the_registry_and_free_slots_are_reused() {
        let control = Arc::new(Control::new());
        let stops: Vec<_> = (0..3)
            .map(|_| SessionStop::new(&control, &protection(), None))
            .collect();
        assert_eq!(registered(&control), 3);
        drop(stops);
        assert_eq!(registered(&control), 0);
        let again: Vec<_> = (0..3)
            .map(|_| SessionStop::new(&control, &protection(), None))
            .collect();
        assert_eq!(control.wakers.lock().unwrap().slots.len(), 3);
        drop(again);
        assert_eq!(registered(&control), 0);
    }

    /// Reloads racing the sessions' own wake-ups, then the close: every session gets
    /// its `shutdown`, with and without timers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn every_session_is_closed_after_racing_reloads() {
        for round in 0..50 {
            let control = Arc::new(Control::new());
            let moved = Arc::new(Moved::default());
            let tasks: Vec<_> = (0..32)
                .map(|i| {
                    let mut protection = protection();
                    if i % 2 == 1 {
                        protection.idle_timeout = Some(Duration::from_secs(600));
                    }
                    let stop = SessionStop::new(&control, &protection, None);
                    let moved = moved.clone();
                    let mut stop = stop;
                    tokio::spawn(async move { stop.wait(&moved).await })
                })
                .collect();
            for _ in 0..3 {
                control.reloaded();
                tokio::task::yield_now().await;
            }
            control.begin_drain();
            control.close_sessions();
            for task in tasks {
                let stop = tokio::time::timeout(Duration::from_secs(5), task)
                    .await
                    .unwrap_or_else(|_| panic!("round {round}: a session was never closed"))
                    .unwrap();
                assert_eq!(stop.reason, "shutdown");
            }
            assert_eq!(registered(&control), 0);
        }
    }
}
