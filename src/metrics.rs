//! Beside the flow (DESIGN.md, "Metrics"): every metric of the table, registered once, here.
//!
//! Each [`Metrics`] owns its own registry (tests run several sluices in one process).
//! Per-tenant children are created when the config is loaded, so the hot path never
//! looks a label up: it holds a [`TenantMetrics`] and bumps its counters where the event
//! happens (admission, queue, upstream attempt, session end). Tenant labels come only
//! from the config plus `_default` and `_unknown`; nothing a client sends becomes a
//! label.
//!
//! Beside the Prometheus series, each tenant keeps a small recent past for the status
//! page and `/api/tenants`: outcomes and queue depth per second over the last five
//! minutes and the last upstream handshake times, both fixed-size (`metrics/recent.rs`).

mod calls;
mod cluster;
mod recent;
mod shadow;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::{Config, Tenant};
use crate::logging::LogBudget;
use crate::reject::Reason;

pub use self::calls::{CallMetrics, CallOutcome, TenantCallMetrics};
pub use self::cluster::{ClusterMetrics, ScopeMetrics};
use self::recent::{Class, Recent};
pub use self::recent::{History, RecentWindow, HISTORY_SECONDS};
pub use self::shadow::{ShadowFamilies, ShadowMetrics};

// Kept here too (they lived here first): `crate::metrics::{quantile, unix_now}`.
pub use crate::stats::{quantile, unix_now};

/// Tenant label of requests whose tenant is unknown.
pub const UNKNOWN_TENANT: &str = "_unknown";
/// Tenant label of the `[edge]` ceiling's effective handshake rate.
pub const EDGE_LABEL: &str = "_edge";

/// Refusal and upstream-failure lines per tenant per second, beyond the burst.
const LOG_LINES_PER_SECOND: u32 = 10;
/// Refusal and upstream-failure lines per tenant at once.
const LOG_LINES_BURST: u32 = 50;

/// Queue waits: from a few milliseconds to the longest sensible `queue_timeout`.
const QUEUE_WAIT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0,
];
/// Upstream handshakes: fine around the 1.5 s slow mark and the 3 s danger mark.
const HANDSHAKE_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 10.0,
];
/// Sessions: calls and shifts, seconds to a working day.
const SESSION_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
];

/// How a connect ended: the `outcome` label of `sluice_connects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Went on at once and got its `101`.
    Admitted,
    /// Waited in the queue, then got its `101`.
    QueuedAdmitted,
    /// Refused for this reason.
    Refused(Reason),
    /// Hung up while queued or during the upstream handshake (an addition to DESIGN's
    /// list: the clients whose patience ran out before sluice answered).
    ClientGone,
    /// `accept` mode: broke the WebSocket protocol (or a size limit) while queued or
    /// during the upstream handshake, and was closed with `1002`, `1007` or `1009` (an
    /// addition to DESIGN's list).
    ProtocolError,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 14] = [
        Outcome::Admitted,
        Outcome::QueuedAdmitted,
        Outcome::Refused(Reason::TenantUnknown),
        Outcome::Refused(Reason::Unauthorized),
        Outcome::Refused(Reason::QueueFull),
        Outcome::Refused(Reason::QueueTimeout),
        Outcome::Refused(Reason::EdgeCapacity),
        Outcome::Refused(Reason::UpstreamUnavailable),
        Outcome::Refused(Reason::Draining),
        Outcome::Refused(Reason::TooManyAttempts),
        Outcome::Refused(Reason::Overloaded),
        Outcome::Refused(Reason::HeldBufferFull),
        Outcome::ClientGone,
        Outcome::ProtocolError,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admitted => "admitted",
            Self::QueuedAdmitted => "queued_admitted",
            Self::Refused(r) => r.as_str(),
            Self::ClientGone => "client-gone",
            Self::ProtocolError => "protocol-error",
        }
    }

    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|o| *o == self)
            .expect("every outcome is listed")
    }

    /// Which per-minute column of the status page it counts in.
    fn class(self) -> Class {
        match self {
            Self::Admitted => Class::Admitted,
            Self::QueuedAdmitted => Class::Queued,
            Self::Refused(_) | Self::ClientGone | Self::ProtocolError => Class::Rejected,
        }
    }
}

