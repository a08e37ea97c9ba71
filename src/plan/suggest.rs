//! Entry, `sluice plan --suggest`: the smallest limits under which every tenant's p99 wait meets a target, by search over the same simulation.
//!
//! A tenant *fits* when no client of it is refused, none gives up, and the p99 of its
//! waits is at most the target. The search, every step a [`simulate`] run:
//!
//! 1. Each tenant alone (its own connects, no `[edge]`): with its queue made deep enough
//!    for all of them and `queue_timeout` at least the target, does it fit at a handshake
//!    rate high enough to let every connect go in the first second? If not, its
//!    `max_sessions` is raised to the most sessions its arrivals would hold at once.
//!    Then the smallest rate that fits is found by bisection (on a log scale, then
//!    rounded up); a tenant whose configured rate is higher keeps it. Its queue depth is
//!    what its queue reached, plus a fifth.
//! 2. The edge, with every tenant at its suggested limits: the smallest `[edge]`
//!    handshake rate under which every tenant still fits (the config's burst, or the
//!    sum of the tenants'), with `max_sessions` at least the peak the plan saw. Without
//!    an `[edge]` section this is the rate the edge must sustain, suggested as one.
//! 3. A last plan with all of it says whether the target is met.
//!
//! Fitting is assumed to be monotone in a rate (more never hurts); the last plan checks
//! the result rather than trusting the assumption.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::report::Report;
use super::{simulate, Client, Options};
use crate::config::{Config, EdgeLimits, Limits};

/// Bisection steps per rate (a ratio of 2^(1/2^14) between the bounds at the end, well
/// under the rounding).
const STEPS: u32 = 14;

/// The limits `--suggest` found.
#[derive(Debug, Clone, Serialize)]
pub struct Suggestion {
    /// The p99 target, seconds.
    pub max_wait: f64,
    /// Whether a plan with these limits meets it.
    pub met: bool,
    /// The `[edge]` section.
    pub edge: EdgeLimitsOut,
    /// Per tenant (by its gate's name), its limits.
    pub tenants: BTreeMap<String, TenantLimits>,
    /// Per tenant (as the profile names it), its p99 wait under these limits.
    pub wait_p99: BTreeMap<String, Option<f64>>,
}

/// Suggested `[edge]`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EdgeLimitsOut {
    /// `max_sessions`.
    pub max_sessions: u32,
    /// `handshake_rate`: the smallest that fits.
    pub handshake_rate: f64,
    /// `handshake_burst`.
    pub handshake_burst: u32,
}

/// Suggested limits of one tenant.
#[derive(Debug, Clone, Serialize)]
pub struct TenantLimits {
    /// `max_sessions`.
    pub max_sessions: u32,
    /// `handshake_rate`.
    pub handshake_rate: f64,
    /// The smallest rate that fits on its own (`handshake_rate` keeps a higher
    /// configured one).
    pub min_rate: f64,
    /// `queue_depth`.
    pub queue_depth: u32,
    /// `queue_timeout`, seconds.
    pub queue_timeout: f64,
    /// Whether it fits alone at all (within the rates searched).
    pub fits: bool,
}

/// Whether the tenants of `report` named by `which` fit the target.
fn fits(report: &Report, target: Duration, which: &dyn Fn(&str) -> bool) -> bool {
    report
        .tenants
        .iter()
        .filter(|(n, _)| which(n))
        .all(|(_, t)| {
            t.refused.values().sum::<u64>() == 0
                && t.gave_up == 0
                && t.wait_p99.is_none_or(|w| w <= target.as_secs_f64() + 1e-9)
        })
}

/// `config` with `gate`'s limits replaced.
fn with_limits(config: &Config, gate: &str, limits: &Limits) -> Config {
    let mut config = config.clone();
    let replace = |t: &mut Arc<crate::config::Tenant>| {
        let mut new = (**t).clone();
        new.limits = limits.clone();
        *t = Arc::new(new);
    };
    if let Some(t) = config.tenants.get_mut(gate) {
        replace(t);
    } else if let Some(t) = config.default_tenant.as_mut().filter(|d| d.name == gate) {
        replace(t);
    }
    config
}

fn limits_of<'a>(config: &'a Config, gate: &str) -> Option<&'a Limits> {
    config
        .tenants
        .get(gate)
        .or(config.default_tenant.as_ref().filter(|d| d.name == gate))
        .map(|t| &t.limits)
}

