//! Step 5 of the flow: one handshake attempt on one endpoint.
//!
//! [`Connector::attempt`] connects over TCP (and TLS for `wss://`), sends the request of
//! [`endpoint_request`] with hyper's HTTP/1.1 client, and takes the upgraded connection
//! when the endpoint answers `101`; any other status becomes [`AttemptError::Status`]
//! with its `Retry-After` and trace id. Which endpoint, how often and for how long is
//! [`super::retry`]'s business.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
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
        req: &Request<()>,
        connected: &mut bool,
    ) -> Result<(Leg, HeaderMap), AttemptError> {
        let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(AttemptError::Connect)?;
        // Signaling messages are small and latency-bound.
        let _ = tcp.set_nodelay(true);
        let stream = if endpoint.tls {
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

        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await?;
        let mut conn = std::pin::pin!(conn.with_upgrades());
        let upstream_req = endpoint_request(endpoint, req);
        let mut response = std::pin::pin!(sender.send_request(upstream_req));
        // The connection future finishes by itself once a 101 has handed the socket
        // over to the upgrade, which may happen before the response is polled.
        let (mut resp, conn_done) = tokio::select! {
            resp = &mut response => (resp?, false),
            done = &mut conn => {
                done?;
                (response.await?, true)
            }
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(AttemptError::Status {
                status: resp.status(),
                retry_after: retry_after(resp.headers()),
                trace_id: trace_id(resp.headers()),
            });
        }
        let mut headers = HeaderMap::new();
        for name in HANDSHAKE_RESPONSE_HEADERS {
            for value in resp.headers().get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        let on_upgrade = hyper::upgrade::on(&mut resp);
        let upgraded = if conn_done {
            on_upgrade.await?
        } else {
            let (upgraded, done) = tokio::join!(on_upgrade, conn);
            done?;
            upgraded?
        };
        let parts = upgraded
            .downcast::<TokioIo<Stream>>()
            .map_err(|_| AttemptError::Upgrade("unexpected connection type".into()))?;
        Ok((
            Leg {
                stream: parts.io.into_inner(),
                early: parts.read_buf,
            },
            headers,
        ))
    }
}

/// `Retry-After` in delta-seconds (the form edges use for 503/429), at most a day here
/// (the longest `upstream.max_pause`); [`Connector::connect`] caps it at `max_pause`.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(
        secs.min(crate::config::MAX_MAX_PAUSE.as_secs()),
    ))
}

fn trace_id(headers: &HeaderMap) -> Option<String> {
    TRACE_HEADERS.iter().find_map(|h| {
        headers
            .get(*h)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(128).collect())
    })
}
