//! close(2). Emitted on entry: Linux releases the descriptor even when close then fails
//! (fs/open.c: file_close_fd() runs before filp_flush()), except for EBADF where there was
//! nothing to release, which userspace ignores. One probe instead of an enter/exit pair.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{CloseEvent, EventKind, NO_STACK};

use crate::{
    emit::{Caller, read_u64},
    maps::{offset, output},
};

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
