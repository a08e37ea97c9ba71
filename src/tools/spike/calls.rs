//! Entry: spike's calls phase: each phone places its calls one after another over its SIP session.
//!
//! A call: INVITE with an SDP offer (its own Call-ID, From tag and branch), then wait
//! for the final answer (noting a `100 Trying`). On `2xx`: the ACK (RFC 3261 §13.2.2.4:
//! to the Contact, the INVITE's CSeq number, a new branch), hold `call_length`, BYE,
//! wait for its `200`. On a non-2xx: the ACK of the INVITE transaction (§17.1.1.3) and
//! on to the next call; a `503` is a refusal, by sluice when its `Reason` names one of
//! sluice's limits ([`PROXY_REASONS`]), by the edge otherwise. A BYE from the edge ends
//! the call early and is answered `200`. Every wait has a timeout (`call_timeout`).

use std::collections::BTreeMap;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{Quantiles, SpikeConfig};
use crate::tools::sip_lines::{param, uri, Echo, SipMessage};

/// The `Reason` texts of sluice's own `503`s (DESIGN.md "SIP awareness"): a refusal
/// carrying one was sluice's, any other the edge's.
pub const PROXY_REASONS: [&str; 2] = ["call-cap", "call-queue-timeout"];

/// The limit of sluice's that refused a `503` (its `Reason` text, one of
/// [`PROXY_REASONS`]); `None` for the edge's own.
fn proxy_reason<'a>(resp: &SipMessage<'a>) -> Option<&'a str> {
    resp.headers("reason")
        .filter_map(|r| param(r, "text"))
        .find(|t| PROXY_REASONS.contains(t))
}

/// What one phone's calls came to.
#[derive(Debug, Clone, Default)]
pub(super) struct PhoneCalls {
    placed: u64,
    established: u64,
    refused_by_edge: u64,
    refused_by_proxy: BTreeMap<String, u64>,
    failed: BTreeMap<String, u64>,
    trying: u64,
    hung_up_by_edge: u64,
    bye_failed: u64,
    /// INVITE to 200, seconds.
    setup: Vec<f64>,
    /// Retry-After of the 503s, seconds.
    retry_after: Vec<f64>,
}

/// The calls of a tenant's phones (or of all), with `--sip --calls N`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallsReport {
    /// INVITEs sent.
    pub placed: u64,
    /// Answered `2xx` (and ACKed).
    pub established: u64,
    /// Answered `503` in all (`refused_by_edge` plus `refused_by_proxy`).
    pub refused: u64,
    /// Answered `503` by the edge (no `Reason` of sluice's).
    pub refused_by_edge: u64,
    /// Answered `503` by sluice, by its `Reason` text (`call-cap`, `call-queue-timeout`).
    pub refused_by_proxy: BTreeMap<String, u64>,
    /// Ended otherwise: the final status (`486`, `487`, …), `timeout` (no final answer
    /// within `call_timeout`) or `closed` (the session ended first).
    pub failed: BTreeMap<String, u64>,
    /// INVITEs that saw a `100 Trying`.
    pub trying: u64,
    /// Established calls the edge hung up (its BYE) before the phone did.
    pub hung_up_by_edge: u64,
    /// The phones' BYEs not answered `200` within `call_timeout`.
    pub bye_failed: u64,
    /// From the INVITE to its `200`.
    pub setup: Quantiles,
    /// `Retry-After` of the `503`s, seconds.
    pub retry_after: Quantiles,
}

