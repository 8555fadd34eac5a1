//! Stacks met again, sent without their copy. A server opens its descriptors from the same
//! few call sites at the same depth, request after request, and the stack copy (hundreds of
//! bytes to a few KiB) is most of what such an event costs: to write into the ring here, and
//! to read there. Userspace remembers the walks it made, and the words of the stack that
//! decided each (its return addresses, not the saved registers and locals around them);
//! it gives the kernel those words (STACK_MEMOS). A copy that holds the same words where a
//! walk of the same process from the same registers read them is that walk's stack, exactly:
//! the event is sent with the walk's handle and without the copy. The memo is looked up
//! first, from the registers alone: only the walk's bytes are copied, and the thread's stack
//! base (a second lookup) is needed only when no walk matches.
//!
//! Each CPU keeps copies of the walks it met last (MEMO_CACHE, direct-mapped by the
//! registers): an array slot of its own is a few instructions the verifier inlines and stays
//! in that CPU's cache, where the hash lookup is a call into a table every CPU shares (a
//! tenth of a followed open under nginx). A copy is only as good as the walk it copies:
//! userspace takes walks back (a process exec'd or is gone, or a walk replaces another), and
//! a handle taken back names its stack for a second only. So a copy is stamped with
//! MEMO_GENERATION, which userspace advances (`memos_taken_back`) after every batch that
//! takes walks back: a copy with another stamp is not used. The count a copy is stamped with
//! is read before the hash lookup, in that order (`count_before_lookup`): a copy stamped
//! with the new count was looked up after the walk was taken back. A copy used in the moment
//! between a take-back and the count's advance sends a handle that still names its stack.
//! (A hash element deleted is reused by a later insert; both happen in a batch that ends
//! with the count's advance, so a copy read while its element was rewritten is stale.)

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    cty::c_void, helpers::generated::bpf_probe_read_user, macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use tracer_common::{MEMO_CACHE_SLOTS, MEMO_WORDS, StackMemo, StackMemoKey};

use crate::{
    emit::{StackStart, copy_words},
    maps::{MEMO_CACHE, MEMO_GENERATION, STACK_MEMOS},
};

/// A CPU's copy of a remembered walk. An entry never filled is all zero: tgid 0 is never
/// followed, so it matches nothing.
#[repr(C)]
pub(crate) struct CachedMemo {
    /// MEMO_GENERATION when the walk was looked up.
    generation: u64,
    key: StackMemoKey,
    memo: StackMemo,
}

/// The slot of this CPU's copies that a walk from `key` goes into: a multiplicative hash of
/// the registers (two call sites of one process differ in `ip` or `sp`).
#[inline(always)]
fn cache_slot(key: &StackMemoKey) -> u32 {
    const { assert!(MEMO_CACHE_SLOTS.is_power_of_two() && MEMO_CACHE_SLOTS > 1) };
    let mixed =
        (key.ip ^ key.sp.rotate_left(32) ^ key.tgid as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> (64 - MEMO_CACHE_SLOTS.trailing_zeros())) as u32
}

/// The remembered walk from `key`: this CPU's copy if it is current, else STACK_MEMOS',
/// copied for next time.
///
/// # Safety
/// The pointer is into this CPU's MEMO_CACHE: valid until the program ends, and no other
/// program writes it meanwhile (programs do not preempt each other on a CPU).
#[inline(always)]
unsafe fn lookup(key: &StackMemoKey) -> Option<*const StackMemo> {
    let generation = MEMO_GENERATION.get_ptr_mut(0)?;
    let entry = MEMO_CACHE.get_ptr_mut(cache_slot(key))?;
    // SAFETY: array memory, valid for the maps' life; this CPU's entry (the contract).
    unsafe {
        let now = core::ptr::read_volatile(generation);
        if (*entry).generation == now
            && (*entry).key.tgid == key.tgid
            && (*entry).key.ip == key.ip
            && (*entry).key.sp == key.sp
        {
            return Some(&raw const (*entry).memo);
        }
        let now = count_before_lookup(generation, now);
        let memo = STACK_MEMOS.get(key)?;
        copy_words(memo, &raw mut (*entry).memo);
        (*entry).key = *key;
        (*entry).generation = now;
        Some(&raw const (*entry).memo)
    }
}

