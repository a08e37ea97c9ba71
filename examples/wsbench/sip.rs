//! `--sip`: SIP over WebSocket (RFC 7118) for sluice's SIP tenants (issue 17).
//!
//! With the global `--sip`, clients offer subprotocol `sip` and their frames are real SIP
//! messages: each connection is one dialog with a Call-ID of its own. `rtt` and `load`
//! place a call first (INVITE → `200` → ACK) and then send in-dialog `INFO` requests
//! (CSeq incrementing, a text body padding each to about `--size` bytes), which the echo
//! server sends back like any frame; they hang up (BYE → `200`) before closing. `idle`
//! sends one out-of-dialog `OPTIONS` per session; `handshakes` only offers the
//! subprotocol. `calls` always speaks SIP.
//!
//! The echo server always accepts subprotocol `sip` when offered (sluice's `accept`
//! mode closes a client whose edge does not take it). With `--sip` it also answers like
//! a minimal call server: an INVITE without a To tag gets `200 OK` (a To tag, Contact,
//! `Content-Length: 0`), a BYE `200 OK`, an ACK nothing; every other message is echoed.
//!
//! The harness parses SIP with the few string operations below, not with sluice's
//! parser (the code under test).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::{Ws, STEP_TIMEOUT};

/// The subprotocol of SIP over WebSocket.
pub(crate) const PROTOCOL: &str = "sip";

static ON: AtomicBool = AtomicBool::new(false);
/// Numbers the dialogs of this process (Call-IDs, tags).
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Turns `--sip` on for this process.
pub(crate) fn set(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Whether `--sip` is on.
pub(crate) fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// A small SDP offer, so that the INVITE looks like a softphone's.
const SDP: &str = "v=0\r\no=- 4858 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n";

/// One connection's dialog: its Call-ID, tags and CSeq.
pub(crate) struct Dialog {
    n: u64,
    call_id: String,
    from_tag: String,
    /// The edge's tag, from its `200` to the INVITE.
    to_tag: Option<String>,
    cseq: u32,
    /// Requests are padded to about this many bytes.
    size: usize,
}

impl Dialog {
    pub(crate) fn new(size: usize) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        Self {
            n,
            call_id: format!("wsb{pid:x}-{n:x}@bench.invalid"),
            from_tag: format!("f{pid:x}x{n:x}"),
            to_tag: None,
            cseq: 0,
            size,
        }
    }

    /// A request of this dialog: start line and headers up to (not including) its
    /// Content-Type/Content-Length; `cseq` numbers it (RFC 3261: an ACK takes its
    /// INVITE's number).
    fn head(&self, method: &str, cseq: u32, to_tag: bool) -> String {
        let n = self.n;
        let to = match (&self.to_tag, to_tag) {
            (Some(t), true) => format!("<sip:echo@127.0.0.1>;tag={t}"),
            _ => "<sip:echo@127.0.0.1>".to_string(),
        };
        format!(
            "{method} sip:echo@127.0.0.1;transport=ws SIP/2.0\r\n\
             Via: SIP/2.0/WS wsbench.invalid;branch=z9hG4bK{n:x}m{cseq}{}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:phone{n}@bench.invalid>;tag={}\r\n\
             To: {to}\r\n\
             Call-ID: {}\r\n\
             CSeq: {cseq} {method}\r\n",
            &method[..1],
            self.from_tag,
            self.call_id,
        )
    }

    fn next_cseq(&mut self) -> u32 {
        self.cseq += 1;
        self.cseq
    }

    /// The initial INVITE (no To tag), with an SDP offer.
    pub(crate) fn invite(&mut self) -> String {
        let cseq = self.next_cseq();
        let mut m = self.head("INVITE", cseq, false);
        m.push_str(&format!(
            "Contact: <sip:phone{}@wsbench.invalid;transport=ws>\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
            self.n,
            SDP.len()
        ));
        m
    }

    /// The ACK of the INVITE's `200`.
    pub(crate) fn ack(&self) -> String {
        let mut m = self.head("ACK", self.cseq, true);
        m.push_str("Content-Length: 0\r\n\r\n");
        m
    }

    /// An in-dialog INFO, padded with a text body to about `size` bytes.
    pub(crate) fn info(&mut self) -> String {
        let cseq = self.next_cseq();
        padded(self.head("INFO", cseq, true), self.size)
    }

    /// An out-of-dialog OPTIONS (no To tag), padded to about `size` bytes.
    pub(crate) fn options(&mut self) -> String {
        let cseq = self.next_cseq();
        padded(self.head("OPTIONS", cseq, false), self.size)
    }

    /// The BYE that ends the call.
    pub(crate) fn bye(&mut self) -> String {
        let cseq = self.next_cseq();
        let mut m = self.head("BYE", cseq, true);
        m.push_str("Content-Length: 0\r\n\r\n");
        m
    }
}

/// `head` with a `text/plain` body that brings the message to `size` bytes (when the
/// headers leave room) and its Content-Length.
fn padded(mut head: String, size: usize) -> String {
    head.push_str("Content-Type: text/plain\r\nContent-Length: ");
    let fixed = head.len() + 4; // "\r\n\r\n"
    let mut body = size.saturating_sub(fixed + 1);
    // The length's own digits take room too.
    while body > 0 && fixed + body.to_string().len() + body > size {
        body -= 1;
    }
    head.push_str(&format!("{body}\r\n\r\n"));
    head.extend((0..body).map(|i| (b'a' + (i % 26) as u8) as char));
    head
}

