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
//! $W handshakes --url ws://… --count 6000 --concurrency 200 --fills 3 --pids 1234
//! $W --sip echo --listen 127.0.0.1:17000                           # also a minimal SIP call server
//! $W --sip load --url ws://127.0.0.1:17001/t/bench_sip/echo --conns 100 --pids 1234
//! $W calls --url ws://…/t/bench_sip/echo --conns 2000 --pids 1234  # memory per SIP call
//! $W report --input bench/results/…/runs.jsonl                     # Markdown table of medians
//! ```
//!
//! Sources: this file (command line, shared helpers, `echo`, `rtt`), `load.rs`,
//! `sessions.rs` (`idle`, `handshakes`), `sip.rs` (`--sip`: SIP messages, the echo
//! server's call answers), `calls.rs` (`calls`), `report.rs` and `report/` (`report`).
//!
//! # SIP (issue 17)
//!
//! With the global `--sip`, clients offer subprotocol `sip` and send real SIP messages
//! (`sip.rs`): `rtt` and `load` place one call per connection (INVITE → `200` → ACK)
//! and then send in-dialog `INFO`s of about `--size` bytes, which the echo server echoes;
//! `idle` sends an `OPTIONS`. The echo server always accepts subprotocol `sip`, and with
//! `--sip` answers INVITE and BYE like a minimal call server. `calls` (always SIP) reads
//! the proxy's RSS with N idle SIP sessions open and again with one call up on each:
//! memory per tracked call.
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
//!   after the hold, 2 s after every session has been closed, and `--after-secs` after.
//! - `calls` reads it before opening, with every SIP session open and idle, with one call
//!   up on each, and after every call was hung up.
//! - `handshakes` runs repeated connect fills (`--count` sessions opened with
//!   `--concurrency` handshakes in flight, held until the fill is complete, then closed)
//!   and reads CPU time before each fill, when its last handshake has ended, and after
//!   its sessions have closed and `--settle-secs` passed.
//!
//! # Closing
//!
//! Every session ends with the WebSocket closing handshake; the client then waits (at
//! most 1 s) for the proxy to close TCP first, as RFC 6455 asks of a server, and drops
//! its socket with `SO_LINGER` 0. The RST only clears the proxy's FIN_WAIT2 state, so
//! neither side of the client's leg stays in TIME_WAIT, and tens of thousands of
//! sessions a minute leave loopback's ephemeral ports (about 28,000) free.

