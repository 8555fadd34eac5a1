//! socket, accept, accept4, dup, dup2, dup3: descriptors born without a path.
//!
//! Kernel: net/socket.c __sys_socket(), __sys_accept4(); fs/file.c ksys_dup(), ksys_dup3().

use aya_ebpf::programs::TracePointContext;
use tracer_common::{EventKind, NO_STACK, StackRegs, Syscall, abi::EBADF, python::py_resume_slot};

use super::{args_at_exit, exit_probes, syscall_result};
use crate::{
    emit::{Caller, StackStart, SyscallRegs, capture_stack},
    maps::{FD_SCRATCH, output_with_stack},
    python::{self, Frames},
};

exit_probes!(
    emit_fd_created:
    sys_exit_socket => Socket,
    sys_exit_accept => Accept,
    sys_exit_accept4 => Accept4,
    sys_exit_dup => Dup,
    sys_exit_dup2 => Dup2,
    sys_exit_dup3 => Dup3,
);

#[inline(always)]
pub(super) fn emit_fd_created(ctx: &TracePointContext, syscall: Syscall) {
    let caller = Caller::current();
    let Some(args) = args_at_exit(ctx, &caller, syscall) else {
        return;
    };
    let fd = syscall_result(ctx);
    if fd < 0 {
        // dup2/dup3 onto a number, from an old descriptor that is not open (or onto a number
        // past the limit: userspace tells which from its table).
        if fd == -EBADF && matches!(syscall, Syscall::Dup2 | Syscall::Dup3) {
            let new_fd = SyscallRegs::current().map_or(-1, |regs| regs.args[1] as u32 as i32);
            let frames = Frames::Walk {
                slot: py_resume_slot(syscall),
            };
            emit_close_failed(
                ctx,
                caller,
                args.arg0 as u32 as i32,
                syscall,
                new_fd,
                frames,
            );
        }
        return;
    }
    emit_fd_event(
        ctx,
        caller,
        fd as i32,
        args.syscall,
        [args.arg0, args.arg1, args.arg2],
        Frames::Walk {
            slot: py_resume_slot(syscall),
        },
    );
}

/// Emits one [`EventKind::FdCreated`] [`FdEvent`] with the caller's user stack, and the
/// Python frames as `frames` says.
#[inline(always)]
pub(super) fn emit_fd_event(
    ctx: &TracePointContext,
    caller: Caller,
    fd: i32,
    syscall: u32,
    args: [u64; 3],
    frames: Frames,
) {
    emit(
        Some((ctx, frames)),
        caller,
        EventKind::FdCreated,
        fd,
        syscall,
        args,
    );
}

/// Emits one [`EventKind::CloseFailed`] [`FdEvent`] with the caller's user stack: `fd` was
/// not open when `syscall` named it (for dup2/dup3, `target` is the number it was copied onto,
/// -1 for close).
#[inline(always)]
pub(super) fn emit_close_failed(
    ctx: &TracePointContext,
    caller: Caller,
    fd: i32,
    syscall: Syscall,
    target: i32,
    frames: Frames,
) {
    let args = [target as i64 as u64, 0, 0];
    emit(
        Some((ctx, frames)),
        caller,
        EventKind::CloseFailed,
        fd,
        syscall as u32,
        args,
    );
}

/// Emits one [`EventKind::FdChanged`] [`FdEvent`]: no stack, since the report never shows
/// where a flag changed or a range was closed.
#[inline(always)]
pub(super) fn emit_fd_changed(caller: Caller, fd: i32, syscall: u32, args: [u64; 3]) {
    emit(None, caller, EventKind::FdChanged, fd, syscall, args);
}

/// Writes one [`FdEvent`] into the ring; with `birth` (the tracepoint's context), the user
/// stack too, and the Python frames before it as its [`Frames`] say.
#[inline(always)]
fn emit(
    birth: Option<(&TracePointContext, Frames)>,
    caller: Caller,
    kind: EventKind,
    fd: i32,
    syscall: u32,
    [arg0, arg1, arg2]: [u64; 3],
) {
    let Some(scratch) = FD_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    if let Some((ctx, frames)) = birth {
        python::capture(ctx, caller, frames);
    }
    // SAFETY: `scratch` is this CPU's scratch record; every field of the event is written
    // (the stack marked absent, sp = 0 and len = 0, when not taken), and the stack bytes
    // that are sent.
    unsafe {
        let event = &raw mut (*scratch).event;
        let (copied, stack_id) = match birth {
            Some((ctx, _)) => capture_stack(
                ctx,
                caller,
                StackStart::UNKNOWN,
                &raw mut (*event).stack,
                &raw mut (*scratch).bytes,
            ),
            None => {
                (*event).stack = StackRegs::default();
                (0, NO_STACK)
            }
        };
        (*event).header = caller.header(kind, stack_id);
        (*event).fd = fd;
        (*event).syscall = syscall;
        (*event).arg0 = arg0;
        (*event).arg1 = arg1;
        (*event).arg2 = arg2;
        output_with_stack(scratch, copied);
    }
}
