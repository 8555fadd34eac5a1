//! Names of JIT code from the perf maps runtimes publish: `/tmp/perf-PID.map`, one
//! `START SIZE NAME` line (hexadecimal, no `0x`) per piece of generated code. Node writes it
//! with `--perf-basic-prof`, Java with a perf-map agent, CPython 3.12+ with `-X perf` (one
//! `py::FUNCTION:FILE` trampoline per Python function it has run).
//!
//! The file is read from the process's own mount namespace (`/proc/PID/root/tmp/...`), named
//! with the pid the process has in its own pid namespace (the last `NSpid` of
//! `/proc/PID/status`), so a process in a container is read like any other. Runtimes append
//! to it while they run: it is read again, from where the last read stopped, when an address
//! in anonymous executable memory has no name yet, and at most once per such address (code
//! the runtime never names costs one read). Entries are kept per process until it is
//! forgotten.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Read, Seek, SeekFrom},
    os::unix::fs::MetadataExt,
    path::PathBuf,
};

use foldhash::{HashMap, HashSet};

/// The perf maps of the processes whose stacks had JIT frames.
#[derive(Default)]
pub(super) struct PerfMaps {
    by_pid: HashMap<u32, PerfMap>,
}

impl PerfMaps {
    /// The name of `addr` in the perf map of `pid`, reading what the process appended since
    /// the last read when `addr` is not named yet (once per address).
    pub(super) fn name(&mut self, pid: u32, addr: u64) -> Option<&str> {
        let map = self.by_pid.entry(pid).or_default();
        if map.lookup(addr).is_none()
            && map.misses.insert(addr)
            && let Err(err) = map.read_more(pid)
        {
            log::debug!("pid {pid}: cannot read its perf map: {err}");
        }
        map.lookup(addr)
    }

    /// The name of `addr` in what was read of the perf map of `pid`, without reading.
    pub(super) fn known(&self, pid: u32, addr: u64) -> Option<&str> {
        self.by_pid.get(&pid)?.lookup(addr)
    }

    /// Drops what was read for `pid`.
    pub(super) fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }

    /// Entries held, all processes together (for the debug log of table sizes).
    pub(super) fn len(&self) -> usize {
        self.by_pid.values().map(|map| map.entries.len()).sum()
    }
}

/// What was read of one process's perf map.
#[derive(Default)]
struct PerfMap {
    /// The file read (device, inode): another file (the pid reused, the runtime restarted
    /// its map) is read from its start.
    file: (u64, u64),
    /// Bytes of the file consumed: up to the end of its last complete line.
    offset: u64,
    /// Code by start address: (end, name). A later line for the same start replaces it (the
    /// runtime reused the memory).
    entries: BTreeMap<u64, (u64, Box<str>)>,
    /// Addresses that were still unnamed after a read: not read for again.
    misses: HashSet<u64>,
}

/// Lines longer than this are skipped (a name is a function's, not a document).
const MAX_LINE: usize = 64 * 1024;

impl PerfMap {
    fn lookup(&self, addr: u64) -> Option<&str> {
        let (_, (end, name)) = self.entries.range(..=addr).next_back()?;
        (addr < *end).then_some(&**name)
    }

    fn read_more(&mut self, pid: u32) -> io::Result<()> {
        let mut file = fs::File::open(perf_map_path(pid)?)?;
        let meta = file.metadata()?;
        let identity = (meta.dev(), meta.ino());
        if identity != self.file || meta.len() < self.offset {
            self.file = identity;
            self.offset = 0;
            self.entries.clear();
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        // Only complete lines: the runtime may be writing the last one.
        let Some(last_newline) = bytes.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        for line in bytes[..last_newline].split(|&b| b == b'\n') {
            if line.len() > MAX_LINE {
                continue;
            }
            if let Some((start, size, name)) = parse_line(line) {
                self.entries
                    .insert(start, (start.saturating_add(size), name.into()));
            }
        }
        self.offset += last_newline as u64 + 1;
        Ok(())
    }
}

/// `/proc/PID/root/tmp/perf-NSPID.map`: the file the process wrote, in its mount namespace,
/// under the pid it knows itself by.
fn perf_map_path(pid: u32) -> io::Result<PathBuf> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let nspid = own_pid(&status).unwrap_or(pid);
    Ok(PathBuf::from(format!(
        "/proc/{pid}/root/tmp/perf-{nspid}.map"
    )))
}

