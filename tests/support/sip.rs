//! A SIP-over-WebSocket edge the call tests script (RFC 7118), and SIP phones that talk
//! through sluice.
//!
//! The edge accepts subprotocol `sip`, records every message it receives (with its
//! session and arrival time), and answers as a registrar and a call server: REGISTER,
//! OPTIONS → `200` (REGISTER's with the Contact it was given); an initial INVITE → `100 Trying`, then `200 OK` at once (with a To
//! tag and a Contact) when it answers automatically, or when the test says
//! ([`SipEdge::answer`]); BYE → `200`; CANCEL → `200`, and `487` for an INVITE it has not
//! answered yet — unless it was told to ignore CANCELs ([`SipEdge::ignore_cancels`]), the
//! way a `200` crosses a CANCEL on the wire. [`SipEdge::bye`] sends a BYE of its own.
//! Optionally it caps calls (`503` above, [`SipEdge::cap_calls`]) and takes its time to
//! tear a call down on a BYE ([`SipEdge::slow_byes`]), as a real call server may.
//! Messages are built by copying header lines, independent of `sluice::sip`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;

use super::{config, connect_ok, scrape, tenant, Client, Proxy, TenantSpec};

/// One message the edge received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Which session (numbered from 1 in accept order).
    pub session: u64,
    /// The message.
    pub text: String,
    /// When it arrived.
    pub at: Instant,
}

impl Seen {
    /// Its first line.
    pub fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or("")
    }

    /// The value of header `name` (case-insensitive, full name only).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.text, name)
    }
}

