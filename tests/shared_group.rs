//! Tenants sharing an upstream group (DESIGN.md flow step 5, issue 13): what the edge
//! answers to one tenant's request counts against that tenant on that endpoint; the
//! endpoint's circuit opens, or its pause holds, for everyone only on failures no request
//! can cause or when two tenants draw the same answer. Real sockets: two recording
//! edges that answer badly only on a path tenant `a`'s clients choose (`/evil`), and
//! `101` elsewhere.

mod support;

use std::time::Duration;

use support::{
    connect_ok, connect_refused, echo, edge_with, proxy, reason, scrape, Edge, EdgeOptions, Proxy,
    NO_AUTH,
};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Short attempts and backoff, so a client's retries are over in well under 2 s.
const FAST: &str = "handshake_timeout = \"300ms\"\nretry_budget = \"1500ms\"\n\
                    backoff_base = \"10ms\"\nbackoff_max = \"50ms\"\n";

/// Sluice in front of one group of `endpoints` shared by `tenants`. `upstream` is more
/// `[upstream]` text; `top` goes first (an `[edge]` table).
async fn shared(endpoints: [&str; 2], tenants: &[&str], upstream: &str, top: &str) -> Proxy {
    let mut text = format!(
        "{top}\n[upstream]\n{FAST}{upstream}\n[upstream.groups.primary]\nendpoints = [\"{}\", \"{}\"]\n",
        endpoints[0], endpoints[1]
    );
    for t in tenants {
        text.push_str(&format!(
            "[tenants.{t}]\nauth = {NO_AUTH}\nhandshake_rate = 1000.0\nhandshake_burst = 100\n"
        ));
    }
    proxy(&text).await
}

/// Two edges that both answer `options` on `/evil` and `101` elsewhere.
async fn edges(options: EdgeOptions) -> [Edge; 2] {
    let options = EdgeOptions {
        refuse_path: options
            .refuse_with
            .map(|_| "/evil".to_owned())
            .or(options.refuse_path),
        ..options
    };
    [edge_with(options.clone()).await, edge_with(options).await]
}

/// Handshakes of `tenant` that reached either edge.
fn seen(edges: &[Edge; 2], tenant: &str) -> usize {
    edges
        .iter()
        .map(|e| e.requests().iter().filter(|r| r.tenant() == tenant).count())
        .sum()
}

/// `b`'s clients connect at once, admitted without a wait, and talk.
async fn b_connects_at_once(proxy: &Proxy, times: usize) {
    let before = scrape(proxy.admin).await.connects("b", "admitted");
    for i in 0..times {
        let started = Instant::now();
        let mut ws = connect_ok(&proxy.url(&format!("/t/b/ok{i}")), &[]).await;
        echo(&mut ws, "b").await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(400),
            "b's connect took {took:?}"
        );
    }
    let after = scrape(proxy.admin).await.connects("b", "admitted");
    assert_eq!(
        after - before,
        times as f64,
        "admitted at once, never queued"
    );
}

