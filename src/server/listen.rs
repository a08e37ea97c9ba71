//! Step 1 of the flow: accept TCP (TLS optional) and read the HTTP/1.1 request head with
//! hyper, within `listen.header_timeout` and `protection.max_header_bytes`.
//!
//!
//! `header_timeout` is one budget from the TCP accept: the TLS handshake and the request
//! head together (hyper's header read timeout gets what the handshake left). It ends
//! once the head is read: a `hold`-mode request waiting in its tenant's queue is not
//! cut by it. Every answer but the `101` closes the connection, so there is one head per
//! connection. A head larger than the limit is answered `431` by hyper; a client that
//! does not finish TLS and its head in time is disconnected. Neither affects any other
//! connection: each runs in its own task.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::metrics::Outcome;
use crate::protect::{Full, Place};
use crate::proxy;
use crate::reject::{self, Rejection};
use crate::runtime::Runtime;
use crate::stream::Stream;
use crate::upstream::ClientInfo;

/// Answers a connection over `protection.max_pending_handshakes` (or over
/// `max_pending_per_ip` from its address): [`reject::overloaded_response`], written
/// without waiting (whatever the socket takes), then the connection is closed. Both caps
/// answer the same: nothing of the request is read, so no tenant is known (a `429` would
/// say "your tenant's quota"; it is counted for `_unknown`), and a client that retries
/// after `Retry-After` finds room once its own idle connections are cut at
/// `listen.header_timeout`.
pub(super) fn overloaded(tcp: &TcpStream, addr: SocketAddr, full: Full, runtime: &Runtime) {
    // One budget each: a flood from one address does not hide that the global cap binds.
    static ALL: std::sync::LazyLock<crate::logging::LogBudget> =
        std::sync::LazyLock::new(|| crate::logging::LogBudget::new(1, 5));
    static ADDRESS: std::sync::LazyLock<crate::logging::LogBudget> =
        std::sync::LazyLock::new(|| crate::logging::LogBudget::new(1, 5));
    let _ = tcp.try_write(reject::overloaded_response());
    let (budget, cap) = match full {
        Full::All => (&ALL, "max_pending_handshakes"),
        Full::Address => (&ADDRESS, "max_pending_per_ip"),
    };
    let rejection = Rejection::overloaded(cap);
    let snapshot = runtime.snapshot();
    snapshot
        .tenants
        .unknown()
        .outcome(Outcome::Refused(rejection.reason));
    if let Some(suppressed) = budget.spend() {
        tracing::warn!(
            target: "sluice::outcome",
            client = %addr,
            outcome = rejection.reason.as_str(),
            detail = %rejection.detail,
            suppressed,
            "connection refused (503 overloaded) before its request was read"
        );
    }
}

/// Serves one connection; `place` (its share of `max_pending_handshakes` and of its
/// address's `max_pending_per_ip`) is held until its HTTP phase ends: the `101` hands
/// the connection over, or it closes.
pub(super) async fn serve_connection(
    tcp: TcpStream,
    addr: SocketAddr,
    accepted: Instant,
    tls: Option<TlsAcceptor>,
    runtime: Arc<Runtime>,
    place: Place,
) {
    let _ = tcp.set_nodelay(true);
    let (header_timeout, max_header_bytes) = {
        let config = runtime.config();
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
    let service = service_fn(move |req| proxy::handle(req, runtime.clone(), info, share.clone()));
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
