//! Reading a SIP message without allocating: the head, the start line, headers, params.

use super::{CSeq, ParseError, SipMessage, StartLine};

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
/// One pass over the head finds the line ends, the folded lines, the empty line and the
/// six headers' values (by byte range); then only the head is checked to be UTF-8 (the
/// body stays bytes). The parser this replaced (`src/sip/tests/reference.rs`) is the
/// reference of a property test: both give the same result on any bytes.
///
/// # Errors
/// [`ParseError`] when the message is not well-formed SIP as the module docs describe.
pub fn parse(bytes: &[u8]) -> Result<SipMessage<'_>, ParseError> {
    // Empty lines before the start line are ignored (RFC 3261 §7.5).
    let skip = bytes
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .ok_or(ParseError::Empty)?;
    let bytes = bytes.get(skip..).unwrap_or_default();
    let len = bytes.len();
    let first_nl = find_lf(bytes, 0);

    // The header lines, up to the empty line: byte ranges of the values wanted, the
    // first line that is not a header (reported only once the head is known to be UTF-8
    // and the start line well-formed, as before).
    let mut found = Found::default();
    let mut bad_line = None;
    let mut line_no = 1;
    let mut at = first_nl.map_or(len, |nl| nl + 1);
    let (head_end, body_at) = loop {
        match bytes.get(at..) {
            // No empty line: the head runs to the end (a lone CR last is an empty
            // line without its LF, no header).
            None | Some([] | [b'\r']) => break (len, len),
            Some([b'\n', ..]) => break (at, at + 1),
            Some([b'\r', b'\n', ..]) => break (at, at + 2),
            Some(_) => {}
        }
        line_no += 1;
        let name_end = at + bytes.get(at..).map_or(0, token_len);
        let colon = name_end
            + bytes.get(name_end..).map_or(0, |r| {
                r.iter().take_while(|&&b| b == b' ' || b == b'\t').count()
            });
        let end = line_end(bytes, colon);
        if bad_line.is_none() {
            if name_end == at || bytes.get(colon) != Some(&b':') {
                bad_line = Some(line_no);
            } else if let Some(which) = wanted(bytes.get(at..name_end).unwrap_or_default()) {
                found.record(which, trim_lws(bytes, colon + 1, end));
            }
        }
        at = end + 1;
    };
    let head = std::str::from_utf8(bytes.get(..head_end).unwrap_or_default())
        .map_err(|e| ParseError::NotUtf8(skip + e.valid_up_to()))?;
    let (first, rest) = match first_nl {
        Some(nl) => (
            head.get(..nl).unwrap_or_default(),
            head.get(nl + 1..).unwrap_or_default(),
        ),
        None => (head, ""),
    };
    let start = start_line(first.strip_suffix('\r').unwrap_or(first))?;
    if let Some(line) = bad_line {
        return Err(ParseError::Header(line));
    }
    let value = |range: Option<(usize, usize)>| range.and_then(|(from, to)| head.get(from..to));
    let call_id = value(found.call_id)
        .filter(|v| !v.is_empty())
        .ok_or(ParseError::Missing("Call-ID"))?;
    let cseq = cseq_value(value(found.cseq).ok_or(ParseError::Missing("CSeq"))?)?;
    let from = value(found.from)
        .filter(|v| !v.is_empty())
        .ok_or(ParseError::Missing("From"))?;
    let to = value(found.to)
        .filter(|v| !v.is_empty())
        .ok_or(ParseError::Missing("To"))?;
    // The top Via: the first non-empty value of the Via headers (a first Via line
    // without one is rare: then every line is looked at again).
    let via = value(found.via)
        .and_then(|v| split_values(v).next())
        .or_else(|| {
            headers(rest)
                .filter(|(n, _)| wanted(n.as_bytes()) == Some(Wanted::Via))
                .find_map(|(_, v)| split_values(v).next())
        })
        .ok_or(ParseError::Missing("Via"))?;
    let content_length = match value(found.content_length) {
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
        body: bytes.get(body_at..).unwrap_or_default(),
    })
}

/// The headers [`parse`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    CallId,
    CSeq,
    From,
    To,
    Via,
    ContentLength,
}

