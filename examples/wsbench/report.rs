//! `wsbench report`: the medians of a `runs.jsonl` (one JSON object per measurement, as
//! `bench/run.sh` writes it) as Markdown tables, the ratios within each repetition, and
//! where sluice stands against the targets of issue 16; the SIP call counting section
//! (issue 17, `report/sip.rs`) for targets `sluice-sip` and `sluice-sip-off`.
//!
//! A figure a run did not record (an older run, a scenario left out, a target absent)
//! shows as "—".

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

mod sip;
mod targets;

/// Every target `bench/run.sh` knows, in table order. `sluice-base` and
/// `sluice-accept-base` are the same two tenants served by the binary of another revision
/// (`bench/run.sh --baseline REV`). Tables list only the targets a run measured.
const TARGETS: [&str; 7] = [
    "direct",
    "sluice",
    "sluice-base",
    "sluice-accept",
    "sluice-accept-base",
    "haproxy",
    "nginx",
];

/// Median of a non-empty list.
fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "—",
    }
}

/// (target, scenario, field).
type Key = (String, String, String);

fn key(t: &str, s: &str, f: &str) -> Key {
    (t.into(), s.into(), f.into())
}

/// Every numeric top-level field of every successful measurement.
struct Data {
    /// Values across repetitions.
    vals: BTreeMap<Key, Vec<f64>>,
    /// Repetition → value, for ratios within a repetition.
    by_rep: BTreeMap<Key, BTreeMap<i64, f64>>,
    /// "target/scenario" → failed measurements.
    errors: BTreeMap<String, u64>,
    /// The targets this run measured, in table order.
    present: Vec<&'static str>,
}

impl Data {
    fn load(input: &Path) -> Data {
        let text = std::fs::read_to_string(input)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", input.display()));
        let mut d = Data {
            vals: BTreeMap::new(),
            by_rep: BTreeMap::new(),
            errors: BTreeMap::new(),
            present: Vec::new(),
        };
        let mut seen = BTreeSet::new();
        for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
            let Ok(Value::Object(m)) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let target = m.get("target").and_then(Value::as_str).unwrap_or("?");
            let scenario = m.get("scenario").and_then(Value::as_str).unwrap_or("?");
            seen.insert(target.to_string());
            if m.contains_key("error") {
                *d.errors.entry(format!("{target}/{scenario}")).or_default() += 1;
                continue;
            }
            let rep = m.get("rep").and_then(Value::as_i64).unwrap_or(0);
            for (k, v) in &m {
                if let Some(x) = v.as_f64().filter(|x| x.is_finite()) {
                    let k = key(target, scenario, k);
                    d.by_rep.entry(k.clone()).or_default().insert(rep, x);
                    d.vals.entry(k).or_default().push(x);
                }
            }
        }
        d.present = TARGETS
            .iter()
            .copied()
            .filter(|t| seen.contains(*t))
            .collect();
        d
    }

    fn has(&self, t: &str) -> bool {
        self.present.contains(&t)
    }

    fn get(&self, t: &str, s: &str, f: &str) -> Option<&Vec<f64>> {
        self.vals.get(&key(t, s, f)).filter(|v| !v.is_empty())
    }

    fn median(&self, t: &str, s: &str, f: &str) -> Option<f64> {
        self.get(t, s, f).map(|v| median_of(v.clone()))
    }

    fn cell(&self, t: &str, s: &str, f: &str, digits: usize) -> String {
        self.median(t, s, f)
            .map_or("—".into(), |x| format!("{x:.digits$}"))
    }

    /// Median of a KiB field, in MB (MiB).
    fn mb(&self, t: &str, s: &str, f: &str) -> String {
        self.median(t, s, f)
            .map_or("—".into(), |x| format!("{:.1}", x / 1024.0))
    }

    fn range(&self, t: &str, s: &str, f: &str, digits: usize) -> String {
        match self.get(t, s, f) {
            Some(v) => {
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                format!("{lo:.digits$}–{hi:.digits$}")
            }
            None => "—".into(),
        }
    }

    /// `who`'s `f` ÷ `other`'s `f2` within each repetition both have.
    fn ratios(&self, who: &str, s: &str, f: &str, other: &str, f2: &str) -> Vec<f64> {
        let (Some(a), Some(b)) = (
            self.by_rep.get(&key(who, s, f)),
            self.by_rep.get(&key(other, s, f2)),
        ) else {
            return Vec::new();
        };
        a.iter()
            .filter_map(|(rep, x)| b.get(rep).filter(|y| **y != 0.0).map(|y| x / y))
            .collect()
    }

    /// (median, min, max) of `who` ÷ `other` within each repetition.
    fn paired_stats(&self, who: &str, s: &str, f: &str, other: &str) -> Option<(f64, f64, f64)> {
        stats(&self.ratios(who, s, f, other, f))
    }

    fn paired(&self, who: &str, s: &str, f: &str, other: &str) -> String {
        self.paired_stats(who, s, f, other)
            .map_or("—".into(), |(med, lo, hi)| {
                format!("{med:.2}× ({lo:.2}–{hi:.2})")
            })
    }

    /// Repetitions of the load scenario (the most any target has).
    fn reps(&self) -> usize {
        TARGETS
            .iter()
            .filter_map(|t| self.get(t, "load", "rt_per_s").map(Vec::len))
            .max()
            .unwrap_or(0)
    }
}

