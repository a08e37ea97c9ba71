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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderMap;
use http::{Request, StatusCode};
use tokio::time::Instant;

mod connect;
pub mod pool;
mod request;

use crate::config::{Endpoint, Group};
use crate::relay::Leg;
pub use connect::{Connector, HANDSHAKE_RESPONSE_HEADERS, TRACE_HEADERS};
pub use pool::{Choice, Lease, Pool, Pools};
pub use request::{build_request, CLIENT_FORWARDING, REQUEST_ID, X_FORWARDED_FOR, X_REAL_IP};

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
    /// The endpoint that answered.
    pub endpoint: Endpoint,
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
    /// HTTP exchange failed.
    #[error("HTTP handshake failed: {0}")]
    Http(#[from] hyper::Error),
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

/// Records an attempt's outcome for `tenant`, through the probe guard when it was the
/// probe.
fn record(
    pool: &Pool,
    index: usize,
    tenant: &str,
    probe: Option<pool::ProbeGuard>,
    outcome: pool::Outcome,
) {
    let now = Instant::now();
    match probe {
        Some(guard) => guard.record(tenant, outcome, now),
        None => pool.record(index, tenant, false, outcome, now),
    }
}

/// How [`Connector::connect`] retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Time for one attempt (`upstream.handshake_timeout`).
    pub timeout: Duration,
    /// Time for all attempts of one client (`upstream.retry_budget`).
    pub budget: Duration,
    /// First backoff step.
    pub backoff_base: Duration,
    /// Largest backoff step.
    pub backoff_max: Duration,
    /// Longest pause an edge `Retry-After` may cause (`upstream.max_pause`).
    pub max_pause: Duration,
}

impl RetryPolicy {
    /// The policy of `[upstream]`.
    pub fn of(config: &crate::config::Upstream) -> Self {
        Self {
            timeout: config.handshake_timeout,
            budget: config.retry_budget,
            backoff_base: config.backoff_base,
            backoff_max: config.backoff_max,
            max_pause: config.max_pause,
        }
    }
}

/// Why no endpoint could even be tried.
#[derive(Debug, Clone, Copy)]
pub struct Blocked {
    /// When the first endpoint becomes usable again.
    pub until: Instant,
    /// Whether the edge asked for the pause (`503` + `Retry-After`); else circuits are
    /// open.
    pub paused: bool,
}

/// No endpoint of the group could be used.
#[derive(Debug)]
pub struct UpstreamFailed {
    /// Every attempt, in order, with its endpoint url.
    pub attempts: Vec<(String, AttemptError)>,
    /// Set when the last word was that every endpoint is paused or open.
    pub blocked: Option<Blocked>,
}

impl UpstreamFailed {
    /// The last attempt's error.
    pub fn last(&self) -> Option<&AttemptError> {
        self.attempts.last().map(|(_, e)| e)
    }

    /// The largest `Retry-After` an upstream sent, if any.
    pub fn upstream_retry_after(&self) -> Option<Duration> {
        self.attempts
            .iter()
            .filter_map(|(_, e)| match e {
                AttemptError::Status { retry_after, .. } => *retry_after,
                _ => None,
            })
            .max()
    }
}

