//! Property tests of the admission scheduler (issue 8, "Fuzzing"): for random tenants
//! (caps, rates, bursts, queue depths and timeouts, weights), with and without an
//! `[edge]` ceiling, and random clients (arrival time, session hold time, patience),
//! the real [`Admission`] runs on a current-thread runtime under tokio's paused clock,
//! so every time below is exact and every case is deterministic. Checked:
//!
//! * no tenant ever holds more live sessions than its `max_sessions`, nor the edge more
//!   than its own (counted here as permits are granted and dropped, and as
//!   `tenant_load` / `edge_load` report them);
//! * the handshakes admitted for a tenant in any window of length `T` are at most
//!   `burst + rate · T` (the GCRA bound), and likewise for the edge over all tenants;
//! * no client waits longer than its tenant's `queue_timeout`, and the wait reported
//!   (`waited`) is the wait it had; refusals carry a `Retry-After` of at most 1.2 ×
//!   `queue_timeout` and only the reasons that can apply;
//! * FIFO within a tenant: its clients are admitted in the order they arrived;
//! * every admitted session is released exactly once and clients that give up leave no
//!   trace: at the end `live`, `queued` and the edge's `live`/`waiting` are all 0, and a
//!   new client of every tenant takes the fast path again.
//!
//! `PROPTEST_CASES` overrides the number of cases (default below, sized for CI).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{RngSeed, TestCaseError};
use sluice::admission::{Jitter, Scheduler};
use sluice::config::Config;
use sluice::reject::Reason;
use tokio::time::Instant;

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 512;

/// `PROPTEST_CASES` when set (an explicit `with_cases` would override it), else
/// [`CASES`].
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES)
}
/// Slack for the rate bound: the bucket rounds its interval to whole nanoseconds.
const EPSILON: f64 = 1e-6;

#[derive(Debug, Clone)]
struct TenantSpec {
    max_sessions: u32,
    rate: f64,
    burst: u32,
    queue_depth: u32,
    queue_timeout_ms: u64,
    weight: u32,
}

#[derive(Debug, Clone)]
struct EdgeSpec {
    max_sessions: u32,
    rate: f64,
    burst: u32,
}

#[derive(Debug, Clone)]
struct ClientSpec {
    tenant: usize,
    arrive_ms: u64,
    hold_ms: u64,
    /// Gives up (drops its admission future) after this long, if still waiting.
    patience_ms: Option<u64>,
}

#[derive(Debug, Clone)]
struct Scenario {
    tenants: Vec<TenantSpec>,
    edge: Option<EdgeSpec>,
    clients: Vec<ClientSpec>,
    /// Signs of edge trouble (`Admission::upstream_trouble`): (time, tenant). Only
    /// used by the adaptive property.
    troubles: Vec<(u64, usize)>,
}

fn rate() -> impl Strategy<Value = f64> {
    prop_oneof![
        prop::sample::select(vec![0.5, 1.0, 2.0, 3.0, 7.0, 10.0, 40.0]),
        0.3f64..60.0,
    ]
}

fn tenant_spec() -> impl Strategy<Value = TenantSpec> {
    (1u32..=4, rate(), 1u32..=4, 0u32..=6, 50u64..=3000, 1u32..=3).prop_map(
        |(max_sessions, rate, burst, queue_depth, queue_timeout_ms, weight)| TenantSpec {
            max_sessions,
            rate,
            burst,
            queue_depth,
            queue_timeout_ms,
            weight,
        },
    )
}

fn edge_spec() -> impl Strategy<Value = EdgeSpec> {
    (1u32..=6, rate(), 1u32..=4).prop_map(|(max_sessions, rate, burst)| EdgeSpec {
        max_sessions,
        rate,
        burst,
    })
}

fn scenario(with_troubles: bool) -> impl Strategy<Value = Scenario> {
    (
        prop::collection::vec(tenant_spec(), 1..=3),
        prop::option::of(edge_spec()),
    )
        .prop_flat_map(move |(tenants, edge)| {
            let n = tenants.len();
            let client = (
                0..n,
                // Arrivals bunch up at the start (a spike) or spread over 3 s.
                prop_oneof![0u64..=20, 0u64..=3000],
                0u64..=2500,
                prop::option::weighted(0.3, 0u64..=3000),
            )
                .prop_map(|(tenant, arrive_ms, hold_ms, patience_ms)| ClientSpec {
                    tenant,
                    arrive_ms,
                    hold_ms,
                    patience_ms,
                });
            let troubles = if with_troubles {
                prop::collection::vec((0u64..=4000, 0..n), 0..=6).boxed()
            } else {
                Just(Vec::new()).boxed()
            };
            (
                Just(tenants),
                Just(edge),
                prop::collection::vec(client, 0..=40),
                troubles,
            )
        })
        .prop_map(|(tenants, edge, clients, troubles)| Scenario {
            tenants,
            edge,
            clients,
            troubles,
        })
}

