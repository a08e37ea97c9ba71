//! Entry, `sluice plan`: the replay — every connect of a profile through the real admission scheduler, in virtual time.
//!
//! One [`Scheduler`] is built from the config (`[edge]`, tenants, `_default`), exactly as
//! a planner or a test builds it (`admission/standalone.rs`), on a current-thread tokio
//! runtime started with its clock paused: when every task waits, tokio moves the clock
//! straight to the next timer (an arrival, a pump's next token, the end of a session, a
//! queue timeout, a client's patience or pause), so virtual hours cost only the events
//! in them. A driver task sleeps until each arrival and spawns one task for that client:
//! it asks [`Scheduler::admit`], holds the permit for its session, drops it; a refusal
//! feeds its retry policy; its patience drops the pending `admit`, which takes it out of
//! the queue as a client closing its connection does in the proxy.
//!
//! Times are tokio's: a timer fires on a whole millisecond.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use super::report::{
    ClientTrace, EdgeAloneReport, EdgeReport, Report, Series, ShadowReport, TenantReport,
};
use super::Client;
use crate::admission::{Jitter, Scheduler};
use crate::config::Config;
use crate::reject::Reason;

/// How a plan runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Seed of the scheduler's jitter and the clients' retry jitter.
    pub seed: u64,
    /// The edge's own limits, to count what it would have refused without sluice.
    pub edge_alone: Option<EdgeAlone>,
}

/// An edge's own limits (`--edge-sessions`, `--edge-rate`), applied to the raw
/// arrivals: each connect once, at its time, for its hold, with nothing in front.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EdgeAlone {
    /// Live sessions it takes.
    pub max_sessions: Option<u32>,
    /// Handshakes per second it takes…
    pub rate: Option<f64>,
    /// …in bursts of this many.
    pub burst: u32,
}

impl EdgeAlone {
    /// The limits given on the command line, if any.
    pub fn of(sessions: Option<u32>, rate: Option<f64>, burst: Option<u32>) -> Option<Self> {
        (sessions.is_some() || rate.is_some()).then(|| Self {
            max_sessions: sessions,
            rate: rate.filter(|r| *r > 0.0),
            burst: burst.unwrap_or_else(|| rate.map_or(1, |r| r.ceil().max(1.0) as u32)),
        })
    }
}

/// One tenant's counts while the plan runs.
#[derive(Debug, Default)]
struct Tally {
    connects: u64,
    connected: u64,
    gave_up: u64,
    failed: u64,
    attempts: u64,
    refused: BTreeMap<&'static str, u64>,
    /// Waits of connected clients, seconds.
    waits: Vec<f64>,
    last_connected: Option<Duration>,
    queued: u32,
    peak_queue: u32,
    queue: Series,
    admitted: Series,
}

/// What the client tasks share (one thread: a `RefCell`, never held across an await).
struct Sim {
    scheduler: Scheduler,
    clients: Vec<Client>,
    /// Per client, its tenant's index in `tenants`.
    tenant_of: Vec<usize>,
    /// Per tenant (as the profile names it), the gate it goes to (`None`: unknown and
    /// refused, as the proxy refuses it).
    gates: Vec<Option<String>>,
    start: Instant,
    step: Duration,
    rng: Jitter,
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    tenants: Vec<Tally>,
    edge_live: u32,
    peak_sessions: u32,
    sessions: Series,
    /// Admissions per whole second.
    per_second: Vec<u32>,
    /// Per client, what happened to it.
    traces: Vec<ClientTrace>,
}

impl Sim {
    fn bucket(&self, now: Instant) -> usize {
        ((now - self.start).as_nanos() / self.step.as_nanos().max(1)) as usize
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.borrow_mut())
    }

    fn queue_change(&self, t: usize, up: bool) {
        let b = self.bucket(Instant::now());
        self.with(|s| {
            let tally = &mut s.tenants[t];
            if up {
                tally.queued += 1;
            } else {
                tally.queued -= 1;
            }
            tally.peak_queue = tally.peak_queue.max(tally.queued);
            tally.queue.level(b, tally.queued);
        });
    }

    fn admitted(&self, i: usize, t: usize, first: Instant) {
        let now = Instant::now();
        let b = self.bucket(now);
        let second = (now - self.start).as_secs() as usize;
        self.with(|s| {
            s.traces[i].admitted_at = Some((now - self.start).as_secs_f64());
            s.traces[i].wait = Some((now - first).as_secs_f64());
            let tally = &mut s.tenants[t];
            tally.connected += 1;
            tally.waits.push((now - first).as_secs_f64());
            tally.last_connected = Some(now - self.start);
            tally.admitted.add(b, 1);
            s.edge_live += 1;
            s.peak_sessions = s.peak_sessions.max(s.edge_live);
            s.sessions.level(b, s.edge_live);
            if s.per_second.len() <= second {
                s.per_second.resize(second + 1, 0);
            }
            s.per_second[second] += 1;
        });
    }

    fn ended(&self) {
        let b = self.bucket(Instant::now());
        self.with(|s| {
            s.edge_live -= 1;
            s.sessions.level(b, s.edge_live);
        });
    }
}

