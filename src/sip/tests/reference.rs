//! The parser as it was before the single-pass `parse` (commit 8229f21's
//! `src/sip/parse.rs`, unchanged but for visibility): the reference the property test
//! `same_as_reference` holds the new one to. Test code only.

#![allow(dead_code)]

use crate::sip::{CSeq, ParseError, SipMessage, StartLine};

/// Compact header names (RFC 3261 §7.3.3 and the RFCs that added more; IANA's SIP
/// parameters registry) and the full names they stand for.
const COMPACT: [(u8, &str); 20] = [
    (b'a', "Accept-Contact"),
    (b'b', "Referred-By"),
    (b'c', "Content-Type"),
    (b'd', "Request-Disposition"),
    (b'e', "Content-Encoding"),
    (b'f', "From"),
    (b'i', "Call-ID"),
    (b'j', "Reject-Contact"),
    (b'k', "Supported"),
    (b'l', "Content-Length"),
    (b'm', "Contact"),
    (b'n', "Identity-Info"),
    (b'o', "Event"),
    (b'r', "Refer-To"),
    (b's', "Subject"),
    (b't', "To"),
    (b'u', "Allow-Events"),
    (b'v', "Via"),
    (b'x', "Session-Expires"),
    (b'y', "Identity"),
];

/// The largest CSeq number accepted (RFC 3261 §8.1.1.5 wants less than 2³¹; one more
/// is let through, as the brief of issue 17 says "at most").
const MAX_CSEQ: u32 = 1 << 31;

/// Parses one SIP message (one WebSocket message, RFC 7118): the start line and the
/// headers call counting needs; every other header stays in the borrowed head, read on
/// demand. Allocates nothing.
///
/// # Errors
/// [`ParseError`] when the message is not well-formed SIP as the module docs describe.
pub(crate) fn parse(bytes: &[u8]) -> Result<SipMessage<'_>, ParseError> {
    // Empty lines before the start line are ignored (RFC 3261 §7.5).
    let skip = bytes
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .ok_or(ParseError::Empty)?;
    let bytes = bytes.get(skip..).unwrap_or_default();
    // The UTF-8 prefix of the message, searched for the empty line with `str::find`
    // (memchr): a head that does not end inside it holds the invalid byte.
    let (text, invalid) = match std::str::from_utf8(bytes) {
        Ok(text) => (text, None),
        Err(e) => {
            let valid = bytes.get(..e.valid_up_to()).unwrap_or_default();
            (
                std::str::from_utf8(valid).unwrap_or_default(),
                Some(e.valid_up_to()),
            )
        }
    };
    let (head, body) = match (split_head(text), invalid) {
        (Some((head, body_at)), _) => (head, bytes.get(body_at..).unwrap_or_default()),
        (None, None) => (text, &[][..]),
        (None, Some(at)) => return Err(ParseError::NotUtf8(skip + at)),
    };
    let (first, rest) = match head.find('\n') {
        Some(nl) => (
            head.get(..nl).unwrap_or_default(),
            head.get(nl + 1..).unwrap_or_default(),
        ),
        None => (head, ""),
    };
    let start = start_line(first.strip_suffix('\r').unwrap_or(first))?;

    let mut call_id = None;
    let mut cseq = None;
    let mut from = None;
    let mut to = None;
    let mut via = None;
    let mut content_length = None;
    for (index, line) in lines(rest).enumerate() {
        let (name, value) = header_line(line).ok_or(ParseError::Header(index + 2))?;
        let slot = match full_name(name) {
            n if n.eq_ignore_ascii_case("Call-ID") => &mut call_id,
            n if n.eq_ignore_ascii_case("CSeq") => &mut cseq,
            n if n.eq_ignore_ascii_case("From") => &mut from,
            n if n.eq_ignore_ascii_case("To") => &mut to,
            n if n.eq_ignore_ascii_case("Content-Length") => &mut content_length,
            // The top Via: the first non-empty value of the Via headers.
            n if n.eq_ignore_ascii_case("Via") => {
                if via.is_none() {
                    via = split_values(value).next();
                }
                continue;
            }
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(value);
        }
    }
    let call_id = call_id
        .filter(|v| !v.is_empty())
        .ok_or(ParseError::Missing("Call-ID"))?;
    let cseq = cseq_value(cseq.ok_or(ParseError::Missing("CSeq"))?)?;
    let from = from
        .filter(|v| !v.is_empty())
        .ok_or(ParseError::Missing("From"))?;
    let to = to
        .filter(|v| !v.is_empty())
        .ok_or(ParseError::Missing("To"))?;
    let via = via.ok_or(ParseError::Missing("Via"))?;
    let content_length = match content_length {
        None => None,
        Some(v) => Some(number(v).ok_or(ParseError::ContentLength)?),
    };
    Ok(SipMessage {
        start,
        call_id,
        cseq,
        from_tag: header_param(from, "tag"),
        to_tag: header_param(to, "tag"),
        branch: header_param(via, "branch"),
        content_length,
        head: rest,
        body,
    })
}

