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

/// A shadow handshake is taken whatever the bucket holds and says when an enforced one
/// would have gone; the debt it leaves is at most one burst beyond empty.
#[tokio::test(start_paused = true)]
async fn forced_takes_say_when_they_would_have_gone_and_leave_at_most_a_burst_of_debt() {
    let t = Tokens::new(10.0, 3);
    let start = Instant::now();
    let interval = Duration::from_millis(100);
    let ready: Vec<Duration> = (0..6).map(|_| t.force_take(start) - start).collect();
    assert_eq!(
        ready,
        [0, 0, 0, 1, 2, 3].map(|k| interval * k),
        "the burst at once, then one interval apart"
    );
    // A storm of a thousand more: the debt stops at one burst past empty.
    for _ in 0..1000 {
        let _ = t.force_take(start);
    }
    let next = t.try_take(start).unwrap_err();
    assert_eq!(
        next - start,
        interval * 3,
        "one burst of intervals, not 1000"
    );
    // Enforced clients after it are paced from there, not refused for ever.
    assert!(t.try_take(next).is_ok());
}

/// A forced slot may go over the cap, says whether it fitted, and is released like any.
#[test]
fn forced_slots_count_over_the_cap() {
    let s = Slots::new(2);
    assert!(s.force_acquire());
    assert!(s.force_acquire());
    assert!(!s.force_acquire());
    assert_eq!(s.live(), 3);
    assert!(!s.try_acquire(), "over the cap: an enforced client waits");
    s.release();
    s.release();
    assert!(s.try_acquire());
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

/// Two threads take and give back slots as fast as they can with the cap binding: the
/// slots held never exceed the cap, a slot taken over the cap and given back is not
/// counted as a release, and the count ends at zero.
#[test]
fn racing_takes_over_the_cap_never_hold_more_than_the_cap() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let s = std::sync::Arc::new(Slots::new(3));
    let holding = std::sync::Arc::new(AtomicU32::new(0));
    let taken = std::sync::Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (s, holding, taken) = (s.clone(), holding.clone(), taken.clone());
            std::thread::spawn(move || {
                let mut mine = 0;
                for i in 0..200_000u32 {
                    if s.try_acquire() {
                        let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                        assert!(now <= 3, "{now} slots held with a cap of 3");
                        taken.fetch_add(1, Ordering::Relaxed);
                        mine += 1;
                    }
                    // Keep some held so that the cap binds, give them back now and then.
                    if mine > 0 && (mine == 2 || i % 3 == 0) {
                        holding.fetch_sub(1, Ordering::SeqCst);
                        s.release();
                        mine -= 1;
                    }
                }
                for _ in 0..mine {
                    holding.fetch_sub(1, Ordering::SeqCst);
                    s.release();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(s.live(), 0);
    assert_eq!(
        releases(s.state.load(Ordering::SeqCst)),
        taken.load(Ordering::SeqCst),
        "every slot given back after a take over the cap was not a release"
    );
}

/// The task waiting for a slot is not left waiting while one is free: attempts over the
/// cap from other threads (each one's count one too high for a moment) race its retries,
/// and a slot released among them reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiting_task_gets_a_slot_freed_among_failed_attempts() {
    let s = std::sync::Arc::new(Slots::new(1));
    for _ in 0..200 {
        assert!(s.try_acquire());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hammer = {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Mostly over the cap; a slot freed before the waiter wakes may
                    // come here first, and goes back at once.
                    if s.try_acquire() {
                        s.release();
                    }
                }
            })
        };
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.acquire().await })
        };
        tokio::task::yield_now().await;
        s.release();
        let got = tokio::time::timeout(Duration::from_secs(10), waiter).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        hammer.join().unwrap();
        got.expect("the waiting task got no slot though one was free")
            .unwrap();
        s.release();
    }
}
