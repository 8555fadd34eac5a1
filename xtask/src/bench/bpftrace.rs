//! The bpftrace programs the tracer is compared with, per micro workload.
//!
//! The floor ("an empty BPF program on the same tracepoints") is bpftrace with empty
//! actions on exactly the tracepoints whose programs run for that workload in the tracer
//! (see the PROBES list in tracer-userspace/src/loader.rs: exit programs, which read the
//! arguments from the saved registers, and close's enter program),
//! filtered to the workload's pid as the tracer filters to followed pids. bpftrace attaches
//! them the same way the tracer does (perf-event tracepoint links), so what remains is the
//! kernel's cost of running any program there: the floor no tracer on these tracepoints can
//! go below. A loader of our own would need a second eBPF object and build; bpftrace is the
//! tool users would reach for anyway and is measured below as well.
//!
//! The "equivalent" bpftrace tracker keeps a map of open descriptors keyed by (pid, fd),
//! inserted on each successful creating syscall and deleted on close: the open time
//! (`nsecs`), or the user stack (`ustack`) as the tracer records one.

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::workload::Micro;

/// Tracepoints the tracer runs a program on during one iteration of `micro`.
fn tracepoints(micro: Micro) -> &'static [&'static str] {
    match micro {
        Micro::Open => &["syscalls:sys_exit_openat", "syscalls:sys_enter_close"],
        Micro::Socket => &["syscalls:sys_exit_socket", "syscalls:sys_enter_close"],
        Micro::Connect => &[
            "syscalls:sys_exit_socket",
            "syscalls:sys_exit_accept4",
            "syscalls:sys_enter_close",
            "sock:inet_sock_set_state",
        ],
    }
}

/// Every tracepoint the tracer attaches a program to (PROBES in
/// tracer-userspace/src/capture/loader.rs): for a floor under a process that makes many kinds
/// of syscall (nginx), where listing those that fire would miss some.
const ALL_TRACEPOINTS: &[&str] = &[
    "syscalls:sys_exit_open",
    "syscalls:sys_exit_openat",
    "syscalls:sys_exit_openat2",
    "syscalls:sys_exit_creat",
    "syscalls:sys_exit_socket",
    "syscalls:sys_exit_accept",
    "syscalls:sys_exit_accept4",
    "syscalls:sys_exit_dup",
    "syscalls:sys_exit_dup2",
    "syscalls:sys_exit_dup3",
    "syscalls:sys_exit_pipe",
    "syscalls:sys_exit_pipe2",
    "syscalls:sys_exit_socketpair",
    "syscalls:sys_enter_close",
    "syscalls:sys_exit_eventfd",
    "syscalls:sys_exit_epoll_create",
    "syscalls:sys_exit_pidfd_open",
    "syscalls:sys_exit_inotify_init",
    "syscalls:sys_exit_io_uring_setup",
    "syscalls:sys_exit_chdir",
    "syscalls:sys_exit_fchdir",
    "syscalls:sys_exit_eventfd2",
    "syscalls:sys_exit_epoll_create1",
    "syscalls:sys_exit_timerfd_create",
    "syscalls:sys_exit_signalfd",
    "syscalls:sys_exit_signalfd4",
    "syscalls:sys_exit_memfd_create",
    "syscalls:sys_exit_pidfd_getfd",
    "syscalls:sys_exit_inotify_init1",
    "syscalls:sys_exit_fanotify_init",
    "syscalls:sys_exit_userfaultfd",
    "syscalls:sys_exit_perf_event_open",
    "syscalls:sys_exit_open_by_handle_at",
    "syscalls:sys_exit_fcntl",
    "syscalls:sys_enter_close_range",
    "syscalls:sys_exit_unshare",
    "syscalls:sys_exit_recvmsg",
    "sched:sched_process_fork",
    "sched:sched_process_exit",
    "sched:sched_process_exec",
    "sock:inet_sock_set_state",
];

/// Empty programs on every tracepoint of the tracer's that this kernel has (`exists` says),
/// filtered to `pids` as the tracer filters to followed processes: the floor for a server.
/// Returns the script and how many probes it has.
pub(crate) fn all_floor(pids: &[u32], exists: impl Fn(&str) -> bool) -> (String, usize) {
    let filter: Vec<String> = pids.iter().map(|pid| format!("pid == {pid}")).collect();
    let filter = filter.join(" || ");
    let probes: Vec<String> = ALL_TRACEPOINTS
        .iter()
        .filter(|tracepoint| exists(tracepoint))
        .map(|tracepoint| format!("tracepoint:{tracepoint} /{filter}/ {{}}\n"))
        .collect();
    (probes.concat(), probes.len())
}

