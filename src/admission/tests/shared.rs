//! Step 4 of the flow, admission: the queue, the pump and the fair edge arbiter against
//! a shared capacity backend that is slow and fails ([`Flaky`]), under tokio's paused
//! clock.

use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Notify;

use super::*;
use crate::admission::capacity::{BackendError, BoxFuture, Limit, SharedCapacity, Taken};

/// What the other replicas and the shared store hold: a local [`Limit`] behind a
/// network-like latency, failing every `fail_every`-th call, releasing asynchronously
/// (a spawned task), and telling waiters when capacity freed.
#[derive(Debug)]
struct Flaky(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    store: Limit,
    latency: Duration,
    /// 0: never fails.
    fail_every: u32,
    calls: AtomicU32,
    failures: AtomicU32,
    freed: Notify,
}

impl Flaky {
    fn new(max_sessions: u32, rate: f64, burst: u32, latency: Duration, fail_every: u32) -> Self {
        Self(Arc::new(Inner {
            store: Limit::new_at(max_sessions, rate, burst, Instant::now()),
            latency,
            fail_every,
            calls: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            freed: Notify::new(),
        }))
    }

    /// One round trip: the latency, then maybe a failure.
    async fn round_trip(&self) -> Result<(), BackendError> {
        tokio::time::sleep(self.0.latency).await;
        let n = self.0.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if self.0.fail_every != 0 && n % self.0.fail_every == 0 {
            self.0.failures.fetch_add(1, Ordering::Relaxed);
            return Err(BackendError("injected".into()));
        }
        Ok(())
    }

    /// Another replica's session ends.
    fn release_elsewhere(&self) {
        self.0.store.slots.release();
        self.0.freed.notify_waiters();
    }

    fn live(&self) -> u32 {
        self.0.store.slots.live()
    }
}

impl SharedCapacity for Flaky {
    fn acquire_slot(&self, _head: Option<Instant>) -> BoxFuture<'_, Result<bool, BackendError>> {
        // The decision is made in the poll that returns it: dropped earlier, nothing
        // is taken (cancel-safe).
        Box::pin(async move {
            self.round_trip().await?;
            Ok(self.0.store.slots.try_acquire())
        })
    }

    fn release_slot(&self) {
        let inner = self.0.clone();
        tokio::spawn(async move {
            tokio::time::sleep(inner.latency).await;
            inner.store.slots.release();
            inner.freed.notify_waiters();
        });
    }

    fn take(
        &self,
        _now: Instant,
        _head: Option<Instant>,
    ) -> BoxFuture<'_, Result<Result<Taken, Instant>, BackendError>> {
        Box::pin(async move {
            self.round_trip().await?;
            // The store's clock, not the caller's (as Redis's TIME).
            Ok(self.0.store.tokens.try_take(Instant::now()))
        })
    }

    fn refund(&self, taken: Taken) {
        self.0.store.tokens.refund(taken);
    }

    fn ready_at(&self) -> Instant {
        self.0.store.tokens.ready_at()
    }

    fn freed(&self) -> BoxFuture<'_, ()> {
        // Created now, so a notice sent before its first poll still completes it.
        Box::pin(self.0.freed.notified())
    }

    fn live(&self) -> u32 {
        self.0.store.slots.live()
    }

    fn reconfigure(&self, max_sessions: u32, _rate: f64, _burst: u32) {
        self.0.store.slots.set_cap(max_sessions);
        self.0.freed.notify_waiters();
    }
}

fn config(text: &str) -> crate::config::Config {
    let text = format!("[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:9\"]\n{text}");
    crate::config::Config::parse(&text, &HashMap::new()).expect("valid test config")
}

fn limits_of(config: &crate::config::Config, name: &str) -> Limits {
    config
        .tenants
        .values()
        .find(|t| t.name == name)
        .expect("configured")
        .limits
        .clone()
}

