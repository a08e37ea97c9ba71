//! The proxy port served by several runtimes (`listen.workers`, one `SO_REUSEPORT`
//! listener each): every one serves, the limits hold across them, a port in use is
//! still refused, and a bad count is refused with the key.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A tenant's session cap is one cap, whichever runtime accepted each connect: with
/// four runtimes, 24 clients connecting at once against `max_sessions = 3` all get
/// their session, in turn, and the edge never holds more than 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caps_hold_across_worker_runtimes() {
    let edge = edge().await;
    let proxy = config()
        .upstream(&edge.url(false))
        .set("listen", "workers", "4")
        .tenant(
            tenant("lab")
                .max_sessions(3)
                .queue_depth(100)
                .queue_timeout(Duration::from_secs(30)),
        )
        .start()
        .await;
    let url = proxy.url("/t/lab/");
    let clients: Vec<_> = (0..24)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut ws = connect_ok(&url, &[]).await;
                echo(&mut ws, &format!("client {i}")).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                close(ws).await;
            })
        })
        .collect();
    for c in clients {
        tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .expect("every client is served within 60 s")
            .expect("client task");
    }
    assert_eq!(
        edge.requests().len(),
        24,
        "every client reached the edge once"
    );
    let peak = edge.peak.load(Ordering::SeqCst);
    assert!(
        (1..=3).contains(&peak),
        "the edge held {peak} sessions at once; the cap is 3"
    );
}

/// With several listeners in one `SO_REUSEPORT` group, a second sluice on the same
/// address is refused as it was with one listener, not let in to share the port.
#[tokio::test]
async fn a_port_in_use_is_refused() {
    let edge = edge().await;
    let first = config()
        .upstream(&edge.url(false))
        .set("listen", "workers", "2")
        .tenant(tenant("lab"))
        .start()
        .await;
    for workers in ["2", "1"] {
        let text = config()
            .upstream(&edge.url(false))
            .set("listen", "address", &format!("\"{}\"", first.addr))
            .set("listen", "workers", workers)
            .tenant(tenant("lab"))
            .text();
        let config = sluice::Config::parse(&text, &Default::default()).expect("valid config");
        let err = sluice::Bound::bind(config)
            .await
            .expect_err("the port is taken");
        let text = err.to_string();
        assert!(
            text.contains("listen.address") && text.contains(&first.addr.to_string()),
            "workers = {workers}: {text}"
        );
    }
    // The first one still serves.
    let mut ws = connect_ok(&first.url("/t/lab/"), &[]).await;
    echo(&mut ws, "still here").await;
}

/// `listen.workers` is 1 or more; a bad value names the key, and `check-config` says how
/// many threads serve the port.
#[test]
fn a_bad_worker_count_names_the_key() {
    for bad in ["0", "-1", "100000"] {
        let text = format!(
            "[listen]\nworkers = {bad}\n[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:1\"]\n"
        );
        let err = sluice::Config::parse(&text, &Default::default()).expect_err(bad);
        let text = err.to_string();
        assert!(text.contains("listen.workers"), "{bad}: {text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        "[listen]\nworkers = 3\n[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:1\"]\n\
         [tenants.lab]\nauth = { kind = \"none\" }\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check-config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3 worker threads"), "{stdout}");
}

/// The drain covers every runtime: sessions accepted by any of them are closed with 1001
/// at `drain_timeout`, the drain then ends, and no listener of the group is left
/// accepting (a connect is refused, not left in a backlog nobody reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_reaches_every_runtime_and_closes_every_listener() {
    let edge = edge().await;
    let mut sluice = config()
        .upstream(&edge.url(false))
        .set("listen", "workers", "3")
        .drain_timeout(Duration::from_secs(1))
        .tenant(tenant("acc").accept_mode())
        .tenant(tenant("hld"))
        .serve()
        .await;
    let proxy = sluice.proxy.clone();
    let mut sessions = Vec::new();
    for i in 0..12 {
        let path = if i % 2 == 0 { "/t/acc/" } else { "/t/hld/" };
        let mut ws = connect_ok(&proxy.url(path), &[]).await;
        echo(&mut ws, "open").await;
        sessions.push(ws);
    }
    sluice.shutdown();
    for ws in &mut sessions {
        let (code, why) = support::ended(ws).await.expect("a close frame");
        assert_eq!((code, why.as_str()), (CloseCode::Away, "shutdown"));
    }
    sluice.stopped(Duration::from_secs(20)).await;
    for _ in 0..20 {
        let refused = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(proxy.addr),
        )
        .await
        .expect("connect answered within 5 s");
        assert!(refused.is_err(), "a listener still accepts after the drain");
    }
}
