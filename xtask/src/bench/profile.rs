//! Where the time goes inside the BPF programs: with `kernel.bpf_stats_enabled` the kernel
//! counts each program's runs and run time (readable in the fdinfo of its descriptor in
//! the process that loaded it). Measured over a window in the middle of an unpaced
//! open+close run, for the tracer following it, the baseline tracer and the empty floor
//! programs, in interleaved rounds: one window each is as noisy as the machine, so each
//! program's cost is the median of the rounds with their spread and minimum. Stats cost a
//! little themselves, so the timed micro runs happen with them off.

use std::{collections::HashMap, fs, path::Path, process::Command, thread, time::Duration};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{
    child::Watched,
    floor,
    procstat::{cpu_ticks, fdinfo_field},
    stats::Summary,
    tools::path_of,
    workload::{Micro, Workload},
};

const STATS_SWITCH: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// One program's cost over the rounds.
#[derive(Debug, Serialize)]
pub(crate) struct ProgramCost {
    pub program: String,
    /// Runs in the median round's window.
    pub runs: u64,
    /// Every round's ns per run, with their median, minimum and maximum.
    pub rounds: Summary,
}

#[derive(Debug, Serialize)]
pub(crate) struct ProfileResult {
    pub tracer: Vec<ProgramCost>,
    /// The same window under `--baseline-tracer`, in the same rounds.
    pub baseline: Option<Vec<ProgramCost>>,
    pub empty_floor: Option<Vec<ProgramCost>>,
    /// CPU the tracer process itself (reading, decoding, stacks, tables) used per run of
    /// `sys_exit_openat` in the same windows: its userspace cost of one followed open+close.
    pub tracer_process_ns_per_open: Option<Summary>,
    /// The same for `--baseline-tracer`, in its windows.
    pub baseline_process_ns_per_open: Option<Summary>,
}

/// One measurement window: each program's (runs, ns per run) and the CPU the loading
/// process used.
struct Window {
    costs: Vec<(String, u64, f64)>,
    process_cpu_ns: u64,
}

impl Window {
    /// The loading process's CPU per run of `sys_exit_openat` (one followed open+close).
    fn process_ns_per_open(&self) -> Option<f64> {
        let opens = self
            .costs
            .iter()
            .find(|(program, _, _)| program == "sys_exit_openat")
            .map_or(0, |&(_, runs, _)| runs);
        (opens > 0).then(|| self.process_cpu_ns as f64 / opens as f64)
    }
}

/// Each program's cost over `windows` (programs in the order of the first window that has
/// them): the median round's runs, the median ns per run and the rounds' summary.
fn over_rounds(windows: &[Window]) -> Vec<ProgramCost> {
    let mut programs: Vec<&str> = Vec::new();
    for window in windows {
        for (program, _, _) in &window.costs {
            if !programs.contains(&program.as_str()) {
                programs.push(program);
            }
        }
    }
    programs
        .into_iter()
        .filter_map(|program| {
            let mut seen: Vec<(u64, f64)> = windows
                .iter()
                .filter_map(|w| w.costs.iter().find(|(p, _, _)| p == program))
                .map(|&(_, runs, ns)| (runs, ns))
                .collect();
            let ns: Vec<f64> = seen.iter().map(|&(_, ns)| ns).collect();
            let rounds = Summary::of(&ns)?;
            seen.sort_by_key(|&(runs, _)| runs);
            Some(ProgramCost {
                program: program.to_owned(),
                runs: seen[seen.len() / 2].0,
                rounds,
            })
        })
        .collect()
}

/// The loading process's CPU per open over `windows`.
fn process_over_rounds(windows: &[Window]) -> Option<Summary> {
    let per_open: Vec<f64> = windows
        .iter()
        .filter_map(Window::process_ns_per_open)
        .collect();
    Summary::of(&per_open)
}

/// USER_HZ, the unit of /proc/PID/stat's CPU times.
const NS_PER_TICK: u64 = 10_000_000;

