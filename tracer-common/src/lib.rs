//! Types shared by the eBPF programs and the userspace tracer.
//!
//! Every struct here crosses the kernel/user boundary as raw bytes, so each is `#[repr(C)]`,
//! uses fixed-width fields only, spells out its padding, and has its size pinned by a
//! compile-time assertion that both targets check.
#![no_std]

use core::mem::size_of;

pub mod abi;
mod abi_enum;
pub mod python;
pub mod time_wait;

/// Kept at the crate root, where both sides have always imported them from.
pub use abi::{CLONE_FILES, CLONE_THREAD};
use abi_enum::abi_enum;
pub use time_wait::TimeWaitOffsets;

/// Bytes of a path captured at open time; longer paths are truncated and flagged.
pub const PATH_CAP: usize = 256;
/// Processes the kernel side can follow at once.
pub const MAX_FOLLOWED: u32 = 65_536;
/// Words of FOLLOWED_BITS, one bit per possible pid: Linux's `PID_MAX_LIMIT` on 64-bit
/// machines (4 194 304, include/linux/threads.h) over 64. 512 KiB.
pub const FOLLOWED_BIT_WORDS: u32 = 4_194_304 / 64;
/// Slots for file opens held back in the kernel (tracer-ebpf/src/held.rs): a followed process
/// holds in the one its tgid's low bits name, unless another live process claimed it first.
pub const HELD_SLOTS: u32 = 4_096;
/// Distinct user stacks kept by the kernel; later ones get no stack id (counted in the report).
pub const STACK_MAP_ENTRIES: u32 = 16_384;
/// TCP sockets of followed processes the kernel side tracks (LRU).
pub const MAX_TCP_SOCKETS: u32 = 65_536;
/// Listening ports of followed processes, whose accepted sockets are tracked from birth.
pub const MAX_LISTEN_PORTS: u32 = 4_096;
/// Exiting tasks of followed processes remembered until their descriptors are closed (LRU:
/// only the last few microseconds of each task's life need it).
pub const MAX_EXITING: u32 = 4_096;
/// Threads whose stack base userspace has learned (LRU: a forgotten one costs a full copy).
pub const MAX_STACK_BASES: u32 = 65_536;
/// Process names (`--comm`) whose processes are followed from their exec.
pub const MAX_MATCH_COMMS: u32 = 64;
/// cgroup v2 ids (`--cgroup`, `--container`, and their sub-cgroups) whose processes are
/// followed from their exec.
pub const MAX_MATCH_CGROUPS: u32 = 4_096;
/// Processes whose descriptor births and deaths `--all` counts in the kernel at once (LRU:
/// the least recently active is forgotten first; userspace reads them every few seconds).
pub const MAX_HOST_PROCESSES: u32 = 32_768;
/// Walks the kernel checks an event's stack copy against (`stack_memo`): a stack that holds
/// the same deciding words as one of them is sent without its copy.
pub const MAX_STACK_MEMOS: u32 = 4_096;
/// Remembered walks each CPU keeps a copy of (a power of two): one per call site a CPU
/// meets often enough, direct-mapped by the registers.
pub const MEMO_CACHE_SLOTS: u32 = 16;
/// Default ring buffer size; must be a power of two multiple of the page size.
pub const DEFAULT_RING_BYTES: u32 = 16 << 20;

/// Map names, shared so that the loader asks for exactly what the object defines.
pub mod map_names {
    pub const EVENTS: &str = "EVENTS";
    pub const FOLLOWED: &str = "FOLLOWED";
    pub const FOLLOWED_BITS: &str = "FOLLOWED_BITS";
    pub const STACKS: &str = "STACKS";
    pub const LOST: &str = "LOST";
    pub const LISTEN_PORTS: &str = "LISTEN_PORTS";
    pub const STACK_BASES: &str = "STACK_BASES";
    pub const MATCH_COMMS: &str = "MATCH_COMMS";
    pub const MATCH_CGROUPS: &str = "MATCH_CGROUPS";
    pub const HOST_COUNTS: &str = "HOST_COUNTS";
    pub const PY_PROCS: &str = "PY_PROCS";
    pub const PYTHON_SEEN: &str = "PYTHON_SEEN";
    pub const PY_TSTATES: &str = "PY_TSTATES";
    pub const PY_PROGRAMS: &str = "PY_PROGRAMS";
    pub const STACK_MEMOS: &str = "STACK_MEMOS";
    pub const HELD_OPENS: &str = "HELD_OPENS";
    pub const PAIRED: &str = "PAIRED";
}

