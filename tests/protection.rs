//! `[protection]`: the per-IP limiter on unauthenticated attempts, the cap on
//! connections in their HTTP phase, huge heads, idle and lifetime limits on sessions,
//! and the admin listener kept off public addresses.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error, Message};

use support::{
    config_for, connect_from, connect_ok, echo, edge, proxy, reason, scrape, wait_until, NO_AUTH,
};

const KEY: &str = "protection-test-key";

/// An edge and sluice with one api-key tenant `acme` (key [`KEY`]) and this per-IP
/// limiter on unauthenticated attempts.
async fn keyed_lab(rate: f64, burst: u32) -> (support::Edge, support::Proxy) {
    let edge = edge().await;
    let hash = hex::encode(Sha256::digest(KEY.as_bytes()));
    let auth = format!("{{ kind = \"api-key\", key_sha256 = [\"{hash}\"] }}");
    let config = format!(
        "[protection]\npreauth_rate_per_ip = {rate:?}\npreauth_burst_per_ip = {burst}\n{}",
        config_for(&edge.url(false), &[("acme", &auth)])
    );
    let proxy = proxy(&config).await;
    (edge, proxy)
}

#[tokio::test]
async fn unauthenticated_attempts_from_one_ip_are_throttled_without_slowing_another_ip() {
    let (edge, proxy) = keyed_lab(5.0, 20).await;
    let url = proxy.url("/t/acme/");
    let attacker: IpAddr = "127.0.0.2".parse().unwrap();
    let fleet: IpAddr = "127.0.0.1".parse().unwrap();

    // 500 bad credentials from one address, while the fleet connects from another.
    let attack = {
        let url = url.clone();
        tokio::spawn(async move {
            let (mut unauthorized, mut throttled) = (0, 0);
            for i in 0..500 {
                let bad = format!("Bearer wrong-{i}");
                match connect_from(attacker, &url, &[("authorization", &bad)]).await {
                    Err(Error::Http(resp)) => match (resp.status().as_u16(), reason(&resp)) {
                        (401, "unauthorized") => unauthorized += 1,
                        (429, "too-many-attempts") => {
                            assert!(resp.headers().contains_key("retry-after"));
                            throttled += 1;
                        }
                        other => panic!("unexpected refusal {other:?}"),
                    },
                    other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
                }
            }
            (unauthorized, throttled)
        })
    };
    let bearer = format!("Bearer {KEY}");
    let mut fleet_sessions = Vec::new();
    for _ in 0..20 {
        let (mut ws, _) = connect_from(fleet, &url, &[("authorization", &bearer)])
            .await
            .expect("the fleet's clients are not throttled");
        echo(&mut ws, "hello").await;
        fleet_sessions.push(ws);
    }
    let (unauthorized, throttled) = attack.await.unwrap();
    assert_eq!(unauthorized + throttled, 500);
    // The burst, plus what the rate refilled while the attack ran (it takes seconds at
    // most here; 200 would need 36 s).
    assert!(
        (20..200).contains(&unauthorized),
        "{unauthorized} got through to auth"
    );
    assert!(throttled > 300, "only {throttled} throttled");
    let scrape = scrape(proxy.admin).await;
    assert_eq!(
        scrape.connects("_unknown", "too-many-attempts"),
        f64::from(throttled)
    );
    assert_eq!(edge.requests().len(), 20);
}

#[tokio::test]
async fn an_ip_out_of_attempts_is_refused_before_its_credential_is_looked_at() {
    let (edge, proxy) = keyed_lab(0.1, 3).await;
    let url = proxy.url("/t/acme/");
    let from: IpAddr = "127.0.0.3".parse().unwrap();
    let status = async |auth: &str| match connect_from(from, &url, &[("authorization", auth)]).await
    {
        Err(Error::Http(resp)) => (resp.status().as_u16(), reason(&resp).to_owned()),
        Ok(_) => (101, String::new()),
        Err(e) => panic!("{e}"),
    };
    // A good credential spends nothing.
    assert_eq!(status(&format!("Bearer {KEY}")).await.0, 101);
    for _ in 0..3 {
        assert_eq!(
            status("Bearer nope").await,
            (401, "unauthorized".to_owned())
        );
    }
    // The bucket is empty (next token in 10 s): even the good credential is refused,
    // and so is a request for a tenant that does not exist.
    assert_eq!(
        status(&format!("Bearer {KEY}")).await,
        (429, "too-many-attempts".to_owned())
    );
    let resp = support::connect_refused(&proxy.url("/t/nobody/"), &[]).await;
    assert_eq!(
        reason(&resp),
        "tenant-unknown",
        "another address is not affected"
    );
    assert_eq!(edge.requests().len(), 1);
}