/// Counters of one program at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Runs `rounds` interleaved rounds (tracer, baseline, floor) with the stats switched on,
/// and switches them back.
pub(crate) fn run(
    tracer_bin: &Path,
    baseline: Option<&Path>,
    workload: &mut Workload,
    rounds: usize,
) -> Result<ProfileResult> {
    with_bpf_stats(|| {
        let (mut tracer, mut base, mut floor) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=rounds {
            eprintln!("  BPF run time: tracer following open+close, round {round}/{rounds}");
            tracer.push(tracer_window(tracer_bin, workload)?);
            if let Some(bin) = baseline {
                eprintln!("  BPF run time: baseline tracer, round {round}/{rounds}");
                base.push(tracer_window(bin, workload)?);
            }
            eprintln!("  BPF run time: empty floor programs, round {round}/{rounds}");
            floor.push(floor_window(workload)?);
        }
        Ok(ProfileResult {
            tracer: over_rounds(&tracer),
            baseline: baseline.map(|_| over_rounds(&base)),
            empty_floor: Some(over_rounds(&floor)),
            tracer_process_ns_per_open: process_over_rounds(&tracer),
            baseline_process_ns_per_open: process_over_rounds(&base),
        })
    })
}

/// A window of `bin` following the unpaced open+close loop.
fn tracer_window(bin: &Path, workload: &mut Workload) -> Result<Window> {
    let result = workload.result_path();
    let argv = workload.rate_args(0, 5, 1, &result);
    let mut cmd = Command::new(bin);
    cmd.arg("--json").arg("--").args(&argv);
    profile_window(&mut cmd)
}

/// A window of the empty floor programs on the same loop (held by this process).
fn floor_window(workload: &mut Workload) -> Result<Window> {
    let result = workload.result_path();
    let argv = workload.rate_args(0, 5, 1, &result);
    let (child, floor) = floor::start_under(floor::tracepoints(Micro::Open), &argv)?;
    thread::sleep(Duration::from_millis(1500));
    let window = measure_window(child, std::process::id());
    drop(floor);
    window
}

/// Runs `measure` with `kernel.bpf_stats_enabled` on, and puts the switch back after.
pub(crate) fn with_bpf_stats<T>(measure: impl FnOnce() -> Result<T>) -> Result<T> {
    let before = fs::read_to_string(STATS_SWITCH).unwrap_or_else(|_| "0".to_owned());
    fs::write(STATS_SWITCH, "1").with_context(|| format!("cannot write {STATS_SWITCH}"))?;
    let result = measure();
    let _ = fs::write(STATS_SWITCH, before.trim());
    result
}

/// Starts `cmd` (a tracer that starts a 5-second workload), and measures its programs
/// between about 1.5 and 3.5 seconds in.
fn profile_window(cmd: &mut Command) -> Result<Window> {
    let mut child = Watched::spawn(cmd)?;
    child.wait_for_stderr("attached", Duration::from_secs(60))?;
    thread::sleep(Duration::from_millis(500));
    let holder = child.pid();
    measure_window(child, holder)
}

/// The programs `holder` holds, over 2 seconds of `child`'s run, and `holder`'s CPU; then
/// waits for `child` to end well.
fn measure_window(mut child: Watched, holder: u32) -> Result<Window> {
    let first = snapshot(holder)?;
    let ticks_before = cpu_ticks(holder)?;
    thread::sleep(Duration::from_secs(2));
    let second = snapshot(holder)?;
    let ticks = cpu_ticks(holder)?.saturating_sub(ticks_before);
    // Names are looked up while the programs are still loaded.
    let mut costs: Vec<(String, u64, f64)> = second
        .iter()
        .filter_map(|(id, after)| {
            let before = first.get(id).copied().unwrap_or_default();
            let runs = after.run_cnt.saturating_sub(before.run_cnt);
            (runs > 0).then(|| {
                let ns = after.run_time_ns.saturating_sub(before.run_time_ns) as f64;
                (program_name(*id), runs, ns / runs as f64)
            })
        })
        .collect();
    child.wait_success(Duration::from_secs(120))?;
    costs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(Window {
        costs,
        process_cpu_ns: ticks * NS_PER_TICK,
    })
}

