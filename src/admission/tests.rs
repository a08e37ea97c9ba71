//! Step 4 of the flow, admission: the scheduler's unit tests under tokio's paused clock.
//!
//! The scheduler under tokio's paused clock: times are exact, so pacing, order and
//! shares are asserted without slack.

use std::collections::HashMap;
use std::sync::Mutex;

use super::*;

mod shared;

/// The scheduler built from the config's limits alone, as a planner builds it.
fn admission(text: &str) -> Arc<Scheduler> {
    let text = format!("[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:9\"]\n{text}");
    let config = crate::config::Config::parse(&text, &HashMap::new()).expect("valid test config");
    Arc::new(Scheduler::new(&config, Jitter::seeded(1)))
}

fn tenant(name: &str, limits: &str) -> String {
    format!("[tenants.{name}]\nauth = {{ kind = \"none\" }}\n{limits}\n")
}

type Log = Arc<Mutex<Vec<(String, usize, Instant)>>>;

/// `n` connects of `tenant`, each a task that ends with its admission's result (a
/// permit is dropped at once).
fn spawn_waiters(
    a: &Arc<Scheduler>,
    tenant: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<(), Rejection>>> {
    (0..n)
        .map(|_| {
            let (a, tenant) = (a.clone(), tenant.to_owned());
            tokio::spawn(async move { a.admit(&tenant).await.map(|_| ()) })
        })
        .collect()
}

/// Spawns `n` connects of `tenant`, in order, each recording (tenant, index, time)
/// when admitted and ending its session at once.
fn spawn_connects(a: &Arc<Scheduler>, log: &Log, tenant: &str, n: usize) {
    for i in 0..n {
        let (a, log, tenant) = (a.clone(), log.clone(), tenant.to_owned());
        tokio::spawn(async move {
            let admitted = a.admit(&tenant).await.expect("admitted");
            log.lock().unwrap().push((tenant, i, Instant::now()));
            drop(admitted);
        });
    }
}

#[tokio::test(start_paused = true)]
async fn a_spike_is_paced_at_the_token_rate_in_arrival_order() {
    let a = admission(&tenant(
        "t",
        "handshake_rate = 20.0\nhandshake_burst = 5\nqueue_depth = 200\nqueue_timeout = \"60s\"",
    ));
    let log: Log = Arc::default();
    let start = Instant::now();
    spawn_connects(&a, &log, "t", 100);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 100);
    let order: Vec<usize> = log.iter().map(|e| e.1).collect();
    assert_eq!(order, (0..100).collect::<Vec<_>>(), "FIFO");
    // The burst at once, then one every 50 ms exactly.
    for (k, (_, _, at)) in log.iter().enumerate() {
        let expected = Duration::from_millis(50 * (k.saturating_sub(4)) as u64);
        assert_eq!(*at - start, expected, "admission {k}");
    }
    assert_eq!(a.tenant_load("t").unwrap().queued, 0);
    assert_eq!(a.tenant_load("t").unwrap().live, 0);
}

