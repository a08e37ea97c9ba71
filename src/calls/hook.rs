//! Beside step 6 (DESIGN.md, "SIP awareness"): the message hook that counts one session's calls.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::Message;

use super::dialog::{
    bytes, carries_more, is_challenge, looks_like_invite, reply, unavailable, Call, Held, Key,
    Stage, ABSORB_FOR, ABSORB_KEPT, BYE_WAIT, MAX_HELD_INVITE, MAX_KEPT_CANCEL, MAX_SESSION_CALLS,
};
use super::{CallGate, CallPermit, CallWait};
use crate::metrics::CallOutcome;
use crate::reject::{Reason, Rejection};
use crate::relay::messages::{Direction, MessageHook, Verdict};
use crate::sip::{self, SipMessage};

/// The message hook of a SIP session of a tenant with call limits (DESIGN.md "SIP
/// awareness").
///
/// - An initial INVITE from the client is counted when a place is free and no INVITE
///   is held; otherwise it is held (the client gets `100 Trying` at once) in the
///   tenant's queue and forwarded in order when a call ends and the pacing allows, or
///   answered `503` (`Retry-After`, `Reason: SIP;cause=503;text="call-cap"` when the
///   queue is full, `"call-queue-timeout"` after `invite_queue_timeout`; at once when
///   it is over 64 KiB, too large to keep while held). An initial INVITE with the
///   Call-ID of a call of the session is a retransmission when its CSeq and From tag
///   are the call's, else a second dialog, answered `482`.
/// - A client message with more than one SIP message in it is not forwarded (`400`).
/// - A CANCEL (with the INVITE's CSeq and From tag) of a held INVITE is answered `200`,
///   the INVITE `487`; nothing reaches the edge. A CANCEL of a forwarded INVITE is
///   passed on and ends nothing: the INVITE's final answer does, and a `2xx` that
///   crosses the CANCEL is kept from the client (it dropped the call) and ended by
///   sluice with an ACK and a BYE.
/// - The ACK for a final answer sluice sent itself is absorbed.
/// - Re-INVITEs (a To tag) and every other message pass unchanged; a message that is
///   not SIP is relayed unchanged and counted (`sluice_sip_unparsed_total`).
/// - Dropping the hook (the session ended) ends its calls and takes its held INVITEs
///   out of the queue.
pub struct CallHook {
    gate: Arc<CallGate>,
    calls: HashMap<Key, Call>,
    /// The hash key of the session's [`Key`]s.
    ids: RandomState,
    /// Messages to send next, either way (`100 Trying`, sluice's own answers, ACK and
    /// BYE, released INVITEs).
    outbox: VecDeque<(Direction, Message)>,
    /// `(Call-ID, CSeq number, sluice's To tag, until)` of INVITEs sluice answered
    /// finally itself.
    absorb: VecDeque<(Key, u32, Key, Instant)>,
    /// The relay task's waker, from its last poll.
    waker: Option<Waker>,
    /// Wakes the hook for the oldest silent call (reaper), while calls are up.
    reaper: Option<std::pin::Pin<Box<Sleep>>>,
    /// The held calls of `calls`, oldest first: polled (and released) in this order;
    /// none, nothing to poll on a wake.
    held: VecDeque<Key>,
}

impl std::fmt::Debug for CallHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallHook")
            .field("calls", &self.calls.len())
            .field("outbox", &self.outbox.len())
            .finish_non_exhaustive()
    }
}

impl CallHook {
    /// The hook of one session of the tenant whose calls `gate` counts.
    pub fn new(gate: Arc<CallGate>) -> Self {
        Self {
            gate,
            calls: HashMap::new(),
            ids: RandomState::new(),
            outbox: VecDeque::new(),
            absorb: VecDeque::new(),
            waker: None,
            reaper: None,
            held: VecDeque::new(),
        }
    }

    /// Queues `msg` to be sent `dir` and wakes the relay to send it.
    fn send(&mut self, dir: Direction, msg: Message) {
        self.outbox.push_back((dir, msg));
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }

