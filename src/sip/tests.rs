//! Tests of `sip`: real messages parsed, malformed ones refused, built ones parsed back.

mod build;
mod reference;
mod same_as_reference;
mod samples;

use super::*;
use samples::*;

pub(super) fn vias<'a>(m: &SipMessage<'a>) -> Vec<&'a str> {
    m.header_values("Via").collect()
}

/// Whitespace runs as one SP: how a folded value compares with its unfolded copy.
pub(super) fn norm(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn a_jssip_invite_with_sdp() {
    let text = jssip_invite();
    let m = parse(text.as_bytes()).unwrap();
    assert_eq!(
        m.start,
        StartLine::Request {
            method: "INVITE",
            uri: "sip:bob@example.com"
        }
    );
    assert_eq!(
        (m.method(), m.code(), m.is_request()),
        (Some("INVITE"), None, true)
    );
    assert_eq!(m.call_id, "6ii6pr7g0ol0fd4bq5k9");
    assert_eq!(
        m.cseq,
        CSeq {
            number: 8027,
            method: "INVITE"
        }
    );
    assert_eq!(m.from_tag, Some("q3k1mm2hn0"));
    assert_eq!(m.to_tag, None, "an initial INVITE");
    assert_eq!(m.branch, Some("z9hG4bK1735891"));
    assert_eq!(m.content_length, Some(SDP.replace('\n', "\r\n").len()));
    assert_eq!(m.body(), SDP.replace('\n', "\r\n").as_bytes());
    assert_eq!(m.header_values("Record-Route").count(), 0);
    assert_eq!(
        m.contact_uri(),
        Some("sip:3m8pf1vf@8d1pjr0hq8vg.invalid;transport=ws;ob")
    );
    assert_eq!(m.header("user-agent"), Some("JsSIP 3.10.1"));
    assert_eq!(m.header("Supported"), Some("timer,ice,replaces,outbound"));
    assert_eq!(m.header_values("k").count(), 4, "compact name asked for");
    assert_eq!(m.header("X-Absent"), None);
}

#[test]
fn a_sipjs_register() {
    let text = sipjs_register();
    let m = parse(text.as_bytes()).unwrap();
    assert_eq!(m.method(), Some("REGISTER"));
    assert_eq!(m.uri(), Some("sip:example.com"));
    assert_eq!(
        m.cseq,
        CSeq {
            number: 2,
            method: "REGISTER"
        }
    );
    assert_eq!(m.call_id, "9tm0eprg8ot3a8iu3mvbfd");
    assert_eq!((m.from_tag, m.to_tag), (Some("h4rtq8d2ib"), None));
    assert_eq!(m.content_length, Some(0));
    assert!(m.body().is_empty());
    // The `<urn:…>` inside the quoted +sip.instance is neither the URI nor a separator.
    assert_eq!(
        m.contact_uri(),
        Some("sip:k3u5o0v4@2f5mhk0u7l3e.invalid;transport=ws")
    );
    assert_eq!(m.header_values("Contact").count(), 1);
    assert!(m.header("authorization").unwrap().ends_with("nc=00000001"));
}

#[test]
fn a_200_with_record_routes_on_one_line_or_two() {
    for one_line in [true, false] {
        let text = ok_200(one_line);
        let m = parse(text.as_bytes()).unwrap();
        assert_eq!(
            m.start,
            StartLine::Response {
                code: 200,
                reason: "OK"
            }
        );
        assert_eq!(
            (m.code(), m.method(), m.is_request()),
            (Some(200), None, false)
        );
        assert_eq!(m.to_tag, Some("as5f3c1e2a"));
        assert_eq!(
            m.cseq,
            CSeq {
                number: 8027,
                method: "INVITE"
            }
        );
        assert_eq!(
            m.header_values("record-route").collect::<Vec<_>>(),
            [
                "<sip:edge2.example.net;lr;ftag=q3k1mm2hn0>",
                "<sip:198.51.100.10;transport=ws;r2=on;lr>"
            ]
        );
        assert_eq!(
            m.contact_uri(),
            Some("sip:bob@192.0.2.44:5060;transport=udp")
        );
        assert_eq!(m.branch, Some("z9hG4bK1735891"));
        assert!(m.body().starts_with(b"v=0\r\n"));
    }
}

#[test]
fn compact_forms() {
    let m = parse(COMPACT.as_bytes()).unwrap();
    assert_eq!(
        m.call_id,
        "f81d4fae-7dec-11d0-a765-00a0c91e6bf6@biloxi.example.com"
    );
    assert_eq!(m.from_tag, Some("a73kszlfl"), "TAG= is a tag");
    assert_eq!(m.branch, Some("z9hG4bKnashds8"), "BRANCH= is a branch");
    assert_eq!(m.to_tag, None);
    assert_eq!(m.content_length, Some(0));
    assert_eq!(m.contact_uri(), Some("sip:bob@192.0.2.4;transport=ws"));
    assert_eq!(m.header("Call-ID"), m.header("i"));
    assert_eq!(m.header("supported"), Some("timer"));
    assert_eq!(
        vias(&m),
        ["SIP/2.0/WSS pc33.example.invalid;BRANCH=z9hG4bKnashds8"]
    );
}

#[test]
fn folded_headers_and_bare_lf() {
    let m = parse(FOLDED.as_bytes()).unwrap();
    assert_eq!(m.method(), Some("OPTIONS"));
    assert_eq!(m.branch, Some("z9hG4bKfold1"));
    assert_eq!(m.from_tag, Some("98asjd8"), "not the tag inside <uri>");
    assert_eq!(m.to_tag, None);
    assert_eq!(
        m.cseq,
        CSeq {
            number: 9,
            method: "OPTIONS"
        }
    );
    assert_eq!(
        m.header("subject").map(norm).as_deref(),
        Some("I know you're there, pick up the phone")
    );
    assert_eq!(m.header_values("From").count(), 1, "the comma is quoted");
    assert_eq!(m.header("max-forwards"), Some("70"));
}

#[test]
fn cancel_ack_bye_and_many_vias() {
    let cancel = parse(CANCEL.as_bytes()).unwrap();
    assert_eq!(cancel.method(), Some("CANCEL"));
    assert_eq!(
        cancel.cseq,
        CSeq {
            number: 8027,
            method: "CANCEL"
        }
    );
    assert_eq!(cancel.branch, Some("z9hG4bK1735891"), "the INVITE's branch");

    let ack = parse(ACK.as_bytes()).unwrap();
    assert_eq!(ack.method(), Some("ACK"));
    assert_eq!(ack.to_tag, Some("as5f3c1e2a"));
    assert_eq!(ack.header_values("Route").count(), 2);

    let bye = parse(BYE.as_bytes()).unwrap();
    assert_eq!(
        bye.cseq,
        CSeq {
            number: 102,
            method: "BYE"
        }
    );
    assert_eq!(
        (bye.from_tag, bye.to_tag),
        (Some("as5f3c1e2a"), Some("q3k1mm2hn0"))
    );
    assert_eq!(bye.branch, Some("z9hG4bK2c6a.7e1f3d2a0b"), "the top Via's");
    assert_eq!(vias(&bye).len(), 2);

    let ringing = parse(RINGING.as_bytes()).unwrap();
    assert_eq!(ringing.code(), Some(180));
    assert_eq!(ringing.branch, Some("z9hG4bK.proxy2"));
    let v = vias(&ringing);
    assert_eq!(v.len(), 3);
    assert_eq!(v[1], "SIP/2.0/UDP 10.0.0.4;branch=z9hG4bK.proxy1");
    assert!(v[2].ends_with("rport=52341"));
}

#[test]
fn leading_line_ends_no_empty_line_and_a_binary_body() {
    let text = format!("\r\n\r\n{}", CANCEL.trim_end());
    let m = parse(text.as_bytes()).unwrap();
    assert_eq!(m.content_length, Some(0));
    assert!(m.body().is_empty());
    let mut bytes = CANCEL.as_bytes().to_vec();
    bytes.extend_from_slice(&[0xff, 0x00, 0xfe]);
    assert_eq!(parse(&bytes).unwrap().body(), [0xff, 0x00, 0xfe]);
    assert!(is_keepalive(b"\r\n\r\n") && is_keepalive(b"\r\n"));
    assert!(!is_keepalive(b"") && !is_keepalive(CANCEL.as_bytes()));
    assert_eq!(parse(b"\r\n\r\n"), Err(ParseError::Empty));
    assert_eq!(parse(b""), Err(ParseError::Empty));
}

#[test]
fn malformed_messages_are_errors() {
    let drop_line = |text: &str, prefix: &str| -> String {
        text.split_inclusive('\n')
            .filter(|l| !l.starts_with(prefix))
            .collect()
    };
    let swap = |text: &str, from: &str, to: &str| text.replacen(from, to, 1);
    let cases: Vec<(String, ParseError)> = vec![
        (drop_line(CANCEL, "Call-ID"), ParseError::Missing("Call-ID")),
        (
            swap(CANCEL, "Call-ID: 6ii6pr7g0ol0fd4bq5k9", "Call-ID:  "),
            ParseError::Missing("Call-ID"),
        ),
        (drop_line(CANCEL, "CSeq"), ParseError::Missing("CSeq")),
        (drop_line(CANCEL, "From"), ParseError::Missing("From")),
        (drop_line(CANCEL, "To"), ParseError::Missing("To")),
        (drop_line(CANCEL, "Via"), ParseError::Missing("Via")),
        (
            swap(CANCEL, "8027 CANCEL", "CANCEL"),
            ParseError::CSeq("not `number method`"),
        ),
        (
            swap(CANCEL, "8027 CANCEL", "8027 CANCEL x"),
            ParseError::CSeq("not `number method`"),
        ),
        (
            swap(CANCEL, "8027 CANCEL", "x8027 CANCEL"),
            ParseError::CSeq("the number is not 0 to 2^31"),
        ),
        (
            swap(CANCEL, "8027 CANCEL", "2147483649 CANCEL"),
            ParseError::CSeq("the number is not 0 to 2^31"),
        ),
        (
            swap(CANCEL, "8027 CANCEL", "99999999999999999999999 CANCEL"),
            ParseError::CSeq("the number is not 0 to 2^31"),
        ),
        (
            swap(CANCEL, "8027 CANCEL", "8027 CAN;CEL"),
            ParseError::CSeq("the method is not a token"),
        ),
        (
            swap(CANCEL, "Content-Length: 0", "Content-Length: zero"),
            ParseError::ContentLength,
        ),
        (
            swap(CANCEL, "SIP/2.0\r", "SIP/3.0\r"),
            ParseError::StartLine("the version is not SIP/2.0"),
        ),
        (
            swap(CANCEL, "CANCEL sip", "CANCEL  sip"),
            ParseError::StartLine("not METHOD SP Request-URI SP SIP/2.0"),
        ),
        (
            swap(CANCEL, "CANCEL sip", "CAN<CEL sip"),
            ParseError::StartLine("the method is not a token"),
        ),
        (
            swap(CANCEL, "CANCEL sip", "CAN\x01CEL sip"),
            ParseError::StartLine("a control character"),
        ),
        (
            swap(RINGING, "180 Ringing", "1800 Ringing"),
            ParseError::StartLine("no SP after the status code"),
        ),
        (
            swap(RINGING, "180 Ringing", "099 Ringing"),
            ParseError::StartLine("the status code is not 100 to 699"),
        ),
        (
            swap(RINGING, "180 Ringing", "18a Ringing"),
            ParseError::StartLine("the status code is not 100 to 699"),
        ),
        (
            swap(RINGING, "SIP/2.0 180", "SIP/2.1 180"),
            ParseError::StartLine("the version is not SIP/2.0"),
        ),
        (
            swap(CANCEL, "Max-Forwards: 69", "Max-Forwards 69"),
            ParseError::Header(3),
        ),
        (
            swap(CANCEL, "Max-Forwards: 69", ": 69"),
            ParseError::Header(3),
        ),
        (
            swap(CANCEL, "Max-Forwards:", "Max Forwards:"),
            ParseError::Header(3),
        ),
        (
            swap(CANCEL, "SIP/2.0\r\n", "SIP/2.0\r\n folded onto nothing\r\n"),
            ParseError::Header(2),
        ),
        (
            "hello world".into(),
            ParseError::StartLine("not METHOD SP Request-URI SP SIP/2.0"),
        ),
    ];
    for (text, error) in cases {
        assert_eq!(parse(text.as_bytes()), Err(error), "{text:?}");
    }
    let mut latin1 = CANCEL.as_bytes().to_vec();
    let at = CANCEL.find("Alice").unwrap();
    latin1[at] = 0xc4;
    assert_eq!(parse(&latin1), Err(ParseError::NotUtf8(at)));
    // The largest CSeq number RFC 3261 allows, and 2^31 itself, are accepted.
    for n in ["2147483647", "2147483648", "0002147483648"] {
        let text = swap(CANCEL, "8027", n);
        assert_eq!(
            parse(text.as_bytes()).unwrap().cseq.number,
            n.parse::<u32>().unwrap()
        );
    }
}
