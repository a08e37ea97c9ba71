//! `queue_mode = "accept"`: sluice answers `101` itself, holds a queued client's
//! messages, explains refusals with close frames, and relays messages both ways. Real
//! tokio-tungstenite clients, a real tokio-tungstenite edge, sluice on 127.0.0.1.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use support::{
    config, config_for, connect, connect_ok, connect_refused, edge, edge_with, proxy, scrape,
    tenant, wait_until, Client, ConfigBuilder, Edge, EdgeOptions, Proxy, TenantSpec, NO_AUTH,
};

/// `lab` (`tenant("lab")` with its limits) in `accept` mode, in front of `edge`, with
/// the rest of `config` (other tables).
async fn accept_lab(edge: &Edge, lab: TenantSpec, config: ConfigBuilder) -> Proxy {
    config
        .upstream(&edge.url(false))
        .tenant(lab.accept_mode())
        .start()
        .await
}

/// A builder with `[accept] key = value`.
fn accept_table(key: &str, value: u32) -> ConfigBuilder {
    config().set("accept", key, &value.to_string())
}

/// The next message within 10 s (`None` when the stream ended).
async fn next(ws: &mut Client) -> Option<Message> {
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a message in time")
        .map(|r| r.expect("no error"))
}

/// Reads until the close frame and returns it.
async fn close_frame(ws: &mut Client) -> CloseFrame {
    loop {
        match next(ws).await {
            Some(Message::Close(Some(frame))) => return frame,
            Some(Message::Close(None)) => panic!("close without a code"),
            Some(_) => {}
            None => panic!("stream ended without a close frame"),
        }
    }
}

/// `"<reason>; retry-after=<seconds>"` parsed.
fn parse_retry(reason: &str) -> (&str, u64) {
    let (what, after) = reason
        .split_once("; retry-after=")
        .expect("reason; retry-after=N");
    (what, after.parse().expect("whole seconds"))
}

fn queued(proxy: &Proxy) -> u32 {
    proxy.admission.tenant_load("lab").unwrap().queued
}

#[tokio::test]
async fn a_queued_client_gets_101_and_its_messages_reach_the_edge_in_order_once_admitted() {
    let edge = edge().await;
    let proxy = accept_lab(&edge, tenant("lab").max_sessions(1), config()).await;
    let url = proxy.url("/t/lab/");
    let mut first = connect_ok(&url, &[]).await;
    support::echo(&mut first, "first").await;

    // The tenant is at its cap, yet the second client's upgrade is answered at once.
    let mut second = connect_ok(&url, &[]).await;
    wait_until("the second client to be queued", async || {
        queued(&proxy) == 1
    })
    .await;
    for m in ["one", "two", "three"] {
        second.send(Message::text(m)).await.unwrap();
    }
    // While queued, nothing reaches the edge: one handshake there, one message.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(edge.requests().len(), 1);
    assert_eq!(edge.texts(), ["first"]);

    let released = tokio::time::Instant::now();
    support::close(first).await;
    edge.wait_for("the held messages", |e| e.texts().len() == 4)
        .await;
    assert_eq!(edge.texts(), ["first", "one", "two", "three"]);
    // They were sent right after admission, not with the next message.
    let last_at = edge.messages.lock().unwrap()[3].1;
    assert!(last_at >= released);
    // And the edge's echoes come back in order.
    for m in ["one", "two", "three"] {
        assert_eq!(next(&mut second).await, Some(Message::text(m)));
    }
    support::echo(&mut second, "after").await;

    let scrape = scrape(proxy.admin).await;
    assert_eq!(scrape.connects("lab", "admitted"), 1.0);
    assert_eq!(scrape.connects("lab", "queued_admitted"), 1.0);
    support::close(second).await;
}

#[tokio::test]
async fn a_queued_client_is_answered_pings_by_sluice() {
    let edge = edge().await;
    let proxy = accept_lab(&edge, tenant("lab").max_sessions(1), config()).await;
    let url = proxy.url("/t/lab/");
    let _first = connect_ok(&url, &[]).await;
    let mut second = connect_ok(&url, &[]).await;
    wait_until("queued", async || queued(&proxy) == 1).await;
    second
        .send(Message::Ping("are you there".into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut second).await,
        Some(Message::Pong("are you there".into()))
    );
    // The ping was not held for the edge.
    assert_eq!(queued(&proxy), 1);
}

