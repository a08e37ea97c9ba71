//! The listener: only WebSocket upgrades, header limits that hurt nobody else, TLS.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes and reads what comes back until the server closes (or 10 s).
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn plain_http_gets_426() {
    let (edge, proxy) = lab("").await;
    let resp = raw(
        proxy.addr,
        b"GET /t/lab/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 426"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("upgrade: websocket"),
        "{resp}"
    );
    let resp = raw(
        proxy.addr,
        b"POST /t/lab/ HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 426"), "{resp}");
    // Even a keep-alive client is disconnected after its 426.
    let started = tokio::time::Instant::now();
    let resp = raw(proxy.addr, b"GET /t/lab/ HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 426"), "{resp}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "connection left open"
    );
    assert!(edge.requests().is_empty());
}

#[tokio::test]
async fn malformed_upgrades_are_refused() {
    let (edge, proxy) = lab("").await;
    let no_key = b"GET /t/lab/ HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n";
    assert!(raw(proxy.addr, no_key).await.starts_with("HTTP/1.1 400"));
    let old_version = b"GET /t/lab/ HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let resp = raw(proxy.addr, old_version).await;
    assert!(resp.starts_with("HTTP/1.1 426"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{resp}"
    );
    assert!(raw(proxy.addr, b"\x16\x03\x01garbage\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 400"));
    // Targets that are not a path (authority and asterisk forms) name nothing to open.
    for target in ["lab.example:80", "*"] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nx-tenant-id: lab\r\n\r\n");
        let resp = raw(proxy.addr, req.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{target}: {resp}");
    }
    assert!(edge.requests().is_empty());
}

#[tokio::test]
async fn oversized_header_is_refused_without_harming_others() {
    let (edge, proxy) = lab("[protection]\nmax_header_bytes = 8192\n").await;
    let mut live = connect_ok(&proxy.url("/t/lab/"), &[]).await;
    echo(&mut live, "before").await;

    let huge = "a".repeat(20_000);
    let request = format!(
        "GET /t/lab/ HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Big: {huge}\r\n\r\n"
    );
    let resp = raw(proxy.addr, request.as_bytes()).await;
    assert!(
        resp.starts_with("HTTP/1.1 431"),
        "got {:?}",
        resp.lines().next()
    );

    // The live session and new ones are unaffected.
    echo(&mut live, "after").await;
    let mut fresh = connect_ok(&proxy.url("/t/lab/"), &[]).await;
    echo(&mut fresh, "fresh").await;
    assert_eq!(edge.requests().len(), 2);
}

#[tokio::test]
async fn slow_request_head_is_cut_off() {
    let (edge, proxy) =
        lab("[listen]\naddress = \"127.0.0.1:0\"\nheader_timeout = \"300ms\"\n").await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"GET /t/lab/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "a stalled request head was never cut off");
    // Cut off by the header timeout, long before our 10 s guard.
    assert!(started.elapsed() < Duration::from_secs(5));
    // A client that connects and says nothing at all is cut off the same way.
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "a silent connection was never cut off");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Meanwhile a normal client is served, and only it reached the edge.
    let mut ws = connect_ok(&proxy.url("/t/lab/"), &[]).await;
    echo(&mut ws, "ok").await;
    assert_eq!(edge.requests().len(), 1);
}

