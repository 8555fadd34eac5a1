//! The budgets, checked against a bench's results. These are benchmark output, not
//! tests: a missed budget is printed, never a failure.

use serde::Serialize;

use super::{
    micro::{CaseResult, MicroResult},
    stats::Summary,
};

#[derive(Debug, Serialize)]
pub(crate) struct Verdict {
    pub budget: String,
    pub measured: String,
    pub met: Option<bool>,
}

fn case<'a>(result: &'a MicroResult, key: &str) -> Option<&'a CaseResult> {
    result.cases.iter().find(|c| c.case == key)
}

fn summary<'a>(result: &'a MicroResult, key: &str) -> Option<&'a Summary> {
    case(result, key)?.ns_per_iter.as_ref()
}

/// Extra nanoseconds per iteration over untraced.
fn overhead(result: &MicroResult, key: &str) -> Option<f64> {
    Some(summary(result, key)?.median - summary(result, "untraced")?.median)
}

/// Followed overhead over the empty programs' overhead (the budget: at most 2).
pub(crate) fn floor_multiple(result: &MicroResult) -> Option<f64> {
    let floor = overhead(result, "empty_bpf_floor")?;
    (floor > 0.0).then(|| overhead(result, "tracer_followed").map(|o| o / floor))?
}

/// bpftrace-with-ustack overhead over the tracer's (the budget: at least 3). `None` when
/// either is missing or not above untraced (noise then decides, not the tools).
pub(crate) fn bpftrace_multiple(result: &MicroResult) -> Option<f64> {
    let ours = overhead(result, "tracer_followed")?;
    let theirs = overhead(result, "bpftrace_map_ustack")?;
    (ours > 0.0 && theirs > 0.0).then(|| theirs / ours)
}

/// Whether the other-process runs are within the noise of the untraced ones: their medians
/// differ by no more than the wider of the two spreads (half the min-max range).
pub(crate) fn unfollowed_within_noise(result: &MicroResult) -> Option<(f64, f64, bool)> {
    let base = summary(result, "untraced")?;
    let other = summary(result, "tracer_other_process")?;
    let difference = (other.median / base.median - 1.0) * 100.0;
    let noise = base.spread_percent().max(other.spread_percent());
    Some((difference, noise, difference.abs() <= noise))
}

pub(crate) fn check(micros: &[MicroResult], nginx_ratio: Option<f64>) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    for result in micros {
        let name = result.description;
        verdicts.push(match floor_multiple(result) {
            Some(m) => Verdict {
                budget: format!("{name}: overhead within 2x of the empty-program floor"),
                measured: format!("{m:.2}x the floor's overhead"),
                met: Some(m <= 2.0),
            },
            None => Verdict {
                budget: format!("{name}: overhead within 2x of the empty-program floor"),
                measured: "floor not measured (or no overhead over untraced)".to_owned(),
                met: None,
            },
        });
        verdicts.push(match unfollowed_within_noise(result) {
            Some((difference, noise, met)) => Verdict {
                budget: format!("{name}: unfollowed processes within noise of untraced"),
                measured: format!("{difference:+.1}% (noise ±{noise:.1}%)"),
                met: Some(met),
            },
            None => Verdict {
                budget: format!("{name}: unfollowed processes within noise of untraced"),
                measured: "not measured".to_owned(),
                met: None,
            },
        });
        verdicts.push(match bpftrace_multiple(result) {
            Some(m) => Verdict {
                budget: format!("{name}: at least 3x cheaper than bpftrace with ustack"),
                measured: format!("bpftrace's overhead is {m:.2}x ours"),
                met: Some(m >= 3.0),
            },
            None => Verdict {
                budget: format!("{name}: at least 3x cheaper than bpftrace with ustack"),
                measured: "bpftrace not measured, or no slower than untraced".to_owned(),
                met: None,
            },
        });
    }
    verdicts.push(Verdict {
        budget: "nginx req/s within 3% of untraced".to_owned(),
        measured: nginx_ratio.map_or_else(
            || "not measured".to_owned(),
            |r| format!("{:+.1}%", (r - 1.0) * 100.0),
        ),
        met: nginx_ratio.map(|r| r >= 0.97),
    });
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(medians: &[(&'static str, &[f64])]) -> MicroResult {
        MicroResult {
            workload: "open",
            description: "open+close /dev/null",
            iterations: 1,
            cases: medians
                .iter()
                .map(|(key, runs)| CaseResult {
                    case: key,
                    label: key,
                    ns_per_iter: Summary::of(runs),
                    ratio_to_untraced: None,
                    unavailable: None,
                    lost_events: None,
                    false_leaks: None,
                })
                .collect(),
            attach_times_s: Vec::new(),
        }
    }

    /// Overheads are measured above untraced, not as totals.
    #[test]
    fn multiples_compare_overheads() {
        let r = result(&[
            ("untraced", &[3000.0]),
            ("tracer_followed", &[6000.0]),
            ("empty_bpf_floor", &[4500.0]),
            ("bpftrace_map_ustack", &[15000.0]),
        ]);
        assert_eq!(floor_multiple(&r), Some(2.0));
        assert_eq!(bpftrace_multiple(&r), Some(4.0));
    }

    /// A missing comparison, or one lost in noise, gives no multiple rather than a made-up one.
    #[test]
    fn missing_cases_give_none() {
        let noisy = result(&[
            ("untraced", &[3000.0]),
            ("tracer_followed", &[6000.0]),
            ("bpftrace_map_ustack", &[2500.0]),
        ]);
        assert_eq!(bpftrace_multiple(&noisy), None);
        let r = result(&[("untraced", &[3000.0]), ("tracer_followed", &[6000.0])]);
        assert_eq!(floor_multiple(&r), None);
        assert_eq!(bpftrace_multiple(&r), None);
        assert!(unfollowed_within_noise(&r).is_none());
    }

    /// A difference inside the runs' spread is noise; one outside it is not.
    #[test]
    fn noise_is_the_wider_spread() {
        let quiet = result(&[
            ("untraced", &[3000.0, 3100.0, 3200.0]),
            ("tracer_other_process", &[3050.0, 3150.0, 3250.0]),
        ]);
        assert!(unfollowed_within_noise(&quiet).unwrap().2);
        let slower = result(&[
            ("untraced", &[3000.0, 3010.0, 3020.0]),
            ("tracer_other_process", &[4000.0, 4010.0, 4020.0]),
        ]);
        assert!(!unfollowed_within_noise(&slower).unwrap().2);
    }
}
