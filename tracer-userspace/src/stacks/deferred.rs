//! Deferred stacks. A descriptor closed again within moments is the common case on a busy
//! server, and it can never be a leak: unwinding and interning its birth's stack would be
//! most of the tracer's work for nothing. So the stack of a descriptor birth is kept raw (the
//! registers and the stack bytes the kernel copied) in a bounded queue for [`WINDOW_NS`], and
//! the tables get a pending stack id in its place ([`crate::model::PENDING_STACK`]). When the
//! window has passed the session (`session/deferral.rs`) asks the tables whether the
//! descriptor is still open: if it is, the stack is unwound and interned then, by the same
//! [`StackStore::repair`] eager stacks go through, and its id replaces the pending one; if
//! not, the copy is dropped without being unwound. The session also resolves pending stacks
//! before anything copies, folds or explains a table (fork, exit, exec, a failed close, a
//! report), so no pending id ever leaves the table it was born in.
//!
//! What a deferred stack is unwound against is what it would have been unwound against at
//! once: the process's module map of the event's exec generation, which stays until the
//! process is reaped and forgotten (its table is settled at its exit, before that); and the
//! stack is deferred only when the known mappings already hold its innermost address (and
//! the kernel's frame-pointer walk, if it made one), so unwinding it later never needs to
//! read the mappings of a process that may be gone by then.
//!
//! Only births of threads whose stack has been walked before are deferred: the first walk of
//! a thread teaches the kernel where its stack ends (`bases.rs`), which cuts every later copy
//! to what the stack holds. When the queue reaches [`BUDGET_BYTES`] its oldest stacks are
//! settled early (unwound if still open, else dropped), and a birth that finds it full is
//! unwound at once: memory stays bounded, and no stack of an open descriptor is lost.

use std::{collections::VecDeque, mem::size_of};

use super::{KernelStacks, PythonWalk, StackStore};
use crate::{
    events::{Event, EventBody, OwnedStackTop, StackTop},
    model::{PENDING_STACK, StackRef},
};

/// How long a birth's stack waits before it is unwound, if its descriptor is still open.
/// Descriptors that live only as long as a request (a file read for a response, a
/// connection-per-request socket, a pipe to a helper) are closed well within it on a server
/// that answers in milliseconds; one still open after 100 ms is more likely held by a
/// connection or for the process's life, and is unwound then. Only the cost depends on it:
/// a stack is the same whenever it is unwound, and every report settles what still waits.
pub(crate) const WINDOW_NS: u64 = 100_000_000;

/// The most memory the waiting stacks may take (stack bytes and queue slots). Past it the
/// window shortens: 2 MiB holds about 40 ms of nginx's births here (15 000 requests/s, a
/// 3.5 KiB stack copy each) and about 8 ms of the bench loop's (250 000 births/s of 750
/// bytes). Small enough to stay in a core's L2 cache here, since it is written on every
/// birth (8 MiB measured no faster).
pub(crate) const BUDGET_BYTES: usize = 2 << 20;

/// Over this much the oldest waiting stacks are settled early: a margin under the budget, so
/// that births keep finding room (a birth that finds none is unwound at once).
const SETTLE_ABOVE_BYTES: usize = BUDGET_BYTES - BUDGET_BYTES / 8;

/// Spare stack buffers kept for reuse, so that a deferred birth costs no allocation.
const SPARE_BUFFERS: usize = 64;

/// A descriptor birth's stack, kept raw until its descriptor outlives the window.
#[derive(Debug)]
pub(crate) struct DeferredStack {
    seq: u64,
    /// The pending stack, as the event and the tables name it.
    pub(crate) stack: StackRef,
    /// The descriptor born with it, in the table of `stack.pid`.
    pub(crate) fd: i32,
    tid: u32,
    born_ns: u64,
    /// The kernel's frame-pointer walk, when it made one.
    kernel_id: Option<u32>,
    /// The thread's stretch of walks (`StackBases::walked`) at the event.
    epoch: u64,
    top: OwnedStackTop,
    /// The thread's Python walk that came with the event (its frames named already), merged
    /// in when the stack is unwound, as it would have been at once.
    python: Option<Box<PythonWalk>>,
}

