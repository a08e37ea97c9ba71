//! Attacks on the SIP call caps of issue 17 (DESIGN.md "SIP awareness"): hostile but
//! well-formed SIP from a client of the same tenant or of another, and confused UAs.
//! Real WebSocket sessions on 127.0.0.1 through sluice to the scripted SIP edge of
//! tests/support/sip.rs; each test asserts what a user of the caps relies on.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::sip::{
    active, active_of, calls_total, edge_bye, established, header, ok_tagged, phone, phone_of,
    queued, sip_proxy, sip_tenant_named, status, Phone, SipEdge,
};
use support::{config, connect_ok, scrape, tenant, wait_until, Proxy};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// The global allocator of this test binary: the system's, counting the bytes live that
/// were allocated on each thread (a `#[tokio::test]` runs its sluice, edge and clients
/// on one thread, so what one test keeps is its thread's count).
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = LIVE.try_with(|live| live.set(live.get() + delta));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes live now that this thread allocated.
fn live_bytes() -> isize {
    // The count is per thread: only a current-thread runtime (the test's default) runs
    // sluice on the thread that reads it.
    assert_eq!(
        tokio::runtime::Handle::current().runtime_flavor(),
        tokio::runtime::RuntimeFlavor::CurrentThread,
        "the allocation count needs a current-thread runtime"
    );
    LIVE.with(Cell::get)
}

async fn gauge_active(proxy: &Proxy) -> f64 {
    scrape(proxy.admin)
        .await
        .get("sluice_calls_active", &[("tenant", "acme")])
}

