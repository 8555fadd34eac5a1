//! Pending stacks in the tables: a descriptor born with a stack whose unwinding was deferred
//! (`stacks/deferred.rs`) holds a pending id until the session replaces it with the unwound
//! stack's id. These are the questions and changes the session needs for that, each O(1)
//! except the settling of a whole table, which comes before fork, exit and exec, which walk
//! the table anyway.

use super::{Aggregator, lives::LIVES_SHOWN};
use crate::model::StackRef;

impl Aggregator {
    /// Whether `pid`'s table still holds `fd` born with `stack`: its descriptor outlived the
    /// window (and was not closed, nor replaced by another with the same number).
    pub(crate) fn holds_stack(&self, pid: u32, fd: i32, stack: StackRef) -> bool {
        let owner = self.table_owner(pid);
        self.processes
            .get(&owner)
            .and_then(|p| p.fds.get(&fd))
            .is_some_and(|d| d.stack == Some(stack))
    }

    /// The descriptor `fd` of `pid`'s table born with pending stack `pending` gets its
    /// unwound stack (None: it unwound to nothing).
    pub(crate) fn replace_stack(
        &mut self,
        pid: u32,
        fd: i32,
        pending: StackRef,
        unwound: Option<StackRef>,
    ) {
        let owner = self.table_owner(pid);
        if let Some(d) = self
            .processes
            .get_mut(&owner)
            .and_then(|p| p.fds.get_mut(&fd))
            .filter(|d| d.stack == Some(pending))
        {
            d.stack = unwound;
        }
    }

    /// Replaces every pending stack in `pid`'s table with what `resolve` makes of it: before
    /// a fork copies the table, an exit folds it, an exec or unshare splits it.
    pub(crate) fn settle_table(
        &mut self,
        pid: u32,
        mut resolve: impl FnMut(StackRef) -> Option<StackRef>,
    ) {
        let owner = self.table_owner(pid);
        let Some(process) = self.processes.get_mut(&owner) else {
            return;
        };
        for d in process.fds.values_mut() {
            if let Some(stack) = d.stack.filter(StackRef::is_pending) {
                d.stack = resolve(stack);
            }
        }
    }

    /// Replaces the pending stacks of the previous lives of `fd` that a failed close of it
    /// would show (see `lives.rs`) with what `resolve` makes of them: None once their copy
    /// is gone.
    pub(crate) fn settle_lives(
        &mut self,
        pid: u32,
        fd: i32,
        mut resolve: impl FnMut(StackRef) -> Option<StackRef>,
    ) {
        let owner = self.table_owner(pid);
        let Some(process) = self.processes.get_mut(&owner) else {
            return;
        };
        for life in process.lives.of_mut(fd).take(LIVES_SHOWN) {
            let d = &mut life.descriptor;
            if let Some(stack) = d.stack.filter(StackRef::is_pending) {
                d.stack = resolve(stack);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        aggregator::tests::{PARENT, close, open},
        events::Event,
        model::PENDING_STACK,
    };

    const PENDING: u32 = PENDING_STACK | 7;

    fn pending(id: u32) -> StackRef {
        StackRef {
            id,
            pid: PARENT,
            generation: 0,
        }
    }

    fn open_pending(fd: i32, t: u64) -> Event {
        let mut event = open(PARENT, fd, "/dev/null", t);
        event.header.stack_id = Some(PENDING);
        event
    }

    /// A descriptor still open holds its pending stack until it is replaced; a closed one,
    /// or another descriptor with its number, does not.
    #[test]
    fn held_until_closed_or_replaced() {
        let mut agg = Aggregator::new();
        agg.apply(&mut open_pending(3, 1));
        assert!(agg.holds_stack(PARENT, 3, pending(PENDING)));
        assert!(!agg.holds_stack(PARENT, 3, pending(PENDING + 1)));
        agg.replace_stack(PARENT, 3, pending(PENDING), Some(pending(4)));
        assert!(!agg.holds_stack(PARENT, 3, pending(PENDING)));
        assert_eq!(agg.process(PARENT).unwrap().fds[&3].stack, Some(pending(4)));

        agg.apply(&mut open_pending(5, 2));
        agg.apply(&mut close(PARENT, PARENT, 5));
        assert!(!agg.holds_stack(PARENT, 5, pending(PENDING)));
        agg.apply(&mut open(PARENT, 5, "/etc/hosts", 3));
        assert!(!agg.holds_stack(PARENT, 5, pending(PENDING)));
        // Replacing a stack the descriptor no longer has changes nothing.
        agg.replace_stack(PARENT, 5, pending(PENDING), Some(pending(9)));
        assert_eq!(
            agg.process(PARENT).unwrap().fds[&5].stack,
            open(PARENT, 5, "", 3).header.stack()
        );
    }

    /// Settling a table replaces its pending stacks only; settling lives, those of the
    /// number's lives a failed close shows.
    #[test]
    fn settles_tables_and_lives() {
        let mut agg = Aggregator::new();
        agg.apply(&mut open_pending(3, 1));
        agg.apply(&mut open(PARENT, 4, "/etc/hosts", 2));
        let mut asked = Vec::new();
        agg.settle_table(PARENT, |s| {
            asked.push(s);
            Some(pending(11))
        });
        assert_eq!(asked, [pending(PENDING)]);
        let fds = &agg.process(PARENT).unwrap().fds;
        assert_eq!(fds[&3].stack, Some(pending(11)));
        assert_eq!(fds[&4].stack, open(PARENT, 4, "", 2).header.stack());

        for t in 0..4 {
            agg.apply(&mut open_pending(6, 10 + t));
            agg.apply(&mut close(PARENT, PARENT, 6));
        }
        let mut asked = 0;
        agg.settle_lives(PARENT, 6, |_| {
            asked += 1;
            None
        });
        assert_eq!(asked, LIVES_SHOWN);
        let lives: Vec<_> = agg.process(PARENT).unwrap().lives.of(6).collect();
        assert!(
            lives[..LIVES_SHOWN]
                .iter()
                .all(|l| l.descriptor.stack.is_none())
        );
        assert!(
            lives[LIVES_SHOWN..]
                .iter()
                .all(|l| l.descriptor.stack.is_some())
        );
    }
}
