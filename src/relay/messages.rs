//! Step 6 of the flow in `accept` mode: WebSocket messages relayed between sluice's two legs.
//!
//! [`relay()`] moves whole messages both ways between the client's and the edge's
//! [`Ws`], held messages first, until a leg closes or fails or sluice stops the session,
//! then completes both closing handshakes. A data message over [`FRAGMENT`] bytes is sent
//! in fragments of that size, so tungstenite's write buffer (it keeps its capacity)
//! never grows past one fragment.
//!
//! # The per-message hook
//!
//! Every complete data message (text or binary, after tungstenite assembled it), each
//! way, held ones included, goes through a [`MessageHook`] ([`relay_with`]) before it is
//! sent on. Its [`Verdict`]: pass it on, drop it, answer the sender instead of forwarding
//! ([`Verdict::Answer`]), or keep it ([`Verdict::Hold`]: the hook takes it in
//! [`MessageHook::hold`] and hands it back, or any message, through
//! [`MessageHook::poll_release`] when it likes). Control frames are not shown to the
//! hook: pings and pongs pass as before (tungstenite answers pings per hop), and close
//! frames end the session as described at [`relay_with`]. [`relay()`] uses
//! [`PassThrough`]: every message passes, which is the relay as it always was. The hook
//! is generic, so the pass-through costs nothing per message.
//!
//! Backpressure stays per direction: one direction reads no more from its source while
//! the other leg has not taken what it has (bounded by [`TURN`] messages per turn). An
//! answer waits for the sender among the answers to it (sent before the rest), and so
//! does what the hook releases towards a leg; a direction stops reading while [`TURN`]
//! answers or more wait there, so a sender that does not read cannot make its answers
//! pile up.
//!
//! [`Moved`] counts the payload bytes written to each leg: an answer counts towards the
//! leg it is written to, a dropped or held message towards none (until it is released
//! and sent).

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Sink, Stream as _};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::Stop;
use super::{count, End, Moved, RelayStats};
use crate::ws::{close_and_wait, close_frame, drain, Ws, FRAGMENT};

/// Messages one direction of the relay moves before letting the other have a turn.
pub const TURN: usize = 32;

/// Which way a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client to the edge.
    ClientToEdge,
    /// From the edge to the client.
    EdgeToClient,
}

impl Direction {
    /// The other way.
    pub fn reverse(self) -> Self {
        match self {
            Self::ClientToEdge => Self::EdgeToClient,
            Self::EdgeToClient => Self::ClientToEdge,
        }
    }
}

/// What the relay does with one data message ([`MessageHook::on_message`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Send it on (what [`PassThrough`] says to everything).
    Pass,
    /// The hook keeps it: the relay hands it over with [`MessageHook::hold`] and sends
    /// nothing now; what the hook releases later comes from
    /// [`MessageHook::poll_release`].
    Hold,
    /// Do not send it on; send this message back to its sender instead.
    Answer(Message),
    /// Do not send it on.
    Drop,
}

/// Called by the message relay for every complete data message, both ways.
///
/// The hook runs inside the session's relay task: it must not block. It lives as long as
/// the relay; messages it still holds when the session ends are dropped with it.
pub trait MessageHook: Send {
    /// What to do with `msg`, travelling `dir`.
    fn on_message(&mut self, dir: Direction, msg: &Message) -> Verdict;

    /// Takes a message [`on_message`](Self::on_message) said to [`Verdict::Hold`]. A
    /// hook that holds must keep it here; the default drops it.
    fn hold(&mut self, dir: Direction, msg: Message) {
        let _ = (dir, msg);
    }

    /// A message to send now, and which way (`ClientToEdge`: to the edge). The relay
    /// polls this whenever its task wakes, before it moves anything else, and sends what
    /// comes out without showing it to [`on_message`](Self::on_message) again, among the
    /// answers to that leg (before messages read and not sent yet, and counting towards
    /// the bound on answers waiting for a leg); when a message becomes ready the hook
    /// wakes `cx`'s waker. The default never releases.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<(Direction, Message)> {
        let _ = cx;
        Poll::Pending
    }
}

impl<H: MessageHook + ?Sized> MessageHook for Box<H> {
    fn on_message(&mut self, dir: Direction, msg: &Message) -> Verdict {
        (**self).on_message(dir, msg)
    }

    fn hold(&mut self, dir: Direction, msg: Message) {
        (**self).hold(dir, msg);
    }

    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<(Direction, Message)> {
        (**self).poll_release(cx)
    }
}