/// The program that sends the held-back file opens of the processes it is given (see
/// tracer-ebpf/src/held.rs), as many per run as a raw tracepoint has arguments.
pub const HELD_FLUSH_PROGRAM: &str = "flush_held_opens";
pub const HELD_FLUSH_BATCH: usize = 12;
/// The program that makes the processes it is given followed (see tracer-ebpf/src/followed.rs):
/// userspace cannot set their bits itself without racing the kernel's writers of the same
/// word. It takes as many per run as a raw tracepoint has arguments; userspace gives one.
pub const FOLLOW_PROGRAM: &str = "follow_processes";
/// The program that makes every CPU's copies of remembered walks stale (see
/// tracer-ebpf/src/memo.rs): userspace runs it after it takes walks back from STACK_MEMOS.
pub const MEMOS_TAKEN_BACK_PROGRAM: &str = "memos_taken_back";

/// Name of the global that carries [`TracepointOffsets`] into the eBPF object.
pub const OFFSETS_GLOBAL: &str = "OFFSETS";
/// Name of the global (u64) holding how many unread bytes make a producer wake the reader.
pub const WAKEUP_GLOBAL: &str = "WAKEUP_BYTES";
/// Name of the global (u64) holding how many bytes of user stack to copy at most per event
/// (`--stack-copy-kib`; at most [`STACK_TOP_BYTES`], or [`TASK_STACK_TOP_BYTES`] for tasks).
pub const STACK_COPY_GLOBAL: &str = "STACK_COPY_BYTES";
/// Name of the global that carries [`KernelOffsets`] into the eBPF object.
pub const KERNEL_OFFSETS_GLOBAL: &str = "KERNEL_OFFSETS";
/// Name of the global (u64) holding the offset of `thread.fsbase` in `task_struct` (from
/// the kernel's BTF), or u64::MAX when unknown: Python frames are then not captured.
pub const FSBASE_GLOBAL: &str = "TASK_FSBASE_OFFSET";

/// Name of the global (u64, 0 or 1) that makes exec look a process up in MATCH_COMMS and
/// MATCH_CGROUPS (`--comm`, `--cgroup`, `--container`): off, exec costs unfollowed
/// processes nothing more.
pub const MATCH_TARGETS_GLOBAL: &str = "MATCH_TARGETS";

/// Name of the global (u64, 0 or 1) that makes the probes count descriptor births and deaths
/// of processes nobody follows in HOST_COUNTS (`--all`): off, they cost nothing more.
pub const HOST_WIDE_GLOBAL: &str = "HOST_WIDE";

/// What `--all` counts per process (tgid) in the kernel, for processes that are not
/// followed: descriptors created (sockets among them) and closed by close(2). Totals since
/// the entry was made; userspace reads differences.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCounts {
    pub opened: u64,
    pub closed: u64,
    pub sockets: u64,
}
const _: () = assert!(size_of::<HostCounts>() == 24);

/// FOLLOWED's value for a process whose main thread's stack base is not known (see
/// `STACK_BASES`): any value above it is that base.
pub const FOLLOWED_NO_BASE: u64 = 1;

/// `stack_id` value when no stack was captured (the helper failed or the map was full).
pub const NO_STACK: i32 = -1;

