//! How a session ends, as the relay reports it: the one place later work (permits,
//! metrics) observes it. Real sockets on loopback, plain and TLS.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice::relay::{relay, End, Leg, RelayStats};
use sluice::stream::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A connected pair: (the end the test holds, the end the relay gets).
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(l.local_addr().unwrap()), l.accept());
    (a.unwrap(), b.unwrap().0)
}

fn leg(stream: Stream) -> Leg {
    Leg {
        stream,
        early: Bytes::new(),
    }
}

async fn read_exact<S: AsyncRead + Unpin>(s: &mut S, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    buf
}

async fn read_eof<S: AsyncRead + Unpin>(s: &mut S) {
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "expected end of stream, got {r:?}"
    );
}

async fn finish(task: tokio::task::JoinHandle<RelayStats>) -> RelayStats {
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("relay ended in time")
        .unwrap()
}

#[tokio::test]
async fn plain_client_close_counts_bytes_and_ends_clean() {
    let (mut client, mut edge, task) = plain_session().await;
    client.write_all(b"0123456789").await.unwrap();
    assert_eq!(read_exact(&mut edge, 10).await, b"0123456789");
    edge.write_all(b"abcde").await.unwrap();
    assert_eq!(read_exact(&mut client, 5).await, b"abcde");
    // The client ends its stream; the edge sees the end, then ends its own.
    client.shutdown().await.unwrap();
    read_eof(&mut edge).await;
    edge.shutdown().await.unwrap();
    read_eof(&mut client).await;
    let stats = finish(task).await;
    assert_eq!(
        stats,
        RelayStats {
            client_to_edge: 10,
            edge_to_client: 5,
            end: End::ClientClosed
        }
    );
}

#[tokio::test]
async fn early_bytes_go_first_and_a_reset_is_an_error() {
    let (client, client_side) = pair().await;
    let (edge_side, mut edge) = pair().await;
    let client_leg = Leg {
        stream: Stream::Plain(client_side),
        early: Bytes::from_static(b"early"),
    };
    let task = tokio::spawn(relay_all(client_leg, leg(Stream::Plain(edge_side))));
    assert_eq!(read_exact(&mut edge, 5).await, b"early");
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    let stats = finish(task).await;
    assert!(matches!(stats.end, End::ClientError(_)), "{stats:?}");
    assert_eq!(stats.client_to_edge, 5);
}

#[tokio::test]
async fn tls_edge_that_closes_without_close_notify_ends_clean() {
    let (ca, cert, key) = support::test_ca();
    let server = support::server_tls(&cert, &key);
    let client_config = support::client_tls(&ca);

    let (mut client, client_side) = pair().await;
    let (edge_side, edge_tcp) = pair().await;
    let (to_edge, edge) = tokio::join!(
        tokio_rustls::TlsConnector::from(Arc::new(client_config))
            .connect("127.0.0.1".try_into().unwrap(), edge_side),
        tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(edge_tcp)
    );
    let mut edge = edge.unwrap();
    let task = tokio::spawn(relay_all(
        leg(Stream::Plain(client_side)),
        leg(Stream::ClientTls(Box::new(to_edge.unwrap()))),
    ));
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    client.write_all(&big).await.unwrap();
    assert_eq!(read_exact(&mut edge, big.len()).await, big);
    edge.write_all(b"pong").await.unwrap();
    edge.flush().await.unwrap();
    assert_eq!(read_exact(&mut client, 4).await, b"pong");
    // The edge drops its TCP connection without a TLS close_notify, as edges do.
    let (tcp, _) = edge.into_inner();
    drop(tcp);
    read_eof(&mut client).await;
    drop(client);
    let stats = finish(task).await;
    assert_eq!(stats.end, End::EdgeClosed, "{stats:?}");
    assert_eq!((stats.client_to_edge, stats.edge_to_client), (200_000, 4));
}

/// A close frame with code 1000 (masked, as a client's must be, with `mask`).
fn close_frame(mask: Option<[u8; 4]>) -> Vec<u8> {
    let payload = [0x03, 0xe8];
    match mask {
        None => vec![0x88, 2, payload[0], payload[1]],
        Some(m) => vec![
            0x88,
            0x82,
            m[0],
            m[1],
            m[2],
            m[3],
            payload[0] ^ m[0],
            payload[1] ^ m[1],
        ],
    }
}

