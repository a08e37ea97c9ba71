//! Step 1 of the flow: accept TCP (TLS optional) and read the HTTP/1.1 request head with
//! hyper, within `listen.header_timeout` and `protection.max_header_bytes`.
//!
//! `header_timeout` is one budget from the TCP accept: the TLS handshake and the request
//! head together (hyper's header read timeout gets what the handshake left). It ends
//! once the head is read: a `hold`-mode request waiting in its tenant's queue is not
//! cut by it. Every answer but the `101` closes the connection, so there is one head per
//! connection. A head larger than the limit is answered `431` by hyper; a client that
//! does not finish TLS and its head in time is disconnected. Neither affects any other
//! connection: each runs in its own task.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::admission::Admission;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protect::{Full, Place};
use crate::proxy::{self, Shared};
use crate::stream::Stream;
use crate::tls::{self, TlsError};
use crate::upstream::{ClientInfo, Connector, Pools};

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

/// The proxy listener, bound and ready to run.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.listener.local_addr().ok())
            .field("tls", &self.shared.tls.load().is_some())
            .finish()
    }
}

// === impl Server ===

impl Server {
    /// Binds `listen.address` and loads the TLS material.
    ///
    /// # Errors
    /// [`StartError`] when the address cannot be bound or a TLS file is unusable.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let tls = match &config.listen.tls {
            Some(files) => Some(tls::server_config(&files.cert, &files.key)?),
            None => None,
        };
        let connector = Connector::new(tls::client_config(config.upstream.ca_file.as_deref())?);
        let preauth = Arc::new(crate::protect::Preauth::new(&config.protection));
        preauth.spawn_cleanup();
        let pending = crate::protect::Pending::new(&config.protection);
        let metrics = Arc::new(Metrics::new(&config));
        let pools = Pools::new(&config);
        let addr = config.listen.address;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                admission: {
                    let admission = Arc::new(Admission::new(&config, &metrics, &pools));
                    admission.spawn_recovery();
                    admission
                },
                pools,
                metrics,
                config: Arc::new(arc_swap::ArcSwap::from_pointee(config)),
                control: Arc::new(crate::control::Control::new()),
                connector: arc_swap::ArcSwap::from_pointee(connector),
                tls: arc_swap::ArcSwapOption::new(tls),
                preauth,
                pending,
            }),
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

    /// The admission state, to observe queues and sessions.
    pub fn admission(&self) -> Arc<Admission> {
        self.shared.admission.clone()
    }

    /// What every connection shares (config, admission, metrics); the admin listener
    /// serves from it.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Accepts connections until `shutdown` completes. Live sessions run in their own
    /// tasks and are not waited for here.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tracing::info!(
            addr = %self.local_addr(),
            tls = self.shared.tls.load().is_some(),
            "proxy listening"
        );
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = &mut shutdown => break,
            };
            match accepted {
                Ok((tcp, addr)) => {
                    let accepted = Instant::now();
                    let place = match self.shared.pending.try_enter(addr.ip()) {
                        Ok(place) => place,
                        Err(full) => {
                            overloaded(&tcp, addr, full);
                            continue;
                        }
                    };
                    let shared = self.shared.clone();
                    let tls = shared.tls.load_full().map(TlsAcceptor::from);
                    tokio::spawn(serve_connection(tcp, addr, accepted, tls, shared, place));
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
        tracing::info!("proxy listener stopped");
    }
}

/// Answer to a connection over `protection.max_pending_handshakes` (or over
/// `max_pending_per_ip` from its address): written without waiting (whatever the socket
/// takes), then the connection is closed. Both caps answer the same: nothing of the
/// request is read, so no tenant is known (a `429` would say "your tenant's quota"), and
/// a client that retries after `Retry-After` finds room once its own idle connections
/// are cut at `listen.header_timeout`.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nx-sluice-reason: overloaded\r\nretry-after: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

fn overloaded(tcp: &TcpStream, addr: SocketAddr, full: Full) {
    // One budget each: a flood from one address does not hide that the global cap binds.
    static ALL: std::sync::LazyLock<crate::logging::LogBudget> =
        std::sync::LazyLock::new(|| crate::logging::LogBudget::new(1, 5));
    static ADDRESS: std::sync::LazyLock<crate::logging::LogBudget> =
        std::sync::LazyLock::new(|| crate::logging::LogBudget::new(1, 5));
    let _ = tcp.try_write(OVERLOADED);
    match full {
        Full::All => {
            if let Some(suppressed) = ALL.spend() {
                tracing::warn!(
                    client = %addr,
                    suppressed,
                    "connection refused (503 overloaded): protection.max_pending_handshakes connections are in their HTTP phase"
                );
            }
        }
        Full::Address => {
            if let Some(suppressed) = ADDRESS.spend() {
                tracing::warn!(
                    client = %addr,
                    suppressed,
                    "connection refused (503 overloaded): protection.max_pending_per_ip connections from this address are in their HTTP phase"
                );
            }
        }
    }
}

/// Serves one connection; `place` (its share of `max_pending_handshakes` and of its
/// address's `max_pending_per_ip`) is held until its HTTP phase ends: the `101` hands
/// the connection over, or it closes.
async fn serve_connection(
    tcp: TcpStream,
    addr: SocketAddr,
    accepted: Instant,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    place: Place,
) {
    let _ = tcp.set_nodelay(true);
    let (header_timeout, max_header_bytes) = {
        let config = shared.config.load();
        (
            config.listen.header_timeout,
            config.protection.max_header_bytes,
        )
    };
    // One budget for TLS and the request head, from the TCP accept.
    let deadline = accepted + header_timeout;
    let stream = match tls {
        None => Stream::Plain(tcp),
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(s)) => Stream::ServerTls(Box::new(s)),
            Ok(Err(e)) => {
                tracing::debug!(client = %addr, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(client = %addr, "TLS handshake timed out");
                return;
            }
        },
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        tracing::debug!(client = %addr, "TLS handshake took the whole header timeout");
        return;
    }
    let info = ClientInfo {
        addr,
        tls: matches!(stream, Stream::ServerTls(_)),
    };
    let share = place.address_share();
    let service = service_fn(move |req| proxy::handle(req, shared.clone(), info, share.clone()));
    // hyper's header read timeout starts as the connection is first polled (now) and
    // stops once the head is read; the next head would get it anew, but every answer
    // but the 101 closes the connection.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(left)
        .max_buf_size(max_header_bytes)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(client = %addr, error = %e, "client connection ended with an error");
    }
    drop(place);
}