/// (median, min, max), or None for no values.
fn stats(r: &[f64]) -> Option<(f64, f64, f64)> {
    let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (!r.is_empty()).then(|| (median_of(r.to_vec()), lo, hi))
}

pub(crate) fn report(input: &Path) {
    let d = Data::load(input);
    // A run of only the SIP scenario (bench/run.sh --scenarios sip) has none of these
    // targets: their tables are left out.
    if !d.present.is_empty() {
        main_tables(&d);
        fills_table(&d);
        baselines(&d);
        versus_proxies(&d);
        targets::targets(&d);
        issue7(&d);
    }
    sip::sip(&d);
    if !d.errors.is_empty() {
        println!("\nFailed runs (left out of the medians): {:?}", d.errors);
    }
}

fn main_tables(d: &Data) {
    println!(
        "Medians of {} interleaved repetitions (per-repetition min–max below).\n",
        d.reps()
    );
    println!(
        "| target | proxy CPU µs / round trip | round trips/s (100 conns) | syscalls / rt | context switches / rt | RTT p50 µs | RTT p99 µs | p99 µs under load | KB / idle session | RSS with all idle sessions open, MB | RSS 2 s after close, MB (× before) | RSS after close, MB (retained) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &t in &d.present {
        let after_2s = match (
            d.median(t, "idle", "rss_after_2s_kib"),
            d.median(t, "idle", "rss_after_2s_ratio"),
        ) {
            (Some(a), Some(r)) => format!("{:.1} ({r:.2}×)", a / 1024.0),
            _ => "—".into(),
        };
        let after = match (
            d.median(t, "idle", "rss_after_kib"),
            d.median(t, "idle", "retained_kib"),
        ) {
            (Some(a), Some(r)) => format!("{:.1} ({:+.1})", a / 1024.0, r / 1024.0),
            _ => "—".into(),
        };
        println!(
            "| {t} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {after_2s} | {after} |",
            d.cell(t, "load", "cpu_us_per_rt", 2),
            d.cell(t, "load", "rt_per_s", 0),
            d.cell(t, "load", "syscalls_per_rt", 2),
            d.cell(t, "load", "ctxsw_per_rt", 3),
            d.cell(t, "rtt", "p50_us", 1),
            d.cell(t, "rtt", "p99_us", 1),
            d.cell(t, "load", "p99_us", 0),
            d.cell(t, "idle", "kb_per_session", 2),
            d.mb(t, "idle", "rss_open_kib"),
        );
    }

    println!("\nSpread across repetitions (min–max):\n");
    println!("| target | CPU µs / rt | round trips/s | RTT p50 µs | RTT p99 µs | KB / idle session | RSS 2 s after close ÷ before | handshakes/s | CPU µs / handshake |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &t in &d.present {
        println!(
            "| {t} | {} | {} | {} | {} | {} | {} | {} | {} |",
            d.range(t, "load", "cpu_us_per_rt", 2),
            d.range(t, "load", "rt_per_s", 0),
            d.range(t, "rtt", "p50_us", 1),
            d.range(t, "rtt", "p99_us", 1),
            d.range(t, "idle", "kb_per_session", 2),
            d.range(t, "idle", "rss_after_2s_ratio", 2),
            d.range(t, "handshakes", "fill_handshakes_per_s", 0),
            d.range(t, "handshakes", "fill_cpu_us_per_handshake", 1),
        );
    }

    println!("\nWho used the two cores during the load window (medians, in cores):\n");
    println!(
        "| target | proxy | client | echo server | everything else | stolen by the hypervisor |"
    );
    println!("|---|---|---|---|---|---|");
    for &t in &d.present {
        println!(
            "| {t} | {} | {} | {} | {} | {} |",
            d.cell(t, "load", "proxy_cpu_cores", 2),
            d.cell(t, "load", "client_cores", 2),
            d.cell(t, "load", "echo_cores", 2),
            d.cell(t, "load", "other_cores", 2),
            d.cell(t, "load", "steal_cores", 2),
        );
    }
}

