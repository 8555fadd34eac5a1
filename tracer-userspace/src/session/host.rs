//! `--all` in the session: a look at the host every second (/proc/*/stat, the kernel's
//! per-process counts, descriptor counts of the processes whose counts moved, CLOSE_WAIT of
//! the fastest growers), a line every few seconds while it runs, `--follow-top` (full tracing
//! of the fastest growers once they leak), and the report's `host` section.

use std::collections::HashMap;

use super::{attach, pipeline::State, resolver::placement};
use crate::{
    clock::monotonic_ns,
    host::{HostWatch, Level, Seen},
    procfs,
    report::{HostProcess, HostSection},
};

/// How often /proc is looked at.
const LOOK_EVERY_NS: u64 = 1_000_000_000;
/// How often a line says what is leaking.
const PRINT_EVERY_NS: u64 = 5_000_000_000;
/// Every this many looks, every process's descriptors are counted again (an exec closing
/// close-on-exec descriptors, or close_range, changes them without a counted close).
const RECOUNT_ALL_EVERY: u64 = 10;
/// The fastest growers whose CLOSE_WAIT sockets are looked at, each look.
const CLOSE_WAIT_OF_TOP: usize = 10;

/// The host-wide watch of a session.
pub(super) struct HostSession {
    pub(super) watch: HostWatch,
    follow_top: usize,
    last_look_ns: u64,
    last_print_ns: u64,
    own_pid: u32,
}

impl HostSession {
    pub(super) fn new(follow_top: usize, started_ns: u64) -> Self {
        Self {
            watch: HostWatch::new(),
            follow_top,
            last_look_ns: 0,
            last_print_ns: started_ns,
            own_pid: std::process::id(),
        }
    }
}

/// Looks at the host when a look is due, prints a line when one is due, and follows the
/// fastest growers (`--follow-top`). Called at each housekeeping tick.
pub(super) fn tick(state: &mut State<'_>) {
    let now = monotonic_ns();
    let Some(host) = state.host.as_mut() else {
        return;
    };
    if now.saturating_sub(host.last_look_ns) < LOOK_EVERY_NS {
        return;
    }
    host.last_look_ns = now;
    look(host, state.probes, now);
    if now.saturating_sub(host.last_print_ns) >= PRINT_EVERY_NS {
        host.last_print_ns = now;
        eprint!("{}", status_line(&host.watch, now));
    }
    let to_follow: Vec<(u32, String)> = host
        .watch
        .to_follow(host.follow_top, now)
        .into_iter()
        .map(|w| {
            let rate = w.per_minute(Level::Descriptors, now);
            (
                w.pid,
                format!("--follow-top: growing {rate:+.1} descriptors/min"),
            )
        })
        .collect();
    for (pid, why) in to_follow {
        if let Some(host) = state.host.as_mut() {
            host.watch.mark_followed(pid, now);
        }
        attach::adopt(state, pid, why, now);
    }
}

/// One look: every process's stat line, the kernel's counts, and what moved.
fn look(host: &mut HostSession, probes: &crate::capture::Probes, now: u64) {
    let seen: Vec<Seen> = procfs::all_stats()
        .into_iter()
        .filter(|s| s.pid != host.own_pid)
        .map(|s| Seen {
            pid: s.pid,
            ppid: s.ppid,
            comm: s.comm,
            start_time: s.start_time,
            threads: s.threads,
            zombie: s.zombie,
        })
        .collect();
    let new = host.watch.look(&seen, now);
    let mut recount: Vec<u32> = if host.watch.looks % RECOUNT_ALL_EVERY == 1 {
        seen.iter().filter(|s| !s.zombie).map(|s| s.pid).collect()
    } else {
        new
    };
    for (pid, counts) in probes.host_counts.read_all() {
        if host.watch.kernel_counts(pid, counts) {
            recount.push(pid);
        }
    }
    // Followed processes are counted by their events, not in HOST_COUNTS.
    recount.extend(host.watch.followed());
    recount.sort_unstable();
    recount.dedup();
    for pid in recount {
        if let Ok(count) = procfs::open_fd_count(pid) {
            host.watch.set(pid, Level::Descriptors, count, now);
        }
    }
    close_wait_of_top(&mut host.watch, now);
    host.watch.file_nr = procfs::file_nr();
    if let Some(time_wait) = procfs::time_wait_count() {
        host.watch.time_wait.set(time_wait, now);
    }
}

