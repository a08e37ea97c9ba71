//! Step 6 of the flow (`accept` mode): a leg's bytes, re-cut so tungstenite holds no large frame.
//!
//! tungstenite reads a whole frame into its read buffer (it reserves the frame's payload
//! there) and that buffer keeps its capacity for the connection's life: one 2 MB message
//! would pin 2 MB per leg for as long as the session is idle. [`Refragment`] sits between
//! the connection and tungstenite and hands it every data frame longer than
//! [`FRAGMENT`] bytes as fragments of at most that many: the first with the frame's own
//! opcode, the rest as continuation frames, the last with the frame's FIN bit. Headers
//! are rewritten as the bytes pass; payloads are not touched: a masked frame's fragments
//! carry the mask key rotated by their offset in the payload (mod 4), so the bytes
//! unmask as before. tungstenite then assembles the message in a buffer of its own,
//! which the relay frees once the message is sent on.
//!
//! Passed unchanged: any frame of at most [`FRAGMENT`] bytes, and control frames,
//! frames with RSV bits or an unknown opcode and frames over the limit (`max_frame`),
//! which tungstenite refuses with the same error as without the adapter. Splitting
//! does not change what is valid: a stray continuation frame, a
//! data frame inside a fragmented message, a frame masked (or not) against the role,
//! invalid UTF-8 and a message over the limit are refused at the first fragment, or when
//! the message is assembled, with the same error kind.
//!
//! A read that starts at a frame boundary is at most [`FRAGMENT`] + 4 bytes, so a
//! fragment boundary never falls inside it: it is followed in place (headers parsed,
//! the first fragment's header rewritten in place with the same length form), later
//! fragments' headers are handed out from a 14-byte array before their payload is read
//! straight into tungstenite's buffer. A header that straddles two reads is kept in
//! another 14-byte array until it is whole.
//!
//! One read per fragment would cost a large message three times the reads it took
//! whole, so inside a split frame the adapter reads ahead up to [`READ_AHEAD`] bytes of
//! its payload at once (into a per-thread scratch buffer, kept as a copy until handed
//! out, then freed). Writes pass unchanged, except that the relay can have the
//! fragments of one message gathered into one write ([`Refragment::coalesce`]; the
//! buffer is freed once written). An idle leg holds no buffer here.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest data frame payload tungstenite is handed; outgoing messages are sent in
/// fragments of this size too ([`super::relay()`]). tungstenite reserves a frame's whole
/// payload beyond the bytes it already holds, so a fragment and a read of one (with
/// headers) must fit its [`super::READ_BUFFER`]-byte read buffer with room to spare, or
/// the buffer doubles and stays so: measured with `examples/idle_memory --large`, 2 KiB
/// fragments left 12.6 KB more per idle session after a 1 MB message, 1,536-byte ones
/// 3.2 KB, 1 KiB ones 1.4 KB, at the cost of more frames (`docs/benchmarks.md`).
pub const FRAGMENT: usize = 1536;

/// Longest frame header: 2 bytes, a 64-bit length, a mask key.
const MAX_HEADER: usize = 14;

/// Most bytes read at once inside a split frame, and most bytes of fragments written at
/// once ([`Refragment::coalesce`]): held on the heap only until handed on.
const READ_AHEAD: usize = 64 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; READ_AHEAD].into_boxed_slice());
}

/// Largest read at a frame boundary. A split frame's header is at least 4 bytes, so
/// such a read holds at most [`FRAGMENT`] bytes of its payload: it never reaches past
/// the first fragment.
const BOUNDARY_READ: usize = FRAGMENT + 4;

const _: () = assert!(
    FRAGMENT > 125 && FRAGMENT % 4 == 0 && 2 * (FRAGMENT + MAX_HEADER) < super::READ_BUFFER
);

/// A frame being re-fragmented.
#[derive(Debug, Clone, Copy)]
struct Split {
    /// The frame's FIN bit, for its last fragment.
    fin: bool,
    /// Its mask key, if masked.
    mask: Option<[u8; 4]>,
    /// Payload bytes of the current fragment still to come.
    left: u16,
}

