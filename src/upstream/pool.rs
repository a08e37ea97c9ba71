//! The live state of each upstream group's endpoints: sessions on each, circuit
//! breakers, and pauses asked for by the edge (`503` + `Retry-After`).
//!
//! Choosing an endpoint ([`Pool::choose`]): among endpoints that are neither paused nor
//! behind an open circuit, the one with the fewest live sessions, ties broken
//! round-robin; endpoints not yet tried by this client first. A circuit opens after
//! [`CIRCUIT_FAILURES`] consecutive failures (connect error, timeout, 502/503/504
//! without `Retry-After`) and stays open for [`CIRCUIT_COOLDOWN`]; then exactly one
//! client's attempt is let through as a probe, and its result closes or reopens it.
//! Groups have separate pools: one group's failures never touch another's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Config, Group};

/// Consecutive failures that open an endpoint's circuit.
pub const CIRCUIT_FAILURES: u32 = 3;
/// How long an open circuit keeps its endpoint out before a probe.
pub const CIRCUIT_COOLDOWN: Duration = Duration::from_secs(5);
/// How long a client looks again later while another's probe decides a circuit.
const PROBE_WAIT: Duration = Duration::from_millis(100);

/// A group as configured, and the pool built for its endpoints (same indexes).
type GroupPool = (Arc<Group>, Arc<Pool>);

/// Every group's pool, by group name.
#[derive(Debug, Default)]
pub struct Pools {
    /// By group name, with the endpoint urls the pool was built for; replaced whole by a
    /// reload.
    groups: arc_swap::ArcSwap<HashMap<String, GroupPool>>,
}

impl Pools {
    /// A pool per group of `config`.
    pub fn new(config: &Config) -> Self {
        let pools = Self {
            groups: arc_swap::ArcSwap::default(),
        };
        pools.reconcile(config);
        pools
    }

    /// The pools for a reloaded `config`: a group whose endpoint list is unchanged keeps
    /// its pool (session counts, circuits, pauses); a new or changed group gets a fresh
    /// one. Sessions on a replaced pool keep it until they end.
    pub fn reconcile(&self, config: &Config) {
        let old = self.groups.load_full();
        let groups = config
            .upstream
            .groups
            .iter()
            .map(|(name, g)| {
                let pool = match old.get(name) {
                    Some((was, pool)) if was.endpoints == g.endpoints => pool.clone(),
                    _ => Arc::new(Pool::new(g.endpoints.len())),
                };
                (name.clone(), (g.clone(), pool))
            })
            .collect();
        self.groups.store(Arc::new(groups));
    }

    /// The pool of `group` (a configured group name).
    pub fn get(&self, group: &str) -> Option<Arc<Pool>> {
        self.groups.load().get(group).map(|(_, p)| p.clone())
    }

    /// The group in force under `name` and its pool, from one snapshot: the pool's
    /// endpoint indexes are the group's (a reload may have changed the endpoints since
    /// a queued client's request was resolved).
    pub fn group(&self, name: &str) -> Option<GroupPool> {
        self.groups.load().get(name).cloned()
    }
}

/// One endpoint's state. Times are nanoseconds after the pool's epoch; 0 is "not set".
#[derive(Debug, Default)]
struct EndpointState {
    live: AtomicU32,
    failures: AtomicU32,
    open_until: AtomicU64,
    probing: AtomicBool,
    paused_until: AtomicU64,
}

/// The endpoints of one group.
#[derive(Debug)]
pub struct Pool {
    epoch: Instant,
    endpoints: Vec<EndpointState>,
    next: AtomicUsize,
}

/// What [`Pool::choose`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Try endpoint `index`; `probe` when it is the one attempt through a half-open
    /// circuit.
    Use {
        /// Index in the group's endpoint list.
        index: usize,
        /// Whether this attempt is the circuit's probe.
        probe: bool,
    },
    /// Every endpoint is paused or has its circuit open until at least this time.
    Blocked {
        /// When the first becomes usable again.
        until: Instant,
        /// Whether that is the end of an edge-requested pause (else a circuit's
        /// cool-down).
        paused: bool,
    },
}

/// How an attempt on an endpoint ended, for its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `101`.
    Success,
    /// Connect error, timeout, 502/503/504: the endpoint counts as failing.
    Failure,
    /// The edge asked for a pause (`503` + `Retry-After`).
    Pause(Duration),
    /// Any other answer: the endpoint is alive; nothing changes.
    Answered,
}

/// See [`Pool::probe_guard`].
#[derive(Debug)]
pub struct ProbeGuard {
    pool: Arc<Pool>,
    index: usize,
    done: bool,
}

impl ProbeGuard {
    /// Records the probe's outcome (which closes or reopens the circuit).
    pub fn record(mut self, outcome: Outcome, now: Instant) {
        self.done = true;
        self.pool.record(self.index, true, outcome, now);
    }
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if !self.done {
            self.pool.endpoints[self.index]
                .probing
                .store(false, Ordering::Release);
        }
    }
}

