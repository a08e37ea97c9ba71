//! Step 6 of the flow (`accept` mode): the message relay's hook over real WebSockets.
//!
//! The message relay's hook (step 6, `accept` mode), over real WebSocket connections on
//! loopback: a message dropped, answered and held, each way.

use std::task::Waker;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::*;
use crate::stream::Stream;
use crate::ws::leg_ws;

/// A peer program's end of a WebSocket (no handshake: both ends start framed).
type Peer = WebSocketStream<TcpStream>;

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(l.local_addr().unwrap()), l.accept());
    (a.unwrap(), b.unwrap().0)
}

/// (the client program, sluice's client leg, sluice's edge leg, the edge program).
async fn legs() -> (Peer, Ws, Ws, Peer) {
    let config = WebSocketConfig::default();
    let (client, client_leg) = tcp_pair().await;
    let (edge_leg, edge) = tcp_pair().await;
    let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    let edge = WebSocketStream::from_raw_socket(edge, Role::Server, None).await;
    let client_leg = leg_ws(
        Stream::Plain(client_leg),
        Bytes::new(),
        Role::Server,
        config,
    );
    let edge_leg = leg_ws(Stream::Plain(edge_leg), Bytes::new(), Role::Client, config);
    (client, client_leg, edge_leg, edge)
}

async fn next(ws: &mut Peer) -> Message {
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a message in time")
        .expect("stream open")
        .expect("no error")
}

/// Nothing arrives within a short while.
async fn quiet(ws: &mut Peer) {
    let got = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
    assert!(got.is_err(), "expected nothing, got {got:?}");
}

/// Runs the relay with `hook` in a task; the stats come back when both peers closed.
fn spawn<H: MessageHook + 'static>(
    mut client_leg: Ws,
    mut edge_leg: Ws,
    held: Vec<Message>,
    hook: H,
) -> tokio::task::JoinHandle<RelayStats> {
    tokio::spawn(async move {
        let moved = Moved::default();
        let held = held.into_iter().collect();
        let stop = std::future::pending();
        relay_with(&mut client_leg, &mut edge_leg, held, &moved, stop, hook).await
    })
}

/// The client closes; both closes are answered; the relay ends clean.
async fn close(
    mut client: Peer,
    edge: Peer,
    task: tokio::task::JoinHandle<RelayStats>,
) -> RelayStats {
    client.close(None).await.unwrap();
    close_after(client, edge, task).await
}

/// [`close`], once the client has sent its close frame.
async fn close_after(
    mut client: Peer,
    mut edge: Peer,
    task: tokio::task::JoinHandle<RelayStats>,
) -> RelayStats {
    assert!(matches!(next(&mut edge).await, Message::Close(_)));
    drop(edge);
    while let Some(Ok(_)) = client.next().await {}
    let stats = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the relay ends")
        .unwrap();
    assert_eq!(stats.end, End::ClientClosed);
    stats
}

/// Drops `drop` and answers `ask` with `answer`, either way; passes the rest.
struct Rules {
    drop: &'static str,
    ask: &'static str,
    answer: &'static str,
    seen: Vec<(Direction, String)>,
}

impl MessageHook for Rules {
    fn on_message(&mut self, dir: Direction, msg: &Message) -> Verdict {
        assert!(
            msg.is_text() || msg.is_binary(),
            "{msg:?} is not a data message"
        );
        let text = msg.to_text().unwrap_or_default().to_owned();
        let verdict = match text.as_str() {
            t if t == self.drop => Verdict::Drop,
            t if t == self.ask => Verdict::Answer(Message::text(self.answer)),
            _ => Verdict::Pass,
        };
        self.seen.push((dir, text));
        verdict
    }
}

#[tokio::test]
async fn the_hook_drops_and_answers_both_ways() {
    let (mut client, client_leg, edge_leg, mut edge) = legs().await;
    let hook = Rules {
        drop: "drop-me",
        ask: "are-you-there",
        answer: "sluice is",
        seen: Vec::new(),
    };
    // A held message goes through the hook too.
    let held = vec![Message::text("drop-me"), Message::text("held")];
    let task = spawn(client_leg, edge_leg, held, hook);
    assert_eq!(next(&mut edge).await, Message::text("held"));

    // Client to edge: one dropped, one answered back to the client, one passed.
    client.send(Message::text("drop-me")).await.unwrap();
    client.send(Message::text("are-you-there")).await.unwrap();
    client.send(Message::text("REGISTER")).await.unwrap();
    assert_eq!(next(&mut client).await, Message::text("sluice is"));
    assert_eq!(next(&mut edge).await, Message::text("REGISTER"));

    // Edge to client, the same.
    edge.send(Message::text("drop-me")).await.unwrap();
    edge.send(Message::text("are-you-there")).await.unwrap();
    edge.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(next(&mut edge).await, Message::text("sluice is"));
    assert_eq!(next(&mut client).await, Message::binary(vec![1, 2, 3]));

    // Control frames are not the hook's (it asserts so): a ping passes as before.
    client
        .send(Message::Ping(Bytes::from_static(b"p")))
        .await
        .unwrap();
    assert_eq!(
        next(&mut edge).await,
        Message::Ping(Bytes::from_static(b"p"))
    );
    quiet(&mut edge).await;

    let stats = close(client, edge, task).await;
    // Payload bytes written to each leg (an answer counts towards the leg it goes to):
    // "held", "REGISTER", the answer to the edge's question and the ping to the edge;
    // the answer to the client's and the binary message to the client (and the edge's
    // pong, if it came before the close).
    assert_eq!(stats.client_to_edge, 4 + 8 + 9 + 1);
    assert!((12..=13).contains(&stats.edge_to_client), "{stats:?}");
}

