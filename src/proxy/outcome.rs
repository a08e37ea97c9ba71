//! Step 7's counterpart before a session exists: how a connect ended — admitted,
//! refused, or left while queued — counted in `sluice_connects_total` and written as
//! one outcome line within the tenant's log budget.

use bytes::Bytes;
use http::{HeaderValue, Response};
use http_body_util::Full;

use crate::metrics::{Outcome, TenantMetrics};
use crate::reject::Rejection;
use crate::upstream::{AttemptError, ClientInfo, Connected, UpstreamFailed};

/// Counts an admitted connect and writes its outcome line.
pub(crate) fn record_admitted(
    tm: &TenantMetrics,
    request_id: &str,
    info: ClientInfo,
    tenant_source: &str,
    waited: Option<std::time::Duration>,
    connected: &Connected,
) {
    let outcome = match waited {
        Some(_) => Outcome::QueuedAdmitted,
        None => Outcome::Admitted,
    };
    tm.outcome(outcome);
    tracing::info!(
        target: "sluice::outcome",
        tenant = tm.name,
        outcome = outcome.as_str(),
        request_id,
        queue_wait_ms = waited.map(|w| w.as_millis() as u64),
        client = %crate::logging::Addr(info.addr),
        tenant_source,
        endpoint = %connected.endpoint,
        handshake_ms = connected.handshake.as_millis() as u64,
        attempts = connected.attempts,
        "connect admitted"
    );
}

/// Writes the outcome line of a client that left while queued or while its upstream
/// handshake ran (when dropped armed), or of an `accept`-mode client that broke the
/// protocol there ([`ClientGone::protocol_error`]).
pub(crate) struct ClientGone<'a> {
    tenant: &'a TenantMetrics,
    request_id: &'a str,
    client: std::net::SocketAddr,
    /// Where the client is; `None` once the outcome is logged elsewhere.
    pub(crate) stage: Option<&'static str>,
    /// When it started to wait for admission.
    since: tokio::time::Instant,
}

impl<'a> ClientGone<'a> {
    /// Armed, at stage `queued`, from now.
    pub(crate) fn new(
        tenant: &'a TenantMetrics,
        request_id: &'a str,
        client: std::net::SocketAddr,
    ) -> Self {
        Self {
            tenant,
            request_id,
            client,
            stage: Some("queued"),
            since: tokio::time::Instant::now(),
        }
    }

    /// How long the client has waited in its queue, while it still does.
    pub(crate) fn queued_for(&self) -> Option<std::time::Duration> {
        (self.stage == Some("queued")).then(|| self.since.elapsed())
    }

    /// The outcome is written elsewhere.
    pub(crate) fn disarm(mut self) {
        self.stage = None;
    }

    /// The client did not leave but broke the WebSocket protocol (or a size limit):
    /// counted and logged as `protocol-error`, with what it did, instead.
    pub(crate) fn protocol_error(mut self, error: &str) {
        self.record(Outcome::ProtocolError, Some(error));
    }

    /// Counts `outcome`, observes the wait of a queued client, and writes one outcome
    /// line within the tenant's log budget; disarms.
    fn record(&mut self, outcome: Outcome, error: Option<&str>) {
        let Some(stage) = self.stage.take() else {
            return;
        };
        self.tenant.outcome(outcome);
        let queued = stage == "queued";
        let waited = self.since.elapsed();
        if queued {
            self.tenant.queue_wait(waited);
        }
        if let Some(suppressed) = self.tenant.log_budget.spend() {
            let message = match outcome {
                Outcome::ProtocolError => {
                    "client broke the WebSocket protocol before its connect was answered"
                }
                _ => "client left before its connect was answered",
            };
            tracing::info!(
                target: "sluice::outcome",
                tenant = self.tenant.name,
                outcome = outcome.as_str(),
                stage,
                queue_wait_ms = queued.then_some(waited.as_millis() as u64),
                error,
                request_id = self.request_id,
                client = %crate::logging::Addr(self.client),
                suppressed,
                "{message}"
            );
        }
    }
}

impl Drop for ClientGone<'_> {
    fn drop(&mut self) {
        self.record(Outcome::ClientGone, None);
    }
}

/// Counts a refusal, logs it as one outcome line (within the tenant's log budget: a
/// storm is summarised by the `suppressed` count of the next line) and builds its
/// response.
pub(crate) fn refuse(
    tm: &TenantMetrics,
    rejection: Rejection,
    request_id: &str,
    info: ClientInfo,
    failed: Option<&UpstreamFailed>,
) -> Response<Full<Bytes>> {
    let upstream_status = record_refusal(tm, &rejection, request_id, info, failed);
    let mut resp = rejection.into_response(request_id);
    if let Some(status) = upstream_status {
        if let Ok(v) = HeaderValue::from_str(&status) {
            resp.headers_mut().insert("x-sluice-upstream-status", v);
        }
    }
    resp
}

/// Counts a refusal (and the queue wait before it) and logs its outcome line within
/// the tenant's log budget. Returns the last upstream status, when there was an attempt.
pub(crate) fn record_refusal(
    tm: &TenantMetrics,
    rejection: &Rejection,
    request_id: &str,
    info: ClientInfo,
    failed: Option<&UpstreamFailed>,
) -> Option<String> {
    tm.outcome(Outcome::Refused(rejection.reason));
    if let Some(waited) = rejection.waited {
        tm.queue_wait(waited);
    }
    let upstream_status = failed.and_then(|f| f.last()).map(AttemptError::label);
    if let Some(suppressed) = tm.log_budget.spend() {
        tracing::info!(
            target: "sluice::outcome",
            tenant = tm.name,
            outcome = rejection.reason.as_str(),
            request_id,
            client = %crate::logging::Addr(info.addr),
            detail = %rejection.detail,
            upstream_status = upstream_status.as_deref(),
            retry_after_s = rejection.retry_after_secs(),
            queue_wait_ms = rejection.waited.map(|w| w.as_millis() as u64),
            suppressed,
            "connect refused"
        );
    }
    upstream_status
}