/// The most sessions `clients` would hold at once if each were admitted on arrival.
fn raw_peak(clients: &[Client]) -> u32 {
    let mut events: Vec<(Duration, i32)> = clients
        .iter()
        .flat_map(|c| [(c.at, 1), (c.at + c.hold, -1)])
        .collect();
    // Ends before starts at the same instant.
    events.sort();
    let (mut live, mut peak) = (0i32, 0i32);
    for (_, d) in events {
        live += d;
        peak = peak.max(live);
    }
    peak.max(0) as u32
}

/// A rate rounded up to a figure worth writing in a config.
fn round_up(rate: f64) -> f64 {
    let step = if rate < 1.0 {
        0.1
    } else if rate < 100.0 {
        0.5
    } else {
        1.0
    };
    ((rate / step).ceil() * step * 10.0).round() / 10.0
}

/// The smallest rate in `[low, high]` for which `ok` holds, given that it holds at
/// `high` (geometric bisection).
fn smallest(low: f64, high: f64, ok: &mut dyn FnMut(f64) -> bool) -> f64 {
    let (mut lo, mut hi) = (low, high);
    if ok(lo) {
        return lo;
    }
    for _ in 0..STEPS {
        let mid = (lo * hi).sqrt();
        if ok(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// Searches the limits under which every tenant of `clients` fits `target` (module
/// docs).
pub fn suggest(
    config: &Config,
    clients: &[Client],
    options: &Options,
    target: Duration,
) -> Suggestion {
    let alone = Options {
        seed: options.seed,
        edge_alone: None,
    };
    let mut by_gate: BTreeMap<String, Vec<Client>> = BTreeMap::new();
    for c in clients {
        if let Some(gate) = super::simulate::gate_of(config, &c.tenant) {
            by_gate.entry(gate).or_default().push(c.clone());
        }
    }
    let mut tuned = config.clone();
    tuned.edge = None;
    let mut tenants = BTreeMap::new();
    for (gate, own) in &by_gate {
        let current = limits_of(config, gate)
            .expect("a gate of the config")
            .clone();
        let is_it = |name: &str| super::simulate::gate_of(config, name).as_deref() == Some(gate);
        let mut limits = Limits {
            queue_depth: current.queue_depth.max(own.len() as u32),
            queue_timeout: current.queue_timeout.max(target),
            ..current.clone()
        };
        let high = current.handshake_rate.max(own.len() as f64);
        let run = |limits: &Limits| {
            let cfg = with_limits(&tuned, gate, limits);
            simulate(&cfg, own, &alone)
        };
        let fit_at = |limits: &Limits, rate: f64| {
            let l = Limits {
                handshake_rate: rate,
                ..limits.clone()
            };
            fits(&run(&l), target, &is_it)
        };
        if !fit_at(&limits, high) {
            limits.max_sessions = limits.max_sessions.max(raw_peak(own));
        }
        let fits_alone = fit_at(&limits, high);
        let min_rate = if fits_alone {
            round_up(smallest(0.05, high, &mut |r| fit_at(&limits, r)))
        } else {
            high
        };
        limits.handshake_rate = current.handshake_rate.max(min_rate);
        let peak_queue = run(&limits)
            .tenants
            .iter()
            .filter(|(n, _)| is_it(n))
            .map(|(_, t)| t.peak_queue)
            .max()
            .unwrap_or(0);
        limits.queue_depth = current.queue_depth.max(peak_queue + peak_queue.div_ceil(5));
        tuned = with_limits(&tuned, gate, &limits);
        tenants.insert(
            gate.clone(),
            TenantLimits {
                max_sessions: limits.max_sessions,
                handshake_rate: limits.handshake_rate,
                min_rate,
                queue_depth: limits.queue_depth,
                queue_timeout: limits.queue_timeout.as_secs_f64(),
                fits: fits_alone,
            },
        );
    }
    // The edge: every tenant at its suggested limits.
    let everyone = |_: &str| true;
    let free = simulate(&tuned, clients, &alone);
    let tenant_rates: f64 = tenants.values().map(|t| t.handshake_rate).sum();
    let tenant_bursts: u32 = by_gate
        .keys()
        .filter_map(|g| limits_of(&tuned, g))
        .map(|l| l.handshake_burst)
        .sum();
    let burst = config
        .edge
        .as_ref()
        .map_or(tenant_bursts.max(1), |e| e.handshake_burst);
    let max_sessions = config
        .edge
        .as_ref()
        .map_or(0, |e| e.max_sessions)
        .max(free.edge.peak_sessions);
    let edge_at = |rate: f64| EdgeLimits {
        max_sessions,
        handshake_rate: rate,
        handshake_burst: burst,
    };
    let mut fit_edge = |rate: f64| {
        let mut cfg = tuned.clone();
        cfg.edge = Some(edge_at(rate));
        fits(&simulate(&cfg, clients, &alone), target, &everyone)
    };
    let mut high = tenant_rates.max(config.edge.as_ref().map_or(0.0, |e| e.handshake_rate));
    let total = clients.len() as f64;
    while !fit_edge(high) && high < total {
        high = (high * 2.0).min(total);
    }
    let rate = round_up(smallest(0.05, high.max(0.05), &mut fit_edge));
    let edge = edge_at(rate);
    tuned.edge = Some(edge.clone());
    let last = simulate(&tuned, clients, options);
    Suggestion {
        max_wait: target.as_secs_f64(),
        met: fits(&last, target, &everyone),
        edge: EdgeLimitsOut {
            max_sessions: edge.max_sessions,
            handshake_rate: edge.handshake_rate,
            handshake_burst: edge.handshake_burst,
        },
        tenants,
        wait_p99: last
            .tenants
            .iter()
            .map(|(n, t)| (n.clone(), t.wait_p99))
            .collect(),
    }
}

/// The suggestion as a config snippet, with a comment saying whether it meets the target.
pub fn render(s: &Suggestion, target: Duration) -> String {
    let mut out = String::new();
    let target = humantime::format_duration(target);
    let _ = writeln!(
        out,
        "# --suggest: limits for a p99 wait of at most {target} with no refusal and nobody giving up"
    );
    if s.met {
        let _ = writeln!(out, "# (a second plan with them meets it)");
    } else {
        let _ = writeln!(
            out,
            "# NOT MET: a second plan with them still misses it (see the p99s below)"
        );
    }
    let _ = writeln!(
        out,
        "[edge]\nmax_sessions = {}\nhandshake_rate = {:?}\nhandshake_burst = {}",
        s.edge.max_sessions, s.edge.handshake_rate, s.edge.handshake_burst
    );
    for (name, t) in &s.tenants {
        let _ = writeln!(
            out,
            "\n[{}]{}\nmax_sessions = {}\nhandshake_rate = {:?}   # fits alone from {:?}\nqueue_depth = {}\nqueue_timeout = \"{}\"",
            if *name == crate::config::DEFAULT_TENANT {
                "defaults".to_owned()
            } else {
                format!("tenants.{name}")
            },
            if t.fits { "" } else { "   # does not fit even alone" },
            t.max_sessions,
            t.handshake_rate,
            t.min_rate,
            t.queue_depth,
            humantime::format_duration(Duration::from_secs_f64(t.queue_timeout))
        );
    }
    let p99: Vec<String> = s
        .wait_p99
        .iter()
        .map(|(n, w)| format!("{n} {}", w.map_or("-".to_owned(), |w| format!("{w:.2}s"))))
        .collect();
    let _ = writeln!(out, "# p99 waits with these limits: {}", p99.join(", "));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_round_up_to_figures_worth_writing() {
        assert_eq!(round_up(0.031), 0.1);
        assert_eq!(round_up(0.84), 0.9);
        assert_eq!(round_up(7.01), 7.5);
        assert_eq!(round_up(7.5), 7.5);
        assert_eq!(round_up(99.6), 100.0);
        assert_eq!(round_up(123.2), 124.0);
    }

    #[test]
    fn bisection_finds_the_threshold_from_above() {
        let mut asked = 0;
        let found = smallest(0.05, 1000.0, &mut |r| {
            asked += 1;
            r >= 12.3
        });
        assert!((12.3..12.31).contains(&found), "{found}");
        assert_eq!(asked, 1 + STEPS, "one look at the floor, then the steps");
        assert_eq!(smallest(0.05, 10.0, &mut |_| true), 0.05);
    }

    #[test]
    fn the_raw_peak_counts_sessions_held_at_once() {
        let b = Arc::new(super::super::Behaviour::default());
        let c = |at: u64, hold: u64| Client {
            tenant: "t".into(),
            at: Duration::from_secs(at),
            hold: Duration::from_secs(hold),
            behaviour: b.clone(),
        };
        // [0,10) [5,15) [10,20) [12,13): at most three at once (12 s); one ending when
        // another starts does not overlap it.
        assert_eq!(raw_peak(&[c(0, 10), c(5, 10), c(10, 10), c(12, 1)]), 3);
        assert_eq!(raw_peak(&[]), 0);
    }
}
