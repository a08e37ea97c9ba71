//! Step 5 of the flow: unit tests of the endpoint pool (choice, circuits, pauses, reload).

use super::*;

fn use_index(c: Choice) -> usize {
    match c {
        Choice::Use { index, .. } => index,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_endpoint_with_fewest_sessions_goes_first_ties_in_turn() {
    let pool = Arc::new(Pool::new(3));
    let now = Instant::now();
    let _a = pool.lease(0);
    let _b = pool.lease(0);
    let _c = pool.lease(1);
    assert_eq!(use_index(pool.choose("a", now, &[false; 3])), 2);
    let _d = pool.lease(2);
    // 1 and 2 tie at one session each; round-robin alternates.
    let picks: Vec<usize> = (0..4)
        .map(|_| use_index(pool.choose("a", now, &[false; 3])))
        .collect();
    assert!(picks.contains(&1) && picks.contains(&2), "{picks:?}");
    // An endpoint this client already tried goes last.
    assert_eq!(use_index(pool.choose("a", now, &[false, true, true])), 0);
}

#[tokio::test(start_paused = true)]
async fn a_circuit_opens_after_failures_and_one_probe_decides() {
    let pool = Pool::new(2);
    let now = Instant::now();
    for _ in 0..CIRCUIT_FAILURES {
        pool.record(0, "a", false, Outcome::EndpointFailure, now);
    }
    assert!(pool.circuit_open(0));
    for _ in 0..5 {
        assert_eq!(
            use_index(pool.choose("a", now, &[false; 2])),
            1,
            "skipped while open"
        );
    }
    // After the cool-down, exactly one probe.
    let later = now + CIRCUIT_COOLDOWN;
    let first = pool.choose("a", later, &[false, true]);
    assert_eq!(
        first,
        Choice::Use {
            index: 0,
            probe: true
        }
    );
    assert!(matches!(
        pool.choose("a", later, &[false, true]),
        Choice::Use { index: 1, .. }
    ));
    pool.record(0, "a", true, Outcome::Success, later);
    assert!(!pool.circuit_open(0));
    // A failed probe reopens it for another cool-down.
    for _ in 0..CIRCUIT_FAILURES {
        pool.record(0, "a", false, Outcome::EndpointFailure, later);
    }
    let again = later + CIRCUIT_COOLDOWN;
    assert_eq!(
        pool.choose("a", again, &[false, true]),
        Choice::Use {
            index: 0,
            probe: true
        }
    );
    pool.record(0, "a", true, Outcome::EndpointFailure, again);
    assert!(matches!(
        pool.choose("a", again, &[false, true]),
        Choice::Use { index: 1, .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_probe_whose_client_left_frees_the_circuit_for_the_next_probe() {
    let pool = Arc::new(Pool::new(1));
    let now = Instant::now();
    for _ in 0..CIRCUIT_FAILURES {
        pool.record(0, "a", false, Outcome::EndpointFailure, now);
    }
    let later = now + CIRCUIT_COOLDOWN;
    assert_eq!(
        pool.choose("a", later, &[false]),
        Choice::Use {
            index: 0,
            probe: true
        }
    );
    let guard = pool.probe_guard(0);
    assert!(matches!(
        pool.choose("a", later, &[false]),
        Choice::Blocked { .. }
    ));
    drop(guard); // the probing client hung up mid-attempt
    assert_eq!(
        pool.choose("a", later, &[false]),
        Choice::Use {
            index: 0,
            probe: true
        }
    );
    pool.probe_guard(0).record("a", Outcome::Success, later);
    assert!(!pool.circuit_open(0));
}

#[tokio::test(start_paused = true)]
async fn a_pause_blocks_until_it_ends() {
    let pool = Pool::new(1);
    let now = Instant::now();
    pool.record(0, "a", false, Outcome::Pause(Duration::from_secs(2)), now);
    assert_eq!(
        pool.choose("a", now, &[false]),
        Choice::Blocked {
            until: now + Duration::from_secs(2),
            paused: true
        }
    );
    assert_eq!(
        use_index(pool.choose("a", now + Duration::from_secs(2), &[false])),
        0
    );
}

const NONE: [bool; 2] = [false; 2];

fn fail(pool: &Pool, index: usize, tenant: &str, times: u32, now: Instant) {
    for _ in 0..times {
        pool.record(index, tenant, false, Outcome::RequestFailure, now);
    }
}

#[tokio::test(start_paused = true)]
async fn a_tenants_request_failures_open_only_its_own_circuit() {
    let pool = Pool::new(2);
    let now = Instant::now();
    fail(&pool, 0, "a", CIRCUIT_FAILURES, now);
    assert!(!pool.circuit_open(0), "the shared circuit stays closed");
    for _ in 0..4 {
        assert_eq!(use_index(pool.choose("a", now, &NONE)), 1, "a skips 0");
    }
    // b is not held back: it may use 0 (here: 1 is already tried).
    assert_eq!(
        pool.choose("b", now, &[false, true]),
        Choice::Use {
            index: 0,
            probe: false
        }
    );
    // With both its endpoints open, a is blocked (not paused); b is not.
    fail(&pool, 1, "a", CIRCUIT_FAILURES, now);
    assert_eq!(
        pool.choose("a", now, &NONE),
        Choice::Blocked {
            until: now + CIRCUIT_COOLDOWN,
            paused: false
        }
    );
    assert!(matches!(pool.choose("b", now, &NONE), Choice::Use { .. }));
    assert_eq!(pool.paused_until("a", now), None, "a circuit is no pause");
    // After the cool-down a's next attempt goes through; one failure reopens.
    let later = now + CIRCUIT_COOLDOWN;
    assert_eq!(
        pool.choose("a", later, &[false, true]),
        Choice::Use {
            index: 0,
            probe: false
        }
    );
    fail(&pool, 0, "a", 1, later);
    assert_eq!(use_index(pool.choose("a", later, &NONE)), 1);
    assert!(!pool.circuit_open(0));
    // Answers that are not failures forget a's failures; nothing is left to keep.
    pool.record(0, "a", false, Outcome::Success, later);
    pool.record(1, "a", false, Outcome::Answered, later);
    assert_eq!(pool.tenants_tracked(), 0);
    assert!(matches!(
        pool.choose("a", later, &[false, true]),
        Choice::Use { index: 0, .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn two_tenants_failing_on_an_endpoint_open_its_circuit_for_everyone() {
    let pool = Pool::new(2);
    let now = Instant::now();
    fail(&pool, 0, "a", CIRCUIT_FAILURES, now);
    // b's first failures are its own; its circuit opening is the second witness.
    fail(&pool, 0, "b", CIRCUIT_FAILURES - 1, now);
    assert!(!pool.circuit_open(0));
    fail(&pool, 0, "b", 1, now);
    assert!(pool.circuit_open(0));
    assert_eq!(use_index(pool.choose("c", now, &NONE)), 1, "c skips it too");
    // The other tenant needs an open circuit too: a failure or two of its own is not
    // enough (a flaky moment of b's must not let a's refusals shut 1 for all).
    fail(&pool, 1, "b", CIRCUIT_FAILURES - 1, now);
    fail(&pool, 1, "a", CIRCUIT_FAILURES + 3, now);
    assert!(!pool.circuit_open(1));
    // A circuit that has cooled down is no evidence either.
    let fresh = Pool::new(1);
    fail(&fresh, 0, "b", CIRCUIT_FAILURES, now);
    let later = now + CIRCUIT_COOLDOWN;
    fail(&fresh, 0, "a", CIRCUIT_FAILURES, later);
    assert!(!fresh.circuit_open(0));
    // Once b fails there again (its circuit was half-open, one failure reopens it),
    // both are open: shared.
    fail(&fresh, 0, "b", 1, later);
    assert!(fresh.circuit_open(0));
}

#[tokio::test(start_paused = true)]
async fn a_shared_probe_that_fails_only_its_own_request_closes_the_circuit() {
    let pool = Arc::new(Pool::new(1));
    let now = Instant::now();
    fail(&pool, 0, "a", CIRCUIT_FAILURES, now);
    fail(&pool, 0, "b", CIRCUIT_FAILURES, now);
    assert!(pool.circuit_open(0));
    // After the cool-down b's circuit has cooled down too: a's probe failing on its
    // own request reopens a's circuit only.
    let later = now + CIRCUIT_COOLDOWN;
    assert_eq!(
        pool.choose("a", later, &[false]),
        Choice::Use {
            index: 0,
            probe: true
        }
    );
    pool.probe_guard(0)
        .record("a", Outcome::RequestFailure, later);
    assert!(!pool.circuit_open(0));
    assert!(matches!(
        pool.choose("a", later, &[false]),
        Choice::Blocked { paused: false, .. }
    ));
    assert_eq!(
        pool.choose("c", later, &[false]),
        Choice::Use {
            index: 0,
            probe: false
        }
    );
}

#[tokio::test(start_paused = true)]
async fn endpoint_failures_open_the_circuit_for_every_tenant() {
    let pool = Pool::new(2);
    let now = Instant::now();
    for _ in 0..CIRCUIT_FAILURES {
        pool.record(0, "a", false, Outcome::EndpointFailure, now);
    }
    assert!(pool.circuit_open(0));
    for tenant in ["a", "b"] {
        assert_eq!(use_index(pool.choose(tenant, now, &NONE)), 1);
    }
    assert_eq!(pool.tenants_tracked(), 0, "nothing kept per tenant");
}

#[tokio::test(start_paused = true)]
async fn one_tenants_pause_holds_that_tenant_until_a_second_is_told_to_pause() {
    let pool = Pool::new(2);
    let now = Instant::now();
    let s = Duration::from_secs;
    pool.record(0, "a", false, Outcome::Pause(s(30)), now);
    pool.record(1, "a", false, Outcome::Pause(s(30)), now);
    assert_eq!(pool.paused_until("a", now), Some(now + s(30)));
    assert_eq!(
        pool.choose("a", now, &NONE),
        Choice::Blocked {
            until: now + s(30),
            paused: true
        }
    );
    assert_eq!(pool.paused_until("b", now), None);
    assert!(matches!(pool.choose("b", now, &NONE), Choice::Use { .. }));
    assert!(!pool.endpoint_paused(0, now) && !pool.endpoint_paused(1, now));
    // b is told to pause on 0 too: 0 is paused for everyone, until the earlier end.
    pool.record(0, "b", false, Outcome::Pause(s(10)), now);
    assert!(pool.endpoint_paused(0, now));
    assert_eq!(use_index(pool.choose("c", now, &NONE)), 1);
    assert_eq!(pool.paused_until("c", now), None);
    pool.record(1, "b", false, Outcome::Pause(s(60)), now);
    assert_eq!(pool.paused_until("c", now), Some(now + s(10)));
    // b may use 0 again when its own and the shared pause there end.
    assert_eq!(pool.paused_until("b", now), Some(now + s(10)));
    assert_eq!(
        use_index(pool.choose("c", now + s(10), &NONE)),
        0,
        "0's shared pause ended; 1 is paused for all until 30 s"
    );
    assert!(pool.endpoint_paused(1, now + s(29)));
    assert!(!pool.endpoint_paused(1, now + s(30)));
    // A pause that has run out is no evidence.
    let fresh = Pool::new(1);
    fresh.record(0, "a", false, Outcome::Pause(s(2)), now);
    fresh.record(0, "b", false, Outcome::Pause(s(2)), now + s(2));
    assert!(!fresh.endpoint_paused(0, now + s(2)));
}

#[tokio::test(start_paused = true)]
async fn a_reload_forgets_tenants_no_longer_on_the_group() {
    let text = |tenants: &str| {
        format!(
            "[upstream.groups.primary]\nendpoints = [\"ws://127.0.0.1:1\", \"ws://127.0.0.1:2\"]\n\
             [upstream.groups.other]\nendpoints = [\"ws://127.0.0.1:3\"]\n{tenants}"
        )
    };
    let none = r#"auth = { kind = "none" }"#;
    let both = text(&format!("[tenants.a]\n{none}\n[tenants.b]\n{none}\n"));
    let config = Config::parse(&both, &HashMap::new()).unwrap();
    let pools = Pools::new(&config);
    let pool = pools.get("primary").unwrap();
    let now = Instant::now();
    fail(&pool, 0, "a", 1, now);
    fail(&pool, 0, "b", 1, now);
    assert_eq!(pool.tenants_tracked(), 2);
    // a is removed, b moves to another group.
    let moved = text(&format!(
        "[tenants.b]\n{none}\nupstream_group = \"other\"\n[tenants.c]\n{none}\n"
    ));
    pools.reconcile(&Config::parse(&moved, &HashMap::new()).unwrap());
    assert!(Arc::ptr_eq(&pool, &pools.get("primary").unwrap()));
    assert_eq!(pool.tenants_tracked(), 0);
    assert!(matches!(pool.choose("a", now, &NONE), Choice::Use { .. }));
}