    /// Remembers that sluice answered INVITE `(call_id, cseq)` finally, with To tag
    /// `tag`: its ACK (which names that tag, so it is no ACK of the edge's answer to
    /// another INVITE with the same Call-ID and CSeq) stays here.
    fn absorb_ack(&mut self, call_id: Key, cseq: u32, tag: &str) {
        if self.absorb.len() == ABSORB_KEPT {
            self.absorb.pop_front();
        }
        let entry = (call_id, cseq, self.key(tag), Instant::now() + ABSORB_FOR);
        self.absorb.push_back(entry);
    }

    /// The [`Key`] the hook keeps for Call-ID or tag `text`.
    fn key(&self, text: &str) -> Key {
        self.ids.hash_one(text)
    }

    /// sluice's `503` to initial INVITE `m` (sent as `msg`) with `Reason` text `why`,
    /// whose ACK it absorbs; counted `call-cap`.
    fn refuse(&mut self, m: &SipMessage<'_>, msg: &Message, why: &str, secs: u64) -> Message {
        self.gate.metrics.outcome(CallOutcome::CallCap);
        let tag = sip::new_tag();
        self.absorb_ack(self.key(m.call_id), m.cseq.number, &tag);
        reply(msg, unavailable(m, why, secs, &tag))
    }

    /// The `Retry-After` seconds of a refusal (the queue's estimate, else the queue
    /// timeout).
    fn retry_after(&self, refusal: Option<&Rejection>) -> u64 {
        refusal
            .and_then(Rejection::retry_after_secs)
            .unwrap_or_else(|| self.gate.limits().invite_queue_timeout.as_secs().max(1))
    }

    /// Polls a fresh wait once (with the relay's waker when known): an INVITE the queue
    /// refuses at once is answered at once.
    fn first_poll(&self, wait: &mut CallWait) -> Poll<Result<CallPermit, Rejection>> {
        let waker = self.waker.clone().unwrap_or_else(|| Waker::noop().clone());
        wait.as_mut().poll(&mut Context::from_waker(&waker))
    }

    /// A message from the client.
    fn client_message(&mut self, m: &SipMessage<'_>, msg: &Message) -> Verdict {
        let now = Instant::now();
        match m.method() {
            Some("INVITE") if m.to_tag.is_none() => self.initial_invite(m, msg, now),
            Some("CANCEL") => self.cancel(m, msg),
            Some("ACK") => {
                let (id, to_tag) = (self.key(m.call_id), m.to_tag.map(|t| self.key(t)));
                let absorbed = self.absorb.iter().position(|(i, n, tag, until)| {
                    *i == id && *n == m.cseq.number && to_tag == Some(*tag) && *until > now
                });
                if let Some(i) = absorbed {
                    self.absorb.remove(i);
                    return Verdict::Drop;
                }
                // The client's ACK of the 2xx: it took the call; the 2xx is kept no more.
                if let Some(Call::Up { stage, last, .. }) = self.calls.get_mut(&id) {
                    *last = now;
                    if let Stage::Confirmed { to_tag, ok } = stage {
                        if m.to_tag == Some(&**to_tag) {
                            *ok = None;
                        }
                    }
                }
                Verdict::Pass
            }
            Some("BYE") => {
                let id = self.key(m.call_id);
                if let Some(Call::Up { stage, last, .. }) = self.calls.get_mut(&id) {
                    *last = now;
                    if let Stage::Confirmed { to_tag, .. } | Stage::ClientBye { to_tag, .. } = stage
                    {
                        // The client's BYE names the edge's tag in its To.
                        if m.to_tag == Some(&**to_tag) {
                            let to_tag = std::mem::take(to_tag);
                            *stage = Stage::ClientBye {
                                cseq: m.cseq.number,
                                to_tag,
                            };
                            self.arm_reaper(now + BYE_WAIT);
                        }
                    }
                }
                Verdict::Pass
            }
            _ => {
                self.touch(self.key(m.call_id), now);
                Verdict::Pass
            }
        }
    }