/// A marker request from `p` and its answer: once it came back, everything `p` sent
/// before it has been through sluice.
async fn sync(p: &mut Phone, id: &str) {
    let n = p.name.clone();
    p.send(format!(
        "OPTIONS sip:edge.invalid SIP/2.0\r\nVia: SIP/2.0/WS {n}.invalid;branch=z9hG4bKo{id}\r\nFrom: <sip:{n}@x>;tag=o{n}\r\nTo: <sip:edge@x>\r\nCall-ID: {id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ))
    .await;
    p.expect(200, id).await;
}

/// An initial INVITE of `p` (no To tag) with the given CSeq number, From tag and top
/// Via branch.
fn invite_with(p: &Phone, call_id: &str, cseq: u32, from_tag: &str, branch: &str) -> String {
    p.invite_text(call_id)
        .replace("CSeq: 1 INVITE", &format!("CSeq: {cseq} INVITE"))
        .replace(&format!(";tag=t{}", p.name), &format!(";tag={from_tag}"))
        .replace(
            &format!("branch=z9hG4bK{call_id}"),
            &format!("branch={branch}"),
        )
}

// --- Hostile neighbours --------------------------------------------------------------

/// Tenant `noisy` fills its cap, its whole INVITE queue, and sends bogus CANCELs and
/// BYEs and a huge Call-ID; tenant `acme` and a non-SIP tenant go on as if it were not
/// there.
#[tokio::test]
async fn another_tenants_invite_flood_neither_slows_nor_spends_acmes_calls() {
    let edge = SipEdge::start(true).await;
    let proxy = config()
        .upstream(&edge.url())
        .tenant(sip_tenant_named(
            "noisy",
            &[
                ("max_calls", "1"),
                ("invite_queue_depth", "20"),
                ("invite_queue_timeout", "\"30s\""),
            ],
        ))
        .tenant(sip_tenant_named("acme", &[("max_calls", "2")]))
        .tenant(tenant("plain").accept_mode().max_sessions(10).unpaced())
        .start()
        .await;
    let mut n = phone_of(&proxy, "noisy", "n").await;
    established(&mut n, "n-up").await;
    for i in 0..20 {
        n.invite(&format!("n-held-{i}")).await;
    }
    for _ in 0..20 {
        assert_eq!(status(&n.recv().await), Some(100));
    }
    // Its queue is full now; more INVITEs, CANCELs and BYEs of calls it does not have.
    let huge = "h".repeat(60_000);
    n.invite(&huge).await;
    n.expect(503, &huge).await;
    for i in 0..50 {
        n.cancel(&format!("acme-{i}")).await;
        n.bye(&format!("acme-{i}"), "<sip:queue@edge.invalid>;tag=edge1")
            .await;
    }
    assert_eq!(active_of(&proxy, "noisy"), 1);
    // acme's two calls go through at once, and count only against acme.
    let mut a = phone_of(&proxy, "acme", "a").await;
    let mut b = phone_of(&proxy, "acme", "b").await;
    established(&mut a, "acme-0").await;
    established(&mut b, "acme-1").await;
    // Not held behind noisy's queue: admitted at once (no wall-clock bound, which a
    // loaded machine would break).
    let acme_admitted = scrape(proxy.admin).await.get(
        "sluice_calls_total",
        &[("tenant", "acme"), ("outcome", "admitted")],
    );
    assert_eq!(acme_admitted, 2.0);
    assert_eq!(active_of(&proxy, "acme"), 2);
    assert_eq!(active_of(&proxy, "noisy"), 1);
    assert_eq!(proxy.admission.call_load("acme").unwrap().queued, 0);
    // A non-SIP tenant's session relays as ever.
    let mut plain = connect_ok(&proxy.url("/t/plain/"), &[]).await;
    plain.send(Message::text("ping?")).await.unwrap();
    edge.wait_for("the plain message", |e| {
        e.seen().iter().any(|s| s.text == "ping?")
    })
    .await;
    drop(n);
    wait_until("noisy's calls and queue are freed", async || {
        proxy.admission.call_load("noisy").unwrap() == sluice_load(0, 1, 0)
    })
    .await;
}

fn sluice_load(active: u32, max_calls: u32, queued: u32) -> sluice::calls::CallLoad {
    sluice::calls::CallLoad {
        active,
        max_calls: Some(max_calls),
        queued,
    }
}

/// A client of a SIP tenant that offers no subprotocol at all still gets a session (the
/// `subprotocols` list only refuses unlisted offers), and an edge that serves one
/// protocol takes it as SIP (Asterisk does): its INVITEs must count like any.
#[tokio::test]
async fn a_session_without_a_subprotocol_does_not_escape_the_cap() {
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(&edge, &[("max_calls", "1")]).await;
    let mut a = Phone::new(connect_ok(&proxy.url("/t/acme/"), &[]).await, "a");
    established(&mut a, "first").await;
    a.invite("second").await;
    let trying = a.recv().await;
    assert_eq!(status(&trying), Some(100), "{trying}");
    assert_eq!(edge.invites(), ["first"], "past max_calls = 1");
    assert_eq!(active(&proxy), 1);
    assert_eq!(queued(&proxy), 1);
}

/// One WebSocket message with two SIP messages (RFC 7118 allows one): an edge that reads
/// its WebSocket as a stream (pjsip's) takes the second as a request of its own, which
/// sluice, parsing the first, never counted. Not forwarded; the request is answered 400.
#[tokio::test]
async fn a_second_sip_message_smuggled_after_the_first_does_not_reach_the_edge() {
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(&edge, &[("max_calls", "1")]).await;
    let mut a = phone(&proxy, "a").await;
    established(&mut a, "first").await;
    let options = "OPTIONS sip:edge.invalid SIP/2.0\r\nVia: SIP/2.0/WS a.invalid;branch=z9hG4bKsm\r\nFrom: <sip:a@x>;tag=oa\r\nTo: <sip:edge@x>\r\nCall-ID: smuggler\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let bundle = format!("{options}{}", a.invite_text("smuggled"));
    a.send(bundle).await;
    let bad = a.recv().await;
    assert_eq!(status(&bad), Some(400), "{bad}");
    sync(&mut a, "after").await;
    for seen in edge.seen() {
        assert!(
            !seen.text.contains("Call-ID: smuggled"),
            "the edge got a request sluice did not count: {}",
            seen.text
        );
    }
    // A message with its body and trailing CRLFs (a keep-alive's) is one message.
    let mut with_crlf = options.replace("smuggler", "crlf");
    with_crlf.push_str("\r\n\r\n");
    a.send(with_crlf).await;
    a.expect(200, "crlf").await;
    assert_eq!(active(&proxy), 1);
}

/// A client sends CANCEL, BYE and ACK with the Call-ID (and tags) of another session's
/// calls of the same tenant: sluice cancels, ends and absorbs nothing of them.
#[tokio::test]
async fn another_sessions_call_id_in_cancel_bye_or_ack_touches_nothing_of_its_calls() {
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(
        &edge,
        &[
            ("max_calls", "1"),
            ("invite_queue_depth", "1"),
            ("invite_queue_timeout", "\"30s\""),
        ],
    )
    .await;
    let mut a = phone(&proxy, "a").await;
    let mut b = phone(&proxy, "b").await;
    let mut c = phone(&proxy, "c").await;
    let mut m = phone(&proxy, "m").await;
    let a_to = established(&mut a, "a-up").await;
    b.invite_trying("b-held").await;
    c.invite("c-full").await;
    let full = c.expect(503, "c-full").await;
    let full_to = header(&full, "to").unwrap().to_owned();
    // m impersonates b and c (same names, so the same From tags and branches).
    let mut m_as_b = Phone::new(m.ws, "b");
    m_as_b.cancel("b-held").await;
    let mut m_as_c = Phone::new(m_as_b.ws, "c");
    m_as_c.ack("c-full", &full_to).await;
    let mut m_as_a = Phone::new(m_as_c.ws, "a");
    // The BYE goes to the edge, which ends a's call on its own: that is the edge's
    // business. sluice's count of a's call is a's, not m's.
    m_as_a.bye("a-up", &a_to).await;
    m = Phone::new(m_as_a.ws, "m");
    sync(&mut m, "m-sync").await;
    // b's INVITE is still held (no 200, no 487 for it), c's ACK still absorbed.
    assert_eq!(queued(&proxy), 1);
    assert!(
        b.recv_within(Duration::from_millis(200)).await.is_none(),
        "b heard something"
    );
    c.ack("c-full", &full_to).await;
    sync(&mut c, "c-sync").await;
    // The ACK the edge saw for c-full is m's (passed on), never c's (absorbed).
    assert_eq!(edge.count("ACK ", Some("c-full")), 1);
    assert_eq!(active(&proxy), 1, "a's call still counts");
    // a's own BYE ends it (the edge answers 481, it forgot the call on m's BYE) and b's
    // INVITE goes on.
    a.bye("a-up", &a_to).await;
    a.expect(481, "a-up").await;
    b.expect(200, "b-held").await;
    assert_eq!(edge.invites(), ["a-up", "b-held"]);
}

// --- Counting: never twice, never bypassed --------------------------------------------

/// A second initial INVITE (no To tag) with the Call-ID of a call that is up, but a new
/// CSeq or a new From tag, is a new dialog to a real edge: it must not get there
/// uncounted past `max_calls`.
#[tokio::test]
async fn an_initial_invite_reusing_a_live_call_id_does_not_bypass_the_cap() {
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(&edge, &[("max_calls", "1")]).await;
    let mut a = phone(&proxy, "a").await;
    established(&mut a, "dup").await;
    assert_eq!(active(&proxy), 1);
    // Same From tag, a later CSeq (what a UA sends after a 401, but the call is up).
    let text = invite_with(&a, "dup", 5, "ta", "z9hG4bKdup5");
    a.send(text).await;
    // A new From tag (a new dialog by RFC 3261's dialog ID), CSeq 1.
    let text = invite_with(&a, "dup", 1, "other", "z9hG4bKdup1b");
    a.send(text).await;
    let mut finals = Vec::new();
    while finals.len() < 2 {
        let m = a.recv().await;
        if let Some(code) = status(&m).filter(|c| *c >= 200) {
            finals.push((code, header(&m, "cseq").unwrap().to_owned(), m));
        }
    }
    assert_eq!(
        edge.invites(),
        ["dup"],
        "a second dialog reached the edge past max_calls = 1"
    );
    for (code, cseq, m) in &finals {
        assert!(*code >= 300, "{cseq}: {m}");
        assert!(header(m, "to").unwrap().contains("tag="), "{m}");
    }
    assert_eq!(active(&proxy), 1);
}

/// Two `200`s with different To tags to one INVITE (a forking edge), a retransmitted
/// `200`, BYEs of the other fork from either side: the call counts once and ends with
/// its own dialog.
#[tokio::test]
async fn forked_and_retransmitted_200s_count_once_and_another_forks_bye_ends_nothing() {
    let edge = SipEdge::start(false).await;
    let proxy = sip_proxy(&edge, &[("max_calls", "1")]).await;
    let mut a = phone(&proxy, "a").await;
    let mut b = phone(&proxy, "b").await;
    a.invite("fork").await;
    edge.wait_for("the INVITE", |e| e.invites().len() == 1)
        .await;
    edge.answer("fork", 200);
    edge.send_for("fork", |inv| ok_tagged(inv, "edge2"));
    edge.send_for("fork", |inv| ok_tagged(inv, "edge1"));
    let mut tos = Vec::new();
    while tos.len() < 3 {
        let ok = a.expect(200, "fork").await;
        tos.push(header(&ok, "to").unwrap().to_owned());
    }
    assert!(tos[0].ends_with("tag=edge1") && tos[1].ends_with("tag=edge2"));
    assert_eq!(active(&proxy), 1);
    // The other fork's dialog ends, by the edge and by the client: nothing counted ends.
    edge.send_for("fork", |inv| edge_bye(inv, "edge2"));
    let bye = a.recv().await;
    assert!(bye.starts_with("BYE "), "{bye}");
    a.bye("fork", &tos[1]).await;
    a.expect(200, "fork").await;
    sync(&mut a, "a-sync").await;
    assert_eq!(active(&proxy), 1);
    b.invite("next").await;
    assert_eq!(status(&b.recv().await), Some(100), "the cap is still taken");
    // The counted dialog's BYE (the edge forgot the call on the other fork's BYE and
    // answers 481, a final answer all the same) ends it, once.
    a.bye("fork", &tos[0]).await;
    a.expect(481, "fork").await;
    edge.wait_for("the held INVITE", |e| e.invites().len() == 2)
        .await;
    assert_eq!(active(&proxy), 1, "b's call, and only it");
    assert_eq!(calls_total(&proxy, "admitted").await, 1.0);
    assert_eq!(calls_total(&proxy, "queued_admitted").await, 1.0);
}

/// The edge's BYE and the client's BYE cross: the call ends once, and the next one
/// counts normally.
#[tokio::test]
async fn an_edge_bye_racing_a_client_bye_ends_the_call_once() {
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(&edge, &[("max_calls", "2")]).await;
    let mut a = phone(&proxy, "a").await;
    for round in 0..5 {
        let id = format!("race-{round}");
        let to = established(&mut a, &id).await;
        edge.wait_for("the ACK", |e| e.count("ACK ", Some(&id)) == 1)
            .await;
        // Sent together: which one sluice sees first is the race.
        edge.send_for(&id, |inv| edge_bye(inv, "edge1"));
        a.bye(&id, &to).await;
        sync(&mut a, &format!("s{round}")).await;
        wait_until("the call ends", async || active(&proxy) == 0).await;
    }
    let mut b = phone(&proxy, "b").await;
    established(&mut a, "x1").await;
    established(&mut b, "x2").await;
    assert_eq!(active(&proxy), 2);
    assert_eq!(gauge_active(&proxy).await, 2.0);
}

/// A client forges the edge's answers into its own direction (a `486` to its INVITE, a
/// `200` to a BYE it never sent): only the edge's answers end a call, so its place is
/// not freed while the edge has the call.
#[tokio::test]
async fn a_client_cannot_free_its_place_by_sending_the_edges_answers_itself() {
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(&edge, &[("max_calls", "1")]).await;
    let mut a = phone(&proxy, "a").await;
    let mut b = phone(&proxy, "b").await;
    let to = established(&mut a, "kept").await;
    let invite = a.invite_text("kept");
    a.send(support::sip::response(&invite, "486 Busy Here", true))
        .await;
    let bye = format!(
        "BYE sip:edge@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WS a.invalid;branch=z9hG4bKf\r\nFrom: <sip:a@edge.invalid>;tag=ta\r\nTo: {to}\r\nCall-ID: kept\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    a.send(support::sip::response(&bye, "200 OK", false)).await;
    sync(&mut a, "a-sync").await;
    assert_eq!(active(&proxy), 1);
    b.invite_trying("waits").await;
    assert!(
        b.recv_within(Duration::from_millis(300)).await.is_none(),
        "b's INVITE went on while a's call is up"
    );
    assert_eq!(edge.invites(), ["kept"]);
    assert_eq!(edge.calls_up(), 1);
}

// --- The crossing 200 ------------------------------------------------------------------

/// A CANCEL with a From tag that is not the INVITE's: when a `200` crosses it, sluice's
/// ACK and BYE must name the INVITE's dialog, else the edge refuses the BYE (`481`),
/// sluice stops counting, and the edge keeps a call up that no cap sees.
#[tokio::test]
async fn a_forged_cancel_cannot_free_the_place_of_a_call_the_edge_keeps_up() {
    let edge = SipEdge::start(false).await;
    edge.ignore_cancels();
    let proxy = sip_proxy(&edge, &[("max_calls", "1")]).await;
    let mut a = phone(&proxy, "a").await;
    a.invite_trying("forged").await;
    a.send(
        "CANCEL sip:queue@edge.invalid SIP/2.0\r\nVia: SIP/2.0/WS a.invalid;branch=z9hG4bKforged\r\nMax-Forwards: 70\r\nFrom: <sip:a@edge.invalid>;tag=not-the-invites\r\nTo: <sip:queue@edge.invalid>\r\nCall-ID: forged\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n".into(),
    )
    .await;
    edge.wait_for("the CANCEL", |e| e.count("CANCEL ", Some("forged")) == 1)
        .await;
    edge.answer("forged", 200);
    // Whatever sluice does with the 200, it never sends a BYE the edge refuses, and it
    // counts the call while the edge has it up.
    let deadline = Instant::now() + Duration::from_millis(600);
    while Instant::now() < deadline {
        assert!(
            active(&proxy) as usize >= edge.calls_up(),
            "the edge has a call up that sluice does not count"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for bye in edge
        .seen()
        .iter()
        .filter(|s| s.first_line().starts_with("BYE "))
    {
        assert!(
            bye.header("from").unwrap().ends_with("tag=ta"),
            "sluice's BYE names another dialog: {}",
            bye.text
        );
    }
    assert_eq!(edge.count("SIP/2.0 481", None), 0);
}

/// After a `200` crossed a CANCEL, retransmissions of it and a `200` of another fork
/// get no further ACK or BYE from sluice: one BYE, the call ends once.
#[tokio::test]
async fn a_crossed_200_retransmitted_or_forked_gets_one_bye_from_sluice() {
    let edge = SipEdge::start(false).await;
    edge.ignore_cancels();
    let proxy = sip_proxy(&edge, &[("max_calls", "1")]).await;
    let mut a = phone(&proxy, "a").await;
    a.invite_trying("crossed").await;
    a.cancel("crossed").await;
    edge.wait_for("the CANCEL", |e| e.count("CANCEL ", Some("crossed")) == 1)
        .await;
    edge.send_for("crossed", |inv| ok_tagged(inv, "edge1"));
    edge.send_for("crossed", |inv| ok_tagged(inv, "edge1"));
    edge.send_for("crossed", |inv| ok_tagged(inv, "edge2"));
    edge.wait_for("sluice's BYE", |e| e.count("BYE ", Some("crossed")) >= 1)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(edge.count("BYE ", Some("crossed")), 1);
    assert_eq!(edge.count("ACK ", Some("crossed")), 1);
    wait_until("the call ends", async || active(&proxy) == 0).await;
    while let Some(m) = a.recv_within(Duration::from_millis(200)).await {
        assert_ne!(status(&m), Some(200), "the client saw a 200: {m}");
    }
}

// --- Memory and backpressure ------------------------------------------------------------

/// One session of a tenant whose calls are counted but not capped opens many dialogs:
/// 256 count, the next are answered 503 by sluice (the edge never sees them), and all
/// are freed when the session ends.
#[tokio::test]
async fn one_session_cannot_grow_its_call_table_past_the_bound() {
    let edge = SipEdge::start(false).await;
    let proxy = sip_proxy(&edge, &[("call_idle_timeout", "\"1h\"")]).await;
    let mut a = phone(&proxy, "a").await;
    let bound = sluice::calls::MAX_SESSION_CALLS;
    for i in 0..bound + 20 {
        a.invite(&format!("many-{i}")).await;
    }
    let mut refused = 0;
    let mut trying = 0;
    while refused < 20 || trying < bound {
        let m = a.recv().await;
        match status(&m) {
            Some(503) => refused += 1,
            Some(100) => trying += 1,
            other => panic!("{other:?}: {m}"),
        }
    }
    assert_eq!(refused, 20);
    assert_eq!(edge.invites().len(), bound);
    assert_eq!(active(&proxy), bound as u32);
    // Retransmissions of counted INVITEs do not count again, nor free anything.
    for i in 0..20 {
        a.invite(&format!("many-{i}")).await;
    }
    sync(&mut a, "sync").await;
    assert_eq!(active(&proxy), bound as u32);
    drop(a);
    wait_until("every call is freed", async || active(&proxy) == 0).await;
    assert_eq!(gauge_active(&proxy).await, 0.0);
}

/// A SIP edge that keeps nothing: it answers OPTIONS `200` and drops everything else.
async fn forgetful_edge() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                #[allow(clippy::result_large_err)] // tungstenite's callback type
                let sip = |_: &tokio_tungstenite::tungstenite::handshake::server::Request,
                           mut resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                    resp.headers_mut()
                        .insert("sec-websocket-protocol", "sip".parse().unwrap());
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, sip).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg {
                        if t.starts_with("OPTIONS ") {
                            let ok = support::sip::response(&t, "200 OK", true);
                            let _ = ws.send(Message::text(ok)).await;
                        }
                    }
                }
            });
        }
    });
    url
}

