//! The "SIP call counting" section of `wsbench report` (issue 17): the message relay's
//! CPU per round trip for a SIP tenant with call counting on (target `sluice-sip`,
//! tenant `bench_sip`) against the same tenant without call keys (`sluice-sip-off`,
//! tenant `bench_sip_off`: its messages are not parsed), and the memory of a tracked
//! call (`wsbench calls` on `sluice-sip`).

use super::{stats, Data};

const ON: &str = "sluice-sip";
const OFF: &str = "sluice-sip-off";

/// `median (min–max)` of a field across repetitions.
fn spread(d: &Data, t: &str, s: &str, f: &str, digits: usize) -> String {
    match d.get(t, s, f).and_then(|v| stats(v.as_slice())) {
        Some((m, lo, hi)) => format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})"),
        None => "—".into(),
    }
}

pub(super) fn sip(d: &Data) {
    let load = d.get(ON, "load", "cpu_us_per_rt").is_some()
        || d.get(OFF, "load", "cpu_us_per_rt").is_some();
    let calls = d.get(ON, "calls", "bytes_per_call").is_some();
    if !(load || calls) {
        return;
    }
    println!("\n## SIP call counting (issue 17)");
    if load {
        let reps = [ON, OFF]
            .iter()
            .filter_map(|t| d.get(t, "load", "cpu_us_per_rt").map(Vec::len))
            .max()
            .unwrap_or(0);
        let conns = d.cell(ON, "load", "conns", 0);
        let size = d.cell(ON, "load", "size", 0);
        println!(
            "\nThe message relay of one sluice process for two `accept`-mode tenants with \
             subprotocol `sip`: `bench_sip` counts calls (target {ON}: every message is \
             parsed as SIP), `bench_sip_off` is the same without call keys ({OFF}: counting \
             off, nothing parsed). `wsbench --sip load`: {conns} connections, one call up \
             on each (INVITE → 200 → ACK), then in-dialog INFOs of about {size} bytes, one \
             in flight per connection, echoed by the edge. Medians of {reps} repetitions \
             (min–max); on ÷ off within each repetition, median (min–max).\n"
        );
        println!("| figure | counting on ({ON}) | counting off ({OFF}) | on ÷ off |");
        println!("|---|---|---|---|");
        for (label, f, dg) in [
            ("proxy CPU µs / round trip", "cpu_us_per_rt", 2),
            ("round trips/s", "rt_per_s", 0),
            ("p50 µs under load", "p50_us", 0),
            ("p99 µs under load", "p99_us", 0),
            ("proxy CPU, cores", "proxy_cpu_cores", 2),
            ("errors", "errors", 0),
        ] {
            println!(
                "| {label} | {} | {} | {} |",
                spread(d, ON, "load", f, dg),
                spread(d, OFF, "load", f, dg),
                d.paired(ON, "load", f, OFF),
            );
        }
        println!(
            "| calls counted during the load (`sluice_calls_active`) | {} | {} | — |",
            spread(d, ON, "load", "calls_active", 0),
            spread(d, OFF, "load", "calls_active", 0),
        );
    }
    if calls {
        let runs = d.get(ON, "calls", "bytes_per_call").map_or(0, Vec::len);
        let n = d.median(ON, "calls", "calls").unwrap_or(0.0);
        println!(
            "\nMemory of a tracked call (`wsbench calls` on {ON}, {runs} runs, a fresh \
             sluice each): {} SIP sessions opened, each relays one OPTIONS of {} bytes and \
             goes idle; the proxy's RSS is read, one call is placed on each session \
             (INVITE → 200 → ACK) and the RSS read again. Per call = ΔRSS ÷ calls (with one \
             call per session this includes the session's call table, which its first \
             call allocates). RSS moves in 4 KiB pages ({:.1} bytes per call at this \
             count), and blocks freed while the sessions opened are reused before the \
             heap grows, so small counts read low. Median (min–max).\n",
            d.cell(ON, "calls", "opened", 0),
            d.cell(ON, "calls", "size", 0),
            4096.0 / n.max(1.0),
        );
        println!("| figure | {ON} |");
        println!("|---|---|");
        for (label, f, dg) in [
            ("**bytes per tracked call**", "bytes_per_call", 0),
            (
                "**bytes per idle SIP session**",
                "bytes_per_idle_session",
                0,
            ),
            (
                "bytes per call still in RSS after every call's BYE",
                "bytes_per_call_after_bye",
                0,
            ),
            ("calls placed", "calls", 0),
            (
                "calls counted with every call up (`sluice_calls_active`)",
                "calls_active_up",
                0,
            ),
            (
                "calls counted after the BYEs (`sluice_calls_active`)",
                "calls_active_ended",
                0,
            ),
            ("RSS with the sessions open, MB", "rss_open_kib", 0),
            ("errors", "errors", 0),
        ] {
            let cell = if f == "rss_open_kib" {
                d.mb(ON, "calls", f)
            } else {
                spread(d, ON, "calls", f, dg)
            };
            println!("| {label} | {cell} |");
        }
    }
}
