//! Wiring: hot reload — validate the whole file, then build and store one new snapshot.
//!
//! Hot reload (DESIGN.md: "config — load, validate, hot reload"): on SIGHUP or
//! `POST /-/reload` the config file is read and validated whole; an invalid one is
//! refused (logged with every key and reason, `sluice_config_reloads_total{result="error"}`)
//! and the config in force keeps running. A valid one is applied:
//!
//! - the listener's TLS certificate and key are read again (new connections use them);
//!   the `wss://` client's CA file too;
//! - the upstream pools are reconciled in place ([`crate::upstream::Pools::reconcile`])
//!   and a new tenant table is built from the old one ([`crate::tenants::Table::build`],
//!   which states the policy for removed and returning tenants): changed limits apply
//!   to new admissions at once, a lowered cap never ends a live session, a raised one
//!   lets queued clients in at once; removed tenants stop being admitted while their
//!   live sessions go on;
//! - the config, the table, the connector and the TLS config are swapped in one store
//!   ([`crate::runtime::Runtime::store`]), then live sessions are told
//!   ([`crate::control::Control::reloaded`]): an `accept`-mode session whose credential
//!   the new config no longer accepts is closed with `1008`.
//!
//! No live session is dropped by a reload. What cannot change without a restart
//! (`listen.address`, `admin.address`, adding or removing `[edge]`, any change to
//! `[cluster]`) is kept as it is and named in a warning; the rest of the file applies.
//! For `[cluster]` the stored config keeps the one in force too.

use std::sync::{Arc, Mutex, PoisonError};

use crate::config::{Config, ConfigError};
use crate::runtime::{Runtime, Snapshot};
use crate::tenants::Table;
use crate::tls::TlsError;

/// Why a reload was refused; the config in force keeps running.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The server was started from config text, not a file.
    #[error("nothing to reload: sluice was not started from a config file")]
    NoFile,
    /// The file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A TLS file named by the new config is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A reload that was applied.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Tenants added by this reload.
    pub added: Vec<String>,
    /// Tenants removed by this reload.
    pub removed: Vec<String>,
    /// What was kept as it was because it needs a restart.
    pub warnings: Vec<String>,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "config reloaded; tenants added: [{}], removed: [{}]",
            self.added.join(", "),
            self.removed.join(", ")
        )?;
        for w in &self.warnings {
            write!(f, "; warning: {w}")?;
        }
        Ok(())
    }
}

/// One reload at a time.
static RELOADING: Mutex<()> = Mutex::new(());

/// Reads the file the config in force came from and applies it ([`apply`]).
///
/// # Errors
/// [`ReloadError`]: nothing was changed.
pub fn from_file(runtime: &Runtime) -> Result<Applied, ReloadError> {
    let _one = RELOADING.lock().unwrap_or_else(PoisonError::into_inner);
    let result = runtime
        .config()
        .source
        .clone()
        .ok_or(ReloadError::NoFile)
        .and_then(|path| Ok(Config::load(&path)?))
        .and_then(|config| apply_locked(runtime, config));
    report(runtime, &result);
    result
}

/// Applies `config`, already validated, to a running server.
///
/// # Errors
/// [`ReloadError`] when a TLS file it names is unusable: nothing was changed.
pub fn apply(runtime: &Runtime, config: Config) -> Result<Applied, ReloadError> {
    let _one = RELOADING.lock().unwrap_or_else(PoisonError::into_inner);
    let result = apply_locked(runtime, config);
    report(runtime, &result);
    result
}

fn report(runtime: &Runtime, result: &Result<Applied, ReloadError>) {
    runtime.metrics.config_reload(result.is_ok());
    match result {
        Ok(applied) => {
            for w in &applied.warnings {
                tracing::warn!(target: "sluice::reload", "{w}");
            }
            tracing::info!(
                target: "sluice::reload",
                added = ?applied.added,
                removed = ?applied.removed,
                "config reloaded"
            );
        }
        Err(e) => {
            tracing::error!(
                target: "sluice::reload",
                "config reload refused, the config in force keeps running:\n{e}"
            );
        }
    }
}

/// The warning of a reload whose `[cluster]` differs from the one in force.
pub const CLUSTER_CHANGED: &str =
    "config key `cluster`: [cluster] cannot change while running: restart the replica; the [cluster] in force is kept";

fn apply_locked(runtime: &Runtime, mut config: Config) -> Result<Applied, ReloadError> {
    let before = runtime.snapshot();
    let old = &before.config;
    // Everything that can fail comes first, so a failure changes nothing.
    let (connector, tls) = Runtime::tls(&config)?;

    let mut applied = Applied::default();
    if config.listen.address != old.listen.address {
        applied.warnings.push(format!(
            "listen.address changed to {} but takes a restart; still listening on {}",
            config.listen.address, old.listen.address
        ));
    }
    if config.listen.workers != old.listen.workers {
        applied.warnings.push(
            "listen.workers changed but takes a restart; the worker threads stay as they are"
                .to_owned(),
        );
    }
    if config.admin.address != old.admin.address {
        applied.warnings.push(format!(
            "admin.address changed to {} but takes a restart; still on {}",
            config.admin.address, old.admin.address
        ));
    }
    // The replica's Redis, its name there and its leases: kept as they are, so the
    // stored config says what runs.
    if config.cluster != old.cluster {
        applied.warnings.push(CLUSTER_CHANGED.to_owned());
        config.cluster.clone_from(&old.cluster);
    }
    let (a, b) = (&old.upstream, &config.upstream);
    if (a.adaptive, a.adaptive_factor, a.adaptive_floor)
        != (b.adaptive, b.adaptive_factor, b.adaptive_floor)
    {
        applied.warnings.push(
            "upstream.adaptive, adaptive_factor and adaptive_floor take a restart; the values in force are kept".to_owned(),
        );
    }
    let p = (&old.protection, &config.protection);
    if (p.0.idle_timeout, p.0.max_session) != (p.1.idle_timeout, p.1.max_session) {
        applied.warnings.push(
            "protection.idle_timeout and max_session apply to sessions that start from now on"
                .to_owned(),
        );
    }
    let names = |c: &Config| -> Vec<String> {
        c.tenants
            .keys()
            .cloned()
            .chain(c.default_tenant.as_ref().map(|t| t.name.clone()))
            .collect()
    };
    let (before_names, after) = (names(old), names(&config));
    applied.added = after
        .iter()
        .filter(|n| !before_names.contains(n))
        .cloned()
        .collect();
    applied.removed = before_names
        .iter()
        .filter(|n| !after.contains(n))
        .cloned()
        .collect();

    runtime.pools.reconcile(&config);
    if let Some(w) = runtime.admission.reconfigure_edge(config.edge.as_ref()) {
        applied.warnings.push(w);
    }
    let tenants = Table::build(
        &config,
        Some(&before.tenants),
        &runtime.admission,
        &runtime.metrics,
        &runtime.pools,
    );
    runtime.preauth.reconfigure(&config.protection);
    runtime.pending.reconfigure(&config.protection);
    runtime.store(Snapshot {
        config: Arc::new(config),
        tenants,
        connector: Arc::new(connector),
        tls,
    });
    runtime.control.reloaded();
    Ok(applied)
}
