//! Which words decide a walk. A function that keeps a request's address in %rbp saves it on
//! the stack, the walk restores it, and the next frame's CFI never looks at %rbp again: such
//! a word differs at every request, and comparing it would make every request's stack a new
//! one to the memo (`memo.rs`). So when a walk is remembered its words are tried one by one: a
//! word whose change leaves the walk the same (the same frames, the same addresses read, the
//! same end) does not decide it and is not compared; nor is %rbp at the event, when changing
//! it changes nothing.
//!
//! Why a changed word is enough to tell: the walk is a function of the words it reads, and a
//! word it uses either becomes a frame (a return address, always deciding), an address it
//! reads next, or the end of the walk; flipping every bit of it changes that address or that
//! end. Only complete walks are pruned so: a walk that stopped at a read it could not make
//! might make it with another value.

use std::sync::Arc;

use super::{
    StackStore,
    modules::ModuleMap,
    unwind::{CopiedStack, Unwound},
};

impl StackStore {
    /// The words of a walk of `stack` (which read `read` and found `unwound`) that decide
    /// it, and %rbp if it decides it: each is changed in turn and the walk made again, and
    /// one whose change leaves the walk the same (the same frames and end, the same
    /// addresses read, each the same word but the changed one) is left out. A return address
    /// always decides (it is a frame); an incomplete walk keeps every word and %rbp.
    pub(super) fn deciding(
        &mut self,
        modules: &Arc<ModuleMap>,
        stack: CopiedStack,
        read: &[(u64, u64)],
        unwound: &Unwound,
    ) -> (Vec<(u64, u64)>, Option<u64>) {
        if !unwound.complete {
            return (read.to_vec(), Some(stack.bp));
        }
        let mut reads = Vec::with_capacity(read.len());
        // The same walk, with the word at `changed` (or %rbp) flipped in every bit.
        let mut same_walk = |store: &mut Self, stack: CopiedStack, changed: Option<u64>| {
            reads.clear();
            let again = store.walk(modules, stack, &mut reads);
            again == *unwound
                && reads.len() == read.len()
                && reads.iter().zip(read).all(|(&(at, word), &(was_at, was))| {
                    at == was_at && (word == was || (Some(at) == changed && word == !was))
                })
        };
        let bp_decides = !same_walk(
            self,
            CopiedStack {
                bp: !stack.bp,
                ..stack
            },
            None,
        );
        let mut bytes = stack.bytes.to_vec();
        let mut undecided: Vec<u64> = Vec::new();
        for &(at, word) in read {
            if unwound.frames.contains(&word) || undecided.contains(&at) {
                continue;
            }
            let Some(index) = at
                .checked_sub(stack.sp)
                .and_then(|i| usize::try_from(i).ok())
                .filter(|&i| i.saturating_add(8) <= bytes.len())
            else {
                continue;
            };
            bytes[index..index + 8].copy_from_slice(&(!word).to_le_bytes());
            let changed = CopiedStack {
                bytes: &bytes,
                ..stack
            };
            if same_walk(self, changed, Some(at)) {
                undecided.push(at);
            }
            bytes[index..index + 8].copy_from_slice(&word.to_le_bytes());
        }
        let deciding = read
            .iter()
            .filter(|(at, _)| !undecided.contains(at))
            .copied()
            .collect();
        (deciding, bp_decides.then_some(stack.bp))
    }
}
