//! Step 5 of the flow: what an attempt's outcome does to its endpoint's circuit and
//! pauses, and to its tenant's own on that endpoint ([`Pool::record`]).
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

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::{Own, Pool, CIRCUIT_COOLDOWN, CIRCUIT_FAILURES};

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

impl Pool {
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
    pub(super) fn retain_tenants(&self, keep: impl Fn(&str) -> bool) {
        let mut map = self.lock();
        map.retain(|name, _| keep(name));
        self.any_own.store(!map.is_empty(), Ordering::Release);
    }
}