abi_enum! {
    /// What an event reports. The kernel writes it as `u32`; userspace converts with `TryFrom`.
    pub enum EventKind {
        /// A descriptor created from a path: [`FileOpenEvent`].
        FileOpened = 1,
        /// A descriptor created without a path (socket, accept, dup): [`FdEvent`].
        FdCreated = 2,
        /// close(2): [`CloseEvent`].
        FdClosed = 3,
        /// A task was created by fork/vfork/clone/clone3: [`ForkEvent`].
        TaskCreated = 4,
        /// A task exited: [`ExitEvent`].
        TaskExited = 5,
        /// A process called execve: [`ExecEvent`].
        Exec = 6,
        /// A TCP socket of a followed process changed state: [`TcpStateEvent`].
        TcpState = 7,
        /// A descriptor's close-on-exec flag was set or cleared (fcntl F_SETFD), or a block of
        /// descriptors was closed or marked close-on-exec (close_range): [`FdEvent`] with
        /// `syscall` saying which (see [`FdEvent`]'s argument meanings).
        FdChanged = 8,
        /// A process changed its working directory (chdir, fchdir): [`ExecEvent`]'s layout
        /// (header only); userspace reads the new one from /proc.
        CwdChanged = 9,
        /// A close(2), or a dup2/dup3, failed with EBADF: the descriptor it named was not
        /// open. [`FdEvent`] with `fd` the number closed (dup2/dup3: the old descriptor),
        /// `syscall` which call, and the user stack.
        CloseFailed = 10,
        /// The Python frames of the calling thread, sent right before its next event with a
        /// stack: [`python::PyStackEvent`].
        PythonStack = 11,
    }
}

abi_enum! {
    /// The syscall behind an event, so the report can say `opened_by`.
    pub enum Syscall {
        Open = 1 => "open",
        Openat = 2 => "openat",
        Openat2 = 3 => "openat2",
        Creat = 4 => "creat",
        Socket = 5 => "socket",
        Accept = 6 => "accept",
        Accept4 = 7 => "accept4",
        Dup = 8 => "dup",
        Dup2 = 9 => "dup2",
        Dup3 = 10 => "dup3",
        Close = 11 => "close",
        Fork = 12 => "fork",
        Vfork = 13 => "vfork",
        Clone = 14 => "clone",
        Clone3 = 15 => "clone3",
        Pipe = 16 => "pipe",
        Pipe2 = 17 => "pipe2",
        Socketpair = 18 => "socketpair",
        Eventfd = 19 => "eventfd",
        Eventfd2 = 20 => "eventfd2",
        EpollCreate = 21 => "epoll_create",
        EpollCreate1 = 22 => "epoll_create1",
        TimerfdCreate = 23 => "timerfd_create",
        Signalfd = 24 => "signalfd",
        Signalfd4 = 25 => "signalfd4",
        MemfdCreate = 26 => "memfd_create",
        PidfdOpen = 27 => "pidfd_open",
        PidfdGetfd = 28 => "pidfd_getfd",
        InotifyInit = 29 => "inotify_init",
        InotifyInit1 = 30 => "inotify_init1",
        FanotifyInit = 31 => "fanotify_init",
        Userfaultfd = 32 => "userfaultfd",
        IoUringSetup = 33 => "io_uring_setup",
        PerfEventOpen = 34 => "perf_event_open",
        OpenByHandleAt = 35 => "open_by_handle_at",
        Fcntl = 36 => "fcntl",
        CloseRange = 37 => "close_range",
        Chdir = 38 => "chdir",
        Fchdir = 39 => "fchdir",
        Unshare = 40 => "unshare",
        Recvmsg = 41 => "recvmsg",
    }
}

/// Starts every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// Process (thread group) id, as the kernel's root pid namespace sees it.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// Id in the STACKS map of the user stack at the event, or [`NO_STACK`].
    pub stack_id: i32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub timestamp_ns: u64,
}
const _: () = assert!(size_of::<EventHeader>() == 24);

/// Bytes of user stack copied at descriptor creation events, from the user stack pointer up:
/// what userspace unwinds from .eh_frame/.debug_frame when a binary has no frame pointers.
/// 8 KiB (perf's `--call-graph dwarf` default) holds the whole stack of typical C, C++ and
/// Rust code at a syscall and a dozen interpreter frames; the README has what it costs.
pub const STACK_TOP_BYTES: usize = 8192;
/// Bytes copied at task creation: rare events, and glibc nests several frameless functions
/// between fork/pthread_create and the syscall.
pub const TASK_STACK_TOP_BYTES: usize = 1024;
/// Granularity at which the stack copy is shortened when the stack mapping ends within
/// [`STACK_TOP_BYTES`] of the stack pointer (a shallow main-thread or thread stack).
pub const STACK_PAGE_BYTES: u64 = 4096;

