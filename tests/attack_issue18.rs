//! Issue 18's adversarial round: shadow mode (`enforce = false`) and the status page's
//! history, attacked through a real sluice and a real WebSocket edge on loopback
//! (docs/security.md, "Issue 18").
//!
//! Times are real: assertions are counts and generous orderings, never wall-clock speed.

mod support;

use std::time::Duration;

use support::{
    close, config, connect, edge, enforced_counts, reason, scrape, shadow_counts, tenant,
    wait_until, would, Proxy, Scrape, TenantSpec,
};

/// `n` clients of `lab` connect at once; each that gets through keeps its session for
/// `hold`, then closes. The counts once every (would-be) decision is in.
async fn short_sessions(spec: TenantSpec, enforce: bool, n: usize, hold: Duration) -> [f64; 6] {
    let spec = spec.key("enforce", if enforce { "true" } else { "false" });
    let edge = edge().await;
    let proxy: Proxy = config()
        .upstream(&edge.url(false))
        .tenant(spec)
        .start()
        .await;
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let url = proxy.url(&format!("/t/lab/?i={i}"));
            tokio::spawn(async move {
                match connect(&url, &[]).await {
                    Ok((ws, _)) => {
                        tokio::time::sleep(hold).await;
                        close(ws).await;
                        Ok(())
                    }
                    Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                        Err(reason(&resp).to_owned())
                    }
                    Err(e) => Err(format!("no HTTP answer: {e}")),
                }
            })
        })
        .collect();
    let mut refused = Vec::new();
    for c in clients {
        if let Err(why) = c.await.unwrap() {
            refused.push(why);
        }
    }
    if !enforce {
        assert!(
            refused.is_empty(),
            "a shadow tenant was refused: {refused:?}"
        );
    }
    let counts = |s: &Scrape| {
        if enforce {
            enforced_counts(s, "lab")
        } else {
            shadow_counts(s, "lab")
        }
    };
    // Every connect decided, every queued one admitted or refused (its wait observed).
    wait_until("every decision in", async || {
        let c = counts(&scrape(proxy.admin).await);
        c[0] + c[1] + c[2] == n as f64 && c[5] == c[1]
    })
    .await;
    counts(&scrape(proxy.admin).await)
}

#[tokio::test]
async fn short_sessions_count_the_queue_timeouts_enforcing_has() {
    // 12 at once, 2 slots, each session 1.5 s: enforced, 2 go on, 10 queue; 2 more are
    // let in at about 1.5 s and 2 at about 3 s; the other 6 time out at 3.75 s. A shadow
    // tenant's real sessions all end at 1.5 s; its would-be queue must not empty then
    // (those clients would still be waiting, and their sessions still to come).
    let spec = || {
        tenant("lab")
            .max_sessions(2)
            .queue_depth(10)
            .queue_timeout(Duration::from_millis(3750))
            .unpaced()
    };
    let hold = Duration::from_millis(1500);
    let shadow = short_sessions(spec(), false, 12, hold).await;
    let enforced = short_sessions(spec(), true, 12, hold).await;
    assert_eq!(enforced, [2.0, 10.0, 0.0, 6.0, 0.0, 10.0]);
    assert_eq!(
        shadow, enforced,
        "shadow {shadow:?} vs enforced {enforced:?}"
    );
}

/// The status page's layout, measured in the page once it shows `shadow`'s row marked:
/// whether the page or a part of it scrolls sideways.
const LAYOUT: &str = r#"(async () => {
  const deadline = Date.now() + 20000;
  const marked = () => [...document.querySelectorAll('#tenants tr[data-tenant="shadow"] td.name *')]
    .some((e) => /would/.test(e.textContent));
  while (!marked() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  await new Promise((r) => requestAnimationFrame(() => r()));
  const doc = document.documentElement;
  return {
    marked: marked(),
    shadowRow: document.querySelector('#tenants tr[data-tenant="shadow"] td.name').innerText,
    shadowChart: document.querySelector('figure.chart[data-chart="shadow"] figcaption').innerText,
    innerWidth: window.innerWidth,
    clientWidth: doc.clientWidth,
    scrollWidth: doc.scrollWidth,
    scrolling: [...document.querySelectorAll("*")]
      .filter((e) => ["auto", "scroll"].includes(getComputedStyle(e).overflowX) && e.scrollWidth > e.clientWidth)
      .map((e) => e.tagName + " " + e.className + " " + e.scrollWidth + ">" + e.clientWidth),
  };
})()"#;

