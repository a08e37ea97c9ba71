//! Wiring: the admin listener — metrics, health, the status page, `/api/tenants`, reload.
//!
//! The admin listener (`admin.address`, separate from the proxy port): DESIGN.md's
//! "Admin endpoints".
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /metrics` | Prometheus text exposition ([`crate::metrics`]) |
//! | `GET /healthz` | `200` while the process runs |
//! | `GET /readyz` | `200` while the proxy accepts connects, `503` while it drains |
//! | `GET /api/tenants` | JSON: per tenant its limits, live sessions, queue depth, outcome counts, the recent window and the five-minute `history`; the edge ceiling; the last upstream errors |
//! | `GET /` | the status page (`src/admin/status.html`, self-contained: no script, font or style from elsewhere) |
//! | `POST /-/reload` | re-read the config file ([`crate::reload`]): `200` with what changed, `422` with every invalid key when refused |
//!
//! A tenant's `history` in `/api/tenants` ([`History`]) is its last five minutes second
//! by second, which the status page draws as a chart per tenant:
//!
//! ```json
//! "history": {
//!   "start": 1764612000.25,
//!   "step_s": 1,
//!   "admitted": [0,0,…,12,40,40,3],
//!   "refused": [0,0,…,0,5,0,0],
//!   "queue_depth": [null,0,…,0,18,7,0]
//! }
//! ```
//!
//! Each list has 301 entries, oldest first: the last 300 whole seconds, then the
//! current one, still counting; entry `i` covers Unix time `start + i` to
//! `start + i + 1`. `admitted`: connects admitted in that second, at once or after
//! queueing; `refused`: refused for any reason, gone while waiting, or closed for a
//! protocol error (what `recent.rejected_per_min` sums); `queue_depth`: the largest
//! queue depth sampled in that second (`null`: none was). While the admin listener
//! runs it samples every tenant's queue depth twice a second; a connect's outcome and
//! an `/api/tenants` read sample it too.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::metrics::{self, EdgeError, History, Outcome, RecentWindow, TenantMetrics};
use crate::runtime::Runtime;
use crate::tenants::Tenant;

/// The status page, served from the binary.
const STATUS_PAGE: &str = include_str!("admin/status.html");

/// How often the admin listener samples every tenant's queue depth into its history:
/// twice a second, so that no second goes without a sample when a tick comes late.
const DEPTH_SAMPLE_PERIOD: std::time::Duration = std::time::Duration::from_millis(500);

/// The admin listener, bound.
#[derive(Debug)]
pub struct Admin {
    listener: TcpListener,
    runtime: Arc<Runtime>,
}

impl Admin {
    /// Binds `addr`.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(addr: SocketAddr, runtime: Arc<Runtime>) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self { listener, runtime })
    }

    /// The address actually bound.
    ///
    /// # Panics
    /// Never in practice: a bound listener has an address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves until `shutdown` completes, sampling the tenants' queue depths for their
    /// history meanwhile.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tracing::info!(addr = %self.local_addr(), "admin listening");
        let runtime = &self.runtime;
        let serving = crate::server::accept_loop(&self.listener, "admin", shutdown, |tcp, _| {
            let runtime = runtime.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| serve(req, runtime.clone()));
                let timeout = std::time::Duration::from_secs(10);
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(timeout)
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        });
        // The sampler never ends: it stops with the listener (or when this is dropped).
        tokio::select! {
            () = serving => {}
            never = sample_queue_depths(runtime) => match never {},
        }
    }
}

/// Samples every tenant's queue depth into its history, forever.
async fn sample_queue_depths(runtime: &Runtime) -> Infallible {
    let mut tick = tokio::time::interval(DEPTH_SAMPLE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let snapshot = runtime.snapshot();
        for tenant in snapshot.tenants.iter() {
            tenant.settings().metrics.sample_queue_depth();
        }
        // `_unknown` has no queue: sampled (0) so that its chart has no gaps either.
        snapshot.tenants.unknown().sample_queue_depth();
    }
}

