//! Micro benchmarks: a tight loop of descriptor syscalls, timed inside the workload, under
//! each way of watching it. Cases run interleaved (one run of each, then again), so a
//! machine that gets busier during the bench slows every case alike.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{
    bpftrace,
    child::Watched,
    floor,
    procstat::{TICKS_PER_SECOND, cpu_ticks},
    stats::{Summary, ratio},
    tools::path_of,
    tracer::{self, Attached, Idle},
    workload::{self, Micro, Workload, command},
};

/// A way of running the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Case {
    Untraced,
    /// `tracer -- workload`: every iteration is followed.
    Followed,
    /// Followed with `--stack-copy-kib 0`: stacks from the kernel's frame-pointer walk only,
    /// no copy of the user stack; the difference to `Followed` is the copy's cost.
    FollowedFramePointers,
    /// The tracer follows an idle process: what everyone else pays.
    OtherProcess,
    /// `tracer --all`: the benchmark is one of the host's processes, counted, not followed.
    HostWide,
    /// Empty programs on the same tracepoints.
    EmptyFloor,
    BpftraceMap,
    BpftraceMapUstack,
    Strace,
    /// `--baseline-tracer` following the benchmark: before/after in one run.
    BaselineFollowed,
    /// `--baseline-tracer` following another process.
    BaselineOtherProcess,
}

impl Case {
    pub(crate) const ALL: [Case; 9] = [
        Case::Untraced,
        Case::Followed,
        Case::FollowedFramePointers,
        Case::OtherProcess,
        Case::HostWide,
        Case::EmptyFloor,
        Case::BpftraceMap,
        Case::BpftraceMapUstack,
        Case::Strace,
    ];

    /// The cases of a bench, with the baseline tracer's when there is one.
    fn all(with_baseline: bool) -> Vec<Case> {
        let mut cases = Case::ALL.to_vec();
        if with_baseline {
            cases.extend([Case::BaselineFollowed, Case::BaselineOtherProcess]);
        }
        cases
    }

    /// The key in the JSON.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Case::Untraced => "untraced",
            Case::Followed => "tracer_followed",
            Case::FollowedFramePointers => "tracer_followed_frame_pointers",
            Case::OtherProcess => "tracer_other_process",
            Case::HostWide => "tracer_all",
            Case::EmptyFloor => "empty_bpf_floor",
            Case::BpftraceMap => "bpftrace_map",
            Case::BpftraceMapUstack => "bpftrace_map_ustack",
            Case::Strace => "strace_f",
            Case::BaselineFollowed => "baseline_tracer_followed",
            Case::BaselineOtherProcess => "baseline_tracer_other_process",
        }
    }

    /// The row label in the table.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Case::Untraced => "untraced",
            Case::Followed => "tracer, following the benchmark",
            Case::FollowedFramePointers => "same, frame pointers only (--stack-copy-kib 0)",
            Case::OtherProcess => "tracer, following another process",
            Case::HostWide => "tracer --all (counted, not followed)",
            Case::EmptyFloor => "empty BPF programs, same tracepoints (floor)",
            Case::BpftraceMap => "bpftrace open-fd map",
            Case::BpftraceMapUstack => "bpftrace open-fd map + ustack",
            Case::Strace => "strace -f",
            Case::BaselineFollowed => "baseline tracer, following the benchmark",
            Case::BaselineOtherProcess => "baseline tracer, following another process",
        }
    }

    fn uses_bpftrace(self) -> bool {
        matches!(self, Case::BpftraceMap | Case::BpftraceMapUstack)
    }

    /// strace stops the process twice per syscall: a tenth of the iterations keeps its
    /// runs as short as the others while still thousands of iterations long.
    fn iterations(self, micro: Micro, scale: f64) -> u64 {
        let base = (micro.iterations() as f64 * scale) as u64;
        match self {
            Case::Strace => (base / 10).max(1000),
            _ => base.max(1000),
        }
    }
}