#[tokio::test]
async fn the_subprotocol_is_chosen_from_the_tenants_list_and_credentials_are_never_echoed() {
    let edge = edge().await;
    let key = "k-123";
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    let config = format!(
        "{}[tenants.keyed]\nqueue_mode = \"accept\"\nsubprotocols = [\"v2\", \"sip\"]\nauth = {{ kind = \"api-key\", key_sha256 = [\"{hash}\"] }}\n\
         [tenants.plain]\nqueue_mode = \"accept\"\nsubprotocols = []\nauth = {NO_AUTH}\n",
        config_for(&edge.url(false), &[])
    );
    let proxy = proxy(&config).await;
    let keyed = proxy.url("/t/keyed/");

    // The first offered that is listed; the credential entry is neither echoed nor sent on.
    let protocols = format!("access_token.{key}, sip, v2");
    let (mut ws, resp) = connect(&keyed, &[("sec-websocket-protocol", &protocols)])
        .await
        .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "sip");
    support::echo(&mut ws, "hello").await;
    let seen = edge.requests().pop().unwrap();
    assert_eq!(seen.headers["sec-websocket-protocol"], "sip");
    assert!(!seen.dump().contains(key), "{}", seen.dump());

    // permessage-deflate is declined on both legs.
    let (_ws, resp) = connect(
        &keyed,
        &[
            ("sec-websocket-protocol", &protocols),
            (
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits",
            ),
        ],
    )
    .await
    .unwrap();
    assert!(resp.headers().get("sec-websocket-extensions").is_none());
    edge.wait_for("second handshake", |e| e.requests().len() == 2)
        .await;
    assert!(edge.requests()[1]
        .headers
        .get("sec-websocket-extensions")
        .is_none());

    // Only unlisted ones: 400 before any upgrade.
    let protocols = format!("access_token.{key}, mqtt");
    let resp = connect_refused(&keyed, &[("sec-websocket-protocol", &protocols)]).await;
    assert_eq!(resp.status(), 400);
    let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
    assert!(body.contains("mqtt") && !body.contains(key), "{body}");

    // A tenant listing none takes clients that offer none, and asks the edge for none.
    let resp = connect_refused(
        &proxy.url("/t/plain/"),
        &[("sec-websocket-protocol", "x-custom")],
    )
    .await;
    assert_eq!(resp.status(), 400);
    let (mut ws, resp) = connect(&proxy.url("/t/plain/"), &[]).await.unwrap();
    assert!(resp.headers().get("sec-websocket-protocol").is_none());
    support::echo(&mut ws, "plain").await;
    assert!(edge
        .requests()
        .pop()
        .unwrap()
        .headers
        .get("sec-websocket-protocol")
        .is_none());
}

#[tokio::test]
async fn an_edge_that_does_not_take_the_subprotocol_closes_the_client_with_1011() {
    let edge = edge().await; // it accepts only "sip"
    let proxy = accept_lab(&edge, tenant("lab").subprotocols(&["v2"]), config()).await;
    let (mut ws, resp) = connect(&proxy.url("/t/lab/"), &[("sec-websocket-protocol", "v2")])
        .await
        .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "v2");
    let frame = close_frame(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Error);
    assert!(
        frame.reason.contains("upstream-unavailable") && frame.reason.contains("\"v2\""),
        "{}",
        frame.reason
    );
    let scrape = scrape(proxy.admin).await;
    assert_eq!(scrape.connects("lab", "upstream-unavailable"), 1.0);
    assert_eq!(
        scrape.get("sluice_sessions_active", &[("tenant", "lab")]),
        0.0
    );
}

#[tokio::test]
async fn overflowing_the_held_buffer_closes_with_1008_and_frees_the_place() {
    let edge = edge().await;
    let proxy = accept_lab(
        &edge,
        tenant("lab").max_sessions(1),
        accept_table("held_messages", 2),
    )
    .await;
    let url = proxy.url("/t/lab/");
    let _first = connect_ok(&url, &[]).await;
    let mut second = connect_ok(&url, &[]).await;
    wait_until("queued", async || queued(&proxy) == 1).await;
    for m in ["a", "b", "c"] {
        second.send(Message::text(m)).await.unwrap();
    }
    let frame = close_frame(&mut second).await;
    assert_eq!(frame.code, CloseCode::Policy);
    assert!(
        frame.reason.starts_with("held-buffer-full"),
        "{}",
        frame.reason
    );
    assert_eq!(queued(&proxy), 0);
    assert_eq!(edge.texts(), Vec::<String>::new());
    // Counted as what the client was told, not as a client that left.
    let scrape = scrape(proxy.admin).await;
    assert_eq!(scrape.connects("lab", "held-buffer-full"), 1.0);
    assert_eq!(scrape.connects("lab", "client-gone"), 0.0);
}