fn name(i: usize) -> String {
    format!("t{i}")
}

fn config_text(s: &Scenario) -> String {
    let mut text = String::from(
        "[upstream]\nadaptive = true\n[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:9\"]\n",
    );
    if let Some(e) = &s.edge {
        text += &format!(
            "[edge]\nmax_sessions = {}\nhandshake_rate = {:?}\nhandshake_burst = {}\n",
            e.max_sessions, e.rate, e.burst
        );
    }
    for (i, t) in s.tenants.iter().enumerate() {
        text += &format!(
            "[tenants.{}]\nauth = {{ kind = \"none\" }}\nmax_sessions = {}\nhandshake_rate = {:?}\nhandshake_burst = {}\nqueue_depth = {}\nqueue_timeout = \"{}ms\"\nweight = {}\n",
            name(i),
            t.max_sessions,
            t.rate,
            t.burst,
            t.queue_depth,
            t.queue_timeout_ms,
            t.weight
        );
    }
    text
}

/// What the clients saw, in the order it happened.
#[derive(Debug, Default)]
struct Log {
    /// Arrivals so far (the next arrival's sequence number).
    arrivals: u64,
    /// Live permits per tenant, as counted here.
    live: Vec<u32>,
    /// Live permits of all tenants.
    edge_live: u32,
    /// (tenant, arrival sequence, time) of every admission.
    admitted: Vec<(usize, u64, Instant)>,
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Checks the GCRA bound on sorted admission times: any window of length `T` holds at
/// most `burst + rate · T` of them.
fn check_rate(what: &str, times: &[Instant], rate: f64, burst: u32) -> Result<(), TestCaseError> {
    for i in 0..times.len() {
        for j in i..times.len() {
            let window = (times[j] - times[i]).as_secs_f64();
            let count = (j - i + 1) as f64;
            let bound = f64::from(burst) + rate * window;
            prop_assert!(
                count <= bound * (1.0 + EPSILON) + EPSILON,
                "{what}: {count} handshakes in {window} s, more than burst {burst} + rate {rate}/s · T = {bound}"
            );
        }
    }
    Ok(())
}

/// One client: arrives, asks for admission (giving up after its patience, if any),
/// holds its session, ends it. Asserts what it can see at once.
async fn client(
    admission: Arc<Scheduler>,
    log: Arc<Mutex<Log>>,
    s: Arc<Scenario>,
    c: ClientSpec,
    start: Instant,
) {
    tokio::time::sleep_until(start + ms(c.arrive_ms)).await;
    let t = &s.tenants[c.tenant];
    let tenant = name(c.tenant);
    let queue_timeout = ms(t.queue_timeout_ms);
    let seq = {
        let mut log = log.lock().unwrap();
        log.arrivals += 1;
        log.arrivals
    };
    let arrived = Instant::now();
    // The first poll of `admit` is this task's next step: arrival order is enqueue order.
    let admit = admission.admit(&tenant);
    let result = match c.patience_ms {
        Some(p) => tokio::time::timeout(ms(p), admit).await.ok(),
        None => Some(admit.await),
    };
    let now = Instant::now();
    let waited = now - arrived;
    let Some(result) = result else {
        // Gave up: it must leave no trace (checked at the end).
        return;
    };
    assert!(
        waited <= queue_timeout,
        "{tenant} waited {waited:?}, over its queue_timeout {queue_timeout:?}"
    );
    let admitted = match result {
        Ok(admitted) => admitted,
        Err(refusal) => {
            let allowed: &[Reason] = if s.edge.is_some() {
                &[
                    Reason::QueueFull,
                    Reason::QueueTimeout,
                    Reason::EdgeCapacity,
                ]
            } else {
                &[Reason::QueueFull, Reason::QueueTimeout]
            };
            assert!(
                allowed.contains(&refusal.reason),
                "{tenant}: unexpected refusal {refusal:?}"
            );
            let after = refusal.retry_after.expect("a refusal carries Retry-After");
            assert!(
                after <= queue_timeout.mul_f64(1.2) + ms(1),
                "{tenant}: Retry-After {after:?} for queue_timeout {queue_timeout:?}"
            );
            assert_eq!(
                refusal.waited.unwrap_or_default(),
                waited,
                "{tenant}: the refusal reports the wait"
            );
            return;
        }
    };
    assert_eq!(
        admitted.waited.unwrap_or_default(),
        waited,
        "{tenant}: the admission reports the wait"
    );
    {
        let mut log = log.lock().unwrap();
        log.live[c.tenant] += 1;
        log.edge_live += 1;
        assert!(
            log.live[c.tenant] <= t.max_sessions,
            "{tenant} has {} live sessions, cap {}",
            log.live[c.tenant],
            t.max_sessions
        );
        if let Some(e) = &s.edge {
            assert!(
                log.edge_live <= e.max_sessions,
                "the edge has {} live sessions, cap {}",
                log.edge_live,
                e.max_sessions
            );
        }
        log.admitted.push((c.tenant, seq, now));
    }
    let load = admission.tenant_load(&tenant).expect("configured");
    assert!(load.live <= load.max_sessions, "{tenant}: {load:?}");
    assert_eq!(load.max_sessions, t.max_sessions);
    if let Some(edge) = admission.edge_load() {
        assert!(edge.live <= edge.max_sessions, "{edge:?}");
    }
    tokio::time::sleep(ms(c.hold_ms)).await;
    {
        let mut log = log.lock().unwrap();
        log.live[c.tenant] -= 1;
        log.edge_live -= 1;
    }
    drop(admitted);
}

/// Whether [`simulate`] checks the rate bound (the adaptive property without it checks
/// everything else under signs of trouble).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rates {
    Checked,
    Unchecked,
}

