//! The flow of one connection, step by step (DESIGN.md): what happens to a request once
//! [`crate::listen`] has read its head. Each step lives in its own module; this one only
//! puts them in order and turns their refusals into responses.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::admission::Admission;
use crate::config::Config;
use crate::config::{QueueMode, Tenant};
use crate::control::{Control, SessionStop};
use crate::metrics::{self, EdgeError, Metrics, Outcome, TenantMetrics};
use crate::parse::{header_has_token, header_tokens};
use crate::reject::{self, Reason, Rejection};
use crate::relay::{self, Leg, Moved};
use crate::release::Session;
use crate::stream::Stream;
use crate::upstream::{
    self, AttemptError, ClientInfo, Connected, Connector, Pools, RetryPolicy, UpstreamFailed,
};
use crate::{accept, auth, tenant};

/// How long a tenant is held back after an edge `429` that named no `Retry-After`.
pub const TENANT_PAUSE_WITHOUT_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Longest `X-Request-Id` kept from a client; longer or odd ones are replaced.
pub const MAX_REQUEST_ID: usize = 128;

/// What every connection shares.
#[derive(Debug)]
pub struct Shared {
    /// The config in force; swapped whole on reload.
    pub config: Arc<arc_swap::ArcSwap<Config>>,
    /// Drain state, reload notices, the count of live sessions.
    pub control: Arc<Control>,
    /// Opens upstream WebSockets (replaced by a reload: its CA file may change).
    pub connector: arc_swap::ArcSwap<Connector>,
    /// The listener's TLS config, when TLS is on (re-read by a reload).
    pub tls: arc_swap::ArcSwapOption<rustls::ServerConfig>,
    /// Per-tenant and edge limits, queues and permits.
    pub admission: Arc<Admission>,
    /// The per-IP limiter on unauthenticated attempts.
    pub preauth: Arc<crate::protect::Preauth>,
    /// The cap on connections in their HTTP phase.
    pub pending: crate::protect::Pending,
    /// Each upstream group's endpoint state: sessions, circuits, pauses.
    pub pools: Pools,
    /// Every metric, and the recent windows of the status page.
    pub metrics: Arc<Metrics>,
}

