//! The status page in a real browser: headless Chromium loads it from sluice's admin
//! listener with every other host unresolvable, runs its script, and shows both tenants
//! and their live sessions; the numbers follow as sessions open. A screenshot is saved
//! under the test's output directory (`target/tmp/status-page.png`).
//!
//! Runs when Chromium is installed (`.ci/run` installs Debian's `chromium`); says
//! loudly that it was skipped otherwise.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{chromium, connect_ok, edge, proxy, tool_missing, Proxy};

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
