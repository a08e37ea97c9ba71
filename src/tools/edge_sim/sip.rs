//! Entry: the SIP text the edge simulator writes: responses, its SDP answer, its own BYE.
//!
//! Responses copy their request's lines ([`Echo`]). The `200 OK` to an INVITE carries a
//! `Contact` naming the simulator and a minimal SDP answer ([`sdp_answer`]): JsSIP
//! refuses a 2xx without one. The edge's own BYE ([`Dialog::bye`]) is a well-formed
//! in-dialog request: its own Via and branch, From and To swapped with their tags.

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::tools::sip_lines::{param, uri, Echo, SipMessage};

/// Methods the simulator answers (the `Allow` of its `200 OK` and `405`).
pub(super) const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, REGISTER, OPTIONS";

/// A REGISTER's binding lasts this long when it asks for nothing else, seconds.
const DEFAULT_EXPIRES: u64 = 600;
/// The longest binding the registrar grants, seconds.
const MAX_EXPIRES: u64 = 3600;

/// The simulator's `Contact`: `<sip:edgesim@ADDR;transport=ws>`.
pub(super) fn contact(addr: SocketAddr) -> String {
    format!("Contact: <sip:edgesim@{addr};transport=ws>")
}

/// A minimal WebRTC-style SDP answer: one audio stream, DTLS-SRTP, ICE, rtcp-mux,
/// PCMU and telephone-event. Lines end in CRLF (RFC 4566).
pub(super) fn sdp_answer(addr: SocketAddr, session: u64) -> String {
    let ip = addr.ip();
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let port = 40_000 + session % 20_000;
    [
        "v=0".to_owned(),
        format!("o=edgesim {session} 1 IN {family} {ip}"),
        "s=-".to_owned(),
        format!("c=IN {family} {ip}"),
        "t=0 0".to_owned(),
        "a=group:BUNDLE 0".to_owned(),
        "a=msid-semantic: WMS".to_owned(),
        format!("m=audio {port} UDP/TLS/RTP/SAVPF 0 101"),
        format!("a=candidate:1 1 udp 2130706431 {ip} {port} typ host"),
        "a=end-of-candidates".to_owned(),
        format!("a=ice-ufrag:es{:06x}", session & 0xff_ffff),
        "a=ice-pwd:edgesimedgesimedgesimedge".to_owned(),
        "a=fingerprint:sha-256 5C:1E:6D:3B:0A:94:F2:47:88:A1:3D:C0:7E:55:19:B6:E4:2F:90:0D:63:AB:71:CE:08:F5:32:9A:4D:B7:16:E0".to_owned(),
        "a=setup:active".to_owned(),
        "a=mid:0".to_owned(),
        "a=sendrecv".to_owned(),
        "a=rtcp-mux".to_owned(),
        "a=rtpmap:0 PCMU/8000".to_owned(),
        "a=rtpmap:101 telephone-event/8000".to_owned(),
        "a=fmtp:101 0-15".to_owned(),
        String::new(),
    ]
    .join("\r\n")
}

/// What the edge needs to send a request inside a call it answered (the UAS side of
/// the dialog, RFC 3261 §12.1.1).
#[derive(Debug, Clone)]
pub(super) struct Dialog {
    /// The client's Contact URI (else its From URI): the Request-URI.
    target: String,
    /// The INVITE's To with the edge's tag: the From of the edge's requests.
    local: String,
    /// The INVITE's From (with the client's tag): the To of the edge's requests.
    remote: String,
    call_id: String,
    /// The INVITE's Record-Route values, in order: the edge's Route set.
    route: Vec<String>,
}

impl Dialog {
    /// The dialog the edge answers `invite` in, with its tag `to_tag`.
    pub(super) fn of(invite: &SipMessage<'_>, to_tag: &str) -> Self {
        let from = invite.header("from").unwrap_or("");
        let to = invite.header("to").unwrap_or("");
        let target = invite.header("contact").map_or_else(|| uri(from), uri);
        Self {
            target: target.to_owned(),
            local: format!("{to};tag={to_tag}"),
            remote: from.to_owned(),
            call_id: invite.call_id().unwrap_or("").to_owned(),
            route: invite.headers("record-route").map(str::to_owned).collect(),
        }
    }

