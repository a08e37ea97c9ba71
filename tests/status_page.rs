//! The status page in a real browser: headless Chromium loads it from sluice's admin
//! listener with every other host unresolvable, runs its script, and shows both tenants
//! and their live sessions; the numbers follow as sessions open. A screenshot is saved
//! under the test's output directory (`target/tmp/status-page.png`).
//!
//! The page's charts: `/api/tenants` keeps each tenant's last five minutes second by
//! second (a burst of real clients shows in the seconds it happened, the queue depth is
//! sampled while nobody asks), and in Chromium at 1280 pixels the page draws a chart
//! per tenant from it, with many tenants and long names, without scrolling sideways
//! and without loading anything from elsewhere (`target/tmp/status-page-charts.png`).
//!
//! The browser tests run when Chromium is installed (`.ci/run` installs Debian's
//! `chromium`); they say loudly that they were skipped otherwise, and fail under CI.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::cdp::Page;
use support::{
    admin_get, chromium, close, config, connect, connect_ok, connect_refused, edge, proxy, reason,
    tenant, tool_missing, wait_until, Proxy,
};

/// Runs headless Chromium on the status page with `args`; its stdout.
async fn run_chromium(browser: &Path, proxy: &Proxy, args: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(browser);
    cmd.args(support::CHROMIUM_FLAGS)
        // Let the page's script fetch /api/tenants and render before the dump.
        .arg("--virtual-time-budget=5000")
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("http://{}/", proxy.admin));
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .expect("chromium finished in time")
    .unwrap()
    .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The live-session count shown in `tenant`'s row.
fn shown_sessions(dom: &str, tenant: &str) -> Option<u32> {
    let row = &dom[dom.find(&format!("data-tenant=\"{tenant}\""))?..];
    let marker = "<span class=\"sessions\">";
    let at = &row[row.find(marker)? + marker.len()..];
    at[..at.find('<')?].parse().ok()
}

#[tokio::test]
async fn the_status_page_shows_tenants_and_live_sessions_in_chromium() {
    let Some(browser) = chromium() else {
        tool_missing(
            "Chromium (apt-get install chromium)",
            "the status page was not tested in a browser",
        );
        return;
    };
    let edge = edge().await;
    let proxy = proxy(&format!(
        "[upstream.groups.primary]\nendpoints = [\"{}\"]\n\
         [tenants.alpha]\nauth = {{ kind = \"none\" }}\nmax_sessions = 5\n\
         [tenants.beta]\nauth = {{ kind = \"none\" }}\n\
         [tenants.gamma]\nauth = {{ kind = \"none\" }}\nqueue_mode = \"accept\"\n\
         subprotocols = [\"sip\"]\nmax_calls = 3\n",
        edge.url(false)
    ))
    .await;

    let dom = run_chromium(&browser, &proxy, &["--dump-dom".into()]).await;
    assert_eq!(
        shown_sessions(&dom, "alpha"),
        Some(0),
        "alpha's row:\n{dom}"
    );
    assert_eq!(shown_sessions(&dom, "beta"), Some(0));
    assert!(dom.contains("0</span> / 5"), "alpha's cap is shown");
    for tenant in ["alpha", "beta", "gamma", "_unknown"] {
        let chart = format!("<figure class=\"chart\" data-chart=\"{tenant}\"");
        let at = dom
            .find(&chart)
            .unwrap_or_else(|| panic!("{tenant}'s chart:\n{dom}"));
        assert!(dom[at..].contains("<svg"), "{tenant}'s chart is drawn");
    }
    assert!(
        dom.contains("calls <span class=\"calls-active\">0</span> / 3"),
        "gamma's calls against its cap are shown:\n{dom}"
    );

    let mut open = Vec::new();
    for tenant in ["alpha", "alpha", "beta"] {
        open.push(connect_ok(&proxy.url(&format!("/t/{tenant}/")), &[]).await);
    }
    let dom = run_chromium(&browser, &proxy, &["--dump-dom".into()]).await;
    assert_eq!(shown_sessions(&dom, "alpha"), Some(2));
    assert_eq!(shown_sessions(&dom, "beta"), Some(1));
    assert!(
        dom.contains("id=\"stale\" style=\"display: none;\"") && !dom.contains(">never<"),
        "the page reached its API"
    );

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &browser,
        &proxy,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,720".into(),
        ],
    )
    .await;
    let png = std::fs::read(&shot).expect("a screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    eprintln!("status page screenshot: {}", shot.display());
    drop(open);
}