impl Connector {
    /// Opens the upstream WebSocket for one client of `tenant`: picks an endpoint of the
    /// group ([`Pool::choose`]: fewest sessions, circuits and pauses respected, the
    /// endpoint's and the tenant's own), tries it within
    /// `policy.timeout`, and on a connect error, a timeout or a 502/503/504 tries again,
    /// another endpoint first, after an exponential backoff with full jitter, until
    /// `policy.budget` is spent. Before every attempt after the first, `before_retry`
    /// is awaited (it takes an edge handshake token: retries count against the edge's
    /// rate). `req` is the request from [`build_request`]; its target is appended to
    /// each endpoint's path. Every attempt is reported to `observe` as it ends, with any
    /// `Retry-After` already capped at `policy.max_pause`; and to the pool, as the
    /// endpoint's failure or the tenant's ([`AttemptError::request_level`]).
    ///
    /// # Errors
    /// [`UpstreamFailed`] with every attempt when none succeeded within the budget, an
    /// endpoint answered with a status another would answer too, or every endpoint is
    /// paused or has its circuit open for longer than the budget.
    #[allow(clippy::too_many_arguments)]
    pub async fn connect<F, Fut>(
        &self,
        group: &Group,
        pool: &Arc<Pool>,
        tenant: &str,
        req: &Request<()>,
        policy: &RetryPolicy,
        observe: &mut (dyn FnMut(Attempt<'_>) + Send),
        mut before_retry: F,
    ) -> Result<Connected, UpstreamFailed>
    where
        F: FnMut(Instant) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + policy.budget;
        let mut tried = vec![false; group.endpoints.len()];
        let mut attempts = Vec::new();
        let mut blocked = None;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let (index, probe) = match pool.choose(tenant, now, &tried) {
                Choice::Use { index, probe } => (index, probe),
                Choice::Blocked { until, paused } => {
                    // A paused edge is waited for within the budget; open circuits are
                    // not (a down endpoint costs no waiting).
                    blocked = Some(Blocked { until, paused });
                    if paused && until < deadline {
                        tokio::time::sleep_until(until).await;
                        continue;
                    }
                    break;
                }
            };
            blocked = None;
            // Frees the circuit's probe if this attempt never reports.
            let mut probe_guard = probe.then(|| pool.probe_guard(index));
            if !attempts.is_empty() {
                // Backoff with full jitter, then an edge token.
                let step = policy
                    .backoff_base
                    .saturating_mul(1 << (attempts.len() - 1).min(16))
                    .min(policy.backoff_max);
                let pause = step.mul_f64(rand::random::<f64>());
                if now + pause >= deadline {
                    break;
                }
                tokio::time::sleep(pause).await;
                if !before_retry(deadline).await {
                    break;
                }
            }
            let endpoint = &group.endpoints[index];
            let began = Instant::now();
            if began >= deadline {
                break;
            }
            let limit = policy.timeout.min(deadline - began);
            // Set once TCP (and TLS) are up: a timeout before is the endpoint's.
            let mut connected = false;
            let result =
                tokio::time::timeout(limit, self.attempt(endpoint, req, &mut connected)).await;
            let took = began.elapsed();
            let mut error = match result {
                Ok(Ok((leg, headers))) => {
                    record(
                        pool,
                        index,
                        tenant,
                        probe_guard.take(),
                        pool::Outcome::Success,
                    );
                    observe(Attempt {
                        endpoint,
                        result: Ok(()),
                        took,
                    });
                    return Ok(Connected {
                        leg,
                        headers,
                        endpoint: endpoint.clone(),
                        handshake: took,
                        attempts: attempts.len() as u32 + 1,
                        lease: pool.lease(index),
                    });
                }
                Ok(Err(e)) => e,
                Err(_) if connected => AttemptError::Timeout(limit),
                Err(_) => AttemptError::ConnectTimeout(limit),
            };
            error.cap_retry_after(policy.max_pause);
            observe(Attempt {
                endpoint,
                result: Err(&error),
                took,
            });
            tracing::debug!(endpoint = %endpoint.url, error = %error, "upstream attempt failed");
            record(
                pool,
                index,
                tenant,
                probe_guard.take(),
                error.pool_outcome(),
            );
            tried[index] = true;
            let retry = error.try_next();
            attempts.push((endpoint.url.clone(), error));
            if !retry {
                break;
            }
        }
        Err(UpstreamFailed { attempts, blocked })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use connect::retry_after;
    use http::header::{self, HeaderValue};

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
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("99999999999"));
        assert_eq!(retry_after(&headers), Some(crate::config::MAX_MAX_PAUSE));
    }
}