/// The value of header `name` (full or compact form, any case), first occurrence.
fn header<'a>(msg: &'a str, name: &str, compact: &str) -> Option<&'a str> {
    let head = msg.split("\r\n\r\n").next().unwrap_or(msg);
    head.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        let n = n.trim();
        (n.eq_ignore_ascii_case(name) || n.eq_ignore_ascii_case(compact)).then(|| v.trim())
    })
}

/// The `tag` parameter of a From or To value.
fn tag(value: &str) -> Option<&str> {
    let params = value.rfind('>').map_or(value, |i| &value[i..]);
    params.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("tag").then(|| v.trim())
    })
}

/// Sends `msg` and reads until the final answer to it (`1xx` skipped): its status code
/// and To tag. Anything else, or nothing within [`STEP_TIMEOUT`], is an error.
async fn transaction(
    ws: &mut Ws,
    msg: String,
    what: &str,
) -> Result<(u16, Option<String>), String> {
    let step = async {
        ws.send(Message::text(msg))
            .await
            .map_err(|e| format!("{what}: send: {e}"))?;
        loop {
            let text = match ws.next().await {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => return Err(format!("{what}: unexpected {other:?}")),
                Some(Err(e)) => return Err(format!("{what}: receive: {e}")),
                None => return Err(format!("{what}: closed")),
            };
            let Some(status) = text.strip_prefix("SIP/2.0 ") else {
                let first = text.lines().next().unwrap_or("");
                return Err(format!(
                    "{what}: got {first:?}, not a response (is the echo server started with --sip?)"
                ));
            };
            let code: u16 = status
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("{what}: bad status line"))?;
            if code < 200 {
                continue;
            }
            let to_tag = header(&text, "to", "t").and_then(tag).map(str::to_string);
            return Ok((code, to_tag));
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, step)
        .await
        .map_err(|_| format!("{what}: timeout"))?
}

/// Places the dialog's call: INVITE, its `200` (the To tag kept), ACK.
pub(crate) async fn place_call(ws: &mut Ws, d: &mut Dialog) -> Result<(), String> {
    let (code, to_tag) = transaction(ws, d.invite(), "INVITE").await?;
    if code != 200 {
        return Err(format!("INVITE answered {code}"));
    }
    d.to_tag = Some(to_tag.ok_or("the INVITE's 200 has no To tag")?);
    let ack = d.ack();
    tokio::time::timeout(STEP_TIMEOUT, ws.send(Message::text(ack)))
        .await
        .map_err(|_| "ACK: timeout".to_string())?
        .map_err(|e| format!("ACK: send: {e}"))
}

/// Ends the dialog's call: BYE and its `200`.
pub(crate) async fn hang_up(ws: &mut Ws, d: &mut Dialog) -> Result<(), String> {
    match transaction(ws, d.bye(), "BYE").await? {
        (200, _) => Ok(()),
        (code, _) => Err(format!("BYE answered {code}")),
    }
}

/// The echo server's answer to `msg` with `--sip`: `None` to echo it, `Some(None)` to
/// send nothing (an ACK), `Some(Some(reply))` for a call server's answer.
pub(crate) fn answer(msg: &str) -> Option<Option<String>> {
    let method = msg.split(' ').next()?;
    let invite = match method {
        "INVITE" => true,
        "BYE" => false,
        "ACK" => return Some(None),
        _ => return None,
    };
    let to = header(msg, "to", "t")?;
    if invite && tag(to).is_some() {
        return None; // a re-INVITE: echoed, like any other message
    }
    let mut r = String::with_capacity(512);
    r.push_str("SIP/2.0 200 OK\r\n");
    let head = msg.split("\r\n\r\n").next().unwrap_or(msg);
    for line in head.split("\r\n").skip(1) {
        let Some((n, _)) = line.split_once(':') else {
            continue;
        };
        let n = n.trim().to_ascii_lowercase();
        if matches!(
            n.as_str(),
            "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq"
        ) {
            r.push_str(line);
            r.push_str("\r\n");
        }
    }
    r.push_str("To: ");
    r.push_str(to);
    if invite {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        r.push_str(&format!(
            ";tag=echo{n:x}\r\nContact: <sip:echo@127.0.0.1;transport=ws>"
        ));
    }
    r.push_str("\r\nContent-Length: 0\r\n\r\n");
    Some(Some(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_padded_to_size_and_answered() {
        let mut d = Dialog::new(1024);
        let inv = d.invite();
        assert!(inv.starts_with("INVITE ") && inv.contains("CSeq: 1 INVITE\r\n"));
        let ok = answer(&inv).unwrap().unwrap();
        assert!(ok.starts_with("SIP/2.0 200 OK\r\n"));
        assert!(ok.contains("Call-ID: ") && ok.contains("CSeq: 1 INVITE\r\n"));
        d.to_tag = header(&ok, "to", "t").and_then(tag).map(str::to_string);
        assert!(d.to_tag.as_deref().unwrap().starts_with("echo"));
        assert_eq!(answer(&d.ack()), Some(None));
        for _ in 0..20 {
            let info = d.info();
            assert_eq!(info.len(), 1024, "{info}");
            let (head, body) = info.split_once("\r\n\r\n").unwrap();
            assert!(head.contains(&format!("Content-Length: {}", body.len())));
            assert_eq!(answer(&info), None);
        }
        assert_eq!(d.options().len(), 1024);
        let bye = answer(&d.bye()).unwrap().unwrap();
        assert!(bye.contains("CSeq: 23 BYE\r\n") && !bye.contains("Contact"));
        assert_eq!(answer("abcdefgh"), None);
    }
}
