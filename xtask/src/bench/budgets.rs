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
    /// Why this verdict may not hold on a quieter machine: the medians and the minimums of
    /// the runs disagree on it, or the machine was busier than its CPUs.
    pub note: Option<String>,
}

/// The two readings of a set of runs a verdict is made on: the median, and the minimum
/// (the run least disturbed by other work). When they disagree on a budget, the runs'
/// spread decides it, not the tracer.
#[derive(Clone, Copy)]
enum Reading {
    Median,
    Min,
}

impl Reading {
    fn of(self, summary: &Summary) -> f64 {
        match self {
            Reading::Median => summary.median,
            Reading::Min => summary.min,
        }
    }
}

fn case<'a>(result: &'a MicroResult, key: &str) -> Option<&'a CaseResult> {
    result.cases.iter().find(|c| c.case == key)
}

fn summary<'a>(result: &'a MicroResult, key: &str) -> Option<&'a Summary> {
    case(result, key)?.ns_per_iter.as_ref()
}

/// Extra nanoseconds per iteration over untraced.
fn overhead_by(result: &MicroResult, key: &str, reading: Reading) -> Option<f64> {
    Some(reading.of(summary(result, key)?) - reading.of(summary(result, "untraced")?))
}

/// Followed overhead over the empty programs' overhead (the budget: at most 1.25).
fn floor_multiple_by(result: &MicroResult, reading: Reading) -> Option<f64> {
    let floor = overhead_by(result, "empty_bpf_floor", reading)?;
    (floor > 0.0).then(|| overhead_by(result, "tracer_followed", reading).map(|o| o / floor))?
}

/// bpftrace-with-ustack overhead over the tracer's (the budget: at least 3). `None` when
/// either is missing or not above untraced (noise then decides, not the tools).
pub(crate) fn bpftrace_multiple(result: &MicroResult) -> Option<f64> {
    let ours = overhead_by(result, "tracer_followed", Reading::Median)?;
    let theirs = overhead_by(result, "bpftrace_map_ustack", Reading::Median)?;
    (ours > 0.0 && theirs > 0.0).then(|| theirs / ours)
}

/// An unfollowed process's time under the tracer over its time under the empty programs
/// (the budget: at most 1.05).
fn unfollowed_over_floor_by(result: &MicroResult, reading: Reading) -> Option<f64> {
    let floor = reading.of(summary(result, "empty_bpf_floor")?);
    let other = reading.of(summary(result, "tracer_other_process")?);
    (floor > 0.0).then(|| other / floor)
}

/// A verdict on `value` (by median) against `met`, noting when the minimums disagree.
fn judged(
    budget: String,
    missing: &str,
    by_median: Option<f64>,
    by_min: Option<f64>,
    met: impl Fn(f64) -> bool,
    show: impl Fn(f64) -> String,
) -> Verdict {
    let Some(value) = by_median else {
        return Verdict {
            budget,
            measured: missing.to_owned(),
            met: None,
            note: None,
        };
    };
    let note = by_min.filter(|&m| met(m) != met(value)).map(|m| {
        format!(
            "by the runs' minimums {}: the spread decides, not the tracer",
            show(m)
        )
    });
    Verdict {
        budget,
        measured: show(value),
        met: Some(met(value)),
        note,
    }
}

/// What the bench measured that the budgets speak of.
pub(crate) struct Measured<'a> {
    pub micros: &'a [MicroResult],
    pub nginx: Option<NginxRatios>,
    /// Per nginx request, the tracer's programs' and the floor's programs' time over the
    /// worker's CPU untraced (`RequestCost`): what the rates' verdict is read beside.
    pub nginx_programs_share: Option<(f64, Option<f64>)>,
    /// Why the whole bench was too noisy to judge, if it was.
    pub too_busy: Option<String>,
}

/// nginx's rates, as the verdict reads them.
#[derive(Clone, Copy)]
pub(crate) struct NginxRatios {
    /// Traced over untraced: the median of the runs' own ratios.
    pub traced: f64,
    /// Traced over untraced by each side's best run.
    pub best: Option<f64>,
    /// The floor over untraced, and the tracer over the floor (medians of the runs' own).
    pub floor: Option<f64>,
    pub over_floor: Option<f64>,
    /// The share of nginx's worker's CPU in programs and tracing hooks by perf's samples,
    /// under the tracer and under the floor (`cpu_share`): `1 - share` bounds the rate
    /// ratio from above.
    pub tracing_share: Option<f64>,
    pub floor_tracing_share: Option<f64>,
}