#[tokio::test]
async fn the_held_buffer_is_bounded_in_bytes_too() {
    let edge = edge().await;
    let proxy = accept_lab(
        &edge,
        tenant("lab").max_sessions(1),
        accept_table("held_bytes", 1000),
    )
    .await;
    let url = proxy.url("/t/lab/");
    let _first = connect_ok(&url, &[]).await;
    let mut second = connect_ok(&url, &[]).await;
    wait_until("queued", async || queued(&proxy) == 1).await;
    second.send(Message::binary(vec![7u8; 600])).await.unwrap();
    second.send(Message::binary(vec![7u8; 600])).await.unwrap();
    assert_eq!(close_frame(&mut second).await.code, CloseCode::Policy);
}

#[tokio::test]
async fn a_queue_timeout_is_a_1013_close_with_a_parseable_retry_after() {
    let edge = edge().await;
    let proxy = accept_lab(
        &edge,
        tenant("lab")
            .max_sessions(1)
            .queue_timeout(Duration::from_millis(300)),
        config(),
    )
    .await;
    let url = proxy.url("/t/lab/");
    let _first = connect_ok(&url, &[]).await;
    let mut second = connect_ok(&url, &[]).await;
    let frame = close_frame(&mut second).await;
    assert_eq!(frame.code, CloseCode::Again);
    let (reason, after) = parse_retry(&frame.reason);
    assert_eq!(reason, "queue-timeout");
    assert!(after >= 1);
    // Counted as in hold mode.
    let scrape = scrape(proxy.admin).await;
    assert_eq!(scrape.connects("lab", "queue-timeout"), 1.0);
}

#[tokio::test]
async fn a_full_queue_is_a_1013_close() {
    let edge = edge().await;
    let proxy = accept_lab(
        &edge,
        tenant("lab").max_sessions(1).queue_depth(1),
        config(),
    )
    .await;
    let url = proxy.url("/t/lab/");
    let _first = connect_ok(&url, &[]).await;
    let _second = connect_ok(&url, &[]).await;
    wait_until("queued", async || queued(&proxy) == 1).await;
    let mut third = connect_ok(&url, &[]).await;
    let frame = close_frame(&mut third).await;
    assert_eq!(frame.code, CloseCode::Again);
    assert_eq!(parse_retry(&frame.reason).0, "queue-full");
}

#[tokio::test]
async fn an_edge_that_refuses_the_upgrade_gives_1013_upstream_unavailable_after_the_budget() {
    let edge = edge_with(EdgeOptions {
        refuse_with: Some(502),
        ..EdgeOptions::default()
    })
    .await;
    let extra = config()
        .set("upstream", "handshake_timeout", "\"300ms\"")
        .set("upstream", "retry_budget", "\"800ms\"")
        .set("upstream", "backoff_base", "\"50ms\"")
        .set("upstream", "backoff_max", "\"100ms\"")
        .set("upstream", "adaptive", "false");
    let proxy = accept_lab(&edge, tenant("lab"), extra).await;
    let began = tokio::time::Instant::now();
    let mut ws = connect_ok(&proxy.url("/t/lab/"), &[]).await;
    let frame = close_frame(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Again);
    let (reason, after) = parse_retry(&frame.reason);
    assert_eq!(reason, "upstream-unavailable");
    assert!(after >= 1);
    // It was retried (until the endpoint's circuit opened) within the budget first.
    assert!(
        edge.requests().len() >= 2,
        "{} attempts",
        edge.requests().len()
    );
    assert!(began.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn close_codes_and_reasons_pass_both_ways() {
    let edge = edge().await;
    let proxy = accept_lab(&edge, tenant("lab"), config()).await;
    let url = proxy.url("/t/lab/");

    // Client to edge.
    let mut ws = connect_ok(&url, &[]).await;
    support::echo(&mut ws, "hi").await;
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4000),
        reason: "client says bye".into(),
    }))
    .await
    .unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    edge.wait_for("the close", |e| !e.closes.lock().unwrap().is_empty())
        .await;
    assert_eq!(
        edge.closes.lock().unwrap()[0],
        (4000, "client says bye".to_owned())
    );

    // Edge to client.
    let mut ws = connect_ok(&url, &[]).await;
    ws.send(Message::text("close-with 4001 edge says bye"))
        .await
        .unwrap();
    let frame = close_frame(&mut ws).await;
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (4001, "edge says bye")
    );

    // An edge that drops its connection without a close: 1011 for the client.
    let mut ws = connect_ok(&url, &[]).await;
    ws.send(Message::text("drop-me")).await.unwrap();
    let frame = close_frame(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Error);
    proxy.wait_sessions_ended("lab").await;
}

