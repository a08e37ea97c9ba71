//! The single-pass `parse` against the parser it replaced (`reference.rs`): the same
//! `Result` (every field, the head and the body, the same `ParseError`) and the same
//! on-demand header lookups, on arbitrary bytes, real messages and mutated real messages.
//! `PROPTEST_CASES` raises the 1024 cases of each property (200,000 were run once, on
//! the change).

use proptest::prelude::*;

use super::build::{real_messages, SPICE};
use super::reference;
use crate::sip::parse;

/// Header names looked up on every message that parses, compact forms and case included.
const NAMES: &[&str] = &[
    "Via",
    "v",
    "Contact",
    "m",
    "Record-Route",
    "route",
    "Call-ID",
    "I",
    "From",
    "to",
    "CSeq",
    "Content-Length",
    "l",
    "Max-Forwards",
    "subject",
    "X-Absent",
];

/// `parse` and the reference agree on `bytes`, lookups included.
fn same(bytes: &[u8]) -> Result<(), TestCaseError> {
    let new = parse(bytes);
    let old = reference::parse(bytes);
    prop_assert_eq!(new, old, "{:?}", String::from_utf8_lossy(bytes));
    if let Ok(m) = new {
        prop_assert_eq!(m.body(), old.map(|o| o.body()).unwrap_or_default());
        for &name in NAMES {
            let lines = reference::header_lines(m.head, name);
            let values: Vec<&str> = lines
                .iter()
                .flat_map(|l| reference::split_values(l))
                .collect();
            prop_assert_eq!(m.header(name), lines.first().copied(), "{}", name);
            prop_assert_eq!(
                m.header_values(name).collect::<Vec<_>>(),
                values,
                "{}",
                name
            );
        }
        let contact = reference::header_lines(m.head, "Contact")
            .iter()
            .flat_map(|l| reference::split_values(l))
            .next()
            .and_then(reference::addr_uri);
        prop_assert_eq!(m.contact_uri(), contact);
    }
    Ok(())
}

/// The messages to mutate: the tests' real messages, the fuzz target's seeds, and the
/// benchmark's INFO (docs/benchmarks.md, issue 17).
fn seeds() -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = real_messages()
        .into_iter()
        .map(String::into_bytes)
        .collect();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/sip");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("fuzz/corpus/sip")
        .map(|e| e.expect("a corpus file").path())
        .collect();
    files.sort();
    all.extend(files.iter().map(|f| std::fs::read(f).expect("a seed")));
    let mut info = b"INFO sip:edge@127.0.0.1;transport=ws SIP/2.0\r\nVia: SIP/2.0/WS bench.invalid;branch=z9hG4bKbench1\r\nMax-Forwards: 70\r\nFrom: <sip:bench1@edge.invalid>;tag=tb1\r\nTo: <sip:queue@edge.invalid>;tag=edge1\r\nCall-ID: bench-call-1\r\nCSeq: 7 INFO\r\nContact: <sip:bench1@client.invalid;transport=ws>\r\nContent-Type: text/plain\r\nContent-Length: 700\r\n\r\n".to_vec();
    info.extend([b'x'; 700]);
    all.push(info);
    all
}