impl CallsReport {
    pub(super) fn of<'a>(phones: impl Iterator<Item = &'a PhoneCalls>) -> Self {
        let mut r = Self::default();
        let (mut setup, mut retry_after) = (Vec::new(), Vec::new());
        for p in phones {
            r.placed += p.placed;
            r.established += p.established;
            r.refused_by_edge += p.refused_by_edge;
            for (k, v) in &p.refused_by_proxy {
                *r.refused_by_proxy.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &p.failed {
                *r.failed.entry(k.clone()).or_default() += v;
            }
            r.trying += p.trying;
            r.hung_up_by_edge += p.hung_up_by_edge;
            r.bye_failed += p.bye_failed;
            setup.extend_from_slice(&p.setup);
            retry_after.extend_from_slice(&p.retry_after);
        }
        r.refused = r.refused_by_edge + r.refused_by_proxy.values().sum::<u64>();
        r.setup = Quantiles::of(setup);
        r.retry_after = Quantiles::of(retry_after);
        r
    }
}

/// A minimal WebRTC-style SDP offer (one audio stream, DTLS-SRTP).
fn sdp_offer(index: usize, n: u32) -> String {
    [
        "v=0".to_owned(),
        format!("o=phone{index} {n} 1 IN IP4 127.0.0.1"),
        "s=-".to_owned(),
        "c=IN IP4 127.0.0.1".to_owned(),
        "t=0 0".to_owned(),
        "a=group:BUNDLE 0".to_owned(),
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 101".to_owned(),
        "a=mid:0".to_owned(),
        "a=sendrecv".to_owned(),
        "a=rtcp-mux".to_owned(),
        "a=setup:actpass".to_owned(),
        "a=ice-ufrag:spk1".to_owned(),
        "a=ice-pwd:spikespikespikespikespike".to_owned(),
        "a=fingerprint:sha-256 0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9".to_owned(),
        "a=rtpmap:111 opus/48000/2".to_owned(),
        "a=rtpmap:0 PCMU/8000".to_owned(),
        "a=rtpmap:101 telephone-event/8000".to_owned(),
        String::new(),
    ]
    .join("\r\n")
}

fn hex() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// What the phone read next.
enum Read {
    Text(String),
    Timeout,
    Closed,
}

/// One phone's SIP session during its calls.
struct Phone<'a, S> {
    ws: &'a mut WebSocketStream<S>,
    index: usize,
}

impl<S> Phone<'_, S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    async fn send(&mut self, text: String) -> bool {
        self.ws.send(Message::text(text)).await.is_ok()
    }

    async fn read(&mut self, until: Instant) -> Read {
        loop {
            match tokio::time::timeout_at(until, self.ws.next()).await {
                Err(_) => return Read::Timeout,
                Ok(Some(Ok(Message::Text(t)))) => return Read::Text(t.to_string()),
                Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => return Read::Closed,
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Answers a request from the other side: a BYE `200` (returns its Call-ID), an
    /// OPTIONS `200`, anything else `405`.
    async fn answer(&mut self, req: &SipMessage<'_>) -> Option<String> {
        let (method, _) = req.request()?;
        let (status, bye) = match method {
            "ACK" => return None,
            "BYE" => ("200 OK", req.call_id().map(str::to_owned)),
            "OPTIONS" => ("200 OK", None),
            _ => ("405 Method Not Allowed", None),
        };
        let _ = self
            .send(Echo::of(req, None, false).response(status, &[], None))
            .await;
        bye
    }

    /// The final response to (`call_id`, `cseq`, `method`), answering requests meanwhile
    /// (`edge_bye` is set when the other side sent a BYE for `call_id`); `Err` with
    /// `timeout` or `closed`. `trying` is set on a `100`.
    async fn final_response(
        &mut self,
        call_id: &str,
        cseq: (u32, &str),
        until: Instant,
        trying: &mut bool,
        edge_bye: &mut bool,
    ) -> Result<String, &'static str> {
        loop {
            let text = match self.read(until).await {
                Read::Text(t) => t,
                Read::Timeout => return Err("timeout"),
                Read::Closed => return Err("closed"),
            };
            let Some(msg) = SipMessage::parse(&text) else {
                continue;
            };
            if msg.request().is_some() {
                *edge_bye |= self.answer(&msg).await.as_deref() == Some(call_id);
                continue;
            }
            if msg.call_id() != Some(call_id) || msg.cseq() != Some(cseq) {
                continue;
            }
            match msg.status() {
                Some(100) => *trying = true,
                Some(s) if s >= 200 => return Ok(text),
                _ => {}
            }
        }
    }

    /// Holds an established call until `until`; `Ok(true)` when the edge hung up first.
    async fn hold(&mut self, call_id: &str, until: Instant) -> Result<bool, &'static str> {
        loop {
            match self.read(until).await {
                Read::Timeout => return Ok(false),
                Read::Closed => return Err("closed"),
                Read::Text(text) => {
                    if let Some(msg) = SipMessage::parse(&text).filter(|m| m.request().is_some()) {
                        if self.answer(&msg).await.as_deref() == Some(call_id) {
                            return Ok(true);
                        }
                    }
                }
            }
        }
    }
}

