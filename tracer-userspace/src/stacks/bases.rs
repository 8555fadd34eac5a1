//! Where each followed thread's stack ends, learned from unwinds that reached the thread's
//! first frame, for the kernel: its stack copy then stops there instead of copying the whole
//! `--stack-copy-kib` budget. A server's request handler a dozen frames deep costs the bytes
//! of those frames, not 8 KiB, and a thread's first event pays the full copy once.
//!
//! The base is the highest stack address the walk read. Every walk of the thread passes
//! through the same first frames (`_start` → `__libc_start_main` → `main`, or
//! `start_thread`), which sit still while the thread runs, so every walk reads the same
//! highest word. A copy that stopped at the base and still ran out (the thread switched
//! stacks, or the base was learned from a walk that ended early) unlearns it, so the next
//! event copies in full again.

use foldhash::HashMap;

use super::unwind::Unwound;

#[derive(Default)]
pub(super) struct StackBases {
    /// tid -> base, as the kernel has it (once `pending` is applied).
    known: HashMap<u32, u64>,
    /// Changes for the kernel's map, in order: Some(base) to set, None to delete.
    pending: Vec<(u32, Option<u64>)>,
    /// Threads walked at least once since their base was last forgotten (or since they
    /// started), with a number that tells this stretch from a later one of the same tid: their
    /// later stacks may be deferred (`deferred.rs`), since their walk has already taught the
    /// base if it could.
    walked: HashMap<u32, u64>,
    epochs: u64,
}

impl StackBases {
    /// Learns from the walk of one event's stack: `copied` bytes were copied from `sp` up.
    pub(super) fn observe(&mut self, tid: u32, sp: u64, copied: usize, unwound: &Unwound) {
        let epochs = &mut self.epochs;
        self.walked.entry(tid).or_insert_with(|| {
            *epochs += 1;
            *epochs
        });
        let known = self.known.get(&tid).copied();
        if unwound.reached_root && unwound.stack_used > 0 {
            let base = sp + unwound.stack_used as u64;
            // Never lowered: a walk that read less than an earlier one proves nothing.
            if known.is_none_or(|known| base > known) {
                self.known.insert(tid, base);
                self.pending.push((tid, Some(base)));
            }
        } else if !unwound.complete
            && known.is_some_and(|known| sp.checked_add(copied as u64) == Some(known))
        {
            log::debug!(
                "thread {tid}: the stack copy stopped at its learned base and was too short; copying in full again"
            );
            self.forget(tid);
        }
    }

    /// The thread exited or its process exec'd: the kernel has dropped its base, and must not
    /// get it back from an event read late.
    pub(super) fn forget(&mut self, tid: u32) {
        self.walked.remove(&tid);
        if self.known.remove(&tid).is_some() {
            self.pending.push((tid, None));
        }
    }

    /// Like [`Self::observe`], for a walk deferred since the event: learns only if the thread
    /// is still in the stretch (`epoch`, from [`Self::walked`]) the event was in, so a thread
    /// that exited, exec'd or unlearned its base meanwhile (or a new thread with its tid) does
    /// not get a base from an old stack.
    pub(super) fn observe_deferred(
        &mut self,
        tid: u32,
        epoch: u64,
        sp: u64,
        copied: usize,
        unwound: &Unwound,
    ) {
        if self.walked.get(&tid) == Some(&epoch) {
            self.observe(tid, sp, copied, unwound);
        }
    }

    /// Whether the thread's stacks have been walked since its base was last forgotten, and
    /// the stretch's number.
    pub(super) fn walked(&self, tid: u32) -> Option<u64> {
        self.walked.get(&tid).copied()
    }

    /// Threads with a learned base.
    pub(super) fn len(&self) -> usize {
        self.known.len()
    }

    /// The changes to make to the kernel's map since the last call.
    pub(super) fn take_updates(&mut self) -> Vec<(u32, Option<u64>)> {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SP: u64 = 0x7ffd_0000_1000;

    fn walk(reached_root: bool, complete: bool, stack_used: usize) -> Unwound {
        Unwound {
            frames: vec![1, 2, 3],
            complete,
            reached_root,
            stack_used,
            rejected: None,
        }
    }

    /// A walk to the first frame teaches the base; a deeper event's walk (lower sp, same
    /// base) changes nothing; a walk that read further up raises it.
    #[test]
    fn learns_the_highest_address_read_by_a_complete_walk() {
        let mut bases = StackBases::default();
        bases.observe(7, SP, 8192, &walk(true, true, 600));
        assert_eq!(bases.take_updates(), vec![(7, Some(SP + 600))]);
        bases.observe(7, SP - 256, 856, &walk(true, true, 856));
        assert_eq!(bases.take_updates(), vec![]);
        bases.observe(7, SP, 8192, &walk(true, true, 640));
        assert_eq!(bases.take_updates(), vec![(7, Some(SP + 640))]);
        bases.observe(7, SP, 8192, &walk(true, true, 100));
        assert_eq!(bases.take_updates(), vec![]);
    }

    /// Walks that end at the frame limit, at non-code or for want of bytes teach nothing.
    #[test]
    fn incomplete_or_capped_walks_teach_nothing() {
        let mut bases = StackBases::default();
        bases.observe(7, SP, 8192, &walk(false, true, 8000));
        bases.observe(7, SP, 8192, &walk(false, false, 8192));
        assert_eq!(bases.take_updates(), vec![]);
    }

    /// A copy cut at the learned base that ran out unlearns it; one that ran out for another
    /// reason (a full copy of a deeper stack) does not.
    #[test]
    fn unlearns_a_base_that_cut_a_walk_short() {
        let mut bases = StackBases::default();
        bases.observe(7, SP, 8192, &walk(true, true, 600));
        bases.take_updates();
        bases.observe(7, SP - 8192, 8192, &walk(false, false, 8192));
        assert_eq!(bases.take_updates(), vec![]);
        bases.observe(7, SP - 100, 700, &walk(false, false, 700));
        assert_eq!(bases.take_updates(), vec![(7, None)]);
        // Learned again from the next full copy.
        bases.observe(7, SP, 8192, &walk(true, true, 600));
        assert_eq!(bases.take_updates(), vec![(7, Some(SP + 600))]);
    }

    /// Exit and exec drop a base once; a thread never learned needs no update.
    #[test]
    fn forgets_exited_threads() {
        let mut bases = StackBases::default();
        bases.observe(7, SP, 8192, &walk(true, true, 600));
        bases.take_updates();
        bases.forget(7);
        bases.forget(7);
        bases.forget(8);
        assert_eq!(bases.take_updates(), vec![(7, None)]);
    }
}
