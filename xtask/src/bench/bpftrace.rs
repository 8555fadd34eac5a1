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
