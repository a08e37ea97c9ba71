//! The live state of each upstream group's endpoints: sessions on each, circuit
//! breakers, and pauses asked for by the edge (`503` + `Retry-After`), for the whole
//! group and for each tenant on it.
//!
//! Choosing an endpoint ([`Pool::choose`]): among endpoints that are neither paused nor
//! behind an open circuit, for everyone or for the client's tenant, the one with the
//! fewest live sessions, ties broken round-robin; endpoints not yet tried by this client
//! first.
//!
//! **Whose failure is it.** An attempt's outcome ([`Outcome`]) is either about the
//! endpoint or about one tenant's request on it:
//! - [`Outcome::EndpointFailure`] — the connection could not be made (refused or reset
//!   while connecting, TCP or TLS connect timeout, TLS failure): no request was read, so
//!   it cannot depend on the tenant. [`CIRCUIT_FAILURES`] in a row open the endpoint's
//!   shared circuit for [`CIRCUIT_COOLDOWN`]; then exactly one client's attempt is let
//!   through as a probe, and its result closes or reopens it.
//! - [`Outcome::RequestFailure`] — the edge was reached and answered this request badly
//!   (502/503/504 without `Retry-After`, no answer within the timeout, the connection
//!   dropped after the request was sent). It counts against the tenant on that endpoint
//!   only: [`CIRCUIT_FAILURES`] in a row open the tenant's own circuit there for
//!   [`CIRCUIT_COOLDOWN`] (its clients skip the endpoint, others do not); after the
//!   cool-down the tenant's next attempt goes through and a failure reopens it at once.
//! - [`Outcome::Pause`] — `503` + `Retry-After`: the tenant's own pause on the endpoint.
//!
//! **Escalation: when several tenants draw the same answer.** When a tenant's own
//! circuit on an endpoint opens (or reopens) while another tenant's own circuit on the
//! same endpoint is open, the endpoint's shared circuit opens too, for everyone.
//! Likewise a pause: when a tenant is told to pause on an endpoint on which another
//! tenant's own pause is still running, the endpoint is paused for everyone until the
//! earlier of the two ends (the time both tenants were told to wait). So one tenant,
//! whatever path it asks for, can only ever shut itself out; two tenants seeing the same
//! trouble are believed. The second tenant needs the same evidence as the first (its own
//! circuit open, not one failure): else a tenant refused on its own path could turn any
//! single transient failure of another into a cool-down for the whole group. A shared
//! circuit's probe that fails for its request alone (no other tenant's circuit open
//! there) closes the shared circuit: the endpoint answered.
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

