//! Entry: the simulator's call server: one SIP session's calls, their timers, the call cap.
//!
//! Each SIP session keeps its calls ([`Calls`], by Call-ID). An initial INVITE (no To
//! tag) takes a place under its organisation's call cap or is answered `503` with
//! `Retry-After`; one that fits is answered `100 Trying` and `180 Ringing` at once and
//! `200 OK` (Contact, SDP answer) after `call_answer_delay`. A CANCEL while it rings
//! ends it with `487`; one after the `200` is answered `200` and ends nothing (the 200
//! crossed the CANCEL). A call ends with a BYE from the client, the edge's own BYE
//! after `call_hangup_after`, or the session's end: its place ([`CallSlot`]) is given
//! back when the call is dropped, so exactly once. The timers are deadlines the session
//! loop sleeps until ([`serve`]): a closed session leaves none behind.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::sip::{contact, register_ok, sdp_answer, Dialog, ALLOW};
use super::{org_mut, Sim, CALL_RETRY_AFTER_S, INVITE_ORDER_KEPT};
use crate::tools::sip_lines::{tag, Echo, SipMessage};

/// Calls one session may hold at once (bounded memory). Beyond, an INVITE is answered
/// `503` and counted nowhere: it is a guard, not one of the edge's limits.
const MAX_CALLS_PER_SESSION: usize = 1000;

#[derive(Debug, Clone, Copy)]
enum State {
    /// `180` sent; the `200` goes at `answer_at`.
    Ringing { answer_at: Instant },
    /// `200` sent; the edge hangs up at `hangup_at`, if set.
    Up { hangup_at: Option<Instant> },
}

#[derive(Debug)]
struct Call {
    /// The INVITE's CSeq number (a CANCEL names it).
    cseq: u32,
    /// The edge's To tag for this dialog.
    to_tag: String,
    /// The INVITE's lines with the edge's tag, for its responses.
    echo: Echo,
    dialog: Dialog,
    state: State,
    /// The SDP session id of the answer.
    sdp_session: u64,
    /// Its place under the organisation's call cap, given back when the call is dropped.
    _slot: CallSlot,
}

impl Call {
    fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Ringing { answer_at } => Some(answer_at),
            State::Up { hangup_at } => hangup_at,
        }
    }
}

/// One SIP session's calls.
#[derive(Debug)]
pub(super) struct Calls {
    sim: Arc<Sim>,
    org: String,
    calls: HashMap<String, Call>,
}

fn fresh_tag() -> String {
    format!("edgesim{:012x}", rand::random::<u64>() >> 16)
}

/// An answer without a dialog of its own (`400`, `405`, `481`, …).
fn plain(req: &SipMessage<'_>, status: &str, extra: &[String]) -> String {
    Echo::of(req, Some("edgesim"), false).response(status, extra, None)
}

impl Calls {
    pub(super) fn new(sim: Arc<Sim>, org: String) -> Self {
        Self {
            sim,
            org,
            calls: HashMap::new(),
        }
    }

