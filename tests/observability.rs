//! Metrics and the admin API after a scripted sequence of connects, through a real
//! sluice, a real edge and a refusing edge on loopback (DESIGN.md "Metrics" and "Admin
//! endpoints").

mod support;

use sha2::{Digest, Sha256};
use support::{
    admin_get, admin_request, close, connect_ok, connect_refused, echo, edge, edge_with, proxy,
    reason, scrape, wait_until, EdgeOptions,
};

const KEY: &str = "acme-key";
const AUTH: &[(&str, &str)] = &[("authorization", "Bearer acme-key")];

#[tokio::test]
async fn a_scripted_sequence_shows_exactly_in_metrics_and_the_api() {
    let edge = edge().await;
    let down = edge_with(EdgeOptions {
        refuse_with: Some(503),
        ..EdgeOptions::default()
    })
    .await;
    let hash = hex::encode(Sha256::digest(KEY.as_bytes()));
    let proxy = proxy(&format!(
        r#"
[upstream]
retry_budget = "3s"
[upstream.groups.primary]
endpoints = ["{}"]
[upstream.groups.down]
endpoints = ["{}"]
[tenants.acme]
auth = {{ kind = "api-key", key_sha256 = ["{hash}"] }}
max_sessions = 7
queue_depth = 3
queue_timeout = "30s"
handshake_rate = 1000.0
handshake_burst = 100
[tenants.broken]
auth = {{ kind = "none" }}
upstream_group = "down"
"#,
        edge.url(false),
        down.url(false)
    ))
    .await;
    let url = proxy.url("/t/acme/");

    // 7 admitted at once, each echoing once.
    let mut held = Vec::new();
    for _ in 0..7 {
        let mut ws = connect_ok(&url, AUTH).await;
        echo(&mut ws, "REGISTER").await;
        held.push(ws);
    }
    // 3 queued behind the cap.
    let queued: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { connect_ok(&url, AUTH).await })
        })
        .collect();
    let admin = proxy.admin;
    wait_until("3 queued", async || {
        scrape(admin)
            .await
            .get("sluice_queue_depth", &[("tenant", "acme")])
            == 3.0
    })
    .await;
    let during = scrape(admin).await;
    assert_eq!(
        during.get("sluice_sessions_active", &[("tenant", "acme")]),
        7.0
    );
    // 2 refused: the queue is full.
    for _ in 0..2 {
        let resp = connect_refused(&url, AUTH).await;
        assert_eq!(reason(&resp), "queue-full");
    }
    // 1 bad credential, 1 unknown tenant, 1 edge 503.
    let resp = connect_refused(&url, &[("authorization", "Bearer wrong")]).await;
    assert_eq!(reason(&resp), "unauthorized");
    let resp = connect_refused(&proxy.url("/t/nobody/"), &[]).await;
    assert_eq!(reason(&resp), "tenant-unknown");
    // The edge answers 503 with Retry-After: 7, longer than the retry budget: one
    // attempt, and the client is told the edge has no room.
    let resp = connect_refused(&proxy.url("/t/broken/"), &[]).await;
    assert_eq!(reason(&resp), "edge-capacity");
    // 3 sessions end; the 3 queued are admitted.
    for ws in held.drain(..3) {
        close(ws).await;
    }
    for q in queued {
        held.push(q.await.unwrap());
    }

    let m = scrape(admin).await;
    let connects = |tenant: &str, outcome: &str| {
        m.get(
            "sluice_connects_total",
            &[("tenant", tenant), ("outcome", outcome)],
        )
    };
    assert_eq!(connects("acme", "admitted"), 7.0);
    assert_eq!(connects("acme", "queued_admitted"), 3.0);
    assert_eq!(connects("acme", "queue-full"), 2.0);
    assert_eq!(connects("acme", "unauthorized"), 1.0);
    assert_eq!(connects("_unknown", "tenant-unknown"), 1.0);
    assert_eq!(connects("broken", "edge-capacity"), 1.0);
    assert_eq!(connects("acme", "queue-timeout"), 0.0);
    assert_eq!(
        m.get(
            "sluice_upstream_responses_total",
            &[("group", "down"), ("status", "503")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "sluice_upstream_responses_total",
            &[("group", "primary"), ("status", "101")]
        ),
        10.0
    );
    assert_eq!(
        m.get("sluice_queue_wait_seconds_count", &[("tenant", "acme")]),
        3.0
    );
    assert_eq!(
        m.get(
            "sluice_upstream_handshake_seconds_count",
            &[("tenant", "acme"), ("group", "primary")]
        ),
        10.0
    );
    assert_eq!(m.get("sluice_sessions_active", &[("tenant", "acme")]), 7.0);
    assert_eq!(m.get("sluice_queue_depth", &[("tenant", "acme")]), 0.0);
    assert_eq!(
        m.get(
            "sluice_tenant_limit",
            &[("tenant", "acme"), ("limit", "max_sessions")]
        ),
        7.0
    );
    assert_eq!(
        m.get(
            "sluice_session_duration_seconds_count",
            &[("tenant", "acme")]
        ),
        3.0
    );

    // Every session ends: the gauges go back to 0, durations and bytes are counted.
    for ws in held.drain(..) {
        close(ws).await;
    }
    wait_until("sessions to end", async || {
        scrape(admin)
            .await
            .get("sluice_sessions_active", &[("tenant", "acme")])
            == 0.0
    })
    .await;
    let end = scrape(admin).await;
    assert_eq!(
        end.get(
            "sluice_session_duration_seconds_count",
            &[("tenant", "acme")]
        ),
        10.0
    );
    // 7 × "REGISTER" as one masked frame of 8 + 6 bytes each way at least.
    let up = end.get(
        "sluice_relay_bytes_total",
        &[("tenant", "acme"), ("direction", "client_to_edge")],
    );
    let down_bytes = end.get(
        "sluice_relay_bytes_total",
        &[("tenant", "acme"), ("direction", "edge_to_client")],
    );
    assert!(
        up >= 7.0 * 14.0 && down_bytes >= 7.0 * 10.0,
        "{up} {down_bytes}"
    );

    // /api/tenants agrees.
    let (status, body) = admin_get(admin, "/api/tenants").await;
    assert_eq!(status, 200);
    let api: serde_json::Value = serde_json::from_str(&body).unwrap();
    let tenant = |name: &str| {
        api["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} in /api/tenants"))
            .clone()
    };
    let acme = tenant("acme");
    assert_eq!(acme["sessions_active"], 0);
    assert_eq!(acme["queue_depth"], 0);
    assert_eq!(acme["limits"]["max_sessions"], 7);
    assert_eq!(acme["outcomes"]["admitted"], 7);
    assert_eq!(acme["outcomes"]["queued_admitted"], 3);
    assert_eq!(acme["outcomes"]["queue-full"], 2);
    assert_eq!(acme["outcomes"]["unauthorized"], 1);
    assert_eq!(acme["recent"]["admitted_per_min"], 7);
    assert_eq!(acme["recent"]["queued_per_min"], 3);
    assert_eq!(acme["recent"]["rejected_per_min"], 3);
    assert_eq!(acme["recent"]["handshakes"], 10);
    assert!(acme["recent"]["handshake_p99"].as_f64().unwrap() < 3.0);
    assert_eq!(tenant("_unknown")["outcomes"]["tenant-unknown"], 1);
    assert_eq!(tenant("broken")["outcomes"]["edge-capacity"], 1);
    let errors = api["edge_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["status"], "503");
    assert_eq!(errors[0]["tenant"], "broken");
    assert_eq!(errors[0]["trace_id"], "trace-1");

    support::check_with_promtool(&end.text, "scrape");
}

