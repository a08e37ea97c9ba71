//! The `sluice` binary: parses the command line and runs it (see [`sluice::cli`]).

fn main() -> std::process::ExitCode {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    trim::start();
    sluice::cli::main()
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
