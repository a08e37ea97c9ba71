//! Step 1 of the flow: accept TCP (TLS optional), read the HTTP/1.1 request head within
//! `listen.header_timeout` and `protection.max_header_bytes`, serve it, and after a
//! `101` run the session in the same task.
//!
//! `header_timeout` is one budget from the TCP accept: the TLS handshake and the request
//! head together. It ends once the head is read: a `hold`-mode request waiting in its
//! tenant's queue is not cut by it (but is dropped, queue place and all, when its client
//! closes the connection). Every answer but the `101` closes the connection, so there is
//! one head per connection. A head larger than the limit is answered `431`, one that is
//! not HTTP `400`; a client that does not finish TLS and its head in time is
//! disconnected. Neither affects any other connection: each runs in its own task.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::head::{self, HeadError};
use crate::metrics::Outcome;
use crate::protect::{Full, Place};
use crate::proxy;
use crate::reject::{self, Rejection};
use crate::relay::Leg;
use crate::runtime::Runtime;
use crate::stream::Stream;
use crate::upstream::ClientInfo;

/// How many header lines a head may have, for the `431` text.
const MAX_HEADERS_TEXT: &str = "100";

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

/// Serves one connection: its HTTP phase ([`handshake`]), then after a `101` its
/// session, in this task.
///
/// The HTTP phase's state lives on the heap and is freed when the session starts, so an
/// idle session holds only the relay's state (on the heap too: the task's own future is
/// a few words, which `tokio::spawn` moves cheaply). (Not an `async fn`: its arguments
/// would stay in the task's state for the session's whole life.)
pub(super) fn serve_connection(
    tcp: TcpStream,
    addr: SocketAddr,
    accepted: Instant,
    tls: Option<TlsAcceptor>,
    runtime: Arc<Runtime>,
    place: Place,
) -> impl std::future::Future<Output = ()> + Send {
    let handshake = Box::pin(handshake(tcp, addr, accepted, tls, runtime, place));
    async move {
        if let Some((then, client)) = handshake.await {
            // Boxed too: the task's own future stays a few words, so `tokio::spawn`
            // moves a few words into the task instead of the session's whole state.
            Box::pin(then.run(client)).await;
        }
    }
}

/// The HTTP phase of one connection, up to its answer; after a `101`, the session to
/// run and the client's side of it. `place` (its share of `max_pending_handshakes` and
/// of its address's `max_pending_per_ip`) is held until the answer is written.
async fn handshake(
    tcp: TcpStream,
    addr: SocketAddr,
    accepted: Instant,
    tls: Option<TlsAcceptor>,
    runtime: Arc<Runtime>,
    place: Place,
) -> Option<(proxy::Then, Leg)> {
    // On Linux the listener's TCP_NODELAY is inherited (`workers::bind_group`).
    #[cfg(not(target_os = "linux"))]
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
        // Boxed: the handshake's state is large and must not stay in the session's task.
        Some(acceptor) => {
            match tokio::time::timeout_at(deadline, Box::pin(acceptor.accept(tcp))).await {
                Ok(Ok(s)) => Stream::ServerTls(Box::new(s)),
                Ok(Err(e)) => {
                    tracing::debug!(client = %addr, error = %e, "TLS handshake failed");
                    return None;
                }
                Err(_) => {
                    tracing::debug!(client = %addr, "TLS handshake timed out");
                    return None;
                }
            }
        }
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        tracing::debug!(client = %addr, "TLS handshake took the whole header timeout");
        return None;
    }
    let info = ClientInfo {
        addr,
        tls: matches!(stream, Stream::ServerTls(_)),
    };
    let mut stream = stream;
    let mut buf = BytesMut::new();
    let head = match tokio::time::timeout_at(
        deadline,
        head::read_head(&mut stream, &mut buf, max_header_bytes),
    )
    .await
    {
        Ok(Ok(head)) => head,
        Ok(Err(HeadError::Gone)) => return None,
        Ok(Err(HeadError::TooLarge)) => {
            let resp = reject::text_response(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("request head over protection.max_header_bytes ({max_header_bytes} bytes) or {MAX_HEADERS_TEXT} lines\n"),
                "",
            );
            let _ = head::write_response(&mut stream, resp, false).await;
            let _ = stream.shutdown().await;
            return None;
        }
        Ok(Err(HeadError::TargetTooLong)) => {
            let resp = reject::text_response(
                StatusCode::URI_TOO_LONG,
                format!("request target over {} bytes\n", head::MAX_TARGET),
                "",
            );
            let _ = head::write_response(&mut stream, resp, false).await;
            let _ = stream.shutdown().await;
            return None;
        }
        Ok(Err(HeadError::Malformed(detail))) => {
            tracing::debug!(client = %addr, detail, "malformed request head");
            let resp = reject::bad_request(&detail, "");
            let _ = head::write_response(&mut stream, resp, false).await;
            let _ = stream.shutdown().await;
            return None;
        }
        Err(_) => {
            tracing::debug!(client = %addr, "request head not read within listen.header_timeout");
            return None;
        }
    };
    let head_only = head.request.method() == http::Method::HEAD;
    // A body on anything else is never read: its answer (426) closes the connection.
    let answer = if head.has_body && head.request.headers().contains_key(http::header::UPGRADE) {
        proxy::Answer::from(reject::bad_request(
            "a WebSocket upgrade request has no body",
            "",
        ))
    } else {
        // The request is served (it may wait in its tenant's queue) while the client is
        // watched: if it leaves, the request is dropped (its queue place with it).
        let serve = Box::pin(proxy::handle(
            head.request,
            runtime.clone(),
            info,
            place.address_share(),
        ));
        tokio::select! {
            answer = serve => answer,
            () = head::client_gone(&mut stream, &mut buf, max_header_bytes) => return None,
        }
    };
    let upgrade = answer.response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let written = head::write_response(&mut stream, answer.response, head_only).await;
    // The HTTP phase is over: the connection no longer counts as pending.
    drop(place);
    if !upgrade {
        // Closed as hyper closed it: over TLS a `close_notify` first, so that the client
        // sees the answer end cleanly rather than a truncated connection.
        let _ = stream.shutdown().await;
    }
    let then = answer.then.filter(|_| upgrade)?;
    if let Err(e) = written {
        tracing::debug!(client = %addr, error = %e, "client left before its 101 was written");
        then.abandon("client left before the upgrade completed");
        return None;
    }
    // Whatever the client sent after its head is the first the relay passes on; the
    // head's buffer itself is not kept for the session.
    let early = if buf.is_empty() {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(&buf)
    };
    drop(buf);
    Some((then, Leg { stream, early }))
}
