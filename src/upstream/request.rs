//! Step 5 of the flow: the request sent to the upstream, rebuilt from the client's.
//!
//! [`build_request`] rebuilds the client's upgrade request once per connect: the
//! `/t/{tenant}` prefix and every credential carrier removed, hop-by-hop headers dropped,
//! `Sec-WebSocket-Key/Version/Protocol/Extensions` kept unchanged so subprotocols and
//! extensions are negotiated end to end, and `X-Forwarded-For`, `Forwarded`,
//! `X-Forwarded-Proto`, `X-Real-IP` and `X-Request-Id` set. [`endpoint_request`] then
//! adds one endpoint's path prefix, query and authority for each attempt.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;

use super::ClientInfo;
use crate::auth;
use crate::config::Endpoint;
use crate::parse::{header_tokens, query_pairs_except};

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// Header carrying a request id end to end.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `X-Forwarded-Proto`: set by sluice to the scheme the client used.
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// `X-Real-IP`: set by sluice to the client's address, like `X-Forwarded-For`.
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Forwarding headers a client might set to lie to an edge that trusts them; sluice
/// removes them all. It sets `X-Forwarded-For`, `Forwarded`, `X-Forwarded-Proto` and
/// `X-Real-IP` itself from what it saw; the rest name things (another client address,
/// the host or port the client reached) that only a proxy in front of sluice could
/// vouch for, and sluice has no list of trusted proxies.
pub const CLIENT_FORWARDING: [&str; 12] = [
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-server",
];

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the ones sluice sets itself.
const DROPPED: [HeaderName; 11] = [
    header::CONNECTION,
    header::CONTENT_LENGTH,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HOST,
];

/// The request sent upstream, before an endpoint's parts are added: the path and query
/// after tenant resolution and credential removal, and the header lines in order.
///
/// A list, not a `HeaderMap`: it is built once, written once per attempt, and edited
/// only by `accept` mode's own handshake ([`crate::ws::own_handshake`]), so hashing every
/// name bought nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamRequest {
    /// The path (the tenant prefix stripped), without the query.
    pub path: String,
    /// The query without `access_token`; empty when none is left.
    pub query: String,
    /// The header lines, `Host` excepted (each endpoint's authority is written).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Rebuilds the client's upgrade request for the upstream (without endpoint-specific
/// parts: see [`Connector::connect`](super::Connector::connect)).
///
/// `forward_path` is the path after tenant resolution (prefix stripped). The query loses
/// `access_token`; `Sec-WebSocket-Protocol` loses `access_token.*` entries; a Bearer
/// `Authorization` is dropped. `identity` is the tenant header and the resolved tenant:
/// whatever the client sent in that header is replaced, so the edge always sees the
/// tenant sluice authenticated. `X-Forwarded-For`, `Forwarded`, `X-Forwarded-Proto` and
/// `X-Real-IP` are set from the client's address, not appended to, and the other
/// forwarding headers a client could set ([`CLIENT_FORWARDING`]) are removed, with the
/// `_`-for-`-` twins of all of these ([`underscore_twin`]): a client cannot choose what
/// the edge sees.
pub fn build_request(
    client: &Parts,
    forward_path: &str,
    info: ClientInfo,
    request_id: &str,
    identity: (&HeaderName, &str),
) -> UpstreamRequest {
    let query = client
        .uri
        .query()
        .and_then(auth::strip_query)
        .unwrap_or_default();
    // The client's headers and the up to nine sluice sets.
    let mut headers = Vec::with_capacity(client.headers.len() + 9);

    // Headers named in Connection are hop-by-hop too (except the upgrade itself).
    let named: Vec<HeaderName> = header_tokens(&client.headers, &header::CONNECTION)
        .filter(|n| !n.eq_ignore_ascii_case("upgrade"))
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();

    for (name, value) in &client.headers {
        if DROPPED.contains(name)
            || named.contains(name)
            || name == identity.0
            || name == X_FORWARDED_FOR
            || name == X_REAL_IP
            || name == header::FORWARDED
            || name == X_FORWARDED_PROTO
            || CLIENT_FORWARDING.contains(&name.as_str())
            || name == header::SEC_WEBSOCKET_PROTOCOL
            || name == REQUEST_ID
            || (name == header::AUTHORIZATION && auth::is_bearer(value))
            || underscore_twin(name.as_str(), identity.0)
        {
            continue;
        }
        headers.push((name.clone(), value.clone()));
    }
    headers.push((header::CONNECTION, HeaderValue::from_static("Upgrade")));
    headers.push((header::UPGRADE, HeaderValue::from_static("websocket")));
    if let Some(protocols) = auth::strip_subprotocols(client) {
        if let Ok(v) = HeaderValue::from_str(&protocols) {
            headers.push((header::SEC_WEBSOCKET_PROTOCOL, v));
        }
    }

    // The values sluice sets are written into one buffer and cut from it: two
    // allocations for all of them, where each value of its own took one or two.
    let mut text = String::with_capacity(96 + identity.1.len() + request_id.len());
    let mut cut = |part: &dyn Fn(&mut String)| {
        let from = text.len();
        part(&mut text);
        from..text.len()
    };
    let tenant = cut(&|t| t.push_str(identity.1));
    let ip = cut(&|t| push_ip(t, info.addr.ip()));
    let proto = if info.tls { "https" } else { "http" };
    let host = client
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        // A quoted-string may not hold a bare quote or backslash: leave such a Host out.
        .filter(|host| !host.contains(['"', '\\']));
    let forwarded = cut(&|t| {
        t.push_str("for=");
        if info.addr.is_ipv4() {
            push_ip(t, info.addr.ip());
        } else {
            t.push_str("\"[");
            push_ip(t, info.addr.ip());
            t.push_str("]\"");
        }
        t.push_str(";proto=");
        t.push_str(proto);
        if let Some(host) = host {
            t.push_str(";host=\"");
            t.push_str(host);
            t.push('"');
        }
    });
    let id = cut(&|t| t.push_str(request_id));
    let text = Bytes::from(text);
    let value = |range: std::ops::Range<usize>| HeaderValue::from_maybe_shared(text.slice(range));
    if let Ok(v) = value(tenant) {
        headers.push((identity.0.clone(), v));
    }
    if let Ok(v) = value(ip) {
        headers.push((X_FORWARDED_FOR, v.clone()));
        headers.push((X_REAL_IP, v));
    }
    if let Ok(v) = value(forwarded) {
        headers.push((header::FORWARDED, v));
    }
    headers.push((X_FORWARDED_PROTO, HeaderValue::from_static(proto)));
    if let Ok(v) = value(id) {
        headers.push((REQUEST_ID, v));
    }
    UpstreamRequest {
        path: if forward_path.is_empty() {
            "/".to_owned()
        } else {
            forward_path.to_owned()
        },
        query,
        headers,
    }
}

