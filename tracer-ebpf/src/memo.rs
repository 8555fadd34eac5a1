//! Stacks met again, sent without their copy. A server opens its descriptors from the same
//! few call sites at the same depth, request after request, and the stack copy (hundreds of
//! bytes to a few KiB) is most of what such an event costs: to write into the ring here, and
//! to read there. Userspace remembers the walks it made, and the words of the stack that
//! decided each (its return addresses, not the saved registers and locals around them);
//! it gives the kernel those words (STACK_MEMOS). A copy that holds the same words where a
//! walk of the same process from the same registers read them is that walk's stack, exactly:
//! the event is sent with the walk's handle and without the copy.

use tracer_common::{MEMO_WORDS, StackMemoKey, StackRegs};

use crate::maps::STACK_MEMOS;

/// The handle of the remembered walk that a whole-stack copy of `copied` bytes in `bytes`,
/// taken with `regs` by a thread of `tgid`, matches.
///
/// # Safety
/// `regs` must point at the registers just filled, `bytes` at the `copied` bytes copied
/// after them (a per-CPU scratch record).
#[inline(always)]
pub(crate) unsafe fn remembered<const N: usize>(
    tgid: u32,
    regs: *const StackRegs,
    bytes: *const [u8; N],
    copied: u32,
) -> Option<u32> {
    // SAFETY: as the function's contract says.
    let (ip, sp, bp) = unsafe { ((*regs).ip, (*regs).sp, (*regs).bp) };
    let key = StackMemoKey {
        tgid,
        _pad: 0,
        ip,
        sp,
    };
    // SAFETY: a map value, read while this program runs.
    let memo = unsafe { STACK_MEMOS.get(&key) }?;
    if memo.copied != copied || (memo.bp_decides != 0 && memo.bp != bp) {
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
