//! Step 6 of the flow (`hold` mode): a transparent byte tunnel between the client and
//! the upstream after both handshakes, as HAProxy and NGINX do.
//!
//! # Memory per idle session
//!
//! A fleet holds tens of thousands of mostly idle sessions, so an idle session holds no
//! buffer. When both legs are plain TCP, one poll loop waits for *readiness* of both
//! directions (`poll_read_ready`), then reads into a per-thread scratch buffer and writes
//! it straight to the other leg with `try_write`. Only
//! when the other leg cannot take all of it does the rest move to a heap buffer, which is
//! freed as soon as it has been written (and while it exists that direction reads no
//! more, so it is also the backpressure). An idle session is two sockets and a small
//! task: no buffer at all.
//!
//! When either leg is TLS the tunnel polls `AsyncRead`/`AsyncWrite` by hand (rustls may
//! hold decrypted bytes the socket no longer signals, so readiness alone is not enough):
//! each poll reads into the same per-thread scratch buffer and writes on at once, so an
//! idle TLS session, too, holds no buffer of sluice's, only what rustls keeps. A TLS peer
//! that closes without `close_notify` counts as a clean end of its stream.
//!
//! # How a session ends
//!
//! End of stream on one leg is passed on as a write shutdown (TCP FIN) of the other, and
//! the other direction gets [`HALF_CLOSE_LINGER`] to finish (the WebSocket closing
//! handshake). An error on either leg ends both at once. When sluice ends a session
//! itself (drain, idle timeout, `max_session`), the plain-TCP tunnel, which follows
//! WebSocket frame boundaries as the bytes pass ([`Frames`]: headers parsed, payloads
//! skipped), injects a close frame (`1001`) towards each peer whose stream is between
//! frames, then closes both connections. [`relay`] returns a [`RelayStats`]: the one
//! place where a session's end is observed.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::control::Stop;
use crate::stream::Stream;

/// How long the other direction may go on after one leg has ended its stream.
pub const HALF_CLOSE_LINGER: Duration = Duration::from_secs(5);
/// Size of the scratch buffer a read goes into.
pub const READ_CHUNK: usize = 32 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_CHUNK].into_boxed_slice());
}

/// One leg of a session: its stream and bytes already read past the handshake (which
/// hyper had buffered) that belong to the other leg.
#[derive(Debug)]
pub struct Leg {
    /// The connection.
    pub stream: Stream,
    /// Bytes read from this leg that must be written to the other before anything else.
    pub early: Bytes,
}

/// Which side did what to end a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed its side first (clean).
    ClientClosed,
    /// The edge closed its side first (clean).
    EdgeClosed,
    /// Reading from or writing to the client failed (reset, broken pipe…).
    ClientError(io::ErrorKind),
    /// Reading from or writing to the edge failed.
    EdgeError(io::ErrorKind),
    /// One side closed and the other did not finish within [`HALF_CLOSE_LINGER`].
    LingerTimeout,
    /// sluice ended the session itself, for this reason ([`Stop::reason`]).
    Stopped(&'static str),
}

impl End {
    /// Short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::EdgeClosed => "edge_closed",
            Self::ClientError(_) => "client_error",
            Self::EdgeError(_) => "edge_error",
            Self::LingerTimeout => "linger_timeout",
            Self::Stopped(_) => "stopped",
        }
    }
}

/// What a finished session moved and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayStats {
    /// Bytes relayed from the client to the edge.
    pub client_to_edge: u64,
    /// Bytes relayed from the edge to the client.
    pub edge_to_client: u64,
    /// How it ended.
    pub end: End,
}

/// How one direction stopped.
#[derive(Debug)]
enum DirEnd {
    /// The source sent end of stream.
    Eof,
    /// Reading the source failed.
    Read(io::Error),
    /// Writing the destination failed.
    Write(io::Error),
}

/// Bytes a session moved each way so far: the relay adds, the idle timer
/// ([`crate::control::SessionStop`]) and the session's end read.
#[derive(Debug, Default)]
pub struct Moved {
    /// Client to edge.
    pub client_to_edge: AtomicU64,
    /// Edge to client.
    pub edge_to_client: AtomicU64,
}

impl Moved {
    /// Both ways together.
    pub fn total(&self) -> u64 {
        self.client_to_edge
            .load(Ordering::Relaxed)
            .wrapping_add(self.edge_to_client.load(Ordering::Relaxed))
    }

    /// The figures of a session that ended `end`.
    pub fn stats(&self, end: End) -> RelayStats {
        RelayStats {
            client_to_edge: self.client_to_edge.load(Ordering::Relaxed),
            edge_to_client: self.edge_to_client.load(Ordering::Relaxed),
            end,
        }
    }
}

