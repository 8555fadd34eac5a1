//! Maps and load-time settings shared by every probe.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
};
use tracer_common::{
    DEFAULT_RING_BYTES, InFlight, MAX_FOLLOWED, MAX_IN_FLIGHT, MAX_LISTEN_PORTS, MAX_TCP_SOCKETS,
    STACK_MAP_ENTRIES, TracepointOffsets,
};

/// Every event, in the order the kernel reserved them. Userspace may resize it at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// TGIDs of the processes we follow. Userspace seeds it; the fork probe extends it so a child
/// is followed from its first instruction; the exit probe removes a process that died.
#[map]
pub static FOLLOWED: HashMap<u32, u8> = HashMap::with_max_entries(MAX_FOLLOWED, 0);

/// Arguments of syscalls between their enter and exit tracepoints, keyed by pid_tgid.
#[map]
pub static IN_FLIGHT: HashMap<u64, InFlight> = HashMap::with_max_entries(MAX_IN_FLIGHT, 0);

/// TCP sockets (`struct sock` address) of followed processes -> owning TGID. Their state
/// changes are reported even from softirq context, where the task on the CPU is anyone.
#[map]
pub static TCP_SOCKETS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(MAX_TCP_SOCKETS, 0);

/// Local ports on which followed processes listen -> TGID, so the sockets they will accept
/// are tracked from their handshake on. Seeded by userspace, extended on LISTEN.
#[map]
pub static LISTEN_PORTS: HashMap<u16, u32> = HashMap::with_max_entries(MAX_LISTEN_PORTS, 0);

/// User stacks at descriptor and task creation, by id.
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(STACK_MAP_ENTRIES, 0);

/// Index 0: events dropped because the ring buffer was full, per CPU.
/// Index 1: syscalls whose arguments could not be stashed (IN_FLIGHT full), per CPU.
/// Index 2: children that could not be followed (FOLLOWED full), per CPU.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(3, 0);

pub const LOST_RING_FULL: u32 = 0;
pub const LOST_IN_FLIGHT_FULL: u32 = 1;
pub const LOST_FOLLOW_FULL: u32 = 2;

/// Field offsets of this kernel's tracepoints, written by userspace before loading (it lands
/// in .rodata, so the verifier sees the values as constants).
#[unsafe(no_mangle)]
pub static OFFSETS: TracepointOffsets = TracepointOffsets::absent();

/// Bytes of unread events at which a producer wakes the reader (set by userspace from the
/// ring size). Below it, events are submitted without a wakeup and userspace drains them on
/// a short timer: waking the reader on every event cost more than the rest of a probe.
#[unsafe(no_mangle)]
pub static WAKEUP_BYTES: u64 = 0;

/// `BPF_RB_*` flags from linux/bpf.h.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Flags for submitting a reserved `T` (the ring already counts it as waiting).
#[inline(always)]
pub fn submit_flags<T>() -> u64 {
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA);
    wakeup_flags(waiting.saturating_sub(record_bytes::<T>()), waiting)
}

/// Flags for `EVENTS.output` of a `T` (not waiting yet).
#[inline(always)]
pub fn output_flags<T>() -> u64 {
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA);
    wakeup_flags(waiting, waiting + record_bytes::<T>())
}

/// Bytes a `T` takes in the ring: an 8-byte header, rounded up to 8.
#[inline(always)]
const fn record_bytes<T>() -> u64 {
    ((core::mem::size_of::<T>() as u64 + 8) + 7) & !7
}

/// Wakes the reader when the unread bytes cross a multiple of `WAKEUP_BYTES`, not on every
/// event above it: each wakeup queues an irq_work (a self-IPI, an exit to the hypervisor in
/// a VM), and while a busy reader caught up, every event had sent one (`bpf_stats` and perf:
/// a quarter of `sys_exit_openat` was that IPI). A wakeup the reader misses is repeated at
/// the next multiple, and the reader also drains on a timer.
#[inline(always)]
fn wakeup_flags(waiting_before: u64, waiting_after: u64) -> u64 {
    // SAFETY: a plain read of a load-time constant.
    let threshold = unsafe { core::ptr::read_volatile(&raw const WAKEUP_BYTES) };
    if threshold == 0 || waiting_before / threshold != waiting_after / threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Reads one field of [`OFFSETS`]; volatile so the compiler cannot fold the placeholder value.
macro_rules! offset {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::OFFSETS.$field) }
    };
}
pub(crate) use offset;

/// Adds one to a per-CPU loss counter.
#[inline(always)]
pub fn count_lost(which: u32) {
    if let Some(counter) = LOST.get_ptr_mut(which) {
        // SAFETY: per-CPU slot, and programs do not preempt each other on one CPU.
        unsafe { *counter += 1 };
    }
}