/// The registry and every metric family.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sessions_active: IntGaugeVec,
    queue_depth: IntGaugeVec,
    connects: IntCounterVec,
    queue_wait: HistogramVec,
    upstream_handshake: HistogramVec,
    upstream_responses: IntCounterVec,
    upstream_retries: IntCounterVec,
    session_duration: HistogramVec,
    relay_bytes: IntCounterVec,
    tenant_limit: GaugeVec,
    config_reloads: IntCounterVec,
    effective_rate: GaugeVec,
    edge_rate: Option<prometheus::Gauge>,
    /// `sluice_cluster_*`, with `[cluster]`.
    cluster: Option<ClusterMetrics>,
    /// `sluice_calls_*` and the other call families of SIP tenants.
    calls: CallMetrics,
    /// `sluice_shadow_*`: shadow tenants' would-be decisions.
    shadow: ShadowFamilies,
    /// The last upstream errors, newest last.
    edge_errors: Mutex<VecDeque<EdgeError>>,
}

/// How many upstream errors the status page shows.
pub const EDGE_ERRORS_KEPT: usize = 20;

/// An upstream handshake that failed, for the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EdgeError {
    /// Unix time, seconds.
    pub time: f64,
    /// Tenant whose client it was.
    pub tenant: String,
    /// Upstream group.
    pub group: String,
    /// Endpoint url.
    pub endpoint: String,
    /// `503`, `429`, `timeout`, `error`, …
    pub status: String,
    /// The edge's trace id, when it sent one.
    pub trace_id: Option<String>,
}

