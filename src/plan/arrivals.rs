//! Entry, `sluice plan`: the arrivals CSV (DESIGN.md: `tenant,at,hold`), read and written.
//!
//! One connect a row, after a header naming the three columns (in any order): `tenant`,
//! `at` (seconds from the start of the profile, a decimal number ≥ 0) and `hold` (the
//! session's length in seconds; empty: the profile's default). A bad row is an error
//! naming its line and what is wrong with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::PlanError;

/// One row of an arrivals CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Its line in the file (1 is the header).
    pub line: u64,
    /// The tenant that connects.
    pub tenant: Arc<str>,
    /// When, from the start of the profile.
    pub at: Duration,
    /// How long its session lasts; `None`: the profile's default.
    pub hold: Option<Duration>,
}

/// Reads the arrivals CSV at `path`.
///
/// # Errors
/// The file cannot be read; the header lacks a column; a row is malformed (its line).
pub fn load(path: &Path) -> Result<Vec<Row>, PlanError> {
    let text = std::fs::read_to_string(path).map_err(|e| PlanError::io(path, e))?;
    parse(&text, path)
}

/// Reads an arrivals CSV from `text`; `name` is the file named in errors.
///
/// # Errors
/// As [`load`].
pub fn parse(text: &str, name: &Path) -> Result<Vec<Row>, PlanError> {
    let err = |line: u64, reason: String| PlanError::Csv {
        file: PathBuf::from(name),
        line,
        reason,
    };
    let mut csv = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(text.as_bytes());
    // The line of a record starting at a byte offset, counted here: the csv crate's own
    // count (and offset) leaves out the blank lines before a record.
    let (mut counted_to, mut lines) = (0usize, 1u64);
    let mut line_of = |byte: u64| {
        let mut byte = (byte as usize).min(text.len());
        while matches!(text.as_bytes().get(byte), Some(b'\n' | b'\r')) {
            byte += 1;
        }
        if byte >= counted_to {
            lines += text.as_bytes()[counted_to..byte]
                .iter()
                .filter(|b| **b == b'\n')
                .count() as u64;
            counted_to = byte;
        }
        lines
    };
    let header = csv.headers().map_err(|e| err(1, e.to_string()))?.clone();
    let column = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            err(
                1,
                format!("the header has no {name:?} column (it must name tenant,at,hold)"),
            )
        })
    };
    let (tenant_col, at_col, hold_col) = (column("tenant")?, column("at")?, column("hold")?);
    let mut rows = Vec::new();
    let mut tenants: std::collections::HashMap<String, Arc<str>> = Default::default();
    let mut record = csv::StringRecord::new();
    loop {
        let line = line_of(csv.position().byte());
        match csv.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(err(line, e.to_string())),
        }
        let line = record.position().map_or(line, |p| line_of(p.byte()));
        if record.iter().all(str::is_empty) {
            continue;
        }
        if record.len() != header.len() {
            return Err(err(
                line,
                format!("{} fields, the header has {}", record.len(), header.len()),
            ));
        }
        let tenant = &record[tenant_col];
        if tenant.is_empty() {
            return Err(err(line, "tenant is empty".into()));
        }
        let at = seconds(&record[at_col]).map_err(|why| err(line, format!("at: {why}")))?;
        let hold = match &record[hold_col] {
            "" => None,
            text => Some(seconds(text).map_err(|why| err(line, format!("hold: {why}")))?),
        };
        let tenant = tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| tenant.into())
            .clone();
        rows.push(Row {
            line,
            tenant,
            at,
            hold,
        });
    }
    Ok(rows)
}

/// A number of seconds ≥ 0.
fn seconds(text: &str) -> Result<Duration, String> {
    let n: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("{text:?} is not a number of seconds ≥ 0"));
    }
    Duration::try_from_secs_f64(n).map_err(|_| format!("{text:?} is too large"))
}

/// Writes `rows` as an arrivals CSV (header first; seconds with millisecond precision).
///
/// # Errors
/// Writing fails.
pub fn write(rows: &[Row], out: impl std::io::Write) -> std::io::Result<()> {
    let mut csv = csv::Writer::from_writer(out);
    csv.write_record(["tenant", "at", "hold"])?;
    for r in rows {
        let hold = r.hold.map(|h| format!("{:.3}", h.as_secs_f64()));
        csv.write_record([
            &*r.tenant,
            &format!("{:.3}", r.at.as_secs_f64()),
            hold.as_deref().unwrap_or(""),
        ])?;
    }
    csv.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str) -> Result<Vec<Row>, PlanError> {
        parse(text, Path::new("day.csv"))
    }

    #[test]
    fn rows_are_read_in_any_column_order_with_empty_holds() {
        let r = rows("at,tenant,hold\n0,acme,60\n1.5, globex ,\n\n2,acme,0.25\n").unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(&*r[1].tenant, "globex");
        assert_eq!(r[1].at, Duration::from_millis(1500));
        assert_eq!(r[1].hold, None);
        assert_eq!(r[2].hold, Some(Duration::from_millis(250)));
        assert_eq!(r[2].line, 5);
        let mut out = Vec::new();
        write(&r, &mut out).unwrap();
        let back = rows(std::str::from_utf8(&out).unwrap()).unwrap();
        assert_eq!(
            back.iter()
                .map(|r| (&r.tenant, r.at, r.hold))
                .collect::<Vec<_>>(),
            r.iter()
                .map(|r| (&r.tenant, r.at, r.hold))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_bad_row_names_its_line_and_what_is_wrong() {
        let e = rows("tenant,at,hold\nacme,0,1\nacme,soon,1\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "day.csv line 3: at: \"soon\" is not a number of seconds"
        );
        let e = rows("tenant,at,hold\nacme,0,-1\n").unwrap_err();
        assert!(e.to_string().starts_with("day.csv line 2: hold:"), "{e}");
        let e = rows("tenant,at,hold\nacme,0\n").unwrap_err();
        assert_eq!(e.to_string(), "day.csv line 2: 2 fields, the header has 3");
        let e = rows("tenant,when,hold\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("line 1: the header has no \"at\" column"),
            "{e}"
        );
        let e = rows("tenant,at,hold\n,3,\n").unwrap_err();
        assert_eq!(e.to_string(), "day.csv line 2: tenant is empty");
    }
}
