//! An adversarial review of issue 15 (`[cluster]`, DESIGN.md "Scale-out"): hostile
//! clients and unlucky operators against several real sluice replicas on one real
//! `redis-server` (started by the test on a free loopback port), in front of the
//! recording edge. Each test asserts what a user relies on; the ones that expose a
//! defect are `#[ignore]`d with the defect in one line (run them with `--ignored`).

mod support;

use support::cluster::{replica, try_connect, Got, KillOnDrop};

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::join_all;
use support::redis::Redis;
use support::{
    admin_request, config, connect, connect_ok, echo, edge, proxy_from_file, quoted, reason,
    scrape, tenant, wait_until, EdgeLimits, Proxy,
};
use tokio::time::Instant;

fn mode(p: &Proxy) -> &'static str {
    p.shared.cluster.as_ref().unwrap().status().mode
}

async fn all_in_mode(fleet: &[&Proxy], want: &str) {
    wait_until(&format!("every replica in mode {want}"), async || {
        fleet.iter().all(|p| mode(p) == want)
    })
    .await;
}

fn queued(p: &Proxy, t: &str) -> u32 {
    p.admission.tenant_load(t).map_or(0, |l| l.queued)
}

fn live(p: &Proxy, t: &str) -> u32 {
    p.admission.tenant_load(t).map_or(0, |l| l.live)
}

/// `HGETALL key` as a map.
fn hash(redis: &Redis, key: &str) -> HashMap<String, String> {
    redis::from_redis_value(redis.cmd(&["HGETALL", key])).unwrap()
}

/// Members of a sorted set with their scores.
fn zset(redis: &Redis, key: &str) -> Vec<String> {
    redis::from_redis_value(redis.cmd(&["ZRANGE", key, "0", "-1", "WITHSCORES"])).unwrap()
}

/// Sum of the counts in `sluice:t:NAME:n`.
fn redis_total(redis: &Redis, t: &str) -> i64 {
    hash(redis, &format!("sluice:t:{t}:n"))
        .values()
        .map(|v| v.parse::<i64>().unwrap())
        .sum()
}

/// Script runs (`EVALSHA` + `EVAL`) so far, from `INFO commandstats`.
fn scripts_run(redis: &Redis) -> u64 {
    redis
        .info("commandstats")
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split(['=', ','])
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

async fn reload(p: &Proxy) -> (u16, String) {
    admin_request(p.admin, "POST", "/-/reload").await
}

// === FIFO waiters: a client that leaves must not block another replica's queue ===

/// A client queued on replica a leaves while a's pump's `ACQUIRE` is on its way to
/// Redis (here: Redis is frozen for a moment, well within `redis_timeout`). The script
/// still runs and registers a's head among the tenant's waiters, but a's pump was
/// dropped before it learnt so and never withdraws it. A later client on replica b is
/// then told `turn` on every ask (a's phantom head is "earlier", a is alive), until it
/// times out, and so would every client of the tenant on b until one reaches a.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_during_its_ask_leaves_no_phantom_waiter() {
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let spec = tenant("t")
        .max_sessions(1)
        .unpaced()
        .queue_depth(10)
        .queue_timeout(Duration::from_secs(3));
    let cfg = |id: &str| {
        replica(&edge, &redis, id, spec.clone(), "local-share")
            .set("cluster", "heartbeat", "\"3s\"")
            .set("cluster", "lease_ttl", "\"9s\"")
            .set("cluster", "redis_timeout", "\"1s\"")
    };
    let a = cfg("a").serve().await;
    let b = cfg("b").serve().await;
    all_in_mode(&[&a.proxy, &b.proxy], "redis").await;
    let holder = connect_ok(&b.proxy.url("/t/t/?i=holder"), &[]).await;
    redis.pause();
    let url = a.proxy.url("/t/t/?i=leaver");
    let leaver = tokio::spawn(try_connect(url));
    wait_until("the leaver queued on a", async || {
        queued(&a.proxy, "t") == 1
    })
    .await;
    // a's pump has sent its ACQUIRE; Redis holds it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    leaver.abort();
    wait_until("the leaver left a's queue", async || {
        queued(&a.proxy, "t") == 0
    })
    .await;
    redis.resume();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let waiters_before = zset(&redis, "sluice:t:t:w");
    // A client on b waits for the holder's slot; the holder leaves.
    let url = b.proxy.url("/t/t/?i=victim");
    let victim = tokio::spawn(try_connect(url));
    wait_until("the victim queued on b", async || {
        queued(&b.proxy, "t") == 1
    })
    .await;
    support::close(holder).await;
    let got = tokio::time::timeout(Duration::from_secs(6), victim)
        .await
        .expect("the victim got an answer")
        .unwrap();
    assert!(
        got.is_ok(),
        "the free slot went to nobody: b's client was refused {:?}; waiters in Redis after a's \
         queue emptied: {waiters_before:?}",
        got.err()
    );
}

