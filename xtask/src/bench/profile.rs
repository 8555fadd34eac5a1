//! Where the time goes inside the BPF programs: with `kernel.bpf_stats_enabled` the kernel
//! counts each program's runs and run time (readable in the fdinfo of its descriptor in
//! the process that loaded it). Measured over a window in the middle of an unpaced
//! open+close run, for the tracer following it and for the empty floor programs. Stats
//! cost a little themselves, so the timed micro runs happen with them off.

use std::{collections::HashMap, fs, path::Path, process::Command, thread, time::Duration};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{
    bpftrace,
    child::Watched,
    procstat::{cpu_ticks, fdinfo_field},
    tools::path_of,
    workload::{Micro, Workload},
};

const STATS_SWITCH: &str = "/proc/sys/kernel/bpf_stats_enabled";

#[derive(Debug, Serialize)]
pub(crate) struct ProgramCost {
    pub program: String,
    pub runs: u64,
    pub ns_per_run: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct ProfileResult {
    pub tracer: Vec<ProgramCost>,
    /// The same window under `--baseline-tracer`, measured right after.
    pub baseline: Option<Vec<ProgramCost>>,
    pub empty_floor: Option<Vec<ProgramCost>>,
    /// CPU the tracer process itself (reading, decoding, stacks, tables) used per run of
    /// `sys_exit_openat` in the same window: its userspace cost of one followed open+close.
    pub tracer_process_ns_per_open: Option<f64>,
}

/// One measurement window: the programs' costs and the CPU the loading process used.
struct Window {
    costs: Vec<ProgramCost>,
    process_cpu_ns: u64,
}

/// USER_HZ, the unit of /proc/PID/stat's CPU times.
const NS_PER_TICK: u64 = 10_000_000;

/// Counters of one program at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    run_time_ns: u64,
    run_cnt: u64,
}

/// Runs both profiles with the stats switched on, and switches them back.
pub(crate) fn run(
    tracer_bin: &Path,
    baseline: Option<&Path>,
    workload: &mut Workload,
    with_bpftrace: bool,
) -> Result<ProfileResult> {
    let before = fs::read_to_string(STATS_SWITCH).unwrap_or_else(|_| "0".to_owned());
    fs::write(STATS_SWITCH, "1").with_context(|| format!("cannot write {STATS_SWITCH}"))?;
    let result = (|| {
        eprintln!("  BPF run time: tracer following open+close");
        let result = workload.result_path();
        let argv = workload.rate_args(0, 5, 1, &result);
        let mut cmd = Command::new(tracer_bin);
        cmd.arg("--json").arg("--").args(&argv);
        let tracer = profile_window(&mut cmd, true)?;
        let opens = tracer
            .costs
            .iter()
            .find(|cost| cost.program == "sys_exit_openat")
            .map_or(0, |cost| cost.runs);
        let tracer_process_ns_per_open =
            (opens > 0).then(|| tracer.process_cpu_ns as f64 / opens as f64);
        let baseline = match baseline {
            Some(bin) => {
                eprintln!("  BPF run time: baseline tracer following open+close");
                let result = workload.result_path();
                let argv = workload.rate_args(0, 5, 1, &result);
                let mut cmd = Command::new(bin);
                cmd.arg("--json").arg("--").args(&argv);
                Some(profile_window(&mut cmd, true)?.costs)
            }
            None => None,
        };
        let empty_floor = if with_bpftrace {
            eprintln!("  BPF run time: empty floor programs");
            let result = workload.result_path();
            let argv = workload.rate_args(0, 5, 1, &result);
            let mut cmd = Command::new(path_of("bpftrace"));
            cmd.arg("-c")
                .arg(argv.join(" "))
                .arg("-e")
                .arg(bpftrace::empty_floor(Micro::Open));
            Some(profile_window(&mut cmd, false)?.costs)
        } else {
            None
        };
        Ok(ProfileResult {
            tracer: tracer.costs,
            baseline,
            empty_floor,
            tracer_process_ns_per_open,
        })
    })();
    let _ = fs::write(STATS_SWITCH, before.trim());
    result
}

/// Starts `cmd` (which starts a 5-second workload), and measures its programs between 1.5
/// and 3.5 seconds in.
fn profile_window(cmd: &mut Command, says_attached: bool) -> Result<Window> {
    let mut child = Watched::spawn(cmd)?;
    if says_attached {
        child.wait_for_stderr("attached", Duration::from_secs(60))?;
        thread::sleep(Duration::from_millis(500));
    } else {
        // bpftrace attaches before it starts the command, within about a second here.
        thread::sleep(Duration::from_millis(1500));
    }
    let first = snapshot(child.pid())?;
    let ticks_before = cpu_ticks(child.pid())?;
    thread::sleep(Duration::from_secs(2));
    let second = snapshot(child.pid())?;
    let ticks = cpu_ticks(child.pid())?.saturating_sub(ticks_before);
    // Names are looked up while the programs are still loaded.
    let mut costs: Vec<ProgramCost> = second
        .iter()
        .filter_map(|(id, after)| {
            let before = first.get(id).copied().unwrap_or_default();
            let runs = after.run_cnt.saturating_sub(before.run_cnt);
            (runs > 0).then(|| ProgramCost {
                program: program_name(*id),
                runs,
                ns_per_run: after.run_time_ns.saturating_sub(before.run_time_ns) as f64
                    / runs as f64,
            })
        })
        .collect();
    child.wait_success(Duration::from_secs(120))?;
    costs.sort_by(|a, b| b.runs.cmp(&a.runs).then(a.program.cmp(&b.program)));
    Ok(Window {
        costs,
        process_cpu_ns: ticks * NS_PER_TICK,
    })
}

/// Counters of every BPF program `pid` holds a descriptor of, by program id.
fn snapshot(pid: u32) -> Result<HashMap<u32, Counters>> {
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
fn program_name(id: u32) -> String {
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

    /// A map's fdinfo (no run counters) is not a program.
    #[test]
    fn ignores_non_program_fdinfo() {
        assert_eq!(parse_fdinfo("map_type:\t27\nmap_id:\t9\n"), None);
    }
}