pub(crate) fn check(measured: &Measured) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    for result in measured.micros {
        let name = result.description;
        verdicts.push(judged(
            format!("{name}: followed overhead within 1.25x of the empty-program floor's"),
            "floor not measured, or not above untraced (noise)",
            floor_multiple_by(result, Reading::Median),
            floor_multiple_by(result, Reading::Min),
            |m| m <= 1.25,
            |m| format!("{m:.2}x the floor's overhead"),
        ));
        verdicts.push(judged(
            format!("{name}: unfollowed processes within 5% of the floor"),
            "not measured",
            unfollowed_over_floor_by(result, Reading::Median),
            unfollowed_over_floor_by(result, Reading::Min),
            |r| r <= 1.05,
            |r| format!("{:+.1}% over the floor", (r - 1.0) * 100.0),
        ));
        verdicts.push(match bpftrace_multiple(result) {
            Some(m) => Verdict {
                budget: format!("{name}: at least 3x cheaper than bpftrace with ustack"),
                measured: format!("bpftrace's overhead is {m:.2}x ours"),
                met: Some(m >= 3.0),
                note: None,
            },
            None => Verdict {
                budget: format!("{name}: at least 3x cheaper than bpftrace with ustack"),
                measured: "bpftrace not measured, or no slower than untraced".to_owned(),
                met: None,
                note: None,
            },
        });
    }
    let mut nginx = judged(
        "nginx: traced req/s at least 0.95x untraced".to_owned(),
        "not measured",
        measured.nginx.map(|n| n.traced),
        measured.nginx.and_then(|n| n.best),
        |r| r >= NGINX_BUDGET,
        |r| format!("{r:.3}x untraced"),
    );
    if let Some(ratios) = measured.nginx {
        for part in nginx_notes(&ratios, &mut nginx.met) {
            nginx.note = Some(match nginx.note.take() {
                Some(note) => format!("{note}; {part}"),
                None => part,
            });
        }
    }
    if let Some((tracer, floor)) = measured.nginx_programs_share {
        let floor = floor.map_or(String::new(), |f| {
            format!(", the floor's {:.1}%", f * 100.0)
        });
        let per_request = format!(
            "per request the tracer's programs took {:.1}% of the worker's untraced CPU{floor}",
            tracer * 100.0
        );
        nginx.note = Some(match nginx.note.take() {
            Some(note) => format!("{note}; {per_request}"),
            None => per_request,
        });
    }
    verdicts.push(nginx);
    if let Some(why) = &measured.too_busy {
        for verdict in &mut verdicts {
            if verdict.met.is_some() {
                let busy = format!("machine too busy to judge ({why})");
                verdict.note = Some(match verdict.note.take() {
                    Some(note) => format!("{note}; {busy}"),
                    None => busy,
                });
            }
        }
    }
    verdicts
}

/// What the nginx verdict is read beside: perf's bound (which turns a verdict the rates' noise
/// passed into a miss when the bound is below the budget), and where the floor stands.
fn nginx_notes(ratios: &NginxRatios, met: &mut Option<bool>) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(share) = ratios.tracing_share {
        let bound = 1.0 - share;
        let floor = ratios.floor_tracing_share.map_or(String::new(), |f| {
            format!(", the floor's {:.1}% (at most {:.3}x)", f * 100.0, 1.0 - f)
        });
        let mut note = format!(
            "by perf's samples programs and hooks took {:.1}% of the worker's CPU, so at most {bound:.3}x untraced{floor}",
            share * 100.0
        );
        if bound < NGINX_BUDGET && *met == Some(true) {
            *met = Some(false);
            note.push_str(": missed, whatever the rates say");
        }
        notes.push(note);
    }
    // The floor by perf's bound where there is one (it repeats), else by its rates.
    let floor_bound = ratios.floor_tracing_share.map(|f| 1.0 - f);
    if let Some(floor) = ratios.floor {
        let beyond = ratios
            .over_floor
            .map_or(String::new(), |o| format!(", the tracer {o:.3}x the floor"));
        let below = if floor_bound.unwrap_or(floor) < NGINX_BUDGET {
            ": the floor alone misses the budget here"
        } else {
            ""
        };
        notes.push(format!(
            "empty programs on the same tracepoints {floor:.3}x untraced{beyond}{below}"
        ));
    }
    notes
}