/// The count to stamp a copy with, read before the map is looked up. x86 does not reorder
/// loads with loads, so the plain read just made serves; elsewhere an atomic operation (a
/// full barrier) reads it again, at the cost of taking the count's cache line.
///
/// # Safety
/// `generation` must be MEMO_GENERATION's value.
#[inline(always)]
unsafe fn count_before_lookup(generation: *mut u64, read: u64) -> u64 {
    #[cfg(bpf_target_arch = "x86_64")]
    {
        let _ = generation;
        read
    }
    #[cfg(not(bpf_target_arch = "x86_64"))]
    {
        let _ = read;
        // SAFETY: as the function's contract says.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(generation, 0) }
    }
}

/// Makes every CPU's copies stale: userspace runs it (`BPF_PROG_TEST_RUN`) after it takes
/// walks back from STACK_MEMOS. Loaded, never attached.
#[raw_tracepoint]
pub(crate) fn memos_taken_back(_ctx: RawTracePointContext) -> i32 {
    if let Some(generation) = MEMO_GENERATION.get_ptr_mut(0) {
        // SAFETY: array memory, valid for the map's life.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(generation, 1) };
    }
    0
}

/// The handle of the remembered walk of a thread of `tgid` whose stack starts at `start`, if
/// its stack holds that walk's deciding words: looked up before anything is copied, so that
/// only the walk's bytes are copied (into `bytes`, at most `wanted` of them) and compared,
/// and nothing about the thread (its stack base) is looked up. The walk read those words and
/// only those, from the same registers: a stack that holds them is that walk's stack, however
/// far above it the thread's stack goes.
///
/// # Safety
/// `bytes` must point at writable memory (a per-CPU scratch record); `wanted` is at most N.
#[inline(always)]
pub(crate) unsafe fn remembered<const N: usize>(
    tgid: u32,
    start: StackStart,
    bytes: *mut [u8; N],
    wanted: u64,
) -> Option<u32> {
    let key = StackMemoKey {
        tgid,
        _pad: 0,
        ip: start.ip,
        sp: start.sp,
    };
    // SAFETY: this CPU's copy, read while this program runs.
    let memo = unsafe { &*lookup(&key)? };
    if memo.bp_decides != 0 && memo.bp != start.bp {
        return None;
    }
    let copied = memo.copied as u64;
    // Written so that the verifier sees the bound on the read.
    if copied == 0 || copied > wanted || copied > N as u64 {
        return None;
    }
    // SAFETY: `copied` bytes fit in `bytes`; the user read may fail, cleanly.
    let read = unsafe {
        bpf_probe_read_user(
            (*bytes).as_mut_ptr().cast::<c_void>(),
            copied as u32,
            start.sp as *const c_void,
        )
    };
    if read != 0 {
        return None;
    }
    // Masked, not compared: `N - 8` keeps the load within the copy's buffer for the
    // verifier and 8-aligned in one instruction. Userspace gives only words at multiples of
    // 8 from the stack pointer, within the `copied` bytes (`GivenWalks::give`), so the mask
    // changes nothing it gave; an unaligned read would be compiled to eight byte loads.
    const { assert!(N.is_power_of_two() && N >= 8) };
    let mut i = 0;
    while i < MEMO_WORDS {
        if i as u32 >= memo.words {
            return Some(memo.handle);
        }
        let at = memo.offsets[i] as usize & (N - 8);
        // SAFETY: `at + 8 <= N` and `at` is a multiple of 8 (the mask above); the copy starts
        // 8-aligned in its record (`WithStack`).
        let word = unsafe { core::ptr::read((*bytes).as_ptr().add(at).cast::<u64>()) };
        if word != memo.values[i] {
            return None;
        }
        i += 1;
    }
    Some(memo.handle)
}
