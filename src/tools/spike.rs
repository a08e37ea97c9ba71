//! Entry: `sluice spike`, a softphone connect storm with the retry behaviour of real clients.
//!
//! `sluice spike`: a softphone spike generator, in the spirit of a JMeter thread group.
//!
//! N virtual softphones spread over T tenants connect (all at once, or spread over a
//! ramp-up), optionally REGISTER over SIP, hold their session, then hang up. A phone
//! whose connect fails retries by its policy: `none`; `immediate`, the naive client that
//! hammers; or `backoff`, exponential with full jitter. Every attempt is bounded (a
//! handshake timeout, at most `max_attempts`, at most `give_up` in all).
//!
//! The report reads like a load tool's aggregate report: per tenant the final outcomes
//! (connected, 429, 503, timeout, error), attempts, every attempt's answer (what the edge
//! saw), handshake latency p50/p90/p99/max and when the last phone connected.
//!
//! With `--sip --calls N` each registered phone then places N calls one after another
//! ([`calls`]), each `--call-length` long, `--call-gap` apart; the report counts them per
//! tenant: placed, established, refused by the edge or by sluice (told apart by the
//! `Reason` of the `503`), failed, `100 Trying` seen, and INVITE-to-200 p50/p99/max. A
//! phone keeps its session for `--hold` or until its calls are done, whichever is later.

mod calls;

pub use calls::{CallsReport, PROXY_REASONS};

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::time::Instant;

use crate::stats::quantile;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The pause of the naive client (`--retry immediate`) before it tries again: short
/// and fixed, whatever the edge said.
pub const IMMEDIATE_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// How a phone retries a failed connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RetryPolicy {
    /// Give up after the first failure.
    None,
    /// Try again after a fixed 50 ms, ignoring Retry-After: the naive client that makes a
    /// 503 storm worse.
    Immediate,
    /// Exponential backoff with full jitter.
    Backoff,
}

/// How a phone names its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantVia {
    /// `/t/{tenant}/` in front of the path (sluice's path source).
    Path,
    /// A header (`--tenant-header`), for an edge that reads one.
    Header,
}

/// `sluice spike --help`.
#[derive(Debug, Clone, clap::Args)]
pub struct SpikeConfig {
    /// Base URL (`ws://` only): sluice (`ws://127.0.0.1:8080`) or an edge. Several,
    /// comma-separated (sluice's replicas): each tenant's phones are dealt to them in
    /// turn.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    pub url: String,
    /// Virtual softphones in all.
    #[arg(long, default_value_t = 200)]
    pub phones: usize,
    /// Tenants, comma-separated, each `NAME` or `NAME=CREDENTIAL` (sent as
    /// `Authorization: Bearer CREDENTIAL`). Phones are dealt to them in turn.
    #[arg(long, value_delimiter = ',', default_value = "acme,globex,initech")]
    pub tenants: Vec<String>,
    /// How the tenant is named in each request.
    #[arg(long, value_enum, default_value_t = TenantVia::Path)]
    pub tenant_via: TenantVia,
    /// Header naming the tenant with `--tenant-via header`.
    #[arg(long, default_value = "x-tenant-id")]
    pub tenant_header: String,
    /// Time over which the phones start, evenly (0: all at once).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub ramp_up: Duration,
    /// How long each connected phone keeps its session.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// Retry policy of a failed connect.
    #[arg(long, value_enum, default_value_t = RetryPolicy::Backoff)]
    pub retry: RetryPolicy,
    /// Most connect attempts per phone.
    #[arg(long, default_value_t = 50)]
    pub max_attempts: u32,
    /// Longest a phone keeps trying, from its start.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub give_up: Duration,
    /// Longest one handshake may take (a queued connect waits inside it).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// First backoff step (`--retry backoff`).
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub backoff_base: Duration,
    /// Largest backoff step.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,
    /// Speak SIP: REGISTER once connected and expect `200 OK` (offers subprotocol `sip`).
    #[arg(long)]
    pub sip: bool,
    /// Calls each registered phone places, one after another (with `--sip`).
    #[arg(long, default_value_t = 0, requires = "sip")]
    pub calls: u32,
    /// How long an established call lasts before the phone's BYE.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub call_length: Duration,
    /// Pause between the end of one call and the next INVITE.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub call_gap: Duration,
    /// Longest wait for an INVITE's or a BYE's final answer (RFC 3261 Timer B: 32 s; a
    /// held INVITE waits in sluice up to its invite_queue_timeout).
    #[arg(long, default_value = "32s", value_parser = humantime::parse_duration)]
    pub call_timeout: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Default for SpikeConfig {
    fn default() -> Self {
        Self {
            url: "ws://127.0.0.1:8080".to_owned(),
            phones: 200,
            tenants: vec!["acme".into(), "globex".into(), "initech".into()],
            tenant_via: TenantVia::Path,
            tenant_header: "x-tenant-id".to_owned(),
            ramp_up: Duration::ZERO,
            hold: Duration::from_secs(3),
            retry: RetryPolicy::Backoff,
            max_attempts: 50,
            give_up: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(15),
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            sip: false,
            calls: 0,
            call_length: Duration::from_secs(2),
            call_gap: Duration::from_millis(200),
            call_timeout: Duration::from_secs(32),
            json: false,
        }
    }
}

/// One phone's end.
#[derive(Debug, Clone)]
struct PhoneResult {
    tenant: usize,
    /// `connected`, or the last attempt's answer (`503`, `429`, `timeout`, `error`, …).
    outcome: String,
    attempts: u32,
    /// Every attempt's answer: `101`, a status, `timeout`, `error`.
    answers: Vec<String>,
    /// The successful attempt's handshake time.
    handshake: Option<Duration>,
    /// From the phone's start to its `101`.
    connected_after: Option<Duration>,
    /// Since the spike's start, when it connected.
    connected_at: Option<Duration>,
    /// SIP REGISTER answered 200 (when `--sip`).
    registered: bool,
    /// Its calls (`--calls`).
    calls: calls::PhoneCalls,
}

/// Latency quantiles, seconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Quantiles {
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Largest.
    pub max: Option<f64>,
}