/// Whether `name` spells, with `_` for `-`, a header sluice sets itself or removes as a
/// client's lie: servers that map names to variables (CGI, WSGI, PHP-FPM; NGINX with
/// `underscores_in_headers`) read `x_tenant_id` as `x-tenant-id`, so the twin could
/// stand in for what sluice vouches for. (NGINX and Apache drop such names for this.)
fn underscore_twin(name: &str, identity: &HeaderName) -> bool {
    if !name.contains('_') {
        return false;
    }
    let dashed = name.replace('_', "-");
    let dashed = dashed.as_str();
    dashed == identity.as_str()
        || [
            X_FORWARDED_FOR.as_str(),
            X_REAL_IP.as_str(),
            header::FORWARDED.as_str(),
            X_FORWARDED_PROTO.as_str(),
            REQUEST_ID.as_str(),
        ]
        .contains(&dashed)
        || CLIENT_FORWARDING.contains(&dashed)
}

/// An address as text, as its `Display` writes it (an IPv4 address without going
/// through the formatter: see [`crate::logging::ipv4_text`]).
fn push_ip(text: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let (digits, len) = crate::logging::ipv4_text(v4);
            // Digits and dots only.
            text.push_str(std::str::from_utf8(&digits[..len]).unwrap_or_default());
        }
        std::net::IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(text, "{v6}");
        }
    }
}

