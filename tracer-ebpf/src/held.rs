//! File opens held back in the kernel, so that one its own thread closes again at once is
//! never sent: on a busy server most descriptors are opened and closed within a request, and
//! such a pair can never be a leak. Sending both halves cost more than the rest of the two
//! probes together (the ring's reservation and copy, then userspace's decode and table
//! update on the other CPU).
//!
//! Each followed process has one slot (HELD_OPENS, made at its first open that qualifies;
//! a process that shares its descriptor table with another process never holds anything).
//! A file open whose stack the kernel recognised (a remembered walk, see `memo.rs`: nothing
//! copied, so the record is small) in a process without Python frames is written there
//! (its path read straight into it) instead of into the ring. Then, whichever comes first:
//! - its own thread closes that descriptor, successfully: neither is sent; the pair is
//!   counted (PAIRED), and the slot keeps the closed open as the number's last life until
//!   the process's next event, so that a second close of the same number right after (a
//!   double close, EBADF) is still explained: both halves are sent then, before it;
//! - any other event of the process, on any thread: the held open is sent first, so
//!   userspace sees every process's events in their order;
//! - userspace asks (`flush_held_opens`, run with `BPF_PROG_TEST_RUN` every housekeeping
//!   tick and before anything compares with /proc or reports): a descriptor that stays open
//!   while its process does nothing else reaches userspace that late, at most.
//!
//! Threads of one process run on several CPUs at once, so the slot changes hands with
//! compare-and-swap on its state. The CPU that holds it (BUSY) is the only one that reads or
//! writes the record; a program that finds it BUSY never waits: it sends its own event
//! directly, which orders it as concurrent events of two threads are ordered anyway.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xchg};

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use tracer_common::{
    CloseEvent, EventHeader, EventKind, FileOpenEvent, NO_STACK, PATH_CAP, WithStack,
};

use crate::{
    clock::event_time_ns,
    maps::{HELD_OPENS, HELD_ZERO, PAIRED, output, output_with_stack},
};

/// Nothing held.
const EMPTY: u64 = 0;
/// One CPU is reading or writing the record.
const BUSY: u64 = 1;
/// An open waits to be sent.
const HELD: u64 = 2;
/// The held open was closed by its thread: kept as the number's last life until the
/// process's next event.
const CLOSED: u64 = 3;
/// Nothing is ever held: the process shares its descriptor table with another process
/// (clone with CLONE_FILES and without CLONE_THREAD), whose events would not send it first.
const NEVER: u64 = 4;

/// A file open's record without a stack copy: the event, then its path.
pub(crate) type HeldRecord = WithStack<FileOpenEvent, PATH_CAP>;

/// One process's slot.
#[repr(C)]
pub(crate) struct HeldOpen {
    state: u64,
    /// When its thread closed it (CLOSED).
    closed_at_ns: u64,
    /// The event, then its `path_len` bytes of path.
    record: HeldRecord,
}

/// Moves the slot from state `from` to `to` if no other CPU moved it first; true if so.
/// (`AtomicU64` has no compare-and-swap on the BPF target: the intrinsic is the same
/// instruction, BPF_CMPXCHG.)
///
/// # Safety
/// `slot` must be a live HELD_OPENS value (memory that stays valid while the program runs:
/// the map is not preallocated, so a deleted value is freed only after an RCU grace period).
#[inline(always)]
unsafe fn cas(slot: *mut HeldOpen, from: u64, to: u64) -> bool {
    // SAFETY: as the function's contract says; the word is 8-byte aligned in the value.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut (*slot).state,
            from,
            to,
        )
    }
    .1
}

/// Takes the slot from state `from`; true when this CPU now holds it (BUSY).
#[inline(always)]
unsafe fn take(slot: *mut HeldOpen, from: u64) -> bool {
    // SAFETY: passed on from the caller.
    unsafe { cas(slot, from, BUSY) }
}

/// Hands the slot back in state `to` (an atomic exchange: the record's writes are ordered
/// before it on every architecture).
#[inline(always)]
unsafe fn release(slot: *mut HeldOpen, to: u64) {
    // SAFETY: passed on from the caller, who holds the slot.
    unsafe { atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(&raw mut (*slot).state, to) };
}

