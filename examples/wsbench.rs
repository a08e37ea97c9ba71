//! `wsbench`: the WebSocket load client and echo server behind `bench/run.sh`.
//!
//! One program, one subcommand per benchmark; every run prints exactly one JSON object on
//! stdout (progress goes to stderr):
//!
//! ```sh
//! cargo build --release --example wsbench
//! W=target/release/examples/wsbench
//! $W echo --listen 127.0.0.1:17000                                 # the upstream of every target
//! $W rtt --url ws://127.0.0.1:17001/t/bench/echo --frames 10000 --size 1024
//! $W load --url ws://… --conns 100 --seconds 10 --size 1024 --pids 1234
//! $W idle --url ws://… --conns 9000 --hold-secs 3 --pids 1234
//! $W handshakes --url ws://… --count 5000 --concurrency 50 --pids 1234
//! $W report --input bench/results/…/runs.jsonl                     # Markdown table of medians
//! ```
//!
//! # Threads
//!
//! Client, echo server and proxy share two cores. Every subcommand runs on a tokio
//! multi-thread runtime with **one** worker (`--threads`, default 1): the client (and the
//! echo server) then use at most one core for their work, and the proxy under test gets
//! the rest. A multi-thread runtime with one worker, rather than a current-thread one,
//! keeps the timer and I/O driver on the same worker as the tasks, as a current-thread
//! runtime would, but lets `spawn_blocking` (process sampling, `perf`) run beside it.
//!
//! # What is measured where
//!
//! `--pids` names the process(es) under test (sluice; HAProxy; NGINX's workers). The
//! client samples them itself, at moments it controls, so no window is misaligned:
//!
//! - `load` pauses its connections (no frame in flight), reads user + system CPU time of
//!   every pid from `/proc/PID/stat` and the round-trip count, lets the connections run
//!   for `--seconds`, pauses again and reads both again. With `--perf`, a second window
//!   (`--perf-secs`) is run the same way with `perf stat -e
//!   raw_syscalls:sys_enter,context-switches -p PIDS` attached before the connections
//!   resume, so the CPU window is never slowed by perf and the perf window counts whole
//!   round trips only.
//! - `idle` reads the summed VmRSS before opening, with every session open and idle,
//!   after the hold, and after every session has been closed.
//! - `handshakes` reads CPU time around the whole run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