    /// An INVITE without a To tag: a new call, unless its Call-ID is known already (a
    /// retransmission; a new INVITE after an authentication challenge comes after the
    /// challenge ended the first).
    fn initial_invite(&mut self, m: &SipMessage<'_>, msg: &Message, now: Instant) -> Verdict {
        let (id, from_tag) = (
            self.key(m.call_id),
            self.key(m.from_tag.unwrap_or_default()),
        );
        match self.calls.get_mut(&id) {
            // A retransmission (same CSeq, same From tag) of a held INVITE: it is
            // answered already.
            Some(Call::Held {
                cseq, from_tag: f, ..
            }) if *cseq == m.cseq.number && *f == from_tag => return Verdict::Drop,
            // Of a forwarded one: the edge answers it again.
            Some(Call::Up {
                cseq,
                from_tag: f,
                last,
                ..
            }) if *cseq == m.cseq.number && *f == from_tag => {
                *last = now;
                return Verdict::Pass;
            }
            // Another CSeq or From tag: to the edge a new dialog (RFC 3261 §12: no To
            // tag, so outside any dialog), a second call on a Call-ID counted once. It
            // cannot be counted apart (calls are known by Call-ID), so sluice refuses it
            // the way a UAS refuses a merged request (§8.2.2.2, `482`), and absorbs its
            // ACK; the call up is untouched.
            Some(_) => {
                let tag = sip::new_tag();
                self.absorb_ack(id, m.cseq.number, &tag);
                let reason = "SIP;cause=482;text=\"call-id-in-use\"";
                let loop_detected =
                    sip::response(m, 482, "Loop Detected", &tag, &[("Reason", reason)]);
                return Verdict::Answer(reply(msg, loop_detected));
            }
            None => {}
        }
        let cseq = m.cseq.number;
        if self.calls.len() >= MAX_SESSION_CALLS {
            let secs = self.retry_after(None);
            return Verdict::Answer(self.refuse(m, msg, "session-call-limit", secs));
        }
        if let Some(permit) = self.gate.try_admit() {
            self.gate.metrics.outcome(CallOutcome::Admitted);
            self.up(id, permit, cseq, from_tag, now);
            return Verdict::Pass;
        }
        if msg.len() > MAX_HELD_INVITE {
            // Too large to keep while it waits (see the constant).
            let secs = self.retry_after(None);
            return Verdict::Answer(self.refuse(m, msg, "invite-too-large", secs));
        }
        let mut wait = self.gate.admit();
        match self.first_poll(&mut wait) {
            Poll::Ready(Ok(permit)) => {
                self.gate.metrics.outcome(CallOutcome::Admitted);
                self.up(id, permit, cseq, from_tag, now);
                Verdict::Pass
            }
            Poll::Ready(Err(refusal)) => {
                let secs = self.retry_after(Some(&refusal));
                let why = CallOutcome::CallCap.as_str();
                Verdict::Answer(self.refuse(m, msg, why, secs))
            }
            Poll::Pending => {
                let trying = reply(msg, sip::response(m, 100, "Trying", "", &[]));
                self.calls.insert(
                    id,
                    Call::Held {
                        invite: msg.clone(),
                        cseq,
                        from_tag,
                        since: now,
                        wait: Held(wait),
                    },
                );
                self.held.push_back(id);
                self.send(Direction::EdgeToClient, trying);
                Verdict::Hold
            }
        }
    }

    /// Takes call `id` out of the table; an emptied table gives its memory back
    /// (a session between calls holds none).
    fn forget(&mut self, id: &Key) -> Option<Call> {
        let call = self.calls.remove(id);
        if self.calls.is_empty() {
            self.calls = HashMap::new();
        }
        call
    }

    /// Counts a call that goes to the edge now.
    fn up(&mut self, id: Key, permit: CallPermit, cseq: u32, from_tag: Key, now: Instant) {
        self.calls.insert(
            id,
            Call::Up {
                _permit: permit,
                cseq,
                from_tag,
                stage: Stage::Proceeding { cancel: None },
                last: now,
            },
        );
        self.arm_reaper(now + self.gate.limits().call_idle_timeout);
    }

