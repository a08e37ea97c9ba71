//! Step 5 of the flow: one handshake attempt on one endpoint.
//!
//! [`Connector::attempt`] connects over TCP (and TLS for `wss://`), writes the request
//! of [`endpoint_request`] on the socket (in plain text together with the connect, when
//! the kernel completes the connect at once: `open`) and reads the answer's head with
//! `httparse`; a `101` leaves the socket to the relay as it is (no connection task, no
//! upgrade hand-off), any other status becomes [`AttemptError::Status`] with its
//! `Retry-After` and trace id. Which endpoint, how often and for how long is [`super::retry`]'s
//! business.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use super::request::UpstreamRequest;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::request::endpoint_request;
use super::AttemptError;
use crate::config::Endpoint;
use crate::relay::Leg;
use crate::stream::Stream;

/// Headers an edge may use to name its trace id; the first present is logged.
pub const TRACE_HEADERS: [&str; 5] = [
    "x-trace-id",
    "x-amzn-trace-id",
    "x-b3-traceid",
    "traceparent",
    "x-correlation-id",
];
/// Response headers of the upstream's `101` passed on to the client.
pub const HANDSHAKE_RESPONSE_HEADERS: [HeaderName; 3] = [
    header::SEC_WEBSOCKET_ACCEPT,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::SEC_WEBSOCKET_EXTENSIONS,
];

/// Opens upstream WebSockets. Built once; shared by all connections.
#[derive(Clone)]
pub struct Connector {
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

// === impl Connector ===

impl Connector {
    /// A connector using this TLS client config for `wss://` endpoints.
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            tls: tokio_rustls::TlsConnector::from(tls),
        }
    }

    /// One attempt; sets `connected` once TCP and TLS are up, before the request goes.
    pub(super) async fn attempt(
        &self,
        endpoint: &Endpoint,
        req: &UpstreamRequest,
        connected: &mut bool,
    ) -> Result<(Leg, HeaderMap), AttemptError> {
        let request = endpoint_request(endpoint, req);
        // In plain text the request goes with the connect (`open`); TLS speaks first.
        let first: &[u8] = if endpoint.tls { &[] } else { &request };
        let (tcp, sent) = open((endpoint.host.as_str(), endpoint.port), first)
            .await
            .map_err(AttemptError::Connect)?;
        let mut stream = if endpoint.tls {
            let name = ServerName::try_from(endpoint.host.clone())
                .map_err(|_| AttemptError::ServerName(endpoint.host.clone()))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(AttemptError::Tls)?;
            Stream::ClientTls(Box::new(tls))
        } else {
            Stream::Plain(tcp)
        };
        *connected = true;
        if sent < request.len() {
            stream
                .write_all(&request[sent..])
                .await
                .map_err(AttemptError::Http)?;
        }
        let (answer, early) = read_response(&mut stream).await?;
        if answer.status != StatusCode::SWITCHING_PROTOCOLS {
            return Err(AttemptError::Status {
                status: answer.status,
                retry_after: answer.retry_after,
                trace_id: answer.trace_id,
            });
        }
        Ok((Leg { stream, early }, answer.headers))
    }
}

/// TCP to the first of `addr`'s addresses that answers, with `TCP_NODELAY` (signaling
/// messages are small and latency-bound), and as much of `first` sent as the socket took
/// at once (the count is returned; the caller writes the rest).
///
/// `first` is tried right after `connect(2)`, before waiting for the socket to become
/// writable: when the kernel completed the TCP handshake inside `connect` (an edge on
/// this host or on loopback), the request goes without a wake-up of the task and
/// without the `getsockopt(SO_ERROR)` that confirms a connect. Otherwise (a remote
/// edge) that `send` finds the connect still in progress and sends nothing, and the
/// connect is confirmed as `TcpStream::connect` does: writable, then `SO_ERROR`.
async fn open(addr: (&str, u16), first: &[u8]) -> std::io::Result<(TcpStream, usize)> {
    let mut last = None;
    // An IP address is parsed, not looked up; a name is resolved as tokio's connect does.
    for addr in tokio::net::lookup_host(addr).await? {
        match open_one(addr, first).await {
            Ok(open) => return Ok(open),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the name resolved to no address",
        )
    }))
}

async fn open_one(addr: SocketAddr, first: &[u8]) -> std::io::Result<(TcpStream, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let sent = if first.is_empty() {
        0
    } else {
        match socket.send_with_flags(first, libc::MSG_NOSIGNAL) {
            Ok(n) => n,
            // Still connecting: the request waits until the connect is confirmed.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            // The connect failed (refused, unreachable): nothing was sent.
            Err(e) => return Err(e),
        }
    };
    let tcp = TcpStream::from_std(socket.into())?;
    if sent == 0 {
        tcp.writable().await?;
        if let Some(e) = tcp.take_error()? {
            return Err(e);
        }
    }
    Ok((tcp, sent))
}

