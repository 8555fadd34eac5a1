//! The Python part: what the CPython frame walk adds to a followed open+close.
//! bench/py_open_close.py loops over `os.close(os.open("/dev/null"))` five Python frames
//! deep, untraced, under the tracer, and under `tracer --no-python-frames` (the interpreter
//! is not looked for, so the kernel never walks its frames: what a Python process would pay
//! without the walk); the C workload's open+close runs the same three ways beside it. Every
//! traced run attaches with `--pid` to a target waiting on stdin, so the BPF counters
//! (`bpf_stats`) and the tracer's CPU are read around the timed loop alone, after a warm-up
//! that loads symbols. Runs are interleaved.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{
    procstat::cpu_ticks,
    profile::{self, Counters},
    script::{Scripted, c_argv, find_interpreter, python_argv},
    stats::Summary,
    tracer::{self, Attached},
    workload::{self, Workload},
};

/// Iterations of a full run: about a second under the tracer here.
const PY_ITERATIONS: u64 = 200_000;
const C_ITERATIONS: u64 = 300_000;
/// USER_HZ, the unit of /proc/PID/stat's CPU times.
const NS_PER_TICK: f64 = 10_000_000.0;
const STEP: Duration = Duration::from_secs(300);
/// The programs whose cost per run the table shows. `python_walk` has no row of its own:
/// a tail-called program runs inside its caller's bpf_stats accounting (the kernel counts
/// no runs of it), so the walk's time is in `sys_exit_openat`'s.
pub(crate) const PROGRAMS: [&str; 2] = ["sys_exit_openat", "sys_enter_close"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Lang {
    Python,
    C,
}

/// A way of watching the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watch {
    Untraced,
    Frames,
    NoFrames,
    /// `--baseline-tracer` as it is (it may not know `--no-python-frames`).
    Baseline,
}

impl Watch {
    fn key(self) -> &'static str {
        match self {
            Watch::Untraced => "untraced",
            Watch::Frames => "tracer",
            Watch::NoFrames => "tracer_no_python_frames",
            Watch::Baseline => "baseline_tracer",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Watch::Untraced => "untraced",
            Watch::Frames => "tracer (Python frames)",
            Watch::NoFrames => "tracer --no-python-frames",
            Watch::Baseline => "baseline tracer",
        }
    }
}

