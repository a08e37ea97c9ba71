//! State: the tenant table, one handle per tenant, rebuilt from the old one by each reload.
//!
//! One [`Tenant`] handle per configured tenant, built once per config and reconciled by a
//! reload, so that the flow resolves a tenant once and passes
//! the handle on.
//!
//! A handle holds everything a connect of its tenant needs: its admission gate (with its
//! queue, session count and pause state), and, swapped whole by a reload, its validated
//! limits and credential settings, its upstream group and that group's pool (shared by
//! the group's tenants), its metrics children with their log budgets, and its call gate
//! when it has call limits ([`crate::calls`]). A tenant in shadow mode (`enforce =
//! false`) also holds its would-be admission ([`crate::admission::shadow`]): a reload
//! that flips `enforce` builds or ends it, live sessions going on either way, and the
//! next connect is decided by the new setting.
//!
//! # A tenant that a reload removes or brings back
//!
//! - A tenant that stays keeps its handle and gate; its new settings apply to new
//!   connects at once (a lowered cap never ends a live session).
//! - A removed tenant leaves the table. Its gate is retired: its queued clients are
//!   refused `tenant-unknown`, its live sessions go on and keep counting on it (each
//!   holds the handle). The table remembers it weakly, as retired.
//! - A tenant that comes back while a retired handle is still alive gets that handle
//!   again, its gate reopened with its live count, so its cap still counts the sessions
//!   that never ended.
//! - A retired handle is dropped with its last session; the next reload forgets its
//!   name. Nothing grows across reloads beyond the tenants that still hold sessions.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use tokio::time::Instant;

use crate::admission::shadow::{Shadow, ShadowSink, Would};
use crate::admission::{Admission, Admitted, Gauges, Pauses, TenantGate, TenantLoad};
use crate::auth::{self, Credential};
use crate::calls::CallGate;
use crate::config::{self, Config, Group, DEFAULT_TENANT};
use crate::control::Revocation;
use crate::metrics::{Metrics, ShadowMetrics, TenantMetrics, UNKNOWN_TENANT};
use crate::reject::Rejection;
use crate::tenant::Directory;
use crate::upstream::{Pool, Pools};

/// One tenant, resolved: what every step after resolution uses.
#[derive(Debug)]
pub struct Tenant {
    /// The tenant's name (its metric label).
    pub name: Arc<str>,
    /// Its admission gate: queue, session slots, handshake tokens, pauses.
    pub gate: Arc<TenantGate>,
    /// Its settings, swapped whole by a reload.
    settings: arc_swap::ArcSwap<Settings>,
    /// In shadow mode (`enforce = false`): its model and counters; `None` while
    /// enforced. Set and cleared by a reload.
    shadow: arc_swap::ArcSwapOption<ShadowMode>,
}

/// A shadow tenant's would-be admission ([`crate::admission::shadow`]) and its counters.
#[derive(Debug)]
struct ShadowMode {
    model: Arc<Shadow>,
    metrics: Arc<ShadowMetrics>,
}

/// What enforcing would have done, for the status page.
#[derive(Debug, Clone)]
pub struct ShadowView {
    /// The model's would-be live sessions and queue.
    pub load: TenantLoad,
    /// Would-be decisions so far by `would` label.
    pub counts: Vec<(&'static str, u64)>,
}

/// A shadow tenant's would-be decisions land in its metrics (a type of its own here, so
/// that the metrics layer implements nothing of admission's).
#[derive(Debug)]
struct ShadowCount(Arc<ShadowMetrics>);

impl ShadowSink for ShadowCount {
    fn decided(&self, would: Would) {
        self.0.count(would.as_str());
    }
    fn waited(&self, waited: std::time::Duration) {
        self.0.waited(waited);
    }
}

/// The `would` labels a shadow tenant's counter has.
fn would_labels() -> [&'static str; Would::ALL.len()] {
    Would::ALL.map(Would::as_str)
}

/// The shadow mode of tenant `t` on `admission`, counting into `metrics`.
fn shadow_mode(t: &config::Tenant, admission: &Admission, metrics: &Metrics) -> ShadowMode {
    let counters = Arc::new(metrics.shadow().tenant(&t.name, &would_labels()));
    ShadowMode {
        model: admission.shadow(&t.name, &t.limits, Arc::new(ShadowCount(counters.clone()))),
        metrics: counters,
    }
}

/// What a reload may change of a tenant, swapped as one.
#[derive(Debug)]
pub struct Settings {
    /// Its validated config: limits, credentials, group.
    pub config: Arc<config::Tenant>,
    /// Its upstream group as configured.
    pub group: Arc<Group>,
    /// That group's pool (same endpoint indexes), shared by the group's tenants.
    pub pool: Arc<Pool>,
    /// Its metric children and log budgets.
    pub metrics: Arc<TenantMetrics>,
    /// Its call gate, when it has call limits (SIP, `accept` mode): kept across reloads
    /// while it has them.
    pub calls: Option<Arc<CallGate>>,
    /// The gate of call limits a reload removed, while sessions still count on it
    /// ([`crate::calls::reconcile`]).
    calls_gone: Weak<CallGate>,
}

impl Tenant {
    /// Step 4 for a connect of this tenant: enforced, [`Admission::admit`]; in shadow
    /// mode, admitted at once with its would-be decision on the side
    /// ([`Admission::admit_shadow`]).
    ///
    /// # Errors
    /// The refusal to send.
    pub async fn admit(&self, admission: &Admission) -> Result<Admitted, Rejection> {
        match self.shadow.load_full() {
            Some(mode) => admission.admit_shadow(&self.gate, &mode.model),
            None => admission.admit(&self.gate).await,
        }
    }

