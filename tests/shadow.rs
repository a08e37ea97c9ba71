//! Shadow mode (`enforce = false`, DESIGN.md "Planning and shadow mode") through a real
//! sluice and a real WebSocket edge on loopback: under a storm far above a shadow
//! tenant's limits every connect goes on, and what it counts as would-be decisions is
//! what the same tenant enforced does; a reload flips `enforce` both ways without
//! touching live sessions; a shadow tenant's sessions fill the `[edge]` ceiling for its
//! enforced neighbours but do not hold it back; the series and the status page say so;
//! and nothing of a shadow tenant outlives its sessions.
//!
//! Times are real: assertions are counts and generous orderings, never wall-clock speed.

mod support;

use std::time::Duration;

use support::{
    admin_get, admin_request, close, config, connect, connect_ok, echo, edge, enforced_counts,
    proxy_from_file, reason, scrape, shadow_counts, tenant, wait_until, would, Client,
    ConfigBuilder, Edge, EdgeLimits, Proxy, Scrape,
};

/// Every `would` label a shadow tenant's counter has.
const WOULD: [&str; 6] = [
    "admit",
    "queue",
    "queue-full",
    "queue-timeout",
    "edge-capacity",
    "draining",
];

async fn setup(config: ConfigBuilder) -> (Edge, Proxy) {
    let edge = edge().await;
    let proxy = config.upstream(&edge.url(false)).start().await;
    (edge, proxy)
}

/// `n` connects of `url` at once; each task gives its client, or the refusal's reason.
async fn storm(url: &str, n: usize) -> Vec<tokio::task::JoinHandle<Result<Client, String>>> {
    (0..n)
        .map(|i| {
            let url = format!("{url}?i={i}");
            tokio::spawn(async move {
                match connect(&url, &[]).await {
                    Ok((ws, _)) => Ok(ws),
                    Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                        Err(reason(&resp).to_owned())
                    }
                    Err(e) => Err(format!("no HTTP answer: {e}")),
                }
            })
        })
        .collect()
}

/// Runs a storm of `n` held-open connects against `lab` with `spec`, shadow or
/// enforced, and returns the counts of the run once every would-be or real decision is
/// in (all `n` of them).
async fn run(spec: support::TenantSpec, enforce: bool, n: usize) -> [f64; 6] {
    let spec = spec.key("enforce", if enforce { "true" } else { "false" });
    let (edge, proxy) = setup(config().tenant(spec)).await;
    let tasks = storm(&proxy.url("/t/lab/"), n).await;
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(ws) => held.push(ws),
            Err(reason) => refused.push(reason),
        }
    }
    let decided = |s: &Scrape| {
        let c = if enforce {
            enforced_counts(s, "lab")
        } else {
            shadow_counts(s, "lab")
        };
        // Every connect at once or from the queue; every queued one admitted or refused.
        c[0] + c[1] + c[2] == n as f64 && c[5] == c[1]
    };
    let mut last = scrape(proxy.admin).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !decided(&last) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "decisions not all in: {}",
            last.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        last = scrape(proxy.admin).await;
    }
    if enforce {
        assert_eq!(held.len() + refused.len(), n);
    } else {
        // Shadow: nothing refused, every connect at the edge at once.
        assert!(
            refused.is_empty(),
            "a shadow tenant was refused: {refused:?}"
        );
        assert_eq!(held.len(), n);
        assert_eq!(edge.requests().len(), n);
        assert_eq!(last.connects("lab", "admitted"), n as f64);
        assert_eq!(last.connects("lab", "queued_admitted"), 0.0);
        for ws in held.iter_mut().take(3) {
            echo(ws, "still here").await;
        }
    }
    let counts = if enforce {
        enforced_counts(&last, "lab")
    } else {
        shadow_counts(&last, "lab")
    };
    for ws in held {
        close(ws).await;
    }
    counts
}

#[tokio::test]
async fn a_storm_over_the_cap_goes_through_and_counts_what_enforcing_does() {
    // 20 at once, held open: 2 sessions, 3 wait for a slot that never frees, 15 find
    // the queue full.
    let spec = || {
        tenant("lab")
            .max_sessions(2)
            .queue_depth(3)
            .queue_timeout(Duration::from_millis(800))
            .unpaced()
    };
    let shadow = run(spec(), false, 20).await;
    let enforced = run(spec(), true, 20).await;
    assert_eq!(
        shadow, enforced,
        "shadow {shadow:?} vs enforced {enforced:?}"
    );
    assert_eq!(enforced[..5], [2.0, 3.0, 15.0, 3.0, 0.0]);
}