/// Any single network step (connect, handshake, one round trip, close) that takes longer
/// than this counts as an error.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(about = "WebSocket benchmark client and echo server for sluice's bench/run.sh")]
struct Cli {
    /// Worker threads of the tokio runtime (1 keeps the client off the proxy's core).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// `key=value` added to the JSON output (repeatable), e.g. `--tag target=sluice`.
    #[arg(long = "tag", global = true)]
    tags: Vec<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A minimal WebSocket echo server (text and binary frames are sent back).
    Echo {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// One connection, N sequential frames: round-trip latency.
    Rtt {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 10_000)]
        frames: usize,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Frames sent first and not counted.
        #[arg(long, default_value_t = 200)]
        warmup: usize,
    },
    /// N connections, one frame in flight each, for a fixed time: throughput and CPU.
    Load {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 100)]
        conns: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        #[arg(long, default_value_t = 1.0)]
        warmup_secs: f64,
        /// Processes whose CPU time is measured (comma-separated).
        #[arg(long, value_delimiter = ',')]
        pids: Vec<u32>,
        /// Also count syscalls and context switches of --pids with `perf stat`.
        #[arg(long)]
        perf: bool,
        #[arg(long, default_value_t = 3.0)]
        perf_secs: f64,
        /// The echo server, whose CPU is reported too (to tell what else ran).
        #[arg(long)]
        echo_pid: Option<u32>,
    },
    /// Open N idle sessions, hold them, close them: memory per idle session.
    Idle {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 9000)]
        conns: usize,
        #[arg(long, default_value_t = 3.0)]
        hold_secs: f64,
        /// Sessions being opened at once.
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        /// Sessions opened and closed before the baseline is read.
        #[arg(long, default_value_t = 16)]
        warm: usize,
        /// Wait after the last session opened before reading memory.
        #[arg(long, default_value_t = 2.0)]
        settle_secs: f64,
        /// Wait after the last session closed before reading memory.
        #[arg(long, default_value_t = 3.0)]
        after_secs: f64,
        /// Processes whose VmRSS is summed (comma-separated).
        #[arg(long, value_delimiter = ',')]
        pids: Vec<u32>,
    },
    /// N connect + close cycles, C at a time: handshakes per second.
    Handshakes {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 5000)]
        count: usize,
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Stop starting new cycles after this long.
        #[arg(long, default_value_t = 60.0)]
        max_secs: f64,
        /// Processes whose CPU time is measured (comma-separated).
        #[arg(long, value_delimiter = ',')]
        pids: Vec<u32>,
    },
    /// Medians per target of a runs.jsonl file, as Markdown tables.
    Report {
        #[arg(long)]
        input: std::path::PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    let mut tags = Map::new();
    for t in &cli.tags {
        let (k, v) = t.split_once('=').unwrap_or((t, ""));
        let v = v.parse::<i64>().map(Value::from).unwrap_or(Value::from(v));
        tags.insert(k.to_string(), v);
    }
    if let Cmd::Report { input } = &cli.cmd {
        report(input);
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let out = rt.block_on(async move {
        match cli.cmd {
            Cmd::Echo { listen } => echo(listen).await,
            Cmd::Rtt {
                url,
                frames,
                size,
                warmup,
            } => rtt(&url, frames, size, warmup).await,
            Cmd::Load {
                url,
                conns,
                seconds,
                size,
                warmup_secs,
                pids,
                perf,
                perf_secs,
                echo_pid,
            } => {
                let perf = if perf { Some(perf_secs) } else { None };
                let echo: Vec<u32> = echo_pid.into_iter().collect();
                load(
                    &url,
                    conns,
                    (warmup_secs, seconds),
                    size,
                    &pids,
                    &echo,
                    perf,
                )
                .await
            }
            Cmd::Idle {
                url,
                conns,
                hold_secs,
                concurrency,
                warm,
                settle_secs,
                after_secs,
                pids,
            } => {
                let waits = (settle_secs, hold_secs, after_secs);
                idle(&url, conns, concurrency, warm, waits, &pids).await
            }
            Cmd::Handshakes {
                url,
                count,
                concurrency,
                max_secs,
                pids,
            } => handshakes(&url, count, concurrency, max_secs, &pids).await,
            Cmd::Report { .. } => unreachable!(),
        }
    });
    let mut out = match out {
        Ok(Value::Object(m)) => m,
        Ok(other) => {
            let mut m = Map::new();
            m.insert("result".into(), other);
            m
        }
        Err(e) => {
            let mut m = Map::new();
            m.insert("error".into(), Value::from(e));
            m
        }
    };
    for (k, v) in tags {
        out.insert(k, v);
    }
    let failed = out.contains_key("error");
    println!("{}", Value::Object(out));
    // Do not wait for tasks still parked on sockets.
    rt.shutdown_timeout(Duration::from_millis(100));
    std::process::exit(if failed { 1 } else { 0 });
}

// ---------------------------------------------------------------------------------------
// Small helpers

fn ws_config() -> WebSocketConfig {
    // Small buffers: the client and the echo server hold 9,000 sessions in `idle`, and a
    // 1 KiB frame never needs more.
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
}

fn payload(size: usize) -> Utf8Bytes {
    // Printable ASCII, like a SIP message.
    let s: String = (0..size).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    Utf8Bytes::from(s)
}

/// `ws://host:port/path` → (`host:port`, the URL).
fn authority(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("only ws:// URLs: {url}"))?;
    Ok(rest.split('/').next().unwrap_or(rest).to_string())
}

async fn connect(url: &str, addr: &str) -> Result<Ws, String> {
    let step = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_nodelay(true).ok();
        let (ws, resp) = tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config()))
            .await
            .map_err(|e| format!("handshake {url}: {e}"))?;
        if resp.status() != 101 {
            return Err(format!("handshake {url}: status {}", resp.status()));
        }
        Ok(ws)
    };
    tokio::time::timeout(STEP_TIMEOUT, step)
        .await
        .map_err(|_| format!("handshake {url}: timeout"))?
}

/// Sends one frame and waits for its echo.
async fn round_trip(ws: &mut Ws, frame: &Utf8Bytes) -> Result<(), String> {
    let step = async {
        ws.send(Message::Text(frame.clone()))
            .await
            .map_err(|e| format!("send: {e}"))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.len() == frame.len() => return Ok(()),
                Some(Ok(Message::Text(t))) => return Err(format!("echo of {} bytes", t.len())),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => return Err(format!("unexpected {other:?}")),
                Some(Err(e)) => return Err(format!("receive: {e}")),
                None => return Err("closed".into()),
            }
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, step)
        .await
        .map_err(|_| "round trip: timeout".to_string())?
}

