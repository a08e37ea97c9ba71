//! Building the few SIP messages sluice sends itself: responses, and an ACK and a BYE.

use std::fmt::Write as _;

use rand::distr::{Alphanumeric, SampleString};

use super::parse::{is_lws, params};
use super::SipMessage;

/// The Max-Forwards of the requests sluice makes (RFC 3261 §8.1.1.6).
const MAX_FORWARDS: &str = "70";

/// A response to `request` (RFC 3261 §8.2.6): its status line, every Via value of the
/// request (in order, one line each), From, To (with `;tag=<to_tag>` added when the
/// request's To has none, `code` is above 100 and `to_tag` is not empty), Call-ID, CSeq,
/// then `extra` headers in order, then `Content-Length: 0`. CRLF line ends, the empty
/// line at the end.
///
/// Values copied from the request are written unfolded (a line fold becomes one SP, RFC
/// 3261 §7.3.1), and line ends in `reason` and `extra` likewise, so each header is one
/// line whatever the input. `code` should be 100 to 699 (not checked).
pub fn response(
    request: &SipMessage<'_>,
    code: u16,
    reason: &str,
    to_tag: &str,
    extra: &[(&str, &str)],
) -> String {
    let mut out = String::with_capacity(512);
    let _ = write!(out, "SIP/2.0 {code} ");
    push_unfolded(&mut out, reason);
    out.push_str("\r\n");
    for via in request.header_values("Via") {
        header(&mut out, "Via", via);
    }
    header(&mut out, "From", request.header("From").unwrap_or_default());
    let to = request.header("To").unwrap_or_default();
    if request.to_tag.is_none() && code > 100 && !to_tag.is_empty() {
        out.push_str("To: ");
        push_unfolded(&mut out, to);
        out.push_str(";tag=");
        push_unfolded(&mut out, to_tag);
        out.push_str("\r\n");
    } else {
        header(&mut out, "To", to);
    }
    header(&mut out, "Call-ID", request.call_id);
    cseq(&mut out, request.cseq.number, request.cseq.method);
    for (name, value) in extra {
        header(&mut out, name, value);
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

/// The ACK for a 2xx `ok` to `invite` (RFC 3261 §13.2.2.4), sent in the dialog the 2xx
/// made: Request-URI the Contact URI of `ok` (else the INVITE's Request-URI), Route the
/// Record-Route values of `ok` reversed, one line each (loose routing), Via the
/// INVITE's top Via with its branch replaced by `branch` (added at its end if it had
/// none; a Via with an unclosed quote or `<` then keeps none), Max-Forwards 70, From the
/// INVITE's, To the 2xx's (with the remote tag), Call-ID, `CSeq: <invite number> ACK`,
/// the INVITE's Authorization and Proxy-Authorization (the ACK carries the INVITE's
/// credentials), `Content-Length: 0`.
///
/// It carries no body: right when the INVITE carried the SDP offer, as JsSIP's and
/// SIP.js's do; a 2xx with an offer (to an INVITE without SDP) wants an answer in the
/// ACK, which sluice cannot make.
pub fn ack_for_2xx(invite: &SipMessage<'_>, ok: &SipMessage<'_>, branch: &str) -> String {
    in_dialog(invite, ok, branch, "ACK", invite.cseq.number)
}

/// A BYE for the dialog `ok` established for `invite` (RFC 3261 §15.1.1), built like
/// [`ack_for_2xx`] but `CSeq: <invite number + 1> BYE` and without the INVITE's
/// credentials (a BYE is challenged on its own, if at all).
pub fn bye_for(invite: &SipMessage<'_>, ok: &SipMessage<'_>, branch: &str) -> String {
    in_dialog(
        invite,
        ok,
        branch,
        "BYE",
        invite.cseq.number.saturating_add(1),
    )
}

/// A fresh RFC 3261 branch: the magic cookie `z9hG4bK` and 16 random alphanumerics
/// (95 bits), unique per transaction.
pub fn new_branch() -> String {
    let mut branch = String::from("z9hG4bK");
    Alphanumeric.append_string(&mut rand::rng(), &mut branch, 16);
    branch
}

/// A fresh tag (12 random alphanumerics, 71 bits) for the To header of a response sluice
/// makes itself (RFC 3261 §19.3 wants at least 32 random bits).
pub fn new_tag() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 12)
}

/// A request in the dialog that `ok` established for `invite`.
fn in_dialog(
    invite: &SipMessage<'_>,
    ok: &SipMessage<'_>,
    branch: &str,
    method: &str,
    number: u32,
) -> String {
    let uri = ok
        .contact_uri()
        .filter(|u| !u.contains(|c: char| is_lws(c) || c.is_control()))
        .or(invite.uri())
        .unwrap_or_default();
    let mut out = String::with_capacity(512);
    let _ = write!(out, "{method} {uri} SIP/2.0\r\n");
    if let Some(top) = invite.header_values("Via").next() {
        header(&mut out, "Via", &with_branch(top, branch));
    }
    let routes: Vec<&str> = ok.header_values("Record-Route").collect();
    for route in routes.iter().rev() {
        header(&mut out, "Route", route);
    }
    header(&mut out, "Max-Forwards", MAX_FORWARDS);
    header(&mut out, "From", invite.header("From").unwrap_or_default());
    header(&mut out, "To", ok.header("To").unwrap_or_default());
    header(&mut out, "Call-ID", invite.call_id);
    cseq(&mut out, number, method);
    if method == "ACK" {
        for name in ["Authorization", "Proxy-Authorization"] {
            for credentials in invite.header_lines(name) {
                header(&mut out, name, credentials);
            }
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

/// A Via value with its `branch` parameter's value replaced, or `;branch=` added.
fn with_branch(via: &str, branch: &str) -> String {
    let found = params(via)
        .find(|(name, range)| name.eq_ignore_ascii_case("branch") && range.is_some())
        .and_then(|(_, range)| range);
    match found.and_then(|(from, to)| Some((via.get(..from)?, via.get(to..)?))) {
        Some((before, after)) => format!("{before}{branch}{after}"),
        None => format!("{via};branch={branch}"),
    }
}

/// `name: value` and CRLF, the value unfolded.
fn header(out: &mut String, name: &str, value: &str) {
    push_unfolded(out, name);
    out.push_str(": ");
    push_unfolded(out, value);
    out.push_str("\r\n");
}

/// `CSeq: number method` and CRLF.
fn cseq(out: &mut String, number: u32, method: &str) {
    let _ = write!(out, "CSeq: {number} ");
    push_unfolded(out, method);
    out.push_str("\r\n");
}

/// `text` with every run of line ends and the whitespace after them as one SP (a line
/// fold unfolded, RFC 3261 §7.3.1), so that what is written stays on its line.
fn push_unfolded(out: &mut String, text: &str) {
    let mut pieces = text.split(['\r', '\n']).filter(|p| !p.is_empty());
    if let Some(first) = pieces.next() {
        out.push_str(first);
    }
    for piece in pieces {
        out.push(' ');
        out.push_str(piece.trim_start_matches([' ', '\t']));
    }
}
