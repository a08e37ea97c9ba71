//! TEMPORARY stub of the SIP parser (replaced by branch sip-parse).
#![allow(missing_docs)]

#[derive(Debug, thiserror::Error)]
#[error("not SIP: {0}")]
pub struct ParseError(&'static str);

#[derive(Debug, Clone, Copy)]
pub enum StartLine<'a> {
    Request { method: &'a str, uri: &'a str },
    Response { code: u16, reason: &'a str },
}

#[derive(Debug, Clone, Copy)]
pub struct CSeq<'a> {
    pub number: u32,
    pub method: &'a str,
}

#[derive(Debug, Clone)]
pub struct SipMessage<'a> {
    pub start: StartLine<'a>,
    pub call_id: &'a str,
    pub cseq: CSeq<'a>,
    pub from_tag: Option<&'a str>,
    pub to_tag: Option<&'a str>,
    pub branch: Option<&'a str>,
    pub content_length: Option<usize>,
    head: &'a str,
}

fn canon(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase();
    match n.as_str() {
        "v" => "via".into(),
        "f" => "from".into(),
        "t" => "to".into(),
        "i" => "call-id".into(),
        "l" => "content-length".into(),
        "m" => "contact".into(),
        _ => n,
    }
}

fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let after = value.rfind('>').map_or(value, |i| &value[i..]);
    after.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

impl<'a> SipMessage<'a> {
    pub fn method(&self) -> Option<&'a str> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }
    pub fn code(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }
    pub fn is_request(&self) -> bool {
        self.method().is_some()
    }
    pub fn header_values(&self, name: &str) -> impl Iterator<Item = &'a str> + '_ {
        let want = canon(name);
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(move |l| {
                let (n, v) = l.split_once(':')?;
                (canon(n) == want).then(|| v.trim())
            })
            .flat_map(|v| v.split(',').map(str::trim))
    }
    pub fn header(&self, name: &str) -> Option<&'a str> {
        let want = canon(name);
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            (canon(n) == want).then(|| v.trim())
        })
    }
    pub fn contact_uri(&self) -> Option<&'a str> {
        let c = self.header("contact")?;
        match (c.find('<'), c.find('>')) {
            (Some(a), Some(b)) if a < b => Some(&c[a + 1..b]),
            _ => Some(c.split(';').next()?.trim()),
        }
    }
}

pub fn parse(bytes: &[u8]) -> Result<SipMessage<'_>, ParseError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ParseError("utf8"))?;
    let head = text.split("\r\n\r\n").next().unwrap_or(text);
    let first = head.lines().next().ok_or(ParseError("empty"))?;
    let mut parts = first.splitn(3, ' ');
    let (a, b, c) = (
        parts.next().ok_or(ParseError("start"))?,
        parts.next().ok_or(ParseError("start"))?,
        parts.next().ok_or(ParseError("start"))?,
    );
    let start = if a == "SIP/2.0" {
        StartLine::Response {
            code: b.parse().map_err(|_| ParseError("code"))?,
            reason: c,
        }
    } else if c == "SIP/2.0" {
        StartLine::Request { method: a, uri: b }
    } else {
        return Err(ParseError("start"));
    };
    let mut m = SipMessage {
        start,
        call_id: "",
        cseq: CSeq {
            number: 0,
            method: "",
        },
        from_tag: None,
        to_tag: None,
        branch: None,
        content_length: None,
        head,
    };
    let call_id = m.header("call-id").ok_or(ParseError("call-id"))?;
    let cseq = m.header("cseq").ok_or(ParseError("cseq"))?;
    let (n, meth) = cseq.split_once(' ').ok_or(ParseError("cseq"))?;
    m.call_id = call_id;
    m.cseq = CSeq {
        number: n.trim().parse().map_err(|_| ParseError("cseq"))?,
        method: meth.trim(),
    };
    m.from_tag = param(m.header("from").ok_or(ParseError("from"))?, "tag");
    m.to_tag = param(m.header("to").ok_or(ParseError("to"))?, "tag");
    let branch = m
        .header_values("via")
        .next()
        .and_then(|v| param(v, "branch"));
    m.branch = branch;
    Ok(m)
}

fn copy_headers(out: &mut String, m: &SipMessage<'_>, names: &[&str]) {
    for l in m.head.split("\r\n").skip(1) {
        if let Some((n, _)) = l.split_once(':') {
            if names.contains(&canon(n).as_str()) {
                out.push_str(l);
                out.push_str("\r\n");
            }
        }
    }
}

pub fn response(
    request: &SipMessage<'_>,
    code: u16,
    reason: &str,
    to_tag: &str,
    extra: &[(&str, &str)],
) -> String {
    let mut r = format!("SIP/2.0 {code} {reason}\r\n");
    copy_headers(&mut r, request, &["via", "from", "call-id", "cseq"]);
    let to = request.header("to").unwrap_or("");
    r.push_str("To: ");
    r.push_str(to);
    if request.to_tag.is_none() && code > 100 && !to_tag.is_empty() {
        r.push_str(";tag=");
        r.push_str(to_tag);
    }
    r.push_str("\r\n");
    for (n, v) in extra {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    r.push_str("Content-Length: 0\r\n\r\n");
    r
}

fn in_dialog(invite: &SipMessage<'_>, ok: &SipMessage<'_>, branch: &str, cseq: String) -> String {
    let uri = ok.contact_uri().unwrap_or(match invite.start {
        StartLine::Request { uri, .. } => uri,
        StartLine::Response { .. } => "",
    });
    let method = cseq.split(' ').nth(1).unwrap_or("ACK");
    let mut r = format!("{method} {uri} SIP/2.0\r\n");
    let via = invite.header_values("via").next().unwrap_or("");
    let via = match via.find(";branch=") {
        Some(i) => format!("{};branch={branch}", &via[..i]),
        None => format!("{via};branch={branch}"),
    };
    r.push_str(&format!("Via: {via}\r\nMax-Forwards: 70\r\n"));
    let routes: Vec<&str> = ok.header_values("record-route").collect();
    for route in routes.iter().rev() {
        r.push_str(&format!("Route: {route}\r\n"));
    }
    r.push_str(&format!(
        "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n",
        invite.header("from").unwrap_or(""),
        ok.header("to").unwrap_or(""),
        invite.call_id
    ));
    r
}

pub fn ack_for_2xx(invite: &SipMessage<'_>, ok: &SipMessage<'_>, branch: &str) -> String {
    in_dialog(invite, ok, branch, format!("{} ACK", invite.cseq.number))
}

pub fn bye_for(invite: &SipMessage<'_>, ok: &SipMessage<'_>, branch: &str) -> String {
    in_dialog(
        invite,
        ok,
        branch,
        format!("{} BYE", invite.cseq.number + 1),
    )
}

pub fn new_branch() -> String {
    format!("z9hG4bKsl{:016x}", rand::random::<u64>())
}

pub fn new_tag() -> String {
    format!("sl{:012x}", rand::random::<u64>() >> 16)
}
