//! Step 4 of the flow, admission across replicas (`[cluster]`, DESIGN.md "Scale-out"): each scope's capacity on Redis, shared by every replica.
//!
//! Without `[cluster]` nothing here runs and sluice needs no Redis. With it, every
//! tenant's gate and the `[edge]` gate get a [`scope::ScopeState`] as their
//! [`SharedCapacity`](crate::admission::capacity::SharedCapacity): the queue, the pump
//! and the fair arbiter stay in this process ([`crate::admission`]); slots and tokens
//! are decided by Lua scripts on Redis's clock ([`scripts`]).
//!
//! # How a queued client is admitted
//!
//! A shared scope's fast path answers "ask", so every connect queues and its tenant's
//! pump runs one `ACQUIRE` script for the head of the queue: it registers the head's
//! arrival (Redis time) among the scope's waiters, answers `turn` while another live
//! replica's head arrived more than one token interval earlier (cluster-wide FIFO),
//! `full` while the live counts of all live replicas reach the cap, and otherwise
//! records this replica's new count and — when no `[edge]` ceiling comes after it —
//! takes the handshake token in the same script (with one, the head's `TAKE` after its
//! edge turn does not check the FIFO again: its place was decided with its slot, and
//! giving it up would lose the edge turn). One script per admitted connect; a
//! release publishes this replica's count (coalesced per scope) and, when some replica
//! waits, a notice on the scope's channel, which wakes the waiting pumps (pub/sub); a
//! one-second fallback poll covers a lost notice.
//!
//! # Counts, leases, epochs
//!
//! A replica's count of a scope is written whole (never incremented) with a version,
//! so that writes arriving out of order or twice cannot skew it. Every `heartbeat` a
//! replica renews its lease (`sluice:replicas`) and republishes every count; the
//! counts of a replica whose lease ran out (`lease_ttl`: it was killed) are ignored and
//! removed by the next script. A count published while this replica asks Redis for a
//! slot includes that slot (Redis may count one too many for a moment, never one too
//! few) and says so (`P:a`): decisions count it, the sessions replicas report (the
//! `cluster_live` of `/api/tenants`, `sluice_cluster_sessions_active`) leave it out. A
//! Redis that is new, restarted empty or flushed has no `sluice:epoch`: the first
//! heartbeat to see that names a new one. A decision sent with another epoch than
//! Redis's is refused (`epoch`), so a replica republishes (a heartbeat) before it
//! decides on a new Redis; and a replica that had published to an earlier one decides
//! on its share (of the replica set it saw before) for one heartbeat, until all the
//! others have republished too. A replica that never saw a Redis (a fresh start) has
//! nothing to republish and decides on Redis at once.
//!
//! # Redis slow or down
//!
//! Each call waits at most `redis_timeout`; three failures in a row open the breaker
//! ([`link`]). Then `on_redis_failure` decides, without Redis: `local-share` admits
//! within cap ÷ live replicas and rate ÷ live replicas (the remainder of the cap goes to
//! the replicas first in id order, so the shares add up to the cap exactly), `open` on
//! this replica's full limits, `closed` nothing new. Live sessions are never touched. A
//! heartbeat every second probes Redis; the first that goes through has republished
//! this replica's counts, and closes the breaker.

mod link;
mod scope;
mod scripts;
mod tasks;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::admission::capacity::{SharedCapacity, SharedScopes};
use crate::config::{EdgeLimits, Limits, OnRedisFailure};
use crate::metrics::ClusterMetrics;
use link::Link;
use scope::ScopeState;

/// How a replica decides right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// On Redis.
    Redis,
    /// On its share of each limit (breaker open with `local-share`, or an empty Redis
    /// being refilled).
    Share,
    /// On its full local limits (breaker open with `open`).
    Open,
    /// Nothing new (breaker open with `closed`).
    Closed,
    /// Nothing new: another live process took this replica's id (misconfiguration).
    Conflict,
}

/// What this replica knows of the cluster, for `/api/tenants` and the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// This replica's id.
    pub replica_id: String,
    /// Whether the breaker is closed (decisions on Redis).
    pub redis_up: bool,
    /// `redis`, `local-share`, `open`, `closed` or `replica-id-conflict`.
    pub mode: &'static str,
    /// Live replicas at the last heartbeat, by id.
    pub replicas: Vec<String>,
}

