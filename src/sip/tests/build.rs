//! Tests of `sip`'s builders: what they make parses back; and `parse` under random bytes.

use proptest::prelude::*;

use super::samples::*;
use super::{norm, vias};
use crate::sip::*;

#[test]
fn a_response_parses_back() {
    let text = jssip_invite();
    let invite = parse(text.as_bytes()).unwrap();
    let tag = new_tag();
    let built = response(
        &invite,
        503,
        "Service Unavailable",
        &tag,
        &[
            ("Retry-After", "4"),
            ("Reason", "SIP;cause=503;text=\"call-cap\""),
        ],
    );
    assert!(built.starts_with("SIP/2.0 503 Service Unavailable\r\nVia: "));
    assert!(built.ends_with("\r\nContent-Length: 0\r\n\r\n"));
    let back = parse(built.as_bytes()).unwrap();
    assert_eq!(back.code(), Some(503));
    assert_eq!(back.call_id, invite.call_id);
    assert_eq!(back.cseq, invite.cseq);
    assert_eq!(vias(&back), vias(&invite));
    assert_eq!(back.from_tag, invite.from_tag);
    assert_eq!(back.to_tag, Some(tag.as_str()));
    assert_eq!(back.header("Retry-After"), Some("4"));
    assert_eq!(
        back.header("reason"),
        Some("SIP;cause=503;text=\"call-cap\"")
    );
    assert_eq!(back.content_length, Some(0));
    let names: Vec<&str> = built
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        [
            "Via",
            "From",
            "To",
            "Call-ID",
            "CSeq",
            "Retry-After",
            "Reason",
            "Content-Length"
        ]
    );

    // 100 Trying gets no tag; neither does a request whose To has one already.
    let trying = response(&invite, 100, "Trying", &tag, &[]);
    assert_eq!(parse(trying.as_bytes()).unwrap().to_tag, None);
    let bye = parse(BYE.as_bytes()).unwrap();
    let ok = response(&bye, 200, "OK", &tag, &[]);
    let ok = parse(ok.as_bytes()).unwrap();
    assert_eq!(ok.to_tag, Some("q3k1mm2hn0"));
    assert_eq!(vias(&ok), vias(&bye), "every Via, in order");

    // Folded and compact values come back unfolded, on one line each.
    let folded = parse(FOLDED.as_bytes()).unwrap();
    let built = response(&folded, 487, "Request Terminated", "t1", &[]);
    let back = parse(built.as_bytes()).unwrap();
    assert_eq!(back.from_tag, Some("98asjd8"));
    assert_eq!(back.to_tag, Some("t1"));
    assert_eq!(back.branch, Some("z9hG4bKfold1"));
    assert_eq!(back.header("To"), Some("sip:user@example.com;tag=t1"));
    let compact = parse(COMPACT.as_bytes()).unwrap();
    let back = response(&compact, 486, "Busy Here", "t2", &[]);
    let back = parse(back.as_bytes()).unwrap();
    assert_eq!(
        (back.call_id, back.from_tag, back.to_tag),
        (compact.call_id, Some("a73kszlfl"), Some("t2"))
    );
}

#[test]
fn ack_and_bye_for_a_real_200() {
    let invite_text = jssip_invite();
    let invite = parse(invite_text.as_bytes()).unwrap();
    for one_line in [true, false] {
        let ok_text = ok_200(one_line);
        let ok = parse(ok_text.as_bytes()).unwrap();
        let branch = new_branch();
        let ack = ack_for_2xx(&invite, &ok, &branch);
        let ack = parse(ack.as_bytes()).unwrap();
        assert_eq!(ack.method(), Some("ACK"));
        assert_eq!(ack.uri(), Some("sip:bob@192.0.2.44:5060;transport=udp"));
        assert_eq!(
            ack.header_values("Route").collect::<Vec<_>>(),
            [
                "<sip:198.51.100.10;transport=ws;r2=on;lr>",
                "<sip:edge2.example.net;lr;ftag=q3k1mm2hn0>"
            ],
            "the Record-Route reversed"
        );
        assert_eq!(
            ack.cseq,
            CSeq {
                number: 8027,
                method: "ACK"
            }
        );
        assert_eq!(ack.branch, Some(branch.as_str()));
        assert_eq!(
            vias(&ack),
            [format!("SIP/2.0/WSS 8d1pjr0hq8vg.invalid;branch={branch}")]
        );
        assert_eq!(
            (ack.from_tag, ack.to_tag),
            (Some("q3k1mm2hn0"), Some("as5f3c1e2a"))
        );
        assert_eq!(ack.call_id, invite.call_id);
        assert_eq!(ack.header("Max-Forwards"), Some("70"));
        assert_eq!(ack.content_length, Some(0));

        let branch2 = new_branch();
        let bye = bye_for(&invite, &ok, &branch2);
        let bye = parse(bye.as_bytes()).unwrap();
        assert_eq!(bye.method(), Some("BYE"));
        assert_eq!(bye.uri(), ack.uri());
        assert_eq!(
            bye.header_values("Route").collect::<Vec<_>>(),
            ack.header_values("Route").collect::<Vec<_>>()
        );
        assert_eq!(
            bye.cseq,
            CSeq {
                number: 8028,
                method: "BYE"
            }
        );
        assert_eq!(bye.branch, Some(branch2.as_str()));
        assert_eq!((bye.from_tag, bye.to_tag), (ack.from_tag, ack.to_tag));
    }
    assert_ne!(new_branch(), new_branch());
    assert!(new_branch().starts_with("z9hG4bK") && new_branch().len() == 23);
    assert_ne!(new_tag(), new_tag());
}

