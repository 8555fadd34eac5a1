//! Closes of descriptors that were not open. Each process keeps its last [`LIVES_KEPT`]
//! closed descriptors (a bounded ring of "previous lives" of descriptor numbers: what a number
//! held, who opened it and with which stack, who closed it and when). A close, dup2 or dup3
//! that fails with EBADF is looked up there, and kept, grouped by its own stack, with the
//! number's previous lives: valgrind's "originally opened at" and "previously closed at".
//!
//! A stale close (one that hit a number another thread had reused in between) succeeds, so
//! the kernel cannot tell it from a legitimate close. What can be seen honestly is its
//! victim: the owner's own close of that number fails later with EBADF, and the number's
//! previous life then shows a descriptor closed by another thread than the one that opened
//! it, within [`STALE_WINDOW_NS`] of its birth. Such closes are marked `suspected_stale`.

use std::collections::{BTreeMap, VecDeque};

use foldhash::HashMap;
use tracer_common::Syscall;

use super::{Aggregator, Descriptor};
use crate::{
    events::{CloseFailed, Header},
    model::StackRef,
};

/// Closed descriptors remembered per process (per descriptor table), all numbers together:
/// how far back a failed close can be explained. About 150 bytes each.
pub(crate) const LIVES_KEPT: usize = 256;
/// A descriptor closed by another thread than its opener this soon after its birth is the
/// mark of a stale close, when its owner's close of the number then fails.
pub(crate) const STALE_WINDOW_NS: u64 = 1_000_000_000;
/// Previous lives of the number kept with each failed close.
pub(crate) const LIVES_SHOWN: usize = 2;
/// Failed closes kept in full per closing stack (the first ones); the rest are counted.
pub(crate) const EXAMPLES_KEPT: usize = 5;

/// A descriptor that was closed: what it was, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Life {
    pub descriptor: Descriptor,
    /// The thread that closed it.
    pub closer_tid: u32,
    pub closed_at_ns: u64,
    /// close, close_range, or dup2/dup3 copying another descriptor onto its number.
    pub closed_by: Syscall,
}

impl Life {
    /// Closed by another thread than the one that created it, soon after its birth.
    pub(crate) fn closed_by_another_thread_soon(&self) -> bool {
        let d = &self.descriptor;
        d.created_here()
            && d.tid != 0
            && self.closer_tid != d.tid
            && self.closed_at_ns.saturating_sub(d.opened_at_ns) <= STALE_WINDOW_NS
    }
}

/// The last [`LIVES_KEPT`] closed descriptors of one table, oldest first.
#[derive(Clone, Debug, Default)]
pub(crate) struct Lives {
    ring: VecDeque<Life>,
}

impl Lives {
    /// Remembers a closed descriptor, forgetting the oldest when full: O(1).
    pub(crate) fn push(&mut self, life: Life) {
        if self.ring.len() == LIVES_KEPT {
            self.ring.pop_front();
        }
        self.ring.push_back(life);
    }

    /// Every remembered life, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Life> {
        self.ring.iter()
    }

    /// The remembered lives of number `fd`, newest first.
    pub(crate) fn of(&self, fd: i32) -> impl Iterator<Item = &Life> {
        self.ring
            .iter()
            .rev()
            .filter(move |l| l.descriptor.fd == fd)
    }

    /// Like [`Self::of`], to change them.
    pub(crate) fn of_mut(&mut self, fd: i32) -> impl Iterator<Item = &mut Life> {
        self.ring
            .iter_mut()
            .rev()
            .filter(move |l| l.descriptor.fd == fd)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ring.len()
    }
}

/// One close, dup2 or dup3 that failed with EBADF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BadClose {
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub syscall: Syscall,
    pub at_ns: u64,
    /// The number's remembered previous lives, newest first (at most [`LIVES_SHOWN`]).
    pub lives: Vec<Life>,
    /// Its last life was closed by another thread soon after its birth (see the module).
    pub suspected_stale: bool,
}

/// Failed closes from one stack of one process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct BadCloseGroup {
    pub count: u64,
    pub by_syscall: BTreeMap<&'static str, u64>,
    pub suspected_stale: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// The first [`EXAMPLES_KEPT`].
    pub examples: Vec<BadClose>,
}

/// Failed closes by closing stack: memory bounded by the distinct stacks.
pub(crate) type BadCloses = HashMap<(u32, Option<StackRef>), BadCloseGroup>;

impl Aggregator {
    /// A descriptor left `pid`'s table: remember it among the table's previous lives.
    pub(super) fn remember_closed(
        &mut self,
        pid: u32,
        descriptor: Descriptor,
        header: &Header,
        closed_by: Syscall,
    ) {
        self.table(pid).lives.push(Life {
            descriptor,
            closer_tid: header.tid,
            closed_at_ns: header.timestamp_ns,
            closed_by,
        });
    }

    /// A close, dup2 or dup3 failed with EBADF. A dup2/dup3 whose old descriptor is open
    /// failed because of its target (past the limit): not a close of something not open.
    pub(super) fn on_close_failed(&mut self, header: &Header, failed: &CloseFailed) {
        let table = self.table(header.tgid);
        if failed.syscall != Syscall::Close && table.fds.contains_key(&failed.fd) {
            return;
        }
        let lives: Vec<Life> = table
            .lives
            .of(failed.fd)
            .take(LIVES_SHOWN)
            .cloned()
            .collect();
        let suspected_stale = lives
            .first()
            .is_some_and(Life::closed_by_another_thread_soon);
        let group = self
            .bad_closes
            .entry((header.tgid, header.stack()))
            .or_default();
        if group.count == 0 {
            group.first_ns = header.timestamp_ns;
        }
        group.count += 1;
        group.last_ns = header.timestamp_ns;
        *group.by_syscall.entry(failed.syscall.name()).or_insert(0) += 1;
        group.suspected_stale += u64::from(suspected_stale);
        if group.examples.len() < EXAMPLES_KEPT {
            group.examples.push(BadClose {
                pid: header.tgid,
                tid: header.tid,
                fd: failed.fd,
                syscall: failed.syscall,
                at_ns: header.timestamp_ns,
                lives,
                suspected_stale,
            });
        }
    }

    /// Failed closes, by process and closing stack.
    pub(crate) fn bad_closes(&self) -> &BadCloses {
        &self.bad_closes
    }
}

#[cfg(test)]
mod tests;
