//! pipe, pipe2, socketpair: two descriptors at once, written to a user array on success.
//!
//! Kernel: fs/pipe.c do_pipe2(); net/socket.c __sys_socketpair().

use aya_ebpf::{helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext};
use tracer_common::{ARG_UNKNOWN, Syscall};

use super::{args_at_exit, exit_probes, sockets_and_dups::emit_fd_event, stash, syscall_result};
use crate::{
    emit::{Caller, read_u64},
    maps::offset,
};

#[tracepoint]
pub fn sys_enter_pipe(ctx: TracePointContext) -> u32 {
    if let Some(caller) = Caller::followed() {
        let fds = read_u64(&ctx, offset!(pipe_fildes));
        stash(caller, Syscall::Pipe, fds, 0, 0);
    }
    0
}

#[tracepoint]
pub fn sys_enter_pipe2(ctx: TracePointContext) -> u32 {
    if let Some(caller) = Caller::followed() {
        let fds = read_u64(&ctx, offset!(pipe2_fildes));
        let flags = read_u64(&ctx, offset!(pipe2_flags));
        stash(caller, Syscall::Pipe2, fds, flags, 0);
    }
    0
}

#[tracepoint]
pub fn sys_enter_socketpair(ctx: TracePointContext) -> u32 {
    if let Some(caller) = Caller::followed() {
        let fds = read_u64(&ctx, offset!(socketpair_usockvec));
        let kind = read_u64(&ctx, offset!(socketpair_type));
        let family = read_u64(&ctx, offset!(socketpair_family));
        stash(caller, Syscall::Socketpair, fds, kind, family);
    }
    0
}

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
    let Some(args) = args_at_exit(caller, syscall) else {
        return;
    };
    // Without the array's address (began before attach) the fds are unknown; /proc
    // reconciliation at report time covers them.
    if syscall_result(ctx) != 0 || args.arg0 == ARG_UNKNOWN {
        return;
    }
    // SAFETY: a bounded read of the user's int[2]; the kernel has just written it.
    let Ok(fds) = (unsafe { bpf_probe_read_user(args.arg0 as *const [i32; 2]) }) else {
        return;
    };
    emit_fd_event(
        ctx,
        caller,
        fds[0],
        args.syscall,
        [fds[1] as u64, args.arg1, args.arg2],
    );
    emit_fd_event(
        ctx,
        caller,
        fds[1],
        args.syscall,
        [fds[0] as u64, args.arg1, args.arg2],
    );
}
