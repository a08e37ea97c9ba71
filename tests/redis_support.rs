//! The test helper `support::Redis` itself: the `redis-server` it starts has persistence
//! off, stops for good, restarts empty on the same port, and is gone after a drop.
//! Skipped (loudly) without `redis-server` on `PATH`, failed under CI.

mod support;

use redis::Value;
use support::Redis;

fn text(value: &Value) -> String {
    redis::from_redis_value_ref(value).expect("a text reply")
}

#[test]
fn the_test_redis_starts_stops_and_restarts_empty() {
    let Some(mut server) = Redis::start() else {
        return;
    };
    let port = server.port();
    assert_eq!(server.url(), format!("redis://127.0.0.1:{port}/0"));
    assert_eq!(text(&server.cmd(&["PING"])), "PONG");

    // Persistence off: nothing to load after a restart, nothing written meanwhile.
    let save: Vec<String> =
        redis::from_redis_value(server.cmd(&["CONFIG", "GET", "save"])).unwrap();
    assert_eq!(save, ["save", ""]);
    let aof: Vec<String> =
        redis::from_redis_value(server.cmd(&["CONFIG", "GET", "appendonly"])).unwrap();
    assert_eq!(aof, ["appendonly", "no"]);
    let bind: Vec<String> =
        redis::from_redis_value(server.cmd(&["CONFIG", "GET", "bind"])).unwrap();
    assert_eq!(bind, ["bind", "127.0.0.1"]);

    server.cmd(&["SET", "sluice:probe", "1"]);
    server.cmd(&["SET", "other", "1"]);
    assert_eq!(server.keys("sluice:*"), ["sluice:probe"]);
    assert!(server.info("commandstats").contains("cmdstat_set:calls=2"));
    assert!(server.info("cpu").contains("used_cpu_user:"));

    server.stop();
    assert!(!server.is_running());
    assert!(
        server.try_cmd(&["PING"]).is_err(),
        "a stopped Redis refuses"
    );

    server.restart();
    assert_eq!(server.port(), port);
    assert_eq!(text(&server.cmd(&["PING"])), "PONG");
    assert!(server.keys("*").is_empty(), "restarted empty");

    server.cmd(&["SET", "sluice:probe", "2"]);
    server.flushall();
    assert!(server.keys("*").is_empty(), "flushed");

    // A paused Redis keeps the port but does not answer; resumed, it does again.
    server.pause();
    let started = std::time::Instant::now();
    assert!(
        server.try_cmd(&["PING"]).is_err(),
        "a paused Redis times out"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    server.resume();
    assert_eq!(text(&server.cmd(&["PING"])), "PONG");

    // Dropped: the process is gone (killed and reaped).
    let pid = server.pid().unwrap();
    drop(server);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn two_test_redises_run_side_by_side() {
    let (Some(a), Some(b)) = (Redis::start(), Redis::start()) else {
        return;
    };
    assert_ne!(a.port(), b.port());
    a.cmd(&["SET", "k", "a"]);
    assert!(b.keys("*").is_empty());
}