#[tokio::test]
async fn a_storm_over_the_rate_counts_the_waits_enforcing_would_have() {
    // One handshake a second after a burst of 2: of 12 at once, 2 go on, 4 wait (and are
    // let through at about 1, 2, 3 and 4 s, inside the timeout), 6 find the queue full.
    let spec = || {
        tenant("lab")
            .max_sessions(100)
            .handshake_rate(1.0)
            .handshake_burst(2)
            .queue_depth(4)
            .queue_timeout(Duration::from_secs(8))
    };
    let shadow = run(spec(), false, 12).await;
    let enforced = run(spec(), true, 12).await;
    assert_eq!(
        shadow, enforced,
        "shadow {shadow:?} vs enforced {enforced:?}"
    );
    assert_eq!(enforced, [2.0, 4.0, 6.0, 0.0, 0.0, 4.0]);
}

fn lab(enforce: bool) -> String {
    format!(
        "[tenants.lab]\nauth = {{ kind = \"none\" }}\nmax_sessions = 1\nqueue_depth = 0\nhandshake_rate = 1000.0\nhandshake_burst = 100\nenforce = {enforce}\n"
    )
}

async fn reload(proxy: &Proxy) {
    let (status, body) = admin_request(proxy.admin, "POST", "/-/reload").await;
    assert_eq!(status, 200, "{body}");
}

/// `lab`'s row of `/api/tenants`.
async fn status_of(proxy: &Proxy, name: &str) -> serde_json::Value {
    let (status, body) = admin_get(proxy.admin, "/api/tenants").await;
    assert_eq!(status, 200);
    let all: serde_json::Value = serde_json::from_str(&body).unwrap();
    all["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_reload_flips_enforce_both_ways_and_live_sessions_go_on() {
    let edge = edge().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    support::write_config_file(&file, &edge, &lab(false));
    let proxy = proxy_from_file(&file).await;
    let url = proxy.url("/t/lab/");

    // Shadow: three sessions over a cap of one, no queue.
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(connect_ok(&url, &[]).await);
    }
    let s = scrape(proxy.admin).await;
    assert_eq!(would(&s, "lab", "admit"), 1.0);
    assert_eq!(would(&s, "lab", "queue-full"), 2.0);
    assert_eq!(
        s.get(
            "sluice_tenant_limit",
            &[("tenant", "lab"), ("limit", "enforce")]
        ),
        0.0
    );
    let row = status_of(&proxy, "lab").await;
    assert_eq!(row["shadow"]["would"]["admit"], 1);
    assert_eq!(row["shadow"]["would_live"], 1);

    // Enforced from the next connect: the three live sessions count against the cap.
    support::write_config_file(&file, &edge, &lab(true));
    reload(&proxy).await;
    let refused = support::connect_refused(&url, &[]).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(reason(&refused), "queue-full");
    for ws in &mut sessions {
        echo(ws, "survived the flip").await;
    }
    let row = status_of(&proxy, "lab").await;
    assert!(row["shadow"].is_null(), "{row}");
    assert_eq!(row["sessions_active"], 3);
    let s = scrape(proxy.admin).await;
    assert_eq!(
        s.get(
            "sluice_tenant_limit",
            &[("tenant", "lab"), ("limit", "enforce")]
        ),
        1.0
    );
    // Nothing more counted as would-be while enforced.
    assert_eq!(would(&s, "lab", "queue-full"), 2.0);
    // Two end: one is still over the cap of one, so still refused; the last one's end
    // makes room.
    close(sessions.pop().unwrap()).await;
    close(sessions.pop().unwrap()).await;
    wait_until("two sessions to end", async || {
        proxy.admission.tenant_load("lab").unwrap().live == 1
    })
    .await;
    assert_eq!(
        reason(&support::connect_refused(&url, &[]).await),
        "queue-full"
    );
    close(sessions.pop().unwrap()).await;
    proxy.wait_sessions_ended("lab").await;
    let mut enforced = connect_ok(&url, &[]).await;
    assert_eq!(
        reason(&support::connect_refused(&url, &[]).await),
        "queue-full"
    );

    // Back to shadow: over the cap again, nothing refused; the enforced session goes on.
    support::write_config_file(&file, &edge, &lab(false));
    reload(&proxy).await;
    let mut more = vec![connect_ok(&url, &[]).await, connect_ok(&url, &[]).await];
    echo(&mut enforced, "survived the flip back").await;
    for ws in &mut more {
        echo(ws, "shadow again").await;
    }
    let s = scrape(proxy.admin).await;
    // A fresh model: its first ticket finds room (the enforced session is not in it).
    assert_eq!(would(&s, "lab", "admit"), 2.0);
    assert_eq!(would(&s, "lab", "queue-full"), 3.0);
    assert!(!status_of(&proxy, "lab").await["shadow"].is_null());
    close(enforced).await;
    for ws in more {
        close(ws).await;
    }
    proxy.wait_sessions_ended("lab").await;
}