/// The state as last written, without synchronising (a hint: acting on it takes the slot).
#[inline(always)]
unsafe fn peek(slot: *mut HeldOpen) -> u64 {
    // SAFETY: passed on from the caller.
    unsafe { core::ptr::read_volatile(&raw const (*slot).state) }
}

/// Sends the held record. The caller holds the slot.
#[inline(always)]
unsafe fn send(slot: *mut HeldOpen) {
    // The mask is what the verifier sees bound the send (a path is under PATH_CAP bytes).
    const _: () = assert!(PATH_CAP.is_power_of_two());
    // SAFETY: passed on from the caller.
    unsafe {
        let tail = (*slot).record.event.path_len as u32 & (PATH_CAP as u32 - 1);
        output_with_stack(&raw const (*slot).record, tail);
    }
}

/// Sends the open the slot holds, if it holds one and no other CPU has the slot, leaving it
/// in state `then`; true if so.
#[inline(always)]
unsafe fn send_held(slot: *mut HeldOpen, then: u64) -> bool {
    // SAFETY: passed on from the caller.
    unsafe {
        if peek(slot) != HELD || !take(slot, HELD) {
            return false;
        }
        send(slot);
        release(slot, then);
    }
    true
}

/// Sends what the process's slot holds, before the caller's own event of that process.
/// A CLOSED life is forgotten (`forget_closed`) when the caller's event may change what the
/// number means; userspace's flush keeps it.
#[inline(always)]
pub(crate) fn flush(tgid: u32, forget_closed: bool) {
    let Some(slot) = HELD_OPENS.get_ptr_mut(&tgid) else {
        return;
    };
    // SAFETY: a live value of the map, for as long as this program runs.
    unsafe {
        if !send_held(slot, EMPTY) && forget_closed && peek(slot) == CLOSED {
            cas(slot, CLOSED, EMPTY);
        }
    }
}

/// The slot of a process, taken by this CPU to hold a file open in (what it held before is
/// sent): the caller writes the record, then [`Holding::hold`]s it.
pub(crate) struct Holding {
    slot: *mut HeldOpen,
}

impl Holding {
    /// Takes the process's slot; `None` when it cannot hold (no slot, a process that never
    /// holds, or another CPU has the slot this moment): the caller sends its event.
    #[inline(always)]
    pub(crate) fn take(tgid: u32) -> Option<Self> {
        let slot = slot(tgid)?;
        // SAFETY: a live value of the map; this CPU touches the record only while it holds
        // the slot.
        unsafe {
            match peek(slot) {
                HELD => {
                    if !take(slot, HELD) {
                        return None;
                    }
                    send(slot);
                }
                other @ (EMPTY | CLOSED) => {
                    if !take(slot, other) {
                        return None;
                    }
                }
                _ => return None,
            }
        }
        Some(Self { slot })
    }

    /// Where the caller writes the open: the event, then its `path_len` bytes of path.
    #[inline(always)]
    pub(crate) fn record(&self) -> *mut HeldRecord {
        // SAFETY: a field of the slot this CPU holds.
        unsafe { &raw mut (*self.slot).record }
    }

    /// Holds the record written (it waits to be sent, or paired with its close).
    #[inline(always)]
    pub(crate) fn hold(self) {
        // SAFETY: this CPU holds the slot.
        unsafe { release(self.slot, HELD) };
    }
}

/// What became of a close, as far as the held open is concerned.
pub(crate) enum Close {
    /// It closed the open the slot held: neither is ever sent.
    Paired,
    /// Anything else, to be sent as usual; `open` is whether the number was open (`None`
    /// when that cannot be told), as `is_open` said.
    Sent { open: Option<bool> },
}

