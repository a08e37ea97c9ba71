//! Steps 4 and 6 of the flow in `accept` mode (DESIGN.md): sluice answers the client's
//! upgrade itself, holds its messages while it waits in the queue, and then relays
//! WebSocket *messages* between two WebSocket connections of its own.
//!
//! Why the mode exists: in a browser a refused handshake surfaces as close code 1006
//! with no reason and feeds the tab's reconnect throttle, and a held-open upgrade blocks
//! the browser's other sockets to the same host. Answering `101` at once and refusing
//! with a close frame (`1013` and `"<reason>; retry-after=<s>"`) explains every refusal
//! to JavaScript and lets a browser queue for as long as the tenant's `queue_timeout`.
//!
//! # One session, in order
//!
//! 1. [`choose_subprotocol`]: the first subprotocol the client offered that the tenant
//!    lists (credential entries `access_token.*` are never candidates, so never echoed);
//!    an offer of only unlisted ones is a `400` before any upgrade.
//! 2. [`switching_protocols`]: the `101`, with no `Sec-WebSocket-Extensions`
//!    (`permessage-deflate` is declined: neither leg implements it).
//! 3. [`serve`] (a task of its own): the client's messages are kept in a [`Held`] buffer
//!    (bounded in bytes and messages, `[accept]`) while admission runs and then while the
//!    upstream handshake runs; pings are answered by sluice. A client that overflows it
//!    is closed with `1008`; one that leaves frees its place in the queue at once; one
//!    that breaks the protocol or a size limit frees it too and is told as in [`relay()`](crate::relay::messages::relay)
//!    (`1002`, `1007`, `1009`; counted `protocol-error`).
//! 4. A refusal is a close frame ([`Rejection::close_code`], [`Rejection::close_reason`]),
//!    counted and logged exactly as in `hold` mode.
//! 5. Admitted: the upstream handshake is sluice's own (a fresh key, the chosen
//!    subprotocol only, no extensions) and is checked ([`check_edge_handshake`]); an edge
//!    that does not take the subprotocol closes the client with `1011`. The held
//!    messages go first, then [`relay()`](crate::relay::messages::relay) moves messages both ways.
//!
//! # Cost
//!
//! tokio-tungstenite's defaults (128 KiB read buffers, zero-filled before each read, and
//! an unbounded write buffer) cost about 257 KB per idle session. [`ws_config`] uses
//! [`READ_BUFFER`]-byte read buffers, writes each message as it is sent (no write
//! buffering), bounds the write buffer, and limits frames and messages to
//! `accept.max_message_bytes`. Figures are in `docs/benchmarks.md`.
//!
//! tungstenite keeps the capacity its buffers grew to: read whole, one 2 MB frame would
//! leave a 2 MB read buffer on each leg, and written whole, a 2 MB write buffer, for as
//! long as the session lasts (8 MB per idle session for one echoed 2 MB message). So a
//! leg's bytes reach tungstenite through [`Refragment`], which hands it large data
//! frames as fragments of [`FRAGMENT`] bytes (its read buffer stays at [`READ_BUFFER`]),
//! and [`relay()`](crate::relay::messages::relay) sends messages over [`FRAGMENT`] bytes as fragments of that size (its
//! write buffer stays at one). What remains of a large message is the buffer tungstenite
//! assembles it in, freed once the message is sent on: an idle session holds no message
//! buffer (DESIGN step 6), and no tungstenite buffer either: [`Ws`] parks a leg between
//! messages (it gives up its context and awaits its socket's readiness). `src/main.rs`
//! fixes glibc's mmap threshold so that such blocks go back to the OS.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;

use futures_util::StreamExt;
use http::request::Parts;

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{connect_upstream, record_admitted, record_refusal, Answer, ClientGone, Connect, Then};
use crate::auth::Credential;
use crate::calls::CallHook;
use crate::config::{self, Config};
use crate::control::{Control, SessionCount, SessionStop};
use crate::metrics::TenantMetrics;
use crate::reject::{self, Rejection};
use crate::relay::messages::{fault_frame, relay_with};
use crate::relay::{Leg, Moved};
use crate::release::Session;
use crate::runtime::Runtime;
use crate::tenants::{CredentialCheck, Tenant};
use crate::upstream::{ClientInfo, Connected, UpstreamRequest};
use crate::ws::{
    check_edge_handshake, choose_subprotocol, close_and_wait, close_frame, drain, leg_ws,
    own_handshake, switching_protocols, ws_config, Ws,
};