/// Counters of every BPF program `pid` holds a descriptor of, by program id.
pub(crate) fn snapshot(pid: u32) -> Result<HashMap<u32, Counters>> {
    let dir = format!("/proc/{pid}/fd");
    let mut programs = HashMap::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
        let entry = entry?;
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:bpf-prog" {
            continue;
        }
        let fdinfo = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        if let Some((id, counters)) = fs::read_to_string(fdinfo)
            .ok()
            .as_deref()
            .and_then(parse_fdinfo)
        {
            programs.insert(id, counters);
        }
    }
    Ok(programs)
}

fn parse_fdinfo(text: &str) -> Option<(u32, Counters)> {
    Some((
        u32::try_from(fdinfo_field(text, "prog_id")?).ok()?,
        Counters {
            run_time_ns: fdinfo_field(text, "run_time_ns")?,
            run_cnt: fdinfo_field(text, "run_cnt")?,
        },
    ))
}

/// The program's name from bpftool, or its id when bpftool cannot say.
pub(crate) fn program_name(id: u32) -> String {
    let output = Command::new(path_of("bpftool"))
        .args(["prog", "show", "id", &id.to_string(), "--json"])
        .output();
    output
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|json| json["name"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("prog {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The id and both counters come from a program's fdinfo.
    #[test]
    fn parses_prog_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\nprog_type:\t5\n\
                      prog_jited:\t1\nprog_tag:\tb5d2bbbce0bf4c5e\nmemlock:\t4096\n\
                      prog_id:\t83\nrun_time_ns:\t1234567\nrun_cnt:\t1000\n\
                      recursion_misses:\t0\nverified_insns:\t321\n";
        assert_eq!(
            parse_fdinfo(fdinfo),
            Some((
                83,
                Counters {
                    run_time_ns: 1234567,
                    run_cnt: 1000
                }
            ))
        );
    }

    /// Each program's cost is the median over the rounds, with every round kept, and the
    /// runs of its median round; a program missing from a round counts the rounds it is in.
    #[test]
    fn costs_are_medians_over_rounds() {
        let window = |costs: &[(&str, u64, f64)], cpu_ns: u64| Window {
            costs: costs
                .iter()
                .map(|&(p, r, ns)| (p.to_owned(), r, ns))
                .collect(),
            process_cpu_ns: cpu_ns,
        };
        let windows = [
            window(
                &[
                    ("sys_exit_openat", 1000, 400.0),
                    ("sys_enter_close", 1000, 200.0),
                ],
                400_000,
            ),
            window(&[("sys_exit_openat", 3000, 300.0)], 900_000),
            window(
                &[
                    ("sys_exit_openat", 2000, 500.0),
                    ("sys_enter_close", 2000, 100.0),
                ],
                800_000,
            ),
        ];
        let costs = over_rounds(&windows);
        assert_eq!(costs.len(), 2);
        let openat = &costs[0];
        assert_eq!(
            (openat.program.as_str(), openat.runs, openat.rounds.median),
            ("sys_exit_openat", 2000, 400.0)
        );
        assert_eq!((openat.rounds.min, openat.rounds.max), (300.0, 500.0));
        assert_eq!(openat.rounds.runs, vec![400.0, 300.0, 500.0]);
        let close = &costs[1];
        assert_eq!((close.rounds.median, close.rounds.runs.len()), (150.0, 2));
        let process = process_over_rounds(&windows).expect("opens were counted");
        assert_eq!(
            (process.median, process.min, process.max),
            (400.0, 300.0, 400.0)
        );
    }

    /// A map's fdinfo (no run counters) is not a program.
    #[test]
    fn ignores_non_program_fdinfo() {
        assert_eq!(parse_fdinfo("map_type:\t27\nmap_id:\t9\n"), None);
    }
}
