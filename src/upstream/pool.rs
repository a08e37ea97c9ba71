//! Step 5 of the flow: the live state of each upstream group's endpoints, from which
//! [`Pool::choose`] picks the endpoint of each attempt.
//!
//! A pool keeps the sessions on each endpoint, circuit breakers, and pauses asked for by
//! the edge (`503` + `Retry-After`), for the whole group and for each tenant on it.
//!
//! Choosing an endpoint ([`Pool::choose`]): among endpoints that are neither paused nor
//! behind an open circuit, for everyone or for the client's tenant, the one with the
//! fewest live sessions, ties broken round-robin; endpoints not yet tried by this client
//! first.
//!
//! An attempt's [`Outcome`] ([`Pool::record`]) is either the endpoint's (the connection
//! could not be made: [`CIRCUIT_FAILURES`] in a row open its circuit for everyone) or
//! its tenant's on that endpoint (its own circuit, its own pause); when two tenants see
//! the same trouble on an endpoint, it is closed or paused for everyone. The rules, and
//! why, are in `circuit`.
//!
//! The per-tenant state is kept only for tenants with something to remember, keyed by
//! tenant name (names come from the config only); a reload drops the state of tenants
//! no longer on the group ([`Pools::reconcile`]). Groups have separate pools: one
//! group's failures never touch another's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Config, Group};

mod circuit;
#[cfg(test)]
mod tests;

pub use circuit::Outcome;

