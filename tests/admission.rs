//! Admission through a real sluice and a real WebSocket edge on loopback (DESIGN.md
//! flow step 4): pacing, the session cap, queue limits, clients that leave the queue,
//! fairness at the edge ceiling, and permits that always come back.
//!
//! The edge records the arrival time and tenant of every handshake and the most
//! sessions it ever had open. Times are real: assertions are counts, orders and generous
//! ratios, never tight wall-clock limits.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::{
    close, config, connect, connect_ok, reason, tenant, wait_until, Client, ConfigBuilder, Edge,
    EdgeLimits, Proxy,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// An edge and sluice on `config` (its tenants and `[edge]`; the edge is its upstream).
async fn setup(config: ConfigBuilder) -> (Edge, Proxy) {
    let edge = support::edge().await;
    let proxy = config.upstream(&edge.url(false)).start().await;
    (edge, proxy)
}

fn queued(proxy: &Proxy, tenant: &str) -> u32 {
    proxy.admission.tenant_load(tenant).unwrap().queued
}

/// Clients of `tenant` numbered `0..n` (query `i`), each started only once sluice has
/// taken the previous one in (it is at the edge or in the queue), so that arrival order
/// is the numbering. Each task returns its client once connected.
async fn arrive_in_order(
    edge: &Edge,
    proxy: &Proxy,
    tenant: &str,
    n: usize,
) -> Vec<JoinHandle<Client>> {
    let before = edge.requests().len();
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = proxy.url(&format!("/t/{tenant}/?i={i}"));
        tasks.push(tokio::spawn(async move { connect_ok(&url, &[]).await }));
        wait_until("the client to arrive", async || {
            edge.requests().len() - before + queued(proxy, tenant) as usize > i
        })
        .await;
    }
    tasks
}

/// The `i` of each handshake the edge saw, in order of arrival.
fn edge_order(edge: &Edge) -> Vec<usize> {
    edge.requests()
        .iter()
        .map(|r| r.query("i").unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn a_spike_reaches_the_edge_paced_and_in_arrival_order() {
    let (edge, proxy) = setup(
        config().tenant(
            tenant("lab")
                .max_sessions(1000)
                .handshake_rate(20.0)
                .handshake_burst(5)
                .queue_depth(200)
                .queue_timeout(Duration::from_secs(60)),
        ),
    )
    .await;
    let tasks = arrive_in_order(&edge, &proxy, "lab", 100).await;
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    assert_eq!(edge_order(&edge), (0..100).collect::<Vec<_>>());
    // In every window [t_i, t_j] the edge saw at most 5 + 20·w handshakes, plus one of
    // scheduling slack.
    let times: Vec<Instant> = edge.requests().iter().map(|r| r.at).collect();
    for i in 0..times.len() {
        for j in i..times.len() {
            let w = (times[j] - times[i]).as_secs_f64();
            let seen = (j - i + 1) as f64;
            assert!(
                seen <= 5.0 + 20.0 * w + 1.0,
                "{seen} handshakes in {w:.3} s (from #{i} to #{j})"
            );
        }
    }
    // And it was paced, not merely late: about 95 intervals of 50 ms after the burst.
    let span = (*times.last().unwrap() - times[0]).as_secs_f64();
    assert!((4.5..30.0).contains(&span), "took {span:.2} s");
    drop(clients);
}

#[tokio::test]
async fn the_edge_never_sees_more_than_the_cap_and_waiters_go_in_order() {
    let (edge, proxy) = setup(
        config().tenant(
            tenant("lab")
                .max_sessions(10)
                .handshake_rate(1000.0)
                .handshake_burst(100),
        ),
    )
    .await;
    let tasks = arrive_in_order(&edge, &proxy, "lab", 30).await;
    let mut tasks = tasks.into_iter();
    let mut open: Vec<Client> = Vec::new();
    for t in tasks.by_ref().take(10) {
        open.push(t.await.unwrap());
    }
    assert_eq!(queued(&proxy, "lab"), 20);
    // Close the oldest session; the next waiter in line takes its place.
    for (k, t) in tasks.enumerate() {
        close(open.remove(0)).await;
        open.push(t.await.unwrap());
        assert_eq!(edge.requests().len(), 11 + k);
    }
    assert_eq!(edge_order(&edge), (0..30).collect::<Vec<_>>());
    assert_eq!(edge.peak.load(std::sync::atomic::Ordering::SeqCst), 10);
    drop(open);
}

#[tokio::test]
async fn a_full_queue_and_a_long_wait_are_refused_with_429() {
    let (_edge, proxy) = setup(
        config().tenant(
            tenant("lab")
                .max_sessions(10)
                .handshake_rate(1000.0)
                .handshake_burst(100)
                .queue_depth(5)
                .queue_timeout(Duration::from_secs(3)),
        ),
    )
    .await;
    let url = proxy.url("/t/lab/");
    let start = Instant::now();
    let attempts: Vec<_> = (0..16)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let result = connect(&url, &[]).await;
                (result, start.elapsed())
            })
        })
        .collect();
    let (mut ok, mut full, mut timeout) = (Vec::new(), 0, 0);
    for a in attempts {
        match a.await.unwrap() {
            (Ok((ws, _)), _) => ok.push(ws),
            (Err(tokio_tungstenite::tungstenite::Error::Http(resp)), after) => {
                assert_eq!(resp.status(), 429);
                let retry_after: u64 = resp.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry_after >= 1);
                match reason(&resp) {
                    "queue-full" => {
                        full += 1;
                        assert!(after < Duration::from_secs(3), "refused at once");
                    }
                    "queue-timeout" => {
                        timeout += 1;
                        assert!(after >= Duration::from_secs(3), "after queue_timeout");
                    }
                    other => panic!("unexpected reason {other}"),
                }
            }
            (Err(e), _) => panic!("{e}"),
        }
    }
    assert_eq!((ok.len(), full, timeout), (10, 1, 5));
    assert_eq!(queued(&proxy, "lab"), 0);
}

