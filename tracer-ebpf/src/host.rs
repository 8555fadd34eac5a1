//! `--all`: descriptor births and deaths counted per process (tgid) in the kernel, for the
//! processes nobody follows. Each probe calls in here on its unfollowed path, and only when
//! the load-time flag HOST_WIDE is set, so without `--all` it costs nothing; with it, one
//! hash update per descriptor created or closed: no event, no stack.

use aya_ebpf::programs::TracePointContext;
use tracer_common::{HostCounts, Syscall};

use crate::{
    emit::read_u64,
    maps::{HOST_COUNTS, HOST_WIDE, offset},
};

/// `BPF_NOEXIST` from linux/bpf.h.
const BPF_NOEXIST: u64 = 1;

#[inline(always)]
pub(crate) fn host_wide() -> bool {
    // SAFETY: a plain read of a load-time constant.
    unsafe { core::ptr::read_volatile(&raw const HOST_WIDE) != 0 }
}

/// Counts the descriptors an unfollowed process's successful `syscall` created. dup2/dup3
/// (onto a number usually open, which they close) and calls that create a descriptor only
/// sometimes (fcntl, recvmsg) are not counted.
#[inline(always)]
pub(crate) fn count_birth(ctx: &TracePointContext, tgid: u32, syscall: Syscall) {
    if !host_wide() {
        return;
    }
    let (created, sockets) = match syscall {
        Syscall::Pipe | Syscall::Pipe2 => (2, 0),
        Syscall::Socketpair => (2, 2),
        Syscall::Socket | Syscall::Accept | Syscall::Accept4 => (1, 1),
        Syscall::Dup2 | Syscall::Dup3 | Syscall::Fcntl | Syscall::Recvmsg => return,
        _ => (1, 0),
    };
    if (read_u64(ctx, offset!(exit_ret)) as i64) < 0 {
        return;
    }
    add(tgid, created, 0, sockets);
}

/// Counts a close(2) of an unfollowed process that will succeed: sys_enter_close found the
/// descriptor open in the caller's table (the caller checked [`host_wide`]).
#[inline(always)]
pub(crate) fn count_close(tgid: u32) {
    add(tgid, 0, 1, 0);
}

/// A process is gone: its counts with it (its pid may come back as another process).
#[inline(always)]
pub(crate) fn forget(tgid: u32) {
    let _ = HOST_COUNTS.remove(&tgid);
}

#[inline(always)]
fn add(tgid: u32, opened: u64, closed: u64, sockets: u64) {
    if let Some(counts) = HOST_COUNTS.get_ptr_mut(&tgid) {
        // SAFETY: a map value, alive while this program runs. Threads of one process on
        // two CPUs at once may lose an increment: userspace only uses the counts to see
        // whose descriptors moved and then counts them in /proc, so plain adds will do.
        unsafe {
            (*counts).opened += opened;
            (*counts).closed += closed;
            (*counts).sockets += sockets;
        }
        return;
    }
    let first = HostCounts {
        opened,
        closed,
        sockets,
    };
    // Another CPU may have made it meanwhile: that one's count stays, this one is lost.
    let _ = HOST_COUNTS.insert(&tgid, &first, BPF_NOEXIST);
}