/// One loop watched one way, over all runs.
#[derive(Debug, Serialize)]
pub(crate) struct CaseResult {
    /// "python" or "c".
    pub program: &'static str,
    pub case: &'static str,
    pub label: &'static str,
    pub ns_per_iter: Option<Summary>,
    /// Median over the untraced median of the same loop.
    pub added_ns_per_iter: Option<f64>,
    /// BPF run time per program run, by program (runs count every process).
    pub bpf_ns_per_run: BTreeMap<String, Summary>,
    /// Program runs per loop iteration (median), by program.
    pub bpf_runs_per_iter: BTreeMap<String, f64>,
    /// All the tracer's programs' run time in the window, per loop iteration.
    pub bpf_ns_per_iter: Option<Summary>,
    /// The tracer process's user+sys CPU per loop iteration.
    pub tracer_cpu_ns_per_iter: Option<Summary>,
    pub lost_events: Option<u64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct PythonResult {
    /// The interpreter the Python loop ran under.
    pub interpreter: Option<String>,
    /// Why the Python loop did not run.
    pub skipped: Option<String>,
    pub python_iterations: u64,
    pub c_iterations: u64,
    pub cases: Vec<CaseResult>,
    /// Per loop ("python", "c"): the tracer with Python frames minus --no-python-frames.
    pub frames_cost: Vec<FramesCost>,
}

/// What capturing Python frames adds per open+close: medians of the tracer's case minus
/// those of `--no-python-frames`, in ns.
#[derive(Debug, PartialEq, Serialize)]
pub(crate) struct FramesCost {
    pub program: &'static str,
    pub loop_ns: f64,
    /// The same over the two cases' fastest runs, the least disturbed on a busy machine.
    pub loop_min_ns: Option<f64>,
    /// `sys_exit_openat` per run (the walk runs inside it).
    pub sys_exit_openat_ns: Option<f64>,
    pub bpf_ns_per_iter: Option<f64>,
    pub tracer_cpu_ns_per_iter: Option<f64>,
}

/// Frames minus no frames, per loop that has both cases.
fn frames_costs(cases: &[CaseResult]) -> Vec<FramesCost> {
    let find = |program: &str, case: Watch| {
        cases
            .iter()
            .find(|c| c.program == program && c.case == case.key())
    };
    let median = |s: &Option<Summary>| s.as_ref().map(|s| s.median);
    let min = |s: &Option<Summary>| s.as_ref().map(|s| s.min);
    let minus = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
    ["python", "c"]
        .into_iter()
        .filter_map(|program| {
            let (on, off) = (
                find(program, Watch::Frames)?,
                find(program, Watch::NoFrames)?,
            );
            let openat = |c: &CaseResult| c.bpf_ns_per_run.get("sys_exit_openat").map(|s| s.median);
            Some(FramesCost {
                program,
                loop_ns: minus(median(&on.ns_per_iter), median(&off.ns_per_iter))?,
                loop_min_ns: minus(min(&on.ns_per_iter), min(&off.ns_per_iter)),
                sys_exit_openat_ns: minus(openat(on), openat(off)),
                bpf_ns_per_iter: minus(median(&on.bpf_ns_per_iter), median(&off.bpf_ns_per_iter)),
                tracer_cpu_ns_per_iter: minus(
                    median(&on.tracer_cpu_ns_per_iter),
                    median(&off.tracer_cpu_ns_per_iter),
                ),
            })
        })
        .collect()
}

/// What one traced run measured around the timed loop.
struct Window {
    /// Per program: (runs, run time in ns).
    programs: Vec<(String, u64, u64)>,
    tracer_cpu_ns: f64,
    lost: u64,
}

/// Samples of one case.
#[derive(Default)]
struct Samples {
    ns_per_iter: Vec<f64>,
    ns_per_run: HashMap<String, Vec<f64>>,
    runs_per_iter: HashMap<String, Vec<f64>>,
    bpf_ns_per_iter: Vec<f64>,
    cpu_ns_per_iter: Vec<f64>,
    lost: Option<u64>,
}

pub(crate) struct Settings<'a> {
    pub tracer: &'a Path,
    pub baseline: Option<&'a Path>,
    pub runs: usize,
    pub scale: f64,
}

/// Runs every case `runs` times, interleaved, with `bpf_stats` on.
pub(crate) fn run(settings: &Settings, workload: &mut Workload) -> Result<PythonResult> {
    let (interpreter, skipped) = match find_interpreter() {
        Ok(python) => (Some(python), None),
        Err(why) => {
            eprintln!("  skipping the Python loop: {why}");
            (None, Some(why))
        }
    };
    let py_n = ((PY_ITERATIONS as f64 * settings.scale) as u64).max(1000);
    let c_n = ((C_ITERATIONS as f64 * settings.scale) as u64).max(1000);
    let mut watches = vec![Watch::Untraced, Watch::Frames, Watch::NoFrames];
    watches.extend(settings.baseline.map(|_| Watch::Baseline));
    let langs: Vec<Lang> = interpreter
        .iter()
        .map(|_| Lang::Python)
        .chain([Lang::C])
        .collect();
    let cases: Vec<(Lang, Watch)> = langs
        .iter()
        .flat_map(|&lang| watches.iter().map(move |&watch| (lang, watch)))
        .collect();
    let mut samples: Vec<Samples> = cases.iter().map(|_| Samples::default()).collect();
    profile::with_bpf_stats(|| {
        for run in 0..settings.runs {
            eprintln!("  python/C open+close run {}/{}", run + 1, settings.runs);
            // The order rotates from run to run, so no case always follows the same one.
            for index in (0..cases.len()).map(|i| (i + run) % cases.len()) {
                let ((lang, watch), samples) = (cases[index], &mut samples[index]);
                let n = if lang == Lang::Python { py_n } else { c_n };
                let result = workload.result_path();
                let argv = match lang {
                    Lang::Python => {
                        python_argv(interpreter.as_deref().unwrap_or(Path::new("")), n, &result)
                    }
                    Lang::C => c_argv(workload, n, &result),
                };
                let tracer = match watch {
                    Watch::Untraced => None,
                    Watch::Frames => Some((settings.tracer, &[][..])),
                    Watch::NoFrames => Some((settings.tracer, &["--no-python-frames"][..])),
                    Watch::Baseline => settings.baseline.map(|bin| (bin, &[][..])),
                };
                let window = run_once(&argv, tracer)
                    .with_context(|| format!("{lang:?} open+close, {}", watch.label()))?;
                let ns = workload::value(&workload::read_result(&result)?, "ns_per_iter")?;
                samples.add(ns, n, window);
            }
        }
        Ok(())
    })?;
    let untraced: HashMap<Lang, f64> = cases
        .iter()
        .zip(&samples)
        .filter(|((_, watch), _)| *watch == Watch::Untraced)
        .filter_map(|(&(lang, _), s)| Some((lang, Summary::of(&s.ns_per_iter)?.median)))
        .collect();
    let cases: Vec<CaseResult> = cases
        .iter()
        .zip(samples)
        .map(|(&(lang, watch), samples)| samples.result(lang, watch, untraced.get(&lang)))
        .collect();
    Ok(PythonResult {
        interpreter: interpreter.map(|p| p.display().to_string()),
        skipped,
        python_iterations: py_n,
        c_iterations: c_n,
        frames_cost: frames_costs(&cases),
        cases,
    })
}

