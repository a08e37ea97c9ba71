//! Drain, in-process and in the real binary. In-process ([`support::serve`], a shutdown
//! the test gives): `/readyz` turns 503 at once, new connects are refused, sessions that
//! end before `drain_timeout` end cleanly, the rest are closed (1001 in `accept` mode)
//! and the drain ends. The binary under signals: SIGHUP reloads; SIGTERM drains the same
//! way and the process exits 0; its log, captured whole, never contains a credential.
//! Every listener binds port 0 (the binary's addresses are read from its log): no test
//! races another for a free port.

mod support;

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use support::{
    admin_get, config, connect, connect_ok, echo, edge, edge_with, tenant, wait_until, EdgeOptions,
};

const KEY: &str = "drain-test-api-key-7f3a9c";
const WRONG_KEY: &str = "wrong-test-api-key-0b1d2e";

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// The binary, running.
struct Sluice {
    pid: u32,
    /// Its proxy listener.
    addr: SocketAddr,
    /// Its admin listener.
    admin: SocketAddr,
    /// Its exit status and whole log, once it has exited.
    exit: tokio::task::JoinHandle<(std::process::ExitStatus, String)>,
}

impl Sluice {
    /// Waits (up to 20 s) for the process to exit: its status and whole log.
    async fn exited(self) -> (std::process::ExitStatus, String) {
        tokio::time::timeout(Duration::from_secs(20), self.exit)
            .await
            .expect("sluice exited")
            .unwrap()
    }
}

/// The `addr` of the first JSON log line in `log` whose message is `message`.
fn logged_addr(log: &str, message: &str) -> Option<SocketAddr> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == message)
        .and_then(|l| l["addr"].as_str()?.parse().ok())
}

/// Starts the binary on `file` (both listeners on port 0; JSON logs at debug, captured
/// whole), reads where it listens from its log, and waits until its admin listener says
/// ready.
async fn run_sluice(file: &std::path::Path) -> Sluice {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(file)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let lines = log.clone();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let mut log = lines.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let whole = log.clone();
    let exit = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        reader.join().unwrap();
        let log = whole.lock().unwrap().clone();
        (status, log)
    });
    let addrs = Arc::new(Mutex::new(None));
    wait_until("sluice to log where it listens", async || {
        let log = log.lock().unwrap().clone();
        let found = logged_addr(&log, "proxy listening").zip(logged_addr(&log, "admin listening"));
        *addrs.lock().unwrap() = found;
        found.is_some() || exit.is_finished()
    })
    .await;
    let Some((addr, admin)) = *addrs.lock().unwrap() else {
        panic!("sluice exited: {}", log.lock().unwrap());
    };
    wait_until("sluice to be ready", async || {
        admin_get(admin, "/readyz").await.0 == 200
    })
    .await;
    Sluice {
        pid,
        addr,
        admin,
        exit,
    }
}

/// The drain in-process, with the shutdown in the test's hands: what SIGTERM does,
/// step by step, and in order.
#[tokio::test]
async fn a_shutdown_drains_in_process_sessions_end_or_are_closed_after_drain_timeout() {
    let edge = edge().await;
    let mut sluice = config()
        .upstream(&edge.url(false))
        .drain_timeout(Duration::from_secs(2))
        .tenant(tenant("acc").accept_mode())
        .tenant(tenant("hld"))
        .serve()
        .await;
    let proxy = sluice.proxy.clone();
    let mut ends_itself = connect_ok(&proxy.url("/t/acc/"), &[]).await;
    let mut left_open = connect_ok(&proxy.url("/t/acc/"), &[]).await;
    let mut tunnel = connect_ok(&proxy.url("/t/hld/"), &[]).await;
    echo(&mut ends_itself, "open").await;
    echo(&mut left_open, "open").await;
    echo(&mut tunnel, "open").await;
    assert_eq!(admin_get(proxy.admin, "/readyz").await.0, 200);

    let began = tokio::time::Instant::now();
    sluice.shutdown();
    wait_until("readyz 503", async || {
        admin_get(proxy.admin, "/readyz").await.0 == 503
    })
    .await;
    assert_eq!(
        admin_get(proxy.admin, "/healthz").await.0,
        200,
        "alive while draining"
    );
    match connect(&proxy.url("/t/hld/"), &[]).await {
        Ok(_) => panic!("a new session was admitted while draining"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            assert_eq!(support::reason(&resp), "draining");
        }
        Err(_) => {} // the listener is already closed
    }
    assert!(!sluice.is_stopped(), "live sessions hold the drain open");

    // A session that ends within drain_timeout ends cleanly.
    echo(&mut ends_itself, "bye soon").await;
    ends_itself.close(None).await.unwrap();
    assert_eq!(support::ended(&mut ends_itself).await, None);
    // The others are closed with 1001, once drain_timeout has passed.
    let (code, why) = support::ended(&mut left_open).await.expect("a close frame");
    assert_eq!((code, why.as_str()), (CloseCode::Away, "shutdown"));
    let (code, why) = support::ended(&mut tunnel)
        .await
        .expect("a close frame in the tunnel");
    assert_eq!((code, why.as_str()), (CloseCode::Away, "shutdown"));
    let closed_after = began.elapsed();
    assert!(
        closed_after >= Duration::from_millis(1900),
        "the sessions left open were closed after {closed_after:?}, before drain_timeout (2 s)"
    );

    sluice.stopped(Duration::from_secs(20)).await;
    wait_until("the edge's sessions to end", async || {
        edge.live.load(Ordering::SeqCst) == 0
    })
    .await;
    let closes = edge.closes.lock().unwrap().clone();
    let shutdowns = closes
        .iter()
        .filter(|c| **c == (1001, "shutdown".to_owned()))
        .count();
    assert_eq!(shutdowns, 2, "{closes:?}");
}

