//! `wsbench calls`: the memory of a tracked SIP call (issue 17).
//!
//! Opens `--conns` SIP sessions (subprotocol `sip`; each sends one out-of-dialog OPTIONS
//! of `--size` bytes, echoed, so both legs have relayed a message as large as any the
//! calls send), reads the summed VmRSS of `--pids` with every session open and idle,
//! places one call on each session (INVITE → `200` → ACK, `--concurrency` at a time)
//! and reads it again with every call up; then hangs every call up (BYE → `200`), reads
//! it a third time, and closes the sessions.
//!
//! - bytes per idle SIP session = (RSS with the sessions open − RSS before) ÷ sessions
//! - bytes per call = (RSS with the calls up − RSS with the sessions open) ÷ calls
//!   placed; with one call per session this includes the session's call table, which
//!   its first call allocates.
//!
//! With `--metrics` (sluice's admin `/metrics` URL), `sluice_calls_active` of the URL's
//! tenant is read at the same moments, to show the calls were counted (it is absent for
//! a tenant that counts no calls). Every network step is bounded ([`STEP_TIMEOUT`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::sip::{self, Dialog};
use crate::{
    authority, close, connect, round1, round3, round_trip, rss_kib, secs, Ws, STEP_TIMEOUT,
};

/// Settings of `wsbench calls`.
pub(crate) struct CallsRun {
    pub conns: usize,
    pub concurrency: usize,
    pub warm: usize,
    pub settle_secs: f64,
    pub size: usize,
    pub metrics: Option<String>,
}

type Session = (Ws, Dialog);

/// Runs `step` on every session, `concurrency` at a time; → (sessions it succeeded on,
/// sessions it failed on, the first error).
async fn each<F, Fut>(
    sessions: Vec<Session>,
    concurrency: usize,
    step: F,
) -> (Vec<Session>, Vec<Session>, Option<String>)
where
    F: Fn(Session) -> Fut,
    Fut: std::future::Future<Output = (Session, Result<(), String>)> + Send + 'static,
{
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for s in sessions {
        let gate = gate.clone();
        let fut = step(s);
        set.spawn(async move {
            let _p = gate.acquire().await;
            fut.await
        });
    }
    let (mut ok, mut failed, mut first) = (Vec::new(), Vec::new(), None);
    while let Some(r) = set.join_next().await {
        match r {
            Ok((s, Ok(()))) => ok.push(s),
            Ok((s, Err(e))) => {
                first.get_or_insert(e);
                failed.push(s);
            }
            Err(e) => {
                first.get_or_insert(e.to_string());
            }
        }
    }
    (ok, failed, first)
}

/// Opens `n` SIP sessions, each with one OPTIONS round trip.
async fn open(
    url: &str,
    n: usize,
    concurrency: usize,
    size: usize,
) -> (Vec<Session>, usize, Option<String>) {
    let addr = match authority(url) {
        Ok(a) => a,
        Err(e) => return (Vec::new(), n, Some(e)),
    };
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (gate, url, addr) = (gate.clone(), url.to_string(), addr.clone());
        set.spawn(async move {
            let _p = gate.acquire().await;
            let mut ws = connect(&url, &addr).await?;
            let mut d = Dialog::new(size);
            round_trip(&mut ws, &Utf8Bytes::from(d.options())).await?;
            Ok::<Session, String>((ws, d))
        });
    }
    let (mut sessions, mut errors, mut first) = (Vec::with_capacity(n), 0, None);
    while let Some(r) = set.join_next().await {
        match r.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(s) => sessions.push(s),
            Err(e) => {
                errors += 1;
                first.get_or_insert(e);
            }
        }
    }
    (sessions, errors, first)
}

async fn close_sessions(sessions: Vec<Session>, concurrency: usize) {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (ws, _) in sessions {
        let gate = gate.clone();
        set.spawn(async move {
            let _p = gate.acquire().await;
            close(ws).await;
        });
    }
    set.join_all().await;
}

async fn place(s: Session) -> (Session, Result<(), String>) {
    let (mut ws, mut d) = s;
    let r = sip::place_call(&mut ws, &mut d).await;
    ((ws, d), r)
}

async fn end(s: Session) -> (Session, Result<(), String>) {
    let (mut ws, mut d) = s;
    let r = sip::hang_up(&mut ws, &mut d).await;
    ((ws, d), r)
}

