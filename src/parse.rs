//! Beside the flow (a leaf): small HTTP parsing helpers that the steps share.
//!
//! Small HTTP parsing helpers shared by the steps of the flow: the tokens of a
//! comma-separated header, and the parameters of a query.

use http::header::HeaderName;
use http::HeaderMap;

/// Every comma-separated token of every `name` header, trimmed, empty ones skipped.
pub fn header_tokens<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether a `name` header carries `token` (case-insensitive): [`header_tokens`]'s
/// answer, on the bytes (it runs for every connect; the `str` splitting and trimming
/// cost several times as much).
pub fn header_has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        // As header_tokens: a value that is not visible ASCII is skipped whole.
        v.to_str().is_ok()
            && v.as_bytes()
                .split(|b| *b == b',')
                .map(<[u8]>::trim_ascii)
                .any(|t| !t.is_empty() && t.eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The raw `key=value` pairs of a query whose decoded key `drop` does not refuse, in
/// order and with their exact encoding.
pub fn query_pairs_except<'a>(
    query: &'a str,
    drop: impl Fn(&str) -> bool + 'a,
) -> impl Iterator<Item = &'a str> + 'a {
    query.split('&').filter(move |pair| {
        !pair.is_empty()
            && form_urlencoded::parse(pair.as_bytes())
                .next()
                .is_none_or(|(k, _)| !drop(&k))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn tokens_and_pairs() {
        let mut h = HeaderMap::new();
        h.append("connection", "Upgrade, x-hop".parse().unwrap());
        h.append("connection", " ,keep-alive".parse().unwrap());
        let name = HeaderName::from_static("connection");
        assert_eq!(
            header_tokens(&h, &name).collect::<Vec<_>>(),
            ["Upgrade", "x-hop", "keep-alive"]
        );
        assert!(header_has_token(&h, &name, "upgrade"));
        assert!(header_has_token(&h, &name, "KEEP-ALIVE"));
        assert!(!header_has_token(&h, &name, "keep"));
        assert!(!header_has_token(&h, &name, ""));
        // The byte version agrees with header_tokens: tabs trimmed, and a value that is
        // not visible ASCII skipped whole.
        let mut odd = HeaderMap::new();
        odd.append("upgrade", "\twebsocket\t".parse().unwrap());
        odd.append(
            "connection",
            HeaderValue::from_bytes(b"upgrade, \xff").unwrap(),
        );
        let (upgrade, connection) = (HeaderName::from_static("upgrade"), name);
        assert!(header_has_token(&odd, &upgrade, "websocket"));
        assert_eq!(header_tokens(&odd, &connection).count(), 0);
        assert!(!header_has_token(&odd, &connection, "upgrade"));
        let kept: Vec<_> = query_pairs_except("a=1&&b%5F=2&c", |k| k == "b_").collect();
        assert_eq!(kept, ["a=1", "c"]);
    }
}