    /// A CANCEL from the client. It cancels the INVITE whose CSeq number and From tag it
    /// has (RFC 3261 §9.1); any other passes on and ends nothing here (the edge answers
    /// it `481`). The From tag matters: a `200` that crosses the CANCEL is ended with an
    /// ACK and a BYE built from it, and a BYE naming another dialog would be refused by
    /// the edge, which would keep up a call sluice stops counting on that refusal.
    fn cancel(&mut self, m: &SipMessage<'_>, msg: &Message) -> Verdict {
        let now = Instant::now();
        let (id, from_tag) = (
            self.key(m.call_id),
            self.key(m.from_tag.unwrap_or_default()),
        );
        match self.calls.get_mut(&id) {
            Some(Call::Held {
                cseq, from_tag: f, ..
            }) if *cseq == m.cseq.number && *f == from_tag => {
                let Some(Call::Held { invite, since, .. }) = self.forget(&id) else {
                    unreachable!("matched as held just above");
                };
                self.held.retain(|h| *h != id);
                self.gate.metrics.outcome(CallOutcome::Cancelled);
                self.gate.metrics.queue_wait(since.elapsed());
                let tag = sip::new_tag();
                if let Some(inv) = bytes(&invite).and_then(|b| sip::parse(b).ok()) {
                    let terminated = sip::response(&inv, 487, "Request Terminated", &tag, &[]);
                    self.send(Direction::EdgeToClient, reply(&invite, terminated));
                }
                self.absorb_ack(id, m.cseq.number, &tag);
                Verdict::Answer(reply(msg, sip::response(m, 200, "OK", &tag, &[])))
            }
            Some(Call::Up {
                cseq,
                from_tag: f,
                stage,
                last,
                ..
            }) if *cseq == m.cseq.number && *f == from_tag => {
                *last = now;
                match stage {
                    Stage::Proceeding { cancel } if msg.len() <= MAX_KEPT_CANCEL => {
                        *cancel = Some(msg.clone());
                    }
                    // The 2xx went to the client, and its CANCEL came before any ACK: the
                    // two crossed on the client's leg. The client dropped the call (a UA
                    // ignores such a 2xx) and will not end it; sluice does, as for a 2xx
                    // that crossed the CANCEL on the edge's leg.
                    Stage::Confirmed { ok: Some(_), .. } => {
                        let Stage::Confirmed { ok: Some(ok), .. } = std::mem::replace(
                            stage,
                            Stage::SluiceBye {
                                cseq: m.cseq.number + 1,
                            },
                        ) else {
                            unreachable!("matched just above");
                        };
                        if let Some(parsed) = bytes(&ok).and_then(|b| sip::parse(b).ok()) {
                            self.end_crossed(msg, &parsed, &ok);
                        }
                        self.arm_reaper(now + BYE_WAIT);
                    }
                    _ => {}
                }
                Verdict::Pass
            }
            _ => Verdict::Pass,
        }
    }

    /// A message from the edge.
    fn edge_message(&mut self, m: &SipMessage<'_>, msg: &Message) -> Verdict {
        let now = Instant::now();
        let id = self.key(m.call_id);
        let Some(Call::Up {
            cseq, stage, last, ..
        }) = self.calls.get_mut(&id)
        else {
            return Verdict::Pass;
        };
        *last = now;
        let Some(code) = m.code() else {
            // A request: the edge's BYE (its From tag is the edge's tag of the dialog)
            // ends the call; the edge's own count dropped already.
            let counted = match &*stage {
                Stage::Confirmed { to_tag, .. } | Stage::ClientBye { to_tag, .. } => {
                    m.from_tag == Some(&**to_tag)
                }
                _ => false,
            };
            if m.method() == Some("BYE") && counted {
                self.forget(&id);
            }
            return Verdict::Pass;
        };
        match (m.cseq.method, &*stage) {
            ("INVITE", Stage::Proceeding { cancel }) if m.cseq.number == *cseq => {
                if code < 200 {
                    Verdict::Pass
                } else if code >= 300 {
                    self.forget(&id);
                    Verdict::Pass
                } else if let Some(cancel) = cancel.clone() {
                    // The 200 crossed the client's CANCEL: the client dropped the call
                    // and will not end it; sluice does, and keeps the 200 from it.
                    let bye_cseq = *cseq + 1;
                    *stage = Stage::SluiceBye { cseq: bye_cseq };
                    self.end_crossed(&cancel, m, msg);
                    self.arm_reaper(now + BYE_WAIT);
                    Verdict::Drop
                } else {
                    *stage = Stage::Confirmed {
                        to_tag: m.to_tag.unwrap_or_default().into(),
                        ok: (msg.len() <= MAX_KEPT_CANCEL).then(|| msg.clone()),
                    };
                    Verdict::Pass
                }
            }
            // A 200 sluice's own BYE already answers for: the client never saw it.
            ("INVITE", Stage::SluiceBye { .. }) => Verdict::Drop,
            // The BYE's final answer ends the call, but a challenge (`401`, `407`) does
            // not: the client sends the BYE again with credentials, and the edge still
            // counts the call meanwhile.
            ("BYE", Stage::ClientBye { cseq: bye, .. })
                if m.cseq.number == *bye && code >= 200 && !is_challenge(code) =>
            {
                self.forget(&id);
                Verdict::Pass
            }
            // sluice cannot answer a challenge to its own BYE: the call counts until
            // the edge ends it or `BYE_WAIT` passes.
            ("BYE", Stage::SluiceBye { cseq: bye }) if m.cseq.number == *bye => {
                if code >= 200 && !is_challenge(code) {
                    self.forget(&id);
                }
                Verdict::Drop
            }
            _ => Verdict::Pass,
        }
    }

