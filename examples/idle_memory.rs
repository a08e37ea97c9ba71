//! Measures sluice's memory per idle proxied WebSocket.
//!
//! Starts an echo edge in this process, runs the release `sluice` binary in front of it,
//! opens N sessions through it (each echoes one message, then stays idle), and reads
//! sluice's resident memory (VmRSS) before, with all sessions idle, and 2 s and 5 s after
//! the edge saw the last of them end.
//!
//! ```sh
//! cargo build --release --bins --examples
//! target/release/examples/idle_memory 5000          # hold mode (the byte tunnel)
//! target/release/examples/idle_memory 5000 accept   # accept mode (the message relay)
//! target/release/examples/idle_memory 200 accept --large 1000000
//! ```
//!
//! With `--large BYTES` it measures twice, each time with a fresh sluice: once as
//! above, once with each session echoing one text message of BYTES after the first
//! (then idle), and prints both figures per session and their ratio: what a session
//! keeps of a large message it relayed.
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

struct Figures {
    before: u64,
    idle: u64,
    /// 2 s after the edge saw the last session end.
    after_2s: u64,
    /// 5 s after.
    after: u64,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut large = None;
    let mut plain = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--large" {
            large = it.next().and_then(|v| v.parse::<usize>().ok());
            assert!(large.is_some(), "--large takes a size in bytes");
        } else {
            plain.push(a);
        }
    }
    let n: usize = plain.first().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let mode = plain.get(1).cloned().unwrap_or_else(|| "hold".into());
    assert!(
        mode == "hold" || mode == "accept",
        "mode is hold or accept, not {mode}"
    );

    let small = measure(n, &mode, None).await;
    report(n, &mode, None, &small);
    if let Some(bytes) = large {
        let big = measure(n, &mode, Some(bytes)).await;
        report(n, &mode, Some(bytes), &big);
        println!(
            "ratio               {:.2} (per idle session after one {bytes}-byte message / without)",
            per_session(&big, n) / per_session(&small, n)
        );
    }
}

fn per_session(f: &Figures, n: usize) -> f64 {
    f.idle.saturating_sub(f.before) as f64 * 1024.0 / n as f64
}

fn report(n: usize, mode: &str, large: Option<usize>, f: &Figures) {
    match large {
        None => println!("sessions            {n} ({mode} mode)"),
        Some(b) => {
            println!("sessions            {n} ({mode} mode, each echoed one {b}-byte message)")
        }
    }
    println!("sluice RSS before   {} KiB", f.before);
    println!("sluice RSS idle     {} KiB", f.idle);
    println!(
        "sluice RSS after 2s {} KiB ({:.2} x before)",
        f.after_2s,
        f.after_2s as f64 / f.before as f64
    );
    println!(
        "sluice RSS after 5s {} KiB ({:.2} x before)",
        f.after,
        f.after as f64 / f.before as f64
    );
    println!("per idle session    {:.0} bytes", per_session(f, n));
}

/// One sluice, N sessions (each echoing one small message, then one of `large` bytes
/// when given), idle, then closed.
async fn measure(n: usize, mode: &str, large: Option<usize>) -> Figures {
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
        if let Some(bytes) = large {
            ws.send(Message::text("x".repeat(bytes))).await.unwrap();
            match ws.next().await {
                Some(Ok(Message::Text(t))) => assert_eq!(t.len(), bytes, "the echo"),
                other => panic!("expected the large echo, got {other:?}"),
            }
        }
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
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_2s = rss_kib(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(pid);
    child.kill().ok();
    child.wait().ok();
    let _ = std::fs::remove_dir_all(&dir);

    Figures {
        before,
        idle,
        after_2s,
        after,
    }
}