#[tokio::test]
async fn connections_past_the_pending_cap_get_503_and_others_are_served_after() {
    let edge = edge().await;
    let config = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\nheader_timeout = \"30s\"\n[protection]\nmax_pending_handshakes = 2\n{}",
        config_for(&edge.url(false), &[("lab", NO_AUTH)])
    );
    let proxy = proxy(&config).await;
    // Two connections that never finish their request head hold both places.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(b"GET /t/lab/ HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        stalled.push(tcp);
    }
    wait_until("both stalled connections to hold a place", async || {
        proxy.shared.pending.in_use() == 2
    })
    .await;
    let mut third = TcpStream::connect(proxy.addr).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), third.read_to_string(&mut answer))
        .await
        .expect("answered at once")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("x-sluice-reason: overloaded"), "{answer}");

    // One stalled connection goes away: its place is free again, and the next client
    // is served at its first try.
    drop(stalled.pop());
    wait_until("the stalled connection's place back", async || {
        proxy.shared.pending.in_use() == 1
    })
    .await;
    let mut ws = connect_ok(&proxy.url("/t/lab/"), &[]).await;
    echo(&mut ws, "in").await;
}

#[tokio::test]
async fn a_one_mebibyte_head_is_refused_and_others_are_served() {
    let (edge, proxy) = support::lab("").await;
    let mut live = connect_ok(&proxy.url("/t/lab/"), &[]).await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "GET /t/lab/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(1 << 20)
    );
    let (mut rd, mut wr) = tcp.split();
    // sluice answers after max_header_bytes and closes; the rest may not be taken.
    let (_, answer) = tokio::join!(wr.write_all(head.as_bytes()), async {
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut answer)).await;
        answer
    });
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{:?}",
        answer.lines().next()
    );
    echo(&mut live, "unharmed").await;
    let mut fresh = connect_ok(&proxy.url("/t/lab/"), &[]).await;
    echo(&mut fresh, "fresh").await;
    assert_eq!(edge.requests().len(), 2);
}

#[tokio::test]
async fn idle_sessions_are_closed_and_busy_ones_are_not() {
    let edge = edge().await;
    let config = format!(
        "[protection]\nidle_timeout = \"300ms\"\n{}[tenants.acc]\nqueue_mode = \"accept\"\nauth = {NO_AUTH}\n",
        config_for(&edge.url(false), &[("lab", NO_AUTH)])
    );
    let proxy = proxy(&config).await;
    // Before the first connect: no session can have been idle 300 ms before this.
    let began = tokio::time::Instant::now();
    let mut idle_hold = connect_ok(&proxy.url("/t/lab/"), &[]).await;
    let mut idle_accept = connect_ok(&proxy.url("/t/acc/"), &[]).await;
    let mut busy = connect_ok(&proxy.url("/t/acc/"), &[]).await;
    let keep_busy = tokio::spawn(async move {
        for i in 0..12 {
            echo(&mut busy, &format!("tick {i}")).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        busy
    });
    assert_eq!(
        support::ended(&mut idle_accept).await,
        Some((CloseCode::Away, "idle-timeout".to_owned()))
    );
    // The tunnel is between frames: it gets a close frame too.
    assert_eq!(
        support::ended(&mut idle_hold).await,
        Some((CloseCode::Away, "idle-timeout".to_owned()))
    );
    assert!(began.elapsed() >= Duration::from_millis(300));
    // 1.2 s of traffic every 100 ms: never idle for 300 ms.
    let mut busy = keep_busy.await.unwrap();
    echo(&mut busy, "still here").await;
}

#[tokio::test]
async fn sessions_end_at_max_session_however_busy() {
    let edge = edge().await;
    let config = format!(
        "[protection]\nmax_session = \"500ms\"\n{}[tenants.acc]\nqueue_mode = \"accept\"\nauth = {NO_AUTH}\n",
        config_for(&edge.url(false), &[("lab", NO_AUTH)])
    );
    let proxy = proxy(&config).await;
    let mut ws = connect_ok(&proxy.url("/t/acc/"), &[]).await;
    let began = tokio::time::Instant::now();
    let close = loop {
        // The last send may fail: the session is ending.
        let _ = ws.send(Message::text("ping")).await;
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => break Some((f.code, f.reason.to_string())),
            Ok(Some(Ok(_))) => {}
            _ => break None,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(close, Some((CloseCode::Away, "max-session".to_owned())));
    assert!(began.elapsed() >= Duration::from_millis(450));
}

#[test]
fn the_admin_listener_refuses_a_public_address_without_the_flag() {
    let env = std::collections::HashMap::new();
    let base = "[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:1\"]\n[tenants.lab]\nauth = { kind = \"none\" }\n";
    let err = sluice::Config::parse(
        &format!("[admin]\naddress = \"0.0.0.0:9090\"\n{base}"),
        &env,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("admin.address") && err.contains("allow_public"),
        "{err}"
    );
    let ok = sluice::Config::parse(
        &format!("[admin]\naddress = \"0.0.0.0:9090\"\nallow_public = true\n{base}"),
        &env,
    );
    assert!(ok.is_ok());
    assert!(
        sluice::Config::parse(&format!("[admin]\naddress = \"[::1]:9090\"\n{base}"), &env).is_ok()
    );
}

/// Connects from `from` and reads what sluice writes before it closes (within 10 s:
/// the header timeout of these tests is 30 s, so an answer means one given at once).
async fn raw_answer_from(from: IpAddr, addr: std::net::SocketAddr) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut answer))
        .await
        .expect("answered at once")
        .unwrap();
    answer
}