/// The most an upstream's response head may take: an edge's `101` is a few hundred bytes,
/// an error page's head a few kilobytes.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// The most header lines read from a response head (hyper's default too).
const MAX_RESPONSE_HEADERS: usize = 100;

/// What sluice keeps of the upstream's final response head.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    /// [`HANDSHAKE_RESPONSE_HEADERS`], for the client's `101`.
    headers: HeaderMap,
    retry_after: Option<Duration>,
    trace_id: Option<String>,
}

/// Reads the response head to the request just written: informational answers other
/// than `101` (`100`, `103`) are skipped; the bytes after the final head (the first
/// frames, when the edge speaks first) are returned to be relayed before anything else.
/// The buffer lives only for the handshake: an idle session holds none.
async fn read_response(stream: &mut Stream) -> Result<(Answer, Bytes), AttemptError> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        // Nothing to parse before the first read (the parser's header array alone is
        // 3 KiB to initialise).
        if !buf.is_empty() {
            if let Some((len, answer)) = parse_response(&buf)? {
                let _ = buf.split_to(len);
                if answer.status.is_informational()
                    && answer.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                return Ok((answer, buf.freeze()));
            }
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(AttemptError::Http(invalid(format!(
                "response head longer than {MAX_RESPONSE_HEAD} bytes"
            ))));
        }
        buf.reserve(1024);
        if stream
            .read_buf(&mut buf)
            .await
            .map_err(AttemptError::Http)?
            == 0
        {
            return Err(AttemptError::Http(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the upstream closed the connection before it answered",
            )));
        }
    }
}

