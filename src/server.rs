//! Wiring: the listeners, the one accept loop they share, and the drain.
//!
//! [`Server`] binds the proxy port and runs the one accept loop
//! ([`accept_loop`], which the admin listener shares) that hands each connection to
//! step 1 ([`listen`]); [`drain`] ends the process's life gracefully.

pub mod drain;
mod head;
mod listen;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::runtime::Runtime;
use crate::tls::TlsError;

pub use drain::drain;

/// Pause after an accept error (e.g. out of file descriptors) before accepting again.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr} (listen.address): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// The admin address could not be bound.
    #[error("cannot listen on {addr} (admin.address): {source}")]
    AdminBind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Accepts connections on `listener` until `shutdown` completes, handing each to
/// `serve` (which spawns what it needs); accept errors (typically EMFILE) pause
/// [`ACCEPT_ERROR_PAUSE`] instead of spinning. `what` names the listener in logs.
pub async fn accept_loop(
    listener: &TcpListener,
    what: &'static str,
    shutdown: impl Future<Output = ()>,
    mut serve: impl FnMut(TcpStream, SocketAddr),
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        match accepted {
            Ok((tcp, addr)) => serve(tcp, addr),
            Err(e) => {
                tracing::warn!(error = %e, listener = what, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// The proxy listener, bound and ready to run.
pub struct Server {
    listener: TcpListener,
    runtime: Arc<Runtime>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.listener.local_addr().ok())
            .field("tls", &self.runtime.snapshot().tls.is_some())
            .finish()
    }
}

/// Connects the kernel may hold for the proxy's listener before sluice accepts them
/// (capped by `net.core.somaxconn`). tokio's default, 128, overflows when a few hundred
/// clients connect at once: the kernel drops the excess SYNs and each client retries a
/// second later. NGINX uses 511 on Linux.
pub const LISTEN_BACKLOG: u32 = 1024;

/// The proxy's listener: `SO_REUSEADDR` (as `TcpListener::bind` sets it) and a backlog
/// of [`LISTEN_BACKLOG`].
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

// === impl Server ===

/// How long a replica waits at start for its first heartbeat before serving anyway.
const CLUSTER_JOIN: std::time::Duration = std::time::Duration::from_secs(3);

impl Server {
    /// Binds `listen.address` and builds the runtime (the tenant table, the TLS
    /// material).
    ///
    /// # Errors
    /// [`StartError`] when the address cannot be bound or a TLS file is unusable.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let addr = config.listen.address;
        let runtime = Arc::new(Runtime::new(config)?);
        let listener = listen(addr).map_err(|source| StartError::Bind { addr, source })?;
        if let Some(cluster) = &runtime.cluster {
            // Serve once this replica is published (or, Redis unreachable, on the
            // failure policy: a replica must start while Redis is down).
            let within = runtime
                .config()
                .cluster
                .as_ref()
                .map_or(CLUSTER_JOIN, |c| c.redis_timeout.max(CLUSTER_JOIN));
            if cluster.ready(within).await {
                tracing::info!(replica = %cluster.status().replica_id, replicas = cluster.status().replicas.len(), "cluster: joined, limits shared through Redis");
            } else {
                tracing::warn!(replica = %cluster.status().replica_id, mode = cluster.status().mode, "cluster: Redis not reachable at start; admitting on the failure policy until it is");
            }
        }
        Ok(Self { listener, runtime })
    }

    /// The address actually bound (useful with port 0).
    ///
    /// # Panics
    /// Never in practice: a bound listener has an address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// What every connection shares (config, tenant table, admission, metrics); the
    /// admin listener serves from it.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.clone()
    }

    /// Accepts connections until `shutdown` completes. Live sessions run in their own
    /// tasks and are not waited for here.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let runtime = &self.runtime;
        tracing::info!(
            addr = %self.local_addr(),
            tls = runtime.snapshot().tls.is_some(),
            "proxy listening"
        );
        accept_loop(&self.listener, "proxy", shutdown, |tcp, addr| {
            let accepted = Instant::now();
            let place = match runtime.pending.try_enter(addr.ip()) {
                Ok(place) => place,
                Err(full) => {
                    listen::overloaded(&tcp, addr, full, runtime);
                    return;
                }
            };
            let tls = runtime.snapshot().tls.clone().map(TlsAcceptor::from);
            tokio::spawn(listen::serve_connection(
                tcp,
                addr,
                accepted,
                tls,
                runtime.clone(),
                place,
            ));
        })
        .await;
        tracing::info!("proxy listener stopped");
    }
}
