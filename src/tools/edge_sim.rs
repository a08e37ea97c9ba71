//! Entry: `sluice edge-sim`, a capacity-limited edge that refuses like a cloud edge does.
//!
//! `sluice edge-sim`: a WebSocket server that behaves like a capacity-limited cloud
//! edge, to reproduce the field problem on a laptop.
//!
//! Per organisation (from a header, default `x-tenant-id`, else the query parameter
//! `org`, else `default`) it caps live sessions and handshakes per second (a sliding
//! one-second window: the 11th handshake inside a second at 10/s is refused). Above all
//! organisations it caps live sessions, and models the node's CPU: the handshakes of
//! the last second against its `capacity`. Below 85 % of capacity a handshake takes
//! `base_latency`; above, latency climbs steeply toward the 3 s mark; a handshake that
//! would take longer than `drop_after` is dropped unanswered after that time; beyond
//! capacity, handshakes are refused. Every refusal is a `503` (configurable) with
//! `Retry-After` and an `x-trace-id`, and counts as a **violation**: a handshake the
//! edge received beyond its own limits.
//!
//! Sessions speak `echo`, or `sip` (subprotocol `sip` chosen when offered): a registrar
//! (REGISTER → 200 with the bindings and `Expires`) and a call server with its own call
//! cap per organisation (`org_max_calls`), like a contact-center edge ([`calls`]). An
//! initial INVITE above the cap is answered `503` with `Retry-After` and counted in
//! `calls_refused` (the edge had to refuse it); one below is answered `100`, `180`, and
//! `200 OK` with a Contact and an SDP answer after `call_answer_delay` ([`sip`]). A call
//! counts until a non-2xx final answer (`487` to a CANCEL while ringing), a BYE from the
//! client (`481` for an unknown one), the edge's own BYE after `call_hangup_after`, or
//! the session's end. ACK is absorbed, a re-INVITE answered `200` without counting,
//! OPTIONS → 200. `GET /stats` serves the counters as JSON ([`SimStats`]), with the
//! Call-IDs of the initial INVITEs in the order received (`invite_order`).

mod calls;
mod sip;
mod stats;

pub use stats::{CallStats, OrgStats, SimStats};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::stats::quantile;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// What a session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionMode {
    /// Every text or binary message is sent back.
    Echo,
    /// A SIP registrar and call server with its own call cap (`--org-max-calls`).
    Sip,
}

/// The simulator's limits and behaviour (`sluice edge-sim --help`).
#[derive(Debug, Clone, clap::Args)]
pub struct SimConfig {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7001")]
    pub listen: SocketAddr,
    /// Live sessions per organisation.
    #[arg(long, default_value_t = 50)]
    pub org_max_sessions: u32,
    /// Handshakes per organisation in any one-second window.
    #[arg(long, default_value_t = 10)]
    pub org_handshake_rate: u32,
    /// Live sessions across all organisations.
    #[arg(long, default_value_t = 1000)]
    pub max_sessions: u32,
    /// Handshakes per second the node can process; latency climbs above 85 % of it and
    /// handshakes beyond it are refused.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub capacity: u32,
    /// Handshake latency of an unloaded node.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pub base_latency: Duration,
    /// Handshakes that would take longer are dropped unanswered after this long.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub drop_after: Duration,
    /// Status of a refusal (503 as the field sees it, or 429; 400–599).
    #[arg(long, default_value_t = 503, value_parser = clap::value_parser!(u16).range(400..=599))]
    pub reject_status: u16,
    /// Header naming the organisation (sluice's `tenant_identity.header`).
    #[arg(long, default_value = "x-tenant-id")]
    pub org_header: String,
    /// What sessions speak.
    #[arg(long, value_enum, default_value_t = SessionMode::Echo)]
    pub mode: SessionMode,
    /// Concurrent SIP calls per organisation (`--mode sip`; 0: unlimited). An initial
    /// INVITE beyond it is answered 503 with Retry-After and counted in `calls_refused`.
    #[arg(long, default_value_t = 0)]
    pub org_max_calls: u32,
    /// How long an INVITE rings (100 and 180 at once) before its 200 OK (`--mode sip`);
    /// a CANCEL meanwhile ends it with 487.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub call_answer_delay: Duration,
    /// The edge hangs up a call that has been up this long: it sends its own BYE and
    /// the call ends (`--mode sip`; default: never).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub call_hangup_after: Option<Duration>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            org_max_sessions: 50,
            org_handshake_rate: 10,
            max_sessions: 1000,
            capacity: 100,
            base_latency: Duration::from_millis(20),
            drop_after: Duration::from_secs(3),
            reject_status: 503,
            org_header: "x-tenant-id".to_owned(),
            mode: SessionMode::Echo,
            org_max_calls: 0,
            call_answer_delay: Duration::from_millis(100),
            call_hangup_after: None,
        }
    }
}

