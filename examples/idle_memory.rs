//! Measures sluice's memory per idle proxied WebSocket.
//!
//! Starts an echo edge in this process, runs the release `sluice` binary in front of it,
//! opens N sessions through it (each echoes one message, then stays idle), and reads
//! sluice's resident memory (VmRSS) before, with all sessions idle, and after they all
//! closed.
//!
//! ```sh
//! cargo build --release --bins --examples
//! target/release/examples/idle_memory 5000          # hold mode (the byte tunnel)
//! target/release/examples/idle_memory 5000 accept   # accept mode (the message relay)
//! ```
//!
//! Each session costs two file descriptors in sluice and two here (client and edge);
//! keep N under a quarter of `ulimit -n`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let mode = std::env::args().nth(2).unwrap_or_else(|| "hold".into());
    assert!(
        mode == "hold" || mode == "accept",
        "mode is hold or accept, not {mode}"
    );

    // The edge: echo, counting live sessions.
    let edge = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let edge_addr = edge.local_addr().unwrap();
    let live = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let live_edge = live.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = edge.accept().await {
            let live = live_edge.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        break;
                    }
                }
                live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = std::env::temp_dir().join(format!("sluice-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\naddress = \"127.0.0.1:{port}\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [upstream.groups.primary]\nendpoints = [\"ws://{edge_addr}\"]\n\
             [tenants.lab]\nmax_sessions = 100000\nhandshake_rate = 100000.0\nhandshake_burst = 10000\n\
             queue_mode = \"{mode}\"\nsubprotocols = []\nauth = {{ kind = \"none\" }}\n"
        ),
    )
    .unwrap();
    let exe = std::env::current_exe().unwrap();
    let sluice = exe.parent().unwrap().parent().unwrap().join("sluice");
    let mut child = std::process::Command::new(&sluice)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", sluice.display()));
    let pid = child.id();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Warm up: one session, so one-time allocations are not counted per session.
    {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/t/lab/warm"))
                .await
                .unwrap();
        ws.send(Message::text("warm")).await.unwrap();
        ws.next().await;
        ws.close(None).await.ok();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);

    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let url = format!("ws://127.0.0.1:{port}/t/lab/idle/{i}");
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        ws.send(Message::text("REGISTER")).await.unwrap();
        ws.next().await;
        clients.push(ws);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_kib(pid);

    for mut ws in clients.drain(..) {
        ws.close(None).await.ok();
    }
    drop(clients);
    for _ in 0..200 {
        if live.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = rss_kib(pid);
    child.kill().ok();
    child.wait().ok();
    let _ = std::fs::remove_dir_all(&dir);

    let per = (idle.saturating_sub(before)) as f64 * 1024.0 / n as f64;
    println!("sessions            {n} ({mode} mode)");
    println!("sluice RSS before   {before} KiB");
    println!("sluice RSS idle     {idle} KiB");
    println!("sluice RSS after    {after} KiB (all closed)");
    println!("per idle session    {:.0} bytes", per);
}
