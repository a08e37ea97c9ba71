//! Steps 1–3 of the flow and the dispatch: one request, resolved once into its tenant's handle.
//!
//! The flow of one connection, step by step (DESIGN.md): what happens to a request once
//! [`crate::server`] has read its head. Steps 1–3 (the upgrade checked, the tenant
//! resolved once into its handle, the credential checked) are here; then the request is
//! dispatched by the tenant's `queue_mode` to [`hold`] or [`accept`], which run steps
//! 4–7 with [`dial`] (the upstream handshake) and [`outcome`] (how a connect ended).

pub mod accept;
mod dial;
mod hold;
mod outcome;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::Either;
use http::{header, Request, Response};
use http_body_util::Full;

use crate::auth;
use crate::config::QueueMode;
use crate::parse::{header_has_token, header_tokens};
use crate::reject::{self, Reason, Rejection};
use crate::relay::Leg;
use crate::runtime::Runtime;
use crate::tenant;
use crate::upstream::{self, ClientInfo};

pub(crate) use dial::connect_upstream;
pub use dial::TENANT_PAUSE_WITHOUT_RETRY_AFTER;
pub(crate) use outcome::{record_admitted, record_refusal, refuse, ClientGone};

/// Longest `X-Request-Id` kept from a client; longer or odd ones are replaced.
pub const MAX_REQUEST_ID: usize = 128;

/// The answer to one request, and what runs on its connection after a `101`.
#[derive(Debug)]
pub struct Answer {
    /// The response to write.
    pub response: Response<Full<Bytes>>,
    /// After a `101`: the session, given the client's connection.
    pub then: Option<Then>,
}

impl From<Response<Full<Bytes>>> for Answer {
    fn from(response: Response<Full<Bytes>>) -> Self {
        Self {
            response,
            then: None,
        }
    }
}

/// What runs on a connection once its `101` is written.
// Moved once per connect; boxing the hold-mode variant would cost an allocation per
// session for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Then {
    /// A `hold`-mode session: the edge is connected; relay.
    Hold(hold::Relay),
    /// An `accept`-mode session: queue, dial and relay behind the `101`.
    Accept(Box<accept::Pending>),
}

impl Then {
    /// Runs the session on the client's connection, to its end. (Not an `async fn`, so
    /// that its arguments are not kept beside the session's own state.)
    pub fn run(self, client: Leg) -> impl std::future::Future<Output = ()> + Send {
        match self {
            Self::Hold(relay) => Either::Left(relay.run(client)),
            // Boxed: its state is large, and a hold-mode session's task should not
            // carry it.
            Self::Accept(pending) => Either::Right(Box::pin(accept::serve(*pending, client))),
        }
    }

    /// The `101` could not be written: the session ends before it began.
    pub fn abandon(self, why: &'static str) {
        match self {
            Self::Hold(relay) => relay.abandon(why),
            Self::Accept(pending) => accept::abandon(&pending, why),
        }
    }
}

