//! Maps and load-time settings shared by every probe.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
};
use tracer_common::{
    DEFAULT_RING_BYTES, FILE_OPEN_TAIL_BYTES, FOLLOWED_BIT_WORDS, FdEvent, FileOpenEvent,
    ForkEvent, HELD_SLOTS, HostCounts, KernelOffsets, MAX_EXITING, MAX_FOLLOWED,
    MAX_HOST_PROCESSES, MAX_LISTEN_PORTS, MAX_MATCH_CGROUPS, MAX_MATCH_COMMS, MAX_STACK_BASES,
    MAX_STACK_MEMOS, MAX_TCP_SOCKETS, MEMO_CACHE_SLOTS, STACK_MAP_ENTRIES, STACK_TOP_BYTES,
    StackMemo, StackMemoKey, TASK_STACK_TOP_BYTES, TracepointOffsets, WithStack,
};

use crate::{clock::TickClock, held::HeldOpen, memo::CachedMemo};

/// Every event, in the order the kernel reserved them. Userspace may resize it at load time.
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// TGIDs of the processes we follow (see `followed.rs`). Userspace seeds it; the fork probe
/// extends it so a child is followed from its first instruction; the exit probe removes a
/// process that died. The value is [`tracer_common::FOLLOWED_NO_BASE`], or the learned stack
/// base of the process's main thread (userspace writes it beside STACK_BASES; exec resets it).
#[map]
pub(crate) static FOLLOWED: HashMap<u32, u64> = HashMap::with_max_entries(MAX_FOLLOWED, 0);

/// One bit per pid, set while FOLLOWED has it: what every probe asks first (`followed.rs`).
#[map]
pub(crate) static FOLLOWED_BITS: Array<u64> = Array::with_max_entries(FOLLOWED_BIT_WORDS, 0);

/// Process names (the kernel's 16-byte `comm`, NUL padded) to follow from their exec
/// (`--comm`). Only looked at when [`MATCH_TARGETS`] is set.
#[map]
pub(crate) static MATCH_COMMS: HashMap<[u8; 16], u8> =
    HashMap::with_max_entries(MAX_MATCH_COMMS, 0);

/// cgroup v2 ids to follow the processes of from their exec (`--cgroup`, `--container`):
/// the cgroup named and its sub-cgroups, which userspace keeps adding as they appear.
#[map]
pub(crate) static MATCH_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(MAX_MATCH_CGROUPS, 0);

/// `--all`: descriptors created and closed per unfollowed process (tgid), counted by the
/// probes when [`HOST_WIDE`] is set (see `host.rs`).
#[map]
pub(crate) static HOST_COUNTS: LruHashMap<u32, HostCounts> =
    LruHashMap::with_max_entries(MAX_HOST_PROCESSES, 0);

/// Tasks of followed processes that are exiting (tid -> tgid): the exit probe has removed
/// their process from FOLLOWED, but the kernel closes their descriptors after it
/// (do_exit: exit_files() after sched_process_exit), and the sockets closed then are still
/// theirs. A fork that reuses the tid removes it.
#[map]
pub(crate) static EXITING: LruHashMap<u32, u32> = LruHashMap::with_max_entries(MAX_EXITING, 0);

/// TCP sockets (`struct sock` address) of followed processes -> owning TGID. Their state
/// changes are reported even from softirq context, where the task on the CPU is anyone.
#[map]
pub(crate) static TCP_SOCKETS: LruHashMap<u64, u32> =
    LruHashMap::with_max_entries(MAX_TCP_SOCKETS, 0);

/// Local ports on which followed processes listen -> TGID, so the sockets they will accept
/// are tracked from their handshake on. Seeded by userspace, extended on LISTEN.
#[map]
pub(crate) static LISTEN_PORTS: HashMap<u16, u32> = HashMap::with_max_entries(MAX_LISTEN_PORTS, 0);

/// User stacks at descriptor and task creation, by id.
#[map]
pub(crate) static STACKS: StackTrace = StackTrace::with_max_entries(STACK_MAP_ENTRIES, 0);

/// Where each followed thread's stack ends (the highest address an unwind of it ever reads),
/// by tid, as userspace learned it from a walk that reached the thread's first frame. The
/// stack copy stops there instead of copying the full `--stack-copy-kib`: everything above
/// is the environment, or another thread's memory, that no unwind needs.
#[map]
pub(crate) static STACK_BASES: LruHashMap<u32, u64> =
    LruHashMap::with_max_entries(MAX_STACK_BASES, 0);

