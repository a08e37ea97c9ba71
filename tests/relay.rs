//! The tunnel: messages of every kind both ways, closes passed on, many sessions at once.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};

async fn next(ws: &mut Client) -> Message {
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("message in time")
        .expect("stream open")
        .expect("no error")
}

#[tokio::test]
async fn text_binary_large_and_ping_pass_both_ways() {
    let (edge, proxy) = lab("").await;
    let mut ws = connect_ok(&proxy.url("/t/lab/echo"), &[]).await;
    assert_eq!(edge.requests()[0].target, "/echo");

    echo(&mut ws, "REGISTER sip:lab SIP/2.0").await;

    let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    ws.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(binary));

    // 1 MiB in one message: many reads and partial writes in the tunnel.
    let big: Vec<u8> = (0..(1 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(big));
    let big_text = "x".repeat(1 << 20);
    ws.send(Message::text(big_text.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text(big_text));

    // A ping crosses the tunnel and the edge's pong comes back.
    ws.send(Message::Ping(Bytes::from_static(b"are-you-there")))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        Message::Pong(Bytes::from_static(b"are-you-there"))
    );
    echo(&mut ws, "still here").await;
}

#[tokio::test]
async fn client_close_reaches_the_edge() {
    let (edge, proxy) = lab("").await;
    let mut ws = connect_ok(&proxy.url("/t/lab/"), &[]).await;
    echo(&mut ws, "hello").await;
    assert_eq!(edge.live.load(Ordering::SeqCst), 1);
    ws.close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "shift over".into(),
    }))
    .await
    .unwrap();
    // The edge answers the close; the client sees it, then the end of the stream.
    match next(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Away),
        other => panic!("expected the close answer, got {other:?}"),
    }
    edge.wait_for("the edge to see the close", |e| {
        e.live.load(Ordering::SeqCst) == 0
    })
    .await;
    assert_eq!(
        edge.closes.lock().unwrap().clone(),
        vec![(1001, "shift over".to_owned())]
    );
}

#[tokio::test]
async fn edge_close_and_edge_drop_reach_the_client() {
    let (edge, proxy) = lab("").await;

    let mut ws = connect_ok(&proxy.url("/t/lab/"), &[]).await;
    ws.send(Message::text("close-me")).await.unwrap();
    match next(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(f.code, CloseCode::Normal);
            assert_eq!(f.reason.as_str(), "bye");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    // After the closing handshake the stream ends.
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("stream ends in time");
    assert!(matches!(end, None | Some(Err(_))), "got {end:?}");

    // An edge that drops the TCP connection: the client's stream ends too.
    let mut ws = connect_ok(&proxy.url("/t/lab/"), &[]).await;
    ws.send(Message::text("drop-me")).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("stream ends in time");
    assert!(
        matches!(end, None | Some(Err(_))),
        "expected the end of the stream, got {end:?}"
    );
    edge.wait_for("both edge sessions to end", |e| {
        e.live.load(Ordering::SeqCst) == 0
    })
    .await;
    assert_eq!(edge.requests().len(), 2);
}

#[tokio::test]
async fn client_reset_ends_the_edge_session() {
    let (edge, proxy) = lab("").await;
    let mut ws = connect_ok(&proxy.url("/t/lab/"), &[]).await;
    echo(&mut ws, "hi").await;
    // Reset the client's connection: no close frame, no FIN, an RST.
    match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => socket2::SockRef::from(tcp)
            .set_linger(Some(Duration::ZERO))
            .unwrap(),
        _ => unreachable!("plain client"),
    }
    drop(ws);
    edge.wait_for("the edge session to end", |e| {
        e.live.load(Ordering::SeqCst) == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sessions_echo_at_once() {
    const N: usize = 200;
    let edge = edge().await;
    let proxy = config()
        .upstream(&edge.url(false))
        .tenant(
            tenant("lab")
                .max_sessions(1000)
                .handshake_rate(10000.0)
                .handshake_burst(1000)
                .queue_depth(1000),
        )
        .start()
        .await;
    let mut tasks = Vec::new();
    for i in 0..N {
        let url = proxy.url(&format!("/t/lab/phone/{i}"));
        tasks.push(tokio::spawn(async move { connect_ok(&url, &[]).await }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    edge.wait_for("all sessions live at the edge", |e| {
        e.live.load(Ordering::SeqCst) == N
    })
    .await;
    // Every session echoes its own messages while all are open.
    let mut tasks = Vec::new();
    for (i, mut ws) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for round in 0..5 {
                echo(&mut ws, &format!("INVITE phone {i} round {round}")).await;
            }
            ws.close(None).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {}
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    edge.wait_for("all sessions closed at the edge", |e| {
        e.live.load(Ordering::SeqCst) == 0
    })
    .await;
    assert_eq!(edge.requests().len(), N);
}
