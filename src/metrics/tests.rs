//! Beside the flow (DESIGN.md, "Metrics"): unit tests of the per-tenant children.

use std::collections::HashMap;

use super::*;

#[tokio::test(start_paused = true)]
async fn the_recent_window_forgets_after_a_minute() {
    let m = TenantMetrics::for_test();
    m.outcome(Outcome::Admitted);
    m.outcome(Outcome::QueuedAdmitted);
    m.outcome(Outcome::Refused(Reason::QueueFull));
    for ms in [100, 200, 300, 4000] {
        m.upstream_handshake(Duration::from_millis(ms));
    }
    let w = m.recent_window();
    assert_eq!(
        (w.admitted_per_min, w.queued_per_min, w.rejected_per_min),
        (1, 1, 1)
    );
    assert_eq!(w.handshake_p50, Some(0.2));
    assert_eq!(w.handshake_p99, Some(4.0));
    tokio::time::advance(Duration::from_secs(61)).await;
    let w = m.recent_window();
    assert_eq!(
        (w.admitted_per_min, w.queued_per_min, w.rejected_per_min),
        (0, 0, 0)
    );
    assert_eq!(w.handshakes, 4, "handshakes stay for five minutes");
    tokio::time::advance(Duration::from_secs(300)).await;
    assert_eq!(m.recent_window().handshake_p99, None);
}

impl TenantMetrics {
    fn for_test() -> Self {
        let config = crate::Config::parse(
            "[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:9\"]\n[tenants.t]\nauth = { kind = \"none\" }\n",
            &HashMap::new(),
        )
        .unwrap();
        let m = Metrics::new(&config);
        m.tenant_children("t", config.tenants.get("t").map(|t| &**t))
    }
}