/// Answers an `accept`-mode connect, resolved and authenticated: `400` when no
/// subprotocol fits, else `101` at once, with [`serve`] spawned to queue behind it.
pub(crate) fn start(
    c: Connect,
    parts: &Parts,
    mut upstream_req: UpstreamRequest,
    credential: Option<Credential>,
) -> Answer {
    let tm = c.settings.metrics.clone();
    let tenant_config = &c.settings.config;
    let protocol = match choose_subprotocol(&tenant_config.limits.subprotocols, parts) {
        Ok(p) => p,
        Err(detail) => {
            // Loud: a wrong `subprotocols` list refuses a whole tenant's clients.
            if let Some(suppressed) = tm.log_budget.spend() {
                tracing::warn!(
                    target: "sluice::outcome",
                    client = %c.info.addr,
                    request_id = c.request_id,
                    tenant = %c.tenant.name,
                    detail,
                    suppressed,
                    "connect refused (400): no acceptable subprotocol"
                );
            }
            return reject::bad_request(&detail, &c.request_id).into();
        }
    };
    let key = own_handshake(&mut upstream_req.headers, protocol.as_deref());
    let resp = switching_protocols(parts, protocol.as_deref(), &c.request_id);
    // Kept for the session only when there is something a reload could revoke.
    let credential =
        credential.filter(|_| !matches!(tenant_config.auth, crate::config::Auth::None));
    let pending = Pending {
        config: c.runtime.config(),
        shared: c.runtime,
        tenant: c.tenant,
        tm,
        request_id: c.request_id,
        info: c.info,
        upstream_req,
        key,
        protocol,
        tenant_source: c.tenant_source,
        credential,
        inflight: c.inflight,
    };
    Answer {
        response: resp,
        then: Some(Then::Accept(Box::new(pending))),
    }
}

/// Everything [`serve`] needs of the request, owned by its task.
#[derive(Debug)]
pub struct Pending {
    /// What every connection shares.
    pub shared: Arc<Runtime>,
    /// The config in force when the request was resolved.
    pub config: Arc<Config>,
    /// The tenant's handle, authenticated.
    pub tenant: Arc<Tenant>,
    /// Its metrics.
    pub tm: Arc<TenantMetrics>,
    /// The request id.
    pub request_id: String,
    /// Where the client connects from.
    pub info: ClientInfo,
    /// The upstream request, with sluice's own key ([`own_handshake`]).
    pub upstream_req: UpstreamRequest,
    /// That key.
    pub key: String,
    /// The subprotocol answered to the client and asked of the edge.
    pub protocol: Option<String>,
    /// How the tenant was found, for the outcome line.
    pub tenant_source: &'static str,
    /// The credential the client authenticated with, kept for the session so that a
    /// reload that revokes it closes the session (`1008`).
    pub credential: Option<Credential>,
    /// Counts this connect in the drain's wait until it is answered.
    pub inflight: SessionCount,
}

/// Messages a queued client sent, in order, within `[accept]`'s bounds.
#[derive(Debug)]
pub struct Held {
    messages: VecDeque<Message>,
    bytes: usize,
    max_bytes: usize,
    max_messages: usize,
}

/// A held buffer would exceed its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

impl Held {
    /// An empty buffer with the bounds of `[accept]`.
    pub fn new(limits: &config::Accept) -> Self {
        Self {
            messages: VecDeque::new(),
            bytes: 0,
            max_bytes: limits.held_bytes as usize,
            max_messages: limits.held_messages as usize,
        }
    }

    /// Keeps a message.
    ///
    /// # Errors
    /// [`Overflow`] when it would take the buffer past either bound.
    pub fn push(&mut self, message: Message) -> Result<(), Overflow> {
        let bytes = self.bytes + message.len();
        if bytes > self.max_bytes || self.messages.len() >= self.max_messages {
            return Err(Overflow);
        }
        self.bytes = bytes;
        self.messages.push_back(message);
        Ok(())
    }

    /// The messages, in the order they came.
    pub fn into_messages(self) -> VecDeque<Message> {
        self.messages
    }
}

/// Why a queued client's wait ended early.
#[derive(Debug)]
enum Left {
    /// The drain's deadline came: sluice closes it (`1001 draining`).
    Closing,
    /// It closed (a close frame or end of stream) or its connection failed.
    Gone,
    /// It sent more than the held buffer takes.
    Overflow,
    /// It broke the protocol or a size limit: the error, for [`fault_frame`].
    Fault(WsError),
}

