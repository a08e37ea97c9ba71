//! Real-world SIP-over-WebSocket messages (JsSIP, SIP.js, an edge's answers), as tests use them.

/// `text` (written with `\n`) with CRLF line ends and, when `body` is given, a
/// Content-Length and the body after the empty line.
pub(super) fn crlf(text: &str, body: Option<&str>) -> String {
    let mut out = text.replace('\n', "\r\n");
    if let Some(body) = body {
        let body = body.replace('\n', "\r\n");
        out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    }
    out
}

/// The SDP offer of a Chromium tab, as JsSIP sends it.
pub(super) const SDP: &str = "v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0
a=msid-semantic: WMS 3f1b6c
m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8 126
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:8hhY
a=ice-pwd:asd88fgpdd777uzjYhagZg2b
a=ice-options:trickle
a=fingerprint:sha-256 49:66:12:17:0D:1C:91:AE:57:4C:C6:98:55:29:2D:6C:EA:4A:3D:2A:61:B6:18:12:6A:6A:41:33:27:5F:C3:AF
a=setup:actpass
a=mid:0
a=sendrecv
a=rtcp-mux
a=rtpmap:111 opus/48000/2
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:126 telephone-event/8000
a=ssrc:1001 cname:qZ7nO2d1/5OkJ3Ul
";

/// A JsSIP 3.10 INVITE over WSS with an SDP offer (no Record-Route).
pub(super) fn jssip_invite() -> String {
    crlf(
        r#"INVITE sip:bob@example.com SIP/2.0
Via: SIP/2.0/WSS 8d1pjr0hq8vg.invalid;branch=z9hG4bK1735891
Max-Forwards: 69
To: <sip:bob@example.com>
From: "Alice Smith" <sip:alice@example.com>;tag=q3k1mm2hn0
Call-ID: 6ii6pr7g0ol0fd4bq5k9
CSeq: 8027 INVITE
Contact: <sip:3m8pf1vf@8d1pjr0hq8vg.invalid;transport=ws;ob>
Content-Type: application/sdp
Session-Expires: 90
Allow: INVITE,ACK,CANCEL,BYE,UPDATE,MESSAGE,OPTIONS,REFER,INFO,NOTIFY
Supported: timer,ice,replaces,outbound
User-Agent: JsSIP 3.10.1
"#,
        Some(SDP),
    )
}

/// The edge's 200 OK to [`jssip_invite`]: two Record-Route values, on one line
/// (`one_line`) or on two, and a Contact.
pub(super) fn ok_200(one_line: bool) -> String {
    let rr = if one_line {
        "Record-Route: <sip:edge2.example.net;lr;ftag=q3k1mm2hn0>, <sip:198.51.100.10;transport=ws;r2=on;lr>\n"
    } else {
        "Record-Route: <sip:edge2.example.net;lr;ftag=q3k1mm2hn0>\nRecord-Route: <sip:198.51.100.10;transport=ws;r2=on;lr>\n"
    };
    crlf(
        &format!(
            r#"SIP/2.0 200 OK
Via: SIP/2.0/WSS 8d1pjr0hq8vg.invalid;rport=52341;received=203.0.113.7;branch=z9hG4bK1735891
{rr}From: "Alice Smith" <sip:alice@example.com>;tag=q3k1mm2hn0
To: <sip:bob@example.com>;tag=as5f3c1e2a
Call-ID: 6ii6pr7g0ol0fd4bq5k9
CSeq: 8027 INVITE
Contact: "Bob" <sip:bob@192.0.2.44:5060;transport=udp>;expires=3600
Server: edge-sbc 4.2
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY
Supported: replaces, timer
Session-Expires: 90;refresher=uac
Content-Type: application/sdp
"#
        ),
        Some("v=0\no=edge 1 1 IN IP4 192.0.2.44\ns=-\nc=IN IP4 192.0.2.44\nt=0 0\nm=audio 30000 RTP/SAVPF 111\n"),
    )
}

/// A SIP.js 0.21 REGISTER with Digest credentials and an instance-id Contact.
pub(super) fn sipjs_register() -> String {
    crlf(
        r#"REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/WSS 2f5mhk0u7l3e.invalid;branch=z9hG4bK5427836
To: <sip:alice@example.com>
From: <sip:alice@example.com>;tag=h4rtq8d2ib
CSeq: 2 REGISTER
Call-ID: 9tm0eprg8ot3a8iu3mvbfd
Max-Forwards: 70
Authorization: Digest algorithm=MD5, username="alice", realm="example.com", nonce="YzQ4ZDk1", uri="sip:example.com", response="9c2d0a3b0f8e4e5f", qop=auth, cnonce="p1v6", nc=00000001
Contact: <sip:k3u5o0v4@2f5mhk0u7l3e.invalid;transport=ws>;reg-id=1;+sip.instance="<urn:uuid:bb5e2e6c-d3a2-4c1f-9b0a-1f3c7e0d9a11>";expires=600
Expires: 600
Allow: ACK,CANCEL,INVITE,MESSAGE,BYE,OPTIONS,INFO,NOTIFY,REFER
Supported: path,gruu,outbound
User-Agent: SIP.js/0.21.2
Content-Length: 0

"#,
        None,
    )
}