/// Handshake latencies kept for the quantiles.
const LATENCIES_KEPT: usize = 100_000;
/// `Retry-After` of a `503` for the call cap, seconds.
pub const CALL_RETRY_AFTER_S: u64 = 5;
/// Call-IDs kept in `invite_order`.
pub const INVITE_ORDER_KEPT: usize = 10_000;
/// Organisations tracked; more names share one `other` entry (bounded memory).
const MAX_ORGS: usize = 1000;

#[derive(Debug, Default)]
struct Org {
    stats: OrgStats,
    window: VecDeque<Instant>,
}

#[derive(Debug, Default)]
struct State {
    stats: SimStats,
    /// Refusing everything until then (an outage).
    down_until: Option<Instant>,
    orgs: HashMap<String, Org>,
    window: VecDeque<Instant>,
    latencies: VecDeque<f64>,
    invite_order: VecDeque<String>,
}

/// The entry of a session's organisation in `orgs` (`other` past [`MAX_ORGS`]).
fn org_mut<'a>(orgs: &'a mut HashMap<String, Org>, org: &str) -> Option<&'a mut Org> {
    let key = if orgs.contains_key(org) { org } else { "other" };
    orgs.get_mut(key)
}

#[derive(Debug)]
struct Sim {
    config: SimConfig,
    /// The address it listens on (the SIP Contact and Via it writes).
    addr: SocketAddr,
    state: Mutex<State>,
}

/// A running simulator.
#[derive(Debug, Clone)]
pub struct EdgeSim {
    addr: SocketAddr,
    sim: Arc<Sim>,
}

enum Decision {
    /// Over this limit; come back after this many seconds.
    Refuse(&'static str, u64),
    Accept {
        latency: Duration,
    },
}

impl EdgeSim {
    /// Binds `config.listen` and serves in the background.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start(config: SimConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let sim = Arc::new(Sim {
            config,
            addr,
            state: Mutex::default(),
        });
        let s = sim.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let sim = s.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| serve(req, sim.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(Self { addr, sim })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://addr`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        self.sim.stats()
    }

    /// Takes the edge down for `duration` from now: every handshake is answered with the
    /// reject status and a `Retry-After` naming the time left.
    pub fn outage(&self, duration: Duration) {
        self.sim.lock().down_until = Some(Instant::now() + duration);
    }
}

impl Sim {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stats(&self) -> SimStats {
        let (mut stats, mut l, orgs) = {
            let state = self.lock();
            let orgs: BTreeMap<String, OrgStats> = state
                .orgs
                .iter()
                .map(|(k, v)| (k.clone(), v.stats.clone()))
                .collect();
            let l: Vec<f64> = state.latencies.iter().copied().collect();
            let mut stats = state.stats.clone();
            stats.invite_order = state.invite_order.iter().cloned().collect();
            (stats, l, orgs)
        };
        // Sorted outside the lock: handshakes keep being decided meanwhile.
        l.sort_by(f64::total_cmp);
        stats.handshake_p50 = quantile(&l, 0.5);
        stats.handshake_p99 = quantile(&l, 0.99);
        stats.orgs = orgs;
        stats
    }