/// The user registers at the syscall that unwinding needs, and how many bytes of the stack
/// just above the stack pointer follow the record (see [`WithStack`]): enough for userspace
/// to unwind functions without frame pointers from their CFI, which a frame-pointer walk
/// skips or gets wrong.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StackRegs {
    /// 0 when nothing could be read.
    pub sp: u64,
    pub bp: u64,
    /// The user instruction pointer (the address after the `syscall` instruction).
    pub ip: u64,
    /// Bytes of stack memory that follow the record.
    pub len: u32,
    /// The handle of the remembered walk ([`StackMemo`]) this stack matched, when the kernel
    /// sent it without its copy (`len` 0); 0 otherwise.
    pub memo: u32,
}
const _: () = assert!(size_of::<StackRegs>() == 32);

/// Deciding words a [`StackMemo`] holds at most.
pub const MEMO_WORDS: usize = 32;

/// Where a remembered walk started: the process and the registers of the event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StackMemoKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ip: u64,
    pub sp: u64,
}
const _: () = assert!(size_of::<StackMemoKey>() == 24);

/// A walk userspace made and remembered, for the kernel to recognise the same stack again
/// (tracer-userspace/src/stacks/memo.rs says why that is exact): a copy of `copied` bytes
/// from the key's `sp` (the whole stack, to the thread's learned base) that holds `values` at
/// `offsets` (bytes from `sp`, multiples of 8: the kernel loads each word aligned), and
/// %rbp == `bp` when `bp_decides`, is that walk's stack, and is sent as `handle` without its
/// copy.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackMemo {
    pub copied: u32,
    /// Never 0; userspace never gives one out twice.
    pub handle: u32,
    /// How many of `offsets` and `values` count, at most [`MEMO_WORDS`].
    pub words: u32,
    pub bp_decides: u32,
    pub bp: u64,
    pub offsets: [u32; MEMO_WORDS],
    pub values: [u64; MEMO_WORDS],
}
const _: () = assert!(size_of::<StackMemo>() == 24 + 12 * MEMO_WORDS);

/// An event whose record ends with a copy of the user stack. The kernel builds it in a
/// per-CPU scratch buffer and puts only `size_of::<E>() + event's len` bytes into the ring,
/// so a shallow stack costs ring space (and the reader's time) for what was copied, not for
/// the largest copy possible.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WithStack<E, const N: usize> {
    pub event: E,
    pub bytes: [u8; N],
}

/// A descriptor created from a path by open, openat, openat2 or creat. Followed in the ring
/// by `stack.len` bytes of user stack, then by the `path_len` bytes of the path (no NUL): a
/// record carries the path it read, not the [`PATH_CAP`] bytes it could have.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileOpenEvent {
    pub header: EventHeader,
    pub fd: i32,
    /// A [`Syscall`] as `u32`.
    pub syscall: u32,
    /// The directory fd a relative path is resolved against ([`abi::AT_FDCWD`] for the
    /// working directory).
    pub dirfd: i32,
    /// The `O_*` open flags.
    pub flags: u32,
    /// Bytes of `path` used, without the terminating NUL.
    pub path_len: u16,
    /// 1 when the path did not fit in [`PATH_CAP`] and was cut.
    pub path_truncated: u8,
    /// 1 when the path is not known (the syscall began before the tracer attached).
    pub path_unknown: u8,
    pub _pad: [u8; 4],
    pub stack: StackRegs,
}
const _: () = assert!(size_of::<FileOpenEvent>() == 48 + 32);

/// Bytes after a [`FileOpenEvent`] in its scratch record: the stack copy, then the path.
pub const FILE_OPEN_TAIL_BYTES: usize = STACK_TOP_BYTES + PATH_CAP;

/// `arg*` value for an argument that is not known (the syscall began before the tracer
/// attached, so its enter probe did not run).
pub const ARG_UNKNOWN: u64 = u64::MAX;

