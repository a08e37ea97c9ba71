//! Step 4 of the flow (admission), on its own: the scheduler built from a config's
//! limits alone — no listener, no upstream pools, no metrics registry — so that a planner
//! or a test can drive it under tokio's paused clock with seeded jitter.

use std::collections::HashMap;
use std::sync::Arc;

use super::{adaptive, Admission, Admitted, Gauges, Jitter, TenantGate, TenantLoad};
use crate::config::Config;
use crate::reject::Rejection;

/// An [`Admission`] and a gate for every tenant of a config (and `_default` when
/// configured), by name. The proxy does not use this: its tenant table holds the gates.
#[derive(Debug)]
pub struct Scheduler {
    /// The scheduler itself.
    pub admission: Arc<Admission>,
    gates: HashMap<String, Arc<TenantGate>>,
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
        Self { admission, gates }
    }

    /// The gate of `tenant`.
    pub fn gate(&self, tenant: &str) -> Option<&Arc<TenantGate>> {
        self.gates.get(tenant)
    }

    /// Decides a connect of `tenant` ([`Admission::admit`]).
    ///
    /// # Panics
    /// When `tenant` is not in the config.
    pub async fn admit(&self, tenant: &str) -> Result<Admitted, Rejection> {
        let gate = self.gates.get(tenant).expect("a configured tenant");
        self.admission.admit(gate).await
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
        warning
    }
}
