//! The admin listener from a test's side: requests, and `/metrics` read by series.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// `GET path` on the admin listener: (status, body).
pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    admin_request(admin, "GET", path).await
}

/// A request without body on the admin listener: (status, body).
pub async fn admin_request(admin: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(admin).await.unwrap();
    tcp.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw))
        .await
        .expect("admin answered in time")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// A Prometheus text scrape, by series (`name{label="v",…}` as exposed, labels sorted
/// by name).
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The exposition text.
    pub text: String,
    series: HashMap<String, f64>,
}

impl Scrape {
    /// Parses an exposition.
    pub fn parse(text: &str) -> Self {
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                (series.to_owned(), value.parse().unwrap())
            })
            .collect();
        Self {
            text: text.to_owned(),
            series,
        }
    }
    /// `sluice_connects_total{tenant, outcome}`.
    pub fn connects(&self, tenant: &str, outcome: &str) -> f64 {
        self.get(
            "sluice_connects_total",
            &[("tenant", tenant), ("outcome", outcome)],
        )
    }

    /// The value of `name` with exactly these labels (any order).
    ///
    /// # Panics
    /// When the scrape has no such series: sluice creates every series a test reads when
    /// it starts, so a missing one is a bug, not a zero.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut labels = labels.to_vec();
        labels.sort();
        let key = if labels.is_empty() {
            name.to_owned()
        } else {
            let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            format!("{name}{{{}}}", inner.join(","))
        };
        self.series
            .get(&key)
            .copied()
            .unwrap_or_else(|| panic!("no series {key} in the scrape"))
    }

    /// Every series of metric `name` (`name{…}` as exposed) and its value, sorted.
    pub fn family(&self, name: &str) -> Vec<(String, f64)> {
        let mut series: Vec<(String, f64)> = self
            .series
            .iter()
            .filter(|(s, _)| s.as_str() == name || s.starts_with(&format!("{name}{{")))
            .map(|(s, v)| (s.clone(), *v))
            .collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        series
    }

    /// Every metric family name exposed (with `_bucket`/`_sum`/`_count` series).
    pub fn names(&self) -> std::collections::BTreeSet<String> {
        self.series
            .keys()
            .map(|s| s.split('{').next().unwrap().to_owned())
            .collect()
    }
}

/// Scrapes `/metrics`.
pub async fn scrape(admin: SocketAddr) -> Scrape {
    let (status, body) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    Scrape::parse(&body)
}

/// `promtool check metrics` on a scrape, when promtool is installed (`.ci/run` installs
/// it); says loudly when it is not, and fails when it is not under CI. `name` names the
/// file the scrape is kept in (under the target's test directory).
pub fn check_with_promtool(scrape: &str, name: &str) {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.prom"));
    std::fs::write(&path, scrape).unwrap();
    let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
    else {
        super::tool_missing(
            "promtool (apt-get install prometheus)",
            &format!(
                "`promtool check metrics` did not run (the scrape is at {})",
                path.display()
            ),
        );
        return;
    };
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sluice_shadow_decisions_total{tenant=t, would}` of a scrape.
pub fn would(s: &Scrape, t: &str, would: &str) -> f64 {
    s.get(
        "sluice_shadow_decisions_total",
        &[("tenant", t), ("would", would)],
    )
}

/// The would-be decisions of a shadow tenant, as (admit, queued, queue-full,
/// queue-timeout, edge-capacity, waits observed): comparable with [`enforced_counts`].
pub fn shadow_counts(s: &Scrape, t: &str) -> [f64; 6] {
    [
        would(s, t, "admit"),
        would(s, t, "queue"),
        would(s, t, "queue-full"),
        would(s, t, "queue-timeout"),
        would(s, t, "edge-capacity"),
        s.get("sluice_shadow_wait_seconds_count", &[("tenant", t)]),
    ]
}

/// The same for an enforced tenant: admitted at once; queued (admitted after waiting,
/// or refused after waiting); refusals; waits observed.
pub fn enforced_counts(s: &Scrape, t: &str) -> [f64; 6] {
    let queued = s.connects(t, "queued_admitted")
        + s.connects(t, "queue-timeout")
        + s.connects(t, "client-gone");
    [
        s.connects(t, "admitted"),
        queued,
        s.connects(t, "queue-full"),
        s.connects(t, "queue-timeout"),
        s.connects(t, "edge-capacity"),
        s.get("sluice_queue_wait_seconds_count", &[("tenant", t)]),
    ]
}
