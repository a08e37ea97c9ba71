//! Steps 1 and 3 of the flow: abuse limits that act before any tenant is known (`[protection]`).
//!
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
//! - [`Pending`]: caps on connections still in their HTTP phase, all together
//!   (`max_pending_handshakes`) and, once half of those places are taken, from one
//!   address: at most `max_pending_per_ip` connections not yet authenticated (IPv6 per
//!   /64). Past either, a new connection gets a bare `503` and is closed before
//!   anything is read. One address's idle sockets cannot take the whole pool, while a
//!   burst from one NAT address is served when there is room and its authenticated
//!   clients queue under their tenant's limits.
//!
//! Header-read timeout and header size (slowloris, huge heads) are hyper's
//! (`listen.header_timeout`, `protection.max_header_bytes`, see [`crate::server`]).
//!
//! Memory is bounded: the limiter keeps one bucket (40 bytes) per address that failed
//! recently, forgets those whose bucket is full again every [`CLEANUP_PERIOD`], and
//! tracks at most [`MAX_TRACKED`] addresses. The pending caps keep one count per
//! address with a connection in its HTTP phase now, so never more than
//! `max_pending_handshakes` of them.

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

/// The caps on connections in their HTTP phase (TLS handshake, request head, and in
/// `hold` mode the queue wait and upstream handshake, until the `101`): all together
/// (`max_pending_handshakes`) and, under pressure, per address: the connections from
/// one address (counted under [`key`]: IPv6 per /64) that are not yet authenticated
/// (`max_pending_per_ip`; see [`AddressShare`] and [`Pending::under_pressure`]).
///
/// The per-address counts live in a map that holds only addresses with a connection in
/// its HTTP phase now (an address is removed when its count drops to 0), and each count
/// is backed by a place of the global cap: the map never holds more addresses than
/// there are connections in their HTTP phase.
#[derive(Debug)]
pub struct Pending {
    permits: Arc<Semaphore>,
    /// The cap in force (a reload adds or forgets permits to reach a new one).
    cap: AtomicU32,
    per_ip: Arc<PerIp>,
}

/// Connections in their HTTP phase per address, and the cap on them.
#[derive(Debug)]
struct PerIp {
    counts: DashMap<IpAddr, u32>,
    cap: AtomicU32,
}

/// Why [`Pending::try_enter`] found no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `max_pending_handshakes` connections are in their HTTP phase.
    All,
    /// `max_pending_per_ip` connections from this address are.
    Address,
}

/// A connection's place in its HTTP phase: its share of `max_pending_handshakes` (given
/// back when the place is dropped) and of its address's `max_pending_per_ip` (given
/// back when its request is authenticated, or with the place, whichever comes first).
#[derive(Debug)]
pub struct Place {
    _permit: OwnedSemaphorePermit,
    share: Arc<AddressShare>,
}

impl Place {
    /// The connection's share of its address's `max_pending_per_ip`, for the request's
    /// handler to give back once the request is authenticated.
    pub fn address_share(&self) -> Arc<AddressShare> {
        self.share.clone()
    }
}

/// One connection's count in its address's `max_pending_per_ip`, given back exactly
/// once: by [`AddressShare::release`] or when the last handle to it is dropped.
///
/// The cap is on connections *not yet authenticated*: idle or slow sockets from one
/// address cannot fill the pending pool, while a fleet behind one NAT address whose
/// authenticated clients wait in their tenant's queue (`hold` mode) is bounded by its
/// tenant's `queue_depth` instead, as the per-IP limiter spares clients that
/// authenticate.
#[derive(Debug)]
pub struct AddressShare {
    per_ip: Arc<PerIp>,
    key: IpAddr,
    held: std::sync::atomic::AtomicBool,
}

