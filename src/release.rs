//! Step 7 of the flow: a session's end, observed in exactly one place.
//!
//! A [`Session`] is created when a client has been admitted and its upstream handshake
//! succeeded, moved into the relay task, and consumed by [`Session::end`] with the
//! relay's [`RelayStats`]. Whatever the session holds for its lifetime (the admission
//! permit) is a field of it and is therefore released exactly once: by `end`, or by
//! `Drop` if the task is cancelled or panics.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::time::Instant;

use crate::admission::Permit;
use crate::control::{Control, SessionCount};
use crate::metrics::TenantMetrics;
use crate::relay::{End, RelayStats};
use crate::tenants::Tenant;
use crate::upstream::Lease;

pub mod memory;

/// Sessions ended in this process so far (every server in it). [`memory::watch`] looks
/// at it to hand freed memory back to the OS after many sessions ended.
pub static SESSIONS_ENDED: AtomicU64 = AtomicU64::new(0);

/// A live proxied session.
#[derive(Debug)]
pub struct Session {
    /// The admission permit (the session's slots) and its place on its endpoint, both
    /// released when the session is dropped.
    _holds: (Permit, Lease),
    /// Its tenant's metrics: `sluice_sessions_active` counts it from start to end.
    metrics: Arc<TenantMetrics>,
    /// Its tenant's handle: a tenant a reload removed stays alive (retired, its gate
    /// counting this session) until its last session ends.
    pub tenant: Arc<Tenant>,
    /// Request id, as sent upstream.
    pub request_id: String,
    /// The client's address.
    pub client: SocketAddr,
    /// The upstream endpoint url.
    pub endpoint: String,
    /// When the relay began.
    pub started: Instant,
    ended: bool,
    /// Its place in the server's count of live sessions (what the drain waits for).
    _count: SessionCount,
}

impl Session {
    /// A session starting now.
    pub fn start(
        holds: (Permit, Lease),
        control: &Arc<Control>,
        metrics: Arc<TenantMetrics>,
        tenant: Arc<Tenant>,
        request_id: String,
        client: SocketAddr,
        endpoint: String,
    ) -> Self {
        metrics.sessions_active.inc();
        Self {
            _holds: holds,
            metrics,
            tenant,
            request_id,
            client,
            endpoint,
            started: Instant::now(),
            ended: false,
            _count: control.session(),
        }
    }

    /// Ends the session after its relay returned.
    pub fn end(self, stats: RelayStats) {
        let why = match stats.end {
            End::Stopped(reason) => Some(reason),
            _ => None,
        };
        self.finish(stats.end.as_str(), Some(stats), why);
    }

    /// Ends a session whose relay never started (the client left before its upgrade
    /// completed, or its connection could not be taken over).
    pub fn abandon(self, why: &str) {
        self.finish("abandoned", None, Some(why));
    }

    fn finish(mut self, end: &str, stats: Option<RelayStats>, why: Option<&str>) {
        self.ended = true;
        let duration = self.started.elapsed();
        // What failed, when an error ended it ("connection reset", "broken pipe"…).
        let error = stats
            .and_then(|s| s.end.error())
            .map(|kind| kind.to_string());
        self.metrics.session_ended(
            duration,
            stats.map_or(0, |s| s.client_to_edge),
            stats.map_or(0, |s| s.edge_to_client),
        );
        tracing::info!(
            target: "sluice::session",
            tenant = %self.tenant.name,
            request_id = %self.request_id,
            client = %crate::logging::Addr(self.client),
            endpoint = %self.endpoint,
            end,
            why,
            error,
            duration_ms = duration.as_millis() as u64,
            client_to_edge = stats.map(|s| s.client_to_edge),
            edge_to_client = stats.map(|s| s.edge_to_client),
            "session ended"
        );
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.metrics.sessions_active.dec();
        SESSIONS_ENDED.fetch_add(1, Ordering::Relaxed);
        if !self.ended {
            tracing::warn!(
                target: "sluice::session",
                tenant = %self.tenant.name,
                request_id = %self.request_id,
                duration_ms = self.started.elapsed().as_millis() as u64,
                "session ended without its relay finishing (task cancelled or panicked)"
            );
        }
    }
}