/// The byte ranges of the first value of each header [`parse`] reads (the first Via
/// line's, whose first non-empty value is the top Via).
#[derive(Debug, Default)]
struct Found {
    call_id: Option<(usize, usize)>,
    cseq: Option<(usize, usize)>,
    from: Option<(usize, usize)>,
    to: Option<(usize, usize)>,
    via: Option<(usize, usize)>,
    content_length: Option<(usize, usize)>,
}

impl Found {
    /// Keeps `range` as `which`'s value unless an earlier line gave one.
    fn record(&mut self, which: Wanted, range: (usize, usize)) {
        let slot = match which {
            Wanted::CallId => &mut self.call_id,
            Wanted::CSeq => &mut self.cseq,
            Wanted::From => &mut self.from,
            Wanted::To => &mut self.to,
            Wanted::Via => &mut self.via,
            Wanted::ContentLength => &mut self.content_length,
        };
        if slot.is_none() {
            *slot = Some(range);
        }
    }
}

/// Which of the headers [`parse`] reads `name` (a token) is, by its length and first
/// byte before any comparison (compact forms understood); `None` for any other.
fn wanted(name: &[u8]) -> Option<Wanted> {
    let first = name.first()?.to_ascii_lowercase();
    let is = |full: &[u8]| name.eq_ignore_ascii_case(full);
    match (name.len(), first) {
        (1, b'i') => Some(Wanted::CallId),
        (1, b'f') => Some(Wanted::From),
        (1, b't') => Some(Wanted::To),
        (1, b'v') => Some(Wanted::Via),
        (1, b'l') => Some(Wanted::ContentLength),
        (2, b't') if is(b"To") => Some(Wanted::To),
        (3, b'v') if is(b"Via") => Some(Wanted::Via),
        (4, b'f') if is(b"From") => Some(Wanted::From),
        (4, b'c') if is(b"CSeq") => Some(Wanted::CSeq),
        (7, b'c') if is(b"Call-ID") => Some(Wanted::CallId),
        (14, b'c') if is(b"Content-Length") => Some(Wanted::ContentLength),
        _ => None,
    }
}

/// How many bytes at the start of `bytes` are token bytes.
fn token_len(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|&&b| is_token_byte(b)).count()
}

/// The offset of the `\n` that ends the logical line going on at `from` (a `\n`
/// followed by SP or HT folds), or the end of `bytes`.
fn line_end(bytes: &[u8], mut from: usize) -> usize {
    loop {
        let Some(nl) = find_lf(bytes, from) else {
            return bytes.len();
        };
        if !matches!(bytes.get(nl + 1), Some(b' ' | b'\t')) {
            return nl;
        }
        from = nl + 1;
    }
}

/// The offset of the first `\n` at or after `from`, eight bytes at a time (a header
/// line is too short for `memchr`'s setup to pay).
fn find_lf(bytes: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    const LF: u64 = u64::from_ne_bytes([b'\n'; 8]);
    let mut chunks = bytes.get(from..)?.chunks_exact(8);
    let mut at = from;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default()) ^ LF;
        // A zero byte of `word` is a `\n`; the lowest flagged byte is the first one.
        let zero = word.wrapping_sub(ONES) & !word & HIGH;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = chunks.remainder();
    rest.iter().position(|&b| b == b'\n').map(|i| at + i)
}

/// `from..to` without the SP, HT, CR and LF at either end.
fn trim_lws(bytes: &[u8], mut from: usize, mut to: usize) -> (usize, usize) {
    let lws = |at: usize| bytes.get(at).is_some_and(|&b| is_lws(char::from(b)));
    while from < to && lws(from) {
        from += 1;
    }
    while to > from && lws(to - 1) {
        to -= 1;
    }
    (from, to)
}

/// Whether a message is only line ends: the CRLF keep-alive of RFC 5626 §4.4.1 that SIP
/// stacks (SIP.js among them) send over WebSocket too. [`parse`] refuses it as
/// [`ParseError::Empty`]; this tells it from garbage without parsing.
pub fn is_keepalive(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|&b| b == b'\r' || b == b'\n')
}

