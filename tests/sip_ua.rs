//! JsSIP user agents (tests/sip-ua/ua.js, driven through `support::Jssip`) against a
//! SIP peer over WebSocket: a peer scripted here (a registrar and call server, or one
//! whose answers the test sends itself), the edge simulator's SIP mode, and the same
//! through sluice in `accept` mode. They show the harness works end to end and pin
//! down what JsSIP does on the wire around a CANCEL, which decides how sluice must
//! count calls (issue 17).
//!
//! Skipped locally without node or `tests/sip-ua/node_modules`; under CI they must run.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sluice::tools::edge_sim::{EdgeSim, SessionMode, SimConfig};
use tokio::net::TcpListener;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio_tungstenite::tungstenite::Message;

use support::sip::{offer_sip, response};
use support::{config, tenant, Jssip};

const WAIT: Duration = Duration::from_secs(15);

// ---- a SIP peer scripted by the test ----------------------------------------------

/// A SIP peer over WebSocket (subprotocol `sip`) on 127.0.0.1: answers REGISTER (with
/// the Contact it was given), BYE and OPTIONS `200`; with `auto_answer`, INVITE `100`,
/// `180`, `200` with SDP, and CANCEL `200`; without, the test answers INVITEs and
/// CANCELs itself ([`Peer::reply`]). Every message it receives is passed to the test.
struct Peer {
    url: String,
    received: UnboundedReceiver<(usize, String)>,
    /// Each connection's sender, by connection number.
    conns: Arc<Mutex<Vec<UnboundedSender<String>>>>,
}

/// The method of a request ("" for a response).
fn method(message: &str) -> &str {
    if message.starts_with("SIP/2.0") {
        return "";
    }
    message.split(' ').next().unwrap_or("")
}

impl Peer {
    async fn start(auto_answer: bool) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let (to_test, received) = unbounded_channel();
        let conns: Arc<Mutex<Vec<UnboundedSender<String>>>> = Arc::default();
        let all = conns.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, offer_sip).await else {
                    continue;
                };
                let (tx, mut rx) = unbounded_channel::<String>();
                let conn = {
                    let mut all = all.lock().unwrap();
                    all.push(tx.clone());
                    all.len() - 1
                };
                let to_test = to_test.clone();
                tokio::spawn(async move {
                    let (mut sink, mut stream) = ws.split();
                    loop {
                        tokio::select! {
                            out = rx.recv() => match out {
                                Some(text) => {
                                    if sink.send(Message::text(text)).await.is_err() {
                                        break;
                                    }
                                }
                                None => break,
                            },
                            msg = stream.next() => {
                                let Some(Ok(Message::Text(text))) = msg else {
                                    if matches!(msg, Some(Ok(_))) {
                                        continue;
                                    }
                                    break;
                                };
                                let text = text.to_string();
                                let answers: Vec<String> = match method(&text) {
                                    "REGISTER" | "BYE" | "OPTIONS" => {
                                        vec![response(&text, "200 OK", true)]
                                    }
                                    "CANCEL" if auto_answer => {
                                        vec![response(&text, "200 OK", true)]
                                    }
                                    "INVITE" if auto_answer => vec![
                                        response(&text, "100 Trying", false),
                                        response(&text, "180 Ringing", true),
                                        response(&text, "200 OK", true),
                                    ],
                                    _ => Vec::new(),
                                };
                                let _ = to_test.send((conn, text));
                                for a in answers {
                                    let _ = tx.send(a);
                                }
                            }
                        }
                    }
                });
            }
        });
        Peer {
            url,
            received,
            conns,
        }
    }

    /// Waits for a message whose method is `method` (a request) and returns it with
    /// its connection.
    async fn request(&mut self, method_name: &str) -> (usize, String) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = tokio::time::timeout_at(deadline, self.received.recv())
                .await
                .unwrap_or_else(|_| panic!("the peer got no {method_name} in time"))
                .expect("the peer runs");
            if method(&got.1) == method_name {
                return got;
            }
        }
    }

    /// Sends `status` in answer to `request` on connection `conn`.
    fn reply(&self, conn: usize, request: &str, status: &str) {
        self.conns.lock().unwrap()[conn]
            .send(response(request, status, !status.starts_with("100")))
            .unwrap();
    }
}

