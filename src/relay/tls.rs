//! Step 6 of the flow (`hold` mode): the tunnel when either leg is TLS.
//!
//! rustls may hold decrypted bytes the socket no longer signals, so readiness alone is
//! not enough: `AsyncRead`/`AsyncWrite` are polled by hand, each poll reading into the
//! per-thread scratch buffer and writing on at once.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncWrite, AsyncWriteExt, ReadBuf};

use super::frames::Frames;
use super::{count, first_end, torn_down, DirEnd, End, Moved, HALF_CLOSE_LINGER, SCRATCH};
use crate::stream::Stream;

/// Runs both directions. When one ends cleanly (its pump has shut down the write side
/// of the other leg), the other direction gets [`HALF_CLOSE_LINGER`]. `sent` says, for
/// each direction (client to edge, edge to client), whether its source sent a close
/// frame that has been written on: a write that fails because such a peer left ends
/// the session cleanly (see [`super::tunnel`]).
async fn run_both(
    c2e: impl Future<Output = DirEnd>,
    e2c: impl Future<Output = DirEnd>,
    sent: (&AtomicBool, &AtomicBool),
) -> End {
    tokio::pin!(c2e, e2c);
    let (from_client, how) = tokio::select! {
        how = &mut c2e => (true, how),
        how = &mut e2c => (false, how),
    };
    // The destination left after its close frame: the direction from it ends too (and
    // shuts down the write side of the leg that stays).
    let left = |from_client: bool, how: &DirEnd| match how {
        DirEnd::Write(e) if torn_down(e) => {
            if from_client { sent.1 } else { sent.0 }.load(Ordering::Relaxed)
        }
        _ => false,
    };
    if left(from_client, &how) {
        if from_client {
            let _ = tokio::time::timeout(HALF_CLOSE_LINGER, e2c).await;
            return End::EdgeClosed;
        }
        let _ = tokio::time::timeout(HALF_CLOSE_LINGER, c2e).await;
        return End::ClientClosed;
    }
    if let Err(end) = first_end(from_client, how) {
        return end;
    }
    let (clean, rest) = if from_client {
        let rest = tokio::time::timeout(HALF_CLOSE_LINGER, e2c).await;
        (End::ClientClosed, rest)
    } else {
        let rest = tokio::time::timeout(HALF_CLOSE_LINGER, c2e).await;
        (End::EdgeClosed, rest)
    };
    match rest {
        Err(_) => End::LingerTimeout,
        Ok(how) if left(!from_client, &how) => clean,
        Ok(how) => match first_end(!from_client, how) {
            Ok(()) => clean,
            Err(end) => end,
        },
    }
}

pub(super) async fn relay_generic(client: &mut Stream, edge: &mut Stream, moved: &Moved) -> End {
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut edge_r, mut edge_w) = tokio::io::split(edge);
    // The shutdown of a TLS write side sends close_notify, which needs an await, so the
    // pump that ended does it itself (bounded by the linger).
    let sent = (AtomicBool::new(false), AtomicBool::new(false));
    run_both(
        pump_generic(&mut client_r, &mut edge_w, &moved.client_to_edge, &sent.0),
        pump_generic(&mut edge_r, &mut client_w, &moved.edge_to_client, &sent.1),
        (&sent.0, &sent.1),
    )
    .await
}

/// What the generic pump holds between polls: bytes read but not yet written (only
/// while the destination is not ready), and whether a flush is owed.
#[derive(Default)]
struct Backlog {
    rest: Vec<u8>,
    written: usize,
    flush: bool,
    /// Where the WebSocket frames of this direction begin and end.
    frames: Frames,
}

/// One direction over any stream, holding no buffer while waiting: each poll reads into
/// the per-thread scratch buffer and writes it on at once; only what the destination
/// cannot take yet moves to the heap. On end of stream the destination's write side is
/// shut down (TLS `close_notify`), within [`HALF_CLOSE_LINGER`]. `sent` tells whether
/// the source's close frame has been written on; a source that then resets its
/// connection has ended its stream (see [`super::tunnel`]).
async fn pump_generic<R, W>(
    src: &mut R,
    dst: &mut W,
    moved: &AtomicU64,
    sent: &AtomicBool,
) -> DirEnd
where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut backlog = Backlog::default();
    let pump =
        |cx: &mut Context<'_>| poll_pump(cx, &mut *src, &mut *dst, &mut backlog, moved, sent);
    let end = match std::future::poll_fn(pump).await {
        DirEnd::Read(e) if torn_down(&e) && sent.load(Ordering::Relaxed) => DirEnd::Eof,
        end => end,
    };
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
    sent: &AtomicBool,
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
        sent.store(backlog.frames.closed(), Ordering::Relaxed);
        let frames = &mut backlog.frames;
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
                    frames.feed(data);
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