/// What every scope of this replica shares: the link, the clocks, the replica set.
#[derive(Debug)]
pub(crate) struct Shared {
    replica_id: String,
    /// Tells this process's counts from an earlier one's under the same replica id.
    incarnation: String,
    heartbeat: Duration,
    lease_ttl: Duration,
    redis_timeout: Duration,
    policy: OnRedisFailure,
    /// A tenant takes its token in its slot's script (no `[edge]` to wait for between).
    tenant_prefetch: bool,
    link: Link,
    /// Local time zero of the microsecond clocks below.
    start: Instant,
    /// Redis time minus local time (µs), from the last reply; `i64::MIN`: unknown.
    offset_us: AtomicI64,
    /// The epoch of the Redis this replica last republished to.
    epoch: ArcSwap<String>,
    /// Local µs until which an empty Redis is being refilled (decide on the share).
    settle_until: AtomicU64,
    /// Live replicas at the last heartbeat, sorted.
    replicas: Mutex<Vec<String>>,
    /// `n << 32 | rank` of this replica among them; 0: never seen (alone).
    members: AtomicU64,
    /// Every scope this replica holds, by key suffix (`t:NAME`, `edge`).
    scopes: Mutex<BTreeMap<String, Arc<ScopeState>>>,
    /// A scope has a count to publish.
    flush: Notify,
    /// Heartbeat now (a decision met an unknown epoch).
    beat_now: Notify,
    /// Set by [`Cluster::leave`]: the background tasks end.
    stopping: AtomicBool,
    stopped: Notify,
    /// This process has held its replica id in Redis (so another taking it is a
    /// conflict, not a restart).
    owned: AtomicBool,
    /// Another live process holds this replica's id: admit nothing new.
    conflict: AtomicBool,
    metrics: Option<ClusterMetrics>,
    /// Signalled after each heartbeat, for [`Cluster::ready`].
    beaten: Notify,
}

impl Shared {
    pub(crate) fn mode(&self) -> Mode {
        if self.conflict.load(Ordering::Acquire) {
            Mode::Conflict
        } else if self.link.is_open() {
            match self.policy {
                OnRedisFailure::LocalShare => Mode::Share,
                OnRedisFailure::Open => Mode::Open,
                OnRedisFailure::Closed => Mode::Closed,
            }
        } else if self.settling() {
            Mode::Share
        } else {
            Mode::Redis
        }
    }

