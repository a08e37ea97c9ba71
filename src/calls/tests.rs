//! Beside step 6 (DESIGN.md, "SIP awareness"): unit tests of the call gate.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::metrics::{CallMetrics, CallOutcome};

fn calls(max_calls: Option<u32>, call_rate: Option<f64>) -> Calls {
    Calls {
        max_calls,
        call_rate,
        call_burst: 1,
        invite_queue_depth: 2,
        invite_queue_timeout: Duration::from_secs(8),
        call_idle_timeout: Duration::from_secs(60),
    }
}

fn metrics() -> TenantCallMetrics {
    CallMetrics::register(&prometheus::Registry::new()).tenant("acme")
}

#[tokio::test]
async fn a_permit_holds_one_place_until_it_drops() {
    let gate = CallGate::new("acme", &calls(Some(1), None), metrics());
    let first = gate.try_admit().expect("a free place");
    assert_eq!(gate.load().active, 1);
    assert!(gate.try_admit().is_none(), "the cap is 1");
    drop(first);
    assert_eq!(gate.load().active, 0);
    assert!(gate.try_admit().is_some());
}

#[tokio::test]
async fn without_max_calls_or_call_rate_calls_are_counted_not_limited() {
    let gate = CallGate::new("acme", &calls(None, None), metrics());
    let permits: Vec<_> = (0..1000)
        .map(|_| gate.try_admit().expect("no cap"))
        .collect();
    assert_eq!(gate.load().active, 1000);
    assert_eq!(gate.load().max_calls, None);
    drop(permits);
    assert_eq!(gate.metrics.active.get(), 0);
}

#[tokio::test]
async fn a_held_invite_gets_the_place_a_call_frees() {
    let gate = CallGate::new("acme", &calls(Some(1), None), metrics());
    let up = gate.try_admit().unwrap();
    let mut wait = gate.admit();
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut wait)
            .await
            .is_err(),
        "it waits"
    );
    assert_eq!(gate.load().queued, 1);
    drop(up);
    let permit = tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .expect("released")
        .expect("admitted");
    assert_eq!(
        gate.load(),
        CallLoad {
            active: 1,
            max_calls: Some(1),
            queued: 0
        }
    );
    drop(permit);
}

#[tokio::test]
async fn reconcile_keeps_the_gate_and_its_live_calls() {
    let before = CallGate::new("acme", &calls(Some(1), None), metrics());
    let permit = before.try_admit().unwrap();
    let none = std::sync::Weak::new();
    let (after, _) = reconcile(
        "acme",
        (Some(&before), &none),
        Some(&calls(Some(3), None)),
        metrics,
    );
    let after = after.expect("still a SIP tenant");
    assert!(Arc::ptr_eq(&before, &after));
    assert_eq!(after.load().active, 1);
    assert_eq!(after.load().max_calls, Some(3));
    assert!(after.try_admit().is_some(), "room under the raised cap");
    // Call keys removed: no gate in force, the old one remembered while it counts calls;
    // put back, the same gate, its live call still counted against the cap.
    let (gate, gone) = reconcile("acme", (Some(&before), &none), None, metrics);
    assert!(gate.is_none());
    let (back, _) = reconcile("acme", (None, &gone), Some(&calls(Some(1), None)), metrics);
    let back = back.unwrap();
    assert!(Arc::ptr_eq(&before, &back));
    assert!(back.try_admit().is_none(), "the live call still counts");
    drop((permit, after, back, before));
    assert!(gone.upgrade().is_none(), "remembered weakly");
    assert_eq!(CallOutcome::ALL.len(), 6);
}
