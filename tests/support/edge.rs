//! The recording WebSocket edge the tests put behind sluice (flow step 5's far side).
//!
//! The edge is a real tokio-tungstenite server. It records every handshake request it
//! receives (request target and headers), counts live sessions, records the close frames
//! clients send it, and takes its script from the messages it receives:
//! `"close-me"` makes it close the session with 1000 "bye", `"close-with CODE REASON"`
//! with that code and reason, `"drop-me"` makes it drop the TCP connection without a
//! close frame; anything else is echoed. Every data message and ping it receives is
//! recorded, in order, with its arrival time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::server_tls;

/// A handshake the edge received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Request target: path and query.
    pub target: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// When the edge received it.
    pub at: tokio::time::Instant,
}

impl Recorded {
    /// Everything the edge saw, as one string (for "never seen" checks).
    pub fn dump(&self) -> String {
        format!("{} {:?}", self.target, self.headers)
    }

    /// The tenant sluice named in its identity header.
    pub fn tenant(&self) -> &str {
        self.headers
            .get("x-tenant-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The value of query parameter `key` in the request target.
    pub fn query(&self, key: &str) -> Option<String> {
        let (_, query) = self.target.split_once('?')?;
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }
}

/// How the edge answers handshakes.
#[derive(Debug, Clone, Default)]
pub struct EdgeOptions {
    /// Refuse handshakes with this status (and `Retry-After`, `x-trace-id: trace-1`).
    pub refuse_with: Option<u16>,
    /// Refuse only this many first handshakes (all when `None`).
    pub refuse_first: Option<usize>,
    /// Refuse only handshakes whose `x-tenant-id` is this tenant (all when `None`).
    pub refuse_tenant: Option<String>,
    /// Refuse only handshakes whose request target contains this (all when `None`).
    pub refuse_path: Option<String>,
    /// The `Retry-After` of refusals in seconds (7 when `None`).
    pub retry_after: Option<u64>,
    /// Refusals carry no `Retry-After` at all.
    pub omit_retry_after: bool,
    /// Handshakes whose request target contains this are read, recorded and never
    /// answered (the connection stays open; plain TCP only).
    pub stall_path: Option<String>,
    /// Milliseconds every handshake waits before it is read (changeable while running).
    pub delay_ms: Option<Arc<AtomicU64>>,
    /// TLS: certificate chain and key, PEM.
    pub tls: Option<(String, String)>,
}

/// A running edge.
#[derive(Debug, Clone)]
pub struct Edge {
    /// Its address.
    pub addr: SocketAddr,
    /// Handshakes received, in order.
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// Sessions open right now.
    pub live: Arc<AtomicUsize>,
    /// Most sessions ever open at once.
    pub peak: Arc<AtomicUsize>,
    /// Close frames received from clients: (code, reason).
    pub closes: Arc<Mutex<Vec<(u16, String)>>>,
    /// Data messages and pings received, in order, with their arrival times.
    pub messages: Arc<Mutex<Vec<(Message, tokio::time::Instant)>>>,
    /// TCP connections accepted (before any delay or handshake).
    pub accepted: Arc<AtomicUsize>,
}

impl Edge {
    /// The data messages received so far, as text (binary ones lossily), in order.
    pub fn texts(&self) -> Vec<String> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(m, _)| match m {
                Message::Text(t) => Some(t.to_string()),
                Message::Binary(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect()
    }

    /// `ws://127.0.0.1:port`, or `wss://` with TLS.
    pub fn url(&self, tls: bool) -> String {
        format!("{}://{}", if tls { "wss" } else { "ws" }, self.addr)
    }

    /// The handshakes recorded so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits until `cond` holds on the edge, up to 10 s.
    pub async fn wait_for(&self, what: &str, cond: impl Fn(&Edge) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Starts an echo edge on 127.0.0.1:0.
pub async fn edge() -> Edge {
    edge_with(EdgeOptions::default()).await
}

/// Starts an edge with options on 127.0.0.1:0.
pub async fn edge_with(options: EdgeOptions) -> Edge {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let edge = Edge {
        addr: listener.local_addr().unwrap(),
        requests: Arc::default(),
        live: Arc::default(),
        peak: Arc::default(),
        closes: Arc::default(),
        messages: Arc::default(),
        accepted: Arc::default(),
    };
    let acceptor = options
        .tls
        .as_ref()
        .map(|(cert, key)| tokio_rustls::TlsAcceptor::from(Arc::new(server_tls(cert, key))));
    let e = edge.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            e.accepted.fetch_add(1, Ordering::SeqCst);
            let e = e.clone();
            let options = options.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Some(path) = &options.stall_path {
                    if let Some(recorded) = stalled(&tcp, path).await {
                        e.requests.lock().unwrap().push(recorded);
                        // Hold the connection, answering nothing.
                        let _held = tcp;
                        std::future::pending::<()>().await;
                        return;
                    }
                }
                if let Some(delay) = &options.delay_ms {
                    let ms = delay.load(Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                match acceptor {
                    Some(a) => {
                        if let Ok(tls) = a.accept(tcp).await {
                            serve_edge(tls, e, options).await;
                        }
                    }
                    None => serve_edge(tcp, e, options).await,
                }
            });
        }
    });
    edge
}

/// Peeks at a plain connection's request head (without consuming it): the handshake as
/// recorded when its target contains `path`, else `None`.
async fn stalled(tcp: &TcpStream, path: &str) -> Option<Recorded> {
    let mut buf = vec![0u8; 16 * 1024];
    let head = loop {
        let n = tcp.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            break text[..end].to_owned();
        }
        if n == buf.len() {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut lines = head.split("\r\n");
    let target = lines.next()?.split(' ').nth(1)?.to_owned();
    if !target.contains(path) {
        return None;
    }
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.trim().as_bytes()),
                http::HeaderValue::from_str(value.trim()),
            ) {
                headers.append(n, v);
            }
        }
    }
    Some(Recorded {
        target,
        headers,
        at: tokio::time::Instant::now(),
    })
}

