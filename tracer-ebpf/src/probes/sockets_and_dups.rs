//! socket, accept, accept4, dup, dup2, dup3: descriptors born without a path.
//!
//! Kernel: net/socket.c __sys_socket(), __sys_accept4(); fs/file.c ksys_dup(), ksys_dup3().

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{EventKind, FdEvent, Syscall};

use super::{stash, syscall_result, take_in_flight};
use crate::{
    emit::{Caller, read_u64, user_stack_id},
    maps::{EVENTS, LOST_RING_FULL, count_lost, offset},
};

const FD_CREATORS: &[Syscall] = &[
    Syscall::Socket,
    Syscall::Accept,
    Syscall::Accept4,
    Syscall::Dup,
    Syscall::Dup2,
    Syscall::Dup3,
];

#[tracepoint]
pub fn sys_enter_socket(ctx: TracePointContext) -> u32 {
    if let Some(caller) = Caller::followed() {
        let family = read_u64(&ctx, offset!(socket_family));
        let kind = read_u64(&ctx, offset!(socket_type));
        let protocol = read_u64(&ctx, offset!(socket_protocol));
        stash(caller, Syscall::Socket, family, kind, protocol);
    }
    0
}

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    if let Some(caller) = Caller::followed() {
        let listener = read_u64(&ctx, offset!(accept_fd));
        stash(caller, Syscall::Accept, listener, 0, 0);
    }
    0
}

#[tracepoint]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    if let Some(caller) = Caller::followed() {
        let listener = read_u64(&ctx, offset!(accept4_fd));
        let flags = read_u64(&ctx, offset!(accept4_flags));
        stash(caller, Syscall::Accept4, listener, flags, 0);
    }
    0
}

#[tracepoint]
pub fn sys_enter_dup(ctx: TracePointContext) -> u32 {
    if let Some(caller) = Caller::followed() {
        let old = read_u64(&ctx, offset!(dup_fildes));
        stash(caller, Syscall::Dup, old, 0, 0);
    }
    0
}

#[tracepoint]
pub fn sys_enter_dup2(ctx: TracePointContext) -> u32 {
    if let Some(caller) = Caller::followed() {
        let old = read_u64(&ctx, offset!(dup2_oldfd));
        stash(caller, Syscall::Dup2, old, 0, 0);
    }
    0
}

#[tracepoint]
pub fn sys_enter_dup3(ctx: TracePointContext) -> u32 {
    if let Some(caller) = Caller::followed() {
        let old = read_u64(&ctx, offset!(dup3_oldfd));
        let flags = read_u64(&ctx, offset!(dup3_flags));
        stash(caller, Syscall::Dup3, old, flags, 0);
    }
    0
}

#[tracepoint]
pub fn sys_exit_socket(ctx: TracePointContext) -> u32 {
    emit_fd_created(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    emit_fd_created(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    emit_fd_created(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_dup(ctx: TracePointContext) -> u32 {
    emit_fd_created(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_dup2(ctx: TracePointContext) -> u32 {
    emit_fd_created(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_dup3(ctx: TracePointContext) -> u32 {
    emit_fd_created(&ctx);
    0
}

#[inline(always)]
fn emit_fd_created(ctx: &TracePointContext) {
    let caller = Caller::current();
    let Some(args) = take_in_flight(caller.pid_tgid, FD_CREATORS) else {
        return;
    };
    let fd = syscall_result(ctx);
    if fd < 0 {
        return;
    }
    let stack_id = user_stack_id(ctx);
    let event = FdEvent {
        header: caller.header(EventKind::FdCreated, stack_id),
        fd: fd as i32,
        syscall: args.syscall,
        arg0: args.arg0,
        arg1: args.arg1,
        arg2: args.arg2,
    };
    if EVENTS.output::<FdEvent>(&event, 0).is_err() {
        count_lost(LOST_RING_FULL);
    }
}