/// The ACK of a final answer `resp` to `invite`: for a 2xx a new transaction
/// to the remote target along the Route set; else the INVITE's own branch and R-URI.
fn ack(invite: &Invite, resp: &SipMessage<'_>, success: bool) -> String {
    if success {
        invite.request("ACK", &Dialog::of(invite, resp), &hex(), 1, None)
    } else {
        let to = resp.header("to").unwrap_or("").to_owned();
        let hop = Dialog {
            target: invite.ruri.clone(),
            routes: Vec::new(),
            to,
        };
        invite.request("ACK", &hop, &invite.branch, 1, None)
    }
}

/// Where the phone's requests go and what they carry as To: before a dialog the
/// INVITE's; inside one, from its 2xx.
struct Dialog {
    /// The Request-URI: the remote target (the 2xx's Contact).
    target: String,
    /// The Route set: the 2xx's Record-Route in reverse (RFC 3261 §12.1.2).
    routes: Vec<String>,
    /// To, with the other side's tag.
    to: String,
}

impl Dialog {
    fn of(invite: &Invite, ok: &SipMessage<'_>) -> Self {
        let routes: Vec<String> = ok.headers("record-route").map(str::to_owned).collect();
        Self {
            target: ok
                .header("contact")
                .map_or(invite.ruri.as_str(), uri)
                .to_owned(),
            routes: routes.into_iter().rev().collect(),
            to: ok.header("to").unwrap_or("").to_owned(),
        }
    }
}

/// What an INVITE was sent with.
struct Invite {
    ruri: String,
    branch: String,
    from: String,
    call_id: String,
    contact: String,
    index: usize,
}

impl Invite {
    /// A request of this call to `hop` on a transaction of branch `branch`.
    fn request(
        &self,
        method: &str,
        hop: &Dialog,
        branch: &str,
        cseq: u32,
        sdp: Option<&str>,
    ) -> String {
        let (ruri, to) = (&hop.target, &hop.to);
        let mut r = format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/WSS phone{}.invalid;branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\n",
            self.index
        );
        for route in &hop.routes {
            r.push_str(&format!("Route: {route}\r\n"));
        }
        r.push_str(&format!(
            "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n",
            self.from, self.call_id
        ));
        if method == "INVITE" {
            r.push_str(&format!("Contact: {}\r\n", self.contact));
        }
        match sdp {
            Some(body) => r.push_str(&format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )),
            None => r.push_str("Content-Length: 0\r\n\r\n"),
        }
        r
    }
}

/// Places `config.calls` calls, one after another, on phone `index`'s session.
pub(super) async fn place_calls<S>(
    config: &SpikeConfig,
    ws: &mut WebSocketStream<S>,
    index: usize,
    run: &str,
) -> PhoneCalls
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut phone = Phone { ws, index };
    let mut out = PhoneCalls::default();
    for n in 0..config.calls {
        if n > 0 {
            tokio::time::sleep(config.call_gap).await;
        }
        if !place_call(config, &mut phone, run, n, &mut out).await {
            break;
        }
    }
    out
}