/// Calls of a session with huge Call-IDs, From tags and CANCELs (valid SIP, each within
/// the message size limit): what sluice keeps per call does not grow with them.
#[tokio::test]
async fn huge_call_ids_tags_and_cancels_do_not_pin_memory_per_call() {
    let url = forgetful_edge().await;
    let proxy = config()
        .upstream(&url)
        .tenant(sip_tenant_named("acme", &[("call_idle_timeout", "\"1h\"")]))
        .start()
        .await;
    let mut a = phone(&proxy, "a").await;
    sync(&mut a, "warm-up").await;
    let before = live_bytes();
    let calls = 200;
    let big = 128 * 1024;
    for i in 0..calls {
        let call_id = format!("{i}-{}", "c".repeat(big));
        let tag = format!("{i}-{}", "t".repeat(big / 4));
        let invite = invite_with(&a, &call_id, 1, &tag, &format!("z9hG4bK{i}"));
        a.send(invite).await;
        let cancel = format!(
            "CANCEL sip:queue@edge.invalid SIP/2.0\r\nVia: SIP/2.0/WS a.invalid;branch=z9hG4bK{i}\r\nFrom: <sip:a@edge.invalid>;tag={tag}\r\nTo: <sip:queue@edge.invalid>\r\nCall-ID: {call_id}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
        );
        a.send(cancel).await;
    }
    sync(&mut a, "after").await;
    assert_eq!(active(&proxy), calls);
    let kept = live_bytes() - before;
    // The client sent ~200 × 2 × 160 KiB; a call must cost bytes, not its Call-ID.
    assert!(kept < 8 << 20, "{} KiB kept for {calls} calls", kept / 1024);
    drop(a);
    wait_until("the calls end", async || active(&proxy) == 0).await;
}

