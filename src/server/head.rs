//! Step 1 of the flow: the client's request head read with `httparse`, and sluice's answer written, on the socket itself.
//!
//! A connection carries one request (every answer but the `101` closes it), so there is
//! no keep-alive or pipelining to serve: [`read_head`] reads until the head is whole
//! (at most `protection.max_header_bytes`), [`write_response`] writes the answer, and
//! after a `101` the socket goes to the relay in the same task, with whatever the client
//! sent after its head. No HTTP connection task, no upgrade hand-off.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::stream::Stream;

/// The most header lines read from a request head (hyper's default too): more is `431`.
const MAX_HEADERS: usize = 100;
/// The longest request target `http::Uri` takes: longer is `414`.
pub(super) const MAX_TARGET: usize = u16::MAX as usize - 1;

/// Why no request could be read.
#[derive(Debug)]
pub(super) enum HeadError {
    /// The head is over `max_header_bytes` or has more than [`MAX_HEADERS`] lines: `431`.
    TooLarge,
    /// Not an HTTP/1.x request head: `400`.
    Malformed(String),
    /// A request target longer than [`MAX_TARGET`]: `414` (hyper's answer too).
    TargetTooLong,
    /// The client closed the connection or it failed before a whole head came.
    Gone,
}

/// A request head as sluice serves it.
#[derive(Debug)]
pub(super) struct Head {
    /// Method, target, version and headers (no body: a GET upgrade has none).
    pub(super) request: Request<()>,
    /// Whether the head announces a body (`Content-Length` above 0 or
    /// `Transfer-Encoding`): a WebSocket upgrade with one is refused, so that no body
    /// bytes are relayed as frames.
    pub(super) has_body: bool,
}

/// Reads one request head into `buf`; on success `buf` keeps what came after it.
pub(super) async fn read_head(
    stream: &mut Stream,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Head, HeadError> {
    // Where the bytes not yet seen by the parser begin. A head ends with a line end, so
    // it is parsed again only when new bytes bring one (and on the first bytes, so that
    // what is not HTTP is refused at once): a head dripped a byte at a time is parsed
    // once per line, not once per byte.
    let mut unseen = 0;
    loop {
        if !buf.is_empty() && (unseen == 0 || buf[unseen..].contains(&b'\n')) {
            if let Some((len, head)) = parse(buf)? {
                buf.advance(len);
                return Ok(head);
            }
        }
        unseen = buf.len();
        if buf.len() >= max {
            return Err(HeadError::TooLarge);
        }
        buf.reserve(1024.min(max - buf.len()).max(256));
        // Never read past the limit: what the client sends beyond it is not taken.
        let room = (max - buf.len()).min(buf.capacity() - buf.len());
        let mut limited = (&mut *stream).take(room as u64);
        match limited.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(HeadError::Gone),
            Ok(_) => {}
        }
    }
}

/// One request head from the start of `buf`: `None` while it is incomplete.
fn parse(buf: &[u8]) -> Result<Option<(usize, Head)>, HeadError> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut lines);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(format!("malformed request head: {e}"))),
    };
    let malformed = |what: &str| HeadError::Malformed(format!("malformed request head: {what}"));
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| malformed("method"))?;
    let target = req.path.unwrap_or_default();
    if target.len() > MAX_TARGET {
        return Err(HeadError::TargetTooLong);
    }
    let uri: Uri = target.parse().map_err(|_| malformed("request target"))?;
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let mut has_body = false;
    // One copy of the head that every header value points into, instead of one
    // allocation per value.
    let shared = Bytes::copy_from_slice(&buf[..len]);
    for line in req.headers.iter() {
        let name =
            HeaderName::from_bytes(line.name.as_bytes()).map_err(|_| malformed("header name"))?;
        // httparse's value is a slice of `buf`: the same range of `shared`.
        let at = (line.value.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
        let value = match shared.get(at..at + line.value.len()) {
            Some(v) if !v.is_empty() => {
                HeaderValue::from_maybe_shared(shared.slice(at..at + v.len()))
            }
            _ => HeaderValue::from_bytes(line.value),
        }
        .map_err(|_| malformed("header value"))?;
        if name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH && line.value.iter().any(|b| *b != b'0'))
        {
            has_body = true;
        }
        headers.append(name, value);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some((len, Head { request, has_body })))
}