/// Runs `work` while reading the queued client: data messages go to `held`, pings are
/// answered (by tungstenite, on the next read), everything else is dropped. Gives up at
/// the drain's deadline, and when the client leaves, overflows `held`, or breaks the
/// protocol or a size limit (which [`leave`] answers with the close frame [`relay()`](crate::relay::messages::relay)
/// would send after admission).
async fn while_queued<T>(
    client: &mut Ws,
    held: &mut Held,
    control: &Control,
    work: impl Future<Output = T>,
) -> Result<T, Left> {
    let mut work = pin!(work);
    let mut closing = pin!(control.closed());
    loop {
        tokio::select! {
            biased;
            out = &mut work => return Ok(out),
            () = &mut closing => return Err(Left::Closing),
            msg = client.next() => match msg {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    held.push(m).map_err(|Overflow| Left::Overflow)?;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(e)) if fault_frame(&e).is_some() => return Err(Left::Fault(e)),
                Some(Ok(Message::Close(_)) | Err(_)) | None => return Err(Left::Gone),
            },
        }
    }
}

/// The client left before its `101` was written: counted and logged `client-gone`, as
/// a client that leaves while queued is.
pub(super) fn abandon(p: &Pending, why: &'static str) {
    tracing::debug!(request_id = %p.request_id, why, "upgrade failed");
    drop(ClientGone::new(&p.tm, &p.request_id, p.info.addr));
}

/// The session task of one `accept`-mode client, from its `101` to the end of its relay.
pub async fn serve(p: Pending, client: Leg) {
    let ws_config = ws_config(&p.config.accept);
    // Counts and logs `client-gone` if the client leaves before it is answered.
    let mut gone = ClientGone::new(&p.tm, &p.request_id, p.info.addr);
    let mut client = leg_ws(client.stream, client.early, Role::Server, ws_config);
    let mut held = Held::new(&p.config.accept);
    // Step 4: admission, while the client's messages are held.
    let control = &p.shared.control;
    let admission = p.tenant.admit(&p.shared.admission);
    let admitted = match while_queued(&mut client, &mut held, control, admission).await {
        Ok(Ok(admitted)) => admitted,
        Ok(Err(rejection)) => {
            gone.disarm();
            return refuse(&p, &mut client, rejection, None).await;
        }
        Err(left) => return leave(&p, &mut client, left, gone).await,
    };
    gone.stage = Some("upstream-handshake");
    if let Some(waited) = admitted.waited {
        p.tm.queue_wait(waited);
    }

    // Step 5: the upstream handshake, still holding.
    let connect = connect_upstream(&p.shared, &p.tenant, &p.request_id, &p.upstream_req);
    let connected = match while_queued(&mut client, &mut held, control, connect).await {
        Ok(Ok(connected)) => connected,
        Ok(Err((rejection, failed))) => {
            gone.disarm();
            // The slot is free before the closing handshake, which may take a while.
            drop(admitted);
            return refuse(&p, &mut client, rejection, failed.as_ref()).await;
        }
        Err(left) => {
            drop(admitted);
            return leave(&p, &mut client, left, gone).await;
        }
    };
    gone.disarm();
    if let Err(detail) = check_edge_handshake(&connected.headers, &p.key, p.protocol.as_deref()) {
        let rejection = Rejection::edge_broke_handshake(detail);
        record_refusal(&p.tm, &rejection, &p.request_id, p.info, None);
        // Free the slot and the endpoint's place first; both legs are closed properly.
        drop(admitted);
        let Connected { leg, lease, .. } = connected;
        drop(lease);
        let mut edge = edge_ws(leg, ws_config);
        tokio::join!(
            close_and_wait(
                &mut client,
                Some(close_frame(
                    rejection.close_code(),
                    &rejection.close_reason()
                ))
            ),
            close_and_wait(
                &mut edge,
                Some(close_frame(CloseCode::Normal, "subprotocol not accepted"))
            )
        );
        return;
    }
    record_admitted(
        &p.tm,
        &p.request_id,
        p.info,
        p.tenant_source,
        admitted.waited,
        &connected,
    );

    let Connected {
        leg,
        endpoint,
        lease,
        ..
    } = connected;
    let session = Session::start(
        (admitted.permit, lease),
        &p.shared.control,
        p.tm.clone(),
        p.tenant.clone(),
        p.request_id.clone(),
        p.info.addr,
        endpoint,
    );
    let edge = edge_ws(leg, ws_config);
    let held = held.into_messages();
    let revocation = p
        .credential
        .map(|credential| Box::new(CredentialCheck::new(p.tenant.clone(), credential)) as Box<_>);
    let stop = SessionStop::new(&p.shared.control, &p.shared.config().protection, revocation);
    // A SIP session of a tenant with call limits: its calls are counted (DESIGN.md "SIP
    // awareness"), through the relay's message hook. So is a session that chose no
    // subprotocol: a client that offers none is not refused, and an edge serving one
    // protocol takes the connection as SIP (Asterisk does), so skipping it would let any
    // client place calls past the cap by leaving `Sec-WebSocket-Protocol` out. (Messages
    // that are not SIP pass unchanged; another listed subprotocol is not SIP.)
    let calls = p.tenant.settings().calls.clone().filter(|_| {
        p.protocol
            .as_deref()
            .is_none_or(|s| s.eq_ignore_ascii_case("sip"))
    });
    // The relay gets a task of its own: this one's future is sized for the admission
    // and upstream handshake futures it held, far more than an idle session needs.
    // The legs and the stop signal stay in the task and the relay borrows them: moved
    // into its future, or rebound inside the task, they would take their room twice.
    let (mut client, mut edge, mut stop) = (client, edge, stop);
    tokio::spawn(async move {
        let moved = Moved::default();
        let stop = stop.wait(&moved);
        // One relay either way: a session that counts no calls carries an empty hook
        // (a word), one that does its hook on the heap.
        let hook = calls.map(|gate| Box::new(CallHook::new(gate)));
        let stats = relay_with(&mut client, &mut edge, held, &moved, stop, hook).await;
        // Step 7: release.
        session.end(stats);
    });
}

