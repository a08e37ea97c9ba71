//! Shared test support: a recording WebSocket edge, sluice started in-process on
//! 127.0.0.1:0 (serving for good, or until a shutdown the test gives: [`serve`]), config
//! text from a builder ([`config`], [`tenant`]), WebSocket clients, and a test CA for
//! TLS.
//!
//! The edge is a real tokio-tungstenite server. It records every handshake request it
//! receives (request target and headers), counts live sessions, records the close frames
//! clients send it, and takes its script from the messages it receives:
//! `"close-me"` makes it close the session with 1000 "bye", `"close-with CODE REASON"`
//! with that code and reason, `"drop-me"` makes it drop the TCP connection without a
//! close frame; anything else is echoed. Every data message and ping it receives is
//! recorded, in order, with its arrival time.

#![allow(dead_code, unreachable_pub)]

mod config;

#[allow(unused_imports)]
pub use config::{config, tenant, ConfigBuilder, EdgeLimits, TenantSpec};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use sluice::Config;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::WebSocketStream;

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

use rustls_pki_types::pem::PemObject;

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

/// A running sluice.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// Its listen address.
    pub addr: SocketAddr,
    /// Its admission state.
    pub admission: Arc<sluice::admission::Admission>,
    /// Its admin listener's address.
    pub admin: SocketAddr,
    /// What its connections share (config, pending places, metrics).
    pub shared: Arc<sluice::proxy::Shared>,
}

impl Proxy {
    /// `ws://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }
}

/// Starts sluice from config text (its `[listen] address` is set to 127.0.0.1:0 when
/// the text has no `[listen]` table) with `env` for overrides and secrets.
pub async fn proxy_with_env(config: &str, env: &[(&str, &str)]) -> Proxy {
    let text = with_local_listeners(config);
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    start(Config::parse(&text, &env).expect("test config is valid")).await
}

/// `config` with `[listen]` and `[admin]` on 127.0.0.1:0 when it has no such table.
fn with_local_listeners(config: &str) -> String {
    let mut text = config.to_owned();
    if !text.contains("[listen]") {
        text = format!("[listen]\naddress = \"127.0.0.1:0\"\n{text}");
    }
    if !text.contains("[admin]") {
        text = format!("[admin]\naddress = \"127.0.0.1:0\"\n{text}");
    }
    text
}

/// Starts sluice from a config file (so that `POST /-/reload` re-reads it).
pub async fn proxy_from_file(path: &std::path::Path) -> Proxy {
    start(Config::load(path).expect("test config file is valid")).await
}

/// Binds the proxy and its admin listener and serves both in the background.
async fn start(config: Config) -> Proxy {
    start_until(config, std::future::pending()).await.0
}

/// Binds the proxy and its admin listener and serves both in the background until
/// `shutdown` completes, then drains as `sluice::run` does after SIGTERM (not ready at
/// once, the listener closed, [`sluice::control::drain`]); the task ends when the drain
/// has, as the process would exit.
async fn start_until(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (Proxy, tokio::task::JoinHandle<()>) {
    let config_admin = config.admin.address;
    let server = sluice::Server::bind(config).await.expect("sluice binds");
    let addr = server.local_addr();
    let admission = server.admission();
    let shared = server.shared();
    let admin = sluice::admin::Admin::bind(config_admin, shared.clone())
        .await
        .expect("admin binds");
    let admin_addr = admin.local_addr();
    // The admin listener keeps serving during the drain: /readyz says 503.
    let admin = tokio::spawn(admin.run(std::future::pending()));
    let draining = shared.clone();
    let done = tokio::spawn(async move {
        let ready = draining.clone();
        server
            .run(async move {
                shutdown.await;
                ready.control.begin_drain();
            })
            .await;
        sluice::control::drain(&draining).await;
        admin.abort();
    });
    let proxy = Proxy {
        addr,
        admission,
        admin: admin_addr,
        shared,
    };
    (proxy, done)
}

/// sluice running in-process with a shutdown the test controls: [`Serving::shutdown`]
/// does what SIGTERM does to `sluice run` (in the same order as `sluice::run`), and
/// [`Serving::stopped`] waits for the drain to end, where the process would exit. The
/// addresses are bound before the test sees them (port 0): nothing races for a port.
#[derive(Debug)]
pub struct Serving {
    /// The running sluice (clone it freely).
    pub proxy: Proxy,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Serving {
    /// Starts the drain (once; later calls do nothing).
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Whether the drain has ended (everything served has stopped).
    pub fn is_stopped(&self) -> bool {
        self.done.is_finished()
    }

    /// Waits until the drain has ended; fails the test after `within`. How long it
    /// waited.
    pub async fn stopped(self, within: Duration) -> Duration {
        let began = tokio::time::Instant::now();
        tokio::time::timeout(within, self.done)
            .await
            .expect("the drain ended in time")
            .expect("the server task did not panic");
        began.elapsed()
    }
}

/// Starts sluice from config text (as [`proxy`] does) with a shutdown the test
/// controls.
pub async fn serve(config: &str) -> Serving {
    let text = with_local_listeners(config);
    serve_config(Config::parse(&text, &HashMap::new()).expect("test config is valid")).await
}

/// Starts sluice from a loaded config (e.g. [`Config::load`] of a file, so that
/// `POST /-/reload` re-reads it) with a shutdown the test controls.
pub async fn serve_config(config: Config) -> Serving {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (proxy, done) = start_until(config, async move {
        let _ = rx.await;
    })
    .await;
    Serving {
        proxy,
        shutdown: Some(tx),
        done,
    }
}

/// Opens a WebSocket from source address `from` (another loopback address, e.g.
/// 127.0.0.2: Linux routes all of 127/8 to lo).
pub async fn connect_from(
    from: std::net::IpAddr,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(Client, http::Response<Option<Vec<u8>>>), tokio_tungstenite::tungstenite::Error> {
    let req = client_request(url, headers);
    let host = req.uri().host().unwrap().to_owned();
    let port = req.uri().port_u16().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let tcp = socket
        .connect(format!("{host}:{port}").parse().unwrap())
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(20),
        tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp)),
    )
    .await
    .expect("handshake finished in time")
}

