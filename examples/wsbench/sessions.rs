//! `wsbench idle` (memory per idle session, memory returned after close) and `wsbench
//! handshakes` (repeated connect fills: handshakes/s and the proxy's CPU per handshake).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::{
    authority, clk_tck, close, connect, cpu_split_us, payload, pct, round1, round3, round_trip,
    rss_kib, secs, sip, Ws,
};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The issue-16 memory figure is read this long after the last session closed.
const AFTER_CLOSE_SECS: f64 = 2.0;

/// Closes every session, `concurrency` at a time (see [`close`]: no TIME_WAIT is left).
async fn close_all(sockets: Vec<Ws>, concurrency: usize) {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for ws in sockets {
        let gate = gate.clone();
        set.spawn(async move {
            let _p = gate.acquire().await;
            close(ws).await;
        });
    }
    set.join_all().await;
}

// ---------------------------------------------------------------------------------------
// idle

pub(crate) async fn idle(
    url: &str,
    conns: usize,
    concurrency: usize,
    warm: usize,
    (settle_secs, hold_secs, after_secs): (f64, f64, f64),
    pids: &[u32],
) -> Result<Value, String> {
    let addr = authority(url)?;
    // With --sip, each session's echo is an OPTIONS (a SIP message is larger than 64 B).
    let frame = payload(64);
    let rss = |pids: &[u32]| -> Result<Option<u64>, String> {
        if pids.is_empty() {
            Ok(None)
        } else {
            rss_kib(pids).map(Some)
        }
    };

    let open_all = |n: usize| {
        let gate = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (gate, url, addr, frame) =
                (gate.clone(), url.to_string(), addr.clone(), frame.clone());
            set.spawn(async move {
                let _p = gate.acquire().await;
                let mut ws = connect(&url, &addr).await?;
                // One echo: the session is relayed end to end, then idle.
                let frame = if sip::on() {
                    Utf8Bytes::from(sip::Dialog::new(0).options())
                } else {
                    frame
                };
                round_trip(&mut ws, &frame).await?;
                Ok::<Ws, String>(ws)
            });
        }
        set
    };
    // Warm-up: one-time allocations (thread-local buffers, pools) are not per session.
    let mut set = open_all(warm);
    let mut warm_sockets = Vec::new();
    while let Some(r) = set.join_next().await {
        warm_sockets.push(r.map_err(|e| e.to_string())??);
    }
    close_all(warm_sockets, concurrency).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss(pids)?;

    let t0 = Instant::now();
    let mut set = open_all(conns);
    let mut sockets = Vec::with_capacity(conns);
    let mut errors = 0usize;
    let mut first_error = None;
    while let Some(r) = set.join_next().await {
        match r.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(ws) => sockets.push(ws),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let open_secs = t0.elapsed().as_secs_f64();
    let opened = sockets.len();
    tokio::time::sleep(secs(settle_secs)).await;
    let open = rss(pids)?;
    eprintln!("idle: all-open {opened} sessions ({errors} errors) in {open_secs:.1} s");
    tokio::time::sleep(secs(hold_secs)).await;
    let held = rss(pids)?;

    close_all(sockets, concurrency).await;
    eprintln!("idle: all-closed");
    // The issue-16 figure: RSS 2 s after the last session closed; then the later reading
    // (--after-secs after the last close, when that is longer).
    tokio::time::sleep(secs(AFTER_CLOSE_SECS)).await;
    let after_2s = rss(pids)?;
    tokio::time::sleep(secs(after_secs - AFTER_CLOSE_SECS)).await;
    let after = rss(pids)?;
    eprintln!("idle: done");

    let mut out = json!({
        "scenario": "idle",
        "url": url,
        "conns": conns,
        "opened": opened,
        "errors": errors,
        "open_seconds": round3(open_secs),
    });
    if let Some(e) = first_error {
        out["first_error"] = json!(e);
    }
    if let (Some(b), Some(o), Some(h), Some(a)) = (before, open, held, after) {
        out["rss_before_kib"] = json!(b);
        out["rss_open_kib"] = json!(o);
        out["rss_held_kib"] = json!(h);
        out["rss_after_kib"] = json!(a);
        // KiB here is 1024 bytes; the table says KB for KiB, as ps and /proc do.
        out["kb_per_session"] = json!(round3(o.saturating_sub(b) as f64 / opened.max(1) as f64));
        out["retained_kib"] = json!(a as i64 - b as i64);
        out["after_secs"] = json!(after_secs.max(AFTER_CLOSE_SECS));
        out["returned_pct"] = json!(round1(
            100.0 * (o as f64 - a as f64) / (o as f64 - b as f64).max(1.0)
        ));
    }
    if let (Some(b), Some(a2)) = (before, after_2s) {
        out["rss_after_2s_kib"] = json!(a2);
        out["rss_after_2s_ratio"] = json!(round3(a2 as f64 / (b as f64).max(1.0)));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// handshakes

/// Settings of `wsbench handshakes`.
pub(crate) struct Fills {
    /// Sessions opened per fill.
    pub count: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// Fills measured (at most).
    pub fills: usize,
    /// No fill starts after this long.
    pub max_secs: f64,
    /// Wait after a fill's sessions closed, before the next fill (and its CPU reading).
    pub settle_secs: f64,
}

/// One fill: `count` sessions opened, `concurrency` handshakes in flight, each held open
/// once its `101` arrives. → (open sessions, time to 101 of each in ns, errors).
async fn fill(
    url: &str,
    addr: &str,
    count: usize,
    concurrency: usize,
) -> (Vec<Ws>, Vec<u64>, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, count.max(1)) {
        let (next, errors, open) = (next.clone(), errors.clone(), open.clone());
        let (url, addr) = (url.to_string(), addr.to_string());
        set.spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let t = Instant::now();
                match connect(&url, &addr).await {
                    Ok(ws) => {
                        lat.push(t.elapsed().as_nanos() as u64);
                        open.lock().unwrap().push(ws);
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("handshakes: {e}");
                        }
                    }
                }
            }
            lat
        });
    }
    let mut lat = Vec::with_capacity(count);
    while let Some(r) = set.join_next().await {
        lat.extend(r.unwrap_or_default());
    }
    let open = std::mem::take(&mut *open.lock().unwrap());
    (open, lat, errors.load(Ordering::Relaxed))
}