/// Adds `n` to a direction's count. Each direction has one writer, so a plain load and
/// store (no locked instruction) is exact.
pub fn count(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// Relays both ways until the session ends, or `stop` completes. Then, over plain TCP,
/// each peer whose direction is between two WebSocket frames gets a close frame (`1001`
/// and the stop's reason; masked towards the edge, as a client's must be) before both
/// connections are closed; a direction in the middle of a frame, and TLS legs, are only
/// closed.
pub async fn relay(
    mut client: Leg,
    mut edge: Leg,
    moved: &Moved,
    stop: impl Future<Output = Stop>,
) -> RelayStats {
    let mut c2e = PlainDir::default();
    let mut e2c = PlainDir::default();
    c2e.frames.feed(&client.early);
    e2c.frames.feed(&edge.early);
    let end = match forward_early(&mut client, &mut edge, moved).await {
        Err(end) => end,
        Ok(()) => match (client.stream, edge.stream) {
            (Stream::Plain(c), Stream::Plain(e)) => {
                relay_plain(&c, &e, moved, (&mut c2e, &mut e2c), stop).await
            }
            // On the heap: its state is large and only TLS sessions need it.
            (c, e) => {
                let generic = Box::pin(relay_generic(c, e, moved));
                tokio::select! {
                    end = generic => end,
                    stop = stop => End::Stopped(stop.reason),
                }
            }
        },
    };
    moved.stats(end)
}

/// Writes each leg's early bytes (read past the handshake) to the other leg, and frees
/// them.
async fn forward_early(client: &mut Leg, edge: &mut Leg, moved: &Moved) -> Result<(), End> {
    let early = std::mem::take(&mut client.early);
    if !early.is_empty() {
        write_flush(&mut edge.stream, &early)
            .await
            .map_err(|e| End::EdgeError(e.kind()))?;
        count(&moved.client_to_edge, early.len() as u64);
    }
    let early = std::mem::take(&mut edge.early);
    if !early.is_empty() {
        write_flush(&mut client.stream, &early)
            .await
            .map_err(|e| End::ClientError(e.kind()))?;
        count(&moved.edge_to_client, early.len() as u64);
    }
    Ok(())
}

/// Classifies how a session ended from how the first direction stopped.
fn first_end(from_client: bool, how: DirEnd) -> Result<(), End> {
    match (from_client, how) {
        (_, DirEnd::Eof) => Ok(()),
        (true, DirEnd::Read(e)) | (false, DirEnd::Write(e)) => Err(End::ClientError(e.kind())),
        (false, DirEnd::Read(e)) | (true, DirEnd::Write(e)) => Err(End::EdgeError(e.kind())),
    }
}

/// Runs both directions. When one ends cleanly, `shut_edge` or `shut_client` shuts down
/// the write side of the other leg, and the other direction gets [`HALF_CLOSE_LINGER`].
async fn run_both(
    c2e: impl Future<Output = DirEnd>,
    e2c: impl Future<Output = DirEnd>,
    shut_edge: impl FnOnce(),
    shut_client: impl FnOnce(),
) -> End {
    tokio::pin!(c2e, e2c);
    let (from_client, how) = tokio::select! {
        how = &mut c2e => (true, how),
        how = &mut e2c => (false, how),
    };
    if let Err(end) = first_end(from_client, how) {
        return end;
    }
    let (clean, rest) = if from_client {
        shut_edge();
        let rest = tokio::time::timeout(HALF_CLOSE_LINGER, e2c).await;
        (End::ClientClosed, rest)
    } else {
        shut_client();
        let rest = tokio::time::timeout(HALF_CLOSE_LINGER, c2e).await;
        (End::EdgeClosed, rest)
    };
    match rest {
        Err(_) => End::LingerTimeout,
        Ok(how) => match first_end(!from_client, how) {
            Ok(()) => clean,
            Err(end) => end,
        },
    }
}

/// Both directions over plain TCP in one small poll loop. Readiness is polled with
/// `poll_read_ready`/`poll_write_ready`, which keep the task's waker in the socket's own
/// slot (each socket-and-direction pair has one poller here), so an idle session holds
/// no waiter node and no timer: its whole relay state is two [`PlainDir`]s.
async fn relay_plain(
    client: &TcpStream,
    edge: &TcpStream,
    moved: &Moved,
    (c2e, e2c): (&mut PlainDir, &mut PlainDir),
    stop: impl Future<Output = Stop>,
) -> End {
    let mut stop = std::pin::pin!(stop);
    // Which direction goes first alternates, so that one side's bulk flow cannot spend
    // the task's whole cooperative budget before the other is looked at.
    let mut edge_first = false;
    let first = std::future::poll_fn(|cx| {
        if let Poll::Ready(stop) = stop.as_mut().poll(cx) {
            return Poll::Ready(Err(stop));
        }
        edge_first = !edge_first;
        for edge_turn in [edge_first, !edge_first] {
            if edge_turn {
                if let Poll::Ready(how) = e2c.poll(cx, edge, client, &moved.edge_to_client) {
                    return Poll::Ready(Ok((false, how)));
                }
            } else if let Poll::Ready(how) = c2e.poll(cx, client, edge, &moved.client_to_edge) {
                return Poll::Ready(Ok((true, how)));
            }
        }
        Poll::Pending
    })
    .await;
    let (from_client, how) = match first {
        Ok(first) => first,
        Err(stop) => {
            // Told to stop: a close frame to each peer whose stream is between frames.
            if e2c.between_frames() {
                let _ = client.try_write(&close_frame(&stop, None));
            }
            if c2e.between_frames() {
                let _ = edge.try_write(&close_frame(&stop, Some(rand::random())));
            }
            shutdown_write(client);
            shutdown_write(edge);
            return End::Stopped(stop.reason);
        }
    };
    if let Err(end) = first_end(from_client, how) {
        return end;
    }
    // One side ended its stream: pass the end on, and give the other direction
    // HALF_CLOSE_LINGER to finish (the WebSocket closing handshake).
    let (clean, dir, src, dst, count) = if from_client {
        shutdown_write(edge);
        (End::ClientClosed, e2c, edge, client, &moved.edge_to_client)
    } else {
        shutdown_write(client);
        (End::EdgeClosed, c2e, client, edge, &moved.client_to_edge)
    };
    let rest = tokio::time::timeout(
        HALF_CLOSE_LINGER,
        std::future::poll_fn(|cx| dir.poll(cx, src, dst, count)),
    )
    .await;
    match rest {
        Err(_) => End::LingerTimeout,
        Ok(how) => match first_end(!from_client, how) {
            Ok(()) => clean,
            Err(end) => end,
        },
    }
}

fn shutdown_write(s: &TcpStream) {
    // The peer may already be gone; then there is nothing left to tell it.
    let _ = socket2::SockRef::from(s).shutdown(Shutdown::Write);
}

/// What one readiness-driven step did.
enum Step {
    /// Spurious readiness: nothing to read after all.
    Again,
    /// End of stream.
    Eof,
    /// `n` bytes read and all written.
    Done(usize),
    /// `n` bytes read; these could not be written yet.
    Partial(usize, Vec<u8>),
}

/// One direction over plain TCP: bytes read but not yet written (only while the
/// destination is full; that direction reads nothing more meanwhile, which is the
/// backpressure), and how many of them are written.
#[derive(Default)]
struct PlainDir {
    /// The unwritten rest, how much of it is written, and the whole read it came from.
    backlog: Option<(Vec<u8>, usize, usize)>,
    /// Where the WebSocket frames of this direction begin and end.
    frames: Frames,
}

impl PlainDir {
    /// Whether everything read was written and it ended at a frame's end: a close frame
    /// may go in now.
    fn between_frames(&self) -> bool {
        self.backlog.is_none() && self.frames.at_boundary()
    }
}

/// Follows WebSocket frame boundaries in a byte stream (RFC 6455 §5.2): the header of
/// the frame being read, then how much of its payload is still to come. Headers are
/// read byte by byte (at most 14); payloads are skipped whole.
#[derive(Debug, Default)]
struct Frames {
    head: [u8; 14],
    have: u8,
    need: u8,
    remaining: u64,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.remaining -= skip as u64;
                data = &data[skip..];
                continue;
            }
            self.head[usize::from(self.have)] = data[0];
            self.have += 1;
            data = &data[1..];
            if self.have == 2 {
                let ext = match self.head[1] & 0x7f {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
                self.need = 2 + ext + mask;
            }
            if self.have >= 2 && self.have == self.need {
                let h = &self.head;
                self.remaining = match h[1] & 0x7f {
                    126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
                    127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                    n => u64::from(n),
                };
                self.have = 0;
                self.need = 0;
            }
        }
    }
}