mod calls;
mod load;
#[path = "../support/numbers.rs"]
mod numbers;
mod report;
mod sessions;
mod sip;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use numbers::{mean, pct, round1, round3, secs};
use serde_json::{json, Map, Value};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Any single network step (connect, handshake, one round trip, close) that takes longer
/// than this counts as an error.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(about = "WebSocket benchmark client and echo server for sluice's bench/run.sh")]
struct Cli {
    /// Worker threads of the tokio runtime (1 keeps the client off the proxy's core).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// SIP over WebSocket: clients offer subprotocol `sip` and send SIP messages; the
    /// echo server answers INVITE and BYE like a call server (see "SIP" above).
    #[arg(long, global = true)]
    sip: bool,
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
        /// sluice's admin `/metrics` URL: with `--sip`, `sluice_calls_active` of the
        /// URL's tenant is read once every call is up (shows they are counted).
        #[arg(long)]
        metrics: Option<String>,
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
    /// SIP sessions, idle and then with one call up each: memory per tracked call.
    Calls {
        #[arg(long)]
        url: String,
        /// SIP sessions opened (each gets one call).
        #[arg(long, default_value_t = 2000)]
        conns: usize,
        /// Sessions being opened, calls being placed, at once.
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        /// Sessions opened, given a call and closed before the baseline is read.
        #[arg(long, default_value_t = 16)]
        warm: usize,
        /// Wait after each phase (open, calls up, calls ended) before reading memory.
        #[arg(long, default_value_t = 2.0)]
        settle_secs: f64,
        /// Bytes of each session's OPTIONS (the largest message a session relays).
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Processes whose VmRSS is summed (comma-separated).
        #[arg(long, value_delimiter = ',')]
        pids: Vec<u32>,
        /// sluice's admin `/metrics` URL: `sluice_calls_active` of the URL's tenant is
        /// read at each phase.
        #[arg(long)]
        metrics: Option<String>,
    },
    /// Repeated connect fills: handshakes per second and proxy CPU per handshake.
    Handshakes {
        #[arg(long)]
        url: String,
        /// Sessions opened per fill (each held open until the fill is complete).
        #[arg(long, default_value_t = 6000)]
        count: usize,
        /// Handshakes in flight at once.
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        /// Fills measured.
        #[arg(long, default_value_t = 3)]
        fills: usize,
        /// Start no fill after this long (the first always runs).
        #[arg(long, default_value_t = 60.0)]
        max_secs: f64,
        /// Wait after a fill's sessions have closed before the next fill.
        #[arg(long, default_value_t = 1.0)]
        settle_secs: f64,
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
        report::report(input);
        return;
    }
    sip::set(cli.sip || matches!(cli.cmd, Cmd::Calls { .. }));
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
                metrics,
            } => {
                let perf = if perf { Some(perf_secs) } else { None };
                let echo: Vec<u32> = echo_pid.into_iter().collect();
                load::load(
                    &url,
                    conns,
                    (warmup_secs, seconds),
                    size,
                    (&pids, &echo),
                    perf,
                    metrics.as_deref(),
                )
                .await
            }
            Cmd::Calls {
                url,
                conns,
                concurrency,
                warm,
                settle_secs,
                size,
                pids,
                metrics,
            } => {
                let c = calls::CallsRun {
                    conns,
                    concurrency,
                    warm,
                    settle_secs,
                    size,
                    metrics,
                };
                calls::calls(&url, &c, &pids).await
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
                sessions::idle(&url, conns, concurrency, warm, waits, &pids).await
            }
            Cmd::Handshakes {
                url,
                count,
                concurrency,
                fills,
                max_secs,
                settle_secs,
                pids,
            } => {
                let f = sessions::Fills {
                    count,
                    concurrency,
                    fills,
                    max_secs,
                    settle_secs,
                };
                sessions::handshakes(&url, &f, &pids).await
            }
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

/// The frames one connection of `rtt` or `load` sends: the same printable payload
/// every time, or (`--sip`) in-dialog SIP INFOs of one call.
pub(crate) enum Frames {
    Plain(Utf8Bytes),
    Sip(sip::Dialog),
}

impl Frames {
    pub(crate) fn new(size: usize) -> Self {
        if sip::on() {
            Frames::Sip(sip::Dialog::new(size))
        } else {
            Frames::Plain(payload(size))
        }
    }

    /// The next frame to send.
    pub(crate) fn next(&mut self) -> Utf8Bytes {
        match self {
            Frames::Plain(f) => f.clone(),
            Frames::Sip(d) => Utf8Bytes::from(d.info()),
        }
    }

    /// Before the first frame: with `--sip`, places the connection's call.
    pub(crate) async fn start(&mut self, ws: &mut Ws) -> Result<(), String> {
        match self {
            Frames::Plain(_) => Ok(()),
            Frames::Sip(d) => sip::place_call(ws, d).await,
        }
    }

    /// After the last frame: with `--sip`, hangs the call up.
    pub(crate) async fn end(&mut self, ws: &mut Ws) -> Result<(), String> {
        match self {
            Frames::Plain(_) => Ok(()),
            Frames::Sip(d) => sip::hang_up(ws, d).await,
        }
    }
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
        let mut req = url
            .into_client_request()
            .map_err(|e| format!("handshake {url}: {e}"))?;
        if sip::on() {
            req.headers_mut().insert(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                http::HeaderValue::from_static(sip::PROTOCOL),
            );
        }
        // tungstenite fails the handshake when an offered subprotocol is not answered.
        let (ws, resp) = tokio_tungstenite::client_async_with_config(req, tcp, Some(ws_config()))
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

/// Closing handshake: our Close, then read until the peer's Close and end of stream;
/// then wait (at most 1 s) for the peer to close TCP first, and drop the socket with
/// `SO_LINGER` 0, so no TIME_WAIT is left on either side (see "Closing" above).
async fn close(mut ws: Ws) {
    let step = async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), step).await;
    let tcp = ws.get_mut();
    let mut buf = [0u8; 512];
    let eof = async {
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), eof).await;
    tcp.set_zero_linger().ok();
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
    cpu_split_us(pids, tck).map(|(user, system)| user + system)
}