impl Quantiles {
    fn of(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        Self {
            p50: quantile(&v, 0.5),
            p90: quantile(&v, 0.9),
            p99: quantile(&v, 0.99),
            max: v.last().copied(),
        }
    }
}

/// One tenant's (or all tenants') aggregate.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TenantReport {
    /// Tenant name (`total` for the sum).
    pub tenant: String,
    /// Phones.
    pub phones: usize,
    /// Phones that got their `101`.
    pub connected: usize,
    /// Final outcomes of the phones that did not: `503`, `429`, `timeout`, `error`, …
    pub failed: BTreeMap<String, usize>,
    /// Phones whose SIP REGISTER got `200 OK` (with `--sip`).
    pub registered: usize,
    /// Connect attempts in all.
    pub attempts: u64,
    /// Most attempts of one phone.
    pub max_attempts: u32,
    /// Every attempt's answer, counted: what the edge (or sluice) answered.
    pub answers: BTreeMap<String, u64>,
    /// Duration of the successful handshakes (queueing in sluice included).
    pub handshake: Quantiles,
    /// From a phone's start to its `101` (retries included).
    pub time_to_connect: Quantiles,
    /// When the last phone connected, seconds after the spike started.
    pub last_connected_s: Option<f64>,
    /// The phones' calls (`--sip --calls N`).
    pub calls: CallsReport,
}

/// What a spike reports.
#[derive(Debug, Clone, Serialize)]
pub struct SpikeReport {
    /// Phones in all.
    pub phones: usize,
    /// Retry policy used.
    pub retry: RetryPolicy,
    /// Wall time of the whole spike, seconds.
    pub duration_s: f64,
    /// Per tenant.
    pub tenants: Vec<TenantReport>,
    /// All tenants together.
    pub total: TenantReport,
}

struct Target {
    name: String,
    credential: Option<String>,
}

fn targets(config: &SpikeConfig) -> Vec<Target> {
    config
        .tenants
        .iter()
        .map(|t| match t.split_once('=') {
            Some((name, cred)) => Target {
                name: name.trim().to_owned(),
                credential: Some(cred.trim().to_owned()),
            },
            None => Target {
                name: t.trim().to_owned(),
                credential: None,
            },
        })
        .collect()
}