/// Repeated connect fills. Each fill reads the proxy's CPU time, opens `count` sessions
/// with `concurrency` handshakes in flight (each session stays open once its `101` is
/// in), reads the CPU time again when the last handshake has ended (the connect phase:
/// handshakes/s and CPU per handshake), closes every session (`concurrency` at a time),
/// waits `settle_secs` and reads it a third time (CPU per session, connect + close).
pub(crate) async fn handshakes(url: &str, f: &Fills, pids: &[u32]) -> Result<Value, String> {
    let addr = authority(url)?;
    let tck = clk_tck();
    // (user, system) µs of the proxy.
    let cpu = || -> Result<Option<(f64, f64)>, String> {
        if pids.is_empty() {
            Ok(None)
        } else {
            cpu_split_us(pids, tck).map(Some)
        }
    };
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no port in {url}"))?;
    let tw_before = time_wait(port);
    let net_before = tcp_ext();
    let start = Instant::now();
    let mut lat = Vec::new();
    let (mut ok, mut errors) = (0usize, 0usize);
    let (mut connect_secs, mut close_secs) = (0.0, 0.0);
    let (mut cpu_connect, mut cpu_cycle) = (0.0, 0.0);
    let (mut user_connect, mut sys_connect) = (0.0, 0.0);
    let mut per_fill = Vec::new();
    let mut done = 0;
    while done < f.fills.max(1) && (done == 0 || start.elapsed().as_secs_f64() < f.max_secs) {
        let c0 = cpu()?;
        let n0 = tcp_ext();
        let t0 = Instant::now();
        let (open, fill_lat, fill_errors) = fill(url, &addr, f.count, f.concurrency).await;
        let secs_connect = t0.elapsed().as_secs_f64();
        let c1 = cpu()?;
        let n = open.len();
        let t1 = Instant::now();
        close_all(open, f.concurrency).await;
        let secs_close = t1.elapsed().as_secs_f64();
        tokio::time::sleep(secs(f.settle_secs)).await;
        let c2 = cpu()?;
        done += 1;
        ok += n;
        errors += fill_errors;
        connect_secs += secs_connect;
        close_secs += secs_close;
        lat.extend(fill_lat);
        let mut one = json!({
            "ok": n,
            "errors": fill_errors,
            "connect_seconds": round3(secs_connect),
            "handshakes_per_s": round1(n as f64 / secs_connect),
        });
        if let (Some(a), Some(b)) = (n0, tcp_ext()) {
            one["listen_overflows"] = json!(b.0.saturating_sub(a.0));
        }
        if let (Some(c0), Some(c1), Some(c2)) = (c0, c1, c2) {
            let total = |(u, s): (f64, f64)| u + s;
            cpu_connect += total(c1) - total(c0);
            cpu_cycle += total(c2) - total(c0);
            user_connect += c1.0 - c0.0;
            sys_connect += c1.1 - c0.1;
            one["cpu_us_per_handshake"] = json!(round1((total(c1) - total(c0)) / n.max(1) as f64));
        }
        eprintln!("handshakes: fill {done}: {one}");
        per_fill.push(one);
    }
    lat.sort_unstable();
    let mut out = json!({
        "scenario": "handshakes",
        "url": url,
        "method": "fills",
        "count": f.count,
        "concurrency": f.concurrency,
        "fills": done,
        "ok": ok,
        "errors": errors,
        "connect_seconds": round3(connect_secs),
        "close_seconds": round3(close_secs),
        "seconds": round3(start.elapsed().as_secs_f64()),
        "fill_handshakes_per_s": round1(ok as f64 / connect_secs.max(1e-9)),
        "p50_ms": round3(pct(&lat, 50.0) / 1e6),
        "p99_ms": round3(pct(&lat, 99.0) / 1e6),
        "per_fill": per_fill,
    });
    if !pids.is_empty() {
        out["fill_cpu_us_per_handshake"] = json!(round1(cpu_connect / ok.max(1) as f64));
        out["fill_cpu_us_per_session"] = json!(round1(cpu_cycle / ok.max(1) as f64));
        // The connect phase's CPU, user and system apart.
        out["fill_user_us_per_handshake"] = json!(round1(user_connect / ok.max(1) as f64));
        out["fill_sys_us_per_handshake"] = json!(round1(sys_connect / ok.max(1) as f64));
    }
    out["time_wait_before"] = json!(tw_before);
    out["time_wait_after"] = json!(time_wait(port));
    if let (Some(a), Some(b)) = (net_before, tcp_ext()) {
        // The machine's, not only the benchmark's: a SYN the listener's full accept
        // queue dropped is retried after 1 s, which shows in p99 and in the fill's time.
        out["listen_overflows"] = json!(b.0.saturating_sub(a.0));
        out["syn_retransmits"] = json!(b.1.saturating_sub(a.1));
    }
    Ok(out)
}

/// TCP sockets in TIME_WAIT on the client's leg (either end on `port`, the proxy's), to
/// show the fills leave loopback's ephemeral ports alone.
fn time_wait(port: u16) -> usize {
    let hex = format!(":{port:04X}");
    let mut n = 0;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        // Fields: sl, local address, remote address, state (06: TIME_WAIT).
        n += text
            .lines()
            .skip(1)
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[3] == "06" && (f[1].ends_with(&hex) || f[2].ends_with(&hex))
            })
            .count();
    }
    n
}

/// The machine's TcpExt ListenOverflows and TCPSynRetrans (/proc/net/netstat).
fn tcp_ext() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let field = |name: &str| {
        let i = names.split_whitespace().position(|n| n == name)?;
        values.split_whitespace().nth(i)?.parse::<u64>().ok()
    };
    Some((field("ListenOverflows")?, field("TCPSynRetrans")?))
}
