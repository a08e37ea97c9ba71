//! State: the runtime every connection shares, and the snapshot a reload swaps in one store.
//!
//! The snapshot holds the config, the tenant table, the upstream connector and the
//! listener's TLS; beside it live what outlasts snapshots: drain control, the admission
//! scheduler, the pre-auth protections, the metrics registry, the upstream pools.

use std::sync::Arc;

use crate::admission::{adaptive, Admission, Jitter};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::control::Control;
use crate::metrics::Metrics;
use crate::protect::{Pending, Preauth};
use crate::tenants::{Table, Tenant};
use crate::tls::{self, TlsError};
use crate::upstream::{Connector, Pools};

/// What a reload replaces, as one: every connect reads one snapshot.
#[derive(Debug)]
pub struct Snapshot {
    /// The config in force.
    pub config: Arc<Config>,
    /// Its tenants' handles.
    pub tenants: Table,
    /// Opens upstream WebSockets (its CA file may change).
    pub connector: Arc<Connector>,
    /// The listener's TLS config, when TLS is on.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// What every connection shares.
#[derive(Debug)]
pub struct Runtime {
    snapshot: arc_swap::ArcSwap<Snapshot>,
    /// Drain state, reload notices, the count of live sessions.
    pub control: Arc<Control>,
    /// The admission scheduler: the edge ceiling; tenants' gates are in their handles.
    pub admission: Arc<Admission>,
    /// The per-IP limiter on unauthenticated attempts.
    pub preauth: Arc<Preauth>,
    /// The cap on connections in their HTTP phase.
    pub pending: Pending,
    /// Every metric, and the recent windows of the status page.
    pub metrics: Arc<Metrics>,
    /// This replica's membership of a `[cluster]`: every gate's capacity is on Redis.
    pub cluster: Option<Cluster>,
    /// Each upstream group's endpoint state: sessions, circuits, pauses (reconciled
    /// in place by a reload; tenants hold their group's pool in their handles).
    pub pools: Pools,
}

impl Runtime {
    /// The runtime for `config`: its tenants' handles, its TLS material read. Starts
    /// the background tasks (adaptive recovery, pre-auth cleanup, and with `[cluster]`
    /// the heartbeat; [`Cluster::ready`] waits for its first).
    ///
    /// # Errors
    /// [`TlsError`] when a TLS file is unusable.
    pub fn new(config: Config) -> Result<Self, TlsError> {
        let (connector, tls) = Self::tls(&config)?;
        let preauth = Arc::new(Preauth::new(&config.protection));
        preauth.spawn_cleanup();
        let pending = Pending::new(&config.protection);
        let metrics = Arc::new(Metrics::new(&config));
        let pools = Pools::new(&config);
        let cluster = config
            .cluster
            .as_ref()
            .map(|c| Cluster::new(c, config.edge.is_some(), metrics.cluster().cloned()));
        let policy = adaptive::Policy::of(&config.upstream);
        let admission = Arc::new(match &cluster {
            Some(cluster) => Admission::clustered(
                config.edge.as_ref(),
                policy,
                metrics.edge_rate(),
                Jitter::from_entropy(),
                cluster.scopes(),
            ),
            None => Admission::new(
                config.edge.as_ref(),
                policy,
                metrics.edge_rate(),
                Jitter::from_entropy(),
            ),
        });
        admission.spawn_recovery();
        let tenants = Table::build(&config, None, &admission, &metrics, &pools);
        Ok(Self {
            snapshot: arc_swap::ArcSwap::from_pointee(Snapshot {
                config: Arc::new(config),
                tenants,
                connector: Arc::new(connector),
                tls,
            }),
            control: Arc::new(Control::new()),
            admission,
            preauth,
            pending,
            metrics,
            cluster,
            pools,
        })
    }

    /// The upstream connector and the listener's TLS config that `config` names.
    ///
    /// # Errors
    /// [`TlsError`] when a TLS file is unusable.
    pub fn tls(
        config: &Config,
    ) -> Result<(Connector, Option<Arc<rustls::ServerConfig>>), TlsError> {
        let tls = match &config.listen.tls {
            Some(files) => Some(tls::server_config(&files.cert, &files.key)?),
            None => None,
        };
        let connector = Connector::new(tls::client_config(config.upstream.ca_file.as_deref())?);
        Ok((connector, tls))
    }

    /// The snapshot in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.snapshot.load().config.clone()
    }

    /// The handle of the configured tenant `name` (`_default` included) in the snapshot
    /// in force: for tools, tests and the admin listener; the flow resolves a request's
    /// tenant once instead ([`crate::tenant::resolve_in`]).
    pub fn tenant(&self, name: &str) -> Option<Arc<Tenant>> {
        self.snapshot.load().tenants.get(name).cloned()
    }

    /// Puts a reload's snapshot in force (one store).
    pub fn store(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }
}