/// Closing handshake: our Close, then read until the peer's Close and end of stream.
async fn close(mut ws: Ws) {
    let step = async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), step).await;
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU time of the processes, in µs (from /proc/PID/stat, all threads).
fn cpu_us(pids: &[u32], tck: f64) -> Result<f64, String> {
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
        // Fields after the command name (which may hold spaces) start at field 3 (state);
        // utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')').ok_or("bad /proc/PID/stat")? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ut: u64 = f.get(11).and_then(|v| v.parse().ok()).ok_or("utime")?;
        let st: u64 = f.get(12).and_then(|v| v.parse().ok()).ok_or("stime")?;
        ticks += ut + st;
    }
    Ok(ticks as f64 * 1e6 / tck)
}

/// Busy and stolen time of the whole machine, in µs (/proc/stat, all CPUs).
fn machine_us(tck: f64) -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0.0);
    // user nice system idle iowait irq softirq steal
    let busy = at(0) + at(1) + at(2) + at(5) + at(6);
    (busy * 1e6 / tck, at(7) * 1e6 / tck)
}

/// CPU time of this process, in µs.
fn self_us(tck: f64) -> f64 {
    cpu_us(&[std::process::id()], tck).unwrap_or(f64::NAN)
}

/// Summed VmRSS of the processes, in KiB.
fn rss_kib(pids: &[u32]) -> Result<u64, String> {
    let mut total = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or("VmRSS")?;
    }
    Ok(total)
}

/// Percentile of sorted values (nearest rank).
fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64
}

fn mean(v: &[u64]) -> f64 {
    v.iter().sum::<u64>() as f64 / v.len().max(1) as f64
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

// ---------------------------------------------------------------------------------------
// echo

async fn echo(listen: SocketAddr) -> Result<Value, String> {
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.set_reuseaddr(true).map_err(|e| e.to_string())?;
    sock.bind(listen)
        .map_err(|e| format!("bind {listen}: {e}"))?;
    let listener = sock.listen(4096).map_err(|e| e.to_string())?;
    eprintln!("echo: listening on {listen}");
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("echo: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tcp.set_nodelay(true).ok();
        tokio::spawn(async move {
            let Ok(Ok(mut ws)) = tokio::time::timeout(
                STEP_TIMEOUT,
                tokio_tungstenite::accept_async_with_config(tcp, Some(ws_config())),
            )
            .await
            else {
                return;
            };
            while let Some(Ok(m)) = ws.next().await {
                if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                    break;
                }
                // Ping: tungstenite queues the Pong itself; Close: it answers and the
                // stream ends.
            }
        });
    }
}

// ---------------------------------------------------------------------------------------
// rtt

