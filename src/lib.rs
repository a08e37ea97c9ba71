//! sluice: a multi-tenant, capacity-aware WebSocket signaling proxy.
//!
//! sluice stands between a softphone fleet and a contact-center edge. It resolves each
//! connecting client's tenant, authenticates it, enforces the tenant's limits before the
//! edge does, opens the WebSocket to the tenant's edge and relays it both ways.
//!
//! # Layout
//!
//! The modules follow the flow of one connection (`../shared/DESIGN.md`), in layers. A
//! module may use modules of its own layer and of the layers below, never above, and the
//! graph has no cycle: `.ci/run` checks both (`.ci/layers.py` over `cargo modules
//! dependencies --lib`; the table there mirrors this one).
//!
//! ```text
//! entry       cli, tools (edge_sim, spike, demo, sip_lines), plan (capacity planning), main.rs
//!   │
//! wiring      server (listen: step 1; the accept loop; workers: one runtime per core; drain),
//!             admin, reload, signals, run/Bound
//!   │
//! flow        proxy (steps 1–3, dispatch) ─ hold │ accept (steps 4–7) ─ dial (5), outcome
//!   │
//! state       runtime (the shared snapshot), tenants (the tenant table), release (step 7)
//!   │
//! mechanisms  tenant (2), auth (3), admission (4) ─ cluster, upstream (5), relay (6) ─ calls, ws, control, protect
//!   │
//! metrics     metrics
//!   │
//! leaves      config, reject, logging, stream, parse, tls, stats, sip
//! ```
//!
//! One connection, top to bottom:
//!
//! 1. [`server`] accepts TCP (TLS optional, [`tls`]) and reads the HTTP/1.1 upgrade head
//!    itself (httparse) under a header timeout and size limit, answers on the socket and,
//!    after a `101`, runs the session in the same task; [`protect`] caps connections still
//!    in their HTTP phase and unauthenticated attempts per address.
//! 2. [`proxy`] checks the upgrade; [`tenant`] resolves the tenant once, into its handle
//!    in the [`tenants`] table of the [`runtime`]'s snapshot; nothing below looks a
//!    tenant up by name again.
//! 3. [`auth`] checks the tenant's credential (none, API key, JWT) and strips it.
//! 4. [`admission`] decides on the handle's gate: per-tenant session caps, handshake
//!    token buckets and bounded FIFO queues, the `[edge]` ceiling shared by weight;
//!    queued connects are paced out; a shadow tenant (`enforce = false`) goes on at
//!    once while what enforcing would do is counted. It imports neither upstream nor
//!    metrics, and its capacity sits behind an interface a shared backend can
//!    implement: [`cluster`] (`[cluster]`) puts it on Redis, so that several replicas
//!    enforce one set of limits.
//! 5. [`proxy`]'s `dial` opens the upstream WebSocket through [`upstream`] (request,
//!    connect, retry, the endpoint pool of the tenant's group).
//! 6. [`relay`]: in `hold` mode a byte tunnel that holds no buffer while idle; in
//!    `accept` mode ([`proxy::accept`], [`ws`]) a message relay with a per-message hook.
//! 7. [`release`]: the one place a session's end is observed.
//!
//! [`reject`] builds every refusal from one reason; [`metrics`] holds every Prometheus
//! series and the status page's recent windows, [`admin`] serves them; [`control`]
//! carries drain and reload notices to live sessions; [`config`] loads and validates
//! the file; [`reload`] applies a new one as one new snapshot. [`sip`] reads (without
//! allocating) and builds the SIP messages of tenants that speak SIP over WebSocket, for
//! their call caps.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs, unreachable_pub)]

pub mod admin;
pub mod admission;
pub mod auth;
pub mod calls;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod logging;
pub mod metrics;
pub mod parse;
pub mod plan;
pub mod protect;
pub mod proxy;
pub mod reject;
pub mod relay;
pub mod release;
pub mod reload;
pub mod runtime;
pub mod server;
pub mod signals;
pub mod sip;
pub mod stats;
pub mod stream;
pub mod tenant;
pub mod tenants;
pub mod tls;
pub mod tools;
pub mod upstream;
pub mod ws;

#[cfg(test)]
mod test_util;

use std::future::Future;

pub use config::Config;
pub use server::{Server, StartError};

/// Binds the proxy and the admin listener, serves (reloading the config on SIGHUP)
/// until `shutdown` completes, then drains ([`server::drain`]) and returns.
///
/// # Errors
/// [`StartError`] when the listener cannot be bound or TLS material is unusable.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    Bound::bind(config).await?.serve(shutdown, true).await;
    Ok(())
}

/// The proxy and the admin listener, bound (port 0 resolved), not yet serving: what
/// [`run`] does in two steps, so that a test or a tool knows the addresses first.
#[derive(Debug)]
pub struct Bound {
    server: Server,
    admin: admin::Admin,
}

impl Bound {
    /// Binds `listen.address` and `admin.address` and builds the runtime.
    ///
    /// # Errors
    /// [`StartError`] when a listener cannot be bound or TLS material is unusable.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let admin_addr = config.admin.address;
        let server = Server::bind(config).await?;
        Self::with_admin(server, admin_addr).await
    }

    /// [`Bound::bind`] with `workers` runtimes serving the proxy port whatever
    /// `listen.workers` says ([`Server::bind_with_workers`]).
    ///
    /// # Errors
    /// As [`Bound::bind`].
    pub async fn bind_with_workers(config: Config, workers: usize) -> Result<Self, StartError> {
        let admin_addr = config.admin.address;
        let server = Server::bind_with_workers(config, workers).await?;
        Self::with_admin(server, admin_addr).await
    }

    async fn with_admin(
        server: Server,
        admin_addr: std::net::SocketAddr,
    ) -> Result<Self, StartError> {
        let admin = admin::Admin::bind(admin_addr, server.runtime())
            .await
            .map_err(|source| StartError::AdminBind {
                addr: admin_addr,
                source,
            })?;
        Ok(Self { server, admin })
    }

    /// The proxy's address.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        self.admin.local_addr()
    }

    /// What every connection shares.
    pub fn runtime(&self) -> std::sync::Arc<runtime::Runtime> {
        self.server.runtime()
    }

    /// Serves (reloading the config on SIGHUP when `hangups`) until `shutdown`
    /// completes, then drains ([`server::drain`]); returns when the drain has, where the
    /// process exits.
    pub async fn serve(self, shutdown: impl Future<Output = ()>, hangups: bool) {
        let runtime = self.server.runtime();
        // The admin listener keeps serving during the drain: /readyz says 503.
        let admin = tokio::spawn(self.admin.run(std::future::pending()));
        let hangups = hangups.then(|| tokio::spawn(signals::reload_on_hangup(runtime.clone())));
        let ready = runtime.clone();
        // The per-core runtimes serve their sessions through the drain.
        let workers = self
            .server
            .run(async move {
                shutdown.await;
                // Not ready from the first moment, before the listener closes.
                ready.control.begin_drain();
            })
            .await;
        server::drain(&runtime).await;
        if let Some(cluster) = &runtime.cluster {
            cluster.leave().await;
        }
        if let Some(h) = hangups {
            h.abort();
        }
        admin.abort();
        drop(workers);
    }
}
