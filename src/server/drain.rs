//! Wiring: the graceful drain (SIGTERM / SIGINT), once the listener has stopped accepting.
//!
//! See [`crate::control`] for the states.

use std::time::Duration;

use tokio::time::Instant;

use crate::control::CLOSE_GRACE;
use crate::runtime::Runtime;

/// Refuses queued and new connects with `draining`, gives live sessions
/// `shutdown.drain_timeout` to end, then closes the rest and waits (at most
/// [`CLOSE_GRACE`]) for them to finish closing.
pub async fn drain(runtime: &Runtime) {
    let timeout = runtime.config().shutdown.drain_timeout;
    runtime.control.begin_drain();
    runtime.admission.drain();
    tracing::info!(
        live_sessions = runtime.control.sessions(),
        drain_timeout_s = timeout.as_secs_f64(),
        "draining: new and queued connects are refused; live sessions may end on their own"
    );
    if idle(runtime, timeout).await {
        tracing::info!("drain done: every session ended on its own");
        return;
    }
    tracing::info!(
        live_sessions = runtime.control.sessions(),
        "drain timeout: closing the remaining sessions"
    );
    runtime.control.close_sessions();
    if !idle(runtime, CLOSE_GRACE).await {
        tracing::warn!(
            live_sessions = runtime.control.sessions(),
            pending_connections = runtime.pending.in_use(),
            "sessions or connections still closing after the grace period; exiting anyway"
        );
    }
}

/// Waits (at most `timeout`) until no session or connect is being served and no
/// connection is in its HTTP phase (a refusal still being written); whether that came.
async fn idle(runtime: &Runtime, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    if !runtime.control.wait_sessions(timeout).await {
        return false;
    }
    // HTTP-phase connections are few by now (the listener is closed, every answer is
    // a refusal): look every 20 ms.
    while runtime.pending.in_use() > 0 {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    runtime
        .control
        .wait_sessions(deadline.saturating_duration_since(Instant::now()))
        .await
}
