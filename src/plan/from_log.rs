//! Entry, `sluice plan --from-log`: sluice's own JSON log (`--log-format json`) turned into an arrivals CSV.
//!
//! What a log line carries, and what is made of it:
//!
//! * `connect admitted` (target `sluice::outcome`): the tenant, `request_id`, the time
//!   it was written (after the upstream handshake), `queue_wait_ms` and `handshake_ms`.
//!   The connect arrived at `timestamp − queue_wait_ms − handshake_ms`.
//! * `session ended` (target `sluice::session`): the same `request_id` and
//!   `duration_ms`, the session's hold.
//! * `connect refused` and `client left before its connect was answered`: the tenant,
//!   the time, `queue_wait_ms` when it was queued; arrived at `timestamp −
//!   queue_wait_ms`. Their hold is not known (empty: the profile's default).
//!
//! What the log cannot tell: which refused connects were retries of one client (each
//! attempt is a row; replay such a CSV with `retry = "none"`), and the refusals a storm
//! kept out of the log by the tenant's log budget — a line's `suppressed` count says how
//! many; they are added at that line's time, since their own times are lost. Sessions
//! still up when the log ends have no `session ended` line: their hold is left empty.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::arrivals::{self, Row};
use super::PlanError;

/// The fields of a log line that matter here.
#[derive(Debug, Deserialize)]
struct Line {
    timestamp: Option<String>,
    message: Option<String>,
    tenant: Option<String>,
    request_id: Option<String>,
    queue_wait_ms: Option<u64>,
    handshake_ms: Option<u64>,
    duration_ms: Option<u64>,
    suppressed: Option<u64>,
}

/// What [`rows`] made of a log.
#[derive(Debug, Default)]
pub struct Converted {
    /// The connects, sorted by `at`.
    pub rows: Vec<Row>,
    /// Rows added for lines the log budget suppressed.
    pub suppressed: u64,
    /// Lines that are not JSON (skipped).
    pub skipped: u64,
}

/// Reads `log` and writes its arrivals CSV to `out` (stdout when `None`); says on
/// stderr what it made of it.
///
/// # Errors
/// The log cannot be read, or the CSV written.
pub fn convert(log: &Path, out: Option<&Path>) -> Result<(), PlanError> {
    let file = std::fs::File::open(log).map_err(|e| PlanError::io(log, e))?;
    let converted = rows(std::io::BufReader::new(file)).map_err(|e| PlanError::io(log, e))?;
    match out {
        Some(path) => {
            let file = std::fs::File::create(path).map_err(|e| PlanError::io(path, e))?;
            arrivals::write(&converted.rows, std::io::BufWriter::new(file))
                .map_err(|e| PlanError::io(path, e))?;
        }
        None => arrivals::write(&converted.rows, std::io::stdout().lock())
            .map_err(|e| PlanError::io(Path::new("stdout"), e))?,
    }
    eprintln!(
        "{}: {} connects{}{}",
        log.display(),
        converted.rows.len(),
        if converted.suppressed > 0 {
            format!(
                " ({} of them refusals the log budget suppressed, placed at the next line's time)",
                converted.suppressed
            )
        } else {
            String::new()
        },
        if converted.skipped > 0 {
            format!("; {} lines not JSON, skipped", converted.skipped)
        } else {
            String::new()
        }
    );
    Ok(())
}

/// The connects of a JSON log.
///
/// # Errors
/// Reading fails.
pub fn rows(log: impl BufRead) -> std::io::Result<Converted> {
    let mut converted = Converted::default();
    // (tenant, arrival, request_id) before the holds are known.
    let mut found: Vec<(Arc<str>, SystemTime, Option<String>)> = Vec::new();
    let mut holds: HashMap<String, Duration> = HashMap::new();
    let mut tenants: HashMap<String, Arc<str>> = HashMap::new();
    for line in log.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let Ok(l) = serde_json::from_str::<Line>(&line) else {
            converted.skipped += 1;
            continue;
        };
        let (Some(message), Some(tenant), Some(at)) = (
            l.message.as_deref(),
            l.tenant.as_deref(),
            l.timestamp
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok()),
        ) else {
            continue;
        };
        let ms = |v: Option<u64>| Duration::from_millis(v.unwrap_or(0));
        let arrived = match message {
            "session ended" => {
                if let (Some(id), Some(d)) = (l.request_id, l.duration_ms) {
                    holds.insert(id, Duration::from_millis(d));
                }
                continue;
            }
            "connect admitted" => at - ms(l.queue_wait_ms) - ms(l.handshake_ms),
            "connect refused" | "client left before its connect was answered" => {
                at - ms(l.queue_wait_ms)
            }
            _ => continue,
        };
        let tenant = tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| tenant.into())
            .clone();
        let suppressed = l.suppressed.unwrap_or(0);
        converted.suppressed += suppressed;
        for _ in 0..suppressed {
            found.push((tenant.clone(), at, None));
        }
        let admitted = message == "connect admitted";
        found.push((tenant, arrived, admitted.then_some(l.request_id).flatten()));
    }
    let Some(start) = found.iter().map(|f| f.1).min() else {
        return Ok(converted);
    };
    converted.rows = found
        .into_iter()
        .map(|(tenant, at, id)| Row {
            line: 0,
            tenant,
            at: at.duration_since(start).unwrap_or_default(),
            hold: id.and_then(|id| holds.get(&id).copied()),
        })
        .collect();
    converted.rows.sort_by_key(|r| r.at);
    Ok(converted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admitted_refused_and_ended_lines_become_rows() {
        let log = r#"{"timestamp":"2026-12-01T08:00:00.500000Z","level":"INFO","message":"listening","target":"sluice"}
not json at all
{"timestamp":"2026-12-01T08:00:01.250000Z","level":"INFO","message":"connect admitted","tenant":"acme","outcome":"queued-admitted","request_id":"r1","queue_wait_ms":1000,"handshake_ms":250,"target":"sluice::outcome"}
{"timestamp":"2026-12-01T08:00:02.000000Z","level":"INFO","message":"connect refused","tenant":"globex","outcome":"queue-full","request_id":"r2","suppressed":2,"target":"sluice::outcome"}
{"timestamp":"2026-12-01T08:01:00.000000Z","level":"INFO","message":"session ended","tenant":"acme","request_id":"r1","duration_ms":58000,"target":"sluice::session"}
"#;
        let c = rows(log.as_bytes()).unwrap();
        assert_eq!(c.skipped, 1);
        assert_eq!(c.suppressed, 2);
        let got: Vec<(&str, f64, Option<f64>)> = c
            .rows
            .iter()
            .map(|r| {
                (
                    &*r.tenant,
                    r.at.as_secs_f64(),
                    r.hold.map(|h| h.as_secs_f64()),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("acme", 0.0, Some(58.0)),
                ("globex", 2.0, None),
                ("globex", 2.0, None),
                ("globex", 2.0, None)
            ]
        );
    }
}