/// Writes `resp` and flushes it. Every answer but the `101` ends the connection, so it
/// says `Connection: close` and how long its body is; a `HEAD` request gets no body.
pub(super) async fn write_response(
    stream: &mut Stream,
    resp: Response<Full<Bytes>>,
    head_only: bool,
) -> std::io::Result<()> {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let upgrade = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !upgrade {
        if !parts.headers.contains_key(header::CONNECTION) {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\ndate: ");
        out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only && !upgrade {
        out.extend_from_slice(&body);
    }
    stream.write_all(&out).await?;
    stream.flush().await
}

/// Reads what the client sends while its request is being served, into `buf` (up to
/// `max` bytes: a client may not make sluice hold more), and returns once it has closed
/// its side or the connection failed. Bytes read stay in `buf`: after a `101` they are
/// the first the relay passes on.
pub(super) async fn client_gone(stream: &mut Stream, buf: &mut BytesMut, max: usize) {
    loop {
        if buf.len() >= max {
            // Full: stop reading (the kernel's buffers push back) and wait for the end.
            return std::future::pending().await;
        }
        buf.reserve(256);
        let room = (max - buf.len()).min(buf.capacity() - buf.len());
        match (&mut *stream).take(room as u64).read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &[u8]) -> Result<Option<(usize, Head)>, HeadError> {
        parse(head)
    }

    /// What `read_head` makes of `chunks` written one by one by a client on loopback.
    async fn read_from(chunks: Vec<Vec<u8>>) -> (Result<Head, HeadError>, Vec<u8>) {
        use tokio::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            for chunk in chunks {
                if tcp.write_all(&chunk).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut stream = Stream::Plain(tcp);
        let mut buf = BytesMut::new();
        let head = read_head(&mut stream, &mut buf, 8192).await;
        client.abort();
        (head, buf.to_vec())
    }

    #[tokio::test]
    async fn a_dripped_head_is_read_and_garbage_is_refused_at_once() {
        let head = b"GET /t/a/ HTTP/1.1\r\nHost: s\r\nUpgrade: websocket\r\n\r\n\x81";
        let drip = head.iter().map(|b| vec![*b]).collect();
        let (read, rest) = read_from(drip).await;
        let read = read.unwrap();
        assert_eq!(read.request.uri(), "/t/a/");
        assert_eq!(read.request.headers()["upgrade"], "websocket");
        assert!(rest.is_empty() || rest == b"\x81", "{rest:?}");
        // No line end at all, and the client keeps the connection open: still a 400 on
        // the first bytes, not a wait for the header timeout.
        let started = std::time::Instant::now();
        let (read, _) = read_from(vec![
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec()
        ])
        .await;
        assert!(matches!(read, Err(HeadError::Malformed(_))), "{read:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn a_head_is_read_whole_and_what_follows_is_left() {
        let bytes = b"GET /t/a/ws?x=1 HTTP/1.1\r\nHost: s\r\nUpgrade: websocket\r\nX-Two: 1\r\nx-two: 2\r\n\r\n\x81\x85";
        let (len, head) = parsed(bytes).unwrap().unwrap();
        assert_eq!(&bytes[len..], b"\x81\x85");
        let req = head.request;
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/t/a/ws?x=1");
        assert_eq!(req.version(), Version::HTTP_11);
        let twos: Vec<_> = req.headers().get_all("x-two").iter().collect();
        assert_eq!(twos, ["1", "2"]);
        assert_eq!(req.headers()["host"], "s");
        assert_eq!(req.headers()["upgrade"], "websocket");
        assert!(!head.has_body);
        for partial in [&bytes[..10], &bytes[..40]] {
            assert!(parsed(partial).unwrap().is_none());
        }
    }

    #[test]
    fn bodies_bad_heads_and_too_many_lines_are_told_apart() {
        for with_body in [
            &b"GET / HTTP/1.1\r\ncontent-length: 2\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            assert!(parsed(with_body).unwrap().unwrap().1.has_body);
        }
        assert!(
            !parsed(b"GET / HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
                .unwrap()
                .unwrap()
                .1
                .has_body
        );
        for bad in [
            &b"\x16\x03\x01garbage\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
        ] {
            assert!(
                matches!(parsed(bad), Err(HeadError::Malformed(_))),
                "{bad:?}"
            );
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parsed(&many), Err(HeadError::TooLarge)));
    }
}