#[tokio::test]
async fn a_shadow_tenant_fills_the_edge_for_its_neighbours_and_is_not_held_back() {
    let (edge, proxy) = setup(
        config()
            .tenant(
                tenant("loud")
                    .key("enforce", "false")
                    .unpaced()
                    .queue_timeout(Duration::from_millis(500)),
            )
            .tenant(
                tenant("calm")
                    .unpaced()
                    .queue_timeout(Duration::from_millis(500)),
            )
            .edge_limits(EdgeLimits {
                max_sessions: Some(3),
                handshake_rate: Some(10_000.0),
                handshake_burst: Some(1000),
            }),
    )
    .await;
    // Five shadow sessions under an edge ceiling of three: none held back.
    let mut loud = Vec::new();
    for _ in 0..5 {
        loud.push(connect_ok(&proxy.url("/t/loud/"), &[]).await);
    }
    assert_eq!(proxy.admission.edge_load().unwrap().live, 5);
    edge.wait_for("five sessions at the edge", |e| {
        e.live.load(std::sync::atomic::Ordering::SeqCst) == 5
    })
    .await;
    // The enforced neighbour sees the edge full and waits, then is refused.
    let refused = support::connect_refused(&proxy.url("/t/calm/"), &[]).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(reason(&refused), "edge-capacity");
    // What enforcing `loud` would have done: three in, two waiting for the edge until
    // their queue_timeout.
    wait_until("loud's would-be edge refusals", async || {
        would(&scrape(proxy.admin).await, "loud", "edge-capacity") == 2.0
    })
    .await;
    let s = scrape(proxy.admin).await;
    assert_eq!(would(&s, "loud", "admit"), 3.0);
    assert_eq!(would(&s, "loud", "queue"), 2.0);
    // Three shadow sessions end: the edge has room, the neighbour gets in.
    for ws in loud.drain(..3) {
        close(ws).await;
    }
    wait_until("the edge to have room", async || {
        proxy.admission.edge_load().unwrap().live == 2
    })
    .await;
    let calm = connect_ok(&proxy.url("/t/calm/"), &[]).await;
    assert_eq!(proxy.admission.edge_load().unwrap().live, 3);
    close(calm).await;
    for ws in loud {
        close(ws).await;
    }
    wait_until("every edge slot back", async || {
        proxy.admission.edge_load().unwrap().live == 0
    })
    .await;
}

#[tokio::test]
async fn the_shadow_series_have_their_labels_and_pass_promtool() {
    let (_edge, proxy) = setup(
        config()
            .tenant(
                tenant("lab")
                    .key("enforce", "false")
                    .max_sessions(1)
                    .queue_depth(0),
            )
            .tenant(tenant("other")),
    )
    .await;
    let a = connect_ok(&proxy.url("/t/lab/"), &[]).await;
    let b = connect_ok(&proxy.url("/t/lab/"), &[]).await;
    let s = scrape(proxy.admin).await;
    for w in WOULD {
        let expected = match w {
            "admit" | "queue-full" => 1.0,
            _ => 0.0,
        };
        assert_eq!(would(&s, "lab", w), expected, "{w}");
    }
    assert_eq!(s.family("sluice_shadow_decisions_total").len(), WOULD.len());
    assert_eq!(
        s.get("sluice_shadow_wait_seconds_count", &[("tenant", "lab")]),
        0.0
    );
    assert!(s
        .text
        .contains("sluice_shadow_wait_seconds_bucket{tenant=\"lab\",le=\"0.005\"} 0"));
    // An enforced tenant has no shadow series, and says it enforces.
    assert!(!s
        .text
        .contains("sluice_shadow_decisions_total{tenant=\"other\""));
    for (t, v) in [("lab", 0.0), ("other", 1.0)] {
        assert_eq!(
            s.get(
                "sluice_tenant_limit",
                &[("tenant", t), ("limit", "enforce")]
            ),
            v
        );
    }
    // The status page's data marks it.
    let row = status_of(&proxy, "lab").await;
    assert_eq!(row["shadow"]["would"]["queue-full"], 1);
    assert!(status_of(&proxy, "other").await["shadow"].is_null());
    let (_, page) = admin_get(proxy.admin, "/").await;
    assert!(page.contains("t.shadow"), "the page shows shadow tenants");
    support::check_with_promtool(&s.text, "shadow-scrape");
    close(a).await;
    close(b).await;
}