impl Samples {
    fn add(&mut self, ns_per_iter: f64, n: u64, window: Option<Window>) {
        self.ns_per_iter.push(ns_per_iter);
        let Some(window) = window else { return };
        let n = n as f64;
        let mut total_ns = 0;
        for (program, runs, ns) in window.programs {
            total_ns += ns;
            if runs > 0 {
                let per_run = ns as f64 / runs as f64;
                self.ns_per_run
                    .entry(program.clone())
                    .or_default()
                    .push(per_run);
                self.runs_per_iter
                    .entry(program)
                    .or_default()
                    .push(runs as f64 / n);
            }
        }
        self.bpf_ns_per_iter.push(total_ns as f64 / n);
        self.cpu_ns_per_iter.push(window.tracer_cpu_ns / n);
        *self.lost.get_or_insert(0) += window.lost;
    }

    fn result(self, lang: Lang, watch: Watch, untraced: Option<&f64>) -> CaseResult {
        let ns_per_iter = Summary::of(&self.ns_per_iter);
        let summaries = |map: HashMap<String, Vec<f64>>| -> BTreeMap<String, Summary> {
            map.into_iter()
                .filter_map(|(k, v)| Some((k, Summary::of(&v)?)))
                .collect()
        };
        CaseResult {
            program: if lang == Lang::Python { "python" } else { "c" },
            case: watch.key(),
            label: watch.label(),
            added_ns_per_iter: ns_per_iter
                .as_ref()
                .zip(untraced)
                .map(|(s, base)| s.median - base),
            ns_per_iter,
            bpf_ns_per_run: summaries(self.ns_per_run),
            bpf_runs_per_iter: summaries(self.runs_per_iter)
                .into_iter()
                .map(|(k, s)| (k, s.median))
                .collect(),
            bpf_ns_per_iter: Summary::of(&self.bpf_ns_per_iter),
            tracer_cpu_ns_per_iter: Summary::of(&self.cpu_ns_per_iter),
            lost_events: self.lost,
        }
    }
}

/// One run: starts the target, attaches the tracer (if any) while it waits, warms up, and
/// reads the tracer's counters around the timed loop.
fn run_once(argv: &[String], tracer: Option<(&Path, &[&str])>) -> Result<Option<Window>> {
    let mut target = Scripted::spawn(&mut workload::command(argv))?;
    target.wait_line("READY", STEP)?;
    let attached = match tracer {
        Some((bin, extra)) => {
            let mut options = vec!["--json"];
            options.extend(extra);
            Some(Attached::start(bin, target.pid(), &options)?)
        }
        None => None,
    };
    target.send_line()?;
    target.wait_line("WARM", STEP)?;
    let before = match &attached {
        Some(a) => Some((profile::snapshot(a.pid())?, cpu_ticks(a.pid())?)),
        None => None,
    };
    target.send_line()?;
    target.wait_line("DONE", STEP)?;
    let window = match (attached, before) {
        (Some(attached), Some((counters, ticks))) => {
            // Let the tracer drain what the last iterations sent.
            thread::sleep(Duration::from_millis(100));
            let pid = attached.pid();
            let after = profile::snapshot(pid)?;
            let cpu = cpu_ticks(pid)?.saturating_sub(ticks) as f64 * NS_PER_TICK;
            let programs = difference(&counters, &after)
                .into_iter()
                .map(|(id, runs, ns)| (profile::program_name(id), runs, ns))
                .collect();
            let ended = attached.stop()?;
            let facts = tracer::facts(&ended.stdout)?;
            Some(Window {
                programs,
                tracer_cpu_ns: cpu,
                lost: facts.lost,
            })
        }
        _ => None,
    };
    target.finish(STEP)?;
    Ok(window)
}