/// Serves one request: a WebSocket upgrade is resolved, authenticated, connected
/// upstream and relayed; anything else gets its refusal. `address_share` (the
/// connection's count in `protection.max_pending_per_ip`) is given back once the request
/// is authenticated.
pub async fn handle(
    req: Request<()>,
    runtime: Arc<Runtime>,
    info: ClientInfo,
    address_share: Arc<crate::protect::AddressShare>,
) -> Answer {
    let request_id = request_id(req.headers());

    // Step 3 comes first in part: an IP that used up its unauthenticated attempts is
    // refused before anything of its request is looked at.
    let ip = info.addr.ip();
    if let Some(left) = runtime.preauth.blocked(ip) {
        let rejection = Rejection::new(
            Reason::TooManyAttempts,
            "too many unauthenticated attempts from this address",
        )
        .retry_after(left);
        let snapshot = runtime.snapshot();
        let tm = snapshot.tenants.unknown();
        return refuse(tm, rejection, &request_id, info, None).into();
    }

    // Step 1 (rest): only WebSocket upgrades are served.
    if !is_websocket_upgrade(&req) {
        runtime.preauth.failed(ip);
        tracing::debug!(client = %info.addr, request_id, method = %req.method(), "not a WebSocket upgrade");
        return reject::upgrade_required(
            "sluice only serves WebSocket upgrades (HTTP/1.1 GET with Upgrade: websocket)",
            &request_id,
        )
        .into();
    }
    if let Err(bad) = check_handshake(&req) {
        runtime.preauth.failed(ip);
        tracing::debug!(client = %info.addr, request_id, detail = bad.detail(), "malformed WebSocket upgrade");
        return match bad {
            BadUpgrade::Version => reject::upgrade_required(bad.detail(), &request_id),
            BadUpgrade::Malformed(detail) => reject::bad_request(detail, &request_id),
        }
        .into();
    }
    let snapshot = runtime.snapshot();
    let (parts, ()) = req.into_parts();

    // Step 2: tenant, resolved once into its handle; nothing below looks it up again.
    let resolved = match tenant::resolve_in(&snapshot.config.identity, &snapshot.tenants, &parts) {
        Ok(r) => r,
        Err(e) => {
            runtime.preauth.failed(ip);
            let rejection = Rejection::new(Reason::TenantUnknown, e.to_string());
            let tm = snapshot.tenants.unknown();
            return refuse(tm, rejection, &request_id, info, None).into();
        }
    };
    let tenant = resolved.tenant.clone();
    let settings = tenant.settings();
    let tm = &settings.metrics;

    // Step 3: authentication.
    let credential = auth::extract(&parts);
    if let Err(e) = auth::authenticate(&settings.config, credential.as_ref()) {
        // A token that merely expired proves it was issued: not a guess. Counting it
        // would let a NAT'd fleet retrying stale tokens lock out its own valid agents.
        if !e.is_expiry() {
            runtime.preauth.failed(ip);
        }
        let rejection = Rejection::new(Reason::Unauthorized, e.to_string());
        return refuse(tm, rejection, &request_id, info, None).into();
    }
    // Authenticated: from here the tenant's own limits bound this client, not its
    // address's share of the pending places (a fleet behind one NAT address queues).
    address_share.release();

    // Draining: no new sessions (the load balancer sends the client elsewhere).
    if runtime.control.draining() {
        return refuse(tm, Rejection::draining(), &request_id, info, None).into();
    }
    // From here the drain waits for this connect (until its session starts or its
    // answer is given).
    let inflight = runtime.control.session();
    let upstream_req = upstream::build_request(
        &parts,
        &resolved.forward_path,
        info,
        &request_id,
        (&snapshot.config.identity.header, &tenant.name),
    );
    let connect = Connect {
        runtime,
        tenant,
        settings,
        request_id,
        info,
        tenant_source: resolved.source.as_str(),
        inflight,
    };

    match connect.settings.config.limits.queue_mode {
        // `accept` mode: answer 101 now and queue behind it (see [`accept`]).
        QueueMode::Accept => accept::start(connect, &parts, upstream_req, credential),
        QueueMode::Hold => hold::serve(connect, upstream_req).await,
    }
}

/// A connect resolved and authenticated: what steps 4–7 need of it, owned.
#[derive(Debug)]
pub(crate) struct Connect {
    /// What every connection shares.
    pub(crate) runtime: Arc<Runtime>,
    /// The tenant's handle.
    pub(crate) tenant: Arc<crate::tenants::Tenant>,
    /// Its settings as the request was resolved: the limits, the metrics children.
    pub(crate) settings: Arc<crate::tenants::Settings>,
    /// The request id.
    pub(crate) request_id: String,
    /// Where the client connects from.
    pub(crate) info: ClientInfo,
    /// How the tenant was found, for the outcome line.
    pub(crate) tenant_source: &'static str,
    /// Counts this connect in the drain's wait until it is answered.
    pub(crate) inflight: crate::control::SessionCount,
}

