//! Beside the flow (a leaf): log set-up, text or JSON lines on stderr, and log budgets.
//!
//! Log set-up: `tracing` to stderr, as text or JSON lines, filtered by `RUST_LOG`
//! (default `info`).
//!
//! The thread that logs formats its line and hands it to the log's own thread, which
//! writes to stderr in batches ([`writer`]): no worker makes a system call for a line or
//! waits for a slow log reader. The buffer is bounded (`SLUICE_LOG_BUFFER` bytes, 1 MiB
//! by default); when stderr does not keep up, lines are dropped and counted rather than
//! waited for, and the log says how many. [`init`] returns a [`LogGuard`]: keep it until
//! the end of `main`, its drop writes what is still buffered.
//!
//! Text lines carry ANSI colour only when stderr (where they go) is a terminal and
//! `NO_COLOR` is not set (<https://no-color.org>), so a log redirected to a file or
//! collected by journald stays plain.

use std::io::IsTerminal;
use std::sync::Arc;

mod text;
mod writer;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

pub use writer::dropped_lines;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. A second call (as in tests) is a no-op.
pub fn init(format: LogFormat) -> LogGuard {
    init_with(format, "info")
}

/// Installs the global subscriber with `default` as the filter when `RUST_LOG` is not
/// set (the tools use `warn`: their report is the output).
pub fn init_with(format: LogFormat, default: &str) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let (capacity, bad_capacity) = buffer_capacity(std::env::var_os("SLUICE_LOG_BUFFER"));
    let Ok(shared) = writer::start(std::io::stderr(), capacity, report_dropped) else {
        // No thread for it: the lines are written by the threads that log them.
        install(format, filter, std::io::stderr);
        return LogGuard(None);
    };
    if !install(format, filter, Lines(shared.clone())) {
        shared.finish(writer::EXIT_LIMIT);
        return LogGuard(None);
    }
    writer::flush_on_panic(shared.clone());
    if let Some(value) = bad_capacity {
        tracing::warn!(
            "SLUICE_LOG_BUFFER={value:?} is not a number of bytes: the log buffer keeps {capacity}"
        );
    }
    LogGuard(Some(shared))
}

/// Installs the global subscriber writing to `writer`; `false` when there already is one.
fn install<W>(format: LogFormat, filter: EnvFilter, writer: W) -> bool
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.event_format(text::Plain::default()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
    .is_ok()
}

/// Keeps the log's thread writing; dropped (at the end of `main`), it waits until the
/// lines logged so far reached stderr (at most a few seconds: see [`writer`]), and lines
/// logged afterwards go straight to stderr.
#[must_use = "dropping the guard stops the log's thread: keep it until the end of main"]
#[derive(Debug)]
pub struct LogGuard(Option<Arc<writer::Shared>>);

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.finish(writer::EXIT_LIMIT);
        }
    }
}

/// The buffer's bound from `SLUICE_LOG_BUFFER` (bytes), and the value when it is not a
/// number (the default is kept).
fn buffer_capacity(value: Option<std::ffi::OsString>) -> (usize, Option<String>) {
    let Some(value) = value else {
        return (writer::DEFAULT_CAPACITY, None);
    };
    let text = value.to_string_lossy();
    match text.trim().parse::<usize>() {
        Ok(n) if n > 0 => (n, None),
        _ => (writer::DEFAULT_CAPACITY, Some(text.into_owned())),
    }
}

/// The log's line after lines were dropped.
fn report_dropped(dropped: u64) {
    tracing::warn!(
        dropped,
        total = dropped_lines(),
        "log lines dropped: stderr did not take them fast enough"
    );
}

/// The subscriber's writer: each formatted line goes to the log's thread.
#[derive(Debug)]
struct Lines(Arc<writer::Shared>);

/// One line's writer.
#[derive(Debug)]
struct Line<'a>(&'a writer::Shared);

impl<'a> MakeWriter<'a> for Lines {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line(&self.0)
    }
}

impl std::io::Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The subscriber writes each line whole, in one call.
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `sluice_log_lines_dropped_total`, read when scraped.
#[derive(Debug, Clone)]
pub struct DroppedLinesMetric {
    counter: prometheus::IntCounter,
}

impl Default for DroppedLinesMetric {
    fn default() -> Self {
        Self {
            counter: prometheus::IntCounter::new(
                "sluice_log_lines_dropped_total",
                "Log lines dropped because stderr did not take them fast enough.",
            )
            .expect("valid metric definition"),
        }
    }
}