impl AddressShare {
    /// Gives the count back (once; later calls do nothing).
    pub fn release(&self) {
        if !self.held.swap(false, Ordering::AcqRel) {
            return;
        }
        if let dashmap::Entry::Occupied(mut count) = self.per_ip.counts.entry(self.key) {
            if *count.get() <= 1 {
                count.remove();
            } else {
                *count.get_mut() -= 1;
            }
        }
    }
}

impl Drop for AddressShare {
    fn drop(&mut self) {
        self.release();
    }
}

impl Pending {
    /// `max_pending_handshakes` places, at most `max_pending_per_ip` of them per address.
    pub fn new(p: &Protection) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(p.max_pending_handshakes as usize)),
            cap: AtomicU32::new(p.max_pending_handshakes),
            per_ip: Arc::new(PerIp {
                counts: DashMap::new(),
                cap: AtomicU32::new(p.max_pending_per_ip),
            }),
        }
    }

    /// A place for a new connection from `ip`, if one is free in all and, while the
    /// pool is under pressure ([`Pending::under_pressure`]), for its address.
    ///
    /// # Errors
    /// [`Full`]: which cap is reached.
    pub fn try_enter(&self, ip: IpAddr) -> Result<Place, Full> {
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| Full::All)?;
        let key = key(ip);
        let cap = self.per_ip.cap.load(Ordering::Relaxed);
        let pressed = self.under_pressure();
        match self.per_ip.counts.entry(key) {
            dashmap::Entry::Occupied(count) if pressed && *count.get() >= cap => {
                // The permit goes back as it is dropped here.
                drop(count);
                return Err(Full::Address);
            }
            dashmap::Entry::Occupied(mut count) => *count.get_mut() += 1,
            dashmap::Entry::Vacant(slot) => {
                slot.insert(1);
            }
        }
        Ok(Place {
            _permit: permit,
            share: Arc::new(AddressShare {
                per_ip: self.per_ip.clone(),
                key,
                held: std::sync::atomic::AtomicBool::new(true),
            }),
        })
    }

    /// Whether half of `max_pending_handshakes` places or more are taken: from then on
    /// an address gets no place beyond its `max_pending_per_ip` not-yet-authenticated
    /// connections. Below it the per-address cap does not bind, so a burst of connects
    /// from one NAT address (a whole office at shift start, whose heads sluice has not
    /// read yet) is not refused while there is room for everyone; at it, one address
    /// cannot take the rest of the pool, and other addresses keep at least the other
    /// half (less the shares of other such addresses).
    pub fn under_pressure(&self) -> bool {
        self.in_use() * 2 >= self.cap.load(Ordering::Relaxed) as usize
    }

    /// Connections in their HTTP phase now.
    pub fn in_use(&self) -> usize {
        (self.cap.load(Ordering::Relaxed) as usize).saturating_sub(self.permits.available_permits())
    }

    /// Addresses with a connection in its HTTP phase now.
    pub fn addresses(&self) -> usize {
        self.per_ip.counts.len()
    }

    /// Applies reloaded `max_pending_handshakes` and `max_pending_per_ip`. A lower cap
    /// takes effect as places free up; connections already in are not cut.
    pub fn reconfigure(&self, p: &Protection) {
        self.per_ip
            .cap
            .store(p.max_pending_per_ip, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn protection(all: u32, per_ip: u32) -> Protection {
        let text = format!(
            "[protection]\nmax_pending_handshakes = {all}\nmax_pending_per_ip = {per_ip}\n[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:1\"]\n[tenants.a]\nauth = {{ kind = \"none\" }}\n"
        );
        crate::Config::parse(&text, &std::collections::HashMap::new())
            .unwrap()
            .protection
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_gets_its_share_and_gives_it_back_once() {
        // Four places: from two taken on, the pool is under pressure.
        let pending = Pending::new(&protection(4, 2));
        let a = pending.try_enter(ip("192.0.2.1")).unwrap();
        let b = pending.try_enter(ip("192.0.2.1")).unwrap();
        assert_eq!(
            pending.try_enter(ip("192.0.2.1")).unwrap_err(),
            Full::Address
        );
        // The refusal took nothing.
        assert_eq!(pending.in_use(), 2);
        let other = pending.try_enter(ip("192.0.2.2")).unwrap();
        assert_eq!((pending.in_use(), pending.addresses()), (3, 2));
        drop(a);
        let c = pending.try_enter(ip("192.0.2.1")).unwrap();
        drop((b, c, other));
        // Every count back to 0: no address is kept.
        assert_eq!((pending.in_use(), pending.addresses()), (0, 0));
    }

    #[test]
    fn an_authenticated_connection_gives_its_address_share_back_and_keeps_its_place() {
        let pending = Pending::new(&protection(4, 1));
        let a = pending.try_enter(ip("192.0.2.1")).unwrap();
        let _b = pending.try_enter(ip("192.0.2.2")).unwrap();
        assert_eq!(
            pending.try_enter(ip("192.0.2.1")).unwrap_err(),
            Full::Address
        );
        let share = a.address_share();
        share.release();
        share.release(); // once only
        assert_eq!((pending.in_use(), pending.addresses()), (2, 1));
        let c = pending.try_enter(ip("192.0.2.1")).unwrap();
        drop((a, share));
        assert_eq!((pending.in_use(), pending.addresses()), (2, 2));
        drop(c);
        assert_eq!(pending.addresses(), 1);
    }

    #[test]
    fn below_half_the_pool_an_address_is_not_held_to_its_share() {
        // Ten places: a burst of four from one address (a NAT'd office), twice its
        // share, is served; with the fifth place the pool is under pressure and that
        // address gets no more.
        let pending = Pending::new(&protection(10, 2));
        let burst: Vec<_> = (0..4)
            .map(|_| pending.try_enter(ip("192.0.2.1")).unwrap())
            .collect();
        assert_eq!(
            pending.try_enter(ip("192.0.2.1")).unwrap_err(),
            Full::Address
        );
        // Another address still has its share of the other half.
        let _other = pending.try_enter(ip("192.0.2.2")).unwrap();
        let _other2 = pending.try_enter(ip("192.0.2.2")).unwrap();
        assert_eq!(
            pending.try_enter(ip("192.0.2.2")).unwrap_err(),
            Full::Address
        );
        drop(burst);
        assert_eq!(pending.addresses(), 1);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        // Six places: under pressure from three taken on.
        let pending = Pending::new(&protection(6, 2));
        let _a = pending.try_enter(ip("2001:db8:1:2::1")).unwrap();
        let _b = pending.try_enter(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert_eq!(
            pending.try_enter(ip("2001:db8:1:2::77")).unwrap_err(),
            Full::Address
        );
        let _c = pending.try_enter(ip("2001:db8:1:3::1")).unwrap();
        let _d = pending.try_enter(ip("192.0.2.7")).unwrap();
        let _e = pending.try_enter(ip("::ffff:192.0.2.7")).unwrap();
        assert_eq!(
            pending.try_enter(ip("192.0.2.7")).unwrap_err(),
            Full::Address
        );
        assert_eq!(pending.addresses(), 3);
    }

    #[tokio::test]
    async fn the_global_cap_binds_first_and_a_reload_applies_both() {
        let pending = Pending::new(&protection(2, 5));
        let a = pending.try_enter(ip("192.0.2.1")).unwrap();
        let _b = pending.try_enter(ip("192.0.2.2")).unwrap();
        assert_eq!(pending.try_enter(ip("192.0.2.3")).unwrap_err(), Full::All);
        assert_eq!(pending.addresses(), 2);
        pending.reconfigure(&protection(4, 1));
        // Already in are not cut; the address at its new cap is refused.
        assert_eq!(
            pending.try_enter(ip("192.0.2.1")).unwrap_err(),
            Full::Address
        );
        let _c = pending.try_enter(ip("192.0.2.3")).unwrap();
        drop(a);
        let _d = pending.try_enter(ip("192.0.2.1")).unwrap();
    }
}