#[tokio::test(start_paused = true)]
async fn the_cap_holds_and_waiters_follow_in_order_as_sessions_end() {
    let a = admission(&tenant(
        "t",
        "max_sessions = 3\nhandshake_rate = 1000.0\nhandshake_burst = 100",
    ));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..8 {
        let (a, tx) = (a.clone(), tx.clone());
        tokio::spawn(async move {
            let admitted = a.admit("t").await.expect("admitted");
            tx.send((i, admitted)).unwrap();
        });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut held = Vec::new();
    while let Ok(x) = rx.try_recv() {
        held.push(x);
    }
    assert_eq!(held.iter().map(|h| h.0).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(
        a.tenant_load("t").unwrap(),
        TenantLoad {
            live: 3,
            cluster_live: None,
            max_sessions: 3,
            queued: 5
        }
    );
    // Each end lets exactly the next one in.
    for next in 3..8 {
        held.remove(0);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (i, admitted) = rx.try_recv().expect("the next waiter is admitted");
        assert_eq!(i, next);
        assert!(admitted.waited.is_some());
        held.push((i, admitted));
        assert!(rx.try_recv().is_err());
    }
    drop(held);
    assert_eq!(a.tenant_load("t").unwrap().live, 0);
}

#[tokio::test(start_paused = true)]
async fn full_queue_and_timeout_are_refused_with_an_estimate() {
    let a = admission(&tenant(
        "t",
        "max_sessions = 1\nqueue_depth = 2\nqueue_timeout = \"5s\"",
    ));
    let held = a.admit("t").await.unwrap();
    let waiters: Vec<_> = spawn_waiters(&a, "t", 2);
    tokio::task::yield_now().await;
    let full = a.admit("t").await.unwrap_err();
    assert_eq!(full.reason, Reason::QueueFull);
    // Sessions, not the rate, hold the queue: the estimate is about queue_timeout.
    let after = full.retry_after.unwrap();
    assert!(
        after >= Duration::from_secs(4) && after <= Duration::from_secs(6),
        "{after:?}"
    );
    for w in waiters {
        let refused = w.await.unwrap().unwrap_err();
        assert_eq!(refused.reason, Reason::QueueTimeout);
        assert!(refused.retry_after.is_some());
        // The wait is reported, for sluice_queue_wait_seconds and the log line.
        assert_eq!(refused.waited, Some(Duration::from_secs(5)));
    }
    assert_eq!(a.tenant_load("t").unwrap().queued, 0);
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn rate_bound_estimates_grow_with_the_queue_ahead() {
    let a = admission(&tenant(
        "t",
        "handshake_rate = 2.0\nhandshake_burst = 1\nqueue_depth = 10\nqueue_timeout = \"60s\"",
    ));
    let _first = a.admit("t").await.unwrap();
    let waiters: Vec<_> = spawn_waiters(&a, "t", 10);
    tokio::task::yield_now().await;
    let full = a.admit("t").await.unwrap_err();
    assert_eq!(full.reason, Reason::QueueFull);
    // 10 ahead + itself at 2/s: about 5.5 s, ±20 %.
    let after = full.retry_after.unwrap().as_secs_f64();
    assert!((4.4..=6.6).contains(&after), "{after}");
    for w in waiters {
        w.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn clients_that_leave_the_queue_take_nothing() {
    let a = admission(&tenant(
        "t",
        "handshake_rate = 1.0\nhandshake_burst = 1\nqueue_depth = 100\nqueue_timeout = \"60s\"",
    ));
    let start = Instant::now();
    let first = a.admit("t").await.unwrap();
    assert!(first.waited.is_none());
    let waiters: Vec<_> = spawn_waiters(&a, "t", 50);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.tenant_load("t").unwrap().queued, 50);
    for w in &waiters {
        w.abort();
    }
    tokio::task::yield_now().await;
    assert_eq!(a.tenant_load("t").unwrap().queued, 0, "left at once");
    // The next token is at 1 s; the pump wakes then, finds nobody, and gives back
    // what it reserved. A new client gets exactly that one token.
    tokio::time::sleep_until(start + Duration::from_secs(1)).await;
    tokio::task::yield_now().await;
    let next = a.admit("t").await.unwrap();
    assert_eq!(Instant::now() - start, Duration::from_secs(1));
    drop(next);
    let after = a.admit("t").await.unwrap();
    assert_eq!(Instant::now() - start, Duration::from_secs(2));
    assert!(after.waited.is_some());
    drop((first, after));
    assert_eq!(a.tenant_load("t").unwrap().live, 0);
}

#[tokio::test(start_paused = true)]
async fn a_quiet_tenant_is_not_starved_by_a_flooding_one() {
    let limits = "handshake_rate = 1000.0\nhandshake_burst = 1000\nqueue_depth = 1000\nqueue_timeout = \"120s\"";
    let a = admission(&format!(
        "[edge]\nmax_sessions = 10000\nhandshake_rate = 20.0\nhandshake_burst = 1\n{}{}",
        tenant("a", limits),
        tenant("b", limits)
    ));
    let log: Log = Arc::default();
    let start = Instant::now();
    spawn_connects(&a, &log, "a", 400);
    tokio::time::sleep(Duration::from_millis(500)).await;
    spawn_connects(&a, &log, "b", 20);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 420);
    let waits = |t: &str, from: Instant| {
        let mut w: Vec<Duration> = log
            .iter()
            .filter(|e| e.0 == t)
            .map(|e| e.2 - from)
            .collect();
        w.sort();
        w
    };
    let (wa, wb) = (
        waits("a", start),
        waits("b", start + Duration::from_millis(500)),
    );
    // Turns alternate once b arrives: b's 20 are in within about 2 s (40 edge
    // tokens), while a's backlog takes 21 s.
    assert!(
        *wb.last().unwrap() <= Duration::from_millis(2100),
        "{:?}",
        wb.last()
    );
    assert!(
        wb[10] * 5 < wa[200],
        "b median {:?}, a median {:?}",
        wb[10],
        wa[200]
    );
    // The edge never saw more than its rate.
    let mut times: Vec<Instant> = log.iter().map(|e| e.2).collect();
    times.sort();
    for pair in times.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(50));
    }
    // FIFO inside each tenant.
    for t in ["a", "b"] {
        let order: Vec<usize> = log.iter().filter(|e| e.0 == t).map(|e| e.1).collect();
        assert!(order.windows(2).all(|p| p[0] < p[1]), "{t} out of order");
    }
    assert_eq!(a.admission.edge_load().unwrap().live, 0);
}

#[tokio::test(start_paused = true)]
async fn the_edge_ceiling_is_named_when_it_is_the_cause() {
    let a = admission(&format!(
        "[edge]\nhandshake_rate = 1.0\nhandshake_burst = 1\n{}{}",
        tenant("busy", "queue_depth = 10\nqueue_timeout = \"3s\""),
        tenant("direct", "queue_depth = 0")
    ));
    let first = a.admit("busy").await.unwrap();
    let queued = {
        let a = a.clone();
        tokio::spawn(async move { a.admit("busy").await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(a.admission.edge_load().unwrap().waiting, 1);
    // A tenant without a queue, within its own limits, refused because the edge is
    // spoken for: 503 edge-capacity, not 429.
    let refused = a.admit("direct").await.unwrap_err();
    assert_eq!(refused.reason, Reason::EdgeCapacity);
    assert_eq!(
        refused.reason.status(),
        http::StatusCode::SERVICE_UNAVAILABLE
    );
    // The queued one gets the edge's next token at 1 s.
    queued.await.unwrap().unwrap();
    drop(first);
}

#[tokio::test(start_paused = true)]
async fn a_tenant_whose_clients_all_leave_gives_back_its_edge_turn_at_once() {
    let limits = "handshake_rate = 1000.0\nhandshake_burst = 1000\nqueue_depth = 1000\nqueue_timeout = \"120s\"";
    let a = admission(&format!(
        "[edge]\nhandshake_rate = 10.0\nhandshake_burst = 1\n{}{}",
        tenant("a", limits),
        tenant("b", limits)
    ));
    let log: Log = Arc::default();
    let start = Instant::now();
    spawn_connects(&a, &log, "a", 10);
    tokio::task::yield_now().await;
    let b = {
        let a = a.clone();
        tokio::spawn(async move { a.admit("b").await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        a.admission.edge_load().unwrap().waiting,
        2,
        "a and b wait for turns"
    );
    b.abort();
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    let load = a.tenant_load("b").unwrap();
    assert_eq!((load.queued, load.live), (0, 0), "b holds nothing");
    assert_eq!(
        a.admission.edge_load().unwrap().waiting,
        1,
        "b's turn withdrawn"
    );
    // a's ten go at the edge's pace with no turn lost to b.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let last = log.lock().unwrap().iter().map(|e| e.2).max().unwrap();
    assert_eq!(last - start, Duration::from_millis(900));
}

#[tokio::test(start_paused = true)]
async fn a_session_bound_estimate_follows_how_fast_sessions_end() {
    let a = admission(&tenant(
        "t",
        "max_sessions = 1\nqueue_depth = 3\nqueue_timeout = \"60s\"",
    ));
    // Sessions end one every 2 s.
    for _ in 0..3 {
        let s = a.admit("t").await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(s);
    }
    let _held = a.admit("t").await.unwrap();
    let waiters: Vec<_> = spawn_waiters(&a, "t", 3);
    tokio::task::yield_now().await;
    let full = a.admit("t").await.unwrap_err();
    assert_eq!(full.reason, Reason::QueueFull);
    // 3 ahead + itself, one per 2 s: about 8 s, not the 60 s queue_timeout.
    let after = full.retry_after.unwrap().as_secs_f64();
    assert!((6.4..=9.6).contains(&after), "{after}");
    for w in waiters {
        w.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn backlogged_tenants_share_the_edge_by_weight() {
    let limits = "handshake_rate = 1000.0\nhandshake_burst = 1000\nqueue_depth = 1000\nqueue_timeout = \"120s\"";
    let a = admission(&format!(
        "[edge]\nhandshake_rate = 50.0\nhandshake_burst = 1\n{}weight = 2\n{}weight = 1\n",
        tenant("heavy", limits),
        tenant("light", limits)
    ));
    let log: Log = Arc::default();
    spawn_connects(&a, &log, "heavy", 200);
    spawn_connects(&a, &log, "light", 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = log.lock().unwrap();
    // The first admission is the fast path; then both are backlogged.
    let heavy = log[1..91].iter().filter(|e| e.0 == "heavy").count();
    assert_eq!(heavy, 60, "2:1 of 90 turns");
}
