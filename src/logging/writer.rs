//! Beside the flow (a leaf): the log's own thread, which takes formatted lines off the workers and writes them to stderr in batches.
//!
//! A worker that logs formats its line as before and appends it to a bounded buffer
//! (a mutex held for the copy only); it never makes a system call for it: the log
//! thread is woken (one futex wake) only when it sleeps, and after each batch it lingers
//! [`LINGER`] before it looks again, so under load it takes everything that gathered
//! meanwhile in one `write(2)` and nobody wakes it. A lone line is written at once.
//!
//! **When stderr is slower than the log** (a full pipe whose reader, journald or a
//! container runtime, is behind) the buffer fills to its bound and further lines are
//! **dropped and counted**, not waited for: a slow log reader must not stall the workers
//! and every connection they serve. Once a batch has been written, the log says how many
//! lines it lost (`log lines dropped`, a warning, with `dropped`), and
//! [`dropped_lines`] (`sluice_log_lines_dropped_total`) counts them all.
//!
//! On exit the [`super::LogGuard`] waits until every line logged before it reached
//! stderr (for at most [`EXIT_LIMIT`]: a reader that takes no more at all must not keep
//! the process from exiting); lines logged after it are written directly. A panic waits
//! for the lines before it (at most [`PANIC_LIMIT`]) so that they come before its message.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long the log thread waits after a batch before it takes the next: lines of a busy
/// moment gather meanwhile (one write for all of them), and no worker has to wake it.
pub(super) const LINGER: Duration = Duration::from_millis(2);

/// How long the exit waits for the lines still buffered to be written.
pub(super) const EXIT_LIMIT: Duration = Duration::from_secs(5);

/// How long a panic waits for the lines logged before it.
const PANIC_LIMIT: Duration = Duration::from_millis(500);

/// The default bound of the buffer, in bytes (some 5,000 connect lines).
pub(super) const DEFAULT_CAPACITY: usize = 1 << 20;

/// A batch buffer larger than this after a burst is given back.
const KEEP: usize = 64 * 1024;

/// Lines dropped since the process started, every buffer together.
static DROPPED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The log thread is appending its report of dropped lines: that line is never
    /// dropped (its count would be lost with it), so the bound is exceeded by one line.
    static REPORTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Log lines dropped since the process started because stderr did not take them fast
/// enough (see the module header).
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// What the workers and the log thread share.
#[derive(Debug)]
pub(super) struct Shared {
    state: Mutex<State>,
    /// The log thread waits here for lines.
    wake: Condvar,
    /// Flushes wait here for the log thread's progress.
    progress: Condvar,
    capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    /// Lines not yet taken by the log thread.
    pending: Vec<u8>,
    /// Lines dropped since the last report.
    dropped: u64,
    /// Bytes appended and bytes written (or given up on) since the start.
    appended: u64,
    written: u64,
    /// The log thread waits on `wake` (an appender must wake it).
    asleep: bool,
    /// Threads waiting on `progress`.
    flushers: usize,
    /// The guard asked the log thread to finish.
    stop: bool,
    /// The log thread has finished: lines go straight to stderr.
    direct: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one formatted line (or drops and counts it when the buffer is full).
    pub(super) fn append(&self, line: &[u8]) {
        let mut state = self.lock();
        if state.direct {
            drop(state);
            let _ = std::io::stderr().write_all(line);
            return;
        }
        // A line longer than the whole buffer still goes through an empty buffer.
        if !state.pending.is_empty()
            && state.pending.len() + line.len() > self.capacity
            && !REPORTING.get()
        {
            state.dropped += 1;
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        state.pending.extend_from_slice(line);
        state.appended += line.len() as u64;
        let wake = std::mem::take(&mut state.asleep);
        drop(state);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Waits (at most `limit`) until every line appended before the call was written.
    pub(super) fn flush(&self, limit: Duration) {
        let mut state = self.lock();
        let target = state.appended;
        state = self.wait_while(state, limit, |s| s.written < target);
        drop(state);
    }

    /// Asks the log thread to write what is left and finish, and waits (at most
    /// `limit`) until it has.
    pub(super) fn finish(&self, limit: Duration) {
        let mut state = self.lock();
        state.stop = true;
        state = self.wait_while(state, limit, |_| true);
        drop(state);
    }

    /// Wakes the log thread and waits (at most `limit`) while `pending` holds and lines
    /// are not yet written straight to stderr.
    fn wait_while<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        limit: Duration,
        pending: impl Fn(&State) -> bool,
    ) -> MutexGuard<'a, State> {
        let deadline = Instant::now() + limit;
        if std::mem::take(&mut state.asleep) {
            self.wake.notify_one();
        }
        state.flushers += 1;
        while pending(&state) && !state.direct {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .progress
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.flushers -= 1;
        state
    }
}

/// Starts the log thread writing to `sink`, with a buffer of `capacity` bytes; `report`
/// logs a count of dropped lines (through the subscriber, so in the log's format).
pub(super) fn start(
    mut sink: impl Write + Send + 'static,
    capacity: usize,
    report: fn(u64),
) -> std::io::Result<Arc<Shared>> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
        progress: Condvar::new(),
        capacity: capacity.max(1),
    });
    let theirs = shared.clone();
    std::thread::Builder::new()
        .name("sluice-log".into())
        .spawn(move || run(&theirs, &mut sink, report))?;
    Ok(shared)
}