/// A session's place on its endpoint: counted live until dropped.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<Pool>,
    index: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.endpoints[self.index]
            .live
            .fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    /// A pool of `n` endpoints, all closed and unpaused.
    pub fn new(n: usize) -> Self {
        Self {
            epoch: Instant::now(),
            endpoints: (0..n).map(|_| EndpointState::default()).collect(),
            next: AtomicUsize::new(0),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX / 2)
            .max(1)
    }

    fn instant(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }

    /// Picks the endpoint for the next attempt; `tried[i]` marks endpoints this client
    /// already tried (tried last, when another is usable).
    pub fn choose(&self, now: Instant, tried: &[bool]) -> Choice {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let (best, blocked) = self.best(now, tried, start, None);
        let (index, probe) = match best {
            Some(b) => b,
            None => {
                let (until, paused) = blocked.unwrap_or((self.nanos(now), false));
                return Choice::Blocked {
                    until: self.instant(until),
                    paused,
                };
            }
        };
        if !probe {
            return Choice::Use { index, probe };
        }
        // Only one client probes a half-open circuit; one that loses the race takes the
        // next best endpoint if there is one.
        if self.endpoints[index]
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Choice::Use { index, probe: true };
        }
        match self.best(now, tried, start, Some(index)).0 {
            Some((other, false)) => Choice::Use {
                index: other,
                probe: false,
            },
            _ => Choice::Blocked {
                until: now + PROBE_WAIT,
                paused: false,
            },
        }
    }

    /// The best usable endpoint (index, whether it would be a probe) and, when none is,
    /// the earliest time one becomes usable and whether that ends a pause.
    fn best(&self, now: Instant, tried: &[bool], start: usize, skip: Option<usize>) -> Best {
        let now_ns = self.nanos(now);
        let n = self.endpoints.len();
        let mut best: Option<(bool, u32, usize, bool)> = None; // (tried, live, index, probe)
        let mut blocked: Option<(u64, bool)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if skip == Some(i) {
                continue;
            }
            let e = &self.endpoints[i];
            let paused = e.paused_until.load(Ordering::Acquire);
            if paused > now_ns {
                blocked = Some(earliest(blocked, (paused, true)));
                continue;
            }
            let open = e.open_until.load(Ordering::Acquire);
            let probe = open != 0;
            if probe && (open > now_ns || e.probing.load(Ordering::Acquire)) {
                // Open; or half-open with its probe under way, which will soon decide.
                let until = if open > now_ns {
                    open
                } else {
                    now_ns + PROBE_WAIT.as_nanos() as u64
                };
                blocked = Some(earliest(blocked, (until, false)));
                continue;
            }
            let key = (
                tried.get(i).copied().unwrap_or(false),
                e.live.load(Ordering::Acquire),
                i,
                probe,
            );
            if best.is_none_or(|b| (key.0, key.1) < (b.0, b.1)) {
                best = Some(key);
            }
        }
        (best.map(|(_, _, i, probe)| (i, probe)), blocked)
    }

    /// Records how an attempt on endpoint `index` ended.
    pub fn record(&self, index: usize, probe: bool, outcome: Outcome, now: Instant) {
        let e = &self.endpoints[index];
        // Failures of attempts that started before a probe was chosen must not decide
        // the probe's circuit; only the probe's own outcome does.
        if !probe && e.probing.load(Ordering::Acquire) && outcome == Outcome::Failure {
            e.failures.fetch_add(1, Ordering::AcqRel);
            return;
        }
        match outcome {
            Outcome::Success | Outcome::Answered => {
                e.failures.store(0, Ordering::Release);
                e.open_until.store(0, Ordering::Release);
            }
            Outcome::Pause(d) => {
                let until = self.nanos(now + d);
                e.paused_until.fetch_max(until, Ordering::AcqRel);
                e.open_until.store(0, Ordering::Release);
            }
            Outcome::Failure => {
                let failures = e.failures.fetch_add(1, Ordering::AcqRel) + 1;
                if probe || failures >= CIRCUIT_FAILURES {
                    e.open_until
                        .store(self.nanos(now + CIRCUIT_COOLDOWN), Ordering::Release);
                }
            }
        }
        if probe {
            e.probing.store(false, Ordering::Release);
        }
    }

    /// Holds the probe of endpoint `index`'s half-open circuit for one attempt. If the
    /// attempt never reports (its client hung up, the budget ran out first), dropping
    /// the guard lets the next client probe; the circuit itself is left as it was.
    pub fn probe_guard(self: &Arc<Self>, index: usize) -> ProbeGuard {
        ProbeGuard {
            pool: self.clone(),
            index,
            done: false,
        }
    }

    /// Counts a session on endpoint `index` until the lease is dropped.
    pub fn lease(self: &Arc<Self>, index: usize) -> Lease {
        self.endpoints[index].live.fetch_add(1, Ordering::AcqRel);
        Lease {
            pool: self.clone(),
            index,
        }
    }

    /// When every endpoint of the group is paused by the edge: the end of the earliest
    /// pause (no client can be sent before). `None` when one is not paused.
    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        let now_ns = self.nanos(now);
        let mut earliest = u64::MAX;
        for e in &self.endpoints {
            let until = e.paused_until.load(Ordering::Acquire);
            if until <= now_ns {
                return None;
            }
            earliest = earliest.min(until);
        }
        (earliest != u64::MAX).then(|| self.instant(earliest))
    }

    /// Whether endpoint `index`'s circuit is open (or half-open) now.
    pub fn circuit_open(&self, index: usize) -> bool {
        self.endpoints[index].open_until.load(Ordering::Acquire) != 0
    }
}

