//! The edge simulator as a SIP call server: its call cap (503 with Retry-After), CANCEL
//! before and after the 200, calls freed by BYE, by the session's end and by the edge's
//! own BYE, and spike's calls phase counted the same on both sides.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sluice::tools::edge_sim::{EdgeSim, SessionMode, SimConfig, CALL_RETRY_AFTER_S};
use sluice::tools::sip_lines::{tag, uri, SipMessage};
use sluice::tools::spike::{run_spike, RetryPolicy, SpikeConfig, TenantVia};
use support::Client;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const ORG: (&str, &str) = ("x-tenant-id", "acme");

async fn sim(config: SimConfig) -> EdgeSim {
    EdgeSim::start(SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        mode: SessionMode::Sip,
        org_handshake_rate: 100,
        ..config
    })
    .await
    .unwrap()
}

async fn session(sim: &EdgeSim) -> Client {
    support::connect_ok(&format!("{}/", sim.url()), &[ORG]).await
}

/// A request of the phone in call `call` (its Call-ID); `to_tag` makes it in-dialog.
/// An ACK of a non-2xx and a CANCEL are given the INVITE's CSeq number.
fn request(method: &str, call: &str, cseq: u32, to_tag: Option<&str>) -> String {
    let to = match to_tag {
        Some(t) => format!("<sip:queue@edge.invalid>;tag={t}"),
        None => "<sip:queue@edge.invalid>".to_owned(),
    };
    format!(
        "{method} sip:queue@edge.invalid SIP/2.0\r\nVia: SIP/2.0/WS phone.invalid;branch=z9hG4bK{call}{cseq}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@edge.invalid>;tag=ft-{call}\r\nTo: {to}\r\nCall-ID: {call}\r\n\
         CSeq: {cseq} {method}\r\nContact: <sip:alice@phone.invalid;transport=ws>\r\nContent-Length: 0\r\n\r\n"
    )
}

async fn send(ws: &mut Client, text: String) {
    ws.send(Message::text(text)).await.unwrap();
}

/// The next SIP text within 5 s.
async fn next(ws: &mut Client) -> String {
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
        other => panic!("expected a SIP message, got {other:?}"),
    }
}

/// The next message, which must start `SIP/2.0 {status}` and be for `method`.
async fn expect(ws: &mut Client, status: &str, method: &str) -> String {
    let text = next(ws).await;
    assert!(
        text.starts_with(&format!("SIP/2.0 {status}")),
        "expected {status}, got {text}"
    );
    let m = SipMessage::parse(&text).unwrap();
    assert_eq!(m.cseq().map(|c| c.1), Some(method), "{text}");
    text
}

/// INVITE `call` and read 100, 180, 200; returns the 200.
async fn call_up(ws: &mut Client, call: &str) -> String {
    send(ws, request("INVITE", call, 1, None)).await;
    expect(ws, "100 Trying", "INVITE").await;
    expect(ws, "180 Ringing", "INVITE").await;
    expect(ws, "200 OK", "INVITE").await
}

fn to_tag_of(response: &str) -> String {
    let m = SipMessage::parse(response).unwrap();
    tag(m.header("to").unwrap()).unwrap().to_owned()
}