#[tokio::test]
async fn clients_that_hang_up_while_queued_leave_at_once_and_take_nothing() {
    let (edge, proxy) = setup(
        config().tenant(
            tenant("lab")
                .max_sessions(1)
                .queue_timeout(Duration::from_secs(60)),
        ),
    )
    .await;
    let holder = connect_ok(&proxy.url("/t/lab/?i=0"), &[]).await;
    let mut hangers = Vec::new();
    for _ in 0..50 {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(
            b"GET /t/lab/?i=99 HTTP/1.1\r\nHost: sluice\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
        hangers.push(tcp);
    }
    wait_until("50 queued", async || queued(&proxy, "lab") == 50).await;
    drop(hangers);
    let hung_up = Instant::now();
    wait_until("the queue to empty", async || queued(&proxy, "lab") == 0).await;
    // sluice notices each hang-up as soon as its socket reports it; the bound is only
    // generous for a loaded machine.
    assert!(
        hung_up.elapsed() < Duration::from_secs(1),
        "{:?}",
        hung_up.elapsed()
    );
    // Nothing is held for them: the holder's slot is the only one taken.
    assert_eq!(proxy.admission.tenant_load("lab").unwrap().live, 1);
    // The slot frees; the next real client goes straight in.
    close(holder).await;
    let started = Instant::now();
    let mut next = connect_ok(&proxy.url("/t/lab/?i=1"), &[]).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    next.send(Message::text("hi")).await.unwrap();
    assert_eq!(
        edge_order(&edge),
        [0, 1],
        "no hung-up client reached the edge"
    );
}

/// Connects a client of `tenant` and closes it at once; returns how long the connect
/// waited.
async fn connect_briefly(url: String) -> Duration {
    let started = Instant::now();
    let connected = tokio::time::timeout(
        Duration::from_secs(60),
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    .expect("admitted within 60 s");
    let (ws, _) = connected.unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let waited = started.elapsed();
    close(ws).await;
    waited
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
async fn a_flooding_tenant_does_not_starve_a_quiet_one_at_the_edge_ceiling() {
    let limits = |name: &str| {
        tenant(name)
            .handshake_rate(1000.0)
            .handshake_burst(100)
            .queue_depth(1000)
            .queue_timeout(Duration::from_secs(90))
    };
    let (edge, proxy) = setup(
        config()
            .edge_limits(EdgeLimits::rate(20.0, 1))
            .tenant(limits("a"))
            .tenant(limits("b")),
    )
    .await;
    let spawn = |tenant: &str, n: usize| -> Vec<JoinHandle<Duration>> {
        (0..n)
            .map(|_| tokio::spawn(connect_briefly(proxy.url(&format!("/t/{tenant}/")))))
            .collect()
    };
    let a = spawn("a", 400);
    // b comes once all of a's flood is in: at the edge or queued behind its ceiling.
    wait_until("a's 400 clients to arrive", async || {
        edge.requests().len() + queued(&proxy, "a") as usize >= 400
    })
    .await;
    let b = spawn("b", 20);
    let mut wb = Vec::new();
    for t in b {
        wb.push(t.await.unwrap());
    }
    let a_left_when_b_done = queued(&proxy, "a");
    let mut wa = Vec::new();
    for t in a {
        wa.push(t.await.unwrap());
    }
    let (mb, ma) = (median(wb), median(wa));
    assert!(
        mb * 4 < ma,
        "b's median wait {mb:?} should be a small fraction of a's {ma:?}"
    );
    assert!(
        a_left_when_b_done > 200,
        "b was done long before a's backlog drained ({a_left_when_b_done} of a still queued)"
    );
}

#[tokio::test]
async fn backlogged_tenants_share_the_edge_ceiling_by_weight() {
    let limits = |name: &str| {
        tenant(name)
            .handshake_rate(1000.0)
            .handshake_burst(100)
            .queue_depth(1000)
            .queue_timeout(Duration::from_secs(90))
    };
    let (edge, proxy) = setup(
        config()
            .edge_limits(EdgeLimits::rate(40.0, 1))
            .tenant(limits("heavy").weight(2))
            .tenant(limits("light").weight(1)),
    )
    .await;
    let mut tasks = Vec::new();
    for _ in 0..120 {
        for tenant in ["heavy", "light"] {
            tasks.push(tokio::spawn(connect_briefly(
                proxy.url(&format!("/t/{tenant}/")),
            )));
        }
    }
    // While both are backlogged (heavy's 120 take 180 turns at 2:1), count the 150 turns
    // after the first few, which raced the queue.
    wait_until("150 turns", async || edge.requests().len() >= 160).await;
    let turns: Vec<String> = edge.requests()[10..160]
        .iter()
        .map(|r| r.tenant().to_owned())
        .collect();
    let heavy = turns.iter().filter(|t| *t == "heavy").count() as f64;
    let share = heavy / turns.len() as f64;
    assert!(
        (0.6..=0.734).contains(&share),
        "heavy got {share:.3} of the turns, expected 2/3 ± 10 %"
    );
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn every_permit_comes_back_however_sessions_end() {
    const CAP: u32 = 40;
    let (edge, proxy) = setup(
        config()
            .edge_limits(EdgeLimits {
                max_sessions: Some(40),
                handshake_rate: Some(10000.0),
                handshake_burst: Some(1000),
            })
            .tenant(
                tenant("lab")
                    .max_sessions(CAP)
                    .handshake_rate(10000.0)
                    .handshake_burst(1000)
                    .queue_depth(1000)
                    .queue_timeout(Duration::from_secs(60)),
            ),
    )
    .await;
    let url = proxy.url("/t/lab/");
    let sessions: Vec<_> = (0..1000)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut ws = connect_ok(&url, &[]).await;
                support::echo(&mut ws, "hello").await;
                match i % 3 {
                    // Clean close.
                    0 => {
                        ws.close(None).await.unwrap();
                        while ws.next().await.is_some() {}
                    }
                    // Client reset: RST instead of FIN.
                    1 => {
                        if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_ref() {
                            socket2::SockRef::from(tcp)
                                .set_linger(Some(Duration::ZERO))
                                .unwrap();
                        }
                        drop(ws);
                    }
                    // The edge drops the connection.
                    _ => {
                        ws.send(Message::text("drop-me")).await.unwrap();
                        while let Some(Ok(_)) = ws.next().await {}
                    }
                }
            })
        })
        .collect();
    for s in sessions {
        s.await.unwrap();
    }
    assert_eq!(edge.requests().len(), 1000);
    wait_until("every permit back", async || {
        let t = proxy.admission.tenant_load("lab").unwrap();
        let e = proxy.admission.edge_load().unwrap();
        t.live == 0 && t.queued == 0 && e.live == 0 && e.waiting == 0
    })
    .await;
    // (The edge's own live count is not compared with the cap here: after a client
    // reset sluice frees the slot as soon as it has closed the edge leg, which the edge
    // may notice a moment after the next session arrived. The cap at the edge is
    // asserted with clean closes in the concurrency test.)
    // The full cap is admittable again, and no more.
    let mut full = Vec::new();
    for _ in 0..CAP {
        full.push(connect_ok(&url, &[]).await);
    }
    let over = tokio::spawn({
        let url = url.clone();
        async move { connect(&url, &[]).await.map(|_| ()) }
    });
    wait_until("the next one queued", async || queued(&proxy, "lab") == 1).await;
    close(full.remove(0)).await;
    over.await.unwrap().expect("admitted once a session ended");
}