    /// Sends the ACK and the BYE that end a `2xx` (`ok`) which crossed `cancel`.
    fn end_crossed(&mut self, cancel: &Message, ok: &SipMessage<'_>, ok_msg: &Message) {
        // The CANCEL carries what the ACK and BYE need of the INVITE: its Request-URI,
        // top Via, From, Call-ID and CSeq number (RFC 3261 §9.1).
        let Some(invite) = bytes(cancel).and_then(|b| sip::parse(b).ok()) else {
            return;
        };
        let ack = sip::ack_for_2xx(&invite, ok, &sip::new_branch());
        let bye = sip::bye_for(&invite, ok, &sip::new_branch());
        self.send(Direction::ClientToEdge, reply(ok_msg, ack));
        self.send(Direction::ClientToEdge, reply(ok_msg, bye));
    }

    /// A message of call `id`'s dialog went by.
    fn touch(&mut self, id: Key, now: Instant) {
        if let Some(Call::Up { last, .. }) = self.calls.get_mut(&id) {
            *last = now;
        }
    }

    /// Makes sure the reaper wakes by `at`. A new or earlier timer is registered at the
    /// relay task's next poll, which this wakes it for (a silent session might
    /// otherwise never poll it).
    fn arm_reaper(&mut self, at: Instant) {
        match &mut self.reaper {
            Some(sleep) if sleep.deadline() <= at => return,
            Some(sleep) => sleep.as_mut().reset(at),
            None => self.reaper = Some(Box::pin(tokio::time::sleep_until(at))),
        }
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }

    /// Ends the calls silent for `call_idle_timeout`, and sets the reaper for the next.
    fn reap(&mut self, cx: &mut Context<'_>) {
        let Some(sleep) = &mut self.reaper else {
            return;
        };
        if sleep.as_mut().poll(cx).is_pending() {
            return;
        }
        let idle = self.gate.limits().call_idle_timeout;
        let now = Instant::now();
        let metrics = &self.gate.metrics;
        self.calls.retain(|_, call| match call.deadline(idle) {
            Some(at) if at <= now => {
                metrics.outcome(CallOutcome::Reaped);
                false
            }
            _ => true,
        });
        if self.calls.is_empty() {
            self.calls = HashMap::new();
        }
        let next = self.calls.values().filter_map(|c| c.deadline(idle)).min();
        match next {
            Some(at) => {
                let mut sleep = Box::pin(tokio::time::sleep_until(at));
                // Registers the waker for the new deadline.
                let _ = sleep.as_mut().poll(cx);
                self.reaper = Some(sleep);
            }
            None => self.reaper = None,
        }
    }

