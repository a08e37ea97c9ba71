//! One admission decision with 10,000 configured tenants and an `[edge]` ceiling: the
//! fast path of a connect that fits (tenant looked up, tenant and edge slot taken,
//! tenant and edge token taken) and the release of its permit when the session ends.
//!
//! `cargo bench --bench admission`; results and machine in `docs/benchmarks.md`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
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

criterion_group!(benches, bench);
criterion_main!(benches);
