//! One admission decision with 10,000 configured tenants and an `[edge]` ceiling: the
//! fast path of a connect that fits (tenant looked up, tenant and edge slot taken,
//! tenant and edge token taken) and the release of its permit when the session ends.
//!
//! `cargo bench --bench admission`; results and machine in `docs/benchmarks.md`.
//!
//! Criterion reports a mean per decision, no tail. `cargo bench --bench admission --
//! --percentiles` (add `--json` for one JSON line, as `bench/run.sh` records it) measures
//! p50 and p99 per decision instead, for "1 thread, one tenant" and "2 threads, same
//! tenant" with the `[edge]` ceiling: each thread times batches of [`BATCH`] decisions
//! with `Instant` (after [`WARM_BATCHES`] unmeasured ones), takes the cost of an empty
//! batch (the two clock reads; its median) off each, and divides by [`BATCH`]; the
//! percentiles are over those per-decision times of every batch of every thread. A
//! batch's mean hides a slow decision among fast ones, so p99 here is the p99 of
//! 32-decision means: a decision that waits 1 µs for the other core shows as at least
//! 31 ns in its batch. Both threads decide for the whole time (same number of batches).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use sluice::admission::{Admission, Jitter, Scheduler, TenantGate};
use sluice::Config;

const TENANTS: usize = 10_000;

/// 10,000 tenants whose limits never bind during the run (so every decision is an
/// admission), behind an edge ceiling that does not bind either.
fn admission(edge: bool) -> (Arc<Admission>, Vec<Arc<TenantGate>>) {
    let mut text = String::from(
        "[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:9\"]\n\
         [defaults]\nmax_sessions = 1000000\nhandshake_rate = 1000000.0\nhandshake_burst = 1000000000\n",
    );
    if edge {
        text.push_str(
            "[edge]\nmax_sessions = 1000000\nhandshake_rate = 1000000.0\nhandshake_burst = 1000000000\n",
        );
    }
    let names: Vec<String> = (0..TENANTS).map(|i| format!("tenant-{i:05}")).collect();
    for name in &names {
        text.push_str(&format!("[tenants.{name}]\nauth = {{ kind = \"none\" }}\n"));
    }
    let config = Config::parse(&text, &HashMap::new()).expect("bench config is valid");
    // The proxy resolves a connect's tenant once, into its handle, and decides on the
    // handle's gate: so does the bench.
    let scheduler = Scheduler::new(&config, Jitter::seeded(0));
    let gates = names
        .iter()
        .map(|n| scheduler.gate(n).expect("configured").clone())
        .collect();
    (scheduler.admission.clone(), gates)
}

/// A cheap spread of tenant indices (no RNG in the measured loop).
fn pick(i: u64) -> usize {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize % TENANTS
}

fn decide(a: &Admission, tenant: &Arc<TenantGate>) {
    let permit = a.try_admit(tenant).expect("limits never bind in the bench");
    drop(black_box(permit));
}

/// Both cores deciding at once: `threads` threads run `iters` decisions each; the time
/// reported per iteration is wall time / `iters`, i.e. what one decision costs while
/// the other core decides too.
fn contended(
    a: &Arc<Admission>,
    names: &Arc<Vec<Arc<TenantGate>>>,
    iters: u64,
    same: bool,
) -> Duration {
    let threads = 2;
    let barrier = Arc::new(std::sync::Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (a, names, barrier) = (a.clone(), names.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..iters {
                    let idx = if same { 0 } else { pick(i * 2 + t as u64) };
                    decide(&a, &names[idx]);
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    for (edge, group) in [
        (true, "decision, 10k tenants, with [edge]"),
        (false, "decision, 10k tenants, no [edge]"),
    ] {
        let (a, names) = admission(edge);
        let names = Arc::new(names);
        let mut g = c.benchmark_group(group);
        g.bench_function("1 thread, spread over tenants", |b| {
            let mut i = 0u64;
            b.iter(|| {
                i += 1;
                decide(&a, &names[pick(i)]);
            });
        });
        g.bench_function("1 thread, one tenant", |b| {
            b.iter(|| decide(&a, &names[0]));
        });
        g.bench_function("2 threads, spread over tenants", |b| {
            b.iter_custom(|iters| contended(&a, &names, iters, false));
        });
        g.bench_function("2 threads, same tenant", |b| {
            b.iter_custom(|iters| contended(&a, &names, iters, true));
        });
        g.finish();
    }
}

/// Decisions per timed batch (`--percentiles`).
const BATCH: u32 = 32;
/// Timed batches per thread.
const BATCHES: usize = 100_000;
/// Batches run first and not timed.
const WARM_BATCHES: usize = 5_000;

/// Median time of an empty batch (two `Instant` reads), in ns.
fn timer_ns() -> f64 {
    let mut v: Vec<f64> = (0..10_000)
        .map(|_| {
            let t = Instant::now();
            black_box(());
            t.elapsed().as_nanos() as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Per-decision times (ns) of `BATCHES` batches on one tenant.
fn batches(a: &Admission, gate: &Arc<TenantGate>, timer: f64) -> Vec<f64> {
    for _ in 0..WARM_BATCHES * BATCH as usize {
        decide(a, gate);
    }
    let mut v = Vec::with_capacity(BATCHES);
    for _ in 0..BATCHES {
        let t = Instant::now();
        for _ in 0..BATCH {
            decide(a, gate);
        }
        v.push((t.elapsed().as_nanos() as f64 - timer).max(0.0) / f64::from(BATCH));
    }
    v
}

/// p50 and p99 (nearest rank) of `v`, sorted here.
fn p50_p99(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
    (at(0.50), at(0.99))
}

fn percentiles(json: bool) {
    let (a, gates) = admission(true);
    let gate = gates[0].clone();
    let timer = timer_ns();
    let one = p50_p99(batches(&a, &gate, timer));
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (a, gate, barrier) = (a.clone(), gate.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                batches(&a, &gate, timer)
            })
        })
        .collect();
    let pooled: Vec<f64> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("bench thread"))
        .collect();
    let two = p50_p99(pooled);
    let r1 = |x: f64| (x * 10.0).round() / 10.0;
    if json {
        println!(
            "{{\"scenario\":\"admission\",\"tenants\":{TENANTS},\"edge\":true,\"batch\":{BATCH},\"batches\":{BATCHES},\"timer_ns\":{},\"one_tenant_p50_ns\":{},\"one_tenant_p99_ns\":{},\"two_threads_same_tenant_p50_ns\":{},\"two_threads_same_tenant_p99_ns\":{}}}",
            r1(timer),
            r1(one.0),
            r1(one.1),
            r1(two.0),
            r1(two.1)
        );
    } else {
        println!(
            "admission decision, {TENANTS} tenants, with [edge]; per decision, from \
             {BATCHES} batches of {BATCH} per thread (an empty batch, {timer:.0} ns, taken off)"
        );
        println!(
            "  1 thread, one tenant:    p50 {:.1} ns, p99 {:.1} ns",
            one.0, one.1
        );
        println!(
            "  2 threads, same tenant:  p50 {:.1} ns, p99 {:.1} ns",
            two.0, two.1
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--percentiles") {
        percentiles(args.iter().any(|a| a == "--json"));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