async fn serve(
    req: Request<Incoming>,
    runtime: Arc<Runtime>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    let resp = match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "/metrics") => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            runtime.metrics.render(),
        ),
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => {
            if runtime.control.draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        (&Method::GET | &Method::HEAD, "/api/tenants") => {
            let body = serde_json::to_string_pretty(&status(&runtime)).expect("status serialises");
            respond(StatusCode::OK, "application/json", body)
        }
        (&Method::GET | &Method::HEAD, "/") => {
            respond(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE)
        }
        (&Method::POST, "/-/reload") => {
            let s = runtime.clone();
            match tokio::task::spawn_blocking(move || crate::reload::from_file(&s)).await {
                Ok(Ok(applied)) => text(StatusCode::OK, format!("{applied}\n")),
                Ok(Err(e)) => text(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("reload refused, the config in force keeps running:\n{e}\n"),
                ),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "reload failed\n"),
            }
        }
        (_, "/metrics" | "/healthz" | "/readyz" | "/api/tenants" | "/" | "/-/reload") => {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            let allow = if path == "/-/reload" {
                "POST"
            } else {
                "GET, HEAD"
            };
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            resp
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /, /metrics, /healthz, /readyz, /api/tenants\n",
        ),
    };
    Ok(resp)
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body)
}

/// `/api/tenants`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Unix time of this snapshot, seconds.
    pub time: f64,
    /// Upstream handshakes slower than this are dropped by the edge (the danger mark,
    /// `upstream.handshake_timeout`), seconds.
    pub danger_handshake_s: f64,
    /// The `[edge]` ceiling, when configured.
    pub edge: Option<EdgeStatus>,
    /// Every tenant, `_default` and `_unknown` included, by name.
    pub tenants: Vec<TenantStatus>,
    /// The last upstream errors, newest first.
    pub edge_errors: Vec<EdgeError>,
    /// With `[cluster]`: this replica, how it decides now, the replicas it sees.
    pub cluster: Option<crate::cluster::Status>,
}

/// The edge ceiling in `/api/tenants`.
#[derive(Debug, Serialize)]
pub struct EdgeStatus {
    /// `[edge] max_sessions`
    pub max_sessions: u32,
    /// `[edge] handshake_rate`
    pub handshake_rate: f64,
    /// `[edge] handshake_burst`
    pub handshake_burst: u32,
    /// Edge session slots held now.
    pub live: u32,
    /// Tenants waiting for their turn.
    pub waiting: u32,
    /// Handshakes per second allowed now (adaptive).
    pub effective_handshake_rate: Option<f64>,
}

/// One tenant in `/api/tenants`.
#[derive(Debug, Serialize)]
pub struct TenantStatus {
    /// Tenant label.
    pub name: String,
    /// Upstream group (none for `_unknown`).
    pub group: Option<String>,
    /// Effective limits (none for `_unknown`).
    pub limits: Option<LimitsStatus>,
    /// Live proxied sessions.
    pub sessions_active: i64,
    /// With `[cluster]`: live sessions of all replicas together, as last seen in
    /// Redis (`sessions_active` is this replica's).
    pub cluster_sessions_active: Option<u32>,
    /// Clients in the queue.
    pub queue_depth: i64,
    /// Handshakes per second allowed now (the adaptive rate; the configured one while
    /// the edge is healthy).
    pub effective_handshake_rate: f64,
    /// Connects so far by outcome label.
    pub outcomes: std::collections::BTreeMap<&'static str, u64>,
    /// The last minute and the recent upstream handshake times.
    pub recent: RecentWindow,
    /// The last five minutes second by second: admitted, refused, queue depth.
    pub history: History,
    /// A SIP tenant's calls against its cap (`None`: it has no call limits).
    pub calls: Option<CallsStatus>,
    /// Shadow mode (`enforce = false`): what enforcing would have done; `None` while
    /// the tenant is enforced.
    pub shadow: Option<ShadowStatus>,
}

/// A shadow tenant in `/api/tenants`: nothing of this was applied.
#[derive(Debug, Serialize)]
pub struct ShadowStatus {
    /// Sessions enforcing would have let in and that would still live (a session let
    /// in after a wait would end that much later than the real one).
    pub would_live: u32,
    /// Connects that would be waiting in the queue now.
    pub would_queued: u32,
    /// Would-be decisions so far by `would` label (`admit`, `queue`, refusal reasons).
    pub would: std::collections::BTreeMap<&'static str, u64>,
}