impl prometheus::core::Collector for DroppedLinesMetric {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let now = dropped_lines();
        let seen = self.counter.get();
        if now > seen {
            self.counter.inc_by(now - seen);
        }
        self.counter.collect()
    }
}

/// A client's address in a log line (`%Addr(addr)`), as `SocketAddr`'s `Display` writes
/// it but an IPv4 address digit by digit: the formatter's machinery for each of its
/// five numbers costs a few thousand instructions, twice a session.
#[derive(Debug, Clone, Copy)]
pub struct Addr(pub std::net::SocketAddr);

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            std::net::SocketAddr::V4(v4) => {
                let (ip, len) = ipv4_text(*v4.ip());
                // Digits and dots only.
                f.write_str(std::str::from_utf8(&ip[..len]).unwrap_or_default())?;
                f.write_str(":")?;
                let mut port = [0u8; 5];
                let mut at = port.len();
                let mut n = v4.port();
                loop {
                    at -= 1;
                    port[at] = b'0' + (n % 10) as u8;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                f.write_str(std::str::from_utf8(&port[at..]).unwrap_or_default())
            }
            v6 => std::fmt::Display::fmt(&v6, f),
        }
    }
}

/// An IPv4 address as `Ipv4Addr`'s `Display` writes it, in a buffer and its length.
pub fn ipv4_text(ip: std::net::Ipv4Addr) -> ([u8; 15], usize) {
    let mut out = [0u8; 15];
    let mut len = 0;
    for (i, n) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out[len] = b'.';
            len += 1;
        }
        if n >= 100 {
            out[len] = b'0' + n / 100;
            len += 1;
        }
        if n >= 10 {
            out[len] = b'0' + n / 10 % 10;
            len += 1;
        }
        out[len] = b'0' + n % 10;
        len += 1;
    }
    (out, len)
}

/// Whether text lines get ANSI colour: only on a terminal, and not when `NO_COLOR` is
/// set to a non-empty value (the convention of <https://no-color.org>).
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// A budget for lines that a storm could repeat thousands of times a second (refusals,
/// upstream failures): up to `burst` at once and `per_second` after that; lines over
/// budget are counted, and the next line that may be written carries that count
/// (`suppressed`), so nothing is lost from the totals and the log stays readable.
#[derive(Debug)]
pub struct LogBudget {
    limiter: governor::DefaultDirectRateLimiter,
    suppressed: std::sync::atomic::AtomicU64,
}

impl LogBudget {
    /// A budget of `per_second` lines, bursts of `burst`.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let per_second = std::num::NonZeroU32::new(per_second.max(1)).expect("at least 1");
        let burst = std::num::NonZeroU32::new(burst.max(1)).expect("at least 1");
        Self {
            limiter: governor::RateLimiter::direct(
                governor::Quota::per_second(per_second).allow_burst(burst),
            ),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed since the last one written)` when a line may be written
    /// now; `None` (and the line is counted) when over budget.
    pub fn spend(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        if self.limiter.check().is_ok() {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{colour, LogBudget};

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for addr in [
            "0.0.0.0:0",
            "1.2.3.4:80",
            "10.0.99.100:65535",
            "255.255.255.255:1",
            "[::1]:443",
            "[2001:db8::7]:9",
        ] {
            let addr: std::net::SocketAddr = addr.parse().unwrap();
            assert_eq!(super::Addr(addr).to_string(), addr.to_string());
        }
        for n in 0..=255u8 {
            let addr = std::net::SocketAddr::from(([n, 9, n, 100], u16::from(n) * 257));
            assert_eq!(super::Addr(addr).to_string(), addr.to_string());
        }
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None), "a file or a pipe gets plain text");
        assert!(!colour(true, Some("1".into())), "NO_COLOR turns colour off");
        assert!(colour(true, Some("".into())), "an empty NO_COLOR is unset");
        assert!(!colour(false, Some("1".into())));
    }

    #[test]
    fn a_storm_is_cut_to_the_burst_and_counted() {
        let budget = LogBudget::new(1, 3);
        let written: Vec<Option<u64>> = (0..10).map(|_| budget.spend()).collect();
        assert_eq!(&written[..3], &[Some(0), Some(0), Some(0)]);
        assert!(written[3..].iter().all(Option::is_none));
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(
            budget.spend(),
            Some(7),
            "the next line says how many were left out"
        );
    }
}