/// One call; `false` when the session is gone.
async fn place_call<S>(
    config: &SpikeConfig,
    phone: &mut Phone<'_, S>,
    run: &str,
    n: u32,
    out: &mut PhoneCalls,
) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let index = phone.index;
    let invite = Invite {
        ruri: "sip:queue@edge.invalid".to_owned(),
        branch: hex(),
        from: format!("<sip:phone{index}@edge.invalid>;tag={}", hex()),
        call_id: format!("{run}-{index}-{n}-{}@spike.invalid", hex()),
        contact: format!("<sip:phone{index}@phone{index}.invalid;transport=ws>"),
        index,
    };
    let first = Dialog {
        target: invite.ruri.clone(),
        routes: Vec::new(),
        to: "<sip:queue@edge.invalid>".to_owned(),
    };
    let sdp = sdp_offer(index, n);
    let text = invite.request("INVITE", &first, &invite.branch, 1, Some(&sdp));
    let sent = Instant::now();
    if !phone.send(text).await {
        return false;
    }
    out.placed += 1;
    let (mut trying, mut edge_bye) = (false, false);
    let answer = phone
        .final_response(
            &invite.call_id,
            (1, "INVITE"),
            sent + config.call_timeout,
            &mut trying,
            &mut edge_bye,
        )
        .await;
    out.trying += u64::from(trying);
    let text = match answer {
        Ok(t) => t,
        Err(why) => {
            *out.failed.entry(why.to_owned()).or_default() += 1;
            return why != "closed";
        }
    };
    let Some(resp) = SipMessage::parse(&text) else {
        return true;
    };
    let status = resp.status().unwrap_or(0);
    let success = (200..300).contains(&status);
    if !phone.send(ack(&invite, &resp, success)).await {
        return false;
    }
    if !success {
        if status == 503 {
            if let Some(s) = resp.header("retry-after").and_then(|v| {
                v.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<f64>()
                    .ok()
            }) {
                out.retry_after.push(s);
            }
            match proxy_reason(&resp) {
                Some(reason) => *out.refused_by_proxy.entry(reason.to_owned()).or_default() += 1,
                None => out.refused_by_edge += 1,
            }
        } else {
            *out.failed.entry(status.to_string()).or_default() += 1;
        }
        return true;
    }
    out.established += 1;
    out.setup.push(sent.elapsed().as_secs_f64());
    let hung_up = edge_bye || {
        match phone
            .hold(&invite.call_id, Instant::now() + config.call_length)
            .await
        {
            Ok(b) => b,
            Err(_) => return false,
        }
    };
    if hung_up {
        out.hung_up_by_edge += 1;
        return true;
    }
    let bye = invite.request("BYE", &Dialog::of(&invite, &resp), &hex(), 2, None);
    let sent = Instant::now();
    if !phone.send(bye).await {
        return false;
    }
    let (mut ignored, mut edge_bye) = (false, false);
    let answer = phone
        .final_response(
            &invite.call_id,
            (2, "BYE"),
            sent + config.call_timeout,
            &mut ignored,
            &mut edge_bye,
        )
        .await;
    match answer {
        Ok(t) if t.starts_with("SIP/2.0 2") => true,
        Ok(_) => {
            out.bye_failed += 1;
            true
        }
        Err(why) => {
            out.bye_failed += 1;
            why != "closed"
        }
    }
}