/// A descriptor created without a path: socket, accept, accept4, dup, dup2, dup3, and each end
/// of pipe, pipe2, socketpair. Followed in the ring by `stack.len` bytes of user stack.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FdEvent {
    pub header: EventHeader,
    pub fd: i32,
    /// A [`Syscall`] as `u32`.
    pub syscall: u32,
    /// recvmsg: arg0 is the call's flags (MSG_CMSG_CLOEXEC); the rest as the syscall's own.
    /// socket/socketpair: domain; accept/accept4: listening fd; dup*: old fd;
    /// pipe*/socketpair: the other end's fd.
    pub arg0: u64,
    /// socket/socketpair: type (with SOCK_* flags); accept4/dup3/pipe2: flags.
    pub arg1: u64,
    /// socket: protocol; socketpair: domain.
    pub arg2: u64,
    /// Births only (`len` 0 and `sp` 0 otherwise).
    pub stack: StackRegs,
}
const _: () = assert!(size_of::<FdEvent>() == 56 + 32);

/// close(2) of `fd`, emitted when the call starts: Linux releases the descriptor even when close
/// then fails (except EBADF, where there was nothing to release).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CloseEvent {
    pub header: EventHeader,
    pub fd: i32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<CloseEvent>() == 32);

/// `clone_flags` value when the creating syscall was not seen (kernel-internal task creation).
pub const CLONE_FLAGS_UNKNOWN: u64 = u64::MAX;

/// A task created by a followed process; the header names the parent (the caller). Followed
/// in the ring by `stack.len` bytes of user stack.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkEvent {
    pub header: EventHeader,
    /// The new task's id (its tgid too unless it is a thread).
    pub child_tid: u32,
    /// A [`Syscall`] as `u32` (fork, vfork, clone, clone3), or 0 when unknown.
    pub syscall: u32,
    /// Clone flags of the creating call, or [`CLONE_FLAGS_UNKNOWN`].
    pub clone_flags: u64,
    pub stack: StackRegs,
}
const _: () = assert!(size_of::<ForkEvent>() == 40 + 32);

/// `group_dead` value when the kernel's tracepoint does not say (older kernels).
pub const GROUP_DEAD_UNKNOWN: u32 = 2;

/// A followed task exited. The header names it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub header: EventHeader,
    /// 1 when this was the last task of its process, 0 when not, or [`GROUP_DEAD_UNKNOWN`].
    pub group_dead: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ExitEvent>() == 32);

/// A followed process replaced its program (execve). The header names it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub header: EventHeader,
}
const _: () = assert!(size_of::<ExecEvent>() == 24);

/// A TCP state change (`sock:inet_sock_set_state`) of a socket a followed process owns. The
/// header's tgid is the owner, which is often not the task on the CPU (softirq); its tid is
/// the task on the CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TcpStateEvent {
    pub header: EventHeader,
    /// The kernel's `struct sock` address: the socket's identity while it lives.
    pub skaddr: u64,
    /// TCP states: [`abi::tcp_state`].
    pub oldstate: u8,
    pub newstate: u8,
    /// [`abi::AF_INET`] or [`abi::AF_INET6`].
    pub family: u16,
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    /// IPv4 addresses in the first 4 bytes, or IPv6 addresses: network byte order.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// For a change to `CLOSE` from `FIN_WAIT1`, `FIN_WAIT2` or `CLOSING`: whether a
    /// `TIME_WAIT` socket took the connection over ([`time_wait`]).
    pub time_wait: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(size_of::<TcpStateEvent>() == 24 + 8 + 8 + 32 + 8);

/// Offset of a field that the running kernel's tracepoint does not have.
pub const FIELD_ABSENT: u32 = u32::MAX;