/// One case of one workload, over all runs.
#[derive(Debug, Serialize)]
pub(crate) struct CaseResult {
    pub case: &'static str,
    pub label: &'static str,
    /// Nanoseconds per iteration; absent when the case could not run here.
    pub ns_per_iter: Option<Summary>,
    /// Median over the untraced median of the same workload in the same bench.
    pub ratio_to_untraced: Option<f64>,
    /// Why the case did not run (e.g. bpftrace does not load on this kernel).
    pub unavailable: Option<String>,
    /// Events the tracer lost over all runs, when it followed the workload.
    pub lost_events: Option<u64>,
    /// Descriptors the tracer reported open after the workload closed them all.
    pub false_leaks: Option<u64>,
    /// CPU the tracer used while the workload ran, in cores (1.0 = one core busy); measured
    /// for `tracer --all`, whose looks at /proc run whatever the workload does.
    pub tracer_cores: Option<Summary>,
}

#[derive(Debug, Serialize)]
pub(crate) struct MicroResult {
    pub workload: &'static str,
    pub description: &'static str,
    pub iterations: u64,
    pub cases: Vec<CaseResult>,
    /// `--pid` attach times (start to `attached`), seconds, from the other-process runs.
    #[serde(skip)]
    pub attach_times_s: Vec<f64>,
}

pub(crate) struct Settings<'a> {
    pub tracer: &'a std::path::Path,
    pub runs: usize,
    /// Multiplies every workload's iteration count (`--quick` lowers it).
    pub scale: f64,
    /// Why bpftrace cannot be used, if it cannot.
    pub bpftrace_problem: Option<String>,
    /// Another tracer binary measured beside this one (`--baseline-tracer`).
    pub baseline: Option<&'a std::path::Path>,
}

/// The longest one run may take before the bench gives up on it.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs every case of `micro` `settings.runs` times, interleaved.
pub(crate) fn run(
    settings: &Settings,
    workload: &mut Workload,
    micro: Micro,
) -> Result<MicroResult> {
    let all = Case::all(settings.baseline.is_some());
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); all.len()];
    let mut unavailable: Vec<Option<String>> = all
        .iter()
        .map(|case| {
            case.uses_bpftrace()
                .then(|| settings.bpftrace_problem.clone())
                .flatten()
        })
        .collect();
    let mut lost = vec![0u64; all.len()];
    let mut false_leaks = vec![0u64; all.len()];
    let mut tracer_cores: Vec<Vec<f64>> = vec![Vec::new(); all.len()];
    let mut attach_times_s = Vec::new();
    for run in 0..settings.runs {
        eprintln!("  {} run {}/{}", micro.describe(), run + 1, settings.runs);
        // Rotate which goes first, so a drift in machine load does not favour one case.
        for turn in 0..all.len() {
            let index = (turn + run) % all.len();
            let case = all[index];
            if unavailable[index].is_some() {
                continue;
            }
            let iterations = case.iterations(micro, settings.scale);
            let result = workload.result_path();
            let argv = workload.micro_args(micro, iterations, &result);
            let outcome = run_case(settings, case, micro, &argv);
            match outcome {
                Ok(observed) => {
                    let values = workload::read_result(&result)?;
                    samples[index].push(workload::value(&values, "ns_per_iter")?);
                    if let Some(facts) = observed.facts {
                        lost[index] += facts.lost;
                        false_leaks[index] += facts.false_leaks;
                    }
                    tracer_cores[index].extend(observed.tracer_cores);
                    if case != Case::BaselineOtherProcess {
                        attach_times_s.extend(observed.attach_s);
                    }
                }
                Err(err) if case.uses_bpftrace() => {
                    // An optional comparison: say why in the table, keep going.
                    unavailable[index] = Some(format!("{err:#}"));
                }
                Err(err) => {
                    return Err(err)
                        .with_context(|| format!("{} ({})", micro.describe(), case.label()));
                }
            }
        }
    }
    let untraced_index = all
        .iter()
        .position(|&case| case == Case::Untraced)
        .expect("every bench has Untraced");
    let untraced = Summary::of(&samples[untraced_index]).map(|s| s.median);
    let cases = all
        .iter()
        .enumerate()
        .map(|(index, &case)| {
            let summary = Summary::of(&samples[index]);
            let followed = matches!(
                case,
                Case::Followed | Case::FollowedFramePointers | Case::BaselineFollowed
            );
            CaseResult {
                case: case.key(),
                label: case.label(),
                ratio_to_untraced: summary
                    .as_ref()
                    .zip(untraced)
                    .and_then(|(s, base)| ratio(s.median, base)),
                ns_per_iter: summary,
                unavailable: unavailable[index].take(),
                lost_events: followed.then_some(lost[index]),
                false_leaks: followed.then_some(false_leaks[index]),
                tracer_cores: Summary::of(&tracer_cores[index]),
            }
        })
        .collect();
    Ok(MicroResult {
        workload: micro.mode(),
        description: micro.describe(),
        iterations: (micro.iterations() as f64 * settings.scale) as u64,
        cases,
        attach_times_s,
    })
}