    fn local_us(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_micros()).unwrap_or(u64::MAX)
    }

    /// `at` on Redis's clock (µs), when the offset is known.
    pub(crate) fn redis_us(&self, at: Instant) -> Option<i64> {
        let offset = self.offset_us.load(Ordering::Relaxed);
        (offset != i64::MIN).then(|| self.local_us(at) as i64 + offset)
    }

    /// Redis time `us` as a local instant (now or later when it is in the past: only
    /// used for "not before").
    pub(crate) fn local_instant(&self, us: i64) -> Instant {
        let offset = self.offset_us.load(Ordering::Relaxed);
        if offset == i64::MIN {
            return Instant::now();
        }
        let local = us.saturating_sub(offset).max(0) as u64;
        (self.start + Duration::from_micros(local)).max(Instant::now())
    }

    /// A reply sent at `sent`, received at `received`, said Redis's time was `now_us`.
    ///
    /// Redis read its clock somewhere within the round trip, so the offset a reply
    /// gives is right within half of it. The offset known is kept while a reply allows
    /// it (one that rules it out replaces it): the cluster-wide FIFO compares arrivals
    /// converted at different asks, and an offset moving with each round trip's jitter
    /// (milliseconds under CPU load, against clients arriving within milliseconds)
    /// reordered them from one ask to the next.
    pub(crate) fn observe_clock(&self, now_us: i64, sent: Instant, received: Instant) {
        let rtt = received.saturating_duration_since(sent);
        let offset = now_us - self.local_us(sent + rtt / 2) as i64;
        let slack = i64::try_from(rtt.as_micros() / 2).unwrap_or(i64::MAX);
        let known = self.offset_us.load(Ordering::Relaxed);
        if known == i64::MIN || known.abs_diff(offset) > slack.unsigned_abs() + 1 {
            self.offset_us.store(offset, Ordering::Relaxed);
        }
    }

    /// Redis is being refilled for `window` from now: decide on the share.
    pub(crate) fn settle_for(&self, window: Duration) {
        let until = self.local_us(Instant::now() + window);
        self.settle_until.fetch_max(until, Ordering::AcqRel);
    }

    /// Whether an empty Redis is being refilled.
    pub(crate) fn settling(&self) -> bool {
        self.local_us(Instant::now()) < self.settle_until.load(Ordering::Acquire)
    }

    /// This replica's share of `total` (remainder to the first in id order), and the
    /// number of live replicas.
    pub(crate) fn share(&self, total: u32) -> u32 {
        let m = self.members.load(Ordering::Relaxed);
        let (n, rank) = ((m >> 32).max(1) as u32, (m & 0xffff_ffff) as u32);
        total / n + u32::from(rank < total % n)
    }

    /// Live replicas as last seen (at least 1: this one).
    pub(crate) fn live_replicas(&self) -> u32 {
        ((self.members.load(Ordering::Relaxed) >> 32) as u32).max(1)
    }

    fn set_replicas(&self, mut live: Vec<String>) {
        live.sort();
        let rank = live
            .iter()
            .position(|r| *r == self.replica_id)
            .unwrap_or(live.len());
        let n = live.len().max(rank + 1) as u64;
        self.members.store(n << 32 | rank as u64, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.replicas.set(n as i64);
        }
        *self.replicas.lock().unwrap_or_else(PoisonError::into_inner) = live;
    }

    fn scopes(&self) -> Vec<Arc<ScopeState>> {
        self.lock_scopes().values().cloned().collect()
    }

    fn lock_scopes(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<ScopeState>>> {
        self.scopes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every waiting pump looks again (the breaker changed, notices may have been lost).
    fn wake_all(&self) {
        for scope in self.scopes() {
            scope.wake();
        }
    }

    /// The scope with key suffix `key`, made on first use.
    fn scope(
        self: &Arc<Self>,
        key: String,
        label: &str,
        fifo: bool,
        prefetch: bool,
    ) -> Arc<ScopeState> {
        let mut scopes = self.lock_scopes();
        scopes
            .entry(key.clone())
            .or_insert_with(|| Arc::new(ScopeState::new(self.clone(), key, label, fifo, prefetch)))
            .clone()
    }
}

/// This replica's membership of a `[cluster]`: makes every scope's shared capacity
/// ([`SharedScopes`]) and runs the heartbeat, the release flusher and the notice
/// listener.
#[derive(Debug, Clone)]
pub struct Cluster(Arc<Shared>);

impl Cluster {
    /// Joins the cluster `config` describes: starts the background tasks (the first
    /// heartbeat at once). Needs a tokio runtime. Until the first heartbeat went
    /// through, decisions follow `on_redis_failure` ([`Self::ready`] waits for it).
    pub fn new(
        config: &crate::config::Cluster,
        has_edge: bool,
        metrics: Option<ClusterMetrics>,
    ) -> Self {
        let shared = Arc::new(Shared {
            replica_id: config.replica_id.clone(),
            incarnation: format!("{:016x}", rand::random::<u64>()),
            heartbeat: config.heartbeat,
            lease_ttl: config.lease_ttl,
            redis_timeout: config.redis_timeout,
            policy: config.on_redis_failure,
            tenant_prefetch: !has_edge,
            link: Link::new(config.redis.clone(), config.redis_timeout, metrics.clone()),
            start: Instant::now(),
            offset_us: AtomicI64::new(i64::MIN),
            epoch: ArcSwap::from_pointee(String::new()),
            settle_until: AtomicU64::new(0),
            replicas: Mutex::default(),
            members: AtomicU64::new(0),
            scopes: Mutex::default(),
            flush: Notify::new(),
            beat_now: Notify::new(),
            owned: AtomicBool::new(false),
            conflict: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            stopped: Notify::new(),
            metrics,
            beaten: Notify::new(),
        });
        tasks::spawn(&shared);
        Self(shared)
    }

    /// Waits (at most `within`) for the first heartbeat to go through; false when
    /// Redis was not reached (the replica then serves on its failure policy).
    pub async fn ready(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let beaten = self.0.beaten.notified();
            if !self.0.link.is_open() {
                return true;
            }
            if tokio::time::timeout_at(deadline, beaten).await.is_err() {
                return !self.0.link.is_open();
            }
        }
    }

    /// What makes each scope's capacity, for [`crate::admission::Admission::clustered`].
    pub fn scopes(&self) -> Arc<dyn SharedScopes> {
        Arc::new(self.clone())
    }

    /// How this replica decides now.
    pub fn mode(&self) -> Mode {
        self.0.mode()
    }

    /// What this replica knows of the cluster.
    pub fn status(&self) -> Status {
        let mode = self.0.mode();
        Status {
            replica_id: self.0.replica_id.clone(),
            redis_up: !self.0.link.is_open(),
            mode: match mode {
                Mode::Redis => "redis",
                Mode::Share => "local-share",
                Mode::Open => "open",
                Mode::Closed => "closed",
                Mode::Conflict => "replica-id-conflict",
            },
            replicas: self
                .0
                .replicas
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// Leaves the cluster (after the drain): this replica's lease and counts are
    /// removed at once, so the others need not wait `lease_ttl`; the background tasks
    /// end.
    pub async fn leave(&self) {
        tasks::leave(&self.0).await;
    }
}

impl SharedScopes for Cluster {
    fn tenant(&self, name: &str, limits: &Limits) -> Arc<dyn SharedCapacity> {
        let scope = self
            .0
            .scope(format!("t:{name}"), name, true, self.0.tenant_prefetch);
        scope.configure(
            limits.max_sessions,
            limits.handshake_rate,
            limits.handshake_burst,
        );
        scope
    }

    fn edge(&self, limits: &EdgeLimits) -> Arc<dyn SharedCapacity> {
        let scope = self
            .0
            .scope("edge".to_owned(), crate::metrics::EDGE_LABEL, false, true);
        scope.configure(
            limits.max_sessions,
            limits.handshake_rate,
            limits.handshake_burst,
        );
        scope
    }
}
