//! Step 5 of the flow: open the WebSocket to the tenant's edge.
//!
//! The client's upgrade request is rebuilt for the upstream ([`build_request`]): the
//! `/t/{tenant}` prefix and every credential carrier removed, hop-by-hop headers dropped,
//! `Sec-WebSocket-Key/Version/Protocol/Extensions` kept unchanged so subprotocols and
//! extensions are negotiated end to end, and `X-Forwarded-For`, `Forwarded`,
//! `X-Forwarded-Proto` and `X-Request-Id` added. [`Connector::connect`] then picks an
//! endpoint of the group ([`pool`]: fewest sessions, circuit breakers, pauses the edge
//! asked for), performs the handshake within `handshake_timeout` over `ws://` or
//! `wss://`, and retries with exponential backoff and full jitter inside `retry_budget`.
//!
//! Each failed attempt is told to the pool as the endpoint's failure or as the tenant's
//! ([`AttemptError::request_level`]): a connection that could not be made (refused,
//! reset or timed out while connecting, TLS failure) is the endpoint's; anything after
//! the request was sent (a 502/503/504, no answer in time, the connection dropped) may
//! depend on the request, so it is the tenant's, and opens a circuit or pauses for
//! everyone only when another tenant sees the same ([`pool`]). Every edge `Retry-After`
//! is capped at `upstream.max_pause`.
//!
//! The parts, each re-exported here: `request` rebuilds the request ([`build_request`]
//! and the header constants), `connect` makes one attempt on one endpoint
//! ([`Connector`]), `retry` runs the attempts of one connect ([`Connector::connect`],
//! [`RetryPolicy`], [`UpstreamFailed`]), and [`pool`] keeps each group's endpoint state.
//! This file holds what they share: [`ClientInfo`], [`Connected`], [`Attempt`] and
//! [`AttemptError`].

use std::net::SocketAddr;
use std::time::Duration;

use http::header::HeaderMap;
use http::StatusCode;

mod connect;
pub mod pool;
mod request;
mod retry;

use crate::config::Endpoint;
use crate::relay::Leg;
pub use connect::{Connector, HANDSHAKE_RESPONSE_HEADERS, TRACE_HEADERS};
pub use pool::{Choice, Lease, Pool, Pools};
pub use request::{
    build_request, UpstreamRequest, CLIENT_FORWARDING, REQUEST_ID, X_FORWARDED_FOR, X_REAL_IP,
};
pub use retry::{Blocked, RetryPolicy, UpstreamFailed};

/// Where a request came from, for the forwarding headers.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    /// The client's address as seen by sluice.
    pub addr: SocketAddr,
    /// Whether the client connected over TLS.
    pub tls: bool,
}

/// A completed upstream handshake.
#[derive(Debug)]
pub struct Connected {
    /// The upgraded connection to the edge.
    pub leg: Leg,
    /// `Sec-WebSocket-Accept`, `-Protocol` and `-Extensions` of the upstream's `101`.
    pub headers: HeaderMap,
    /// The url of the endpoint that answered (only its url: cloning the whole
    /// [`Endpoint`] cost seven allocations a connect).
    pub endpoint: String,
    /// Time of the successful attempt's handshake.
    pub handshake: Duration,
    /// Attempts made, including the successful one.
    pub attempts: u32,
    /// The session's place on its endpoint (for "fewest sessions" choice); held for the
    /// session's life.
    pub lease: Lease,
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// TCP connect failed.
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    /// TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// The endpoint's host is not a valid TLS server name.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    /// The request could not be written, or no valid answer could be read.
    #[error("HTTP handshake failed: {0}")]
    Http(std::io::Error),
    /// The connection was made but no answer came within `handshake_timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The TCP connect or the TLS handshake did not finish within `handshake_timeout`.
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    /// The upstream answered something other than `101`.
    #[error("answered {status}")]
    Status {
        /// The status.
        status: StatusCode,
        /// Its `Retry-After`, when it gave one in seconds.
        retry_after: Option<Duration>,
        /// The first trace-id header it sent, for the log.
        trace_id: Option<String>,
    },
    /// The connection upgraded but is not a type sluice can relay.
    #[error("upgrade failed: {0}")]
    Upgrade(String),
}

impl AttemptError {
    /// Whether another endpoint may do better: connection problems, timeouts and 502,
    /// 503, 504. Any other status would be the same from every endpoint of the group.
    pub fn try_next(&self) -> bool {
        match self {
            Self::Status { status, .. } => matches!(status.as_u16(), 502..=504),
            _ => true,
        }
    }