/// A close frame with `stop`'s code and reason; masked with `mask` (towards the edge,
/// as a client's frames must be), or not (towards the client).
fn close_frame(stop: &Stop, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut payload = u16::from(stop.code).to_be_bytes().to_vec();
    payload.extend_from_slice(&stop.reason.as_bytes()[..stop.reason.len().min(123)]);
    let mut frame = vec![0x88, payload.len() as u8];
    if let Some(mask) = mask {
        frame[1] |= 0x80;
        frame.extend_from_slice(&mask);
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    frame.extend_from_slice(&payload);
    frame
}

impl PlainDir {
    /// Readiness, then read into the per-thread scratch buffer and write on at once,
    /// until the source has nothing more (`Pending`) or the direction ends.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        moved: &AtomicU64,
    ) -> Poll<DirEnd> {
        loop {
            if let Some((rest, written, read)) = &mut self.backlog {
                while *written < rest.len() {
                    if let Err(e) = ready!(dst.poll_write_ready(cx)) {
                        return Poll::Ready(DirEnd::Write(e));
                    }
                    match dst.try_write(&rest[*written..]) {
                        Ok(0) => {
                            return Poll::Ready(DirEnd::Write(io::ErrorKind::WriteZero.into()))
                        }
                        Ok(n) => *written += n,
                        // try_write cleared the readiness: the next poll waits for it.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(DirEnd::Write(e)),
                    }
                }
                count(moved, *read as u64);
                self.backlog = None;
            }
            if let Err(e) = ready!(src.poll_read_ready(cx)) {
                return Poll::Ready(DirEnd::Read(e));
            }
            match read_and_write(src, dst, &mut self.frames) {
                Err(end) => return Poll::Ready(end),
                Ok(Step::Again) => {}
                Ok(Step::Eof) => return Poll::Ready(DirEnd::Eof),
                Ok(Step::Done(n)) => count(moved, n as u64),
                Ok(Step::Partial(n, rest)) => self.backlog = Some((rest, 0, n)),
            }
        }
    }
}