/// Holds every message saying `hold` until told (one message per signal).
struct Holder {
    kept: VecDeque<(Direction, Message)>,
    release: mpsc::UnboundedReceiver<()>,
    waker: Option<Waker>,
}

impl MessageHook for Holder {
    fn on_message(&mut self, _: Direction, msg: &Message) -> Verdict {
        if msg.to_text().is_ok_and(|t| t.starts_with("hold")) {
            Verdict::Hold
        } else {
            Verdict::Pass
        }
    }

    fn hold(&mut self, dir: Direction, msg: Message) {
        self.kept.push_back((dir, msg));
    }

    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<(Direction, Message)> {
        self.waker = Some(cx.waker().clone());
        if self.kept.is_empty() {
            return Poll::Pending;
        }
        match self.release.poll_recv(cx) {
            Poll::Ready(Some(())) => Poll::Ready(self.kept.pop_front().unwrap()),
            _ => Poll::Pending,
        }
    }
}

#[tokio::test]
async fn a_held_message_goes_on_when_the_hook_releases_it() {
    let (mut client, client_leg, edge_leg, mut edge) = legs().await;
    let (release, rx) = mpsc::unbounded_channel();
    let hook = Holder {
        kept: VecDeque::new(),
        release: rx,
        waker: None,
    };
    let task = spawn(client_leg, edge_leg, Vec::new(), hook);

    client.send(Message::text("hold: INVITE")).await.unwrap();
    client.send(Message::text("OPTIONS")).await.unwrap();
    edge.send(Message::text("hold: 180 Ringing")).await.unwrap();
    edge.send(Message::text("200 OK")).await.unwrap();
    // What passes overtakes what is held.
    assert_eq!(next(&mut edge).await, Message::text("OPTIONS"));
    assert_eq!(next(&mut client).await, Message::text("200 OK"));
    quiet(&mut edge).await;
    quiet(&mut client).await;

    // Released in the order held, each its own way.
    release.send(()).unwrap();
    assert_eq!(next(&mut edge).await, Message::text("hold: INVITE"));
    release.send(()).unwrap();
    assert_eq!(next(&mut client).await, Message::text("hold: 180 Ringing"));

    let stats = close(client, edge, task).await;
    assert_eq!(stats.client_to_edge, 7 + 12);
    assert_eq!(stats.edge_to_client, 6 + 17);
}

/// A large message the hook passes is still sent in fragments, whole at the far end.
#[tokio::test]
async fn a_large_message_passes_whole_through_a_hook() {
    let (mut client, client_leg, edge_leg, mut edge) = legs().await;
    let hook = Rules {
        drop: "",
        ask: "",
        answer: "",
        seen: Vec::new(),
    };
    let task = spawn(client_leg, edge_leg, Vec::new(), hook);
    let big = "x".repeat(10 * FRAGMENT + 7);
    client.send(Message::text(big.clone())).await.unwrap();
    assert_eq!(next(&mut edge).await, Message::text(big.clone()));
    let stats = close(client, edge, task).await;
    assert_eq!(stats.client_to_edge, big.len() as u64);
}

/// Answers every message it sees with "ack <message>".
struct Acker;

impl MessageHook for Acker {
    fn on_message(&mut self, _: Direction, msg: &Message) -> Verdict {
        Verdict::Answer(Message::text(format!("ack {}", msg.to_text().unwrap())))
    }
}

/// A client that sends many messages before reading any answer: the relay stops
/// reading it while [`TURN`] answers wait, and every answer arrives, in order.
#[tokio::test]
async fn answers_to_a_sender_that_reads_late_all_arrive_in_order() {
    let (client, client_leg, edge_leg, mut edge) = legs().await;
    let task = spawn(client_leg, edge_leg, Vec::new(), Acker);
    let (mut tx, mut rx) = client.split();
    let n = 20 * TURN;
    let sender = tokio::spawn(async move {
        for i in 0..n {
            tx.send(Message::text(i.to_string())).await.unwrap();
        }
        tx
    });
    // Nothing read until all are sent (TCP buffers take them meanwhile).
    let mut tx = tokio::time::timeout(Duration::from_secs(10), sender)
        .await
        .expect("the client can send")
        .unwrap();
    for i in 0..n {
        let got = tokio::time::timeout(Duration::from_secs(10), rx.next())
            .await
            .expect("an answer in time")
            .unwrap()
            .unwrap();
        assert_eq!(got, Message::text(format!("ack {i}")));
    }
    quiet(&mut edge).await;
    tx.send(Message::Close(None)).await.unwrap();
    let client = tx.reunite(rx).unwrap();
    let stats = close_after(client, edge, task).await;
    assert_eq!(stats.client_to_edge, 0);
}
