//! `accept` mode's client leg: arbitrary bytes as what a client sends after sluice's
//! `101`, read through the leg's re-fragmenting adapter (`accept::Refragment`, the first
//! input bytes as those read with the handshake) with sluice's own tungstenite
//! configuration (`accept::ws_config`) into the held-message buffer (`accept::Held`), as
//! a queued client's messages are.
//!
//! Input: two bytes choose the limits (`max_message_bytes` 16 B to 2 KiB, the held
//! buffer's bytes and messages), the rest is the client's byte stream; the reader sees
//! it in chunks and then its end. Checked: no panic, no hang (the stream is finite, so
//! reading must end), no message over `max_message_bytes`, the held buffer within both
//! bounds, text is UTF-8, a close frame sluice would send stays within a control
//! frame's 125 bytes; memory stays bounded (libFuzzer's `-rss_limit_mb`).
#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{SinkExt, StreamExt};
use libfuzzer_sys::fuzz_target;
use sluice::proxy::accept::Held;
use sluice::ws::{close_frame, ws_config, Refragment, MAX_CLOSE_REASON};
use sluice::config::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// The client's bytes, handed out `chunk` at a time, then end of stream; what sluice
/// writes is counted and dropped.
struct Client<'a> {
    input: &'a [u8],
    chunk: usize,
    /// Every other read is `Pending` (after waking), as a socket's would be.
    pending: bool,
    written: usize,
}

impl AsyncRead for Client<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.pending = !self.pending;
        if self.pending && !self.input.is_empty() {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = self.input.len().min(self.chunk).min(buf.remaining());
        let (now, rest) = self.input.split_at(n);
        buf.put_slice(now);
        self.input = rest;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Client<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written += buf.len();
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Why reading stopped, as `accept::while_queued` tells it.
#[derive(Debug)]
enum Left {
    Gone,
    Overflow,
    Failed(WsError),
}

async fn run(limits: Accept, chunk: usize, input: &[u8]) {
    // Up to one chunk was read with the handshake.
    let (early, input) = input.split_at(input.len().min(chunk / 2));
    let client = Client {
        input,
        chunk,
        pending: false,
        written: 0,
    };
    let max = limits.max_message_bytes as usize;
    let client = Refragment::new(client, Bytes::copy_from_slice(early), max);
    let mut ws =
        WebSocketStream::from_raw_socket(client, Role::Server, Some(ws_config(&limits))).await;
    let mut held = Held::new(&limits);
    let (mut count, mut bytes) = (0usize, 0usize);
    // At most one message per input byte (plus the end): a longer loop is a hang.
    let mut budget = early.len() + input.len() + 2;
    let left = loop {
        budget = budget
            .checked_sub(1)
            .expect("more messages than input bytes");
        match ws.next().await {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                assert!(
                    m.len() <= max,
                    "a {} B message passed a {max} B limit",
                    m.len()
                );
                if let Message::Text(t) = &m {
                    assert!(std::str::from_utf8(t.as_bytes()).is_ok());
                }
                let len = m.len();
                match held.push(m) {
                    Ok(()) => {
                        count += 1;
                        bytes += len;
                        assert!(count <= limits.held_messages as usize);
                        assert!(bytes <= limits.held_bytes as usize);
                    }
                    Err(_) => {
                        // Only when it really would not fit.
                        assert!(
                            bytes + len > limits.held_bytes as usize
                                || count >= limits.held_messages as usize
                        );
                        break Left::Overflow;
                    }
                }
            }
            Some(Ok(Message::Ping(p) | Message::Pong(p))) => assert!(p.len() <= 125),
            Some(Ok(Message::Frame(_))) => unreachable!("a server never reads raw frames"),
            Some(Ok(Message::Close(frame))) => {
                if let Some(f) = frame {
                    assert!(f.reason.len() <= MAX_CLOSE_REASON);
                }
                break Left::Gone;
            }
            Some(Err(e)) => break Left::Failed(e),
            None => break Left::Gone,
        }
    };
    let messages = held.into_messages();
    assert_eq!(messages.len(), count);
    assert_eq!(messages.iter().map(Message::len).sum::<usize>(), bytes);

    // What sluice answers: 1008 on overflow, a fault's own code for a broken frame.
    let frame = match &left {
        Left::Overflow => Some(close_frame(
            CloseCode::Policy,
            "held-buffer-full; more than the held buffer takes",
        )),
        Left::Failed(WsError::Capacity(c)) => Some(close_frame(CloseCode::Size, &c.to_string())),
        Left::Failed(WsError::Protocol(p)) => {
            Some(close_frame(CloseCode::Protocol, &p.to_string()))
        }
        Left::Failed(e) => Some(close_frame(
            CloseCode::Error,
            &"é".repeat(100 + e.to_string().len()),
        )),
        Left::Gone => None,
    };
    if let Some(f) = &frame {
        assert!(f.reason.len() <= MAX_CLOSE_REASON);
    }
    // Sending may fail (the stream may be closed already); it must not panic or hang.
    let _ = ws.send(Message::Close(frame)).await;
    while let Some(Ok(_)) = ws.next().await {
        budget = budget
            .checked_sub(1)
            .expect("more messages than input bytes");
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
}

fuzz_target!(|data: &[u8]| {
    let [a, b, input @ ..] = data else {
        return;
    };
    let limits = Accept {
        max_message_bytes: 16 << (a & 7),
        held_messages: 1 + u32::from(b & 15),
        held_bytes: 64 << (b >> 4 & 7),
    };
    let chunk = 1 + usize::from(a >> 3) * 97;
    RUNTIME.with(|rt| rt.block_on(run(limits, chunk, input)));
});
