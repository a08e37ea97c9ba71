//! Beside the flow (metrics): the recent window and the five-minute history each tenant shows on the status page.
//!
//! Beside the flow (DESIGN.md, "Admin endpoints"): the recent past of a tenant.
//!
//! Per second over the last five minutes: connects admitted (at once, after queueing)
//! and rejected, and the largest queue depth sampled; and the last upstream handshake
//! times. `/api/tenants` and the status page show the last minute's sums and the
//! handshake quantiles as a [`RecentWindow`], and the seconds as a [`History`] (the
//! page's charts).
//!
//! Both are fixed-size, so a tenant's memory is bounded whatever the load: the
//! per-second ring is [`SLOTS`] slots of 20 bytes, 6,020 bytes, allocated with the
//! tenant; the handshake times at most [`HANDSHAKES_KEPT`] of 8 bytes, 4,096 bytes.
//! About 10 KB per tenant in all.
//!
//! The queue depth is sampled without touching the admission hot path: at each
//! connect's outcome (the caller hands in the gauge's value, one atomic read), at each
//! `/api/tenants` read, and once a second by the admin listener
//! ([`super::TenantMetrics::sample_queue_depth`]). A second keeps the largest sample.

use std::collections::VecDeque;
use std::time::Duration;

use serde::ser::Error as _;
use serde::Serialize;
use tokio::time::Instant;

use crate::stats::quantile;

/// The status page's per-minute column an outcome counts in.
#[derive(Debug, Clone, Copy)]
pub(super) enum Class {
    Admitted = 0,
    Queued = 1,
    Rejected = 2,
}

/// Whole seconds of history kept (besides the current one): the charts' five minutes.
pub const HISTORY_SECONDS: usize = 300;
/// Slots of the per-second ring: the whole seconds kept and the current one.
pub(super) const SLOTS: usize = HISTORY_SECONDS + 1;
/// Seconds summed for the per-minute figures (the current one included).
const MINUTE: usize = 60;
/// Upstream handshake times kept for the recent quantiles.
pub(super) const HANDSHAKES_KEPT: usize = 512;
/// Oldest handshake time used for the recent quantiles.
const HANDSHAKE_WINDOW: Duration = Duration::from_secs(300);

/// `Second::at` of a slot never used.
const UNUSED: u32 = u32::MAX;
/// `Second::depth` of a second without a queue depth sample.
const UNSAMPLED: u32 = u32::MAX;

/// One second of one tenant: 20 bytes.
#[derive(Debug, Clone, Copy)]
struct Second {
    /// Whole seconds after `Recent::epoch` this slot counts; [`UNUSED`]: never.
    at: u32,
    /// Connects by [`Class`]: admitted, queued then admitted, rejected.
    counts: [u32; 3],
    /// The largest queue depth sampled in this second; [`UNSAMPLED`]: none.
    depth: u32,
}

const EMPTY: Second = Second {
    at: UNUSED,
    counts: [0; 3],
    depth: UNSAMPLED,
};

/// Fixed-size recent history of one tenant.
#[derive(Debug)]
pub(super) struct Recent {
    epoch: Instant,
    /// Per second, slot `at % SLOTS`.
    seconds: [Second; SLOTS],
    /// (second after `epoch`, handshake time in seconds): 8 bytes each.
    handshakes: VecDeque<(u32, f32)>,
}

impl Default for Recent {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            seconds: [EMPTY; SLOTS],
            handshakes: VecDeque::new(),
        }
    }
}

/// What `/api/tenants` and the status page show of the recent past.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct RecentWindow {
    /// Admitted at once in the last 60 s.
    pub admitted_per_min: u32,
    /// Admitted after queueing in the last 60 s.
    pub queued_per_min: u32,
    /// Refused (any reason) or gone in the last 60 s.
    pub rejected_per_min: u32,
    /// Median upstream handshake over the last 5 minutes (at most the last 512), seconds.
    pub handshake_p50: Option<f64>,
    /// 99th percentile of the same.
    pub handshake_p99: Option<f64>,
    /// Handshakes in that window.
    pub handshakes: usize,
}