/// Walks userspace remembered, by the process and registers they start from (see
/// `memo.rs`): a stack copy that matches one is sent as its handle, without the copy.
/// Userspace adds them as it learns walks and removes a process's at its exec and exit.
#[map]
pub(crate) static STACK_MEMOS: HashMap<StackMemoKey, StackMemo> =
    HashMap::with_max_entries(MAX_STACK_MEMOS, 0);

/// Each CPU's copies of the remembered walks it met last, one per slot (see `memo.rs`).
#[map]
pub(crate) static MEMO_CACHE: PerCpuArray<CachedMemo> =
    PerCpuArray::with_max_entries(MEMO_CACHE_SLOTS, 0);

/// Index 0: how many times userspace took walks back from STACK_MEMOS. A CPU's copy made
/// under another count is stale (`memo.rs`).
#[map]
pub(crate) static MEMO_GENERATION: Array<u64> = Array::with_max_entries(1, 0);

/// Per-CPU scratch records for the events that carry a stack copy: they are built here and
/// only their used length is copied into the ring. (Programs do not preempt each other on a
/// CPU, and none of these runs in interrupt context.)
#[map]
pub(crate) static FILE_OPEN_SCRATCH: PerCpuArray<WithStack<FileOpenEvent, FILE_OPEN_TAIL_BYTES>> =
    PerCpuArray::with_max_entries(1, 0);
#[map]
pub(crate) static FD_SCRATCH: PerCpuArray<WithStack<FdEvent, STACK_TOP_BYTES>> =
    PerCpuArray::with_max_entries(1, 0);
#[map]
pub(crate) static FORK_SCRATCH: PerCpuArray<WithStack<ForkEvent, TASK_STACK_TOP_BYTES>> =
    PerCpuArray::with_max_entries(1, 0);

/// The held-back file opens (see `held.rs`): one slot per low bits of a tgid, owned by the
/// followed process that claimed it.
#[map]
pub(crate) static HELD_OPENS: Array<HeldOpen> = Array::with_max_entries(HELD_SLOTS, 0);

/// Followed processes that share their descriptor table with another process, and so never
/// hold an open back (see `held.rs`); looked up only when a process claims a slot.
#[map]
pub(crate) static NEVER_HOLDS: HashMap<u32, u8> =
    HashMap::with_max_entries(MAX_FOLLOWED, BPF_F_NO_PREALLOC);

/// Index 0: open+close pairs that were never sent (see `held.rs`), per CPU.
#[map]
pub(crate) static PAIRED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `BPF_F_NO_PREALLOC` from linux/bpf.h.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Each CPU's tick and the time read at its first event in it: see [`crate::clock`].
#[map]
pub(crate) static TICK_CLOCK: PerCpuArray<TickClock> = PerCpuArray::with_max_entries(1, 0);

/// Index 0: events dropped because the ring buffer was full, per CPU.
/// Index 1: events lost in flight: since exit probes read the arguments from the saved
/// registers, only an event whose program the Python walker could not resume (its slot
/// empty, which the loader prevents); the report's `lost_in_flight_full`.
/// Index 2: children that could not be followed (FOLLOWED full), per CPU.
#[map]
pub(crate) static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(3, 0);

pub(crate) const LOST_RING_FULL: u32 = 0;
pub(crate) const LOST_IN_FLIGHT: u32 = 1;
pub(crate) const LOST_FOLLOW_FULL: u32 = 2;

/// Field offsets of this kernel's tracepoints, written by userspace before loading (it lands
/// in .rodata, so the verifier sees the values as constants).
#[unsafe(no_mangle)]
pub(crate) static OFFSETS: TracepointOffsets = TracepointOffsets::absent();

/// Where the calling task's descriptor table is (struct field offsets from this kernel's BTF,
/// written by userspace before loading, like [`OFFSETS`]); sys_enter_close reads it.
#[unsafe(no_mangle)]
pub(crate) static KERNEL_OFFSETS: KernelOffsets = KernelOffsets::absent();

/// An eighth of the ring buffer (set by userspace from the ring size): a producer wakes the
/// reader when its record makes the ring's producer position cross a multiple of it, so that
/// no more than an eighth of the ring can fill up unread without a wakeup. Otherwise events
/// are submitted without a wakeup and userspace drains them on a short timer: a wakeup per
/// event (a self-IPI) cost more than the rest of a probe.
#[unsafe(no_mangle)]
pub(crate) static WAKEUP_BYTES: u64 = 0;