/// Redis freezes longer than `redis_timeout`: replica a's asks time out, its breaker
/// opens and a admits its client on its share, so a's queue empties. When Redis wakes,
/// the asks that timed out (on the connection the breaker dropped) must not leave a's
/// head among the waiters: b's next client gets the free slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stall_leaves_no_phantom_waiter() {
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let spec = tenant("t")
        .max_sessions(2)
        .unpaced()
        .queue_depth(10)
        .queue_timeout(Duration::from_secs(3));
    let a = replica(&edge, &redis, "a", spec.clone(), "local-share")
        .serve()
        .await;
    let b = replica(&edge, &redis, "b", spec, "local-share")
        .serve()
        .await;
    all_in_mode(&[&a.proxy, &b.proxy], "redis").await;
    wait_until("both see two replicas", async || {
        [&a, &b].iter().all(|s| {
            s.proxy
                .shared
                .cluster
                .as_ref()
                .unwrap()
                .status()
                .replicas
                .len()
                == 2
        })
    })
    .await;
    let h1 = connect_ok(&b.proxy.url("/t/t/?i=h1"), &[]).await;
    let h2 = connect_ok(&b.proxy.url("/t/t/?i=h2"), &[]).await;
    redis.pause();
    // a's share of 2 is 1: its client gets in once the breaker opened.
    let mut on_a = tokio::time::timeout(
        Duration::from_secs(3),
        connect_ok(&a.proxy.url("/t/t/?i=a"), &[]),
    )
    .await
    .expect("admitted on a's share");
    redis.resume();
    all_in_mode(&[&a.proxy, &b.proxy], "redis").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    echo(&mut on_a, "still here").await;
    let waiters = zset(&redis, "sluice:t:t:w");
    support::close(h1).await;
    support::close(h2).await;
    // a holds 1 of 2: one more fits, on b.
    let got = try_connect(b.proxy.url("/t/t/?i=victim")).await;
    assert!(
        got.is_ok(),
        "b's client refused {:?} with a slot free; waiters in Redis though a's queue is empty: \
         {waiters:?}",
        got.err()
    );
}

/// a1 (on replica a) arrives first, b1 (on b) second, a2 (on a) third; a1 leaves. FIFO across replicas says b1 goes before
/// a2. a's pump keeps asking with the arrival of the head it started for (a1's), so a2
/// overtakes b1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_holds_when_a_replicas_head_leaves() {
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let spec = tenant("t")
        .max_sessions(1)
        .unpaced()
        .queue_depth(10)
        .queue_timeout(Duration::from_secs(10));
    let a = replica(&edge, &redis, "a", spec.clone(), "local-share")
        .serve()
        .await;
    let b = replica(&edge, &redis, "b", spec, "local-share")
        .serve()
        .await;
    all_in_mode(&[&a.proxy, &b.proxy], "redis").await;
    let holder = connect_ok(&a.proxy.url("/t/t/?i=holder"), &[]).await;
    let hold_then_close = |url: String| async move {
        let ws = connect_ok(&url, &[]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        support::close(ws).await;
    };
    let a1 = tokio::spawn(try_connect(a.proxy.url("/t/t/?i=a1")));
    wait_until("a1 queued", async || queued(&a.proxy, "t") == 1).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let b1 = tokio::spawn(hold_then_close(b.proxy.url("/t/t/?i=b1")));
    wait_until("b1 queued", async || queued(&b.proxy, "t") == 1).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let a2 = tokio::spawn(hold_then_close(a.proxy.url("/t/t/?i=a2")));
    wait_until("a2 queued", async || queued(&a.proxy, "t") == 2).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    a1.abort();
    wait_until("a1 left", async || queued(&a.proxy, "t") == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    support::close(holder).await;
    for w in [b1, a2] {
        tokio::time::timeout(Duration::from_secs(8), w)
            .await
            .expect("admitted in time")
            .unwrap();
    }
    let order: Vec<String> = edge
        .requests()
        .iter()
        .filter_map(|r| r.query("i"))
        .filter(|i| i != "holder")
        .collect();
    assert_eq!(order, ["b1", "a2"], "b1 arrived 150 ms before a2");
}

// === Counts: exact after churn, drain, reload, restart ===

/// Many clients over three replicas: admitted ones hold a moment, queued ones leave at
/// random, some time out. Afterwards every replica's count in Redis is exactly 0, the
/// waiters set is empty, every replica's cluster-wide view and gauge say 0; and the
/// Redis work stayed proportional to the connects (no loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_return_to_exactly_zero_after_churn_with_leavers() {
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let spec = tenant("t")
        .max_sessions(3)
        .unpaced()
        .queue_depth(50)
        .queue_timeout(Duration::from_millis(700));
    let mut fleet = Vec::new();
    for id in ["a", "b", "c"] {
        fleet.push(
            replica(&edge, &redis, id, spec.clone(), "local-share")
                .serve()
                .await,
        );
    }
    let proxies: Vec<&Proxy> = fleet.iter().map(|s| &s.proxy).collect();
    all_in_mode(&proxies, "redis").await;
    let before = scripts_run(&redis);
    let n = 45usize;
    let clients = (0..n).map(|i| {
        let url = fleet[i % 3].proxy.url(&format!("/t/t/?i={i}"));
        async move {
            tokio::time::sleep(Duration::from_millis((i as u64 * 37) % 600)).await;
            let patience = Duration::from_millis(50 + (i as u64 * 53) % 400);
            // Some leave while queued (the connect is dropped), the rest hold 80 ms.
            if let Ok(Ok(ws)) = tokio::time::timeout(patience, try_connect(url)).await {
                tokio::time::sleep(Duration::from_millis(80)).await;
                support::close(ws).await;
            }
        }
    });
    join_all(clients).await;
    assert!(edge.peak.load(Ordering::SeqCst) <= 3, "the cap held");
    wait_until("every replica's count back to 0 in Redis", async || {
        redis_total(&redis, "t") == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = hash(&redis, "sluice:t:t:n");
    assert!(
        counts.values().all(|v| v == "0"),
        "every count exactly 0: {counts:?}"
    );
    let waiters = zset(&redis, "sluice:t:t:w");
    assert!(waiters.is_empty(), "no waiter left behind: {waiters:?}");
    for p in &proxies {
        assert_eq!(live(p, "t"), 0);
        assert_eq!(p.admission.tenant_load("t").unwrap().cluster_live, Some(0));
        let gauge = scrape(p.admin)
            .await
            .get("sluice_cluster_sessions_active", &[("tenant", "t")]);
        assert_eq!(gauge, 0.0);
    }
    let scripts = scripts_run(&redis) - before;
    println!("redis scripts: {scripts} for {n} connects (with ~2 s of heartbeats of 3 replicas)");
    // Heartbeats: 3 replicas × ~7/s × ~2 s; then a few scripts per connect.
    assert!(
        scripts < 150 + 8 * n as u64,
        "{scripts} scripts for {n} connects"
    );
}

/// A replica drains while another queues for the tenant: the drained replica's slot
/// comes back as its session ends (its count leaves Redis, the queued client gets in at
/// once, not after `lease_ttl`), and the counts in Redis are the live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_replica_gives_its_slots_back_as_its_sessions_end() {
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let spec = tenant("t")
        .max_sessions(1)
        .unpaced()
        .queue_timeout(Duration::from_secs(10));
    let a = replica(&edge, &redis, "a", spec.clone(), "local-share")
        .serve()
        .await;
    let mut c = replica(&edge, &redis, "c", spec, "local-share")
        .drain_timeout(Duration::from_secs(10))
        .serve()
        .await;
    all_in_mode(&[&a.proxy, &c.proxy], "redis").await;
    let on_c = connect_ok(&c.proxy.url("/t/t/?i=c"), &[]).await;
    let url = a.proxy.url("/t/t/?i=a");
    let waiting = tokio::spawn(async move { connect_ok(&url, &[]).await });
    wait_until("a's client queued", async || queued(&a.proxy, "t") == 1).await;
    c.shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "c's live session still counts");
    let ended = Instant::now();
    support::close(on_c).await;
    let mut ws = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("admitted when c's session ended")
        .unwrap();
    assert!(
        ended.elapsed() < Duration::from_millis(800),
        "not after c's lease: {:?}",
        ended.elapsed()
    );
    echo(&mut ws, "in").await;
    c.stopped(Duration::from_secs(5)).await;
    wait_until("only a's count left", async || {
        hash(&redis, "sluice:t:t:n") == HashMap::from([("a".to_owned(), "1".to_owned())])
    })
    .await;
    assert_eq!(
        a.proxy.admission.tenant_load("t").unwrap().cluster_live,
        Some(1)
    );
}

