//! Step 6 of the flow (`accept` mode): tests of the re-fragmenting adapter.
//!
//! Tests of the re-fragmenting adapter (step 6, `accept` mode): frames re-cut as they pass.

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
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
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
