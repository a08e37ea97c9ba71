//! `cluster_bench`: what `[cluster]` (issue 15, DESIGN.md "Scale-out") costs and how its
//! shared limits behave, on one machine.
//!
//! ```sh
//! cargo build --release --example cluster_bench
//! target/release/examples/cluster_bench              # every figure, about 2.5 minutes
//! target/release/examples/cluster_bench --only latency,redis --connects 1000
//! ```
//!
//! It starts its own `redis-server` (from `PATH`, on a free loopback port, persistence
//! off; a fresh one for each measurement), a WebSocket echo server (the edge), and
//! sluice replicas in this process (`sluice::Bound`), each with its own listener, admin
//! listener and `[cluster]` membership (replica ids `r0`, `r1`, …, default `heartbeat`,
//! `lease_ttl` and `redis_timeout`). One JSON object per figure goes to stdout, progress
//! to stderr.
//!
//! | figure | what |
//! | --- | --- |
//! | `latency` | `--connects` sequential connects (after 100 unmeasured), each closed at once, through one replica without `[cluster]` and one with: time from TCP connect to the `101`, p50/p99; and from the admin `/metrics`, the mean of `sluice_queue_wait_seconds` and `sluice_cluster_decision_seconds` (the Redis decision alone) |
//! | `redis` | three replicas: `INFO commandstats` and `INFO cpu` before and after `--connects` connects spread round robin (sequential, then `--concurrency` at a time), minus an idle window of the same replicas (heartbeats) scaled to the run's length; per admitted connect |
//! | `throughput` | `--concurrency` clients opening and closing sessions as fast as they can for `--seconds` (after 1 s unmeasured): one replica without `[cluster]`, one with, three with (clients round robin) |
//! | `fairness` | `[edge]` handshake rate 50/s burst 1, tenants `w1` (weight 1) and `w3` (weight 3), `--queued` clients each per tenant that reconnect as soon as they are admitted; admitted per tenant over `--seconds` (after 2 s unmeasured): one replica, three with each tenant's clients spread over all, three with `w1`'s clients on `r0` only and `w3`'s on `r1` only |
//!
//! `BENCH_FAIR=debug` runs other `fairness` cases: one replica with `[cluster]`, and
//! three with `w1`'s clients on `r1` only and `w3`'s on `r2` only. Each `fairness` figure
//! ends with every replica's admission state (`state_at_end`).
//!
//! # Threads
//!
//! The replicas share one tokio runtime with a worker per core (as one sluice process
//! would have; three processes would each have their own). The clients and the echo
//! server each run on a runtime of one worker, so that neither takes both cores. On a
//! two-core machine, three replicas cannot be faster than one: the `throughput` figure
//! shows what coordination through Redis costs, not what scaling out gains.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/numbers.rs"]
mod numbers;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use numbers::{mean, pct, round1, round3, secs};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

/// Any one connect, close or scrape that takes longer is an error.
const STEP_TIMEOUT: Duration = Duration::from_secs(40);

#[derive(Parser, Clone)]
#[command(
    about = "What [cluster] costs: admission latency, Redis load, handshakes/s, edge fair share"
)]
struct Cli {
    /// Figures to measure (comma-separated): latency, redis, throughput, fairness.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "latency,redis,throughput,fairness"
    )]
    only: Vec<String>,
    /// Sequential connects per latency measurement, and per Redis-cost run.
    #[arg(long, default_value_t = 2000)]
    connects: usize,
    /// Clients at a time in `throughput` and in the concurrent Redis-cost run.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Measured window of `throughput` and `fairness`, and the idle window of `redis`.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Queued clients per tenant in `fairness`.
    #[arg(long, default_value_t = 48)]
    queued: usize,
    /// `[edge] handshake_rate` in `fairness`.
    #[arg(long, default_value_t = 50.0)]
    edge_rate: f64,
}