/// An optional hook: with none, every message passes (one type for sessions with and
/// without a hook, so a task that may run either holds one relay future, not room for
/// both).
impl<H: MessageHook> MessageHook for Option<H> {
    fn on_message(&mut self, dir: Direction, msg: &Message) -> Verdict {
        match self {
            Some(hook) => hook.on_message(dir, msg),
            None => Verdict::Pass,
        }
    }

    fn hold(&mut self, dir: Direction, msg: Message) {
        if let Some(hook) = self {
            hook.hold(dir, msg);
        }
    }

    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<(Direction, Message)> {
        match self {
            Some(hook) => hook.poll_release(cx),
            None => Poll::Pending,
        }
    }
}

/// The hook of today's relay: every message passes.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassThrough;

impl MessageHook for PassThrough {
    #[inline]
    fn on_message(&mut self, _: Direction, _: &Message) -> Verdict {
        Verdict::Pass
    }
}

/// One direction of the message relay.
#[derive(Debug)]
struct Dir<'a> {
    /// Which way it goes.
    way: Direction,
    /// Messages to send to the other leg: read and passed by the hook (the held ones, at
    /// first).
    queue: VecDeque<Message>,
    /// The hook's answers to the other leg's messages and what it released towards that
    /// leg, sent before `queue` (apart, so that their number bounds how far the other
    /// direction reads ahead).
    answers: VecDeque<Message>,
    /// It stopped reading its source because [`TURN`] answers to it wait.
    stalled: bool,
    /// A large message being handed on in fragments ([`Dir::next`]).
    part: Option<Part>,
    /// Something was written since the last flush.
    dirty: bool,
    /// Payload bytes moved.
    bytes: &'a AtomicU64,
}

/// A data message sent in fragments of [`FRAGMENT`] bytes, so that the other leg's
/// write buffer (tungstenite keeps its capacity) never grows past one fragment.
#[derive(Debug)]
struct Part {
    data: Bytes,
    text: bool,
    sent: usize,
}

impl<'a> Dir<'a> {
    fn new(way: Direction, bytes: &'a AtomicU64) -> Self {
        Self {
            way,
            queue: VecDeque::new(),
            answers: VecDeque::new(),
            stalled: false,
            part: None,
            dirty: false,
            bytes,
        }
    }

    /// Whether anything is waiting to be sent.
    fn pending(&self) -> bool {
        self.part.is_some() || !self.answers.is_empty() || !self.queue.is_empty()
    }

    /// What to send next and its payload bytes: the next fragment of a large data
    /// message, or the next message whole.
    fn next(&mut self) -> Option<(Message, usize)> {
        if self.part.is_none() {
            let next = self.answers.pop_front().or_else(|| self.queue.pop_front());
            let (data, text) = match next? {
                Message::Text(t) if t.len() > FRAGMENT => (Bytes::from(t), true),
                Message::Binary(b) if b.len() > FRAGMENT => (b, false),
                other => {
                    let len = other.len();
                    return Some((other, len));
                }
            };
            self.part = Some(Part {
                data,
                text,
                sent: 0,
            });
        }
        let part = self.part.as_mut()?;
        let end = (part.sent + FRAGMENT).min(part.data.len());
        let opcode = match (part.sent, part.text) {
            (0, true) => OpCode::Data(Data::Text),
            (0, false) => OpCode::Data(Data::Binary),
            _ => OpCode::Data(Data::Continue),
        };
        let fin = end == part.data.len();
        let frame = Frame::message(part.data.slice(part.sent..end), opcode, fin);
        let len = end - part.sent;
        part.sent = end;
        if fin {
            self.part = None;
        }
        Some((Message::Frame(frame), len))
    }
}

/// How one direction stopped.
#[derive(Debug)]
enum DirEnd {
    /// The source sent a close frame (its reply is queued by tungstenite).
    Closed(Option<CloseFrame>),
    /// The source's stream ended or failed without a close frame.
    Read(WsError),
    /// Writing to the other leg failed.
    Write(WsError),
}

/// Shows a message read travelling `way` to the hook, and queues it (`queue`), its answer
/// (`back`, the answers towards its sender), or nothing, as the hook says. Returns whether
/// an answer was queued.
fn take<H: MessageHook>(
    hook: &mut H,
    way: Direction,
    msg: Message,
    queue: &mut VecDeque<Message>,
    back: &mut VecDeque<Message>,
) -> bool {
    if matches!(msg, Message::Text(_) | Message::Binary(_)) {
        match hook.on_message(way, &msg) {
            Verdict::Pass => {}
            Verdict::Drop => return false,
            Verdict::Hold => {
                hook.hold(way, msg);
                return false;
            }
            Verdict::Answer(answer) => {
                back.push_back(answer);
                return true;
            }
        }
    }
    queue.push_back(msg);
    false
}