/// A tenant's last five minutes, second by second: `history` in `/api/tenants`.
///
/// Each list has [`HISTORY_SECONDS`]` + 1` entries, oldest first: the last [`HISTORY_SECONDS`] whole
/// seconds, then the current second, still counting. Entry `i` counts from
/// `start + i` to `start + i + 1` (Unix seconds). Seconds before sluice (or the tenant)
/// started count 0. The lists are written on one line each, also in the pretty JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct History {
    /// Unix time at which the first entry's second began, seconds.
    pub start: f64,
    /// Seconds per entry (1).
    pub step_s: u32,
    /// Connects admitted in each second, at once or after queueing.
    #[serde(serialize_with = "one_line")]
    pub admitted: Vec<u32>,
    /// Connects refused (any reason), gone while waiting, or closed for a protocol
    /// error, in each second: what the `rejected_per_min` column counts.
    #[serde(serialize_with = "one_line")]
    pub refused: Vec<u32>,
    /// The largest queue depth sampled in each second; `null`: not sampled (sluice
    /// samples once a second while its admin listener runs, and at each connect's
    /// outcome).
    #[serde(serialize_with = "one_line")]
    pub queue_depth: Vec<Option<u32>>,
}

/// A list as one line of compact JSON, so that the pretty `/api/tenants` does not
/// spend a line (and its indentation) on each second.
fn one_line<S: serde::Serializer, T: Serialize>(list: &[T], s: S) -> Result<S::Ok, S::Error> {
    let text = serde_json::to_string(list).map_err(S::Error::custom)?;
    serde_json::value::RawValue::from_string(text)
        .map_err(S::Error::custom)?
        .serialize(s)
}

impl Recent {
    fn second(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(UNUSED - 1)
    }

    /// The current second's slot, emptied first when it held an older second.
    fn slot(&mut self) -> &mut Second {
        let now = self.second();
        let slot = &mut self.seconds[now as usize % SLOTS];
        if slot.at != now {
            *slot = Second { at: now, ..EMPTY };
        }
        slot
    }

    /// Counts one outcome; `depth` is the queue depth at that moment.
    pub(super) fn count(&mut self, class: Class, depth: u32) {
        let slot = self.slot();
        slot.counts[class as usize] += 1;
        slot.depth = max_depth(slot.depth, depth);
    }

    /// Records a queue depth sample in the current second.
    pub(super) fn sample_depth(&mut self, depth: u32) {
        let slot = self.slot();
        slot.depth = max_depth(slot.depth, depth);
    }

    pub(super) fn handshake(&mut self, took: Duration) {
        if self.handshakes.len() == HANDSHAKES_KEPT {
            self.handshakes.pop_front();
        }
        let second = self.second();
        self.handshakes.push_back((second, took.as_secs_f32()));
    }

    /// The slot of `second` if it holds that second.
    fn at(&self, second: u32) -> Option<&Second> {
        let slot = &self.seconds[second as usize % SLOTS];
        (slot.at == second).then_some(slot)
    }

    pub(super) fn window(&self) -> RecentWindow {
        let now = self.second();
        let mut sums = [0u32; 3];
        for second in now.saturating_sub(MINUTE as u32 - 1)..=now {
            if let Some(slot) = self.at(second) {
                for (sum, c) in sums.iter_mut().zip(slot.counts) {
                    *sum += c;
                }
            }
        }
        let cutoff = now.saturating_sub(HANDSHAKE_WINDOW.as_secs() as u32);
        let mut times: Vec<f64> = self
            .handshakes
            .iter()
            .filter(|(at, _)| *at >= cutoff)
            // Kept as f32: back to whole microseconds.
            .map(|(_, d)| (f64::from(*d) * 1e6).round() / 1e6)
            .collect();
        times.sort_by(f64::total_cmp);
        RecentWindow {
            admitted_per_min: sums[0],
            queued_per_min: sums[1],
            rejected_per_min: sums[2],
            handshake_p50: quantile(&times, 0.5),
            handshake_p99: quantile(&times, 0.99),
            handshakes: times.len(),
        }
    }

    /// The last [`SLOTS`] seconds, oldest first; `unix_now` is the wall clock now.
    pub(super) fn history(&self, unix_now: f64) -> History {
        let elapsed = self.epoch.elapsed();
        let now = u32::try_from(elapsed.as_secs()).unwrap_or(UNUSED - 1);
        // The current second began this long ago.
        let into = elapsed.as_secs_f64() - f64::from(now);
        let first = i64::from(now) - (SLOTS as i64 - 1);
        let mut h = History {
            start: unix_now - into - (SLOTS - 1) as f64,
            step_s: 1,
            admitted: Vec::with_capacity(SLOTS),
            refused: Vec::with_capacity(SLOTS),
            queue_depth: Vec::with_capacity(SLOTS),
        };
        for second in first..=i64::from(now) {
            let slot = u32::try_from(second).ok().and_then(|s| self.at(s));
            let slot = slot.unwrap_or(&EMPTY);
            let [admitted, queued, rejected] = slot.counts;
            h.admitted.push(admitted + queued);
            h.refused.push(rejected);
            h.queue_depth
                .push((slot.depth != UNSAMPLED).then_some(slot.depth));
        }
        h
    }
}

