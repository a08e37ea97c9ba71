//! SIP call caps with a real UA library: JsSIP user agents (tests/sip-ua/ua.js through
//! `support::Jssip`) call through sluice in `accept` mode to the scripted SIP edge of
//! tests/support/sip.rs. What a softphone fleet sees: `100 Trying` from sluice for a
//! held INVITE, calls connected in order as others end, a CANCEL answered by sluice,
//! sluice's `503` with `Retry-After` and `Reason`, and a `200` that crosses a CANCEL
//! ended by sluice. (JsSIP itself ignores such a `200`: tests/sip_ua.rs.)
//!
//! Skipped locally without node or `tests/sip-ua/node_modules`; under CI they must run.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::sip::{sip_proxy, SipEdge};
use support::{wait_until, Jssip, Proxy};

const WAIT: Duration = Duration::from_secs(15);

/// A traced UA `name` through `proxy` (no registration: calls need none here).
fn ua(js: &mut Jssip, proxy: &Proxy, name: &str) {
    js.send(json!({
        "cmd": "ua", "ua": name, "url": proxy.url("/t/acme/"),
        "uri": format!("sip:{name}@example.invalid"),
        "register": false, "trace": true,
    }));
}

/// UAs `names` through `proxy`, once each is connected.
async fn uas(js: &mut Jssip, proxy: &Proxy, names: &[&str]) {
    for name in names {
        ua(js, proxy, name);
        js.wait_ua(name, "connected", WAIT).await;
    }
}

fn call(js: &mut Jssip, ua: &str, call: &str) {
    js.send(json!({"cmd": "call", "ua": ua, "call": call, "target": "sip:queue@example.invalid"}));
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_owned()
}

/// The start lines UA `ua` received for Call-ID `call_id`.
fn received(js: &Jssip, ua: &str, call_id: &str) -> Vec<String> {
    js.seen_of(ua, "sip_in")
        .into_iter()
        .filter(|e| e["call_id"] == call_id)
        .map(|e| s(&e["first"]))
        .collect()
}

fn active(proxy: &Proxy) -> u32 {
    proxy.admission.call_load("acme").unwrap().active
}

#[tokio::test]
async fn jssip_calls_over_the_cap_hear_100_trying_and_connect_in_order_as_calls_end() {
    let Some(mut js) = Jssip::start().await else {
        return;
    };
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(&edge, &[("max_calls", "5")]).await;
    for i in 0..8 {
        ua(&mut js, &proxy, &format!("p{i}"));
        js.wait_ua(&format!("p{i}"), "connected", WAIT).await;
    }
    let mut call_ids = Vec::new();
    for i in 0..8 {
        call(&mut js, &format!("p{i}"), &format!("c{i}"));
        // Every call hears 100 Trying: from the edge, or from sluice for the held ones.
        let trying = js.wait_call(&format!("c{i}"), &["progress"], WAIT).await;
        assert_eq!(trying["status"], 100, "{trying}");
        call_ids.push(s(&trying["call_id"]));
        if i < 5 {
            js.wait_call(&format!("c{i}"), &["confirmed"], WAIT).await;
        } else {
            let ahead = i - 4;
            wait_until("the INVITE is held", async || {
                proxy.admission.call_load("acme").unwrap().queued == ahead as u32
            })
            .await;
        }
    }
    assert_eq!(edge.invites(), call_ids[..5]);
    // Three calls end; the held ones connect, oldest first.
    for i in 0..3 {
        js.send(json!({"cmd": "hangup", "call": format!("c{i}")}));
        js.wait_call(&format!("c{i}"), &["ended"], WAIT).await;
        let next = js
            .wait_call(&format!("c{}", i + 5), &["confirmed", "failed"], WAIT)
            .await;
        assert_eq!(next["event"], "confirmed", "{next}");
    }
    assert_eq!(edge.invites(), call_ids, "FIFO through sluice's call queue");
    assert_eq!(edge.count("SIP/2.0 503", None), 0);
    assert_eq!(active(&proxy), 5);
    // The held INVITE's 100 came from sluice: exactly one, and the edge's own 100 after
    // it was released.
    let c5 = received(&js, "p5", &call_ids[5]);
    assert_eq!(
        c5.iter().filter(|l| l.starts_with("SIP/2.0 100")).count(),
        2,
        "{c5:?}"
    );
}

