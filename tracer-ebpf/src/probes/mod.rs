//! One module per probe family. Exit probes read the syscall's arguments from the caller's
//! saved registers and its result from the tracepoint, and emit one event; only close and
//! close_range, which take effect as they start, have enter probes.

pub(crate) mod close;
pub(crate) mod cwd;
pub(crate) mod fd_control;
pub(crate) mod files;
pub(crate) mod pairs;
pub(crate) mod received;
pub(crate) mod sockets_and_dups;
pub(crate) mod special_fds;
pub(crate) mod tasks;
pub(crate) mod tcp;
pub(crate) mod time_wait;

use aya_ebpf::programs::TracePointContext;
use aya_log_ebpf::debug;
use tracer_common::{
    ARG_UNKNOWN, Syscall,
    abi::{O_CREAT, O_TRUNC, O_WRONLY},
};

use crate::{
    emit::{Caller, StackStart, SyscallRegs, read_u64},
    maps::offset,
};

/// Defines one `sys_exit_*` program per `name => Syscall` pair, each handing its record to
/// `$emit(&ctx, Syscall::X)`: the exit side of a family differs only in the syscall.
macro_rules! exit_probes {
    ($emit:ident: $($name:ident => $syscall:ident),+ $(,)?) => {
        $(
            #[aya_ebpf::macros::tracepoint]
            pub(crate) fn $name(ctx: aya_ebpf::programs::TracePointContext) -> u32 {
                $emit(&ctx, tracer_common::Syscall::$syscall);
                0
            }
        )+
    };
}
use exit_probes;

/// What an exit probe knows of its syscall: which it is and the arguments it keeps, in the
/// order [`kept_args`] gives them.
#[derive(Clone, Copy)]
pub(crate) struct Args {
    pub syscall: u32,
    pub arg0: u64,
    pub arg1: u64,
    pub arg2: u64,
    /// Where the caller's stack starts, read with the arguments (for [`capture_stack`]).
    ///
    /// [`capture_stack`]: crate::emit::capture_stack
    pub stack_start: StackStart,
}

/// [`tracer_common::abi::AT_FDCWD`] as a syscall argument (sign-extended, as the kernel
/// passes an `int`).
const AT_FDCWD: u64 = tracer_common::abi::AT_FDCWD as u64;
/// What creat(2) is: open(path, O_CREAT | O_WRONLY | O_TRUNC).
const CREAT_FLAGS: u64 = O_CREAT | O_WRONLY | O_TRUNC;

/// The arguments of `syscall` that userspace needs, from the six the caller passed (`a`):
/// the directory fd, path and flags of an open; the flags that decide close-on-exec; the
/// old descriptor of a copy; the user memory where pipe and socketpair store their pair.
/// The meaning of each position per syscall is [`tracer_common::FdEvent`]'s.
#[inline(always)]
fn kept_args(ctx: &TracePointContext, syscall: Syscall, a: [u64; 6]) -> [u64; 3] {
    match syscall {
        Syscall::Open => [AT_FDCWD, a[0], a[1]],
        Syscall::Openat => [a[0], a[1], a[2]],
        Syscall::Openat2 => [a[0], a[1], read_open_how_flags(ctx, a[2])],
        Syscall::Creat => [AT_FDCWD, a[0], CREAT_FLAGS],
        // memfd_create(name, flags): the name is read like a path.
        Syscall::MemfdCreate => [AT_FDCWD, a[0], a[1]],
        Syscall::Socket => [a[0], a[1], a[2]],
        Syscall::Accept | Syscall::Dup | Syscall::Dup2 => [a[0], 0, 0],
        // accept4(fd, addr, addrlen, flags); dup3(old, new, flags).
        Syscall::Accept4 => [a[0], a[3], 0],
        Syscall::Dup3 => [a[0], a[2], 0],
        Syscall::Pipe => [a[0], 0, 0],
        Syscall::Pipe2 => [a[0], a[1], 0],
        // socketpair(family, type, protocol, sv): the pair's memory, type, family.
        Syscall::Socketpair => [a[3], a[1], a[0]],
        // eventfd2(count, flags), timerfd_create(clock, flags), perf_event_open(attr, pid,
        // cpu, group, flags): the flags.
        Syscall::Eventfd2 | Syscall::TimerfdCreate => [a[1], 0, 0],
        Syscall::PerfEventOpen => [a[4], 0, 0],
        Syscall::EpollCreate1
        | Syscall::InotifyInit1
        | Syscall::FanotifyInit
        | Syscall::Userfaultfd
        | Syscall::Signalfd
        | Syscall::Unshare => [a[0], 0, 0],
        // signalfd4(fd, mask, size, flags); pidfd_getfd(pidfd, fd, flags);
        // open_by_handle_at(mount_fd, handle, flags).
        Syscall::Signalfd4 => [a[0], a[3], 0],
        Syscall::PidfdGetfd => [a[0], a[1], 0],
        Syscall::OpenByHandleAt => [a[0], a[2], 0],
        Syscall::Fcntl => [a[0], a[1], a[2]],
        // recvmsg(fd, msg, flags).
        Syscall::Recvmsg => [a[1], a[2], 0],
        // No argument decides anything (eventfd, epoll_create, inotify_init, pidfd_open,
        // io_uring_setup).
        _ => [ARG_UNKNOWN; 3],
    }
}

