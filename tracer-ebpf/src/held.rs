//! File opens held back in the kernel, so that one its own thread closes again at once is
//! never sent: on a busy server most descriptors are opened and closed within a request, and
//! such a pair can never be a leak. Sending both halves cost more than the rest of the two
//! probes together (the ring's reservation and copy, then userspace's decode and table
//! update on the other CPU).
//!
//! A followed process holds in one slot of HELD_OPENS, an array indexed by the low bits of
//! its tgid and owned by the process that claimed it (at its first open that qualifies):
//! an array's lookup is a few instructions the verifier inlines, where a hash lookup is a
//! call that costs as much as the rest of the close that pairs. A process whose slot another
//! live process owns does not hold (its events go out as they happen); nor does a process
//! that shares its descriptor table with another process (NEVER_HOLDS).
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
//! compare-and-swap on one word that holds both its owner and its state. The CPU that holds
//! it (BUSY) is the only one that reads or writes the record; a program that finds it BUSY
//! never waits: it sends its own event directly, which orders it as concurrent events of
//! two threads are ordered anyway.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xchg};

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use tracer_common::{
    CloseEvent, EventHeader, EventKind, FileOpenEvent, HELD_SLOTS, NO_STACK, PATH_CAP, WithStack,
};

use crate::{
    clock::event_time_ns,
    followed,
    maps::{HELD_OPENS, NEVER_HOLDS, PAIRED, bump, output, output_with_stack},
    test_run::each_tgid_argument,
};

/// Nothing held (a slot nobody owns is all zero).
const EMPTY: u32 = 0;
/// One CPU is reading or writing the record.
const BUSY: u32 = 1;
/// An open waits to be sent.
const HELD: u32 = 2;
/// The held open was closed by its thread: kept as the number's last life until the
/// process's next event.
const CLOSED: u32 = 3;

/// A slot's word: its owner's tgid (0: nobody) and its state, moved together.
#[inline(always)]
const fn word(owner: u32, state: u32) -> u64 {
    ((owner as u64) << 32) | state as u64
}

#[inline(always)]
const fn owner_of(word: u64) -> u32 {
    (word >> 32) as u32
}

#[inline(always)]
const fn state_of(word: u64) -> u32 {
    word as u32
}

/// A file open's record without a stack copy: the event, then its path.
pub(crate) type HeldRecord = WithStack<FileOpenEvent, PATH_CAP>;

/// One slot.
#[repr(C)]
pub(crate) struct HeldOpen {
    /// [`word`]: owner and state.
    word: u64,
    /// When its thread closed it (CLOSED).
    closed_at_ns: u64,
    /// The event, then its `path_len` bytes of path.
    record: HeldRecord,
}

/// Moves the slot's word from `from` to `to` if no other CPU moved it first; true if so.
/// (`AtomicU64` has no compare-and-swap on the BPF target: the intrinsic is the same
/// instruction, BPF_CMPXCHG.)
///
/// # Safety
/// `slot` must be a HELD_OPENS value (array memory: it stays valid for the map's life).
#[inline(always)]
unsafe fn cas(slot: *mut HeldOpen, from: u64, to: u64) -> bool {
    // SAFETY: as the function's contract says; the word is 8-byte aligned in the value.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut (*slot).word,
            from,
            to,
        )
    }
    .1
}

/// Hands the slot back as `to` (an atomic exchange: the record's writes are ordered before
/// it on every architecture).
#[inline(always)]
unsafe fn release(slot: *mut HeldOpen, to: u64) {
    // SAFETY: passed on from the caller, who holds the slot.
    unsafe { atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(&raw mut (*slot).word, to) };
}

/// The word as last written, without synchronising (a hint: acting on it takes the slot).
#[inline(always)]
unsafe fn peek(slot: *mut HeldOpen) -> u64 {
    // SAFETY: passed on from the caller.
    unsafe { core::ptr::read_volatile(&raw const (*slot).word) }
}

