//! The "Issue 16 targets" table of `wsbench report`: one line per target of issue 16
//! (its "Targets" table), with sluice's median, the reference's, the ratio within each
//! repetition and whether it is met.

use super::{stats, verdict, Data};

/// What a target line is measured against.
enum Against {
    /// Another target's same figure, within each repetition.
    Target(&'static str),
    /// A fixed bound, in the figure's unit.
    Bound(f64),
    /// Another field of the same measurement (its ratio is that measurement's
    /// `ratio_field`), e.g. RSS after close against RSS before.
    Field(&'static str, &'static str),
}

struct Goal {
    label: &'static str,
    who: &'static str,
    scenario: &'static str,
    field: &'static str,
    digits: usize,
    unit: &'static str,
    /// Display scale of the figure (KiB → MB: 1/1024).
    scale: f64,
    against: Against,
    /// Met when the median ratio is at most this (at least, for a rate).
    limit: f64,
    rate: bool,
}

const GOALS: [Goal; 9] = [
    Goal {
        label: "proxy CPU per completed handshake (fills) ≤ 0.90 × NGINX",
        who: "sluice",
        scenario: "handshakes",
        field: "fill_cpu_us_per_handshake",
        digits: 1,
        unit: " µs",
        scale: 1.0,
        against: Against::Target("nginx"),
        limit: 0.90,
        rate: false,
    },
    Goal {
        label: "handshakes/s in the same fills ≥ 1.10 × NGINX",
        who: "sluice",
        scenario: "handshakes",
        field: "fill_handshakes_per_s",
        digits: 0,
        unit: "/s",
        scale: 1.0,
        against: Against::Target("nginx"),
        limit: 1.10,
        rate: true,
    },
    Goal {
        label: "proxy CPU per round trip, 100 connections ≤ 0.90 × NGINX",
        who: "sluice",
        scenario: "load",
        field: "cpu_us_per_rt",
        digits: 2,
        unit: " µs",
        scale: 1.0,
        against: Against::Target("nginx"),
        limit: 0.90,
        rate: false,
    },
    Goal {
        label: "1-connection RTT p99 ≤ 0.95 × NGINX",
        who: "sluice",
        scenario: "rtt",
        field: "p99_us",
        digits: 1,
        unit: " µs",
        scale: 1.0,
        against: Against::Target("nginx"),
        limit: 0.95,
        rate: false,
    },
    Goal {
        label: "RSS per idle session, `hold` ≤ 0.70 × HAProxy",
        who: "sluice",
        scenario: "idle",
        field: "kb_per_session",
        digits: 2,
        unit: " KB",
        scale: 1.0,
        against: Against::Target("haproxy"),
        limit: 0.70,
        rate: false,
    },
    Goal {
        label: "RSS per idle session, `accept` ≤ 8 KB",
        who: "sluice-accept",
        scenario: "idle",
        field: "kb_per_session",
        digits: 2,
        unit: " KB",
        scale: 1.0,
        against: Against::Bound(8.0),
        limit: 1.0,
        rate: false,
    },
    Goal {
        label: "RSS 2 s after all sessions close ≤ 1.2 × before they opened (`hold`)",
        who: "sluice",
        scenario: "idle",
        field: "rss_after_2s_kib",
        digits: 1,
        unit: " MB",
        scale: 1.0 / 1024.0,
        against: Against::Field("rss_before_kib", "rss_after_2s_ratio"),
        limit: 1.2,
        rate: false,
    },
    Goal {
        label: "admission decision p50, one thread, one tenant ≤ 100 ns",
        who: "sluice",
        scenario: "admission",
        field: "one_tenant_p50_ns",
        digits: 1,
        unit: " ns",
        scale: 1.0,
        against: Against::Bound(100.0),
        limit: 1.0,
        rate: false,
    },
    Goal {
        label: "admission decision p99, both cores on one tenant ≤ 1 µs",
        who: "sluice",
        scenario: "admission",
        field: "two_threads_same_tenant_p99_ns",
        digits: 1,
        unit: " ns",
        scale: 1.0,
        against: Against::Bound(1000.0),
        limit: 1.0,
        rate: false,
    },
];

/// One line per target of issue 16: sluice's median, the reference's, the median
/// (min–max) of the ratios within each repetition, and whether the median ratio meets
/// the target.
pub(super) fn targets(d: &Data) {
    let reps = d.reps();
    println!(
        "\nIssue 16 targets ({reps} repetitions{}): sluice's median, the reference's median, \
         and the ratio within each repetition, median (min–max); met when the median ratio \
         is within the target. A fixed bound's ratio is the figure ÷ the bound.\n",
        if reps < 5 {
            "; the issue asks for at least 5"
        } else {
            ""
        }
    );
    println!("| target | sluice | reference | ratio | met |");
    println!("|---|---|---|---|---|");
    for g in &GOALS {
        let fig = |t: &str, f: &str| {
            d.median(t, g.scenario, f).map_or("—".into(), |x| {
                format!("{:.*}{}", g.digits, x * g.scale, g.unit)
            })
        };
        let figure = fig(g.who, g.field);
        let (reference, ratios) = match g.against {
            Against::Target(other) if !d.has(other) => {
                println!(
                    "| {} | {figure} | no reference | no reference | no reference |",
                    g.label
                );
                continue;
            }
            Against::Target(other) => {
                let name = if other == "nginx" { "NGINX" } else { "HAProxy" };
                (
                    format!("{name} {}", fig(other, g.field)),
                    d.ratios(g.who, g.scenario, g.field, other, g.field),
                )
            }
            Against::Bound(b) => (
                format!("{b}{}", g.unit),
                d.get(g.who, g.scenario, g.field)
                    .map(|v| v.iter().map(|x| x / b).collect())
                    .unwrap_or_default(),
            ),
            Against::Field(before, ratio) => (
                format!("{} before", fig(g.who, before)),
                d.get(g.who, g.scenario, ratio).cloned().unwrap_or_default(),
            ),
        };
        let (ratio, met) = match stats(&ratios) {
            Some((m, lo, hi)) => (
                format!("{m:.2}× ({lo:.2}–{hi:.2})"),
                Some(if g.rate { m >= g.limit } else { m <= g.limit }),
            ),
            None if g.scenario == "admission" => {
                ("not measured (`bench/run.sh --admission`)".into(), None)
            }
            None => ("—".into(), None),
        };
        println!(
            "| {} | {figure} | {reference} | {ratio} | {} |",
            g.label,
            verdict(met)
        );
    }
}