/// A SIP tenant's calls in `/api/tenants`.
#[derive(Debug, Serialize)]
pub struct CallsStatus {
    /// Calls counted now.
    pub active: u32,
    /// `max_calls` (`null`: not capped).
    pub max_calls: Option<u32>,
    /// INVITEs held now.
    pub queued: u32,
    /// `call_rate` (`null`: not paced).
    pub call_rate: Option<f64>,
    /// `invite_queue_depth`
    pub invite_queue_depth: u32,
    /// Initial INVITEs so far by outcome label (`reaped`: calls ended by the reaper).
    pub outcomes: std::collections::BTreeMap<&'static str, u64>,
    /// Messages that were not SIP.
    pub unparsed: u64,
}

/// A tenant's effective limits in `/api/tenants`.
#[derive(Debug, Serialize)]
pub struct LimitsStatus {
    /// `max_sessions`
    pub max_sessions: u32,
    /// `handshake_rate`
    pub handshake_rate: f64,
    /// `handshake_burst`
    pub handshake_burst: u32,
    /// `queue_depth`
    pub queue_depth: u32,
    /// `queue_timeout`, seconds
    pub queue_timeout_s: f64,
    /// `queue_mode`
    pub queue_mode: &'static str,
    /// `weight`
    pub weight: u32,
}

fn calls_status(gate: &crate::calls::CallGate) -> CallsStatus {
    let load = gate.load();
    let limits = gate.limits();
    CallsStatus {
        active: load.active,
        max_calls: load.max_calls,
        queued: load.queued,
        call_rate: limits.call_rate,
        invite_queue_depth: limits.invite_queue_depth,
        outcomes: crate::metrics::CallOutcome::ALL
            .iter()
            .map(|o| (o.as_str(), gate.metrics.outcome_count(*o)))
            .collect(),
        unparsed: gate.metrics.unparsed.get(),
    }
}

/// The snapshot `/api/tenants` serves: the tenant table in force.
pub fn status(runtime: &Runtime) -> Status {
    let snapshot = runtime.snapshot();
    let config = &snapshot.config;
    let row = |tm: &TenantMetrics, tenant: Option<&Tenant>| {
        let limits = tenant.map(|t| {
            let l = &t.settings().config.limits;
            LimitsStatus {
                max_sessions: l.max_sessions,
                handshake_rate: l.handshake_rate,
                handshake_burst: l.handshake_burst,
                queue_depth: l.queue_depth,
                queue_timeout_s: l.queue_timeout.as_secs_f64(),
                queue_mode: l.queue_mode.as_str(),
                weight: l.weight,
            }
        });
        TenantStatus {
            name: tm.name.clone(),
            group: tm.group.clone(),
            limits,
            sessions_active: tm.sessions_active.get(),
            cluster_sessions_active: tenant.and_then(|t| t.gate.load().cluster_live),
            queue_depth: tm.queue_depth.get(),
            effective_handshake_rate: tm.effective_rate.get(),
            outcomes: Outcome::ALL
                .iter()
                .map(|o| (o.as_str(), tm.outcome_count(*o)))
                .collect(),
            recent: tm.recent_window(),
            history: tm.history(),
            calls: tenant.and_then(|t| t.settings().calls.as_deref().map(calls_status)),
            shadow: tenant.and_then(Tenant::shadow).map(|v| ShadowStatus {
                would_live: v.load.live,
                would_queued: v.load.queued,
                would: v.counts.into_iter().collect(),
            }),
        }
    };
    let mut tenants: Vec<TenantStatus> = snapshot
        .tenants
        .iter()
        .map(|t| row(&t.settings().metrics, Some(t)))
        .chain(std::iter::once(row(snapshot.tenants.unknown(), None)))
        .collect();
    tenants.sort_by(|a, b| a.name.cmp(&b.name));
    Status {
        time: metrics::unix_now(),
        danger_handshake_s: config.upstream.handshake_timeout.as_secs_f64(),
        edge: config.edge.as_ref().map(|e| {
            let load = runtime.admission.edge_load();
            EdgeStatus {
                max_sessions: e.max_sessions,
                handshake_rate: e.handshake_rate,
                handshake_burst: e.handshake_burst,
                live: load.map_or(0, |l| l.live),
                waiting: load.map_or(0, |l| l.waiting),
                effective_handshake_rate: runtime.metrics.edge_rate().map(|g| g.get()),
            }
        }),
        tenants,
        edge_errors: runtime.metrics.edge_errors(),
        cluster: runtime
            .cluster
            .as_ref()
            .map(crate::cluster::Cluster::status),
    }
}