#[tokio::test]
async fn a_hostile_shadow_tenant_pins_nothing_beyond_its_sessions() {
    // A storm far over the limits, then every session ends while tickets still wait:
    // the would-be queue stays within queue_depth, the waiting tickets are let through
    // as would-be slots free (each holding one as long as its session lasted), and
    // every slot — real, would-be, edge — comes back.
    let (_edge, proxy) = setup(
        config()
            .tenant(
                tenant("lab")
                    .key("enforce", "false")
                    .max_sessions(2)
                    .queue_depth(3)
                    .queue_timeout(Duration::from_secs(20))
                    .unpaced(),
            )
            .edge_limits(EdgeLimits {
                max_sessions: Some(1000),
                handshake_rate: Some(10_000.0),
                handshake_burst: Some(1000),
            }),
    )
    .await;
    let mut held = Vec::new();
    for t in storm(&proxy.url("/t/lab/"), 30).await {
        held.push(t.await.unwrap().expect("shadow connects go on"));
    }
    let row = status_of(&proxy, "lab").await;
    assert_eq!(row["shadow"]["would_queued"], 3, "{row}");
    assert_eq!(row["shadow"]["would_live"], 2, "{row}");
    assert_eq!(proxy.admission.tenant_load("lab").unwrap().live, 30);
    for ws in held {
        close(ws).await;
    }
    wait_until("every slot back", async || {
        let row = status_of(&proxy, "lab").await;
        proxy.admission.tenant_load("lab").unwrap().live == 0
            && proxy.admission.edge_load().unwrap().live == 0
            && row["shadow"]["would_live"] == 0
            && row["shadow"]["would_queued"] == 0
    })
    .await;
    let s = scrape(proxy.admin).await;
    // Each of the three queued tickets was let through once, its wait observed.
    let waited = s.get("sluice_shadow_wait_seconds_count", &[("tenant", "lab")]);
    assert_eq!(waited, 3.0);
    assert_eq!(would(&s, "lab", "queue-timeout"), 0.0);
    assert_eq!(would(&s, "lab", "queue-full"), 25.0);
    // The tickets' tasks are gone with them: the model's pump stopped too (a new
    // connect is decided at once again).
    let again = connect_ok(&proxy.url("/t/lab/"), &[]).await;
    assert_eq!(would(&scrape(proxy.admin).await, "lab", "admit"), 3.0);
    close(again).await;
}

#[tokio::test]
async fn a_ticket_whose_session_ends_while_it_waits_still_waits_its_turn() {
    // Enforcing, a queued client would still be waiting, its session still to come,
    // whatever its real session did meanwhile: the ticket stays in the would-be queue,
    // is let through when a would-be slot frees, and then holds one as long as its
    // session lasted.
    let (_edge, proxy) = setup(
        config().tenant(
            tenant("lab")
                .key("enforce", "false")
                .max_sessions(1)
                .queue_depth(1)
                .queue_timeout(Duration::from_secs(60))
                .unpaced(),
        ),
    )
    .await;
    let url = proxy.url("/t/lab/");
    let first = connect_ok(&url, &[]).await;
    let second = connect_ok(&url, &[]).await;
    assert_eq!(status_of(&proxy, "lab").await["shadow"]["would_queued"], 1);
    close(second).await;
    wait_until("the real session to end", async || {
        proxy.admission.tenant_load("lab").unwrap().live == 1
    })
    .await;
    let row = status_of(&proxy, "lab").await;
    assert_eq!(row["shadow"]["would_queued"], 1, "{row}");
    assert_eq!(row["shadow"]["would_live"], 1, "{row}");
    // So the would-be queue is still full for the next one.
    let third = connect_ok(&url, &[]).await;
    assert_eq!(would(&scrape(proxy.admin).await, "lab", "queue-full"), 1.0);
    close(third).await;
    // The first session's end frees its would-be slot: the ticket is let through, and
    // its would-be session (as short as its real one) ends too.
    close(first).await;
    wait_until(
        "the ticket let through and its would-be session over",
        async || {
            let row = status_of(&proxy, "lab").await;
            row["shadow"]["would_queued"] == 0 && row["shadow"]["would_live"] == 0
        },
    )
    .await;
    let s = scrape(proxy.admin).await;
    assert_eq!(
        s.get("sluice_shadow_wait_seconds_count", &[("tenant", "lab")]),
        1.0
    );
    assert_eq!(would(&s, "lab", "queue-timeout"), 0.0);
}