/// A scheduler without `[edge]` and one tenant `t` whose capacity is `backend`.
fn shared_tenant(limits: &str, backend: &Arc<Flaky>) -> (Arc<Admission>, Arc<TenantGate>) {
    let config = config(&tenant("t", limits));
    let a = Arc::new(Admission::new(
        None,
        adaptive::Policy::of(&config.upstream),
        None,
        Jitter::seeded(1),
    ));
    let gate = a.shared_gate(
        "t",
        &limits_of(&config, "t"),
        Gauges::detached(),
        None,
        Some(backend.clone() as Arc<dyn SharedCapacity>),
    );
    (a, gate)
}

/// `n` connects of `gate`, spawned in order, each logging (index, time, live in the
/// store) when admitted and holding its session for `hold`.
fn connects(
    a: &Arc<Admission>,
    gate: &Arc<TenantGate>,
    backend: &Arc<Flaky>,
    n: usize,
    hold: Duration,
) -> Arc<Mutex<Vec<(usize, Instant, u32)>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    for i in 0..n {
        let (a, gate, log, backend) = (a.clone(), gate.clone(), log.clone(), backend.clone());
        tokio::spawn(async move {
            let admitted = a.admit(&gate).await.expect("admitted");
            log.lock()
                .unwrap()
                .push((i, Instant::now(), backend.live()));
            tokio::time::sleep(hold).await;
            drop(admitted);
        });
    }
    log
}