/// One read into the per-thread scratch buffer and one write of it, without waiting.
fn read_and_write(src: &TcpStream, dst: &TcpStream, frames: &mut Frames) -> Result<Step, DirEnd> {
    SCRATCH.with_borrow_mut(|buf| {
        // A read shorter than the buffer emptied the socket: tell tokio so (a WouldBlock
        // from `try_io` clears the readiness), instead of learning it from one more read
        // that fails with EAGAIN. If data arrived meanwhile, tokio keeps the readiness
        // set, so nothing is missed.
        let mut got = None;
        let read = src.try_io(Interest::READABLE, || {
            let n = src.try_read(buf)?;
            got = Some(n);
            if n > 0 && n < buf.len() {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(n)
            }
        });
        let n = match (got, read) {
            (Some(0), _) => return Ok(Step::Eof),
            (Some(n), _) => n,
            (None, Err(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Again),
            (None, Err(e)) => return Err(DirEnd::Read(e)),
            (None, Ok(_)) => unreachable!("a successful read sets `got`"),
        };
        frames.feed(&buf[..n]);
        match dst.try_write(&buf[..n]) {
            Ok(m) if m == n => Ok(Step::Done(n)),
            Ok(m) => Ok(Step::Partial(n, buf[m..n].to_vec())),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Ok(Step::Partial(n, buf[..n].to_vec()))
            }
            Err(e) => Err(DirEnd::Write(e)),
        }
    })
}

async fn relay_generic(client: Stream, edge: Stream, moved: &Moved) -> End {
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut edge_r, mut edge_w) = tokio::io::split(edge);
    // The shutdown of a TLS write side sends close_notify, which needs an await, so the
    // pump that ended does it itself (bounded by the linger).
    run_both(
        pump_generic(&mut client_r, &mut edge_w, &moved.client_to_edge),
        pump_generic(&mut edge_r, &mut client_w, &moved.edge_to_client),
        || {},
        || {},
    )
    .await
}

async fn write_flush<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> io::Result<()> {
    w.write_all(data).await?;
    w.flush().await
}

/// What the generic pump holds between polls: bytes read but not yet written (only
/// while the destination is not ready), and whether a flush is owed.
#[derive(Default)]
struct Backlog {
    rest: Vec<u8>,
    written: usize,
    flush: bool,
}

/// One direction over any stream, holding no buffer while waiting: each poll reads into
/// the per-thread scratch buffer and writes it on at once; only what the destination
/// cannot take yet moves to the heap. On end of stream the destination's write side is
/// shut down (TLS `close_notify`), within [`HALF_CLOSE_LINGER`].
async fn pump_generic<R, W>(src: &mut R, dst: &mut W, moved: &AtomicU64) -> DirEnd
where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut backlog = Backlog::default();
    let end =
        std::future::poll_fn(|cx| poll_pump(cx, &mut *src, &mut *dst, &mut backlog, moved)).await;
    if matches!(end, DirEnd::Eof) {
        let _ = tokio::time::timeout(HALF_CLOSE_LINGER, dst.shutdown()).await;
    }
    end
}