/// Waits until bpftrace `pid` has attached its `probes` tracepoint programs: it opens one
/// perf event per tracepoint, after one per CPU for its output buffer.
pub(crate) fn wait_attached(pid: u32, probes: usize, timeout: Duration) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    loop {
        let perf_events = fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| {
                fds.flatten()
                    .filter(|fd| {
                        fs::read_link(fd.path())
                            .is_ok_and(|t| t.as_os_str() == "anon_inode:[perf_event]")
                    })
                    .count()
            })
            .unwrap_or(0);
        if perf_events >= probes + cpus {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!(
                "bpftrace attached {perf_events} perf events of {probes} probes + {cpus} CPUs in {timeout:?}"
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Exit tracepoints that return a new descriptor in `micro`.
fn creating_exits(micro: Micro) -> &'static [&'static str] {
    match micro {
        Micro::Open => &["syscalls:sys_exit_openat"],
        Micro::Socket => &["syscalls:sys_exit_socket"],
        Micro::Connect => &["syscalls:sys_exit_socket", "syscalls:sys_exit_accept4"],
    }
}

/// Empty programs on the workload's tracepoints, filtered to the command bpftrace starts.
pub(crate) fn empty_floor(micro: Micro) -> String {
    tracepoints(micro)
        .iter()
        .map(|tracepoint| format!("tracepoint:{tracepoint} /pid == cpid/ {{}}\n"))
        .collect()
}

/// A map of open descriptors, with the user stack of each when `ustack`.
pub(crate) fn open_map(micro: Micro, ustack: bool) -> String {
    let value = if ustack { "ustack" } else { "nsecs" };
    let mut script: String = creating_exits(micro)
        .iter()
        .map(|tracepoint| {
            format!(
                "tracepoint:{tracepoint} /pid == cpid && args->ret >= 0/ {{ @open[pid, args->ret] = {value}; }}\n"
            )
        })
        .collect();
    // close's fd is unsigned; the key must have the type the inserts used.
    script.push_str(
        "tracepoint:syscalls:sys_enter_close /pid == cpid/ { delete(@open[pid, (int64)args->fd]); }\n",
    );
    // Without this bpftrace prints whatever is left in the map when it exits.
    script.push_str("END { clear(@open); }\n");
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The floor has one empty, pid-filtered block per tracepoint the tracer uses.
    #[test]
    fn floor_covers_every_tracepoint_with_empty_actions() {
        let script = empty_floor(Micro::Connect);
        assert_eq!(script.lines().count(), 4);
        assert!(script.contains("tracepoint:sock:inet_sock_set_state /pid == cpid/ {}"));
        assert!(script.contains("tracepoint:syscalls:sys_enter_close /pid == cpid/ {}"));
        assert!(script.lines().all(|line| line.ends_with("{}")));
    }

    /// The server floor filters to every pid given and leaves out missing tracepoints.
    #[test]
    fn server_floor_filters_pids_and_skips_missing_tracepoints() {
        let (script, probes) = all_floor(&[10, 11], |tp| !tp.ends_with("openat2"));
        assert_eq!(probes, ALL_TRACEPOINTS.len() - 1);
        assert_eq!(script.lines().count(), probes);
        assert!(script.contains("tracepoint:syscalls:sys_exit_openat /pid == 10 || pid == 11/ {}"));
        assert!(!script.contains("openat2"));
    }

    /// The tracker inserts on every creating exit and deletes on close.
    #[test]
    fn map_inserts_and_deletes() {
        let script = open_map(Micro::Connect, true);
        assert!(script.contains(
            "sys_exit_socket /pid == cpid && args->ret >= 0/ { @open[pid, args->ret] = ustack; }"
        ));
        assert!(script.contains("sys_exit_accept4"));
        assert!(script.contains("delete(@open[pid, (int64)args->fd])"));
        assert!(open_map(Micro::Open, false).contains("= nsecs;"));
    }
}