/// The slot a process may hold in (whoever owns it).
#[inline(always)]
fn slot_of(tgid: u32) -> Option<*mut HeldOpen> {
    const { assert!(HELD_SLOTS.is_power_of_two()) };
    HELD_OPENS.get_ptr_mut(tgid & (HELD_SLOTS - 1))
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

/// Sends the open `tgid` holds in the slot, if it holds one and no other CPU has the slot
/// this moment, leaving the slot as `then`; true if so.
#[inline(always)]
unsafe fn send_held(slot: *mut HeldOpen, tgid: u32, then: u64) -> bool {
    let held = word(tgid, HELD);
    // SAFETY: passed on from the caller.
    unsafe {
        if peek(slot) != held || !cas(slot, held, word(tgid, BUSY)) {
            return false;
        }
        send(slot);
        release(slot, then);
    }
    true
}

/// Sends what the process holds, before the caller's own event of that process. A CLOSED
/// life is forgotten (`forget_closed`) when the caller's event may change what the number
/// means; userspace's flush keeps it.
#[inline(always)]
pub(crate) fn flush(tgid: u32, forget_closed: bool) {
    let Some(slot) = slot_of(tgid) else {
        return;
    };
    let closed = word(tgid, CLOSED);
    // SAFETY: a HELD_OPENS value.
    unsafe {
        if !send_held(slot, tgid, word(tgid, EMPTY)) && forget_closed && peek(slot) == closed {
            cas(slot, closed, word(tgid, EMPTY));
        }
    }
}

/// The slot of a process, taken by this CPU to hold a file open in (what it held before is
/// sent): the caller writes the record, then [`Holding::hold`]s it.
pub(crate) struct Holding {
    slot: *mut HeldOpen,
    tgid: u32,
}

impl Holding {
    /// Takes the process's slot, claiming it if nobody owns it; `None` when the process
    /// cannot hold now (another CPU has the slot, another live process owns it, or the
    /// process never holds): the caller sends its event.
    #[inline(always)]
    pub(crate) fn take(tgid: u32) -> Option<Self> {
        let slot = slot_of(tgid)?;
        let busy = word(tgid, BUSY);
        // SAFETY: a HELD_OPENS value; this CPU touches the record only while it holds the
        // slot.
        unsafe {
            let now = peek(slot);
            if owner_of(now) == tgid {
                match state_of(now) {
                    HELD => {
                        if !cas(slot, now, busy) {
                            return None;
                        }
                        send(slot);
                    }
                    EMPTY | CLOSED => {
                        if !cas(slot, now, busy) {
                            return None;
                        }
                    }
                    _ => return None,
                }
            } else if !claimable(now, tgid) || !cas(slot, now, busy) {
                return None;
            }
        }
        Some(Self { slot, tgid })
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
        unsafe { release(self.slot, word(self.tgid, HELD)) };
    }
}

/// Whether `tgid` may claim a slot whose word is `now` and that it does not own: nobody owns
/// it, or its owner is gone (not followed any more: its exit probe could not free the slot
/// because a CPU had it that moment), and `tgid` is not a process that never holds. Asked
/// once in a process's life unless slots collide, so the two lookups here are rare.
#[inline(always)]
fn claimable(now: u64, tgid: u32) -> bool {
    let owner = owner_of(now);
    let owner_gone = owner == 0 || (state_of(now) != BUSY && !followed::is_followed(owner));
    // SAFETY: the value is only tested for presence.
    owner_gone && unsafe { NEVER_HOLDS.get(&tgid) }.is_none()
}

/// What became of a close, as far as the held open is concerned.
pub(crate) enum Close {
    /// It closed the open the slot held: neither is ever sent.
    Paired,
    /// Anything else, to be sent as usual; `open` is whether the number was open (`None`
    /// when that cannot be told), as `is_open` said.
    Sent { open: Option<bool> },
}

/// For a close of `fd` by thread `tid`: [`Close::Paired`] when it closes the open the
/// process holds. That open's number is certainly open (no event of the process came in
/// between, and any other close of it would have been one), so `is_open`, which reads the
/// descriptor table, is asked only otherwise. Then what the process held goes out first,
/// and for a failing close of the number a CLOSED life names (a double close) the life goes
/// out as its open and its close, so that userspace can explain the failure.
#[inline(always)]
pub(crate) fn pair_with_close(
    tgid: u32,
    tid: u32,
    fd: i32,
    is_open: impl FnOnce() -> Option<bool>,
) -> Close {
    let Some(slot) = slot_of(tgid) else {
        return Close::Sent { open: is_open() };
    };
    let (held, closed, busy, empty) = (
        word(tgid, HELD),
        word(tgid, CLOSED),
        word(tgid, BUSY),
        word(tgid, EMPTY),
    );
    // SAFETY: a HELD_OPENS value; the record is read only while this CPU holds it.
    unsafe {
        let now = peek(slot);
        if now == held && cas(slot, held, busy) {
            let header = (*slot).record.event.header;
            if (*slot).record.event.fd == fd && header.tid == tid {
                (*slot).closed_at_ns = event_time_ns();
                release(slot, closed);
                bump(&PAIRED, 0);
                return Close::Paired;
            }
            send(slot);
            release(slot, empty);
            return Close::Sent { open: is_open() };
        }
        if now == closed && cas(slot, closed, busy) {
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
            release(slot, empty);
            return Close::Sent { open };
        }
    }
    Close::Sent { open: is_open() }
}

/// Stops the process from holding opens for as long as it lives: it shares its descriptor
/// table with another process (clone with CLONE_FILES and without CLONE_THREAD), whose
/// events would not send what it holds first. What it holds now is sent and its slot given
/// up. Best effort against another CPU that has the slot this very moment.
#[inline(always)]
pub(crate) fn never(tgid: u32) {
    // It fails only with the map full: as many sharers alive as processes followed.
    let _ = NEVER_HOLDS.insert(&tgid, &1, 0);
    let Some(slot) = slot_of(tgid) else {
        return;
    };
    // SAFETY: a HELD_OPENS value.
    unsafe {
        if !send_held(slot, tgid, 0) {
            give_up(slot, tgid);
        }
    }
}

/// Frees the process's slot, if it owns it (it exited, or its pid is a new process's now),
/// and forgets that it never held.
#[inline(always)]
pub(crate) fn forget(tgid: u32) {
    let _ = NEVER_HOLDS.remove(&tgid);
    let Some(slot) = slot_of(tgid) else {
        return;
    };
    // SAFETY: a HELD_OPENS value.
    unsafe { give_up(slot, tgid) };
}

/// Frees the slot if `tgid` owns it and no CPU has it; tried a few times, since a CPU has it
/// only for the length of one program. A slot left owned by a process that is gone is
/// claimed by the next process that needs it (`claimable`).
///
/// # Safety
/// `slot` must be a HELD_OPENS value.
#[inline(always)]
unsafe fn give_up(slot: *mut HeldOpen, tgid: u32) {
    for _ in 0..4 {
        // SAFETY: as the function's contract says.
        let now = unsafe { peek(slot) };
        if owner_of(now) != tgid {
            return;
        }
        // SAFETY: as above.
        if state_of(now) != BUSY && unsafe { cas(slot, now, 0) } {
            return;
        }
    }
}

/// Sends the held opens of the processes userspace names: each argument is a tgid, 0 ends
/// the list. Loaded, never attached: userspace runs it with `BPF_PROG_TEST_RUN`.
#[raw_tracepoint]
pub(crate) fn flush_held_opens(ctx: RawTracePointContext) -> i32 {
    each_tgid_argument!(ctx, |tgid| {
        flush(tgid, false);
    });
    0
}