impl DeferredStack {
    /// What it holds that counts against the budget: the stack bytes and the Python frames.
    fn held_bytes(&self) -> usize {
        self.top.bytes.capacity() + python_bytes(self.python.as_deref())
    }
}

/// The memory a Python walk holds (its frames; the interpreter is shared with its process).
fn python_bytes(walk: Option<&PythonWalk>) -> usize {
    walk.map_or(0, |(pending, _)| {
        size_of::<PythonWalk>() + pending.frames.capacity() * size_of::<(u64, bool)>()
    })
}

struct Slot {
    seq: u64,
    /// None once taken out of turn (resolved for a fork, an exit, a failed close).
    deferred: Option<DeferredStack>,
}

const SLOT_BYTES: usize = size_of::<Slot>();

/// The waiting stacks, oldest first.
#[derive(Default)]
pub(super) struct Pending {
    queue: VecDeque<Slot>,
    next_seq: u64,
    /// Stack buffers and Python frames of every deferred stack not yet recycled (queued, or
    /// prepared and not yet queued), and the queue's slots.
    bytes: usize,
    spare: Vec<Vec<u8>>,
    /// Stacks deferred, and dropped without being unwound, for the debug log.
    pub(super) deferred: u64,
    pub(super) dropped: u64,
}

/// The pending id of sequence number `seq`: its low 31 bits, with [`PENDING_STACK`] set.
fn pending_id(seq: u64) -> u32 {
    PENDING_STACK | (seq as u32 & !PENDING_STACK)
}

impl Pending {
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    /// The memory the waiting stacks take, for the debug log.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    fn recycle(&mut self, deferred: DeferredStack) {
        self.bytes = self.bytes.saturating_sub(deferred.held_bytes());
        let buffer = deferred.top.bytes;
        if self.spare.len() < SPARE_BUFFERS {
            self.spare.push(buffer);
        }
    }

    /// Removes the front slot.
    fn pop_front(&mut self) -> Option<Option<DeferredStack>> {
        let slot = self.queue.pop_front()?;
        self.bytes = self.bytes.saturating_sub(SLOT_BYTES);
        Some(slot.deferred)
    }
}

impl StackStore {
    /// Whether the event's stack is deferred, and if so its raw copy, named by a pending id
    /// (see the module), which keeps the event's Python walk (`python`); if not, the walk is
    /// given back for the stack's repair now. Call while the stack bytes are still in the
    /// ring buffer.
    pub(super) fn defer(
        &mut self,
        event: &Event,
        top: &StackTop,
        kernel: &impl KernelStacks,
        python: Option<PythonWalk>,
    ) -> Result<DeferredStack, Option<PythonWalk>> {
        let fd = match &event.body {
            EventBody::FileOpened(opened) => opened.fd,
            EventBody::FdCreated(created) => created.fd,
            _ => return Err(python),
        };
        let header = &event.header;
        if self.defer_window_ns == 0 || top.ip == 0 {
            return Err(python);
        }
        let Some(epoch) = self.bases.walked(header.tid) else {
            return Err(python);
        };
        let held = top.bytes.len() + python_bytes(python.as_ref());
        if self.pending.bytes + held + SLOT_BYTES > BUDGET_BYTES {
            return Err(python);
        }
        let kernel_ips = match header.stack_id {
            Some(id) => match self.kernel_stack(id, kernel) {
                Some(ips) => Some(ips),
                None => return Err(python),
            },
            None => None,
        };
        let (pid, generation) = (header.tgid, header.generation);
        let Some(modules) = self.modules.get(&(pid, generation)) else {
            return Err(python);
        };
        if modules.has_anonymous_code() {
            // A process with JIT code: its frames are named from its perf map, and walks
            // through it read the mappings again, while the process lives. Unwound at once.
            return Err(python);
        }
        let kernel_ips = kernel_ips.as_deref().unwrap_or_default();
        let covered = |ip: &u64| modules.find(*ip).is_some();
        if !covered(&top.ip) {
            return Err(python);
        }
        if !kernel_ips.iter().all(covered) {
            // Read the mappings again now, as the eager path would, while the process
            // lives (at most once per kernel stack: a frame-pointer walk often ends in
            // garbage, which no re-read maps).
            let probe: Vec<u64> = std::iter::once(top.ip)
                .chain(kernel_ips.iter().copied())
                .collect();
            self.modules_covering(pid, generation, header.stack_id, &probe);
        }
        // Look for an interpreter as the eager repair does at every stack (a process whose
        // CPython was not ready at its last look is looked at again).
        if let Some(modules) = self.modules.get(&(pid, generation)) {
            self.python.observe(pid, modules);
        }
        let pending = &mut self.pending;
        let seq = pending.next_seq;
        pending.next_seq += 1;
        pending.deferred += 1;
        let top = top.copy_into(pending.spare.pop().unwrap_or_default());
        let deferred = DeferredStack {
            seq,
            stack: StackRef {
                id: pending_id(seq),
                pid: header.tgid,
                generation: header.generation,
            },
            fd,
            tid: header.tid,
            born_ns: header.timestamp_ns,
            kernel_id: header.stack_id,
            epoch,
            top,
            // Boxed: most births have none, and the stack moves through the pipeline.
            python: python.map(Box::new),
        };
        pending.bytes += deferred.held_bytes();
        Ok(deferred)
    }

