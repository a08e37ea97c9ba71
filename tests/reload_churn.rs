//! The tenant table across many reloads (`src/tenants.rs`'s policy): a tenant removed
//! and brought back 1,000 times while its sessions live on keeps one gate that counts
//! them exactly; a tenant without sessions leaves nothing behind; memory stays flat.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::SinkExt;
use sluice::runtime::Runtime;
use sluice::Config;
use support::{connect, connect_ok, echo, edge, proxy, scrape, wait_until, Edge};
use tokio_tungstenite::tungstenite::Message;

const CHURNS: usize = 1_000;

fn config(edge: &Edge, with_temp: bool, with_ghost: bool) -> Config {
    let mut text = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [upstream.groups.primary]\nendpoints = [\"{}\"]\n\
         [tenants.lab]\nauth = {{ kind = \"none\" }}\n",
        edge.url(false)
    );
    if with_temp {
        text.push_str(
            "[tenants.temp]\nauth = { kind = \"none\" }\nmax_sessions = 3\nqueue_depth = 0\n",
        );
    }
    if with_ghost {
        text.push_str("[tenants.ghost]\nauth = { kind = \"none\" }\n");
    }
    Config::parse(&text, &HashMap::new()).expect("valid test config")
}

fn live(runtime: &Runtime, tenant: &str) -> Option<u32> {
    runtime.tenant(tenant).map(|t| t.gate.load().live)
}

/// Resident memory of this process, bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test]
async fn a_thousand_removals_and_returns_keep_one_gate_and_exact_counts() {
    let edge = edge().await;
    let text = format!(
        "[upstream.groups.primary]\nendpoints = [\"{}\"]\n\
         [tenants.lab]\nauth = {{ kind = \"none\" }}\n\
         [tenants.temp]\nauth = {{ kind = \"none\" }}\nmax_sessions = 3\nqueue_depth = 0\n",
        edge.url(false)
    );
    let proxy = proxy(&text).await;
    let runtime: Arc<Runtime> = proxy.shared.clone();

    let mut lab = Vec::new();
    for _ in 0..2 {
        lab.push(connect_ok(&proxy.url("/t/lab/"), &[]).await);
    }
    let mut temp = Vec::new();
    for _ in 0..3 {
        temp.push(connect_ok(&proxy.url("/t/temp/"), &[]).await);
    }
    assert_eq!(live(&runtime, "temp"), Some(3));
    assert_eq!(runtime.admission.gate_count(), 2);

    let mut memory = None;
    for i in 0..CHURNS {
        // Removed, with a tenant that holds nothing brought in beside it.
        sluice::reload::apply(&runtime, config(&edge, false, true)).unwrap();
        assert_eq!(live(&runtime, "temp"), None, "removed at {i}");
        assert_eq!(live(&runtime, "ghost"), Some(0));
        // Back, the ghost gone.
        sluice::reload::apply(&runtime, config(&edge, true, false)).unwrap();
        assert_eq!(
            live(&runtime, "temp"),
            Some(3),
            "the live count at return {i}"
        );
        assert_eq!(live(&runtime, "lab"), Some(2));
        // lab, temp (the same gate each time); the ghost's gate died with its table.
        assert_eq!(runtime.admission.gate_count(), 2, "gates after churn {i}");
        assert_eq!(runtime.snapshot().tenants.retired(), 0);
        if i == 50 {
            memory = Some(rss());
        }
    }
    let grown = rss().saturating_sub(memory.unwrap());
    assert!(
        grown < 16 << 20,
        "{CHURNS} reloads grew memory by {grown} bytes"
    );

    // The returned tenant's cap still counts its three old sessions: a fourth is
    // refused (queue_depth 0), nothing was forgotten.
    let refused = connect(&proxy.url("/t/temp/"), &[]).await;
    assert!(refused.is_err(), "a fourth session of a tenant capped at 3");
    // Every old session still relays.
    for ws in lab.iter_mut().chain(temp.iter_mut()) {
        echo(ws, "still here").await;
    }

    // Removed for good while its sessions live: retired, still counting them.
    sluice::reload::apply(&runtime, config(&edge, false, false)).unwrap();
    assert_eq!(runtime.snapshot().tenants.retired(), 1);
    assert_eq!(runtime.admission.gate_count(), 2);
    for mut ws in temp.drain(..) {
        ws.send(Message::Close(None)).await.unwrap();
        drop(ws);
    }
    // Its last session gone, its gate goes too, and the next reload forgets its name.
    wait_until("the retired gate to be dropped", async || {
        runtime.admission.gate_count() == 1
    })
    .await;
    sluice::reload::apply(&runtime, config(&edge, false, false)).unwrap();
    assert_eq!(runtime.snapshot().tenants.retired(), 0);
    assert_eq!(live(&runtime, "lab"), Some(2));
    let scrape = scrape(proxy.admin).await;
    assert_eq!(
        scrape.get("sluice_sessions_active", &[("tenant", "lab")]),
        2.0
    );
    assert_eq!(
        scrape.get("sluice_sessions_active", &[("tenant", "temp")]),
        0.0
    );
}