/// How an attempt on an endpoint ended, for its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `101`.
    Success,
    /// The connection could not be made (connect refused or reset, TCP/TLS connect
    /// timeout, TLS failure): counts against the endpoint, for everyone.
    EndpointFailure,
    /// The edge was reached but failed this request (502/503/504 without
    /// `Retry-After`, no answer in time, the connection dropped after the request was
    /// sent): counts against the tenant on the endpoint.
    RequestFailure,
    /// The edge asked for a pause (`503` + `Retry-After`, already capped by
    /// `upstream.max_pause`): the tenant's, or everyone's once two tenants were asked.
    Pause(Duration),
    /// Any other answer: the endpoint is alive; its failures are forgotten.
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

    /// Records how an attempt of a client of `tenant` on endpoint `index` ended.
    pub fn record(&self, index: usize, tenant: &str, probe: bool, outcome: Outcome, now: Instant) {
        let e = &self.endpoints[index];
        let now_ns = self.nanos(now);
        let cooldown_end = self.nanos(now + CIRCUIT_COOLDOWN);
        match outcome {
            Outcome::Success | Outcome::Answered => {
                e.failures.store(0, Ordering::Release);
                e.open_until.store(0, Ordering::Release);
                self.forget_failures(tenant, index, now_ns);
            }
            Outcome::EndpointFailure => {
                // Failures of attempts that started before a probe was chosen must not
                // decide the probe's circuit; only the probe's own outcome does.
                if !probe && e.probing.load(Ordering::Acquire) {
                    e.failures.fetch_add(1, Ordering::AcqRel);
                    return;
                }
                let failures = e.failures.fetch_add(1, Ordering::AcqRel) + 1;
                if probe || failures >= CIRCUIT_FAILURES {
                    e.open_until.store(cooldown_end, Ordering::Release);
                }
            }
            Outcome::RequestFailure => {
                let escalate = self.update_own(tenant, index, |own, others| {
                    own.failures = own.failures.saturating_add(1);
                    if own.failures < CIRCUIT_FAILURES {
                        return false;
                    }
                    own.open_until = cooldown_end;
                    others.iter().any(|o| o.open_until > now_ns)
                });
                if escalate {
                    e.open_until.store(cooldown_end, Ordering::Release);
                } else if probe {
                    // The endpoint answered the probe; what it answered is this
                    // tenant's alone.
                    e.failures.store(0, Ordering::Release);
                    e.open_until.store(0, Ordering::Release);
                }
            }
            Outcome::Pause(d) => {
                let until = self.nanos(now + d);
                let shared = self.update_own(tenant, index, |own, others| {
                    own.paused_until = own.paused_until.max(until);
                    others
                        .iter()
                        .map(|o| o.paused_until)
                        .filter(|&t| t > now_ns)
                        .max()
                        .map(|other| other.min(until))
                });
                if let Some(shared) = shared {
                    e.paused_until.fetch_max(shared, Ordering::AcqRel);
                }
                // The endpoint answered.
                e.open_until.store(0, Ordering::Release);
            }
        }
        if probe {
            e.probing.store(false, Ordering::Release);
        }
    }

    /// Updates `tenant`'s own state on endpoint `index` with `f`, which also sees the
    /// other tenants' states on that endpoint.
    fn update_own<R>(
        &self,
        tenant: &str,
        index: usize,
        f: impl FnOnce(&mut Own, &[Own]) -> R,
    ) -> R {
        let n = self.endpoints.len();
        let mut map = self.lock();
        let others: Vec<Own> = map
            .iter()
            .filter(|(name, _)| &***name != tenant)
            .filter_map(|(_, v)| v.get(index).copied())
            .collect();
        if !map.contains_key(tenant) {
            map.insert(tenant.into(), vec![Own::default(); n].into_boxed_slice());
        }
        let own = map.get_mut(tenant).expect("inserted above");
        let result = f(&mut own[index], &others);
        self.any_own.store(true, Ordering::Release);
        result
    }

    /// A good answer to `tenant` on endpoint `index`: its failures and own circuit
    /// there are forgotten (its own pause runs on); an entry with nothing left goes.
    fn forget_failures(&self, tenant: &str, index: usize, now: u64) {
        if !self.any_own.load(Ordering::Acquire) {
            return;
        }
        let mut map = self.lock();
        if let Some(own) = map.get_mut(tenant) {
            let o = &mut own[index];
            o.failures = 0;
            o.open_until = 0;
            if own.iter().all(|o| o.clear(now)) {
                map.remove(tenant);
            }
        }
        self.any_own.store(!map.is_empty(), Ordering::Release);
    }

    /// Forgets the own state of tenants for which `keep` is false (a reload).
    fn retain_tenants(&self, keep: impl Fn(&str) -> bool) {
        let mut map = self.lock();
        map.retain(|name, _| keep(name));
        self.any_own.store(!map.is_empty(), Ordering::Release);
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
        assert_eq!(use_index(pool.choose("a", now, &[false; 3])), 2);
        let _d = pool.lease(2);
        // 1 and 2 tie at one session each; round-robin alternates.
        let picks: Vec<usize> = (0..4)
            .map(|_| use_index(pool.choose("a", now, &[false; 3])))
            .collect();
        assert!(picks.contains(&1) && picks.contains(&2), "{picks:?}");
        // An endpoint this client already tried goes last.
        assert_eq!(use_index(pool.choose("a", now, &[false, true, true])), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_circuit_opens_after_failures_and_one_probe_decides() {
        let pool = Pool::new(2);
        let now = Instant::now();
        for _ in 0..CIRCUIT_FAILURES {
            pool.record(0, "a", false, Outcome::EndpointFailure, now);
        }
        assert!(pool.circuit_open(0));
        for _ in 0..5 {
            assert_eq!(
                use_index(pool.choose("a", now, &[false; 2])),
                1,
                "skipped while open"
            );
        }
        // After the cool-down, exactly one probe.
        let later = now + CIRCUIT_COOLDOWN;
        let first = pool.choose("a", later, &[false, true]);
        assert_eq!(
            first,
            Choice::Use {
                index: 0,
                probe: true
            }
        );
        assert!(matches!(
            pool.choose("a", later, &[false, true]),
            Choice::Use { index: 1, .. }
        ));
        pool.record(0, "a", true, Outcome::Success, later);
        assert!(!pool.circuit_open(0));
        // A failed probe reopens it for another cool-down.
        for _ in 0..CIRCUIT_FAILURES {
            pool.record(0, "a", false, Outcome::EndpointFailure, later);
        }
        let again = later + CIRCUIT_COOLDOWN;
        assert_eq!(
            pool.choose("a", again, &[false, true]),
            Choice::Use {
                index: 0,
                probe: true
            }
        );
        pool.record(0, "a", true, Outcome::EndpointFailure, again);
        assert!(matches!(
            pool.choose("a", again, &[false, true]),
            Choice::Use { index: 1, .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_whose_client_left_frees_the_circuit_for_the_next_probe() {
        let pool = Arc::new(Pool::new(1));
        let now = Instant::now();
        for _ in 0..CIRCUIT_FAILURES {
            pool.record(0, "a", false, Outcome::EndpointFailure, now);
        }
        let later = now + CIRCUIT_COOLDOWN;
        assert_eq!(
            pool.choose("a", later, &[false]),
            Choice::Use {
                index: 0,
                probe: true
            }
        );
        let guard = pool.probe_guard(0);
        assert!(matches!(
            pool.choose("a", later, &[false]),
            Choice::Blocked { .. }
        ));
        drop(guard); // the probing client hung up mid-attempt
        assert_eq!(
            pool.choose("a", later, &[false]),
            Choice::Use {
                index: 0,
                probe: true
            }
        );
        pool.probe_guard(0).record("a", Outcome::Success, later);
        assert!(!pool.circuit_open(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_blocks_until_it_ends() {
        let pool = Pool::new(1);
        let now = Instant::now();
        pool.record(0, "a", false, Outcome::Pause(Duration::from_secs(2)), now);
        assert_eq!(
            pool.choose("a", now, &[false]),
            Choice::Blocked {
                until: now + Duration::from_secs(2),
                paused: true
            }
        );
        assert_eq!(
            use_index(pool.choose("a", now + Duration::from_secs(2), &[false])),
            0
        );
    }

    const NONE: [bool; 2] = [false; 2];

    fn fail(pool: &Pool, index: usize, tenant: &str, times: u32, now: Instant) {
        for _ in 0..times {
            pool.record(index, tenant, false, Outcome::RequestFailure, now);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenants_request_failures_open_only_its_own_circuit() {
        let pool = Pool::new(2);
        let now = Instant::now();
        fail(&pool, 0, "a", CIRCUIT_FAILURES, now);
        assert!(!pool.circuit_open(0), "the shared circuit stays closed");
        for _ in 0..4 {
            assert_eq!(use_index(pool.choose("a", now, &NONE)), 1, "a skips 0");
        }
        // b is not held back: it may use 0 (here: 1 is already tried).
        assert_eq!(
            pool.choose("b", now, &[false, true]),
            Choice::Use {
                index: 0,
                probe: false
            }
        );
        // With both its endpoints open, a is blocked (not paused); b is not.
        fail(&pool, 1, "a", CIRCUIT_FAILURES, now);
        assert_eq!(
            pool.choose("a", now, &NONE),
            Choice::Blocked {
                until: now + CIRCUIT_COOLDOWN,
                paused: false
            }
        );
        assert!(matches!(pool.choose("b", now, &NONE), Choice::Use { .. }));
        assert_eq!(pool.paused_until("a", now), None, "a circuit is no pause");
        // After the cool-down a's next attempt goes through; one failure reopens.
        let later = now + CIRCUIT_COOLDOWN;
        assert_eq!(
            pool.choose("a", later, &[false, true]),
            Choice::Use {
                index: 0,
                probe: false
            }
        );
        fail(&pool, 0, "a", 1, later);
        assert_eq!(use_index(pool.choose("a", later, &NONE)), 1);
        assert!(!pool.circuit_open(0));
        // Answers that are not failures forget a's failures; nothing is left to keep.
        pool.record(0, "a", false, Outcome::Success, later);
        pool.record(1, "a", false, Outcome::Answered, later);
        assert_eq!(pool.tenants_tracked(), 0);
        assert!(matches!(
            pool.choose("a", later, &[false, true]),
            Choice::Use { index: 0, .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn two_tenants_failing_on_an_endpoint_open_its_circuit_for_everyone() {
        let pool = Pool::new(2);
        let now = Instant::now();
        fail(&pool, 0, "a", CIRCUIT_FAILURES, now);
        // b's first failures are its own; its circuit opening is the second witness.
        fail(&pool, 0, "b", CIRCUIT_FAILURES - 1, now);
        assert!(!pool.circuit_open(0));
        fail(&pool, 0, "b", 1, now);
        assert!(pool.circuit_open(0));
        assert_eq!(use_index(pool.choose("c", now, &NONE)), 1, "c skips it too");
        // The other tenant needs an open circuit too: a failure or two of its own is not
        // enough (a flaky moment of b's must not let a's refusals shut 1 for all).
        fail(&pool, 1, "b", CIRCUIT_FAILURES - 1, now);
        fail(&pool, 1, "a", CIRCUIT_FAILURES + 3, now);
        assert!(!pool.circuit_open(1));
        // A circuit that has cooled down is no evidence either.
        let fresh = Pool::new(1);
        fail(&fresh, 0, "b", CIRCUIT_FAILURES, now);
        let later = now + CIRCUIT_COOLDOWN;
        fail(&fresh, 0, "a", CIRCUIT_FAILURES, later);
        assert!(!fresh.circuit_open(0));
        // Once b fails there again (its circuit was half-open, one failure reopens it),
        // both are open: shared.
        fail(&fresh, 0, "b", 1, later);
        assert!(fresh.circuit_open(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shared_probe_that_fails_only_its_own_request_closes_the_circuit() {
        let pool = Arc::new(Pool::new(1));
        let now = Instant::now();
        fail(&pool, 0, "a", CIRCUIT_FAILURES, now);
        fail(&pool, 0, "b", CIRCUIT_FAILURES, now);
        assert!(pool.circuit_open(0));
        // After the cool-down b's circuit has cooled down too: a's probe failing on its
        // own request reopens a's circuit only.
        let later = now + CIRCUIT_COOLDOWN;
        assert_eq!(
            pool.choose("a", later, &[false]),
            Choice::Use {
                index: 0,
                probe: true
            }
        );
        pool.probe_guard(0)
            .record("a", Outcome::RequestFailure, later);
        assert!(!pool.circuit_open(0));
        assert!(matches!(
            pool.choose("a", later, &[false]),
            Choice::Blocked { paused: false, .. }
        ));
        assert_eq!(
            pool.choose("c", later, &[false]),
            Choice::Use {
                index: 0,
                probe: false
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn endpoint_failures_open_the_circuit_for_every_tenant() {
        let pool = Pool::new(2);
        let now = Instant::now();
        for _ in 0..CIRCUIT_FAILURES {
            pool.record(0, "a", false, Outcome::EndpointFailure, now);
        }
        assert!(pool.circuit_open(0));
        for tenant in ["a", "b"] {
            assert_eq!(use_index(pool.choose(tenant, now, &NONE)), 1);
        }
        assert_eq!(pool.tenants_tracked(), 0, "nothing kept per tenant");
    }

    #[tokio::test(start_paused = true)]
    async fn one_tenants_pause_holds_that_tenant_until_a_second_is_told_to_pause() {
        let pool = Pool::new(2);
        let now = Instant::now();
        let s = Duration::from_secs;
        pool.record(0, "a", false, Outcome::Pause(s(30)), now);
        pool.record(1, "a", false, Outcome::Pause(s(30)), now);
        assert_eq!(pool.paused_until("a", now), Some(now + s(30)));
        assert_eq!(
            pool.choose("a", now, &NONE),
            Choice::Blocked {
                until: now + s(30),
                paused: true
            }
        );
        assert_eq!(pool.paused_until("b", now), None);
        assert!(matches!(pool.choose("b", now, &NONE), Choice::Use { .. }));
        assert!(!pool.endpoint_paused(0, now) && !pool.endpoint_paused(1, now));
        // b is told to pause on 0 too: 0 is paused for everyone, until the earlier end.
        pool.record(0, "b", false, Outcome::Pause(s(10)), now);
        assert!(pool.endpoint_paused(0, now));
        assert_eq!(use_index(pool.choose("c", now, &NONE)), 1);
        assert_eq!(pool.paused_until("c", now), None);
        pool.record(1, "b", false, Outcome::Pause(s(60)), now);
        assert_eq!(pool.paused_until("c", now), Some(now + s(10)));
        // b may use 0 again when its own and the shared pause there end.
        assert_eq!(pool.paused_until("b", now), Some(now + s(10)));
        assert_eq!(
            use_index(pool.choose("c", now + s(10), &NONE)),
            0,
            "0's shared pause ended; 1 is paused for all until 30 s"
        );
        assert!(pool.endpoint_paused(1, now + s(29)));
        assert!(!pool.endpoint_paused(1, now + s(30)));
        // A pause that has run out is no evidence.
        let fresh = Pool::new(1);
        fresh.record(0, "a", false, Outcome::Pause(s(2)), now);
        fresh.record(0, "b", false, Outcome::Pause(s(2)), now + s(2));
        assert!(!fresh.endpoint_paused(0, now + s(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_forgets_tenants_no_longer_on_the_group() {
        let text = |tenants: &str| {
            format!(
                "[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:1\", \"ws://127.0.0.1:2\"]\n\
                 [upstream.groups.other]\nendpoints = [\"ws://127.0.0.1:3\"]\n{tenants}"
            )
        };
        let none = r#"auth = { kind = "none" }"#;
        let both = text(&format!("[tenants.a]\n{none}\n[tenants.b]\n{none}\n"));
        let config = Config::parse(&both, &HashMap::new()).unwrap();
        let pools = Pools::new(&config);
        let pool = pools.get("primary").unwrap();
        let now = Instant::now();
        fail(&pool, 0, "a", 1, now);
        fail(&pool, 0, "b", 1, now);
        assert_eq!(pool.tenants_tracked(), 2);
        // a is removed, b moves to another group.
        let moved = text(&format!(
            "[tenants.b]\n{none}\nupstream_group = \"other\"\n[tenants.c]\n{none}\n"
        ));
        pools.reconcile(&Config::parse(&moved, &HashMap::new()).unwrap());
        assert!(Arc::ptr_eq(&pool, &pools.get("primary").unwrap()));
        assert_eq!(pool.tenants_tracked(), 0);
        assert!(matches!(pool.choose("a", now, &NONE), Choice::Use { .. }));
    }
}
