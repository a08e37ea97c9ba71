//! Step 6 of the flow (`accept` mode): one leg as a WebSocket that holds no buffer while idle.
//!
//! tungstenite's [`WebSocketContext`] keeps a read buffer of [`super::READ_BUFFER`]
//! bytes (and a write buffer) for as long as it lives, and tokio-tungstenite's stream
//! keeps its context for the connection's life: most of an idle `accept`-mode session's
//! memory. [`Ws`] drives a context itself (the `Stream` and `Sink` of tokio-tungstenite's
//! `WebSocketStream`, over the leg's [`Refragment`]) and *parks* the leg when it is
//! idle: it gives up the context, buffers and all, and waits for the socket's read
//! readiness (`poll_read_ready`, which holds no buffer) before it takes one again to
//! read with. Writing to a parked leg takes one too; the leg parks again once all is
//! written. As in the hold-mode tunnel, an idle leg is a socket and a little state.
//!
//! A context given up goes to a small per-thread list of spares ([`SPARES`] per role)
//! and the next leg to unpark on that thread takes it: unparking and parking again
//! costs no allocation, and a round trip through the relay takes fewer instructions
//! than with tokio-tungstenite's stream, whose waker proxies it no longer goes through
//! (`docs/benchmarks.md`).
//!
//! A leg parks only when dropping the context loses nothing, that is, when the context
//! is as a fresh one would be:
//! - its last read found no more bytes, and every byte it was handed ended a message
//!   ([`Refragment::between_messages`]): no part of a frame in its read buffer, no
//!   message being assembled;
//! - everything it wrote has been flushed (no pong or close reply left to send);
//! - no close frame has been sent or received (the closing handshake's state lives in
//!   the context).
//!
//! A TLS leg never parks: rustls may hold decrypted bytes that the socket no longer
//! signals, so readiness alone cannot tell that it has something to read.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use futures_util::{Sink, Stream as FutStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::Refragment;
use crate::stream::Stream;

/// Contexts of parked legs each thread keeps for the next leg to unpark, per role: taking
/// one is a move, where a new one would take three allocations (its box, its read
/// buffer, and the shared header that the first message split off the buffer makes it).
const SPARES: usize = 8;