/// `metric`, registered in `registry`.
///
/// # Panics
/// When the definition is invalid or the name taken: both are fixed in this module and
/// its tests register every family.
pub(crate) fn registered<M>(registry: &Registry, metric: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let m = metric.expect("valid metric definition");
    registry
        .register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Metrics {
    /// The metric families, and per-tenant children for every tenant of `config`
    /// (plus `_default` when configured, and `_unknown`).
    ///
    /// # Panics
    /// Never in practice: the names and labels below are valid and registered once.
    pub fn new(config: &Config) -> Self {
        let registry = Registry::new();
        macro_rules! register {
            ($metric:expr) => {
                registered(&registry, $metric)
            };
        }
        let sessions_active = register!(IntGaugeVec::new(
            opts("sluice_sessions_active", "Live proxied sessions."),
            &["tenant"]
        ));
        let queue_depth = register!(IntGaugeVec::new(
            opts(
                "sluice_queue_depth",
                "Clients waiting in the tenant's queue."
            ),
            &["tenant"]
        ));
        let connects = register!(IntCounterVec::new(
            opts(
                "sluice_connects_total",
                "Connects by how they ended: admitted, queued_admitted, or the rejection reason."
            ),
            &["tenant", "outcome"]
        ));
        let queue_wait = register!(HistogramVec::new(
            HistogramOpts::new(
                "sluice_queue_wait_seconds",
                "Time clients waited in the queue, however they left it (admitted, timed out, gone)."
            )
            .buckets(QUEUE_WAIT_BUCKETS.to_vec()),
            &["tenant"]
        ));
        let upstream_handshake = register!(HistogramVec::new(
            HistogramOpts::new(
                "sluice_upstream_handshake_seconds",
                "Duration of upstream WebSocket handshakes that got an answer or timed out."
            )
            .buckets(HANDSHAKE_BUCKETS.to_vec()),
            &["tenant", "group"]
        ));
        let upstream_responses = register!(IntCounterVec::new(
            opts(
                "sluice_upstream_responses_total",
                "Upstream handshake attempts by answer: HTTP status, timeout or error."
            ),
            &["group", "status"]
        ));
        let upstream_retries = register!(IntCounterVec::new(
            opts(
                "sluice_upstream_retries_total",
                "Upstream handshake attempts after a client's first."
            ),
            &["tenant"]
        ));
        let session_duration = register!(HistogramVec::new(
            HistogramOpts::new(
                "sluice_session_duration_seconds",
                "Duration of ended sessions."
            )
            .buckets(SESSION_BUCKETS.to_vec()),
            &["tenant"]
        ));
        let relay_bytes = register!(IntCounterVec::new(
            opts("sluice_relay_bytes_total", "Bytes relayed, by direction."),
            &["tenant", "direction"]
        ));
        let tenant_limit = register!(GaugeVec::new(
            opts("sluice_tenant_limit", "Configured limits of each tenant."),
            &["tenant", "limit"]
        ));
        register!(Ok(crate::logging::DroppedLinesMetric::default()));
        let config_reloads = register!(IntCounterVec::new(
            opts("sluice_config_reloads_total", "Config reloads by result."),
            &["result"]
        ));
        // Both results exist from the start, at 0.
        for result in ["ok", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        let effective_rate = register!(GaugeVec::new(
            opts(
                "sluice_effective_handshake_rate",
                "Handshake rate sluice allows now, per second, after adapting to the edge (tenant _edge: the [edge] ceiling)."
            ),
            &["tenant"]
        ));
        let edge_rate = config
            .edge
            .as_ref()
            .map(|_| effective_rate.with_label_values(&[EDGE_LABEL]));
        // The answers alerts watch exist from the start, so that the first 503 is an
        // increase from 0 rather than a new series.
        for group in config.upstream.groups.keys() {
            for status in ["101", "429", "503", "timeout", "error"] {
                upstream_responses.with_label_values(&[group, status]);
            }
        }
        let cluster = config
            .cluster
            .as_ref()
            .map(|_| ClusterMetrics::register(&registry));
        let calls = CallMetrics::register(&registry);
        let shadow = ShadowFamilies::register(&registry);
        Self {
            cluster,
            calls,
            shadow,
            registry,
            sessions_active,
            queue_depth,
            connects,
            queue_wait,
            upstream_handshake,
            upstream_responses,
            upstream_retries,
            session_duration,
            relay_bytes,
            tenant_limit,
            config_reloads,
            effective_rate,
            edge_rate,
            edge_errors: Mutex::new(VecDeque::with_capacity(EDGE_ERRORS_KEPT)),
        }
    }

    /// Counts a reload: `ok` or `error`.
    pub fn config_reload(&self, ok: bool) {
        self.config_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Publishes `t`'s limits (`sluice_tenant_limit`): a new tenant, or a reload.
    pub fn set_limits(&self, name: &str, t: &Tenant) {
        let l = &t.limits;
        for (limit, value) in [
            ("max_sessions", f64::from(l.max_sessions)),
            ("handshake_rate", l.handshake_rate),
            ("handshake_burst", f64::from(l.handshake_burst)),
            ("queue_depth", f64::from(l.queue_depth)),
            ("queue_timeout_seconds", l.queue_timeout.as_secs_f64()),
            ("weight", f64::from(l.weight)),
            // 0: shadow mode, decisions counted in sluice_shadow_* and not applied.
            ("enforce", if l.enforce { 1.0 } else { 0.0 }),
        ] {
            self.tenant_limit
                .with_label_values(&[name, limit])
                .set(value);
        }
        // A call limit a reload removed leaves no stale series for a cap line or an
        // alert to compare against.
        let calls = t.calls.as_ref();
        for (limit, value) in [
            ("max_calls", calls.and_then(|c| c.max_calls.map(f64::from))),
            ("call_rate", calls.and_then(|c| c.call_rate)),
            (
                "invite_queue_depth",
                calls.map(|c| f64::from(c.invite_queue_depth)),
            ),
        ] {
            match value {
                Some(value) => self
                    .tenant_limit
                    .with_label_values(&[name, limit])
                    .set(value),
                None => {
                    let _ = self.tenant_limit.remove_label_values(&[name, limit]);
                }
            }
        }
    }

    /// New per-tenant children for `name` (a configured tenant `tenant`, or `_unknown`
    /// with `None`), its limits published. Whoever holds the tenant's handle keeps them;
    /// the same labels twice share the same series.
    pub fn tenant_children(&self, name: &str, tenant: Option<&Tenant>) -> TenantMetrics {
        let group = tenant.map(|t| t.group.name.as_str());
        if let Some(t) = tenant {
            self.set_limits(name, t);
        }
        TenantMetrics {
            name: name.to_owned(),
            group: group.map(str::to_owned),
            sessions_active: self.sessions_active.with_label_values(&[name]),
            queue_depth: self.queue_depth.with_label_values(&[name]),
            connects: Outcome::ALL.map(|o| self.connects.with_label_values(&[name, o.as_str()])),
            queue_wait: self.queue_wait.with_label_values(&[name]),
            upstream_handshake: group
                .map(|g| self.upstream_handshake.with_label_values(&[name, g])),
            upstream_retries: self.upstream_retries.with_label_values(&[name]),
            session_duration: self.session_duration.with_label_values(&[name]),
            bytes_client_to_edge: self
                .relay_bytes
                .with_label_values(&[name, "client_to_edge"]),
            bytes_edge_to_client: self
                .relay_bytes
                .with_label_values(&[name, "edge_to_client"]),
            effective_rate: self.effective_rate.with_label_values(&[name]),
            recent: Mutex::default(),
            log_budget: LogBudget::new(LOG_LINES_PER_SECOND, LOG_LINES_BURST),
            upstream_log_budget: LogBudget::new(LOG_LINES_PER_SECOND, LOG_LINES_BURST),
        }
    }

    /// The `sluice_cluster_*` metrics, with `[cluster]`.
    pub fn cluster(&self) -> Option<&ClusterMetrics> {
        self.cluster.as_ref()
    }

    /// The call families (SIP tenants).
    pub fn calls(&self) -> &CallMetrics {
        &self.calls
    }

    /// The shadow families (tenants with `enforce = false`).
    pub fn shadow(&self) -> &ShadowFamilies {
        &self.shadow
    }

    /// `sluice_effective_handshake_rate{tenant="_edge"}`, when there is an `[edge]`.
    pub fn edge_rate(&self) -> Option<prometheus::Gauge> {
        self.edge_rate.clone()
    }

    /// Counts one upstream handshake answer (or timeout, or error) of `group`.
    pub fn upstream_response(&self, group: &str, status: &str) {
        self.upstream_responses
            .with_label_values(&[group, status])
            .inc();
    }

    /// Remembers a failed upstream handshake for the status page.
    pub fn edge_error(&self, error: EdgeError) {
        let mut list = self.edge_errors.lock().unwrap_or_else(|e| e.into_inner());
        if list.len() == EDGE_ERRORS_KEPT {
            list.pop_front();
        }
        list.push_back(error);
    }

    /// The last upstream errors, newest first.
    pub fn edge_errors(&self) -> Vec<EdgeError> {
        let list = self.edge_errors.lock().unwrap_or_else(|e| e.into_inner());
        list.iter().rev().cloned().collect()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into memory does not fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

/// One tenant's metric children and recent window.
#[derive(Debug)]
pub struct TenantMetrics {
    /// The tenant label.
    pub name: String,
    /// Its upstream group (`None` for `_unknown`).
    pub group: Option<String>,
    /// `sluice_sessions_active`
    pub sessions_active: IntGauge,
    /// `sluice_queue_depth`
    pub queue_depth: IntGauge,
    /// `sluice_effective_handshake_rate`
    pub effective_rate: prometheus::Gauge,
    connects: [IntCounter; Outcome::ALL.len()],
    queue_wait: prometheus::Histogram,
    upstream_handshake: Option<prometheus::Histogram>,
    upstream_retries: IntCounter,
    session_duration: prometheus::Histogram,
    bytes_client_to_edge: IntCounter,
    bytes_edge_to_client: IntCounter,
    recent: Mutex<Recent>,
    /// Budget for this tenant's refusal and client-gone log lines.
    pub log_budget: LogBudget,
    /// Budget for this tenant's upstream-failure log lines.
    pub upstream_log_budget: LogBudget,
}

impl TenantMetrics {
    /// Counts a connect's outcome.
    pub fn outcome(&self, outcome: Outcome) {
        self.connects[outcome.index()].inc();
        let depth = self.queue_depth_now();
        self.recent().count(outcome.class(), depth);
    }

    /// Records how long a client waited in the queue, whichever way it left it.
    pub fn queue_wait(&self, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    /// The count of one outcome so far.
    pub fn outcome_count(&self, outcome: Outcome) -> u64 {
        self.connects[outcome.index()].get()
    }

    /// Records one upstream handshake's duration (answered or timed out).
    pub fn upstream_handshake(&self, took: Duration) {
        if let Some(h) = &self.upstream_handshake {
            h.observe(took.as_secs_f64());
        }
        self.recent().handshake(took);
    }

    /// Counts upstream attempts beyond a client's first.
    pub fn upstream_retries(&self, n: u64) {
        self.upstream_retries.inc_by(n);
    }

    /// Records an ended session.
    pub fn session_ended(&self, duration: Duration, client_to_edge: u64, edge_to_client: u64) {
        self.session_duration.observe(duration.as_secs_f64());
        self.bytes_client_to_edge.inc_by(client_to_edge);
        self.bytes_edge_to_client.inc_by(edge_to_client);
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The recent window: outcomes in the last minute and handshake quantiles.
    pub fn recent_window(&self) -> RecentWindow {
        self.recent().window()
    }

    /// Records the queue depth now in the current second of the history (the admin
    /// listener calls this once a second).
    pub fn sample_queue_depth(&self) {
        let depth = self.queue_depth_now();
        self.recent().sample_depth(depth);
    }

    /// The last five minutes second by second, the queue depth now sampled first.
    pub fn history(&self) -> History {
        let depth = self.queue_depth_now();
        let mut recent = self.recent();
        recent.sample_depth(depth);
        recent.history(unix_now())
    }

    /// `sluice_queue_depth` now (one atomic read).
    fn queue_depth_now(&self) -> u32 {
        u32::try_from(self.queue_depth.get()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;
