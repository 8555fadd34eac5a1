//! What the stack store's tests share: a kernel that made no frame-pointer walk, a file
//! open event, and libc's addresses for stacks of real code.

use super::KernelStacks;
use crate::events::{Event, EventBody, FileOpened, Header};

/// A kernel whose frame-pointer walks are all gone (or never made).
pub(crate) struct NoKernelStacks;

impl KernelStacks for NoKernelStacks {
    fn stack(&self, _: u32) -> Option<Vec<u64>> {
        None
    }
}

/// The address of a libc function, as the dynamic linker resolves it.
pub(crate) fn libc_function(name: &std::ffi::CStr) -> u64 {
    // SAFETY: dlsym only reads the NUL-terminated name; a null handle searches the global scope.
    let addr = unsafe { libc::dlsym(std::ptr::null_mut(), name.as_ptr()) };
    assert!(!addr.is_null(), "dlsym({name:?}) failed");
    addr as u64
}

/// An openat of /dev/null by the main thread of `tgid` that gave `fd`, at `t`.
pub(crate) fn opened(tgid: u32, fd: i32, t: u64) -> Event {
    Event {
        header: Header {
            tgid,
            tid: tgid,
            stack_id: None,
            timestamp_ns: t,
            generation: 0,
        },
        body: EventBody::FileOpened(FileOpened {
            fd,
            syscall: tracer_common::Syscall::Openat,
            dirfd: tracer_common::abi::AT_FDCWD,
            flags: 0,
            path: Some(b"/dev/null".to_vec()),
            path_truncated: false,
        }),
    }
}