/// Where each tracepoint field we read sits in the tracepoint's record. Userspace reads these
/// from `events/*/*/format` in tracefs and writes them into the object before loading, so no
/// kernel's layout is hard-coded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointOffsets {
    /// `ret` of every `sys_exit_*` tracepoint (checked to be the same for all).
    pub exit_ret: u32,
    /// `fd` of `sys_enter_close`.
    pub close_fd: u32,
    /// `child_pid` of `sched:sched_process_fork`.
    pub fork_child_pid: u32,
    /// `group_dead` of `sched:sched_process_exit`, or [`FIELD_ABSENT`].
    pub exit_group_dead: u32,
    /// Fields of `sock:inet_sock_set_state`.
    pub tcp_skaddr: u32,
    pub tcp_oldstate: u32,
    pub tcp_newstate: u32,
    pub tcp_sport: u32,
    pub tcp_dport: u32,
    pub tcp_family: u32,
    pub tcp_protocol: u32,
    pub tcp_saddr: u32,
    pub tcp_daddr: u32,
    pub tcp_saddr_v6: u32,
    pub tcp_daddr_v6: u32,
    /// Fields of `sys_enter_close_range`, or [`FIELD_ABSENT`] on a kernel without it. (The
    /// other syscalls' arguments are read from the saved registers at exit.)
    pub close_range_fd: u32,
    pub close_range_max_fd: u32,
    pub close_range_flags: u32,
}
const _: () = assert!(size_of::<TracepointOffsets>() == 18 * 4);

impl TracepointOffsets {
    /// All fields absent; what the object holds until userspace fills it in.
    pub const fn absent() -> Self {
        Self {
            exit_ret: FIELD_ABSENT,
            close_fd: FIELD_ABSENT,
            fork_child_pid: FIELD_ABSENT,
            exit_group_dead: FIELD_ABSENT,
            tcp_skaddr: FIELD_ABSENT,
            tcp_oldstate: FIELD_ABSENT,
            tcp_newstate: FIELD_ABSENT,
            tcp_sport: FIELD_ABSENT,
            tcp_dport: FIELD_ABSENT,
            tcp_family: FIELD_ABSENT,
            tcp_protocol: FIELD_ABSENT,
            tcp_saddr: FIELD_ABSENT,
            tcp_daddr: FIELD_ABSENT,
            tcp_saddr_v6: FIELD_ABSENT,
            tcp_daddr_v6: FIELD_ABSENT,
            close_range_fd: FIELD_ABSENT,
            close_range_max_fd: FIELD_ABSENT,
            close_range_flags: FIELD_ABSENT,
        }
    }
}

/// Byte offsets of the kernel struct fields the programs read without CO-RE, from this
/// kernel's BTF (/sys/kernel/btf/vmlinux) at load time: sys_enter_close's, to tell whether the
/// descriptor it is given is open (`current->files->fdt->fd[fd]`), and inet_sock_set_state's
/// ([`TimeWaitOffsets`]). [`FIELD_ABSENT`] when the BTF lacks one, which turns that check off
/// (for close, the report of closes of descriptors that were not open).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct task_struct`: `files` (`struct files_struct *`).
    pub task_files: u32,
    /// `struct files_struct`: `fdt` (`struct fdtable *`).
    pub files_fdt: u32,
    /// `struct fdtable`: `max_fds` (`unsigned int`).
    pub fdt_max_fds: u32,
    /// `struct fdtable`: `fd` (`struct file **`).
    pub fdt_fd: u32,
    /// `struct task_struct`: `mm` (`struct mm_struct *`), and `struct mm_struct`:
    /// `start_stack`, where the main thread's stack began at exec (the address of `argc`):
    /// every frame of the main thread lies below it, so until userspace has learned the
    /// thread's stack base, its copy stops there instead of faulting past the end of the
    /// stack mapping. Absent as a pair.
    pub task_mm: u32,
    pub mm_start_stack: u32,
    /// Where inet_sock_set_state looks for the `TIME_WAIT` socket that took a closing
    /// connection over ([`time_wait`]); absent as a group.
    pub tw: TimeWaitOffsets,
}
const _: () = assert!(size_of::<KernelOffsets>() == 6 * 4 + size_of::<TimeWaitOffsets>());

impl KernelOffsets {
    /// All fields absent; what the object holds until userspace fills it in.
    pub const fn absent() -> Self {
        Self {
            task_files: FIELD_ABSENT,
            files_fdt: FIELD_ABSENT,
            fdt_max_fds: FIELD_ABSENT,
            fdt_fd: FIELD_ABSENT,
            task_mm: FIELD_ABSENT,
            mm_start_stack: FIELD_ABSENT,
            tw: TimeWaitOffsets::absent(),
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C), made of integers only, with explicit padding.
    unsafe impl aya::Pod for TracepointOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for HostCounts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for StackMemoKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for StackMemo {}
}