fn retry_after(resp: &http::Response<Option<Vec<u8>>>) -> u64 {
    resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn one_tenants_502_503_504_on_its_own_path_do_not_lock_the_group() {
    for status in [503, 502, 504] {
        let edges = edges(EdgeOptions {
            refuse_with: Some(status),
            omit_retry_after: true,
            ..EdgeOptions::default()
        })
        .await;
        let urls = [edges[0].url(false), edges[1].url(false)];
        let proxy = shared([&urls[0], &urls[1]], &["a", "b"], "", "").await;
        for _ in 0..3 {
            let resp = connect_refused(&proxy.url("/t/a/evil"), &[]).await;
            assert_eq!(resp.status(), 503, "{status}");
        }
        // a's own circuits are open on both endpoints now: its next connect is refused
        // without reaching the edge.
        let a_seen = seen(&edges, "a");
        assert!(a_seen >= 6, "{status}: a reached the edges {a_seen} times");
        let started = Instant::now();
        let resp = connect_refused(&proxy.url("/t/a/evil"), &[]).await;
        assert_eq!(
            (resp.status().as_u16(), reason(&resp)),
            (503, "upstream-unavailable"),
            "{status}"
        );
        assert!(started.elapsed() < Duration::from_millis(300));
        assert_eq!(seen(&edges, "a"), a_seen, "{status}");
        // b, on the same endpoints, is not held back at all.
        b_connects_at_once(&proxy, 5).await;
        assert_eq!(seen(&edges, "b"), 5, "{status}");
    }
}

#[tokio::test]
async fn one_tenants_stalled_handshakes_do_not_lock_the_group() {
    let edges = edges(EdgeOptions {
        stall_path: Some("/evil".into()),
        ..EdgeOptions::default()
    })
    .await;
    let urls = [edges[0].url(false), edges[1].url(false)];
    let proxy = shared([&urls[0], &urls[1]], &["a", "b"], "", "").await;
    for i in 0..3 {
        let resp = connect_refused(&proxy.url("/t/a/evil"), &[]).await;
        assert_eq!(
            (resp.status().as_u16(), reason(&resp)),
            (503, "upstream-unavailable")
        );
        if i == 0 {
            assert_eq!(resp.headers()["x-sluice-upstream-status"], "timeout");
        }
    }
    // Answer timeouts after connecting are a's: its own circuits are open…
    let a_seen = seen(&edges, "a");
    let resp = connect_refused(&proxy.url("/t/a/evil"), &[]).await;
    assert_eq!(reason(&resp), "upstream-unavailable");
    assert_eq!(seen(&edges, "a"), a_seen);
    // …and only a's.
    b_connects_at_once(&proxy, 5).await;
}

#[tokio::test]
async fn one_tenants_retry_after_pauses_that_tenant_only() {
    let edges = edges(EdgeOptions {
        refuse_with: Some(503),
        retry_after: Some(30),
        ..EdgeOptions::default()
    })
    .await;
    let urls = [edges[0].url(false), edges[1].url(false)];
    let proxy = shared([&urls[0], &urls[1]], &["a", "b"], "", "").await;
    let resp = connect_refused(&proxy.url("/t/a/evil"), &[]).await;
    assert_eq!(
        (resp.status().as_u16(), reason(&resp)),
        (503, "edge-capacity")
    );
    assert_eq!(retry_after(&resp), 30);
    assert_eq!(
        seen(&edges, "a"),
        2,
        "one attempt per endpoint, then paused"
    );
    // a is paused on every endpoint: refused at once (its queue_timeout is shorter than
    // the pause), whatever path, told how long the pause still lasts.
    for path in ["/t/a/evil", "/t/a/fine"] {
        let started = Instant::now();
        let resp = connect_refused(&proxy.url(path), &[]).await;
        assert_eq!(reason(&resp), "edge-capacity");
        assert!((28..=30).contains(&retry_after(&resp)));
        assert!(started.elapsed() < Duration::from_millis(300));
    }
    assert_eq!(seen(&edges, "a"), 2);
    // b is not paused.
    b_connects_at_once(&proxy, 5).await;
}

#[tokio::test]
async fn a_refused_connect_still_opens_the_circuit_for_everyone() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let [live, _] = edges(EdgeOptions::default()).await;
    let proxy = shared(
        [&format!("ws://{dead}"), &live.url(false)],
        &["a", "b"],
        "",
        "",
    )
    .await;
    let errors = async || {
        scrape(proxy.admin).await.get(
            "sluice_upstream_responses_total",
            &[("group", "primary"), ("status", "error")],
        )
    };
    // a's sessions stay open on the live endpoint, so the dead one (fewer sessions)
    // is tried first until its circuit opens after three refused connects.
    let mut held = Vec::new();
    for i in 0..6 {
        held.push(connect_ok(&proxy.url(&format!("/t/a/{i}")), &[]).await);
    }
    assert_eq!(errors().await, 3.0);
    // b skips the dead endpoint: no more connect errors, no waiting.
    b_connects_at_once(&proxy, 5).await;
    assert_eq!(errors().await, 3.0, "b never tried the open circuit");
}

#[tokio::test]
async fn two_tenants_drawing_the_same_failure_open_the_circuit_for_everyone() {
    let edges = edges(EdgeOptions {
        refuse_with: Some(503),
        omit_retry_after: true,
        ..EdgeOptions::default()
    })
    .await;
    let urls = [edges[0].url(false), edges[1].url(false)];
    let proxy = shared([&urls[0], &urls[1]], &["a", "b", "c"], "", "").await;
    connect_refused(&proxy.url("/t/a/evil"), &[]).await;
    // One tenant alone: c still goes through.
    let mut ws = connect_ok(&proxy.url("/t/c/ok"), &[]).await;
    echo(&mut ws, "c").await;
    // A second tenant draws the same: both endpoints' circuits open for everyone.
    connect_refused(&proxy.url("/t/b/evil"), &[]).await;
    let started = Instant::now();
    let resp = connect_refused(&proxy.url("/t/c/ok"), &[]).await;
    assert_eq!(
        (resp.status().as_u16(), reason(&resp)),
        (503, "upstream-unavailable")
    );
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(seen(&edges, "c"), 1, "c's second connect reached no edge");
}

