//! Programs some tests need (Chromium, promtool): found, or skipped locally and failed
//! under CI.

/// Whether the tests run under CI: `CI` is set to something other than "", "0" or
/// "false" (GitHub Actions, GitLab and most others set `CI=true`).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// A tool a test needs (Chromium, promtool) is missing. Locally the test is skipped
/// loudly (the caller returns after this); under CI, where `.ci/run` installs every
/// such tool, a missing one fails the test instead of letting it pass unchecked.
///
/// # Panics
/// Under CI (see [`under_ci`]).
pub fn tool_missing(tool: &str, untested: &str) {
    assert!(
        !under_ci(),
        "{tool} is not installed, and CI is set: {untested} (install it; `.ci/run` does)"
    );
    eprintln!("SKIPPED: {tool} is not installed; {untested}");
}

/// The Chromium binary on `PATH`, if any (`.ci/run` installs Debian's `chromium`).
pub fn chromium() -> Option<std::path::PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        })
}

/// Flags for headless Chromium in tests: no sandbox or GPU, no background traffic, and
/// nothing but loopback resolves (a page must need nothing from elsewhere).
pub const CHROMIUM_FLAGS: [&str; 10] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
];
