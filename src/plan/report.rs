//! Entry, `sluice plan`: what a plan found — per tenant and at the edge — as JSON (DESIGN.md's shape) or a text table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// A plan's result. `--json` prints it: `{"tenants": {NAME: {...}}, "edge": {...}}`,
/// seconds as numbers (`null` where there is nothing to measure).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Per tenant, as the profile names them.
    pub tenants: BTreeMap<String, TenantReport>,
    /// The edge.
    pub edge: EdgeReport,
    /// Virtual seconds from the first arrival until the last session ended.
    pub span: f64,
    /// Seconds per point of the time series (plot).
    pub step: f64,
    /// Per client of the profile (in its order), what happened to it.
    #[serde(skip)]
    pub clients: Vec<ClientTrace>,
}

/// What happened to one client.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientTrace {
    /// When it was admitted, seconds from the start.
    pub admitted_at: Option<f64>,
    /// How long it waited from its first attempt.
    pub wait: Option<f64>,
    /// Every refusal it saw, in order.
    pub refusals: Vec<&'static str>,
    /// Whether it gave up.
    pub gave_up: bool,
}

/// One tenant's result.
#[derive(Debug, Clone, Serialize)]
pub struct TenantReport {
    /// Clients (a retry is not a new one).
    pub connects: u64,
    /// Clients admitted.
    pub connected: u64,
    /// Clients that gave up (patience ran out while queued or between attempts).
    pub gave_up: u64,
    /// Clients refused on their last attempt.
    pub failed: u64,
    /// Attempts, retries included.
    pub attempts: u64,
    /// Refusals seen, by reason (`queue-full`, `queue-timeout`, `edge-capacity`,
    /// `tenant-unknown`), retries included.
    pub refused: BTreeMap<String, u64>,
    /// Wait of the connected clients from their first attempt to their admission.
    pub wait_p50: Option<f64>,
    /// 95th percentile.
    pub wait_p95: Option<f64>,
    /// 99th percentile.
    pub wait_p99: Option<f64>,
    /// The longest.
    pub wait_max: Option<f64>,
    /// When the last client was admitted, if every client was; else `null`.
    pub all_connected_at: Option<f64>,
    /// When the last admitted client was admitted.
    pub last_connected_at: Option<f64>,
    /// The most clients in its queue at once.
    pub peak_queue: u32,
    /// Queue depth over time (the most in each step).
    #[serde(skip)]
    pub queue: Series,
    /// Admissions per step.
    #[serde(skip)]
    pub admitted: Series,
    /// A shadow tenant (`enforce = false`): its connects went on at once, as the proxy
    /// lets them; this is what enforcing would have done. Absent for enforced tenants.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowReport>,
}

/// What enforcing a shadow tenant would have done (the proxy's
/// `sluice_shadow_decisions_total` and `sluice_shadow_wait_seconds`).
#[derive(Debug, Clone, Serialize)]
pub struct ShadowReport {
    /// Would-be decisions by `would` label (`admit`, `queue`, refusal reasons).
    pub would: BTreeMap<String, u64>,
    /// Would-be waits of the clients that would have queued: 99th percentile.
    pub would_wait_p99: Option<f64>,
    /// The longest would-be wait.
    pub would_wait_max: Option<f64>,
}

impl ShadowReport {
    /// From the scheduler's tally of one shadow tenant.
    pub fn of(tally: &crate::admission::ShadowTally) -> Self {
        let mut waits: Vec<f64> = tally.waits().iter().map(|w| w.as_secs_f64()).collect();
        waits.sort_by(f64::total_cmp);
        Self {
            would: tally
                .decisions()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            would_wait_p99: crate::stats::quantile(&waits, 0.99),
            would_wait_max: waits.last().copied(),
        }
    }
}

/// The edge's result.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeReport {
    /// The most sessions live at once, all tenants.
    pub peak_sessions: u32,
    /// The most handshakes (admissions) in one second, all tenants.
    pub peak_rate: u32,
    /// The config's `[edge]` ceiling, if any.
    pub ceiling: Option<Ceiling>,
    /// What the edge alone would have refused (`--edge-sessions`, `--edge-rate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alone: Option<EdgeAloneReport>,
    /// Live sessions over time (the most in each step).
    #[serde(skip)]
    pub sessions: Series,
}

/// `[edge]` as configured.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ceiling {
    /// `max_sessions`.
    pub max_sessions: u32,
    /// `handshake_rate`.
    pub handshake_rate: f64,
    /// `handshake_burst`.
    pub handshake_burst: u32,
}