/// A connection whose large incoming data frames are handed on as fragments (module
/// docs). Writes pass unchanged.
#[derive(Debug)]
pub struct Refragment<S> {
    inner: S,
    /// Bytes read from the connection before this adapter (past the handshake), handed
    /// out first.
    early: Bytes,
    /// Frames longer than this pass unchanged (tungstenite refuses them).
    max_frame: u64,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// Payload bytes of the current frame already passed.
    offset: u64,
    /// Set while the current frame is handed out as fragments.
    split: Option<Split>,
    /// Header bytes of the next frame, read but not yet handed out (it straddled two
    /// reads).
    head: [u8; MAX_HEADER],
    have: u8,
    /// A header to hand out before more payload, and how much of it is out.
    out: [u8; MAX_HEADER],
    out_at: u8,
    out_len: u8,
    /// Writes gathered since [`Refragment::coalesce`], and how much of them is out.
    gathered: Vec<u8>,
    gathered_out: usize,
    coalescing: bool,
    /// The frames handed out so far began a fragmented data message that has not ended
    /// (tungstenite is assembling it).
    in_message: bool,
}

/// A header's length, from its second byte.
fn header_len(second: u8) -> usize {
    let ext = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if second & 0x80 != 0 { 4 } else { 0 }
}

/// A whole header's payload length and mask key.
fn parse(h: &[u8]) -> (u64, Option<[u8; 4]>) {
    let (len, at) = match h[1] & 0x7f {
        126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = (h[1] & 0x80 != 0).then(|| [h[at], h[at + 1], h[at + 2], h[at + 3]]);
    (len, mask)
}

impl<S> Refragment<S> {
    /// `inner`, whose first bytes are `early`; frames over `max_frame` bytes pass
    /// unchanged.
    pub fn new(inner: S, early: Bytes, max_frame: usize) -> Self {
        Self {
            inner,
            // A copy: `early` is often a slice of a larger read buffer (hyper's), which
            // it would keep alive, even when empty.
            early: Bytes::copy_from_slice(&early),
            max_frame: max_frame as u64,
            remaining: 0,
            offset: 0,
            split: None,
            head: [0; MAX_HEADER],
            have: 0,
            out: [0; MAX_HEADER],
            out_at: 0,
            out_len: 0,
            gathered: Vec::new(),
            gathered_out: 0,
            coalescing: false,
            in_message: false,
        }
    }

    /// The connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Whether everything read from the connection has been handed out and ended a
    /// message: then tungstenite, once its last read came back empty-handed, holds
    /// nothing of the leg's incoming stream (no part of a frame, no part of a message).
    pub fn between_messages(&self) -> bool {
        self.remaining == 0
            && self.have == 0
            && self.out_at == self.out_len
            && self.early.is_empty()
            && !self.in_message
    }

    /// A frame's header `h` (whole) was read: decides whether the frame is split and
    /// if so rewrites `h` in place as its first fragment's header (same length form).
    fn start_frame(&mut self, h: &mut [u8]) {
        let (len, mask) = parse(h);
        self.remaining = len;
        self.offset = 0;
        self.split = None;
        let (first, opcode) = (h[0], h[0] & 0x0f);
        let fin = first & 0x80 != 0;
        match opcode {
            1 | 2 => self.in_message = !fin,
            0 if fin => self.in_message = false,
            _ => {}
        }
        let plain_data = first & 0x70 == 0 && opcode <= 2;
        if plain_data && len > FRAGMENT as u64 && len <= self.max_frame {
            h[0] = first & 0x7f;
            match h[1] & 0x7f {
                126 => h[2..4].copy_from_slice(&(FRAGMENT as u16).to_be_bytes()),
                _ => h[2..10].copy_from_slice(&(FRAGMENT as u64).to_be_bytes()),
            }
            self.split = Some(Split {
                fin: first & 0x80 != 0,
                mask,
                left: FRAGMENT as u16,
            });
        }
    }

    /// The next fragment's header (a continuation frame) goes to `out`.
    fn next_fragment(&mut self) {
        let Some(split) = &mut self.split else {
            return;
        };
        let n = self.remaining.min(FRAGMENT as u64) as u16;
        let last = u64::from(n) == self.remaining;
        let out = &mut self.out;
        out[0] = if last && split.fin { 0x80 } else { 0 };
        let mut at = if n <= 125 {
            out[1] = n as u8;
            2
        } else {
            out[1] = 126;
            out[2..4].copy_from_slice(&n.to_be_bytes());
            4
        };
        if let Some(key) = split.mask {
            out[1] |= 0x80;
            let rot = (self.offset % 4) as usize;
            for i in 0..4 {
                out[at + i] = key[(rot + i) % 4];
            }
            at += 4;
        }
        split.left = n;
        self.out_at = 0;
        self.out_len = at as u8;
    }

    /// `n` payload bytes passed.
    fn passed(&mut self, n: usize) {
        self.remaining -= n as u64;
        self.offset += n as u64;
        if let Some(split) = &mut self.split {
            split.left -= n as u16;
        }
        if self.remaining == 0 {
            self.split = None;
        }
    }

    /// Follows the frames in `data`, just read at a frame boundary: headers parsed (a
    /// split frame's rewritten), payloads skipped. A header cut off at the end is moved
    /// to `head`. Returns how many bytes stay.
    fn scan(&mut self, data: &mut [u8]) -> usize {
        let mut pos = 0;
        while pos < data.len() {
            if self.remaining > 0 {
                let skip = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len() - pos);
                // A read is at most BOUNDARY_READ bytes: it ends with the first fragment
                // at the latest.
                debug_assert!(self.split.is_none_or(|s| skip <= usize::from(s.left)));
                self.passed(skip);
                pos += skip;
                continue;
            }
            let rest = data.len() - pos;
            if rest < 2 || rest < header_len(data[pos + 1]) {
                self.head[..rest].copy_from_slice(&data[pos..]);
                self.have = rest as u8;
                return pos;
            }
            let end = pos + header_len(data[pos + 1]);
            self.start_frame(&mut data[pos..end]);
            pos = end;
        }
        data.len()
    }
}

