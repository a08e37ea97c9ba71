//! Step 4 of the flow (admission), on its own: the scheduler built from a config's
//! limits alone — no listener, no upstream pools, no metrics registry — so that a planner
//! or a test can drive it under tokio's paused clock with seeded jitter.
//!
//! A tenant with `enforce = false` is admitted as the proxy admits it (at once, counted
//! in its gate and the edge's totals, [`Admission::admit_shadow`]); what enforcing
//! would have done is counted in its [`ShadowTally`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::shadow::{Shadow, ShadowSink, Would};
use super::{adaptive, Admission, Admitted, Gauges, Jitter, TenantGate, TenantLoad};
use crate::config::{Config, Tenant};
use crate::reject::Rejection;

/// What enforcing would have done with a shadow tenant's connects (its `would` labels
/// and would-be waits), as `sluice_shadow_decisions_total` and
/// `sluice_shadow_wait_seconds` count them in the proxy.
#[derive(Debug, Default)]
pub struct ShadowTally {
    inner: Mutex<(BTreeMap<&'static str, u64>, Vec<Duration>)>,
}

impl ShadowTally {
    /// Decisions so far by `would` label.
    pub fn decisions(&self) -> BTreeMap<&'static str, u64> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// The would-be waits of tickets that queued, in the order they left the queue.
    pub fn waits(&self) -> Vec<Duration> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }
}

impl ShadowSink for ShadowTally {
    fn decided(&self, would: Would) {
        *self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .entry(would.as_str())
            .or_default() += 1;
    }

    fn waited(&self, waited: Duration) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .push(waited);
    }
}

/// An [`Admission`] and a gate for every tenant of a config (and `_default` when
/// configured), by name. The proxy does not use this: its tenant table holds the gates.
#[derive(Debug)]
pub struct Scheduler {
    /// The scheduler itself.
    pub admission: Arc<Admission>,
    gates: HashMap<String, Arc<TenantGate>>,
    /// Shadow tenants' models and tallies, by name.
    shadows: HashMap<String, (Arc<Shadow>, Arc<ShadowTally>)>,
}

impl Scheduler {
    /// The scheduler for `config`'s `[edge]`, adaptive policy and tenants, drawing its
    /// jitter from `jitter`.
    pub fn new(config: &Config, jitter: Jitter) -> Self {
        let admission = Arc::new(Admission::new(
            config.edge.as_ref(),
            adaptive::Policy::of(&config.upstream),
            None,
            jitter,
        ));
        let gates = config
            .tenants
            .values()
            .chain(config.default_tenant.as_ref())
            .map(|t| {
                let gate = admission.gate(&t.name, &t.limits, Gauges::detached(), None);
                (t.name.clone(), gate)
            })
            .collect();
        let mut scheduler = Self {
            admission,
            gates,
            shadows: HashMap::new(),
        };
        scheduler.set_shadows(config);
        scheduler
    }

    /// Builds, keeps or ends each tenant's shadow model as its `enforce` says.
    fn set_shadows(&mut self, config: &Config) {
        let tenants: Vec<&Tenant> = config
            .tenants
            .values()
            .chain(config.default_tenant.as_ref())
            .map(|t| &**t)
            .collect();
        self.shadows.retain(|name, (shadow, _)| {
            let keep = tenants.iter().any(|t| &t.name == name && !t.limits.enforce);
            if !keep {
                shadow.end();
            }
            keep
        });
        for t in tenants.into_iter().filter(|t| !t.limits.enforce) {
            match self.shadows.get(&t.name) {
                Some((shadow, _)) => shadow.configure(&t.limits),
                None => {
                    let tally = Arc::new(ShadowTally::default());
                    let shadow = self.admission.shadow(&t.name, &t.limits, tally.clone());
                    self.shadows.insert(t.name.clone(), (shadow, tally));
                }
            }
        }
    }

    /// Whether every shadow tenant's would-be decisions are all made: no ticket queued
    /// and no would-be session left (a would-be session lasts as long as its real one,
    /// from when enforcing would have let it in, so it can outlive it).
    pub fn shadows_settled(&self) -> bool {
        self.shadows.values().all(|(shadow, _)| {
            let load = shadow.load();
            load.queued == 0 && load.live == 0
        })
    }

    /// What enforcing would have done with `tenant`'s connects; `None` when it is
    /// enforced.
    pub fn shadow_tally(&self, tenant: &str) -> Option<&Arc<ShadowTally>> {
        self.shadows.get(tenant).map(|(_, tally)| tally)
    }

    /// The gate of `tenant`.
    pub fn gate(&self, tenant: &str) -> Option<&Arc<TenantGate>> {
        self.gates.get(tenant)
    }

    /// Decides a connect of `tenant` ([`Admission::admit`]; a shadow tenant's at once,
    /// [`Admission::admit_shadow`]).
    ///
    /// # Panics
    /// When `tenant` is not in the config.
    pub async fn admit(&self, tenant: &str) -> Result<Admitted, Rejection> {
        let gate = self.gates.get(tenant).expect("a configured tenant");
        match self.shadows.get(tenant) {
            Some((shadow, _)) => self.admission.admit_shadow(gate, shadow),
            None => self.admission.admit(gate).await,
        }
    }

    /// The fast path alone for `tenant` ([`Admission::try_admit`]).
    ///
    /// # Panics
    /// When `tenant` is not in the config.
    pub fn try_admit(&self, tenant: &str) -> Option<super::Permit> {
        let gate = self.gates.get(tenant).expect("a configured tenant");
        self.admission.try_admit(gate)
    }

    /// A sign of edge trouble on a handshake of `tenant` ([`Admission::upstream_trouble`]).
    ///
    /// # Panics
    /// When `tenant` is not in the config.
    pub fn upstream_trouble(&self, tenant: &str, request_level: bool) {
        let gate = self.gates.get(tenant).expect("a configured tenant");
        self.admission.upstream_trouble(gate, request_level);
    }

    /// The `[edge]` ceiling's state ([`Admission::edge_load`]).
    pub fn edge_load(&self) -> Option<super::EdgeLoad> {
        self.admission.edge_load()
    }

    /// Starts the adaptive recovery task ([`Admission::spawn_recovery`]).
    pub fn spawn_recovery(&self) {
        self.admission.spawn_recovery();
    }

    /// The admission state of `tenant`.
    pub fn tenant_load(&self, tenant: &str) -> Option<TenantLoad> {
        self.gates.get(tenant).map(|g| g.load())
    }

    /// Applies a reloaded config as the proxy's reload does: tenants that stay get their
    /// new limits, new ones a gate, removed ones are retired (their gates live on while
    /// they hold sessions). Returns the `[edge]` warning, if any.
    pub fn reconcile(&mut self, config: &Config) -> Option<String> {
        let warning = self.admission.reconfigure_edge(config.edge.as_ref());
        let mut gates = HashMap::new();
        for t in config
            .tenants
            .values()
            .chain(config.default_tenant.as_ref())
        {
            let gate = match self.gates.remove(&t.name) {
                Some(gate) => {
                    gate.configure(&t.limits, None);
                    gate
                }
                None => self
                    .admission
                    .gate(&t.name, &t.limits, Gauges::detached(), None),
            };
            gates.insert(t.name.clone(), gate);
        }
        for gate in self.gates.values() {
            gate.retire();
        }
        self.gates = gates;
        self.set_shadows(config);
        warning
    }
}
