//! Medians, spreads and ratios of repeated measurements.

use serde::Serialize;

/// Several runs of one measurement, summarised.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Every run, in the order they ran.
    pub runs: Vec<f64>,
}

impl Summary {
    /// `None` when there are no runs.
    pub(crate) fn of(runs: &[f64]) -> Option<Summary> {
        let mut sorted = runs.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = median_of_sorted(&sorted)?;
        Some(Summary {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            runs: runs.to_vec(),
        })
    }

    /// Half the min-max range as a percentage of the median: how far runs strayed.
    pub(crate) fn spread_percent(&self) -> f64 {
        if self.median == 0.0 {
            return 0.0;
        }
        (self.max - self.min) / 2.0 / self.median * 100.0
    }
}

fn median_of_sorted(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// `value / base`, or `None` when the base is not a positive number.
pub(crate) fn ratio(value: f64, base: f64) -> Option<f64> {
    (base > 0.0 && base.is_finite() && value.is_finite()).then(|| value / base)
}

/// Each run's `values[i] / bases[i]`, summarised, over the runs where both were measured:
/// cases measured back to back in one run share the machine's speed at that moment, so
/// their ratio moves less than the ratio of two medians taken minutes apart.
pub(crate) fn paired_ratios(values: &[Option<f64>], bases: &[Option<f64>]) -> Option<Summary> {
    let ratios: Vec<f64> = values
        .iter()
        .zip(bases)
        .filter_map(|(value, base)| ratio((*value)?, (*base)?))
        .collect();
    Summary::of(&ratios)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An odd count takes the middle run, whatever order the runs came in.
    #[test]
    fn median_of_odd_count() {
        let summary = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!(summary.median, 3.0);
        assert_eq!((summary.min, summary.max), (1.0, 5.0));
        assert_eq!(summary.runs, vec![5.0, 1.0, 3.0]);
    }

    /// An even count averages the two middle runs.
    #[test]
    fn median_of_even_count() {
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 10.0]).unwrap().median, 3.0);
    }

    /// No runs, no summary.
    #[test]
    fn empty_has_no_summary() {
        assert_eq!(Summary::of(&[]), None);
    }

    /// The spread is half the range relative to the median.
    #[test]
    fn spread_is_half_range_over_median() {
        let summary = Summary::of(&[90.0, 100.0, 110.0]).unwrap();
        assert!((summary.spread_percent() - 10.0).abs() < 1e-9);
    }

    /// Ratios against zero or non-finite bases are refused.
    #[test]
    fn ratio_needs_positive_base() {
        assert_eq!(ratio(6.0, 3.0), Some(2.0));
        assert_eq!(ratio(6.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 3.0), None);
    }

    /// Ratios are taken run by run, skipping runs where either side is missing: a drift that
    /// slows both sides of one run leaves its ratio alone.
    #[test]
    fn paired_ratios_pair_runs() {
        let values = [Some(90.0), None, Some(45.0), Some(99.0)];
        let bases = [Some(100.0), Some(80.0), Some(50.0), None];
        let paired = paired_ratios(&values, &bases).unwrap();
        assert_eq!(paired.runs, vec![0.9, 0.9]);
        assert_eq!(paired_ratios(&[None], &[Some(1.0)]), None);
    }
}