    /// The edge's BYE (CSeq `cseq`, a fresh branch) sent from `addr`.
    pub(super) fn bye(&self, addr: SocketAddr, cseq: u32) -> String {
        let mut r = format!(
            "BYE {} SIP/2.0\r\nVia: SIP/2.0/WS {addr};branch=z9hG4bK{:016x}\r\nMax-Forwards: 70\r\n",
            self.target,
            rand::random::<u64>()
        );
        for route in &self.route {
            let _ = write!(r, "Route: {route}\r\n");
        }
        let _ = write!(
            r,
            "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} BYE\r\nContent-Length: 0\r\n\r\n",
            self.local, self.remote, self.call_id
        );
        r
    }
}

/// The registrar's answer to a REGISTER: `200 OK` with the bindings it keeps (each
/// Contact with its `expires`) and `Expires`; none for a removal (`Expires: 0`).
pub(super) fn register_ok(req: &SipMessage<'_>) -> String {
    let granted = req
        .header("expires")
        .and_then(|e| e.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_EXPIRES)
        .min(MAX_EXPIRES);
    let mut extra = Vec::new();
    for contact in req.headers("contact").filter(|c| c.trim() != "*") {
        let expires = param(contact, "expires")
            .and_then(|e| e.parse::<u64>().ok())
            .map_or(granted, |e| e.min(MAX_EXPIRES));
        if expires > 0 {
            extra.push(format!("Contact: <{}>;expires={expires}", uri(contact)));
        }
    }
    extra.push(format!("Expires: {granted}"));
    Echo::of(req, Some("edgesim"), false).response("200 OK", &extra, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: &str = "127.0.0.1:7001";

    #[test]
    fn the_sdp_answer_is_crlf_with_an_audio_line() {
        let sdp = sdp_answer(ADDR.parse().unwrap(), 7);
        assert!(sdp.starts_with("v=0\r\no=edgesim 7 1 IN IP4 127.0.0.1\r\n"));
        assert!(sdp.contains("\r\nm=audio 40007 UDP/TLS/RTP/SAVPF 0 101\r\n"));
        assert!(sdp.ends_with("a=fmtp:101 0-15\r\n"));
        assert!(sdp.split("\r\n").all(|l| !l.contains('\n')));
    }

    #[test]
    fn the_edge_bye_swaps_from_and_to_and_follows_the_route() {
        let invite = "INVITE sip:bob@edge SIP/2.0\r\nVia: SIP/2.0/WS a;branch=z9hG4bK1\r\n\
                      Record-Route: <sip:p1;lr>\r\nFrom: <sip:al@x>;tag=abc\r\nTo: <sip:bob@edge>\r\n\
                      Call-ID: c1\r\nCSeq: 1 INVITE\r\nContact: <sip:al@h;transport=ws>\r\n\r\n";
        let m = SipMessage::parse(invite).unwrap();
        let bye = Dialog::of(&m, "t9").bye(ADDR.parse().unwrap(), 1);
        let b = SipMessage::parse(&bye).unwrap();
        assert_eq!(b.request(), Some(("BYE", "sip:al@h;transport=ws")));
        assert_eq!(b.header("from"), Some("<sip:bob@edge>;tag=t9"));
        assert_eq!(b.header("to"), Some("<sip:al@x>;tag=abc"));
        assert_eq!(b.header("route"), Some("<sip:p1;lr>"));
        assert_eq!(b.cseq(), Some((1, "BYE")));
        assert_eq!(b.header("max-forwards"), Some("70"));
        assert!(b.header("via").unwrap().contains(";branch=z9hG4bK"));
    }

    #[test]
    fn the_registrar_answers_with_its_bindings_and_expires() {
        let register = |extra: &str| {
            format!(
                "REGISTER sip:edge SIP/2.0\r\nVia: SIP/2.0/WS p;branch=z9hG4bKr\r\nFrom: <sip:a@edge>;tag=1\r\n\
                 To: <sip:a@edge>\r\nCall-ID: r1\r\nCSeq: 1 REGISTER\r\n{extra}\r\n"
            )
        };
        let text = register("Contact: <sip:a@p;transport=ws>\r\nExpires: 300\r\n");
        let ok = register_ok(&SipMessage::parse(&text).unwrap());
        let m = SipMessage::parse(&ok).unwrap();
        assert_eq!(m.status(), Some(200));
        assert_eq!(
            m.header("contact"),
            Some("<sip:a@p;transport=ws>;expires=300")
        );
        assert_eq!(m.header("expires"), Some("300"));
        assert!(m.header("to").unwrap().contains(";tag="));
        // A removal: no binding left.
        let text = register("Contact: *\r\nExpires: 0\r\n");
        let ok = register_ok(&SipMessage::parse(&text).unwrap());
        let m = SipMessage::parse(&ok).unwrap();
        assert_eq!(
            (m.header("contact"), m.header("expires")),
            (None, Some("0"))
        );
    }
}
