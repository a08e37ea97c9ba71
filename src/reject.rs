//! Beside the flow (DESIGN.md, "Rejections"): every way sluice refuses a client, and the
//! one place a refusal becomes what the client is told — an HTTP status with
//! `x-sluice-reason` and `Retry-After`, the bytes written before a request is read
//! ([`overloaded_response`]), or an `accept`-mode close frame — and names its metric
//! outcome and log word ([`Reason::as_str`]).
//!
//! In `hold` mode a rejection is an HTTP status with a short plain-text body, the
//! `x-sluice-reason` header and, for the 429/503 rows, a `Retry-After` in seconds. In
//! `accept` mode the same rejection is a close frame ([`Rejection::close_code`],
//! [`Rejection::close_reason`]).

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// `Retry-After` of a client refused because sluice is draining.
pub const DRAINING_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Header naming the reason of a rejection.
pub const REASON_HEADER: &str = "x-sluice-reason";
/// Header echoing the request id to the client.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Why a client was refused; the `x-sluice-reason` value and the metric outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No tenant in the request, or an unknown one: 403.
    TenantUnknown,
    /// Missing or invalid credential: 401.
    Unauthorized,
    /// The tenant's queue is full: 429.
    QueueFull,
    /// Waited `queue_timeout` in the queue: 429.
    QueueTimeout,
    /// Edge ceiling or upstream paused, and the queue full or timed out: 503.
    EdgeCapacity,
    /// No upstream endpoint answered within the retry budget: 503.
    UpstreamUnavailable,
    /// Shutting down: 503.
    Draining,
    /// Too many unauthenticated attempts from the client's IP
    /// (`protection.preauth_rate_per_ip`): 429.
    TooManyAttempts,
    /// More than `protection.max_pending_handshakes` connections (or
    /// `max_pending_per_ip` from one address) in their HTTP phase: 503, answered before
    /// the request is read, so counted for `_unknown`.
    Overloaded,
    /// `accept` mode: a queued client sent more than `[accept]`'s held buffer takes
    /// (`held_messages`, `held_bytes`): close `1008` (its HTTP row would be 429).
    HeldBufferFull,
}

impl Reason {
    /// The `x-sluice-reason` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TenantUnknown => "tenant-unknown",
            Self::Unauthorized => "unauthorized",
            Self::QueueFull => "queue-full",
            Self::QueueTimeout => "queue-timeout",
            Self::EdgeCapacity => "edge-capacity",
            Self::UpstreamUnavailable => "upstream-unavailable",
            Self::Draining => "draining",
            Self::TooManyAttempts => "too-many-attempts",
            Self::Overloaded => "overloaded",
            Self::HeldBufferFull => "held-buffer-full",
        }
    }

    /// The HTTP status in `hold` mode.
    pub fn status(self) -> StatusCode {
        match self {
            Self::TenantUnknown => StatusCode::FORBIDDEN,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::QueueFull | Self::QueueTimeout | Self::TooManyAttempts | Self::HeldBufferFull => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::EdgeCapacity | Self::UpstreamUnavailable | Self::Draining | Self::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// Whether the client is told when to come back.
    pub fn has_retry_after(self) -> bool {
        !matches!(
            self,
            Self::TenantUnknown | Self::Unauthorized | Self::HeldBufferFull
        )
    }

    /// The close code in `accept` mode: `1013 Try Again Later` for the 429/503 rows,
    /// `1008 Policy Violation` for 401/403 and an overflowed held buffer, `1001 Going
    /// Away` for `draining`.
    pub fn close_code(self) -> CloseCode {
        match self {
            Self::TenantUnknown
            | Self::Unauthorized
            | Self::TooManyAttempts
            | Self::HeldBufferFull => CloseCode::Policy,
            Self::Draining => CloseCode::Away,
            Self::QueueFull
            | Self::QueueTimeout
            | Self::EdgeCapacity
            | Self::UpstreamUnavailable
            | Self::Overloaded => CloseCode::Again,
        }
    }
}

/// A refusal, with what the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub reason: Reason,
    /// When to come back (only sent for reasons that carry one).
    pub retry_after: Option<Duration>,
    /// One line for the body and the log; never contains a credential.
    pub detail: String,
    /// How long the client waited in its tenant's queue before this refusal, when it
    /// queued.
    pub waited: Option<Duration>,
    /// `accept` mode: the edge broke the handshake sluice asked for (it did not take the
    /// subprotocol): the client is closed with `1011` and the detail, not the reason's
    /// code.
    edge_fault: bool,
}

