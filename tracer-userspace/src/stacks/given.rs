//! Remembered walks given to the kernel, so that a stack met again is not even copied. The
//! memo (`memo.rs`) saves the walk of a stack met again, but the kernel still copies it into
//! the ring (a few KiB for a server's request), and reading the words the walk decided on
//! from there costs a cache miss each: most of what such an event costs on both sides.
//!
//! So a walk remembered for a thread whose copy held its whole stack (the kernel made no
//! frame-pointer walk beside it) is also given to the kernel (`STACK_MEMOS`, see
//! tracer-ebpf/src/memo.rs): the process, the registers it starts from, the copy's length
//! and its deciding words. An event whose copy matches is sent with the walk's handle and
//! no copy, and is given here the stack the walk found, as the memo would give it: exact by
//! the same argument. One walk per (process, ip, sp) is given, at most
//! [`tracer_common::MAX_STACK_MEMOS`]; a process's are taken back at its exec and when it
//! is forgotten.
//!
//! A handle is never given out twice, and one taken back still names its stack for
//! [`RETIRE_AFTER_NS`] of event time: the kernel may have sent it in events still in the
//! ring. Between a process's exec and the moment its exec event is applied here, the kernel
//! may still hold the old image's walks: a stack of the new image matches one only with the
//! same `ip` and `sp` and the same return addresses at the same offsets, which
//! address space randomisation makes differ (and without it, the same program's stack is the
//! same stack).

use std::{collections::VecDeque, sync::Arc};

use foldhash::HashMap;
use tracer_common::{MAX_STACK_MEMOS, MEMO_WORDS, StackMemo, StackMemoKey};

use super::{PythonWalk, StackStore, unwind::Unwound};
use crate::events::{Header, StackTop};

/// How long (in event time) a handle taken back still names its stack: events are applied
/// within milliseconds of being sent, and a program that found the walk just before it was
/// taken back sends its event microseconds later.
const RETIRE_AFTER_NS: u64 = 1_000_000_000;

/// A walk given to the kernel.
#[derive(Debug)]
pub(super) struct Given {
    pub tgid: u32,
    /// Bytes copied from `sp` up, as when the walk was made (for `StackBases::observe`).
    pub copied: usize,
    pub sp: u64,
    /// The walk's outcome without its frames.
    pub outcome: Unwound,
    /// The stack the walk found, interned as `id` (re-interned if that id was dropped).
    pub native: Arc<[u64]>,
    pub id: u32,
}

/// What a walk to give holds: its key parts and deciding words.
pub(super) struct ToGive<'a> {
    pub tgid: u32,
    pub ip: u64,
    pub sp: u64,
    pub bp: Option<u64>,
    pub copied: usize,
    /// (address, word) pairs that decided the walk.
    pub deciding: &'a [(u64, u64)],
}

#[derive(Default)]
pub(super) struct GivenWalks {
    handles: HashMap<u32, Given>,
    /// Keys given per process (with their handle and copy length), to take back at its
    /// exec and when it is forgotten.
    by_process: HashMap<u32, Vec<(StackMemoKey, u32, usize)>>,
    /// The latest event time seen.
    latest_ns: u64,
    /// Handles taken back, with the event time they were taken back at.
    retired: VecDeque<(u64, u32)>,
    /// The last handle given out.
    last: u32,
    /// Kernel map changes not yet written: a walk to give, or a key to take back (None).
    updates: Vec<(StackMemoKey, Option<StackMemo>)>,
    /// Whether those take a walk back (or replace one): the kernel's per-CPU copies of the
    /// walks are to be made stale once they are written (tracer-ebpf/src/memo.rs).
    taken_back: bool,
    /// Stacks the kernel sent as a handle, and handles it sent that named nothing here.
    pub(super) hits: u64,
    pub(super) unknown: u64,
}

impl GivenWalks {
    /// Gives the kernel a walk that found the interned stack `id` (`native`), unless the
    /// process already has one from the same registers or the table is full. Returns the
    /// handle given.
    pub(super) fn give(
        &mut self,
        walk: ToGive,
        outcome: &Unwound,
        native: &Arc<[u64]>,
        id: u32,
    ) -> Option<u32> {
        if walk.deciding.len() > MEMO_WORDS
            || walk.copied == 0
            || self.handles.len() - self.retired.len() >= MAX_STACK_MEMOS as usize
        {
            return None;
        }
        let key = StackMemoKey {
            tgid: walk.tgid,
            _pad: 0,
            ip: walk.ip,
            sp: walk.sp,
        };
        // Built first: a walk the kernel cannot take leaves what was given as it was.
        let mut memo = StackMemo {
            copied: u32::try_from(walk.copied).ok()?,
            handle: self.last.checked_add(1)?,
            words: walk.deciding.len() as u32,
            bp_decides: u32::from(walk.bp.is_some()),
            bp: walk.bp.unwrap_or(0),
            offsets: [0; MEMO_WORDS],
            values: [0; MEMO_WORDS],
        };
        for (i, &(address, word)) in walk.deciding.iter().enumerate() {
            let offset = address.checked_sub(walk.sp)?;
            // The kernel reads each word as one aligned load within the copy, masking the
            // offset rather than checking it (tracer-ebpf/src/memo.rs).
            if offset % 8 != 0 || offset + 8 > walk.copied as u64 {
                return None;
            }
            memo.offsets[i] = u32::try_from(offset).ok()?;
            memo.values[i] = word;
        }
        // One walk per key. A walk arrives for a key already given only when the stack did
        // not hold the given walk's words (another path to the same call at the same depth):
        // it takes the key if its copy has another length (as when the thread's stack base
        // was learned since, so the kernel copies less), else the first walk keeps it.
        let keys = self.by_process.entry(walk.tgid).or_default();
        let replaced = match keys.iter().position(|given| given.0 == key) {
            Some(at) if keys[at].2 == walk.copied => return None,
            Some(at) => Some(keys.swap_remove(at).1),
            None => None,
        };
        self.last = memo.handle;
        keys.push((key, memo.handle, walk.copied));
        if let Some(old) = replaced {
            self.retire(old, self.latest_ns);
            self.taken_back = true;
        }
        self.updates.push((key, Some(memo)));
        self.handles.insert(
            memo.handle,
            Given {
                tgid: walk.tgid,
                copied: walk.copied,
                sp: walk.sp,
                outcome: outcome.without_frames(),
                native: native.clone(),
                id,
            },
        );
        Some(memo.handle)
    }