/// An INVITE in compact form (RFC 3261 §7.3.3), tag parameter in upper case.
pub(super) const COMPACT: &str = "INVITE sip:carol@chicago.example.com SIP/2.0\r
v: SIP/2.0/WSS pc33.example.invalid;BRANCH=z9hG4bKnashds8\r
Max-Forwards: 70\r
t: Carol <sip:carol@chicago.example.com>\r
f: \"Bob\" <sip:bob@biloxi.example.com>;TAG=a73kszlfl\r
i: f81d4fae-7dec-11d0-a765-00a0c91e6bf6@biloxi.example.com\r
CSeq: 1 INVITE\r
m: <sip:bob@192.0.2.4;transport=ws>\r
k: timer\r
l: 0\r
\r
";

/// An OPTIONS with folded headers, an addr-spec To, a quoted comma and a tag inside the
/// `<uri>` that is not the From's tag; bare LF line ends.
pub(super) const FOLDED: &str = "OPTIONS sip:user@example.com SIP/2.0
Via: SIP/2.0/WSS df7jal23ls0d.invalid
  ;branch=z9hG4bKfold1
To: sip:user@example.com
From: \"Caller, Inc.\" <sip:caller@example.net;tag=inside>
 ;tag=98asjd8
Call-ID: wsinv.ndaksdj@192.0.2.1
CSeq:
\t9 OPTIONS
Max-Forwards: 70
Subject: I know you're there,
   pick up the phone
Content-Length: 0

";

/// JsSIP's CANCEL of [`jssip_invite`].
pub(super) const CANCEL: &str = "CANCEL sip:bob@example.com SIP/2.0\r
Via: SIP/2.0/WSS 8d1pjr0hq8vg.invalid;branch=z9hG4bK1735891\r
Max-Forwards: 69\r
To: <sip:bob@example.com>\r
From: \"Alice Smith\" <sip:alice@example.com>;tag=q3k1mm2hn0\r
Call-ID: 6ii6pr7g0ol0fd4bq5k9\r
CSeq: 8027 CANCEL\r
Supported: outbound\r
User-Agent: JsSIP 3.10.1\r
Content-Length: 0\r
\r
";

/// JsSIP's ACK for the 200 of [`ok_200`].
pub(super) const ACK: &str = "ACK sip:bob@192.0.2.44:5060;transport=udp SIP/2.0\r
Route: <sip:198.51.100.10;transport=ws;r2=on;lr>\r
Route: <sip:edge2.example.net;lr;ftag=q3k1mm2hn0>\r
Via: SIP/2.0/WSS 8d1pjr0hq8vg.invalid;branch=z9hG4bK5013329\r
Max-Forwards: 69\r
To: <sip:bob@example.com>;tag=as5f3c1e2a\r
From: \"Alice Smith\" <sip:alice@example.com>;tag=q3k1mm2hn0\r
Call-ID: 6ii6pr7g0ol0fd4bq5k9\r
CSeq: 8027 ACK\r
Supported: outbound\r
User-Agent: JsSIP 3.10.1\r
Content-Length: 0\r
\r
";

/// A BYE from the edge side for the same call (From and To swapped, the edge's CSeq).
pub(super) const BYE: &str = "BYE sip:3m8pf1vf@8d1pjr0hq8vg.invalid;transport=ws;ob SIP/2.0\r
Via: SIP/2.0/WSS 198.51.100.10;branch=z9hG4bK2c6a.7e1f3d2a0b\r
Via: SIP/2.0/UDP 192.0.2.44:5060;rport=5060;branch=z9hG4bK-524287-1---9a8b\r
Max-Forwards: 69\r
Route: <sip:edge2.example.net;lr;ftag=q3k1mm2hn0>\r
From: <sip:bob@example.com>;tag=as5f3c1e2a\r
To: \"Alice Smith\" <sip:alice@example.com>;tag=q3k1mm2hn0\r
Call-ID: 6ii6pr7g0ol0fd4bq5k9\r
CSeq: 102 BYE\r
Content-Length: 0\r
\r
";

/// A 180 Ringing through two proxies: three Vias, two on one line.
pub(super) const RINGING: &str = "SIP/2.0 180 Ringing\r
Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK.proxy2, SIP/2.0/UDP 10.0.0.4;branch=z9hG4bK.proxy1\r
Via: SIP/2.0/WSS 8d1pjr0hq8vg.invalid;received=203.0.113.7;branch=z9hG4bK1735891;rport=52341\r
From: \"Alice Smith\" <sip:alice@example.com>;tag=q3k1mm2hn0\r
To: <sip:bob@example.com>;tag=as5f3c1e2a\r
Call-ID: 6ii6pr7g0ol0fd4bq5k9\r
CSeq: 8027 INVITE\r
Contact: <sip:bob@192.0.2.44:5060>\r
Content-Length: 0\r
\r
";