/// Repeated connect fills (`wsbench handshakes`); older runs' connect + close cycles
/// get a table of their own.
fn fills_table(d: &Data) {
    let shape = d
        .present
        .iter()
        .find_map(|t| {
            let c = d.median(t, "handshakes", "count")?;
            let n = d.median(t, "handshakes", "concurrency")?;
            let f = d.median(t, "handshakes", "fills")?;
            Some(format!(
                "fills of {c:.0} sessions, {n:.0} handshakes in flight, {f:.0} fills per measurement"
            ))
        })
        .filter(|_| d.present.iter().any(|t| d.get(t, "handshakes", "fill_handshakes_per_s").is_some()));
    if let Some(shape) = shape {
        println!("\nConnect fills ({shape}; medians): handshakes/s and CPU over each fill's connect phase, CPU per session over connect + close.\n");
        println!("| target | handshakes/s | proxy CPU µs / handshake | proxy CPU µs / session (connect + close) | time to 101 p50 ms | p99 ms | errors | listen overflows (machine) | TIME_WAIT on the target's port after |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for &t in &d.present {
            println!(
                "| {t} | {} | {} | {} | {} | {} | {} | {} | {} |",
                d.cell(t, "handshakes", "fill_handshakes_per_s", 0),
                d.cell(t, "handshakes", "fill_cpu_us_per_handshake", 1),
                d.cell(t, "handshakes", "fill_cpu_us_per_session", 1),
                d.cell(t, "handshakes", "p50_ms", 2),
                d.cell(t, "handshakes", "p99_ms", 2),
                d.cell(t, "handshakes", "errors", 0),
                d.cell(t, "handshakes", "listen_overflows", 0),
                d.cell(t, "handshakes", "time_wait_after", 0),
            );
        }
    }
    if d.present
        .iter()
        .any(|t| d.get(t, "handshakes", "handshakes_per_s").is_some())
    {
        println!(
            "\nHandshakes, earlier method (connect + close cycles, whole-run CPU; medians):\n"
        );
        println!("| target | handshakes/s | proxy CPU µs / handshake |");
        println!("|---|---|---|");
        for &t in &d.present {
            println!(
                "| {t} | {} | {} |",
                d.cell(t, "handshakes", "handshakes_per_s", 0),
                d.cell(t, "handshakes", "cpu_us_per_handshake", 1),
            );
        }
    }
}

