//! pipe, pipe2, socketpair: two descriptors at once, written to a user array on success.
//!
//! Kernel: fs/pipe.c do_pipe2(); net/socket.c __sys_socketpair().

use aya_ebpf::{helpers::bpf_probe_read_user, programs::TracePointContext};
use aya_log_ebpf::debug;
use tracer_common::{ARG_UNKNOWN, Syscall, python::py_resume_slot};

use super::{args_at_exit, exit_probes, sockets_and_dups::emit_fd_event, syscall_result};
use crate::{emit::Caller, python::Frames};

exit_probes!(
    emit_pair:
    sys_exit_pipe => Pipe,
    sys_exit_pipe2 => Pipe2,
    sys_exit_socketpair => Socketpair,
);

/// One event per end; each names the other end in arg0.
#[inline(always)]
fn emit_pair(ctx: &TracePointContext, syscall: Syscall) {
    let caller = Caller::current();
    let Some(args) = args_at_exit(ctx, &caller, syscall) else {
        return;
    };
    // Without the array's address (began before attach) the fds are unknown; /proc
    // reconciliation at report time covers them.
    if syscall_result(ctx) != 0 || args.arg0 == ARG_UNKNOWN {
        return;
    }
    // SAFETY: a bounded read of the user's int[2]; the kernel has just written it.
    let fds = match unsafe { bpf_probe_read_user(args.arg0 as *const [i32; 2]) } {
        Ok(fds) => fds,
        Err(error) => {
            debug!(
                ctx,
                "tid {}: cannot read the two descriptors at {:x} (error {})",
                caller.tid,
                args.arg0,
                error
            );
            return;
        }
    };
    let first = Frames::Walk {
        slot: py_resume_slot(syscall),
    };
    emit_fd_event(
        ctx,
        caller,
        fds[0],
        args.syscall,
        [fds[1] as u64, args.arg1, args.arg2],
        first,
    );
    // The same frames again: the walker runs once per program run.
    emit_fd_event(
        ctx,
        caller,
        fds[1],
        args.syscall,
        [fds[0] as u64, args.arg1, args.arg2],
        Frames::Resend,
    );
}
