//! Entry: the sluice side of `sluice demo` — one sluice or several replicas in front of
//! a fresh edge simulator, and with `--replicas N` the `redis-server` they share.
//!
//! A phase binds its replicas (each its own proxy and admin listener), runs the spike
//! over them (each tenant's phones dealt to the replicas in turn), and waits for the
//! last sessions to end before it reads the simulator's counters.
//!
//! With `[cluster]` the replicas share one `redis-server` that the demo starts itself:
//! found on `PATH`, on a free 127.0.0.1 port, persistence off, in a temporary
//! directory; [`RedisServer`]'s `Drop` kills it and removes the directory (on an error
//! too, and on Ctrl-C, which `sluice demo` turns into an ordinary return).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{schedule_outage, sim_config, sluice_config, spike_config, DemoConfig, Phase, NAMES};
use crate::runtime::Runtime;
use crate::tools::edge_sim::EdgeSim;
use crate::tools::spike::{run_spike, TenantVia};
use crate::Config;

/// Ports tried before the demo gives up starting `redis-server` (another process may
/// take the free port between our probe and its bind).
const START_TRIES: usize = 5;
/// How long a starting `redis-server` has to answer PING.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// What `sluice demo --replicas N` says when there is no `redis-server` to share.
pub fn redis_missing(replicas: u8) -> String {
    format!(
        "sluice demo --replicas {replicas} needs redis-server on the PATH: \
         apt-get install redis-server (Debian/Ubuntu), brew install redis (macOS)"
    )
}

/// The `[cluster]` section of replica `index` (appended to [`sluice_config`]).
pub fn cluster_section(redis_url: &str, index: usize) -> String {
    format!(
        "[cluster]\nredis = \"{redis_url}\"\nreplica_id = \"demo-{index}\"\n\
         heartbeat = \"1s\"\nlease_ttl = \"3s\"\nredis_timeout = \"50ms\"\n\
         on_redis_failure = \"local-share\"\n"
    )
}

/// A `redis-server` of the demo's own: killed, and its directory removed, on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Finds `redis-server` on `PATH` and starts it on a free 127.0.0.1 port (no
    /// persistence, a temporary directory as its working directory); returns once it
    /// answers PING.
    ///
    /// # Errors
    /// [`redis_missing`] when it is not on `PATH`; why, when it does not start.
    pub async fn start(replicas: u8) -> Result<Self, String> {
        let bin = on_path("redis-server").ok_or_else(|| redis_missing(replicas))?;
        let dir = std::env::temp_dir().join(format!(
            "sluice-demo-redis-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("a directory for redis-server ({}): {e}", dir.display()))?;
        // From here on, Drop removes the directory (and kills a started server).
        let mut server = Self {
            child: None,
            port: 0,
            dir,
        };
        let mut failures = Vec::new();
        for _ in 0..START_TRIES {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("a free port for redis-server: {e}"))?
                .port();
            match launch(&bin, port, &server.dir).await {
                Ok(child) => {
                    server.child = Some(child);
                    server.port = port;
                    return Ok(server);
                }
                Err(why) => failures.push(format!("port {port}: {why}")),
            }
        }
        Err(format!(
            "{} did not start in {START_TRIES} tries: {}",
            bin.display(),
            failures.join("; ")
        ))
    }

    /// `redis://127.0.0.1:PORT/0`, for `[cluster] redis`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `name` in a directory of `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Starts `redis-server` on `port` in `dir` and waits until it (this process, not
/// another server that took the port) answers PING. On failure the process is gone.
async fn launch(bin: &Path, port: u16, dir: &Path) -> Result<Child, String> {
    let log = dir.join("redis.log");
    let mut child = Command::new(bin)
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
    let deadline = Instant::now() + READY_WITHIN;
    let why = loop {
        match child.try_wait() {
            Ok(Some(status)) => break format!("exited ({status})"),
            Ok(None) => {}
            Err(e) => break format!("waiting for it: {e}"),
        }
        if answers_as(port, child.id()).await {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            break format!("no PONG within {READY_WITHIN:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    let tail = std::fs::read_to_string(&log).unwrap_or_default();
    let tail = tail.lines().last().unwrap_or("").to_owned();
    Err(format!("{why}; its log: {tail}"))
}

/// Whether the server on `port` answers PING and is process `pid`.
async fn answers_as(port: u16, pid: u32) -> bool {
    let ask = async {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0"))?;
        let mut c = client.get_multiplexed_async_connection().await?;
        let pong: String = redis::cmd("PING").query_async(&mut c).await?;
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut c).await?;
        Ok::<_, redis::RedisError>(
            pong == "PONG"
                && info
                    .lines()
                    .any(|l| l.trim() == format!("process_id:{pid}")),
        )
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), ask).await,
        Ok(Ok(true))
    )
}

/// One replica's addresses.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    /// Its proxy listener.
    pub proxy: SocketAddr,
    /// Its admin listener (status page, metrics).
    pub admin: SocketAddr,
}

