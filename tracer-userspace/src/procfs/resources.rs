//! The tracer's own resource use: its resident memory (for `/metrics`). A followed process's
//! descriptor limit is read by `limits.rs`.

use std::fs;

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

    /// Our own memory is there to read.
    #[test]
    fn reads_our_own_memory() {
        assert!(own_resident_bytes().is_some_and(|b| b > 0));
    }
}