/// A tenant is removed from replica a by a reload (its last session there had ended)
/// and added back by the next reload. a makes the tenant's state anew, with the same
/// incarnation and its version back at 0, and Redis keeps the older count of a's
/// previous state for it (a higher version of the same incarnation): a's new sessions
/// are invisible to the other replicas, which admit over the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_removed_and_re_added_by_reload_is_counted_again() {
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let spec = tenant("t")
        .max_sessions(1)
        .unpaced()
        .queue_timeout(Duration::from_millis(500));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.toml");
    let with_t = replica(&edge, &redis, "a", spec.clone(), "local-share").tenant(tenant("u"));
    let without_t = replica(&edge, &redis, "a", tenant("u"), "local-share");
    std::fs::write(&file, with_t.text()).unwrap();
    let a = proxy_from_file(&file).await;
    let b = replica(&edge, &redis, "b", spec, "local-share")
        .serve()
        .await;
    all_in_mode(&[&a, &b.proxy], "redis").await;
    // Some sessions on a: its count's version climbs.
    for i in 0..10 {
        let ws = connect_ok(&a.url(&format!("/t/t/?i=warm{i}")), &[]).await;
        support::close(ws).await;
        wait_until("released", async || live(&a, "t") == 0).await;
    }
    std::fs::write(&file, without_t.text()).unwrap();
    assert_eq!(reload(&a).await.0, 200);
    // The scope goes once its zero is published (a heartbeat or two).
    tokio::time::sleep(Duration::from_millis(600)).await;
    std::fs::write(&file, with_t.text()).unwrap();
    assert_eq!(reload(&a).await.0, 200);
    let mut on_a = connect_ok(&a.url("/t/t/?i=a"), &[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = hash(&redis, "sluice:t:t:n");
    let got = try_connect(b.proxy.url("/t/t/?i=b")).await;
    echo(&mut on_a, "still").await;
    assert!(
        got.is_err() && edge.peak.load(Ordering::SeqCst) <= 1,
        "cap 1, a holds 1, yet b admitted one more (edge peak {}); counts in Redis: {counts:?}",
        edge.peak.load(Ordering::SeqCst)
    );
}

/// Two replicas given the same `replica_id` (one config for all, e.g. compose
/// `replicas: 2` with a fixed `hostname:` so both are `host-1`) would overwrite each
/// other's count in Redis and double the cap. The newer process takes the id (a
/// restarted replica must, at once); the older one admits nothing new and logs why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_one_replica_id_do_not_double_the_cap() {
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let spec = tenant("t")
        .max_sessions(1)
        .unpaced()
        .queue_timeout(Duration::from_millis(500));
    let a = replica(&edge, &redis, "same", spec.clone(), "local-share")
        .serve()
        .await;
    all_in_mode(&[&a.proxy], "redis").await;
    // A second process under the same id takes it over (as a restarted replica
    // would); the first, finding its id taken, admits nothing new and says why.
    let b = replica(&edge, &redis, "same", spec, "local-share")
        .serve()
        .await;
    all_in_mode(&[&a.proxy], "replica-id-conflict").await;
    all_in_mode(&[&b.proxy], "redis").await;
    let got = try_connect(a.proxy.url("/t/t/?i=a")).await;
    assert!(
        got.is_err(),
        "the replica whose id was taken admits nothing new"
    );
    let _on_b = connect_ok(&b.proxy.url("/t/t/?i=b"), &[]).await;
    let again = try_connect(b.proxy.url("/t/t/?i=b2")).await;
    assert!(
        again.is_err(),
        "cap 1 holds (edge peak {})",
        edge.peak.load(Ordering::SeqCst)
    );
    assert!(edge.peak.load(Ordering::SeqCst) <= 1);
}

