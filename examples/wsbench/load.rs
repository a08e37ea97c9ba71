//! `wsbench load`: N connections, one frame in flight each, for a fixed time: round trips
//! per second, the proxy's CPU time per round trip and, with `--perf`, its syscalls and
//! context switches per round trip.
//!
//! With `--sip` each connection places one call first (INVITE → `200` → ACK, before the
//! warm-up) and its frames are in-dialog INFOs of that call; it hangs up (BYE) before
//! closing. With `--metrics`, `sluice_calls_active` of the URL's tenant is read once
//! every call is up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::sync::{watch, Semaphore};

use crate::{
    authority, calls, clk_tck, close, connect, cpu_split_us, cpu_us, machine_us, pct, round1,
    round3, round_trip, secs, self_us, sip, Frames, STEP_TIMEOUT,
};

const RUN: u8 = 0;
const PAUSE: u8 = 1;
const STOP: u8 = 2;

struct LoadShared {
    round_trips: AtomicU64,
    in_flight: AtomicUsize,
    errors: AtomicU64,
    /// Latencies are kept only while this is set (the CPU window).
    record: std::sync::atomic::AtomicBool,
}

pub(crate) async fn load(
    url: &str,
    conns: usize,
    (warmup_secs, seconds): (f64, f64),
    size: usize,
    (pids, echo_pids): (&[u32], &[u32]),
    perf: Option<f64>,
    metrics: Option<&str>,
) -> Result<Value, String> {
    let addr = authority(url)?;
    let tck = clk_tck();

    // Open every connection first (50 at a time).
    let gate = Arc::new(Semaphore::new(50));
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (gate, url, addr) = (gate.clone(), url.to_string(), addr.clone());
        opening.spawn(async move {
            let _p = gate.acquire().await;
            let mut ws = connect(&url, &addr).await?;
            let mut frames = Frames::new(size);
            frames.start(&mut ws).await?;
            Ok::<_, String>((ws, frames))
        });
    }
    let mut sockets = Vec::with_capacity(conns);
    while let Some(r) = opening.join_next().await {
        sockets.push(r.map_err(|e| e.to_string())??);
    }

    let shared = Arc::new(LoadShared {
        round_trips: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        errors: AtomicU64::new(0),
        record: std::sync::atomic::AtomicBool::new(false),
    });
    let (phase_tx, phase_rx) = watch::channel(RUN);
    let mut tasks = tokio::task::JoinSet::new();
    let calls_active = match (metrics, calls::tenant_of(url)) {
        (Some(m), Some(t)) if sip::on() => calls::calls_active(m, &t).await,
        _ => None,
    };
    for (mut ws, mut frames) in sockets {
        let (shared, mut phase) = (shared.clone(), phase_rx.clone());
        tasks.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let p = *phase.borrow_and_update();
                match p {
                    STOP => break,
                    PAUSE => {
                        if phase.changed().await.is_err() {
                            break;
                        }
                        continue;
                    }
                    _ => {}
                }
                let frame = frames.next();
                shared.in_flight.fetch_add(1, Ordering::SeqCst);
                let t = Instant::now();
                let r = round_trip(&mut ws, &frame).await;
                let dt = t.elapsed().as_nanos() as u64;
                shared.in_flight.fetch_sub(1, Ordering::SeqCst);
                if let Err(e) = r {
                    if shared.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("load: {e}");
                    }
                    return lat;
                }
                shared.round_trips.fetch_add(1, Ordering::SeqCst);
                if shared.record.load(Ordering::Relaxed) {
                    lat.push(dt);
                }
            }
            if let Err(e) = frames.end(&mut ws).await {
                eprintln!("load: {e}");
            }
            close(ws).await;
            lat
        });
    }

    // Pauses every connection (none has a frame in flight when this returns).
    let pause = |tx: &watch::Sender<u8>| {
        tx.send_replace(PAUSE);
        let shared = shared.clone();
        async move {
            let deadline = Instant::now() + STEP_TIMEOUT;
            while shared.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };

    tokio::time::sleep(secs(warmup_secs)).await;
    pause(&phase_tx).await;
    let rt0 = shared.round_trips.load(Ordering::SeqCst);
    let cpu0 = if pids.is_empty() {
        None
    } else {
        Some(cpu_split_us(pids, tck)?)
    };
    let (busy0, steal0) = machine_us(tck);
    let (self0, echo0) = (self_us(tck), cpu_us(echo_pids, tck).unwrap_or(0.0));
    shared.record.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    phase_tx.send_replace(RUN);
    tokio::time::sleep(secs(seconds)).await;
    pause(&phase_tx).await;
    let window = t0.elapsed().as_secs_f64();
    shared.record.store(false, Ordering::SeqCst);
    let rt1 = shared.round_trips.load(Ordering::SeqCst);
    let cpu1 = match cpu0 {
        Some(_) => Some(cpu_split_us(pids, tck)?),
        None => None,
    };
    // User and system time apart: the system part is the kernel's work for the proxy's
    // sockets, which every proxy making the same system calls shares.
    let split = cpu0
        .zip(cpu1)
        .map(|((u0, s0), (u1, s1))| (u1 - u0, s1 - s0));
    let (cpu0, cpu1) = (cpu0.map(|(u, s)| u + s), cpu1.map(|(u, s)| u + s));
    let (busy1, steal1) = machine_us(tck);
    let (self1, echo1) = (self_us(tck), cpu_us(echo_pids, tck).unwrap_or(0.0));
    let n = rt1 - rt0;
    let proxy = cpu1.zip(cpu0).map_or(0.0, |(b, a)| b - a);
    let cores = |us: f64| round3(us / 1e6 / window);

    let mut out = json!({
        "scenario": "load",
        "url": url,
        "conns": conns,
        "size": size,
        "sip": sip::on(),
        "seconds": round3(window),
        "round_trips": n,
        "rt_per_s": round1(n as f64 / window),
        // What shared the two cores during the window (in cores): the client itself, the
        // echo server, and everything the machine did besides (other processes, and
        // softirq time not charged to a process).
        "client_cores": cores(self1 - self0),
        "echo_cores": cores(echo1 - echo0),
        "other_cores": cores(busy1 - busy0 - proxy - (self1 - self0) - (echo1 - echo0)),
        "steal_cores": cores(steal1 - steal0),
    });
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        out["proxy_cpu_us"] = json!(round1(b - a));
        out["cpu_us_per_rt"] = json!(round3((b - a) / n.max(1) as f64));
        out["proxy_cpu_cores"] = json!(round3((b - a) / 1e6 / window));
    }
    if let Some((user, system)) = split {
        out["user_us_per_rt"] = json!(round3(user / n.max(1) as f64));
        out["sys_us_per_rt"] = json!(round3(system / n.max(1) as f64));
    }

    if let (Some(perf_secs), false) = (perf, pids.is_empty()) {
        match perf_window(&phase_tx, &shared, pids, perf_secs, pause).await {
            Ok(p) => {
                for (k, v) in p {
                    out[k] = v;
                }
            }
            Err(e) => out["perf_error"] = json!(e),
        }
    }

    phase_tx.send_replace(STOP);
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(v) = r {
            lat.extend(v);
        }
    }
    lat.sort_unstable();
    out["p50_us"] = json!(round1(pct(&lat, 50.0) / 1e3));
    out["p99_us"] = json!(round1(pct(&lat, 99.0) / 1e3));
    out["errors"] = json!(shared.errors.load(Ordering::Relaxed));
    if let Some(n) = calls_active {
        out["calls_active"] = json!(n);
    }
    Ok(out)
}