/// Waits until `ok` holds of the simulator's counters (10 s at most).
async fn until(sim: &EdgeSim, ok: impl Fn(&sluice::tools::edge_sim::SimStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok(&sim.stats()) {
        assert!(Instant::now() < deadline, "{:?}", sim.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_call_cap_refuses_the_third_invite_and_a_bye_makes_room() {
    let sim = sim(SimConfig {
        org_max_calls: 2,
        call_answer_delay: Duration::from_millis(20),
        ..SimConfig::default()
    })
    .await;
    let (mut a, mut b, mut c) = (
        session(&sim).await,
        session(&sim).await,
        session(&sim).await,
    );
    let ok = call_up(&mut a, "call-1").await;
    // The 200 carries a Contact, a To tag and an SDP answer of the length it says.
    let m = SipMessage::parse(&ok).unwrap();
    assert!(uri(m.header("contact").unwrap()).starts_with("sip:edgesim@127.0.0.1:"));
    assert_eq!(m.header("content-type"), Some("application/sdp"));
    assert_eq!(
        m.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        m.body.len()
    );
    assert!(m.body.starts_with("v=0\r\n") && m.body.contains("\r\nm=audio "));
    assert!(m.body.contains(" UDP/TLS/RTP/SAVPF "), "{}", m.body);
    let tag1 = to_tag_of(&ok);
    send(&mut a, request("ACK", "call-1", 1, Some(&tag1))).await;
    let ok2 = call_up(&mut b, "call-2").await;
    assert_ne!(to_tag_of(&ok2), tag1, "each dialog has its own tag");

    send(&mut c, request("INVITE", "call-3", 1, None)).await;
    let refused = expect(&mut c, "503 Service Unavailable", "INVITE").await;
    let m = SipMessage::parse(&refused).unwrap();
    assert_eq!(
        m.header("retry-after"),
        Some(CALL_RETRY_AFTER_S.to_string().as_str())
    );
    // Its ACK is absorbed.
    send(
        &mut c,
        request("ACK", "call-3", 1, Some(&to_tag_of(&refused))),
    )
    .await;

    let stats = sim.stats();
    assert_eq!(
        (
            stats.calls.invites,
            stats.calls.calls_active,
            stats.calls.calls_peak,
            stats.calls.calls_refused,
            stats.calls.calls_answered
        ),
        (3, 2, 2, 1, 2)
    );
    let acme = &stats.orgs["acme"].calls;
    assert_eq!(
        (acme.invites, acme.calls_active, acme.calls_refused),
        (3, 2, 1)
    );

    // A BYE frees a place: the next INVITE is answered.
    send(&mut a, request("BYE", "call-1", 2, Some(&tag1))).await;
    expect(&mut a, "200 OK", "BYE").await;
    assert_eq!(sim.stats().calls.calls_active, 1);
    call_up(&mut c, "call-4").await;
    // A BYE for no known call: 481.
    send(&mut a, request("BYE", "call-1", 3, Some(&tag1))).await;
    expect(&mut a, "481", "BYE").await;

    let stats = sim.stats();
    assert_eq!(stats.invite_order, ["call-1", "call-2", "call-3", "call-4"]);
    assert_eq!(
        (
            stats.calls.invites,
            stats.calls.calls_active,
            stats.calls.calls_peak,
            stats.calls.calls_refused,
            stats.calls.byes_from_client,
            stats.calls.byes_unknown
        ),
        (4, 2, 2, 1, 1, 1)
    );
    // The same over GET /stats.
    let (status, body) = support::admin_get(sim.addr(), "/stats").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["calls_refused"], 1);
    assert_eq!(json["calls_active"], 2);
    assert_eq!(json["orgs"]["acme"]["calls_peak"], 2);
    assert_eq!(json["invite_order"][2], "call-3");
    drop((a, b, c));
    until(&sim, |s| s.calls.calls_active == 0 && s.live == 0).await;
}

#[tokio::test]
async fn a_cancel_while_ringing_ends_the_call_and_one_after_the_200_does_not() {
    let sim = sim(SimConfig {
        call_answer_delay: Duration::from_millis(800),
        ..SimConfig::default()
    })
    .await;
    let mut ws = session(&sim).await;
    send(&mut ws, request("INVITE", "ring", 1, None)).await;
    expect(&mut ws, "100 Trying", "INVITE").await;
    expect(&mut ws, "180 Ringing", "INVITE").await;
    send(&mut ws, request("CANCEL", "ring", 1, None)).await;
    expect(&mut ws, "200 OK", "CANCEL").await;
    let terminated = expect(&mut ws, "487 Request Terminated", "INVITE").await;
    send(
        &mut ws,
        request("ACK", "ring", 1, Some(&to_tag_of(&terminated))),
    )
    .await;
    let s = sim.stats().calls;
    assert_eq!((s.cancels, s.calls_cancelled, s.calls_active), (1, 1, 0));

    // After the 200: the CANCEL is answered 200 and the call stays up until its BYE.
    let ok = call_up(&mut ws, "up").await;
    let tag = to_tag_of(&ok);
    send(&mut ws, request("ACK", "up", 1, Some(&tag))).await;
    send(&mut ws, request("CANCEL", "up", 1, None)).await;
    expect(&mut ws, "200 OK", "CANCEL").await;
    let s = sim.stats().calls;
    assert_eq!((s.cancels, s.calls_cancelled, s.calls_active), (2, 1, 1));
    send(&mut ws, request("BYE", "up", 2, Some(&tag))).await;
    expect(&mut ws, "200 OK", "BYE").await;
    let s = sim.stats().calls;
    assert_eq!(
        (s.calls_active, s.byes_from_client, s.calls_answered),
        (0, 1, 1)
    );
}

#[tokio::test]
async fn a_session_closed_mid_call_frees_it_and_the_edge_hangs_up_after_its_time() {
    let sim = sim(SimConfig {
        call_answer_delay: Duration::ZERO,
        call_hangup_after: Some(Duration::from_millis(300)),
        ..SimConfig::default()
    })
    .await;
    let mut gone = session(&sim).await;
    call_up(&mut gone, "gone").await;
    assert_eq!(sim.stats().calls.calls_active, 1);
    gone.close(None).await.unwrap();
    until(&sim, |s| s.calls.calls_active == 0).await;

    let mut ws = session(&sim).await;
    let ok = call_up(&mut ws, "hung").await;
    let edge_tag = to_tag_of(&ok);
    send(&mut ws, request("ACK", "hung", 1, Some(&edge_tag))).await;
    // A re-INVITE is answered 200 and counts nothing.
    send(&mut ws, request("INVITE", "hung", 2, Some(&edge_tag))).await;
    expect(&mut ws, "200 OK", "INVITE").await;
    assert_eq!(sim.stats().calls.invites, 2);
    let started = Instant::now();
    let bye = next(&mut ws).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let m = SipMessage::parse(&bye).unwrap();
    assert_eq!(
        m.request(),
        Some(("BYE", "sip:alice@phone.invalid;transport=ws")),
        "{bye}"
    );
    assert_eq!(m.call_id(), Some("hung"));
    assert_eq!(m.cseq(), Some((1, "BYE")));
    assert_eq!(m.header("max-forwards"), Some("70"));
    assert_eq!(tag(m.header("from").unwrap()), Some(edge_tag.as_str()));
    assert_eq!(
        tag(m.header("to").unwrap()),
        Some("ft-hung"),
        "From and To swapped: {bye}"
    );
    assert!(uri(m.header("to").unwrap()).starts_with("sip:alice@"));
    let via = m.header("via").unwrap();
    assert!(
        via.starts_with("SIP/2.0/WS ") && via.contains(";branch=z9hG4bK"),
        "{bye}"
    );
    assert_eq!(m.header("content-length"), Some("0"));
    let s = sim.stats().calls;
    assert_eq!((s.calls_active, s.byes_from_edge), (0, 1));
    // The phone's 200 to it is absorbed: the next answer is the OPTIONS one.
    let v = m.header("via").unwrap();
    let reply = format!(
        "SIP/2.0 200 OK\r\nVia: {v}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: hung\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        m.header("from").unwrap(),
        m.header("to").unwrap()
    );
    send(&mut ws, reply).await;
    send(&mut ws, request("OPTIONS", "opt", 1, None)).await;
    expect(&mut ws, "200 OK", "OPTIONS").await;
    // Its BYE crossing the edge's: 481.
    send(&mut ws, request("BYE", "hung", 3, Some(&edge_tag))).await;
    expect(&mut ws, "481", "BYE").await;
}

#[tokio::test]
async fn spike_calls_add_up_and_match_what_the_simulator_counted() {
    let sim = sim(SimConfig {
        org_max_calls: 3,
        call_answer_delay: Duration::from_millis(30),
        ..SimConfig::default()
    })
    .await;
    let report = run_spike(&SpikeConfig {
        url: sim.url(),
        phones: 6,
        tenants: vec!["acme".into()],
        tenant_via: TenantVia::Header,
        hold: Duration::ZERO,
        retry: RetryPolicy::None,
        sip: true,
        calls: 2,
        call_length: Duration::from_millis(300),
        call_gap: Duration::from_millis(50),
        call_timeout: Duration::from_secs(10),
        ..SpikeConfig::default()
    })
    .await
    .unwrap();
    let t = &report.total;
    assert_eq!((t.connected, t.registered), (6, 6), "{t:?}");
    let c = &t.calls;
    assert_eq!(c.placed, 12, "{c:?}");
    assert_eq!(
        c.placed,
        c.established + c.refused + c.failed.values().sum::<u64>(),
        "{c:?}"
    );
    assert!(c.failed.is_empty() && c.bye_failed == 0, "{c:?}");
    assert!(c.refused > 0 && c.established >= 3, "{c:?}");
    assert!(c.refused_by_proxy.is_empty(), "{c:?}");
    assert_eq!(
        c.trying, c.established,
        "the edge's 503 comes without a 100"
    );
    assert!(c.setup.p50.is_some() && c.retry_after.max == Some(CALL_RETRY_AFTER_S as f64));

    until(&sim, |s| s.calls.calls_active == 0).await;
    let s = sim.stats().calls;
    assert_eq!(s.invites, c.placed);
    assert_eq!(s.calls_answered, c.established);
    assert_eq!(s.calls_refused, c.refused_by_edge);
    assert_eq!(s.byes_from_client, c.established);
    assert!(s.calls_peak <= 3, "{s:?}");
    assert_eq!(report.tenants[0].calls.placed, 12);
}
