//! CPython frames captured in the kernel: the per-process layout userspace finds in the
//! interpreter (which it writes into the `PY_PROCS` map), and the record of frames the kernel
//! emits right before each event that carries a stack, from the same program.
//!
//! The kernel finds the calling thread's `PyThreadState` by walking the interpreters' thread
//! lists for the one whose `thread_id` (pthread_self(), the thread pointer) is the task's
//! fsbase: the "current thread state" pointers are empty while a thread blocks in a syscall
//! with the GIL released, which is exactly when the tracer looks.

use core::mem::size_of;

/// Python frames walked per event at most; a deeper stack is cut (flag [`PY_TRUNCATED`]).
pub const MAX_PY_FRAMES: usize = 64;
/// Thread states the kernel looks at per walk at most, from the head of the lists, where new
/// threads are added: the threads a process had when its interpreter was found are seeded by
/// userspace into the per-thread cache. (Each turn of this loop is verified in every program
/// that walks: 256 turns made loading the programs take 10 s longer, 16 take 0.5 s.)
pub const MAX_PY_THREADS: u32 = 16;
/// Python processes followed at once.
pub const MAX_PY_PROCS: u32 = 4_096;
/// Threads whose `PyThreadState` address the kernel caches (LRU).
pub const MAX_PY_TSTATES: u32 = 65_536;

/// How the frame chain starts and what a frame holds, per interpreter version.
pub mod frame_kind {
    /// 3.10: `tstate->frame` is a `PyFrameObject`; `f_lasti` is an int index in code units.
    pub const V310: u8 = 1;
    /// 3.11: `_PyInterpreterFrame`, `prev_instr`; `is_entry` marks an eval call's first frame.
    pub const V311: u8 = 2;
    /// 3.12+: `_PyInterpreterFrame`; a frame whose owner is `cstack_owner` is an entry shim.
    pub const V312: u8 = 3;
}

/// Where the interpreter keeps what the kernel reads, for one process (host addresses of the
/// target). Offsets are in bytes. Written by userspace after it checked the layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyProcConfig {
    /// Address of `_PyRuntime`.
    pub runtime: u64,
    /// `_Py_NoneStruct`: the code of a 3.13 shim frame.
    pub none: u64,
    /// `_PyRuntime.interpreters.head`.
    pub interpreters_head: u32,
    /// `PyInterpreterState.next`.
    pub interp_next: u32,
    /// `PyInterpreterState` threads head.
    pub interp_threads_head: u32,
    /// `PyThreadState.next`.
    pub tstate_next: u32,
    /// `PyThreadState.thread_id` (pthread_self()).
    pub tstate_thread_id: u32,
    /// `PyThreadState` field holding the top frame (3.10 `frame`, 3.13 `current_frame`) or
    /// the `_PyCFrame *cframe` (3.11, 3.12).
    pub tstate_frame: u32,
    /// `_PyCFrame.current_frame` when `tstate_frame` points at a `_PyCFrame`, else u32::MAX.
    pub cframe_current: u32,
    /// Frame fields: code object, previous frame, instruction (pointer, or 3.10 `f_lasti`).
    pub frame_code: u32,
    pub frame_back: u32,
    pub frame_instr: u32,
    /// 3.11 `is_entry`, 3.12+ `owner` (a byte), or u32::MAX.
    pub frame_flag: u32,
    /// Code object fields: `co_firstlineno` (int), `co_filename` (followed by `co_name`).
    pub code_firstlineno: u32,
    pub code_filename: u32,
    /// One of [`frame_kind`].
    pub kind: u8,
    /// The owner value of an entry shim frame (3.12, 3.13: FRAME_OWNED_BY_CSTACK = 3).
    pub cstack_owner: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<PyProcConfig>() == 80);

/// One Python frame as the kernel saw it. Userspace reads the code object at `code` and
/// names it only if it still matches `fingerprint`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyFrameRecord {
    /// Address of the code object.
    pub code: u64,
    /// 3.11+: address of the current (or previous) instruction; 3.10: `f_lasti`.
    pub instr: u64,
    /// `co_firstlineno` << 32 | low 32 bits of (`co_filename` ^ `co_name` >> 4).
    pub fingerprint: u64,
    /// The frame's marker byte as read (3.11 `is_entry`, 3.12+ `owner`; 0 on 3.10):
    /// userspace tells entry frames and entry shims from it.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<PyFrameRecord>() == 32);

/// Stack flags: the chain was longer than [`MAX_PY_FRAMES`].
pub const PY_TRUNCATED: u32 = 1;
/// The calling thread has no `PyThreadState` in any interpreter (a thread C code started).
pub const PY_NO_THREAD: u32 = 2;
/// A read of the interpreter's memory failed (a page not resident): the frames are partial.
pub const PY_READ_FAILED: u32 = 4;

/// Emitted by the same program right before an event with a stack, from a process whose
/// interpreter userspace configured; followed in the ring by `count` [`PyFrameRecord`]s,
/// innermost first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PyStackEvent {
    pub header: crate::EventHeader,
    pub count: u32,
    pub flags: u32,
}
const _: () = assert!(size_of::<PyStackEvent>() == 32);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C), integers only, explicit padding.
    unsafe impl aya::Pod for PyProcConfig {}
}
