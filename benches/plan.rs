//! `cargo bench --bench plan`: how long `sluice plan` takes for a day (issue 18's speed
//! target: 100,000 connects over 100 tenants across 8 hours in under 10 s).
//!
//! 100 tenants, each with 1,000 connects: a ramp of 700 over the 8 hours, a burst of
//! 100 at its start and a reconnect storm of 200 at a time of its own; sessions of 30
//! minutes to 4 hours; clients retry with jitter and give up after 2 minutes. Tenant
//! limits are tight enough that bursts and storms queue and some are refused, and an
//! `[edge]` ceiling is shared by all. The scheduler is the real one; the run is timed
//! on the wall clock, three times (no statistics: each run takes seconds).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use sluice::plan::{profile, simulate, Options};

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: keep it short then.
    let full = std::env::args().any(|a| a == "--bench");
    let tenants = if full { 100 } else { 3 };
    let mut config = String::from(
        "[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:9\"]\n\
         [edge]\nmax_sessions = 60000\nhandshake_rate = 400.0\nhandshake_burst = 100\n",
    );
    let mut text = String::from(
        "seed = 3\n[clients]\nhold = { uniform = [\"30m\", \"4h\"] }\ngive_up_after = \"2m\"\n\
         retry = \"jitter\"\nmax_attempts = 6\n",
    );
    for t in 0..tenants {
        let _ = write!(
            config,
            "[tenants.t{t}]\nauth = {{ kind = \"none\" }}\nmax_sessions = 600\nhandshake_rate = 4.0\n\
             handshake_burst = 10\nqueue_depth = 150\nqueue_timeout = \"60s\"\n"
        );
        let _ = write!(
            text,
            "[tenants.t{t}]\nramp = {{ connects = 700, over = \"8h\" }}\n\
             burst = {{ connects = 100, at = \"{}s\", within = \"2s\" }}\n\
             storm = {{ sessions = 200, at = \"{}s\", spread = \"10s\" }}\n",
            t * 7,
            3600 + t * 211
        );
    }
    let config = sluice::Config::parse(&config, &HashMap::new()).expect("a valid config");
    let profile = profile::parse(&text, Path::new(".")).expect("a valid profile");
    let options = Options {
        seed: profile.seed,
        edge_alone: None,
    };
    let runs = if full { 3 } else { 1 };
    for run in 1..=runs {
        let started = Instant::now();
        let report = simulate(&config, &profile.clients, &options);
        let took = started.elapsed();
        let connected: u64 = report.tenants.values().map(|t| t.connected).sum();
        let refused: u64 = report
            .tenants
            .values()
            .flat_map(|t| t.refused.values())
            .sum();
        println!(
            "plan run {run}: {} connects over {} tenants, {:.1} h of virtual time, in {:.2} s \
             ({connected} connected, {refused} refusals, edge peak {} sessions)",
            profile.clients.len(),
            report.tenants.len(),
            report.span / 3600.0,
            took.as_secs_f64(),
            report.edge.peak_sessions,
        );
    }
}