/// The flags of openat2's `struct open_how`, which starts with `__u64 flags`; an unreadable
/// one reads as no flags.
#[inline(always)]
fn read_open_how_flags(ctx: &TracePointContext, address: u64) -> u64 {
    // SAFETY: a bounded read of user memory, which may fail.
    match unsafe { aya_ebpf::helpers::bpf_probe_read_user(address as *const u64) } {
        Ok(flags) => flags,
        Err(error) => {
            debug!(
                ctx,
                "tid {}: cannot read openat2's open_how at {:x} (error {})",
                Caller::current().tid,
                address,
                error
            );
            0
        }
    }
}

/// The arguments of the syscall a followed caller is returning from, or `None` when the
/// caller is not followed. Where the saved registers cannot be read, every argument is
/// [`ARG_UNKNOWN`], which userspace treats like a call whose start it did not see.
#[inline(always)]
fn args_at_exit(ctx: &TracePointContext, caller: &Caller, syscall: Syscall) -> Option<Args> {
    args_at_exit_with(ctx, caller, syscall, Caller::is_followed)
}

/// [`args_at_exit`], asking whether the caller is followed with `lookup` (file opens leave
/// the held open to `held.rs`).
#[inline(always)]
fn args_at_exit_with(
    ctx: &TracePointContext,
    caller: &Caller,
    syscall: Syscall,
    lookup: fn(&Caller) -> bool,
) -> Option<Args> {
    // Asked first so that unfollowed processes pay one bit test and nothing else (unless
    // `--all` counts their births).
    if !lookup(caller) {
        crate::host::count_birth(ctx, caller.tgid, syscall);
        return None;
    }
    let ([arg0, arg1, arg2], stack_start) = match SyscallRegs::current() {
        Some(regs) => (kept_args(ctx, syscall, regs.args), regs.stack_start),
        None => {
            debug!(
                ctx,
                "tid {}: cannot read the saved user registers", caller.tid
            );
            ([ARG_UNKNOWN; 3], StackStart::UNKNOWN)
        }
    };
    Some(Args {
        syscall: syscall as u32,
        arg0,
        arg1,
        arg2,
        stack_start,
    })
}

/// For exit probes that also need the result: the caller, the arguments and what the
/// syscall returned. `None` when the caller is not followed.
#[inline(always)]
fn call_at_exit(ctx: &TracePointContext, syscall: Syscall) -> Option<(Caller, Args, i64)> {
    let caller = Caller::current();
    let args = args_at_exit(ctx, &caller, syscall)?;
    Some((caller, args, syscall_result(ctx)))
}

/// The syscall's return value, from any `sys_exit_*` record.
#[inline(always)]
fn syscall_result(ctx: &TracePointContext) -> i64 {
    read_u64(ctx, offset!(exit_ret)) as i64
}
