//! The real binary under signals: SIGHUP reloads; SIGTERM drains — `/readyz` turns 503
//! at once, new connects are refused, sessions that end before `drain_timeout` end
//! cleanly, the rest are closed (1001 in `accept` mode), and the process exits 0. Its
//! log, captured whole, never contains a credential.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use support::{admin_get, connect, connect_ok, echo, edge, edge_with, wait_until, EdgeOptions};

const KEY: &str = "drain-test-api-key-7f3a9c";
const WRONG_KEY: &str = "wrong-test-api-key-0b1d2e";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Starts the binary on `file` (JSON logs at debug, captured) and waits until its admin
/// listener says ready; its pid and a handle on its exit and output.
async fn run_sluice(
    file: &std::path::Path,
    admin: SocketAddr,
) -> (
    u32,
    tokio::task::JoinHandle<std::io::Result<std::process::Output>>,
) {
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(file)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output());
    wait_until("sluice to be ready", async || {
        tokio::net::TcpStream::connect(admin).await.is_ok()
            && admin_get(admin, "/readyz").await.0 == 200
    })
    .await;
    (pid, output)
}

#[tokio::test]
async fn sigterm_drains_and_exits_0_and_sighup_reloads() {
    let edge = edge().await;
    let (port, admin_port) = (free_port(), free_port());
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(KEY.as_bytes()))
    };
    let config = |cap: u32| {
        format!(
            "[listen]\naddress = \"127.0.0.1:{port}\"\n[admin]\naddress = \"{admin}\"\n\
             [shutdown]\ndrain_timeout = \"2s\"\n\
             [upstream.groups.primary]\nendpoints = [\"{}\"]\n\
             [tenants.acc]\nqueue_mode = \"accept\"\nmax_sessions = {cap}\nauth = {{ kind = \"api-key\", key_sha256 = [\"{hash}\"] }}\n\
             [tenants.hld]\nauth = {{ kind = \"none\" }}\n",
            edge.url(false)
        )
    };
    std::fs::write(&file, config(10)).unwrap();
    let (pid, output) = run_sluice(&file, admin).await;

    // `sluice health` (the container HEALTHCHECK) sees it alive and ready.
    let health = |path: &str| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["health", "--admin", &admin.to_string(), "--path", path])
            .output()
            .unwrap()
    };
    assert!(health("/healthz").status.success());
    assert!(health("/readyz").status.success());

    let url = |t: &str| format!("ws://127.0.0.1:{port}/t/{t}/");
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
    let (code, why) = support::ended(&mut left_open).await.expect("a close frame");
    assert_eq!((code, why.as_str()), (CloseCode::Away, "shutdown"));
    // The tunnel was between frames both ways: both peers get a close frame too.
    let (code, why) = support::ended(&mut tunnel)
        .await
        .expect("a close frame in the tunnel");
    assert_eq!((code, why.as_str()), (CloseCode::Away, "shutdown"));

    let out = tokio::time::timeout(Duration::from_secs(20), output)
        .await
        .expect("sluice exited")
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let log = String::from_utf8_lossy(&out.stderr);
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
    let (port, admin_port) = (free_port(), free_port());
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(
        &file,
        format!(
            "[listen]\naddress = \"127.0.0.1:{port}\"\n[admin]\naddress = \"{admin}\"\n\
             [shutdown]\ndrain_timeout = \"4s\"\n\
             [upstream.groups.primary]\nendpoints = [\"{}\"]\n\
             [tenants.acc]\nqueue_mode = \"accept\"\nsubprotocols = []\nauth = {{ kind = \"none\" }}\n",
            edge.url(false)
        ),
    )
    .unwrap();
    let (pid, output) = run_sluice(&file, admin).await;

    // 101 at once; the edge takes 2 s to answer sluice's own handshake.
    let mut ws = connect_ok(&format!("ws://127.0.0.1:{port}/t/acc/"), &[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(pid, "TERM");

    let mut close = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
            Err(_) => panic!("never ended"),
            Ok(Some(Ok(Message::Close(f)))) => close = Some(f),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => break,
        }
    }
    let out = tokio::time::timeout(Duration::from_secs(20), output)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        close.is_some(),
        "the accept-mode client got no close frame: the process exited under it"
    );
}
