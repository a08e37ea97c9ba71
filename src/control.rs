//! Beside the flow (a mechanism): drain state, reload notices, what ends a live session early.
//!
//! The process's life beside the flow: graceful drain, hot-reload notices, and what
//! ends a live session early (DESIGN.md: "SIGTERM drains", "hot reload",
//! `[protection] idle_timeout / max_session`).
//!
//! [`Control`] is shared by every connection. Its state is a `watch` channel, so a live
//! session holds one receiver (a pointer and a version) and wakes only when something
//! changes: a reload, the start of the drain, or the drain's deadline. [`SessionStop`]
//! turns those, plus the session's own idle and lifetime limits, into the one future
//! the relays race against.
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

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    /// Bumped before every change of `state` is sent: a live session's stop future is
    /// polled only when this moved (see [`SessionStop::wait`]).
    epoch: std::sync::atomic::AtomicU64,
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
            epoch: std::sync::atomic::AtomicU64::new(0),
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
        self.bump();
        self.state
            .send_if_modified(|s| !std::mem::replace(&mut s.draining, true));
    }

    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Tells every live session to close now.
    pub fn close_sessions(&self) {
        self.bump();
        self.state.send_modify(|s| {
            s.draining = true;
            s.closing = true;
        });
    }

    /// Tells live sessions that a new config is in force.
    pub fn reloaded(&self) {
        self.bump();
        self.state.send_modify(|s| s.generation += 1);
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

    /// A receiver of the state, for a session's [`SessionStop`].
    pub fn watch(&self) -> watch::Receiver<State> {
        self.state.subscribe()
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
    watch: watch::Receiver<State>,
    control: Arc<Control>,
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
            watch: control.watch(),
            control: control.clone(),
            revocation,
            idle: protection.idle_timeout,
            end_by: protection.max_session.map(|m| Instant::now() + m),
        }
    }

    /// Whether the state in force now ends the session.
    fn check(&mut self) -> Option<Stop> {
        let state = *self.watch.borrow_and_update();
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
    pub async fn wait(mut self, activity: &Moved) -> Stop {
        if let Some(stop) = self.check() {
            return stop;
        }
        if self.idle.is_none() && self.end_by.is_none() {
            // The common case, kept small: every idle session holds this future, and
            // the relay polls it on each of its wake-ups. Polling a registered `watch`
            // waiter takes a lock shared with other sessions, so it is polled only when
            // the control's epoch moved (a change is always bumped before it is sent,
            // and the waiter registered on the first poll wakes this task).
            let control = self.control.clone();
            loop {
                let changed = {
                    let changed = self.watch.changed();
                    tokio::pin!(changed);
                    let mut seen = None;
                    std::future::poll_fn(|cx| {
                        let epoch = control.epoch();
                        if seen == Some(epoch) {
                            return std::task::Poll::Pending;
                        }
                        seen = Some(epoch);
                        changed.as_mut().poll(cx)
                    })
                    .await
                };
                if changed.is_err() {
                    // The control is gone: the server is being torn down.
                    return Stop {
                        code: CloseCode::Away,
                        reason: "shutdown",
                    };
                }
                if let Some(stop) = self.check() {
                    return stop;
                }
            }
        }
        // With timers (their state is large): on the heap, only when configured.
        Box::pin(self.wait_timed(activity)).await
    }

    async fn wait_timed(mut self, activity: &Moved) -> Stop {
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
                changed = self.watch.changed() => {
                    if changed.is_err() {
                        // The control is gone: the server is being torn down.
                        return Stop { code: CloseCode::Away, reason: "shutdown" };
                    }
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