/// (user, system) CPU time of the processes, in µs (from /proc/PID/stat, all threads).
/// System time includes what the kernel does in the process's system calls on behalf of
/// its peers: on loopback, a send also runs the receiving socket's TCP processing.
fn cpu_split_us(pids: &[u32], tck: f64) -> Result<(f64, f64), String> {
    let (mut user, mut system) = (0u64, 0u64);
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
        // Fields after the command name (which may hold spaces) start at field 3 (state);
        // utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')').ok_or("bad /proc/PID/stat")? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ut: u64 = f.get(11).and_then(|v| v.parse().ok()).ok_or("utime")?;
        let st: u64 = f.get(12).and_then(|v| v.parse().ok()).ok_or("stime")?;
        user += ut;
        system += st;
    }
    let us = |ticks: u64| ticks as f64 * 1e6 / tck;
    Ok((us(user), us(system)))
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
                tokio_tungstenite::accept_hdr_async_with_config(tcp, take_sip, Some(ws_config())),
            )
            .await
            else {
                return;
            };
            let sip = sip::on();
            while let Some(Ok(m)) = ws.next().await {
                let out = match m {
                    // A call server's answer to INVITE and BYE; nothing for an ACK.
                    Message::Text(t) if sip => match sip::answer(&t) {
                        None => Some(Message::Text(t)),
                        Some(answer) => answer.map(Message::text),
                    },
                    m if m.is_text() || m.is_binary() => Some(m),
                    // Ping: tungstenite queues the Pong itself; Close: it answers and
                    // the stream ends.
                    _ => None,
                };
                if let Some(out) = out {
                    if ws.send(out).await.is_err() {
                        break;
                    }
                }
            }
        });
    }
}

/// The echo server's handshake: subprotocol `sip` is taken when offered (sluice's
/// `accept` mode closes a client whose edge does not take it); other offers are left
/// unanswered, as before.
#[allow(clippy::result_large_err)] // tungstenite's callback signature
fn take_sip(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let offered = req
        .headers()
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(sip::PROTOCOL));
    if offered {
        resp.headers_mut().insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static(sip::PROTOCOL),
        );
    }
    Ok(resp)
}

// ---------------------------------------------------------------------------------------
// rtt

async fn rtt(url: &str, frames: usize, size: usize, warmup: usize) -> Result<Value, String> {
    let addr = authority(url)?;
    let mut source = Frames::new(size);
    let mut ws = connect(url, &addr).await?;
    source.start(&mut ws).await?;
    for _ in 0..warmup {
        round_trip(&mut ws, &source.next()).await?;
    }
    let mut lat = Vec::with_capacity(frames);
    let start = Instant::now();
    for _ in 0..frames {
        let frame = source.next();
        let t = Instant::now();
        round_trip(&mut ws, &frame).await?;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let elapsed = start.elapsed().as_secs_f64();
    source.end(&mut ws).await?;
    close(ws).await;
    lat.sort_unstable();
    Ok(json!({
        "scenario": "rtt",
        "url": url,
        "sip": sip::on(),
        "frames": frames,
        "size": size,
        "p50_us": round1(pct(&lat, 50.0) / 1e3),
        "p99_us": round1(pct(&lat, 99.0) / 1e3),
        "mean_us": round1(mean(&lat) / 1e3),
        "max_us": round1(pct(&lat, 100.0) / 1e3),
        "seconds": round3(elapsed),
    }))
}
