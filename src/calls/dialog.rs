//! Beside step 6 (DESIGN.md, "SIP awareness"): what one session knows of its calls, and the bounds on it.

use std::time::Duration;

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{CallPermit, CallWait};
use crate::sip::{self, SipMessage};

/// Calls (held or up) one session may have at once; an initial INVITE beyond them is
/// answered `503` by sluice. A softphone has a few lines; the bound keeps a client from
/// growing the session's table when its tenant's calls are not capped.
pub const MAX_SESSION_CALLS: usize = 256;

/// Final answers sluice sent itself whose ACK it absorbs, per session (oldest
/// forgotten): as many as the session may have calls, so that a burst of held INVITEs
/// timing out together has every ACK absorbed.
pub(super) const ABSORB_KEPT: usize = MAX_SESSION_CALLS;

/// How long an ACK for sluice's own final answer is awaited (RFC 3261 Timer H, 64·T1).
pub(super) const ABSORB_FOR: Duration = Duration::from_secs(32);

/// How long a call waits for the final answer to a BYE before it stops counting: a BYE
/// unanswered for 64·T1 ends the dialog (RFC 3261 §15.1.1), whatever
/// `call_idle_timeout` says.
pub(super) const BYE_WAIT: Duration = Duration::from_secs(32);

/// The largest CANCEL kept for ending a `200` that crosses it. A UA's CANCEL is a few
/// hundred bytes (no body); one up to the message size limit (megabytes), kept for each
/// of a session's calls, would pin as much memory as the client liked. A larger CANCEL
/// passes on but is not kept: a `200` crossing it goes to the client as any `200`, and
/// the call counts until it ends as any call (its BYE, the edge's, the session's end or
/// the reaper).
pub(super) const MAX_KEPT_CANCEL: usize = 8 * 1024;

/// The largest INVITE sluice holds. A held INVITE is kept whole until it goes on; up to
/// the message size limit each (megabytes), the tenant's queue of them would pin
/// `invite_queue_depth` times that (200 MiB with the defaults) for the queue timeout.
/// A UA's INVITE is a few KiB, a WebRTC one with many ICE candidates some tens; a larger
/// one that would be held is answered `503` (`call-cap`) at once instead.
pub(super) const MAX_HELD_INVITE: usize = 64 * 1024;

/// What the hook keeps of a Call-ID or a tag the client chose: a hash with a key of the
/// session's own, so that a call costs the same few bytes however long the client made
/// them (up to the message size limit, megabytes: 256 calls of a session, each with its
/// Call-ID, From tag and absorbed ACKs, kept as text, could pin a gigabyte). Equal
/// strings have equal keys; two different ones of one session colliding is a 2^-64
/// chance the client cannot aim at (it does not know the hash key).
pub(super) type Key = u64;

/// One call of the session, by its Call-ID's [`Key`].
#[derive(Debug)]
pub(super) enum Call {
    /// Its initial INVITE waits in the tenant's queue (the client got `100 Trying`).
    Held {
        invite: Message,
        cseq: u32,
        /// The INVITE's From tag (with `cseq`, what tells its retransmissions and its
        /// CANCEL from another dialog's requests with the same Call-ID).
        from_tag: Key,
        since: Instant,
        wait: Held,
    },
    /// Forwarded and counted.
    Up {
        _permit: CallPermit,
        /// The initial INVITE's CSeq number.
        cseq: u32,
        /// The initial INVITE's From tag.
        from_tag: Key,
        stage: Stage,
        /// The last message of its dialog, either way (the reaper's clock).
        last: Instant,
    },
}

impl Call {
    /// When it stops counting unless a message of its dialog comes first: silent for
    /// `idle`, or its BYE unanswered for [`BYE_WAIT`]; `None` while held (the queue
    /// times it out).
    pub(super) fn deadline(&self, idle: Duration) -> Option<Instant> {
        match self {
            Self::Held { .. } => None,
            Self::Up { last, stage, .. } => Some(match stage {
                Stage::ClientBye { .. } | Stage::SluiceBye { .. } => *last + idle.min(BYE_WAIT),
                _ => *last + idle,
            }),
        }
    }
}

/// Whether a message that did not parse starts (after any empty lines) as an INVITE.
pub(super) fn looks_like_invite(data: &[u8]) -> bool {
    let start = data.iter().position(|&b| b != b'\r' && b != b'\n');
    start.is_some_and(|at| data[at..].starts_with(b"INVITE "))
}

/// A challenge for credentials: not the end of the request it answers.
pub(super) fn is_challenge(code: u16) -> bool {
    matches!(code, 401 | 407)
}

/// The wait of a held INVITE (a wrapper so that [`Call`] can derive `Debug`).
pub(super) struct Held(pub(super) CallWait);

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Held")
    }
}

/// Where a counted call is.
#[derive(Debug)]
pub(super) enum Stage {
    /// Waiting for the INVITE's final answer; `cancel` is the client's CANCEL of it, if
    /// one was sent (what sluice needs to end a `200` that crosses it).
    Proceeding { cancel: Option<Message> },
    /// Answered `2xx`: up until a BYE. `to_tag` is the edge's tag of the dialog that
    /// counts: a BYE of another (forked) dialog of the same INVITE ends nothing.
    /// `ok` is the `2xx` until the client's ACK of it passes (at most
    /// [`MAX_KEPT_CANCEL`] bytes): a CANCEL that arrives first crossed it on the
    /// client's leg, and sluice ends the call with it.
    Confirmed {
        to_tag: Box<str>,
        ok: Option<Message>,
    },
    /// The client sent BYE (this CSeq number): counted until its final answer.
    ClientBye { cseq: u32, to_tag: Box<str> },
    /// sluice sent ACK and BYE for a `200` that crossed the client's CANCEL: counted
    /// until the edge answers that BYE, which the client never sees.
    SluiceBye { cseq: u32 },
}

/// The same kind of message as `like` (text or binary), carrying `text`.
pub(super) fn reply(like: &Message, text: String) -> Message {
    match like {
        Message::Binary(_) => Message::binary(text.into_bytes()),
        _ => Message::text(text),
    }
}

/// The bytes of a data message.
pub(super) fn bytes(msg: &Message) -> Option<&[u8]> {
    match msg {
        Message::Text(t) => Some(t.as_bytes()),
        Message::Binary(b) => Some(b),
        _ => None,
    }
}

/// Whether `m` has more than whitespace after the end its Content-Length gives its
/// body: another SIP message in the same WebSocket message. (Without a Content-Length
/// the body is the rest of the message, and nothing comes after it.)
pub(super) fn carries_more(m: &SipMessage<'_>) -> bool {
    m.content_length.is_some_and(|length| {
        m.body()
            .get(length..)
            .is_some_and(|rest| !rest.iter().all(u8::is_ascii_whitespace))
    })
}

/// sluice's `503` to an INVITE it will not forward, with To tag `tag`; `why` is the
/// `Reason` text (an outcome's label, or a bound of the session's).
pub(super) fn unavailable(
    invite: &SipMessage<'_>,
    why: &str,
    retry_after: u64,
    tag: &str,
) -> String {
    let reason = format!("SIP;cause=503;text=\"{why}\"");
    sip::response(
        invite,
        503,
        "Service Unavailable",
        tag,
        &[
            ("Retry-After", &retry_after.to_string()),
            ("Reason", &reason),
        ],
    )
}