/// A client over the cap sends INVITEs with bodies up to the message size limit: sluice
/// keeps each INVITE it holds, so the tenant's whole queue of them would pin
/// `invite_queue_depth` × the limit (200 MiB by default) for `invite_queue_timeout`.
/// An INVITE too large to keep is answered `503` at once; one of a UA's size is held.
#[tokio::test]
async fn held_invites_cannot_pin_the_message_size_limit_each() {
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(
        &edge,
        &[
            ("max_calls", "1"),
            ("invite_queue_depth", "100"),
            ("invite_queue_timeout", "\"30s\""),
        ],
    )
    .await;
    let mut a = phone(&proxy, "a").await;
    established(&mut a, "up").await;
    let mut m = phone(&proxy, "m").await;
    sync(&mut m, "warm-up").await;
    let before = live_bytes();
    let body = format!("v=0\r\n{}\r\n", "a=x-pad:".repeat(64 * 1024));
    for i in 0..40 {
        let id = format!("big-{i}");
        let small = m.invite_text(&id);
        let (head, _) = small.split_once("Content-Length:").unwrap();
        let invite = format!("{head}Content-Length: {}\r\n\r\n{body}", body.len());
        m.send(invite).await;
        let answer = m.recv().await;
        assert!(matches!(status(&answer), Some(100 | 503)), "{answer}");
    }
    sync(&mut m, "after").await;
    let kept = live_bytes() - before;
    assert!(
        kept < 8 << 20,
        "{} KiB kept for 40 held INVITEs of {} KiB",
        kept / 1024,
        body.len() / 1024
    );
    // A UA-sized INVITE is still held.
    m.invite("small").await;
    assert_eq!(status(&m.expect(100, "small").await), Some(100));
    assert_eq!(edge.invites(), ["up"]);
}