// === The [edge] ceiling across replicas ===

/// `[edge]` with `[cluster]`: the ceiling holds exactly across replicas, and below it
/// clients are admitted. Nothing is admitted at all: the edge's arbiter got its slot and
/// token from Redis (the token prefetched with the slot), then waits for
/// `ready_at() <= now` with `now` read before, while a scope holding a prefetched token
/// answers `ready_at()` with a fresh `Instant::now()`, which is always later. The
/// arbiter loops (a wake-up per timer tick) and grants no turn; every client is refused
/// `edge-capacity` after its `queue_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_ceiling_holds_across_replicas_and_admits_below_it() {
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let spec = tenant("t")
        .max_sessions(10)
        .unpaced()
        .queue_timeout(Duration::from_millis(1500));
    let limits = EdgeLimits {
        max_sessions: Some(3),
        handshake_rate: Some(100.0),
        handshake_burst: Some(10),
    };
    let a = replica(&edge, &redis, "a", spec.clone(), "local-share")
        .edge_limits(limits)
        .serve()
        .await;
    let b = replica(&edge, &redis, "b", spec, "local-share")
        .edge_limits(limits)
        .serve()
        .await;
    let fleet = [&a.proxy, &b.proxy];
    all_in_mode(&fleet, "redis").await;
    let got: Vec<Got> =
        join_all((0..6).map(|i| try_connect(fleet[i % 2].url(&format!("/t/t/?i={i}"))))).await;
    let admitted = got.iter().filter(|g| g.is_ok()).count();
    let reasons: Vec<_> = got.iter().filter_map(|g| g.as_ref().err()).collect();
    assert_eq!(
        (admitted, edge.peak.load(Ordering::SeqCst)),
        (3, 3),
        "the edge's 3 sessions used, no more; refusals: {reasons:?}"
    );
}

// === Load on Redis: no loops, no amplification, no cross-tenant harm ===

