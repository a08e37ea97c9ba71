//! Beside the flow (a leaf): the plain text line, written without `tracing-subscriber`'s generic formatting machinery.
//!
//! [`Plain`] writes the same line as `tracing-subscriber`'s default ("full") format
//! without colour, `2026-12-01T13:24:49.252595Z  INFO sluice::outcome: connect admitted
//! tenant="bench" …`, at a fraction of the cost: at thousands of connects a second the
//! line per connect was a quarter of sluice's instructions per handshake (mostly styling
//! that writes nothing without colour, and the timestamp's padded integers). Lines with
//! colour (a terminal) and lines bridged from the `log` crate go to the default format.

use std::cell::RefCell;
use std::fmt::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::time::SystemTime as DefaultTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The plain line; see the module header.
#[derive(Debug, Default)]
pub(super) struct Plain {
    fallback: Format<Full, DefaultTime>,
}

/// A thread's line under construction, and the text of the second it last stamped.
///
/// The line is built in this `String` (pushes the compiler can inline) and handed to the
/// subscriber's writer in one call, instead of a dozen calls through its `dyn Write` per
/// field; the date and time up to the second are formatted once a second, not per line.
#[derive(Default)]
struct Line {
    text: String,
    /// The second (since the epoch) `second` spells, `2026-12-01T13:24:49.`.
    stamped: Option<u64>,
    second: String,
}

thread_local! {
    static LINE: RefCell<Line> = RefCell::new(Line::default());
}

/// A line longer than this gives its buffer back after it is written.
const KEPT_LINE_CAPACITY: usize = 4096;

impl Line {
    /// `2026-12-01T13:24:49.252595Z `, as the default format's timer writes it.
    fn stamp(&mut self, now: SystemTime) {
        // A clock set before 1970 (which `humantime` refuses) stamps the epoch.
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        if self.stamped != Some(secs) {
            self.second.clear();
            let whole = humantime::format_rfc3339_micros(UNIX_EPOCH + since);
            let _ = write!(self.second, "{whole}");
            // Up to and with the dot before the microseconds.
            self.second.truncate(self.second.len() - "252595Z".len());
            self.stamped = Some(secs);
        }
        self.text.push_str(&self.second);
        let micros = since.subsec_micros();
        let mut digits = [b'0'; 6];
        let mut n = micros;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        // Six ASCII digits.
        self.text
            .push_str(std::str::from_utf8(&digits).unwrap_or("000000"));
        self.text.push_str("Z ");
    }
}

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        // Colour, spans (sluice opens none) and `log` records (their target and fields
        // are in the event's fields) are the default format's business.
        if writer.has_ansi_escapes() || meta.target() == "log" || ctx.lookup_current().is_some() {
            return self.fallback.format_event(ctx, writer, event);
        }
        LINE.with(|line| {
            // A value's `Display` that logs itself finds the line taken: it gets the
            // default format.
            let Ok(mut line) = line.try_borrow_mut() else {
                return self.fallback.format_event(ctx, writer, event);
            };
            let line = &mut *line;
            line.text.clear();
            line.stamp(SystemTime::now());
            let text = &mut line.text;
            text.push_str(match *meta.level() {
                Level::TRACE => "TRACE ",
                Level::DEBUG => "DEBUG ",
                Level::INFO => " INFO ",
                Level::WARN => " WARN ",
                Level::ERROR => "ERROR ",
            });
            text.push_str(meta.target());
            text.push_str(": ");
            let mut fields = Fields {
                text,
                first: true,
                result: Ok(()),
            };
            event.record(&mut fields);
            let result = fields.result;
            text.push('\n');
            let written = result.and_then(|()| writer.write_str(text));
            if text.capacity() > KEPT_LINE_CAPACITY {
                *text = String::new();
            }
            written
        })
    }
}