/// A client that never reads what sluice sends it keeps INVITEs coming; they are held
/// (`100 Trying`) and time out (`503`). sluice's answers to it must not pile up in
/// sluice's memory: like any answers to a client that does not read, they stop sluice
/// reading from it.
#[tokio::test]
async fn a_client_that_does_not_read_cannot_pile_up_sluices_answers() {
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(
        &edge,
        &[
            ("max_calls", "1"),
            ("invite_queue_depth", "1000"),
            ("invite_queue_timeout", "\"20ms\""),
        ],
    )
    .await;
    let mut a = phone(&proxy, "a").await;
    established(&mut a, "up").await;
    let mut m = phone(&proxy, "m").await;
    // Each INVITE's Via is copied into its 100 and its 503: ~16 KiB each.
    let pad = "p".repeat(16 * 1024);
    let total = 4000;
    let sender = tokio::spawn(async move {
        let mut sent = 0;
        for i in 0..total {
            let text = m.invite_text(&format!("flood-{i}")).replacen(
                ";branch=",
                &format!(";pad={pad};branch="),
                1,
            );
            let send = tokio::time::timeout(Duration::from_secs(3), m.send(text));
            if send.await.is_err() {
                break;
            }
            sent += 1;
        }
        (sent, m)
    });
    let (sent, m) = tokio::time::timeout(Duration::from_secs(60), sender)
        .await
        .expect("the sender ends")
        .unwrap();
    let seen =
        calls_total(&proxy, "call-queue-timeout").await + calls_total(&proxy, "call-cap").await;
    assert!(
        seen < 1500.0,
        "sluice read {seen} of {sent} INVITEs from a client that reads nothing"
    );
    assert_eq!(edge.invites(), ["up"]);
    drop(m);
    wait_until("the queue is empty", async || queued(&proxy) == 0).await;
}

