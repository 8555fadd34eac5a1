//! What a process may use and uses: its descriptor limit (`/proc/PID/limits`, which prlimit(2)
//! can change under it) and the tracer's own resident memory.

use std::fs;

/// The soft RLIMIT_NOFILE of `pid` ("Max open files" in `/proc/PID/limits`): the descriptor
/// number it cannot reach. `None` when the process is gone or the limit is unlimited.
pub(crate) fn max_open_files(pid: u32) -> Option<u64> {
    parse_max_open_files(&fs::read_to_string(format!("/proc/{pid}/limits")).ok()?)
}

fn parse_max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The tracer's own resident set size, bytes (`VmRSS` of `/proc/self/status`).
pub(crate) fn own_resident_bytes() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The soft limit is the first number; "unlimited" is no limit.
    #[test]
    fn parses_the_soft_descriptor_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             127235               127235               processes \n\
                      Max open files            1024                 524288               files     \n\
                      Max locked memory         8388608              8388608              bytes     \n";
        assert_eq!(parse_max_open_files(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files     \n";
        assert_eq!(parse_max_open_files(unlimited), None);
        assert_eq!(parse_max_open_files(""), None);
    }

    /// Our own limit and memory are there to read.
    #[test]
    fn reads_our_own_limit_and_memory() {
        let pid = std::process::id();
        let limit = max_open_files(pid).expect("our own limit");
        let mut rlimit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct we pass and nothing else.
        let status = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlimit) };
        assert_eq!(status, 0);
        assert_eq!(limit, rlimit.rlim_cur);
        assert!(own_resident_bytes().is_some_and(|b| b > 0));
    }
}
