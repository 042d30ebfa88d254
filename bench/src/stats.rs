//! Latency samples and their percentiles (exact: every sample is kept).
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<u32>);

/// Milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LatencySummary {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Samples {
    pub fn record(&mut self, d: Duration) {
        self.0.push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
    }

    pub fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn summary(&self) -> LatencySummary {
        let mut v = self.0.clone();
        v.sort_unstable();
        let ms = |us: u32| (us as f64 / 10.0).round() / 100.0;
        // Nearest rank.
        let pct = |p: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
            ms(v[rank.clamp(1, v.len()) - 1])
        };
        let mean = if v.is_empty() {
            0.0
        } else {
            let sum: u64 = v.iter().map(|&x| u64::from(x)).sum();
            ((sum as f64 / v.len() as f64) / 10.0).round() / 100.0
        };
        LatencySummary {
            count: v.len(),
            mean,
            p50: pct(50.0),
            p90: pct(90.0),
            p99: pct(99.0),
            max: v.last().map(|&x| ms(x)).unwrap_or(0.0),
        }
    }
}

impl LatencySummary {
    pub fn line(&self) -> String {
        format!(
            "p50 {:.2} | p90 {:.2} | p99 {:.2} | max {:.2} | mean {:.2} ms  ({} samples)",
            self.p50, self.p90, self.p99, self.max, self.mean, self.count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s = Samples::default();
        for ms in 1..=100 {
            s.record(Duration::from_millis(ms));
        }
        let sum = s.summary();
        assert_eq!(sum.count, 100);
        assert_eq!(sum.p50, 50.0);
        assert_eq!(sum.p90, 90.0);
        assert_eq!(sum.p99, 99.0);
        assert_eq!(sum.max, 100.0);
        assert_eq!(sum.mean, 50.5);
        assert_eq!(Samples::default().summary().p99, 0.0);
    }
}
