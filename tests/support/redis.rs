//! A `redis-server` of the test's own, for the tests of `[cluster]`: on a free loopback
//! port, persistence off, in a temporary directory, killed when dropped. Missing
//! locally, [`Redis::start`] skips the test loudly; under CI it fails it (`.ci/run`
//! installs Debian's `redis-server`).
//!
//! The helpers talk to it through the `redis` crate's blocking connection (a fresh one
//! per call, so they work across [`Redis::stop`] and [`Redis::restart`]). From an async
//! test they block the runtime's thread for one round trip, which is fine for checks.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tools::tool_missing;

/// Ports tried before [`Redis::start`] gives up (another process may take the free
/// port between our probe and redis-server's bind).
const START_TRIES: usize = 5;
/// How long a starting redis-server has to answer PING.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// A helper's connect and read budget.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `redis-server` (or a stopped one that [`Redis::restart`] brings back on the
/// same port).
#[derive(Debug)]
pub struct Redis {
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
    /// Its working directory and log; removed on drop, after the process is gone.
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts a `redis-server` on a free 127.0.0.1 port and waits until it answers PING.
    /// `None` when `redis-server` is not on `PATH` (the test is then skipped, loudly).
    ///
    /// # Panics
    /// When `redis-server` is missing and CI is set, or when it does not start.
    pub fn start() -> Option<Redis> {
        let Some(bin) = on_path("redis-server") else {
            tool_missing(
                "redis-server",
                "the tests against Redis ([cluster]) did not run \
                 (Debian: apt-get install redis-server)",
            );
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("sluice-redis-")
            .tempdir()
            .expect("a temporary directory for redis-server");
        let mut failures = Vec::new();
        for _ in 0..START_TRIES {
            let port = free_port();
            match launch(&bin, port, dir.path()) {
                Ok(child) => {
                    return Some(Redis {
                        bin,
                        port,
                        child: Some(child),
                        dir,
                    })
                }
                Err(why) => failures.push(format!("port {port}: {why}")),
            }
        }
        panic!(
            "redis-server did not start in {START_TRIES} tries:\n{}",
            failures.join("\n")
        );
    }

    /// `redis://127.0.0.1:PORT/0`, for `[cluster] redis`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The port it listens on (the same after [`Redis::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server process runs (it may be paused).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL, as a crash would) and waits until the process is gone:
    /// connections to it are refused from then on. Does nothing when it is stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty (no persistence), and waits until
    /// it answers PING. Stops it first if it runs.
    ///
    /// # Panics
    /// When it does not start (a few tries: another process may hold the port).
    pub fn restart(&mut self) {
        self.stop();
        let mut failures = Vec::new();
        for _ in 0..START_TRIES {
            match launch(&self.bin, self.port, self.dir.path()) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(why) => {
                    failures.push(why);
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        panic!(
            "redis-server did not restart on port {}:\n{}",
            self.port,
            failures.join("\n")
        );
    }

    /// Freezes the server (SIGSTOP): connections stay open and commands hang, as with a
    /// Redis that is slow or unreachable without a refusal. [`Redis::resume`] ends it.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a [`Redis::pause`]d server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.pid().expect("redis-server runs");
        let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
        // SAFETY: kill(2) with our own child's pid, which we have not reaped (so it
        // cannot have been reused); no memory is involved.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Runs one command (`args[0]` the name) on a fresh connection.
    pub fn try_cmd(&self, args: &[&str]) -> ::redis::RedisResult<::redis::Value> {
        let (name, rest) = args.split_first().expect("a command name");
        let mut command = ::redis::cmd(name);
        for arg in rest {
            command.arg(*arg);
        }
        command.query(&mut connect(self.port)?)
    }

    /// Runs one command (`args[0]` the name) on a fresh connection; its reply.
    ///
    /// # Panics
    /// When Redis cannot be reached or answers with an error.
    pub fn cmd(&self, args: &[&str]) -> ::redis::Value {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("redis {args:?} on port {}: {e}", self.port))
    }

    /// Empties every database (`FLUSHALL`, synchronous).
    pub fn flushall(&self) {
        self.cmd(&["FLUSHALL", "SYNC"]);
    }

    /// The keys matching `pattern` (`KEYS`), sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.query(&["KEYS", pattern]);
        keys.sort();
        keys
    }

    /// `INFO section` as text, e.g. `commandstats` (calls per command) or `cpu`
    /// (`used_cpu_sys`, `used_cpu_user`).
    pub fn info(&self, section: &str) -> String {
        self.query(&["INFO", section])
    }

    fn query<T: ::redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let value = self.cmd(args);
        ::redis::from_redis_value(value)
            .unwrap_or_else(|e| panic!("redis {args:?}: unexpected reply: {e}"))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port nobody listens on now: bound on port 0, read, released.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `name` found in a directory of `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A blocking connection to the server on `port`.
fn connect(port: u16) -> ::redis::RedisResult<::redis::Connection> {
    let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}/0"))?;
    let connection = client.get_connection_with_timeout(IO_TIMEOUT)?;
    connection.set_read_timeout(Some(IO_TIMEOUT))?;
    connection.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(connection)
}

/// Starts `redis-server` on `port` (persistence off, loopback only, `dir` as its working
/// directory) and waits until it answers PING. On failure the process is gone and the
/// error carries its log's tail.
fn launch(bin: &Path, port: u16, dir: &Path) -> Result<Child, String> {
    let log = dir.join(format!("redis-{port}.log"));
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
    let pid = child.id();
    let deadline = Instant::now() + READY_WITHIN;
    let why = loop {
        match child.try_wait() {
            Ok(Some(status)) => break format!("exited ({status})"),
            Ok(None) => {}
            Err(e) => break format!("waiting for it: {e}"),
        }
        // PING answered by our process, not by another server that took the port.
        if answers_as(port, pid) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            break format!("no PONG within {READY_WITHIN:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    let tail = std::fs::read_to_string(&log).unwrap_or_default();
    let tail: Vec<&str> = tail.lines().rev().take(5).collect();
    Err(format!(
        "{why}; log: {}",
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    ))
}

/// Whether the server on `port` answers PING and is process `pid`.
fn answers_as(port: u16, pid: u32) -> bool {
    let Ok(mut connection) = ::redis::Client::open(format!("redis://127.0.0.1:{port}/0"))
        .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
    else {
        return false;
    };
    let _ = connection.set_read_timeout(Some(Duration::from_millis(500)));
    let pong: ::redis::RedisResult<String> = ::redis::cmd("PING").query(&mut connection);
    if !matches!(pong.as_deref(), Ok("PONG")) {
        return false;
    }
    let info: ::redis::RedisResult<String> =
        ::redis::cmd("INFO").arg("server").query(&mut connection);
    info.is_ok_and(|text| {
        text.lines()
            .any(|line| line.trim() == format!("process_id:{pid}"))
    })
}