/// Two replicas with full queues of tenant x (its cap is held): the steady Redis load is
/// heartbeats plus about one ask per replica per second, not a loop of refusals waking
/// each other. A client of x that connects and leaves over and over costs a bounded
/// number of scripts per connect (at the back of a queue none; alone in its tenant's
/// queue, its pump's ask, the refused slot's publish and the withdrawal: about 3), and
/// when it stops, the load falls back. Meanwhile tenant v, on the same replicas and
/// Redis, is admitted at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_churning_tenant_costs_redis_per_connect_and_does_not_slow_another() {
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let x = tenant("x")
        .max_sessions(1)
        .unpaced()
        .queue_depth(100)
        .queue_timeout(Duration::from_secs(30));
    let v = tenant("v").max_sessions(100).unpaced();
    let y = tenant("y").max_sessions(1).unpaced();
    let a = replica(&edge, &redis, "a", x.clone(), "local-share")
        .tenant(v.clone())
        .tenant(y.clone())
        .serve()
        .await;
    let b = replica(&edge, &redis, "b", x, "local-share")
        .tenant(v)
        .tenant(y)
        .serve()
        .await;
    all_in_mode(&[&a.proxy, &b.proxy], "redis").await;
    let _holder = connect_ok(&a.proxy.url("/t/x/?i=holder"), &[]).await;
    let _holder_y = connect_ok(&b.proxy.url("/t/y/?i=holder"), &[]).await;
    let mut queued_x = Vec::new();
    for i in 0..6 {
        let s = if i % 2 == 0 { &a } else { &b };
        queued_x.push(tokio::spawn(try_connect(s.proxy.url("/t/x/?i=q"))));
    }
    wait_until("x queued on both", async || {
        queued(&a.proxy, "x") == 3 && queued(&b.proxy, "x") == 3
    })
    .await;
    // Steady state.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s0 = scripts_run(&redis);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let steady = scripts_run(&redis) - s0;
    // Heartbeats: 2 × ~6.7/s; asks: ~1/s per replica, each refusal one publish.
    assert!(steady < 60, "{steady} scripts in 2 s with nothing changing");
    // Churn: clients of x that join the queue and leave it again, one after another.
    const CHURN: u64 = 60;
    let s1 = scripts_run(&redis);
    let mut worst_v = Duration::ZERO;
    let churn = async {
        for i in 0..CHURN {
            // Half at the back of x's queue, half alone in y's (each starts a pump).
            let (tenant, behind) = if i % 4 < 2 { ("x", 3) } else { ("y", 0) };
            let s = if i % 2 == 0 { &a } else { &b };
            let c = tokio::spawn(try_connect(s.proxy.url(&format!("/t/{tenant}/?i=churn"))));
            wait_until("the churner queued", async || {
                queued(&s.proxy, tenant) == 1 + behind
            })
            .await;
            // Long enough for its pump to ask Redis (when it is the head).
            tokio::time::sleep(Duration::from_millis(5)).await;
            c.abort();
            wait_until("the churner left", async || {
                queued(&s.proxy, tenant) == behind
            })
            .await;
        }
    };
    let victim = async {
        for i in 0..10 {
            let s = if i % 2 == 0 { &a } else { &b };
            let started = Instant::now();
            let ws = connect_ok(&s.proxy.url("/t/v/?i=v"), &[]).await;
            worst_v = worst_v.max(started.elapsed());
            support::close(ws).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::join!(churn, victim);
    let churned = scripts_run(&redis) - s1;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s2 = scripts_run(&redis);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = scripts_run(&redis) - s2;
    println!(
        "redis scripts: {steady} in 2 s steady, {churned} for {CHURN} churning connects + 10 of v, \
         {after} in 1 s after; v's slowest admission {worst_v:?}"
    );
    assert!(
        churned < 60 + CHURN * 8 + 10 * 6,
        "{churned} scripts for {CHURN} churning connects and 10 of v"
    );
    assert!(after < 40, "the load fell back after the churn: {after}/s");
    assert!(
        worst_v < Duration::from_millis(500),
        "tenant v waited {worst_v:?} while x churned"
    );
    for q in queued_x {
        q.abort();
    }
}

// === Redis slow, down; the failure policies ===

/// Redis frozen (SIGSTOP), not down: connects are decided within `redis_timeout` ×
/// a few, the breaker opens, each replica admits its share, live sessions go on. After
/// Redis wakes, the counts in Redis are the true live ones, then exactly 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_bounds_latency_and_leaks_no_permit() {
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let spec = tenant("t")
        .max_sessions(4)
        .unpaced()
        .queue_depth(20)
        .queue_timeout(Duration::from_millis(800));
    let a = replica(&edge, &redis, "a", spec.clone(), "local-share")
        .serve()
        .await;
    let b = replica(&edge, &redis, "b", spec, "local-share")
        .serve()
        .await;
    let fleet = [&a.proxy, &b.proxy];
    all_in_mode(&fleet, "redis").await;
    wait_until("both see two replicas", async || {
        fleet
            .iter()
            .all(|p| p.shared.cluster.as_ref().unwrap().status().replicas.len() == 2)
    })
    .await;
    let mut held = Vec::new();
    for p in fleet {
        held.push(connect_ok(&p.url("/t/t/?i=before"), &[]).await);
    }
    redis.pause();
    let started = Instant::now();
    let got: Vec<(Got, Duration)> = join_all((0..6).map(|i| {
        let url = fleet[i % 2].url(&format!("/t/t/?i=frozen{i}"));
        async move {
            let g = try_connect(url).await;
            (g, started.elapsed())
        }
    }))
    .await;
    let admitted = got.iter().filter(|(g, _)| g.is_ok()).count();
    let slowest = got.iter().map(|(_, d)| *d).max().unwrap();
    let reasons: Vec<_> = got.iter().filter_map(|(g, _)| g.as_ref().err()).collect();
    assert_eq!(
        admitted, 2,
        "one more per replica (share 2, 1 held): {reasons:?}"
    );
    assert!(
        slowest < Duration::from_millis(800) + Duration::from_millis(700),
        "decided within queue_timeout (+ slack): {slowest:?}"
    );
    assert!(fleet.iter().all(|p| mode(p) == "local-share"));
    for ws in &mut held {
        echo(ws, "frozen Redis, live session").await;
    }
    redis.resume();
    all_in_mode(&fleet, "redis").await;
    wait_until("Redis counts the 4 live sessions", async || {
        redis_total(&redis, "t") == 4
    })
    .await;
    drop(got);
    drop(held);
    wait_until("all counts back to 0", async || {
        let counts = hash(&redis, "sluice:t:t:n");
        counts.len() == 2 && counts.values().all(|v| v == "0")
    })
    .await;
    for p in fleet {
        assert_eq!(live(p, "t"), 0);
    }
}

/// `on_redis_failure = "closed"`: with Redis gone nothing new is admitted (queued
/// clients time out), live sessions go on; with Redis back, connects are admitted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_admits_nothing_new_without_redis_and_cuts_nothing() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let edge = edge().await;
    let spec = tenant("t")
        .max_sessions(10)
        .unpaced()
        .queue_timeout(Duration::from_millis(600));
    let a = replica(&edge, &redis, "a", spec.clone(), "closed")
        .serve()
        .await;
    let b = replica(&edge, &redis, "b", spec, "closed").serve().await;
    let fleet = [&a.proxy, &b.proxy];
    all_in_mode(&fleet, "redis").await;
    let mut held = connect_ok(&a.proxy.url("/t/t/?i=before"), &[]).await;
    redis.stop();
    all_in_mode(&fleet, "closed").await;
    let started = Instant::now();
    let got: Vec<Got> =
        join_all((0..4).map(|i| try_connect(fleet[i % 2].url("/t/t/?i=down")))).await;
    let reasons: Vec<String> = got
        .iter()
        .map(|g| {
            g.as_ref()
                .err()
                .cloned()
                .unwrap_or_else(|| "admitted".into())
        })
        .collect();
    assert!(reasons.iter().all(|r| r == "queue-timeout"), "{reasons:?}");
    assert!(started.elapsed() < Duration::from_millis(600 + 700));
    echo(&mut held, "closed cuts nothing").await;
    redis.restart();
    all_in_mode(&fleet, "redis").await;
    let again = try_connect(b.proxy.url("/t/t/?i=after")).await;
    assert!(again.is_ok(), "admitted again: {:?}", again.err());
}