/// Whether a message is only line ends: the CRLF keep-alive of RFC 5626 §4.4.1 that SIP
/// stacks (SIP.js among them) send over WebSocket too. [`parse`] refuses it as
/// [`ParseError::Empty`]; this tells it from garbage without parsing.
pub(crate) fn is_keepalive(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|&b| b == b'\r' || b == b'\n')
}

/// The head (up to the empty line, the last header's line end included) and the offset
/// of the body (after the empty line); `None` without an empty line.
pub(crate) fn split_head(text: &str) -> Option<(&str, usize)> {
    let mut at = 0;
    while let Some(nl) = text.get(at..).and_then(|rest| rest.find('\n')) {
        let nl = at + nl;
        let line = text.get(at..nl).unwrap_or_default();
        if line.is_empty() || line == "\r" {
            return Some((text.get(..at).unwrap_or_default(), nl + 1));
        }
        at = nl + 1;
    }
    None
}

/// A request line or a status line (without its line end).
pub(crate) fn start_line(line: &str) -> Result<StartLine<'_>, ParseError> {
    if line.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
        return Err(ParseError::StartLine("a control character"));
    }
    if line
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"))
    {
        let rest = version(line).ok_or(ParseError::StartLine("the version is not SIP/2.0"))?;
        let rest = rest
            .strip_prefix(' ')
            .ok_or(ParseError::StartLine("no SP after SIP/2.0"))?;
        let digits = rest
            .get(..3)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()));
        let code: u16 = digits
            .and_then(|d| d.parse().ok())
            .filter(|c| (100..=699).contains(c))
            .ok_or(ParseError::StartLine("the status code is not 100 to 699"))?;
        let reason = match rest.get(3..).unwrap_or_default() {
            "" => "",
            r => r
                .strip_prefix(' ')
                .ok_or(ParseError::StartLine("no SP after the status code"))?,
        };
        return Ok(StartLine::Response { code, reason });
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(v), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::StartLine(
            "not METHOD SP Request-URI SP SIP/2.0",
        ));
    };
    if !is_token(method) {
        return Err(ParseError::StartLine("the method is not a token"));
    }
    if uri.is_empty() || uri.contains('\t') {
        return Err(ParseError::StartLine("an empty or malformed Request-URI"));
    }
    if version(v) != Some("") {
        return Err(ParseError::StartLine("the version is not SIP/2.0"));
    }
    Ok(StartLine::Request { method, uri })
}

/// What follows a leading `SIP/2.0` (the name case-insensitive, RFC 3261 §7.1).
pub(crate) fn version(s: &str) -> Option<&str> {
    let (v, rest) = (s.get(..7)?, s.get(7..)?);
    v.eq_ignore_ascii_case("SIP/2.0").then_some(rest)
}

/// `number LWS method`, the number at most [`MAX_CSEQ`].
pub(crate) fn cseq_value(value: &str) -> Result<CSeq<'_>, ParseError> {
    let mut words = value.split(is_lws).filter(|w| !w.is_empty());
    let (Some(n), Some(method), None) = (words.next(), words.next(), words.next()) else {
        return Err(ParseError::CSeq("not `number method`"));
    };
    let number = number(n)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n <= MAX_CSEQ)
        .ok_or(ParseError::CSeq("the number is not 0 to 2^31"))?;
    if !is_token(method) {
        return Err(ParseError::CSeq("the method is not a token"));
    }
    Ok(CSeq { number, method })
}

/// A decimal number of ASCII digits (leading zeros allowed), `None` on overflow.
pub(crate) fn number(s: &str) -> Option<usize> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.bytes().try_fold(0usize, |n, d| {
        n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    })
}

/// The logical lines of the header block: each physical line with the ones folded onto
/// it (starting with SP or HT), without the final line end; empty lines are skipped.
pub(crate) fn lines(head: &str) -> impl Iterator<Item = &str> {
    let mut rest = head;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let bytes = rest.as_bytes();
        let mut end = bytes.len();
        let mut at = 0;
        while let Some(nl) = rest.get(at..).and_then(|r| r.find('\n')) {
            let nl = at + nl;
            if matches!(bytes.get(nl + 1), Some(b' ' | b'\t')) {
                at = nl + 1;
                continue;
            }
            end = nl;
            break;
        }
        let line = rest.get(..end).unwrap_or_default();
        rest = rest.get(end + 1..).unwrap_or_default();
        let line = line.strip_suffix('\r').unwrap_or(line);
        if !line.is_empty() {
            return Some(line);
        }
    })
}