/// The client's `X-Request-Id` when it is sane, else a new random one.
fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get(upstream::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| {
            !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(new_request_id, str::to_owned)
}

/// 32 lowercase hex digits of a random `u128`, written digit by digit (the formatter's
/// padding machinery, or `hex`'s iterator of `char`s, cost several times as much).
fn new_request_id() -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let n = rand::random::<u128>();
    let mut text = [0u8; 32];
    for (i, digit) in text.iter_mut().enumerate() {
        *digit = DIGITS[((n >> (124 - 4 * i)) & 0xf) as usize];
    }
    // Hex digits only: valid UTF-8 (`from_utf8` checks ASCII a word at a time;
    // `from_utf8_lossy` cost 280 instructions here).
    std::str::from_utf8(&text)
        .expect("hex digits are ASCII")
        .to_owned()
}

/// Whether a path has a `.` or `..` segment, raw or percent-encoded (with `/` or `\`
/// possibly encoded too, as some servers decode them before normalising).
fn has_dot_segment(path: &str) -> bool {
    let bytes = path.as_bytes();
    // The current segment: how many dots it has, and whether anything else.
    let (mut dots, mut other) = (0u32, false);
    let mut i = 0;
    loop {
        // One decoded unit: `%2e` is a dot, `%2f`, `%5c` and `\` are separators.
        let (unit, len) = match bytes.get(i) {
            None => (b'/', 0),
            Some(b'%') if i + 2 < bytes.len() => {
                match [
                    bytes[i + 1].to_ascii_lowercase(),
                    bytes[i + 2].to_ascii_lowercase(),
                ] {
                    [b'2', b'e'] => (b'.', 3),
                    [b'2', b'f'] | [b'5', b'c'] => (b'/', 3),
                    _ => (b'%', 1),
                }
            }
            Some(b'\\') => (b'/', 1),
            Some(&b) => (b, 1),
        };
        match unit {
            b'/' => {
                if !other && (dots == 1 || dots == 2) {
                    return true;
                }
                (dots, other) = (0, false);
            }
            b'.' => dots += 1,
            _ => other = true,
        }
        if len == 0 {
            return false;
        }
        i += len;
    }
}

/// An HTTP/1.1 `GET` with `Connection: upgrade` and `Upgrade: websocket`. (RFC 9110
/// §7.8: a server ignores `Upgrade` in an HTTP/1.0 request; RFC 6455 §4.1 asks for 1.1.)
fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == http::Method::GET
        && req.version() == http::Version::HTTP_11
        && header_has_token(req.headers(), &header::CONNECTION, "upgrade")
        && header_has_token(req.headers(), &header::UPGRADE, "websocket")
}

/// Why an upgrade request was refused before any tenant was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadUpgrade {
    /// Not WebSocket version 13: `426` naming the version sluice speaks.
    Version,
    /// Anything else malformed: `400`.
    Malformed(&'static str),
}

impl BadUpgrade {
    fn detail(self) -> &'static str {
        match self {
            Self::Version => "unsupported Sec-WebSocket-Version: sluice speaks version 13",
            Self::Malformed(detail) => detail,
        }
    }
}

/// RFC 6455 §4.2.1 (a key and version 13) and what a tunnel needs (no body, one Host,
/// no dot segments).
fn check_handshake<B>(req: &Request<B>) -> Result<(), BadUpgrade> {
    use BadUpgrade::Malformed;
    // RFC 9112 §3.2: more than one Host is a bad request (and would make the host
    // tenant source ambiguous).
    if req.headers().get_all(header::HOST).iter().count() > 1 {
        return Err(Malformed("more than one Host header"));
    }
    // An upgrade has no body. A declared one would be read by sluice, yet announced to
    // the edge, which would then take the first WebSocket bytes for it.
    let content_length = req.headers().get(header::CONTENT_LENGTH);
    if content_length.is_some_and(|v| v.as_bytes() != b"0")
        || req.headers().contains_key(header::TRANSFER_ENCODING)
    {
        return Err(Malformed(
            "a WebSocket upgrade carries no body (Content-Length / Transfer-Encoding)",
        ));
    }
    // Only a path (origin form, or absolute form's path) names what to open upstream;
    // `GET host:80` and `GET *` do not.
    if !req.uri().path().starts_with('/') {
        return Err(Malformed("request target is not a path"));
    }
    // Dot segments could walk out of the endpoint's path prefix.
    if has_dot_segment(req.uri().path()) {
        return Err(Malformed("path contains a . or .. segment"));
    }
    // Two keys or two versions: which one the edge reads is anyone's guess (and the
    // second version would be forwarded unchecked).
    for name in [&header::SEC_WEBSOCKET_KEY, &header::SEC_WEBSOCKET_VERSION] {
        if req.headers().get_all(name).iter().count() > 1 {
            return Err(Malformed(
                "more than one Sec-WebSocket-Key or Sec-WebSocket-Version header",
            ));
        }
    }
    // Headers named in Connection are hop-by-hop and would be dropped on the way to the
    // edge: naming one the upgrade itself needs (the key, the version, the Host…) would
    // send the edge a broken upgrade that the client caused.
    if header_tokens(req.headers(), &header::CONNECTION).any(names_upgrade_header) {
        return Err(Malformed(
            "Connection names a header the upgrade needs (Host or Sec-WebSocket-*)",
        ));
    }
    let version = req.headers().get(header::SEC_WEBSOCKET_VERSION);
    if version.is_none_or(|v| v.as_bytes() != b"13") {
        return Err(BadUpgrade::Version);
    }
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY);
    // A key is 16 random bytes in base64: 24 characters.
    if key.is_none_or(|k| k.len() != 24) {
        return Err(Malformed("missing or malformed Sec-WebSocket-Key"));
    }
    Ok(())
}

