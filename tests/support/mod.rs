//! Shared test support: a recording WebSocket edge, sluice started in-process on
//! 127.0.0.1:0 (serving for good, or until a shutdown the test gives: [`serve`]), config
//! text from a builder ([`config`], [`tenant`]), WebSocket clients, and a test CA for
//! TLS.
//!
//! Files: `edge.rs` (the edge), `config.rs` (the builder), `admin.rs` (admin requests
//! and scrapes), `tools.rs` (Chromium, promtool, CI), `cdp.rs` (a Chromium page driven
//! over the DevTools protocol), `redis.rs` (a `redis-server` of
//! the test's own, for `[cluster]`), `cluster.rs` (replicas on it), `jssip.rs` (JsSIP
//! user agents in a node process, for SIP over WebSocket); this file starts sluice and holds
//! the clients and TLS helpers. (`mod.rs`, not `support.rs`: Cargo would build a
//! `tests/support.rs` as a test of its own.)

#![allow(dead_code, unreachable_pub)]

mod admin;
pub mod cdp;
pub mod cluster;
mod config;
mod edge;
mod jssip;
pub mod redis;
pub mod sip;
mod tools;

#[allow(unused_imports)]
pub use self::redis::Redis;
#[allow(unused_imports)]
pub use admin::{
    admin_get, admin_request, check_with_promtool, enforced_counts, scrape, shadow_counts, would,
    Scrape,
};
#[allow(unused_imports)]
pub use config::{
    config, quoted, tenant, write_config_file, ConfigBuilder, EdgeLimits, TenantSpec,
};
#[allow(unused_imports)]
pub use edge::{edge, edge_with, Edge, EdgeOptions, Recorded};
#[allow(unused_imports)]
pub use jssip::Jssip;
#[allow(unused_imports)]
pub use tools::{chromium, tool_missing, under_ci, CHROMIUM_FLAGS};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sluice::Config;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::WebSocketStream;

use rustls_pki_types::pem::PemObject;

/// A running sluice.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// Its listen address.
    pub addr: SocketAddr,
    /// Its tenants' admission state, read through their handles.
    pub admission: Loads,
    /// Its admin listener's address.
    pub admin: SocketAddr,
    /// What its connections share (config, tenant table, pending places, metrics).
    pub shared: Arc<sluice::runtime::Runtime>,
}

/// A running sluice's admission state, read through the public tenant handles of the
/// snapshot in force.
#[derive(Debug, Clone)]
pub struct Loads(Arc<sluice::runtime::Runtime>);

impl Loads {
    /// The admission state of the configured tenant `name`.
    pub fn tenant_load(&self, name: &str) -> Option<sluice::admission::TenantLoad> {
        self.0.tenant(name).map(|t| t.gate.load())
    }

    /// The handshake rate `name` is allowed now (adaptive).
    pub fn effective_rate(&self, name: &str) -> Option<f64> {
        self.0.tenant(name).map(|t| t.gate.effective_rate())
    }

    /// The calls and held INVITEs of the SIP tenant `name` (`None`: no call limits).
    pub fn call_load(&self, name: &str) -> Option<sluice::calls::CallLoad> {
        let tenant = self.0.tenant(name)?;
        let gate = tenant.settings().calls.clone()?;
        Some(gate.load())
    }

    /// The `[edge]` ceiling's state.
    pub fn edge_load(&self) -> Option<sluice::admission::EdgeLoad> {
        self.0.admission.edge_load()
    }
}

impl Proxy {
    /// Waits until `tenant` holds no session slot any more (its sessions ended and
    /// their permits went back); fails the test after [`wait_until`]'s 20 s.
    pub async fn wait_sessions_ended(&self, tenant: &str) {
        wait_until(&format!("every session of {tenant} to end"), async || {
            self.admission.tenant_load(tenant).unwrap().live == 0
        })
        .await;
    }

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
/// `shutdown` completes, then drains as `sluice::run` does after SIGTERM
/// ([`sluice::Bound::serve`], without SIGHUP); the task ends when the drain has, as the
/// process would exit.
async fn start_until(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (Proxy, tokio::task::JoinHandle<()>) {
    // One runtime, the test's own, unless the test asks for `listen.workers`: many
    // tests send right after their upgrade and rely on sluice having run to its next
    // await first, which a test's single-threaded runtime guarantees and per-core
    // runtimes beside it would not (tests/workers.rs runs several).
    let bound = match config.listen.workers {
        Some(_) => sluice::Bound::bind(config).await,
        None => sluice::Bound::bind_with_workers(config, 1).await,
    }
    .expect("sluice binds");
    let shared = bound.runtime();
    let proxy = Proxy {
        addr: bound.local_addr(),
        admission: Loads(shared.clone()),
        admin: bound.admin_addr(),
        shared,
    };
    let done = tokio::spawn(bound.serve(shutdown, false));
    (proxy, done)
}

/// sluice running in-process with a shutdown the test controls: [`Serving::shutdown`]
/// does what SIGTERM does to `sluice run` (in the same order as `sluice::run`), and
/// [`Serving::stopped`] waits for the drain to end, where the process would exit. The
/// addresses are bound before the test sees them (port 0): nothing races for a port.
/// Dropping it starts the drain too (keep it alive as long as the test needs sluice).
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

/// A loopback port free a moment ago (for a sluice run as its own process, whose
/// port the test must know before it starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