/// The upstream connection as a WebSocket.
fn edge_ws(leg: Leg, config: WebSocketConfig) -> Ws {
    leg_ws(leg.stream, leg.early, Role::Client, config)
}

/// Counts and logs a refusal as in `hold` mode, then tells the client with a close frame.
async fn refuse(
    p: &Pending,
    client: &mut Ws,
    rejection: Rejection,
    failed: Option<&crate::upstream::UpstreamFailed>,
) {
    record_refusal(&p.tm, &rejection, &p.request_id, p.info, failed);
    let frame = close_frame(rejection.close_code(), &rejection.close_reason());
    close_and_wait(client, Some(frame)).await;
}

/// A queued client's wait that ended early: at the drain's deadline it is refused
/// (`1001 draining`); one that left is counted `client-gone` by `gone` (now, not after
/// the closing handshake) and its close answered; one that overflowed its held buffer
/// is counted the same and told `1008`; one that broke the protocol or a size limit is
/// counted `protocol-error` and told as after admission ([`fault_frame`]: `1002`,
/// `1007`, `1009`). Its place in the queue (or its slot) is already free: the admission
/// or connect future ended with [`while_queued`], the caller dropped the permit.
async fn leave(p: &Pending, client: &mut Ws, left: Left, gone: ClientGone<'_>) {
    match left {
        Left::Closing => {
            gone.disarm();
            refuse(p, client, Rejection::draining(), None).await;
        }
        Left::Gone => {
            drop(gone);
            // tungstenite queued the reply to its close frame; reading sends it.
            drain(client).await;
        }
        Left::Overflow => {
            let limits = &p.config.accept;
            let mut rejection =
                Rejection::held_buffer_full(limits.held_messages, limits.held_bytes);
            rejection.waited = gone.queued_for();
            gone.disarm();
            refuse(p, client, rejection, None).await;
        }
        Left::Fault(e) => {
            gone.protocol_error(&e.to_string());
            close_and_wait(client, fault_frame(&e)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_buffer_is_bounded_in_bytes_and_messages() {
        let limits = config::Accept {
            max_message_bytes: 1 << 20,
            held_bytes: 10,
            held_messages: 3,
        };
        let mut held = Held::new(&limits);
        assert!(held.push(Message::text("12345")).is_ok());
        assert!(held.push(Message::text("12345")).is_ok());
        assert_eq!(held.push(Message::text("1")), Err(Overflow));
        let mut held = Held::new(&limits);
        for _ in 0..3 {
            held.push(Message::text("")).unwrap();
        }
        assert_eq!(held.push(Message::text("")), Err(Overflow));
        assert_eq!(held.into_messages().len(), 3);
    }
}
