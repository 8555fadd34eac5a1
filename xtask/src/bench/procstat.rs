//! What /proc says about a process the bench watches: CPU time and memory.

use std::fs;

use anyhow::{Context as _, Result};

/// USER_HZ, the unit of /proc/PID/stat's CPU times: 100 on every Linux architecture's ABI.
pub(crate) const TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime of a process, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).with_context(|| format!("cannot parse /proc/{pid}/stat"))
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may hold spaces: count fields after it.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the whole line are utime and stime; `after` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` line of /proc/PID/status.
pub(crate) fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    parse_status_kib(&status, key).with_context(|| format!("no {key} in /proc/{pid}/status"))
}

fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// `BPF_PROG_TYPE_TRACEPOINT` in linux/bpf.h, as fdinfo's `prog_type` shows it.
const PROG_TYPE_TRACEPOINT: u64 = 5;

/// Processes (pid, command) holding tracepoint BPF programs: other tracers on the machine.
/// Their programs run on every syscall of every process, so "untraced" is not untraced
/// while they are attached.
pub(crate) fn tracepoint_program_holders() -> Vec<(u32, String)> {
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut holders = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if holds_tracepoint_program(pid) {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            holders.push((pid, comm.trim().to_owned()));
        }
    }
    holders
}

fn holds_tracepoint_program(pid: u32) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        let is_prog = fs::read_link(fd.path())
            .is_ok_and(|target| target.as_os_str() == "anon_inode:bpf-prog");
        is_prog
            && fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .ok()
            .and_then(|info| fdinfo_field(&info, "prog_type"))
                == Some(PROG_TYPE_TRACEPOINT)
    })
}

/// A numeric `key:\tvalue` line of an fdinfo file.
pub(crate) fn fdinfo_field(fdinfo: &str, key: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// utime and stime are found past a command name with spaces and parentheses.
    #[test]
    fn reads_cpu_ticks_from_stat() {
        let stat = "1234 (tra cer)) S 1 1234 1234 0 -1 4194560 500 0 0 0 150 37 0 0 20 0 2 0";
        assert_eq!(parse_cpu_ticks(stat), Some(187));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    /// Only the exact key counts (VmRSS, not VmRSSx), in kB.
    #[test]
    fn reads_status_kib() {
        let status = "Name:\ttracer\nVmHWM:\t  90000 kB\nVmRSS:\t   81234 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(81234));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(90000));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    /// Fields are found by their exact key.
    #[test]
    fn reads_fdinfo_fields() {
        let info = "prog_type:\t5\nprog_jited:\t1\nprog_id:\t83\n";
        assert_eq!(fdinfo_field(info, "prog_type"), Some(5));
        assert_eq!(fdinfo_field(info, "prog_id"), Some(83));
        assert_eq!(fdinfo_field(info, "run_cnt"), None);
    }
}