    /// Queues a deferred stack once its event is in the tables (so that whether its
    /// descriptor is still open can be asked): in the order they were deferred.
    pub(crate) fn queue_deferred(&mut self, deferred: DeferredStack) {
        self.pending.bytes += SLOT_BYTES;
        self.pending.queue.push_back(Slot {
            seq: deferred.seq,
            deferred: Some(deferred),
        });
    }

    /// The oldest queued stack, if its window has passed at `now_ns` (CLOCK_MONOTONIC) or
    /// the queue is nearly full: the caller resolves it if its descriptor is still open,
    /// and drops it otherwise.
    pub(crate) fn next_due(&mut self, now_ns: u64) -> Option<DeferredStack> {
        loop {
            let front = self.pending.queue.front()?;
            let due = match &front.deferred {
                None => true,
                Some(d) => {
                    d.born_ns.saturating_add(self.defer_window_ns) <= now_ns
                        || self.pending.bytes > SETTLE_ABOVE_BYTES
                }
            };
            if !due {
                return None;
            }
            if let Some(deferred) = self.pending.pop_front().flatten() {
                return Some(deferred);
            }
        }
    }

    /// A deferred stack whose descriptor was closed: dropped without being unwound.
    pub(crate) fn drop_deferred(&mut self, deferred: DeferredStack) {
        self.pending.dropped += 1;
        self.pending.recycle(deferred);
    }

    /// Unwinds and interns a deferred stack now: the same repair as an eager one, against
    /// the module map of the event's process and exec generation.
    pub(crate) fn resolve_deferred(
        &mut self,
        deferred: DeferredStack,
        kernel: &impl KernelStacks,
    ) -> Option<StackRef> {
        let StackRef {
            pid, generation, ..
        } = deferred.stack;
        let id = self.repair(
            deferred.kernel_id,
            (pid, deferred.tid, generation),
            Some(&deferred.top.as_top()),
            kernel,
            deferred.python.as_deref(),
            Some(deferred.epoch),
        );
        self.pending.recycle(deferred);
        id.map(|id| StackRef {
            id,
            pid,
            generation,
        })
    }

    /// The stack a pending id stands for, unwound now (out of turn: a fork, an exit or a
    /// failed close needs it); None when its copy was dropped already (its descriptor was
    /// closed and the window passed) or it unwinds to nothing.
    pub(crate) fn resolve_pending(
        &mut self,
        stack: StackRef,
        kernel: &impl KernelStacks,
    ) -> Option<StackRef> {
        let deferred = self.take_pending(stack)?;
        self.resolve_deferred(deferred, kernel)
    }

    /// Takes the queued copy a pending id names out of the queue.
    fn take_pending(&mut self, stack: StackRef) -> Option<DeferredStack> {
        let queue = &mut self.pending.queue;
        let first = queue.front()?.seq;
        // Sequence numbers grow by one; the id holds the low 31 bits of one.
        let ahead = (stack.id & !PENDING_STACK).wrapping_sub(first as u32) & !PENDING_STACK;
        let seq = first + u64::from(ahead);
        let at = queue.binary_search_by_key(&seq, |slot| slot.seq).ok()?;
        let slot = &mut queue[at];
        if slot.deferred.as_ref().is_some_and(|d| d.stack == stack) {
            slot.deferred.take()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests;
