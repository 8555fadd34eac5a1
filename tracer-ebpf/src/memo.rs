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

use aya_ebpf::{cty::c_void, helpers::generated::bpf_probe_read_user};
use tracer_common::{MEMO_WORDS, StackMemoKey};

use crate::{emit::StackStart, maps::STACK_MEMOS};

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
    // SAFETY: a map value, read while this program runs.
    let memo = unsafe { STACK_MEMOS.get(&key) }?;
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
