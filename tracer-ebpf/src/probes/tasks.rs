//! Task lifecycle: fork/vfork/clone/clone3 (to follow children and count threads), exit, exec.
//!
//! Kernel: kernel/fork.c kernel_clone() fires sched_process_fork after copy_process() and
//! before wake_up_new_task(), so a child made followed here is followed before it runs.
//! kernel/exit.c do_exit() fires sched_process_exit with group_dead (6.x) before exit_files(),
//! so an exiting task is remembered in EXITING for the sockets its exit closes.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_probe_read_user, generated::bpf_get_current_cgroup_id},
    macros::tracepoint,
    programs::TracePointContext,
};
use aya_log_ebpf::debug;
use tracer_common::{
    CLONE_FILES, CLONE_FLAGS_UNKNOWN, CLONE_THREAD, EventKind, ExecEvent, ExitEvent,
    GROUP_DEAD_UNKNOWN, NO_STACK, Syscall, python::PY_FORK_SLOT,
};

use crate::{
    emit::{Caller, StackStart, SyscallRegs, capture_stack, read_u8, read_u32},
    followed, held,
    maps::{
        EXITING, FORK_SCRATCH, LOST_FOLLOW_FULL, MATCH_CGROUPS, MATCH_COMMS, MATCH_TARGETS,
        STACK_BASES, count_lost, offset, output, output_with_stack,
    },
    python::{self, Frames},
};

/// SIGCHLD: what fork(2) passes as clone flags.
const FORK_FLAGS: u64 = 17;
/// CLONE_VM | CLONE_VFORK | SIGCHLD: what vfork(2) passes.
const VFORK_FLAGS: u64 = 0x100 | 0x4000 | 17;

/// Syscall numbers of the task creators (arch/x86/entry/syscalls/syscall_64.tbl,
/// include/uapi/asm-generic/unistd.h; arm64 has neither fork nor vfork).
#[cfg(bpf_target_arch = "x86_64")]
mod nr {
    pub(crate) const CLONE: u32 = 56;
    pub(crate) const FORK: u32 = 57;
    pub(crate) const VFORK: u32 = 58;
    pub(crate) const CLONE3: u32 = 435;
}
#[cfg(not(bpf_target_arch = "x86_64"))]
mod nr {
    pub const CLONE: u32 = 220;
    pub const FORK: u32 = u32::MAX;
    pub const VFORK: u32 = u32::MAX;
    pub const CLONE3: u32 = 435;
}

/// Which syscall the parent made and its clone flags (0 and [`CLONE_FLAGS_UNKNOWN`] for a
/// task the kernel created by itself, e.g. an io_uring worker: userspace then asks /proc
/// whether the child is a thread).
#[inline(always)]
fn creating_call(ctx: &TracePointContext, parent: Caller) -> (u32, u64) {
    let Some(regs) = SyscallRegs::current() else {
        debug!(
            ctx,
            "tid {}: cannot read the saved user registers", parent.tid
        );
        return (0, CLONE_FLAGS_UNKNOWN);
    };
    match regs.nr {
        nr::FORK => (Syscall::Fork as u32, FORK_FLAGS),
        nr::VFORK => (Syscall::Vfork as u32, VFORK_FLAGS),
        nr::CLONE => (Syscall::Clone as u32, regs.args[0]),
        // struct clone_args starts with `__aligned_u64 flags`.
        // SAFETY: a bounded read of the parent's memory, which may fail.
        nr::CLONE3 => match unsafe { bpf_probe_read_user(regs.args[0] as *const u64) } {
            Ok(flags) => (Syscall::Clone3 as u32, flags),
            Err(error) => {
                debug!(
                    ctx,
                    "tid {}: cannot read clone3's clone_args at {:x} (error {})",
                    parent.tid,
                    regs.args[0],
                    error
                );
                (Syscall::Clone3 as u32, CLONE_FLAGS_UNKNOWN)
            }
        },
        _ => (0, CLONE_FLAGS_UNKNOWN),
    }
}