#[tokio::test(start_paused = true)]
async fn a_slow_shared_backend_keeps_fifo_order_and_pacing() {
    let latency = Duration::from_millis(2);
    let backend = Arc::new(Flaky::new(1000, 20.0, 5, latency, 0));
    let (a, gate) = shared_tenant("queue_depth = 200\nqueue_timeout = \"60s\"", &backend);
    let start = Instant::now();
    let log = connects(&a, &gate, &backend, 30, Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = log.lock().unwrap();
    let order: Vec<usize> = log.iter().map(|e| e.0).collect();
    assert_eq!(order, (0..30).collect::<Vec<_>>(), "FIFO");
    for (k, (_, at, _)) in log.iter().enumerate() {
        let at = *at - start;
        if k < 5 {
            // The burst, one round trip for the slot and one for the token each.
            assert_eq!(at, latency * 2 * (k as u32 + 1), "admission {k}");
        } else {
            // Then one per interval after the first take (at 2 round trips): never
            // faster than the rate, late by no more than the token's round trip.
            let first_take = latency * 2;
            let due = first_take + Duration::from_millis(50) * (k as u32 - 4);
            assert_eq!(at, due + latency, "admission {k}");
        }
    }
    // Every session's (asynchronous) release reached the store.
    assert_eq!(backend.live(), 0);
    assert_eq!(gate.load().queued, 0);
}

#[tokio::test(start_paused = true)]
async fn a_failing_backend_delays_but_refuses_and_leaks_nothing() {
    let backend = Arc::new(Flaky::new(2, 1000.0, 100, Duration::from_millis(1), 3));
    let (a, gate) = shared_tenant("queue_depth = 100\nqueue_timeout = \"60s\"", &backend);
    let log = connects(&a, &gate, &backend, 20, Duration::from_millis(100));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let log = log.lock().unwrap();
    assert!(
        backend.0.failures.load(Ordering::Relaxed) > 5,
        "failures were injected"
    );
    let order: Vec<usize> = log.iter().map(|e| e.0).collect();
    assert_eq!(order, (0..20).collect::<Vec<_>>(), "all admitted, in order");
    assert!(log.iter().all(|e| e.2 <= 2), "the cap held: {log:?}");
    assert_eq!(backend.live(), 0, "no slot leaked");
    // A failure costs a back-off, not more: 10 rounds of 2 sessions of 100 ms.
    let last = log.last().unwrap().1;
    assert!(
        last - log[0].1 < Duration::from_secs(2),
        "{:?}",
        last - log[0].1
    );
}

#[tokio::test(start_paused = true)]
async fn a_slot_freed_on_another_replica_wakes_the_pump() {
    let latency = Duration::from_millis(3);
    let backend = Arc::new(Flaky::new(1, 1000.0, 100, latency, 0));
    assert!(
        backend.0.store.slots.try_acquire(),
        "another replica's session"
    );
    let (a, gate) = shared_tenant("queue_depth = 10\nqueue_timeout = \"60s\"", &backend);
    let log = connects(&a, &gate, &backend, 1, Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(log.lock().unwrap().is_empty(), "the store is full");
    assert_eq!(gate.load().queued, 1);
    // Waiting costs no polling: one attempt, then the pump sleeps on `freed`.
    assert_eq!(backend.0.calls.load(Ordering::Relaxed), 1);
    let freed_at = Instant::now();
    backend.release_elsewhere();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 1);
    // A round trip for the slot, one for the token.
    assert_eq!(log[0].1 - freed_at, latency * 2);
    assert_eq!(backend.live(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_raises_a_shared_cap_wakes_the_pump() {
    let backend = Arc::new(Flaky::new(1, 1000.0, 100, Duration::from_millis(1), 0));
    let limits = "max_sessions = 1\nqueue_depth = 10\nqueue_timeout = \"60s\"";
    let (a, gate) = shared_tenant(limits, &backend);
    let log = connects(&a, &gate, &backend, 2, Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(log.lock().unwrap().len(), 1, "the cap holds");
    let raised = config(&tenant(
        "t",
        &limits.replace("max_sessions = 1", "max_sessions = 2"),
    ));
    gate.configure(&limits_of(&raised, "t"), None);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(log.lock().unwrap().len(), 2, "admitted on the raised cap");
    assert_eq!(backend.live(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_fair_arbiter_shares_a_flaky_shared_edge_by_weight() {
    let limits =
        "handshake_rate = 1000.0\nhandshake_burst = 1000\nqueue_depth = 1000\nqueue_timeout = \"120s\"";
    let config = config(&format!(
        "[edge]\nhandshake_rate = 50.0\nhandshake_burst = 1\n{}weight = 2\n{}weight = 1\n",
        tenant("heavy", limits),
        tenant("light", limits)
    ));
    let edge = config.edge.clone().expect("[edge]");
    let backend = Arc::new(Flaky::new(
        edge.max_sessions,
        edge.handshake_rate,
        edge.handshake_burst,
        Duration::from_millis(1),
        10,
    ));
    let a = Arc::new(Admission::shared(
        Some(&edge),
        adaptive::Policy::of(&config.upstream),
        None,
        Jitter::seeded(1),
        Some(backend.clone() as Arc<dyn SharedCapacity>),
    ));
    let log: Log = Arc::default();
    for name in ["heavy", "light"] {
        let gate = a.gate(name, &limits_of(&config, name), Gauges::detached(), None);
        for i in 0..200 {
            let (a, gate, log) = (a.clone(), gate.clone(), log.clone());
            tokio::spawn(async move {
                let admitted = a.admit(&gate).await.expect("admitted");
                log.lock()
                    .unwrap()
                    .push((gate.name().to_owned(), i, Instant::now()));
                drop(admitted);
            });
        }
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    {
        let log = log.lock().unwrap();
        assert!(backend.0.failures.load(Ordering::Relaxed) > 10);
        assert!(log.len() < 300, "the edge's 50/s held");
        for name in ["heavy", "light"] {
            let order: Vec<usize> = log.iter().filter(|e| e.0 == name).map(|e| e.1).collect();
            assert_eq!(order, (0..order.len()).collect::<Vec<_>>(), "{name}: FIFO");
        }
        // Paced at the edge's rate: never two handshakes within one 20 ms interval.
        for w in log.windows(2) {
            assert!(w[1].2 - w[0].2 >= Duration::from_millis(20), "{w:?}");
        }
        let heavy = log[..90].iter().filter(|e| e.0 == "heavy").count();
        assert!((58..=62).contains(&heavy), "about 2:1 of 90 turns: {heavy}");
        // One call in ten fails and costs a back-off (50 ms), never a turn: a turn is two
        // calls, so at worst 5 turns per 100 ms + 50 ms.
        assert!(log.len() >= 190, "{}", log.len());
    }
    // When every client is through, nothing is held at the edge.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(log.lock().unwrap().len(), 400, "nobody refused");
    assert_eq!(backend.live(), 0, "no edge slot leaked");
}
