//! Upstream resilience against real edges on loopback (DESIGN.md flow step 5): retries
//! with backoff inside the budget, circuit breaking, the edge's `Retry-After` obeyed.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{
    config, config_for, connect_ok, connect_refused, echo, edge, edge_with, proxy, reason, tenant,
    EdgeOptions, NO_AUTH,
};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// An endpoint that accepts TCP and hangs up at once, counting the connections.
async fn broken_endpoint() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            drop(tcp);
        }
    });
    (addr, count)
}

#[tokio::test]
async fn a_failing_endpoint_is_cut_off_by_its_circuit_and_costs_nothing_after() {
    let (broken, hits) = broken_endpoint().await;
    let live = edge().await;
    let proxy = proxy(&format!(
        "[upstream.groups.primary]\nendpoints = [\"ws://{broken}\", \"{}\"]\n\
         [tenants.lab]\nauth = {NO_AUTH}\nhandshake_rate = 1000.0\nhandshake_burst = 100\n",
        live.url(false)
    ))
    .await;
    let mut slow = 0;
    for i in 0..30 {
        let started = Instant::now();
        let mut ws = connect_ok(&proxy.url(&format!("/t/lab/{i}")), &[]).await;
        echo(&mut ws, "through").await;
        // After the circuit opened (three failures), nobody waits for the broken one.
        if i >= 10 && started.elapsed() > Duration::from_millis(500) {
            slow += 1;
        }
    }
    assert_eq!(
        live.requests().len(),
        30,
        "every client connected to the live edge"
    );
    let tried = hits.load(Ordering::SeqCst);
    assert!(
        (3..=4).contains(&tried),
        "the broken endpoint was tried {tried} times (3 failures open its circuit)"
    );
    assert_eq!(slow, 0, "clients after the circuit opened did not wait");
}

#[tokio::test]
async fn a_pause_the_edge_asks_for_is_obeyed_and_clients_still_connect() {
    let edge = edge_with(EdgeOptions {
        refuse_with: Some(503),
        refuse_first: Some(1),
        retry_after: Some(2),
        ..EdgeOptions::default()
    })
    .await;
    let proxy = proxy(&config_for(&edge.url(false), &[("lab", NO_AUTH)])).await;
    let url = proxy.url("/t/lab/");
    let started = Instant::now();
    let first = tokio::spawn({
        let url = url.clone();
        async move { connect_ok(&url, &[]).await }
    });
    edge.wait_for("the first handshake", |e| !e.requests().is_empty())
        .await;
    // Others arrive during the pause: they wait for it too.
    let later: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { connect_ok(&url, &[]).await })
        })
        .collect();
    let mut sessions = vec![first.await.unwrap()];
    for t in later {
        sessions.push(t.await.unwrap());
    }
    let requests = edge.requests();
    assert_eq!(requests.len(), 5, "one refused, then four admitted");
    let quiet = requests[1].at - requests[0].at;
    assert!(
        quiet >= Duration::from_millis(1900),
        "a handshake reached the paused edge after {quiet:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "within the retry budget"
    );
}

