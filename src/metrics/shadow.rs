//! Beside the flow (DESIGN.md, "Planning and shadow mode"): the would-be decisions of shadow tenants.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

use super::{registered, QUEUE_WAIT_BUCKETS};

/// The shadow families (registered always; children exist for tenants that are, or
/// were, in shadow mode).
#[derive(Debug, Clone)]
pub struct ShadowFamilies {
    decisions: IntCounterVec,
    wait: HistogramVec,
}

/// One shadow tenant's children: `sluice_shadow_decisions_total{tenant,would}` for each
/// `would` label, `sluice_shadow_wait_seconds{tenant}`.
#[derive(Debug)]
pub struct ShadowMetrics {
    decisions: Vec<(&'static str, IntCounter)>,
    wait: Histogram,
}

impl ShadowFamilies {
    pub(crate) fn register(registry: &Registry) -> Self {
        Self {
            decisions: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "sluice_shadow_decisions_total",
                        "Shadow tenants (enforce = false): what enforcing would have done with each connect (admit, queue, or the refusal's reason; client-gone: the session ended while its would-be decision waited).",
                    ),
                    &["tenant", "would"],
                ),
            ),
            wait: registered(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "sluice_shadow_wait_seconds",
                        "Shadow tenants: how long connects would have waited in the queue, however they would have left it (admitted, timed out).",
                    )
                    .buckets(QUEUE_WAIT_BUCKETS.to_vec()),
                    &["tenant"],
                ),
            ),
        }
    }

    /// The children of tenant `name`, one counter per label of `would` (all at 0 from
    /// the start, so the first refusal is an increase).
    pub fn tenant(&self, name: &str, would: &[&'static str]) -> ShadowMetrics {
        ShadowMetrics {
            decisions: would
                .iter()
                .map(|w| (*w, self.decisions.with_label_values(&[name, w])))
                .collect(),
            wait: self.wait.with_label_values(&[name]),
        }
    }
}

impl ShadowMetrics {
    /// Counts one would-be decision (a label not given at creation is not counted).
    pub fn count(&self, would: &str) {
        if let Some((_, c)) = self.decisions.iter().find(|(w, _)| *w == would) {
            c.inc();
        }
    }

    /// Observes one would-be wait.
    pub fn waited(&self, waited: std::time::Duration) {
        self.wait.observe(waited.as_secs_f64());
    }

    /// Every label and its count so far.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.decisions.iter().map(|(w, c)| (*w, c.get()))
    }
}
