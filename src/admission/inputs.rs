//! Step 4 of the flow, admission: what it is handed rather than imports — the upstream
//! group's pauses and the gauges a gate keeps current.

use std::sync::Arc;

use tokio::time::Instant;

/// Where a tenant's group-wide pauses come from (the edge paused every endpoint of the
/// tenant's upstream group, for everyone or for this tenant): the upstream pool, handed
/// to admission by whoever wires the two together, so admission imports no upstream.
pub trait Pauses: Send + Sync + std::fmt::Debug {
    /// Until when none of `tenant`'s clients may be sent to the group; `None`: now they
    /// may.
    fn paused_until(&self, tenant: &str, now: Instant) -> Option<Instant>;
}

/// A [`Pauses`] behind one pointer, so that a gate can swap it atomically.
#[derive(Debug)]
pub(crate) struct PauseSource(pub(crate) Arc<dyn Pauses>);

/// The gauges a tenant's gate keeps current: handed in, so admission imports no
/// metrics registry (unregistered gauges do for a planner or a test).
#[derive(Debug, Clone)]
pub struct Gauges {
    /// `sluice_queue_depth` of the tenant.
    pub queue_depth: prometheus::IntGauge,
    /// `sluice_effective_handshake_rate` of the tenant.
    pub effective_rate: prometheus::Gauge,
}

impl Gauges {
    /// Gauges registered nowhere.
    ///
    /// # Panics
    /// Never: the names are valid.
    pub fn detached() -> Self {
        Self {
            queue_depth: prometheus::IntGauge::new("sluice_queue_depth", "detached")
                .expect("valid name"),
            effective_rate: prometheus::Gauge::new("sluice_effective_handshake_rate", "detached")
                .expect("valid name"),
        }
    }
}