#[tokio::test]
async fn a_pause_longer_than_the_budget_is_one_refusal_with_its_retry_after() {
    let edge = edge_with(EdgeOptions {
        refuse_with: Some(503),
        retry_after: Some(30),
        ..EdgeOptions::default()
    })
    .await;
    let proxy = proxy(&format!(
        "[upstream]\nhandshake_timeout = \"1s\"\nretry_budget = \"2s\"\n{}",
        config_for(&edge.url(false), &[("lab", NO_AUTH)])
    ))
    .await;
    let resp = connect_refused(&proxy.url("/t/lab/"), &[]).await;
    assert_eq!(
        (resp.status().as_u16(), reason(&resp)),
        (503, "edge-capacity")
    );
    assert_eq!(resp.headers()["retry-after"], "30");
    // While paused, a new client is refused at once without reaching the edge, told
    // how long the pause still lasts.
    let started = Instant::now();
    let resp = connect_refused(&proxy.url("/t/lab/"), &[]).await;
    assert_eq!(reason(&resp), "edge-capacity");
    let after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((28..=30).contains(&after), "{after}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(edge.requests().len(), 1);
}

#[tokio::test]
async fn an_edge_that_never_answers_is_retried_within_the_budget_then_refused_once() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    let proxy = proxy(&format!(
        "[upstream]\nhandshake_timeout = \"300ms\"\nretry_budget = \"2s\"\nbackoff_base = \"50ms\"\nbackoff_max = \"200ms\"\n{}",
        config_for(&format!("ws://{addr}"), &[("lab", NO_AUTH)])
    ))
    .await;
    let started = Instant::now();
    let resp = connect_refused(&proxy.url("/t/lab/"), &[]).await;
    let took = started.elapsed();
    assert_eq!(
        (resp.status().as_u16(), reason(&resp)),
        (503, "upstream-unavailable")
    );
    assert!(resp.headers().contains_key("retry-after"));
    let attempts = accepted.load(Ordering::SeqCst);
    // Three timeouts open the circuit; the client is then refused without waiting out
    // the rest of its budget.
    assert_eq!(attempts, 3, "attempts made");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn an_edge_429_for_one_tenant_pauses_it_and_not_the_other() {
    let edge = edge_with(EdgeOptions {
        refuse_with: Some(429),
        refuse_tenant: Some("noisy".into()),
        retry_after: Some(2),
        ..EdgeOptions::default()
    })
    .await;
    let proxy = proxy(&format!(
        "[upstream]\nhandshake_timeout = \"1s\"\nretry_budget = \"1s\"\n{}",
        config_for(&edge.url(false), &[("noisy", NO_AUTH), ("quiet", NO_AUTH)])
    ))
    .await;
    let resp = connect_refused(&proxy.url("/t/noisy/"), &[]).await;
    assert_eq!(reason(&resp), "edge-capacity");
    let paused_at = Instant::now();
    // noisy is paused: its next client waits in the queue and is not sent meanwhile;
    // quiet, on the same edge, is not slowed.
    let waiting = tokio::spawn({
        let url = proxy.url("/t/noisy/");
        async move { support::connect(&url, &[]).await.map(|_| ()) }
    });
    for _ in 0..5 {
        let started = Instant::now();
        let mut ws = connect_ok(&proxy.url("/t/quiet/"), &[]).await;
        echo(&mut ws, "hi").await;
        assert!(started.elapsed() < Duration::from_millis(500));
    }
    // The waiting client reaches the edge (and is refused again) once the pause is over,
    // not before.
    let result = waiting.await.unwrap();
    assert!(result.is_err());
    let seen: Vec<Instant> = edge
        .requests()
        .iter()
        .filter(|r| r.tenant() == "noisy")
        .map(|r| r.at)
        .collect();
    assert_eq!(seen.len(), 2, "one refused, one after the pause");
    assert!(
        seen[1] - paused_at >= Duration::from_millis(1900),
        "a noisy handshake reached the edge {:?} into its 2 s pause",
        seen[1] - paused_at
    );
}

#[tokio::test]
async fn a_slowing_edge_lowers_the_rate_before_any_refusal_and_it_recovers() {
    let delay = Arc::new(std::sync::atomic::AtomicU64::new(300));
    let edge = edge_with(EdgeOptions {
        delay_ms: Some(delay.clone()),
        ..EdgeOptions::default()
    })
    .await;
    let proxy = config()
        .set("upstream", "slow_handshake", "\"150ms\"")
        .upstream(&edge.url(false))
        .tenant(tenant("lab").handshake_rate(20.0).handshake_burst(5))
        .start()
        .await;
    let rate = |p: &support::Proxy| p.admission.effective_rate("lab").unwrap();
    assert_eq!(rate(&proxy), 20.0);
    // Handshakes take 300 ms, over slow_handshake: the rate halves, once a second.
    for _ in 0..2 {
        let mut ws = connect_ok(&proxy.url("/t/lab/"), &[]).await;
        echo(&mut ws, "slow").await;
    }
    let lowered = rate(&proxy);
    assert!((5.0..20.0).contains(&lowered), "{lowered}");
    let gauge = support::scrape(proxy.admin)
        .await
        .get("sluice_effective_handshake_rate", &[("tenant", "lab")]);
    // (A recovery tick may have come in between on a slow machine.)
    assert!(
        (lowered..20.0).contains(&gauge),
        "gauge {gauge}, lowered {lowered}"
    );
    // No refusal happened: the rate came down on slowness alone. Both clients were
    // admitted (none refused or timed out in sluice), each with one handshake that the
    // edge answered 101 (no other answer, no retry).
    let m = support::scrape(proxy.admin).await;
    let outcomes: Vec<(String, f64)> = m
        .family("sluice_connects_total")
        .into_iter()
        .filter(|(series, n)| *n > 0.0 && series.contains("tenant=\"lab\""))
        .collect();
    assert_eq!(
        m.connects("lab", "admitted") + m.connects("lab", "queued_admitted"),
        2.0,
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().all(|(series, _)| {
            series.contains("outcome=\"admitted\"")
                || series.contains("outcome=\"queued_admitted\"")
        }),
        "only admissions: {outcomes:?}"
    );
    let answers: Vec<(String, f64)> = m
        .family("sluice_upstream_responses_total")
        .into_iter()
        .filter(|(_, n)| *n > 0.0)
        .collect();
    assert_eq!(
        answers,
        [(
            "sluice_upstream_responses_total{group=\"primary\",status=\"101\"}".to_owned(),
            2.0
        )],
        "every upstream answer was a 101"
    );
    assert_eq!(
        m.get("sluice_upstream_retries_total", &[("tenant", "lab")]),
        0.0
    );
    assert_eq!(edge.requests().len(), 2, "one handshake per client");
    // The edge is fast again: a tenth of the rate comes back each clean second.
    delay.store(0, Ordering::SeqCst);
    let started = Instant::now();
    while rate(&proxy) < 20.0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "stuck at {}",
            rate(&proxy)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "recovers step by step"
    );
}

#[tokio::test]
async fn one_groups_paused_edge_does_not_hold_back_another_groups_tenants() {
    let down = edge_with(EdgeOptions {
        refuse_with: Some(503),
        retry_after: Some(30),
        ..EdgeOptions::default()
    })
    .await;
    let up = edge().await;
    let proxy = proxy(&format!(
        "[upstream]\nhandshake_timeout = \"1s\"\nretry_budget = \"2s\"\n\
         [upstream.groups.primary]\nendpoints = [\"{}\"]\n\
         [upstream.groups.dedicated]\nendpoints = [\"{}\"]\n\
         [tenants.stuck]\nauth = {NO_AUTH}\n\
         [tenants.own]\nauth = {NO_AUTH}\nupstream_group = \"dedicated\"\n",
        down.url(false),
        up.url(false)
    ))
    .await;
    let resp = connect_refused(&proxy.url("/t/stuck/"), &[]).await;
    assert_eq!(reason(&resp), "edge-capacity");
    // The primary group is paused for 30 s; the dedicated group's tenant goes through.
    for _ in 0..3 {
        let started = Instant::now();
        let mut ws = connect_ok(&proxy.url("/t/own/"), &[]).await;
        echo(&mut ws, "own edge").await;
        assert!(started.elapsed() < Duration::from_millis(500));
    }
    assert_eq!(up.requests().len(), 3);
    assert_eq!(down.requests().len(), 1);
}