/// Serves one request: a WebSocket upgrade is resolved, authenticated, connected
/// upstream and relayed; anything else gets its refusal. `address_share` (the
/// connection's count in `protection.max_pending_per_ip`) is given back once the request
/// is authenticated.
pub async fn handle(
    mut req: Request<Incoming>,
    shared: Arc<Shared>,
    info: ClientInfo,
    address_share: Arc<crate::protect::AddressShare>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let request_id = request_id(req.headers());

    // Step 3 comes first in part: an IP that used up its unauthenticated attempts is
    // refused before anything of its request is looked at.
    let ip = info.addr.ip();
    if let Some(left) = shared.preauth.blocked(ip) {
        let rejection = Rejection::new(
            Reason::TooManyAttempts,
            "too many unauthenticated attempts from this address",
        )
        .retry_after(left);
        let tm = shared.metrics.tenant(metrics::UNKNOWN_TENANT);
        return Ok(refuse(&tm, rejection, &request_id, info, None));
    }

    // Step 1 (rest): only WebSocket upgrades are served.
    if !is_websocket_upgrade(&req) {
        shared.preauth.failed(ip);
        tracing::debug!(client = %info.addr, request_id, method = %req.method(), "not a WebSocket upgrade");
        return Ok(reject::upgrade_required(
            "sluice only serves WebSocket upgrades (GET with Upgrade: websocket)",
            &request_id,
        ));
    }
    if let Err(bad) = check_handshake(&req) {
        shared.preauth.failed(ip);
        tracing::debug!(client = %info.addr, request_id, detail = bad.detail(), "malformed WebSocket upgrade");
        return Ok(match bad {
            BadUpgrade::Version => reject::upgrade_required(bad.detail(), &request_id),
            BadUpgrade::Malformed(detail) => reject::bad_request(detail, &request_id),
        });
    }
    let config = shared.config.load_full();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (parts, _body) = req.into_parts();

    // Step 2: tenant.
    let resolved = match tenant::resolve(&config, &parts) {
        Ok(r) => r,
        Err(e) => {
            shared.preauth.failed(ip);
            let rejection = Rejection::new(Reason::TenantUnknown, e.to_string());
            let tm = shared.metrics.tenant(metrics::UNKNOWN_TENANT);
            return Ok(refuse(&tm, rejection, &request_id, info, None));
        }
    };
    let tenant = resolved.tenant.clone();
    let tm = shared.metrics.tenant(&tenant.name);

    // Step 3: authentication.
    let credential = auth::extract(&parts);
    if let Err(e) = auth::authenticate(&tenant, credential.as_ref()) {
        // A token that merely expired proves it was issued: not a guess. Counting it
        // would let a NAT'd fleet retrying stale tokens lock out its own valid agents.
        if !e.is_expiry() {
            shared.preauth.failed(ip);
        }
        let rejection = Rejection::new(Reason::Unauthorized, e.to_string());
        return Ok(refuse(&tm, rejection, &request_id, info, None));
    }
    // Authenticated: from here the tenant's own limits bound this client, not its
    // address's share of the pending places (a fleet behind one NAT address queues).
    address_share.release();

    // Draining: no new sessions (the load balancer sends the client elsewhere).
    if shared.control.draining() {
        return Ok(refuse(&tm, Rejection::draining(), &request_id, info, None));
    }
    // From here the drain waits for this connect (until its session starts or its
    // answer is given).
    let inflight = shared.control.session();

    // `accept` mode: answer 101 now and queue behind it (see crate::accept).
    if tenant.limits.queue_mode == QueueMode::Accept {
        let protocol = match accept::choose_subprotocol(&tenant.limits.subprotocols, &parts) {
            Ok(p) => p,
            Err(detail) => {
                // Loud: a wrong `subprotocols` list refuses a whole tenant's clients.
                if let Some(suppressed) = tm.log_budget.spend() {
                    tracing::warn!(
                        target: "sluice::outcome",
                        client = %info.addr,
                        request_id,
                        tenant = %tenant.name,
                        detail,
                        suppressed,
                        "connect refused (400): no acceptable subprotocol"
                    );
                }
                return Ok(reject::bad_request(&detail, &request_id));
            }
        };
        let mut upstream_req = upstream::build_request(
            &parts,
            &resolved.forward_path,
            info,
            &request_id,
            (&config.identity.header, &tenant.name),
        );
        let key = accept::own_handshake(&mut upstream_req, protocol.as_deref());
        let resp = accept::switching_protocols(&parts, protocol.as_deref(), &request_id);
        // Kept for the session only when there is something a reload could revoke.
        let credential = credential.filter(|_| !matches!(tenant.auth, crate::config::Auth::None));
        let pending = accept::Pending {
            shared: shared.clone(),
            config,
            tenant,
            tm,
            request_id,
            info,
            upstream_req,
            key,
            protocol,
            tenant_source: resolved.source.as_str(),
            credential,
            inflight,
        };
        tokio::spawn(accept::serve(pending, on_upgrade));
        return Ok(resp);
    }

    // If the client goes away from here on until the 101, hyper drops this future; the
    // guard still writes that connection's outcome line (and the queue ticket inside
    // `admit` takes the client out of its queue).
    let mut gone = ClientGone::new(&tm, &request_id, info.addr);

    // Step 4: admission. The permit moves into the Session below and is released when
    // the session ends.
    let admitted = match shared.admission.admit(&tenant.name).await {
        Ok(a) => a,
        Err(rejection) => {
            gone.disarm();
            return Ok(refuse(&tm, rejection, &request_id, info, None));
        }
    };
    gone.stage = Some("upstream-handshake");
    if let Some(waited) = admitted.waited {
        tm.queue_wait(waited);
    }

    // Step 5: upstream handshake.
    let upstream_req = upstream::build_request(
        &parts,
        &resolved.forward_path,
        info,
        &request_id,
        (&config.identity.header, &tenant.name),
    );
    // At the drain's deadline a handshake still under way is given up.
    let connect = connect_upstream(&shared, &config, &tenant, &tm, &request_id, &upstream_req);
    let connected = match tokio::select! {
        r = connect => r,
        () = shared.control.closed() => Err((Rejection::draining(), None)),
    } {
        Ok(c) => c,
        Err((rejection, failed)) => {
            gone.disarm();
            return Ok(refuse(&tm, rejection, &request_id, info, failed.as_ref()));
        }
    };
    gone.disarm();
    record_admitted(
        &tm,
        &tenant,
        &request_id,
        info,
        resolved.source.as_str(),
        admitted.waited,
        &connected,
    );

    // Step 6: answer 101 with the upstream's handshake headers, then relay.
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    for (name, value) in &connected.headers {
        headers.append(name.clone(), value.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(reject::REQUEST_ID_HEADER, v);
    }

    let session = Session::start(
        (admitted.permit, connected.lease),
        &shared.control,
        tm.clone(),
        tenant.clone(),
        request_id,
        info.addr,
        connected.endpoint.url.clone(),
    );
    let edge = connected.leg;
    let stop = SessionStop::new(&shared.control, shared.config.clone(), tenant, None);
    tokio::spawn(async move {
        let client = match on_upgrade.await {
            Ok(upgraded) => match upgraded.downcast::<TokioIo<Stream>>() {
                Ok(parts) => Leg {
                    stream: parts.io.into_inner(),
                    early: parts.read_buf,
                },
                Err(_) => {
                    tracing::error!(request_id = %session.request_id, "client connection of unexpected type");
                    session.abandon("client connection of unexpected type");
                    return;
                }
            },
            Err(e) => {
                tracing::debug!(request_id = %session.request_id, error = %e, "upgrade failed");
                session.abandon("client left before the upgrade completed");
                return;
            }
        };
        let moved = Moved::default();
        let stats = relay::relay(client, edge, &moved, stop.wait(&moved)).await;
        // Step 7: release.
        session.end(stats);
    });
    Ok(resp)
}

/// Step 5 for an admitted client: opens its upstream WebSocket under the group's
/// retry policy, feeding every attempt to the metrics, the log and the adaptive rate
/// (slow handshakes, 503s, 429s and timeouts slow the tenant down, and the edge ceiling
/// when they cannot depend on this request or another tenant sees them too; a 429
/// pauses the tenant for the time asked, at most `upstream.max_pause`).
///
/// # Errors
/// The rejection for the client, with the attempts when there were any.
pub(crate) async fn connect_upstream(
    shared: &Shared,
    config: &Config,
    tenant: &Tenant,
    tm: &TenantMetrics,
    request_id: &str,
    upstream_req: &Request<()>,
) -> Result<Connected, (Rejection, Option<UpstreamFailed>)> {
    let mut observe = |attempt: upstream::Attempt<'_>| {
        observe_attempt(&shared.metrics, tm, &tenant.group.name, request_id, attempt);
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
            shared
                .admission
                .upstream_trouble(&tenant.name, request_level);
        }
        // An edge 429 is about this tenant: hold its clients back for the time asked.
        if let Err(AttemptError::Status {
            status,
            retry_after,
            ..
        }) = attempt.result
        {
            if *status == StatusCode::TOO_MANY_REQUESTS {
                shared.admission.pause_tenant(
                    &tenant.name,
                    retry_after
                        .unwrap_or(TENANT_PAUSE_WITHOUT_RETRY_AFTER)
                        .min(config.upstream.max_pause),
                );
            }
        }
    };
    // The group as it is now, with its pool: a reload since this request was resolved
    // may have changed its endpoints.
    let Some((group, pool)) = shared.pools.group(&tenant.group.name) else {
        let rejection = Rejection::new(
            Reason::UpstreamUnavailable,
            format!(
                "upstream group {} has no pool (config changed?)",
                tenant.group.name
            ),
        )
        .retry_after(config.upstream.handshake_timeout);
        return Err((rejection, None));
    };
    let admission = &shared.admission;
    let connector = shared.connector.load_full();
    match connector
        .connect(
            &group,
            &pool,
            &tenant.name,
            upstream_req,
            &RetryPolicy::of(&config.upstream),
            &mut observe,
            |deadline| admission.retry_token(&tenant.name, deadline),
        )
        .await
    {
        Ok(connected) => {
            tm.upstream_retries(u64::from(connected.attempts.saturating_sub(1)));
            Ok(connected)
        }
        Err(failed) => {
            tm.upstream_retries(failed.attempts.len().saturating_sub(1) as u64);
            let rejection = upstream_rejection(&failed, config, &tenant.group.name);
            Err((rejection, Some(failed)))
        }
    }
}

