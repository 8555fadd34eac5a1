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

/// Bytes of user stack to copy at most per event (set by userspace, `--stack-copy-kib`): the
/// copy is most of a descriptor event's cost, and it can be traded for unwinding depth.
#[unsafe(no_mangle)]
pub static STACK_COPY_BYTES: u64 = tracer_common::STACK_TOP_BYTES as u64;

/// `BPF_RB_*` flags from linux/bpf.h.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Flags for submitting an event: wake the reader only once enough is waiting.
#[inline(always)]
pub fn submit_flags() -> u64 {
    // SAFETY: a plain read of a load-time constant.
    let threshold = unsafe { core::ptr::read_volatile(&raw const WAKEUP_BYTES) };
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= threshold {
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