fn poll_pump<R, W>(
    cx: &mut Context<'_>,
    src: &mut R,
    dst: &mut W,
    backlog: &mut Backlog,
    moved: &AtomicU64,
) -> Poll<DirEnd>
where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        // First whatever the destination could not take earlier.
        while backlog.written < backlog.rest.len() {
            match Pin::new(&mut *dst).poll_write(cx, &backlog.rest[backlog.written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(DirEnd::Write(io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => backlog.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(DirEnd::Write(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if !backlog.rest.is_empty() {
            backlog.rest = Vec::new();
            backlog.written = 0;
        }
        if backlog.flush {
            match Pin::new(&mut *dst).poll_flush(cx) {
                Poll::Ready(Ok(())) => backlog.flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(DirEnd::Write(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let step = SCRATCH.with_borrow_mut(|scratch| {
            let mut buf = ReadBuf::new(scratch);
            match Pin::new(&mut *src).poll_read(cx, &mut buf) {
                Poll::Pending => Poll::Pending,
                // A TLS peer that closes without close_notify has still ended its stream.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    Poll::Ready(Err(DirEnd::Eof))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(DirEnd::Read(e))),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Err(DirEnd::Eof)),
                Poll::Ready(Ok(())) => {
                    let data = buf.filled();
                    let n = data.len();
                    match Pin::new(&mut *dst).poll_write(cx, data) {
                        Poll::Ready(Ok(m)) if m == n => Poll::Ready(Ok((n, Vec::new()))),
                        Poll::Ready(Ok(m)) => Poll::Ready(Ok((n, data[m..].to_vec()))),
                        Poll::Pending => Poll::Ready(Ok((n, data.to_vec()))),
                        Poll::Ready(Err(e)) => Poll::Ready(Err(DirEnd::Write(e))),
                    }
                }
            }
        });
        match step {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(end)) => return Poll::Ready(end),
            Poll::Ready(Ok((n, rest))) => {
                count(moved, n as u64);
                backlog.rest = rest;
                backlog.flush = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_boundaries_are_followed_across_reads() {
        let mut f = Frames::default();
        assert!(f.at_boundary());
        // A masked text frame of 5 bytes, split in three reads.
        let frame = [0x81, 0x85, 1, 2, 3, 4, b'h', b'e', b'l', b'l', b'o'];
        f.feed(&frame[..1]);
        assert!(!f.at_boundary());
        f.feed(&frame[1..7]);
        assert!(!f.at_boundary());
        f.feed(&frame[7..]);
        assert!(f.at_boundary());
        // 16-bit and 64-bit lengths, unmasked, then an empty ping, in one read.
        let mut bytes = vec![0x82, 126, 0x01, 0x00];
        bytes.extend(std::iter::repeat_n(0u8, 256));
        bytes.extend([0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        bytes.extend(std::iter::repeat_n(0u8, 65536));
        bytes.extend([0x89, 0x00]);
        f.feed(&bytes[..bytes.len() - 1]);
        assert!(!f.at_boundary());
        f.feed(&bytes[bytes.len() - 1..]);
        assert!(f.at_boundary());
    }

    #[test]
    fn injected_close_frames_are_well_formed() {
        let stop = Stop {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Away,
            reason: "shutdown",
        };
        assert_eq!(
            close_frame(&stop, None),
            [&[0x88, 10, 0x03, 0xe9][..], b"shutdown"].concat()
        );
        let masked = close_frame(&stop, Some([1, 2, 3, 4]));
        assert_eq!(&masked[..6], &[0x88, 0x80 | 10, 1, 2, 3, 4]);
        let unmasked: Vec<u8> = masked[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4])
            .collect();
        assert_eq!(unmasked, [&[0x03, 0xe9][..], b"shutdown"].concat());
    }

    /// An idle plain-TCP session's whole relay state lives in this future (and the
    /// task around it): it stays small. The TLS arm is boxed, the stop signal's timers
    /// too (`docs/benchmarks.md`: bytes per idle session).
    #[tokio::test]
    async fn the_relay_of_an_idle_session_is_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (b, _) = listener.accept().await.unwrap();
        let moved = Moved::default();
        let leg = |s| Leg {
            stream: Stream::Plain(s),
            early: Bytes::new(),
        };
        let relay = relay(leg(a), leg(b), &moved, std::future::pending());
        let size = std::mem::size_of_val(&relay);
        eprintln!("relay future: {size} bytes");
        assert!(size <= 1024, "{size}");
    }
}
