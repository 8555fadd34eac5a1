//! One module per probe family. Enter probes stash arguments in IN_FLIGHT; exit probes take
//! them back, read the result and emit one event.

pub mod close;
pub mod cwd;
pub mod fd_control;
pub mod files;
pub mod pairs;
pub mod received;
pub mod sockets_and_dups;
pub mod special_fds;
pub mod tasks;
pub mod tcp;

use aya_ebpf::programs::TracePointContext;
use tracer_common::{ARG_UNKNOWN, InFlight, Syscall};

use crate::{
    emit::{Caller, read_u64},
    maps::{IN_FLIGHT, LOST_IN_FLIGHT_FULL, count_lost, offset},
};

/// Defines one `sys_exit_*` program per `name => Syscall` pair, each handing its record to
/// `$emit(&ctx, Syscall::X)`: the exit side of a family differs only in the syscall.
macro_rules! exit_probes {
    ($emit:ident: $($name:ident => $syscall:ident),+ $(,)?) => {
        $(
            #[aya_ebpf::macros::tracepoint]
            pub fn $name(ctx: aya_ebpf::programs::TracePointContext) -> u32 {
                $emit(&ctx, tracer_common::Syscall::$syscall);
                0
            }
        )+
    };
}
use exit_probes;

/// Defines one `sys_enter_*` program per `name => Syscall [fields]` entry that stashes up to
/// three of the call's arguments (read at this kernel's offsets of `fields`, in that order,
/// the rest 0) for the exit probe.
macro_rules! enter_probes {
    ($($name:ident => $syscall:ident [$($field:ident),*]),+ $(,)?) => {
        $(
            #[aya_ebpf::macros::tracepoint]
            pub fn $name(ctx: aya_ebpf::programs::TracePointContext) -> u32 {
                if let Some(caller) = crate::emit::Caller::followed() {
                    let [arg0, arg1, arg2] = super::padded([
                        $(crate::emit::read_u64(&ctx, crate::maps::offset!($field))),*
                    ]);
                    super::stash(caller, tracer_common::Syscall::$syscall, arg0, arg1, arg2);
                }
                0
            }
        )+
    };
}
use enter_probes;

/// Up to three arguments, the missing ones 0.
#[inline(always)]
fn padded<const N: usize>(args: [u64; N]) -> [u64; 3] {
    let mut out = [0; 3];
    let mut i = 0;
    while i < N && i < 3 {
        out[i] = args[i];
        i += 1;
    }
    out
}

/// Remembers a followed caller's syscall arguments until the syscall returns.
#[inline(always)]
fn stash(caller: Caller, syscall: Syscall, arg0: u64, arg1: u64, arg2: u64) {
    let args = InFlight {
        syscall: syscall as u32,
        _pad: 0,
        arg0,
        arg1,
        arg2,
        arg3: 0,
    };
    if IN_FLIGHT.insert(&caller.pid_tgid, &args, 0).is_err() {
        count_lost(LOST_IN_FLIGHT_FULL);
    }
}

/// Takes back what [`stash`] kept for this thread, if it was one of `expected`: a thread that
/// was not followed at enter time, or whose stash failed, has nothing (or something stale).
#[inline(always)]
fn take_in_flight(pid_tgid: u64, expected: &[Syscall]) -> Option<InFlight> {
    // SAFETY: the entry is copied out before it is removed.
    let args = unsafe { IN_FLIGHT.get(&pid_tgid) }.copied()?;
    let _ = IN_FLIGHT.remove(&pid_tgid);
    expected
        .iter()
        .any(|s| *s as u32 == args.syscall)
        .then_some(args)
}

/// Arguments for `syscall`'s exit probe: what its enter probe stashed or, when the syscall
/// began before this process was followed (an accept blocked when the tracer attached),
/// [`ARG_UNKNOWN`]s, as long as the caller is followed now. `None`: not ours.
#[inline(always)]
fn args_at_exit(caller: Caller, syscall: Syscall) -> Option<InFlight> {
    // Asked first so that unfollowed processes pay one lookup here too.
    if !caller.is_followed() {
        return None;
    }
    if let Some(args) = take_in_flight(caller.pid_tgid, &[syscall]) {
        return Some(args);
    }
    Some(InFlight {
        syscall: syscall as u32,
        _pad: 0,
        arg0: ARG_UNKNOWN,
        arg1: ARG_UNKNOWN,
        arg2: ARG_UNKNOWN,
        arg3: ARG_UNKNOWN,
    })
}

/// For exit probes that report only what their enter probe chose to stash: the caller, the
/// stashed arguments and the syscall's result. `None` when the caller is not followed or
/// nothing was stashed (a call the enter probe ignored, or one begun before attach).
#[inline(always)]
fn stashed_at_exit(ctx: &TracePointContext, syscall: Syscall) -> Option<(Caller, InFlight, i64)> {
    let caller = Caller::current();
    if !caller.is_followed() {
        return None;
    }
    let args = take_in_flight(caller.pid_tgid, &[syscall])?;
    Some((caller, args, syscall_result(ctx)))
}

/// The syscall's return value, from any `sys_exit_*` record.
#[inline(always)]
fn syscall_result(ctx: &TracePointContext) -> i64 {
    read_u64(ctx, offset!(exit_ret)) as i64
}