/// What [`Pool::best`] found: the endpoint to use (index, whether as the circuit's
/// probe), else when the first becomes usable (nanoseconds) and whether a pause ends then.
type Best = (Option<(usize, bool)>, Option<(u64, bool)>);

fn earliest(current: Option<(u64, bool)>, candidate: (u64, bool)) -> (u64, bool) {
    match current {
        Some(c) if c.0 <= candidate.0 => c,
        _ => candidate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn use_index(c: Choice) -> usize {
        match c {
            Choice::Use { index, .. } => index,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_endpoint_with_fewest_sessions_goes_first_ties_in_turn() {
        let pool = Arc::new(Pool::new(3));
        let now = Instant::now();
        let _a = pool.lease(0);
        let _b = pool.lease(0);
        let _c = pool.lease(1);
        assert_eq!(use_index(pool.choose(now, &[false; 3])), 2);
        let _d = pool.lease(2);
        // 1 and 2 tie at one session each; round-robin alternates.
        let picks: Vec<usize> = (0..4)
            .map(|_| use_index(pool.choose(now, &[false; 3])))
            .collect();
        assert!(picks.contains(&1) && picks.contains(&2), "{picks:?}");
        // An endpoint this client already tried goes last.
        assert_eq!(use_index(pool.choose(now, &[false, true, true])), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_circuit_opens_after_failures_and_one_probe_decides() {
        let pool = Pool::new(2);
        let now = Instant::now();
        for _ in 0..CIRCUIT_FAILURES {
            pool.record(0, false, Outcome::Failure, now);
        }
        assert!(pool.circuit_open(0));
        for _ in 0..5 {
            assert_eq!(
                use_index(pool.choose(now, &[false; 2])),
                1,
                "skipped while open"
            );
        }
        // After the cool-down, exactly one probe.
        let later = now + CIRCUIT_COOLDOWN;
        let first = pool.choose(later, &[false, true]);
        assert_eq!(
            first,
            Choice::Use {
                index: 0,
                probe: true
            }
        );
        assert!(matches!(
            pool.choose(later, &[false, true]),
            Choice::Use { index: 1, .. }
        ));
        pool.record(0, true, Outcome::Success, later);
        assert!(!pool.circuit_open(0));
        // A failed probe reopens it for another cool-down.
        for _ in 0..CIRCUIT_FAILURES {
            pool.record(0, false, Outcome::Failure, later);
        }
        let again = later + CIRCUIT_COOLDOWN;
        assert_eq!(
            pool.choose(again, &[false, true]),
            Choice::Use {
                index: 0,
                probe: true
            }
        );
        pool.record(0, true, Outcome::Failure, again);
        assert!(matches!(
            pool.choose(again, &[false, true]),
            Choice::Use { index: 1, .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_whose_client_left_frees_the_circuit_for_the_next_probe() {
        let pool = Arc::new(Pool::new(1));
        let now = Instant::now();
        for _ in 0..CIRCUIT_FAILURES {
            pool.record(0, false, Outcome::Failure, now);
        }
        let later = now + CIRCUIT_COOLDOWN;
        assert_eq!(
            pool.choose(later, &[false]),
            Choice::Use {
                index: 0,
                probe: true
            }
        );
        let guard = pool.probe_guard(0);
        assert!(matches!(
            pool.choose(later, &[false]),
            Choice::Blocked { .. }
        ));
        drop(guard); // the probing client hung up mid-attempt
        assert_eq!(
            pool.choose(later, &[false]),
            Choice::Use {
                index: 0,
                probe: true
            }
        );
        pool.probe_guard(0).record(Outcome::Success, later);
        assert!(!pool.circuit_open(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_blocks_until_it_ends() {
        let pool = Pool::new(1);
        let now = Instant::now();
        pool.record(0, false, Outcome::Pause(Duration::from_secs(2)), now);
        assert_eq!(
            pool.choose(now, &[false]),
            Choice::Blocked {
                until: now + Duration::from_secs(2),
                paused: true
            }
        );
        assert_eq!(
            use_index(pool.choose(now + Duration::from_secs(2), &[false])),
            0
        );
    }
}
