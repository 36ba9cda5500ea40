//! Latency of one stage of the media path, kept per shard in an hdrhistogram (1 us
//! to 60 s, 2 significant digits): the source of the percentiles `/health` reports
//! and of the matching Prometheus histogram.
//!
//! Owns: [`Stage`] (a locked histogram one shard's sessions record into) and
//! [`Summary`] (count and percentiles of one or more merged stages). Recording is a
//! short uncontended lock on the control runtime (the provider sessions of one
//! shard); the shards themselves never touch a [`Stage`].
//!
//! Must not: allocate per sample (the histogram is sized once, at creation), or
//! hold the lock across anything but one increment or one copy.

#![forbid(unsafe_code)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Highest value a stage tracks, us (longer samples are clamped to it).
pub const MAX_US: u64 = 60_000_000;

/// Significant digits kept (1% resolution).
const SIGFIG: u8 = 2;

/// One stage's samples on one shard, in microseconds.
#[derive(Debug)]
pub struct Stage {
    hist: Mutex<Histogram<u64>>,
}

impl Default for Stage {
    fn default() -> Self {
        Stage::new()
    }
}

impl Stage {
    /// An empty stage.
    pub fn new() -> Stage {
        Stage {
            hist: Mutex::new(empty()),
        }
    }

    /// Adds one sample.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros())
            .unwrap_or(MAX_US)
            .clamp(1, MAX_US);
        let mut h = self.hist.lock().unwrap_or_else(|p| p.into_inner());
        // In range by the clamp, so this cannot fail or grow the histogram.
        let _ = h.record(us);
    }

    /// Adds the time from `at` to now.
    pub fn record_since(&self, at: Instant) {
        self.record(at.elapsed());
    }

    /// Adds this stage's samples into `into` (same bounds: never allocates).
    pub fn merge_into(&self, into: &mut Histogram<u64>) {
        let h = self.hist.lock().unwrap_or_else(|p| p.into_inner());
        let _ = into.add(&*h);
    }
}

/// A histogram with a [`Stage`]'s bounds, for merging stages into.
pub fn empty() -> Histogram<u64> {
    // 1..=MAX_US with 2 digits is a valid configuration: cannot fail.
    Histogram::new_with_bounds(1, MAX_US, SIGFIG).unwrap_or_else(|_| {
        Histogram::new(SIGFIG).unwrap_or_else(|_| unreachable!("2 digits is valid"))
    })
}

/// Count and percentiles of a stage, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Largest sample, ms.
    pub max_ms: f64,
}

impl Summary {
    /// The summary of `h` (all zero when empty).
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Summary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }

    /// As JSON for `/health` (ms rounded to 3 decimals, i.e. us).
    pub fn to_json(&self) -> serde_json::Value {
        let r = |v: f64| (v * 1000.0).round() / 1000.0;
        serde_json::json!({
            "count": self.count,
            "p50_ms": r(self.p50_ms),
            "p99_ms": r(self.p99_ms),
            "p999_ms": r(self.p999_ms),
            "max_ms": r(self.max_ms),
        })
    }
}

/// Non-cumulative counts of `h` per upper bound in `bounds_s` (seconds) plus one
/// for "above", and the sum in seconds: the shape
/// [`super::metrics::Exposition::histogram`] takes.
pub fn buckets(h: &Histogram<u64>, bounds_s: &[f64]) -> (Vec<u64>, f64) {
    let mut counts = vec![0u64; bounds_s.len() + 1];
    let mut sum_us = 0f64;
    for v in h.iter_recorded() {
        let us = v.value_iterated_to();
        let n = v.count_at_value();
        sum_us += us as f64 * n as f64;
        let s = us as f64 / 1e6;
        let i = bounds_s
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(bounds_s.len());
        counts[i] += n;
    }
    (counts, sum_us / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_samples() {
        let s = Stage::new();
        for us in 1..=1000u64 {
            s.record(Duration::from_micros(us * 10));
        }
        let mut h = empty();
        s.merge_into(&mut h);
        let sum = Summary::of(&h);
        assert_eq!(sum.count, 1000);
        // 2 significant digits: within 1%.
        assert!((sum.p50_ms - 5.0).abs() <= 0.05, "{sum:?}");
        assert!((sum.p99_ms - 9.9).abs() <= 0.1, "{sum:?}");
        assert!((sum.max_ms - 10.0).abs() <= 0.1, "{sum:?}");
    }

    #[test]
    fn out_of_range_samples_are_clamped_not_lost() {
        let s = Stage::new();
        s.record(Duration::ZERO);
        s.record(Duration::from_secs(3600));
        let mut h = empty();
        s.merge_into(&mut h);
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= MAX_US);
    }

    #[test]
    fn merging_shards_adds_counts() {
        let a = Stage::new();
        let b = Stage::new();
        a.record(Duration::from_micros(100));
        b.record(Duration::from_micros(300));
        b.record(Duration::from_micros(300));
        let mut h = empty();
        a.merge_into(&mut h);
        b.merge_into(&mut h);
        assert_eq!(h.len(), 3);
        assert!(Summary::of(&h).p50_ms > 0.29);
    }

    #[test]
    fn buckets_split_by_bound_with_an_above_bucket() {
        let s = Stage::new();
        s.record(Duration::from_micros(400));
        s.record(Duration::from_micros(900));
        s.record(Duration::from_millis(30));
        let mut h = empty();
        s.merge_into(&mut h);
        let (counts, sum) = buckets(&h, &[0.0005, 0.001, 0.01]);
        assert_eq!(counts, vec![1, 1, 0, 1]);
        assert!((sum - 0.0313).abs() < 0.001, "{sum}");
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(Summary::of(&empty()), Summary::default());
    }
}