/// Runs a spike and reports it.
///
/// # Errors
/// When the URL or a tenant is unusable (before any phone starts).
pub async fn run_spike(config: &SpikeConfig) -> Result<SpikeReport, String> {
    let targets = targets(config);
    if targets.is_empty() || targets.iter().any(|t| t.name.is_empty()) {
        return Err("--tenants: give at least one tenant name".into());
    }
    let bases: Vec<&str> = config
        .url
        .split(',')
        .map(|u| u.trim().trim_end_matches('/'))
        .collect();
    if let Some(bad) = bases.iter().find(|u| !u.starts_with("ws://")) {
        return Err(format!(
            "--url {bad}: expected ws://host:port (this version of spike speaks plain WebSocket only)"
        ));
    }
    // requests[base][tenant]
    let requests: Vec<Vec<http::Request<()>>> = bases
        .iter()
        .map(|base| {
            targets
                .iter()
                .map(|t| request_for(config, base, t))
                .collect::<Result<_, _>>()
        })
        .collect::<Result<_, _>>()?;
    // In every Call-ID: this run's calls are not mistaken for another run's.
    let run = format!("{:08x}", rand::random::<u32>());
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(config.phones);
    for i in 0..config.phones {
        let tenant = i % targets.len();
        // Each tenant's phones in turn over the URLs (not phone i to URL i: with as
        // many URLs as tenants, each tenant would reach one URL only).
        let base = (i / targets.len()) % bases.len();
        let delay = if config.phones > 1 {
            config
                .ramp_up
                .mul_f64(i as f64 / (config.phones - 1) as f64)
        } else {
            Duration::ZERO
        };
        let req = requests[base][tenant].clone();
        let config = config.clone();
        let run = run.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + delay).await;
            phone(&config, tenant, req, i, start, &run).await
        }));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await.map_err(|e| format!("a phone task failed: {e}"))?);
    }
    let duration = start.elapsed();
    let tenants: Vec<TenantReport> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| aggregate(&t.name, results.iter().filter(|r| r.tenant == i)))
        .collect();
    Ok(SpikeReport {
        phones: config.phones,
        retry: config.retry,
        duration_s: duration.as_secs_f64(),
        total: aggregate("total", results.iter()),
        tenants,
    })
}

fn request_for(config: &SpikeConfig, base: &str, t: &Target) -> Result<http::Request<()>, String> {
    let url = match config.tenant_via {
        TenantVia::Path => format!("{base}/t/{}/", t.name),
        TenantVia::Header => format!("{base}/"),
    };
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("--url {url}: {e}"))?;
    let headers = req.headers_mut();
    if config.tenant_via == TenantVia::Header {
        let name = http::HeaderName::from_bytes(config.tenant_header.as_bytes())
            .map_err(|e| format!("--tenant-header: {e}"))?;
        let value =
            http::HeaderValue::from_str(&t.name).map_err(|e| format!("tenant {}: {e}", t.name))?;
        headers.insert(name, value);
    }
    if let Some(cred) = &t.credential {
        let value = http::HeaderValue::from_str(&format!("Bearer {cred}")).map_err(|_| {
            format!(
                "tenant {}: the credential is not a valid header value",
                t.name
            )
        })?;
        headers.insert(http::header::AUTHORIZATION, value);
    }
    if config.sip {
        headers.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static("sip"),
        );
    }
    Ok(req)
}

async fn phone(
    config: &SpikeConfig,
    tenant: usize,
    req: http::Request<()>,
    index: usize,
    spike_start: Instant,
    run: &str,
) -> PhoneResult {
    let began = Instant::now();
    let deadline = began + config.give_up;
    let mut result = PhoneResult {
        tenant,
        outcome: String::new(),
        attempts: 0,
        answers: Vec::new(),
        handshake: None,
        connected_after: None,
        connected_at: None,
        registered: false,
        calls: calls::PhoneCalls::default(),
    };
    loop {
        result.attempts += 1;
        let attempt_start = Instant::now();
        let limit = config
            .handshake_timeout
            .min(deadline.saturating_duration_since(attempt_start))
            .max(Duration::from_millis(1));
        let answer = match tokio::time::timeout(
            limit,
            tokio_tungstenite::connect_async(req.clone()),
        )
        .await
        {
            Ok(Ok((ws, _))) => {
                let took = attempt_start.elapsed();
                result.answers.push("101".into());
                result.outcome = "connected".into();
                result.handshake = Some(took);
                result.connected_after = Some(began.elapsed());
                result.connected_at = Some(spike_start.elapsed());
                (result.registered, result.calls) = session(config, ws, index, run).await;
                return result;
            }
            Ok(Err(WsError::Http(resp))) => resp.status().as_u16().to_string(),
            Ok(Err(_)) => "error".to_owned(),
            Err(_) => "timeout".to_owned(),
        };
        result.answers.push(answer.clone());
        result.outcome = answer;
        let now = Instant::now();
        if config.retry == RetryPolicy::None
            || result.attempts >= config.max_attempts
            || now >= deadline
        {
            return result;
        }
        if config.retry == RetryPolicy::Backoff {
            let cap = config
                .backoff_base
                .saturating_mul(1 << (result.attempts - 1).min(20))
                .min(config.backoff_max);
            let pause = cap.mul_f64(rand::random::<f64>());
            if now + pause >= deadline {
                return result;
            }
            tokio::time::sleep(pause).await;
        } else {
            // The naive client: again after a fixed short pause, whatever it was told.
            tokio::time::sleep(IMMEDIATE_RETRY_PAUSE).await;
        }
    }
}