/// Runs in the parent. A new process (not a thread) of a followed parent becomes followed.
#[tracepoint]
pub(crate) fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let Some(child_tid) = read_u32(&ctx, offset!(fork_child_pid)) else {
        return 0;
    };
    // A new task, followed or not, that got the tid of an exited one is not that one.
    let _ = EXITING.remove(&child_tid);
    let Some(parent) = Caller::followed() else {
        return 0;
    };
    let (syscall, clone_flags) = creating_call(&ctx, parent);
    let is_thread = clone_flags != CLONE_FLAGS_UNKNOWN && clone_flags & CLONE_THREAD != 0;
    // Everything above is safe to run twice, as the walker's return makes it.
    python::capture(&ctx, parent, Frames::Walk { slot: PY_FORK_SLOT });
    if !is_thread {
        if !followed::follow(child_tid) {
            count_lost(LOST_FOLLOW_FULL);
        }
        // A slot left by an earlier process with this pid (one of its threads held an open
        // after its exit probe ran) is not the child's.
        held::forget(child_tid);
        if clone_flags != CLONE_FLAGS_UNKNOWN && clone_flags & CLONE_FILES != 0 {
            // Two processes, one descriptor table: neither one's events would send what
            // the other holds back, so neither holds anything.
            held::never(parent.tgid);
            held::never(child_tid);
        }
        python::inherit(parent.tgid, child_tid);
    }
    let Some(scratch) = FORK_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: `scratch` is this CPU's scratch record; every field of the event is written,
    // and the stack bytes that are sent.
    unsafe {
        let event = &raw mut (*scratch).event;
        let (copied, stack_id) = capture_stack(
            &ctx,
            parent,
            StackStart::UNKNOWN,
            &raw mut (*event).stack,
            &raw mut (*scratch).bytes,
        );
        (*event).header = parent.header(EventKind::TaskCreated, stack_id);
        (*event).child_tid = child_tid;
        (*event).syscall = syscall;
        (*event).clone_flags = clone_flags;
        output_with_stack(scratch, copied);
    }
    0
}

/// Runs in the exiting task.
#[tracepoint]
pub(crate) fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let Some(task) = Caller::followed() else {
        if crate::host::host_wide() {
            // `--all`: a process that is gone takes its counts along.
            let task = Caller::current();
            let process_gone = read_u8(&ctx, offset!(exit_group_dead))
                .map_or(task.tid == task.tgid, |dead| dead != 0);
            if process_gone {
                crate::host::forget(task.tgid);
            }
        }
        return 0;
    };
    // Its tid may come back as another thread's, with another stack.
    let _ = STACK_BASES.remove(&task.tid);
    // Its descriptors are closed after this, by the kernel, in this task: the TCP probe still
    // counts the sockets closed then as this process's.
    let _ = EXITING.insert(&task.tid, &task.tgid, 0);
    let group_dead = match read_u8(&ctx, offset!(exit_group_dead)) {
        Some(dead) => (dead != 0) as u32,
        None => GROUP_DEAD_UNKNOWN,
    };
    let process_gone =
        group_dead == 1 || (group_dead == GROUP_DEAD_UNKNOWN && task.tid == task.tgid);
    if process_gone {
        followed::unfollow(task.tgid);
        python::forget(task.tgid);
        held::forget(task.tgid);
    } else if task.tid != task.tgid {
        // Drops the key a kernel-created thread may have been given at fork (see above).
        followed::unfollow(task.tid);
    }
    let event = ExitEvent {
        header: task.header(EventKind::TaskExited, NO_STACK),
        group_dead,
        _pad: 0,
    };
    output(&event);
    0
}

/// Runs in the task that exec'd, with its new comm. A process that is not followed becomes
/// followed here when its name or cgroup is one asked for (`--comm`, `--cgroup`): the exec
/// event then tells userspace to read its table, before its new program runs.
#[tracepoint]
pub(crate) fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let caller = Caller::current();
    if caller.is_followed() || matches_target(caller) {
        let task = caller;
        // The new program has a new stack. (A thread that execs takes the process's tid.)
        let _ = STACK_BASES.remove(&task.tid);
        let _ = STACK_BASES.remove(&task.tgid);
        followed::forget_main_stack_base(task.tgid);
        python::forget(task.tgid);
        let event = ExecEvent {
            header: task.header(EventKind::Exec, NO_STACK),
        };
        output(&event);
    }
    0
}

/// Whether an unfollowed process that just exec'd is one of the targets chosen by name or
/// cgroup; if so it is followed from now on.
#[inline(always)]
fn matches_target(caller: Caller) -> bool {
    // SAFETY: a plain read of a load-time constant.
    if unsafe { core::ptr::read_volatile(&raw const MATCH_TARGETS) } == 0 {
        return false;
    }
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    // SAFETY: plain helper call; the values are only tested for presence.
    let wanted = unsafe { MATCH_COMMS.get(&comm).is_some() }
        || unsafe { MATCH_CGROUPS.get(&bpf_get_current_cgroup_id()).is_some() };
    if !wanted {
        return false;
    }
    if !followed::follow(caller.tgid) {
        count_lost(LOST_FOLLOW_FULL);
        return false;
    }
    held::forget(caller.tgid);
    true
}
