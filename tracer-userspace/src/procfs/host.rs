//! What `--all` reads of every process and of the host: one line of /proc/PID/stat per
//! process (threads, state, parent), descriptor counts, RLIMIT_NOFILE, the host's open files
//! against fs.file-max, and TCP states by socket inode (CLOSE_WAIT held, TIME_WAIT left).

use std::{collections::HashMap, fs, io, os::unix::fs::MetadataExt as _};

use super::process::all_pids;

/// What one line of /proc/PID/stat says that `--all` uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub zombie: bool,
    pub threads: u64,
    pub start_time: u64,
}

/// Every process in /proc, one read each; those that exit meanwhile are skipped.
pub(crate) fn all_stats() -> Vec<ProcStat> {
    all_pids()
        .into_iter()
        .filter_map(|pid| parse_proc_stat(&fs::read(format!("/proc/{pid}/stat")).ok()?))
        .collect()
}

fn parse_proc_stat(line: &[u8]) -> Option<ProcStat> {
    let open = line.iter().position(|&b| b == b'(')?;
    let close = line.iter().rposition(|&b| b == b')')?;
    let pid = std::str::from_utf8(&line[..open])
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = String::from_utf8_lossy(line.get(open + 1..close)?).into_owned();
    let rest = std::str::from_utf8(&line[close + 1..]).ok()?;
    // Fields after comm, numbered as in proc(5): 3 state, 4 ppid, 20 num_threads, 22 starttime.
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).copied();
    Some(ProcStat {
        pid,
        ppid: field(4)?.parse().ok()?,
        comm,
        zombie: field(3)? == "Z",
        threads: field(20)?.parse().ok()?,
        start_time: field(22)?.parse().ok()?,
    })
}

/// How many descriptors `pid` holds: the size stat(2) gives /proc/PID/fd (Linux 6.2 and
/// later: no listing), else the entries of a listing.
pub(crate) fn open_fd_count(pid: u32) -> io::Result<u64> {
    let dir = format!("/proc/{pid}/fd");
    let size = fs::metadata(&dir)?.size();
    if size > 0 {
        return Ok(size);
    }
    Ok(fs::read_dir(&dir)?.count() as u64)
}

/// The host's open files and its limit: /proc/sys/fs/file-nr (allocated, free, max).
pub(crate) fn file_nr() -> Option<(u64, u64)> {
    parse_file_nr(&fs::read_to_string("/proc/sys/fs/file-nr").ok()?)
}

fn parse_file_nr(text: &str) -> Option<(u64, u64)> {
    let numbers: Vec<u64> = text
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    match numbers.as_slice() {
        [allocated, free, max] => Some((allocated.saturating_sub(*free), *max)),
        _ => None,
    }
}

/// TCP connections in TIME_WAIT in the tracer's network namespace, IPv4 and IPv6 together
/// (`tw` in /proc/net/sockstat: a counter, not a walk of the table).
pub(crate) fn time_wait_count() -> Option<u64> {
    parse_sockstat_tw(&fs::read_to_string("/proc/net/sockstat").ok()?)
}

fn parse_sockstat_tw(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    while let Some(word) = words.next() {
        if word == "tw" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// TCP state numbers of include/net/tcp_states.h.
const TCP_TIME_WAIT: u8 = 6;
pub(crate) const TCP_CLOSE_WAIT: u8 = 8;

/// The TCP sockets of `pid`'s network namespace (IPv4 and IPv6) that a descriptor holds:
/// socket inode -> state.
pub(crate) fn tcp_states(pid: u32) -> HashMap<u64, u8> {
    let mut states = HashMap::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for (inode, state) in text.lines().skip(1).filter_map(parse_tcp_line) {
            if state != TCP_TIME_WAIT && inode != 0 {
                states.insert(inode, state);
            }
        }
    }
    states
}

fn parse_tcp_line(line: &str) -> Option<(u64, u8)> {
    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
    let fields: Vec<&str> = line.split_whitespace().collect();
    let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
    let inode = fields.get(9)?.parse().ok()?;
    Some((inode, state))
}

/// The socket inodes `pid` holds (`socket:[N]` links in /proc/PID/fd).
pub(crate) fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let link = fs::read_link(e.ok()?.path()).ok()?;
        let text = link.to_str()?;
        text.strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields --all uses are read past a comm with spaces and parentheses.
    #[test]
    fn stat_lines() {
        let line = b"42 (a (b) c) Z 7 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 3 0 12345 0 0";
        let stat = parse_proc_stat(line).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                pid: 42,
                ppid: 7,
                comm: "a (b) c".into(),
                zombie: true,
                threads: 3,
                start_time: 12345
            }
        );
        assert_eq!(parse_proc_stat(b"42 (x"), None);
    }

    /// file-nr is allocated, free, max: open files are the first less the second.
    #[test]
    fn file_nr_fields() {
        assert_eq!(
            parse_file_nr("2304\t0\t9223372036854775807\n"),
            Some((2304, 9223372036854775807))
        );
        assert_eq!(parse_file_nr("10 2 100"), Some((8, 100)));
        assert_eq!(parse_file_nr("x"), None);
    }

    /// TIME_WAIT is the `tw` of the TCP line of sockstat.
    #[test]
    fn sockstat_tw() {
        let text =
            "sockets: used 120\nTCP: inuse 5 orphan 0 tw 17 alloc 9 mem 1\nUDP: inuse 1 mem 0\n";
        assert_eq!(parse_sockstat_tw(text), Some(17));
        assert_eq!(parse_sockstat_tw("UDP: inuse 1\n"), None);
    }

    /// A /proc/net/tcp line gives the state and the inode.
    #[test]
    fn tcp_lines() {
        let line = "   0: 0100007F:1F90 0100007F:C350 08 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(parse_tcp_line(line), Some((123456, TCP_CLOSE_WAIT)));
    }
}