/// Polls `f` once: `Ready` when it completed without waiting.
async fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
}

/// One client: first attempt at its arrival, retries by its policy, gives up after its
/// patience, holds its session once admitted.
async fn client(sim: Rc<Sim>, i: usize) {
    let c = &sim.clients[i];
    let t = sim.tenant_of[i];
    let first = Instant::now();
    let deadline = c.behaviour.give_up_after.map(|p| first + p);
    let retry = &c.behaviour.retry;
    sim.with(|s| s.tenants[t].connects += 1);
    let Some(gate) = &sim.gates[t] else {
        sim.with(|s| {
            let tally = &mut s.tenants[t];
            tally.attempts += 1;
            *tally
                .refused
                .entry(Reason::TenantUnknown.as_str())
                .or_default() += 1;
            tally.failed += 1;
        });
        return;
    };
    let mut attempt = 1;
    loop {
        sim.with(|s| s.tenants[t].attempts += 1);
        let result = {
            let mut admit = std::pin::pin!(sim.scheduler.admit(gate));
            match poll_once(&mut admit).await {
                Poll::Ready(r) => Some(r),
                Poll::Pending => {
                    sim.queue_change(t, true);
                    let r = match deadline {
                        Some(d) => tokio::time::timeout_at(d, admit).await.ok(),
                        None => Some(admit.await),
                    };
                    sim.queue_change(t, false);
                    r
                }
            }
        };
        let refusal = match result {
            None => {
                sim.with(|s| {
                    s.tenants[t].gave_up += 1;
                    s.traces[i].gave_up = true;
                });
                return;
            }
            Some(Ok(admitted)) => {
                sim.admitted(i, t, first);
                tokio::time::sleep(c.hold).await;
                drop(admitted);
                sim.ended();
                return;
            }
            Some(Err(refusal)) => refusal,
        };
        sim.with(|s| {
            *s.tenants[t]
                .refused
                .entry(refusal.reason.as_str())
                .or_default() += 1;
            s.traces[i].refusals.push(refusal.reason.as_str());
        });
        if attempt >= retry.attempts {
            sim.with(|s| s.tenants[t].failed += 1);
            return;
        }
        attempt += 1;
        let pause = retry.pause(attempt, refusal.retry_after, || sim.rng.unit());
        if deadline.is_some_and(|d| Instant::now() + pause >= d) {
            sim.with(|s| {
                s.tenants[t].gave_up += 1;
                s.traces[i].gave_up = true;
            });
            return;
        }
        tokio::time::sleep(pause).await;
    }
}

/// The gate a connect of `tenant` goes to: its own, else `_default` when unknown
/// tenants are admitted as such, else none (it is refused `tenant-unknown`).
pub(crate) fn gate_of(config: &Config, tenant: &str) -> Option<String> {
    if config.tenants.contains_key(tenant) {
        Some(tenant.to_owned())
    } else {
        config.default_tenant.as_ref().map(|d| d.name.clone())
    }
}

/// Replays `clients` (sorted by `at`) through the scheduler of `config`; the report.
///
/// # Panics
/// When the runtime cannot be built (out of resources).
pub fn simulate(config: &Config, clients: &[Client], options: &Options) -> Report {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    let local = tokio::task::LocalSet::new();
    let mut names: Vec<std::sync::Arc<str>> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = Default::default();
    let tenant_of: Vec<usize> = clients
        .iter()
        .map(|c| {
            *index.entry(&c.tenant).or_insert_with(|| {
                names.push(c.tenant.clone());
                names.len() - 1
            })
        })
        .collect();
    let gates: Vec<Option<String>> = names.iter().map(|n| gate_of(config, n)).collect();
    let span = clients.last().map_or(Duration::ZERO, |c| c.at);
    // About 600 points across the arrivals, at least one a second.
    let step = Duration::from_secs((span.as_secs() / 600).max(1));
    let state = local.block_on(&runtime, async {
        let sim = Rc::new(Sim {
            scheduler: Scheduler::new(config, Jitter::seeded(options.seed)),
            clients: clients.to_vec(),
            tenant_of,
            gates,
            start: Instant::now(),
            step,
            rng: Jitter::seeded(options.seed ^ 0x5eed),
            state: RefCell::new(State {
                tenants: names.iter().map(|_| Tally::default()).collect(),
                traces: vec![ClientTrace::default(); clients.len()],
                ..State::default()
            }),
        });
        let mut tasks = Vec::with_capacity(clients.len());
        for (i, c) in clients.iter().enumerate() {
            let at = sim.start + c.at;
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            tasks.push(tokio::task::spawn_local(client(sim.clone(), i)));
        }
        for task in tasks {
            task.await.expect("a client task does not panic");
        }
        let end = Instant::now() - sim.start;
        // A shadow tenant's would-be sessions can outlive its real ones: their
        // decisions are counted once they are all over (virtual time, so cheap).
        while !sim.scheduler.shadows_settled() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let sim = Rc::into_inner(sim).expect("every client task has ended");
        // Shadow tenants (`enforce = false`): what enforcing would have done.
        let shadows: BTreeMap<String, ShadowReport> = config
            .tenants
            .keys()
            .chain(config.default_tenant.as_ref().map(|d| &d.name))
            .filter_map(|name| {
                let tally = sim.scheduler.shadow_tally(name)?;
                Some((name.clone(), ShadowReport::of(tally)))
            })
            .collect();
        (sim.state.into_inner(), end, shadows)
    });
    let (state, end, mut shadows) = state;
    let mut report = build_report(names, state, end, step, config, clients, options);
    for (name, t) in &mut report.tenants {
        t.shadow = shadows.remove(name);
    }
    report
}