/// Against a baseline revision (bench/run.sh --baseline REV): each sluice target beside
/// the same tenant served by the other revision's binary, paired per repetition.
fn baselines(d: &Data) {
    for (new, old) in [
        ("sluice", "sluice-base"),
        ("sluice-accept", "sluice-accept-base"),
    ] {
        if !(d.has(new) && d.has(old)) {
            continue;
        }
        println!(
            "\n{new} against {old} (the --baseline revision): medians, and {new} ÷ {old} \
             within each repetition, median (min–max). Within 10 %: the median ratio is at \
             most 1.10 for costs and latencies, at least 0.90 for rates.\n"
        );
        println!("| figure | {new} | {old} | {new} ÷ {old} | within 10 % |");
        println!("|---|---|---|---|---|");
        // (label, scenario, field, digits, a rate: higher is better)
        for (label, sc, f, dg, rate) in [
            ("CPU µs / round trip", "load", "cpu_us_per_rt", 2, false),
            ("round trips/s", "load", "rt_per_s", 0, true),
            ("syscalls / round trip", "load", "syscalls_per_rt", 2, false),
            ("RTT p50 µs", "rtt", "p50_us", 1, false),
            ("RTT p99 µs", "rtt", "p99_us", 1, false),
            ("p99 µs under load", "load", "p99_us", 0, false),
            ("KB / idle session", "idle", "kb_per_session", 2, false),
            (
                "RSS 2 s after close, KB",
                "idle",
                "rss_after_2s_kib",
                0,
                false,
            ),
            (
                "handshakes/s (fills)",
                "handshakes",
                "fill_handshakes_per_s",
                0,
                true,
            ),
            (
                "CPU µs / handshake (fills)",
                "handshakes",
                "fill_cpu_us_per_handshake",
                1,
                false,
            ),
            (
                "CPU µs / session, connect + close",
                "handshakes",
                "fill_cpu_us_per_session",
                1,
                false,
            ),
        ] {
            let within =
                d.paired_stats(new, sc, f, old)
                    .map(|(m, _, _)| if rate { m >= 0.9 } else { m <= 1.1 });
            println!(
                "| {label} | {} | {} | {} | {} |",
                d.cell(new, sc, f, dg),
                d.cell(old, sc, f, dg),
                d.paired(new, sc, f, old),
                verdict(within)
            );
        }
    }
}

/// sluice ÷ HAProxy and NGINX (absent from a run with --only-sluice).
fn versus_proxies(d: &Data) {
    if !(d.has("nginx") || d.has("haproxy")) {
        return;
    }
    println!("\nsluice ÷ the other proxy within each repetition: median (min–max):\n");
    println!("| figure | sluice ÷ NGINX | sluice ÷ HAProxy |");
    println!("|---|---|---|");
    for (label, sc, f) in [
        ("CPU µs / round trip", "load", "cpu_us_per_rt"),
        ("syscalls / round trip", "load", "syscalls_per_rt"),
        ("round trips/s", "load", "rt_per_s"),
        ("RTT p50", "rtt", "p50_us"),
        ("RTT p99", "rtt", "p99_us"),
        ("KB / idle session", "idle", "kb_per_session"),
        ("RSS 2 s after close ÷ before", "idle", "rss_after_2s_ratio"),
        (
            "handshakes/s (fills)",
            "handshakes",
            "fill_handshakes_per_s",
        ),
        (
            "CPU µs / handshake (fills)",
            "handshakes",
            "fill_cpu_us_per_handshake",
        ),
        (
            "user CPU µs / handshake (fills)",
            "handshakes",
            "fill_user_us_per_handshake",
        ),
        (
            "system CPU µs / handshake (fills)",
            "handshakes",
            "fill_sys_us_per_handshake",
        ),
        ("user CPU µs / round trip", "load", "user_us_per_rt"),
        ("system CPU µs / round trip", "load", "sys_us_per_rt"),
    ] {
        println!(
            "| {label} | {} | {} |",
            d.paired("sluice", sc, f, "nginx"),
            d.paired("sluice", sc, f, "haproxy")
        );
    }
    floors(d);
}

