//! Steps 5 and 6 of the flow in `accept` mode: the WebSocket mechanics of sluice's own legs.
//!
//! The `101` sluice answers, the handshake it makes upstream and checks, the tungstenite
//! configuration of both legs, close frames and closing handshakes.
//!
//! [`crate::proxy::accept`] (the flow) calls these; [`crate::relay::messages`] relays messages
//! between two [`Ws`] legs.
//!
//! # Cost
//!
//! tokio-tungstenite's defaults (128 KiB read buffers, zero-filled before each read, and
//! an unbounded write buffer) cost about 257 KB per idle session. [`ws_config`] uses
//! [`READ_BUFFER`]-byte read buffers, writes each message as it is sent (no write
//! buffering), bounds the write buffer, and limits frames and messages to
//! `accept.max_message_bytes`. A leg's bytes reach tungstenite through [`Refragment`],
//! which hands it large data frames as fragments of [`FRAGMENT`] bytes, so that its read
//! buffer stays at [`READ_BUFFER`]. And an idle leg holds no tungstenite buffer at all:
//! [`Ws`] parks it (drops its context) between messages. Figures are in
//! `docs/benchmarks.md`.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::Full;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

use crate::auth;
use crate::config;
use crate::reject;
use crate::stream::Stream;

/// Read buffer of a leg's tungstenite context, held while the leg is busy ([`Ws`] parks an
/// idle leg without one). Signaling messages are small; a larger one is read in pieces
/// of this size into a buffer grown for it.
pub const READ_BUFFER: usize = 4096;
/// How long a closing handshake may take before the connection is dropped.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest close reason a close frame carries (one definition, in [`crate::reject`]).
pub use crate::reject::MAX_CLOSE_REASON;

mod leg;
mod refragment;

pub use leg::Ws;
pub use refragment::{Refragment, FRAGMENT};

/// A leg's connection as a WebSocket in `role`: what was read past the handshake
/// (`early`) first, large incoming frames re-cut ([`Refragment`]); parked until it has
/// something to read or write ([`Ws`]).
pub fn leg_ws(stream: Stream, early: Bytes, role: Role, config: WebSocketConfig) -> Ws {
    let max = config.max_frame_size.unwrap_or(usize::MAX);
    Ws::new(Refragment::new(stream, early, max), role, config)
}

/// The tungstenite configuration of both legs (see the module docs, "Cost").
pub fn ws_config(limits: &config::Accept) -> WebSocketConfig {
    let max = limits.max_message_bytes as usize;
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        // One message in flight plus control frames (a pong, a close) queued beside it.
        .max_write_buffer_size(max + 4096)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// The subprotocol sluice answers with: the first one the client offered that `listed`
/// holds; `None` when the client offered none.
///
/// # Errors
/// The client offered subprotocols and none of them is listed (with an empty list,
/// none is): the `400` detail. An offer of only credential entries is refused too:
/// browsers and most client libraries fail a handshake whose answer names none of the
/// offered subprotocols, and sluice never echoes a credential.
pub fn choose_subprotocol(listed: &[String], parts: &Parts) -> Result<Option<String>, String> {
    let mut any = false;
    let mut offered = Vec::new();
    for p in auth::subprotocols(parts) {
        any = true;
        if !p.starts_with(auth::SUBPROTOCOL_PREFIX) {
            offered.push(p);
        }
    }
    if !any {
        return Ok(None);
    }
    if let Some(p) = offered.iter().find(|p| listed.iter().any(|l| l == *p)) {
        return Ok(Some((*p).to_owned()));
    }
    let accepted = if listed.is_empty() {
        "none (offer no subprotocol)".to_owned()
    } else {
        listed.join(", ")
    };
    Err(if offered.is_empty() {
        format!(
            "the only subprotocol offered is a credential, which sluice never echoes, and a client fails a handshake that names none of its offers; offer one of these as well: {accepted}"
        )
    } else {
        format!(
            "none of the offered subprotocols ({}) is accepted for this tenant; accepted: {accepted}",
            offered.join(", ")
        )
    })
}

/// The `101` sluice answers itself: the accept key of the client's, the chosen
/// subprotocol, and no extensions.
pub fn switching_protocols(
    client: &Parts,
    protocol: Option<&str>,
    request_id: &str,
) -> Response<Full<Bytes>> {
    let key = client
        .headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map_or(&[][..], HeaderValue::as_bytes);
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key)) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(v) = protocol.and_then(|p| HeaderValue::from_str(p).ok()) {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(reject::REQUEST_ID_HEADER, v);
    }
    resp
}

/// Makes the upstream request's header lines sluice's own handshake: a fresh key,
/// version 13, only the chosen subprotocol, no extensions. Returns the key, to check the
/// edge's answer with.
pub fn own_handshake(
    headers: &mut Vec<(HeaderName, HeaderValue)>,
    protocol: Option<&str>,
) -> String {
    let key = generate_key();
    headers.retain(|(name, _)| {
        name != header::SEC_WEBSOCKET_KEY
            && name != header::SEC_WEBSOCKET_VERSION
            && name != header::SEC_WEBSOCKET_EXTENSIONS
            && name != header::SEC_WEBSOCKET_PROTOCOL
    });
    if let Ok(v) = HeaderValue::from_str(&key) {
        headers.push((header::SEC_WEBSOCKET_KEY, v));
    }
    headers.push((
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    ));
    if let Some(v) = protocol.and_then(|p| HeaderValue::from_str(p).ok()) {
        headers.push((header::SEC_WEBSOCKET_PROTOCOL, v));
    }
    key
}