/// CLOSE_WAIT sockets of the fastest growers that grow: their socket inodes against their
/// network namespace's TCP table (read once per namespace, and not at all while nothing
/// grows: a table of many connections is not cheap to read).
fn close_wait_of_top(watch: &mut HostWatch, now: u64) {
    let top: Vec<u32> = watch
        .ranked(now)
        .iter()
        .take(CLOSE_WAIT_OF_TOP)
        .filter(|w| w.score(now) > 0.0 || w.value(Level::CloseWait).is_some_and(|n| n > 0))
        .map(|w| w.pid)
        .collect();
    let mut tables: HashMap<u64, HashMap<u64, u8>> = HashMap::new();
    for pid in top {
        let Ok(netns) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        let states = tables
            .entry(std::os::unix::fs::MetadataExt::ino(&netns))
            .or_insert_with(|| procfs::tcp_states(pid));
        let close_wait = procfs::socket_inodes(pid)
            .iter()
            .filter(|inode| states.get(inode) == Some(&procfs::TCP_CLOSE_WAIT))
            .count() as u64;
        watch.set(pid, Level::CloseWait, close_wait, now);
    }
}

/// The line printed every few seconds: how many processes, the host's files, and the
/// processes leaking now (at most three).
fn status_line(watch: &HostWatch, now: u64) -> String {
    let files = watch
        .file_nr
        .map(|(open, max)| format!("{open} files open (fs.file-max {max})"))
        .unwrap_or_default();
    let leaking: Vec<String> = watch
        .ranked(now)
        .into_iter()
        .filter(|w| w.leaking(now))
        .take(3)
        .map(|w| {
            format!(
                "pid {} ({}) {} fds {:+.1}/min",
                w.pid,
                w.comm,
                w.value(Level::Descriptors)
                    .map_or("?".to_owned(), |n| n.to_string()),
                w.per_minute(Level::Descriptors, now)
            )
        })
        .collect();
    let leaking = if leaking.is_empty() {
        "nothing leaking".to_owned()
    } else {
        format!("leaking: {}", leaking.join("; "))
    };
    format!(
        "tracer --all: {} processes, {files}; {leaking}\n",
        watch.len()
    )
}

/// The report's `host` section: every process ranked, with what /proc says of it now.
pub(super) fn section(
    host: &mut HostSession,
    probes: &crate::capture::Probes,
    started_ns: u64,
) -> HostSection {
    let now = monotonic_ns();
    look(host, probes, now);
    let watch = &host.watch;
    let processes: Vec<HostProcess> = watch
        .ranked(now)
        .into_iter()
        .map(|w| {
            let descriptors = w.value(Level::Descriptors);
            let per_minute = w.per_minute(Level::Descriptors, now);
            let fd_limit = procfs::nofile_limit(w.pid);
            let fd_headroom = fd_limit
                .zip(descriptors)
                .map(|(limit, n)| limit.saturating_sub(n));
            let place = placement(w.pid);
            HostProcess {
                pid: w.pid,
                ppid: w.ppid,
                comm: w.comm.clone(),
                command: procfs::process_info(w.pid)
                    .map(|i| i.cmdline)
                    .unwrap_or_default(),
                leaking: w.leaking(now),
                descriptors,
                descriptors_per_minute: per_minute,
                fd_limit,
                fd_headroom,
                minutes_to_limit: fd_headroom
                    .filter(|_| per_minute > 0.0)
                    .map(|room| (room as f64 / per_minute * 10.0).round() / 10.0),
                sockets_created: w.kernel_counts.2,
                threads: w.value(Level::Threads),
                threads_per_minute: w.per_minute(Level::Threads, now),
                zombies: w.value(Level::Zombies),
                zombies_per_minute: w.per_minute(Level::Zombies, now),
                close_wait: w.value(Level::CloseWait),
                close_wait_per_minute: w.per_minute(Level::CloseWait, now),
                nspid: place.nspid,
                container: place.container,
                followed_since_s: w
                    .followed_since_ns
                    .map(|at| (at.saturating_sub(started_ns) as f64 / 1e6).round() / 1e3),
            }
        })
        .collect();
    let (open_files, file_max) = watch.file_nr.unzip();
    HostSection {
        looks: watch.looks,
        process_count: processes.len() as u64,
        open_files,
        file_max,
        file_headroom: watch.file_nr.map(|(open, max)| max.saturating_sub(open)),
        time_wait: watch.time_wait.value,
        time_wait_per_minute: watch.time_wait.per_minute(now),
        leaking: processes
            .iter()
            .filter(|p| p.leaking)
            .map(|p| p.pid)
            .collect(),
        processes,
    }
}
