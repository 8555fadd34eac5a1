//! Which processes are followed. Every probe asks first, on every traced syscall of every
//! process on the machine, so the answer must cost almost nothing: one bit per pid in an
//! array (FOLLOWED_BITS), whose lookup the verifier inlines into a few instructions. A hash
//! lookup is a helper call: under nginx it was as much as the rest of a followed close.
//!
//! FOLLOWED (hash) keeps what is known of each followed process (its main thread's stack
//! base, read only when a stack is copied without a remembered walk) and bounds how many are
//! followed. Its entry is made before the bit is set and removed after the bit is cleared, so
//! a process whose bit is set has one.
//!
//! A word holds 64 pids, whose forks and exits run on any CPU: bits change with atomic
//! or/and. Userspace cannot write a word without racing those, so it follows processes by
//! running [`follow_processes`] (`BPF_PROG_TEST_RUN`), which does what the fork probe does.

use core::intrinsics::{AtomicOrdering, atomic_and, atomic_or};

use aya_ebpf::{bindings::BPF_EXIST, macros::raw_tracepoint, programs::RawTracePointContext};
use tracer_common::FOLLOWED_NO_BASE;

use crate::{
    maps::{FOLLOWED, FOLLOWED_BITS},
    test_run::each_tgid_argument,
};

/// The word of FOLLOWED_BITS that holds `tgid`'s bit, and the bit.
#[inline(always)]
fn bit_of(tgid: u32) -> Option<(*mut u64, u64)> {
    let word = FOLLOWED_BITS.get_ptr_mut(tgid >> 6)?;
    Some((word, 1u64 << (tgid & 63)))
}

/// Whether the process `tgid` is followed.
#[inline(always)]
pub(crate) fn is_followed(tgid: u32) -> bool {
    match bit_of(tgid) {
        // SAFETY: array memory, valid for the map's life; a plain load, since a bit that
        // changes this moment is a process that starts or stops being followed this moment.
        Some((word, bit)) => (unsafe { core::ptr::read_volatile(word) } & bit) != 0,
        None => false,
    }
}

/// Follows the process `tgid` from now on; false when FOLLOWED is full (the caller counts
/// it lost).
#[inline(always)]
pub(crate) fn follow(tgid: u32) -> bool {
    let Some((word, bit)) = bit_of(tgid) else {
        return false;
    };
    if FOLLOWED.insert(&tgid, &FOLLOWED_NO_BASE, 0).is_err() {
        return false;
    }
    // SAFETY: array memory; the word is 8-byte aligned.
    unsafe { atomic_or::<u64, u64, { AtomicOrdering::SeqCst }>(word, bit) };
    true
}

/// Stops following the process (or the kernel-created thread) `tgid`.
#[inline(always)]
pub(crate) fn unfollow(tgid: u32) {
    if let Some((word, bit)) = bit_of(tgid) {
        // SAFETY: as in `follow`.
        unsafe { atomic_and::<u64, u64, { AtomicOrdering::SeqCst }>(word, !bit) };
    }
    let _ = FOLLOWED.remove(&tgid);
}

/// The learned stack base of the followed process's main thread, if userspace has sent it.
#[inline(always)]
pub(crate) fn main_stack_base(tgid: u32) -> Option<u64> {
    // SAFETY: a map value, read once while this program runs.
    let base = *unsafe { FOLLOWED.get(&tgid) }?;
    (base > FOLLOWED_NO_BASE).then_some(base)
}

/// Forgets the main thread's stack base (its process exec'd: the new program has a new stack).
#[inline(always)]
pub(crate) fn forget_main_stack_base(tgid: u32) {
    let _ = FOLLOWED.insert(&tgid, &FOLLOWED_NO_BASE, BPF_EXIST as u64);
}

/// Follows the processes userspace names: each argument is a tgid, 0 ends the list. Returns
/// how many could not be followed (FOLLOWED full). Loaded, never attached: userspace runs it
/// with `BPF_PROG_TEST_RUN`.
#[raw_tracepoint]
pub(crate) fn follow_processes(ctx: RawTracePointContext) -> i32 {
    let mut refused = 0;
    each_tgid_argument!(ctx, |tgid| {
        if !follow(tgid) {
            refused += 1;
        }
    });
    refused
}
