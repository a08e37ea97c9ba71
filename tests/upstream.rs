//! The upstream leg: failures become sluice's own rejections, endpoints are tried in
//! turn, forwarding headers are added, and wss:// is verified against a CA.

mod support;

use std::time::Duration;

use support::*;
use tokio::net::TcpListener;

/// An address nothing listens on.
async fn dead_addr() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn edge_down_gives_503_upstream_unavailable() {
    let dead = dead_addr().await;
    let proxy = proxy(&config_for(&format!("ws://{dead}"), &[("lab", NO_AUTH)])).await;
    let resp = connect_refused(&proxy.url("/t/lab/"), &[]).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(reason(&resp), "upstream-unavailable");
    let after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&after), "retry-after {after}");
}

#[tokio::test]
async fn edge_refusals_are_not_passed_through_raw() {
    // An edge that answers 503 or 429 has no room: edge-capacity (a 502 would be
    // upstream-unavailable). The edge's Retry-After (7 s) is longer than the retry
    // budget here, so there is one attempt.
    for (status, expected) in [
        (503, "edge-capacity"),
        (429, "edge-capacity"),
        (502, "upstream-unavailable"),
    ] {
        let refusing = edge_with(EdgeOptions {
            refuse_with: Some(status),
            ..Default::default()
        })
        .await;
        let config = format!(
            "[upstream]\nretry_budget = \"3s\"\n{}",
            config_for(&refusing.url(false), &[("lab", NO_AUTH)])
        );
        let proxy = proxy(&config).await;
        let resp = connect_refused(&proxy.url("/t/lab/"), &[]).await;
        assert_eq!((resp.status().as_u16(), reason(&resp)), (503, expected));
        // The edge's own Retry-After is honoured; its status is named, its body is not.
        assert_eq!(resp.headers()["retry-after"], "7");
        assert_eq!(
            resp.headers()["x-sluice-upstream-status"],
            status.to_string().as_str()
        );
        let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
        assert!(!body.contains("refused by test edge"), "{body}");
    }
}

#[tokio::test]
async fn endpoints_are_tried_in_turn() {
    let dead = dead_addr().await;
    let busy = edge_with(EdgeOptions {
        refuse_with: Some(503),
        ..Default::default()
    })
    .await;
    let live = edge().await;
    let config = format!(
        "[upstream.groups.primary]\nendpoints = [\"ws://{dead}\", \"{}\", \"{}\"]\n[tenants.lab]\nauth = {NO_AUTH}\n",
        busy.url(false),
        live.url(false)
    );
    let proxy = proxy(&config).await;
    // Whatever endpoint is tried first, every client ends up on the live one.
    for i in 0..12 {
        let mut ws = connect_ok(&proxy.url(&format!("/t/lab/{i}")), &[]).await;
        echo(&mut ws, "through").await;
    }
    assert_eq!(live.requests().len(), 12);
    // The others were tried too, and what they refused never reached the clients.
    assert!(
        !busy.requests().is_empty(),
        "the busy endpoint was never tried"
    );
}

#[tokio::test]
async fn forwarding_headers_are_added() {
    let (edge, proxy) = lab("").await;

    let (_ws, resp) = connect(&proxy.url("/t/lab/"), &[("x-forwarded-for", "203.0.113.9")])
        .await
        .unwrap();
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(rid.len(), 32, "generated request id {rid}");
    let (_ws, resp) = connect(&proxy.url("/t/lab/"), &[("x-request-id", "call-1234")])
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "call-1234");

    let seen = edge.requests();
    let h = &seen[0].headers;
    // What the client claimed is replaced by what sluice saw.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert!(h["forwarded"]
        .to_str()
        .unwrap()
        .starts_with("for=127.0.0.1;proto=http"));
    assert_eq!(h["x-request-id"], rid.as_str());
    assert_eq!(h["host"], edge.addr.to_string().as_str());
    assert_eq!(seen[1].headers["x-request-id"], "call-1234");
    assert_eq!(seen[1].headers["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn handshake_timeout_bounds_a_silent_edge() {
    // Accepts TCP, never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let proxy = proxy(&format!(
        "[upstream]\nhandshake_timeout = \"300ms\"\nretry_budget = \"1s\"\n{}",
        config_for(&format!("ws://{addr}"), &[("lab", NO_AUTH)])
    ))
    .await;
    let started = tokio::time::Instant::now();
    let resp = connect_refused(&proxy.url("/t/lab/"), &[]).await;
    assert_eq!(
        (resp.status().as_u16(), reason(&resp)),
        (503, "upstream-unavailable")
    );
    assert_eq!(resp.headers()["x-sluice-upstream-status"], "timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn wss_upstream_is_verified_against_the_configured_ca() {
    let (ca, cert, key) = test_ca();
    let edge = edge_with(EdgeOptions {
        tls: Some((cert, key)),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("edge-ca.pem");
    std::fs::write(&ca_path, ca).unwrap();

    let trusted = proxy(&format!(
        "[upstream]\nca_file = \"{}\"\n{}",
        ca_path.display(),
        config_for(&edge.url(true), &[("lab", NO_AUTH)])
    ))
    .await;
    let mut ws = connect_ok(&trusted.url("/t/lab/tls"), &[]).await;
    let big = "w".repeat(200_000);
    echo(&mut ws, &big).await;
    echo(&mut ws, "INVITE").await;
    assert_eq!(edge.requests()[0].target, "/tls");

    // Without the CA the edge's certificate is not trusted: no session.
    let untrusted = proxy(&config_for(&edge.url(true), &[("lab", NO_AUTH)])).await;
    let resp = connect_refused(&untrusted.url("/t/lab/tls"), &[]).await;
    assert_eq!(
        (resp.status().as_u16(), reason(&resp)),
        (503, "upstream-unavailable")
    );
    assert_eq!(edge.requests().len(), 1);
}