/// For a close of `fd` by thread `tid`: [`Close::Paired`] when it closes the open the slot
/// holds. That open's number is certainly open (no event of the process came in between,
/// and any other close of it would have been one), so `is_open`, which reads the
/// descriptor table, is asked only otherwise. Then what the slot held goes out first, and
/// for a failing close of the number a CLOSED life names (a double close) the life goes out
/// as its open and its close, so that userspace can explain the failure.
#[inline(always)]
pub(crate) fn pair_with_close(
    tgid: u32,
    tid: u32,
    fd: i32,
    is_open: impl FnOnce() -> Option<bool>,
) -> Close {
    let Some(slot) = HELD_OPENS.get_ptr_mut(&tgid) else {
        return Close::Sent { open: is_open() };
    };
    // SAFETY: a live value of the map; the record is read only while this CPU holds it.
    unsafe {
        match peek(slot) {
            HELD if take(slot, HELD) => {
                let header = (*slot).record.event.header;
                if (*slot).record.event.fd == fd && header.tid == tid {
                    (*slot).closed_at_ns = event_time_ns();
                    release(slot, CLOSED);
                    count_pair();
                    return Close::Paired;
                }
                send(slot);
                release(slot, EMPTY);
                Close::Sent { open: is_open() }
            }
            CLOSED if take(slot, CLOSED) => {
                let open = is_open();
                if open == Some(false) && (*slot).record.event.fd == fd {
                    send(slot);
                    let header = (*slot).record.event.header;
                    output(&CloseEvent {
                        header: EventHeader {
                            kind: EventKind::FdClosed as u32,
                            tgid: header.tgid,
                            tid: header.tid,
                            stack_id: NO_STACK,
                            timestamp_ns: (*slot).closed_at_ns,
                        },
                        fd,
                        _pad: 0,
                    });
                }
                release(slot, EMPTY);
                Close::Sent { open }
            }
            _ => Close::Sent { open: is_open() },
        }
    }
}

/// Stops holding opens of the process for as long as it lives (it shares its descriptor
/// table with another process: see [`NEVER`]), sending what it holds now. Best effort
/// against another CPU that holds the slot this very moment: tried twice.
#[inline(always)]
pub(crate) fn never(tgid: u32) {
    let Some(slot) = slot(tgid) else {
        return;
    };
    // SAFETY: a live value of the map; the record is read only while this CPU holds it.
    unsafe {
        for _ in 0..2 {
            match peek(slot) {
                HELD => {
                    if send_held(slot, NEVER) {
                        return;
                    }
                }
                NEVER => return,
                other => {
                    if other != BUSY && cas(slot, other, NEVER) {
                        return;
                    }
                }
            }
        }
    }
}

/// Drops the process's slot (it exited).
#[inline(always)]
pub(crate) fn forget(tgid: u32) {
    let _ = HELD_OPENS.remove(&tgid);
}

/// The process's slot, made empty at its first use.
#[inline(always)]
fn slot(tgid: u32) -> Option<*mut HeldOpen> {
    if let Some(slot) = HELD_OPENS.get_ptr_mut(&tgid) {
        return Some(slot);
    }
    let zero = HELD_ZERO.get_ptr(0)?;
    // BPF_NOEXIST: another thread of the process may have made it meanwhile; either way the
    // lookup below finds the one slot.
    // SAFETY: `zero` is a map value of the slot's size, never written.
    let _ = HELD_OPENS.insert(&tgid, unsafe { &*zero }, BPF_NOEXIST);
    HELD_OPENS.get_ptr_mut(&tgid)
}

/// `BPF_NOEXIST` from linux/bpf.h.
const BPF_NOEXIST: u64 = 1;

#[inline(always)]
fn count_pair() {
    if let Some(counter) = PAIRED.get_ptr_mut(0) {
        // SAFETY: per-CPU slot; a program that interrupts this one on the same CPU does not
        // pair (only close pairs, and close does not run in interrupt context).
        unsafe { *counter += 1 };
    }
}

/// Sends the held opens of the processes userspace names: each argument is a tgid, 0 ends
/// the list. Loaded, never attached: userspace runs it with `BPF_PROG_TEST_RUN`.
#[raw_tracepoint]
pub(crate) fn flush_held_opens(ctx: RawTracePointContext) -> i32 {
    // One constant index each: the verifier refuses context reads at a variable offset.
    macro_rules! flush_args {
        ($($i:literal)+) => {$(
            let tgid: u64 = ctx.arg($i);
            if tgid == 0 {
                return 0;
            }
            flush(tgid as u32, false);
        )+};
    }
    flush_args!(0 1 2 3 4 5 6 7 8 9 10 11);
    0
}
