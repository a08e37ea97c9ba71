//! Memory per configured tenant: heap bytes held by the admission state and by the
//! metrics of N tenants (default 10,000), counted by a wrapping global allocator.
//!
//! `cargo run --release --example tenant_memory -- 10000`; results in
//! `docs/benchmarks.md`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};

use sluice::admission::Admission;
use sluice::metrics::Metrics;
use sluice::Config;

/// The system allocator, counting bytes in use.
struct Counting;

static IN_USE: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter
// is updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        IN_USE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn in_use() -> i64 {
    IN_USE.load(Ordering::Relaxed)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(10_000, |a| a.parse().expect("a tenant count"));
    let mut text = String::from(
        "[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:9\"]\n\
         [edge]\nmax_sessions = 1000\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "[tenants.tenant-{i:05}]\nauth = {{ kind = \"none\" }}\n"
        ));
    }
    let config = Config::parse(&text, &HashMap::new()).expect("valid config");
    drop(text);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();

    let start = in_use();
    let metrics = Metrics::new(&config);
    let pools = sluice::upstream::Pools::new(&config);
    let admission = Admission::new(
        config.edge.as_ref(),
        sluice::admission::adaptive::Policy::of(&config.upstream),
        None,
        sluice::admission::Jitter::seeded(0),
    );
    let before_table = in_use();
    let table = sluice::tenants::Table::build(&config, None, &admission, &metrics, &pools);
    let with_table = in_use();
    let per = |bytes: i64| bytes as f64 / n as f64;
    println!("tenants: {n}");
    println!(
        "registry, pools, scheduler: {:.1} MiB",
        (before_table - start) as f64 / 1048576.0,
    );
    println!(
        "tenant table (handles, gates, metric series and recent windows): {:.1} MiB, {:.0} bytes per tenant",
        (with_table - before_table) as f64 / 1048576.0,
        per(with_table - before_table)
    );
    std::hint::black_box((&admission, &metrics, &table));
}