/// The log thread: takes what is pending, writes it, lingers, again; finishes when
/// asked and nothing is left.
fn run(shared: &Shared, sink: &mut dyn Write, report: fn(u64)) {
    let mut batch = Vec::new();
    loop {
        let mut state = shared.lock();
        while state.pending.is_empty() && state.dropped == 0 {
            if state.stop {
                state.direct = true;
                drop(state);
                shared.progress.notify_all();
                return;
            }
            state.asleep = true;
            state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.asleep = false;
        std::mem::swap(&mut state.pending, &mut batch);
        let dropped = std::mem::take(&mut state.dropped);
        drop(state);

        // A failed write (stderr closed) loses the batch: there is nowhere to say so.
        let _ = sink.write_all(&batch).and_then(|()| sink.flush());
        let len = batch.len() as u64;
        batch.clear();
        if batch.capacity() > KEEP {
            batch.shrink_to(KEEP);
        }
        if dropped > 0 {
            // Appended like any line, even to a full buffer, and written in the next batch.
            REPORTING.set(true);
            report(dropped);
            REPORTING.set(false);
        }

        let mut state = shared.lock();
        state.written += len;
        let stop = state.stop;
        if state.flushers > 0 {
            shared.progress.notify_all();
        }
        drop(state);
        if !stop {
            std::thread::sleep(LINGER);
        }
    }
}

/// Makes panics wait for the lines logged before them (see the module header).
pub(super) fn flush_on_panic(shared: Arc<Shared>) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        shared.flush(PANIC_LIMIT);
        previous(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that records each write, and can be held shut.
    #[derive(Clone, Default)]
    struct Sink {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        shut: Arc<Mutex<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _shut = self.shut.lock().unwrap();
            self.writes.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    static REPORTED: AtomicU64 = AtomicU64::new(0);

    fn report(n: u64) {
        REPORTED.fetch_add(n, Ordering::Relaxed);
    }

    #[test]
    fn a_full_buffer_drops_and_counts_lines_and_the_rest_arrive_in_batches() {
        let sink = Sink::default();
        let shut = sink.shut.lock().unwrap();
        let shared = start(sink.clone(), 100, report).unwrap();
        // The first line is taken at once and the log thread blocks writing it.
        shared.append(b"line 0000\n");
        for _ in 0..1000 {
            if sink.writes.lock().unwrap().is_empty() && shared.lock().pending.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // 10 bytes a line, 100 buffered: 10 more fit, 89 are dropped.
        for n in 1..100 {
            shared.append(format!("line {n:04}\n").as_bytes());
        }
        let dropped_before = dropped_lines();
        assert!(dropped_before >= 89);
        drop(shut);
        shared.finish(Duration::from_secs(10));
        let writes = sink.writes.lock().unwrap().clone();
        let all: Vec<u8> = writes.concat();
        let text = String::from_utf8(all).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 11, "{text}");
        assert_eq!(lines[0], "line 0000");
        assert_eq!(lines[10], "line 0010");
        assert_eq!(writes.len(), 2, "the ten buffered lines in one write");
        assert_eq!(
            REPORTED.load(Ordering::Relaxed),
            89,
            "reported once, all of them"
        );
        assert!(shared.lock().direct);
    }
}