/// The raw arrivals against the edge's own limits, without sluice.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EdgeAloneReport {
    /// The session cap applied.
    pub max_sessions: Option<u32>,
    /// The handshake rate applied.
    pub rate: Option<f64>,
    /// Its burst.
    pub burst: Option<u32>,
    /// Handshakes refused for the rate.
    pub refused_rate: u64,
    /// Handshakes refused for the session cap.
    pub refused_sessions: u64,
    /// Refusals per tenant.
    pub by_tenant: BTreeMap<String, u64>,
    /// The most sessions it held at once.
    pub peak_sessions: u32,
}

/// A value per step of time: a level (the most it reached in the step) or a count.
#[derive(Debug, Clone, Default)]
pub struct Series {
    values: Vec<u32>,
    /// The level now (a level series).
    current: u32,
}

impl Series {
    /// The level is `v` from step `step` on.
    pub fn level(&mut self, step: usize, v: u32) {
        self.reach(step);
        self.values[step] = self.values[step].max(v);
        self.current = v;
    }

    /// `n` more in step `step`.
    pub fn add(&mut self, step: usize, n: u32) {
        self.reach(step);
        self.values[step] += n;
    }

    fn reach(&mut self, step: usize) {
        if self.values.len() <= step {
            self.values.resize(step + 1, self.current);
        }
    }

    /// The values, step by step (steps after the last change are not stored).
    pub fn values(&self) -> &[u32] {
        &self.values
    }

    /// The level after the last change (a level series), `0` for a count.
    pub fn level_now(&self) -> u32 {
        self.current
    }
}

fn secs(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(s) if s < 1.0 && s > 0.0 => format!("{:.0}ms", s * 1000.0),
        Some(s) if s < 120.0 => format!("{s:.1}s"),
        Some(s) if s < 3600.0 => format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64),
        Some(s) => {
            let s = s as u64;
            format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
        }
    }
}

/// The report as a text table.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let header = [
        "tenant",
        "connects",
        "connected",
        "gave up",
        "wait p50",
        "p95",
        "p99",
        "max",
        "all in at",
        "peak queue",
        "refused",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_owned()).collect()];
    for (name, t) in &r.tenants {
        let refused: Vec<String> = t.refused.iter().map(|(k, v)| format!("{k} {v}")).collect();
        rows.push(vec![
            name.clone(),
            t.connects.to_string(),
            t.connected.to_string(),
            t.gave_up.to_string(),
            secs(t.wait_p50),
            secs(t.wait_p95),
            secs(t.wait_p99),
            secs(t.wait_max),
            match (t.all_connected_at, t.last_connected_at) {
                (Some(at), _) => secs(Some(at)),
                (None, Some(last)) => format!("never (last {})", secs(Some(last))),
                (None, None) => "never".to_owned(),
            },
            t.peak_queue.to_string(),
            if refused.is_empty() {
                "-".to_owned()
            } else {
                refused.join(", ")
            },
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 || i == row.len() - 1 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    for (name, t) in &r.tenants {
        if let Some(s) = &t.shadow {
            let would: Vec<String> = s
                .would
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(
                out,
                "{name} is in shadow mode (enforce = false): its connects went on at once; enforcing would have decided {} (would-be wait p99 {}, max {})",
                if would.is_empty() { "nothing".to_owned() } else { would.join(", ") },
                secs(s.would_wait_p99),
                secs(s.would_wait_max)
            );
        }
    }
    let e = &r.edge;
    let ceiling = e.ceiling.map_or("no [edge] ceiling".to_owned(), |c| {
        format!(
            "[edge] ceiling {} sessions, {} handshakes/s, burst {}",
            c.max_sessions, c.handshake_rate, c.handshake_burst
        )
    });
    let _ = writeln!(
        out,
        "\nedge: peak {} sessions, peak {} handshakes in one second ({ceiling}); last session ended at {}",
        e.peak_sessions,
        e.peak_rate,
        secs(Some(r.span))
    );
    if let Some(a) = &e.alone {
        let limits: Vec<String> = a
            .max_sessions
            .map(|n| format!("{n} sessions"))
            .into_iter()
            .chain(
                a.rate
                    .map(|r| format!("{r} handshakes/s (burst {})", a.burst.unwrap_or(1))),
            )
            .collect();
        let by: Vec<String> = a
            .by_tenant
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            out,
            "without sluice, an edge of {} would have refused {} handshakes for its rate and {} for its sessions{}",
            limits.join(" and "),
            a.refused_rate,
            a.refused_sessions,
            if by.is_empty() {
                String::new()
            } else {
                format!(" ({})", by.join(", "))
            }
        );
    }
    out
}
