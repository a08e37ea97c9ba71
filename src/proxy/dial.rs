//! Step 5 of the flow for an admitted client: dialling the tenant's upstream group
//! under its retry policy, feeding every attempt to the metrics, the log, the adaptive
//! rates and the tenant's pause, and turning a failure into the client's refusal.

use http::StatusCode;

use crate::config::Config;
use crate::metrics::{self, EdgeError, Metrics, TenantMetrics};
use crate::reject::{Reason, Rejection};
use crate::runtime::Runtime;
use crate::tenants::Tenant;
use crate::upstream::{
    self, AttemptError, Connected, RetryPolicy, UpstreamFailed, UpstreamRequest,
};

/// How long a tenant is held back after an edge `429` that named no `Retry-After`.
pub const TENANT_PAUSE_WITHOUT_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Step 5 for an admitted client: opens its upstream WebSocket under the group's
/// retry policy, feeding every attempt to the metrics, the log and the adaptive rate
/// (slow handshakes, 503s, 429s and timeouts slow the tenant down, and the edge ceiling
/// when they cannot depend on this request or another tenant sees them too; a 429
/// pauses the tenant for the time asked, at most `upstream.max_pause`).
///
/// # Errors
/// The rejection for the client, with the attempts when there were any.
pub(crate) async fn connect_upstream(
    runtime: &Runtime,
    tenant: &Tenant,
    request_id: &str,
    upstream_req: &UpstreamRequest,
) -> Result<Connected, (Rejection, Option<UpstreamFailed>)> {
    // The config, connector, group and pool as they are now: a reload since this
    // request was resolved may have changed the group's endpoints.
    let snapshot = runtime.snapshot();
    let config = &snapshot.config;
    let settings = tenant.settings();
    let tm = &*settings.metrics;
    let group = &settings.group;
    let mut observe = |attempt: upstream::Attempt<'_>| {
        observe_attempt(&runtime.metrics, tm, &group.name, request_id, attempt);
        // Signs of an edge in trouble slow this tenant down, and the edge ceiling when
        // they cannot depend on this tenant's request (or another tenant sees them too).
        let slow = attempt.result.is_ok() && attempt.took > config.upstream.slow_handshake;
        let refused = matches!(
            attempt.result,
            Err(AttemptError::Status { status, .. })
                if *status == StatusCode::SERVICE_UNAVAILABLE
                    || *status == StatusCode::TOO_MANY_REQUESTS
        );
        let timeout = matches!(
            attempt.result,
            Err(AttemptError::Timeout(_) | AttemptError::ConnectTimeout(_))
        );
        if slow || refused || timeout {
            // A slow 101 may be the path's doing as much as a refusal.
            let request_level = match attempt.result {
                Ok(()) => true,
                Err(e) => e.request_level(),
            };
            runtime
                .admission
                .upstream_trouble(&tenant.gate, request_level);
        }
        // An edge 429 is about this tenant: hold its clients back for the time asked.
        if let Err(AttemptError::Status {
            status,
            retry_after,
            ..
        }) = attempt.result
        {
            if *status == StatusCode::TOO_MANY_REQUESTS {
                tenant.gate.pause_for(
                    retry_after
                        .unwrap_or(TENANT_PAUSE_WITHOUT_RETRY_AFTER)
                        .min(config.upstream.max_pause),
                );
            }
        }
    };
    let admission = &runtime.admission;
    match snapshot
        .connector
        .connect(
            group,
            &settings.pool,
            &tenant.name,
            upstream_req,
            &RetryPolicy::of(&config.upstream),
            &mut observe,
            // The pause holds this tenant's clients on the other replicas too.
            &mut |until| tenant.gate.share_pause(until),
            |deadline| admission.retry_token(&tenant.gate, deadline),
        )
        .await
    {
        Ok(connected) => {
            tm.upstream_retries(u64::from(connected.attempts.saturating_sub(1)));
            Ok(connected)
        }
        Err(failed) => {
            tm.upstream_retries(failed.attempts.len().saturating_sub(1) as u64);
            let rejection = upstream_rejection(&failed, config, &group.name);
            Err((rejection, Some(failed)))
        }
    }
}

/// What the client is told when no endpoint could be used. An edge that answered `429`
/// or `503` (or paused the whole group) has no room: `edge-capacity`. No answer
/// (connect errors, timeouts, open circuits) or any other status:
/// `upstream-unavailable`. `Retry-After` is the edge's
/// own or the pause's remaining time when there is one (whichever is later), else about
/// one handshake timeout, jittered so refused clients do not return in lockstep.
fn upstream_rejection(failed: &UpstreamFailed, config: &Config, group: &str) -> Rejection {
    let now = tokio::time::Instant::now();
    let blocked_for = failed
        .blocked
        .map(|b| b.until.saturating_duration_since(now));
    let paused = failed.blocked.is_some_and(|b| b.paused);
    let reason = match failed.last() {
        Some(AttemptError::Status { status, .. })
            if *status == StatusCode::TOO_MANY_REQUESTS
                || *status == StatusCode::SERVICE_UNAVAILABLE =>
        {
            Reason::EdgeCapacity
        }
        _ if paused => Reason::EdgeCapacity,
        _ => Reason::UpstreamUnavailable,
    };
    // The edge's own word is passed on as it is; only sluice's own guess is jittered.
    let known = failed.upstream_retry_after().max(blocked_for);
    let after = match known {
        Some(d) if !d.is_zero() => d,
        _ => config
            .upstream
            .handshake_timeout
            .mul_f64(rand::random_range(0.5..1.5)),
    };
    let detail = match (failed.last(), failed.blocked) {
        (Some(e), _) => format!(
            "no upstream endpoint of group {group} accepted the connection ({} attempts, last: {e})",
            failed.attempts.len()
        ),
        (None, Some(b)) if b.paused => format!(
            "the edge paused every endpoint of group {group} (Retry-After), for every tenant or for this one, beyond the retry budget"
        ),
        (None, Some(_)) => format!(
            "every endpoint of group {group} is failing, for every tenant or for this one (circuits open); not trying until they cool down"
        ),
        (None, None) => format!("no upstream endpoint of group {group} could be tried"),
    };
    Rejection::new(reason, detail).retry_after(after)
}

/// Counts one upstream attempt (`sluice_upstream_responses_total`, the handshake
/// histogram when the edge answered or timed out) and, when it failed, logs it (within
/// the tenant's log budget) and keeps it for the status page.
fn observe_attempt(
    metrics: &Metrics,
    tm: &TenantMetrics,
    group: &str,
    request_id: &str,
    attempt: upstream::Attempt<'_>,
) {
    let status = attempt.label();
    metrics.upstream_response(group, &status);
    if attempt.answered() {
        tm.upstream_handshake(attempt.took);
    }
    let Err(error) = attempt.result else {
        return;
    };
    let trace_id = match error {
        AttemptError::Status { trace_id, .. } => trace_id.clone(),
        _ => None,
    };
    metrics.edge_error(EdgeError {
        time: metrics::unix_now(),
        tenant: tm.name.clone(),
        group: group.to_owned(),
        endpoint: attempt.endpoint.url.clone(),
        status: status.clone(),
        trace_id: trace_id.clone(),
    });
    if let Some(suppressed) = tm.upstream_log_budget.spend() {
        tracing::warn!(
            target: "sluice::upstream",
            tenant = tm.name,
            request_id,
            endpoint = %attempt.endpoint.url,
            status,
            trace_id,
            error = %error,
            took_ms = attempt.took.as_millis() as u64,
            suppressed,
            "upstream handshake failed"
        );
    }
}
