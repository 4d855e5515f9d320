//! Summaries of the measurements, and their formatting.

use std::time::Duration;

/// Latency percentiles of a sample, by the nearest-rank method: the smallest value that at
/// least `p` percent of the sample is less than or equal to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latencies {
    pub count: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

impl Latencies {
    /// `None` for an empty sample. Sorts `ns` in place.
    pub fn of(ns: &mut [u64]) -> Option<Latencies> {
        ns.sort_unstable();
        let at = |p| percentile(ns, p).map(Duration::from_nanos);
        Some(Latencies {
            count: ns.len(),
            p50: at(50.0)?,
            p90: at(90.0)?,
            p99: at(99.0)?,
            p999: at(99.9)?,
            max: Duration::from_nanos(*ns.last()?),
        })
    }
}

/// The nearest-rank `p`th percentile of an ascending slice.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

pub fn ms(duration: Duration) -> String {
    format!("{:.3} ms", duration.as_secs_f64() * 1e3)
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// A count with thousands separators, for the eye.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&hundred, 50.0), Some(50));
        assert_eq!(percentile(&hundred, 99.0), Some(99));
        assert_eq!(percentile(&hundred, 99.9), Some(100));
        assert_eq!(percentile(&hundred, 100.0), Some(100));
        assert_eq!(percentile(&hundred, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&hundred, 101.0), None);
        // Four values: the 50th percentile is the second, not an average.
        assert_eq!(percentile(&[10, 20, 30, 40], 50.0), Some(20));
    }

    #[test]
    fn latencies_sort_their_sample() {
        let mut ns = vec![5_000, 1_000, 3_000, 2_000, 4_000];
        let latencies = Latencies::of(&mut ns).expect("not empty");
        assert_eq!(latencies.count, 5);
        assert_eq!(latencies.p50, Duration::from_nanos(3_000));
        assert_eq!(latencies.p99, Duration::from_nanos(5_000));
        assert_eq!(latencies.max, Duration::from_nanos(5_000));
        assert_eq!(Latencies::of(&mut []), None);
    }

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
    }
}
