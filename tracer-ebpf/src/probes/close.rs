//! close(2). The close itself is emitted on entry: Linux releases the descriptor even when
//! close then fails (fs/open.c: file_close_fd() runs before filp_flush()), except for EBADF
//! where there was nothing to release, which the table ignores. A close that fails with
//! EBADF is reported again from the exit probe, with its stack: a close of a descriptor that
//! was not open (a double close, or a close of a number never opened).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{CloseEvent, EventKind, NO_STACK, Syscall, abi::EBADF};

use super::{sockets_and_dups::emit_close_failed, syscall_result};
use crate::{
    emit::{Caller, SyscallRegs, read_u64},
    maps::{offset, output},
};

/// `--all`: a close that succeeded in a process nobody follows is counted (see `host.rs`);
/// without `--all`, this returns before the lookup.
#[inline(always)]
fn count_close_if_unfollowed() {
    if !crate::host::host_wide() {
        return;
    }
    let caller = Caller::current();
    if !caller.is_followed() {
        crate::host::count_close(caller.tgid);
    }
}

#[tracepoint]
pub(crate) fn sys_enter_close(ctx: TracePointContext) -> u32 {
    if let Some(caller) = Caller::followed() {
        let event = CloseEvent {
            header: caller.header(EventKind::FdClosed, NO_STACK),
            fd: read_u64(&ctx, offset!(close_fd)) as i32,
            _pad: 0,
        };
        output(&event);
    }
    0
}

/// Runs for every close on the machine, followed or not, so the result is tested first: a
/// close that did not fail with EBADF costs the program's dispatch and one load of the
/// record, not even the followed lookup. Only failing closes of followed processes read the
/// saved registers (for the fd) and capture a stack.
#[tracepoint]
pub(crate) fn sys_exit_close(ctx: TracePointContext) -> u32 {
    let result = syscall_result(&ctx);
    if result != -EBADF {
        if result == 0 {
            count_close_if_unfollowed();
        }
        return 0;
    }
    if let Some(caller) = Caller::followed() {
        let fd = SyscallRegs::current().map_or(-1, |regs| regs.args[0] as u32 as i32);
        emit_close_failed(&ctx, caller, fd, Syscall::Close, -1);
    }
    0
}