/// Counts an admitted connect and writes its outcome line.
pub(crate) fn record_admitted(
    tm: &TenantMetrics,
    tenant: &Tenant,
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
        tenant = %tenant.name,
        outcome = outcome.as_str(),
        request_id,
        queue_wait_ms = waited.map(|w| w.as_millis() as u64),
        client = %info.addr,
        tenant_source,
        endpoint = %connected.endpoint.url,
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
                client = %self.client,
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
fn refuse(
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
            client = %info.addr,
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

/// The client's `X-Request-Id` when it is sane, else a new random one.
fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get(upstream::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| {
            !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(new_request_id, str::to_owned)
}

fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Whether a path has a `.` or `..` segment, raw or percent-encoded (with `/` or `\`
/// possibly encoded too, as some servers decode them before normalising).
fn has_dot_segment(path: &str) -> bool {
    let decoded = path
        .to_ascii_lowercase()
        .replace("%2e", ".")
        .replace("%2f", "/")
        .replace("%5c", "/")
        .replace('\\', "/");
    decoded.split('/').any(|seg| seg == "." || seg == "..")
}

/// `GET` with `Connection: upgrade` and `Upgrade: websocket`.
fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == http::Method::GET
        && header_has_token(req.headers(), &header::CONNECTION, "upgrade")
        && header_has_token(req.headers(), &header::UPGRADE, "websocket")
}

/// Why an upgrade request was refused before any tenant was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadUpgrade {
    /// Not WebSocket version 13: `426` naming the version sluice speaks.
    Version,
    /// Anything else malformed: `400`.
    Malformed(&'static str),
}

impl BadUpgrade {
    fn detail(self) -> &'static str {
        match self {
            Self::Version => "unsupported Sec-WebSocket-Version: sluice speaks version 13",
            Self::Malformed(detail) => detail,
        }
    }
}

/// RFC 6455 §4.2.1 (a key and version 13) and what a tunnel needs (no body, one Host,
/// no dot segments).
fn check_handshake<B>(req: &Request<B>) -> Result<(), BadUpgrade> {
    use BadUpgrade::Malformed;
    // RFC 9112 §3.2: more than one Host is a bad request (and would make the host
    // tenant source ambiguous).
    if req.headers().get_all(header::HOST).iter().count() > 1 {
        return Err(Malformed("more than one Host header"));
    }
    // An upgrade has no body. A declared one would be read by sluice, yet announced to
    // the edge, which would then take the first WebSocket bytes for it.
    let content_length = req.headers().get(header::CONTENT_LENGTH);
    if content_length.is_some_and(|v| v.as_bytes() != b"0")
        || req.headers().contains_key(header::TRANSFER_ENCODING)
    {
        return Err(Malformed(
            "a WebSocket upgrade carries no body (Content-Length / Transfer-Encoding)",
        ));
    }
    // Only a path (origin form, or absolute form's path) names what to open upstream;
    // `GET host:80` and `GET *` do not.
    if !req.uri().path().starts_with('/') {
        return Err(Malformed("request target is not a path"));
    }
    // Dot segments could walk out of the endpoint's path prefix.
    if has_dot_segment(req.uri().path()) {
        return Err(Malformed("path contains a . or .. segment"));
    }
    // Two keys or two versions: which one the edge reads is anyone's guess (and the
    // second version would be forwarded unchecked).
    for name in [&header::SEC_WEBSOCKET_KEY, &header::SEC_WEBSOCKET_VERSION] {
        if req.headers().get_all(name).iter().count() > 1 {
            return Err(Malformed(
                "more than one Sec-WebSocket-Key or Sec-WebSocket-Version header",
            ));
        }
    }
    // Headers named in Connection are hop-by-hop and would be dropped on the way to the
    // edge: naming one the upgrade itself needs (the key, the version, the Host…) would
    // send the edge a broken upgrade that the client caused.
    if header_tokens(req.headers(), &header::CONNECTION).any(names_upgrade_header) {
        return Err(Malformed(
            "Connection names a header the upgrade needs (Host or Sec-WebSocket-*)",
        ));
    }
    let version = req.headers().get(header::SEC_WEBSOCKET_VERSION);
    if version.is_none_or(|v| v.as_bytes() != b"13") {
        return Err(BadUpgrade::Version);
    }
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY);
    // A key is 16 random bytes in base64: 24 characters.
    if key.is_none_or(|k| k.len() != 24) {
        return Err(Malformed("missing or malformed Sec-WebSocket-Key"));
    }
    Ok(())
}

/// Whether a `Connection` token names a header the upgrade cannot do without: `Host`
/// and every `Sec-WebSocket-*` header. (`Upgrade` itself belongs there.)
fn names_upgrade_header(token: &str) -> bool {
    const PREFIX: &str = "sec-websocket-";
    token.eq_ignore_ascii_case("host")
        || token
            .get(..PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
}

#[cfg(test)]
mod tests {
    use super::{has_dot_segment, names_upgrade_header};

    #[test]
    fn connection_may_not_name_what_the_upgrade_needs() {
        for bad in [
            "Host",
            "sec-websocket-key",
            "Sec-WebSocket-Version",
            "SEC-WEBSOCKET-PROTOCOL",
        ] {
            assert!(names_upgrade_header(bad), "{bad}");
        }
        for ok in [
            "Upgrade",
            "keep-alive",
            "x-hop",
            "sec-websocket",
            "hostname",
        ] {
            assert!(!names_upgrade_header(ok), "{ok}");
        }
    }

    #[test]
    fn dot_segments_are_found_however_encoded() {
        for bad in [
            "/a/../b",
            "/..",
            "/a/./b",
            "/a/%2e%2E/b",
            "/a/..%2fb",
            "/a/%2E",
            "/a\\..\\b",
        ] {
            assert!(has_dot_segment(bad), "{bad}");
        }
        for ok in ["/", "/a/b", "/a/...", "/a/.well-known", "/v1.2/x"] {
            assert!(!has_dot_segment(ok), "{ok}");
        }
    }
}