/// The value of header `name` in SIP `text`.
pub fn header<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The status code of a SIP response.
pub fn status(text: &str) -> Option<u16> {
    text.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

#[derive(Debug, Default)]
struct State {
    seen: Vec<Seen>,
    sessions: HashMap<u64, mpsc::UnboundedSender<Message>>,
    /// Initial INVITEs not answered finally yet: Call-ID → (session, INVITE).
    pending: HashMap<String, (u64, String)>,
    /// Answered 2xx: Call-ID → (session, INVITE, the 200).
    up: HashMap<String, (u64, String, String)>,
    /// INVITEs answered `503` for the call cap.
    refused: usize,
}

/// A running SIP edge.
#[derive(Debug, Clone)]
pub struct SipEdge {
    /// Its address.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    auto_answer: Arc<AtomicBool>,
    ignore_cancels: Arc<AtomicBool>,
    /// Calls at once (ringing or up) above which an initial INVITE gets `503`; 0: none.
    max_calls: Arc<AtomicU64>,
    /// How long a BYE takes to tear its call down (the call counts until then; the
    /// `200` follows), in milliseconds.
    bye_delay_ms: Arc<AtomicU64>,
    ignore_byes: Arc<AtomicBool>,
    /// The next BYE is answered `401` (the call stays up).
    challenge_bye: Arc<AtomicBool>,
}

impl SipEdge {
    /// Starts an edge on 127.0.0.1:0; it answers INVITEs `200` at once when
    /// `auto_answer`, else when the test says.
    pub async fn start(auto_answer: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let edge = Self {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
            auto_answer: Arc::new(AtomicBool::new(auto_answer)),
            ignore_cancels: Arc::default(),
            max_calls: Arc::default(),
            bye_delay_ms: Arc::default(),
            ignore_byes: Arc::default(),
            challenge_bye: Arc::default(),
        };
        let e = edge.clone();
        let ids = Arc::new(AtomicU64::new(0));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let e = e.clone();
                let id = ids.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(async move { e.serve(tcp, id).await });
            }
        });
        edge
    }

    /// `ws://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// From now on, CANCELs are recorded and otherwise ignored.
    pub fn ignore_cancels(&self) {
        self.ignore_cancels.store(true, Ordering::SeqCst);
    }

    /// From now on, an initial INVITE while `n` calls ring or are up is answered `503`,
    /// like an edge's call cap.
    pub fn cap_calls(&self, n: u64) {
        self.max_calls.store(n, Ordering::SeqCst);
    }

    /// From now on, a BYE takes `d` to end its call (answered `200` then), like an edge
    /// that tears a call down before it confirms.
    pub fn slow_byes(&self, d: Duration) {
        self.bye_delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// INVITEs answered `503` for the call cap.
    pub fn refused(&self) -> usize {
        self.state.lock().unwrap().refused
    }

    /// The next BYE is answered `401 Unauthorized`, and its call stays up (the client
    /// is to send it again with credentials).
    pub fn challenge_next_bye(&self) {
        self.challenge_bye.store(true, Ordering::SeqCst);
    }

    /// From now on, BYEs are recorded and otherwise ignored (never answered).
    pub fn ignore_byes(&self) {
        self.ignore_byes.store(true, Ordering::SeqCst);
    }

    async fn serve(&self, tcp: tokio::net::TcpStream, id: u64) {
        let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, offer_sip).await else {
            return;
        };
        let (mut tx, mut rx) = ws.split();
        let (out, mut outq) = mpsc::unbounded_channel();
        self.state.lock().unwrap().sessions.insert(id, out.clone());
        let writer = tokio::spawn(async move {
            while let Some(m) = outq.recv().await {
                if tx.send(m).await.is_err() {
                    break;
                }
            }
        });
        while let Some(Ok(msg)) = rx.next().await {
            let text = match msg {
                Message::Text(t) => t.to_string(),
                Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
                Message::Close(_) => break,
                _ => continue,
            };
            for reply in self.on_message(id, text) {
                let _ = out.send(Message::text(reply));
            }
        }
        let mut state = self.state.lock().unwrap();
        state.sessions.remove(&id);
        state.pending.retain(|_, (s, _)| *s != id);
        state.up.retain(|_, (s, _, _)| *s != id);
        drop(state);
        writer.abort();
    }

    fn on_message(&self, id: u64, text: String) -> Vec<String> {
        let mut state = self.state.lock().unwrap();
        state.seen.push(Seen {
            session: id,
            text: text.clone(),
            at: Instant::now(),
        });
        let first = text.lines().next().unwrap_or("").to_owned();
        let method = first.split(' ').next().unwrap_or("");
        let call_id = header(&text, "call-id").unwrap_or("").to_owned();
        let to_tagged = header(&text, "to").is_some_and(|t| t.contains("tag="));
        match method {
            "INVITE" if !to_tagged => {
                let cap = self.max_calls.load(Ordering::SeqCst);
                if cap > 0 && (state.up.len() + state.pending.len()) as u64 >= cap {
                    state.refused += 1;
                    return vec![response(&text, "503 Service Unavailable", true)];
                }
                let mut out = vec![response(&text, "100 Trying", false)];
                if self.auto_answer.load(Ordering::SeqCst) {
                    let ok = response(&text, "200 OK", true);
                    state.up.insert(call_id, (id, text.clone(), ok.clone()));
                    out.push(ok);
                } else {
                    state.pending.insert(call_id, (id, text.clone()));
                }
                out
            }
            "INVITE" | "REGISTER" | "OPTIONS" => vec![response(&text, "200 OK", true)],
            "BYE" if self.bye_delay_ms.load(Ordering::SeqCst) > 0 => {
                let delay = Duration::from_millis(self.bye_delay_ms.load(Ordering::SeqCst));
                let state = self.state.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let mut state = state.lock().unwrap();
                    let known = state.up.remove(&call_id).is_some();
                    let line = if known {
                        "200 OK"
                    } else {
                        "481 Call/Transaction Does Not Exist"
                    };
                    if let Some(out) = state.sessions.get(&id) {
                        let _ = out.send(Message::text(response(&text, line, true)));
                    }
                });
                Vec::new()
            }
            "BYE" if self.ignore_byes.load(Ordering::SeqCst) => Vec::new(),
            "BYE" if self.challenge_bye.swap(false, Ordering::SeqCst) => {
                vec![response(&text, "401 Unauthorized", true)]
            }
            "BYE" => {
                // A BYE ends the dialog it names: from the caller, its From tag is the
                // INVITE's (a real edge answers `481` to a BYE of no dialog it knows).
                let from_tag = |t: &str| {
                    header(t, "from").and_then(|f| f.split(";tag=").nth(1).map(str::to_owned))
                };
                let known = state
                    .up
                    .get(&call_id)
                    .is_some_and(|(_, invite, _)| from_tag(invite) == from_tag(&text));
                if known {
                    state.up.remove(&call_id);
                }
                vec![response(
                    &text,
                    if known {
                        "200 OK"
                    } else {
                        "481 Call/Transaction Does Not Exist"
                    },
                    true,
                )]
            }
            "CANCEL" if self.ignore_cancels.load(Ordering::SeqCst) => Vec::new(),
            "CANCEL" => {
                let mut out = vec![response(&text, "200 OK", true)];
                if let Some((_, invite)) = state.pending.remove(&call_id) {
                    out.push(response(&invite, "487 Request Terminated", true));
                }
                out
            }
            _ => Vec::new(),
        }
    }

    /// Answers the pending INVITE of `call_id` with `code` (`200`: the call is up).
    pub fn answer(&self, call_id: &str, code: u16) {
        let mut state = self.state.lock().unwrap();
        let (session, invite) = state
            .pending
            .remove(call_id)
            .unwrap_or_else(|| panic!("no pending INVITE {call_id}"));
        let line = match code {
            200 => "200 OK".to_owned(),
            486 => "486 Busy Here".to_owned(),
            503 => "503 Service Unavailable".to_owned(),
            other => format!("{other} Other"),
        };
        let resp = response(&invite, &line, true);
        if code == 200 {
            state
                .up
                .insert(call_id.to_owned(), (session, invite, resp.clone()));
        }
        if let Some(out) = state.sessions.get(&session) {
            let _ = out.send(Message::text(resp));
        }
    }

    /// Ends the call `call_id` with a BYE of the edge's own.
    pub fn bye(&self, call_id: &str) {
        let mut state = self.state.lock().unwrap();
        let (session, invite, ok) = state
            .up
            .remove(call_id)
            .unwrap_or_else(|| panic!("no call {call_id} up"));
        let from = header(&invite, "from").unwrap_or("");
        let to = header(&ok, "to").unwrap_or("");
        let bye = format!(
            "BYE sip:phone@client.invalid;transport=ws SIP/2.0\r\nVia: SIP/2.0/WS edge.invalid;branch=z9hG4bKedgebye{session}\r\nMax-Forwards: 70\r\nFrom: {to}\r\nTo: {from}\r\nCall-ID: {call_id}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
        );
        if let Some(out) = state.sessions.get(&session) {
            let _ = out.send(Message::text(bye));
        }
    }

    /// Sends the session of call `call_id` (pending or up) what `make` writes from its
    /// INVITE: a forked or retransmitted `200`, a BYE of another fork…
    pub fn send_for(&self, call_id: &str, make: impl FnOnce(&str) -> String) {
        let state = self.state.lock().unwrap();
        let (session, invite) = state
            .pending
            .get(call_id)
            .map(|(s, i)| (*s, i.clone()))
            .or_else(|| state.up.get(call_id).map(|(s, i, _)| (*s, i.clone())))
            .unwrap_or_else(|| panic!("no call {call_id}"));
        if let Some(out) = state.sessions.get(&session) {
            let _ = out.send(Message::text(make(&invite)));
        }
    }

    /// Everything received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The Call-IDs of initial INVITEs received, in order.
    pub fn invites(&self) -> Vec<String> {
        self.seen()
            .iter()
            .filter(|s| {
                s.first_line().starts_with("INVITE ")
                    && !s.header("to").is_some_and(|t| t.contains("tag="))
            })
            .filter_map(|s| s.header("call-id").map(str::to_owned))
            .collect()
    }

    /// How many received messages start with `prefix` (`"INVITE "`, `"SIP/2.0 200"`…)
    /// and belong to `call_id` (any call when `None`).
    pub fn count(&self, prefix: &str, call_id: Option<&str>) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.first_line().starts_with(prefix))
            .filter(|s| call_id.is_none_or(|c| s.header("call-id") == Some(c)))
            .count()
    }

    /// Calls up now.
    pub fn calls_up(&self) -> usize {
        self.state.lock().unwrap().up.len()
    }

    /// Waits until `cond` holds, up to 10 s.
    pub async fn wait_for(&self, what: &str, cond: impl Fn(&SipEdge) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Answers a WebSocket upgrade with subprotocol `sip` when it is offered (a SIP server
/// over WebSocket, RFC 7118).
// tungstenite fixes the callback's error type.
#[allow(clippy::result_large_err)]
pub fn offer_sip(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let offered = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "sip");
    if offered {
        resp.headers_mut()
            .insert("sec-websocket-protocol", "sip".parse().unwrap());
    }
    Ok(resp)
}

/// A response to `request` with status `line`: its Via, From, To (with a tag when
/// `tag`), Call-ID and CSeq; a `200` to an INVITE carries a Contact and an SDP answer.
pub fn response(request: &str, line: &str, tag: bool) -> String {
    let mut out = format!("SIP/2.0 {line}\r\n");
    for l in request.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
        let name = l
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "via" | "from" | "call-id" | "cseq" => {
                out.push_str(l);
                out.push_str("\r\n");
            }
            "to" => {
                out.push_str(l);
                if tag && !l.contains("tag=") {
                    out.push_str(";tag=edge1");
                }
                out.push_str("\r\n");
            }
            _ => {}
        }
    }
    let cseq = header(request, "cseq").unwrap_or("");
    // A registrar's 200 names the bindings (JsSIP ignores one without).
    if line.starts_with("200") && cseq.ends_with("REGISTER") {
        if let Some(contact) = header(request, "contact") {
            out.push_str(&format!("Contact: {contact};expires=600\r\n"));
        }
    }
    let invite_ok = line.starts_with("200") && cseq.ends_with("INVITE");
    if invite_ok {
        let sdp = "v=0\r\no=edge 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n";
        out.push_str("Contact: <sip:edge@127.0.0.1;transport=ws>\r\nRecord-Route: <sip:rr1.edge.invalid;lr>\r\nRecord-Route: <sip:rr2.edge.invalid;lr>\r\nContent-Type: application/sdp\r\n");
        out.push_str(&format!("Content-Length: {}\r\n\r\n{sdp}", sdp.len()));
    } else {
        out.push_str("Content-Length: 0\r\n\r\n");
    }
    out
}