/// `on_redis_failure = "open"`: with Redis gone every replica admits up to the full
/// limits (documented: they multiply by the replicas), and not beyond.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_admits_each_replicas_full_limits_without_redis() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let edge = edge().await;
    let spec = tenant("t")
        .max_sessions(2)
        .unpaced()
        .queue_timeout(Duration::from_millis(400));
    let a = replica(&edge, &redis, "a", spec.clone(), "open")
        .serve()
        .await;
    let b = replica(&edge, &redis, "b", spec, "open").serve().await;
    let fleet = [&a.proxy, &b.proxy];
    all_in_mode(&fleet, "redis").await;
    redis.stop();
    all_in_mode(&fleet, "open").await;
    let got: Vec<Got> =
        join_all((0..6).map(|i| try_connect(fleet[i % 2].url("/t/t/?i=open")))).await;
    let admitted = got.iter().filter(|g| g.is_ok()).count();
    assert_eq!(admitted, 4, "2 per replica");
    for p in fleet {
        assert_eq!(live(p, "t"), 2);
    }
}

/// Replicas that start while Redis is unreachable (a cold start of the whole fleet,
/// Redis scheduled after sluice, a node lost with Redis on it) have never seen the
/// replica set: with `local-share`, each counts itself alone and admits the full cap,
/// so the fleet admits replicas × cap, exactly what `open` would, while `local-share` is
/// the default meant to keep within the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "defect (gap): replicas started while Redis is down each take the whole cap as their local share"]
async fn a_cold_start_without_redis_keeps_local_share_a_share() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    redis.stop();
    let edge = edge().await;
    let spec = tenant("t")
        .max_sessions(2)
        .unpaced()
        .queue_timeout(Duration::from_millis(300));
    let (ca, cb) = (
        replica(&edge, &redis, "a", spec.clone(), "local-share"),
        replica(&edge, &redis, "b", spec, "local-share"),
    );
    let (a, b) = tokio::join!(ca.serve(), cb.serve());
    let fleet = [&a.proxy, &b.proxy];
    all_in_mode(&fleet, "local-share").await;
    let got: Vec<Got> =
        join_all((0..6).map(|i| try_connect(fleet[i % 2].url(&format!("/t/t/?i={i}"))))).await;
    let admitted = got.iter().filter(|g| g.is_ok()).count();
    assert!(
        admitted <= 2,
        "cap 2 over two replicas without Redis, yet {admitted} admitted (edge peak {})",
        edge.peak.load(Ordering::SeqCst)
    );
}

// === The adaptive rate ===

/// A slow edge (handshakes over `slow_handshake`) lowers the tenant's effective rate;
/// with `[cluster]` the pace must follow it. It does not: the adaptive back-off
/// (`Admission::upstream_trouble`, `adaptive.trouble(&gate.limit.tokens, …)`) retunes
/// the gate's in-process bucket, which a shared scope never uses; the Redis GCRA (and
/// the local share's bucket) keep the configured rate, while
/// `sluice_effective_handshake_rate` shows the lowered one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_back_off_slows_the_shared_rate() {
    adaptive_back_off(true).await;
}

/// The same without `[cluster]` (the control: the back-off paces the tenant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_back_off_slows_a_lone_replica() {
    adaptive_back_off(false).await;
}

async fn adaptive_back_off(cluster: bool) {
    let Some(redis) = Redis::start() else { return };
    let delay = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(300));
    let edge = support::edge_with(support::EdgeOptions {
        delay_ms: Some(delay.clone()),
        ..support::EdgeOptions::default()
    })
    .await;
    let spec = tenant("lab")
        .handshake_rate(10.0)
        .handshake_burst(1)
        .queue_timeout(Duration::from_secs(10));
    let cfg = if cluster {
        replica(&edge, &redis, "a", spec, "local-share")
    } else {
        config().upstream(&edge.url(false)).tenant(spec)
    };
    let a = cfg
        .set("upstream", "slow_handshake", "\"150ms\"")
        .serve()
        .await;
    if cluster {
        all_in_mode(&[&a.proxy], "redis").await;
    }
    for _ in 0..2 {
        let mut ws = connect_ok(&a.proxy.url("/t/lab/?i=slow"), &[]).await;
        echo(&mut ws, "slow").await;
    }
    let lowered = a.proxy.admission.effective_rate("lab").unwrap();
    assert!(lowered <= 5.0, "the slow edge lowered the rate: {lowered}");
    let t0 = Instant::now();
    let clients: Vec<_> = (0..6)
        .map(|i| tokio::spawn(try_connect(a.proxy.url(&format!("/t/lab/?i=p{i}")))))
        .collect();
    for c in clients {
        let _ = c.await;
    }
    let mut times: Vec<Instant> = edge
        .requests()
        .iter()
        .filter(|r| r.at >= t0)
        .map(|r| r.at)
        .collect();
    times.sort();
    assert_eq!(times.len(), 6);
    let span = times[5] - times[0];
    // At 5/s or less, 6 handshakes span at least 1 s; at the configured 10/s, 0.5 s.
    assert!(
        span >= Duration::from_millis(900),
        "6 handshakes in {span:?} though the effective rate is {lowered}/s"
    );
}

/// The edge answers a handshake from replica a `503` with `Retry-After: 2`: sluice
/// pauses the tenant (a lone sluice sends nothing to the edge for 2 s). With replicas,
/// the pause goes to Redis (`P:p`), so b holds the tenant's clients back too instead of
/// sending them into the pause the edge asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_the_edge_asks_for_holds_on_every_replica() {
    let Some(redis) = Redis::start() else { return };
    let edge = support::edge_with(support::EdgeOptions {
        refuse_with: Some(503),
        refuse_first: Some(1),
        retry_after: Some(2),
        ..support::EdgeOptions::default()
    })
    .await;
    let spec = tenant("lab")
        .unpaced()
        .queue_timeout(Duration::from_secs(10));
    let a = replica(&edge, &redis, "a", spec.clone(), "local-share")
        .serve()
        .await;
    let b = replica(&edge, &redis, "b", spec, "local-share")
        .serve()
        .await;
    all_in_mode(&[&a.proxy, &b.proxy], "redis").await;
    let first = tokio::spawn(try_connect(a.proxy.url("/t/lab/?i=first")));
    edge.wait_for("the refused handshake", |e| !e.requests().is_empty())
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let later: Vec<_> = (0..3)
        .map(|i| tokio::spawn(try_connect(b.proxy.url(&format!("/t/lab/?i=b{i}")))))
        .collect();
    for c in later {
        assert!(c.await.unwrap().is_ok());
    }
    assert!(first.await.unwrap().is_ok());
    let requests = edge.requests();
    let quiet = requests[1].at - requests[0].at;
    assert!(
        quiet >= Duration::from_millis(1900),
        "a handshake ({:?}) reached the paused edge {quiet:?} after its Retry-After: 2",
        requests[1].query("i")
    );
}