impl<S: AsyncRead + Unpin> Refragment<S> {
    /// Reads up to [`READ_AHEAD`] bytes of the split frame's payload still to come (not
    /// past it) into the per-thread scratch buffer, and keeps a copy of what came as
    /// `early`, handed out before the connection is read again and freed once out.
    fn read_ahead(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(READ_AHEAD);
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut rb = ReadBuf::new(&mut scratch[..want]);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
            self.early = Bytes::copy_from_slice(rb.filled());
            Poll::Ready(Ok(self.early.len()))
        })
    }

    /// Reads at most `limit` bytes into `dst`: the early bytes first, then the
    /// connection.
    fn read_some(&mut self, cx: &mut Context<'_>, dst: &mut [u8]) -> Poll<io::Result<usize>> {
        if !self.early.is_empty() {
            let n = dst.len().min(self.early.len());
            dst[..n].copy_from_slice(&self.early[..n]);
            self.early.advance(n);
            if self.early.is_empty() {
                self.early = Bytes::new();
            }
            return Poll::Ready(Ok(n));
        }
        let mut rb = ReadBuf::new(dst);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
        Poll::Ready(Ok(rb.filled().len()))
    }

    /// Reads at most `limit` bytes into `buf`'s unfilled part.
    fn read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        limit: usize,
    ) -> Poll<io::Result<usize>> {
        let dst = buf.initialize_unfilled_to(limit.min(buf.remaining()));
        let n = ready!(self.read_some(cx, dst))?;
        buf.advance(n);
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Refragment<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let start = buf.filled().len();
        loop {
            // A header to hand out first.
            if this.out_at < this.out_len {
                let from = usize::from(this.out_at)..usize::from(this.out_len);
                let n = from.len().min(buf.remaining());
                buf.put_slice(&this.out[from.start..from.start + n]);
                this.out_at += n as u8;
                if this.out_at < this.out_len {
                    return Poll::Ready(Ok(()));
                }
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let produced = buf.filled().len() > start;
            let polled = if this.remaining > 0 {
                // Inside a frame: its payload (up to the fragment's end) straight in.
                let mut limit = usize::try_from(this.remaining).unwrap_or(usize::MAX);
                if let Some(split) = this.split {
                    if split.left == 0 {
                        this.next_fragment();
                        continue;
                    }
                    limit = usize::from(split.left);
                    if this.early.is_empty() && this.remaining > limit as u64 {
                        // More fragments to come: read ahead, one read for many.
                        match this.read_ahead(cx) {
                            Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                            Poll::Pending if produced => return Poll::Ready(Ok(())),
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(Ok(_)) => {}
                        }
                    }
                }
                match this.read_into(cx, buf, limit.min(FRAGMENT)) {
                    Poll::Ready(Ok(n)) => {
                        this.passed(n);
                        Poll::Ready(Ok(()))
                    }
                    other => other.map_ok(|_| ()),
                }
            } else if this.have > 0 {
                // A header cut off by the last read: the rest of it, and no more.
                let have = usize::from(this.have);
                let need = if have < 2 {
                    2
                } else {
                    header_len(this.head[1])
                };
                if have == need {
                    let mut h = this.head;
                    this.start_frame(&mut h[..need]);
                    this.out[..need].copy_from_slice(&h[..need]);
                    (this.out_at, this.out_len, this.have) = (0, need as u8, 0);
                    continue;
                }
                let mut head = this.head;
                match this.read_some(cx, &mut head[have..need]) {
                    Poll::Ready(Ok(0)) => {
                        // The end: hand on what there is; tungstenite sees a cut frame.
                        this.out[..have].copy_from_slice(&head[..have]);
                        (this.out_at, this.out_len, this.have) = (0, have as u8, 0);
                        continue;
                    }
                    Poll::Ready(Ok(n)) => {
                        this.head = head;
                        this.have += n as u8;
                        continue;
                    }
                    other => other.map_ok(|_| ()),
                }
            } else {
                // At a frame boundary: read in place and follow the frames read.
                let at = buf.filled().len();
                match this.read_into(cx, buf, BOUNDARY_READ) {
                    Poll::Ready(Ok(0)) => Poll::Ready(Ok(())),
                    Poll::Ready(Ok(n)) => {
                        let keep = this.scan(&mut buf.filled_mut()[at..at + n]);
                        buf.set_filled(at + keep);
                        if keep == 0 {
                            continue;
                        }
                        Poll::Ready(Ok(()))
                    }
                    other => other.map_ok(|_| ()),
                }
            };
            return match polled {
                Poll::Pending if produced => Poll::Ready(Ok(())),
                other => other,
            };
        }
    }
}

impl<S> Refragment<S> {
    /// Until the next flush, writes are gathered (up to [`READ_AHEAD`] bytes at a time)
    /// instead of each going to the connection: the relay calls it before handing
    /// tungstenite a fragment that is not a message's last, so that the fragments of a
    /// message take one write, not one each. The buffer is freed once written.
    pub fn coalesce(&mut self) {
        self.coalescing = true;
    }
}

impl<S: AsyncWrite + Unpin> Refragment<S> {
    /// Writes out what [`Refragment::coalesce`] gathered, and frees it.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.gathered_out < self.gathered.len() {
            let rest = &self.gathered[self.gathered_out..];
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.gathered_out += n;
        }
        self.gathered = Vec::new();
        self.gathered_out = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Refragment<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.coalescing && this.gathered.len() < READ_AHEAD {
            this.gathered.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        // In order: what was gathered first.
        ready!(this.poll_drain(cx))?;
        if this.coalescing {
            this.gathered.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        this.coalescing = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