/// A phone: a SIP-over-WebSocket client session (through sluice), sending hand-written
/// SIP the way a UA does.
pub struct Phone {
    /// Its session.
    pub ws: Client,
    /// Its name (in URIs and tags).
    pub name: String,
}

impl Phone {
    /// A phone on an open session.
    pub fn new(ws: Client, name: &str) -> Self {
        Self {
            ws,
            name: name.to_owned(),
        }
    }

    /// Sends SIP `text`.
    pub async fn send(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// The initial INVITE of call `call_id` (CSeq 1).
    pub fn invite_text(&self, call_id: &str) -> String {
        let n = &self.name;
        let sdp = "v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n";
        format!(
            "INVITE sip:queue@edge.invalid SIP/2.0\r\nVia: SIP/2.0/WS {n}.invalid;branch=z9hG4bK{call_id}\r\nMax-Forwards: 70\r\nFrom: <sip:{n}@edge.invalid>;tag=t{n}\r\nTo: <sip:queue@edge.invalid>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:{n}@client.invalid;transport=ws>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
    }

    /// Sends the initial INVITE of `call_id`.
    pub async fn invite(&mut self, call_id: &str) {
        let text = self.invite_text(call_id);
        self.send(text).await;
    }

    /// Sends the initial INVITE of `call_id` and reads its `100 Trying` (the next
    /// message; the test fails otherwise): sluice's when it holds the INVITE.
    pub async fn invite_trying(&mut self, call_id: &str) {
        self.invite(call_id).await;
        let trying = self.recv().await;
        assert_eq!(status(&trying), Some(100), "{}: {trying}", self.name);
        assert_eq!(header(&trying, "call-id"), Some(call_id), "{trying}");
    }

    /// Sends a CANCEL of `call_id`'s INVITE.
    pub async fn cancel(&mut self, call_id: &str) {
        let n = &self.name;
        self.send(format!(
            "CANCEL sip:queue@edge.invalid SIP/2.0\r\nVia: SIP/2.0/WS {n}.invalid;branch=z9hG4bK{call_id}\r\nMax-Forwards: 70\r\nFrom: <sip:{n}@edge.invalid>;tag=t{n}\r\nTo: <sip:queue@edge.invalid>\r\nCall-ID: {call_id}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
        ))
        .await;
    }

    /// Sends the ACK for a final answer to `call_id`'s INVITE (`to`: that answer's To).
    pub async fn ack(&mut self, call_id: &str, to: &str) {
        let n = &self.name;
        self.send(format!(
            "ACK sip:queue@edge.invalid SIP/2.0\r\nVia: SIP/2.0/WS {n}.invalid;branch=z9hG4bKack{call_id}\r\nMax-Forwards: 70\r\nFrom: <sip:{n}@edge.invalid>;tag=t{n}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        ))
        .await;
    }

    /// Sends a BYE for `call_id` (`to`: the 200's To), CSeq 2.
    pub async fn bye(&mut self, call_id: &str, to: &str) {
        let text = self.bye_text(call_id, to, 2);
        self.send(text).await;
    }

    /// A BYE for `call_id` (`to`: the 200's To) with CSeq number `cseq`.
    pub fn bye_text(&self, call_id: &str, to: &str, cseq: u32) -> String {
        let n = &self.name;
        format!(
            "BYE sip:edge@127.0.0.1;transport=ws SIP/2.0\r\nVia: SIP/2.0/WS {n}.invalid;branch=z9hG4bKbye{cseq}{call_id}\r\nMax-Forwards: 70\r\nFrom: <sip:{n}@edge.invalid>;tag=t{n}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} BYE\r\nContent-Length: 0\r\n\r\n"
        )
    }

    /// Sends a re-INVITE in `call_id`'s dialog (`to`: the 200's To), CSeq 3.
    pub async fn reinvite(&mut self, call_id: &str, to: &str) {
        let n = &self.name;
        self.send(format!(
            "INVITE sip:edge@127.0.0.1;transport=ws SIP/2.0\r\nVia: SIP/2.0/WS {n}.invalid;branch=z9hG4bKre{call_id}\r\nMax-Forwards: 70\r\nFrom: <sip:{n}@edge.invalid>;tag=t{n}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 3 INVITE\r\nContent-Length: 0\r\n\r\n"
        ))
        .await;
    }

    /// The next SIP message, within `within` (`None`: none came).
    pub async fn recv_within(&mut self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Message::Text(t)))) => return Some(t.to_string()),
                Ok(Some(Ok(Message::Binary(b)))) => {
                    return Some(String::from_utf8_lossy(&b).into_owned())
                }
                Ok(Some(Ok(_))) => {}
                Ok(other) => panic!("{}: session ended: {other:?}", self.name),
            }
        }
    }

    /// The next SIP message (within 10 s, else the test fails).
    pub async fn recv(&mut self) -> String {
        let name = self.name.clone();
        self.recv_within(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{name}: no SIP message within 10 s"))
    }

    /// Reads until a response with status `code` to `call_id` comes (10 s); returns it.
    pub async fn expect(&mut self, code: u16, call_id: &str) -> String {
        loop {
            let m = self.recv().await;
            if status(&m) == Some(code) && header(&m, "call-id") == Some(call_id) {
                return m;
            }
            assert!(
                status(&m).is_none_or(|s| s < 200 || header(&m, "call-id") != Some(call_id)),
                "{}: expected {code} for {call_id}, got {m}",
                self.name
            );
        }
    }
}

