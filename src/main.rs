//! The `sluice` binary: parses the command line and runs it (see [`sluice::cli`]).

/// jemalloc (feature `jemalloc`, on by default on Linux): per-thread caches that hold far
/// more blocks than glibc's tcache (7 per size), so a handshake's allocations, with
/// hundreds of sessions opening and closing at once, rarely reach the arenas.
#[cfg(all(target_os = "linux", feature = "jemalloc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first call (before `main`): a background thread hands
/// unused pages back after a second (`dirty_decay_ms`), also while sluice is idle and
/// calls no allocator. Without it the blocks of a large message relayed in `accept` mode
/// stayed in RSS until jemalloc was called again, up to ten seconds later: after one
/// 1 MB message an idle session held 24.4 KB, with it 5–20 KB (`idle_memory 200 accept
/// --large 1000000`; docs/benchmarks.md). After many sessions end, [`jemalloc::install`]'s hooks hand memory
/// back at once. `_RJEM_MALLOC_CONF` in the environment is read after this and wins.
#[cfg(all(target_os = "linux", feature = "jemalloc"))]
#[export_name = "_rjem_malloc_conf"]
pub static JEMALLOC_CONF: Option<&'static std::ffi::c_char> = Some(
    // SAFETY: the first byte of a static C string.
    unsafe { &*c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr() },
);

fn main() -> std::process::ExitCode {
    #[cfg(unix)]
    raise_open_files_limit();
    #[cfg(all(target_os = "linux", feature = "jemalloc"))]
    jemalloc::install();
    #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "jemalloc")))]
    {
        fixed_mmap_threshold();
        trim::install();
    }
    sluice::cli::main()
}

/// What [`sluice::release::memory`] runs after many sessions ended, with jemalloc: each
/// worker flushes its thread cache to the arenas, then every arena's unused pages go
/// back to the OS at once (without it they would go on jemalloc's decay, over about
/// ten seconds, and only when the allocator is called again).
#[cfg(all(target_os = "linux", feature = "jemalloc"))]
mod jemalloc {
    use sluice::release::memory::Hooks;

    pub(super) fn install() {
        sluice::release::memory::install(Hooks {
            trim,
            prepare_thread: || {},
            release_cache,
        });
    }

    /// `mallctl` of a command that takes and gives nothing (`name` ends with NUL).
    fn run(name: &[u8]) {
        debug_assert_eq!(name.last(), Some(&0));
        // SAFETY: a NUL-terminated name of a void mallctl; no old or new value.
        unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr().cast(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            );
        }
    }

    /// Purges the unused pages of every arena (4096 is `MALLCTL_ARENAS_ALL`).
    fn trim() {
        run(b"arena.4096.purge\0");
    }

    /// Flushes the calling thread's cache into the arenas.
    fn release_cache() {
        run(b"thread.tcache.flush\0");
    }
}

/// Each proxied session needs two file descriptors, and container runtimes often start
/// processes with a soft limit of 1024 (about 500 sessions) under a much higher hard
/// limit. Raise the soft limit to the hard one, as servers such as NGINX and HAProxy do;
/// the hard limit itself stays the operator's (systemd `LimitNOFILE`, `--ulimit`).
#[cfg(unix)]
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Large blocks (an `accept`-mode message being assembled, up to
/// `accept.max_message_bytes`) come from their own `mmap` and go back to the OS when
/// freed. glibc's default threshold is dynamic: after such a block is freed it rises to
/// that block's size, and later ones come from the heap, where freed memory stays in
/// RSS. Setting it fixes it at `MMAP_THRESHOLD` (and the trim threshold at twice that).
#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "jemalloc")))]
fn fixed_mmap_threshold() {
    const MMAP_THRESHOLD: libc::c_int = 128 * 1024;
    // SAFETY: mallopt only sets a parameter of glibc's malloc, before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// What [`sluice::release::memory`] runs after many sessions ended: glibc's malloc keeps
/// their memory in its arenas and in each thread's cache, so after a reconnect storm RSS
/// would stay at its peak for good.
#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "jemalloc")))]
mod trim {
    use std::cell::RefCell;

    use sluice::release::memory::Hooks;

    /// Size classes of glibc's per-thread cache (tcache): blocks of 32 to 1040 bytes.
    const CLASSES: usize = 64;
    /// Blocks it keeps per class (glibc's default `tcache_count`).
    const CACHED: usize = 7;

    thread_local! {
        /// A worker's stand-ins: [`CACHED`] blocks of each class, taken when the thread
        /// was new (so from one compact stretch of its arena) and kept.
        static STAND_INS: RefCell<Vec<*mut libc::c_void>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn install() {
        sluice::release::memory::install(Hooks {
            trim,
            prepare_thread,
            release_cache,
        });
    }

    /// Request size of a block of `class`.
    fn size(class: usize) -> usize {
        24 + 16 * class
    }

    /// Hands the free pages of every arena back to the OS.
    fn trim() {
        // SAFETY: malloc_trim has no preconditions; it takes glibc's own arena locks.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// Takes the calling thread's stand-ins (once).
    fn prepare_thread() {
        STAND_INS.with_borrow_mut(|stand_ins| {
            if !stand_ins.is_empty() {
                return;
            }
            stand_ins.reserve_exact(CLASSES * CACHED);
            for class in 0..CLASSES {
                for _ in 0..CACHED {
                    // SAFETY: malloc of a non-zero size; kept for the thread's life.
                    stand_ins.push(unsafe { libc::malloc(size(class)) });
                }
            }
        });
    }

    /// The calling thread's tcache keeps the last blocks freed of each size: after a
    /// storm of closes, blocks of ended sessions all over the heap, each keeping its
    /// page resident, and `malloc_trim` cannot release them (to the arena they are in
    /// use). This takes them out of the cache, fills the cache with the thread's
    /// stand-ins, frees the taken blocks (the cache being full, they go back to the
    /// arena, where `trim` releases their pages), and takes the stand-ins back: the
    /// cache is left empty.
    fn release_cache() {
        STAND_INS.with_borrow_mut(|stand_ins| {
            if stand_ins.len() != CLASSES * CACHED {
                return;
            }
            let mut taken = [[std::ptr::null_mut::<libc::c_void>(); CACHED]; CLASSES];
            for (class, row) in taken.iter_mut().enumerate() {
                for block in row.iter_mut() {
                    // SAFETY: malloc of a non-zero size; freed below.
                    *block = unsafe { libc::malloc(size(class)) };
                }
            }
            for &block in stand_ins.iter() {
                // SAFETY: a stand-in from malloc, taken again below before any other use.
                unsafe { libc::free(block) };
            }
            for &block in taken.iter().flatten() {
                // SAFETY: from malloc above (or null), freed once.
                unsafe { libc::free(block) };
            }
            for (at, block) in stand_ins.iter_mut().enumerate() {
                // SAFETY: malloc of a non-zero size; the cache gives the stand-in back.
                *block = unsafe { libc::malloc(size(at / CACHED)) };
            }
        });
    }
}