thread_local! {
    /// Spare contexts, as parked (as fresh ones): servers' first, then clients'. Boxed
    /// as in [`Ws`], so that a leg takes and gives one back by moving a pointer.
    #[allow(clippy::vec_box)]
    static SPARE: RefCell<[Vec<Box<WebSocketContext>>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

fn role_index(role: Role) -> usize {
    match role {
        Role::Server => 0,
        Role::Client => 1,
    }
}

/// A context for a leg in `role` to unpark with: a spare one, or a new one.
fn take_context(role: Role, config: WebSocketConfig) -> Box<WebSocketContext> {
    let spare = SPARE.with_borrow_mut(|spare| spare[role_index(role)].pop());
    match spare {
        Some(mut ctx) => {
            ctx.set_config(|c| *c = config);
            ctx
        }
        None => Box::new(WebSocketContext::new(role, Some(config))),
    }
}

/// Keeps the context of a leg that parks, as a spare (when fewer than [`SPARES`] are).
fn keep_context(role: Role, ctx: Box<WebSocketContext>) {
    let full = SPARE.with_borrow_mut(|spare| {
        let spare = &mut spare[role_index(role)];
        if spare.len() < SPARES {
            spare.push(ctx);
            None
        } else {
            Some(ctx)
        }
    });
    drop(full);
}

/// A WebSocket connection on either leg (see the module docs).
#[derive(Debug)]
pub struct Ws {
    io: Refragment<Stream>,
    /// tungstenite's state and buffers; `None` while the leg is parked (boxed, so that
    /// a parked leg does not keep its room either).
    ctx: Option<Box<WebSocketContext>>,
    role: Role,
    config: WebSocketConfig,
    /// The last read found nothing more to read.
    read_idle: bool,
    /// Something was written since the last successful flush.
    dirty: bool,
    /// A close frame was sent or received, or the connection failed: the leg stays
    /// unparked until it is dropped.
    closing: bool,
    /// The stream has ended (an error or the end was returned once).
    ended: bool,
    /// As in tokio-tungstenite: `false` once a write hit `WouldBlock`, until a flush.
    ready: bool,
    /// `poll_close` queued the close frame and is flushing it.
    close_sent: bool,
}

impl Ws {
    /// A leg over `io` in `role`, parked.
    pub fn new(io: Refragment<Stream>, role: Role, config: WebSocketConfig) -> Self {
        Self {
            io,
            ctx: None,
            role,
            config,
            read_idle: true,
            dirty: false,
            closing: false,
            ended: false,
            ready: true,
            close_sent: false,
        }
    }

    /// The connection.
    pub fn get_mut(&mut self) -> &mut Refragment<Stream> {
        &mut self.io
    }

    /// Whether the leg holds a context now (for tests).
    pub fn is_parked(&self) -> bool {
        self.ctx.is_none()
    }

    /// Drops the context if that loses nothing (module docs).
    fn park_if_idle(&mut self) {
        if self.ctx.is_some()
            && self.read_idle
            && !self.dirty
            && self.ready
            && !self.closing
            && matches!(self.io.get_ref(), Stream::Plain(_))
            && self.io.between_messages()
        {
            if let Some(ctx) = self.ctx.take() {
                keep_context(self.role, ctx);
            }
        }
    }

    /// Runs `f` with the context (a fresh one if parked) and the connection as the
    /// blocking `Read + Write` tungstenite wants: `Pending` becomes `WouldBlock`.
    fn with<R>(
        &mut self,
        cx: &mut Context<'_>,
        f: impl FnOnce(&mut WebSocketContext, &mut SyncIo<'_, '_, '_>) -> R,
    ) -> R {
        let (role, config) = (self.role, self.config);
        let ctx = self.ctx.get_or_insert_with(|| take_context(role, config));
        let mut io = SyncIo {
            io: &mut self.io,
            cx,
            dirty: &mut self.dirty,
        };
        f(ctx, &mut io)
    }

    /// A write of `msg` with `cx`'s waker; as tokio-tungstenite's `start_send`.
    fn send_with(&mut self, cx: &mut Context<'_>, msg: Message) -> Result<(), WsError> {
        if matches!(msg, Message::Close(_)) {
            self.closing = true;
        }
        match self.with(cx, |ctx, io| ctx.write(io, msg)) {
            Ok(()) => {
                self.ready = true;
                Ok(())
            }
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                // Queued: `poll_ready` flushes it.
                self.ready = false;
                Ok(())
            }
            Err(e) => {
                self.ready = true;
                self.closing = true;
                Err(e)
            }
        }
    }

    fn flush_with(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        if self.ctx.is_none() {
            // Parked: everything was flushed.
            return Poll::Ready(Ok(()));
        }
        let r = self.with(cx, |ctx, io| ctx.flush(io));
        let r = match r {
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            r => r,
        };
        self.ready = true;
        if r.is_ok() {
            self.park_if_idle();
        } else {
            self.closing = true;
        }
        Poll::Ready(r)
    }
}

impl FutStream for Ws {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if this.ctx.is_none() {
            // Parked: wait for bytes without a buffer. (A parked leg is plain TCP.)
            if let Stream::Plain(tcp) = this.io.get_ref() {
                if this.io.between_messages() {
                    // An error surfaces from the read that follows.
                    std::task::ready!(tcp.poll_read_ready(cx)).ok();
                }
            }
        }
        match this.with(cx, |ctx, io| ctx.read(io)) {
            Ok(msg) => {
                this.read_idle = false;
                if matches!(msg, Message::Close(_)) {
                    this.closing = true;
                }
                Poll::Ready(Some(Ok(msg)))
            }
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                this.read_idle = true;
                this.park_if_idle();
                Poll::Pending
            }
            Err(e) => {
                this.ended = true;
                this.closing = true;
                match e {
                    WsError::AlreadyClosed | WsError::ConnectionClosed => Poll::Ready(None),
                    e => Poll::Ready(Some(Err(e))),
                }
            }
        }
    }
}

