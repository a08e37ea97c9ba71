//! SIP over WebSocket (issue 17): arbitrary bytes as one WebSocket message of a SIP
//! tenant, through `sip::parse`, and the messages sluice builds from what it parsed.
//!
//! Input: the message's bytes. When they parse: the parsed fields agree with what the
//! accessors find again; for a request, `sip::response` (a `487` with a new To tag and an
//! extra header) parses back with the same Call-ID, CSeq and Via values; and
//! `sip::ack_for_2xx` and `sip::bye_for` for it, with a real `200` (or, for a parsed 2xx,
//! with the input as the `200` of a real INVITE), parse back with the INVITE's Call-ID
//! and CSeq number (the same, one more for the BYE). And no panic anywhere.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::sip::{self, SipMessage};

/// A real INVITE (JsSIP over WSS) and the edge's `200` to it, to pair with the input.
const INVITE: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r
Via: SIP/2.0/WSS 8d1pjr0hq8vg.invalid;branch=z9hG4bK1735891\r
Max-Forwards: 69\r
To: <sip:bob@example.com>\r
From: \"Alice\" <sip:alice@example.com>;tag=q3k1mm2hn0\r
Call-ID: 6ii6pr7g0ol0fd4bq5k9\r
CSeq: 8027 INVITE\r
Contact: <sip:3m8pf1vf@8d1pjr0hq8vg.invalid;transport=ws;ob>\r
Content-Length: 0\r
\r
";
const OK: &[u8] = b"SIP/2.0 200 OK\r
Via: SIP/2.0/WSS 8d1pjr0hq8vg.invalid;rport=52341;received=203.0.113.7;branch=z9hG4bK1735891\r
Record-Route: <sip:edge2.example.net;lr;ftag=q3k1mm2hn0>, <sip:198.51.100.10;transport=ws;lr>\r
From: \"Alice\" <sip:alice@example.com>;tag=q3k1mm2hn0\r
To: <sip:bob@example.com>;tag=as5f3c1e2a\r
Call-ID: 6ii6pr7g0ol0fd4bq5k9\r
CSeq: 8027 INVITE\r
Contact: <sip:bob@192.0.2.44:5060;transport=udp>\r
Content-Length: 0\r
\r
";

/// Whitespace runs as one SP: the builders unfold folded values (RFC 3261 §7.3.1).
fn norm(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn vias(m: &SipMessage<'_>) -> Vec<String> {
    m.header_values("Via").map(norm).collect()
}

/// Parses what a builder made; it must parse.
fn reparse(built: &str) -> SipMessage<'_> {
    sip::parse(built.as_bytes()).unwrap_or_else(|e| panic!("{e}: {built:?}"))
}

/// An ACK and a BYE for `ok` to `invite` parse back as such.
fn check_in_dialog(invite: &SipMessage<'_>, ok: &SipMessage<'_>) {
    let branch = sip::new_branch();
    let ack = sip::ack_for_2xx(invite, ok, &branch);
    let back = reparse(&ack);
    assert_eq!(back.method(), Some("ACK"));
    assert_eq!(norm(back.call_id), norm(invite.call_id));
    assert_eq!(back.cseq.number, invite.cseq.number);
    // A branch added to a top Via that has none lands inside the Via's open quote or
    // `<` when it has one (garbage no edge accepts; docs/fuzzing.md, finding 4).
    let top = invite.header_values("Via").next().unwrap_or_default();
    if invite.branch.is_some() || !top.contains(['"', '<']) {
        assert_eq!(back.branch, Some(branch.as_str()));
    }
    let bye = sip::bye_for(invite, ok, &branch);
    let back = reparse(&bye);
    assert_eq!(back.method(), Some("BYE"));
    assert_eq!(norm(back.call_id), norm(invite.call_id));
    assert_eq!(back.cseq.number, invite.cseq.number + 1);
}

fuzz_target!(|data: &[u8]| {
    let Ok(m) = sip::parse(data) else {
        return;
    };
    // What parse found, the accessors find again.
    assert!(!m.call_id.is_empty());
    assert!(m.cseq.number <= 1 << 31);
    assert_eq!(m.is_request(), m.method().is_some());
    assert_eq!(m.is_request(), m.code().is_none());
    assert_eq!(m.header("Call-ID"), Some(m.call_id));
    assert!(m.header("From").is_some() && m.header("To").is_some());
    let top = m.header_values("v").next().expect("a Via");
    if let Some(branch) = m.branch {
        assert!(
            top.contains(branch),
            "{branch:?} not in the top Via {top:?}"
        );
    }
    if let Some(uri) = m.contact_uri() {
        assert!(!uri.is_empty() && uri != "*");
    }
    assert!(m.body().len() <= data.len());

    let invite = sip::parse(INVITE).expect("the INVITE parses");
    let ok = sip::parse(OK).expect("the 200 parses");
    if m.is_request() {
        let tag = sip::new_tag();
        let built = sip::response(&m, 487, "Request Terminated", &tag, &[("Retry-After", "3")]);
        let back = reparse(&built);
        assert_eq!(back.code(), Some(487));
        assert_eq!(norm(back.call_id), norm(m.call_id));
        assert_eq!(back.cseq.number, m.cseq.number);
        assert_eq!(back.cseq.method, m.cseq.method);
        assert_eq!(vias(&back), vias(&m));
        assert_eq!(back.header("Retry-After"), Some("3"));
        check_in_dialog(&m, &ok);
    } else if m.code().is_some_and(|c| (200..300).contains(&c)) {
        check_in_dialog(&invite, &m);
    }
});
