//! Entry: the edge simulator's counters, as `GET /stats` serves them.

use std::collections::BTreeMap;

use serde::Serialize;

/// Counters of one organisation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OrgStats {
    /// Handshakes received.
    pub handshakes: u64,
    /// Answered `101`.
    pub accepted: u64,
    /// Refused (each is a violation).
    pub rejected: u64,
    /// Dropped unanswered (too slow).
    pub dropped: u64,
    /// Live sessions now.
    pub live: u32,
    /// Most live sessions at once.
    pub peak: u32,
    /// SIP calls (`--mode sip`).
    #[serde(flatten)]
    pub calls: CallStats,
}

/// SIP call counters (`--mode sip`), in all and per organisation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallStats {
    /// Initial INVITEs (no To tag) received.
    pub invites: u64,
    /// Initial INVITEs answered `200 OK`.
    pub calls_answered: u64,
    /// Calls now: from the INVITE to its end.
    pub calls_active: u32,
    /// Most calls at once.
    pub calls_peak: u32,
    /// Initial INVITEs answered `503` for the call cap: call violations, each one the
    /// edge had to refuse.
    pub calls_refused: u64,
    /// Initial INVITEs answered `487` (a CANCEL, or a BYE, while it rang).
    pub calls_cancelled: u64,
    /// CANCELs received.
    pub cancels: u64,
    /// BYEs of the client that ended a call (answered `200`).
    pub byes_from_client: u64,
    /// BYEs the edge sent (`call_hangup_after`).
    pub byes_from_edge: u64,
    /// BYEs for no known call (answered `481`).
    pub byes_unknown: u64,
}

/// What `GET /stats` answers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SimStats {
    /// Handshakes received.
    pub handshakes: u64,
    /// Answered `101`.
    pub accepted: u64,
    /// Refused with the reject status.
    pub rejected: u64,
    /// Dropped unanswered after `drop_after`.
    pub dropped: u64,
    /// Handshakes received beyond the simulator's own limits (refused or dropped).
    pub violations: u64,
    /// Handshakes refused because the edge was down (an outage), not counted as
    /// violations.
    pub refused_outage: u64,
    /// Violations by limit: `org-rate`, `org-sessions`, `sessions`, `capacity`, `slow`.
    pub violations_by_limit: BTreeMap<String, u64>,
    /// Live sessions now.
    pub live: u32,
    /// Most live sessions at once.
    pub peak: u32,
    /// Median latency of answered handshakes, seconds.
    pub handshake_p50: Option<f64>,
    /// 99th percentile of the same.
    pub handshake_p99: Option<f64>,
    /// Per organisation.
    pub orgs: BTreeMap<String, OrgStats>,
    /// SIP calls (`--mode sip`).
    #[serde(flatten)]
    pub calls: CallStats,
    /// The Call-IDs of the initial INVITEs in the order received (the last
    /// [`INVITE_ORDER_KEPT`](super::INVITE_ORDER_KEPT)).
    pub invite_order: Vec<String>,
}
