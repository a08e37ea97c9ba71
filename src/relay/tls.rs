//! Step 6 of the flow (`hold` mode): the tunnel when either leg is TLS.
//!
//! rustls may hold decrypted bytes the socket no longer signals, so readiness alone is
//! not enough: `AsyncRead`/`AsyncWrite` are polled by hand, each poll reading into the
//! per-thread scratch buffer and writing on at once.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};

use tokio::io::{AsyncWrite, AsyncWriteExt, ReadBuf};

use super::{count, first_end, DirEnd, End, Moved, HALF_CLOSE_LINGER, SCRATCH};
use crate::stream::Stream;

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

pub(super) async fn relay_generic(client: Stream, edge: Stream, moved: &Moved) -> End {
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