/// The request for one endpoint, as written on its socket: its path prefix and query
/// joined with the client's, its authority as `Host`, then the rebuilt headers.
pub(super) fn endpoint_request(endpoint: &Endpoint, req: &UpstreamRequest) -> Vec<u8> {
    let path = req.path.as_str();
    let query = join_query(endpoint, &req.query);
    let headers = &req.headers;
    let size = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + endpoint.path_prefix.len()
        + path.len()
        + query.len()
        + endpoint.authority.len()
        + 40;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(endpoint.path_prefix.as_bytes());
    out.extend_from_slice(path.as_bytes());
    if !query.is_empty() {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(endpoint.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    // Header values hold no CR or LF (`HeaderValue` refuses them); `Host` was dropped
    // from the client's headers when the request was rebuilt.
    for (name, value) in headers.iter() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The client's query parameters, minus any whose name the endpoint's query pins, then
/// the endpoint's: what the operator wrote in the endpoint URL cannot be overridden by a
/// client, whichever occurrence the edge reads.
fn join_query<'a>(endpoint: &Endpoint, client: &'a str) -> std::borrow::Cow<'a, str> {
    if endpoint.query.is_empty() && endpoint.query_keys.is_empty() {
        return client.into();
    }
    let mut parts: Vec<&str> =
        query_pairs_except(client, |k| endpoint.query_keys.iter().any(|p| p == k)).collect();
    parts.extend(endpoint.query.split('&').filter(|p| !p.is_empty()));
    parts.join("&").into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::parts;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.99.100",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
        for n in 0..=255u8 {
            let ip = std::net::IpAddr::from([n, 9, n, 100]);
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    fn ip_text(ip: std::net::IpAddr) -> String {
        let mut text = String::from("x");
        push_ip(&mut text, ip);
        text.split_off(1)
    }

    #[test]
    fn request_is_rebuilt_without_credentials_or_hop_headers() {
        let p = parts(
            "/t/acme/ws?a=1&access_token=secret&b=2",
            &[
                ("host", "sluice.example:8080"),
                ("connection", "Upgrade, x-hop"),
                ("upgrade", "websocket"),
                ("x-hop", "1"),
                ("authorization", "Bearer secret"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("sec-websocket-version", "13"),
                ("sec-websocket-protocol", "sip, access_token.secret"),
                ("sec-websocket-extensions", "permessage-deflate"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-tenant-id", "globex"),
                ("forwarded", "for=10.0.0.1"),
                ("x-real-ip", "10.0.0.1"),
                ("true-client-ip", "10.0.0.1"),
                ("x-forwarded-host", "admin.internal"),
                ("x-forwarded-proto", "https"),
                ("origin", "https://app.example"),
            ],
        );
        let info = ClientInfo {
            addr: "192.0.2.7:5555".parse().unwrap(),
            tls: false,
        };
        let tenant_header = HeaderName::from_static("x-tenant-id");
        let req = build_request(&p, "/ws", info, "rid-1", (&tenant_header, "acme"));
        assert_eq!((req.path.as_str(), req.query.as_str()), ("/ws", "a=1&b=2"));
        // Every value of a header, by its name in any case.
        let all = |name: &str| -> Vec<&str> {
            req.headers
                .iter()
                .filter(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.to_str().unwrap())
                .collect()
        };
        let one = |name: &str| -> &str {
            let values = all(name);
            assert_eq!(values.len(), 1, "{name}: {values:?}");
            values[0]
        };
        assert!(all("x-hop").is_empty());
        assert!(all("authorization").is_empty());
        assert!(all("host").is_empty());
        assert_eq!(one("sec-websocket-protocol"), "sip");
        assert_eq!(one("sec-websocket-key"), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(one("sec-websocket-extensions"), "permessage-deflate");
        assert_eq!(one("x-forwarded-for"), "192.0.2.7");
        assert_eq!(one("X-Real-IP"), "192.0.2.7");
        assert_eq!(one("x-forwarded-proto"), "http");
        assert!(all("true-client-ip").is_empty());
        assert!(all("x-forwarded-host").is_empty());
        assert_eq!(one("x-tenant-id"), "acme");
        assert_eq!(
            one("forwarded"),
            "for=192.0.2.7;proto=http;host=\"sluice.example:8080\""
        );
        assert_eq!(one("x-request-id"), "rid-1");
        assert_eq!(one("origin"), "https://app.example");
        assert_eq!(one("connection"), "Upgrade");
        assert_eq!(one("upgrade"), "websocket");
        let h = &req.headers;
        assert!(!format!("{h:?}").contains("secret"));

        let endpoint = crate::config::Endpoint {
            url: "ws://edge:7001/base?org=9".into(),
            tls: false,
            host: "edge".into(),
            port: 7001,
            authority: "edge:7001".into(),
            path_prefix: "/base".into(),
            query: "org=9".into(),
            query_keys: vec!["org".into()],
        };
        let wire = endpoint_request(&endpoint, &req);
        let mut lines = [httparse::EMPTY_HEADER; 32];
        let mut out = httparse::Request::new(&mut lines);
        assert_eq!(
            out.parse(&wire).unwrap(),
            httparse::Status::Complete(wire.len())
        );
        assert_eq!(out.method, Some("GET"));
        assert_eq!(out.path, Some("/base/ws?a=1&b=2&org=9"));
        let sent = |name: &str| -> Vec<&[u8]> {
            out.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
                .collect()
        };
        assert_eq!(sent("host"), [b"edge:7001"]);
        assert_eq!(sent("x-tenant-id"), [b"acme"]);
        assert_eq!(sent("upgrade"), [b"websocket"]);
        assert_eq!(out.headers.len(), h.len() + 1);
        assert_eq!(join_query(&endpoint, "org=10&a=1&org=11"), "a=1&org=9");
        assert_eq!(join_query(&endpoint, ""), "org=9");
        let plain = crate::config::Endpoint {
            query: String::new(),
            query_keys: vec![],
            ..endpoint
        };
        assert_eq!(join_query(&plain, "a=1&org=2"), "a=1&org=2");
        assert_eq!(
            endpoint_request(
                &plain,
                &build_request(&p, "", info, "r", (&tenant_header, "acme"))
            )
            .split(|b| *b == b'\r')
            .next(),
            Some(&b"GET /base/?a=1&b=2 HTTP/1.1"[..])
        );
    }
}