    /// The walk the kernel matched a stack of `tgid` against, sent at `now_ns`; handles
    /// taken back long enough before it are forgotten first.
    pub(super) fn hit(&mut self, handle: u32, tgid: u32, now_ns: u64) -> Option<&Given> {
        self.purge(now_ns);
        match self.handles.get(&handle).filter(|given| given.tgid == tgid) {
            Some(given) => {
                self.hits += 1;
                Some(given)
            }
            None => {
                self.unknown += 1;
                None
            }
        }
    }

    /// Event time has reached `now_ns` (a walk replaced now is retired from then).
    #[inline]
    pub(super) fn saw(&mut self, now_ns: u64) {
        self.latest_ns = self.latest_ns.max(now_ns);
    }

    /// Forgets the handles taken back long enough before `now_ns`.
    fn purge(&mut self, now_ns: u64) {
        self.latest_ns = self.latest_ns.max(now_ns);
        while let Some(&(retired_ns, old)) = self.retired.front()
            && now_ns.saturating_sub(retired_ns) > RETIRE_AFTER_NS
        {
            self.handles.remove(&old);
            self.retired.pop_front();
        }
    }

    /// Takes back the walks given for `tgid` (it exec'd, or is gone), at event time `now_ns`.
    pub(super) fn take_back(&mut self, tgid: u32, now_ns: u64) {
        self.purge(now_ns);
        let Some(keys) = self.by_process.remove(&tgid) else {
            return;
        };
        for (key, handle, _) in keys {
            self.updates.push((key, None));
            self.retire(handle, now_ns);
            self.taken_back = true;
        }
    }

    /// A handle taken back at `now_ns`: it still names its stack for [`RETIRE_AFTER_NS`].
    fn retire(&mut self, handle: u32, now_ns: u64) {
        self.retired.push_back((now_ns, handle));
    }

    /// Kernel map changes since the last call.
    pub(super) fn take_updates(&mut self) -> Vec<(StackMemoKey, Option<StackMemo>)> {
        std::mem::take(&mut self.updates)
    }

    /// Whether the map changes taken since the last call took a walk back or replaced one.
    pub(super) fn take_taken_back(&mut self) -> bool {
        std::mem::take(&mut self.taken_back)
    }

    /// Walks given and not yet forgotten, for the debug log.
    pub(super) fn len(&self) -> usize {
        self.handles.len()
    }
}

impl StackStore {
    /// The stack of an event the kernel sent as the handle of a walk given to it (`top.memo`)
    /// instead of its copy: what unwinding the copy would have given, as for a memo hit (the
    /// thread's stack base observed, the process looked at for an interpreter), with the
    /// thread's Python walk merged in if one came. None if the handle names nothing here
    /// (never expected: counted for the debug log).
    pub(super) fn given_stack(
        &mut self,
        header: &Header,
        top: &StackTop,
        python: Option<&PythonWalk>,
    ) -> Option<u32> {
        let given = self.given.hit(top.memo, header.tgid, header.timestamp_ns)?;
        self.bases
            .observe(header.tid, given.sp, given.copied, &given.outcome);
        if let Some(modules) = self.modules.get(&(header.tgid, header.generation)) {
            self.python.observe(header.tgid, modules);
        }
        let id = given.id;
        if python.is_none()
            && self
                .stacks
                .get(id as usize)
                .is_some_and(|interned| Arc::ptr_eq(interned, &given.native))
        {
            // The common case: the walk's stack is still interned under its id.
            return Some(id);
        }
        // A Python walk to merge in, or the id was dropped since (re-interned).
        let native = given.native.clone();
        match python {
            Some((pending, interp)) => {
                let merged: Arc<[u64]> = super::python::merge(&native, pending, interp).into();
                self.intern(&merged)
            }
            None => self.intern(&native),
        }
    }
}

#[cfg(test)]
mod tests;