/// 1 when processes are chosen by name or cgroup (set by userspace): exec then looks the
/// new program up in MATCH_COMMS and MATCH_CGROUPS.
#[unsafe(no_mangle)]
pub(crate) static MATCH_TARGETS: u64 = 0;

/// 1 with `--all` (set by userspace): unfollowed processes' births and deaths are counted in
/// HOST_COUNTS.
#[unsafe(no_mangle)]
pub(crate) static HOST_WIDE: u64 = 0;

/// Bytes of user stack to copy at most per event (set by userspace, `--stack-copy-kib`): the
/// copy is most of a descriptor event's cost, and it can be traded for unwinding depth.
#[unsafe(no_mangle)]
pub(crate) static STACK_COPY_BYTES: u64 = tracer_common::STACK_TOP_BYTES as u64;

/// `BPF_RB_*` flags from linux/bpf.h.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_PROD_POS: u64 = 3;
/// The ring buffer's header in front of each record.
const RING_RECORD_HEADER: u64 = 8;

/// Flags for submitting a record of `size` bytes: wake the reader only when it makes the
/// producer position cross into a new eighth of the ring, so there is one wakeup per eighth
/// written whatever the event rate (a few a second at a million events a second).
///
/// The producer position, not the unread bytes: those are the producer position less the
/// consumer's, a cache line the reader writes on the other CPU after every record, so reading
/// it was a cache miss on every event. The producer's line was just written here.
#[inline(always)]
pub(crate) fn submit_flags(size: u64) -> u64 {
    // SAFETY: a plain read of a load-time constant.
    let eighth = unsafe { core::ptr::read_volatile(&raw const WAKEUP_BYTES) };
    if eighth == 0 {
        return BPF_RB_FORCE_WAKEUP;
    }
    let before = EVENTS.query(BPF_RB_PROD_POS);
    let after = before + size + RING_RECORD_HEADER;
    if after / eighth != before / eighth {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Puts an event and the first `tail_len` bytes after it (its stack copy, and a file open's
/// path after that) into the ring.
#[inline(always)]
pub(crate) fn output_with_stack<E, const N: usize>(scratch: *const WithStack<E, N>, tail_len: u32) {
    // Written so that the verifier sees the bound on the size it is given.
    let tail_len = if (tail_len as usize) > N {
        N
    } else {
        tail_len as usize
    };
    let size = core::mem::size_of::<E>() + tail_len;
    // SAFETY: `scratch` is a per-CPU map value of size_of::<WithStack<E, N>>() bytes, which
    // `size` does not exceed; every byte of the event and the first `tail_len` after it were
    // written by the caller.
    let record = unsafe { core::slice::from_raw_parts(scratch.cast::<u8>(), size) };
    if EVENTS
        .output::<[u8]>(record, submit_flags(size as u64))
        .is_err()
    {
        count_lost(LOST_RING_FULL);
    }
}

/// Puts a fixed-size event into the ring.
#[inline(always)]
pub(crate) fn output<E>(event: &E) {
    if EVENTS
        .output::<E>(event, submit_flags(core::mem::size_of::<E>() as u64))
        .is_err()
    {
        count_lost(LOST_RING_FULL);
    }
}

/// Reads one field of [`OFFSETS`]; volatile so the compiler cannot fold the placeholder value.
macro_rules! offset {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::OFFSETS.$field) }
    };
}
pub(crate) use offset;

/// Reads one field of [`KERNEL_OFFSETS`] (`tw.field` for [`TimeWaitOffsets`]); volatile so the
/// placeholder is not folded.
///
/// [`TimeWaitOffsets`]: tracer_common::TimeWaitOffsets
macro_rules! kernel_offset {
    ($($field:ident).+) => {
        // SAFETY: a plain read of a load-time constant.
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::KERNEL_OFFSETS.$($field).+) }
    };
}
pub(crate) use kernel_offset;

/// Adds one to a per-CPU loss counter.
#[inline(always)]
pub(crate) fn count_lost(which: u32) {
    bump(&LOST, which);
}

/// Adds one to this CPU's slot `index` of a per-CPU counter map.
#[inline(always)]
pub(crate) fn bump(counters: &PerCpuArray<u64>, index: u32) {
    if let Some(counter) = counters.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and programs do not preempt each other on one CPU.
        unsafe { *counter += 1 };
    }
}
