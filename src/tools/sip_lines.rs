//! Entry: the tools' line-based reading of SIP text (start line, headers by name, tags, URIs).
//!
//! What the edge simulator and `spike` need to read of a SIP message over WebSocket, and
//! no more: the start line, header values by name (compact forms included), the `tag`
//! and other parameters of a header value, the URI inside `<…>`, and the body. It is
//! not sluice's SIP parser (that one is fuzzed and strict); a message it cannot read is
//! simply not answered. [`Echo`] writes a response from its request.

use std::fmt::Write as _;

/// One SIP message, borrowed from its text.
#[derive(Debug, Clone)]
pub struct SipMessage<'a> {
    /// `INVITE sip:bob@x SIP/2.0` or `SIP/2.0 200 OK`.
    pub start: &'a str,
    /// Every header line in order: (name as written, value trimmed).
    headers: Vec<(&'a str, &'a str)>,
    /// Everything after the blank line.
    pub body: &'a str,
}

/// The full lower-case name of a header, compact forms expanded (RFC 3261 §7.3.3).
fn canonical(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    let full = match lower.as_str() {
        "v" => "via",
        "f" => "from",
        "t" => "to",
        "i" => "call-id",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        "k" => "supported",
        "s" => "subject",
        "e" => "content-encoding",
        _ => return lower,
    };
    full.to_owned()
}

impl<'a> SipMessage<'a> {
    /// Reads `text`; `None` when it has no start line or a header line without a colon.
    pub fn parse(text: &'a str) -> Option<Self> {
        let (head, body) = match text.find("\r\n\r\n") {
            Some(i) => (&text[..i], &text[i + 4..]),
            None => (text.trim_end_matches("\r\n"), ""),
        };
        let mut lines = head.split("\r\n");
        let start = lines.next().filter(|s| !s.trim().is_empty())?;
        let headers = lines
            .map(|l| l.split_once(':').map(|(n, v)| (n.trim_end(), v.trim())))
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            start,
            headers,
            body,
        })
    }

    /// A request's method and Request-URI.
    pub fn request(&self) -> Option<(&'a str, &'a str)> {
        let mut parts = self.start.split(' ');
        let (method, uri, version) = (parts.next()?, parts.next()?, parts.next()?);
        (version == "SIP/2.0" && !method.is_empty()).then_some((method, uri))
    }

    /// A response's status code.
    pub fn status(&self) -> Option<u16> {
        let rest = self.start.strip_prefix("SIP/2.0 ")?;
        rest.get(..3)?
            .parse()
            .ok()
            .filter(|c| (100..700).contains(c))
    }

    /// The first value of header `name` (full lower-case name, e.g. `call-id`).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers(name).next()
    }

    /// Every value of header `name`, in order (one per line as written).
    pub fn headers<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        self.lines(name).map(|(_, v)| v)
    }

    /// Every line of header `name` as (name as written, value), in order.
    pub fn lines<'s>(&'s self, name: &'s str) -> impl Iterator<Item = (&'a str, &'a str)> + 's {
        self.headers
            .iter()
            .copied()
            .filter(move |(n, _)| canonical(n) == name)
    }

    /// `CSeq`: its number and method.
    pub fn cseq(&self) -> Option<(u32, &'a str)> {
        let (n, m) = self.header("cseq")?.split_once(' ')?;
        Some((n.trim().parse().ok()?, m.trim()))
    }

    /// `Call-ID`.
    pub fn call_id(&self) -> Option<&'a str> {
        self.header("call-id")
    }
}

/// The header lines a response copies from its request, ready to be written: Via lines,
/// From, To (with the answerer's tag added when it has none), Call-ID and CSeq, as RFC
/// 3261 §8.2.6.2 asks, and Record-Route for a response that creates a dialog (§12.1.1).
#[derive(Debug, Clone)]
pub struct Echo {
    lines: Vec<String>,
}

impl Echo {
    /// The lines of `req`; `to_tag` is added to a To without a tag; `record_route` copies
    /// the Record-Route lines too (a response that creates a dialog).
    pub fn of(req: &SipMessage<'_>, to_tag: Option<&str>, record_route: bool) -> Self {
        let names: &[&str] = if record_route {
            &["via", "record-route", "from", "to", "call-id", "cseq"]
        } else {
            &["via", "from", "to", "call-id", "cseq"]
        };
        let mut lines = Vec::new();
        for name in names {
            for (n, v) in req.lines(name) {
                let mut line = format!("{n}: {v}");
                if *name == "to" && tag(v).is_none() {
                    if let Some(t) = to_tag {
                        let _ = write!(line, ";tag={t}");
                    }
                }
                lines.push(line);
            }
        }
        Self { lines }
    }