/// `name: value` of one logical line: the name a token (whitespace before the colon
/// allowed), the value trimmed. `None` when it is not a header line (folded onto
/// nothing, no colon, no name).
pub(crate) fn header_line(line: &str) -> Option<(&str, &str)> {
    let (name, value) = line.split_once(':')?;
    let name = name.trim_end_matches([' ', '\t']);
    is_token(name).then(|| (name, value.trim_matches(is_lws)))
}

/// Every `(name, value)` of a header block [`parse`] accepted (a line that is not a
/// header is skipped, so any text is safe here).
pub(crate) fn headers(head: &str) -> impl Iterator<Item = (&str, &str)> {
    lines(head).filter_map(header_line)
}

/// The full name of a compact one (`v` → `Via`); any other name unchanged.
pub(crate) fn full_name(name: &str) -> &str {
    match name.as_bytes() {
        [c] => COMPACT
            .iter()
            .find(|(short, _)| short.eq_ignore_ascii_case(c))
            .map_or(name, |&(_, full)| full),
        _ => name,
    }
}

/// The values of one comma-separated header line, trimmed, empty ones skipped; commas
/// inside `<…>` or a quoted string do not separate.
pub(crate) fn split_values(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || loop {
        let text = rest?;
        let (one, next) = match find_outside(text, b',') {
            Some(at) => (text.get(..at).unwrap_or_default(), text.get(at + 1..)),
            None => (text, None),
        };
        rest = next;
        let one = one.trim_matches(is_lws);
        if !one.is_empty() {
            return Some(one);
        }
    })
}

/// The byte offset of the first `wanted` (an ASCII delimiter) that is outside quoted
/// strings and `<…>`.
pub(crate) fn find_outside(text: &str, wanted: u8) -> Option<usize> {
    let (mut quoted, mut escaped, mut angle) = (false, false, false);
    for (i, b) in text.bytes().enumerate() {
        if quoted {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
        } else if angle {
            angle = b != b'>';
        } else if b == wanted {
            return Some(i);
        } else if b == b'"' {
            quoted = true;
        } else if b == b'<' {
            angle = true;
        }
    }
    None
}

/// The byte offset where the header parameters of one value start (after their first
/// `;`): after the `<uri>` of a name-addr, or at the first `;` of an addr-spec or a Via.
pub(crate) fn params_start(value: &str) -> Option<usize> {
    let semi = find_outside(value, b';')?;
    Some(semi + 1)
}

/// The `(name, value)` byte ranges of the header parameters of one value.
pub(crate) fn params(value: &str) -> impl Iterator<Item = (&str, Option<(usize, usize)>)> {
    let mut at = params_start(value);
    std::iter::from_fn(move || {
        let start = at?;
        let rest = value.get(start..)?;
        let end = find_outside(rest, b';').map_or(value.len(), |e| start + e);
        at = (end < value.len()).then_some(end + 1);
        let param = value.get(start..end)?;
        Some(match param.find('=') {
            None => (param.trim_matches(is_lws), None),
            Some(eq) => {
                let name = param.get(..eq).unwrap_or_default().trim_matches(is_lws);
                let raw = param.get(eq + 1..).unwrap_or_default();
                let lead = raw.len() - raw.trim_start_matches(is_lws).len();
                let len = raw.trim_matches(is_lws).len();
                let from = start + eq + 1 + lead;
                (name, Some((from, from + len)))
            }
        })
    })
}

/// The value of header parameter `name` (case-insensitive) of one header value: the
/// first non-empty one (an empty value counts as absent).
pub(crate) fn header_param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    params(value)
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .find_map(|(_, range)| {
            let (from, to) = range?;
            value.get(from..to).filter(|v| !v.is_empty())
        })
}

/// The URI of a name-addr (inside `<…>`) or of an addr-spec (up to its parameters);
/// `None` for `*` or nothing.
pub(crate) fn addr_uri(value: &str) -> Option<&str> {
    let uri = match find_outside(value, b'<') {
        Some(open) => {
            let inner = value.get(open + 1..)?;
            inner.get(..inner.find('>')?)?
        }
        None => value.get(..find_outside(value, b';').unwrap_or(value.len()))?,
    };
    let uri = uri.trim_matches(is_lws);
    (!uri.is_empty() && uri != "*").then_some(uri)
}

/// SP, HT, CR or LF: the whitespace of a (possibly folded) header value.
pub(crate) fn is_lws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// An RFC 3261 token: one or more of alphanumerics and `-.!%*_+`'~`.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// The reference of `SipMessage::header_lines`: every header line's value named `name`.
pub(crate) fn header_lines<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    let wanted = full_name(name);
    headers(head)
        .filter(|(n, _)| full_name(n).eq_ignore_ascii_case(wanted))
        .map(|(_, value)| value)
        .collect()
}