// ---- helpers ------------------------------------------------------------------------

/// A traced UA `name` on `url`, registering when `register`.
fn ua(js: &mut Jssip, name: &str, url: &str, register: bool) {
    js.send(json!({
        "cmd": "ua", "ua": name, "url": url,
        "uri": format!("sip:{name}@example.invalid"),
        "register": register, "trace": true,
    }));
}

/// The traced messages of UA `ua` in direction `dir` (`sip_out`, `sip_in`) of Call-ID
/// `call_id`, as their start lines.
fn traced(js: &Jssip, ua: &str, dir: &str, call_id: &str) -> Vec<String> {
    js.seen_of(ua, dir)
        .into_iter()
        .filter(|e| e["call_id"] == call_id)
        .map(|e| e["first"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Whether a traced start line is a request of `method`.
fn is(first: &str, method_name: &str) -> bool {
    first.starts_with(&format!("{method_name} "))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

// ---- the harness against a peer ---------------------------------------------------

#[tokio::test]
async fn a_jssip_ua_registers_calls_reinvites_and_hangs_up_against_a_sip_peer() {
    let Some(mut js) = Jssip::start().await else {
        return;
    };
    let peer = Peer::start(true).await;
    ua(&mut js, "p1", &peer.url, true);
    js.wait_ua("p1", "connected", WAIT).await;
    js.wait_ua("p1", "registered", WAIT).await;

    js.send(
        json!({"cmd": "call", "ua": "p1", "call": "c1", "target": "sip:queue@example.invalid"}),
    );
    let trying = js.wait_call("c1", &["progress"], WAIT).await;
    assert_eq!(trying["status"], 100, "{trying}");
    let call_id = s(&trying["call_id"]).to_owned();
    assert!(!call_id.is_empty());
    let ringing = js.wait_call("c1", &["progress"], WAIT).await;
    assert_eq!(ringing["status"], 180, "{ringing}");
    let accepted = js.wait_call("c1", &["accepted", "failed"], WAIT).await;
    assert_eq!(
        (s(&accepted["event"]), &accepted["status"]),
        ("accepted", &json!(200)),
        "{accepted}"
    );
    js.wait_call("c1", &["confirmed"], WAIT).await;

    // A re-INVITE inside the dialog, then a hold (another re-INVITE).
    js.send(json!({"cmd": "reinvite", "call": "c1"}));
    js.wait_call("c1", &["reinvited"], WAIT).await;
    js.send(json!({"cmd": "reinvite", "call": "c1", "hold": true}));
    let held = js.wait_call("c1", &["reinvited"], WAIT).await;
    assert_eq!(held["hold"], true);

    js.send(json!({"cmd": "hangup", "call": "c1"}));
    let ended = js.wait_call("c1", &["ended"], WAIT).await;
    assert_eq!(ended["originator"], "local", "{ended}");
    js.gather_for(Duration::from_millis(200)).await;
    let out = traced(&js, "p1", "sip_out", &call_id);
    let methods: Vec<&str> = out
        .iter()
        .map(|f| f.split(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(
        methods,
        ["INVITE", "ACK", "INVITE", "ACK", "INVITE", "ACK", "BYE"],
        "{out:?}"
    );
    let inbound = traced(&js, "p1", "sip_in", &call_id);
    assert_eq!(
        inbound[..3],
        [
            "SIP/2.0 100 Trying",
            "SIP/2.0 180 Ringing",
            "SIP/2.0 200 OK"
        ]
    );
    assert_eq!(inbound.last().unwrap(), "SIP/2.0 200 OK");

    js.send(json!({"cmd": "stop", "ua": "p1"}));
    js.wait_ua("p1", "unregistered", WAIT).await;
    js.wait_ua("p1", "disconnected", WAIT).await;
}

/// `drop` closes a UA's WebSocket under JsSIP: no SIP goodbye, and no reconnect.
#[tokio::test]
async fn a_dropped_ua_closes_its_websocket_without_sip_and_stays_closed() {
    let Some(mut js) = Jssip::start().await else {
        return;
    };
    let peer = Peer::start(true).await;
    ua(&mut js, "p1", &peer.url, true);
    js.wait_ua("p1", "registered", WAIT).await;
    js.send(
        json!({"cmd": "call", "ua": "p1", "call": "c1", "target": "sip:queue@example.invalid"}),
    );
    js.wait_call("c1", &["confirmed"], WAIT).await;
    let sent = js.seen_of("p1", "sip_out").len();
    js.send(json!({"cmd": "drop", "ua": "p1"}));
    let gone = js.wait_ua("p1", "disconnected", WAIT).await;
    assert_eq!(gone["code"], 1000, "{gone}");
    // JsSIP retries the connection after 1 s (connection_recovery_min_interval).
    js.gather_for(Duration::from_millis(2500)).await;
    assert_eq!(js.seen_of("p1", "sip_out").len(), sent, "{}", js.recent(10));
    assert!(js.seen_of("p1", "connected").len() == 1);
}

/// Cancelled before any response: no CANCEL on the wire until a provisional response
/// comes (RFC 3261 9.1), and then a `200` that crosses the CANCEL is ACKed and BYEd by
/// JsSIP itself (RTCSession `_is_canceled` → `_acceptAndTerminate`).
#[tokio::test]
async fn jssip_cancels_only_after_a_provisional_and_byes_a_200_when_cancelled_before_one() {
    let Some(mut js) = Jssip::start().await else {
        return;
    };
    let mut peer = Peer::start(false).await;
    ua(&mut js, "p1", &peer.url, false);
    js.wait_ua("p1", "connected", WAIT).await;
    js.send(
        json!({"cmd": "call", "ua": "p1", "call": "c1", "target": "sip:queue@example.invalid"}),
    );
    let (conn, invite) = peer.request("INVITE").await;
    js.send(json!({"cmd": "cancel", "call": "c1"}));
    let failed = js.wait_call("c1", &["failed"], WAIT).await;
    assert_eq!(
        (s(&failed["originator"]), s(&failed["cause"])),
        ("local", "Canceled")
    );
    js.gather_for(Duration::from_millis(500)).await;
    let call_id = s(&failed["call_id"]).to_owned();
    assert_eq!(
        traced(&js, "p1", "sip_out", &call_id),
        [invite.lines().next().unwrap()]
    );

    peer.reply(conn, &invite, "100 Trying");
    let (_, cancel) = peer.request("CANCEL").await;
    assert!(cancel.contains(&call_id));
    peer.reply(conn, &invite, "200 OK");
    peer.reply(conn, &cancel, "200 OK");
    let (_, ack) = peer.request("ACK").await;
    let (_, bye) = peer.request("BYE").await;
    assert!(ack.contains(&call_id) && bye.contains(&call_id));
}

/// Cancelled after a provisional response (the usual case, and always the case behind
/// sluice's immediate `100 Trying`): the CANCEL goes at once, and a `200` for the
/// INVITE that crosses it is ignored: no ACK, no BYE. The edge is left with a call the
/// caller dropped; sluice must ACK and BYE it (DESIGN.md, "SIP awareness").
#[tokio::test]
async fn jssip_ignores_a_200_that_crosses_its_cancel_after_a_provisional_no_ack_no_bye() {
    let Some(mut js) = Jssip::start().await else {
        return;
    };
    let mut peer = Peer::start(false).await;
    ua(&mut js, "p1", &peer.url, false);
    js.wait_ua("p1", "connected", WAIT).await;
    js.send(
        json!({"cmd": "call", "ua": "p1", "call": "c1", "target": "sip:queue@example.invalid"}),
    );
    let (conn, invite) = peer.request("INVITE").await;
    peer.reply(conn, &invite, "100 Trying");
    let trying = js.wait_call("c1", &["progress"], WAIT).await;
    assert_eq!(trying["status"], 100);
    let call_id = s(&trying["call_id"]).to_owned();

    js.send(json!({"cmd": "cancel", "call": "c1"}));
    let (_, cancel) = peer.request("CANCEL").await;
    assert!(cancel.contains(&call_id));
    js.wait_call("c1", &["failed"], WAIT).await;
    // The edge had answered before the CANCEL reached it: 200 for the INVITE (sent
    // twice, as a UAS retransmits a 2xx without an ACK), then 200 for the CANCEL.
    peer.reply(conn, &invite, "200 OK");
    peer.reply(conn, &invite, "200 OK");
    peer.reply(conn, &cancel, "200 OK");
    js.gather_for(Duration::from_millis(1500)).await;
    let out = traced(&js, "p1", "sip_out", &call_id);
    assert_eq!(
        out.iter()
            .map(|f| f.split(' ').next().unwrap())
            .collect::<Vec<_>>(),
        ["INVITE", "CANCEL"],
        "JsSIP sent more after the crossing 200: {out:?}"
    );
    let inbound = traced(&js, "p1", "sip_in", &call_id);
    assert_eq!(
        inbound
            .iter()
            .filter(|f| f.starts_with("SIP/2.0 200"))
            .count(),
        3,
        "{inbound:?}"
    );
    assert!(!out.iter().any(|f| is(f, "ACK") || is(f, "BYE")));
}

// ---- through sluice in accept mode ------------------------------------------------

/// Eight JsSIP UAs register through sluice (tenant `acme`, `accept` mode, subprotocol
/// `sip`) to the SIP server at `upstream`, and one of them places a call. `false`
/// when it was skipped (no node or JsSIP here, and `CI` unset).
async fn eight_register_through_sluice(upstream: &str) -> bool {
    let Some(mut js) = Jssip::start().await else {
        return false;
    };
    let proxy = config()
        .upstream(upstream)
        .tenant(
            tenant("acme")
                .accept_mode()
                .subprotocols(&["sip"])
                .unpaced(),
        )
        .start()
        .await;
    let url = proxy.url("/t/acme/");
    for i in 1..=8 {
        ua(&mut js, &format!("p{i}"), &url, true);
    }
    for i in 1..=8 {
        js.wait_ua(&format!("p{i}"), "registered", WAIT).await;
    }
    js.send(
        json!({"cmd": "call", "ua": "p3", "call": "c1", "target": "sip:queue@example.invalid"}),
    );
    let answer = js.wait_call("c1", &["confirmed", "failed"], WAIT).await;
    assert_eq!(answer["event"], "confirmed", "{answer}");
    js.send(json!({"cmd": "hangup", "call": "c1"}));
    js.wait_call("c1", &["ended"], WAIT).await;
    for i in 1..=8 {
        js.send(json!({"cmd": "stop", "ua": format!("p{i}")}));
    }
    for i in 1..=8 {
        js.wait_ua(&format!("p{i}"), "unregistered", WAIT).await;
    }
    true
}

#[tokio::test]
async fn eight_jssip_uas_register_through_sluice_in_accept_mode_to_a_sip_peer() {
    let peer = Peer::start(true).await;
    eight_register_through_sluice(&peer.url).await;
}

// ---- against the edge simulator's SIP mode ----------------------------------------

async fn sip_sim() -> EdgeSim {
    EdgeSim::start(SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        mode: SessionMode::Sip,
        org_handshake_rate: 100,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_jssip_ua_registers_and_calls_on_the_edge_simulator() {
    let Some(mut js) = Jssip::start().await else {
        return;
    };
    let sim = sip_sim().await;
    ua(&mut js, "p1", &format!("{}/?org=acme", sim.url()), true);
    js.wait_ua("p1", "connected", WAIT).await;
    js.wait_ua("p1", "registered", WAIT).await;
    js.send(
        json!({"cmd": "call", "ua": "p1", "call": "c1", "target": "sip:queue@example.invalid"}),
    );
    let trying = js.wait_call("c1", &["progress", "failed"], WAIT).await;
    assert_eq!(trying["status"], 100, "{trying}");
    let answer = js.wait_call("c1", &["confirmed", "failed"], WAIT).await;
    assert_eq!(answer["event"], "confirmed", "{answer}");
    js.send(json!({"cmd": "hangup", "call": "c1"}));
    js.wait_call("c1", &["ended"], WAIT).await;
    assert_eq!(sim.stats().orgs["acme"].live, 1);
}

#[tokio::test]

async fn eight_jssip_uas_register_through_sluice_in_accept_mode_to_the_edge_simulator() {
    let sim = sip_sim().await;
    if eight_register_through_sluice(&sim.url()).await {
        assert_eq!(sim.stats().orgs["acme"].accepted, 8);
    }
}
