//! Hostile request headers (issue 13): a client cannot make sluice send the edge a
//! broken upgrade, nor lie to the edge about where it connects from.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A valid upgrade for tenant `lab`, plus `extra` header lines; what sluice answered
/// (until it closed, or 10 s).
async fn upgrade_with(addr: std::net::SocketAddr, extra: &[&str]) -> String {
    let mut request = String::from(
        "GET /t/lab/ HTTP/1.1\r\nHost: sluice\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    );
    for line in extra {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    // A refusal ends with the connection; a 101 with its head.
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = tcp.read(&mut buf).await {
            out.extend_from_slice(&buf[..n]);
            if out.starts_with(b"HTTP/1.1 101") && out.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn connection_may_not_strip_what_the_upgrade_needs() {
    let (edge, proxy) = lab("").await;
    // Each would make the header hop-by-hop, so that the edge got an upgrade without it.
    for named in [
        "Sec-WebSocket-Key",
        "sec-websocket-version",
        "Sec-WebSocket-Protocol",
        "Host",
    ] {
        let line = format!("Connection: keep-alive, {named}");
        let resp = upgrade_with(proxy.addr, &[&line, "Sec-WebSocket-Protocol: sip"]).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{line}: {resp}");
        assert!(resp.contains("Connection names a header"), "{resp}");
    }
    // A Connection header naming ordinary hop-by-hop headers is still fine, and those
    // headers do not reach the edge.
    let resp = upgrade_with(proxy.addr, &["Connection: keep-alive, x-hop", "x-hop: 1"]).await;
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    let seen = edge.requests();
    assert_eq!(seen.len(), 1, "only the good upgrade reached the edge");
    assert!(seen[0].headers.get("x-hop").is_none());
    assert!(seen[0].headers.get("sec-websocket-key").is_some());
}

#[tokio::test]
async fn a_second_key_or_version_is_refused() {
    let (edge, proxy) = lab("").await;
    for line in [
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Version: 8",
        "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==",
    ] {
        let resp = upgrade_with(proxy.addr, &[line]).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "second {line}: {resp}");
        assert!(resp.contains("more than one Sec-WebSocket-Key"), "{resp}");
    }
    // The same request with one of each is served.
    let resp = upgrade_with(proxy.addr, &[]).await;
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    assert_eq!(edge.requests().len(), 1);
}

#[tokio::test]
async fn the_edge_never_sees_client_set_forwarding_headers() {
    let (edge, proxy) = lab("").await;
    let lies = [
        ("x-real-ip", "203.0.113.9"),
        ("true-client-ip", "203.0.113.9"),
        ("x-forwarded-host", "admin.internal"),
        ("x-forwarded-port", "443"),
        ("x-forwarded-proto", "https"),
        ("x-client-ip", "203.0.113.9"),
        ("cf-connecting-ip", "203.0.113.9"),
        ("x-forwarded-for", "203.0.113.9"),
        ("forwarded", "for=203.0.113.9"),
    ];
    let mut ws = connect_ok(&proxy.url("/t/lab/"), &lies).await;
    echo(&mut ws, "hi").await;

    let seen = edge.requests();
    let h = &seen[0].headers;
    let all = |name: &str| {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    // What sluice saw, once each.
    assert_eq!(all("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(all("x-forwarded-proto"), ["http"]);
    assert!(all("forwarded")[0].starts_with("for=127.0.0.1;proto=http"));
    // The rest are gone.
    for name in [
        "true-client-ip",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-client-ip",
        "cf-connecting-ip",
    ] {
        assert!(h.get(name).is_none(), "{name} reached the edge");
    }
    assert!(
        !seen[0].dump().contains("203.0.113.9"),
        "{}",
        seen[0].dump()
    );
}
