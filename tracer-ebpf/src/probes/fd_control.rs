//! fcntl (F_DUPFD, F_DUPFD_CLOEXEC, F_SETFD), close_range and unshare(CLONE_FILES): copies,
//! close-on-exec flag changes, block closes and table unsharing that the exec and close
//! bookkeeping must know about.
//!
//! Kernel: fs/fcntl.c do_fcntl(); fs/file.c __close_range(); kernel/fork.c ksys_unshare().

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{
    Syscall,
    abi::{CLONE_FILES, F_DUPFD, F_DUPFD_CLOEXEC, F_SETFD},
    python::py_resume_slot,
};

use super::{
    call_at_exit,
    sockets_and_dups::{emit_fd_changed, emit_fd_event},
};
use crate::{
    emit::{Caller, read_u64},
    maps::offset,
    python::Frames,
};

/// Without a stash there is nothing to report: the command was one we ignore, or the call
/// began before the process was followed (then its effect is in the attach snapshot).
#[tracepoint]
pub(crate) fn sys_exit_fcntl(ctx: TracePointContext) -> u32 {
    let Some((caller, args, result)) = call_at_exit(&ctx, Syscall::Fcntl) else {
        return 0;
    };
    // Servers call F_GETFL/F_SETFL all the time; only these three change the table.
    let [cmd, arg] = [args.arg1 & 0xffff_ffff, args.arg2];
    if result < 0 || !(cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC || cmd == F_SETFD) {
        return 0;
    }
    let old_fd = args.arg0 as u32 as i32;
    if cmd == F_SETFD {
        emit_fd_changed(caller, old_fd, args.syscall, [0, cmd, arg]);
    } else {
        emit_fd_event(
            &ctx,
            caller,
            result as i32,
            args.syscall,
            [old_fd as u64, cmd, arg],
            Frames::Walk {
                slot: py_resume_slot(Syscall::Fcntl),
            },
        );
    }
    0
}

/// Emitted when the call starts, like close(2): a descriptor another thread opens while the
/// block is being closed lands in an already closed slot and stays, and its open event then
/// comes after this one. Userspace ignores calls whose arguments the kernel rejects.
#[tracepoint]
pub(crate) fn sys_enter_close_range(ctx: TracePointContext) -> u32 {
    if let Some(caller) = Caller::followed() {
        let first = read_u64(&ctx, offset!(close_range_fd)) as u32;
        let last = read_u64(&ctx, offset!(close_range_max_fd)) & 0xffff_ffff;
        let flags = read_u64(&ctx, offset!(close_range_flags)) & 0xffff_ffff;
        emit_fd_changed(
            caller,
            first as i32,
            Syscall::CloseRange as u32,
            [last, flags, 0],
        );
    }
    0
}

#[tracepoint]
pub(crate) fn sys_exit_unshare(ctx: TracePointContext) -> u32 {
    let Some((caller, args, result)) = call_at_exit(&ctx, Syscall::Unshare) else {
        return 0;
    };
    if result == 0 && args.arg0 & CLONE_FILES != 0 {
        emit_fd_changed(caller, -1, args.syscall, [args.arg0, 0, 0]);
    }
    0
}