    /// Decides a handshake of `org` arriving now; an accepted one holds its session
    /// (counted live) from here.
    fn decide(&self, org: &str) -> Decision {
        let c = &self.config;
        let now = Instant::now();
        let second_ago = now.checked_sub(Duration::from_secs(1));
        let prune = |w: &mut VecDeque<Instant>| {
            while w
                .front()
                .is_some_and(|t| second_ago.is_some_and(|s| *t <= s))
            {
                w.pop_front();
            }
        };
        let mut state = self.lock();
        let state = &mut *state;
        state.stats.handshakes += 1;
        // Down for maintenance: every handshake is refused until it is back up, and
        // told when that is. These are not violations: the clients could not know.
        if let Some(until) = state.down_until.filter(|u| *u > now) {
            state.stats.refused_outage += 1;
            state.stats.rejected += 1;
            let left = until.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            return Decision::Refuse("outage", secs.max(1));
        }
        prune(&mut state.window);
        state.window.push_back(now);
        let load = state.window.len() as f64 / f64::from(c.capacity.max(1));
        let key = if state.orgs.contains_key(org) || state.orgs.len() < MAX_ORGS {
            org
        } else {
            "other"
        };
        let o = state.orgs.entry(key.to_owned()).or_default();
        o.stats.handshakes += 1;
        prune(&mut o.window);
        let refused = if state.stats.live >= c.max_sessions {
            Some("sessions")
        } else if load > 1.0 {
            Some("capacity")
        } else if o.window.len() >= c.org_handshake_rate as usize {
            Some("org-rate")
        } else if o.stats.live >= c.org_max_sessions {
            Some("org-sessions")
        } else {
            None
        };
        if let Some(limit) = refused {
            o.stats.rejected += 1;
            state.stats.rejected += 1;
            state.stats.violations += 1;
            *state
                .stats
                .violations_by_limit
                .entry(limit.to_owned())
                .or_default() += 1;
            let retry = if limit.ends_with("sessions") { 5 } else { 1 };
            return Decision::Refuse(limit, retry);
        }
        o.window.push_back(now);
        o.stats.live += 1;
        o.stats.peak = o.stats.peak.max(o.stats.live);
        state.stats.live += 1;
        state.stats.peak = state.stats.peak.max(state.stats.live);
        // Latency climbs steeply once the node is past 85 % of its capacity.
        let over = ((load - 0.85) / 0.15).max(0.0);
        let latency = c.base_latency + c.drop_after.mul_f64(over * over);
        Decision::Accept { latency }
    }

    /// The end of a session held by `decide` (or of one dropped before its `101`).
    fn end(&self, org: &str, outcome: End) {
        let mut state = self.lock();
        let state = &mut *state;
        state.stats.live -= 1;
        if let Some(o) = org_mut(&mut state.orgs, org) {
            o.stats.live -= 1;
            if outcome == End::Dropped {
                o.stats.dropped += 1;
            }
        }
        if outcome == End::Dropped {
            state.stats.dropped += 1;
            state.stats.violations += 1;
            *state
                .stats
                .violations_by_limit
                .entry("slow".to_owned())
                .or_default() += 1;
        }
    }

    fn accepted(&self, org: &str, latency: Duration) {
        let mut state = self.lock();
        state.stats.accepted += 1;
        if state.latencies.len() == LATENCIES_KEPT {
            state.latencies.pop_front();
        }
        state.latencies.push_back(latency.as_secs_f64());
        if let Some(o) = org_mut(&mut state.orgs, org) {
            o.stats.accepted += 1;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Closed,
    Dropped,
}

/// Holds a session's place in the counters; gives it back once, when dropped.
struct Held {
    sim: Arc<Sim>,
    org: String,
    end: End,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.sim.end(&self.org, self.end);
    }
}

fn org_of<B>(req: &Request<B>, header_name: &str) -> String {
    let from_header = req
        .headers()
        .get(header_name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let from_query = || {
        req.uri().query().and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "org")
                .map(|(_, v)| v.into_owned())
        })
    };
    from_header
        .or_else(from_query)
        .filter(|o| !o.is_empty() && o.len() <= 64)
        .unwrap_or_else(|| "default".to_owned())
}

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}