/// Unix time now, seconds.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// `/api/tenants`, parsed.
async fn api_tenants(proxy: &Proxy) -> Value {
    let (status, body) = admin_get(proxy.admin, "/api/tenants").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// How far a connect's outcome may be counted outside the times the client saw around
/// it (the server counts it a moment before or after the client learns the answer).
const SLACK: f64 = 0.1;

/// A tenant's `history` from `/api/tenants`.
#[derive(Debug)]
struct Seconds {
    /// When `/api/tenants` was read (the client's clock).
    read_at: f64,
    start: f64,
    admitted: Vec<u64>,
    refused: Vec<u64>,
    depth: Vec<Option<u64>>,
}

impl Seconds {
    async fn read(proxy: &Proxy, tenant: &str) -> Seconds {
        let read_at = unix_now();
        let api = api_tenants(proxy).await;
        let t = api["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == tenant)
            .unwrap_or_else(|| panic!("{tenant} in /api/tenants"));
        let h = &t["history"];
        assert_eq!(h["step_s"], 1, "{h}");
        let list = |key: &str| -> Vec<Value> { h[key].as_array().unwrap().clone() };
        Seconds {
            read_at,
            start: h["start"].as_f64().unwrap(),
            admitted: list("admitted")
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect(),
            refused: list("refused")
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect(),
            depth: list("queue_depth").iter().map(Value::as_u64).collect(),
        }
    }

    /// The seconds that overlap `from..to` (widened by [`SLACK`]).
    fn overlapping(&self, from: f64, to: f64) -> Vec<usize> {
        (0..self.admitted.len())
            .filter(|&i| {
                let begin = self.start + i as f64;
                begin < to + SLACK && begin + 1.0 > from - SLACK
            })
            .collect()
    }

    /// The seconds wholly inside `from..to`.
    fn within(&self, from: f64, to: f64) -> Vec<usize> {
        (0..self.admitted.len())
            .filter(|&i| {
                let begin = self.start + i as f64;
                begin >= from && begin + 1.0 <= to
            })
            .collect()
    }

    fn sum(list: &[u64], seconds: &[usize]) -> u64 {
        seconds.iter().map(|&i| list[i]).sum()
    }
}

#[tokio::test]
async fn api_tenants_keeps_a_burst_second_by_second() {
    let edge = edge().await;
    let proxy = config()
        .upstream(&edge.url(false))
        .tenant(
            tenant("storm")
                .max_sessions(2)
                .queue_depth(2)
                .queue_timeout(Duration::from_secs(60))
                .unpaced(),
        )
        .tenant(tenant("calm"))
        .start()
        .await;
    let url = proxy.url("/t/storm/");

    // Two admitted at once, two queue behind them, two find the queue full.
    let t0 = unix_now();
    let held = vec![connect_ok(&url, &[]).await, connect_ok(&url, &[]).await];
    let t1 = unix_now();
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { connect_ok(&url, &[]).await })
        })
        .collect();
    let loads = proxy.admission.clone();
    wait_until("two clients queue", async || {
        loads.tenant_load("storm").unwrap().queued == 2
    })
    .await;
    let t2 = unix_now();
    for _ in 0..2 {
        assert_eq!(reason(&connect_refused(&url, &[]).await), "queue-full");
    }
    let t3 = unix_now();

    // No connect ends and nobody reads /api/tenants: only the admin listener's own
    // sampling can see the queue in these seconds.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let quiet_end = unix_now();
    let h = Seconds::read(&proxy, "storm").await;
    let quiet = h.within(t3 + SLACK, quiet_end);
    assert!(!quiet.is_empty(), "a whole second passed: {h:?}");
    for &i in &quiet {
        assert_eq!(h.depth[i], Some(2), "second {i} while two queued: {h:?}");
        assert_eq!((h.admitted[i], h.refused[i]), (0, 0), "second {i}: {h:?}");
    }
    let calm = Seconds::read(&proxy, "calm").await;
    for &i in &calm.within(t3 + SLACK, quiet_end) {
        assert_eq!(calm.depth[i], Some(0), "every tenant is sampled: {calm:?}");
    }

    // The two sessions end; the two queued are admitted.
    let t5 = unix_now();
    for ws in held {
        close(ws).await;
    }
    let mut admitted = Vec::new();
    for w in waiting {
        admitted.push(w.await.unwrap());
    }
    let t6 = unix_now();
    let h = Seconds::read(&proxy, "storm").await;

    assert_eq!(
        h.admitted.len(),
        301,
        "300 whole seconds and the current one"
    );
    assert_eq!((h.refused.len(), h.depth.len()), (301, 301));
    assert!(
        h.start + 300.0 <= h.read_at + SLACK && h.read_at < h.start + 301.0 + SLACK,
        "the last entry is the second of the read: start {} read {}",
        h.start,
        h.read_at
    );
    assert_eq!(h.admitted.iter().sum::<u64>(), 4, "{h:?}");
    assert_eq!(h.refused.iter().sum::<u64>(), 2, "{h:?}");
    // The two bursts are seconds apart: each one's admissions in its own seconds.
    let first = h.overlapping(t0, t1);
    let second = h.overlapping(t5, t6);
    assert!(first.iter().all(|i| !second.contains(i)));
    assert_eq!(Seconds::sum(&h.admitted, &first), 2, "{first:?} {h:?}");
    assert_eq!(Seconds::sum(&h.admitted, &second), 2, "{second:?} {h:?}");
    let full = h.overlapping(t2, t3);
    assert_eq!(Seconds::sum(&h.refused, &full), 2, "{full:?} {h:?}");
    assert!(
        full.iter().any(|&i| h.depth[i] == Some(2)),
        "the queue was full when they were refused: {h:?}"
    );
    // Whole seconds after the queue emptied sample it empty (in 2.2 s at least one
    // whole second begins and ends).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let h = Seconds::read(&proxy, "storm").await;
    let emptied = h.within(t6 + SLACK, h.read_at);
    assert!(!emptied.is_empty(), "a whole second passed: {h:?}");
    for &i in &emptied {
        assert_eq!(
            h.depth[i],
            Some(0),
            "second {i} after the queue emptied: {h:?}"
        );
    }
    // The per-minute figures (unchanged) agree with the seconds.
    let api = api_tenants(&proxy).await;
    let storm = api["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "storm")
        .unwrap();
    assert_eq!(storm["recent"]["admitted_per_min"], 2);
    assert_eq!(storm["recent"]["queued_per_min"], 2);
    assert_eq!(storm["recent"]["rejected_per_min"], 2);
    drop(admitted);
}