/// sluice replicas serving in front of an edge simulator.
#[derive(Debug)]
pub struct Fleet {
    /// Each replica's addresses, replica 0 first.
    pub replicas: Vec<Endpoints>,
    /// The simulator behind them.
    pub edge: EdgeSim,
    /// Replica 0's config (TOML).
    pub config: String,
    runtimes: Vec<Arc<Runtime>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// No replica yet, in front of `edge`.
    pub(super) fn new(edge: EdgeSim) -> Self {
        Self {
            replicas: Vec::new(),
            edge,
            config: String::new(),
            runtimes: Vec::new(),
            tasks: Vec::new(),
        }
    }

    /// Starts a replica on config `text` (its admin listener on `admin`); the first
    /// one's config is kept as the fleet's.
    pub(super) async fn add(&mut self, text: String, admin: SocketAddr) -> Result<(), String> {
        let config =
            Config::parse(&text, &HashMap::new()).map_err(|e| format!("demo config: {e}"))?;
        let server = crate::Server::bind(config)
            .await
            .map_err(|e| e.to_string())?;
        let admin = crate::admin::Admin::bind(admin, server.runtime())
            .await
            .map_err(|e| format!("admin listener on {admin}: {e}"))?;
        self.replicas.push(Endpoints {
            proxy: server.local_addr(),
            admin: admin.local_addr(),
        });
        self.runtimes.push(server.runtime());
        self.tasks.push(tokio::spawn(async move {
            // Never returns: the replica serves until the demo aborts it.
            let _workers = server.run(std::future::pending()).await;
        }));
        self.tasks
            .push(tokio::spawn(admin.run(std::future::pending())));
        if self.config.is_empty() {
            self.config = text;
        }
        Ok(())
    }

    /// The runtime of replica `i`.
    pub(super) fn runtime(&self, i: usize) -> Option<&Arc<Runtime>> {
        self.runtimes.get(i)
    }

    /// Leaves the cluster (when in one) and stops serving.
    pub async fn stop(mut self) {
        for r in &self.runtimes {
            if let Some(cluster) = &r.cluster {
                cluster.leave().await;
            }
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Replica `i`'s listen and admin addresses: port 0 without `--serve`; with it,
/// `--listen` and `--admin` with their ports plus `i` (port 0 stays 0).
fn addresses(c: &DemoConfig, i: usize) -> Result<(SocketAddr, SocketAddr), String> {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("valid");
    if !c.serve {
        return Ok((any, any));
    }
    let shift = |mut a: SocketAddr| {
        if a.port() != 0 {
            let port = u16::try_from(i)
                .ok()
                .and_then(|i| a.port().checked_add(i))
                .ok_or_else(|| format!("replica {i}: no port {} + {i}", a.port()))?;
            a.set_port(port);
        }
        Ok::<_, String>(a)
    };
    Ok((shift(c.listen)?, shift(c.admin)?))
}

/// The spike through `replicas` sluice replicas (with `[cluster]` on `redis` when
/// given) in front of a fresh simulator. The replicas keep serving until the returned
/// [`Fleet`] is stopped or dropped.
///
/// # Errors
/// When a listener cannot be bound, a config is refused or the spike cannot start.
pub async fn sluice_phase(
    c: &DemoConfig,
    replicas: usize,
    redis: Option<&str>,
) -> Result<(Phase, Fleet), String> {
    let sim = EdgeSim::start(sim_config(c))
        .await
        .map_err(|e| format!("edge simulator: {e}"))?;
    let mut fleet = Fleet::new(sim.clone());
    for i in 0..replicas {
        let (listen, admin) = addresses(c, i)?;
        let mut text = sluice_config(c, &sim.url(), listen, admin);
        if let Some(url) = redis {
            text.push_str(&cluster_section(url, i));
        }
        fleet.add(text, admin).await?;
    }
    let urls: Vec<String> = fleet
        .replicas
        .iter()
        .map(|r| format!("ws://{}", r.proxy))
        .collect();
    let spike = spike_config(c, urls.join(","), TenantVia::Path);
    let outage = schedule_outage(c, &sim);
    let phones = run_spike(&spike).await?;
    outage.abort();
    // Let the last relays see their ends (a few seconds at most) before counting.
    let deadline = Instant::now() + Duration::from_secs(6);
    while sim.stats().live > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tenants = &NAMES[..usize::from(c.tenants)];
    while Instant::now() < deadline
        && fleet.runtimes.iter().any(|runtime| {
            tenants
                .iter()
                .any(|t| runtime.tenant(t).is_some_and(|h| h.gate.load().live > 0))
        })
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let phase = Phase {
        phones,
        edge: sim.stats(),
    };
    Ok((phase, fleet))
}
