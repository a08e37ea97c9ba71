//! Wiring: the listeners, the accept loop they share, and the drain.
//!
//! [`Server`] binds the proxy port, one listener per runtime that serves it
//! ([`workers`]: one current-thread runtime per core), and runs on each the accept loop
//! ([`accept_loop`], which the admin listener shares) that hands each connection to
//! step 1 ([`listen`]); [`drain`] ends the process's life gracefully.

pub mod drain;
mod head;
mod listen;
pub mod workers;

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
    /// A per-core runtime (listen.workers) could not start.
    #[error("cannot start the proxy's worker threads (listen.workers): {0}")]
    Workers(io::Error),
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
    /// The calling runtime's listener.
    listener: TcpListener,
    /// One listener for each of `workers`' runtimes, in order.
    more: Vec<std::net::TcpListener>,
    workers: workers::Workers,
    runtime: Arc<Runtime>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.listener.local_addr().ok())
            .field("tls", &self.runtime.snapshot().tls.is_some())
            .field("workers", &(self.more.len() + 1))
            .finish()
    }
}

/// Connects the kernel may hold for the proxy's listener before sluice accepts them
/// (capped by `net.core.somaxconn`). tokio's default, 128, overflows when a few hundred
/// clients connect at once: the kernel drops the excess SYNs and each client retries a
/// second later. NGINX uses 511 on Linux.
pub const LISTEN_BACKLOG: u32 = 1024;

// === impl Server ===

/// How long a replica waits at start for its first heartbeat before serving anyway.
const CLUSTER_JOIN: std::time::Duration = std::time::Duration::from_secs(3);

impl Server {
    /// Binds `listen.address` (one listener per runtime that serves it:
    /// `listen.workers`, by default one per core), starts the per-core runtimes beside
    /// the calling one ([`workers`]) and builds the runtime state (the tenant table, the
    /// TLS material).
    ///
    /// # Errors
    /// [`StartError`] when the address cannot be bound, a TLS file is unusable or a
    /// worker thread cannot start.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let count = config
            .listen
            .workers
            .map_or_else(workers::default_count, |n| n as usize);
        Self::bind_with_workers(config, count).await
    }

    /// [`Server::bind`] with `count` runtimes serving the port, whatever
    /// `listen.workers` says (1: only the calling runtime, as an embedding program or a
    /// test that wants its own runtime to run everything may ask).
    ///
    /// # Errors
    /// As [`Server::bind`].
    pub async fn bind_with_workers(config: Config, count: usize) -> Result<Self, StartError> {
        let addr = config.listen.address;
        let count = count.max(1);
        let runtime = Arc::new(Runtime::new(config)?);
        let bind_error = |source| StartError::Bind { addr, source };
        let mut listeners = workers::bind_group(addr, count).map_err(bind_error)?;
        let listener = TcpListener::from_std(listeners.remove(0)).map_err(bind_error)?;
        let workers = workers::Workers::start(listeners.len()).map_err(StartError::Workers)?;
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
        Ok(Self {
            listener,
            more: listeners,
            workers,
            runtime,
        })
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

    /// Accepts connections on every runtime's listener until `shutdown` completes. Live
    /// sessions run in their own tasks and are not waited for here; the per-core
    /// runtimes stop (dropping what they still run) when the returned future is done,
    /// so the caller drains first ([`drain`]) and keeps the `Server`'s runtimes by
    /// awaiting this to the end.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Stopped {
        let runtime = &self.runtime;
        tracing::info!(
            addr = %self.local_addr(),
            tls = runtime.snapshot().tls.is_some(),
            workers = self.more.len() + 1,
            "proxy listening"
        );
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut loops = Vec::with_capacity(self.more.len());
        for (listener, handle) in self.more.into_iter().zip(self.workers.handles()) {
            let runtime = runtime.clone();
            let mut stopped = stopped.clone();
            loops.push(handle.spawn(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(e) => {
                        tracing::error!(error = %e, "a worker cannot accept on the proxy port");
                        return;
                    }
                };
                let stop = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                accept_loop(&listener, "proxy", stop, |tcp, addr| {
                    accept(&runtime, tcp, addr);
                })
                .await;
            }));
        }
        accept_loop(&self.listener, "proxy", shutdown, |tcp, addr| {
            accept(runtime, tcp, addr);
        })
        .await;
        let _ = stop.send(true);
        for accepting in loops {
            let _ = accepting.await;
        }
        tracing::info!("proxy listener stopped");
        Stopped {
            _workers: self.workers,
        }
    }
}

/// The per-core runtimes of a [`Server`] that stopped accepting: they keep serving the
/// sessions they hold (the drain waits for those) until this is dropped.
#[derive(Debug)]
#[must_use = "dropping it stops the per-core runtimes and the sessions they serve"]
pub struct Stopped {
    _workers: workers::Workers,
}

/// Hands an accepted connection to step 1 on the accepting runtime, or answers it
/// `503` when too many handshakes are pending.
fn accept(runtime: &Arc<Runtime>, tcp: TcpStream, addr: SocketAddr) {
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
}
