//! The bpftrace programs the tracer is compared with, per micro workload: an "equivalent"
//! tracker that keeps a map of open descriptors keyed by (pid, fd), inserted on each
//! successful creating syscall and deleted on close: the open time (`nsecs`), or the user
//! stack (`ustack`) as the tracer records one. (The empty-program floor is not bpftrace's:
//! see `floor.rs`.)

use super::workload::Micro;

/// Exit tracepoints that return a new descriptor in `micro`.
fn creating_exits(micro: Micro) -> &'static [&'static str] {
    match micro {
        Micro::Open => &["syscalls:sys_exit_openat"],
        Micro::Socket => &["syscalls:sys_exit_socket"],
        Micro::Connect => &["syscalls:sys_exit_socket", "syscalls:sys_exit_accept4"],
    }
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
