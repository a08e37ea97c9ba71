//! Step 6 of the flow (`hold` mode): the plain-TCP tunnel, driven by socket readiness.
//!
//! One poll loop waits for readiness of both directions, reads into the per-thread
//! scratch buffer and writes straight to the other leg; only what the other leg cannot
//! take yet moves to a heap buffer (see the module docs of [`super`]).

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::task::{ready, Context, Poll};

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::frames::{close_frame, Frames};
use super::Stop;
use super::{count, first_end, torn_down, DirEnd, End, Moved, HALF_CLOSE_LINGER, SCRATCH};

/// Both directions over plain TCP in one small poll loop. Readiness is polled with
/// `poll_read_ready`/`poll_write_ready`, which keep the task's waker in the socket's own
/// slot (each socket-and-direction pair has one poller here), so an idle session holds
/// no waiter node and no timer: its whole relay state is two [`PlainDir`]s.
pub(super) async fn relay_plain(
    client: &TcpStream,
    edge: &TcpStream,
    moved: &Moved,
    (c2e, e2c): (&mut PlainDir, &mut PlainDir),
    mut stop: Pin<&mut (impl Future<Output = Stop> + ?Sized)>,
) -> End {
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
    let (ended, other) = if from_client {
        (&*c2e, &*e2c)
    } else {
        (&*e2c, &*c2e)
    };
    let how = match settle(how, ended, other) {
        Settled::Ended(how) => how,
        Settled::DestinationLeft => {
            // The destination's side is closed and gone, and all it sent has passed.
            shutdown_write(client);
            shutdown_write(edge);
            return if from_client {
                End::EdgeClosed
            } else {
                End::ClientClosed
            };
        }
    };
    if let Err(end) = first_end(from_client, how) {
        return end;
    }
    if ended.sent_close() && other.sent_close() {
        // The closing handshake is over (each side's close frame has passed whole, and
        // nothing may follow a close frame) and one side ended its stream: so is the
        // session. Both connections close now, as NGINX closes both at the first end of
        // stream. Passing the half-close on and waiting for the other side's end would
        // only cost a shutdown, a read, a wake-up and a timer.
        return if from_client {
            End::ClientClosed
        } else {
            End::EdgeClosed
        };
    }
    // One side ended its stream: pass the end on, and give the other direction
    // HALF_CLOSE_LINGER to finish (the WebSocket closing handshake).
    let (clean, dir, ended, src, dst, count) = if from_client {
        shutdown_write(edge);
        let count = &moved.edge_to_client;
        (End::ClientClosed, e2c, &*c2e, edge, client, count)
    } else {
        shutdown_write(client);
        let count = &moved.client_to_edge;
        (End::EdgeClosed, c2e, &*e2c, client, edge, count)
    };
    let rest = tokio::time::timeout(
        HALF_CLOSE_LINGER,
        std::future::poll_fn(|cx| dir.poll(cx, src, dst, count)),
    )
    .await;
    match rest {
        Err(_) => End::LingerTimeout,
        Ok(how) => match settle(how, dir, ended) {
            Settled::DestinationLeft => clean,
            Settled::Ended(how) => match first_end(!from_client, how) {
                Ok(()) => clean,
                Err(end) => end,
            },
        },
    }
}

/// How a direction's end counts, once close frames are taken into account.
enum Settled {
    /// As it came (an error stays an error), or an end of stream.
    Ended(DirEnd),
    /// Its destination sent its close frame, which has passed whole, and then left: the
    /// session is over, and cleanly.
    DestinationLeft,
}

/// A peer that sent its close frame and then reset its connection has ended its side
/// cleanly: so does one that closes its socket with bytes unread (the kernel then
/// resets the connection instead of ending the stream), as a server does that closes
/// right after the closing handshake without reading the close frame it was answered
/// with. A read from it that fails so is its end of stream; a write to it that fails so
/// ends the session cleanly: everything it sent has passed, and after a close frame
/// nothing more may come. `dir` is the direction that ended, `other` the reverse one.
fn settle(how: DirEnd, dir: &PlainDir, other: &PlainDir) -> Settled {
    match how {
        DirEnd::Read(e) if torn_down(&e) && dir.sent_close() => Settled::Ended(DirEnd::Eof),
        DirEnd::Write(e) if torn_down(&e) && other.sent_close() => Settled::DestinationLeft,
        how => Settled::Ended(how),
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
pub(super) struct PlainDir {
    /// The unwritten rest, how much of it is written, and the whole read it came from.
    backlog: Option<(Vec<u8>, usize, usize)>,
    /// Where the WebSocket frames of this direction begin and end.
    pub(super) frames: Frames,
}

impl PlainDir {
    /// Whether everything read was written and it ended at a frame's end: a close frame
    /// may go in now.
    fn between_frames(&self) -> bool {
        self.backlog.is_none() && self.frames.at_boundary()
    }

    /// Whether its source sent a close frame and all of it has been written on.
    fn sent_close(&self) -> bool {
        self.backlog.is_none() && self.frames.closed()
    }
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
