//! close(2), all on entry. The close itself is emitted there: Linux releases the descriptor
//! even when close then fails (fs/open.c: file_close_fd() runs before filp_flush()), except
//! for EBADF, where there was nothing to release. Whether it will fail with EBADF is decided
//! there too, from the caller's descriptor table (`current->files->fdt`, the table
//! file_close_fd() looks in): a number that is not open is reported with its stack as a close
//! of a descriptor that was not open (a double close, or a close of a number never opened).
//! Successful closes so pay for one program, not for an exit program as well.

use aya_ebpf::{
    cty::c_void,
    helpers::generated::{bpf_get_current_task_btf, bpf_probe_read_kernel},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{
    CloseEvent, EventKind, FIELD_ABSENT, NO_STACK, Syscall, python::py_resume_slot,
};

use super::sockets_and_dups::emit_close_failed;
use crate::{
    emit::{Caller, read_u64},
    held,
    maps::{kernel_offset, offset, output},
    python::Frames,
};

/// `--all`: a close in a process nobody follows is counted (see `host.rs`) when the
/// descriptor is open in its table, i.e. when the close will succeed; without `--all`, this
/// returns before reading anything.
#[inline(always)]
fn count_close_if_unfollowed(ctx: &TracePointContext, caller: Caller) {
    if !crate::host::host_wide() {
        return;
    }
    let fd = read_u64(ctx, offset!(close_fd)) as u32;
    if is_open(fd) == Some(true) {
        crate::host::count_close(caller.tgid);
    }
}

#[tracepoint]
pub(crate) fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let caller = Caller::current();
    if !caller.is_followed_leaving_held() {
        count_close_if_unfollowed(&ctx, caller);
        return 0;
    }
    let fd = read_u64(&ctx, offset!(close_fd)) as u32;
    // The close of the open its thread just made, held back: neither is ever sent. Or what
    // the process held goes out now, before this close.
    let open = match held::pair_with_close(caller.tgid, caller.tid, fd as i32, || is_open(fd)) {
        held::Close::Paired => return 0,
        held::Close::Sent { open } => open,
    };
    if open == Some(false) {
        // Before the close itself: the Python frames (which make the program run again
        // from its start) go to the thread's next event, which must be this one.
        let frames = Frames::Walk {
            slot: py_resume_slot(Syscall::Close),
        };
        emit_close_failed(&ctx, caller, fd as i32, Syscall::Close, -1, frames);
    }
    let event = CloseEvent {
        header: caller.header(EventKind::FdClosed, NO_STACK),
        fd: fd as i32,
        _pad: 0,
    };
    output(&event);
    0
}

/// Whether `fd` is open in the calling task's descriptor table, as close_fd() will find it
/// (fs/file.c: `fd < fdt->max_fds && fdt->fd[fd]`); `None` when it cannot be told (this
/// kernel's layout unknown, or a table that cannot be read).
///
/// Loads through the task pointer are direct: the helper's pointer is typed by the kernel's
/// BTF, so the verifier checks each load against the struct's layout at the offset
/// userspace wrote (a constant to it, from .rodata), and a fault reads as zero. Only the
/// descriptor array, a plain pointer to the verifier, is read with a helper. The table may
/// change under us (another thread closing or opening the number between here and the close
/// itself): README, Limits.
#[inline(always)]
fn is_open(fd: u32) -> Option<bool> {
    let task_files = kernel_offset!(task_files);
    let files_fdt = kernel_offset!(files_fdt);
    let fdt_max_fds = kernel_offset!(fdt_max_fds);
    let fdt_fd = kernel_offset!(fdt_fd);
    if task_files == FIELD_ABSENT
        || files_fdt == FIELD_ABSENT
        || fdt_max_fds == FIELD_ABSENT
        || fdt_fd == FIELD_ABSENT
    {
        return None;
    }
    // SAFETY: BTF-typed loads, checked by the verifier and fault-tolerant; the array entry
    // is read with bpf_probe_read_kernel, which fails cleanly.
    unsafe {
        let task = bpf_get_current_task_btf() as *const u8;
        let files = core::ptr::read_volatile(task.add(task_files as usize).cast::<*const u8>());
        if files.is_null() {
            return None;
        }
        let fdt = core::ptr::read_volatile(files.add(files_fdt as usize).cast::<*const u8>());
        if fdt.is_null() {
            return None;
        }
        let max_fds = core::ptr::read_volatile(fdt.add(fdt_max_fds as usize).cast::<u32>());
        if fd >= max_fds {
            return Some(false);
        }
        let array = core::ptr::read_volatile(fdt.add(fdt_fd as usize).cast::<u64>());
        let mut file: u64 = 0;
        let entry = array.wrapping_add(u64::from(fd) * 8);
        if bpf_probe_read_kernel((&raw mut file).cast::<c_void>(), 8, entry as *const c_void) != 0 {
            return None;
        }
        Some(file != 0)
    }
}