#[tokio::test]
async fn tls_listener_serves_wss() {
    let (ca, cert, key) = test_ca();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    let (edge, proxy) = lab(&format!(
        "[listen]\naddress = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        dir.path().join("cert.pem").display(),
        dir.path().join("key.pem").display(),
    ))
    .await;

    let client = client_tls(&ca);
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let url = format!("wss://127.0.0.1:{}/t/lab/secure", proxy.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let big = "s".repeat(300_000);
    echo(&mut ws, &big).await;
    echo(&mut ws, "small").await;
    let seen = edge.requests();
    assert_eq!(seen[0].target, "/secure");
    assert!(seen[0].headers["forwarded"]
        .to_str()
        .unwrap()
        .contains("proto=https"));

    // A plain-text client on the TLS port gets nowhere, and nothing reaches the edge.
    let resp = raw(proxy.addr, b"GET /t/lab/ HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(!resp.starts_with("HTTP/1.1 101"));
    assert_eq!(edge.requests().len(), 1);
}

/// An edge and a TLS sluice in front of it (tenant `lab`; `extra` config text put
/// first, after the `[listen]` table); the client TLS config trusting its CA.
async fn tls_lab(extra: &str) -> (Edge, Proxy, Arc<rustls::ClientConfig>) {
    let (ca, cert, key) = test_ca();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    // The files are read at start; the directory may go.
    let lab = lab(&format!(
        "[listen]\naddress = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{extra}",
        dir.path().join("cert.pem").display(),
        dir.path().join("key.pem").display(),
    ))
    .await;
    (lab.0, lab.1, Arc::new(client_tls(&ca)))
}

/// TCP to sluice; after `pause`, the TLS handshake.
async fn tls_connect(
    proxy: &Proxy,
    client: &Arc<rustls::ClientConfig>,
    pause: Duration,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(pause).await;
    tokio_rustls::TlsConnector::from(client.clone())
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

/// A WebSocket over TLS to `/t/lab/`, the TLS handshake begun after `pause`.
async fn wss(
    proxy: &Proxy,
    client: &Arc<rustls::ClientConfig>,
    pause: Duration,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    let tls = tls_connect(proxy, client, pause).await;
    let url = format!("wss://127.0.0.1:{}/t/lab/", proxy.addr.port());
    tokio::time::timeout(
        Duration::from_secs(20),
        tokio_tungstenite::client_async(url, tls),
    )
    .await
    .expect("answered in time")
    .map(|(ws, _)| ws)
}

#[tokio::test]
async fn tls_and_the_request_head_share_one_header_timeout() {
    let budget = Duration::from_millis(1500);
    let (edge, proxy, client) = tls_lab("header_timeout = \"1500ms\"\n").await;
    let tls_time = Duration::from_millis(1200);

    // A slowloris over TLS: the handshake takes 1.2 s of the 1.5 s budget, then the
    // head comes a byte every 50 ms and never ends. Before the fix it had the whole
    // budget again after the handshake (cut at 2.7 s).
    let began = tokio::time::Instant::now();
    let mut tls = tls_connect(&proxy, &client, tls_time).await;
    let head = format!(
        "GET /t/lab/ HTTP/1.1\r\nHost: x\r\nX-Slow: {}",
        "a".repeat(1000)
    );
    let mut sent = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let cut = loop {
        let mut buf = [0u8; 512];
        tokio::select! {
            read = tls.read(&mut buf) => match read {
                Ok(0) | Err(_) => break began.elapsed(),
                Ok(_) => {}
            },
            _ = tick.tick() => {
                assert!(sent < head.len(), "never cut off");
                if tls.write_all(&head.as_bytes()[sent..=sent]).await.is_err()
                    || tls.flush().await.is_err()
                {
                    break began.elapsed();
                }
                sent += 1;
            }
        }
    };
    assert!(sent > 0, "the head had begun");
    assert!(
        cut < budget.mul_f64(1.5),
        "cut after {cut:?}: TLS and the head got more than one budget of {budget:?}"
    );
    assert!(
        cut >= budget.mul_f64(0.8),
        "cut after {cut:?}, before the budget of {budget:?}"
    );

    // A handshake as slow that sends its head at once is within the budget: served.
    let mut ws = wss(&proxy, &client, tls_time)
        .await
        .expect("a slow handshake within the budget is served");
    echo(&mut ws, "slow tls").await;
    // And so is a fast client.
    let mut ws = wss(&proxy, &client, Duration::ZERO)
        .await
        .expect("a fast client is served");
    echo(&mut ws, "fast").await;
    assert_eq!(edge.requests().len(), 2);
}

#[tokio::test]
async fn a_queued_hold_client_over_tls_is_not_cut_by_the_header_timeout() {
    let (_edge, proxy, client) = tls_lab(
        "header_timeout = \"300ms\"\n[defaults]\nmax_sessions = 1\nqueue_timeout = \"30s\"\n",
    )
    .await;
    let mut first = wss(&proxy, &client, Duration::ZERO).await.unwrap();
    let waiting = {
        let (proxy, client) = (proxy.clone(), client.clone());
        // The TLS handshake takes most of the budget too.
        tokio::spawn(async move { wss(&proxy, &client, Duration::from_millis(200)).await })
    };
    wait_until("the second client to queue", async || {
        proxy.admission.tenant_load("lab").unwrap().queued == 1
    })
    .await;
    // Queued (its head was read) for several budgets: still waiting, not cut.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!waiting.is_finished(), "the queued client was answered");
    assert_eq!(proxy.admission.tenant_load("lab").unwrap().queued, 1);
    first.close(None).await.unwrap();
    let mut second = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("admitted once the session ended")
        .unwrap()
        .expect("served after its wait in the queue");
    echo(&mut second, "after the queue").await;
}

/// A client may send its first frame in the same write as its request head: it is
/// relayed after the `101`, in `hold` and in `accept` mode.
#[tokio::test]
async fn a_frame_sent_with_the_request_head_is_relayed_after_the_101() {
    let (_edge, proxy) =
        lab("[tenants.acc]\nqueue_mode = \"accept\"\nauth = { kind = \"none\" }\n").await;
    for tenant in ["lab", "acc"] {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let mut bytes = format!("GET /t/{tenant}/ HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").into_bytes();
        // A masked text frame "early" (RFC 6455 §5.3).
        let mask = [1u8, 2, 3, 4];
        bytes.extend_from_slice(&[0x81, 0x80 | 5]);
        bytes.extend_from_slice(&mask);
        bytes.extend(b"early".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        tcp.write_all(&bytes).await.unwrap();
        let mut got = Vec::new();
        let want: &[u8] = b"\x81\x05early";
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut chunk = [0u8; 1024];
            while !got.ends_with(want) {
                let n = tcp.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&chunk[..n]);
            }
        })
        .await;
        let text = String::from_utf8_lossy(&got);
        assert!(read.is_ok(), "{tenant}: {text}");
        assert!(text.starts_with("HTTP/1.1 101"), "{tenant}: {text}");
    }
}