const NGINX_BUDGET: f64 = 0.95;

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
                    tracer_cores: None,
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
        assert_eq!(floor_multiple_by(&r, Reading::Median), Some(2.0));
        assert_eq!(unfollowed_over_floor_by(&r, Reading::Median), None);
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
        assert_eq!(floor_multiple_by(&r, Reading::Median), None);
        assert_eq!(bpftrace_multiple(&r), None);
        assert!(unfollowed_over_floor_by(&r, Reading::Median).is_none());
    }

    /// A verdict whose medians and minimums disagree says so; a busy machine is noted on
    /// every verdict that was judged.
    #[test]
    fn notes_disagreeing_minimums_and_a_busy_machine() {
        let r = result(&[
            ("untraced", &[3000.0, 2900.0, 3100.0]),
            ("tracer_followed", &[4300.0, 3600.0, 4400.0]),
            ("empty_bpf_floor", &[4000.0, 3500.0, 4100.0]),
            ("tracer_other_process", &[4100.0, 3600.0, 4150.0]),
        ]);
        let measured = Measured {
            micros: std::slice::from_ref(&r),
            nginx: Some(NginxRatios {
                traced: 0.90,
                best: Some(0.97),
                floor: Some(0.93),
                over_floor: Some(0.968),
                tracing_share: None,
                floor_tracing_share: None,
            }),
            nginx_programs_share: Some((0.047, Some(0.012))),
            too_busy: None,
        };
        let verdicts = check(&measured);
        // Medians: 1300 / 1000 = 1.3x (missed); minimums: 700 / 600 = 1.17x (met).
        assert_eq!(verdicts[0].met, Some(false));
        assert!(verdicts[0].note.as_deref().unwrap().contains("1.17x"));
        // Unfollowed: 4100 / 4000 = +2.5% by medians, met either way.
        assert_eq!(
            (verdicts[1].met, verdicts[1].note.is_none()),
            (Some(true), true)
        );
        let nginx = verdicts.last().unwrap();
        assert_eq!(nginx.met, Some(false));
        let note = nginx.note.as_deref().unwrap();
        assert!(note.contains("0.970x"), "{note}");
        assert!(
            note.contains("programs took 4.7% of the worker's untraced CPU, the floor's 1.2%"),
            "{note}"
        );
        assert!(
            note.contains(
                "same tracepoints 0.930x untraced, the tracer 0.968x the floor: the floor alone misses the budget"
            ),
            "{note}"
        );
        // perf's bound turns rates that passed by noise into a miss, and says so.
        let noisy_pass = check(&Measured {
            nginx: Some(NginxRatios {
                traced: 0.97,
                best: Some(0.99),
                floor: Some(0.96),
                over_floor: Some(1.01),
                tracing_share: Some(0.065),
                floor_tracing_share: Some(0.042),
            }),
            ..Measured {
                micros: &[],
                nginx: None,
                nginx_programs_share: None,
                too_busy: None,
            }
        });
        let nginx = noisy_pass.last().unwrap();
        assert_eq!(nginx.met, Some(false));
        let note = nginx.note.as_deref().unwrap();
        assert!(
            note.contains("6.5% of the worker's CPU, so at most 0.935x untraced, the floor's 4.2% (at most 0.958x): missed"),
            "{note}"
        );
        assert!(!note.contains("floor alone misses"), "{note}");
        let busy = check(&Measured {
            too_busy: Some("load 6".to_owned()),
            ..measured
        });
        assert!(
            busy[1]
                .note
                .as_deref()
                .unwrap()
                .contains("too busy to judge (load 6)")
        );
        assert!(busy[2].note.is_none());
    }
}