// --- Leaks ---------------------------------------------------------------------------------

/// Calls that never get a final answer, a BYE that is never answered, a CANCEL and then
/// the session's end, INVITEs held when their session ends or released just as it ends:
/// when every session is gone, nothing counts and nothing is held.
#[tokio::test]
async fn whatever_happened_every_call_is_freed_when_the_sessions_end() {
    let edge = SipEdge::start(false).await;
    edge.ignore_cancels();
    let proxy = sip_proxy(
        &edge,
        &[
            ("max_calls", "3"),
            ("invite_queue_depth", "50"),
            ("invite_queue_timeout", "\"30s\""),
        ],
    )
    .await;
    let mut a = phone(&proxy, "a").await;
    let mut b = phone(&proxy, "b").await;
    // a: one call never answered, one cancelled (the CANCEL is ignored).
    a.invite("silent").await;
    a.invite("cancelled").await;
    edge.wait_for("two INVITEs", |e| e.invites().len() == 2)
        .await;
    a.cancel("cancelled").await;
    // b: a call answered and never ended.
    b.invite("answered").await;
    edge.wait_for("three INVITEs", |e| e.invites().len() == 3)
        .await;
    edge.answer("answered", 200);
    let ok = b.expect(200, "answered").await;
    let to = header(&ok, "to").unwrap().to_owned();
    b.ack("answered", &to).await;
    assert_eq!(active(&proxy), 3);
    // Held INVITEs from sessions that end in every way.
    let mut held = Vec::new();
    for i in 0..10 {
        let mut p = phone(&proxy, &format!("h{i}")).await;
        p.invite(&format!("held-{i}")).await;
        assert_eq!(status(&p.recv().await), Some(100));
        held.push(p);
    }
    assert_eq!(queued(&proxy), 10);
    // One leaves after cancelling, one mid-CANCEL.
    let mut h0 = held.remove(0);
    h0.cancel("held-0").await;
    h0.expect(200, "held-0").await;
    h0.expect(487, "held-0").await;
    drop(h0);
    let mut h1 = held.remove(0);
    h1.cancel("held-1").await;
    drop(h1);
    // a's session ends: its two places are released to the oldest held INVITEs, whose
    // sessions end at the same moment.
    let h2 = held.remove(0);
    let h3 = held.remove(0);
    drop(a);
    drop(h2);
    drop(h3);
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(held);
    drop(b);
    wait_until("nothing counts", async || active(&proxy) == 0).await;
    wait_until("nothing is held", async || queued(&proxy) == 0).await;
    assert_eq!(gauge_active(&proxy).await, 0.0);
    // And the cap is whole again: three calls go through at once.
    let mut c = phone(&proxy, "c").await;
    for i in 0..3 {
        c.invite(&format!("after-{i}")).await;
    }
    edge.wait_for("three more INVITEs", |e| {
        e.invites()
            .iter()
            .filter(|i| i.starts_with("after-"))
            .count()
            == 3
    })
    .await;
    assert_eq!(queued(&proxy), 0);
}