/// How low sluice's CPU ratio to NGINX could go if its own code cost nothing: sluice's
/// system time ÷ NGINX's whole CPU time, within each repetition. The system time is the
/// kernel's work for the same system calls and the same packets (on loopback, a send
/// also runs the receiving socket's TCP processing), which no user-space change removes;
/// a target below this floor needs fewer or cheaper system calls, not less code.
fn floors(d: &Data) {
    let rows = [
        (
            "CPU / handshake (fills)",
            "handshakes",
            "fill_sys_us_per_handshake",
            "fill_user_us_per_handshake",
            "fill_cpu_us_per_handshake",
        ),
        (
            "CPU / round trip",
            "load",
            "sys_us_per_rt",
            "user_us_per_rt",
            "cpu_us_per_rt",
        ),
    ];
    if !d.has("nginx")
        || rows
            .iter()
            .all(|(_, sc, sys, _, _)| d.get("sluice", sc, sys).is_none())
    {
        return;
    }
    println!("\nWhere the CPU ratio to NGINX can go (within each repetition: median (min–max)):\n");
    println!("| figure | sluice ÷ NGINX | sluice's system time ÷ NGINX's CPU (the ratio with no user-space work at all) | NGINX's user share of its CPU |");
    println!("|---|---|---|---|");
    let show = |r: Vec<f64>| {
        stats(&r).map_or("—".into(), |(m, lo, hi)| {
            format!("{m:.2}× ({lo:.2}–{hi:.2})")
        })
    };
    for (label, sc, sys, user, total) in rows {
        println!(
            "| {label} | {} | {} | {} |",
            d.paired("sluice", sc, total, "nginx"),
            show(d.ratios("sluice", sc, sys, "nginx", total)),
            show(d.ratios("nginx", sc, user, "nginx", total)),
        );
    }
}

/// Issue 7: what accept mode's message relay costs against hold mode's tunnel.
fn issue7(d: &Data) {
    if !(d.has("sluice-accept") && d.has("sluice")) {
        return;
    }
    println!(
        "\nAims (issue 7), sluice-accept (message relay) against sluice (hold-mode tunnel):\n"
    );
    println!(
        "| aim | sluice-accept | sluice | sluice-accept ÷ sluice within each repetition | met |"
    );
    println!("|---|---|---|---|---|");
    let (ac, hc) = (
        d.median("sluice-accept", "load", "cpu_us_per_rt"),
        d.median("sluice", "load", "cpu_us_per_rt"),
    );
    println!(
        "| CPU per round trip ≤ 1.4 × hold | {} µs | {} µs | {} | {} |",
        d.cell("sluice-accept", "load", "cpu_us_per_rt", 2),
        d.cell("sluice", "load", "cpu_us_per_rt", 2),
        d.paired("sluice-accept", "load", "cpu_us_per_rt", "sluice"),
        verdict(ac.zip(hc).map(|(a, b)| a <= 1.4 * b))
    );
    let am = d.median("sluice-accept", "idle", "kb_per_session");
    println!(
        "| idle memory < 16 KB per session | {} KB | {} KB | {} | {} |",
        d.cell("sluice-accept", "idle", "kb_per_session", 2),
        d.cell("sluice", "idle", "kb_per_session", 2),
        d.paired("sluice-accept", "idle", "kb_per_session", "sluice"),
        verdict(am.map(|a| a < 16.0))
    );
    println!(
        "| (for reading) RTT p99 | {} µs | {} µs | {} | — |",
        d.cell("sluice-accept", "rtt", "p99_us", 1),
        d.cell("sluice", "rtt", "p99_us", 1),
        d.paired("sluice-accept", "rtt", "p99_us", "sluice"),
    );
}