fn main() {
    let cli = Cli::parse();
    // The replicas: a worker per core, as `sluice run` has.
    let sluice_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice")
        .build()
        .expect("sluice runtime");
    // The echo edge: one worker.
    let echo_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("echo")
        .build()
        .expect("echo runtime");
    let echo = echo_rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("echo binds");
        let addr = listener.local_addr().expect("echo address");
        tokio::spawn(echo_server(listener));
        addr
    });
    // The clients: one worker.
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("client")
        .build()
        .expect("client runtime");
    let bench = Bench {
        cli: cli.clone(),
        sluice: sluice_rt.handle().clone(),
        echo,
    };
    eprintln!(
        "cluster_bench: echo edge on {echo}; load average {}",
        loadavg()
    );
    client_rt.block_on(async {
        for figure in &cli.only {
            let out = match figure.as_str() {
                "latency" => bench.latency().await,
                "redis" => bench.redis_cost().await,
                "throughput" => bench.throughput().await,
                "fairness" => bench.fairness().await,
                other => panic!("unknown figure {other}: latency, redis, throughput, fairness"),
            };
            for line in out {
                println!("{line}");
            }
        }
    });
    eprintln!("cluster_bench: done; load average {}", loadavg());
}

struct Bench {
    cli: Cli,
    sluice: tokio::runtime::Handle,
    echo: SocketAddr,
}

/// `/proc/loadavg`'s first three fields.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------
// Config and replicas