impl Sink<Message> for Ws {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        if this.ready {
            Poll::Ready(Ok(()))
        } else {
            this.flush_with(cx)
        }
    }

    fn start_send(self: Pin<&mut Self>, msg: Message) -> Result<(), WsError> {
        // No context here: a write that would block is queued, and `poll_ready` or
        // `poll_flush`, with the task's context, writes it.
        let mut cx = Context::from_waker(Waker::noop());
        self.get_mut().send_with(&mut cx, msg)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match std::task::ready!(self.get_mut().flush_with(cx)) {
            // The closing handshake just completed: flushed, not an error.
            Err(WsError::ConnectionClosed) => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        this.ready = true;
        this.closing = true;
        let r = if this.close_sent {
            this.with(cx, |ctx, io| ctx.flush(io))
        } else {
            this.with(cx, |ctx, io| ctx.close(io, None))
        };
        match r {
            Ok(()) | Err(WsError::ConnectionClosed) => Poll::Ready(Ok(())),
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                this.close_sent = true;
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// The connection as blocking I/O for tungstenite, for one poll with `cx`.
struct SyncIo<'a, 'b, 'c> {
    io: &'a mut Refragment<Stream>,
    cx: &'a mut Context<'b>,
    dirty: &'c mut bool,
}

fn would_block<T>(p: Poll<io::Result<T>>) -> io::Result<T> {
    match p {
        Poll::Ready(r) => r,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

impl Read for SyncIo<'_, '_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rb = ReadBuf::new(buf);
        would_block(Pin::new(&mut *self.io).poll_read(self.cx, &mut rb))?;
        Ok(rb.filled().len())
    }
}

impl Write for SyncIo<'_, '_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        *self.dirty = true;
        would_block(Pin::new(&mut *self.io).poll_write(self.cx, buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        would_block(Pin::new(&mut *self.io).poll_flush(self.cx))?;
        *self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::{FutureExt, SinkExt, StreamExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::WebSocketStream;

    /// Polls `leg` until it has read what arrived (and has nothing more), at most 2 s.
    async fn settle(leg: &mut Ws) {
        for _ in 0..200 {
            if leg.next().now_or_never().is_some() {
                panic!("a message came where none was expected");
            }
            if !leg.is_parked() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_leg_parks_between_messages_and_not_inside_one() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (ours, _) = l.accept().await.unwrap();
        let config = WebSocketConfig::default().read_buffer_size(super::super::READ_BUFFER);
        let mut leg = super::super::leg_ws(Stream::Plain(ours), Bytes::new(), Role::Server, config);
        let mut peer = WebSocketStream::from_raw_socket(peer, Role::Client, None).await;
        assert!(leg.is_parked(), "a new leg holds no context");

        peer.send(Message::text("one")).await.unwrap();
        assert_eq!(leg.next().await.unwrap().unwrap(), Message::text("one"));
        assert!(leg.next().now_or_never().is_none());
        assert!(leg.is_parked(), "parked once it read all there was");

        // A ping is answered (the pong flushed) before the leg parks.
        peer.send(Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        assert!(matches!(leg.next().await, Some(Ok(Message::Ping(_)))));
        assert!(leg.next().now_or_never().is_none());
        assert!(leg.is_parked());
        assert!(matches!(peer.next().await, Some(Ok(Message::Pong(_)))));

        // Inside a fragmented message the context, assembling it, stays.
        let first = Frame::message(Bytes::from_static(b"ab"), OpCode::Data(Data::Text), false);
        peer.send(Message::Frame(first)).await.unwrap();
        settle(&mut leg).await;
        assert!(
            !leg.is_parked(),
            "a message being assembled keeps its context"
        );
        let last = Frame::message(
            Bytes::from_static(b"cd"),
            OpCode::Data(Data::Continue),
            true,
        );
        peer.send(Message::Frame(last)).await.unwrap();
        assert_eq!(leg.next().await.unwrap().unwrap(), Message::text("abcd"));
        assert!(leg.next().now_or_never().is_none());
        assert!(leg.is_parked());

        // Written and flushed: parked again.
        leg.send(Message::text("out")).await.unwrap();
        assert!(leg.is_parked());
        assert_eq!(peer.next().await.unwrap().unwrap(), Message::text("out"));

        // A close frame: the context stays for the closing handshake.
        peer.send(Message::Close(None)).await.unwrap();
        assert!(matches!(leg.next().await, Some(Ok(Message::Close(_)))));
        assert!(!leg.is_parked());
        assert!(leg.next().await.is_none());
        assert!(matches!(peer.next().await, Some(Ok(Message::Close(_)))));
    }

    #[test]
    fn an_idle_leg_is_small() {
        let size = std::mem::size_of::<Ws>();
        let ctx = std::mem::size_of::<WebSocketContext>();
        eprintln!("Ws: {size} bytes; its context, boxed while it holds one: {ctx}");
        assert!(size <= 1024, "{size}");
    }
}