pub(crate) async fn calls(url: &str, c: &CallsRun, pids: &[u32]) -> Result<Value, String> {
    let rss = |pids: &[u32]| -> Result<Option<u64>, String> {
        if pids.is_empty() {
            Ok(None)
        } else {
            rss_kib(pids).map(Some)
        }
    };
    let tenant = tenant_of(url);
    let metrics = c.metrics.as_deref().zip(tenant.as_deref());

    // Warm-up: one-time allocations (the gate's, the metrics', pools) are not per call.
    let (warm, _, e) = open(url, c.warm, c.concurrency, c.size).await;
    if let Some(e) = e {
        return Err(format!("warm-up: {e}"));
    }
    let (warm, _, e) = each(warm, c.concurrency, place).await;
    let (warm, _, e2) = each(warm, c.concurrency, end).await;
    if let Some(e) = e.or(e2) {
        return Err(format!("warm-up: {e}"));
    }
    close_sessions(warm, c.concurrency).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss(pids)?;

    let t0 = Instant::now();
    let (sessions, open_errors, open_error) = open(url, c.conns, c.concurrency, c.size).await;
    let open_secs = t0.elapsed().as_secs_f64();
    let opened = sessions.len();
    eprintln!("calls: {opened} sessions open ({open_errors} errors) in {open_secs:.1} s");
    tokio::time::sleep(secs(c.settle_secs)).await;
    let rss_open = rss(pids)?;
    let active_open = active(metrics).await;

    let t1 = Instant::now();
    let (up, failed, call_error) = each(sessions, c.concurrency, place).await;
    let place_secs = t1.elapsed().as_secs_f64();
    let placed = up.len();
    eprintln!(
        "calls: {placed} calls up ({} errors) in {place_secs:.1} s",
        failed.len()
    );
    tokio::time::sleep(secs(c.settle_secs)).await;
    let rss_calls = rss(pids)?;
    let active_calls = active(metrics).await;

    let (ended, not_ended, bye_error) = each(up, c.concurrency, end).await;
    let hung_up = ended.len();
    tokio::time::sleep(secs(c.settle_secs)).await;
    let rss_ended = rss(pids)?;
    let active_ended = active(metrics).await;

    let mut all = ended;
    all.extend(not_ended);
    all.extend(failed);
    close_sessions(all, c.concurrency).await;
    eprintln!("calls: done");

    let mut out = json!({
        "scenario": "calls",
        "url": url,
        "conns": c.conns,
        "size": c.size,
        "opened": opened,
        "errors": open_errors + (opened - placed) + (placed - hung_up),
        "calls": placed,
        "hung_up": hung_up,
        "open_seconds": round3(open_secs),
        "place_seconds": round3(place_secs),
        "settle_secs": c.settle_secs,
    });
    if let Some(e) = open_error.or(call_error).or(bye_error) {
        out["first_error"] = json!(e);
    }
    if let (Some(b), Some(o), Some(k), Some(e)) = (before, rss_open, rss_calls, rss_ended) {
        out["rss_before_kib"] = json!(b);
        out["rss_open_kib"] = json!(o);
        out["rss_calls_kib"] = json!(k);
        out["rss_ended_kib"] = json!(e);
        let per = |kib: i64, n: usize| round1(kib as f64 * 1024.0 / n.max(1) as f64);
        out["bytes_per_idle_session"] = json!(per(o as i64 - b as i64, opened));
        out["bytes_per_call"] = json!(per(k as i64 - o as i64, placed));
        // What the ended calls left behind (freed memory glibc keeps, mostly).
        out["bytes_per_call_after_bye"] = json!(per(e as i64 - o as i64, placed));
    }
    for (k, v) in [
        ("calls_active_open", active_open),
        ("calls_active_up", active_calls),
        ("calls_active_ended", active_ended),
    ] {
        if let Some(v) = v {
            out[k] = json!(v);
        }
    }
    Ok(out)
}

/// `sluice_calls_active` of (metrics URL, tenant), when given.
async fn active(metrics: Option<(&str, &str)>) -> Option<f64> {
    let (url, tenant) = metrics?;
    calls_active(url, tenant).await
}

/// The tenant of a `ws://host:port/t/<tenant>/…` URL.
pub(crate) fn tenant_of(url: &str) -> Option<String> {
    let path = url.strip_prefix("ws://")?.split_once('/')?.1;
    let mut parts = path.split('/');
    (parts.next()? == "t").then_some(())?;
    parts.next().map(str::to_string)
}

/// `sluice_calls_active{tenant="…"}` from sluice's admin `/metrics` (`http://host:port/
/// path`); `None` when it cannot be read in time or the tenant counts no calls.
pub(crate) async fn calls_active(metrics_url: &str, tenant: &str) -> Option<f64> {
    let rest = metrics_url.strip_prefix("http://")?;
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, format!("/{p}")),
        None => (rest, "/metrics".to_string()),
    };
    let fetch = async {
        let mut tcp = tokio::net::TcpStream::connect(host).await.ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.ok()?;
        let mut body = Vec::new();
        tcp.read_to_end(&mut body).await.ok()?;
        Some(String::from_utf8_lossy(&body).into_owned())
    };
    let text = tokio::time::timeout(STEP_TIMEOUT, fetch).await.ok()??;
    let want = format!("sluice_calls_active{{tenant=\"{tenant}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(want.as_str()))
        .and_then(|v| v.trim().parse().ok())
}
