//! Steps 4–7 of the flow in `hold` mode: the client's request stays pending while it
//! waits in its tenant's queue; once admitted and the edge has answered `101`, sluice
//! answers `101` with the edge's handshake headers and relays bytes both ways.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::{connect_upstream, record_admitted, refuse, Answer, ClientGone, Connect, Then};
use crate::control::SessionStop;
use crate::reject::{self, Rejection};
use crate::relay::{self, Leg, Moved};
use crate::release::Session;
use crate::upstream::UpstreamRequest;

/// Admits, dials and answers one `hold`-mode connect; the relay runs on the connection
/// once the `101` is written ([`Relay::run`]).
pub(super) async fn serve(c: Connect, upstream_req: UpstreamRequest) -> Answer {
    let tm = &*c.settings.metrics;
    let (request_id, info) = (&c.request_id, c.info);
    // If the client goes away from here on until the 101, hyper drops this future; the
    // guard still writes that connection's outcome line (and the queue ticket inside
    // `admit` takes the client out of its queue).
    let mut gone = ClientGone::new(tm, request_id, info.addr);

    // Step 4: admission. The permit moves into the Session below and is released when
    // the session ends.
    let admitted = match c.tenant.admit(&c.runtime.admission).await {
        Ok(a) => a,
        Err(rejection) => {
            gone.disarm();
            return refuse(tm, rejection, request_id, info, None).into();
        }
    };
    gone.stage = Some("upstream-handshake");
    if let Some(waited) = admitted.waited {
        tm.queue_wait(waited);
    }

    // Step 5: upstream handshake. At the drain's deadline one still under way is given
    // up.
    let connect = connect_upstream(&c.runtime, &c.tenant, request_id, &upstream_req);
    let connected = match tokio::select! {
        r = connect => r,
        () = c.runtime.control.closed() => Err((Rejection::draining(), None)),
    } {
        Ok(c) => c,
        Err((rejection, failed)) => {
            gone.disarm();
            return refuse(tm, rejection, request_id, info, failed.as_ref()).into();
        }
    };
    gone.disarm();
    record_admitted(
        tm,
        request_id,
        info,
        c.tenant_source,
        admitted.waited,
        &connected,
    );

    // Step 6: answer 101 with the upstream's handshake headers, then relay.
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *resp.headers_mut() = connected.headers;
    let headers = resp.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(reject::REQUEST_ID_HEADER, v);
    }

    let config = c.runtime.config();
    let stop = SessionStop::new(&c.runtime.control, &config.protection, None);
    let session = Session::start(
        (admitted.permit, connected.lease),
        &c.runtime.control,
        c.settings.metrics.clone(),
        c.tenant.clone(),
        c.request_id,
        info.addr,
        connected.endpoint,
    );
    let edge = connected.leg;
    Answer {
        response: resp,
        then: Some(Then::Hold(Relay {
            session,
            edge,
            stop,
        })),
    }
}

/// A `hold`-mode session whose edge is connected, waiting for its `101` to be written.
#[derive(Debug)]
pub struct Relay {
    session: Session,
    edge: Leg,
    stop: SessionStop,
}

impl Relay {
    /// Relays until either side ends, then releases the session (step 7).
    ///
    /// Not an `async fn`: its arguments would be kept in its state beside the relay's
    /// (an idle session's memory is mostly this future). The legs and the stop signal
    /// are held here once; the relay and the stop's wait borrow them.
    pub(super) fn run(self, client: Leg) -> impl std::future::Future<Output = ()> + Send {
        let Self {
            session,
            mut edge,
            mut stop,
        } = self;
        let mut client = client;
        async move {
            let moved = Moved::default();
            let stop = std::pin::pin!(stop.wait(&moved));
            let stats = relay::relay(&mut client, &mut edge, &moved, stop).await;
            // Closed before the session's end is told, as when the relay owned them.
            drop((client, edge));
            session.end(stats);
        }
    }

    /// The client left before its `101` was written.
    pub(super) fn abandon(self, why: &'static str) {
        self.session.abandon(why);
    }
}