/// Tenant `acme` speaking SIP in `accept` mode with the call keys of `calls`
/// (`key = value` TOML lines) and roomy session limits.
pub fn sip_tenant(calls: &[(&str, &str)]) -> TenantSpec {
    sip_tenant_named("acme", calls)
}

/// [`sip_tenant`] called `name`.
pub fn sip_tenant_named(name: &str, calls: &[(&str, &str)]) -> TenantSpec {
    let mut t = tenant(name)
        .accept_mode()
        .subprotocols(&["sip"])
        .max_sessions(100)
        .unpaced();
    for (k, v) in calls {
        t = t.key(k, v);
    }
    t
}

/// sluice in front of `edge` with [`sip_tenant`]`(calls)`.
pub async fn sip_proxy(edge: &SipEdge, calls: &[(&str, &str)]) -> Proxy {
    config()
        .upstream(&edge.url())
        .tenant(sip_tenant(calls))
        .start()
        .await
}

/// The `200 OK` to `invite` with To tag `tag` (another fork than `edge1`'s, or the same
/// again: a retransmission).
pub fn ok_tagged(invite: &str, tag: &str) -> String {
    response(invite, "200 OK", true).replace(";tag=edge1", &format!(";tag={tag}"))
}

/// A BYE from the edge side in the dialog of `invite` whose edge tag is `tag`.
pub fn edge_bye(invite: &str, tag: &str) -> String {
    let from = header(invite, "from").unwrap_or("");
    let to = header(invite, "to").unwrap_or("");
    let call_id = header(invite, "call-id").unwrap_or("");
    format!(
        "BYE sip:phone@client.invalid;transport=ws SIP/2.0\r\nVia: SIP/2.0/WS edge.invalid;branch=z9hG4bKfork{tag}\r\nMax-Forwards: 70\r\nFrom: {to};tag={tag}\r\nTo: {from}\r\nCall-ID: {call_id}\r\nCSeq: 7 BYE\r\nContent-Length: 0\r\n\r\n"
    )
}