#[tokio::test]
async fn large_and_fragmented_messages_arrive_whole_and_pings_pass() {
    let edge = edge().await;
    let proxy = accept_lab(&edge, tenant("lab"), config()).await;
    let mut ws = connect_ok(&proxy.url("/t/lab/"), &[]).await;

    // 1 MiB in one message.
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match next(&mut ws).await {
        Some(Message::Binary(got)) => assert!(got == big, "1 MiB changed on the way"),
        other => panic!("expected the binary echo, got {other:?}"),
    }

    // One text message in three frames.
    let parts = ["frag", "ment", "ed"];
    for (i, part) in parts.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(part.as_bytes().to_vec(), opcode, i == parts.len() - 1);
        ws.send(Message::Frame(frame)).await.unwrap();
    }
    assert_eq!(next(&mut ws).await, Some(Message::text("fragmented")));
    assert_eq!(edge.texts().last().map(String::as_str), Some("fragmented"));

    // A ping from the client reaches the edge.
    ws.send(Message::Ping("p1".into())).await.unwrap();
    edge.wait_for("the ping", |e| {
        e.messages
            .lock()
            .unwrap()
            .iter()
            .any(|(m, _)| *m == Message::Ping("p1".into()))
    })
    .await;
    support::close(ws).await;
}

#[tokio::test]
async fn a_message_over_the_limit_closes_with_1009() {
    let edge = edge().await;
    let proxy = accept_lab(
        &edge,
        tenant("lab"),
        accept_table("max_message_bytes", 1000),
    )
    .await;
    let mut ws = connect_ok(&proxy.url("/t/lab/"), &[]).await;
    support::echo(&mut ws, "small").await;
    ws.send(Message::binary(vec![1u8; 2000])).await.unwrap();
    assert_eq!(close_frame(&mut ws).await.code, CloseCode::Size);
    edge.wait_for("the edge told", |e| !e.closes.lock().unwrap().is_empty())
        .await;
    assert_eq!(edge.closes.lock().unwrap()[0].0, 1001);
}

#[tokio::test]
async fn a_queued_client_that_leaves_frees_its_place_at_once() {
    let edge = edge().await;
    let proxy = accept_lab(
        &edge,
        tenant("lab").max_sessions(1).queue_depth(1),
        config(),
    )
    .await;
    let url = proxy.url("/t/lab/");
    let first = connect_ok(&url, &[]).await;
    let second = connect_ok(&url, &[]).await;
    wait_until("queued", async || queued(&proxy) == 1).await;
    drop(second); // TCP gone, no close frame
    wait_until("the place freed", async || queued(&proxy) == 0).await;

    // The next one takes the place (no queue-full) and gets the session when it frees.
    let mut third = connect_ok(&url, &[]).await;
    wait_until("queued", async || queued(&proxy) == 1).await;
    support::close(first).await;
    support::echo(&mut third, "mine now").await;
    let scrape = scrape(proxy.admin).await;
    assert_eq!(scrape.connects("lab", "client-gone"), 1.0);
    // The edge never saw the client that left.
    assert_eq!(edge.requests().len(), 2);
}

/// A raw client: a real upgrade on a TCP socket to `path`, answered `101`.
async fn raw_upgrade(proxy: &Proxy, path: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        proxy.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.expect("a complete 101"));
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// A client's frame: `first` (FIN, RSV and opcode), masked, with the shortest length.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![first];
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n @ 126..=65535 => {
            frame.push(0x80 | 126);
            frame.extend((n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend((n as u64).to_be_bytes());
        }
    }
    frame.extend(mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// The next frame sluice sends (unmasked): its first byte and payload; `None` when the
/// connection ends first.
async fn raw_frame(tcp: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut head = [0u8; 2];
        tcp.read_exact(&mut head).await.ok()?;
        let len = match head[1] & 0x7f {
            126 => u64::from(tcp.read_u16().await.ok()?),
            127 => tcp.read_u64().await.ok()?,
            n => u64::from(n),
        };
        assert_eq!(head[1] & 0x80, 0, "sluice masks no frame towards a client");
        let mut payload = vec![0u8; len as usize];
        tcp.read_exact(&mut payload).await.ok()?;
        Some((head[0], payload))
    })
    .await
    .expect("a frame or the end in time")
}