// tungstenite fixes the callback's error type.
#[allow(clippy::result_large_err)]
async fn serve_edge<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    edge: Edge,
    options: EdgeOptions,
) {
    let requests = edge.requests.clone();
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        requests.lock().unwrap().push(Recorded {
            target: req.uri().to_string(),
            headers: req.headers().clone(),
            at: tokio::time::Instant::now(),
        });
        let nth = requests.lock().unwrap().len();
        let tenant = req
            .headers()
            .get("x-tenant-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let refuse = options
            .refuse_with
            .filter(|_| options.refuse_first.is_none_or(|first| nth <= first))
            .filter(|_| options.refuse_tenant.as_deref().is_none_or(|t| t == tenant))
            .filter(|_| {
                options
                    .refuse_path
                    .as_deref()
                    .is_none_or(|p| req.uri().to_string().contains(p))
            });
        if let Some(status) = refuse {
            let mut err = ErrorResponse::new(Some("refused by test edge".into()));
            *err.status_mut() = http::StatusCode::from_u16(status).unwrap();
            if !options.omit_retry_after {
                let after = options.retry_after.unwrap_or(7).to_string();
                err.headers_mut()
                    .insert("retry-after", after.parse().unwrap());
            }
            err.headers_mut()
                .insert("x-trace-id", "trace-1".parse().unwrap());
            return Err(err);
        }
        let offered = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_owned())
            .collect::<Vec<_>>();
        if offered.iter().any(|p| p == "sip") {
            resp.headers_mut()
                .insert("sec-websocket-protocol", "sip".parse().unwrap());
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let live = edge.live.fetch_add(1, Ordering::SeqCst) + 1;
    edge.peak.fetch_max(live, Ordering::SeqCst);
    while let Some(msg) = ws.next().await {
        if let Ok(m @ (Message::Text(_) | Message::Binary(_) | Message::Ping(_))) = &msg {
            edge.messages
                .lock()
                .unwrap()
                .push((m.clone(), tokio::time::Instant::now()));
        }
        match msg {
            Ok(Message::Text(t)) if t.as_str() == "close-me" => {
                let _ = ws
                    .close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "bye".into(),
                    }))
                    .await;
                // Let the closing handshake complete.
                while let Some(Ok(_)) = ws.next().await {}
                break;
            }
            Ok(Message::Text(t)) if t.as_str().starts_with("close-with ") => {
                let mut words = t.as_str()["close-with ".len()..].splitn(2, ' ');
                let code: u16 = words.next().unwrap().parse().unwrap();
                let reason = words.next().unwrap_or("").to_owned();
                let _ = ws
                    .close(Some(CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.into(),
                    }))
                    .await;
                while let Some(Ok(_)) = ws.next().await {}
                break;
            }
            Ok(Message::Text(t)) if t.as_str() == "drop-me" => break,
            Ok(Message::Close(frame)) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                edge.closes.lock().unwrap().push((code, reason));
                // tungstenite answers the close; drain until the stream ends.
                while let Some(Ok(_)) = ws.next().await {}
                break;
            }
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(m).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    edge.live.fetch_sub(1, Ordering::SeqCst);
}