/// A reload removes tenant t from replica a while a holds a session of it, then adds it
/// back: the session's slot is the same one (the retired gate is reused), the counts in
/// Redis stay exact throughout, and 0 once it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_and_re_adds_a_tenant_under_live_sessions_keeps_counts_exact() {
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let spec = tenant("t")
        .max_sessions(2)
        .unpaced()
        .queue_timeout(Duration::from_millis(400));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.toml");
    let with_t = replica(&edge, &redis, "a", spec.clone(), "local-share").tenant(tenant("u"));
    let without_t = replica(&edge, &redis, "a", tenant("u"), "local-share");
    std::fs::write(&file, with_t.text()).unwrap();
    let a = proxy_from_file(&file).await;
    let b = replica(&edge, &redis, "b", spec, "local-share")
        .serve()
        .await;
    all_in_mode(&[&a, &b.proxy], "redis").await;
    let mut on_a = connect_ok(&a.url("/t/t/?i=a"), &[]).await;
    std::fs::write(&file, without_t.text()).unwrap();
    assert_eq!(reload(&a).await.0, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    echo(&mut on_a, "removed, not cut").await;
    assert_eq!(redis_total(&redis, "t"), 1, "a's session still counts");
    std::fs::write(&file, with_t.text()).unwrap();
    assert_eq!(reload(&a).await.0, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(redis_total(&redis, "t"), 1);
    let on_b = connect_ok(&b.proxy.url("/t/t/?i=b"), &[]).await;
    let over = try_connect(a.url("/t/t/?i=over")).await;
    assert!(over.is_err(), "the cap of 2 holds");
    assert!(edge.peak.load(Ordering::SeqCst) <= 2);
    support::close(on_a).await;
    support::close(on_b).await;
    wait_until("counts back to 0", async || {
        let counts = hash(&redis, "sluice:t:t:n");
        !counts.is_empty() && counts.values().all(|v| v == "0")
    })
    .await;
    assert_eq!(live(&a, "t"), 0);
}

/// A replica is SIGKILLed holding slots and comes straight back under the same
/// `replica_id` (a container restarted in its pod: same host name, pid 1): its new
/// incarnation's first heartbeat replaces the dead one's counts, so the slots come back
/// then, long before `lease_ttl` (5 s here), and the counts are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_under_its_id_gives_the_dead_ones_slots_back_at_once() {
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let spec = tenant("t")
        .max_sessions(2)
        .unpaced()
        .queue_timeout(Duration::from_secs(8));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("k.toml");
    let port = support::free_port();
    let text = replica(&edge, &redis, "k", spec.clone(), "local-share")
        .set("cluster", "lease_ttl", "\"5s\"")
        .set("listen", "address", &quoted(&format!("127.0.0.1:{port}")))
        .text();
    std::fs::write(&file, &text).unwrap();
    let start_k = || {
        KillOnDrop(
            std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(["run", "--config"])
                .arg(&file)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut k = start_k();
    let k_url = format!("ws://127.0.0.1:{port}/t/t/");
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while held.len() < 2 {
        assert!(Instant::now() < deadline, "replica k serves");
        match connect(&k_url, &[]).await {
            Ok((ws, _)) => held.push(ws),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let a = replica(&edge, &redis, "a", spec, "local-share")
        .set("cluster", "lease_ttl", "\"5s\"")
        .serve()
        .await;
    all_in_mode(&[&a.proxy], "redis").await;
    let url = a.proxy.url("/t/t/?i=queued");
    let queued_client = tokio::spawn(async move { connect_ok(&url, &[]).await });
    wait_until("queued on a", async || queued(&a.proxy, "t") == 1).await;
    k.0.kill().unwrap();
    k.0.wait().unwrap();
    drop(held);
    let restarted = Instant::now();
    let mut k = start_k();
    let mut ws = tokio::time::timeout(Duration::from_secs(8), queued_client)
        .await
        .expect("admitted")
        .unwrap();
    let waited = restarted.elapsed();
    echo(&mut ws, "in").await;
    let counts = hash(&redis, "sluice:t:t:n");
    k.0.kill().unwrap();
    k.0.wait().unwrap();
    assert!(
        waited < Duration::from_millis(3000),
        "the dead incarnation's slots came back with the new one, not the lease: {waited:?}"
    );
    assert_eq!(
        counts,
        HashMap::from([
            ("a".to_owned(), "1".to_owned()),
            ("k".to_owned(), "0".to_owned())
        ])
    );
}

/// A tenant with `queue_depth = 0` (no queue: admit now or refuse) is admitted while
/// it has room, as without `[cluster]`. In Redis mode the fast path answers "ask"
/// for every connect, so every connect needs a place in the queue, and a tenant with
/// none is refused `queue-full` on every connect, with its cap unused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_without_a_queue_is_admitted_while_it_has_room() {
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let spec = tenant("direct").max_sessions(3).unpaced().queue_depth(0);
    let a = replica(&edge, &redis, "a", spec.clone(), "local-share")
        .serve()
        .await;
    let b = replica(&edge, &redis, "b", spec, "local-share")
        .serve()
        .await;
    let fleet = [&a.proxy, &b.proxy];
    all_in_mode(&fleet, "redis").await;
    let mut got = Vec::new();
    for i in 0..4 {
        got.push(try_connect(fleet[i % 2].url(&format!("/t/direct/?i={i}"))).await);
    }
    let outcomes: Vec<String> = got
        .iter()
        .map(|g| {
            g.as_ref()
                .err()
                .cloned()
                .unwrap_or_else(|| "admitted".into())
        })
        .collect();
    assert_eq!(
        outcomes,
        ["admitted", "admitted", "admitted", "queue-full"],
        "3 sessions fit, the 4th is refused"
    );
}

/// A `queue-full` refusal tells the client (and the operator reading the log) how many
/// of the tenant's sessions are in use. With `[cluster]` it reads the gate's in-process
/// counter (`gate.limit.slots`, `Admission::refusal`), which a shared scope never
/// touches: "0 of 1 sessions" while the one session is live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_full_refusal_reports_the_sessions_in_use() {
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let spec = tenant("t")
        .max_sessions(1)
        .unpaced()
        .queue_depth(1)
        .queue_timeout(Duration::from_secs(5));
    let a = replica(&edge, &redis, "a", spec, "local-share")
        .serve()
        .await;
    all_in_mode(&[&a.proxy], "redis").await;
    let _held = connect_ok(&a.proxy.url("/t/t/?i=held"), &[]).await;
    let waiting = tokio::spawn(try_connect(a.proxy.url("/t/t/?i=waiting")));
    wait_until("one queued", async || queued(&a.proxy, "t") == 1).await;
    let refused = support::connect_refused(&a.proxy.url("/t/t/?i=refused"), &[]).await;
    waiting.abort();
    let body = String::from_utf8_lossy(refused.body().as_deref().unwrap_or_default()).into_owned();
    assert_eq!(reason(&refused), "queue-full");
    assert!(body.contains("1 of 1 sessions"), "{body}");
}

// === Names, keys, state a client can grow ===

/// Tenant names cannot collide in Redis: names are `a-z 0-9 - _`, so no ':' (key
/// layout `sluice:t:NAME:{n,v,r,w}`), no glob characters (the listener's pattern
/// `sluice:freed:*`), no braces; a tenant called `edge` keeps its own keys apart from
/// the `[edge]` ceiling's `sluice:edge:*`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_names_cannot_collide_in_redis() {
    for bad in [
        "a:n", "a:b", "A", "a*", "a?", "a[b]", "a{b}", "a b", "é", "_x",
    ] {
        let text = format!(
            "[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:1\"]\n\
             [tenants.\"{bad}\"]\nauth = {{ kind = \"none\" }}\n"
        );
        assert!(
            sluice::Config::parse(&text, &HashMap::new()).is_err(),
            "tenant name {bad:?} accepted"
        );
    }
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let a = replica(
        &edge,
        &redis,
        "a",
        tenant("edge").max_sessions(1).unpaced(),
        "local-share",
    )
    .tenant(tenant("edge-n").max_sessions(5).unpaced())
    .serve()
    .await;
    all_in_mode(&[&a.proxy], "redis").await;
    let _e = connect_ok(&a.proxy.url("/t/edge/"), &[]).await;
    let _o1 = connect_ok(&a.proxy.url("/t/edge-n/"), &[]).await;
    let _o2 = connect_ok(&a.proxy.url("/t/edge-n/"), &[]).await;
    wait_until("counts published", async || {
        hash(&redis, "sluice:t:edge:n").get("a").map(String::as_str) == Some("1")
            && hash(&redis, "sluice:t:edge-n:n")
                .get("a")
                .map(String::as_str)
                == Some("2")
    })
    .await;
    assert!(
        redis.keys("sluice:edge:*").is_empty(),
        "tenant edge is not the [edge] ceiling"
    );
    let refused = try_connect(a.proxy.url("/t/edge/")).await;
    assert!(refused.is_err(), "tenant edge's own cap of 1 holds");
}

/// Unknown tenant names (a client makes them up) create no state: no Redis keys, no
/// new pub/sub pattern, no scope: only configured tenants and the edge have keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_tenant_names_create_no_redis_state() {
    let Some(redis) = Redis::start() else { return };
    let edge = edge().await;
    let a = replica(
        &edge,
        &redis,
        "a",
        tenant("t").max_sessions(5).unpaced(),
        "local-share",
    )
    .serve()
    .await;
    all_in_mode(&[&a.proxy], "redis").await;
    let numpat = || -> i64 { redis::from_redis_value(redis.cmd(&["PUBSUB", "NUMPAT"])).unwrap() };
    wait_until("the notice listener subscribed", async || numpat() == 1).await;
    let ws = connect_ok(&a.proxy.url("/t/t/"), &[]).await;
    support::close(ws).await;
    let got: Vec<Got> =
        join_all((0..100).map(|i| try_connect(a.proxy.url(&format!("/t/made-up-{i}/"))))).await;
    assert!(got.iter().all(|g| g.is_err()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let keys = redis.keys("sluice:*");
    assert!(
        keys.iter()
            .all(|k| k.starts_with("sluice:t:t:") || !k.starts_with("sluice:t:")),
        "{keys:?}"
    );
    assert_eq!(numpat(), 1, "still one pattern subscription per replica");
}