/// Consecutive failures that open an endpoint's circuit (shared or a tenant's own).
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
    /// one. A kept pool forgets the per-tenant state of tenants no longer on its group.
    /// Sessions on a replaced pool keep it until they end.
    pub fn reconcile(&self, config: &Config) {
        let old = self.groups.load_full();
        let groups = config
            .upstream
            .groups
            .iter()
            .map(|(name, g)| {
                let pool = match old.get(name) {
                    Some((was, pool)) if was.endpoints == g.endpoints => {
                        pool.retain_tenants(|tenant| {
                            config
                                .tenants
                                .values()
                                .chain(config.default_tenant.as_ref())
                                .any(|t| t.name == tenant && t.group.name == *name)
                        });
                        pool.clone()
                    }
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

/// One endpoint's shared state. Times are nanoseconds after the pool's epoch; 0 is "not
/// set".
#[derive(Debug, Default)]
struct EndpointState {
    live: AtomicU32,
    failures: AtomicU32,
    open_until: AtomicU64,
    probing: AtomicBool,
    paused_until: AtomicU64,
}

/// One tenant's own state on one endpoint (same time scale as [`EndpointState`]).
#[derive(Debug, Default, Clone, Copy)]
struct Own {
    /// Request-level failures in a row.
    failures: u32,
    /// The tenant's own circuit on the endpoint: open until then, half-open after
    /// (while `failures` stays at or above [`CIRCUIT_FAILURES`]).
    open_until: u64,
    /// The tenant's own pause on the endpoint.
    paused_until: u64,
}

impl Own {
    /// Nothing left to remember at `now`.
    fn clear(&self, now: u64) -> bool {
        self.failures == 0 && self.open_until <= now && self.paused_until <= now
    }
}

/// Per-tenant state of a pool: by tenant name, one entry per endpoint.
type OwnMap = HashMap<Box<str>, Box<[Own]>>;

/// The endpoints of one group.
#[derive(Debug)]
pub struct Pool {
    epoch: Instant,
    endpoints: Vec<EndpointState>,
    next: AtomicUsize,
    /// Tenants with request-level failures, own circuits or own pauses here. Locked
    /// only briefly, never across an `.await`.
    own: Mutex<OwnMap>,
    /// Whether `own` has any entry: the common case (none) reads no lock.
    any_own: AtomicBool,
}

/// What [`Pool::choose`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Try endpoint `index`; `probe` when it is the one attempt through a half-open
    /// shared circuit.
    Use {
        /// Index in the group's endpoint list.
        index: usize,
        /// Whether this attempt is the circuit's probe.
        probe: bool,
    },
    /// Every endpoint is paused or has its circuit open (for everyone or for this
    /// tenant) until at least this time.
    Blocked {
        /// When the first becomes usable again.
        until: Instant,
        /// Whether that is the end of an edge-requested pause (else a circuit's
        /// cool-down).
        paused: bool,
    },
}

/// See [`Pool::probe_guard`].
#[derive(Debug)]
pub struct ProbeGuard {
    pool: Arc<Pool>,
    index: usize,
    done: bool,
}

impl ProbeGuard {
    /// Records the probe's outcome for `tenant` (which closes or reopens the circuit).
    pub fn record(mut self, tenant: &str, outcome: Outcome, now: Instant) {
        self.done = true;
        self.pool.record(self.index, tenant, true, outcome, now);
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
            own: Mutex::default(),
            any_own: AtomicBool::new(false),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, OwnMap> {
        self.own.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` with `tenant`'s own state (one entry per endpoint), if it has any; the
    /// lock is taken only when some tenant has.
    fn with_own<R>(&self, tenant: &str, f: impl FnOnce(Option<&[Own]>) -> R) -> R {
        if !self.any_own.load(Ordering::Acquire) {
            return f(None);
        }
        let map = self.lock();
        f(map.get(tenant).map(|v| &v[..]))
    }

    /// Picks the endpoint for the next attempt of a client of `tenant`; `tried[i]`
    /// marks endpoints this client already tried (tried last, when another is usable).
    pub fn choose(&self, tenant: &str, now: Instant, tried: &[bool]) -> Choice {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        self.with_own(tenant, |own| {
            let (best, blocked) = self.best(now, tried, start, None, own);
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
            // Only one client probes a half-open circuit; one that loses the race takes
            // the next best endpoint if there is one.
            if self.endpoints[index]
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Choice::Use { index, probe: true };
            }
            match self.best(now, tried, start, Some(index), own).0 {
                Some((other, false)) => Choice::Use {
                    index: other,
                    probe: false,
                },
                _ => Choice::Blocked {
                    until: now + PROBE_WAIT,
                    paused: false,
                },
            }
        })
    }

    /// The best usable endpoint (index, whether it would be a probe) and, when none is,
    /// the earliest time one becomes usable and whether that ends a pause. `own` is the
    /// client's tenant's own state.
    fn best(
        &self,
        now: Instant,
        tried: &[bool],
        start: usize,
        skip: Option<usize>,
        own: Option<&[Own]>,
    ) -> Best {
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
            // The latest of whatever holds this endpoint back now, and whether a pause.
            let mut held: Option<(u64, bool)> = None;
            let mut hold = |until: u64, paused: bool| {
                if until > now_ns && held.is_none_or(|h| until > h.0) {
                    held = Some((until, paused));
                }
            };
            hold(e.paused_until.load(Ordering::Acquire), true);
            if let Some(o) = own.and_then(|o| o.get(i)) {
                hold(o.paused_until, true);
                hold(o.open_until, false);
            }
            let open = e.open_until.load(Ordering::Acquire);
            let probe = open != 0;
            if open > now_ns {
                hold(open, false);
            } else if probe && e.probing.load(Ordering::Acquire) {
                // Half-open with its probe under way, which will soon decide.
                hold(now_ns + PROBE_WAIT.as_nanos() as u64, false);
            }
            if let Some(h) = held {
                blocked = Some(earliest(blocked, h));
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

    /// When every endpoint of the group is paused by the edge for `tenant` (for
    /// everyone, or for that tenant): the end of the earliest pause (none of its clients
    /// can be sent before). `None` when one is not paused for it.
    pub fn paused_until(&self, tenant: &str, now: Instant) -> Option<Instant> {
        let now_ns = self.nanos(now);
        self.with_own(tenant, |own| {
            let mut earliest = u64::MAX;
            for (i, e) in self.endpoints.iter().enumerate() {
                let shared = e.paused_until.load(Ordering::Acquire);
                let mine = own.and_then(|o| o.get(i)).map_or(0, |o| o.paused_until);
                let until = shared.max(mine);
                if until <= now_ns {
                    return None;
                }
                earliest = earliest.min(until);
            }
            (earliest != u64::MAX).then(|| self.instant(earliest))
        })
    }

    /// Whether endpoint `index`'s shared circuit is open (or half-open) now.
    pub fn circuit_open(&self, index: usize) -> bool {
        self.endpoints[index].open_until.load(Ordering::Acquire) != 0
    }

    /// Whether endpoint `index` is paused for everyone at `now`.
    pub fn endpoint_paused(&self, index: usize, now: Instant) -> bool {
        self.endpoints[index].paused_until.load(Ordering::Acquire) > self.nanos(now)
    }

    /// Tenants with own state on this pool (bounded by the configured tenants).
    pub fn tenants_tracked(&self) -> usize {
        self.lock().len()
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
