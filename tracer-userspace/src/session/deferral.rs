//! Deferred stacks settled against the tables (see `stacks/deferred.rs`): a birth's stack
//! whose window passed is unwound if the tables still hold its descriptor, and dropped
//! otherwise; before an event that copies, folds or splits a table (fork, exit, exec,
//! unshare, close_range), that table's pending stacks are unwound first, and before a failed
//! close, those of the lives it will show. So no pending id ever leaves its table, and the
//! tables hold final stacks whenever a report is built.
//!
//! Unwinding happens in one place, `StackStore::repair`, which both eager and deferred
//! stacks go through.

use tracer_common::CLONE_THREAD;

use crate::{
    aggregator::Aggregator,
    events::{Event, EventBody, TaskCreated, TaskExited},
    model::StackRef,
    stacks::{DeferredStack, KernelStacks, StackStore},
};

/// The tables and the stacks, and where kernel stacks come from.
pub(super) struct Settle<'a, K> {
    pub agg: &'a mut Aggregator,
    pub stacks: &'a mut StackStore,
    pub kernel: &'a K,
}

impl<K: KernelStacks> Settle<'_, K> {
    /// Before `event` is applied: unwinds the pending stacks it would copy or fold.
    pub(super) fn before(&mut self, event: &Event) {
        let header = &event.header;
        match &event.body {
            EventBody::TaskCreated(TaskCreated { clone_flags, .. })
                if clone_flags.is_none_or(|flags| flags & CLONE_THREAD == 0) =>
            {
                self.table(header.tgid);
            }
            EventBody::TaskExited(TaskExited { group_dead })
                if group_dead.unwrap_or(header.tid == header.tgid) =>
            {
                self.table(header.tgid);
            }
            EventBody::Exec | EventBody::FilesUnshared | EventBody::RangeClosed(_) => {
                self.table(header.tgid);
            }
            EventBody::CloseFailed(failed) => {
                let (stacks, kernel) = (&mut *self.stacks, self.kernel);
                self.agg.settle_lives(header.tgid, failed.fd, |pending| {
                    stacks.resolve_pending(pending, kernel)
                });
            }
            _ => {}
        }
    }

    /// After the event that `deferred` came with is applied: queues it, then settles every
    /// deferred stack whose window has passed at `now_ns`.
    pub(super) fn after(&mut self, deferred: Option<DeferredStack>, now_ns: u64) {
        if let Some(deferred) = deferred {
            self.stacks.queue_deferred(deferred);
        }
        self.due(now_ns);
    }

    /// Settles every deferred stack whose window has passed at `now_ns` (u64::MAX: all of
    /// them, before a report).
    pub(super) fn due(&mut self, now_ns: u64) {
        while let Some(deferred) = self.stacks.next_due(now_ns) {
            let (pid, fd, pending) = (deferred.stack.pid, deferred.fd, deferred.stack);
            if self.agg.holds_stack(pid, fd, pending) {
                let unwound = self.stacks.resolve_deferred(deferred, self.kernel);
                self.agg.replace_stack(pid, fd, pending, unwound);
            } else {
                self.stacks.drop_deferred(deferred);
            }
        }
    }

    /// Unwinds the pending stacks of `pid`'s table now.
    pub(super) fn table(&mut self, pid: u32) {
        let (stacks, kernel) = (&mut *self.stacks, self.kernel);
        self.agg.settle_table(pid, |pending: StackRef| {
            stacks.resolve_pending(pending, kernel)
        });
    }
}

#[cfg(test)]
mod tests;