/// A tenant of the benchmark: name and `[edge]` weight.
type TenantDef = (&'static str, u32);

/// One replica's config text.
fn replica_config(
    echo: SocketAddr,
    redis: Option<(&str, usize)>,
    tenants: &[TenantDef],
    edge_rate: Option<f64>,
) -> String {
    let mut text = String::from(
        "[listen]\naddress = \"127.0.0.1:0\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\
         [tenant_identity]\nsources = [\"path\"]\n\
         [shutdown]\ndrain_timeout = \"2s\"\n\
         [upstream]\nhandshake_timeout = \"5s\"\n",
    );
    text.push_str(&format!(
        "[upstream.groups.primary]\nendpoints = [\"ws://{echo}\"]\n"
    ));
    if let Some((url, id)) = redis {
        text.push_str(&format!(
            "[cluster]\nredis = \"{url}\"\nreplica_id = \"r{id}\"\non_redis_failure = \"local-share\"\n"
        ));
    }
    if let Some(rate) = edge_rate {
        text.push_str(&format!(
            "[edge]\nmax_sessions = 100000\nhandshake_rate = {rate:?}\nhandshake_burst = 1\n"
        ));
    }
    for (name, weight) in tenants {
        text.push_str(&format!(
            "[tenants.{name}]\nauth = {{ kind = \"none\" }}\nmax_sessions = 100000\n\
             handshake_rate = 100000.0\nhandshake_burst = 1000\nqueue_depth = 10000\n\
             queue_timeout = \"30s\"\nweight = {weight}\n"
        ));
    }
    text
}

/// A sluice replica serving on the sluice runtime.
struct Replica {
    addr: SocketAddr,
    admin: SocketAddr,
    runtime: Arc<sluice::runtime::Runtime>,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl Replica {
    async fn start(rt: &tokio::runtime::Handle, text: String) -> Replica {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (tell, told) = tokio::sync::oneshot::channel();
        let done = rt.spawn(async move {
            let config = sluice::Config::parse(&text, &HashMap::new()).expect("config is valid");
            let bound = sluice::Bound::bind(config).await.expect("sluice binds");
            let _ = tell.send((bound.local_addr(), bound.admin_addr(), bound.runtime()));
            bound
                .serve(
                    async move {
                        let _ = stopped.await;
                    },
                    false,
                )
                .await;
        });
        let (addr, admin, runtime) = told.await.expect("the replica bound");
        if let Some(cluster) = &runtime.cluster {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !cluster.status().redis_up {
                assert!(Instant::now() < deadline, "replica never reached Redis");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Replica {
            addr,
            admin,
            runtime,
            stop,
            done,
        }
    }

    /// Starts the drain and waits for its end.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.done).await;
    }

    /// Admission state now: per tenant live, cluster-wide live and queued; the edge's
    /// live slots and waiting tenants.
    fn load(&self, tenants: &[TenantDef]) -> Value {
        let mut v = serde_json::Map::new();
        for (name, _) in tenants {
            if let Some(t) = self.runtime.tenant(name) {
                let l = t.gate.load();
                v.insert(
                    (*name).to_owned(),
                    json!({"live": l.live, "cluster_live": l.cluster_live, "queued": l.queued}),
                );
            }
        }
        if let Some(e) = self.runtime.admission.edge_load() {
            v.insert(
                "edge".to_owned(),
                json!({"live": e.live, "waiting": e.waiting}),
            );
        }
        Value::Object(v)
    }

    fn url(&self, tenant: &str) -> String {
        format!("ws://{}/t/{tenant}/bench", self.addr)
    }
}

async fn fleet(
    bench: &Bench,
    n: usize,
    redis: Option<&RedisServer>,
    tenants: &[TenantDef],
    edge_rate: Option<f64>,
) -> Vec<Replica> {
    let mut out = Vec::new();
    for i in 0..n {
        let url = redis.map(RedisServer::url);
        let text = replica_config(
            bench.echo,
            url.as_deref().map(|u| (u, i)),
            tenants,
            edge_rate,
        );
        out.push(Replica::start(&bench.sluice, text).await);
    }
    out
}

async fn stop_all(fleet: Vec<Replica>) {
    for r in fleet {
        r.stop().await;
    }
}

// ---------------------------------------------------------------------------------------
// redis-server

struct RedisServer {
    port: u16,
    child: Child,
    con: redis::aio::MultiplexedConnection,
}

impl RedisServer {
    /// A fresh `redis-server` on a free loopback port, persistence off.
    async fn start() -> RedisServer {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(std::env::temp_dir())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server on PATH (Debian: apt-get install redis-server)");
            let client =
                redis::Client::open(format!("redis://127.0.0.1:{port}/0")).expect("a Redis URL");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if let Ok(Ok(con)) = tokio::time::timeout(
                    Duration::from_secs(1),
                    client.get_multiplexed_async_connection(),
                )
                .await
                {
                    return RedisServer { port, child, con };
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn info(&self, section: &str) -> String {
        let mut con = self.con.clone();
        redis::cmd("INFO")
            .arg(section)
            .query_async(&mut con)
            .await
            .expect("INFO")
    }

    /// Calls and µs per command, and the server's CPU seconds (user + system).
    async fn snapshot(&self) -> RedisSnapshot {
        let stats = self.info("commandstats").await;
        let cpu = self.info("cpu").await;
        let mut calls = BTreeMap::new();
        for line in stats.lines() {
            let Some(rest) = line.strip_prefix("cmdstat_") else {
                continue;
            };
            let Some((name, fields)) = rest.split_once(':') else {
                continue;
            };
            let field = |key: &str| -> f64 {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0)
            };
            calls.insert(name.to_owned(), (field("calls="), field("usec=")));
        }
        let cpu_field = |key: &str| -> f64 {
            cpu.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0)
        };
        RedisSnapshot {
            at: Instant::now(),
            calls,
            cpu_s: cpu_field("used_cpu_user:") + cpu_field("used_cpu_sys:"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone)]
struct RedisSnapshot {
    at: Instant,
    /// Command → (calls, µs inside it).
    calls: BTreeMap<String, (f64, f64)>,
    cpu_s: f64,
}

/// What Redis did between two snapshots.
struct RedisDelta {
    seconds: f64,
    calls: BTreeMap<String, (f64, f64)>,
    cpu_s: f64,
}

impl RedisDelta {
    fn between(a: &RedisSnapshot, b: &RedisSnapshot) -> RedisDelta {
        let mut calls = BTreeMap::new();
        for (name, (c1, u1)) in &b.calls {
            // Our own INFO calls are not sluice's.
            if name == "info" {
                continue;
            }
            let (c0, u0) = a.calls.get(name).copied().unwrap_or((0.0, 0.0));
            if c1 - c0 > 0.0 {
                calls.insert(name.clone(), (c1 - c0, u1 - u0));
            }
        }
        RedisDelta {
            seconds: b.at.duration_since(a.at).as_secs_f64(),
            calls,
            cpu_s: b.cpu_s - a.cpu_s,
        }
    }

    /// `self` minus `idle` scaled to `self`'s length, divided by `n`.
    fn per(&self, idle: &RedisDelta, n: f64) -> Value {
        let scale = self.seconds / idle.seconds.max(1e-9);
        let mut per_command = serde_json::Map::new();
        let mut scripts = 0.0;
        let mut all = 0.0;
        for (name, (calls, _)) in &self.calls {
            let base = idle.calls.get(name).map_or(0.0, |c| c.0) * scale;
            let v = (calls - base) / n;
            per_command.insert(name.clone(), json!(round3(v)));
            all += v;
            if name.starts_with("eval") || name.starts_with("fcall") {
                scripts += v;
            }
        }
        let script_us: f64 = self
            .calls
            .iter()
            .filter(|(name, _)| name.starts_with("eval"))
            .map(|(name, (_, us))| us - idle.calls.get(name).map_or(0.0, |c| c.1) * scale)
            .sum();
        json!({
            "scripts_per_connect": round3(scripts),
            "commands_per_connect_incl_inside_scripts": round3(all),
            "per_command": per_command,
            "redis_cpu_us_per_connect": round1((self.cpu_s - idle.cpu_s * scale) * 1e6 / n),
            "script_us_per_connect": round1(script_us / n),
            "idle_cpu_us_per_s": round1(idle.cpu_s * 1e6 / idle.seconds.max(1e-9)),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Echo edge and clients

async fn echo_server(listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        tcp.set_nodelay(true).ok();
        tokio::spawn(async move {
            let Ok(Ok(mut ws)) =
                tokio::time::timeout(STEP_TIMEOUT, tokio_tungstenite::accept_async(tcp)).await
            else {
                return;
            };
            while let Some(Ok(m)) = ws.next().await {
                if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Connect and handshake through sluice; the session, or why not.
async fn connect(url: &str) -> Result<Ws, String> {
    let addr = url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .ok_or("bad URL")?
        .to_owned();
    let step = async {
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_nodelay(true).ok();
        let (ws, _) = tokio_tungstenite::client_async(url, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        Ok(ws)
    };
    tokio::time::timeout(STEP_TIMEOUT, step)
        .await
        .map_err(|_| "handshake: timeout".to_owned())?
}

async fn close(mut ws: Ws) {
    let step = async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), step).await;
}

/// `count` sequential connect + close cycles over `urls` round robin (after `warm`
/// unmeasured): each time to the `101`, in ns, sorted.
async fn sequential(urls: &[String], warm: usize, count: usize) -> (Vec<u64>, usize) {
    let mut lat = Vec::with_capacity(count);
    let mut errors = 0;
    for i in 0..warm + count {
        let url = &urls[i % urls.len()];
        let t = Instant::now();
        match connect(url).await {
            Ok(ws) => {
                if i >= warm {
                    lat.push(t.elapsed().as_nanos() as u64);
                }
                close(ws).await;
            }
            Err(e) => {
                if errors == 0 {
                    eprintln!("connect: {e}");
                }
                errors += 1;
            }
        }
    }
    lat.sort_unstable();
    (lat, errors)
}

/// Counters of a closed loop of clients.
#[derive(Default)]
struct Loop {
    ok: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

/// `clients` tasks, each connecting to its URL and closing as soon as admitted, until
/// `stop` (or `limit`). Client `i` counts into `counters[i % counters.len()]` and uses
/// `urls[i % urls.len()]`.
fn closed_loop(
    urls: &[String],
    clients: usize,
    counters: &[Arc<Loop>],
    limit: Instant,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..clients {
        let url = urls[i % urls.len()].clone();
        let counter = counters[i % counters.len()].clone();
        set.spawn(async move {
            while !counter.stop.load(Ordering::Relaxed) && Instant::now() < limit {
                match connect(&url).await {
                    Ok(ws) => {
                        counter.ok.fetch_add(1, Ordering::Relaxed);
                        close(ws).await;
                    }
                    Err(e) => {
                        if counter.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("client: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }
    set
}

fn counts(counters: &[Arc<Loop>]) -> Vec<u64> {
    counters
        .iter()
        .map(|c| c.ok.load(Ordering::Relaxed))
        .collect()
}

async fn end_loop(counters: &[Arc<Loop>], mut set: tokio::task::JoinSet<()>) -> u64 {
    for c in counters {
        c.stop.store(true, Ordering::Relaxed);
    }
    // Clients still queued would wait for their turn: cut them off.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while set.join_next().await.is_some() {}
    })
    .await;
    set.abort_all();
    while set.join_next().await.is_some() {}
    counters
        .iter()
        .map(|c| c.errors.load(Ordering::Relaxed))
        .sum()
}

// ---------------------------------------------------------------------------------------
// Admin /metrics

async fn scrape(admin: SocketAddr) -> String {
    let step = async {
        let mut tcp = TcpStream::connect(admin).await.ok()?;
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut body = Vec::new();
        tcp.read_to_end(&mut body).await.ok()?;
        Some(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(STEP_TIMEOUT, step)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// The sum over all label sets of series `name`, and its histogram buckets (`le` →
/// cumulative count) when `name` is a histogram's base name.
#[derive(Default, Clone)]
struct Hist {
    sum: f64,
    count: f64,
    buckets: BTreeMap<String, f64>,
}

fn hist(text: &str, name: &str) -> Hist {
    let mut h = Hist::default();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (base, labels) = series.split_once('{').unwrap_or((series, ""));
        if base == format!("{name}_sum") {
            h.sum += value;
        } else if base == format!("{name}_count") {
            h.count += value;
        } else if base == format!("{name}_bucket") {
            if let Some(le) = labels
                .split(',')
                .find_map(|l| l.trim_end_matches('}').strip_prefix("le=\""))
            {
                *h.buckets
                    .entry(le.trim_end_matches('"').to_owned())
                    .or_default() += value;
            }
        }
    }
    h
}

/// What a histogram recorded between `a` and `b`: count, mean, and the upper bounds of
/// the buckets holding p50 and p99.
fn hist_delta(a: &Hist, b: &Hist) -> Value {
    let count = b.count - a.count;
    if count <= 0.0 {
        return json!(null);
    }
    let mut bounds: Vec<(f64, f64)> = b
        .buckets
        .iter()
        .map(|(le, v)| {
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            (bound, v - a.buckets.get(le).copied().unwrap_or(0.0))
        })
        .collect();
    bounds.sort_by(|x, y| x.0.total_cmp(&y.0));
    let at = |q: f64| -> Value {
        bounds
            .iter()
            .find(|(_, c)| *c >= q * count)
            .map_or(json!(null), |(b, _)| {
                if b.is_finite() {
                    json!(round3(b * 1e3))
                } else {
                    json!("+Inf")
                }
            })
    };
    json!({
        "count": count,
        "mean_ms": round3((b.sum - a.sum) / count * 1e3),
        "p50_bucket_le_ms": at(0.5),
        "p99_bucket_le_ms": at(0.99),
    })
}

// ---------------------------------------------------------------------------------------
// The figures

impl Bench {
    /// Admission latency: sequential connects through one replica, without and with
    /// `[cluster]`.
    async fn latency(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for clustered in [false, true] {
            let redis = if clustered {
                Some(RedisServer::start().await)
            } else {
                None
            };
            let fleet = fleet(self, 1, redis.as_ref(), &[("bench", 1)], None).await;
            let urls = vec![fleet[0].url("bench")];
            eprintln!(
                "latency: {} sequential connects, {}",
                self.cli.connects,
                if clustered {
                    "with [cluster]"
                } else {
                    "without [cluster]"
                }
            );
            // The warm-up before the first scrape.
            let _ = sequential(&urls, 100, 0).await;
            let m0 = scrape(fleet[0].admin).await;
            let (lat, errors) = sequential(&urls, 0, self.cli.connects).await;
            let m1 = scrape(fleet[0].admin).await;
            out.push(json!({
                "figure": "latency",
                "cluster": clustered,
                "replicas": 1,
                "connects": lat.len(),
                "errors": errors,
                "connect_p50_ms": round3(pct(&lat, 50.0) / 1e6),
                "connect_p99_ms": round3(pct(&lat, 99.0) / 1e6),
                "connect_mean_ms": round3(mean(&lat) / 1e6),
                "queue_wait": hist_delta(
                    &hist(&m0, "sluice_queue_wait_seconds"),
                    &hist(&m1, "sluice_queue_wait_seconds")
                ),
                "redis_decision": hist_delta(
                    &hist(&m0, "sluice_cluster_decision_seconds"),
                    &hist(&m1, "sluice_cluster_decision_seconds")
                ),
                "loadavg": loadavg(),
            }));
            stop_all(fleet).await;
        }
        out
    }

    /// Redis commands and CPU per admitted connect, three replicas.
    async fn redis_cost(&self) -> Vec<Value> {
        let redis = RedisServer::start().await;
        let fleet = fleet(self, 3, Some(&redis), &[("bench", 1)], None).await;
        let urls: Vec<String> = fleet.iter().map(|r| r.url("bench")).collect();
        // Warm: every replica has its scripts loaded and its scopes made.
        let _ = sequential(&urls, 30, 0).await;
        eprintln!(
            "redis: idle window of {} s (heartbeats only)",
            self.cli.seconds
        );
        let i0 = redis.snapshot().await;
        tokio::time::sleep(secs(self.cli.seconds)).await;
        let i1 = redis.snapshot().await;
        let idle = RedisDelta::between(&i0, &i1);
        let mut out = Vec::new();

        eprintln!(
            "redis: {} sequential connects over 3 replicas",
            self.cli.connects
        );
        let a = redis.snapshot().await;
        let (lat, errors) = sequential(&urls, 0, self.cli.connects).await;
        // Releases are published by a flusher: let it run.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let b = redis.snapshot().await;
        let run = RedisDelta::between(&a, &b);
        let mut v = run.per(&idle, lat.len().max(1) as f64);
        v["figure"] = json!("redis");
        v["mode"] = json!("sequential");
        v["replicas"] = json!(3);
        v["connects"] = json!(lat.len());
        v["errors"] = json!(errors);
        v["seconds"] = json!(round3(run.seconds));
        v["loadavg"] = json!(loadavg());
        out.push(v);

        let n = self.cli.connects * 5;
        eprintln!(
            "redis: {n} connects over 3 replicas, {} at a time",
            self.cli.concurrency
        );
        let a = redis.snapshot().await;
        let counter = Arc::new(Loop::default());
        let done = Arc::new(AtomicU64::new(0));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..self.cli.concurrency {
            let (url, counter, done) = (urls[i % 3].clone(), counter.clone(), done.clone());
            set.spawn(async move {
                while done.fetch_add(1, Ordering::Relaxed) < n as u64 {
                    match connect(&url).await {
                        Ok(ws) => {
                            counter.ok.fetch_add(1, Ordering::Relaxed);
                            close(ws).await;
                        }
                        Err(_) => {
                            counter.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
        tokio::time::sleep(Duration::from_millis(200)).await;
        let b = redis.snapshot().await;
        let run = RedisDelta::between(&a, &b);
        let ok = counter.ok.load(Ordering::Relaxed);
        let mut v = run.per(&idle, ok.max(1) as f64);
        v["figure"] = json!("redis");
        v["mode"] = json!(format!("{} at a time", self.cli.concurrency));
        v["replicas"] = json!(3);
        v["connects"] = json!(ok);
        v["errors"] = json!(counter.errors.load(Ordering::Relaxed));
        v["seconds"] = json!(round3(run.seconds));
        v["redis_cpu_cores"] = json!(round3(run.cpu_s / run.seconds));
        v["loadavg"] = json!(loadavg());
        out.push(v);

        let mut idle_v = json!({
            "figure": "redis",
            "mode": "idle (heartbeats)",
            "replicas": 3,
            "seconds": round3(idle.seconds),
            "redis_cpu_us_per_s": round1(idle.cpu_s * 1e6 / idle.seconds),
        });
        let mut per_s = serde_json::Map::new();
        for (name, (calls, _)) in &idle.calls {
            per_s.insert(name.clone(), json!(round3(calls / idle.seconds)));
        }
        idle_v["calls_per_s"] = Value::Object(per_s);
        out.push(idle_v);
        stop_all(fleet).await;
        out
    }

    /// Handshakes/s through one replica without and with `[cluster]`, and three with.
    async fn throughput(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for (replicas, clustered) in [(1, false), (1, true), (3, true)] {
            let redis = if clustered {
                Some(RedisServer::start().await)
            } else {
                None
            };
            let fleet = fleet(self, replicas, redis.as_ref(), &[("bench", 1)], None).await;
            let urls: Vec<String> = fleet.iter().map(|r| r.url("bench")).collect();
            eprintln!(
                "throughput: {} clients, {replicas} replica(s), cluster {clustered}",
                self.cli.concurrency
            );
            let counter = vec![Arc::new(Loop::default())];
            let limit = Instant::now() + secs(self.cli.seconds + 5.0);
            let set = closed_loop(&urls, self.cli.concurrency, &counter, limit);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let c0 = counts(&counter)[0];
            let r0 = match &redis {
                Some(r) => Some(r.snapshot().await),
                None => None,
            };
            let t0 = Instant::now();
            tokio::time::sleep(secs(self.cli.seconds)).await;
            let c1 = counts(&counter)[0];
            let window = t0.elapsed().as_secs_f64();
            let r1 = match &redis {
                Some(r) => Some(r.snapshot().await),
                None => None,
            };
            let errors = end_loop(&counter, set).await;
            let mut v = json!({
                "figure": "throughput",
                "replicas": replicas,
                "cluster": clustered,
                "clients": self.cli.concurrency,
                "seconds": round3(window),
                "handshakes": c1 - c0,
                "handshakes_per_s": round1((c1 - c0) as f64 / window),
                "errors": errors,
                "loadavg": loadavg(),
            });
            if let (Some(a), Some(b)) = (r0, r1) {
                let d = RedisDelta::between(&a, &b);
                v["redis_cpu_cores"] = json!(round3(d.cpu_s / d.seconds));
                let scripts: f64 = d
                    .calls
                    .iter()
                    .filter(|(n, _)| n.starts_with("eval"))
                    .map(|(_, c)| c.0)
                    .sum();
                v["scripts_per_handshake"] = json!(round3(scripts / (c1 - c0).max(1) as f64));
            }
            out.push(v);
            stop_all(fleet).await;
        }
        out
    }

    /// The `[edge]` ceiling's weighted fair share, within one replica and across three.
    async fn fairness(&self) -> Vec<Value> {
        let tenants: [TenantDef; 2] = [("w1", 1), ("w3", 3)];
        let mut out = Vec::new();
        // (replicas, cluster, placement)
        let cases: Vec<(usize, bool, &str)> = match std::env::var("BENCH_FAIR").as_deref() {
            Ok("debug") => vec![(1, true, "one replica"), (3, true, "split12")],
            _ => vec![
                (1, false, "one replica"),
                (1, true, "one replica"),
                (3, true, "spread"),
                (3, true, "split"),
            ],
        };
        for (replicas, clustered, placement) in cases {
            let redis = if clustered {
                Some(RedisServer::start().await)
            } else {
                None
            };
            let fleet = fleet(
                self,
                replicas,
                redis.as_ref(),
                &tenants,
                Some(self.cli.edge_rate),
            )
            .await;
            eprintln!(
                "fairness: {} queued clients per tenant, {replicas} replica(s), {placement}",
                self.cli.queued
            );
            // One counter per (tenant, replica).
            let limit = Instant::now() + secs(self.cli.seconds + 10.0);
            let mut sets = Vec::new();
            let mut counters: Vec<(usize, usize, Arc<Loop>)> = Vec::new();
            for (t, (name, _)) in tenants.iter().enumerate() {
                let on: Vec<usize> = match placement {
                    "split" => vec![t],
                    "split12" => vec![t + 1],
                    _ => (0..replicas).collect(),
                };
                for &r in &on {
                    let c = Arc::new(Loop::default());
                    counters.push((t, r, c.clone()));
                    let clients = self.cli.queued / on.len();
                    sets.push((
                        c.clone(),
                        closed_loop(&[fleet[r].url(name)], clients, &[c], limit),
                    ));
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let r0 = match &redis {
                Some(r) => Some(r.snapshot().await),
                None => None,
            };
            let c0: Vec<u64> = counters
                .iter()
                .map(|(_, _, c)| c.ok.load(Ordering::Relaxed))
                .collect();
            let t0 = Instant::now();
            tokio::time::sleep(secs(self.cli.seconds)).await;
            let c1: Vec<u64> = counters
                .iter()
                .map(|(_, _, c)| c.ok.load(Ordering::Relaxed))
                .collect();
            let window = t0.elapsed().as_secs_f64();
            let r1 = match &redis {
                Some(r) => Some(r.snapshot().await),
                None => None,
            };
            let state: Vec<Value> = fleet.iter().map(|r| r.load(&tenants)).collect();
            let mut errors = 0;
            for (c, set) in sets {
                errors += end_loop(&[c], set).await;
            }
            let mut per_tenant = [0u64; 2];
            let mut per_replica = serde_json::Map::new();
            for (i, (t, r, _)) in counters.iter().enumerate() {
                let n = c1[i] - c0[i];
                per_tenant[*t] += n;
                per_replica.insert(format!("{}@r{r}", tenants[*t].0), json!(n));
            }
            let total = per_tenant[0] + per_tenant[1];
            let mut v = json!({
                "figure": "fairness",
                "replicas": replicas,
                "cluster": clustered,
                "placement": placement,
                "edge_rate": self.cli.edge_rate,
                "seconds": round3(window),
                "admitted_w1": per_tenant[0],
                "admitted_w3": per_tenant[1],
                "ratio_w3_to_w1": round3(per_tenant[1] as f64 / per_tenant[0].max(1) as f64),
                "target_ratio": 3.0,
                "w3_share": round3(per_tenant[1] as f64 / total.max(1) as f64),
                "edge_per_s": round1(total as f64 / window),
                "by_tenant_and_replica": per_replica,
                "admitted_incl_warmup": c1.iter().sum::<u64>(),
                "state_at_end": state,
                "errors": errors,
                "loadavg": loadavg(),
            });
            if let (Some(a), Some(b)) = (r0, r1) {
                let d = RedisDelta::between(&a, &b);
                v["redis_cpu_cores"] = json!(round3(d.cpu_s / d.seconds));
                let scripts: f64 = d
                    .calls
                    .iter()
                    .filter(|(n, _)| n.starts_with("eval"))
                    .map(|(_, c)| c.0)
                    .sum();
                v["scripts_per_s"] = json!(round1(scripts / d.seconds));
            }
            out.push(v);
            stop_all(fleet).await;
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers
