//! Beside the flow (a leaf): SIP messages as SIP-over-WebSocket tenants send them.
//!
//! The relay of a tenant with call caps (issue 17, `../shared/DESIGN.md`, "SIP
//! awareness") reads every message's start line and the few headers that call counting
//! needs: Via (its top branch), From and To (their tags), Call-ID, CSeq and
//! Content-Length. [`parse`] reads them without allocating: a [`SipMessage`] borrows the
//! message's bytes, and the other headers are found on demand
//! ([`SipMessage::header_values`], [`SipMessage::header`], [`SipMessage::contact_uri`]).
//! A message [`parse`] refuses ([`ParseError`]) is relayed unchanged by the caller; this
//! module never panics, whatever the bytes.
//!
//! [`response`], [`ack_for_2xx`] and [`bye_for`] build the few messages sluice sends
//! itself (a `100 Trying`, `503` or `487` for an INVITE it holds; the `ACK` and `BYE`
//! for a `200` that crossed a CANCEL); they allocate, and are used rarely.
//!
//! # What is accepted
//!
//! A request (`METHOD SP Request-URI SP SIP/2.0`) or a response (`SIP/2.0 SP 3DIGIT SP
//! reason`, the reason may be empty), then headers up to the empty line (CRLF or bare LF
//! line ends; empty lines before the start line are skipped, RFC 3261 §7.5; a head that
//! runs to the end of the message without an empty line is taken whole, with an empty
//! body). Header names are case-insensitive and compact forms are understood (`v`, `f`,
//! `t`, `i`, `l`, `m`, `k`, `c`, `e`, `s`, …); a line that starts with SP or HT folds
//! onto the previous header. Call-ID, CSeq (a number at most 2³¹ and a method token),
//! From, To and Via are required (RFC 3261 §8.1.1), as non-empty values; the first of a
//! repeated Call-ID, CSeq, From, To or Content-Length counts. `tag` and `branch` are
//! header parameters, found case-insensitively outside any `<uri>` and quoted string; an
//! empty one counts as absent. The head must be UTF-8; the body is any bytes after the
//! empty line, and Content-Length, optional over WebSocket (RFC 7118 §5), is only read
//! as a number.
//!
//! A message refused here but accepted by the edge would pass the call cap uncounted, so
//! the rules lean to what real stacks accept (leading empty lines, bare LF, a missing
//! empty line, repeated headers) and refuse only what no call-counting decision can be
//! taken on.
//!
//! # Why our own parser
//!
//! Judged before writing this (December 2026, from their sources): `rsip` 0.4.0 (MIT)
//! is the best known, but has had no release since April 2022, pulls nom 7, uuid 0.8,
//! sha2 0.9 and md-5 0.9 (old duplicates of what we have), and owns everything: a `Vec`
//! of headers, a `String` per header and a copied body on every message.
//! `ezk-sip-types` 0.6.5 (MIT) is maintained and refers into a `Bytes` buffer without
//! copying the text, but still fills a `Vec` of header entries (and one more `Vec` per
//! repeated header: Via, Record-Route) on every message, and pulls nom 7, anyhow,
//! lazy_static and its own `ezk-internal`. `sip-core` 0.3.0 (Apache-2.0) is young, takes
//! `&str` only (so no non-UTF-8 body), copies every header value and the body into
//! `String`s, drops folded continuation lines, and depends on tokio `full`, uuid and
//! rand 0.8. The relay parses every message of a SIP tenant and needs six headers of
//! it; none of the three parses without allocating, and each brings a dependency tree
//! larger than this module. So: a small borrowing parser of our own, fuzzed
//! (`fuzz/fuzz_targets/sip.rs`, `docs/fuzzing.md`) and property-tested.

mod build;
mod parse;
#[cfg(test)]
mod tests;

pub use build::{ack_for_2xx, bye_for, new_branch, new_tag, response};
pub use parse::{is_keepalive, parse};

