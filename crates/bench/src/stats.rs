//! Latency statistics of the bench: nearest-rank percentiles over a sample.
//!
//! INVARIANT: pure functions, no clock; an empty sample gives `None`, never a made-up zero.

use std::time::Duration;

use serde::Serialize;

/// p50/p90/p99/max of a sample, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The nearest-rank percentile `p` (0 < p <= 100) of an ascending sample: the smallest
/// value with at least `p` % of the sample at or below it.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Sorts the sample and summarises it; `None` when it is empty.
pub fn summarize(mut sample: Vec<Duration>) -> Option<Summary> {
    sample.sort_unstable();
    let ms = |p: f64| percentile(&sample, p).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let max = sample.last()?.as_secs_f64() * 1000.0;
    Some(Summary {
        count: sample.len(),
        p50_ms: ms(50.0),
        p90_ms: ms(90.0),
        p99_ms: ms(99.0),
        max_ms: max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|v| Duration::from_millis(*v)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sample = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&sample, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&sample, 90.0), Some(Duration::from_millis(90)));
        assert_eq!(percentile(&sample, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&sample, 100.0), Some(Duration::from_millis(100)));
        // Ten values: p99 is the largest, p50 the fifth.
        let ten = ms(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(percentile(&ten, 99.0), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&ten, 50.0), Some(Duration::from_millis(5)));
        assert_eq!(percentile(&ten, 0.1), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summary_sorts_first() {
        let summary = summarize(ms(&[30, 10, 20, 40])).expect("non-empty");
        assert_eq!(summary.count, 4);
        assert_eq!(summary.p50_ms, 20.0);
        assert_eq!(summary.p90_ms, 40.0);
        assert_eq!(summary.max_ms, 40.0);
        assert_eq!(summarize(Vec::new()), None);
    }
}