#[tokio::test]
async fn jssip_cancels_a_held_invite_and_sluice_answers_200_and_487() {
    let Some(mut js) = Jssip::start().await else {
        return;
    };
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(&edge, &[("max_calls", "1")]).await;
    uas(&mut js, &proxy, &["a", "b"]).await;
    call(&mut js, "a", "up");
    js.wait_call("up", &["confirmed"], WAIT).await;
    call(&mut js, "b", "held");
    let trying = js.wait_call("held", &["progress"], WAIT).await;
    let call_id = s(&trying["call_id"]);
    js.send(json!({"cmd": "cancel", "call": "held"}));
    let failed = js.wait_call("held", &["failed"], WAIT).await;
    assert_eq!(failed["cause"], "Canceled", "{failed}");
    js.gather_for(Duration::from_millis(500)).await;
    let inbound = received(&js, "b", &call_id);
    assert!(
        inbound.contains(&"SIP/2.0 200 OK".to_owned()),
        "{inbound:?}"
    );
    assert!(
        inbound.contains(&"SIP/2.0 487 Request Terminated".to_owned()),
        "{inbound:?}"
    );
    // JsSIP ACKed the 487 (its transaction layer); sluice absorbed it. The edge saw
    // nothing of the call.
    let sent: Vec<Value> = js.seen_of("b", "sip_out").into_iter().cloned().collect();
    assert!(sent
        .iter()
        .any(|e| e["call_id"] == call_id.as_str() && s(&e["first"]).starts_with("ACK ")));
    assert_eq!(
        edge.count("", Some(&call_id)),
        0,
        "the edge saw the cancelled call"
    );
    assert_eq!(proxy.admission.call_load("acme").unwrap().queued, 0);
}

#[tokio::test]
async fn jssip_hears_sluice_503_with_retry_after_and_reason_when_its_invite_times_out() {
    let Some(mut js) = Jssip::start().await else {
        return;
    };
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(
        &edge,
        &[("max_calls", "1"), ("invite_queue_timeout", "\"500ms\"")],
    )
    .await;
    uas(&mut js, &proxy, &["a", "b"]).await;
    call(&mut js, "a", "up");
    js.wait_call("up", &["confirmed"], WAIT).await;
    call(&mut js, "b", "late");
    let failed = js.wait_call("late", &["failed", "confirmed"], WAIT).await;
    assert_eq!(failed["event"], "failed", "{failed}");
    assert_eq!(failed["status"], 503, "{failed}");
    assert!(
        s(&failed["retry_after"])
            .parse::<u64>()
            .is_ok_and(|n| n >= 1),
        "{failed}"
    );
    assert_eq!(
        s(&failed["sip_reason"]),
        "SIP;cause=503;text=\"call-queue-timeout\""
    );
    js.gather_for(Duration::from_millis(300)).await;
    let call_id = s(&failed["call_id"]);
    assert_eq!(
        edge.count("", Some(&call_id)),
        0,
        "the edge saw the refused INVITE or its ACK"
    );
}

#[tokio::test]
async fn a_200_crossing_a_jssip_cancel_is_acked_and_byed_by_sluice() {
    let Some(mut js) = Jssip::start().await else {
        return;
    };
    let edge = SipEdge::start(false).await;
    edge.ignore_cancels();
    let proxy = sip_proxy(&edge, &[("max_calls", "2")]).await;
    uas(&mut js, &proxy, &["a"]).await;
    call(&mut js, "a", "x");
    let trying = js.wait_call("x", &["progress"], WAIT).await;
    let call_id = s(&trying["call_id"]);
    js.send(json!({"cmd": "cancel", "call": "x"}));
    js.wait_call("x", &["failed"], WAIT).await;
    edge.wait_for("the CANCEL", |e| e.count("CANCEL ", Some(&call_id)) == 1)
        .await;
    edge.answer(&call_id, 200);
    edge.wait_for("sluice's BYE", |e| e.count("BYE ", Some(&call_id)) == 1)
        .await;
    assert_eq!(edge.count("ACK ", Some(&call_id)), 1);
    wait_until("the call ends", async || active(&proxy) == 0).await;
    js.gather_for(Duration::from_millis(300)).await;
    let inbound = received(&js, "a", &call_id);
    assert!(
        !inbound.iter().any(|l| l.starts_with("SIP/2.0 200")),
        "{inbound:?}"
    );
    // JsSIP sent nothing after its CANCEL: the ACK and BYE were sluice's.
    let sent: Vec<String> = js
        .seen_of("a", "sip_out")
        .into_iter()
        .filter(|e| e["call_id"] == call_id.as_str())
        .map(|e| s(&e["first"]))
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
}

#[tokio::test]
async fn a_jssip_session_dropped_mid_call_frees_its_call_for_a_held_invite() {
    let Some(mut js) = Jssip::start().await else {
        return;
    };
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(&edge, &[("max_calls", "1")]).await;
    uas(&mut js, &proxy, &["a", "b"]).await;
    call(&mut js, "a", "up");
    js.wait_call("up", &["confirmed"], WAIT).await;
    call(&mut js, "b", "next");
    js.wait_call("next", &["progress"], WAIT).await;
    js.send(json!({"cmd": "drop", "ua": "a", "abrupt": true}));
    let next = js.wait_call("next", &["confirmed", "failed"], WAIT).await;
    assert_eq!(next["event"], "confirmed", "{next}");
    assert_eq!(active(&proxy), 1);
}