#[tokio::test]
async fn the_admin_listener_answers_its_paths_and_only_those() {
    let (_edge, proxy) = support::lab("").await;
    let admin = proxy.admin;
    assert_eq!(admin_get(admin, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(admin_get(admin, "/readyz").await.0, 200);
    let (status, page) = admin_get(admin, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>sluice status</title>"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "self-contained"
    );
    // Started from config text, not a file: nothing to re-read (tests/reload.rs has
    // the file-backed reloads).
    let (status, body) = admin_request(admin, "POST", "/-/reload").await;
    assert_eq!(status, 422);
    assert!(body.contains("not started from a config file"), "{body}");
    assert_eq!(admin_request(admin, "GET", "/-/reload").await.0, 405);
    assert_eq!(admin_request(admin, "DELETE", "/metrics").await.0, 405);
    assert_eq!(admin_get(admin, "/nope").await.0, 404);
    // The proxy port does not serve admin paths.
    let resp = connect_refused(&proxy.url("/metrics"), &[]).await;
    assert_eq!(resp.status(), 403);
}

/// The Grafana dashboard parses and queries only metrics a real scrape has.
#[tokio::test]
async fn the_grafana_dashboard_queries_only_exposed_metrics() {
    // Tenant lab, a SIP tenant with call limits (whose call series exist from the
    // start), and a shadow tenant (its would-be series too).
    let edge = support::edge().await;
    let proxy = support::config()
        .upstream(&edge.url(false))
        .tenant(support::tenant("lab"))
        .tenant(support::tenant("trial").key("enforce", "false"))
        .tenant(
            support::tenant("voice")
                .accept_mode()
                .subprotocols(&["sip"])
                .key("max_calls", "5")
                .key("call_rate", "2.0"),
        )
        .start()
        .await;
    // One session, so that the series created on first use exist too.
    close(connect_ok(&proxy.url("/t/lab/"), &[]).await).await;
    close(connect_ok(&proxy.url("/t/trial/"), &[]).await).await;
    let names = scrape(proxy.admin).await.names();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/sluice.json");
    let text = std::fs::read_to_string(path).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 8, "panels with queries: {}", exprs.len());
    for expr in &exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("sluice_") {
                assert!(
                    names.contains(word),
                    "{word} (in {expr:?}) is not in a scrape"
                );
            }
        }
    }
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::Object(q)) => {
                        if let Some(serde_json::Value::String(s)) = q.get("query") {
                            out.push(s.clone());
                        }
                    }
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_exprs(i, out)),
        _ => {}
    }
}
