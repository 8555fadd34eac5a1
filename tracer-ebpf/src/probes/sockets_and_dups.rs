//! socket, accept, accept4, dup, dup2, dup3: descriptors born without a path.
//!
//! Kernel: net/socket.c __sys_socket(), __sys_accept4(); fs/file.c ksys_dup(), ksys_dup3().

use aya_ebpf::programs::TracePointContext;
use tracer_common::{EventKind, NO_STACK, StackRegs, Syscall};

use super::{args_at_exit, exit_probes, syscall_result};
use crate::{
    emit::{Caller, capture_stack},
    maps::{FD_SCRATCH, output_with_stack},
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
    let Some(args) = args_at_exit(ctx, caller, syscall) else {
        return;
    };
    let fd = syscall_result(ctx);
    if fd < 0 {
        return;
    }
    emit_fd_event(
        ctx,
        caller,
        fd as i32,
        args.syscall,
        [args.arg0, args.arg1, args.arg2],
    );
}

/// Emits one [`EventKind::FdCreated`] [`FdEvent`] with the caller's user stack.
#[inline(always)]
pub(super) fn emit_fd_event(
    ctx: &TracePointContext,
    caller: Caller,
    fd: i32,
    syscall: u32,
    args: [u64; 3],
) {
    emit(Some(ctx), caller, EventKind::FdCreated, fd, syscall, args);
}

/// Emits one [`EventKind::FdChanged`] [`FdEvent`]: no stack, since the report never shows
/// where a flag changed or a range was closed.
#[inline(always)]
pub(super) fn emit_fd_changed(caller: Caller, fd: i32, syscall: u32, args: [u64; 3]) {
    emit(None, caller, EventKind::FdChanged, fd, syscall, args);
}

/// Writes one [`FdEvent`] into the ring; with `birth` (the tracepoint's context), the user
/// stack too.
#[inline(always)]
fn emit(
    birth: Option<&TracePointContext>,
    caller: Caller,
    kind: EventKind,
    fd: i32,
    syscall: u32,
    [arg0, arg1, arg2]: [u64; 3],
) {
    let Some(scratch) = FD_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: `scratch` is this CPU's scratch record; every field of the event is written
    // (the stack marked absent, sp = 0 and len = 0, when not taken), and the stack bytes
    // that are sent.
    unsafe {
        let event = &raw mut (*scratch).event;
        let (copied, stack_id) = match birth {
            Some(ctx) => capture_stack(
                ctx,
                caller.tid,
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