async fn simulate(s: Scenario, rates: Rates) -> Result<(), TestCaseError> {
    let text = config_text(&s);
    let config = Config::parse(&text, &HashMap::new())
        .map_err(|e| TestCaseError::fail(format!("config refused: {e}\n{text}")))?;
    let admission = Arc::new(Scheduler::new(&config, Jitter::seeded(0)));
    if !s.troubles.is_empty() {
        admission.spawn_recovery();
    }
    let s = Arc::new(s);
    let log = Arc::new(Mutex::new(Log {
        live: vec![0; s.tenants.len()],
        ..Log::default()
    }));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in &s.clients {
        tasks.push(tokio::spawn(client(
            admission.clone(),
            log.clone(),
            s.clone(),
            c.clone(),
            start,
        )));
    }
    for &(at, tenant) in &s.troubles {
        let (admission, tenant) = (admission.clone(), name(tenant));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + ms(at)).await;
            // Trouble that cannot depend on the request: the tenant and the edge step down.
            admission.upstream_trouble(&tenant, false);
        }));
    }
    for task in tasks {
        if let Err(e) = task.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    // Everything ended: a moment for the pumps and the edge's arbiter to see their
    // queues empty and give back what they held for them (at once: finding 2 in
    // docs/fuzzing.md, fixed).
    tokio::time::sleep(ms(10)).await;
    for (i, t) in s.tenants.iter().enumerate() {
        let load = admission.tenant_load(&name(i)).expect("configured");
        prop_assert_eq!(
            (load.live, load.queued),
            (0, 0),
            "tenant {} holds something after every session ended: {:?}",
            name(i),
            load
        );
        prop_assert_eq!(load.max_sessions, t.max_sessions);
    }
    if let Some(edge) = admission.edge_load() {
        prop_assert_eq!((edge.live, edge.waiting), (0, 0), "edge: {:?}", edge);
    }

    let log = std::mem::take(&mut *log.lock().unwrap());
    prop_assert_eq!(log.live.iter().sum::<u32>(), 0);
    for (i, t) in s.tenants.iter().enumerate() {
        let mut mine: Vec<(u64, Instant)> = log
            .admitted
            .iter()
            .filter(|e| e.0 == i)
            .map(|e| (e.1, e.2))
            .collect();
        // FIFO: in arrival order, admission times never go back.
        mine.sort_by_key(|e| e.0);
        for pair in mine.windows(2) {
            prop_assert!(
                pair[0].1 <= pair[1].1,
                "{}: arrival {} admitted at {:?}, after arrival {} at {:?}",
                name(i),
                pair[0].0,
                pair[0].1 - start,
                pair[1].0,
                pair[1].1 - start
            );
        }
        let mut times: Vec<Instant> = mine.iter().map(|e| e.1).collect();
        times.sort();
        if rates == Rates::Checked {
            check_rate(&name(i), &times, t.rate, t.burst)?;
        }
    }
    if let (Some(e), Rates::Checked) = (&s.edge, rates) {
        let mut times: Vec<Instant> = log.admitted.iter().map(|e| e.2).collect();
        times.sort();
        check_rate("edge", &times, e.rate, e.burst)?;
    }

    // Nothing leaked: once the buckets refill, a new client of each tenant gets in at
    // once (no queue, no edge waiter, a free slot) and gives its slot back.
    for i in 0..s.tenants.len() {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let permit = admission.try_admit(&name(i));
        prop_assert!(permit.is_some(), "{} cannot take the fast path", name(i));
        drop(permit);
        prop_assert_eq!(admission.tenant_load(&name(i)).unwrap().live, 0);
    }
    Ok(())
}

