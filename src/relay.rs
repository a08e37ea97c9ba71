//! Step 6 of the flow: relaying a session between the client and the upstream.
//!
//! In `hold` mode, a transparent byte tunnel after both handshakes, as HAProxy and NGINX
//! do: [`tunnel`] over plain TCP, following frame boundaries with [`frames`], and [`tls`]
//! when either leg is TLS.
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
//! handshake). Over plain TCP, an end of stream that comes after the closing handshake
//! has passed both ways (each side's close frame written whole) ends the session at
//! once: both connections close, as nothing may follow a close frame. An error on either leg ends both at once, except when that leg has sent
//! its close frame and then reset its connection (a server that closes its socket right
//! after the closing handshake, with the answering close frame unread, resets it): that
//! is the leg's clean end, as every byte it sent has passed. Both tunnels follow frame
//! boundaries for this ([`frames::Frames`]).
//! A session that an error ended names it ([`End::error`]). When sluice ends a session
//! itself (drain, idle timeout, `max_session`), the plain-TCP tunnel, which follows
//! WebSocket frame boundaries as the bytes pass ([`frames::Frames`]: headers parsed,
//! payloads skipped), injects a close frame (`1001`) towards each peer whose stream is
//! between frames, then closes both connections. [`relay`] returns a [`RelayStats`]: the one
//! place where a session's end is observed.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::stream::Stream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

mod frames;
pub mod messages;
mod tls;
mod tunnel;

pub use messages::{Direction, MessageHook, PassThrough, Verdict};

use tls::relay_generic;
use tunnel::{relay_plain, PlainDir};

/// Why sluice ends a live session itself, with the close code for an `accept`-mode
/// client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// The close code (`1001` for shutdown and limits, `1008` for a revoked credential).
    pub code: CloseCode,
    /// The close reason and log word: `shutdown`, `idle-timeout`, `max-session`,
    /// `credential-revoked`.
    pub reason: &'static str,
}

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

    /// The error that ended the session, if one did (for the log line).
    pub fn error(self) -> Option<io::ErrorKind> {
        match self {
            Self::ClientError(kind) | Self::EdgeError(kind) => Some(kind),
            _ => None,
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
///
/// The legs are borrowed, not taken: the caller's task holds them once (an async fn
/// keeps what it is given beside its own state), and closes them by dropping them.
pub async fn relay(
    client: &mut Leg,
    edge: &mut Leg,
    moved: &Moved,
    stop: Pin<&mut (impl Future<Output = Stop> + ?Sized)>,
) -> RelayStats {
    let mut c2e = PlainDir::default();
    let mut e2c = PlainDir::default();
    c2e.frames.feed(&client.early);
    e2c.frames.feed(&edge.early);
    let end = match forward_early(client, edge, moved).await {
        Err(end) => end,
        Ok(()) => match (&mut client.stream, &mut edge.stream) {
            (Stream::Plain(c), Stream::Plain(e)) => {
                relay_plain(c, e, moved, (&mut c2e, &mut e2c), stop).await
            }
            // On the heap: its state is large and only TLS sessions need it.
            (c, e) => {
                let generic = Box::pin(relay_generic(c, e, moved));
                let mut stop = stop;
                tokio::select! {
                    end = generic => end,
                    stop = stop.as_mut() => End::Stopped(stop.reason),
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

/// Whether `e` is how a connection its peer tore down fails (reset, broken pipe).
fn torn_down(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// Classifies how a session ended from how the first direction stopped.
fn first_end(from_client: bool, how: DirEnd) -> Result<(), End> {
    match (from_client, how) {
        (_, DirEnd::Eof) => Ok(()),
        (true, DirEnd::Read(e)) | (false, DirEnd::Write(e)) => Err(End::ClientError(e.kind())),
        (false, DirEnd::Read(e)) | (true, DirEnd::Write(e)) => Err(End::EdgeError(e.kind())),
    }
}

async fn write_flush<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> io::Result<()> {
    w.write_all(data).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    /// An idle plain-TCP session's whole relay state lives in this future (and the
    /// future around it, which holds the legs it borrows): it stays small. The TLS arm is boxed, the stop signal's timers
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
        let stop = std::pin::pin!(std::future::pending());
        let (mut a, mut b) = (leg(a), leg(b));
        let relay = relay(&mut a, &mut b, &moved, stop);
        let size = std::mem::size_of_val(&relay);
        eprintln!("relay future: {size} bytes");
        // 528 bytes when the legs became borrowed (888 while it owned them).
        assert!(size <= 640, "{size}");
    }
}
