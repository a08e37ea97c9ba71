//! Beside the flow (DESIGN.md, "SIP awareness"): the per-tenant call metrics of SIP tenants.

use super::registered;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use super::QUEUE_WAIT_BUCKETS;

/// How an initial INVITE of a SIP tenant fared (`sluice_calls_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// Forwarded at once.
    Admitted,
    /// Held (sluice answered `100 Trying`), then forwarded.
    QueuedAdmitted,
    /// Answered `503` by sluice: the call queue was full (or the tenant has none).
    CallCap,
    /// Answered `503` by sluice: held for `invite_queue_timeout` without a place.
    CallQueueTimeout,
    /// Held, then cancelled by the client (`200` to the CANCEL, `487` to the INVITE).
    Cancelled,
    /// A call with no message of its dialog for `call_idle_timeout`: no longer counted.
    Reaped,
}

impl CallOutcome {
    /// Every outcome, in label order.
    pub const ALL: [Self; 6] = [
        Self::Admitted,
        Self::QueuedAdmitted,
        Self::CallCap,
        Self::CallQueueTimeout,
        Self::Cancelled,
        Self::Reaped,
    ];

    /// The `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admitted => "admitted",
            Self::QueuedAdmitted => "queued_admitted",
            Self::CallCap => "call-cap",
            Self::CallQueueTimeout => "call-queue-timeout",
            Self::Cancelled => "cancelled",
            Self::Reaped => "reaped",
        }
    }
}

/// The call metric families (registered always; children exist for SIP tenants only).
#[derive(Debug, Clone)]
pub struct CallMetrics {
    active: IntGaugeVec,
    calls: IntCounterVec,
    queue_depth: IntGaugeVec,
    queue_wait: HistogramVec,
    unparsed: IntCounterVec,
}

/// One SIP tenant's call metric children.
#[derive(Debug, Clone)]
pub struct TenantCallMetrics {
    /// `sluice_calls_active`: calls counted against `max_calls` now.
    pub active: IntGauge,
    /// `sluice_call_queue_depth`: INVITEs held now.
    pub queue_depth: IntGauge,
    /// `sluice_sip_unparsed_total`: messages that were not valid SIP (relayed unchanged).
    pub unparsed: IntCounter,
    outcomes: [IntCounter; CallOutcome::ALL.len()],
    queue_wait: Histogram,
}

impl CallMetrics {
    pub(crate) fn register(registry: &Registry) -> Self {
        macro_rules! register {
            ($metric:expr) => {
                registered(registry, $metric)
            };
        }
        Self {
            active: register!(IntGaugeVec::new(
                Opts::new(
                    "sluice_calls_active",
                    "SIP calls counted against the tenant's max_calls (accept mode, subprotocol sip)."
                ),
                &["tenant"]
            )),
            calls: register!(IntCounterVec::new(
                Opts::new(
                    "sluice_calls_total",
                    "Initial INVITEs by outcome: admitted, queued_admitted, call-cap, call-queue-timeout, cancelled; reaped counts calls ended by call_idle_timeout."
                ),
                &["tenant", "outcome"]
            )),
            queue_depth: register!(IntGaugeVec::new(
                Opts::new(
                    "sluice_call_queue_depth",
                    "INVITEs sluice holds (answered 100 Trying) until a call ends."
                ),
                &["tenant"]
            )),
            queue_wait: register!(HistogramVec::new(
                HistogramOpts::new(
                    "sluice_call_queue_wait_seconds",
                    "Time held INVITEs waited, however they left the queue (forwarded, answered 503, cancelled, gone)."
                )
                .buckets(QUEUE_WAIT_BUCKETS.to_vec()),
                &["tenant"]
            )),
            unparsed: register!(IntCounterVec::new(
                Opts::new(
                    "sluice_sip_unparsed_total",
                    "Messages of SIP tenants that were not valid SIP: relayed unchanged, not counted as calls."
                ),
                &["tenant"]
            )),
        }
    }

    /// The children of tenant `name` (every outcome at 0 from the start).
    pub fn tenant(&self, name: &str) -> TenantCallMetrics {
        TenantCallMetrics {
            active: self.active.with_label_values(&[name]),
            queue_depth: self.queue_depth.with_label_values(&[name]),
            unparsed: self.unparsed.with_label_values(&[name]),
            outcomes: CallOutcome::ALL.map(|o| self.calls.with_label_values(&[name, o.as_str()])),
            queue_wait: self.queue_wait.with_label_values(&[name]),
        }
    }
}

impl TenantCallMetrics {
    /// Counts an outcome.
    pub fn outcome(&self, outcome: CallOutcome) {
        self.outcomes[outcome as usize].inc();
    }

    /// The count of an outcome so far.
    pub fn outcome_count(&self, outcome: CallOutcome) -> u64 {
        self.outcomes[outcome as usize].get()
    }

    /// Records how long a held INVITE waited.
    pub fn queue_wait(&self, waited: std::time::Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }
}