/// The pid in the process's own pid namespace: the last field of the `NSpid:` line of
/// `/proc/PID/status` (None on kernels without it).
fn own_pid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// One line of a perf map: `START SIZE NAME`, START and SIZE in hexadecimal (an `0x` prefix
/// is accepted), NAME the rest of the line (it may hold spaces). None for a malformed line or
/// an empty piece of code.
fn parse_line(line: &[u8]) -> Option<(u64, u64, &str)> {
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let (start, rest) = line.trim_start().split_once(' ')?;
    let (size, name) = rest.trim_start().split_once(' ')?;
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let (start, size) = (hex(start)?, hex(size)?);
    let name = name.trim();
    (size > 0 && !name.is_empty()).then_some((start, size, name))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn parses_perf_map_lines() {
        assert_eq!(
            parse_line(b"7f869a2bf7c7 b py::leak:/tmp/pm try.py"),
            Some((0x7f869a2bf7c7, 0xb, "py::leak:/tmp/pm try.py"))
        );
        assert_eq!(
            parse_line(b"0x3a0c1e40 0x1c0 LazyCompile:~main /srv/app.js:3\r"),
            Some((0x3a0c1e40, 0x1c0, "LazyCompile:~main /srv/app.js:3"))
        );
        for bad in [
            &b""[..],
            b"zz 10 f",
            b"1000 10",
            b"1000 0 empty",
            b"1000 10  ",
            b"\xff 1 x",
        ] {
            assert_eq!(parse_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn own_pid_is_the_innermost_namespace() {
        let status = "Name:\tpython3\nTgid:\t4242\nNSpid:\t4242\t17\t1\nPPid:\t1\n";
        assert_eq!(own_pid(status), Some(1));
        assert_eq!(own_pid("NSpid:\t99\n"), Some(99));
        assert_eq!(own_pid("Name:\tx\n"), None);
    }

    /// A synthetic map appended to in steps, read through this process's own /proc entry:
    /// names appear once written, a half-written last line waits for its end, a later line
    /// for the same start replaces the earlier, and an address read for in vain is not read
    /// for again (so an unnamed address costs one read).
    #[test]
    fn reads_appended_lines_incrementally() {
        let pid = std::process::id();
        let path = PathBuf::from(format!("/tmp/perf-{pid}.map"));
        let mut file = fs::File::create(&path).unwrap();
        let mut maps = PerfMaps::default();
        writeln!(file, "1000 100 first").unwrap();
        write!(file, "2000 10 sec").unwrap();
        file.flush().unwrap();
        assert_eq!(maps.name(pid, 0x1000), Some("first"));
        assert_eq!(maps.name(pid, 0x10ff), Some("first"));
        assert_eq!(maps.name(pid, 0x1100), None);
        assert_eq!(maps.name(pid, 0x2000), None, "the line is not complete");
        writeln!(file, "ond").unwrap();
        writeln!(file, "1000 80 replaced").unwrap();
        file.flush().unwrap();
        // 0x2000 was read for in vain: no read for it, so still unknown ...
        assert_eq!(maps.name(pid, 0x2000), None);
        // ... until another unnamed address makes the map read again.
        assert_eq!(maps.name(pid, 0x2004), Some("second"));
        assert_eq!(maps.known(pid, 0x2000), Some("second"));
        assert_eq!(maps.known(pid, 0x1000), Some("replaced"));
        assert_eq!(maps.known(pid, 0x1090), None);
        assert_eq!(maps.len(), 2);
        maps.forget(pid);
        assert_eq!(maps.known(pid, 0x2000), None);
        assert_eq!(maps.len(), 0);
        fs::remove_file(&path).unwrap();
        // No map at all: no name, no error.
        assert_eq!(maps.name(pid, 0x1000), None);
    }
}