/// A parsed SIP message: the start line and the headers call counting needs; borrows the
/// input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipMessage<'a> {
    /// The request line or the status line.
    pub start: StartLine<'a>,
    /// The first Call-ID's value, trimmed (non-empty).
    pub call_id: &'a str,
    /// The first CSeq.
    pub cseq: CSeq<'a>,
    /// The `tag` parameter of the first From header (absent or empty: `None`).
    pub from_tag: Option<&'a str>,
    /// The `tag` parameter of the first To header (absent or empty: `None`): `None` on
    /// an initial INVITE.
    pub to_tag: Option<&'a str>,
    /// The `branch` parameter of the top Via (the first value of the first Via header).
    pub branch: Option<&'a str>,
    /// The first Content-Length, when there is one.
    pub content_length: Option<usize>,
    /// The header lines: from after the start line's line end to before the empty line
    /// (UTF-8, already checked to be well-formed by [`parse`]).
    head: &'a str,
    /// Everything after the empty line.
    body: &'a [u8],
}

/// The first line of a SIP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine<'a> {
    /// `METHOD SP Request-URI SP SIP/2.0`.
    Request {
        /// The method token, as sent (methods are case-sensitive, RFC 3261 §7.1).
        method: &'a str,
        /// The Request-URI, as sent.
        uri: &'a str,
    },
    /// `SIP/2.0 SP 3DIGIT SP reason`.
    Response {
        /// The status code, 100 to 699.
        code: u16,
        /// The reason phrase, possibly empty.
        reason: &'a str,
    },
}

/// A CSeq header: the sequence number and the method it numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    /// At most 2³¹.
    pub number: u32,
    /// The method token.
    pub method: &'a str,
}

/// Why [`parse`] refused a message. The caller relays such a message unchanged and counts
/// it (`sluice_sip_unparsed_total`); nothing of it reaches a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing but line ends (a CRLF keep-alive, see [`is_keepalive`]) or nothing at all.
    #[error("not a SIP message: empty, or only line ends")]
    Empty,
    /// The start line and headers are not UTF-8.
    #[error("the SIP head is not UTF-8 (invalid byte at offset {0})")]
    NotUtf8(usize),
    /// The first line is neither a request line nor a status line.
    #[error("malformed SIP start line: {0}")]
    StartLine(&'static str),
    /// A header line without a `name:` (1-based line number in the message, the start
    /// line being line 1 after any skipped empty lines).
    #[error("line {0} of the SIP head is not a header (`name: value`)")]
    Header(usize),
    /// A required header is absent or empty.
    #[error("SIP header {0} is missing or empty")]
    Missing(&'static str),
    /// The CSeq is not `number method`.
    #[error("malformed SIP CSeq: {0}")]
    CSeq(&'static str),
    /// The Content-Length is not a number.
    #[error("malformed SIP Content-Length: not a number")]
    ContentLength,
}

// === impl SipMessage ===

impl<'a> SipMessage<'a> {
    /// The method of a request; `None` for a response.
    pub fn method(&self) -> Option<&'a str> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code of a response; `None` for a request.
    pub fn code(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// Whether this is a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The Request-URI of a request; `None` for a response.
    pub fn uri(&self) -> Option<&'a str> {
        match self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// The body: every byte after the empty line (Content-Length is not applied).
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// Every value of header `name` (case-insensitive; compact forms understood both in
    /// the message and in `name`: `v` = Via, `f` = From, `t` = To, `i` = Call-ID, `l` =
    /// Content-Length, `m` = Contact, `k` = Supported, `c` = Content-Type, `e` =
    /// Content-Encoding, `s` = Subject, …), in order. A header line holding a
    /// comma-separated list is split into its values (commas inside `<…>` or quotes do
    /// not separate); values are trimmed, empty ones skipped. For Via, Record-Route,
    /// Route and Contact; do not use it for headers whose values may hold bare commas
    /// (dates, From with an unquoted display name).
    pub fn header_values<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.header_lines(name).flat_map(parse::split_values)
    }

    /// The value of the first header `name` (case-insensitive, compact forms understood),
    /// the whole line's value, trimmed; a folded value keeps its inner line ends.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.header_lines(name).next()
    }

    /// The URI of the first Contact: the part inside `<…>`, or the bare URI (up to its
    /// header parameters). `None` without a Contact, or for `Contact: *`.
    pub fn contact_uri(&self) -> Option<&'a str> {
        self.header_values("Contact")
            .next()
            .and_then(parse::addr_uri)
    }

    /// Every header line's value whose name is `name`, in order.
    fn header_lines<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        let wanted = parse::full_name(name);
        parse::headers(self.head)
            .filter(move |(n, _)| parse::full_name(n).eq_ignore_ascii_case(wanted))
            .map(|(_, value)| value)
    }
}
