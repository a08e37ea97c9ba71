//! Beside step 7: the memory of ended sessions handed back to the OS soon after they end.
//!
//! The allocator keeps what ended sessions freed: glibc's arenas keep free pages, and
//! each thread's cache (tcache: the last few blocks freed of each small size) keeps
//! blocks scattered over the heap, each pinning its page (jemalloc, the binary's
//! allocator by default, keeps them in its thread caches and hands pages back only on
//! its decay; `src/main.rs` sets hooks for either). After a storm of closes that
//! held RSS at 1.25 to 1.35 times what it was before the sessions opened. The binary,
//! which may call the allocator, installs [`Hooks`]: `trim` hands every arena's free
//! pages back (`malloc_trim`), `release_cache` empties the calling thread's cache into
//! its arena (`prepare_thread` readies a thread for it, once, while its heap is new).
//! [`watch`] runs them:
//!
//! - `prepare_thread` on every runtime worker (the threads that free sessions), at
//!   start: the workers of the runtime given to [`watch`], and each of the proxy's
//!   per-core runtimes as it starts ([`worker`]);
//! - every [`TICK`] it looks at the count of ended sessions
//!   ([`super::SESSIONS_ENDED`]); once [`ENDED`] or more have ended since it last ran
//!   the hooks, it runs them as soon as a tick passes with no session ending (the storm
//!   is over: memory comes back within about two ticks of the last close), or at most
//!   every [`PERIOD`] while sessions keep ending: `release_cache` on every worker, each
//!   taken by one task for the moment, then `trim`.
//!
//! Nothing of this is on the handshake or relay path: the watcher is a thread of its
//! own, and the workers are asked only when it runs the hooks.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::SESSIONS_ENDED;

/// How often the watcher looks.
pub const TICK: Duration = Duration::from_millis(250);
/// Longest time between two runs of the hooks while sessions keep ending.
pub const PERIOD: Duration = Duration::from_secs(2);
/// Sessions that must have ended since the hooks last ran.
pub const ENDED: u64 = 64;
/// How long the workers are waited for (a busy one may be late; the rest go on).
const GATHER: Duration = Duration::from_millis(100);

/// What the binary gives the watcher (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Hooks {
    /// Hands free memory of every arena back to the OS.
    pub trim: fn(),
    /// Readies the calling thread for `release_cache` (run on each worker at start).
    pub prepare_thread: fn(),
    /// Empties the calling thread's allocator cache into its arena.
    pub release_cache: fn(),
}

static HOOKS: OnceLock<Hooks> = OnceLock::new();

/// Installs the hooks; the first call wins. Without them [`watch`] does nothing.
pub fn install(hooks: Hooks) {
    let _ = HOOKS.set(hooks);
}

/// The runtimes whose workers the watcher asks: the one [`watch`] was given and the
/// proxy's per-core runtimes ([`worker`]), each under a number of its own.
static RUNTIMES: Mutex<Vec<(u64, tokio::runtime::Handle)>> = Mutex::new(Vec::new());

/// Starts the watcher thread for the runtime of `handle` (and the runtimes [`worker`]
/// adds), if hooks are installed.
pub fn watch(handle: tokio::runtime::Handle) {
    let Some(&hooks) = HOOKS.get() else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("sluice-memory".into())
        .spawn(move || {
            on_every_worker(&handle, hooks.prepare_thread);
            let _main = register(handle);
            let mut at_last_run = SESSIONS_ENDED.load(Ordering::Relaxed);
            let mut last_run = Instant::now();
            let mut seen = at_last_run;
            loop {
                std::thread::sleep(TICK);
                let ended = SESSIONS_ENDED.load(Ordering::Relaxed);
                let quiet = ended == seen;
                seen = ended;
                if ended.saturating_sub(at_last_run) >= ENDED
                    && (quiet || last_run.elapsed() >= PERIOD)
                {
                    at_last_run = ended;
                    last_run = Instant::now();
                    let runtimes: Vec<_> = lock(&RUNTIMES).iter().map(|(_, h)| h.clone()).collect();
                    for handle in &runtimes {
                        on_every_worker(handle, hooks.release_cache);
                    }
                    (hooks.trim)();
                }
            }
        });
}

/// Called on a per-core runtime's own thread before it runs: readies the thread
/// (`prepare_thread`) and adds the runtime to the watcher's, until the guard drops
/// (when the runtime stops). Nothing when no hooks are installed.
pub fn worker(handle: &tokio::runtime::Handle) -> Option<Registered> {
    let hooks = HOOKS.get()?;
    (hooks.prepare_thread)();
    Some(register(handle.clone()))
}

/// A runtime the watcher asks, until dropped.
#[derive(Debug)]
pub struct Registered(u64);

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&RUNTIMES).retain(|(id, _)| *id != self.0);
    }
}

fn register(handle: tokio::runtime::Handle) -> Registered {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    lock(&RUNTIMES).push((id, handle));
    Registered(id)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `f` once on each worker of the runtime: one task per worker, each holding its
/// worker until all have started (so no worker runs two), at most [`GATHER`].
fn on_every_worker(handle: &tokio::runtime::Handle, f: fn()) {
    let workers = handle.metrics().num_workers();
    let gate = Arc::new((Mutex::new((0usize, 0usize)), Condvar::new()));
    for _ in 0..workers {
        let gate = gate.clone();
        handle.spawn(async move {
            let (lock, cvar) = &*gate;
            let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
            g.0 += 1;
            cvar.notify_all();
            drop(wait_while(cvar, g, GATHER, |g| g.0 < workers));
            f();
            let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
            g.1 += 1;
            cvar.notify_all();
        });
    }
    // Wait for them to finish (trimming before would miss what they free).
    let (lock, cvar) = &*gate;
    let g = lock.lock().unwrap_or_else(|e| e.into_inner());
    drop(wait_while(cvar, g, 2 * GATHER, |g| g.1 < workers));
}

/// Waits on `cvar` while `waiting` holds, at most `most` in all.
fn wait_while<'a, T>(
    cvar: &Condvar,
    guard: std::sync::MutexGuard<'a, T>,
    most: std::time::Duration,
    waiting: impl FnMut(&mut T) -> bool,
) -> std::sync::MutexGuard<'a, T> {
    cvar.wait_timeout_while(guard, most, waiting)
        .unwrap_or_else(|e| e.into_inner())
        .0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::thread::ThreadId;

    static RAN_ON: Mutex<Vec<ThreadId>> = Mutex::new(Vec::new());

    fn record() {
        RAN_ON.lock().unwrap().push(std::thread::current().id());
    }

    #[test]
    fn a_hook_runs_once_on_every_worker() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(3)
            .build()
            .unwrap();
        on_every_worker(rt.handle(), record);
        let ran = RAN_ON.lock().unwrap().clone();
        assert_eq!(ran.len(), 3, "{ran:?}");
        assert_eq!(ran.iter().collect::<HashSet<_>>().len(), 3, "{ran:?}");
    }
}