#[test]
fn ack_without_contact_or_branch_and_with_credentials() {
    // No Contact in the 200: the INVITE's Request-URI. No branch in the Via: added.
    let invite = COMPACT.replace(";BRANCH=z9hG4bKnashds8", "").replace(
        "CSeq: 1 INVITE\r\n",
        "CSeq: 1 INVITE\r\nProxy-Authorization: Digest username=\"bob\", nonce=\"a,b\"\r\n",
    );
    let invite = parse(invite.as_bytes()).unwrap();
    assert_eq!(invite.branch, None);
    let ok = RINGING
        .replace("180 Ringing", "200 OK")
        .replace("Contact: <sip:bob@192.0.2.44:5060>\r\n", "");
    let ok = parse(ok.as_bytes()).unwrap();
    let ack = ack_for_2xx(&invite, &ok, "z9hG4bKnew");
    let ack = parse(ack.as_bytes()).unwrap();
    assert_eq!(ack.uri(), Some("sip:carol@chicago.example.com"));
    assert_eq!(ack.branch, Some("z9hG4bKnew"));
    assert_eq!(
        ack.header("Proxy-Authorization"),
        Some("Digest username=\"bob\", nonce=\"a,b\"")
    );
    assert_eq!(ack.header_values("Route").count(), 0);
    let bye = bye_for(&invite, &ok, "z9hG4bKbye");
    assert!(!bye.contains("Authorization"));
    assert_eq!(parse(bye.as_bytes()).unwrap().cseq.number, 2);
}

/// What the builders promise for any message `parse` accepts (the fuzz target checks the
/// same): a response parses back with the same Call-ID, CSeq and Vias; an ACK and a BYE
/// for a 2xx parse back with the INVITE's Call-ID and their CSeq.
fn check_builders(m: &SipMessage<'_>, ok: &SipMessage<'_>) {
    if m.is_request() {
        let built = response(
            m,
            487,
            "Request Terminated",
            "tag1",
            &[("Retry-After", "3")],
        );
        let back = parse(built.as_bytes()).unwrap_or_else(|e| panic!("{e}: {built:?}"));
        assert_eq!(norm(back.call_id), norm(m.call_id));
        assert_eq!(back.cseq.number, m.cseq.number);
        assert_eq!(back.cseq.method, m.cseq.method);
        let norm_all = |v: Vec<&str>| v.into_iter().map(norm).collect::<Vec<_>>();
        assert_eq!(norm_all(vias(&back)), norm_all(vias(m)));
        for built in [ack_for_2xx(m, ok, "z9hG4bKx"), bye_for(m, ok, "z9hG4bKy")] {
            let back = parse(built.as_bytes()).unwrap_or_else(|e| panic!("{e}: {built:?}"));
            assert_eq!(norm(back.call_id), norm(m.call_id));
            assert!(back.cseq.number == m.cseq.number || back.cseq.number == m.cseq.number + 1);
        }
    }
}

pub(super) fn real_messages() -> Vec<String> {
    vec![
        jssip_invite(),
        ok_200(true),
        ok_200(false),
        sipjs_register(),
        COMPACT.into(),
        FOLDED.into(),
        CANCEL.into(),
        ACK.into(),
        BYE.into(),
        RINGING.into(),
    ]
}

#[test]
fn builders_on_every_real_message() {
    let ok_text = ok_200(false);
    let ok = parse(ok_text.as_bytes()).unwrap();
    for text in real_messages() {
        check_builders(&parse(text.as_bytes()).unwrap(), &ok);
    }
}

/// Bytes that make a mutation interesting: delimiters the parser looks at.
pub(super) const SPICE: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r\n ",
    b":",
    b";",
    b",",
    b"<",
    b">",
    b"\"",
    b"\\",
    b" ",
    b"\t",
    b"=",
    b";tag=",
    b";branch=",
    b"\xff",
    b"\xc3",
    b"\r\n\r\n",
    b"v: ",
    b"SIP/2.0",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(m) = parse(&bytes) {
            let ok_text = ok_200(true);
            check_builders(&m, &parse(ok_text.as_bytes()).unwrap());
        }
    }

    #[test]
    fn parse_never_panics_on_mutated_real_messages(
        which in 0usize..10,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..4, any::<u8>(), 0..SPICE.len()), 1..8),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let messages = real_messages();
        let mut bytes = messages[which].as_bytes().to_vec();
        for (at, kind, byte, spice) in edits {
            let at = at.index(bytes.len() + 1);
            match kind {
                0 if at < bytes.len() => bytes[at] = byte,
                1 if at < bytes.len() => { bytes.remove(at); }
                2 => bytes.splice(at..at, SPICE[spice].iter().copied()).for_each(drop),
                _ => bytes.insert(at, byte),
            }
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        if let Ok(m) = parse(&bytes) {
            let other = parse(messages[1].as_bytes()).unwrap();
            check_builders(&m, &other);
            // The parsed 2xx of a mutated message serves as the `ok` too.
            if m.code().is_some_and(|c| (200..300).contains(&c)) {
                let invite_text = jssip_invite();
                check_builders(&parse(invite_text.as_bytes()).unwrap(), &m);
            }
        }
    }
}