    /// Polls the held INVITEs: forwards those given a place, answers those refused.
    fn release_held(&mut self, cx: &mut Context<'_>) {
        if self.held.is_empty() {
            return;
        }
        // Oldest first, so that two INVITEs of the session released at once go out in
        // the order they came.
        let mut done = Vec::new();
        for id in &self.held {
            if let Some(Call::Held { wait, .. }) = self.calls.get_mut(id) {
                if let Poll::Ready(result) = wait.0.as_mut().poll(cx) {
                    done.push((*id, result));
                }
            }
        }
        if !done.is_empty() {
            self.held.retain(|h| !done.iter().any(|(d, _)| d == h));
        }
        for (id, result) in done {
            let Some(Call::Held {
                invite,
                cseq,
                from_tag,
                since,
                ..
            }) = self.forget(&id)
            else {
                continue;
            };
            self.gate.metrics.queue_wait(since.elapsed());
            match result {
                Ok(permit) => {
                    self.gate.metrics.outcome(CallOutcome::QueuedAdmitted);
                    let now = Instant::now();
                    self.up(id, permit, cseq, from_tag, now);
                    self.outbox.push_back((Direction::ClientToEdge, invite));
                }
                Err(refusal) => {
                    let outcome = if refusal.reason == Reason::QueueTimeout {
                        CallOutcome::CallQueueTimeout
                    } else {
                        CallOutcome::CallCap
                    };
                    self.gate.metrics.outcome(outcome);
                    let secs = self.retry_after(Some(&refusal));
                    let tag = sip::new_tag();
                    if let Some(inv) = bytes(&invite).and_then(|b| sip::parse(b).ok()) {
                        let answer =
                            reply(&invite, unavailable(&inv, outcome.as_str(), secs, &tag));
                        self.outbox.push_back((Direction::EdgeToClient, answer));
                    }
                    self.absorb_ack(id, cseq, &tag);
                }
            }
        }
    }
}

impl MessageHook for CallHook {
    fn on_message(&mut self, dir: Direction, msg: &Message) -> Verdict {
        let Some(data) = bytes(msg) else {
            return Verdict::Pass;
        };
        let m = match sip::parse(data) {
            Ok(m) => m,
            Err(_) => {
                // A keep-alive (CRLF, RFC 5626) is not a message that failed.
                if sip::is_keepalive(data) {
                    return Verdict::Pass;
                }
                self.gate.metrics.unparsed.inc();
                // What is not SIP passes unchanged (DESIGN.md), but an INVITE sluice
                // cannot read it cannot count: to an edge that reads it anyway (a CSeq
                // over 2^31, a byte that is not UTF-8 in a header), it would be a call
                // past the cap. It does not go on.
                if dir == Direction::ClientToEdge && looks_like_invite(data) {
                    return Verdict::Drop;
                }
                return Verdict::Pass;
            }
        };
        match dir {
            Direction::ClientToEdge if carries_more(&m) => {
                // A second SIP message after the first one's body (RFC 7118 §5: one per
                // WebSocket message): an edge that reads its WebSocket as a stream
                // (pjsip) would take it as a request sluice never saw, an INVITE past
                // the cap. Not forwarded; a request is answered `400`.
                match m.method() {
                    Some("ACK") | None => Verdict::Drop,
                    Some(method) => {
                        let reason = "SIP;cause=400;text=\"one SIP message per WebSocket message\"";
                        let tag = sip::new_tag();
                        let bad =
                            sip::response(&m, 400, "Bad Request", &tag, &[("Reason", reason)]);
                        // The ACK for a final answer to an INVITE is sluice's to absorb.
                        if method == "INVITE" {
                            self.absorb_ack(self.key(m.call_id), m.cseq.number, &tag);
                        }
                        Verdict::Answer(reply(msg, bad))
                    }
                }
            }
            Direction::ClientToEdge => self.client_message(&m, msg),
            Direction::EdgeToClient => self.edge_message(&m, msg),
        }
    }

    fn hold(&mut self, _dir: Direction, _msg: Message) {
        // The held INVITE was kept by `initial_invite` already (it needed it to answer).
    }

    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<(Direction, Message)> {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.waker = Some(cx.waker().clone());
        }
        if self.outbox.is_empty() {
            self.release_held(cx);
            self.reap(cx);
        }
        match self.outbox.pop_front() {
            Some(out) => Poll::Ready(out),
            None => Poll::Pending,
        }
    }
}

impl Drop for CallHook {
    fn drop(&mut self) {
        // Held INVITEs leave the queue as their waits drop; their time counts.
        for call in self.calls.values() {
            if let Call::Held { since, .. } = call {
                self.gate.metrics.queue_wait(since.elapsed());
            }
        }
    }
}
