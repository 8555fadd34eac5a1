//! Processes and their tree, from `/proc/PID/{stat,cmdline,status,task,cwd}`: who a pid is
//! ([`process_info`], [`start_time`]), whether it still exists, its threads, and every process
//! below it ([`descendants`]).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fs, io,
    os::unix::ffi::OsStrExt,
};

use crate::model::escape_bytes;

/// Facts about one process from `/proc/PID/{stat,cmdline,status}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    pub tgid: u32,
    /// The kernel's `comm` (at most 15 bytes; non-UTF-8 bytes replaced by U+FFFD).
    pub comm: String,
    /// `argv` as the process last left it; empty for kernel threads and zombies.
    pub cmdline: Vec<String>,
    /// starttime field of /proc/PID/stat (clock ticks since boot), to tell a reused pid apart
    pub start_time: u64,
    pub zombie: bool,
}

/// The fields of `/proc/PID/stat` this module uses.
#[derive(Clone, Debug, PartialEq, Eq)]
struct StatFields {
    pid: u32,
    comm: String,
    state: char,
    ppid: u32,
    start_time: u64,
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Parses one `/proc/PID/stat` line. `comm` may hold spaces and `)`, so it ends at the *last*
/// `)` of the line (nothing after it can contain one).
fn parse_stat(line: &[u8]) -> io::Result<StatFields> {
    let open = line
        .iter()
        .position(|&b| b == b'(')
        .ok_or_else(|| invalid("stat: no '('"))?;
    let close = line
        .iter()
        .rposition(|&b| b == b')')
        .filter(|&c| c > open)
        .ok_or_else(|| invalid("stat: no ')'"))?;
    let pid = std::str::from_utf8(&line[..open])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| invalid("stat: bad pid"))?;
    let comm = String::from_utf8_lossy(&line[open + 1..close]).into_owned();
    let rest = std::str::from_utf8(&line[close + 1..]).map_err(|_| invalid("stat: not ASCII"))?;
    // Fields after comm, numbered as in proc(5): 3 state, 4 ppid, ..., 22 starttime.
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n - 3)
            .copied()
            .ok_or_else(|| invalid(format!("stat: no field {n}")))
    };
    let state = field(3)?
        .chars()
        .next()
        .ok_or_else(|| invalid("stat: empty state"))?;
    let ppid = field(4)?.parse().map_err(|_| invalid("stat: bad ppid"))?;
    let start_time = field(22)?
        .parse()
        .map_err(|_| invalid("stat: bad starttime"))?;
    Ok(StatFields {
        pid,
        comm,
        state,
        ppid,
        start_time,
    })
}

/// Splits `/proc/PID/cmdline` (NUL-terminated arguments) into arguments.
fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

/// The `Tgid:` line of `/proc/PID/status`.
fn parse_status_tgid(status: &[u8]) -> Option<u32> {
    status.split(|&b| b == b'\n').find_map(|line| {
        let value = line.strip_prefix(b"Tgid:")?;
        std::str::from_utf8(value).ok()?.trim().parse().ok()
    })
}

/// Reads `/proc/PID/stat` (which must succeed), then `cmdline` and `status` (which may fail if
/// the process exits in between: the cmdline is then empty and the tgid taken to be the pid).
pub(crate) fn process_info(pid: u32) -> io::Result<ProcessInfo> {
    let stat = parse_stat(&fs::read(format!("/proc/{pid}/stat"))?)?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| parse_cmdline(&b))
        .unwrap_or_default();
    let tgid = fs::read(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| parse_status_tgid(&s))
        .unwrap_or(pid);
    Ok(ProcessInfo {
        pid: stat.pid,
        ppid: stat.ppid,
        tgid,
        comm: stat.comm,
        cmdline,
        start_time: stat.start_time,
        zombie: matches!(stat.state, 'Z' | 'X'),
    })
}

/// starttime of `pid` (clock ticks since boot), which tells a process from a later one that
/// got the same pid; `None` when there is no such process.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    parse_stat(&fs::read(format!("/proc/{pid}/stat")).ok()?)
        .ok()
        .map(|stat| stat.start_time)
}

/// The working directory of `pid`, escaped like paths (see [`escape_bytes`]).
pub(crate) fn cwd(pid: u32) -> Option<String> {
    let link = fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    Some(escape_bytes(link.as_os_str().as_bytes()))
}

/// Whether `pid` names a process or thread that has not been reaped yet (zombies exist).
pub(crate) fn process_exists(pid: u32) -> bool {
    pid != 0 && fs::metadata(format!("/proc/{pid}/stat")).is_ok()
}

/// The pids of every process (thread-group leader) in `/proc`, unsorted.
pub(crate) fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The thread ids of `pid` (`/proc/PID/task`), sorted; empty when the process is gone.
pub(crate) fn threads(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut tids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    tids
}
/// Every descendant of `pid` (children, grandchildren, ...) found from the ppid in every
/// `/proc/N/stat`; not `pid` itself; only thread-group leaders (the numeric directories of
/// `/proc` are processes). Parents come before their children (breadth first, siblings by pid).
///
/// Zombies are included: an exited child that nobody reaped is one of the leaks the tracer
/// reports (check [`ProcessInfo::zombie`] to leave them out). Processes reparented away from the
/// tree (their parent exited) are no longer its descendants.
pub(crate) fn descendants(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for n in all_pids() {
        // A process that exits while we scan is simply not there.
        let Ok(bytes) = fs::read(format!("/proc/{n}/stat")) else {
            continue;
        };
        if let Ok(stat) = parse_stat(&bytes) {
            children.entry(stat.ppid).or_default().push(n);
        }
    }
    tree_below(pid, &mut children)
}

/// Breadth-first walk of a ppid → children map from `root`, excluding `root`.
fn tree_below(root: u32, children: &mut HashMap<u32, Vec<u32>>) -> Vec<u32> {
    let mut out = Vec::new();
    let mut seen = HashSet::from([root]);
    let mut queue = VecDeque::from([root]);
    while let Some(parent) = queue.pop_front() {
        let Some(mut kids) = children.remove(&parent) else {
            continue;
        };
        kids.sort_unstable();
        for kid in kids {
            if seen.insert(kid) {
                out.push(kid);
                queue.push_back(kid);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