/// Writes an event's fields as the default format does: the message first as it is
/// (control characters that steer a terminal escaped), then `name=value` with the
/// value's `Debug` (strings quoted and escaped), separated by spaces.
struct Fields<'a> {
    text: &'a mut String,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_> {
    /// The separator and `name=`, or nothing for the message; `false` when the field is
    /// the message.
    fn name(&mut self, field: &Field) -> bool {
        if self.first {
            self.first = false;
        } else {
            self.text.push(' ');
        }
        let name = field.name();
        if name == "message" {
            return false;
        }
        self.text.push_str(name.strip_prefix("r#").unwrap_or(name));
        self.text.push('=');
        true
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        if !self.name(field) {
            self.result = Escaping(&mut *self.text).write_str(value);
        } else if value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            // What `Debug` writes for such a string, without going through it.
            self.text.push('"');
            self.text.push_str(value);
            self.text.push('"');
        } else {
            self.result = write!(self.text, "{value:?}");
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.result.is_ok() {
            self.name(field);
            self.text.push_str(itoa::Buffer::new().format(value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.result.is_ok() {
            self.name(field);
            self.text.push_str(itoa::Buffer::new().format(value));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.result.is_ok() {
            self.name(field);
            self.text.push_str(if value { "true" } else { "false" });
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_err() {
            return;
        }
        self.name(field);
        self.result = write!(Escaping(&mut *self.text), "{value}");
        if let (Ok(()), Some(source)) = (&self.result, value.source()) {
            // As the default format: ` name.sources=[source, its source, …]`.
            let name = field.name();
            let name = name.strip_prefix("r#").unwrap_or(name);
            let mut chain = Vec::new();
            let mut next = Some(source);
            while let Some(e) = next {
                chain.push(Escaped(e.to_string()));
                next = e.source();
            }
            self.result = write!(self.text, " {name}.sources={chain:?}");
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        if self.name(field) {
            self.result = write!(self.text, "{value:?}");
        } else {
            self.result = write!(Escaping(&mut *self.text), "{value:?}");
        }
    }
}

/// Writes through, escaping the control characters a terminal would act on (as the
/// default format does for messages and errors).
struct Escaping<'a, W: Write + ?Sized>(&'a mut W);

impl<W: Write + ?Sized> Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Every character `steers` matches has one of these bytes in its UTF-8 (the C1
        // controls start with 0xc2): most text has none and is written as it is.
        if !s
            .bytes()
            .any(|b| matches!(b, 0x1b | 0x07 | 0x08 | 0x0c | 0x7f | 0xc2))
        {
            return self.0.write_str(s);
        }
        let mut rest = s;
        while let Some((at, c)) = rest.char_indices().find(|&(_, c)| steers(c)) {
            self.0.write_str(&rest[..at])?;
            match c {
                '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' => {
                    write!(self.0, "\\x{:02x}", u32::from(c))?
                }
                c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

fn steers(c: char) -> bool {
    matches!(
        c,
        '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}'
    )
}

/// A source error's text in the `sources` list: `Debug` is its escaped `Display`.
struct Escaped(String);

impl fmt::Debug for Escaped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Escaping(f).write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// Every character escaped is escaped by way of the slow path: none is written as
    /// it is because the byte test of the fast path missed it.
    #[test]
    fn every_steering_character_is_escaped() {
        use std::fmt::Write as _;
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            let mut out = String::new();
            super::Escaping(&mut out)
                .write_str(&format!("a{c}b"))
                .unwrap();
            assert_eq!(
                out == format!("a{c}b"),
                !super::steers(c),
                "{:x} written as {out:?}",
                u32::from(c)
            );
        }
    }

    use super::Plain;

    #[derive(Debug, thiserror::Error)]
    #[error("outer \x1b[31m failed")]
    struct Outer(#[source] std::io::Error);

    /// The lines `emit` writes through a subscriber with `plain` or the default format.
    fn lines(plain: bool, emit: fn()) -> Vec<String> {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let make = move || Sink(sink.clone());
        let builder = tracing_subscriber::fmt().with_ansi(false).with_writer(make);
        if plain {
            tracing::subscriber::with_default(
                builder.event_format(Plain::default()).finish(),
                emit,
            );
        } else {
            tracing::subscriber::with_default(builder.finish(), emit);
        }
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn emit() {
        let addr: std::net::SocketAddr = "127.0.0.1:5555".parse().unwrap();
        tracing::info!(
            target: "sluice::outcome",
            tenant = "bench",
            outcome = "admitted",
            client = %addr,
            handshake_ms = 14u64,
            delta = -3i64,
            ok = true,
            ratio = 0.5f64,
            r#type = "x",
            quoted = "say \"hi\"\\ \u{e9} \x1b[2J",
            list = ?["a", "b"],
            "connect admitted"
        );
        tracing::warn!(target: "sluice::upstream", "a \x1b[31mred\u{85} message {}", 7);
        tracing::error!(
            error =
                &Outer(std::io::Error::other("inner \x07")) as &(dyn std::error::Error + 'static),
            "failed"
        );
        tracing::debug!("not shown at info");
        tracing::info!(empty = "", "");
    }

    #[test]
    fn the_stamp_is_humantimes_within_a_second_and_across_seconds() {
        let mut line = super::Line::default();
        let start = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_796_131_489_999_998);
        for step in [0u64, 1, 2, 3, 1_000_000, 86_400_000_000, 5] {
            let t = start + std::time::Duration::from_micros(step);
            line.text.clear();
            line.stamp(t);
            assert_eq!(
                line.text,
                format!("{} ", humantime::format_rfc3339_micros(t))
            );
        }
        let before = std::time::UNIX_EPOCH - std::time::Duration::from_secs(1);
        line.text.clear();
        line.stamp(before);
        assert_eq!(line.text, "1970-01-01T00:00:00.000000Z ");
    }

    #[test]
    fn the_plain_line_is_the_default_formats_line() {
        let plain = lines(true, emit);
        let default = lines(false, emit);
        assert_eq!(plain.len(), 4, "{plain:#?}");
        assert_eq!(plain.len(), default.len());
        for (p, d) in plain.iter().zip(&default) {
            // The same time to the microsecond's shape: 2026-12-01T13:24:49.252595Z.
            assert_eq!(p.as_bytes()[27], b' ', "{p}");
            assert_eq!(&p[..4], &d[..4]);
            assert_eq!(p.as_bytes()[26], b'Z', "{p}");
            assert_eq!(&p[27..], &d[27..]);
        }
        assert!(plain[0].ends_with(
            r#" INFO sluice::outcome: connect admitted tenant="bench" outcome="admitted" client=127.0.0.1:5555 handshake_ms=14 delta=-3 ok=true ratio=0.5 type="x" quoted="say \"hi\"\\ é \u{1b}[2J" list=["a", "b"]"#
        ), "{}", plain[0]);
        assert!(
            plain[1].contains(r"a \x1b[31mred\u{85} message 7"),
            "{}",
            plain[1]
        );
        assert!(
            plain[2].contains(r"error=outer \x1b[31m failed error.sources=[inner \x07]"),
            "{}",
            plain[2]
        );
    }
}