/// Per program id present in `after`: (id, runs, run time ns) since `before`.
fn difference(
    before: &HashMap<u32, Counters>,
    after: &HashMap<u32, Counters>,
) -> Vec<(u32, u64, u64)> {
    let mut out: Vec<(u32, u64, u64)> = after
        .iter()
        .map(|(&id, a)| {
            let b = before.get(&id).copied().unwrap_or_default();
            (
                id,
                a.run_cnt.saturating_sub(b.run_cnt),
                a.run_time_ns.saturating_sub(b.run_time_ns),
            )
        })
        .collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs and run time are counted since the first snapshot; a program loaded in between
    /// counts from zero.
    #[test]
    fn counts_since_the_first_snapshot() {
        let c = |run_time_ns, run_cnt| Counters {
            run_time_ns,
            run_cnt,
        };
        let before = HashMap::from([(3, c(1000, 10)), (5, c(50, 1))]);
        let after = HashMap::from([(3, c(4000, 40)), (5, c(50, 1)), (9, c(70, 2))]);
        assert_eq!(
            difference(&before, &after),
            vec![(3, 30, 3000), (5, 0, 0), (9, 2, 70)]
        );
    }

    /// Per-run costs skip programs that did not run; the totals per iteration count all.
    #[test]
    fn summarises_a_window_per_iteration() {
        let mut samples = Samples::default();
        let window = Window {
            programs: vec![
                ("sys_exit_openat".into(), 1000, 500_000),
                ("python_walk".into(), 1000, 1_500_000),
                ("sched_process_exit".into(), 0, 0),
            ],
            tracer_cpu_ns: 300_000.0,
            lost: 2,
        };
        samples.add(4000.0, 1000, Some(window));
        samples.add(1500.0, 1000, None);
        let result = samples.result(Lang::Python, Watch::Frames, Some(&1000.0));
        assert_eq!(result.bpf_ns_per_run["sys_exit_openat"].median, 500.0);
        assert_eq!(result.bpf_ns_per_run["python_walk"].median, 1500.0);
        assert!(!result.bpf_ns_per_run.contains_key("sched_process_exit"));
        assert_eq!(result.bpf_runs_per_iter["python_walk"], 1.0);
        assert_eq!(result.bpf_ns_per_iter.unwrap().median, 2000.0);
        assert_eq!(result.tracer_cpu_ns_per_iter.unwrap().median, 300.0);
        assert_eq!(result.added_ns_per_iter, Some(1750.0));
        assert_eq!(result.lost_events, Some(2));
    }

    /// The frames' cost is the tracer's case minus --no-python-frames, per loop that has
    /// both; a loop without them (Python skipped) has none.
    #[test]
    fn frames_cost_is_the_difference_of_medians() {
        let window = |openat_ns: u64, cpu: f64| Window {
            programs: vec![("sys_exit_openat".into(), 100, openat_ns)],
            tracer_cpu_ns: cpu,
            lost: 0,
        };
        let case = |watch, runs: &[(f64, u64, f64)]| {
            let mut samples = Samples::default();
            for &(ns, openat, cpu) in runs {
                samples.add(ns, 100, Some(window(openat, cpu)));
            }
            samples.result(Lang::C, watch, None)
        };
        let cases = vec![
            case(
                Watch::Frames,
                &[
                    (3000.0, 90_000, 50_000.0),
                    (2800.0, 70_000, 40_000.0),
                    (9000.0, 80_000, 45_000.0),
                ],
            ),
            case(Watch::NoFrames, &[(2000.0, 30_000, 30_000.0)]),
        ];
        assert_eq!(
            frames_costs(&cases),
            vec![FramesCost {
                program: "c",
                loop_ns: 1000.0,
                loop_min_ns: Some(800.0),
                sys_exit_openat_ns: Some(500.0),
                bpf_ns_per_iter: Some(500.0),
                tracer_cpu_ns_per_iter: Some(150.0),
            }]
        );
        assert_eq!(frames_costs(&cases[..1]), vec![]);
    }
}
