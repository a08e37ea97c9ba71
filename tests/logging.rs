//! The log writer (issue 16), in real processes: lines go to the log's own thread and
//! reach stderr in order; a stderr nobody reads does not block the threads that log
//! (lines are dropped, counted, and the count is logged once stderr takes lines again);
//! and what was logged before `main` returns all reaches stderr. Child processes are
//! this test binary itself (`child_logs_numbered_lines`, run with `--ignored`) and the
//! `sluice` binary.

mod support;

use std::io::{BufRead, Read};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use support::{admin_get, connect_ok, echo, edge, wait_until};

/// The message of the warning that counts dropped lines.
const DROPPED: &str = "log lines dropped: stderr did not take them fast enough";

/// Not a test: what the children run (`LOG16_LINES` numbered JSON lines at info, then
/// `LOG16-LOGGED` on stdout, then `main` returns).
#[test]
#[ignore = "a child process of the tests below"]
fn child_logs_numbered_lines() {
    let lines: u64 = std::env::var("LOG16_LINES").unwrap().parse().unwrap();
    let guard = sluice::logging::init_with(sluice::logging::LogFormat::Json, "info");
    for n in 0..lines {
        tracing::info!(
            n,
            "numbered line, padded to some hundred bytes like a connect line"
        );
    }
    println!("LOG16-LOGGED");
    drop(guard);
}

/// Runs the child with `lines` and `env`, its stderr a pipe that nobody reads until the
/// child says it logged every line (at most 60 s: with a writer that blocks, it never
/// would); then its whole stderr.
fn run_child(lines: u64, env: &[(&str, &str)]) -> String {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_logs_numbered_lines",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LOG16_LINES", lines.to_string())
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (said, heard) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.ends_with("LOG16-LOGGED") {
                let _ = said.send(());
            }
        }
    });
    if heard.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        panic!("the child blocked on a stderr nobody reads");
    }
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(child.wait().unwrap().success());
    log
}

/// The numbers of the numbered lines, and the `dropped` counts reported, of `log`.
fn parse(log: &str) -> (Vec<u64>, Vec<(u64, u64)>) {
    let mut numbers = Vec::new();
    let mut reports = Vec::new();
    for line in log.lines() {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        if let Some(n) = entry["n"].as_u64() {
            numbers.push(n);
        } else if entry["message"] == "log lines dropped: stderr did not take them fast enough" {
            assert_eq!(entry["level"], "WARN");
            reports.push((
                entry["dropped"].as_u64().unwrap(),
                entry["total"].as_u64().unwrap(),
            ));
        } else {
            panic!("an unexpected line: {line}");
        }
    }
    (numbers, reports)
}

#[test]
fn lines_buffered_when_main_returns_all_reach_stderr_in_order() {
    // 5,000 lines (some 600 KB) fit in the default 1 MiB buffer: the pipe (64 KiB) is
    // full long before the child returns from main, and the guard waits for the rest.
    let log = run_child(5_000, &[]);
    let (numbers, reports) = parse(&log);
    assert_eq!(numbers, (0..5_000).collect::<Vec<_>>());
    assert!(reports.is_empty(), "{reports:?}");
}

#[test]
fn a_stderr_nobody_reads_costs_lines_not_progress_and_the_loss_is_counted() {
    // A 16 KiB buffer and a pipe nobody reads: most of 20,000 lines are dropped.
    let lines = 20_000;
    let log = run_child(lines, &[("SLUICE_LOG_BUFFER", "16384")]);
    let (numbers, reports) = parse(&log);
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "lines in order, none twice"
    );
    assert!(!numbers.is_empty() && !reports.is_empty());
    let dropped: u64 = reports.iter().map(|r| r.0).sum();
    assert_eq!(numbers.len() as u64 + dropped, lines, "{reports:?}");
    assert_eq!(reports.last().unwrap().1, dropped, "the total so far");
}

/// `sluice run` whose stderr (a 4 KiB pipe, a 4 KiB log buffer) is not read while 300
/// sessions come and go: every connect is served, the lines that did not fit are
/// counted (log line and metric), and after SIGTERM the drain's lines are all there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_serves_while_nobody_reads_its_log_and_logs_its_drain_after() {
    let edge = edge().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    support::write_config_file(
        &file,
        &edge,
        "[shutdown]\ndrain_timeout = \"2s\"\n\
         [tenants.lab]\nauth = { kind = \"none\" }\nmax_sessions = 10000\n\
         handshake_rate = 10000\nhandshake_burst = 10000\n",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&file)
        .env("RUST_LOG", "info")
        .env("SLUICE_LOG_BUFFER", "4096")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    {
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on a pipe's descriptor that `stderr` owns.
        let set = unsafe { libc::fcntl(stderr.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
        assert!(set >= 4096, "F_SETPIPE_SZ");
    }
    // The reader says where sluice listens, then stops reading until told.
    let (addrs_tx, addrs_rx) = mpsc::channel();
    let (resume, resumed) = mpsc::channel::<()>();
    let log = Arc::new(Mutex::new(String::new()));
    let read = log.clone();
    let reader = std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stderr).lines();
        let (mut proxy, mut admin) = (None, None);
        while proxy.is_none() || admin.is_none() {
            let Some(Ok(line)) = lines.next() else { break };
            let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
            let addr = entry["addr"].as_str().and_then(|a| a.parse().ok());
            match entry["message"].as_str() {
                Some("proxy listening") => proxy = addr,
                Some("admin listening") => admin = addr,
                _ => {}
            }
        }
        let _ = addrs_tx.send(proxy.zip(admin));
        let _ = resumed.recv();
        for line in lines.map_while(Result::ok) {
            let mut log = read.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let (addr, admin): (std::net::SocketAddr, std::net::SocketAddr) = addrs_rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap()
        .expect("sluice logs where it listens");

    let url = format!("ws://{addr}/t/lab/");
    for n in 0..300 {
        let connected = tokio::time::timeout(Duration::from_secs(20), async {
            let mut ws = connect_ok(&url, &[]).await;
            echo(&mut ws, "hello").await;
            let _ = ws.close(None).await;
        })
        .await;
        assert!(
            connected.is_ok(),
            "session {n} stalled: the log blocked sluice"
        );
    }
    let (_, metrics) = admin_get(admin, "/metrics").await;
    let counted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_log_lines_dropped_total "))
        .expect("the metric")
        .parse()
        .unwrap();
    assert!(counted > 0, "4 KiB cannot hold 300 sessions' lines");

    // Once stderr is read again, the backlog goes out and then the report.
    resume.send(()).unwrap();
    wait_until("the report of dropped lines", async || {
        log.lock().unwrap().contains(DROPPED)
    })
    .await;
    let status = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &status])
        .status()
        .unwrap()
        .success());
    let exited = tokio::task::spawn_blocking(move || child.wait().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(20), exited)
        .await
        .expect("sluice exits after SIGTERM")
        .unwrap();
    assert!(status.success());
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    let entries: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let reported: u64 = entries
        .iter()
        .filter(|e| e["message"] == DROPPED)
        .map(|e| e["dropped"].as_u64().unwrap())
        .sum();
    assert!(
        reported >= counted,
        "{reported} reported, {counted} counted"
    );
    // The drain's lines, logged after SIGTERM, all reached stderr before the exit.
    let logged = |start: &str| {
        entries
            .iter()
            .any(|e| e["message"].as_str().is_some_and(|m| m.starts_with(start)))
    };
    assert!(logged("draining: "), "{log}");
    assert!(logged("drain done") || logged("drain timeout"), "{log}");
}
