//! Beside the flow (metrics): the recent window each tenant shows on the status page.
//!
//! Beside the flow (DESIGN.md, "Admin endpoints"): the recent window a tenant shows.
//!
//! Outcomes per second over the last minute and the last upstream handshake times, both
//! fixed-size; `/api/tenants` and the status page show them as a [`RecentWindow`].

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::stats::quantile;

/// The status page's per-minute column an outcome counts in.
#[derive(Debug, Clone, Copy)]
pub(super) enum Class {
    Admitted = 0,
    Queued = 1,
    Rejected = 2,
}

/// Seconds of per-second outcome counts kept.
const MINUTE: usize = 60;
/// Upstream handshake times kept for the recent quantiles.
const HANDSHAKES_KEPT: usize = 512;
/// Oldest handshake time used for the recent quantiles.
const HANDSHAKE_WINDOW: Duration = Duration::from_secs(300);

/// Fixed-size recent history of one tenant.
#[derive(Debug)]
pub(super) struct Recent {
    epoch: Instant,
    /// Per second (slot = second % 60): (second, [admitted, queued, rejected]).
    seconds: [(u64, [u32; 3]); MINUTE],
    /// (second after `epoch`, handshake time in seconds): 8 bytes each.
    handshakes: VecDeque<(u32, f32)>,
}

impl Default for Recent {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            seconds: [(u64::MAX, [0; 3]); MINUTE],
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

impl Recent {
    fn second(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    pub(super) fn count(&mut self, class: Class) {
        let now = self.second();
        let slot = &mut self.seconds[(now % MINUTE as u64) as usize];
        if slot.0 != now {
            *slot = (now, [0; 3]);
        }
        slot.1[class as usize] += 1;
    }

    pub(super) fn handshake(&mut self, took: Duration) {
        if self.handshakes.len() == HANDSHAKES_KEPT {
            self.handshakes.pop_front();
        }
        let second = u32::try_from(self.second()).unwrap_or(u32::MAX);
        self.handshakes.push_back((second, took.as_secs_f32()));
    }

    pub(super) fn window(&self) -> RecentWindow {
        let now = self.second();
        let mut sums = [0u32; 3];
        for (second, counts) in &self.seconds {
            if *second != u64::MAX && now.saturating_sub(*second) < MINUTE as u64 {
                for (sum, c) in sums.iter_mut().zip(counts) {
                    *sum += c;
                }
            }
        }
        let cutoff = now.saturating_sub(HANDSHAKE_WINDOW.as_secs());
        let mut times: Vec<f64> = self
            .handshakes
            .iter()
            .filter(|(at, _)| u64::from(*at) >= cutoff)
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
}