/// A client's BYE the edge never answers: the call is not leaked, the reaper ends it.
#[tokio::test]
async fn a_bye_that_is_never_answered_is_reaped_not_leaked() {
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(
        &edge,
        &[("max_calls", "1"), ("call_idle_timeout", "\"300ms\"")],
    )
    .await;
    let mut a = phone(&proxy, "a").await;
    let mut b = phone(&proxy, "b").await;
    let to = established(&mut a, "unanswered").await;
    edge.ignore_byes();
    a.bye("unanswered", &to).await;
    b.invite_trying("next").await;
    b.expect(200, "next").await;
    assert_eq!(calls_total(&proxy, "reaped").await, 1.0);
    assert_eq!(active(&proxy), 1);
}

// --- Order -------------------------------------------------------------------------------

/// A held client retransmits its INVITE, re-sends it with another CSeq, or cancels it
/// and INVITEs again: it never holds two places, never jumps ahead of the INVITEs held
/// before it, and its held INVITE reaches the edge once.
#[tokio::test]
async fn a_held_client_cannot_jump_the_queue_or_hold_two_places() {
    let edge = SipEdge::start(true).await;
    let proxy = sip_proxy(
        &edge,
        &[
            ("max_calls", "1"),
            ("invite_queue_depth", "10"),
            ("invite_queue_timeout", "\"30s\""),
        ],
    )
    .await;
    let mut a = phone(&proxy, "a").await;
    let mut x = phone(&proxy, "x").await;
    let mut y = phone(&proxy, "y").await;
    let a_to = established(&mut a, "up").await;
    x.invite_trying("x1").await;
    y.invite_trying("y1").await;
    // x: retransmissions, another CSeq, then CANCEL and a new INVITE.
    for _ in 0..5 {
        x.invite("x1").await;
    }
    let text = invite_with(&x, "x1", 2, "tx", "z9hG4bKx1b");
    x.send(text).await;
    let refused = x.expect(482, "x1").await;
    assert_eq!(header(&refused, "cseq"), Some("2 INVITE"));
    sync(&mut x, "x-sync").await;
    assert_eq!(queued(&proxy), 2);
    x.cancel("x1").await;
    x.expect(200, "x1").await;
    x.expect(487, "x1").await;
    x.invite("x2").await;
    x.expect(100, "x2").await;
    assert_eq!(queued(&proxy), 2);
    // y was held before x2: y goes first.
    a.bye("up", &a_to).await;
    a.expect(200, "up").await;
    let y_to = {
        let ok = y.expect(200, "y1").await;
        header(&ok, "to").unwrap().to_owned()
    };
    y.ack("y1", &y_to).await;
    y.bye("y1", &y_to).await;
    y.expect(200, "y1").await;
    x.expect(200, "x2").await;
    assert_eq!(edge.invites(), ["up", "y1", "x2"]);
    assert_eq!(edge.count("", Some("x1")), 0);
}