/// A phone with a session through `proxy` as a client of `tenant` (subprotocol `sip`).
pub async fn phone_of(proxy: &Proxy, tenant: &str, name: &str) -> Phone {
    let url = proxy.url(&format!("/t/{tenant}/"));
    let ws = connect_ok(&url, &[("sec-websocket-protocol", "sip")]).await;
    Phone::new(ws, name)
}

/// A phone of `acme`.
pub async fn phone(proxy: &Proxy, name: &str) -> Phone {
    phone_of(proxy, "acme", name).await
}

/// Calls `tenant` counts now.
pub fn active_of(proxy: &Proxy, tenant: &str) -> u32 {
    let load = proxy.admission.call_load(tenant);
    load.expect("the tenant counts calls").active
}

/// Calls `acme` counts now.
pub fn active(proxy: &Proxy) -> u32 {
    active_of(proxy, "acme")
}

/// INVITEs `acme` holds now.
pub fn queued(proxy: &Proxy) -> u32 {
    let load = proxy.admission.call_load("acme");
    load.expect("acme counts calls").queued
}

/// `sluice_calls_total{tenant="acme",outcome}` as scraped.
pub async fn calls_total(proxy: &Proxy, outcome: &str) -> f64 {
    scrape(proxy.admin).await.get(
        "sluice_calls_total",
        &[("tenant", "acme"), ("outcome", outcome)],
    )
}

/// Places call `call_id` from `p` on an auto-answering edge and ACKs it; the 200's To.
pub async fn established(p: &mut Phone, call_id: &str) -> String {
    p.invite(call_id).await;
    let ok = p.expect(200, call_id).await;
    let to = header(&ok, "to").unwrap().to_owned();
    p.ack(call_id, &to).await;
    to
}