#[tokio::test]
async fn two_tenants_told_to_pause_pause_the_endpoints_for_everyone() {
    let edges = edges(EdgeOptions {
        refuse_with: Some(503),
        retry_after: Some(30),
        ..EdgeOptions::default()
    })
    .await;
    let urls = [edges[0].url(false), edges[1].url(false)];
    let proxy = shared([&urls[0], &urls[1]], &["a", "b", "c"], "", "").await;
    connect_refused(&proxy.url("/t/a/evil"), &[]).await;
    let mut ws = connect_ok(&proxy.url("/t/c/ok"), &[]).await;
    echo(&mut ws, "c").await;
    connect_refused(&proxy.url("/t/b/evil"), &[]).await;
    // Every endpoint is paused for everyone now: c is refused at once, not sent.
    let started = Instant::now();
    let resp = connect_refused(&proxy.url("/t/c/ok"), &[]).await;
    assert_eq!(reason(&resp), "edge-capacity");
    assert!((28..=30).contains(&retry_after(&resp)));
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(seen(&edges, "c"), 1);
}

#[tokio::test]
async fn an_edge_retry_after_is_capped_at_max_pause() {
    let edges = edges(EdgeOptions {
        refuse_with: Some(503),
        retry_after: Some(100_000),
        ..EdgeOptions::default()
    })
    .await;
    let urls = [edges[0].url(false), edges[1].url(false)];
    // The default cap: 5 minutes.
    let default = shared([&urls[0], &urls[1]], &["a"], "", "").await;
    let resp = connect_refused(&default.url("/t/a/evil"), &[]).await;
    assert_eq!(reason(&resp), "edge-capacity");
    assert_eq!(retry_after(&resp), 300);

    let capped = shared([&urls[0], &urls[1]], &["a"], "max_pause = \"2s\"\n", "").await;
    let resp = connect_refused(&capped.url("/t/a/evil"), &[]).await;
    assert_eq!(reason(&resp), "edge-capacity");
    assert!(retry_after(&resp) <= 2, "{:?}", resp.headers());
    let paused_at = Instant::now();
    // While paused, a's clients wait (the pause is shorter than its queue_timeout) and
    // are sent once it is over, not 100000 s later.
    let mut ws = connect_ok(&capped.url("/t/a/fine"), &[]).await;
    echo(&mut ws, "after the pause").await;
    let waited = paused_at.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
}

#[tokio::test]
async fn one_tenants_refusals_slow_its_own_rate_not_the_edge_ceiling() {
    let edges = edges(EdgeOptions {
        refuse_with: Some(503),
        omit_retry_after: true,
        ..EdgeOptions::default()
    })
    .await;
    let urls = [edges[0].url(false), edges[1].url(false)];
    let edge = "[edge]\nmax_sessions = 100\nhandshake_rate = 100.0\nhandshake_burst = 20\n";
    let proxy = shared([&urls[0], &urls[1]], &["a", "b"], "", edge).await;
    let edge_rate = async || {
        scrape(proxy.admin)
            .await
            .get("sluice_effective_handshake_rate", &[("tenant", "_edge")])
    };
    for _ in 0..3 {
        connect_refused(&proxy.url("/t/a/evil"), &[]).await;
    }
    assert!(proxy.admission.effective_rate("a").unwrap() < 1000.0);
    assert_eq!(edge_rate().await, 100.0, "a alone does not slow the edge");
    assert_eq!(proxy.admission.effective_rate("b").unwrap(), 1000.0);
    b_connects_at_once(&proxy, 3).await;
    // A second tenant drawing refusals too: the edge ceiling backs off.
    connect_refused(&proxy.url("/t/b/evil"), &[]).await;
    let lowered = edge_rate().await;
    assert!(lowered < 100.0, "{lowered}");
}