/// Starts sluice from config text.
pub async fn proxy(config: &str) -> Proxy {
    proxy_with_env(config, &[]).await
}

/// A client WebSocket through sluice.
pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The upgrade request for `url` with extra headers (a `Host` replaces the derived one).
fn client_request(
    url: &str,
    headers: &[(&str, &str)],
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        let name = http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        if name == http::header::HOST {
            req.headers_mut().insert(name, v.parse().unwrap());
        } else {
            req.headers_mut().append(name, v.parse().unwrap());
        }
    }
    req
}

/// Opens a WebSocket to `url` with extra headers. `Err` carries the HTTP refusal.
pub async fn connect(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(Client, http::Response<Option<Vec<u8>>>), tokio_tungstenite::tungstenite::Error> {
    let req = client_request(url, headers);
    tokio::time::timeout(
        Duration::from_secs(20),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("handshake finished in time")
}

/// Opens a WebSocket that must succeed.
pub async fn connect_ok(url: &str, headers: &[(&str, &str)]) -> Client {
    match connect(url, headers).await {
        Ok((ws, _)) => ws,
        Err(e) => panic!("connect to {url} failed: {}", describe(&e)),
    }
}

/// Opens a WebSocket that must be refused; returns the refusal.
pub async fn connect_refused(
    url: &str,
    headers: &[(&str, &str)],
) -> http::Response<Option<Vec<u8>>> {
    match connect(url, headers).await {
        Ok(_) => panic!("connect to {url} unexpectedly succeeded"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => *resp,
        Err(e) => panic!("connect to {url} failed without an HTTP answer: {e}"),
    }
}

fn describe(e: &tokio_tungstenite::tungstenite::Error) -> String {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => format!(
            "HTTP {} reason={:?} body={:?}",
            resp.status(),
            resp.headers().get("x-sluice-reason"),
            resp.body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        ),
        other => other.to_string(),
    }
}

/// Closes a client's session cleanly, then its connection.
pub async fn close(mut ws: Client) {
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
}

/// Reads until the session ends (within 15 s, else the test fails); the close frame's
/// code and reason, if one came.
pub async fn ended(ws: &mut Client) -> Option<(CloseCode, String)> {
    let mut close = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
            Err(_) => panic!("the session was not ended"),
            Ok(Some(Ok(Message::Close(Some(f))))) => close = Some((f.code, f.reason.to_string())),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => return close,
        }
    }
}

/// Polls `cond` every 5 ms until it holds; fails the test after 20 s.
pub async fn wait_until(what: &str, cond: impl AsyncFn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends a text message and expects it echoed.
pub async fn echo<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("echo in time")
        .expect("stream open")
        .expect("no error");
    assert_eq!(got, Message::text(text));
}

/// `auth` of a tenant without credentials.
pub const NO_AUTH: &str = r#"{ kind = "none" }"#;

/// An echo edge and sluice in front of it with one tenant, `lab`, that needs no
/// credential. `extra` is config text put first (e.g. a `[listen]` table).
pub async fn lab(extra: &str) -> (Edge, Proxy) {
    let edge = edge().await;
    let config = format!(
        "{extra}\n{}",
        config_for(&edge.url(false), &[("lab", NO_AUTH)])
    );
    let proxy = proxy(&config).await;
    (edge, proxy)
}