impl Rejection {
    /// A rejection without `Retry-After`.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            retry_after: None,
            detail: detail.into(),
            waited: None,
            edge_fault: false,
        }
    }

    /// `accept` mode: the edge answered `101` but not with the subprotocol sluice asked
    /// for. Counted `upstream-unavailable`; the client is closed with `1011` and the
    /// detail.
    pub fn edge_broke_handshake(detail: impl Into<String>) -> Self {
        Self {
            edge_fault: true,
            ..Self::new(Reason::UpstreamUnavailable, detail)
        }
    }

    /// `accept` mode: a queued client overflowed its held buffer of `messages`
    /// messages or `bytes` bytes.
    pub fn held_buffer_full(messages: u32, bytes: u32) -> Self {
        Self::new(
            Reason::HeldBufferFull,
            format!("more than {messages} messages or {bytes} bytes sent before admission"),
        )
    }

    /// More connections in their HTTP phase than `cap` (a key of `[protection]`) allows.
    pub fn overloaded(cap: &str) -> Self {
        Self::new(
            Reason::Overloaded,
            format!("protection.{cap} connections are in their HTTP phase"),
        )
        .retry_after(OVERLOADED_RETRY_AFTER)
    }

    /// The refusal of a connect while sluice drains: `Retry-After` gives the load
    /// balancer time to send the client to another replica.
    pub fn draining() -> Self {
        Self::new(Reason::Draining, "sluice is shutting down").retry_after(DRAINING_RETRY_AFTER)
    }

    /// Adds a `Retry-After`.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The `Retry-After` value in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> Option<u64> {
        let after = self.retry_after.filter(|_| self.reason.has_retry_after())?;
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        Some(secs.max(1))
    }

    /// The close code in `accept` mode.
    pub fn close_code(&self) -> CloseCode {
        if self.edge_fault {
            return CloseCode::Error;
        }
        self.reason.close_code()
    }

    /// The close reason in `accept` mode: `"<reason>; retry-after=<seconds>"`, or only the
    /// reason when it carries no delay; with the detail where the client needs it (a
    /// held buffer it overflowed, an edge that broke the handshake). At most
    /// [`MAX_CLOSE_REASON`] bytes (cut at a character boundary).
    pub fn close_reason(&self) -> String {
        let reason = self.reason.as_str();
        let text = match self.retry_after_secs() {
            Some(secs) => format!("{reason}; retry-after={secs}"),
            None if self.edge_fault || self.reason == Reason::HeldBufferFull => {
                format!("{reason}; {}", self.detail)
            }
            None => reason.to_owned(),
        };
        truncate(text, MAX_CLOSE_REASON)
    }

    /// The `hold`-mode HTTP response.
    pub fn into_response(self, request_id: &str) -> Response<Full<Bytes>> {
        let body = format!("{}: {}\n", self.reason.as_str(), self.detail);
        let mut resp = text_response(self.reason.status(), body, request_id);
        let headers = resp.headers_mut();
        headers.insert(
            REASON_HEADER,
            HeaderValue::from_static(self.reason.as_str()),
        );
        if let Some(secs) = self.retry_after_secs() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        // A refused upgrade ends the connection; the client comes back on a new one.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        resp
    }
}

/// The longest close reason a close frame carries (RFC 6455: 125 bytes of payload,
/// 2 of them the code).
pub const MAX_CLOSE_REASON: usize = 123;