    /// When the next timer (an answer, a hang-up) is due.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.calls.values().filter_map(Call::deadline).min()
    }

    /// The answers to one message from the client (none to responses and ACKs).
    pub(super) fn on_text(&mut self, text: &str, now: Instant) -> Vec<String> {
        let Some(msg) = SipMessage::parse(text) else {
            return Vec::new();
        };
        // Responses (the client's 200 to the edge's BYE) are absorbed.
        let Some((method, _)) = msg.request() else {
            return Vec::new();
        };
        let ids = msg.call_id().zip(msg.cseq().map(|(n, _)| n));
        match (method, ids) {
            ("ACK", _) => Vec::new(),
            ("REGISTER", _) => vec![register_ok(&msg)],
            ("OPTIONS", _) => vec![plain(
                &msg,
                "200 OK",
                &[format!("Allow: {ALLOW}"), "Accept: application/sdp".into()],
            )],
            ("INVITE" | "CANCEL" | "BYE", None) => vec![plain(&msg, "400 Bad Request", &[])],
            ("INVITE", Some((id, cseq))) => {
                if msg.header("to").and_then(tag).is_some() {
                    self.reinvite(&msg, id)
                } else {
                    self.invite(&msg, id, cseq, now)
                }
            }
            ("CANCEL", Some((id, cseq))) => self.cancel(&msg, id, cseq),
            ("BYE", Some((id, _))) => self.bye(&msg, id),
            _ => vec![plain(
                &msg,
                "405 Method Not Allowed",
                &[format!("Allow: {ALLOW}")],
            )],
        }
    }

    /// The messages of the timers due at `now`: `200 OK`s of ringing calls, the edge's
    /// BYEs of calls up for `call_hangup_after`.
    pub(super) fn on_timer(&mut self, now: Instant) -> Vec<String> {
        let mut due: Vec<(Instant, String)> = self
            .calls
            .iter()
            .filter_map(|(id, c)| c.deadline().filter(|d| *d <= now).map(|d| (d, id.clone())))
            .collect();
        due.sort();
        let mut out = Vec::new();
        for (_, id) in due {
            match self.calls.get(&id).map(|c| c.state) {
                Some(State::Ringing { .. }) => out.extend(self.answer(&id, now)),
                Some(State::Up { .. }) => {
                    if let Some(call) = self.calls.remove(&id) {
                        // The call ends as the BYE leaves; the client's 200 is absorbed.
                        self.sim.count_call(&self.org, CallEvent::ByeFromEdge);
                        out.push(call.dialog.bye(self.sim.addr, 1));
                    }
                }
                None => {}
            }
        }
        out
    }

    fn invite(&mut self, msg: &SipMessage<'_>, id: &str, cseq: u32, now: Instant) -> Vec<String> {
        if self.calls.contains_key(id) {
            // A second initial INVITE of a live call (RFC 3261 §8.2.2.2: merged).
            return vec![plain(msg, "482 Loop Detected", &[])];
        }
        let retry_after = [format!("Retry-After: {CALL_RETRY_AFTER_S}")];
        if self.calls.len() >= MAX_CALLS_PER_SESSION {
            return vec![plain(msg, "503 Service Unavailable", &retry_after)];
        }
        let Some(slot) = self.sim.admit_call(&self.org, id) else {
            return vec![plain(msg, "503 Service Unavailable", &retry_after)];
        };
        let to_tag = fresh_tag();
        let echo = Echo::of(msg, Some(&to_tag), true);
        let out = vec![
            Echo::of(msg, None, false).response("100 Trying", &[], None),
            echo.response("180 Ringing", &[contact(self.sim.addr)], None),
        ];
        let call = Call {
            cseq,
            dialog: Dialog::of(msg, &to_tag),
            to_tag,
            echo,
            state: State::Ringing {
                answer_at: now + self.sim.config.call_answer_delay,
            },
            sdp_session: rand::random::<u64>() >> 1,
            _slot: slot,
        };
        self.calls.insert(id.to_owned(), call);
        if self.sim.config.call_answer_delay.is_zero() {
            return out.into_iter().chain(self.answer(id, now)).collect();
        }
        out
    }

    /// Answers the ringing call `id`: `200 OK` with Contact and SDP.
    fn answer(&mut self, id: &str, now: Instant) -> Option<String> {
        let call = self.calls.get_mut(id)?;
        call.state = State::Up {
            hangup_at: self.sim.config.call_hangup_after.map(|d| now + d),
        };
        let sdp = sdp_answer(self.sim.addr, call.sdp_session);
        let ok = call
            .echo
            .response("200 OK", &[contact(self.sim.addr)], Some(&sdp));
        self.sim.count_call(&self.org, CallEvent::Answered);
        Some(ok)
    }

    fn reinvite(&mut self, msg: &SipMessage<'_>, id: &str) -> Vec<String> {
        match self.calls.get(id).map(|c| (c.state, c.sdp_session)) {
            Some((State::Up { .. }, session)) => {
                let sdp = sdp_answer(self.sim.addr, session);
                vec![Echo::of(msg, None, true).response(
                    "200 OK",
                    &[contact(self.sim.addr)],
                    Some(&sdp),
                )]
            }
            Some((State::Ringing { .. }, _)) => vec![plain(msg, "491 Request Pending", &[])],
            None => vec![plain(msg, "481 Call/Transaction Does Not Exist", &[])],
        }
    }

    fn cancel(&mut self, msg: &SipMessage<'_>, id: &str, cseq: u32) -> Vec<String> {
        self.sim.count_call(&self.org, CallEvent::Cancel);
        let Some(call) = self.calls.get(id).filter(|c| c.cseq == cseq) else {
            return vec![plain(msg, "481 Call/Transaction Does Not Exist", &[])];
        };
        let ok = Echo::of(msg, Some(&call.to_tag), false).response("200 OK", &[], None);
        if let State::Up { .. } = call.state {
            // The 200 crossed the CANCEL: the call stays up until a BYE.
            return vec![ok];
        }
        let Some(call) = self.calls.remove(id) else {
            return vec![ok];
        };
        self.sim.count_call(&self.org, CallEvent::Cancelled);
        vec![ok, call.echo.response("487 Request Terminated", &[], None)]
    }

    fn bye(&mut self, msg: &SipMessage<'_>, id: &str) -> Vec<String> {
        let Some(call) = self.calls.remove(id) else {
            self.sim.count_call(&self.org, CallEvent::ByeUnknown);
            return vec![plain(msg, "481 Call/Transaction Does Not Exist", &[])];
        };
        self.sim.count_call(&self.org, CallEvent::ByeFromClient);
        let mut out = vec![Echo::of(msg, Some(&call.to_tag), false).response("200 OK", &[], None)];
        if let State::Ringing { .. } = call.state {
            // A BYE in an early dialog: the INVITE is answered 487 (RFC 3261 §15.1.2).
            self.sim.count_call(&self.org, CallEvent::Cancelled);
            out.push(call.echo.response("487 Request Terminated", &[], None));
        }
        out
    }
}

