//! Descriptor limits: a process's RLIMIT_NOFILE (`/proc/PID/limits`, which `prlimit` can
//! change under it) and the system's file handles against `fs.file-max`
//! (`/proc/sys/fs/file-nr`).

use std::fs;

/// The soft limit on open files of `pid` ("Max open files" in /proc/PID/limits); None when
/// the process is gone or the limit is unlimited.
pub(crate) fn nofile_limit(pid: u32) -> Option<u64> {
    parse_nofile(&fs::read_to_string(format!("/proc/{pid}/limits")).ok()?)
}

fn parse_nofile(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// File handles allocated on the system and fs.file-max.
pub(crate) fn file_handles() -> Option<(u64, u64)> {
    parse_file_nr(&fs::read_to_string("/proc/sys/fs/file-nr").ok()?)
}

fn parse_file_nr(text: &str) -> Option<(u64, u64)> {
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    let allocated = fields.next()??;
    let _free = fields.next()??;
    let max = fields.next()??;
    Some((allocated, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The soft limit of "Max open files"; unlimited is None.
    #[test]
    fn parses_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63437                63437                processes \n\
                      Max open files            40                   524288               files     \n";
        assert_eq!(parse_nofile(limits), Some(40));
        assert_eq!(
            parse_nofile(
                "Max open files            unlimited            unlimited            files"
            ),
            None
        );
        assert_eq!(
            parse_file_nr("2816\t0\t9223372036854775807\n"),
            Some((2816, 9223372036854775807))
        );
        assert_eq!(parse_file_nr("x"), None);
    }

    /// Our own process has a limit, and the system a file-max.
    #[test]
    fn reads_this_system() {
        assert!(nofile_limit(std::process::id()).is_some_and(|n| n > 0));
        assert!(file_handles().is_some_and(|(used, max)| used > 0 && max > 0));
    }

    /// The limit read from /proc is the soft limit getrlimit(2) gives.
    #[test]
    fn our_limit_is_getrlimits_soft_limit() {
        let limit = nofile_limit(std::process::id()).expect("our own limit");
        let mut rlimit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct we pass and nothing else.
        let status = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlimit) };
        assert_eq!(status, 0);
        assert_eq!(limit, rlimit.rlim_cur);
    }

    /// A limits file with other rows around it, and an empty one.
    #[test]
    fn finds_the_row_among_others() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             127235               127235               processes \n\
                      Max open files            1024                 524288               files     \n\
                      Max locked memory         8388608              8388608              bytes     \n";
        assert_eq!(parse_nofile(limits), Some(1024));
        assert_eq!(parse_nofile(""), None);
    }
}