/// When every session ends on its own, the drain ends then, not at `drain_timeout`.
#[tokio::test]
async fn a_drain_ends_when_the_last_session_does() {
    let edge = edge().await;
    let mut sluice = config()
        .upstream(&edge.url(false))
        .drain_timeout(Duration::from_secs(60))
        .tenant(tenant("lab"))
        .serve()
        .await;
    let mut ws = connect_ok(&sluice.proxy.url("/t/lab/"), &[]).await;
    echo(&mut ws, "open").await;
    sluice.shutdown();
    wait_until("readyz 503", async || {
        admin_get(sluice.proxy.admin, "/readyz").await.0 == 503
    })
    .await;
    assert!(
        !sluice.is_stopped(),
        "the live session holds the drain open"
    );
    echo(&mut ws, "still relayed while draining").await;
    support::close(ws).await;
    let took = sluice.stopped(Duration::from_secs(20)).await;
    assert!(
        took < Duration::from_secs(30),
        "the drain waited {took:?} after the last session ended (drain_timeout is 60 s)"
    );
}

#[tokio::test]
async fn sigterm_drains_and_exits_0_and_sighup_reloads() {
    let edge = edge().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(KEY.as_bytes()))
    };
    let config = |cap: u32| {
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [shutdown]\ndrain_timeout = \"2s\"\n\
             [upstream.groups.primary]\nendpoints = [\"{}\"]\n\
             [tenants.acc]\nqueue_mode = \"accept\"\nmax_sessions = {cap}\nauth = {{ kind = \"api-key\", key_sha256 = [\"{hash}\"] }}\n\
             [tenants.hld]\nauth = {{ kind = \"none\" }}\n",
            edge.url(false)
        )
    };
    std::fs::write(&file, config(10)).unwrap();
    let sluice = run_sluice(&file).await;
    let (pid, admin) = (sluice.pid, sluice.admin);

    // `sluice health` (the container HEALTHCHECK) sees it alive and ready.
    let health = |path: &str| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["health", "--admin", &admin.to_string(), "--path", path])
            .output()
            .unwrap()
    };
    assert!(health("/healthz").status.success());
    assert!(health("/readyz").status.success());

    let url = |t: &str| format!("ws://{}/t/{t}/", sluice.addr);
    let bearer = format!("Bearer {KEY}");
    let mut ends_itself = connect_ok(&url("acc"), &[("authorization", &bearer)]).await;
    let mut left_open = connect_ok(&format!("{}?access_token={KEY}", url("acc")), &[]).await;
    let mut tunnel = connect_ok(&url("hld"), &[]).await;
    echo(&mut left_open, "open").await;
    echo(&mut tunnel, "open").await;
    // Failed attempts carry credentials too.
    let wrong = format!("Bearer {WRONG_KEY}");
    assert!(connect(&url("acc"), &[("authorization", &wrong)])
        .await
        .is_err());
    let protocols = format!("sip, access_token.{WRONG_KEY}");
    assert!(
        connect(&url("acc"), &[("sec-websocket-protocol", &protocols)])
            .await
            .is_err()
    );

    // SIGHUP: the file is read again.
    std::fs::write(&file, config(20)).unwrap();
    signal(pid, "HUP");
    wait_until("the reload", async || {
        let (_, text) = admin_get(admin, "/metrics").await;
        text.contains("sluice_config_reloads_total{result=\"ok\"} 1")
            && text.contains("sluice_tenant_limit{limit=\"max_sessions\",tenant=\"acc\"} 20")
    })
    .await;

    // SIGTERM: not ready at once, no new sessions.
    signal(pid, "TERM");
    wait_until("readyz 503", async || {
        admin_get(admin, "/readyz").await.0 == 503
    })
    .await;
    let not_ready = health("/readyz");
    assert_eq!(not_ready.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&not_ready.stderr).contains("503"));
    assert!(health("/healthz").status.success(), "alive while draining");
    match connect(&url("hld"), &[]).await {
        Ok(_) => panic!("a new session was admitted while draining"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            assert_eq!(support::reason(&resp), "draining");
        }
        Err(_) => {} // the listener is already closed
    }
    // A session that ends within drain_timeout ends cleanly.
    echo(&mut ends_itself, "bye soon").await;
    ends_itself.close(None).await.unwrap();
    assert_eq!(support::ended(&mut ends_itself).await, None);
    // The others are closed after it with 1001.
    let lo = support::ended(&mut left_open).await;
    if lo.is_none() {
        let (_, log) = sluice.exited().await;
        panic!("DEBUG {log}");
    }
    // The tunnel was between frames both ways: both peers get a close frame too.
    let (code, why) = support::ended(&mut tunnel)
        .await
        .expect("a close frame in the tunnel");
    assert_eq!((code, why.as_str()), (CloseCode::Away, "shutdown"));

    let (status, log) = sluice.exited().await;
    assert_eq!(status.code(), Some(0));
    assert!(log.contains("drain timeout"), "{log}");
    assert!(log.contains("config reloaded"), "{log}");
    for secret in [KEY, WRONG_KEY] {
        assert!(!log.contains(secret), "a credential is in the log:\n{log}");
    }
    // The edge saw every session closed.
    wait_until("the edge's sessions to end", async || {
        edge.live.load(std::sync::atomic::Ordering::SeqCst) == 0
    })
    .await;
    // …with a close frame from each: the accept relay's and the tunnel's injected one
    // (masked, or the edge would have failed the connection instead).
    let closes = edge.closes.lock().unwrap().clone();
    let shutdowns = closes
        .iter()
        .filter(|c| **c == (1001, "shutdown".to_owned()))
        .count();
    assert_eq!(shutdowns, 2, "{closes:?}");
}