    /// In shadow mode, what enforcing would have done; `None` while enforced.
    pub fn shadow(&self) -> Option<ShadowView> {
        let mode = self.shadow.load_full()?;
        Some(ShadowView {
            load: mode.model.load(),
            counts: mode.metrics.counts().collect(),
        })
    }

    /// Applies `t`'s `enforce` (a reload): a flip to shadow builds the model, a flip to
    /// enforce ends it; a tenant that stays shadow gets its new limits in the model.
    fn set_shadow(&self, t: &config::Tenant, admission: &Admission, metrics: &Metrics) {
        match (self.shadow.load_full(), t.limits.enforce) {
            (Some(mode), false) => mode.model.configure(&t.limits),
            (Some(_), true) => self.end_shadow(),
            (None, false) => self
                .shadow
                .store(Some(Arc::new(shadow_mode(t, admission, metrics)))),
            (None, true) => {}
        }
    }

    /// Ends shadow mode (a flip to enforce, or the tenant removed).
    fn end_shadow(&self) {
        if let Some(mode) = self.shadow.swap(None) {
            mode.model.end();
        }
    }

    /// The settings in force now (one atomic load).
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Whether `credential` is still accepted by the tenant's settings in force: `None`
    /// when the tenant was removed (a removed tenant keeps its live sessions).
    pub fn still_authorised(&self, credential: &Credential) -> Option<bool> {
        if self.gate.retired() {
            return None;
        }
        let settings = self.settings.load();
        Some(auth::still_authorised(&settings.config, Some(credential)).is_ok())
    }
}

/// A live `accept`-mode session's credential, re-checked against its tenant's settings
/// after each reload ([`crate::control::SessionStop`]).
#[derive(Debug)]
pub struct CredentialCheck {
    tenant: Arc<Tenant>,
    credential: Credential,
}

impl CredentialCheck {
    /// The check of `credential`, which a client of `tenant` authenticated with.
    pub fn new(tenant: Arc<Tenant>, credential: Credential) -> Self {
        Self { tenant, credential }
    }
}

impl Revocation for CredentialCheck {
    fn still_authorised(&self) -> Option<bool> {
        self.tenant.still_authorised(&self.credential)
    }
}

/// The pool's group-wide pauses, as admission reads them.
impl Pauses for Pool {
    fn paused_until(&self, tenant: &str, now: Instant) -> Option<Instant> {
        Pool::paused_until(self, tenant, now)
    }
}

/// Resolution (step 2) finds handles here.
impl Directory for Table {
    type Tenant = Arc<Tenant>;
    fn named(&self, name: &str) -> Option<Arc<Tenant>> {
        self.tenants
            .get(name)
            .filter(|t| *t.name != *DEFAULT_TENANT)
            .cloned()
    }
    fn fallback(&self) -> Option<Arc<Tenant>> {
        self.tenants.get(DEFAULT_TENANT).cloned()
    }
}

/// Every configured tenant's handle (and `_default`'s), the children of `_unknown`, and
/// the retired handles that still hold sessions.
#[derive(Debug)]
pub struct Table {
    tenants: HashMap<String, Arc<Tenant>>,
    /// Removed by a reload, alive while they hold sessions.
    retired: HashMap<String, Weak<Tenant>>,
    /// The metrics of connects that named no configured tenant.
    unknown: Arc<TenantMetrics>,
}

impl Table {
    /// The table for `config`, reconciled with `old` (a reload; `None` at start): see
    /// the module's policy. `pools` must already be reconciled with `config`.
    pub fn build(
        config: &Config,
        old: Option<&Self>,
        admission: &Admission,
        metrics: &Metrics,
        pools: &Pools,
    ) -> Self {
        let mut retired: HashMap<String, Weak<Tenant>> = old
            .map(|o| {
                o.retired
                    .iter()
                    .filter(|(_, w)| w.strong_count() > 0)
                    .map(|(n, w)| (n.clone(), w.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut tenants = HashMap::new();
        for t in config
            .tenants
            .values()
            .chain(config.default_tenant.as_ref())
        {
            let (group, pool) = pools
                .group(&t.group.name)
                .expect("a validated config's tenant names a configured group");
            let was = old
                .and_then(|o| o.tenants.get(&t.name).cloned())
                .or_else(|| retired.remove(&t.name).and_then(|w| w.upgrade()));
            let handle = match was {
                Some(handle) => {
                    let before = handle.settings();
                    // Same group: the same series (a new group changes the handshake
                    // histogram's labels).
                    let children = if before.config.group.name == t.group.name {
                        metrics.set_limits(&t.name, t);
                        before.metrics.clone()
                    } else {
                        Arc::new(metrics.tenant_children(&t.name, Some(t)))
                    };
                    handle
                        .gate
                        .configure(&t.limits, Some(pool.clone() as Arc<dyn Pauses>));
                    handle.set_shadow(t, admission, metrics);
                    let (calls, calls_gone) = crate::calls::reconcile(
                        &t.name,
                        (before.calls.as_ref(), &before.calls_gone),
                        t.calls.as_ref(),
                        || metrics.calls().tenant(&t.name),
                    );
                    handle.settings.store(Arc::new(Settings {
                        config: t.clone(),
                        group,
                        pool,
                        metrics: children,
                        calls,
                        calls_gone,
                    }));
                    handle
                }
                None => {
                    let children = Arc::new(metrics.tenant_children(&t.name, Some(t)));
                    let gate = admission.gate(
                        &t.name,
                        &t.limits,
                        Gauges {
                            queue_depth: children.queue_depth.clone(),
                            effective_rate: children.effective_rate.clone(),
                        },
                        Some(pool.clone() as Arc<dyn Pauses>),
                    );
                    let shadow =
                        (!t.limits.enforce).then(|| Arc::new(shadow_mode(t, admission, metrics)));
                    Arc::new(Tenant {
                        name: t.name.as_str().into(),
                        gate,
                        shadow: arc_swap::ArcSwapOption::new(shadow),
                        settings: arc_swap::ArcSwap::from_pointee(Settings {
                            config: t.clone(),
                            group,
                            pool,
                            metrics: children,
                            calls: crate::calls::reconcile(
                                &t.name,
                                (None, &Weak::new()),
                                t.calls.as_ref(),
                                || metrics.calls().tenant(&t.name),
                            )
                            .0,
                            calls_gone: Weak::new(),
                        }),
                    })
                }
            };
            tenants.insert(t.name.clone(), handle);
        }
        if let Some(old) = old {
            for (name, handle) in &old.tenants {
                if !tenants.contains_key(name) {
                    handle.gate.retire();
                    handle.end_shadow();
                    retired.insert(name.clone(), Arc::downgrade(handle));
                }
            }
        }
        let unknown = old.map_or_else(
            || Arc::new(metrics.tenant_children(UNKNOWN_TENANT, None)),
            |o| o.unknown.clone(),
        );
        Self {
            tenants,
            retired,
            unknown,
        }
    }

    /// The handle of a configured tenant (`_default` included).
    pub fn get(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.tenants.get(name)
    }

    /// Every configured tenant's handle, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.tenants.values()
    }

    /// Every configured tenant's handle by name, `_default` last: the order `check-config`
    /// and the status page list them in.
    pub fn sorted(&self) -> Vec<&Arc<Tenant>> {
        let mut all: Vec<&Arc<Tenant>> = self.tenants.values().collect();
        all.sort_by_key(|t| (*t.name == *DEFAULT_TENANT, t.name.clone()));
        all
    }

    /// The table `config` would run with, standalone (a registry of its own, no pauses
    /// shared with a server): what `check-config` describes.
    pub fn of(config: &Config) -> Self {
        let admission = Admission::new(
            config.edge.as_ref(),
            crate::admission::adaptive::Policy::of(&config.upstream),
            None,
            crate::admission::Jitter::seeded(0),
        );
        let metrics = Metrics::new(config);
        let pools = Pools::new(config);
        Self::build(config, None, &admission, &metrics, &pools)
    }

    /// The metrics of connects that named no configured tenant (`_unknown`).
    pub fn unknown(&self) -> &Arc<TenantMetrics> {
        &self.unknown
    }

    /// Removed tenants whose handles are still alive (they hold sessions).
    pub fn retired(&self) -> usize {
        self.retired
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}