    /// The response `status` (`200 OK`) with `extra` header lines and an optional SDP
    /// body; Content-Length always.
    pub fn response(&self, status: &str, extra: &[String], sdp: Option<&str>) -> String {
        let mut r = format!("SIP/2.0 {status}\r\n");
        for line in self.lines.iter().chain(extra) {
            r.push_str(line);
            r.push_str("\r\n");
        }
        match sdp {
            Some(body) => {
                let _ = write!(
                    r,
                    "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
            None => r.push_str("Content-Length: 0\r\n\r\n"),
        }
        r
    }
}

/// The parameters of a name-addr or addr-spec header value (after the `>` when there
/// is one, else after the first `;`).
fn header_params(value: &str) -> &str {
    match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value.split_once(';').map_or("", |(_, p)| p),
    }
}

/// Parameter `name` of a header value (`tag` of a From or To, `text` of a Reason,
/// `expires` of a Contact), unquoted; `Some("")` for a parameter without a value.
pub fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    header_params(value).split(';').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"'))
    })
}

/// The `tag` of a From or To value.
pub fn tag(value: &str) -> Option<&str> {
    param(value, "tag").filter(|t| !t.is_empty())
}

/// The URI of a name-addr (`"Bob" <sip:bob@x;transport=ws>;tag=1` → `sip:bob@x;transport=ws`)
/// or of an addr-spec (`sip:bob@x;tag=1` → `sip:bob@x`).
pub fn uri(value: &str) -> &str {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next().unwrap_or("").trim(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_copies_the_request_and_counts_its_body() {
        let m = SipMessage::parse(
            "INVITE sip:b SIP/2.0\r\nv: SIP/2.0/WS a;branch=z9hG4bK1\r\nf: <sip:a>;tag=1\r\n\
             t: <sip:b>\r\ni: c\r\nCSeq: 1 INVITE\r\n\r\n",
        )
        .unwrap();
        let r = Echo::of(&m, Some("x"), true).response("200 OK", &[], Some("v=0\r\n"));
        assert!(
            r.starts_with("SIP/2.0 200 OK\r\nv: SIP/2.0/WS a;branch=z9hG4bK1\r\n"),
            "{r}"
        );
        assert!(r.contains("\r\nt: <sip:b>;tag=x\r\n"), "{r}");
        assert!(r.ends_with("Content-Length: 5\r\n\r\nv=0\r\n"), "{r}");
    }

    #[test]
    fn reads_start_lines_headers_and_parameters() {
        let text = "INVITE sip:bob@edge.invalid SIP/2.0\r\nv: SIP/2.0/WS a;branch=z9hG4bK1\r\n\
                    Via: SIP/2.0/WS b;branch=z9hG4bK2\r\nFrom: \"Al\" <sip:al@x>;tag=abc\r\n\
                    t: <sip:bob@x>\r\ni: c1\r\nCSeq: 7 INVITE\r\nm: <sip:al@h;transport=ws>;expires=60\r\n\
                    Content-Length: 4\r\n\r\nv=0\n";
        let m = SipMessage::parse(text).unwrap();
        assert_eq!(m.request(), Some(("INVITE", "sip:bob@edge.invalid")));
        assert_eq!(m.status(), None);
        assert_eq!(m.headers("via").count(), 2);
        assert_eq!(m.call_id(), Some("c1"));
        assert_eq!(m.cseq(), Some((7, "INVITE")));
        assert_eq!(tag(m.header("from").unwrap()), Some("abc"));
        assert_eq!(tag(m.header("to").unwrap()), None);
        let contact = m.header("contact").unwrap();
        assert_eq!(uri(contact), "sip:al@h;transport=ws");
        assert_eq!(param(contact, "expires"), Some("60"));
        assert_eq!(m.body, "v=0\n");
        let r = SipMessage::parse(
            "SIP/2.0 503 Service Unavailable\r\nReason: SIP;cause=503;text=\"call-cap\"\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.status(), Some(503));
        assert_eq!(param(r.header("reason").unwrap(), "text"), Some("call-cap"));
        assert_eq!(uri("sip:bob@x;tag=1"), "sip:bob@x");
        assert!(SipMessage::parse("").is_none());
        assert!(SipMessage::parse("INVITE x SIP/2.0\r\nno colon\r\n\r\n").is_none());
    }
}