async fn serve(
    mut req: Request<Incoming>,
    sim: Arc<Sim>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let Some(key) = key else {
        if req.uri().path() == "/stats" {
            let body = serde_json::to_string_pretty(&sim.stats()).expect("stats serialise");
            let mut resp = respond(StatusCode::OK, body);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Ok(resp);
        }
        return Ok(respond(
            StatusCode::NOT_FOUND,
            "edge-sim: WebSocket upgrades, or GET /stats\n",
        ));
    };
    let org = org_of(&req, &sim.config.org_header);
    match sim.decide(&org) {
        Decision::Refuse(limit, retry) => {
            let status = StatusCode::from_u16(sim.config.reject_status)
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let mut resp = respond(status, format!("edge-sim: over the {limit} limit\n"));
            let headers = resp.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry));
            let trace = format!("{:016x}", rand::random::<u64>());
            headers.insert(
                "x-trace-id",
                HeaderValue::from_str(&trace).expect("hex is a valid header value"),
            );
            Ok(resp)
        }
        Decision::Accept { latency } => {
            let mut held = Held {
                sim: sim.clone(),
                org: org.clone(),
                end: End::Closed,
            };
            if latency >= sim.config.drop_after {
                tokio::time::sleep(sim.config.drop_after).await;
                held.end = End::Dropped;
                // An error closes the connection without an answer.
                return Err(std::io::Error::other("handshake too slow: dropped"));
            }
            tokio::time::sleep(latency).await;
            sim.accepted(&org, latency);
            let on_upgrade = hyper::upgrade::on(&mut req);
            let mode = sim.config.mode;
            // A SIP edge chooses subprotocol `sip` (RFC 7118) when the client offers it.
            let offers_sip = mode == SessionMode::Sip
                && req
                    .headers()
                    .get_all(header::SEC_WEBSOCKET_PROTOCOL)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .any(|p| p.trim().eq_ignore_ascii_case("sip"));
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                session(ws, mode, held).await;
            });
            let mut resp = respond(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
            let headers = resp.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(
                header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
                    .expect("base64 is a valid header value"),
            );
            if offers_sip {
                headers.insert(
                    header::SEC_WEBSOCKET_PROTOCOL,
                    HeaderValue::from_static("sip"),
                );
            }
            Ok(resp)
        }
    }
}

/// Serves one session. Its place in the counters (`held`) is given back as soon as the
/// client's close arrives or the connection ends, before the socket closes: whoever
/// sees the end (sluice) may send the next handshake at once without finding the
/// session still counted. A SIP session's calls are given back just before.
async fn session<S>(mut ws: WebSocketStream<S>, mode: SessionMode, held: Held)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match mode {
        SessionMode::Echo => {
            while let Some(Ok(msg)) = ws.next().await {
                let echo = match msg {
                    Message::Text(_) | Message::Binary(_) => msg,
                    Message::Close(_) => break,
                    _ => continue,
                };
                if ws.send(echo).await.is_err() {
                    break;
                }
            }
        }
        SessionMode::Sip => {
            let mut calls = calls::Calls::new(held.sim.clone(), held.org.clone());
            calls::serve(&mut ws, &mut calls).await;
            drop(calls);
        }
    }
    drop(held);
    let _ = ws.close(None).await;
}

/// `sluice edge-sim`: runs until `shutdown` completes.
///
/// # Errors
/// When the listen address cannot be bound.
pub async fn run(
    config: SimConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let sim = EdgeSim::start(config.clone()).await?;
    tracing::info!(
        addr = %sim.addr(),
        org_max_sessions = config.org_max_sessions,
        org_handshake_rate = config.org_handshake_rate,
        capacity = config.capacity,
        mode = ?config.mode,
        org_max_calls = config.org_max_calls,
        "edge simulator listening; counters at http://{}/stats",
        sim.addr()
    );
    shutdown.await;
    let stats = sim.stats();
    tracing::info!(
        handshakes = stats.handshakes,
        accepted = stats.accepted,
        violations = stats.violations,
        "edge simulator stopped"
    );
    Ok(())
}