#[tokio::test]
async fn an_accept_mode_shadow_tenant_is_relayed_at_once_over_its_cap() {
    let (_edge, proxy) = setup(
        config().tenant(
            tenant("lab")
                .accept_mode()
                .key("enforce", "false")
                .max_sessions(1)
                .queue_depth(0),
        ),
    )
    .await;
    let url = proxy.url("/t/lab/");
    let mut a = connect_ok(&url, &[]).await;
    let mut b = connect_ok(&url, &[]).await;
    echo(&mut a, "first").await;
    echo(&mut b, "over the cap, relayed all the same").await;
    let s = scrape(proxy.admin).await;
    assert_eq!(would(&s, "lab", "admit"), 1.0);
    assert_eq!(would(&s, "lab", "queue-full"), 1.0);
    assert_eq!(s.connects("lab", "admitted"), 2.0);
    close(a).await;
    close(b).await;
    proxy.wait_sessions_ended("lab").await;
}

#[tokio::test]
async fn the_drain_refuses_a_shadow_tenants_new_connects_and_counts_its_waiting_tickets() {
    let edge = edge().await;
    let mut sluice = config()
        .upstream(&edge.url(false))
        .tenant(
            tenant("lab")
                .key("enforce", "false")
                .max_sessions(1)
                .queue_depth(1)
                .queue_timeout(Duration::from_secs(60))
                .unpaced(),
        )
        .drain_timeout(Duration::from_secs(20))
        .serve()
        .await;
    let proxy = sluice.proxy.clone();
    let url = proxy.url("/t/lab/");
    let mut first = connect_ok(&url, &[]).await;
    let mut second = connect_ok(&url, &[]).await;
    assert_eq!(status_of(&proxy, "lab").await["shadow"]["would_queued"], 1);
    sluice.shutdown();
    wait_until("the waiting ticket to count draining", async || {
        would(&scrape(proxy.admin).await, "lab", "draining") == 1.0
    })
    .await;
    // Shadow mode does not keep a draining server open to new sessions; live ones go on.
    match connect(&url, &[]).await {
        Ok(_) => panic!("a shadow connect was admitted while draining"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(reason(&resp), "draining");
        }
        Err(_) => {} // the listener is already closed
    }
    echo(&mut first, "still relayed while draining").await;
    echo(&mut second, "this one too").await;
    close(first).await;
    close(second).await;
    sluice.stopped(Duration::from_secs(20)).await;
}

#[test]
fn enforce_is_a_boolean_and_shadow_mode_is_refused_with_a_cluster() {
    let base = "[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:1\"]\n\
                [tenants.lab]\nauth = { kind = \"none\" }\n";
    let env = std::collections::HashMap::new();
    let parse = |extra: &str| sluice::Config::parse(&format!("{base}{extra}"), &env);
    let config = parse("enforce = false\n").unwrap();
    assert!(!config.tenants["lab"].limits.enforce);
    assert!(parse("").unwrap().tenants["lab"].limits.enforce);
    let err = parse("enforce = \"maybe\"\n").unwrap_err().to_string();
    assert!(err.contains("enforce"), "{err}");
    let clustered = "enforce = false\n[cluster]\nredis = \"redis://127.0.0.1:6379/0\"\n";
    let err = parse(clustered).unwrap_err().to_string();
    assert!(err.contains("tenants.lab.enforce"), "{err}");
    assert!(err.contains("[cluster]"), "{err}");
    // [defaults] may put every tenant in shadow mode.
    let all = sluice::Config::parse(&format!("[defaults]\nenforce = false\n{base}"), &env).unwrap();
    assert!(!all.tenants["lab"].limits.enforce);
    // check-config says which tenants are shadow.
    let out = sluice::cli::describe(&config, "lab.toml");
    let line = out.lines().find(|l| l.starts_with("shadow")).unwrap();
    assert!(line.contains("lab"), "{line}");
}

#[test]
fn check_config_accepts_the_shipped_roll_out_example_and_names_its_shadow_tenant() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check-config", "config/shadow.toml"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().find(|l| l.starts_with("shadow")).unwrap();
    assert!(line.contains("acme") && !line.contains("globex"), "{line}");
}