// === impl Sim: call accounting ===

impl Sim {
    /// An initial INVITE `call_id` of a session of `org`: its place under the call cap,
    /// or `None` over the cap (counted refused).
    pub(super) fn admit_call(self: &Arc<Self>, org: &str, call_id: &str) -> Option<CallSlot> {
        let cap = self.config.org_max_calls;
        let mut state = self.lock();
        let state = &mut *state;
        if state.invite_order.len() == INVITE_ORDER_KEPT {
            state.invite_order.pop_front();
        }
        state.invite_order.push_back(call_id.to_owned());
        state.stats.calls.invites += 1;
        let mut org_calls = org_mut(&mut state.orgs, org).map(|o| &mut o.stats.calls);
        if let Some(c) = org_calls.as_deref_mut() {
            c.invites += 1;
        }
        let over = org_calls
            .as_deref()
            .is_some_and(|c| cap > 0 && c.calls_active >= cap);
        for c in org_calls.into_iter().chain([&mut state.stats.calls]) {
            if over {
                c.calls_refused += 1;
            } else {
                c.calls_active += 1;
                c.calls_peak = c.calls_peak.max(c.calls_active);
            }
        }
        (!over).then(|| CallSlot {
            sim: self.clone(),
            org: org.to_owned(),
        })
    }

    /// Counts `event` of a call of `org`.
    pub(super) fn count_call(&self, org: &str, event: CallEvent) {
        let mut state = self.lock();
        let state = &mut *state;
        let org_calls = org_mut(&mut state.orgs, org).map(|o| &mut o.stats.calls);
        for c in org_calls.into_iter().chain([&mut state.stats.calls]) {
            let n = match event {
                CallEvent::Answered => &mut c.calls_answered,
                CallEvent::Cancel => &mut c.cancels,
                CallEvent::Cancelled => &mut c.calls_cancelled,
                CallEvent::ByeFromClient => &mut c.byes_from_client,
                CallEvent::ByeFromEdge => &mut c.byes_from_edge,
                CallEvent::ByeUnknown => &mut c.byes_unknown,
            };
            *n += 1;
        }
    }

    /// The end of a call held by `admit_call`.
    fn call_ended(&self, org: &str) {
        let mut state = self.lock();
        let state = &mut *state;
        let org_calls = org_mut(&mut state.orgs, org).map(|o| &mut o.stats.calls);
        for c in org_calls.into_iter().chain([&mut state.stats.calls]) {
            c.calls_active -= 1;
        }
    }
}

/// What happened to a call, counted in [`CallStats`].
#[derive(Debug, Clone, Copy)]
pub(super) enum CallEvent {
    Answered,
    Cancel,
    Cancelled,
    ByeFromClient,
    ByeFromEdge,
    ByeUnknown,
}

