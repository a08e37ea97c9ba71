//! What a leg reads, re-cut so that tungstenite never holds a large frame.
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
        }
    }

    /// A frame's header `h` (whole) was read: decides whether the frame is split and
    /// if so rewrites `h` in place as its first fragment's header (same length form).
    fn start_frame(&mut self, h: &mut [u8]) {
        let (len, mask) = parse(h);
        self.remaining = len;
        self.offset = 0;
        self.split = None;
        let (first, opcode) = (h[0], h[0] & 0x0f);
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
mod tests {
    use super::*;

    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
    use tokio_tungstenite::tungstenite::{Error as WsError, Message};
    use tokio_tungstenite::WebSocketStream;

    /// Hands out `input` in reads of the sizes in `sizes` (in turn), `Pending` (after
    /// waking) before every other one; writes are dropped.
    struct Chunked {
        input: Vec<u8>,
        at: usize,
        sizes: Vec<usize>,
        turn: usize,
        pending: bool,
    }

    impl Chunked {
        fn new(input: Vec<u8>, sizes: &[usize]) -> Self {
            Self {
                input,
                at: 0,
                sizes: sizes.to_vec(),
                turn: 0,
                pending: false,
            }
        }
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.pending = !self.pending;
            if self.pending {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let size = self.sizes[self.turn % self.sizes.len()];
            self.turn += 1;
            let n = size.min(buf.remaining()).min(self.input.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.input[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Chunked {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A frame: `first` (FIN, RSV, opcode), the length in its shortest form (or the
    /// 64-bit one with `long`), masked with `mask`.
    fn frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>, long: bool) -> Vec<u8> {
        let m = if mask.is_some() { 0x80 } else { 0 };
        let mut f = vec![first];
        match payload.len() {
            n if long => {
                f.push(m | 127);
                f.extend((n as u64).to_be_bytes());
            }
            n @ 0..=125 => f.push(m | n as u8),
            n @ 126..=65535 => {
                f.push(m | 126);
                f.extend((n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend((n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(k) => {
                f.extend(k);
                f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => f.extend(payload),
        }
        f
    }

    const MAX: usize = 1 << 20;

    /// The messages tungstenite reads from `input` (in `sizes` reads), through the
    /// adapter or not, and the kind of the error that ended them (`None`: the end).
    async fn read(
        role: Role,
        input: &[u8],
        sizes: &[usize],
        through: bool,
    ) -> (Vec<Message>, Option<String>) {
        let config = WebSocketConfig::default()
            .read_buffer_size(super::super::READ_BUFFER)
            .max_message_size(Some(MAX))
            .max_frame_size(Some(MAX));
        let chunked = Chunked::new(input.to_vec(), sizes);
        let mut messages = Vec::new();
        let error = if through {
            let adapter = Refragment::new(chunked, Bytes::new(), MAX);
            let mut ws = WebSocketStream::from_raw_socket(adapter, role, Some(config)).await;
            loop {
                match ws.next().await {
                    Some(Ok(m)) => messages.push(m),
                    Some(Err(e)) => break Some(kind(&e)),
                    None => break None,
                }
            }
        } else {
            let mut ws = WebSocketStream::from_raw_socket(chunked, role, Some(config)).await;
            loop {
                match ws.next().await {
                    Some(Ok(m)) => messages.push(m),
                    Some(Err(e)) => break Some(kind(&e)),
                    None => break None,
                }
            }
        };
        (messages, error)
    }

    /// What a connection is closed with for `e`: the error class, and for protocol
    /// errors which one (sizes in capacity errors may differ: a message over the limit
    /// is caught at the fragment that crosses it).
    fn kind(e: &WsError) -> String {
        match e {
            WsError::Capacity(_) => "capacity".into(),
            WsError::Utf8(_) => "utf8".into(),
            other => other.to_string(),
        }
    }

    /// The adapter's output for `input`, read with reads of `sizes` bytes (at least 14,
    /// as tungstenite's at a frame boundary).
    fn output(input: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut a = Refragment::new(
            Chunked::new(input.to_vec(), &[7, 4096, 1, 100]),
            Bytes::new(),
            MAX,
        );
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        let mut turn = 0;
        loop {
            let mut space = vec![0u8; sizes[turn % sizes.len()]];
            turn += 1;
            let mut rb = ReadBuf::new(&mut space);
            match Pin::new(&mut a).poll_read(&mut cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return out,
                Poll::Ready(Ok(())) => out.extend_from_slice(rb.filled()),
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Pending => {}
            }
        }
    }

    /// The frames in `bytes`: (first byte, payload length).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u64)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let hl = header_len(bytes[1]);
            let (len, _) = parse(&bytes[..hl]);
            out.push((bytes[0], len));
            bytes = &bytes[hl + len as usize..];
        }
        out
    }

    /// A small deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// At most `len` bytes of UTF-8 with one-, two-, three- and four-byte characters, so
    /// that fragment boundaries fall inside characters.
    fn text(len: usize) -> Vec<u8> {
        let s = "aé€😀".repeat(len / 10 + 1);
        let mut end = len;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.as_bytes()[..end].to_vec()
    }

    #[tokio::test]
    async fn large_frames_are_handed_on_as_fragments_and_read_the_same() {
        let key = Some([0x12, 0x34, 0x56, 0x78]);
        let big_text = text((1 << 20) - 40);
        let binary: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        for (role, mask) in [(Role::Server, key), (Role::Client, None)] {
            let mut input = Vec::new();
            // Whole messages, large: text (64-bit length form), binary (16-bit form).
            input.extend(frame(0x81, &big_text, mask, false));
            input.extend(frame(0x82, &binary[..60_000], mask, false));
            input.extend(frame(0x82, &binary, mask, true));
            // Three fragments each larger than FRAGMENT, a ping between them.
            let t = text(30_000);
            let t = &t[..];
            input.extend(frame(0x01, &t[..10_001], mask, false));
            input.extend(frame(0x89, b"ping", mask, false));
            input.extend(frame(0x00, &t[10_001..20_003], mask, false));
            input.extend(frame(0x80, &t[20_003..], mask, false));
            // Small ones, and one just over a fragment.
            input.extend(frame(0x81, b"small", mask, false));
            input.extend(frame(0x82, &binary[..FRAGMENT + 1], mask, false));
            input.extend(frame(0x82, &binary[..FRAGMENT], mask, false));
            let messages = 8;
            let close = frame(0x88, b"\x03\xe8bye", mask, false);
            for sizes in [&[4096][..], &[13, 2000, 5], &[FRAGMENT, 3, FRAGMENT + 7]] {
                let input = [&input[..], &close].concat();
                let direct = read(role, &input, sizes, false).await;
                let through = read(role, &input, sizes, true).await;
                assert!(matches!(direct.0.last(), Some(Message::Close(Some(_)))));
                assert_eq!(direct.0.len(), messages + 1, "{:?}", direct.1);
                assert!(
                    direct == through,
                    "{role:?} {sizes:?}: not the same messages"
                );
            }
            // tungstenite sees no data frame over FRAGMENT, and the same bytes otherwise.
            for sizes in [&[4096][..], &[14], &[14, 3000, 100]] {
                let out = output(&input, sizes);
                for (first, len) in frames(&out) {
                    assert!(
                        first & 0x08 != 0 || len <= FRAGMENT as u64,
                        "{first:#x} {len}"
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn random_streams_read_the_same_through_the_adapter() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..300 {
            let role = if case % 2 == 0 {
                Role::Server
            } else {
                Role::Client
            };
            let mut input = Vec::new();
            for _ in 0..1 + rng.below(6) {
                // Mostly well-formed frames; now and then RSV bits, odd opcodes, a wrong
                // mask, a frame over the limit.
                let opcode = [0x1, 0x2, 0x0, 0x9, 0xa, 0x3, 0xb][match rng.below(20) {
                    0..=6 => 0,
                    7..=12 => 1,
                    13..=15 => 2,
                    16 => 3,
                    17 => 4,
                    18 => 5,
                    _ => 6,
                }];
                let fin = if rng.below(4) == 0 { 0 } else { 0x80 };
                let rsv = if rng.below(30) == 0 { 0x40 } else { 0 };
                let len = match rng.below(10) {
                    0..=3 => rng.below(130),
                    4..=7 => rng.below(3 * FRAGMENT as u64),
                    8 => rng.below(70_000),
                    _ => MAX as u64 - 10 + rng.below(20),
                } as usize;
                let payload = if opcode == 0x1 && rng.below(8) != 0 {
                    text(len)
                } else {
                    (0..len).map(|_| rng.next() as u8).collect()
                };
                let masked = (role == Role::Server) != (rng.below(40) == 0);
                let mask = masked.then(|| (rng.next() as u32).to_be_bytes());
                input.extend(frame(fin | rsv | opcode, &payload, mask, rng.below(5) == 0));
            }
            let sizes = [1 + rng.below(5000) as usize, 1 + rng.below(20) as usize];
            let direct = read(role, &input, &sizes, false).await;
            let through = read(role, &input, &sizes, true).await;
            assert_eq!(direct.0, through.0, "case {case}: messages");
            // A text message both over the limit and not UTF-8 is refused either way;
            // its fragments may show the bad bytes before the limit is crossed.
            let either =
                direct.1.as_deref() == Some("capacity") && through.1.as_deref() == Some("utf8");
            assert!(
                direct.1 == through.1 || either,
                "case {case}: {:?} {:?}",
                direct.1,
                through.1
            );
        }
    }

    #[tokio::test]
    async fn early_bytes_come_first_and_a_cut_header_is_passed_on() {
        let k = Some([9, 8, 7, 6]);
        let mut all = frame(0x82, &vec![5u8; 3 * FRAGMENT], k, false);
        all.extend(frame(0x81, b"after", k, false));
        // The first 3 bytes (a cut header) were read with the handshake.
        let (early, rest) = all.split_at(3);
        let adapter = Refragment::new(
            Chunked::new(rest.to_vec(), &[5, 100]),
            Bytes::copy_from_slice(early),
            MAX,
        );
        let mut ws = WebSocketStream::from_raw_socket(adapter, Role::Server, None).await;
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::binary(vec![5u8; 3 * FRAGMENT])
        );
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("after"));
        // A stream that ends inside a header: tungstenite sees it cut, as without.
        let cut = frame(0x82, &[1; 300], k, false);
        let direct = read(Role::Server, &cut[..3], &[1], false).await;
        let through = read(Role::Server, &cut[..3], &[1], true).await;
        assert_eq!(direct, through);
        assert!(direct.1.is_some());
    }

    /// Records each write it gets.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(b.to_vec());
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn coalesced_writes_go_out_at_the_flush_in_order_and_are_freed() {
        use tokio::io::AsyncWriteExt;
        let mut a = Refragment::new(Writes::default(), Bytes::new(), MAX);
        a.write_all(b"plain").await.unwrap();
        assert_eq!(a.inner.0, [b"plain".to_vec()]);
        a.coalesce();
        a.write_all(b"one ").await.unwrap();
        a.write_all(b"two ").await.unwrap();
        assert_eq!(a.inner.0.len(), 1, "nothing written before the flush");
        a.flush().await.unwrap();
        assert_eq!(a.inner.0[1], b"one two ");
        assert_eq!(a.gathered.capacity(), 0, "freed");
        // After the flush, writes go straight through again.
        a.write_all(b"three").await.unwrap();
        assert_eq!(a.inner.0[2], b"three");
        // More than READ_AHEAD gathered: written out before more is taken, in order.
        a.coalesce();
        let chunk = vec![7u8; 40_000];
        for _ in 0..3 {
            a.write_all(&chunk).await.unwrap();
        }
        a.flush().await.unwrap();
        let all: Vec<u8> = a.inner.0[3..].concat();
        assert_eq!(all, vec![7u8; 120_000]);
        assert_eq!(a.inner.0.len(), 5, "two writes, not three");
        assert_eq!(a.gathered.capacity(), 0);
    }
}