/// An upstream group and one tenant per `(name, auth)` pair, all on `edge_url`.
pub fn config_for(edge_url: &str, tenants: &[(&str, &str)]) -> String {
    let mut text = format!("[upstream.groups.primary]\nendpoints = [\"{edge_url}\"]\n");
    for (name, auth) in tenants {
        text.push_str(&format!("[tenants.{name}]\nauth = {auth}\n"));
    }
    text
}

/// A self-signed CA and a leaf for 127.0.0.1 and localhost it signed: (ca_pem, leaf_cert_pem, leaf_key_pem).
pub fn test_ca() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sluice test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf_params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}

/// The `x-sluice-reason` of a refusal ("" when absent).
pub fn reason(resp: &http::Response<Option<Vec<u8>>>) -> &str {
    resp.headers()
        .get("x-sluice-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A rustls server config from PEM text.
pub fn server_tls(cert: &str, key: &str) -> rustls::ServerConfig {
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap()
}

/// A rustls client config trusting only this CA (PEM text).
pub fn client_tls(ca: &str) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// `GET path` on the admin listener: (status, body).
pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    admin_request(admin, "GET", path).await
}

/// A request without body on the admin listener: (status, body).
pub async fn admin_request(admin: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(admin).await.unwrap();
    tcp.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw))
        .await
        .expect("admin answered in time")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// A Prometheus text scrape, by series (`name{label="v",…}` as exposed, labels sorted
/// by name).
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The exposition text.
    pub text: String,
    series: HashMap<String, f64>,
}

impl Scrape {
    /// Parses an exposition.
    pub fn parse(text: &str) -> Self {
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                (series.to_owned(), value.parse().unwrap())
            })
            .collect();
        Self {
            text: text.to_owned(),
            series,
        }
    }
    /// `sluice_connects_total{tenant, outcome}`.
    pub fn connects(&self, tenant: &str, outcome: &str) -> f64 {
        self.get(
            "sluice_connects_total",
            &[("tenant", tenant), ("outcome", outcome)],
        )
    }

    /// The value of `name` with exactly these labels (any order).
    ///
    /// # Panics
    /// When the scrape has no such series: sluice creates every series a test reads when
    /// it starts, so a missing one is a bug, not a zero.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut labels = labels.to_vec();
        labels.sort();
        let key = if labels.is_empty() {
            name.to_owned()
        } else {
            let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            format!("{name}{{{}}}", inner.join(","))
        };
        self.series
            .get(&key)
            .copied()
            .unwrap_or_else(|| panic!("no series {key} in the scrape"))
    }

    /// Every series of metric `name` (`name{…}` as exposed) and its value, sorted.
    pub fn family(&self, name: &str) -> Vec<(String, f64)> {
        let mut series: Vec<(String, f64)> = self
            .series
            .iter()
            .filter(|(s, _)| s.as_str() == name || s.starts_with(&format!("{name}{{")))
            .map(|(s, v)| (s.clone(), *v))
            .collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        series
    }

    /// Every metric family name exposed (with `_bucket`/`_sum`/`_count` series).
    pub fn names(&self) -> std::collections::BTreeSet<String> {
        self.series
            .keys()
            .map(|s| s.split('{').next().unwrap().to_owned())
            .collect()
    }
}

/// Scrapes `/metrics`.
pub async fn scrape(admin: SocketAddr) -> Scrape {
    let (status, body) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    Scrape::parse(&body)
}

/// Whether the tests run under CI: `CI` is set to something other than "", "0" or
/// "false" (GitHub Actions, GitLab and most others set `CI=true`).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// A tool a test needs (Chromium, promtool) is missing. Locally the test is skipped
/// loudly (the caller returns after this); under CI, where `.ci/run` installs every
/// such tool, a missing one fails the test instead of letting it pass unchecked.
///
/// # Panics
/// Under CI (see [`under_ci`]).
pub fn tool_missing(tool: &str, untested: &str) {
    assert!(
        !under_ci(),
        "{tool} is not installed, and CI is set: {untested} (install it; `.ci/run` does)"
    );
    eprintln!("SKIPPED: {tool} is not installed; {untested}");
}

/// The Chromium binary on `PATH`, if any (`.ci/run` installs Debian's `chromium`).
pub fn chromium() -> Option<std::path::PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        })
}

/// Flags for headless Chromium in tests: no sandbox or GPU, no background traffic, and
/// nothing but loopback resolves (a page must need nothing from elsewhere).
pub const CHROMIUM_FLAGS: [&str; 10] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
];