/// Holds a call's place under its organisation's call cap; gives it back once, when
/// dropped (the call ended, or its session did).
#[derive(Debug)]
pub(super) struct CallSlot {
    sim: Arc<Sim>,
    org: String,
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.sim.call_ended(&self.org);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Serves one SIP session until the client closes it or the connection ends; the
/// caller then drops `calls`, which gives their places back.
pub(super) async fn serve<S>(ws: &mut WebSocketStream<S>, calls: &mut Calls)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let wake = calls.next_deadline();
        let out = tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => calls.on_text(t.as_str(), Instant::now()),
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => continue,
            },
            () = sleep_until(wake) => calls.on_timer(Instant::now()),
        };
        for text in out {
            if ws.send(Message::text(text)).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::tools::edge_sim::{Org, SessionMode, SimConfig, State};

    fn sim(max_calls: u32, hangup: Option<Duration>) -> Arc<Sim> {
        let mut state = State::default();
        state.orgs.insert("acme".into(), Org::default());
        Arc::new(Sim {
            config: SimConfig {
                mode: SessionMode::Sip,
                org_max_calls: max_calls,
                call_answer_delay: Duration::from_millis(100),
                call_hangup_after: hangup,
                ..SimConfig::default()
            },
            addr: "127.0.0.1:7001".parse().unwrap(),
            state: Mutex::new(state),
        })
    }

    fn invite(call: &str) -> String {
        format!(
            "INVITE sip:q@edge SIP/2.0\r\nVia: SIP/2.0/WS p;branch=z9hG4bK{call}\r\nFrom: <sip:a@p>;tag=f{call}\r\n\
             To: <sip:q@edge>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:a@p;transport=ws>\r\n\r\n"
        )
    }

    fn starts(out: &[String]) -> Vec<&str> {
        out.iter()
            .map(|m| m.split("\r\n").next().unwrap())
            .collect()
    }

    #[test]
    fn the_timers_answer_then_hang_up_and_dropping_the_session_frees_its_calls() {
        let sim = sim(2, Some(Duration::from_secs(1)));
        let mut calls = Calls::new(sim.clone(), "acme".into());
        let t0 = Instant::now();
        let out = calls.on_text(&invite("a"), t0);
        assert_eq!(starts(&out), ["SIP/2.0 100 Trying", "SIP/2.0 180 Ringing"]);
        assert_eq!(calls.next_deadline(), Some(t0 + Duration::from_millis(100)));
        assert!(calls.on_timer(t0 + Duration::from_millis(99)).is_empty());
        let out = calls.on_timer(t0 + Duration::from_millis(100));
        assert_eq!(starts(&out), ["SIP/2.0 200 OK"]);
        let hangup = t0 + Duration::from_millis(1100);
        assert_eq!(calls.next_deadline(), Some(hangup));
        calls.on_text(&invite("b"), t0);
        let refused = calls.on_text(&invite("c"), t0);
        assert_eq!(starts(&refused), ["SIP/2.0 503 Service Unavailable"]);
        assert!(refused[0].contains("\r\nRetry-After: 5\r\n"));
        let out = calls.on_timer(hangup);
        // b is answered (its 200 was due), a hung up by the edge.
        assert_eq!(
            starts(&out),
            ["SIP/2.0 200 OK", "BYE sip:a@p;transport=ws SIP/2.0"]
        );
        let s = sim.stats();
        assert_eq!(
            (
                s.calls.calls_active,
                s.calls.byes_from_edge,
                s.calls.calls_refused
            ),
            (1, 1, 1)
        );
        assert_eq!(s.orgs["acme"].calls.calls_peak, 2);
        drop(calls);
        let s = sim.stats();
        assert_eq!(
            (s.calls.calls_active, s.orgs["acme"].calls.calls_active),
            (0, 0)
        );
        assert_eq!(s.invite_order, ["a", "b", "c"]);
    }

    #[test]
    fn ack_responses_and_garbage_are_absorbed_and_unknown_methods_get_405() {
        let mut calls = Calls::new(sim(0, None), "acme".into());
        let now = Instant::now();
        assert!(calls
            .on_text(
                "ACK sip:q SIP/2.0\r\nCall-ID: x\r\nCSeq: 1 ACK\r\n\r\n",
                now
            )
            .is_empty());
        assert!(calls
            .on_text("SIP/2.0 200 OK\r\nCall-ID: x\r\nCSeq: 1 BYE\r\n\r\n", now)
            .is_empty());
        assert!(calls.on_text("not sip at all", now).is_empty());
        let out = calls.on_text(
            "INFO sip:q SIP/2.0\r\nCall-ID: x\r\nCSeq: 2 INFO\r\n\r\n",
            now,
        );
        assert_eq!(starts(&out), ["SIP/2.0 405 Method Not Allowed"]);
        let out = calls.on_text("INVITE sip:q SIP/2.0\r\nVia: SIP/2.0/WS p\r\n\r\n", now);
        assert_eq!(starts(&out), ["SIP/2.0 400 Bad Request"]);
    }
}