/// `Retry-After` of a connection refused `overloaded`: by then the idle connections
/// holding the places are being cut at `listen.header_timeout`.
pub const OVERLOADED_RETRY_AFTER: Duration = Duration::from_secs(1);

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The whole answer to a connection refused [`Reason::Overloaded`], written without
/// reading its request (so without a request id or body), then the connection closes.
pub fn overloaded_response() -> &'static [u8] {
    static BYTES: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        let r = Rejection::overloaded("max_pending_handshakes");
        let status = r.reason.status();
        format!(
            "HTTP/1.1 {} {}\r\n{REASON_HEADER}: {}\r\nretry-after: {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            r.reason.as_str(),
            r.retry_after_secs().unwrap_or(1),
        )
        .into_bytes()
    });
    &BYTES
}

/// A plain-text response carrying the request id.
pub fn text_response(status: StatusCode, body: String, request_id: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // None before a request is read (an empty `x-request-id:` line says nothing).
    if !request_id.is_empty() {
        if let Ok(v) = HeaderValue::from_str(request_id) {
            headers.insert(REQUEST_ID_HEADER, v);
        }
    }
    resp
}

/// `426 Upgrade Required` for a request that is not a WebSocket upgrade, or not of the
/// version sluice speaks; it names WebSocket version 13.
pub fn upgrade_required(detail: &str, request_id: &str) -> Response<Full<Bytes>> {
    let mut resp = text_response(
        StatusCode::UPGRADE_REQUIRED,
        format!("{detail}\n"),
        request_id,
    );
    let headers = resp.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    // Every refusal ends its connection (hyper closes on the `close` token): a client
    // that is not speaking WebSocket should not keep an idle connection open.
    headers.insert(
        header::CONNECTION,
        HeaderValue::from_static("Upgrade, close"),
    );
    headers.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    resp
}

/// `400 Bad Request` for a malformed upgrade.
pub fn bad_request(detail: &str, request_id: &str) -> Response<Full<Bytes>> {
    let mut resp = text_response(StatusCode::BAD_REQUEST, format!("{detail}\n"), request_id);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_retry_after_follow_the_table() {
        let r = Rejection::new(Reason::QueueFull, "x").retry_after(Duration::from_millis(1200));
        assert_eq!(r.retry_after_secs(), Some(2));
        let resp = r.into_response("rid");
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()[REASON_HEADER], "queue-full");
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
        assert_eq!(resp.headers()[REQUEST_ID_HEADER], "rid");
        let r = Rejection::new(Reason::Unauthorized, "x").retry_after(Duration::from_secs(3));
        assert_eq!(r.retry_after_secs(), None);
        let resp = r.into_response("rid");
        assert_eq!(resp.status(), 401);
        assert!(resp.headers().get(header::RETRY_AFTER).is_none());
        assert_eq!(Reason::TenantUnknown.status(), 403);
        assert_eq!(Reason::EdgeCapacity.status(), 503);
        assert_eq!(
            Rejection::new(Reason::Draining, "")
                .retry_after(Duration::from_millis(10))
                .retry_after_secs(),
            Some(1)
        );
    }

    #[test]
    fn the_overloaded_answer_is_built_from_its_reason() {
        assert_eq!(
            overloaded_response(),
            b"HTTP/1.1 503 Service Unavailable\r\nx-sluice-reason: overloaded\r\nretry-after: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn accept_mode_close_frames_follow_the_reason() {
        let r = Rejection::held_buffer_full(2, 65536);
        assert_eq!(r.close_code(), CloseCode::Policy);
        assert_eq!(
            r.close_reason(),
            "held-buffer-full; more than 2 messages or 65536 bytes sent before admission"
        );
        let r = Rejection::edge_broke_handshake("edge chose \"x\"".repeat(20));
        assert_eq!(r.close_code(), CloseCode::Error);
        assert_eq!(r.reason.as_str(), "upstream-unavailable");
        assert!(r.close_reason().len() <= MAX_CLOSE_REASON);
        assert!(r
            .close_reason()
            .starts_with("upstream-unavailable; edge chose"));
        let r = Rejection::new(Reason::QueueFull, "x").retry_after(Duration::from_secs(3));
        assert_eq!(r.close_code(), CloseCode::Again);
        assert_eq!(r.close_reason(), "queue-full; retry-after=3");
    }
}
