//! What /proc says about a process the bench watches: CPU time and memory.

use std::fs;

use anyhow::{Context as _, Result};

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
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
pub fn status_kib(pid: u32, key: &str) -> Result<u64> {
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
}
