//! open, openat, openat2, creat: descriptors born from a path; memfd_create, whose name is
//! read the same way.
//!
//! Kernel: fs/open.c do_sys_openat2() is behind all four syscalls.

use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated::bpf_probe_read_user_str},
    programs::TracePointContext,
};
use aya_log_ebpf::debug;
use tracer_common::{
    ARG_UNKNOWN, EventKind, PATH_CAP, STACK_TOP_BYTES, Syscall, python::py_resume_slot,
};

use super::{args_at_exit_with, exit_probes, syscall_result};
use crate::{
    emit::{Caller, capture_stack, copy_words},
    held,
    maps::{FILE_OPEN_SCRATCH, output_with_stack},
    python::{self, Frames},
};

exit_probes!(
    emit_file_open:
    sys_exit_memfd_create => MemfdCreate,
    sys_exit_open => Open,
    sys_exit_openat => Openat,
    sys_exit_openat2 => Openat2,
    sys_exit_creat => Creat,
);

/// Emits a [`FileOpenEvent`] for a successful open; the path is read now, while the caller
/// still waits for the syscall, into the scratch record right after the stack copy, so that
/// the record holds the bytes the path has, not the [`PATH_CAP`] it may have.
#[inline(always)]
fn emit_file_open(ctx: &TracePointContext, syscall: Syscall) {
    let caller = Caller::current();
    let Some(args) = args_at_exit_with(ctx, &caller, syscall, Caller::is_followed_leaving_held)
    else {
        return;
    };
    let fd = syscall_result(ctx);
    if fd < 0 {
        return;
    }
    let Some(scratch) = FILE_OPEN_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let user_path = args.arg1 as *const u8;
    // The Python frames go first, so that userspace has them when the event arrives (the
    // walker sends what the process held back before them).
    let python = python::capture(
        ctx,
        caller,
        Frames::Walk {
            slot: py_resume_slot(syscall),
        },
    );
    // SAFETY: `scratch` is this CPU's scratch record; every field of the event is written
    // before it is sent, and of the bytes after it the stack copy and the path up to
    // `path_len`, which is all that is sent. The stack copy is at most STACK_TOP_BYTES and
    // the string read is bounded by PATH_CAP, which the tail has room for.
    unsafe {
        let event = &raw mut (*scratch).event;
        let (copied, stack_id) = capture_stack(
            ctx,
            caller,
            args.stack_start,
            &raw mut (*event).stack,
            (&raw mut (*scratch).bytes).cast::<[u8; STACK_TOP_BYTES]>(),
        );
        // Written so that the verifier sees the bound on where the path goes.
        let path_at = if copied as usize > STACK_TOP_BYTES {
            STACK_TOP_BYTES
        } else {
            copied as usize
        };
        (*event).header = caller.header(EventKind::FileOpened, stack_id);
        (*event).fd = fd as i32;
        (*event).syscall = args.syscall;
        (*event).dirfd = args.arg0 as i32;
        (*event).flags = args.arg2 as u32;
        (*event)._pad = [0; 4];
        if args.arg1 == ARG_UNKNOWN {
            (*event).path_unknown = 1;
            (*event).path_len = 0;
            (*event).path_truncated = 0;
            held::flush(caller.tgid, true);
            output_with_stack(scratch, copied);
            return;
        }
        (*event).path_unknown = 0;
        // A stack the kernel recognised (nothing copied) in a process without Python
        // frames: small enough to hold back, and likely closed again at once. The event
        // goes into the process's slot, and the path is read straight into it.
        if !python
            && copied == 0
            && (*event).stack.memo != 0
            && let Some(holding) = held::Holding::take(caller.tgid)
        {
            let record = holding.record();
            copy_words(event, &raw mut (*record).event);
            let (path_len, truncated) = read_path(
                ctx,
                caller,
                fd as i32,
                user_path,
                (*record).bytes.as_mut_ptr(),
            );
            (*record).event.path_len = path_len as u16;
            (*record).event.path_truncated = truncated as u8;
            holding.hold();
            return;
        }
        let (path_len, truncated) = read_path(
            ctx,
            caller,
            fd as i32,
            user_path,
            (*scratch).bytes.as_mut_ptr().add(path_at),
        );
        (*event).path_len = path_len as u16;
        (*event).path_truncated = truncated as u8;
        held::flush(caller.tgid, true);
        output_with_stack(scratch, (path_at + path_len) as u32);
    }
}

/// Reads the path at `user_path` into `dst` (room for [`PATH_CAP`] bytes): its length
/// without the NUL, and whether it was cut at `PATH_CAP` bytes.
///
/// # Safety
/// `dst` must point at [`PATH_CAP`] writable bytes of a map value.
#[inline(always)]
unsafe fn read_path(
    ctx: &TracePointContext,
    caller: Caller,
    fd: i32,
    user_path: *const u8,
    dst: *mut u8,
) -> (usize, bool) {
    // SAFETY: as the function's contract says; the user read may fail, cleanly.
    let copied = unsafe { bpf_probe_read_user_str(dst.cast(), PATH_CAP as u32, user_path.cast()) };
    if copied < 0 {
        debug!(
            ctx,
            "tid {}: cannot read the path of fd {} at {:x} (error {})",
            caller.tid,
            fd,
            user_path as u64,
            copied
        );
    }
    // `copied` counts the NUL; PATH_CAP means the buffer filled up, which is a cut path
    // unless the byte where the NUL went really was the end of the string.
    let copied = if copied > 0 { copied as usize } else { 0 };
    let truncated = copied >= PATH_CAP
        // SAFETY: a one-byte read of user memory, which may fail.
        && unsafe { bpf_probe_read_user(user_path.add(PATH_CAP - 1)) }.unwrap_or(0u8) != 0;
    (copied.saturating_sub(1), truncated)
}