    /// Whether the failure happened after the request was sent, so that it may depend
    /// on the request (its path, its tenant): a status, no answer in time, the
    /// connection dropped or the upgrade failed. `false` for failures to connect (TCP,
    /// TLS, their timeout), which no request can cause.
    pub fn request_level(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Tls(_) | Self::ServerName(_) | Self::ConnectTimeout(_) => {
                false
            }
            Self::Http(_) | Self::Timeout(_) | Self::Status { .. } | Self::Upgrade(_) => true,
        }
    }

    /// What the attempt says about its endpoint, or about its tenant on it.
    fn pool_outcome(&self) -> pool::Outcome {
        match self {
            Self::Status {
                status,
                retry_after: Some(after),
                ..
            } if *status == StatusCode::SERVICE_UNAVAILABLE && !after.is_zero() => {
                pool::Outcome::Pause(*after)
            }
            Self::Status { status, .. } if matches!(status.as_u16(), 502..=504) => {
                pool::Outcome::RequestFailure
            }
            Self::Status { .. } => pool::Outcome::Answered,
            e if e.request_level() => pool::Outcome::RequestFailure,
            _ => pool::Outcome::EndpointFailure,
        }
    }

    /// Caps the edge's `Retry-After` at `max`.
    fn cap_retry_after(&mut self, max: Duration) {
        if let Self::Status {
            retry_after: Some(after),
            ..
        } = self
        {
            *after = (*after).min(max);
        }
    }

    /// Short label for logs and metrics: the status code, `timeout` or `error`.
    pub fn label(&self) -> String {
        match self {
            Self::Status { status, .. } => status.as_u16().to_string(),
            Self::Timeout(_) | Self::ConnectTimeout(_) => "timeout".into(),
            _ => "error".into(),
        }
    }
}

/// One upstream handshake attempt, as reported to the observer of
/// [`Connector::connect`] (metrics) when it ends.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The endpoint tried.
    pub endpoint: &'a Endpoint,
    /// `Ok` for a `101`.
    pub result: Result<(), &'a AttemptError>,
    /// How long it took.
    pub took: Duration,
}

impl Attempt<'_> {
    /// The `status` label: `101`, the edge's status, `timeout` or `error`.
    pub fn label(&self) -> String {
        match self.result {
            Ok(()) => "101".to_owned(),
            Err(e) => e.label(),
        }
    }

    /// Whether the edge answered (or the attempt timed out), so its time says something
    /// about the edge's load; connect and TLS errors do not.
    pub fn answered(&self) -> bool {
        matches!(
            self.result,
            Ok(())
                | Err(AttemptError::Status { .. }
                    | AttemptError::Timeout(_)
                    | AttemptError::ConnectTimeout(_))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use connect::retry_after;

    #[test]
    fn failures_to_connect_are_the_endpoints_and_answers_the_tenants() {
        use pool::Outcome;
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let status = |code: u16, after: Option<u64>| AttemptError::Status {
            status: StatusCode::from_u16(code).unwrap(),
            retry_after: after.map(Duration::from_secs),
            trace_id: None,
        };
        let second = Duration::from_secs(1);
        for (error, outcome) in [
            (AttemptError::Connect(io()), Outcome::EndpointFailure),
            (AttemptError::Tls(io()), Outcome::EndpointFailure),
            (
                AttemptError::ConnectTimeout(second),
                Outcome::EndpointFailure,
            ),
            (AttemptError::Timeout(second), Outcome::RequestFailure),
            (AttemptError::Upgrade("x".into()), Outcome::RequestFailure),
            (status(502, None), Outcome::RequestFailure),
            (status(503, None), Outcome::RequestFailure),
            (status(503, Some(0)), Outcome::RequestFailure),
            (status(504, Some(9)), Outcome::RequestFailure),
            (status(503, Some(9)), Outcome::Pause(9 * second)),
            (status(404, None), Outcome::Answered),
            (status(429, Some(9)), Outcome::Answered),
        ] {
            assert_eq!(error.pool_outcome(), outcome, "{error}");
            let endpoint = outcome == Outcome::EndpointFailure;
            assert_eq!(error.request_level(), !endpoint, "{error}");
        }
        let mut big = status(503, Some(100_000));
        big.cap_retry_after(Duration::from_secs(300));
        assert_eq!(big.pool_outcome(), Outcome::Pause(Duration::from_secs(300)));
        assert_eq!(
            retry_after(b"99999999999"),
            Some(crate::config::MAX_MAX_PAUSE)
        );
        assert_eq!(retry_after(b" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