#[tokio::test]
async fn a_shadow_tenants_mark_fits_the_status_page_at_1280_pixels() {
    let Some(browser) = support::chromium() else {
        support::tool_missing(
            "Chromium (apt-get install chromium)",
            "the shadow mark on the status page was not measured in a browser",
        );
        return;
    };
    let edge = edge().await;
    let mut cfg = config()
        .upstream(&edge.url(false))
        .tenant(
            tenant("shadow")
                .key("enforce", "false")
                .max_sessions(1)
                .queue_depth(2)
                .queue_timeout(Duration::from_secs(60))
                .unpaced(),
        )
        .tenant(
            tenant("sip")
                .accept_mode()
                .subprotocols(&["sip"])
                .key("max_calls", "3"),
        );
    for n in 0..6 {
        cfg = cfg.tenant(tenant(&format!("tenant-{n}")));
    }
    let proxy = cfg.start().await;
    // A storm over its limits: every connect goes on, most would have been refused.
    let mut held = Vec::new();
    for i in 0..40 {
        held.push(support::connect_ok(&proxy.url(&format!("/t/shadow/?i={i}")), &[]).await);
    }
    let mut page =
        support::cdp::Page::open(&browser, &format!("http://{}/", proxy.admin), 1280, 800).await;
    let seen = page.eval(LAYOUT).await;
    let text = serde_json::to_string_pretty(&seen).unwrap();
    assert_eq!(seen["marked"], true, "the shadow tenant is marked: {text}");
    // 1 slot, 2 queue places, the other 37 refused (queue-full), 2 waiting still.
    let row = seen["shadowRow"].as_str().unwrap();
    assert!(
        row.contains("would admit 1, queue 2, refuse 37; 2 would wait now"),
        "{text}"
    );
    // Its chart (all admitted, nothing queued: the real traffic) says it is shadow.
    let chart = seen["shadowChart"].as_str().unwrap();
    assert!(chart.contains("shadow · 2 would wait"), "{text}");
    assert_eq!(seen["innerWidth"], 1280, "{text}");
    assert!(
        seen["scrollWidth"].as_u64() <= seen["clientWidth"].as_u64(),
        "the page scrolls sideways at 1280 pixels: {text}"
    );
    assert_eq!(
        seen["scrolling"],
        serde_json::json!([]),
        "a part of the page scrolls sideways: {text}"
    );
    for ws in held {
        close(ws).await;
    }
}

/// The config file: the edge's group, port 0 listeners, tenant `other`, then `tenants`.
fn write_config(path: &std::path::Path, edge: &support::Edge, tenants: &str) {
    support::write_config_file(
        path,
        edge,
        &format!("[tenants.other]\nauth = {{ kind = \"none\" }}\n{tenants}"),
    );
}

/// `lab`, shadow or enforced: one slot, four queue places, two minutes of patience.
fn lab(enforce: bool) -> String {
    format!(
        "[tenants.lab]\nauth = {{ kind = \"none\" }}\nmax_sessions = 1\nqueue_depth = 4\n\
         queue_timeout = \"2m\"\nhandshake_rate = 1000.0\nhandshake_burst = 100\n\
         enforce = {enforce}\n"
    )
}

async fn reload(proxy: &Proxy) {
    let (status, body) = support::admin_request(proxy.admin, "POST", "/-/reload").await;
    assert_eq!(status, 200, "{body}");
}

/// Five short sessions of `lab` at once: one would-be slot, four tickets that go on
/// waiting (for two minutes) after their sessions end.
async fn five_short_sessions(proxy: &Proxy) {
    let mut held = Vec::new();
    for i in 0..5 {
        held.push(support::connect_ok(&proxy.url(&format!("/t/lab/?i={i}")), &[]).await);
    }
    for ws in held {
        close(ws).await;
    }
    proxy.wait_sessions_ended("lab").await;
}