/// A short summary line of a calls report.
pub(super) fn summary(c: &CallsReport) -> String {
    let proxy = c
        .refused_by_proxy
        .iter()
        .map(|(k, v)| format!("{v}×{k}"))
        .collect::<Vec<_>>()
        .join(" ");
    let failed = c
        .failed
        .iter()
        .map(|(k, v)| format!("{v}×{k}"))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "calls: {} placed, {} established, {} refused by the edge, {} by sluice{}, failed {}; 100 Trying seen {}; hung up by the edge {}; setup p50 {} p99 {} max {}",
        c.placed,
        c.established,
        c.refused_by_edge,
        c.refused_by_proxy.values().sum::<u64>(),
        if proxy.is_empty() { String::new() } else { format!(" ({proxy})") },
        if failed.is_empty() { "0".to_owned() } else { failed },
        c.trying,
        c.hung_up_by_edge,
        super::secs(c.setup.p50),
        super::secs(c.setup.p99),
        super::secs(c.setup.max),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite() -> Invite {
        Invite {
            ruri: "sip:queue@edge.invalid".into(),
            branch: "b1".into(),
            from: "<sip:phone1@edge.invalid>;tag=f1".into(),
            call_id: "c1".into(),
            contact: "<sip:phone1@phone1.invalid;transport=ws>".into(),
            index: 1,
        }
    }

    #[test]
    fn the_ack_of_a_2xx_goes_to_the_contact_along_the_reversed_record_route() {
        let ok = "SIP/2.0 200 OK\r\nRecord-Route: <sip:p2;lr>\r\nRecord-Route: <sip:p1;lr>\r\n\
                  From: <sip:phone1@edge.invalid>;tag=f1\r\nTo: <sip:queue@edge.invalid>;tag=e9\r\n\
                  Call-ID: c1\r\nCSeq: 1 INVITE\r\nContact: <sip:edge@10.0.0.1;transport=ws>\r\n\r\n";
        let ack = super::ack(&invite(), &SipMessage::parse(ok).unwrap(), true);
        let m = SipMessage::parse(&ack).unwrap();
        assert_eq!(m.request(), Some(("ACK", "sip:edge@10.0.0.1;transport=ws")));
        assert_eq!(
            m.headers("route").collect::<Vec<_>>(),
            ["<sip:p1;lr>", "<sip:p2;lr>"]
        );
        assert_eq!(m.cseq(), Some((1, "ACK")));
        assert_eq!(m.header("to"), Some("<sip:queue@edge.invalid>;tag=e9"));
        assert!(
            !m.header("via").unwrap().ends_with("branch=z9hG4bKb1"),
            "{ack}"
        );
        // A non-2xx is ACKed on the INVITE's own transaction.
        let no = ok.replace("200 OK", "486 Busy Here");
        let ack = super::ack(&invite(), &SipMessage::parse(&no).unwrap(), false);
        let m = SipMessage::parse(&ack).unwrap();
        assert_eq!(m.request(), Some(("ACK", "sip:queue@edge.invalid")));
        assert!(
            m.header("via").unwrap().ends_with("branch=z9hG4bKb1"),
            "{ack}"
        );
        assert_eq!(m.headers("route").count(), 0);
    }

    #[test]
    fn a_503_is_sluices_when_its_reason_names_one_of_sluices_limits() {
        let with = |reason: &str| {
            format!(
                "SIP/2.0 503 Service Unavailable\r\n{reason}Call-ID: c\r\nCSeq: 1 INVITE\r\n\r\n"
            )
        };
        let text = with("Reason: SIP;cause=503;text=\"call-cap\"\r\n");
        assert_eq!(
            proxy_reason(&SipMessage::parse(&text).unwrap()),
            Some("call-cap")
        );
        let text = with("Reason: SIP;cause=503;text=\"call-queue-timeout\"\r\n");
        assert_eq!(
            proxy_reason(&SipMessage::parse(&text).unwrap()),
            Some("call-queue-timeout")
        );
        let text = with("Reason: Q.850;cause=34;text=\"no circuit\"\r\n");
        assert_eq!(proxy_reason(&SipMessage::parse(&text).unwrap()), None);
        let text = with("");
        assert_eq!(proxy_reason(&SipMessage::parse(&text).unwrap()), None);
    }
}
