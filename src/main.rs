//! The `sluice` binary: parses the command line and runs it (see [`sluice::cli`]).

fn main() -> std::process::ExitCode {
    #[cfg(unix)]
    raise_open_files_limit();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        fixed_mmap_threshold();
        trim::start();
    }
    sluice::cli::main()
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
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fixed_mmap_threshold() {
    const MMAP_THRESHOLD: libc::c_int = 128 * 1024;
    // SAFETY: mallopt only sets a parameter of glibc's malloc, before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// glibc's malloc keeps the memory of ended sessions in its arenas, so after a reconnect
/// storm RSS would stay at its peak for good. `malloc_trim(0)` hands the free pages of
/// every arena back to the OS. A background thread calls it when many sessions have
/// ended since the last call, and never more than once per period: quiet while sessions
/// are stable.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod trim {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use sluice::release::SESSIONS_ENDED;

    /// How often the thread looks.
    const PERIOD: Duration = Duration::from_secs(2);
    /// Sessions that must have ended since the last trim.
    const ENDED: u64 = 64;

    pub(super) fn start() {
        let _ = std::thread::Builder::new()
            .name("sluice-trim".into())
            .spawn(|| {
                let mut at_last_trim = 0;
                loop {
                    std::thread::sleep(PERIOD);
                    let ended = SESSIONS_ENDED.load(Ordering::Relaxed);
                    if ended.saturating_sub(at_last_trim) >= ENDED {
                        at_last_trim = ended;
                        // SAFETY: malloc_trim has no preconditions; it takes glibc's
                        // own arena locks.
                        unsafe {
                            libc::malloc_trim(0);
                        }
                    }
                }
            });
    }
}
