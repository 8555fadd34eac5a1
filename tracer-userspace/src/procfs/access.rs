//! Whether this tracer may read a process's descriptors. Listing `/proc/PID/fd` of another
//! user's process needs CAP_DAC_READ_SEARCH (the directory is theirs, mode 0500); reading its
//! links needs ptrace read access, so CAP_SYS_PTRACE for another user's process or one with
//! capabilities the tracer lacks. A tracer with only CAP_BPF and CAP_PERFMON (enough to load
//! and attach its programs) has neither: without a word, the descriptors open before attach,
//! and the checks of the report against /proc, would be missing.

use std::{fs, io, os::unix::fs::MetadataExt as _};

/// Capability bits in the sets of /proc/PID/status.
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;

/// `Err` with one line saying what cannot be seen and why, when `/proc/PID/fd` or its links
/// may not be read; `Ok` otherwise (also when the process is gone, whose end is told
/// elsewhere, or holds no descriptor).
pub(crate) fn check_fds_readable(pid: u32) -> Result<(), String> {
    let dir = format!("/proc/{pid}/fd");
    let first = match fs::read_dir(&dir) {
        Err(err) if err.kind() == io::ErrorKind::PermissionDenied => return Err(hidden(pid)),
        Err(_) => return Ok(()),
        Ok(mut entries) => entries.next(),
    };
    match first.map(|entry| fs::read_link(entry?.path())) {
        Some(Err(err)) if err.kind() == io::ErrorKind::PermissionDenied => Err(hidden(pid)),
        _ => Ok(()),
    }
}

/// The sentence for a process whose descriptors may not be read.
pub(crate) fn hidden(pid: u32) -> String {
    let owner = fs::metadata(format!("/proc/{pid}"))
        .map(|m| format!(", uid {}", m.uid()))
        .unwrap_or_default();
    let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| format!(" ({})", c.trim_end()))
        .unwrap_or_default();
    let lacking: Vec<&str> = [
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
        (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
    ]
    .into_iter()
    .filter(|&(bit, _)| has_own_capability(bit) == Some(false))
    .map(|(_, name)| name)
    .collect();
    let why = if lacking.is_empty() {
        "a security module (Yama's ptrace_scope, AppArmor, SELinux) forbids it".to_owned()
    } else {
        format!(
            "this tracer lacks {}: reading the descriptors of another user's process, or of one \
             with capabilities the tracer lacks, needs CAP_SYS_PTRACE (and CAP_DAC_READ_SEARCH \
             for another user's); CAP_BPF and CAP_PERFMON let it trace, not see what is open",
            lacking.join(" and ")
        )
    };
    format!("cannot read the descriptors of pid {pid}{comm}{owner} in /proc/{pid}/fd: {why}")
}

/// Whether capability `bit` is in this process's effective set (None if /proc cannot say).
fn has_own_capability(bit: u32) -> Option<bool> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    effective_has(&status, bit)
}

fn effective_has(status: &str, bit: u32) -> Option<bool> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    let set = u64::from_str_radix(hex.trim(), 16).ok()?;
    Some(set & (1 << bit) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CapEff is a hexadecimal mask; bit 19 is CAP_SYS_PTRACE.
    #[test]
    fn reads_the_effective_set() {
        let with = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_has(with, CAP_SYS_PTRACE), Some(true));
        // CAP_BPF (39) and CAP_PERFMON (38) only.
        let without = "CapEff:\t000000c000000000\n";
        assert_eq!(effective_has(without, CAP_SYS_PTRACE), Some(false));
        assert_eq!(effective_has(without, 39), Some(true));
        assert_eq!(effective_has("CapEff:\tzz\n", 0), None);
        assert_eq!(effective_has("", 0), None);
    }

    /// Our own descriptors are always readable; a process that is gone is not refused here.
    #[test]
    fn own_and_gone_processes_pass() {
        assert_eq!(check_fds_readable(std::process::id()), Ok(()));
        assert_eq!(check_fds_readable(u32::MAX), Ok(()));
    }
}