/// What a run showed besides the workload's own timing.
#[derive(Default)]
struct Observed {
    facts: Option<tracer::ReportFacts>,
    attach_s: Option<f64>,
    /// The tracer's CPU while the workload ran, in cores.
    tracer_cores: Option<f64>,
}

fn run_case(settings: &Settings, case: Case, micro: Micro, argv: &[String]) -> Result<Observed> {
    match case {
        Case::Untraced => {
            Watched::spawn(&mut command(argv))?.wait_success(RUN_TIMEOUT)?;
            Ok(Observed::default())
        }
        Case::Followed | Case::FollowedFramePointers | Case::BaselineFollowed => {
            let extra: &[&str] = if case == Case::FollowedFramePointers {
                &["--stack-copy-kib", "0"]
            } else {
                &[]
            };
            let bin = match case {
                Case::BaselineFollowed => settings.baseline.unwrap_or(settings.tracer),
                _ => settings.tracer,
            };
            let facts = tracer::follow(bin, extra, argv, RUN_TIMEOUT)?;
            Ok(Observed {
                facts: Some(facts),
                ..Observed::default()
            })
        }
        Case::OtherProcess | Case::BaselineOtherProcess => {
            let bin = match case {
                Case::BaselineOtherProcess => settings.baseline.unwrap_or(settings.tracer),
                _ => settings.tracer,
            };
            let idle = Idle::start()?;
            let attached = Attached::start(bin, idle.pid(), &["--json"])?;
            let attach_s = attached.attach_time.as_secs_f64();
            let ran =
                Watched::spawn(&mut command(argv)).and_then(|mut w| w.wait_success(RUN_TIMEOUT));
            attached.stop()?;
            ran?;
            Ok(Observed {
                attach_s: Some(attach_s),
                ..Observed::default()
            })
        }
        Case::HostWide => {
            let attached = Attached::start_args(settings.tracer, &["--all", "--json"])?;
            let attach_s = attached.attach_time.as_secs_f64();
            let ticks_before = cpu_ticks(attached.pid())?;
            let started = Instant::now();
            let ran =
                Watched::spawn(&mut command(argv)).and_then(|mut w| w.wait_success(RUN_TIMEOUT));
            let ticks = cpu_ticks(attached.pid())?.saturating_sub(ticks_before);
            let cores = ticks as f64 / TICKS_PER_SECOND / started.elapsed().as_secs_f64();
            attached.stop()?;
            ran?;
            Ok(Observed {
                facts: None,
                attach_s: Some(attach_s),
                tracer_cores: Some(cores),
            })
        }
        Case::EmptyFloor => {
            floor::run_under(floor::tracepoints(micro), argv, RUN_TIMEOUT)?;
            Ok(Observed::default())
        }
        Case::BpftraceMap => bpftrace_run(&bpftrace::open_map(micro, false), argv),
        Case::BpftraceMapUstack => bpftrace_run(&bpftrace::open_map(micro, true), argv),
        Case::Strace => {
            let mut cmd = Command::new(path_of("strace"));
            cmd.args(["-f", "-qq", "-o", "/dev/null", "--"]).args(argv);
            Watched::spawn(&mut cmd)?.wait_success(RUN_TIMEOUT)?;
            Ok(Observed::default())
        }
    }
}

/// `bpftrace -c WORKLOAD -e SCRIPT`: bpftrace attaches, then starts the command (the
/// workload's paths have no spaces, which `-c` splits on).
fn bpftrace_run(script: &str, argv: &[String]) -> Result<Observed> {
    let mut cmd = Command::new(path_of("bpftrace"));
    cmd.arg("-c").arg(argv.join(" ")).arg("-e").arg(script);
    Watched::spawn(&mut cmd)?.wait_success(RUN_TIMEOUT)?;
    Ok(Observed::default())
}
