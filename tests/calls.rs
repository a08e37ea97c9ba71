//! Per-tenant SIP call caps (DESIGN.md "SIP awareness"): SIP-over-WebSocket phones
//! through sluice in `accept` mode to a SIP edge, all real WebSocket sessions on
//! 127.0.0.1. The phones send hand-written SIP as a UA does (tests/sip_ua.rs drives
//! JsSIP); the edge is the scripted one of tests/support/sip.rs.

mod support;

use std::time::Duration;

use futures_util::SinkExt;

use support::sip::{
    active, calls_total, established, header, phone, queued, sip_proxy, sip_tenant, status, SipEdge,
};
use support::{config, scrape, wait_until};
use tokio::time::Instant;

#[tokio::test]
async fn over_the_cap_invites_get_100_trying_and_reach_the_edge_in_order_as_calls_end() {
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(&edge, &[("max_calls", "5")]).await;
    let mut phones = Vec::new();
    for i in 0..8 {
        phones.push(phone(&proxy, &format!("p{i}")).await);
    }
    let mut tos = Vec::new();
    for (i, p) in phones.iter_mut().enumerate().take(5) {
        tos.push(established(p, &format!("call-{i}")).await);
    }
    // Three more: each hears 100 Trying from sluice at once, and the edge sees nothing.
    for (i, p) in phones.iter_mut().enumerate().skip(5) {
        p.invite(&format!("call-{i}")).await;
        let trying = p.recv().await;
        assert_eq!(status(&trying), Some(100), "{trying}");
        assert_eq!(
            header(&trying, "call-id"),
            Some(format!("call-{i}").as_str())
        );
        wait_until("the INVITE is held", async || {
            queued(&proxy) == (i - 4) as u32
        })
        .await;
    }
    assert_eq!(edge.invites().len(), 5);
    assert_eq!(active(&proxy), 5);
    assert_eq!(edge.count("SIP/2.0 503", None), 0);

    // Each call that ends lets the next held INVITE through, oldest first.
    for (i, to) in tos.iter().enumerate().take(3) {
        let call = format!("call-{i}");
        phones[i].bye(&call, to).await;
        phones[i].expect(200, &call).await;
        let released = format!("call-{}", i + 5);
        phones[i + 5].expect(200, &released).await;
        assert_eq!(edge.invites().last(), Some(&released));
    }
    let order: Vec<String> = (0..8).map(|i| format!("call-{i}")).collect();
    assert_eq!(edge.invites(), order, "FIFO through the call queue");
    // Held INVITEs were released on the BYE's answer, never before: the edge, whose
    // count drops on the BYE, never had to refuse one.
    assert_eq!(edge.count("SIP/2.0 503", None), 0);
    assert_eq!(active(&proxy), 5);
    assert_eq!(queued(&proxy), 0);
    assert_eq!(calls_total(&proxy, "admitted").await, 5.0);
    assert_eq!(calls_total(&proxy, "queued_admitted").await, 3.0);
}