/// One response head from the start of `buf`: `None` while it is incomplete, else its
/// length and what sluice keeps of it.
fn parse_response(buf: &[u8]) -> Result<Option<(usize, Answer)>, AttemptError> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut lines);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(AttemptError::Http(invalid(format!(
                "malformed response head: {e}"
            ))))
        }
    };
    let status = response
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| AttemptError::Http(invalid("malformed response status".into())))?;
    let mut answer = Answer {
        status,
        headers: HeaderMap::new(),
        retry_after: None,
        trace_id: None,
    };
    let mut trace_rank = usize::MAX;
    for line in response.headers.iter() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(name) = HANDSHAKE_RESPONSE_HEADERS
                .iter()
                .find(|n| line.name.eq_ignore_ascii_case(n.as_str()))
            {
                let value = HeaderValue::from_bytes(line.value)
                    .map_err(|_| AttemptError::Http(invalid(format!("malformed {name} header"))))?;
                answer.headers.append(name.clone(), value);
            }
        } else if line.name.eq_ignore_ascii_case(header::RETRY_AFTER.as_str()) {
            answer.retry_after = answer.retry_after.or_else(|| retry_after(line.value));
        } else if let Some(rank) = TRACE_HEADERS
            .iter()
            .position(|h| line.name.eq_ignore_ascii_case(h))
        {
            // The first of TRACE_HEADERS present, in that list's order; printable only.
            if trace_rank > rank {
                if let Some(v) = HeaderValue::from_bytes(line.value)
                    .ok()
                    .and_then(|v| v.to_str().map(|v| v.chars().take(128).collect()).ok())
                {
                    trace_rank = rank;
                    answer.trace_id = Some(v);
                }
            }
        }
    }
    Ok(Some((len, answer)))
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// `Retry-After` in delta-seconds (the form edges use for 503/429), at most a day here
/// (the longest `upstream.max_pause`); [`Connector::connect`] caps it at `max_pause`.
pub(super) fn retry_after(value: &[u8]) -> Option<Duration> {
    let secs: u64 = std::str::from_utf8(value).ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(
        secs.min(crate::config::MAX_MAX_PAUSE.as_secs()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// What `read_response` makes of `chunks` written one by one by a server on
    /// loopback, which then closes.
    async fn answer_to(chunks: &[&[u8]]) -> Result<(Answer, Bytes), AttemptError> {
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            for chunk in &chunks {
                tcp.write_all(chunk).await.unwrap();
                tcp.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let mut stream = Stream::Plain(TcpStream::connect(addr).await.unwrap());
        let result = read_response(&mut stream).await;
        server.await.unwrap();
        result
    }

    #[tokio::test]
    async fn a_101_in_pieces_keeps_the_handshake_headers_and_the_bytes_after_it() {
        let (answer, early) = answer_to(&[
            b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 101 Switching",
            b" Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: abc=\r\n",
            b"sec-websocket-protocol: sip\r\nx-other: 1\r\n\r\n\x81\x02hi",
        ])
        .await
        .unwrap();
        assert_eq!(answer.status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(answer.headers.len(), 2);
        assert_eq!(answer.headers[header::SEC_WEBSOCKET_ACCEPT], "abc=");
        assert_eq!(answer.headers[header::SEC_WEBSOCKET_PROTOCOL], "sip");
        assert_eq!(&early[..], b"\x81\x02hi");
    }

    #[tokio::test]
    async fn a_refusal_keeps_its_retry_after_and_the_first_trace_header() {
        let (answer, _) = answer_to(&[
            b"HTTP/1.1 503 Service Unavailable\r\ntraceparent: 00-t\r\nRetry-After: 12\r\n",
            b"X-Trace-Id: abc\r\ncontent-length: 4\r\n\r\nbusy",
        ])
        .await
        .unwrap();
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.retry_after, Some(Duration::from_secs(12)));
        assert_eq!(answer.trace_id.as_deref(), Some("abc"));
        assert!(answer.headers.is_empty());
    }

    #[tokio::test]
    async fn no_answer_a_bad_answer_or_an_endless_head_is_an_http_error() {
        let bad: [&[u8]; 3] = [
            b"HTTP/1.1 101 Switching Protocols\r\n",
            b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
        ];
        for chunk in bad {
            let e = answer_to(&[chunk]).await.unwrap_err();
            assert!(matches!(e, AttemptError::Http(_)), "{e}");
            assert!(e.request_level());
        }
        let mut long = b"HTTP/1.1 200 OK\r\nset-cookie: ".to_vec();
        long.resize(MAX_RESPONSE_HEAD + 10, b'a');
        let e = answer_to(&[&long]).await.unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
    }

    /// The request sent with the connect arrives whole and once, whether the kernel
    /// took it at once (sent == len) or the rest was written after the connect was
    /// confirmed; a request larger than the socket takes at once arrives whole too.
    #[tokio::test]
    async fn a_request_sent_with_the_connect_arrives_whole_and_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for size in [300, 8 << 20] {
            let request: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let expected = request.clone();
            let server = async {
                let (mut tcp, _) = listener.accept().await.unwrap();
                let mut got = Vec::new();
                tcp.read_to_end(&mut got).await.unwrap();
                got
            };
            let client = async {
                let (mut tcp, sent) = open(("127.0.0.1", addr.port()), &request).await.unwrap();
                assert!(tcp.nodelay().unwrap());
                tcp.write_all(&request[sent..]).await.unwrap();
                tcp.shutdown().await.unwrap();
                sent
            };
            let (got, sent) = tokio::join!(server, client);
            assert!(sent <= size);
            assert_eq!(got.len(), expected.len(), "{sent} sent with the connect");
            assert!(
                got == expected,
                "the bytes differ ({sent} sent with the connect)"
            );
        }
    }

    /// A port nobody listens on: a connect error, not an HTTP one, and nothing counted
    /// as connected (the retry loop's `ConnectTimeout`/`Connect` rather than `Http`).
    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error_before_anything_is_sent() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = open(("127.0.0.1", port), b"GET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
        let endpoint = Endpoint {
            url: format!("ws://127.0.0.1:{port}"),
            tls: false,
            host: "127.0.0.1".into(),
            port,
            authority: format!("127.0.0.1:{port}"),
            path_prefix: String::new(),
            query: String::new(),
            query_keys: Vec::new(),
        };
        let mut connected = false;
        let e = Connector::new(crate::tls::client_config(None).unwrap())
            .attempt(&endpoint, &UpstreamRequest::default(), &mut connected)
            .await
            .unwrap_err();
        assert!(matches!(e, AttemptError::Connect(_)), "{e}");
        assert!(!connected);
    }

    /// A connect the kernel does not complete at once (a remote edge's: here a listener
    /// whose accept queue is full drops the SYN, so the connect completes with the SYN's
    /// retransmission about a second later): nothing goes with the connect, and the
    /// whole request follows once the connect is confirmed.
    #[tokio::test]
    async fn a_connect_completed_later_gets_the_whole_request_after_it() {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        socket.listen(0).unwrap();
        let listener = std::net::TcpListener::from(socket);
        let addr = listener.local_addr().unwrap();
        // Takes the accept queue's one place.
        let filler = std::net::TcpStream::connect(addr).unwrap();
        let request = b"GET /late HTTP/1.1\r\nhost: edge\r\n\r\n".to_vec();
        let sending = request.clone();
        let client = tokio::spawn(async move {
            let (mut tcp, sent) = open(("127.0.0.1", addr.port()), &sending).await.unwrap();
            tcp.write_all(&sending[sent..]).await.unwrap();
            tcp.shutdown().await.unwrap();
            sent
        });
        let got = tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(listener.accept().unwrap());
            drop(filler);
            let (mut tcp, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut tcp, &mut got).unwrap();
            got
        })
        .await
        .unwrap();
        assert_eq!(
            client.await.unwrap(),
            0,
            "sent with a connect still in progress"
        );
        assert_eq!(got, request);
    }
}
