//! Step 4 of the flow, admission: unit tests of the in-process slots and tokens.

use super::*;

#[tokio::test(start_paused = true)]
async fn burst_then_one_token_per_interval() {
    let t = Tokens::new(20.0, 5);
    let start = Instant::now();
    for _ in 0..5 {
        assert!(t.try_take(start).is_ok());
    }
    let ready = t.try_take(start).unwrap_err();
    assert_eq!(ready - start, Duration::from_millis(50));
    assert!(t.try_take(ready - Duration::from_millis(1)).is_err());
    assert!(t.try_take(ready).is_ok());
    assert_eq!(t.ready_at() - start, Duration::from_millis(100));
    // Idle long enough, the burst is back, and no more than the burst.
    let later = start + Duration::from_secs(10);
    let taken = (0..10).filter(|_| t.try_take(later).is_ok()).count();
    assert_eq!(taken, 5);
}

#[tokio::test(start_paused = true)]
async fn refund_restores_the_token() {
    let t = Tokens::new(10.0, 1);
    let now = Instant::now();
    let taken = t.try_take(now).unwrap();
    assert!(t.try_take(now).is_err());
    t.refund(taken);
    assert!(t.try_take(now).is_ok());
    // A refund of a token taken long after an idle spell does not bank extra ones.
    let later = now + Duration::from_secs(60);
    let taken = t.try_take(later).unwrap();
    t.refund(taken);
    assert!(t.try_take(later).is_ok());
    assert!(t.try_take(later).is_err());
}

#[tokio::test(start_paused = true)]
async fn a_late_refund_never_lets_more_than_the_burst_through() {
    let t = Tokens::new(10.0, 1);
    let t0 = Instant::now();
    let reserved = t.try_take(t0).unwrap(); // for a client that then leaves
    let t1 = t0 + Duration::from_millis(100);
    let _used = t.try_take(t1).unwrap(); // by the next client
    t.refund(reserved); // too late: dropped
    assert!(t.try_take(t1).is_err(), "burst 1: one handshake at t1");
}

#[tokio::test(start_paused = true)]
async fn the_release_interval_follows_how_fast_sessions_end() {
    let s = Slots::new(10);
    assert_eq!(s.release_interval(), None);
    for _ in 0..3 {
        assert!(s.try_acquire());
    }
    for _ in 0..3 {
        tokio::time::advance(Duration::from_secs(2)).await;
        s.release();
    }
    assert_eq!(s.release_interval(), Some(Duration::from_secs(2)));
    // Nothing ends for a while: the estimate grows with the silence.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(s.release_interval(), Some(Duration::from_secs(12)));
    // A new window: the last one still counts, then it is forgotten.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(s.release_interval(), Some(Duration::from_secs(22)));
    tokio::time::advance(Duration::from_secs(120)).await;
    assert_eq!(s.release_interval(), None);
}

#[test]
fn slots_never_exceed_the_cap() {
    let s = Slots::new(2);
    assert!(s.try_acquire());
    assert!(s.try_acquire());
    assert!(!s.try_acquire());
    s.release();
    assert_eq!(s.live(), 1);
    assert!(s.try_acquire());
}
