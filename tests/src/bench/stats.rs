//! The statistics every benchmark reports, computed in one place: medians
//! and percentiles (linear interpolation between closest ranks, numpy's
//! default, as the bash scripts' jq did), ratios and paired ratios.

use serde::Serialize;

/// Summary of the measured (non-missing) values of one quantity.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stats {
    pub n: usize,
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

impl Stats {
    /// The summary of the values that are there; `None` when none is.
    pub fn of(values: impl IntoIterator<Item = Option<f64>>) -> Option<Stats> {
        let v = finite_sorted(values)?;
        let n = v.len();
        Some(Stats {
            n,
            median: round(percentile_sorted(&v, 0.5), 3),
            p10: round(percentile_sorted(&v, 0.1), 3),
            p90: round(percentile_sorted(&v, 0.9), 3),
            min: v[0],
            max: v[n - 1],
            mean: round(v.iter().sum::<f64>() / n as f64, 3),
        })
    }
}

/// The median of an optional summary, for the many "median or nothing" reads.
pub fn median(s: &Option<Stats>) -> Option<f64> {
    s.as_ref().map(|s| s.median)
}

/// Percentile `q` (0..=1) of sorted, non-empty `v`.
fn percentile_sorted(v: &[f64], q: f64) -> f64 {
    let h = (v.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    v[lo] + (h - lo as f64) * (v[hi] - v[lo])
}

/// Percentile `q` of the values that are there.
pub fn percentile(values: impl IntoIterator<Item = Option<f64>>, q: f64) -> Option<f64> {
    finite_sorted(values).map(|v| percentile_sorted(&v, q))
}

/// The finite values that are there, sorted; `None` when there are none.
fn finite_sorted(values: impl IntoIterator<Item = Option<f64>>) -> Option<Vec<f64>> {
    let mut v: Vec<f64> = values
        .into_iter()
        .flatten()
        .filter(|x| x.is_finite())
        .collect();
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then_some(v)
}

/// `a / b` to 3 decimals; `None` if either is missing or `b` is 0.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(round(a / b, 3)),
        _ => None,
    }
}

/// The median of `a / b` over pairs measured side by side (same run): robust
/// to load that drifts over the benchmark, unlike the ratio of the medians.
pub fn paired_median(pairs: impl IntoIterator<Item = (Option<f64>, Option<f64>)>) -> Option<f64> {
    percentile(pairs.into_iter().map(|(a, b)| ratio(a, b)), 0.5).map(|m| round(m, 3))
}

/// `x` rounded to `decimals` places.
pub fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let s = Stats::of([1.0, 2.0, 3.0, 4.0].map(Some)).unwrap();
        assert_eq!(s.n, 4);
        assert_eq!(s.median, 2.5);
        assert_eq!(s.p10, 1.3);
        assert_eq!(s.p90, 3.7);
        assert_eq!((s.min, s.max, s.mean), (1.0, 4.0, 2.5));
    }

    #[test]
    fn missing_values_are_left_out() {
        let s = Stats::of([Some(5.0), None, Some(1.0), Some(3.0)]).unwrap();
        assert_eq!((s.n, s.median), (3, 3.0));
        assert_eq!(Stats::of([None, None]), None);
        assert_eq!(median(&None), None);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(1.0), Some(3.0)), Some(0.333));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        let pairs = [
            (Some(2.0), Some(1.0)),
            (Some(3.0), Some(1.0)),
            (None, Some(1.0)),
            (Some(1.0), Some(1.0)),
        ];
        assert_eq!(paired_median(pairs), Some(2.0));
    }
}