/// A tenant name of the longest kind (64 characters, no place to break).
fn long_name(n: usize) -> String {
    format!(
        "{n}-{}",
        "contact-center-emea-west-production-tenant-with-a-long-name"
    )
    .chars()
    .take(64)
    .collect()
}

/// What the status page shows, measured in the page after its script drew the charts
/// (it waits until `storm`'s chart has the burst).
const MEASURE: &str = include_str!("status_page/measure.js");

#[tokio::test]
async fn the_status_page_charts_every_tenant_within_1280_pixels_in_chromium() {
    let Some(browser) = chromium() else {
        tool_missing(
            "Chromium (apt-get install chromium)",
            "the status page's charts were not tested in a browser",
        );
        return;
    };
    let edge = edge().await;
    // Nothing listens there: the long endpoint shows in the edge errors.
    let dead = format!(
        "ws://127.0.0.1:{}/signaling/v2/contact-center/emea-west/production/agents/websocket-gateway",
        support::free_port()
    );
    let mut cfg = config()
        .upstream(&edge.url(false))
        .group("dead", &[&dead])
        .tenant(
            tenant("storm")
                .max_sessions(1)
                .queue_depth(2)
                .queue_timeout(Duration::from_secs(60))
                .unpaced(),
        )
        .tenant(tenant("lost").group("dead"))
        .tenant(
            tenant("sip")
                .accept_mode()
                .subprotocols(&["sip"])
                .key("max_calls", "3"),
        );
    let mut names: Vec<String> = ["storm", "lost", "sip"].map(str::to_owned).to_vec();
    for n in 0..9 {
        let name = if n % 3 == 0 {
            long_name(n)
        } else {
            format!("tenant-{n}")
        };
        cfg = cfg.tenant(tenant(&name));
        names.push(name);
    }
    let proxy = cfg.start().await;

    // storm: one admitted, two queue, two refused; lost: an edge error.
    let url = proxy.url("/t/storm/");
    let held = connect_ok(&url, &[]).await;
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { connect(&url, &[]).await.map(|(ws, _)| ws) })
        })
        .collect();
    let loads = proxy.admission.clone();
    wait_until("two clients queue", async || {
        loads.tenant_load("storm").unwrap().queued == 2
    })
    .await;
    for _ in 0..2 {
        assert_eq!(reason(&connect_refused(&url, &[]).await), "queue-full");
    }
    assert!(connect(&proxy.url("/t/lost/"), &[]).await.is_err());
    // The page draws whole seconds only: let the burst's second end.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let api = api_tenants(&proxy).await;
    let mut api_names: Vec<String> = api["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    for name in &names {
        assert!(api_names.contains(name), "{name} in {api_names:?}");
    }

    let mut page = Page::open(&browser, &format!("http://{}/", proxy.admin), 1280, 800).await;
    let seen = page.eval(MEASURE).await;
    let seen_text = serde_json::to_string_pretty(&seen).unwrap();

    assert_eq!(seen["innerWidth"], 1280, "{seen_text}");
    assert_eq!(
        seen["stale"], "none",
        "the page reached its API: {seen_text}"
    );
    assert!(
        seen["scrollWidth"].as_u64() <= seen["clientWidth"].as_u64(),
        "the page scrolls sideways at 1280 pixels: {seen_text}"
    );
    assert_eq!(
        seen["scrolling"],
        serde_json::json!([]),
        "a part of the page scrolls sideways: {seen_text}"
    );

    // A chart per tenant, in a grid: several side by side, none wider than the page.
    let charts = seen["charts"].as_array().unwrap();
    let mut chart_names: Vec<String> = charts
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    chart_names.sort();
    api_names.sort();
    assert_eq!(chart_names, api_names, "{seen_text}");
    for c in charts {
        let w = c["width"].as_f64().unwrap();
        assert!(w > 200.0 && w < 640.0, "a chart's width: {c}");
        assert!(c["svgWidth"].as_f64().unwrap() > 180.0, "{c}");
        assert_eq!(c["title"], c["name"], "the whole name in the tooltip");
    }
    let chart = |name: &str| charts.iter().find(|c| c["name"] == name).unwrap();
    let storm = chart("storm");
    assert_eq!(
        (&storm["admitted"], &storm["refused"], &storm["peakDepth"]),
        (
            &serde_json::json!(1),
            &serde_json::json!(2),
            &serde_json::json!(2)
        ),
        "storm's chart shows the burst: {storm}"
    );
    for class in ["admitted", "refused", "depth"] {
        let d = storm["paths"][class].as_str().unwrap();
        assert!(
            d.starts_with('M') && d.ends_with('Z'),
            "storm's {class} area: {d}"
        );
        // Drawn from the data: some step above the panel's baseline.
        let base = if class == "depth" { "99" } else { "58" };
        assert!(
            d.split('V')
                .skip(1)
                .any(|v| v.trim_end_matches('Z').split('H').next() != Some(base)),
            "storm's {class} rises: {d}"
        );
    }
    let hover = seen["hover"].as_str().unwrap();
    assert!(
        hover.contains(" admitted, ") && hover.ends_with(" refused, queue 2"),
        "the last whole second under the pointer (two queued in it): {hover}"
    );
    let calm = chart("tenant-1");
    assert_eq!(calm["admitted"], 0);
    assert_eq!(
        calm["paths"]["admitted"], "",
        "nothing admitted, nothing drawn"
    );
    assert!(
        seen["callsLine"].as_bool().unwrap(),
        "the SIP calls line stays"
    );

    // Long names end in an ellipsis, in the table and on the charts.
    let long = long_name(0);
    assert!(
        chart(&long)["nameClipped"].as_bool().unwrap(),
        "{seen_text}"
    );
    assert_eq!(seen["rowNameClipped"][&long], true, "{seen_text}");
    assert_eq!(seen["rowNameClipped"]["storm"], false, "{seen_text}");
    assert!(
        seen["endpointClipped"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == true),
        "the long endpoint of an edge error is cut: {seen_text}"
    );

    // Nothing from elsewhere: every resource the page loaded came from the admin
    // listener, and every link in it is relative.
    let origin = format!("http://{}/", proxy.admin);
    let resources = seen["resources"].as_array().unwrap();
    assert!(!resources.is_empty(), "the page fetched /api/tenants");
    for r in resources {
        assert!(
            r.as_str().unwrap().starts_with(&origin),
            "loaded from elsewhere: {r}"
        );
    }
    for l in seen["links"].as_array().unwrap() {
        let l = l.as_str().unwrap();
        assert!(
            l.starts_with('/') && !l.starts_with("//"),
            "a link that is not relative: {l}"
        );
    }
    let (_, html) = admin_get(proxy.admin, "/").await;
    for attr in ["src=", "href="] {
        for (at, _) in html.match_indices(attr) {
            let value = html[at + attr.len()..].trim_start_matches(['"', '\'']);
            assert!(
                value.starts_with('/') && !value.starts_with("//"),
                "{attr} that is not relative in the page: {}",
                &html[at..(at + 80).min(html.len())]
            );
        }
    }
    for external in ["<link", "@import", "url(", "<script src", "@font-face"] {
        assert!(!html.contains(external), "the page holds {external}");
    }
    drop(page);

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page-charts.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &browser,
        &proxy,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,1500".into(),
        ],
    )
    .await;
    assert!(std::fs::read(&shot)
        .expect("a screenshot")
        .starts_with(b"\x89PNG"));
    eprintln!("status page charts screenshot: {}", shot.display());
    drop((held, waiting));
}
