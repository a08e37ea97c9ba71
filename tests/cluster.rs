//! Several replicas enforce one set of limits on Redis (`[cluster]`, DESIGN.md
//! "Scale-out", issue 15): real sluice servers (in-process, and one as its own process
//! to SIGKILL) against a real `redis-server` the test starts on a free loopback port,
//! in front of the recording edge.

mod support;

use support::cluster::{replica, try_connect, Got, KillOnDrop};

/// These tests run one at a time: each starts replicas, Redis and storms of clients, and
/// run together on CI's two cores they starve each other (the weights test then saw 50
/// against 23 turns where 3 : 1 is asked).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

use std::time::Duration;

use futures_util::future::join_all;
use support::redis::Redis;
use support::{connect, connect_ok, echo, edge, quoted, tenant, Edge, Serving, TenantSpec};
use tokio::time::Instant;

/// `n` replicas `r0…` with tenant `t` as `spec`.
async fn replicas(
    edge: &Edge,
    redis: &Redis,
    n: usize,
    spec: &TenantSpec,
    policy: &str,
) -> Vec<Serving> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            replica(edge, redis, &format!("r{i}"), spec.clone(), policy)
                .serve()
                .await,
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_of_10_holds_across_three_replicas() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let spec = tenant("t")
        .max_sessions(10)
        .unpaced()
        .queue_depth(100)
        .queue_timeout(Duration::from_millis(1500));
    let fleet = replicas(&edge, &redis, 3, &spec, "local-share").await;
    // 30 connects at once, spread over the three.
    let got: Vec<Got> = join_all((0..30).map(|i| {
        let url = fleet[i % 3].proxy.url(&format!("/t/t/?i={i}"));
        try_connect(url)
    }))
    .await;
    let admitted: Vec<_> = got.iter().filter(|g| g.is_ok()).collect();
    let refused: Vec<_> = got.iter().filter_map(|g| g.as_ref().err()).collect();
    assert_eq!(
        admitted.len(),
        10,
        "exactly the cap admitted; refusals: {refused:?}"
    );
    assert!(
        refused.iter().all(|r| *r == "queue-timeout"),
        "the others waited in their replica's queue, then were refused queue-timeout: {refused:?}"
    );
    assert_eq!(
        edge.peak.load(std::sync::atomic::Ordering::SeqCst),
        10,
        "never more than 10 at the edge"
    );
    // Every replica refused some and admitted some: the cap was shared, not split.
    let per_replica: Vec<u32> = fleet
        .iter()
        .map(|s| s.proxy.admission.tenant_load("t").unwrap().live)
        .collect();
    assert_eq!(per_replica.iter().sum::<u32>(), 10, "{per_replica:?}");
    for s in &fleet {
        let load = s.proxy.admission.tenant_load("t").unwrap();
        assert_eq!(
            load.cluster_live,
            Some(10),
            "each replica sees the cluster-wide count"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_rate_holds_across_replicas_in_a_storm() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let (rate, burst) = (10.0, 5u32);
    let spec = tenant("t")
        .max_sessions(1000)
        .handshake_rate(rate)
        .handshake_burst(burst)
        .queue_depth(1000)
        .queue_timeout(Duration::from_secs(8));
    let fleet = replicas(&edge, &redis, 3, &spec, "local-share").await;
    let storm = Duration::from_secs(5);
    let start = Instant::now();
    let mut clients = Vec::new();
    let mut i = 0usize;
    // 60 connects a second for 5 s, round robin: six times the rate.
    while start.elapsed() < storm {
        let url = fleet[i % 3].proxy.url(&format!("/t/t/?i={i}"));
        clients.push(tokio::spawn(async move {
            if let Ok(ws) = try_connect(url).await {
                support::close(ws).await;
            }
        }));
        i += 1;
        tokio::time::sleep(Duration::from_millis(16)).await;
    }
    for c in &clients {
        c.abort();
    }
    let times: Vec<Instant> = edge
        .requests()
        .iter()
        .map(|r| r.at)
        .filter(|at| at.saturating_duration_since(start) <= storm)
        .collect();
    let n = times.len();
    assert!(
        n as f64 >= 0.6 * (f64::from(burst) + rate * storm.as_secs_f64()),
        "the rate was used, not starved: {n} handshakes in {storm:?}"
    );
    for a in 0..n {
        for b in a..n {
            let window = times[b].saturating_duration_since(times[a]).as_secs_f64();
            let allowed = f64::from(burst) + rate * window + 1.0;
            assert!(
                (b - a + 1) as f64 <= allowed,
                "{} handshakes in {window:.3} s across 3 replicas, allowed {allowed:.1}",
                b - a + 1
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_clients_are_released_in_arrival_order_across_replicas() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let spec = tenant("t")
        .max_sessions(1)
        .unpaced()
        .queue_depth(20)
        .queue_timeout(Duration::from_secs(30));
    let fleet = replicas(&edge, &redis, 2, &spec, "local-share").await;
    let holder = connect_ok(&fleet[0].proxy.url("/t/t/?i=holder"), &[]).await;
    // Alternating arrivals on the two replicas, 100 ms apart.
    let mut waiting = Vec::new();
    for i in 0..8 {
        let url = fleet[i % 2].proxy.url(&format!("/t/t/?i={i}"));
        waiting.push(tokio::spawn(async move {
            let ws = connect_ok(&url, &[]).await;
            // Hold a moment, then give the slot to the next.
            tokio::time::sleep(Duration::from_millis(30)).await;
            support::close(ws).await;
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    support::close(holder).await;
    for w in waiting {
        tokio::time::timeout(Duration::from_secs(20), w)
            .await
            .expect("every queued client admitted in time")
            .unwrap();
    }
    let order: Vec<String> = edge
        .requests()
        .iter()
        .filter_map(|r| r.query("i"))
        .filter(|i| i != "holder")
        .collect();
    let expected: Vec<String> = (0..8).map(|i| i.to_string()).collect();
    assert_eq!(
        order, expected,
        "admitted in arrival order across the two replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_slots_come_back_within_the_lease() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let spec = tenant("t")
        .max_sessions(2)
        .unpaced()
        .queue_timeout(Duration::from_secs(15));
    // Replica k runs as its own process, to be SIGKILLed.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("k.toml");
    let port = support::free_port();
    let text = replica(&edge, &redis, "k", spec.clone(), "local-share")
        .set("listen", "address", &quoted(&format!("127.0.0.1:{port}")))
        .text();
    std::fs::write(&file, &text).unwrap();
    let mut killed = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "--config"])
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let k_url = format!("ws://127.0.0.1:{port}/t/t/");
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while held.len() < 2 {
        assert!(Instant::now() < deadline, "replica k serves");
        if let Ok((ws, _)) = connect(&k_url, &[]).await {
            held.push(ws);
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let other = replica(&edge, &redis, "a", spec, "local-share")
        .serve()
        .await;
    let url = other.proxy.url("/t/t/?i=queued");
    let queued = tokio::spawn(async move { connect_ok(&url, &[]).await });
    support::wait_until("the client queued on replica a", async || {
        other.proxy.admission.tenant_load("t").unwrap().queued == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!queued.is_finished(), "the cap holds while k lives");
    let killed_at = Instant::now();
    killed.0.kill().unwrap(); // SIGKILL
    killed.0.wait().unwrap();
    let mut ws = tokio::time::timeout(Duration::from_secs(10), queued)
        .await
        .expect("admitted after k's lease ran out")
        .unwrap();
    let waited = killed_at.elapsed();
    echo(&mut ws, "after k").await;
    assert!(
        waited < Duration::from_millis(900) + Duration::from_secs(3),
        "k's slots came back with its lease (900 ms), not later: {waited:?}"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_each_replica_keeps_its_share_and_an_empty_redis_is_refilled() {
    let _serial = SERIAL.lock().await;
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let edge = edge().await;
    let spec = tenant("t")
        .max_sessions(9)
        .unpaced()
        .queue_depth(50)
        .queue_timeout(Duration::from_millis(800));
    let fleet = replicas(&edge, &redis, 3, &spec, "local-share").await;
    // One live session per replica before Redis goes away.
    let mut live = Vec::new();
    for s in &fleet {
        live.push(connect_ok(&s.proxy.url("/t/t/?i=before"), &[]).await);
    }
    // The local share is of the replica set each last saw: let every one see all three.
    support::wait_until("every replica saw the three", async || {
        fleet.iter().all(|s| {
            s.proxy
                .shared
                .cluster
                .as_ref()
                .unwrap()
                .status()
                .replicas
                .len()
                == 3
        })
    })
    .await;
    redis.stop();
    support::wait_until("every replica's breaker opened", async || {
        fleet
            .iter()
            .all(|s| s.proxy.shared.cluster.as_ref().unwrap().status().mode == "local-share")
    })
    .await;
    for ws in &mut live {
        echo(ws, "Redis is gone, the session is not").await;
    }
    // Ten more per replica: each admits up to its share (9 / 3 = 3, one held already).
    let started = Instant::now();
    let got: Vec<Got> = join_all((0..30).map(|i| {
        let url = fleet[i % 3].proxy.url(&format!("/t/t/?i=down{i}"));
        try_connect(url)
    }))
    .await;
    let slowest = started.elapsed();
    let admitted = got.iter().filter(|g| g.is_ok()).count();
    let seen: Vec<_> = fleet
        .iter()
        .map(|s| {
            let st = s.proxy.shared.cluster.as_ref().unwrap().status();
            (
                st.replicas,
                s.proxy.admission.tenant_load("t").unwrap().live,
            )
        })
        .collect();
    assert_eq!(
        admitted, 6,
        "each replica admitted its share and no more: {seen:?}"
    );
    for s in &fleet {
        assert_eq!(s.proxy.admission.tenant_load("t").unwrap().live, 3);
    }
    assert!(edge.live.load(std::sync::atomic::Ordering::SeqCst) <= 9);
    assert!(
        slowest < Duration::from_millis(800) + Duration::from_secs(3),
        "nobody waited on the dead Redis beyond their queue_timeout: {slowest:?}"
    );
    let got_down: Vec<support::Client> = got.into_iter().filter_map(Result::ok).collect();
    // Redis comes back empty: within a heartbeat or two the counts are whole again.
    redis.restart();
    support::wait_until("the counts republished to the empty Redis", async || {
        redis_total(&redis) == 9
    })
    .await;
    support::wait_until("every replica decides on Redis again", async || {
        fleet
            .iter()
            .all(|s| s.proxy.shared.cluster.as_ref().unwrap().status().mode == "redis")
    })
    .await;
    // The cap holds: nobody else gets in, on any replica.
    let more: Vec<Got> =
        join_all((0..3).map(|i| try_connect(fleet[i].proxy.url("/t/t/?i=after")))).await;
    assert!(
        more.iter().all(|g| g.is_err()),
        "the cap of 9 holds after the refill"
    );
    drop(got_down);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_without_a_queue_is_admitted_and_refused_at_once() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let spec = tenant("t").max_sessions(2).unpaced().queue_depth(0);
    let fleet = replicas(&edge, &redis, 2, &spec, "local-share").await;
    let a = connect_ok(&fleet[0].proxy.url("/t/t/"), &[]).await;
    let b = connect_ok(&fleet[1].proxy.url("/t/t/"), &[]).await;
    let started = Instant::now();
    for s in &fleet {
        let got = try_connect(s.proxy.url("/t/t/")).await;
        assert_eq!(
            got.err().as_deref(),
            Some("queue-full"),
            "over the cap, no queue: refused"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refused after one decision, not after a queue_timeout: {:?}",
        started.elapsed()
    );
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_cap_applies_to_the_replica_that_reloaded_and_a_drain_hands_slots_over() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let spec = |cap: u32| {
        tenant("t")
            .max_sessions(cap)
            .unpaced()
            .queue_timeout(Duration::from_secs(20))
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r0.toml");
    let r0_config = |cap| {
        replica(&edge, &redis, "r0", spec(cap), "local-share")
            .drain_timeout(Duration::from_millis(500))
            .text()
    };
    std::fs::write(&file, r0_config(2)).unwrap();
    let mut r0 = support::serve_config(sluice::Config::load(&file).unwrap()).await;
    let r1 = replica(&edge, &redis, "r1", spec(2), "local-share")
        .serve()
        .await;
    let mut held = vec![
        connect_ok(&r0.proxy.url("/t/t/"), &[]).await,
        connect_ok(&r1.proxy.url("/t/t/"), &[]).await,
    ];
    // r0 reloads a cap of 3: its decisions use 3 (r1, not reloaded yet, still 2).
    std::fs::write(&file, r0_config(3)).unwrap();
    let (status, body) = support::admin_request(r0.proxy.admin, "POST", "/-/reload").await;
    assert_eq!(status, 200, "{body}");
    let r1_url = r1.proxy.url("/t/t/?i=r1");
    let on_r1 = tokio::spawn(async move { connect_ok(&r1_url, &[]).await });
    support::wait_until("r1's client queued under r1's cap of 2", async || {
        r1.proxy.admission.tenant_load("t").unwrap().queued == 1
    })
    .await;
    // r1's queued client arrived first, but r1's own cap holds it back: it does not
    // hold back r0's client, which r0's cap has room for (it waited for r1's head, up
    // to its whole queue timeout, before the caps went with the heads to Redis).
    let r0_url = r0.proxy.url("/t/t/?i=r0");
    held.push(
        tokio::time::timeout(Duration::from_secs(5), connect_ok(&r0_url, &[]))
            .await
            .expect("r0's client is not held behind r1's queued one"),
    );
    // The edge counts a session once its task runs on after the 101 it sent, which on
    // a loaded machine can be after the client has its 101 from sluice.
    let edge_live = || edge.live.load(std::sync::atomic::Ordering::SeqCst);
    support::wait_until("the edge counts r0's new session", async || {
        edge_live() >= 3
    })
    .await;
    assert_eq!(edge_live(), 3);
    assert!(!on_r1.is_finished(), "r1 still decides on its own cap of 2");
    // r0 drains: its two sessions end (the drain closes them), and their slots go to
    // r1's queued client; r0 leaves the replica set.
    r0.shutdown();
    let mut ws = tokio::time::timeout(Duration::from_secs(15), on_r1)
        .await
        .expect("r1's client admitted once r0's sessions ended")
        .unwrap();
    echo(&mut ws, "after r0's drain").await;
    r0.stopped(Duration::from_secs(30)).await;
    support::wait_until("r0 left the replica set", async || {
        r1.proxy.shared.cluster.as_ref().unwrap().status().replicas == ["r1"]
    })
    .await;
    drop(held);
}

/// Known to fail about 1 run in 95 with four busy loops on the machine's two cores
/// (47 : 22 and 42 : 27 seen; none in 95 runs with two loops). In a failing run one
/// tenant's queue got no turn at the edge for about 0.8 s while the other got 17 in a
/// row: a stall, not a loose ratio, the length of the 1 s fallback poll after a missed
/// capacity notice. Suspected, not confirmed: a heartbeat built while this replica had
/// no queue head (`is_waiting()` false) runs in Redis after the pump registered a new
/// head, and its `ZREM` from `P:w` removes that fresh head; the other replica's next
/// grant then sees no waiter and sends no notice. A fix would let a heartbeat remove only
/// a head registered before it was built (a registration counter kept in Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_weights_hold_across_replicas() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let t = |name: &str, weight: u32| {
        tenant(name)
            .unpaced()
            .weight(weight)
            .queue_depth(200)
            .queue_timeout(Duration::from_secs(20))
    };
    let mut fleet = Vec::new();
    for i in 0..2 {
        fleet.push(
            replica(&edge, &redis, &format!("r{i}"), t("w1", 1), "local-share")
                .tenant(t("w3", 3))
                .edge_limits(support::EdgeLimits::rate(25.0, 1))
                .serve()
                .await,
        );
    }
    // 100 clients of each tenant, spread over both replicas, each closing at once.
    let mut clients = Vec::new();
    for i in 0..100 {
        for name in ["w1", "w3"] {
            let url = fleet[i % 2].proxy.url(&format!("/t/{name}/?i={i}"));
            clients.push(tokio::spawn(async move {
                if let Ok(ws) = try_connect(url).await {
                    support::close(ws).await;
                }
            }));
        }
    }
    let seen = |name: &str| {
        edge.requests()
            .iter()
            .filter(|r| r.tenant() == name)
            .count()
    };
    // The turns while both tenants have clients queued: from 1 s (every client has
    // connected and waits; before, turns go to whoever arrived, about 1 : 1, and a
    // loaded machine stretches that) to 4 s, at 25 handshakes/s.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (w1_0, w3_0) = (seen("w1"), seen("w3"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (w1, w3) = (seen("w1") - w1_0, seen("w3") - w3_0);
    for c in clients {
        c.abort();
    }
    assert!(
        w1 + w3 >= 25,
        "enough turns to tell the weights apart: {w1} + {w3}"
    );
    // 3 : 1 asked; 1.7 : 1 is what equal terms between the replicas' arbiters gave.
    assert!(
        w3 * 10 >= 22 * w1,
        "weight 3 against 1 across two replicas: {w3} against {w1} handshakes"
    );
}

/// A cluster member on `redis` with an edge, a 150 ms heartbeat and no metrics, for the
/// tests that drive its scopes directly.
fn cluster_member(redis: &Redis, id: &str) -> sluice::cluster::Cluster {
    sluice::cluster::Cluster::new(
        &sluice::config::Cluster {
            redis: sluice::config::RedisTarget::Url(redis.url()),
            replica_id: id.to_owned(),
            heartbeat: Duration::from_millis(150),
            lease_ttl: Duration::from_secs(5),
            redis_timeout: Duration::from_secs(2),
            on_redis_failure: sluice::config::OnRedisFailure::Closed,
        },
        true,
        None,
    )
}

/// A `hold`-mode tenant's limits: a cap of `max_sessions`, a rate that never binds.
fn hold_limits(max_sessions: u32) -> sluice::config::Limits {
    sluice::config::Limits {
        max_sessions,
        handshake_rate: 10_000.0,
        handshake_burst: 1000,
        queue_depth: 10,
        queue_timeout: Duration::from_secs(5),
        queue_mode: sluice::config::QueueMode::Hold,
        subprotocols: Vec::new(),
        weight: 1,
        enforce: true,
    }
}

/// A head whose slot Redis granted in FIFO order keeps its place until its token: a
/// client of another replica registering meanwhile with an earlier arrival (or one
/// that only seems earlier, arrivals being converted to Redis's clock with each
/// replica's jittery offset) does not make it give back the edge turn it waited for.
/// Before, it did: under CPU load the weights test above came out 1 : 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_granted_its_slot_keeps_its_place_until_its_token() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = Redis::start() else { return };
    let member = |id: &str| cluster_member(&redis, id);
    let limits = hold_limits(10);
    let (r0, r1) = (member("r0"), member("r1"));
    assert!(r0.ready(Duration::from_secs(5)).await && r1.ready(Duration::from_secs(5)).await);
    support::wait_until("both replicas see each other", async || {
        r0.status().replicas.len() == 2 && r1.status().replicas.len() == 2
    })
    .await;
    let (t0, t1) = (
        r0.scopes().tenant("t", &limits),
        r1.scopes().tenant("t", &limits),
    );
    let now = Instant::now();
    let (later, earlier) = (
        now - Duration::from_millis(10),
        now - Duration::from_millis(20),
    );
    // r0's head asks first and is granted its slot: nobody is registered before it.
    assert!(t0.acquire_slot(Some(later)).await.unwrap());
    // r1's head arrived earlier; r0's registered head is not before it: granted too.
    assert!(t1.acquire_slot(Some(earlier)).await.unwrap());
    // r0's head comes back from the edge for its token: its place was decided.
    let token = t0.take(Instant::now(), Some(later)).await.unwrap();
    assert!(
        token.is_ok(),
        "the head granted its slot had to give it back at its token: {token:?}"
    );
    t0.release_slot();
    t1.release_slot();
    t0.refund(token.unwrap());
    t0.idle();
    t1.idle();
}

/// The sessions a replica reports (`cluster_live`, the `sluice_cluster_sessions_active`
/// gauge) leave out a slot another replica was asking for when it published its count
/// (that count includes it, so that Redis never counts one too few): before, a
/// heartbeat that went out while a pump asked at the cap made every replica report
/// cap + 1 (the three-replica cap test above saw 11 of 10 under CPU load). Replica
/// `r1` here is written into Redis as a replica publishes it: two slots, one of them
/// asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_being_asked_for_is_not_reported_as_a_session() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = Redis::start() else { return };
    let r0 = cluster_member(&redis, "r0");
    assert!(r0.ready(Duration::from_secs(5)).await);
    let now_us = match redis.cmd(&["TIME"]) {
        redis::Value::Array(t) => {
            let part = |i: usize| match &t[i] {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).parse::<i64>().unwrap(),
                other => panic!("TIME: {other:?}"),
            };
            part(0) * 1_000_000 + part(1)
        }
        other => panic!("TIME: {other:?}"),
    };
    let r1_publishes = |count: &str, version: &str, asking: bool| {
        redis.cmd(&[
            "ZADD",
            "sluice:replicas",
            &(now_us + 60_000_000).to_string(),
            "r1",
        ]);
        redis.cmd(&["HSET", "sluice:t:t:n", "r1", count]);
        redis.cmd(&["HSET", "sluice:t:t:v", "r1", &format!("r1inc:{version}")]);
        if asking {
            redis.cmd(&["HSET", "sluice:t:t:a", "r1", "1"]);
        } else {
            redis.cmd(&["HDEL", "sluice:t:t:a", "r1"]);
        }
    };
    // r1: one session, and a slot it is asking for.
    r1_publishes("2", "1", true);
    let limits = hold_limits(3);
    let t0 = r0.scopes().tenant("t", &limits);
    // Decisions count r1's asked-for slot: 2 + 1 fit the cap of 3, 2 + 2 do not.
    assert!(t0.acquire_slot(None).await.unwrap());
    assert_eq!(t0.cluster_live(), Some(2), "r0's session and r1's, granted");
    assert!(
        !t0.acquire_slot(None).await.unwrap(),
        "the cap counts r1's ask"
    );
    assert_eq!(t0.cluster_live(), Some(2), "r0's session and r1's, refused");
    // r1's ask granted: its two slots are sessions; r0's heartbeat reports them.
    r1_publishes("2", "2", false);
    support::wait_until("r0's heartbeat reports r1's granted slot", async || {
        t0.cluster_live() == Some(3)
    })
    .await;
    // r1 asks again (3 published, one asked for): r0's heartbeat reports 3, not 4.
    r1_publishes("3", "3", true);
    let beaten = Instant::now();
    while beaten.elapsed() < Duration::from_millis(500) {
        assert_eq!(
            t0.cluster_live(),
            Some(3),
            "a slot r1 is asking for reported as a session"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t0.release_slot();
    t0.idle();
}

/// The live counts of tenant `t` in Redis, all replicas.
fn redis_total(redis: &Redis) -> i64 {
    let v = redis.cmd(&["HVALS", "sluice:t:t:n"]);
    match v {
        redis::Value::Array(items) => items
            .iter()
            .map(|i| match i {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).parse().unwrap_or(0),
                redis::Value::Int(n) => *n,
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}
