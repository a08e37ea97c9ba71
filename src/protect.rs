//! Abuse limits that act before any tenant is known (`[protection]`, DESIGN.md flow
//! steps 1 and 3).
//!
//! - [`Preauth`]: a per-client-IP limiter on *unauthenticated* attempts — requests
//!   refused as malformed, for an unknown tenant or a bad credential. Each such attempt
//!   takes a token from the IP's bucket (`preauth_rate_per_ip`, `preauth_burst_per_ip`;
//!   a GCRA); once the bucket is empty, every request from that IP is refused with
//!   `429 too-many-attempts` before the tenant is even resolved, until a token is due. Clients that authenticate spend nothing, so a fleet behind one NAT
//!   address is not slowed by its own successful connects, and another IP is never
//!   affected.
//! - [`Pending`]: a global cap on connections still in their HTTP phase
//!   (`max_pending_handshakes`): past it, a new connection gets a bare `503` and is
//!   closed before anything is read.
//!
//! Header-read timeout and header size (slowloris, huge heads) are hyper's
//! (`listen.header_timeout`, `protection.max_header_bytes`, see [`crate::listen`]).
//!
//! Memory is bounded: the limiter keeps one bucket (40 bytes) per address that failed
//! recently, forgets those whose bucket is full again every [`CLEANUP_PERIOD`], and
//! tracks at most [`MAX_TRACKED`] addresses.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::admission::capacity::Tokens;
use crate::config::Protection;

/// How often addresses whose buckets are full again are forgotten.
pub const CLEANUP_PERIOD: Duration = Duration::from_secs(10);
/// Most addresses tracked at once; beyond, a new address is not limited until the
/// cleanup makes room (only addresses that failed recently are tracked).
pub const MAX_TRACKED: usize = 100_000;

/// The address a client's attempts are counted under: its IPv4 address, or the /64 of
/// its IPv6 address (one host usually has a whole /64 to pick addresses from).
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let net = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(net))
            }
        },
    }
}

/// The per-IP limiter on unauthenticated attempts: a GCRA bucket per address that
/// failed recently (the admission's own [`Tokens`], which, unlike governor's limiter,
/// can say when the next token is due without taking one: an address is refused as
/// soon as its bucket is empty, not one attempt later).
#[derive(Debug)]
pub struct Preauth {
    buckets: DashMap<IpAddr, Tokens>,
    /// Rate (`f64` bits) and burst in force.
    rate: std::sync::atomic::AtomicU64,
    burst: AtomicU32,
}

impl Preauth {
    /// A limiter with `[protection]`'s rate and burst.
    pub fn new(p: &Protection) -> Self {
        Self {
            buckets: DashMap::new(),
            rate: std::sync::atomic::AtomicU64::new(p.preauth_rate_per_ip.to_bits()),
            burst: AtomicU32::new(p.preauth_burst_per_ip),
        }
    }

    /// Applies reloaded limits to every address's bucket.
    pub fn reconfigure(&self, p: &Protection) {
        self.rate
            .store(p.preauth_rate_per_ip.to_bits(), Ordering::Relaxed);
        self.burst.store(p.preauth_burst_per_ip, Ordering::Relaxed);
        for bucket in &self.buckets {
            bucket.set_rate(p.preauth_rate_per_ip, p.preauth_burst_per_ip);
        }
    }

    /// How long `ip` is still refused, if its bucket is empty.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let ready = self.buckets.get(&key(ip))?.ready_at();
        let left = ready.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Counts an unauthenticated attempt of `ip` (takes a token from its bucket).
    pub fn failed(&self, ip: IpAddr) {
        let ip = key(ip);
        let now = Instant::now();
        if let Some(bucket) = self.buckets.get(&ip) {
            let _ = bucket.try_take(now);
            return;
        }
        if self.buckets.len() >= MAX_TRACKED {
            return;
        }
        let rate = f64::from_bits(self.rate.load(Ordering::Relaxed));
        let bucket = self
            .buckets
            .entry(ip)
            .or_insert_with(|| Tokens::new(rate, self.burst.load(Ordering::Relaxed)));
        let _ = bucket.try_take(now);
    }

    /// Every [`CLEANUP_PERIOD`], forgets addresses whose buckets are full again; runs
    /// until the limiter is dropped.
    pub fn spawn_cleanup(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CLEANUP_PERIOD);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else {
                    return;
                };
                let now = Instant::now();
                this.buckets.retain(|_, bucket| !bucket.full(now));
                this.buckets.shrink_to_fit();
            }
        });
    }
}

/// The cap on connections in their HTTP phase (TLS handshake, request head, and in
/// `hold` mode the queue wait and upstream handshake, until the `101`).
#[derive(Debug)]
pub struct Pending {
    permits: Arc<Semaphore>,
    /// The cap in force (a reload adds or forgets permits to reach a new one).
    cap: AtomicU32,
}

impl Pending {
    /// `max_pending_handshakes` permits.
    pub fn new(p: &Protection) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(p.max_pending_handshakes as usize)),
            cap: AtomicU32::new(p.max_pending_handshakes),
        }
    }

    /// A place for a new connection, if one is free.
    pub fn try_enter(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Connections in their HTTP phase now.
    pub fn in_use(&self) -> usize {
        (self.cap.load(Ordering::Relaxed) as usize).saturating_sub(self.permits.available_permits())
    }

    /// Applies a reloaded `max_pending_handshakes`. A lower cap takes effect as places
    /// free up; connections already in are not cut.
    pub fn reconfigure(&self, p: &Protection) {
        let new = p.max_pending_handshakes;
        let old = self.cap.swap(new, Ordering::Relaxed);
        if new > old {
            self.permits.add_permits((new - old) as usize);
        } else if old > new {
            let mut to_forget = (old - new) as usize;
            to_forget -= self.permits.forget_permits(to_forget);
            if to_forget > 0 {
                // Held now: take them as they come back.
                let permits = self.permits.clone();
                tokio::spawn(async move {
                    if let Ok(p) = permits.acquire_many_owned(to_forget as u32).await {
                        p.forget();
                    }
                });
            }
        }
    }
}