#[tokio::test]
async fn call_rate_paces_initial_invites_to_the_edge() {
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(&edge, &[("call_rate", "5.0"), ("call_burst", "1")]).await;
    let mut p = phone(&proxy, "pacer").await;
    let started = Instant::now();
    for i in 0..6 {
        p.invite(&format!("paced-{i}")).await;
    }
    edge.wait_for("six INVITEs", |e| e.invites().len() == 6)
        .await;
    let seen = edge.seen();
    let times: Vec<Instant> = seen
        .iter()
        .filter(|s| s.first_line().starts_with("INVITE "))
        .map(|s| s.at)
        .collect();
    // 5/s with a burst of one: five gaps of 200 ms (generous bound for a shared machine).
    let span = times[5] - times[0];
    assert!(span >= Duration::from_millis(800), "span {span:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        edge.invites(),
        (0..6).map(|i| format!("paced-{i}")).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_full_call_queue_and_a_queue_timeout_are_answered_503_by_sluice() {
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(
        &edge,
        &[
            ("max_calls", "1"),
            ("invite_queue_depth", "1"),
            // Long enough that c's INVITE comes while b's is still held, on a loaded
            // machine too.
            ("invite_queue_timeout", "\"2s\""),
        ],
    )
    .await;
    let mut a = phone(&proxy, "a").await;
    let mut b = phone(&proxy, "b").await;
    let mut c = phone(&proxy, "c").await;
    established(&mut a, "up").await;
    b.invite_trying("held").await;
    // The queue (depth 1) is full: answered at once, no 100 first.
    c.invite("full").await;
    let full = c.recv().await;
    assert_eq!(status(&full), Some(503), "{full}");
    assert!(header(&full, "retry-after").is_some_and(|v| v.parse::<u64>().unwrap() >= 1));
    assert_eq!(
        header(&full, "reason"),
        Some("SIP;cause=503;text=\"call-cap\"")
    );
    assert!(header(&full, "to").unwrap().contains("tag="), "{full}");
    // The held one times out.
    let timed_out = b.expect(503, "held").await;
    assert_eq!(
        header(&timed_out, "reason"),
        Some("SIP;cause=503;text=\"call-queue-timeout\"")
    );
    assert!(header(&timed_out, "retry-after").is_some());
    // Their ACKs are sluice's to absorb.
    let to = header(&full, "to").unwrap().to_owned();
    c.ack("full", &to).await;
    let to = header(&timed_out, "to").unwrap().to_owned();
    b.ack("held", &to).await;
    // A marker after each ACK on its session: once it arrived, the ACK would have too.
    for p in [&mut b, &mut c] {
        let marker = format!("marker-{}", p.name);
        p.send(format!("OPTIONS sip:edge.invalid SIP/2.0\r\nVia: SIP/2.0/WS x.invalid;branch=z9hG4bKo\r\nFrom: <sip:x@x>;tag=1\r\nTo: <sip:edge@x>\r\nCall-ID: {marker}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")).await;
        p.expect(200, &marker).await;
    }
    assert_eq!(edge.invites(), ["up"]);
    assert_eq!(edge.count("ACK ", Some("full")), 0);
    assert_eq!(edge.count("ACK ", Some("held")), 0);
    assert_eq!(calls_total(&proxy, "call-cap").await, 1.0);
    assert_eq!(calls_total(&proxy, "call-queue-timeout").await, 1.0);
}

#[tokio::test]
async fn a_cancel_of_a_held_invite_is_answered_200_and_487_and_nothing_reaches_the_edge() {
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(&edge, &[("max_calls", "1")]).await;
    let mut a = phone(&proxy, "a").await;
    let mut b = phone(&proxy, "b").await;
    established(&mut a, "up").await;
    b.invite_trying("held").await;
    b.cancel("held").await;
    let first = b.recv().await;
    assert_eq!(status(&first), Some(200), "{first}");
    assert!(header(&first, "cseq").unwrap().ends_with("CANCEL"));
    let terminated = b.recv().await;
    assert_eq!(status(&terminated), Some(487), "{terminated}");
    assert!(header(&terminated, "cseq").unwrap().ends_with("INVITE"));
    let to = header(&terminated, "to").unwrap().to_owned();
    b.ack("held", &to).await;
    wait_until("the queue is empty", async || queued(&proxy) == 0).await;
    // A later call of b goes through once a's ends: the cancelled one left no trace.
    let a_to = edge_to(&edge, "up");
    a.bye("up", &a_to).await;
    a.expect(200, "up").await;
    established(&mut b, "after").await;
    assert_eq!(edge.invites(), ["up", "after"]);
    assert_eq!(
        edge.count("", Some("held")),
        0,
        "the edge saw nothing of the cancelled call"
    );
    assert_eq!(calls_total(&proxy, "cancelled").await, 1.0);
}

/// The To (with tag) the edge gave call `call_id`.
fn edge_to(edge: &SipEdge, call_id: &str) -> String {
    let invite = edge
        .seen()
        .into_iter()
        .find(|s| s.header("call-id") == Some(call_id))
        .expect("the edge saw the call");
    let ok = support::sip::response(&invite.text, "200 OK", true);
    header(&ok, "to").unwrap().to_owned()
}

#[tokio::test]
async fn a_200_that_crosses_a_cancel_is_acked_and_byed_by_sluice() {
    let edge = SipEdge::start(false).await;
    edge.ignore_cancels();
    let proxy = sip_proxy(&edge, &[("max_calls", "1")]).await;
    let mut a = phone(&proxy, "a").await;
    a.invite_trying("crossed").await;
    a.cancel("crossed").await;
    edge.wait_for("the CANCEL", |e| e.count("CANCEL ", Some("crossed")) == 1)
        .await;
    edge.answer("crossed", 200);
    // sluice ends the dialog itself: ACK, then BYE, to the 200's Contact through its
    // Record-Route set reversed.
    edge.wait_for("ACK and BYE", |e| e.count("BYE ", Some("crossed")) == 1)
        .await;
    let seen = edge.seen();
    let ack = seen
        .iter()
        .find(|s| s.first_line().starts_with("ACK "))
        .unwrap();
    let bye = seen
        .iter()
        .find(|s| s.first_line().starts_with("BYE "))
        .unwrap();
    assert_eq!(
        ack.first_line(),
        "ACK sip:edge@127.0.0.1;transport=ws SIP/2.0"
    );
    assert_eq!(
        bye.first_line(),
        "BYE sip:edge@127.0.0.1;transport=ws SIP/2.0"
    );
    assert_eq!(ack.header("cseq"), Some("1 ACK"));
    assert_eq!(bye.header("cseq"), Some("2 BYE"));
    assert!(ack.header("to").unwrap().contains("tag=edge1"));
    let routes: Vec<&str> = bye
        .text
        .split("\r\n")
        .filter(|l| l.to_ascii_lowercase().starts_with("route:"))
        .collect();
    assert_eq!(
        routes,
        [
            "Route: <sip:rr2.edge.invalid;lr>",
            "Route: <sip:rr1.edge.invalid;lr>"
        ]
    );
    assert!(ack.at <= bye.at);
    // The edge answered the BYE: the call is over, and the client never saw the 200 or
    // the BYE's answer.
    wait_until("the call ends", async || active(&proxy) == 0).await;
    let mut statuses = Vec::new();
    while let Some(m) = a.recv_within(Duration::from_millis(300)).await {
        statuses.push(status(&m));
    }
    assert!(
        !statuses.contains(&Some(200)),
        "the client saw a 200: {statuses:?}"
    );
}

#[tokio::test]
async fn a_bye_from_the_edge_ends_the_call_and_releases_a_held_invite() {
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(&edge, &[("max_calls", "1")]).await;
    let mut a = phone(&proxy, "a").await;
    let mut b = phone(&proxy, "b").await;
    established(&mut a, "up").await;
    b.invite_trying("next").await;
    edge.bye("up");
    let bye = a.recv().await;
    assert!(bye.starts_with("BYE "), "{bye}");
    b.expect(200, "next").await;
    assert_eq!(edge.invites(), ["up", "next"]);
    assert_eq!(active(&proxy), 1);
}

#[tokio::test]
async fn a_final_refusal_from_the_edge_ends_the_call() {
    let edge = SipEdge::start(false).await;
    let proxy = sip_proxy(&edge, &[("max_calls", "1")]).await;
    let mut a = phone(&proxy, "a").await;
    a.invite("busy").await;
    edge.wait_for("the INVITE", |e| e.invites().len() == 1)
        .await;
    assert_eq!(active(&proxy), 1);
    edge.answer("busy", 486);
    a.expect(486, "busy").await;
    wait_until("the call ends", async || active(&proxy) == 0).await;
}

#[tokio::test]
async fn a_session_closed_mid_call_frees_its_calls() {
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(&edge, &[("max_calls", "1")]).await;
    let mut a = phone(&proxy, "a").await;
    let mut b = phone(&proxy, "b").await;
    established(&mut a, "up").await;
    b.invite_trying("waiting").await;
    drop(a);
    b.expect(200, "waiting").await;
    assert_eq!(edge.invites(), ["up", "waiting"]);
    // And a session that leaves while its INVITE is held leaves the queue.
    let mut c = phone(&proxy, "c").await;
    c.invite_trying("gone").await;
    assert_eq!(queued(&proxy), 1);
    drop(c);
    wait_until("the held INVITE leaves", async || queued(&proxy) == 0).await;
}

#[tokio::test]
async fn a_reinvite_does_not_count_again() {
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(&edge, &[("max_calls", "1")]).await;
    let mut a = phone(&proxy, "a").await;
    let to = established(&mut a, "up").await;
    a.reinvite("up", &to).await;
    let ok = a.expect(200, "up").await;
    assert!(header(&ok, "cseq").unwrap().starts_with("3 "), "{ok}");
    assert_eq!(edge.count("INVITE ", Some("up")), 2);
    assert_eq!(active(&proxy), 1);
    assert_eq!(calls_total(&proxy, "admitted").await, 1.0);
    // `/api/tenants` shows the call against the cap.
    let (code, body) = support::admin_get(proxy.admin, "/api/tenants").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let acme = status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "acme")
        .unwrap();
    assert_eq!(acme["calls"]["active"], 1);
    assert_eq!(acme["calls"]["max_calls"], 1);
    assert_eq!(acme["calls"]["outcomes"]["admitted"], 1);
}

#[tokio::test]
async fn a_silent_dialog_is_reaped() {
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(
        &edge,
        &[("max_calls", "1"), ("call_idle_timeout", "\"300ms\"")],
    )
    .await;
    let mut a = phone(&proxy, "a").await;
    let mut b = phone(&proxy, "b").await;
    established(&mut a, "silent").await;
    b.invite_trying("next").await;
    // Nothing of "silent" moves: it stops counting, and "next" goes on.
    b.expect(200, "next").await;
    assert_eq!(calls_total(&proxy, "reaped").await, 1.0);
}

#[tokio::test]
async fn a_message_that_is_not_sip_passes_unchanged_and_is_counted() {
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(&edge, &[("max_calls", "1")]).await;
    let mut a = phone(&proxy, "a").await;
    // A CRLF keep-alive (RFC 5626, SIP.js sends them) is neither a call nor a failure.
    a.send("\r\n\r\n".into()).await;
    a.send("hello, not SIP".into()).await;
    edge.wait_for("the message", |e| {
        e.seen().iter().any(|s| s.text == "hello, not SIP")
    })
    .await;
    let unparsed = scrape(proxy.admin)
        .await
        .get("sluice_sip_unparsed_total", &[("tenant", "acme")]);
    assert_eq!(unparsed, 1.0);
    // And calls still count after it.
    established(&mut a, "after").await;
    assert_eq!(active(&proxy), 1);
}

#[tokio::test]
async fn a_reload_changes_max_calls_for_new_invites_and_cuts_no_live_call() {
    let edge = SipEdge::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    let write = |max_calls: u32| {
        let text = config()
            .upstream(&edge.url())
            .tenant(sip_tenant(&[("max_calls", &max_calls.to_string())]))
            .text();
        std::fs::write(&path, text).unwrap();
    };
    write(2);
    let proxy = support::proxy_from_file(&path).await;
    let mut a = phone(&proxy, "a").await;
    let mut b = phone(&proxy, "b").await;
    let mut c = phone(&proxy, "c").await;
    let a_to = established(&mut a, "a1").await;
    established(&mut b, "b1").await;
    // Lowered below the live calls: both stay up, a new INVITE waits.
    write(1);
    let (code, body) = support::admin_request(proxy.admin, "POST", "/-/reload").await;
    assert_eq!(code, 200, "{body}");
    c.invite_trying("c1").await;
    assert_eq!(active(&proxy), 2);
    // One call ending is not enough under the new cap of 1.
    a.bye("a1", &a_to).await;
    a.expect(200, "a1").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(queued(&proxy), 1, "still held: 1 call up, cap 1");
    assert_eq!(edge.invites(), ["a1", "b1"]);
    // Raised: the held INVITE goes on at once; the live call was never touched.
    write(3);
    let (code, body) = support::admin_request(proxy.admin, "POST", "/-/reload").await;
    assert_eq!(code, 200, "{body}");
    c.expect(200, "c1").await;
    assert_eq!(edge.invites(), ["a1", "b1", "c1"]);
    assert_eq!(edge.count("BYE ", Some("b1")), 0);
    assert_eq!(active(&proxy), 2);
}

/// A held INVITE goes on when the edge has answered the BYE, never on the BYE itself:
/// released on the request it would race the BYE to an edge that counts calls too, on
/// another connection, and be refused there. The edge caps calls like sluice (2) and
/// takes 50 ms to tear a call down before it answers a BYE (a real call server measured
/// 2–4 refusals in 15 when sluice freed the place on the request); 15 rounds of "a call
/// ends while another INVITE is held" see no refusal.
#[tokio::test]
async fn a_held_invite_released_by_a_bye_is_not_refused_by_an_edge_with_the_same_cap() {
    let edge = SipEdge::start(true).await;
    edge.cap_calls(2);
    edge.slow_byes(Duration::from_millis(50));
    let proxy = sip_proxy(&edge, &[("max_calls", "2")]).await;
    let mut phones = Vec::new();
    for i in 0..3 {
        phones.push(phone(&proxy, &format!("p{i}")).await);
    }
    // Calls up, oldest first: (phone, call, its To).
    let mut up = std::collections::VecDeque::new();
    for (i, p) in phones.iter_mut().enumerate().take(2) {
        let call = format!("r0-{i}");
        let to = established(p, &call).await;
        up.push_back((i, call, to));
    }
    for round in 1..=15 {
        // The phone with no call places one: held, as both places are taken.
        let caller = (0..3).find(|i| !up.iter().any(|(p, _, _)| p == i)).unwrap();
        let call = format!("r{round}");
        phones[caller].invite(&call).await;
        let trying = phones[caller].recv().await;
        assert_eq!(status(&trying), Some(100), "{trying}");
        // The oldest call ends; the held INVITE must reach the edge only after the
        // edge has freed that call.
        let (ender, ended, to) = up.pop_front().unwrap();
        phones[ender].bye(&ended, &to).await;
        phones[ender].expect(200, &ended).await;
        let ok = phones[caller].expect(200, &call).await;
        let to = header(&ok, "to").unwrap().to_owned();
        phones[caller].ack(&call, &to).await;
        up.push_back((caller, call, to));
    }
    assert_eq!(edge.refused(), 0, "the edge refused a released INVITE");
    assert_eq!(edge.invites().len(), 17);
    assert_eq!(calls_total(&proxy, "queued_admitted").await, 15.0);
}

#[tokio::test]
async fn an_invite_sluice_cannot_parse_does_not_go_past_the_cap() {
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(&edge, &[("max_calls", "1")]).await;
    let mut a = phone(&proxy, "a").await;
    established(&mut a, "up").await;
    // A CSeq over 2^31 (RFC 3261 wants less) and a header byte that is not UTF-8: an
    // edge might read either, sluice cannot count it, so neither goes on.
    let big = a
        .invite_text("big-cseq")
        .replace("CSeq: 1 INVITE", "CSeq: 3000000000 INVITE");
    a.send(big).await;
    let mut latin1 = a.invite_text("latin1").into_bytes();
    let at = latin1.windows(5).position(|w| w == b"<sip:").unwrap();
    latin1.splice(at..at, *b"\"Jos\xe9\" ");
    a.ws.send(tokio_tungstenite::tungstenite::Message::binary(latin1))
        .await
        .unwrap();
    // Any other message that does not parse still passes.
    a.send("not SIP at all".into()).await;
    edge.wait_for("the marker", |e| {
        e.seen().iter().any(|s| s.text == "not SIP at all")
    })
    .await;
    assert_eq!(
        edge.invites(),
        ["up"],
        "an unreadable INVITE reached the edge"
    );
    assert_eq!(active(&proxy), 1);
}

#[tokio::test]
async fn a_challenge_to_a_bye_does_not_end_the_call() {
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(&edge, &[("max_calls", "1")]).await;
    let mut a = phone(&proxy, "a").await;
    let mut b = phone(&proxy, "b").await;
    let to = established(&mut a, "up").await;
    b.invite_trying("next").await;
    edge.challenge_next_bye();
    a.bye("up", &to).await;
    a.expect(401, "up").await;
    // The edge still has the call: sluice still counts it, the held INVITE waits.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(active(&proxy), 1);
    assert_eq!(queued(&proxy), 1);
    // The BYE again (with credentials, as a UA does): answered 200, the call ends.
    let again = a.bye_text("up", &to, 3);
    a.send(again).await;
    a.expect(200, "up").await;
    b.expect(200, "next").await;
    assert_eq!(edge.invites(), ["up", "next"]);
}

/// The `200` passed sluice on its way to the client before the client's CANCEL did: the
/// two crossed on the client's leg, and the client (which ignores such a `200`, as
/// JsSIP does) never ACKs or BYEs it. sluice ends the call as for a `200` that crossed
/// the CANCEL on the edge's leg.
#[tokio::test]
async fn a_200_that_crosses_a_cancel_on_the_clients_leg_is_ended_by_sluice() {
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(&edge, &[("max_calls", "1")]).await;
    let mut a = phone(&proxy, "a").await;
    a.invite("x").await;
    a.expect(200, "x").await;
    a.cancel("x").await;
    edge.wait_for("sluice's BYE", |e| e.count("BYE ", Some("x")) == 1)
        .await;
    let seen = edge.seen();
    let ack = seen
        .iter()
        .find(|s| s.first_line().starts_with("ACK ") && s.header("call-id") == Some("x"))
        .expect("sluice's ACK");
    assert_eq!(ack.header("cseq"), Some("1 ACK"));
    let bye = seen
        .iter()
        .find(|s| s.first_line().starts_with("BYE "))
        .unwrap();
    assert_eq!(bye.header("cseq"), Some("2 BYE"));
    assert!(bye.header("to").unwrap().contains("tag=edge1"));
    wait_until("the call ends", async || active(&proxy) == 0).await;
    // A call acknowledged first is the client's: its CANCEL then ends nothing.
    let to = established(&mut a, "y").await;
    a.cancel("y").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(edge.count("BYE ", Some("y")), 0);
    assert_eq!(active(&proxy), 1);
    a.bye("y", &to).await;
    a.expect(200, "y").await;
}
