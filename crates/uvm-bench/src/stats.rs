//! Order statistics over timing samples.

use serde::Serialize;
use std::time::Duration;

/// Median of `xs` (mean of the two middle values for an even count); `None` when empty.
pub fn median(xs: &[f64]) -> Option<f64> {
    let s = sorted(xs)?;
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// The `p`-th percentile (0 < p <= 100) by the nearest-rank method; `None` when empty.
pub fn percentile(xs: &[f64], p: f64) -> Option<f64> {
    let s = sorted(xs)?;
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    Some(s[rank.clamp(1, s.len()) - 1])
}

/// `ours / baseline`, or `None` when either side is missing or the baseline is not positive.
pub fn ratio(ours: Option<f64>, baseline: Option<f64>) -> Option<f64> {
    match (ours, baseline) {
        (Some(o), Some(b)) if b > 0.0 && o.is_finite() => Some(o / b),
        _ => None,
    }
}

fn sorted(xs: &[f64]) -> Option<Vec<f64>> {
    if xs.is_empty() {
        return None;
    }
    let mut s = xs.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    Some(s)
}

/// Median, p90, min and max of a set of samples (milliseconds unless said otherwise).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Median.
    pub median: Option<f64>,
    /// 90th percentile (nearest rank).
    pub p90: Option<f64>,
    /// Smallest sample.
    pub min: Option<f64>,
    /// Largest sample.
    pub max: Option<f64>,
}

impl Summary {
    /// Summarizes `xs`.
    pub fn of(xs: &[f64]) -> Self {
        let s = sorted(xs).unwrap_or_default();
        Summary {
            n: xs.len(),
            median: median(xs),
            p90: percentile(xs, 90.0),
            min: s.first().copied(),
            max: s.last().copied(),
        }
    }
}

/// A duration in milliseconds, as f64.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn p90_nearest_rank() {
        let xs: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&xs, 90.0), Some(9.0));
        assert_eq!(percentile(&xs, 100.0), Some(10.0));
        assert_eq!(percentile(&[5.0, 1.0, 3.0], 90.0), Some(5.0));
        assert_eq!(percentile(&[2.0], 90.0), Some(2.0));
        assert_eq!(percentile(&[], 90.0), None);
        let xs: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&xs, 90.0), Some(18.0));
    }

    #[test]
    fn ratio_guards() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
    }

    #[test]
    fn summary_fields() {
        let s = Summary::of(&[10.0, 30.0, 20.0]);
        assert_eq!(
            (s.n, s.median, s.min, s.max),
            (3, Some(20.0), Some(10.0), Some(30.0))
        );
        assert_eq!(Summary::of(&[]).median, None);
    }
}