/// A session from `from` to `url` once sluice has given back the place of a connection
/// that ended (`in_use` connections are left in their HTTP phase): served at the first
/// try.
async fn served_once_freed(
    proxy: &support::Proxy,
    in_use: usize,
    from: IpAddr,
    url: &str,
) -> support::Client {
    wait_until("the ended connection's place back", async || {
        proxy.shared.pending.in_use() == in_use
    })
    .await;
    match connect_from(from, url, &[]).await {
        Ok((ws, _)) => ws,
        Err(Error::Http(resp)) => panic!(
            "{from} was refused ({} {}) once a place was given back",
            resp.status(),
            reason(&resp)
        ),
        Err(e) => panic!("{e}"),
    }
}

/// An idle socket from `from`: connected, nothing sent.
async fn idle_from(from: IpAddr, addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    socket.connect(addr).await.unwrap()
}

#[tokio::test]
async fn idle_sockets_from_one_address_cannot_take_the_pending_pool() {
    // Eight places; from four taken on, an address gets at most two not yet
    // authenticated.
    let edge = edge().await;
    let config = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\nheader_timeout = \"30s\"\n[protection]\nmax_pending_handshakes = 8\nmax_pending_per_ip = 2\n{}[tenants.one]\nauth = {NO_AUTH}\nmax_sessions = 1\nqueue_timeout = \"30s\"\n",
        config_for(&edge.url(false), &[("lab", NO_AUTH)])
    );
    let proxy = proxy(&config).await;
    let (flooder, other): (IpAddr, IpAddr) =
        ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
    let overloaded = |answer: &str| {
        answer.starts_with("HTTP/1.1 503") && answer.contains("x-sluice-reason: overloaded")
    };

    // The attack: idle sockets from one address. Below half the pool they are
    // let in (three: sluice accepts in order, so they are counted before the next);
    // the fourth would make it half, and the address already has more than its two.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(idle_from(flooder, proxy.addr).await);
    }
    let answer = raw_answer_from(flooder, proxy.addr).await;
    assert!(overloaded(&answer), "{answer}");
    assert_eq!(
        proxy.shared.pending.in_use(),
        3,
        "the refusal took no place"
    );
    // Another address has its own share of the rest.
    let mut ws = connect_from(other, &proxy.url("/t/lab/"), &[])
        .await
        .expect("another address is served")
        .0;
    echo(&mut ws, "other").await;

    // One idle socket goes away: its place and its share are given back, once.
    drop(idle.pop());
    let mut ws = served_once_freed(&proxy, 2, flooder, &proxy.url("/t/lab/")).await;
    echo(&mut ws, "freed").await;
    drop(idle);
    wait_until("the idle sockets' places back", async || {
        proxy.shared.pending.in_use() == 0
    })
    .await;

    // A fleet behind one address: its clients authenticate and queue (hold mode: each
    // holds a pending place), and once authenticated they no longer count against the
    // address's share, so more of them queue than the share allows.
    let mut holder = connect_from(other, &proxy.url("/t/one/"), &[])
        .await
        .expect("tenant one's session")
        .0;
    let mut waiting = Vec::new();
    for n in 1..=4 {
        let url = proxy.url("/t/one/");
        waiting.push(tokio::spawn(async move {
            connect_from(flooder, &url, &[]).await
        }));
        wait_until("the client to queue", async || {
            proxy.admission.tenant_load("one").unwrap().queued == n
        })
        .await;
    }
    // Four of eight places are taken: the pool is under pressure, yet the address's
    // share is whole: two idle sockets get in, the third is refused.
    let _idle = [
        idle_from(flooder, proxy.addr).await,
        idle_from(flooder, proxy.addr).await,
    ];
    let answer = raw_answer_from(flooder, proxy.addr).await;
    assert!(overloaded(&answer), "{answer}");
    assert_eq!(proxy.admission.tenant_load("one").unwrap().queued, 4);

    // Admitted (101): a queued client gives its place back.
    holder.close(None).await.unwrap();
    let mut first = tokio::time::timeout(Duration::from_secs(10), waiting.remove(0))
        .await
        .expect("admitted in time")
        .unwrap()
        .expect("admitted")
        .0;
    echo(&mut first, "admitted").await;
    for w in waiting {
        w.abort();
    }
}
