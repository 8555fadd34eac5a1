//! Decoded events: who did it and when ([`Header`]), and what each kind carries
//! ([`EventBody`], one struct per kind with fields). The kernel writes `#[repr(C)]` structs
//! from tracer-common; [`decode`] is the only place that looks at their raw bytes.

mod decode;

pub(crate) use decode::decode;
use tracer_common::Syscall;

use crate::model::StackRef;

/// The user stack and frame pointers and the stack bytes above the stack pointer at a
/// creation event, borrowed from the ring buffer record: unwound at once, or copied
/// ([`OwnedStackTop`]) when the unwinding is deferred.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StackTop<'r> {
    pub sp: u64,
    pub bp: u64,
    /// The user instruction pointer at the syscall, or 0 when the kernel could not read it.
    pub ip: u64,
    /// The stack memory from `sp` up (as much as the kernel could copy).
    pub bytes: &'r [u8],
    /// The handle of the remembered walk the kernel matched the stack against, when it sent
    /// no copy (`stacks/given.rs`); 0 otherwise.
    pub memo: u32,
}

impl StackTop<'_> {
    /// A copy that outlives the record, for a stack whose unwinding is deferred.
    pub(crate) fn copy_into(self, mut buffer: Vec<u8>) -> OwnedStackTop {
        buffer.clear();
        buffer.extend_from_slice(self.bytes);
        OwnedStackTop {
            sp: self.sp,
            bp: self.bp,
            ip: self.ip,
            bytes: buffer,
        }
    }
}

/// A [`StackTop`] copied out of the ring buffer: kept while its unwinding is deferred.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OwnedStackTop {
    pub sp: u64,
    pub bp: u64,
    pub ip: u64,
    pub bytes: Vec<u8>,
}

impl OwnedStackTop {
    pub(crate) fn as_top(&self) -> StackTop<'_> {
        StackTop {
            sp: self.sp,
            bp: self.bp,
            ip: self.ip,
            bytes: &self.bytes,
            memo: 0,
        }
    }
}

/// A decoded record: the event, and the stack copied with it, if any.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Decoded<'r> {
    pub event: Event,
    pub stack_top: Option<StackTop<'r>>,
}

/// Who did it and when: the common header, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub tgid: u32,
    pub tid: u32,
    /// Id of the user stack in the kernel's stack map.
    pub stack_id: Option<u32>,
    /// CLOCK_MONOTONIC nanoseconds.
    pub timestamp_ns: u64,
    /// Filled in by the session before the aggregator sees the event: which program image
    /// (exec generation) of the process the stack belongs to.
    pub generation: u32,
}

impl Header {
    /// The user stack the kernel captured with this event, if any.
    pub(crate) fn stack(&self) -> Option<StackRef> {
        self.stack_id.map(|id| StackRef {
            id,
            pid: self.tgid,
            generation: self.generation,
        })
    }
}

/// One event: the header every kind shares, and the kind's own fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Event {
    pub header: Header,
    pub body: EventBody,
}

/// What happened, with the fields of its kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EventBody {
    FileOpened(FileOpened),
    FdCreated(FdCreated),
    FdClosed(FdClosed),
    CloseFailed(CloseFailed),
    TaskCreated(TaskCreated),
    TaskExited(TaskExited),
    Exec,
    CloexecSet(CloexecSet),
    RangeClosed(RangeClosed),
    /// The process changed its working directory (chdir, fchdir).
    CwdChanged,
    /// The calling task got a private copy of the descriptor table it shared
    /// (unshare(CLONE_FILES)).
    FilesUnshared,
    /// Boxed: rare, and the largest kind, which every event would otherwise be as large as.
    TcpState(Box<TcpState>),
    /// The calling thread's Python frames, for its next event with a stack (the kernel
    /// sends them right before it). Consumed by the stack store; never applied.
    PythonStack(PythonStack),
}

/// The Python frames the kernel walked, innermost first, and the walk's
/// `tracer_common::python::PY_*` flags (cut, no thread state, a failed read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PythonStack {
    pub flags: u32,
    pub frames: Vec<tracer_common::python::PyFrameRecord>,
}

/// A descriptor created from a path (open, openat, openat2, creat) or by memfd_create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileOpened {
    pub fd: i32,
    pub syscall: Syscall,
    pub dirfd: i32,
    pub flags: u32,
    /// Raw bytes: paths need not be UTF-8. `None` when the open began before attach, and
    /// once the event is applied (`Aggregator::apply` moves it into the descriptor).
    pub path: Option<Vec<u8>>,
    pub path_truncated: bool,
}

/// A descriptor created without a path (socket, accept, pipe, dup, ...), with the syscall's
/// arguments that tell what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FdCreated {
    pub fd: i32,
    pub syscall: Syscall,
    pub arg0: u64,
    pub arg1: u64,
    pub arg2: u64,
}

/// close(fd).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FdClosed {
    pub fd: i32,
}

/// close(fd), dup2(fd, target) or dup3(fd, target, ..) failed with EBADF: `fd` was not
/// open (or, for dup2/dup3, `target` was past the descriptor limit). Carries a stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CloseFailed {
    pub fd: i32,
    pub syscall: Syscall,
    /// The number dup2/dup3 copied onto; `None` for close.
    pub target: Option<i32>,
}

/// A task was created (fork, vfork, clone, clone3, or the kernel by itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TaskCreated {
    pub child_tid: u32,
    pub syscall: Option<Syscall>,
    /// `None` when the kernel created the task without a syscall we saw.
    pub clone_flags: Option<u64>,
}

/// A task exited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TaskExited {
    /// Whether the whole process is gone; `None` when the kernel does not say.
    pub group_dead: Option<bool>,
}

/// fcntl(fd, F_SETFD, ...) turned close-on-exec on or off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CloexecSet {
    pub fd: i32,
    pub on: bool,
}

/// close_range(first, last, flags): closes every descriptor in `first..=last`, or marks
/// them close-on-exec with `CLOSE_RANGE_CLOEXEC`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RangeClosed {
    pub first: u32,
    pub last: u32,
    pub flags: u32,
}

/// A TCP socket of a followed process (the header's tgid) changed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TcpState {
    pub skaddr: u64,
    pub old: u8,
    pub new: u8,
    pub local: std::net::SocketAddr,
    pub remote: std::net::SocketAddr,
    /// For a close from `FIN_WAIT*`/`CLOSING`: whether a `TIME_WAIT` socket took the
    /// connection over, as the kernel's table said (`None`: not looked).
    pub time_wait: Option<bool>,
}

#[cfg(test)]
mod tests;