/// SIGTERM while an `accept`-mode client (already answered `101`) is in its upstream
/// handshake and no session is live yet: the drain waits for it, and the client gets
/// its session and then a close frame, not a dead connection (found in review: the
/// process exited under it).
#[tokio::test]
async fn sigterm_during_an_upstream_handshake_still_closes_the_accept_client() {
    let delay = Arc::new(AtomicU64::new(2_000));
    let edge = edge_with(EdgeOptions {
        delay_ms: Some(delay),
        ..EdgeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(
        &file,
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [shutdown]\ndrain_timeout = \"4s\"\n\
             [upstream.groups.primary]\nendpoints = [\"{}\"]\n\
             [tenants.acc]\nqueue_mode = \"accept\"\nsubprotocols = []\nauth = {{ kind = \"none\" }}\n",
            edge.url(false)
        ),
    )
    .unwrap();
    let sluice = run_sluice(&file).await;

    // 101 at once; the edge takes 2 s to answer sluice's own handshake.
    let mut ws = connect_ok(&format!("ws://{}/t/acc/", sluice.addr), &[]).await;
    wait_until("sluice to be in its upstream handshake", async || {
        edge.accepted.load(Ordering::SeqCst) == 1
    })
    .await;
    signal(sluice.pid, "TERM");

    let mut close = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
            Err(_) => panic!("never ended"),
            Ok(Some(Ok(Message::Close(f)))) => close = Some(f),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => break,
        }
    }
    let (status, _) = sluice.exited().await;
    assert_eq!(status.code(), Some(0));
    assert!(
        close.is_some(),
        "the accept-mode client got no close frame: the process exited under it"
    );
}

/// A reload just before the drain must not cost a session its shutdown close (found
/// in review, and it made the binary test above flaky under load). The session's stop
/// future once kept a `watch` waiter but re-polled it only when the control's epoch had
/// moved: the reload's send woke the session, which registered a new waiter while
/// tokio's sharded `notify_waiters` of that same send was still going through its
/// shards; a later shard woke the new waiter spuriously, the poll saw an unchanged epoch
/// and returned `Pending` without polling the waiter again, so none was left and the
/// drain's and `close_sessions`' sends woke nobody. Now every poll registers the
/// session's waker and then reads the epoch, so no wake-up is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_just_before_the_drain_does_not_cost_a_session_its_close() {
    const SECRET: &str = "reload-race-key-0123456789";
    let edge = edge().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(SECRET.as_bytes()))
    };
    let text = |cap: u32| {
        config()
            .upstream(&edge.url(false))
            .drain_timeout(Duration::from_millis(200))
            .tenant(tenant("acc").accept_mode().max_sessions(cap).auth(&format!(
                "{{ kind = \"api-key\", key_sha256 = [\"{hash}\"] }}"
            )))
            .text()
    };
    for round in 0..20 {
        std::fs::write(&file, text(10)).unwrap();
        let mut sluice = support::serve_config(sluice::Config::load(&file).unwrap()).await;
        let proxy = sluice.proxy.clone();
        let url = format!("{}?access_token={SECRET}", proxy.url("/t/acc/"));
        let mut ws = connect_ok(&url, &[]).await;
        echo(&mut ws, "open").await;
        std::fs::write(&file, text(20)).unwrap();
        let (status, body) = support::admin_request(proxy.admin, "POST", "/-/reload").await;
        assert_eq!(status, 200, "{body}");
        sluice.shutdown();
        let close = tokio::time::timeout(Duration::from_secs(5), support::ended(&mut ws))
            .await
            .unwrap_or_else(|_| panic!("round {round}: the session was never closed"));
        assert_eq!(
            close,
            Some((CloseCode::Away, "shutdown".to_owned())),
            "round {round}"
        );
        sluice.stopped(Duration::from_secs(20)).await;
    }
}
