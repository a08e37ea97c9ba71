//! Step 5 of the flow: the attempts of one connect, over the endpoints of its group.
//!
//! [`Connector::connect`] asks the [`Pool`] for an endpoint before each attempt, makes
//! the attempt within `handshake_timeout`, tells the pool how it ended (the endpoint's
//! failure or the tenant's, [`AttemptError::request_level`]), and retries on another
//! endpoint first after an exponential backoff with full jitter, all inside
//! `retry_budget` ([`RetryPolicy`]). A pause the edge asked for is waited out within the
//! budget; open circuits are not.

use std::sync::Arc;
use std::time::Duration;

use super::request::UpstreamRequest;
use tokio::time::Instant;

use super::pool::{self, Choice, Pool};
use super::{Attempt, AttemptError, Connected, Connector};
use crate::config::Group;

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
    /// rate). `req` is the request from [`build_request`](super::build_request); its
    /// target is appended to each endpoint's path. Every attempt is reported to
    /// `observe` as it ends, with any `Retry-After` already capped at
    /// `policy.max_pause`; and to the pool, as the endpoint's failure or the tenant's
    /// ([`AttemptError::request_level`]).
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
        req: &UpstreamRequest,
        policy: &RetryPolicy,
        observe: &mut (dyn FnMut(Attempt<'_>) + Send),
        on_pause: &mut (dyn FnMut(Instant) + Send),
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
                    if paused {
                        // The edge paused every endpoint of the group for this tenant.
                        on_pause(until);
                    }
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
                        endpoint: endpoint.url.clone(),
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
            tracing::debug!(
                target: "sluice::upstream",
                endpoint = %endpoint.url,
                error = %error,
                "upstream attempt failed"
            );
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