fn build_report(
    names: Vec<std::sync::Arc<str>>,
    state: State,
    end: Duration,
    step: Duration,
    config: &Config,
    clients: &[Client],
    options: &Options,
) -> Report {
    let q = crate::stats::quantile;
    let tenants = names
        .into_iter()
        .zip(state.tenants)
        .map(|(name, mut t)| {
            t.waits.sort_by(f64::total_cmp);
            let report = TenantReport {
                connects: t.connects,
                connected: t.connected,
                gave_up: t.gave_up,
                failed: t.failed,
                attempts: t.attempts,
                refused: t
                    .refused
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
                wait_p50: q(&t.waits, 0.50),
                wait_p95: q(&t.waits, 0.95),
                wait_p99: q(&t.waits, 0.99),
                wait_max: t.waits.last().copied(),
                all_connected_at: (t.connected == t.connects)
                    .then(|| t.last_connected.map_or(0.0, |d| d.as_secs_f64())),
                last_connected_at: t.last_connected.map(|d| d.as_secs_f64()),
                peak_queue: t.peak_queue,
                queue: t.queue,
                admitted: t.admitted,
                shadow: None,
            };
            (name.to_string(), report)
        })
        .collect();
    let edge = EdgeReport {
        peak_sessions: state.peak_sessions,
        peak_rate: state.per_second.iter().copied().max().unwrap_or(0),
        ceiling: config.edge.as_ref().map(|e| super::report::Ceiling {
            max_sessions: e.max_sessions,
            handshake_rate: e.handshake_rate,
            handshake_burst: e.handshake_burst,
        }),
        alone: options.edge_alone.map(|a| edge_alone(clients, a)),
        sessions: state.sessions,
    };
    Report {
        tenants,
        edge,
        span: end.as_secs_f64(),
        step: step.as_secs_f64(),
        clients: state.traces,
    }
}

/// What an edge with `limits` alone would have done with the raw arrivals: each
/// connect once at its time (no retries: those depend on who refused), held for its
/// hold if taken. A handshake beyond the rate is refused first; then one beyond the
/// session cap.
pub fn edge_alone(clients: &[Client], limits: EdgeAlone) -> EdgeAloneReport {
    use std::cmp::Reverse;
    let mut ends = std::collections::BinaryHeap::new();
    let mut report = EdgeAloneReport::default();
    // A token bucket: `tokens` at `last`, at most `burst`.
    let burst = f64::from(limits.burst.max(1));
    let (mut tokens, mut last) = (burst, Duration::ZERO);
    for c in clients {
        while ends.peek().is_some_and(|Reverse(end)| *end <= c.at) {
            ends.pop();
        }
        if let Some(rate) = limits.rate {
            tokens = (tokens + (c.at - last).as_secs_f64() * rate).min(burst);
            last = c.at;
            if tokens < 1.0 {
                report.refused_rate += 1;
                *report.by_tenant.entry(c.tenant.to_string()).or_default() += 1;
                continue;
            }
            tokens -= 1.0;
        }
        if limits
            .max_sessions
            .is_some_and(|cap| ends.len() >= cap as usize)
        {
            report.refused_sessions += 1;
            *report.by_tenant.entry(c.tenant.to_string()).or_default() += 1;
            continue;
        }
        ends.push(Reverse(c.at + c.hold));
        report.peak_sessions = report.peak_sessions.max(ends.len() as u32);
    }
    report.max_sessions = limits.max_sessions;
    report.rate = limits.rate;
    report.burst = limits.rate.map(|_| limits.burst);
    report
}