fn run(s: Scenario, rates: Rates) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(simulate(s, rates))
}

/// [`cases`] cases from a fixed seed, so that CI runs the same cases every time;
/// `PROPTEST_RNG_SEED` picks another seed (a random one: `PROPTEST_RNG_SEED=$RANDOM`).
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::with_cases(cases());
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(0x51_1CE);
    }
    config
}

proptest! {
    #![proptest_config(config())]

    /// Caps, rates, FIFO and release, as listed at the top of the file.
    #[test]
    fn admission_never_exceeds_a_cap_or_a_rate_and_releases_everything(s in scenario(false)) {
        run(s, Rates::Checked)?;
    }

    /// With signs of edge trouble (`upstream_trouble`) at random times, and the recovery
    /// task running: caps, waits, FIFO and release as above. (The rate bound under
    /// trouble is the next property, which fails: finding 1.)
    #[test]
    fn adaptive_rates_keep_caps_order_and_release(s in scenario(true)) {
        run(s, Rates::Unchecked)?;
    }

    /// The same, rate bound included: the adaptive rate only ever lowers a rate, so the
    /// configured rates must hold all the same. They do not (finding 1 in
    /// docs/fuzzing.md); run it with `cargo test --test admission_props -- --ignored`.
    #[test]
    fn adaptive_rates_never_exceed_the_configured_ones(s in scenario(true)) {
        run(s, Rates::Checked)?;
    }
}

// Minimal reproducers of the findings (docs/fuzzing.md), ignored until they are fixed.

fn admission(text: &str) -> Scheduler {
    let text = format!("[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:9\"]\n{text}");
    let config = Config::parse(&text, &HashMap::new()).expect("valid config");
    Scheduler::new(&config, Jitter::seeded(0))
}

/// Finding 1: the adaptive rate's decrease (`upstream_trouble`) lets handshakes through
/// at once, beyond `handshake_burst`, right when the edge signals trouble. `Tokens::
/// set_rate` keeps the bucket's state (its TAT) and raises its tolerance, `(burst - 1) ·
/// interval`, with the longer interval: a bucket emptied by a burst at rate `r` is half
/// full again at rate `r/2`.
#[tokio::test(start_paused = true)]
async fn a_rate_decrease_lets_no_handshake_beyond_the_burst_through() {
    let a = admission(
        "[tenants.t]\nauth = { kind = \"none\" }\nmax_sessions = 100\nhandshake_rate = 1.0\nhandshake_burst = 4\n",
    );
    let burst: Vec<_> = std::iter::from_fn(|| a.try_admit("t")).collect();
    assert_eq!(burst.len(), 4, "the burst");
    // The edge answers one of them 503: the rate halves (adaptive_factor 0.5).
    a.upstream_trouble("t", false);
    let extra: Vec<_> = std::iter::from_fn(|| a.try_admit("t")).take(10).collect();
    assert_eq!(
        extra.len(),
        0,
        "{} more handshakes at the same instant, beyond handshake_burst = 4",
        extra.len()
    );
}

/// Finding 2: when the last tenant waiting for an edge turn leaves (its client gave up
/// or timed out) while the edge's arbiter waits for the next edge token, the arbiter
/// keeps the edge session slot it had taken for that turn until the token comes, so
/// `edge_load().live` counts a session nobody has (the tenant's own reservation, by
/// contrast, goes back at once).
#[tokio::test(start_paused = true)]
async fn the_edge_slot_of_a_withdrawn_turn_goes_back_at_once() {
    let a = admission(
        "[edge]\nmax_sessions = 1\nhandshake_rate = 0.5\nhandshake_burst = 1\n[tenants.t]\nauth = { kind = \"none\" }\nqueue_timeout = \"50ms\"\n",
    );
    drop(a.admit("t").await.expect("the first goes at once"));
    // The next edge token comes at 2 s: this one queues for its turn and times out.
    let refused = a.admit("t").await.expect_err("times out");
    assert_eq!(refused.reason, Reason::EdgeCapacity);
    tokio::time::sleep(ms(10)).await;
    let t = a.tenant_load("t").unwrap();
    assert_eq!(
        (t.live, t.queued),
        (0, 0),
        "the tenant gave everything back"
    );
    let edge = a.edge_load().unwrap();
    assert_eq!(edge.waiting, 0);
    assert_eq!(
        edge.live, 0,
        "no session is live and nobody waits, yet the edge counts a slot held (until 2 s)"
    );
}