/// The edge sends its close frame and resets its connection at once (as a server that
/// closes with `SO_LINGER` 0 does). Both close frames went through: a clean end, not
/// `edge_error` (issue 14: seen with a real XMPP server, 14 of 1,000 clean sessions).
#[tokio::test]
async fn edge_that_resets_right_after_its_close_frame_ends_clean() {
    let (mut client, mut edge, task) = plain_session().await;
    edge.write_all(&[0x81, 2, b'h', b'i']).await.unwrap();
    assert_eq!(read_exact(&mut client, 4).await, [0x81, 2, b'h', b'i']);
    edge.write_all(&close_frame(None)).await.unwrap();
    socket2::SockRef::from(&edge)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(edge);
    // The client gets the close frame, answers it and closes.
    assert_eq!(read_exact(&mut client, 4).await, close_frame(None));
    let _ = client.write_all(&close_frame(Some([1, 2, 3, 4]))).await;
    let _ = client.shutdown().await;
    read_eof(&mut client).await;
    let stats = finish(task).await;
    assert_eq!(stats.end, End::EdgeClosed, "{stats:?}");
    assert_eq!(stats.edge_to_client, 8);
}

/// The closing handshake completes through the tunnel, then the edge closes its socket
/// without reading the client's close frame: its kernel resets the connection instead
/// of ending the stream. A clean end.
#[tokio::test]
async fn edge_that_closes_with_the_close_answer_unread_ends_clean() {
    let (mut client, mut edge, task) = plain_session().await;
    edge.write_all(&close_frame(None)).await.unwrap();
    assert_eq!(read_exact(&mut client, 4).await, close_frame(None));
    let answer = close_frame(Some([9, 8, 7, 6]));
    client.write_all(&answer).await.unwrap();
    // The answer has reached the edge's socket; the edge closes without reading it.
    let mut peek = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(10), async {
        while edge.peek(&mut peek).await.unwrap() < answer.len() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    drop(edge);
    read_eof(&mut client).await;
    drop(client);
    let stats = finish(task).await;
    assert_eq!(stats.end, End::EdgeClosed, "{stats:?}");
    assert_eq!((stats.client_to_edge, stats.edge_to_client), (8, 4));
}

/// The closing handshake passes both ways, then the edge ends its stream while the
/// client keeps its connection open: nothing may follow a close frame, so the session
/// is over at once, cleanly, and the client gets its end of stream. (Before, the end was
/// passed on as a half-close and the session waited for the client's own end, up to
/// HALF_CLOSE_LINGER, then counted `linger_timeout`.)
#[tokio::test]
async fn an_end_of_stream_after_the_closing_handshake_ends_the_session_at_once() {
    let (mut client, mut edge, task) = plain_session().await;
    edge.write_all(&close_frame(None)).await.unwrap();
    assert_eq!(read_exact(&mut client, 4).await, close_frame(None));
    let answer = close_frame(Some([4, 3, 2, 1]));
    client.write_all(&answer).await.unwrap();
    assert_eq!(read_exact(&mut edge, 8).await, answer);
    edge.shutdown().await.unwrap();
    let stats = finish(task).await;
    assert_eq!(
        stats,
        RelayStats {
            client_to_edge: 8,
            edge_to_client: 4,
            end: End::EdgeClosed
        }
    );
    // The client, which has not ended its own stream, gets the end of the edge's.
    read_eof(&mut client).await;
    read_eof(&mut edge).await;
}

/// The same when the client starts the closing handshake and ends its stream first.
#[tokio::test]
async fn a_client_end_after_the_closing_handshake_ends_the_session_at_once() {
    let (mut client, mut edge, task) = plain_session().await;
    let close = close_frame(Some([7, 7, 7, 7]));
    client.write_all(&close).await.unwrap();
    assert_eq!(read_exact(&mut edge, 8).await, close);
    edge.write_all(&close_frame(None)).await.unwrap();
    assert_eq!(read_exact(&mut client, 4).await, close_frame(None));
    client.shutdown().await.unwrap();
    let stats = finish(task).await;
    assert_eq!(stats.end, End::ClientClosed, "{stats:?}");
    read_eof(&mut edge).await;
}

/// Only one close frame passed: an end of stream is passed on as a half-close, and the
/// other direction may still finish (here the edge answers after the client's end).
#[tokio::test]
async fn an_end_with_the_closing_handshake_half_done_is_passed_on() {
    let (mut client, mut edge, task) = plain_session().await;
    let close = close_frame(Some([5, 6, 7, 8]));
    client.write_all(&close).await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(read_exact(&mut edge, 8).await, close);
    read_eof(&mut edge).await;
    edge.write_all(&close_frame(None)).await.unwrap();
    assert_eq!(read_exact(&mut client, 4).await, close_frame(None));
    edge.shutdown().await.unwrap();
    read_eof(&mut client).await;
    let stats = finish(task).await;
    assert_eq!(
        stats,
        RelayStats {
            client_to_edge: 8,
            edge_to_client: 4,
            end: End::ClientClosed
        }
    );
}

/// The same from the client's side: it sends its close frame and resets.
#[tokio::test]
async fn client_that_resets_right_after_its_close_frame_ends_clean() {
    let (mut client, mut edge, task) = plain_session().await;
    client
        .write_all(&close_frame(Some([1, 1, 1, 1])))
        .await
        .unwrap();
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    assert_eq!(
        read_exact(&mut edge, 8).await,
        close_frame(Some([1, 1, 1, 1]))
    );
    let _ = edge.write_all(&close_frame(None)).await;
    read_eof(&mut edge).await;
    drop(edge);
    let stats = finish(task).await;
    assert_eq!(stats.end, End::ClientClosed, "{stats:?}");
}

/// Over TLS too: the edge sends its close frame and resets its connection.
#[tokio::test]
async fn tls_edge_that_resets_right_after_its_close_frame_ends_clean() {
    let (ca, cert, key) = support::test_ca();
    let server = support::server_tls(&cert, &key);
    let client_config = support::client_tls(&ca);

    let (mut client, client_side) = pair().await;
    let (edge_side, edge_tcp) = pair().await;
    let (to_edge, edge) = tokio::join!(
        tokio_rustls::TlsConnector::from(Arc::new(client_config))
            .connect("127.0.0.1".try_into().unwrap(), edge_side),
        tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(edge_tcp)
    );
    let mut edge = edge.unwrap();
    let task = tokio::spawn(relay_all(
        leg(Stream::Plain(client_side)),
        leg(Stream::ClientTls(Box::new(to_edge.unwrap()))),
    ));
    edge.write_all(&close_frame(None)).await.unwrap();
    edge.flush().await.unwrap();
    assert_eq!(read_exact(&mut client, 4).await, close_frame(None));
    let (tcp, _) = edge.into_inner();
    socket2::SockRef::from(&tcp)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(tcp);
    let _ = client.write_all(&close_frame(Some([1, 2, 3, 4]))).await;
    read_eof(&mut client).await;
    drop(client);
    let stats = finish(task).await;
    assert_eq!(stats.end, End::EdgeClosed, "{stats:?}");
    assert_eq!(stats.edge_to_client, 4);
}

/// A reset in the middle of the session (no close frame) is still an error, and says
/// which.
#[tokio::test]
async fn edge_reset_without_a_close_frame_is_an_error_that_names_itself() {
    let (mut client, client_side) = pair().await;
    let (edge_side, edge) = pair().await;
    let task = tokio::spawn(relay_all(
        leg(Stream::Plain(client_side)),
        leg(Stream::Plain(edge_side)),
    ));
    socket2::SockRef::from(&edge)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(edge);
    read_eof(&mut client).await;
    let stats = finish(task).await;
    assert_eq!(
        stats.end,
        End::EdgeError(std::io::ErrorKind::ConnectionReset),
        "{stats:?}"
    );
    assert_eq!(stats.end.error(), Some(std::io::ErrorKind::ConnectionReset));
    assert_eq!(stats.end.as_str(), "edge_error");
}

/// A plain-TCP session under the relay: (the client's end, the edge's end, the relay).
async fn plain_session() -> (TcpStream, TcpStream, tokio::task::JoinHandle<RelayStats>) {
    let (client, client_side) = pair().await;
    let (edge_side, edge) = pair().await;
    let task = tokio::spawn(relay_all(
        leg(Stream::Plain(client_side)),
        leg(Stream::Plain(edge_side)),
    ));
    (client, edge, task)
}

/// The relay until the session ends by itself (nothing stops it from outside); both
/// legs are closed when it returns.
async fn relay_all(mut client: Leg, mut edge: Leg) -> sluice::relay::RelayStats {
    let moved = sluice::relay::Moved::default();
    relay(
        &mut client,
        &mut edge,
        &moved,
        std::pin::pin!(std::future::pending()),
    )
    .await
}