/// Reads sluice's frames until a close frame and returns its code; `None` when the
/// connection ends first.
async fn raw_close_code(tcp: &mut TcpStream) -> Option<u16> {
    loop {
        let (first, payload) = raw_frame(tcp).await?;
        if first & 0x0f == 0x8 {
            return Some(u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
}

/// Each way of breaking the protocol or a size limit (`max_message_bytes = 1000`), as
/// raw bytes, and the close code that answers it.
fn violations() -> Vec<(&'static str, Vec<u8>, u16)> {
    vec![
        ("unmasked frame", vec![0x81, 0x02, b'h', b'i'], 1002),
        ("RSV1 set", masked(0xc1, b"hi"), 1002),
        ("RSV3 set", masked(0x92, b"hi"), 1002),
        ("unknown data opcode", masked(0x83, b"hi"), 1002),
        ("unknown control opcode", masked(0x8b, b""), 1002),
        (
            "control frame over 125 bytes",
            masked(0x89, &[b'p'; 126]),
            1002,
        ),
        ("fragmented control frame", masked(0x09, b"p"), 1002),
        (
            "invalid UTF-8 in a text message",
            masked(0x81, b"ok \xff\xfe"),
            1007,
        ),
        (
            "invalid UTF-8 in a fragmented text message",
            [masked(0x01, b"ok \xc3"), masked(0x80, b"(")].concat(),
            1007,
        ),
        (
            "invalid UTF-8 in a close reason",
            masked(0x88, b"\x03\xe8bye \xff"),
            1007,
        ),
        (
            "a frame over max_message_bytes",
            masked(0x82, &[7; 2000]),
            1009,
        ),
        (
            "a message over max_message_bytes in two frames",
            [masked(0x02, &[7; 600]), masked(0x80, &[7; 600])].concat(),
            1009,
        ),
        (
            "a bogus 63-bit length",
            vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4],
            1009,
        ),
        ("a stray continuation frame", masked(0x80, b"x"), 1002),
    ]
}

#[tokio::test]
async fn a_queued_client_that_breaks_the_protocol_gets_the_close_code_and_frees_its_place() {
    let edge = edge().await;
    let proxy = accept_lab(
        &edge,
        tenant("lab").max_sessions(1),
        accept_table("max_message_bytes", 1000),
    )
    .await;
    let url = proxy.url("/t/lab/");
    let mut first = connect_ok(&url, &[]).await;
    support::echo(&mut first, "holding the only slot").await;
    let cases = violations();
    for (i, (what, bytes, code)) in cases.iter().enumerate() {
        let mut raw = raw_upgrade(&proxy, "/t/lab/").await;
        wait_until("queued", async || queued(&proxy) == 1).await;
        raw.write_all(bytes).await.unwrap();
        assert_eq!(raw_close_code(&mut raw).await, Some(*code), "{what}");
        // Freed and counted before the close frame was sent: the client has not
        // answered it (sluice waits up to 2 s for that).
        assert_eq!(queued(&proxy), 0, "{what}");
        let counted = scrape(proxy.admin).await.connects("lab", "protocol-error");
        assert_eq!(counted, (i + 1) as f64, "{what}");
    }
    let scrape = scrape(proxy.admin).await;
    assert_eq!(scrape.connects("lab", "protocol-error"), cases.len() as f64);
    assert_eq!(scrape.connects("lab", "client-gone"), 0.0);
    // None of them reached the edge.
    assert_eq!(edge.requests().len(), 1);
    support::echo(&mut first, "still relayed").await;
}

#[tokio::test]
async fn a_client_that_breaks_the_protocol_during_the_upstream_handshake_frees_its_slot() {
    let delay = Arc::new(AtomicU64::new(0));
    let edge = edge_with(EdgeOptions {
        delay_ms: Some(delay.clone()),
        ..EdgeOptions::default()
    })
    .await;
    let proxy = accept_lab(&edge, tenant("lab").max_sessions(1), config()).await;
    delay.store(2000, Ordering::SeqCst);
    let mut raw = raw_upgrade(&proxy, "/t/lab/").await;
    wait_until("the upstream handshake under way", async || {
        proxy.admission.tenant_load("lab").unwrap().live == 1
    })
    .await;
    raw.write_all(&masked(0xc1, b"hi")).await.unwrap();
    assert_eq!(raw_close_code(&mut raw).await, Some(1002));
    // Freed before the closing handshake, which the client has not answered.
    assert_eq!(proxy.admission.tenant_load("lab").unwrap().live, 0);
    let scrape = scrape(proxy.admin).await;
    assert_eq!(scrape.connects("lab", "protocol-error"), 1.0);
    assert_eq!(scrape.connects("lab", "client-gone"), 0.0);
}

#[tokio::test]
async fn after_admission_the_same_violations_get_the_same_close_codes() {
    let edge = edge().await;
    let proxy = accept_lab(
        &edge,
        tenant("lab"),
        accept_table("max_message_bytes", 1000),
    )
    .await;
    let cases = violations();
    for (what, bytes, code) in &cases {
        let mut raw = raw_upgrade(&proxy, "/t/lab/").await;
        // Admitted once the edge echoes.
        raw.write_all(&masked(0x81, b"hello")).await.unwrap();
        let mut echo = [0u8; 7];
        raw.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"\x81\x05hello", "{what}");
        raw.write_all(bytes).await.unwrap();
        assert_eq!(raw_close_code(&mut raw).await, Some(*code), "{what}");
    }
    let scrape = scrape(proxy.admin).await;
    let admitted = scrape.connects("lab", "admitted") + scrape.connects("lab", "queued_admitted");
    assert_eq!(admitted, cases.len() as f64);
    assert_eq!(scrape.connects("lab", "protocol-error"), 0.0);
}

#[tokio::test]
async fn large_and_fragmented_messages_pass_whole_both_ways_text_and_binary() {
    let edge = edge().await;
    let proxy = accept_lab(&edge, tenant("lab"), config()).await;
    let mut ws = connect_ok(&proxy.url("/t/lab/"), &[]).await;

    // 1 MB of text with 1- to 4-byte characters: sluice's fragments (both legs) cut
    // through characters.
    let text = "aé€😀".repeat(100_000);
    assert_eq!(text.len(), 1_000_000);
    ws.send(Message::text(text.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::text(text.clone())));

    // Three fragments of the client's, each larger than sluice's fragments and cut
    // inside characters, text and binary.
    let binary: Vec<u8> = (0..90_000u32).map(|i| (i % 253) as u8).collect();
    let cuts = [0, 10_001, 20_003, 30_000];
    for (data, kind) in [
        (&text.as_bytes()[..30_000], Data::Text),
        (&binary[..30_000], Data::Binary),
    ] {
        for i in 0..3 {
            let opcode = OpCode::Data(if i == 0 { kind } else { Data::Continue });
            let part = data[cuts[i]..cuts[i + 1]].to_vec();
            let frame = Frame::message(part, opcode, i == 2);
            ws.send(Message::Frame(frame)).await.unwrap();
        }
        let want = match kind {
            Data::Text => Message::text(std::str::from_utf8(data).unwrap()),
            _ => Message::binary(data.to_vec()),
        };
        assert_eq!(next(&mut ws).await, Some(want.clone()));
        let seen = edge.messages.lock().unwrap().last().unwrap().0.clone();
        assert!(seen == want, "the edge got the message whole");
    }
    support::close(ws).await;

    // On the wire: a large message reaches the client in fragments of at most
    // FRAGMENT bytes (so no leg's write buffer grows past one).
    let mut raw = raw_upgrade(&proxy, "/t/lab/").await;
    raw.write_all(&masked(0x82, &binary)).await.unwrap();
    let mut got = Vec::new();
    let mut frames = 0;
    while got.len() < binary.len() {
        let (first, payload) = raw_frame(&mut raw).await.expect("the echo");
        let opcode = if frames == 0 { 0x2 } else { 0x0 };
        assert_eq!(first & 0x0f, opcode, "frame {frames}");
        assert!(payload.len() <= sluice::ws::FRAGMENT, "{}", payload.len());
        got.extend(payload);
        frames += 1;
        assert_eq!(
            first & 0x80 != 0,
            got.len() == binary.len(),
            "FIN on the last only"
        );
    }
    assert!(got == binary, "the echo changed");
    assert!(frames >= binary.len() / sluice::ws::FRAGMENT);
}