fn max_depth(kept: u32, sample: u32) -> u32 {
    if kept == UNSAMPLED {
        sample.min(UNSAMPLED - 1)
    } else {
        kept.max(sample.min(UNSAMPLED - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_is_twenty_bytes() {
        // The module docs state the bytes per tenant.
        assert_eq!(std::mem::size_of::<Second>(), 20);
        assert_eq!(std::mem::size_of::<[Second; SLOTS]>(), 6_020);
        assert_eq!(std::mem::size_of::<(u32, f32)>() * HANDSHAKES_KEPT, 4_096);
    }

    #[tokio::test(start_paused = true)]
    async fn history_keeps_five_minutes_second_by_second() {
        let mut r = Recent::default();
        r.count(Class::Admitted, 0);
        r.count(Class::Admitted, 0);
        r.sample_depth(4);
        tokio::time::advance(Duration::from_millis(1500)).await;
        r.count(Class::Queued, 3);
        r.count(Class::Rejected, 7);
        r.sample_depth(2);
        tokio::time::advance(Duration::from_millis(1000)).await;
        let h = r.history(1_000_000.0);
        assert_eq!(h.admitted.len(), SLOTS);
        assert_eq!(h.refused.len(), SLOTS);
        assert_eq!(h.queue_depth.len(), SLOTS);
        // Now is second 2, half gone: the last entry began 0.5 s ago.
        assert!(
            (h.start - (1_000_000.0 - 0.5 - 300.0)).abs() < 1e-6,
            "{}",
            h.start
        );
        let tail = |v: &[u32]| v[SLOTS - 3..].to_vec();
        assert_eq!(tail(&h.admitted), [2, 1, 0]);
        assert_eq!(tail(&h.refused), [0, 1, 0]);
        assert_eq!(h.queue_depth[SLOTS - 3..], [Some(4), Some(7), None]);
        assert!(h.admitted[..SLOTS - 3].iter().all(|&n| n == 0));
        assert!(h.queue_depth[..SLOTS - 3].iter().all(Option::is_none));

        // 299 seconds on, second 0 is the oldest entry; one more and it is gone.
        tokio::time::advance(Duration::from_secs(298)).await;
        let h = r.history(0.0);
        assert_eq!((h.admitted[0], h.admitted[1]), (2, 1));
        assert_eq!(h.queue_depth[0], Some(4));
        tokio::time::advance(Duration::from_secs(1)).await;
        let h = r.history(0.0);
        assert_eq!((h.admitted[0], h.refused[0]), (1, 1));
        assert_eq!(h.admitted.iter().sum::<u32>(), 1);
        // The slot second 0 used is reused for the current second, counted afresh.
        r.count(Class::Admitted, 0);
        let h = r.history(0.0);
        assert_eq!(h.admitted[SLOTS - 1], 1);
        assert_eq!(h.queue_depth[SLOTS - 1], Some(0));
        assert_eq!(h.admitted.iter().sum::<u32>(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_minute_sums_the_last_sixty_seconds_of_the_ring() {
        let mut r = Recent::default();
        r.count(Class::Admitted, 0);
        tokio::time::advance(Duration::from_secs(59)).await;
        r.count(Class::Rejected, 0);
        assert_eq!(r.window().admitted_per_min, 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        let w = r.window();
        assert_eq!((w.admitted_per_min, w.rejected_per_min), (0, 1));
    }

    #[test]
    fn history_lists_are_one_line_in_pretty_json() {
        let h = History {
            start: 1.5,
            step_s: 1,
            admitted: vec![1, 2],
            refused: vec![0, 3],
            queue_depth: vec![None, Some(4)],
        };
        let text = serde_json::to_string_pretty(&h).unwrap();
        assert!(text.contains("\"admitted\": [1,2]"), "{text}");
        assert!(text.contains("\"queue_depth\": [null,4]"), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["refused"], serde_json::json!([0, 3]));
    }
}