async fn rtt(url: &str, frames: usize, size: usize, warmup: usize) -> Result<Value, String> {
    let addr = authority(url)?;
    let frame = payload(size);
    let mut ws = connect(url, &addr).await?;
    for _ in 0..warmup {
        round_trip(&mut ws, &frame).await?;
    }
    let mut lat = Vec::with_capacity(frames);
    let start = Instant::now();
    for _ in 0..frames {
        let t = Instant::now();
        round_trip(&mut ws, &frame).await?;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let elapsed = start.elapsed().as_secs_f64();
    close(ws).await;
    lat.sort_unstable();
    Ok(json!({
        "scenario": "rtt",
        "url": url,
        "frames": frames,
        "size": size,
        "p50_us": round1(pct(&lat, 50.0) / 1e3),
        "p99_us": round1(pct(&lat, 99.0) / 1e3),
        "mean_us": round1(mean(&lat) / 1e3),
        "max_us": round1(pct(&lat, 100.0) / 1e3),
        "seconds": round3(elapsed),
    }))
}

// ---------------------------------------------------------------------------------------
// load

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

async fn load(
    url: &str,
    conns: usize,
    (warmup_secs, seconds): (f64, f64),
    size: usize,
    pids: &[u32],
    echo_pids: &[u32],
    perf: Option<f64>,
) -> Result<Value, String> {
    let addr = authority(url)?;
    let frame = payload(size);
    let tck = clk_tck();

    // Open every connection first (50 at a time).
    let gate = Arc::new(Semaphore::new(50));
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (gate, url, addr) = (gate.clone(), url.to_string(), addr.clone());
        opening.spawn(async move {
            let _p = gate.acquire().await;
            connect(&url, &addr).await
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
    for mut ws in sockets {
        let (shared, frame, mut phase) = (shared.clone(), frame.clone(), phase_rx.clone());
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
        Some(cpu_us(pids, tck)?)
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
        Some(_) => Some(cpu_us(pids, tck)?),
        None => None,
    };
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

// ---------------------------------------------------------------------------------------
// idle

async fn idle(
    url: &str,
    conns: usize,
    concurrency: usize,
    warm: usize,
    (settle_secs, hold_secs, after_secs): (f64, f64, f64),
    pids: &[u32],
) -> Result<Value, String> {
    let addr = authority(url)?;
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
                round_trip(&mut ws, &frame).await?;
                Ok::<Ws, String>(ws)
            });
        }
        set
    };
    let close_all = |sockets: Vec<Ws>| {
        let gate = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut set = tokio::task::JoinSet::new();
        for ws in sockets {
            let gate = gate.clone();
            set.spawn(async move {
                let _p = gate.acquire().await;
                close(ws).await;
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
    close_all(warm_sockets).join_all().await;
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

    close_all(sockets).join_all().await;
    eprintln!("idle: all-closed");
    tokio::time::sleep(secs(after_secs)).await;
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
        out["returned_pct"] = json!(round1(
            100.0 * (o as f64 - a as f64) / (o as f64 - b as f64).max(1.0)
        ));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// handshakes

async fn handshakes(
    url: &str,
    count: usize,
    concurrency: usize,
    max_secs: f64,
    pids: &[u32],
) -> Result<Value, String> {
    let addr = authority(url)?;
    let tck = clk_tck();
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + secs(max_secs);
    let cpu0 = if pids.is_empty() {
        None
    } else {
        Some(cpu_us(pids, tck)?)
    };
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (next, errors, url, addr) =
            (next.clone(), errors.clone(), url.to_string(), addr.clone());
        set.spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < count && Instant::now() < deadline {
                let t = Instant::now();
                match connect(&url, &addr).await {
                    Ok(ws) => {
                        lat.push(t.elapsed().as_nanos() as u64);
                        close(ws).await;
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
        lat.extend(r.map_err(|e| e.to_string())?);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    lat.sort_unstable();
    let ok = lat.len();
    let mut out = json!({
        "scenario": "handshakes",
        "url": url,
        "count": count,
        "concurrency": concurrency,
        "ok": ok,
        "errors": errors.load(Ordering::Relaxed),
        "seconds": round3(elapsed),
        "handshakes_per_s": round1(ok as f64 / elapsed),
        "p50_ms": round3(pct(&lat, 50.0) / 1e6),
        "p99_ms": round3(pct(&lat, 99.0) / 1e6),
    });
    if let Some(a) = cpu0 {
        let b = cpu_us(pids, tck)?;
        out["cpu_us_per_handshake"] = json!(round1((b - a) / ok.max(1) as f64));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// report

/// Every target `bench/run.sh` knows, in table order. `sluice-base` and
/// `sluice-accept-base` are the same two tenants served by the binary of another revision
/// (`bench/run.sh --baseline REV`). Tables list only the targets a run measured.
const TARGETS: [&str; 7] = [
    "direct",
    "sluice",
    "sluice-base",
    "sluice-accept",
    "sluice-accept-base",
    "haproxy",
    "nginx",
];

/// Median of a non-empty list.
fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn report(input: &std::path::Path) {
    let text = std::fs::read_to_string(input)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", input.display()));
    // (target, scenario, field) → values across repetitions.
    let mut vals: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
    // (target, scenario, field) → repetition → value, for ratios within a repetition.
    type ByRep = BTreeMap<(String, String, String), BTreeMap<i64, f64>>;
    let mut by_rep: ByRep = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen: std::collections::BTreeSet<String> = Default::default();
    for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
        let Ok(Value::Object(m)) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let target = m.get("target").and_then(Value::as_str).unwrap_or("?");
        let scenario = m.get("scenario").and_then(Value::as_str).unwrap_or("?");
        seen.insert(target.to_string());
        if m.contains_key("error") {
            *errors.entry(format!("{target}/{scenario}")).or_default() += 1;
            continue;
        }
        let rep = m.get("rep").and_then(Value::as_i64).unwrap_or(0);
        for (k, v) in &m {
            if let Some(x) = v.as_f64().filter(|x| x.is_finite()) {
                by_rep
                    .entry((target.into(), scenario.into(), k.clone()))
                    .or_default()
                    .insert(rep, x);
                vals.entry((target.into(), scenario.into(), k.clone()))
                    .or_default()
                    .push(x);
            }
        }
    }
    let get = |t: &str, s: &str, f: &str| vals.get(&(t.into(), s.into(), f.into()));
    let median = |t: &str, s: &str, f: &str| -> Option<f64> {
        get(t, s, f)
            .filter(|v| !v.is_empty())
            .map(|v| median_of(v.clone()))
    };
    let present: Vec<&str> = TARGETS
        .iter()
        .copied()
        .filter(|t| seen.contains(*t))
        .collect();
    let has = |t: &str| present.contains(&t);
    let cell = |t: &str, s: &str, f: &str, digits: usize| -> String {
        median(t, s, f).map_or("—".into(), |x| format!("{x:.digits$}"))
    };
    let range = |t: &str, s: &str, f: &str, digits: usize| -> String {
        match get(t, s, f) {
            Some(v) if !v.is_empty() => {
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                format!("{lo:.digits$}–{hi:.digits$}")
            }
            _ => "—".into(),
        }
    };
    let reps = TARGETS
        .iter()
        .filter_map(|t| get(t, "load", "rt_per_s").map(Vec::len))
        .max()
        .unwrap_or(0);

    println!("Medians of {reps} interleaved repetitions (per-repetition min–max below).\n");
    println!(
        "| target | proxy CPU µs / round trip | round trips/s (100 conns) | syscalls / rt | context switches / rt | RTT p50 µs | RTT p99 µs | p99 µs under load | KB / idle session | RSS with all idle sessions open, MB | RSS after close, MB (retained) | handshakes/s | proxy CPU µs / handshake |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &t in &present {
        let mb =
            |f: &str| median(t, "idle", f).map_or("—".into(), |x| format!("{:.1}", x / 1024.0));
        let after = match (
            median(t, "idle", "rss_after_kib"),
            median(t, "idle", "retained_kib"),
        ) {
            (Some(a), Some(r)) => format!("{:.1} ({:+.1})", a / 1024.0, r / 1024.0),
            _ => "—".into(),
        };
        println!(
            "| {t} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(t, "load", "cpu_us_per_rt", 2),
            cell(t, "load", "rt_per_s", 0),
            cell(t, "load", "syscalls_per_rt", 2),
            cell(t, "load", "ctxsw_per_rt", 3),
            cell(t, "rtt", "p50_us", 1),
            cell(t, "rtt", "p99_us", 1),
            cell(t, "load", "p99_us", 0),
            cell(t, "idle", "kb_per_session", 2),
            mb("rss_open_kib"),
            after,
            cell(t, "handshakes", "handshakes_per_s", 0),
            cell(t, "handshakes", "cpu_us_per_handshake", 1),
        );
    }

    println!("\nSpread across repetitions (min–max):\n");
    println!("| target | CPU µs / rt | round trips/s | RTT p50 µs | RTT p99 µs | KB / idle session | handshakes/s |");
    println!("|---|---|---|---|---|---|---|");
    for &t in &present {
        println!(
            "| {t} | {} | {} | {} | {} | {} | {} |",
            range(t, "load", "cpu_us_per_rt", 2),
            range(t, "load", "rt_per_s", 0),
            range(t, "rtt", "p50_us", 1),
            range(t, "rtt", "p99_us", 1),
            range(t, "idle", "kb_per_session", 2),
            range(t, "handshakes", "handshakes_per_s", 0),
        );
    }

    println!("\nWho used the two cores during the load window (medians, in cores):\n");
    println!(
        "| target | proxy | client | echo server | everything else | stolen by the hypervisor |"
    );
    println!("|---|---|---|---|---|---|");
    for &t in &present {
        println!(
            "| {t} | {} | {} | {} | {} | {} |",
            cell(t, "load", "proxy_cpu_cores", 2),
            cell(t, "load", "client_cores", 2),
            cell(t, "load", "echo_cores", 2),
            cell(t, "load", "other_cores", 2),
            cell(t, "load", "steal_cores", 2),
        );
    }

    // Ratios within each repetition: the two proxies ran minutes apart, not hours, so
    // these cancel much of what the machine did meanwhile.
    // → (median, min, max) of who ÷ other over the repetitions both have.
    let paired_stats = |who: &str, s: &str, f: &str, other: &str| -> Option<(f64, f64, f64)> {
        let key = |t: &str| (t.to_string(), s.to_string(), f.to_string());
        let (a, b) = (by_rep.get(&key(who))?, by_rep.get(&key(other))?);
        let r: Vec<f64> = a
            .iter()
            .filter_map(|(rep, x)| b.get(rep).filter(|y| **y != 0.0).map(|y| x / y))
            .collect();
        let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (!r.is_empty()).then(|| (median_of(r), lo, hi))
    };
    let paired_of = |who: &str, s: &str, f: &str, other: &str| -> String {
        paired_stats(who, s, f, other).map_or("—".into(), |(med, lo, hi)| {
            format!("{med:.2}× ({lo:.2}–{hi:.2})")
        })
    };

    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "—",
    };

    // Against a baseline revision (bench/run.sh --baseline REV): each sluice target
    // beside the same tenant served by the other revision's binary, paired per repetition.
    for (new, old) in [
        ("sluice", "sluice-base"),
        ("sluice-accept", "sluice-accept-base"),
    ] {
        if !(has(new) && has(old)) {
            continue;
        }
        println!(
            "\n{new} against {old} (the --baseline revision): medians, and {new} ÷ {old} \
             within each repetition, median (min–max). Within 10 %: the median ratio is at \
             most 1.10 for costs and latencies, at least 0.90 for rates.\n"
        );
        println!("| figure | {new} | {old} | {new} ÷ {old} | within 10 % |");
        println!("|---|---|---|---|---|");
        // (label, scenario, field, digits, a rate: higher is better)
        for (label, sc, f, d, rate) in [
            ("CPU µs / round trip", "load", "cpu_us_per_rt", 2, false),
            ("round trips/s", "load", "rt_per_s", 0, true),
            ("syscalls / round trip", "load", "syscalls_per_rt", 2, false),
            ("RTT p50 µs", "rtt", "p50_us", 1, false),
            ("RTT p99 µs", "rtt", "p99_us", 1, false),
            ("p99 µs under load", "load", "p99_us", 0, false),
            ("KB / idle session", "idle", "kb_per_session", 2, false),
            ("handshakes/s", "handshakes", "handshakes_per_s", 0, true),
            (
                "CPU µs / handshake",
                "handshakes",
                "cpu_us_per_handshake",
                1,
                false,
            ),
        ] {
            let within = paired_stats(new, sc, f, old)
                .map(|(m, _, _)| if rate { m >= 0.9 } else { m <= 1.1 });
            println!(
                "| {label} | {} | {} | {} | {} |",
                cell(new, sc, f, d),
                cell(old, sc, f, d),
                paired_of(new, sc, f, old),
                verdict(within)
            );
        }
    }

    // Against HAProxy and NGINX (absent from a run with --only-sluice).
    if has("nginx") || has("haproxy") {
        let paired = |s: &str, f: &str, other: &str| paired_of("sluice", s, f, other);
        println!("\nsluice ÷ the other proxy within each repetition: median (min–max):\n");
        println!("| figure | sluice ÷ NGINX | sluice ÷ HAProxy |");
        println!("|---|---|---|");
        for (label, sc, f) in [
            ("CPU µs / round trip", "load", "cpu_us_per_rt"),
            ("syscalls / round trip", "load", "syscalls_per_rt"),
            ("round trips/s", "load", "rt_per_s"),
            ("RTT p50", "rtt", "p50_us"),
            ("RTT p99", "rtt", "p99_us"),
            ("KB / idle session", "idle", "kb_per_session"),
            ("handshakes/s", "handshakes", "handshakes_per_s"),
            ("CPU µs / handshake", "handshakes", "cpu_us_per_handshake"),
        ] {
            println!(
                "| {label} | {} | {} |",
                paired(sc, f, "nginx"),
                paired(sc, f, "haproxy")
            );
        }

        // Where sluice stands against the aims of issue 5.
        let s = |sc: &str, f: &str| median("sluice", sc, f);
        let h = |sc: &str, f: &str| median("haproxy", sc, f);
        let n = |sc: &str, f: &str| median("nginx", sc, f);
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b != 0.0 => format!("{:.2}×", a / b),
            _ => "—".into(),
        };
        println!("\nAims (issue 5), sluice against the medians above:\n");
        println!("| aim | sluice | reference | ratio | met |");
        println!("|---|---|---|---|---|");
        let (sc, nc) = (s("load", "cpu_us_per_rt"), n("load", "cpu_us_per_rt"));
        println!(
            "| CPU per round trip ≤ 0.95 × NGINX | {} µs | {} µs | {} | {} |",
            cell("sluice", "load", "cpu_us_per_rt", 2),
            cell("nginx", "load", "cpu_us_per_rt", 2),
            ratio(sc, nc),
            verdict(sc.zip(nc).map(|(a, b)| a <= 0.95 * b))
        );
        let (sp, np) = (s("rtt", "p99_us"), n("rtt", "p99_us"));
        println!(
            "| RTT p99 ≤ NGINX | {} µs | {} µs | {} | {} |",
            cell("sluice", "rtt", "p99_us", 1),
            cell("nginx", "rtt", "p99_us", 1),
            ratio(sp, np),
            verdict(sp.zip(np).map(|(a, b)| a <= b))
        );
        let (sm, hm) = (s("idle", "kb_per_session"), h("idle", "kb_per_session"));
        println!(
            "| idle memory ≤ HAProxy | {} KB | {} KB | {} | {} |",
            cell("sluice", "idle", "kb_per_session", 2),
            cell("haproxy", "idle", "kb_per_session", 2),
            ratio(sm, hm),
            verdict(sm.zip(hm).map(|(a, b)| a <= b))
        );
        let (shs, nhs) = (
            s("handshakes", "handshakes_per_s"),
            n("handshakes", "handshakes_per_s"),
        );
        println!(
            "| handshakes/s ≥ NGINX | {} | {} | {} | {} |",
            cell("sluice", "handshakes", "handshakes_per_s", 0),
            cell("nginx", "handshakes", "handshakes_per_s", 0),
            ratio(shs, nhs),
            verdict(shs.zip(nhs).map(|(a, b)| a >= b))
        );
        let sr = s("idle", "returned_pct");
        println!(
        "| memory returned after close | {} % of the growth returned | HAProxy {} %, NGINX {} % | — | {} |",
        cell("sluice", "idle", "returned_pct", 0),
        cell("haproxy", "idle", "returned_pct", 0),
        cell("nginx", "idle", "returned_pct", 0),
        verdict(sr.map(|r| r >= 90.0))
    );
    }

    // Issue 7: what accept mode's message relay costs against hold mode's tunnel.
    println!(
        "\nAims (issue 7), sluice-accept (message relay) against sluice (hold-mode tunnel):\n"
    );
    println!(
        "| aim | sluice-accept | sluice | sluice-accept ÷ sluice within each repetition | met |"
    );
    println!("|---|---|---|---|---|");
    let (ac, hc) = (
        median("sluice-accept", "load", "cpu_us_per_rt"),
        median("sluice", "load", "cpu_us_per_rt"),
    );
    println!(
        "| CPU per round trip ≤ 1.4 × hold | {} µs | {} µs | {} | {} |",
        cell("sluice-accept", "load", "cpu_us_per_rt", 2),
        cell("sluice", "load", "cpu_us_per_rt", 2),
        paired_of("sluice-accept", "load", "cpu_us_per_rt", "sluice"),
        verdict(ac.zip(hc).map(|(a, b)| a <= 1.4 * b))
    );
    let am = median("sluice-accept", "idle", "kb_per_session");
    println!(
        "| idle memory < 16 KB per session | {} KB | {} KB | {} | {} |",
        cell("sluice-accept", "idle", "kb_per_session", 2),
        cell("sluice", "idle", "kb_per_session", 2),
        paired_of("sluice-accept", "idle", "kb_per_session", "sluice"),
        verdict(am.map(|a| a < 16.0))
    );
    println!(
        "| (for reading) RTT p99 | {} µs | {} µs | {} | — |",
        cell("sluice-accept", "rtt", "p99_us", 1),
        cell("sluice", "rtt", "p99_us", 1),
        paired_of("sluice-accept", "rtt", "p99_us", "sluice"),
    );
    if !errors.is_empty() {
        println!("\nFailed runs (left out of the medians): {errors:?}");
    }
}