/// Checks the edge's `101` against the handshake sluice sent (RFC 6455 §4.1): the
/// accept key, the subprotocol asked for and nothing else, no extension.
///
/// # Errors
/// What is wrong, for the `1011` close reason and the log.
pub fn check_edge_handshake(
    headers: &HeaderMap,
    key: &str,
    protocol: Option<&str>,
) -> Result<(), String> {
    let accept = headers
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .map(HeaderValue::as_bytes);
    if accept != Some(derive_accept_key(key.as_bytes()).as_bytes()) {
        return Err("the edge's Sec-WebSocket-Accept does not match".into());
    }
    let answered = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    match (protocol, answered) {
        (Some(asked), Some(got)) if asked == got => {}
        (Some(asked), None) => {
            return Err(format!("the edge did not accept subprotocol {asked:?}"));
        }
        (_, Some(got)) if protocol.is_none_or(|asked| asked != got) => {
            return Err(format!(
                "the edge chose subprotocol {got:?}, which was not asked for"
            ));
        }
        _ => {}
    }
    if headers.contains_key(header::SEC_WEBSOCKET_EXTENSIONS) {
        return Err("the edge answered with an extension that was not offered".into());
    }
    Ok(())
}

/// A close frame with `reason` cut to what a frame can carry.
pub fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame {
        code,
        reason: reason[..end].to_owned().into(),
    }
}

/// Sends a close frame and waits (within [`CLOSE_TIMEOUT`]) for the peer's answer and
/// the end of its stream, dropping anything else it sends.
pub async fn close_and_wait(ws: &mut Ws, frame: Option<CloseFrame>) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if ws.send(Message::Close(frame)).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

/// Reads a leg that sent its close frame until its stream ends, which sends the reply
/// tungstenite queued.
pub async fn drain(ws: &mut Ws) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(protocols: &str) -> Parts {
        let req = Request::builder()
            .header(header::SEC_WEBSOCKET_PROTOCOL, protocols)
            .body(())
            .unwrap();
        req.into_parts().0
    }

    #[test]
    fn subprotocol_is_the_first_offered_that_is_listed() {
        let listed = vec!["sip".to_owned(), "v2".to_owned()];
        let choose = |offer| choose_subprotocol(&listed, &parts(offer));
        assert_eq!(choose("v2, sip").unwrap().as_deref(), Some("v2"));
        assert_eq!(choose("x, sip").unwrap().as_deref(), Some("sip"));
        // A credential entry is never a candidate, so never echoed.
        assert_eq!(
            choose("access_token.sip, sip").unwrap().as_deref(),
            Some("sip")
        );
        let err = choose("access_token.abc").unwrap_err();
        assert!(err.contains("credential") && !err.contains("abc"), "{err}");
        let err = choose("x, y").unwrap_err();
        assert!(err.contains("x, y") && err.contains("sip, v2"), "{err}");
        // A tenant listing none takes clients that offer none.
        let none = Request::new(()).into_parts().0;
        assert_eq!(choose_subprotocol(&[], &none).unwrap(), None);
        assert_eq!(choose_subprotocol(&listed, &none).unwrap(), None);
        assert!(choose_subprotocol(&[], &parts("sip")).is_err());
    }

    #[test]
    fn edge_handshake_is_checked() {
        let key = generate_key();
        let mut ok = HeaderMap::new();
        ok.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()).parse().unwrap(),
        );
        assert!(check_edge_handshake(&ok, &key, None).is_ok());
        assert!(check_edge_handshake(&ok, &key, Some("sip"))
            .unwrap_err()
            .contains("did not accept subprotocol \"sip\""));
        assert!(check_edge_handshake(&ok, &generate_key(), None).is_err());
        let mut sip = ok.clone();
        sip.insert(header::SEC_WEBSOCKET_PROTOCOL, "sip".parse().unwrap());
        assert!(check_edge_handshake(&sip, &key, Some("sip")).is_ok());
        assert!(check_edge_handshake(&sip, &key, None).is_err());
        assert!(check_edge_handshake(&sip, &key, Some("v2")).is_err());
        let mut deflate = ok;
        deflate.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            "permessage-deflate".parse().unwrap(),
        );
        assert!(check_edge_handshake(&deflate, &key, None).is_err());
    }

    #[test]
    fn close_reasons_are_cut_at_a_character_boundary() {
        let long = "é".repeat(100);
        let frame = close_frame(CloseCode::Again, &long);
        assert!(frame.reason.len() <= MAX_CLOSE_REASON);
        assert_eq!(frame.reason.len(), 122);
    }
}