/// One edit of a message: on bytes, or on a whole line.
#[derive(Debug, Clone)]
enum Edit {
    Replace(prop::sample::Index, u8),
    Delete(prop::sample::Index),
    Insert(prop::sample::Index, u8),
    Spice(prop::sample::Index, usize),
    DuplicateLine(prop::sample::Index),
    FoldLine(prop::sample::Index, bool),
    UpperLine(prop::sample::Index),
    LowerLine(prop::sample::Index),
    DeleteLine(prop::sample::Index),
    SwapLines(prop::sample::Index, prop::sample::Index),
    RemoveCr(prop::sample::Index),
    RemoveEveryCr,
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = any::<prop::sample::Index>;
    prop_oneof![
        (at(), any::<u8>()).prop_map(|(a, b)| Edit::Replace(a, b)),
        at().prop_map(Edit::Delete),
        (at(), any::<u8>()).prop_map(|(a, b)| Edit::Insert(a, b)),
        (at(), 0..SPICE.len()).prop_map(|(a, s)| Edit::Spice(a, s)),
        at().prop_map(Edit::DuplicateLine),
        (at(), any::<bool>()).prop_map(|(a, t)| Edit::FoldLine(a, t)),
        at().prop_map(Edit::UpperLine),
        at().prop_map(Edit::LowerLine),
        at().prop_map(Edit::DeleteLine),
        (at(), at()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        at().prop_map(Edit::RemoveCr),
        Just(Edit::RemoveEveryCr),
    ]
}

/// `bytes` with `edit` applied.
fn apply(bytes: Vec<u8>, edit: &Edit) -> Vec<u8> {
    let mut bytes = bytes;
    let mut lines: Vec<Vec<u8>> = bytes
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    let line = |at: &prop::sample::Index, n: usize| at.index(n.max(1));
    match edit {
        Edit::Replace(at, b) if !bytes.is_empty() => {
            let at = at.index(bytes.len());
            bytes[at] = *b;
        }
        Edit::Delete(at) if !bytes.is_empty() => {
            bytes.remove(at.index(bytes.len()));
        }
        Edit::Insert(at, b) => bytes.insert(at.index(bytes.len() + 1), *b),
        Edit::Spice(at, s) => {
            let at = at.index(bytes.len() + 1);
            bytes.splice(at..at, SPICE[*s].iter().copied());
        }
        Edit::RemoveCr(at) => {
            let crs: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] == b'\r').collect();
            if !crs.is_empty() {
                bytes.remove(crs[at.index(crs.len())]);
            }
        }
        Edit::RemoveEveryCr => bytes.retain(|&b| b != b'\r'),
        _ if lines.is_empty() => {}
        Edit::DuplicateLine(at) => {
            let i = line(at, lines.len());
            let copy = lines[i].clone();
            lines.insert(i, copy);
        }
        Edit::FoldLine(at, tab) => {
            let i = line(at, lines.len());
            lines[i].insert(0, if *tab { b'\t' } else { b' ' });
        }
        Edit::UpperLine(at) => {
            let i = line(at, lines.len());
            lines[i].make_ascii_uppercase();
        }
        Edit::LowerLine(at) => {
            let i = line(at, lines.len());
            lines[i].make_ascii_lowercase();
        }
        Edit::DeleteLine(at) => {
            lines.remove(line(at, lines.len()));
        }
        Edit::SwapLines(a, b) => {
            let n = lines.len();
            lines.swap(line(a, n), line(b, n));
        }
        _ => {}
    }
    if matches!(
        edit,
        Edit::DuplicateLine(_)
            | Edit::FoldLine(..)
            | Edit::UpperLine(_)
            | Edit::LowerLine(_)
            | Edit::DeleteLine(_)
            | Edit::SwapLines(..)
    ) {
        bytes = lines.concat();
    }
    bytes
}

/// Bytes built of the delimiters and words a SIP head is made of, and any byte.
fn sipish() -> impl Strategy<Value = Vec<u8>> {
    const WORDS: &[&[u8]] = &[
        b"INVITE sip:a@b SIP/2.0",
        b"SIP/2.0 200 OK",
        b"Via: SIP/2.0/WS h;branch=z9",
        b"v:",
        b"From:",
        b"f:",
        b"To:",
        b"t:",
        b"Call-ID:",
        b"i:",
        b"CSeq: 1 INVITE",
        b"Content-Length:",
        b"l:",
        b"Contact:",
        b"m:",
        b";tag=",
        b"<sip:x;tag=y>",
        b"\"q,\\\"\"",
        b"12",
    ];
    let piece = prop_oneof![
        (0..WORDS.len()).prop_map(|w| WORDS[w].to_vec()),
        (0..SPICE.len()).prop_map(|s| SPICE[s].to_vec()),
        any::<u8>().prop_map(|b| vec![b]),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn same_as_reference_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        same(&bytes)?;
    }

    #[test]
    fn same_as_reference_on_sip_like_bytes(bytes in sipish()) {
        same(&bytes)?;
    }

    #[test]
    fn same_as_reference_on_mutated_real_messages(
        which in any::<prop::sample::Index>(),
        edits in proptest::collection::vec(edit(), 0..8),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let seeds = seeds();
        let mut bytes = seeds[which.index(seeds.len())].clone();
        for edit in &edits {
            bytes = apply(bytes, edit);
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        same(&bytes)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// `header_param` (no longer an iterator), `split_values` and `addr_uri` (a new
    /// `find_outside`) on any header value.
    #[test]
    fn header_param_same_as_reference(bytes in sipish(), name in 0usize..4) {
        let value = String::from_utf8_lossy(&bytes);
        let name = ["tag", "branch", "TAG", "x"][name];
        prop_assert_eq!(
            crate::sip::parse::header_param(&value, name),
            reference::header_param(&value, name)
        );
        prop_assert_eq!(
            crate::sip::parse::split_values(&value).collect::<Vec<_>>(),
            reference::split_values(&value).collect::<Vec<_>>()
        );
        prop_assert_eq!(crate::sip::parse::addr_uri(&value), reference::addr_uri(&value));
    }
}

#[test]
fn same_as_reference_on_every_seed() {
    for seed in seeds() {
        same(&seed).unwrap();
        let mut lf = seed.clone();
        lf.retain(|&b| b != b'\r');
        same(&lf).unwrap();
    }
}