/// Holds a connected session for `hold`: with `--sip`, REGISTER and wait for `200 OK`,
/// then place the calls (the session lasts until they are done if that is later).
/// Returns whether the SIP registration succeeded, and the calls.
async fn session<S>(
    config: &SpikeConfig,
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    index: usize,
    run: &str,
) -> (bool, calls::PhoneCalls)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let until = Instant::now() + config.hold;
    let mut registered = false;
    let mut placed = calls::PhoneCalls::default();
    if config.sip {
        let register = format!(
            "REGISTER sip:edge.invalid SIP/2.0\r\nVia: SIP/2.0/WSS phone{index}.invalid;branch=z9hG4bK{run}r{index}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:phone{index}@edge.invalid>;tag={run}r{index}\r\n\
             To: <sip:phone{index}@edge.invalid>\r\nCall-ID: spike-{run}-{index}\r\nCSeq: 1 REGISTER\r\n\
             Contact: <sip:phone{index}@phone{index}.invalid;transport=ws>\r\nExpires: 600\r\n\
             Content-Length: 0\r\n\r\n"
        );
        if ws.send(Message::text(register)).await.is_ok() {
            let answer = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
            registered =
                matches!(answer, Ok(Some(Ok(Message::Text(t)))) if t.starts_with("SIP/2.0 200"));
        }
        if registered && config.calls > 0 {
            placed = calls::place_calls(config, &mut ws, index, run).await;
        }
    }
    tokio::time::sleep_until(until).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    (registered, placed)
}

fn aggregate<'a>(
    name: &str,
    results: impl Iterator<Item = &'a PhoneResult> + Clone,
) -> TenantReport {
    let mut r = TenantReport {
        tenant: name.to_owned(),
        ..TenantReport::default()
    };
    let mut handshakes = Vec::new();
    let mut to_connect = Vec::new();
    let mut last: Option<Duration> = None;
    r.calls = CallsReport::of(results.clone().map(|p| &p.calls));
    for p in results {
        r.phones += 1;
        r.attempts += u64::from(p.attempts);
        r.max_attempts = r.max_attempts.max(p.attempts);
        for a in &p.answers {
            *r.answers.entry(a.clone()).or_default() += 1;
        }
        if p.outcome == "connected" {
            r.connected += 1;
            handshakes.extend(p.handshake.map(|d| d.as_secs_f64()));
            to_connect.extend(p.connected_after.map(|d| d.as_secs_f64()));
            last = last.max(p.connected_at);
        } else {
            *r.failed.entry(p.outcome.clone()).or_default() += 1;
        }
        r.registered += usize::from(p.registered);
    }
    r.handshake = Quantiles::of(handshakes);
    r.time_to_connect = Quantiles::of(to_connect);
    r.last_connected_s = last.map(|d| d.as_secs_f64());
    r
}

/// Seconds as a short human string ("–" when absent).
pub fn secs(v: Option<f64>) -> String {
    match v {
        None => "–".to_owned(),
        Some(v) if v < 1.0 => format!("{:.0} ms", v * 1000.0),
        Some(v) => format!("{v:.2} s"),
    }
}

/// The report as an aggregate table.
pub fn render(report: &SpikeReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "spike: {} phones, retry {:?}, {:.1} s",
        report.phones, report.retry, report.duration_s
    );
    let _ = writeln!(
        out,
        "{:<12} {:>6} {:>9} {:>14} {:>8} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "tenant",
        "phones",
        "connected",
        "failed",
        "attempts",
        "max attempts",
        "p50",
        "p90",
        "p99",
        "max",
        "last in"
    );
    for t in report.tenants.iter().chain(std::iter::once(&report.total)) {
        let failed = if t.failed.is_empty() {
            "0".to_owned()
        } else {
            t.failed
                .iter()
                .map(|(k, v)| format!("{v}×{k}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            out,
            "{:<12} {:>6} {:>9} {:>14} {:>8} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8}",
            t.tenant,
            t.phones,
            t.connected,
            failed,
            t.attempts,
            t.max_attempts,
            secs(t.handshake.p50),
            secs(t.handshake.p90),
            secs(t.handshake.p99),
            secs(t.handshake.max),
            secs(t.last_connected_s),
        );
    }
    let answers = report
        .total
        .answers
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(out, "answers to all attempts: {answers}");
    if report.total.calls.placed > 0 {
        for t in report.tenants.iter().chain(std::iter::once(&report.total)) {
            let _ = writeln!(out, "{:<12} {}", t.tenant, calls::summary(&t.calls));
        }
    }
    let _ = writeln!(
        out,
        "(p50…max: handshake time of the successful attempt, queueing included; last in: when the last phone connected)"
    );
    out
}