/// Whether a `Connection` token names a header the upgrade cannot do without: `Host`
/// and every `Sec-WebSocket-*` header. (`Upgrade` itself belongs there.)
fn names_upgrade_header(token: &str) -> bool {
    const PREFIX: &str = "sec-websocket-";
    token.eq_ignore_ascii_case("host")
        || token
            .get(..PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
}

#[cfg(test)]
mod tests {
    use super::{has_dot_segment, names_upgrade_header, new_request_id};

    #[test]
    fn new_request_ids_are_32_lowercase_hex_digits() {
        let a = new_request_id();
        assert_eq!(a.len(), 32, "{a}");
        assert!(
            a.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{a}"
        );
        assert_ne!(a, new_request_id());
        let n = u128::from_str_radix(&a, 16).unwrap();
        assert_eq!(format!("{n:032x}"), a);
    }

    #[test]
    fn connection_may_not_name_what_the_upgrade_needs() {
        for bad in [
            "Host",
            "sec-websocket-key",
            "Sec-WebSocket-Version",
            "SEC-WEBSOCKET-PROTOCOL",
        ] {
            assert!(names_upgrade_header(bad), "{bad}");
        }
        for ok in [
            "Upgrade",
            "keep-alive",
            "x-hop",
            "sec-websocket",
            "hostname",
        ] {
            assert!(!names_upgrade_header(ok), "{ok}");
        }
    }

    #[test]
    fn dot_segments_are_found_however_encoded() {
        for bad in [
            "/a/../b",
            "/..",
            "/a/./b",
            "/a/%2e%2E/b",
            "/a/..%2fb",
            "/a/%2E",
            "/a\\..\\b",
        ] {
            assert!(has_dot_segment(bad), "{bad}");
        }
        for ok in [
            "/",
            "/a/b",
            "/a/...",
            "/a/.well-known",
            "/v1.2/x",
            "/a%",
            "/%2",
            "/.%2",
        ] {
            assert!(!has_dot_segment(ok), "{ok}");
        }
    }

    /// The scan without allocation finds what decoding the path and splitting it did.
    #[test]
    fn dot_segments_agree_with_decoding_then_splitting() {
        fn decoded(path: &str) -> bool {
            let decoded = path
                .to_ascii_lowercase()
                .replace("%2e", ".")
                .replace("%2f", "/")
                .replace("%5c", "/")
                .replace('\\', "/");
            decoded.split('/').any(|seg| seg == "." || seg == "..")
        }
        let alphabet = [
            "%", "2", "e", "E", "f", "5", "c", "C", "/", "\\", ".", "a", "%2e", "%2F",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..200_000 {
            let mut path = String::new();
            for _ in 0..(seed % 9) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                path.push_str(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            assert_eq!(has_dot_segment(&path), decoded(&path), "{path:?}");
        }
    }
}