/// Moves messages from `src` to `dst` until `src` closes or either fails, each read one
/// through `hook`; `back` is the other direction's answers (towards `src`), where the
/// hook's answers go.
fn poll_dir<H: MessageHook>(
    cx: &mut Context<'_>,
    (src, dst): (&mut Ws, &mut Ws),
    dir: &mut Dir<'_>,
    back: &mut VecDeque<Message>,
    hook: &mut H,
) -> Poll<DirEnd> {
    for _ in 0..TURN {
        while dir.pending() {
            match Pin::new(&mut *dst).poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(DirEnd::Write(e)),
                Poll::Ready(Ok(())) => {}
            }
            let Some((msg, len)) = dir.next() else {
                break;
            };
            // The fragments of one message go out in one write, not one each.
            let last_fragment = matches!(&msg, Message::Frame(f) if f.header().is_final);
            if dir.part.is_some() {
                dst.get_mut().coalesce();
            }
            count(dir.bytes, len as u64);
            if let Err(e) = Pin::new(&mut *dst).start_send(msg) {
                return Poll::Ready(DirEnd::Write(e));
            }
            dir.dirty = true;
            if last_fragment {
                // The gathered fragments go out now, not at the end of the turn.
                match Pin::new(&mut *dst).poll_flush(cx) {
                    Poll::Ready(Ok(())) => dir.dirty = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(DirEnd::Write(e)),
                    Poll::Pending => {}
                }
            }
        }
        // The source is not taking the answers to its own messages: read no more of it
        // until it does (the other direction, in this same task, sends them).
        dir.stalled = back.len() >= TURN;
        let read = if dir.stalled {
            Poll::Pending
        } else {
            Pin::new(&mut *src).poll_next(cx)
        };
        match read {
            Poll::Ready(Some(Ok(Message::Close(frame)))) => {
                return Poll::Ready(DirEnd::Closed(frame));
            }
            Poll::Ready(Some(Ok(Message::Frame(_)))) => {}
            Poll::Ready(Some(Ok(msg))) => {
                if take(hook, dir.way, msg, &mut dir.queue, back) {
                    // The other direction may have had its turn already.
                    cx.waker().wake_by_ref();
                }
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(DirEnd::Read(e)),
            Poll::Ready(None) => return Poll::Ready(DirEnd::Read(WsError::ConnectionClosed)),
            Poll::Pending => {
                if dir.dirty {
                    match Pin::new(&mut *dst).poll_flush(cx) {
                        Poll::Ready(Ok(())) => dir.dirty = false,
                        Poll::Ready(Err(e)) => return Poll::Ready(DirEnd::Write(e)),
                        Poll::Pending => {}
                    }
                }
                return Poll::Pending;
            }
        }
    }
    // A long run of messages: let the other direction (and other tasks) have a turn.
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// Which leg ended the session, and how.
enum Ending {
    Client(DirEnd),
    Edge(DirEnd),
    /// sluice ends the session (shutdown, a revoked credential, a limit).
    Stop(Stop),
}

/// The `io::ErrorKind` a WebSocket error stands for, for [`End`].
fn kind(e: &WsError) -> io::ErrorKind {
    match e {
        WsError::Io(e) => e.kind(),
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::ErrorKind::UnexpectedEof,
        _ => io::ErrorKind::InvalidData,
    }
}

/// The close frame telling a peer that its *own* message or frame broke the rules;
/// `None` for a peer that did not (its connection ended without a closing handshake,
/// or failed).
pub fn fault_frame(e: &WsError) -> Option<CloseFrame> {
    match e {
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Capacity(c) => Some(close_frame(CloseCode::Size, &c.to_string())),
        WsError::Protocol(p) => Some(close_frame(CloseCode::Protocol, &p.to_string())),
        WsError::Utf8(_) => Some(close_frame(
            CloseCode::Invalid,
            "invalid UTF-8 in a text message",
        )),
        _ => None,
    }
}

/// Relays messages both ways (held ones first, to the edge) until a leg closes or fails
/// or `stop` resolves; then completes the closing handshakes within
/// [`CLOSE_TIMEOUT`](crate::ws::CLOSE_TIMEOUT).
/// A data message over [`FRAGMENT`] bytes is sent in fragments of that size.
///
/// A close frame is passed on with its code and reason. A leg that fails without one
/// gets the other a close of its own: `1001` to the edge when the client went away,
/// `1011` to the client when the edge did; a leg that broke the protocol or a size limit
/// is told so (`1002`, `1007`, `1009`). `stop` closes the client with its code and
/// reason and the edge with `1001`.
pub async fn relay(
    client: &mut Ws,
    edge: &mut Ws,
    held: VecDeque<Message>,
    moved: &Moved,
    stop: impl Future<Output = Stop>,
) -> RelayStats {
    relay_with(client, edge, held, moved, stop, PassThrough).await
}

/// [`relay()`] with `hook` deciding about every data message, both ways, the held ones
/// first (see the module docs). Closes, failures and `stop` end the session as in
/// [`relay()`], whatever the hook holds.
pub async fn relay_with<H: MessageHook>(
    client: &mut Ws,
    edge: &mut Ws,
    mut held: VecDeque<Message>,
    moved: &Moved,
    stop: impl Future<Output = Stop>,
    mut hook: H,
) -> RelayStats {
    let mut up = Dir::new(Direction::ClientToEdge, &moved.client_to_edge);
    let mut down = Dir::new(Direction::EdgeToClient, &moved.edge_to_client);
    // The held messages go through the hook like any other, in place.
    for _ in 0..held.len() {
        if let Some(msg) = held.pop_front() {
            take(
                &mut hook,
                Direction::ClientToEdge,
                msg,
                &mut held,
                &mut down.answers,
            );
        }
    }
    up.queue = held;
    let mut stop = pin!(stop);
    let mut edge_first = false;
    let ending = poll_fn(|cx| {
        if let Poll::Ready(stop) = stop.as_mut().poll(cx) {
            return Poll::Ready(Ending::Stop(stop));
        }
        // What the hook releases towards a leg waits among the answers to that leg: it
        // is sluice's to send (a SIP hook's `100 Trying` and `503`s, its ACK and BYE),
        // and so it stops the relay reading from that leg while [`TURN`] or more wait,
        // as answers do. In the queue it would not, and a client that does not read
        // could keep sending INVITEs whose answers pile up in sluice without bound.
        while let Poll::Ready((way, msg)) = hook.poll_release(cx) {
            match way {
                Direction::ClientToEdge => up.answers.push_back(msg),
                Direction::EdgeToClient => down.answers.push_back(msg),
            }
        }
        // Which direction goes first alternates (fairness under a one-sided flood).
        edge_first = !edge_first;
        for edge_turn in [edge_first, !edge_first] {
            if edge_turn {
                let legs = (&mut *edge, &mut *client);
                if let Poll::Ready(end) = poll_dir(cx, legs, &mut down, &mut up.answers, &mut hook)
                {
                    return Poll::Ready(Ending::Edge(end));
                }
            } else {
                let legs = (&mut *client, &mut *edge);
                if let Poll::Ready(end) = poll_dir(cx, legs, &mut up, &mut down.answers, &mut hook)
                {
                    return Poll::Ready(Ending::Client(end));
                }
            }
        }
        // A direction that stopped reading for its sender's answers, which the other
        // direction has since sent (some of): its turn again.
        if (up.stalled && down.answers.len() < TURN) || (down.stalled && up.answers.len() < TURN) {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await;
    drop(hook);

    let end = match ending {
        Ending::Client(DirEnd::Closed(frame)) => {
            tokio::join!(drain(client), close_and_wait(edge, frame));
            End::ClientClosed
        }
        Ending::Edge(DirEnd::Closed(frame)) => {
            tokio::join!(drain(edge), close_and_wait(client, frame));
            End::EdgeClosed
        }
        Ending::Client(DirEnd::Read(e)) | Ending::Edge(DirEnd::Write(e)) => {
            let to_client = fault_frame(&e);
            let to_edge = close_frame(CloseCode::Away, "client went away");
            tokio::join!(close_and_wait(edge, Some(to_edge)), async {
                if to_client.is_some() {
                    close_and_wait(client, to_client).await;
                }
            });
            End::ClientError(kind(&e))
        }
        Ending::Edge(DirEnd::Read(e)) | Ending::Client(DirEnd::Write(e)) => {
            let to_edge = fault_frame(&e);
            let to_client = close_frame(CloseCode::Error, "edge connection lost");
            tokio::join!(close_and_wait(client, Some(to_client)), async {
                if to_edge.is_some() {
                    close_and_wait(edge, to_edge).await;
                }
            });
            End::EdgeError(kind(&e))
        }
        Ending::Stop(stop) => {
            tokio::join!(
                close_and_wait(client, Some(close_frame(stop.code, stop.reason))),
                close_and_wait(edge, Some(close_frame(CloseCode::Away, stop.reason)))
            );
            End::Stopped(stop.reason)
        }
    };
    moved.stats(end)
}

#[cfg(test)]
mod tests;