/// A window with `perf stat` attached to `pids`, started while the load is paused.
async fn perf_window<F, Fut>(
    phase_tx: &watch::Sender<u8>,
    shared: &Arc<LoadShared>,
    pids: &[u32],
    perf_secs: f64,
    pause: F,
) -> Result<Map<String, Value>, String>
where
    F: Fn(&watch::Sender<u8>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let out_file = std::env::temp_dir().join(format!("wsbench-perf-{}.csv", std::process::id()));
    let pid_list = pids
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut child = std::process::Command::new("perf")
        .args([
            "stat",
            "-x",
            ",",
            "-e",
            "raw_syscalls:sys_enter,context-switches",
        ])
        .arg("-o")
        .arg(&out_file)
        .args(["-p", &pid_list])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("perf: {e}"))?;
    // perf has no "attached" signal: give it ample time while nothing is in flight
    // (an idle proxy makes next to no syscalls).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let rt0 = shared.round_trips.load(Ordering::SeqCst);
    let t0 = Instant::now();
    phase_tx.send_replace(RUN);
    tokio::time::sleep(secs(perf_secs)).await;
    pause(phase_tx).await;
    let window = t0.elapsed().as_secs_f64();
    let n = shared.round_trips.load(Ordering::SeqCst) - rt0;
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let waited = tokio::task::spawn_blocking(move || child.wait())
        .await
        .map_err(|e| e.to_string())?;
    waited.map_err(|e| format!("perf: {e}"))?;
    let text = std::fs::read_to_string(&out_file).map_err(|e| format!("perf output: {e}"))?;
    let _ = std::fs::remove_file(&out_file);
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() >= 3 {
            if let Ok(v) = f[0].parse::<f64>() {
                counts.insert(f[2].to_string(), v);
            }
        }
    }
    let sys = counts
        .get("raw_syscalls:sys_enter")
        .ok_or_else(|| format!("perf counted no syscalls: {}", text.trim()))?;
    let cs = counts.get("context-switches").copied().unwrap_or(f64::NAN);
    let mut m = Map::new();
    m.insert("perf_seconds".into(), json!(round3(window)));
    m.insert("perf_round_trips".into(), json!(n));
    m.insert(
        "syscalls_per_rt".into(),
        json!(round3(sys / n.max(1) as f64)),
    );
    m.insert("ctxsw_per_rt".into(), json!(round3(cs / n.max(1) as f64)));
    Ok(m)
}
