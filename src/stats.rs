//! Beside the flow (a leaf): small statistics that metrics and the tools share.
//!
//! The nearest-rank quantile of the status page's recent windows, `spike`'s latency
//! report and `edge-sim`'s handshake times, and the wall clock in Unix seconds.

use std::time::SystemTime;

/// The `q` quantile (nearest rank) of ascending `sorted` values; `None` when empty.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let n = sorted.len();
    (n > 0).then(|| sorted[((q * n as f64).ceil() as usize).clamp(1, n) - 1])
}

/// Unix time now, in seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_is_the_nearest_rank() {
        assert_eq!(quantile(&[], 0.5), None);
        let v = [0.1, 0.2, 0.3, 4.0];
        assert_eq!(quantile(&v, 0.0), Some(0.1));
        assert_eq!(quantile(&v, 0.5), Some(0.2));
        assert_eq!(quantile(&v, 0.99), Some(4.0));
        assert_eq!(quantile(&v, 1.0), Some(4.0));
    }
}