#[tokio::test]
async fn flips_and_removal_end_every_waiting_ticket_at_once() {
    // Tickets outlive their sessions (a would-be client still waits): a reload that
    // ends shadow mode must end them at once, with their model gate, not after their
    // two-minute queue_timeout; round after round, nothing piles up.
    let edge = edge().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    write_config(&file, &edge, &lab(false));
    let proxy = support::proxy_from_file(&file).await;
    let gates = || proxy.shared.admission.gate_count();
    // other, lab, lab's model.
    assert_eq!(gates(), 3);
    for round in 0..5 {
        if round > 0 {
            write_config(&file, &edge, &lab(false));
            reload(&proxy).await;
        }
        five_short_sessions(&proxy).await;
        let s = scrape(proxy.admin).await;
        assert_eq!(would(&s, "lab", "queue"), 4.0 * f64::from(round + 1));
        assert_eq!(gates(), 3, "round {round}");
        write_config(&file, &edge, &lab(true));
        reload(&proxy).await;
        wait_until("the model and its tickets gone", async || gates() == 2).await;
    }
    // A ticket let through while its session lives holds a would-be slot until that
    // session ends (and as long again as it waited): a flip ends it at once too.
    write_config(&file, &edge, &lab(false));
    reload(&proxy).await;
    let waits = async || {
        let s = scrape(proxy.admin).await;
        s.get("sluice_shadow_wait_seconds_count", &[("tenant", "lab")])
    };
    let before = waits().await;
    let first = support::connect_ok(&proxy.url("/t/lab/"), &[]).await;
    let mut second = support::connect_ok(&proxy.url("/t/lab/"), &[]).await;
    close(first).await;
    wait_until("the ticket let through", async || {
        waits().await == before + 1.0
    })
    .await;
    write_config(&file, &edge, &lab(true));
    reload(&proxy).await;
    wait_until("the held would-be slot's task gone", async || gates() == 2).await;
    support::echo(&mut second, "the real session goes on").await;
    close(second).await;
    // Removed while tickets wait: the same.
    write_config(&file, &edge, &lab(false));
    reload(&proxy).await;
    five_short_sessions(&proxy).await;
    write_config(&file, &edge, "");
    reload(&proxy).await;
    wait_until("lab's gates gone", async || gates() == 1).await;
    let s = scrape(proxy.admin).await;
    assert_eq!(would(&s, "lab", "queue-timeout"), 0.0);
    assert_eq!(would(&s, "lab", "queue"), 25.0);
}

#[tokio::test]
async fn a_shadow_storm_over_the_edge_rate_delays_a_neighbour_by_one_burst_at_most() {
    // The edge takes 2 handshakes a second (burst 2); a shadow tenant sends 40 at once.
    // They all go on, and count: the enforced neighbour right after them waits for the
    // edge's bucket. But not for 40 handshakes' worth (20 s, past its 5 s patience):
    // the forced tokens leave the bucket at most one burst (1 s) in debt.
    let edge = edge().await;
    let proxy = config()
        .upstream(&edge.url(false))
        .tenant(tenant("loud").key("enforce", "false").unpaced())
        .tenant(
            tenant("calm")
                .unpaced()
                .queue_timeout(Duration::from_secs(5)),
        )
        .edge_limits(support::EdgeLimits {
            max_sessions: Some(1000),
            handshake_rate: Some(2.0),
            handshake_burst: Some(2),
        })
        .start()
        .await;
    for i in 0..40 {
        let ws = support::connect_ok(&proxy.url(&format!("/t/loud/?i={i}")), &[]).await;
        close(ws).await;
    }
    let calm = support::connect_ok(&proxy.url("/t/calm/"), &[]).await;
    let s = scrape(proxy.admin).await;
    assert_eq!(s.connects("loud", "admitted"), 40.0);
    assert_eq!(
        (
            s.connects("calm", "admitted"),
            s.connects("calm", "queued_admitted")
        ),
        (0.0, 1.0),
        "the neighbour waited for the edge's bucket, and got in"
    );
    close(calm).await;
}
