//! Issue 18's agreement: one arrival profile through `sluice plan`'s simulation and
//! through the real proxy on loopback (in-process sluice, a recording edge, WebSocket
//! clients connecting at the profile's times and holding their sessions for its holds):
//! the same admitted order per tenant, the same refusals, and waits within 10 % or
//! 50 ms of each other.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sluice::plan::{simulate, Behaviour, Client, Options};
use tokio::time::Instant;

/// Two tenants under an `[edge]` ceiling: `paced` queues on its token rate, `capped` on
/// its session cap (with a queue of 2, so one is refused `queue-full`); `short` times
/// out (`queue-timeout`) waiting for its one session.
fn config_text(edge_url: &str) -> String {
    format!(
        "[upstream.groups.primary]\nendpoints = [\"{edge_url}\"]\n\
         [edge]\nmax_sessions = 100\nhandshake_rate = 12.0\nhandshake_burst = 4\n\
         [tenants.paced]\nauth = {{ kind = \"none\" }}\nhandshake_rate = 5.0\nhandshake_burst = 2\nqueue_depth = 20\nqueue_timeout = \"5s\"\n\
         [tenants.capped]\nauth = {{ kind = \"none\" }}\nmax_sessions = 3\nhandshake_rate = 100.0\nhandshake_burst = 10\nqueue_depth = 2\nqueue_timeout = \"5s\"\n\
         [tenants.short]\nauth = {{ kind = \"none\" }}\nmax_sessions = 1\nhandshake_rate = 100.0\nqueue_depth = 5\nqueue_timeout = \"300ms\"\n"
    )
}

/// The profile: (tenant, at ms, hold ms), spaced so that the arrival order is the same
/// on loopback as in the plan.
fn profile() -> Vec<(&'static str, u64, u64)> {
    let mut rows = Vec::new();
    for i in 0..10 {
        rows.push(("paced", 30 * i, 3000));
    }
    for i in 0..6 {
        rows.push(("capped", 15 + 30 * i, 600));
    }
    for i in 0..3 {
        rows.push(("short", 20 + 40 * i, 800));
    }
    rows.sort_by_key(|r| r.1);
    rows
}

/// What one client saw: admitted (at, waited), or refused with a reason.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Admitted { at: f64, wait: f64 },
    Refused(String),
}

fn planned(config: &sluice::Config, rows: &[(&'static str, u64, u64)]) -> Vec<Seen> {
    let behaviour = Arc::new(Behaviour::default());
    let clients: Vec<Client> = rows
        .iter()
        .map(|(tenant, at, hold)| Client {
            tenant: (*tenant).into(),
            at: Duration::from_millis(*at),
            hold: Duration::from_millis(*hold),
            behaviour: behaviour.clone(),
        })
        .collect();
    let report = simulate(config, &clients, &Options::default());
    report
        .clients
        .iter()
        .map(|c| match (c.admitted_at, c.wait, c.refusals.first()) {
            (Some(at), Some(wait), _) => Seen::Admitted { at, wait },
            (_, _, Some(reason)) => Seen::Refused((*reason).to_owned()),
            other => panic!("a client neither admitted nor refused: {other:?}"),
        })
        .collect()
}

async fn real(proxy: &support::Proxy, rows: &[(&'static str, u64, u64)]) -> Vec<Seen> {
    let t0 = Instant::now() + Duration::from_millis(100);
    let tasks: Vec<_> = rows
        .iter()
        .map(|&(tenant, at, hold)| {
            let url = proxy.url(&format!("/t/{tenant}/"));
            tokio::spawn(async move {
                tokio::time::sleep_until(t0 + Duration::from_millis(at)).await;
                let started = Instant::now();
                match support::connect(&url, &[]).await {
                    Ok((ws, _)) => {
                        let now = Instant::now();
                        let seen = Seen::Admitted {
                            at: (now - t0).as_secs_f64(),
                            wait: (now - started).as_secs_f64(),
                        };
                        tokio::time::sleep(Duration::from_millis(hold)).await;
                        drop(ws);
                        seen
                    }
                    Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                        let reason = resp
                            .headers()
                            .get("x-sluice-reason")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("no reason")
                            .to_owned();
                        Seen::Refused(reason)
                    }
                    Err(e) => panic!("{url}: {e}"),
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    seen
}

/// Per tenant, the indices of its admitted clients in the order they were admitted.
fn admitted_order(
    rows: &[(&'static str, u64, u64)],
    seen: &[Seen],
) -> BTreeMap<&'static str, Vec<usize>> {
    let mut by: BTreeMap<&'static str, Vec<(f64, usize)>> = BTreeMap::new();
    for (i, (row, s)) in rows.iter().zip(seen).enumerate() {
        if let Seen::Admitted { at, .. } = s {
            by.entry(row.0).or_default().push((*at, i));
        }
    }
    by.into_iter()
        .map(|(t, mut v)| {
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            (t, v.into_iter().map(|(_, i)| i).collect())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_and_proxy_agree_on_order_refusals_and_waits() {
    let edge = support::edge().await;
    let text = config_text(&edge.url(false));
    let config = sluice::Config::parse(&text, &HashMap::new()).unwrap();
    let rows = profile();
    // The plan runs its own runtime: on a thread of its own, not inside this one.
    let plan = std::thread::scope(|s| s.spawn(|| planned(&config, &rows)).join().unwrap());
    // Something to agree on: queueing on each tenant's own limits and at the edge, and
    // refusals (the reason is the head's blocker: its own limit, or the edge).
    assert!(
        plan.iter().any(|s| matches!(s, Seen::Refused(_))),
        "{plan:?}"
    );
    assert!(
        plan.iter()
            .any(|s| matches!(s, Seen::Admitted { wait, .. } if *wait > 0.5)),
        "{plan:?}"
    );

    let serving = support::serve(&text).await;
    let seen = real(&serving.proxy, &rows).await;

    assert_eq!(
        admitted_order(&rows, &seen),
        admitted_order(&rows, &plan),
        "admitted order per tenant\nreal: {seen:?}\nplan: {plan:?}"
    );
    for (i, (row, (real, plan))) in rows.iter().zip(seen.iter().zip(&plan)).enumerate() {
        match (real, plan) {
            (Seen::Refused(a), Seen::Refused(b)) => {
                assert_eq!(a, b, "client {i} of {}: refused for another reason", row.0);
            }
            (Seen::Admitted { wait: a, .. }, Seen::Admitted { wait: b, .. }) => {
                let slack = (0.1 * b).max(0.05);
                assert!(
                    (a - b).abs() <= slack,
                    "client {i} of {} (at {} ms): waited {a:.3} s for real, {b:.3} s in the plan",
                    row.0,
                    row.1
                );
            }
            _ => panic!("client {i} of {}: real {real:?}, plan {plan:?}", row.0),
        }
    }
}
