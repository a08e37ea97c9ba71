//! Beside the flow (DESIGN.md, "Scale-out"): the `sluice_cluster_*` metrics of a replica in a `[cluster]`.

use super::registered;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Buckets of `sluice_cluster_decision_seconds`: a Redis round trip on a LAN is well
/// under a millisecond; `redis_timeout` defaults to 50 ms.
const DECISION_BUCKETS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// The cluster's metric families (registered only when `[cluster]` is configured).
#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    /// `sluice_cluster_redis_up`: 1 while decisions go to Redis, 0 while the breaker is
    /// open (or Redis was not reached yet).
    pub redis_up: IntGauge,
    /// `sluice_cluster_decision_seconds`: one Redis decision (acquire or take), as
    /// this replica waited for it, timeouts included.
    pub decision: Histogram,
    local_share: IntCounterVec,
    sessions: IntGaugeVec,
    /// `sluice_cluster_replicas`: live replicas this replica saw at its last heartbeat.
    pub replicas: IntGauge,
}

/// One scope's (a tenant's, or the edge's as `_edge`) children.
#[derive(Debug, Clone)]
pub struct ScopeMetrics {
    /// `sluice_cluster_local_share_decisions_total{tenant}`: slots granted without
    /// Redis (breaker open, or an empty Redis being refilled).
    pub local_share: prometheus::IntCounter,
    /// `sluice_cluster_sessions_active{tenant}`: live sessions of all replicas.
    pub sessions: IntGauge,
}

impl ClusterMetrics {
    pub(super) fn register(registry: &Registry) -> Self {
        macro_rules! register {
            ($metric:expr) => {
                registered(registry, $metric)
            };
        }
        Self {
            redis_up: register!(IntGauge::new(
                "sluice_cluster_redis_up",
                "1 while this replica decides capacity on Redis, 0 while its breaker is open."
            )),
            decision: register!(Histogram::with_opts(
                HistogramOpts::new(
                    "sluice_cluster_decision_seconds",
                    "Time one Redis admission decision took, as this replica waited for it (timeouts included)."
                )
                .buckets(DECISION_BUCKETS.to_vec())
            )),
            local_share: register!(IntCounterVec::new(
                Opts::new(
                    "sluice_cluster_local_share_decisions_total",
                    "Session slots this replica granted on its own (breaker open, or Redis being refilled), not on Redis."
                ),
                &["tenant"]
            )),
            sessions: register!(IntGaugeVec::new(
                Opts::new(
                    "sluice_cluster_sessions_active",
                    "Live sessions of the tenant on all replicas together, as last seen in Redis."
                ),
                &["tenant"]
            )),
            replicas: register!(IntGauge::new(
                "sluice_cluster_replicas",
                "Live replicas this replica saw at its last heartbeat."
            )),
        }
    }

    /// The children of scope `label` (a tenant name, or `_edge`).
    pub fn scope(&self, label: &str) -> ScopeMetrics {
        ScopeMetrics {
            local_share: self.local_share.with_label_values(&[label]),
            sessions: self.sessions.with_label_values(&[label]),
        }
    }
}