/// A request line or a status line (without its line end).
fn start_line(line: &str) -> Result<StartLine<'_>, ParseError> {
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
fn version(s: &str) -> Option<&str> {
    let (v, rest) = (s.get(..7)?, s.get(7..)?);
    v.eq_ignore_ascii_case("SIP/2.0").then_some(rest)
}

/// `number LWS method`, the number at most [`MAX_CSEQ`].
fn cseq_value(value: &str) -> Result<CSeq<'_>, ParseError> {
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
fn number(s: &str) -> Option<usize> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.bytes().try_fold(0usize, |n, d| {
        n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    })
}

/// The logical lines of the header block: each physical line with the ones folded onto
/// it (starting with SP or HT), without the final line end; empty lines are skipped.
pub(super) fn lines(head: &str) -> impl Iterator<Item = &str> {
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
fn header_line(line: &str) -> Option<(&str, &str)> {
    let (name, value) = line.split_once(':')?;
    let name = name.trim_end_matches([' ', '\t']);
    is_token(name).then(|| (name, value.trim_matches(is_lws)))
}

/// Every `(name, value)` of a header block [`parse`] accepted (a line that is not a
/// header is skipped, so any text is safe here).
pub(super) fn headers(head: &str) -> impl Iterator<Item = (&str, &str)> {
    lines(head).filter_map(header_line)
}

/// The full name of a compact one (`v` → `Via`); any other name unchanged.
pub(super) fn full_name(name: &str) -> &str {
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
pub(super) fn split_values(value: &str) -> impl Iterator<Item = &str> {
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
/// strings and `<…>` (a quoted string and an `<…>` are skipped whole, a `\` in a quoted
/// string escaping the next byte).
fn find_outside(text: &str, wanted: u8) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == wanted {
            return Some(i);
        } else if b == b'"' {
            i += 1;
            loop {
                match bytes.get(i)? {
                    b'\\' => i += 2,
                    b'"' => break,
                    _ => i += 1,
                }
            }
        } else if b == b'<' {
            i += 1 + bytes.get(i + 1..)?.iter().position(|&c| c == b'>')?;
        }
        i += 1;
    }
    None
}

/// The byte offset where the header parameters of one value start (after their first
/// `;`): after the `<uri>` of a name-addr, or at the first `;` of an addr-spec or a Via.
fn params_start(value: &str) -> Option<usize> {
    let semi = find_outside(value, b';')?;
    Some(semi + 1)
}

/// The `(name, value)` byte ranges of the header parameters of one value.
pub(super) fn params(value: &str) -> impl Iterator<Item = (&str, Option<(usize, usize)>)> {
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
/// first non-empty one (an empty value counts as absent). [`params`] without its
/// iterator: each parameter's name is looked at only up to its `=`.
pub(super) fn header_param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let mut start = params_start(value)?;
    loop {
        let rest = value.get(start..)?;
        let end = find_outside(rest, b';').map_or(value.len(), |e| start + e);
        let param = value.get(start..end)?;
        if let Some(eq) = param.bytes().position(|b| b == b'=') {
            let key = param.get(..eq).unwrap_or_default().trim_matches(is_lws);
            if key.eq_ignore_ascii_case(name) {
                let found = param.get(eq + 1..).unwrap_or_default().trim_matches(is_lws);
                if !found.is_empty() {
                    return Some(found);
                }
            }
        }
        if end >= value.len() {
            return None;
        }
        start = end + 1;
    }
}

/// The URI of a name-addr (inside `<…>`) or of an addr-spec (up to its parameters);
/// `None` for `*` or nothing.
pub(super) fn addr_uri(value: &str) -> Option<&str> {
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
pub(super) fn is_lws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// An RFC 3261 token: one or more of alphanumerics and `-.!%*_+`'~`.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_byte)
}

/// A byte of an RFC 3261 token.
fn is_token_byte(b: u8) -> bool {
    TOKEN.get(usize::from(b)).copied().unwrap_or(false)
}

/// Which bytes are token bytes: alphanumerics and `-.!%*_+`'~`.
const TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < table.len() {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        b += 1;
    }
    table
};
