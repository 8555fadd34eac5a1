//! Walks remembered, so that a stack met again costs a few word comparisons instead of a copy
//! of its bytes, a walk and an interning. A server's requests and a program's loop open their
//! descriptors from the same call site at the same depth, over and over: the registers at the
//! event are the same every time, and so are the return addresses the walk reads on its way
//! up.
//!
//! The walk through a copied stack (`unwind.rs`) is a function of the module map it walks
//! through (which never changes: a re-read makes a new one), the registers at the event
//! (`ip`, `sp`, `bp`), the kernel's frame-pointer walk it is spliced with (an id's entry never
//! changes), how many bytes were copied (a read past them fails), and the words it read. A
//! walk whose key ([`Key`]: the map, `ip`, `sp`, the copy's length and the kernel's walk) was
//! seen before, and whose stack holds the same words at every address that decided that walk
//! (and the same `bp`, if it decided it), takes the same steps and ends in the same stack: its
//! interned id is reused, exactly, with no approximation. A word that differs (another caller
//! at the same depth) is a miss, and the stack is unwound (or deferred) as if there were no
//! memo.
//!
//! Not every word a walk reads decides it (`deciding.rs`): only the words that do are
//! remembered and compared, and %rbp only when it decides.
//!
//! What is remembered is bounded: [`MAX_KEYS`] keys, each with at most [`MAX_VARIANTS`] walks
//! (the same site reached by a few paths). A key is learned (its stack unwound at once rather
//! than deferred) only the second time it is seen, and at most [`MAX_LEARNS`] times, so a site
//! whose deciding words differ at every event costs at most that many early walks, then is
//! deferred as before. The table is emptied when it is full, and forgets the ids of interned
//! stacks that are dropped (`sweep.rs`).

use std::sync::{Arc, Weak};

use foldhash::HashMap;

use super::{
    StackStore,
    given::ToGive,
    modules::ModuleMap,
    unwind::{CopiedStack, Unwound},
};
use crate::events::{Header, StackTop};

/// Keys remembered before the table is emptied.
pub(super) const MAX_KEYS: usize = 1024;
/// Walks remembered per key.
pub(super) const MAX_VARIANTS: usize = 4;
/// Stacks of one key unwound early to learn a walk.
pub(super) const MAX_LEARNS: u8 = 8;

/// Everything a walk depends on besides the words it reads and %rbp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Key {
    /// The module map's address (held alive by the entry's `Weak`, so it is not reused).
    pub modules: usize,
    pub ip: u64,
    pub sp: u64,
    /// Bytes copied from `sp` up.
    pub copied: usize,
    /// The kernel's frame-pointer walk.
    pub kernel_id: Option<u32>,
}

impl Key {
    /// The key of a stack copied at an event (`top`) whose kernel walk is `kernel_id`,
    /// walked through `modules`.
    fn new<M>(modules: &Arc<M>, top: &StackTop, kernel_id: Option<u32>) -> Self {
        Self {
            modules: Arc::as_ptr(modules) as usize,
            ip: top.ip,
            sp: top.sp,
            copied: top.bytes.len(),
            kernel_id,
        }
    }
}

/// A remembered walk: the words that decided it (address, value), in order, and its outcome.
#[derive(Debug)]
pub(super) struct Walk {
    reads: Box<[(u64, u64)]>,
    /// %rbp at the event, when it decided the walk.
    bp: Option<u64>,
    /// The walk's outcome without its frames (what `StackBases::observe` looks at).
    pub outcome: Unwound,
    /// The interned stack, None when it repaired to nothing.
    pub id: Option<u32>,
}

impl Walk {
    /// Whether a stack with %rbp `bp` and `bytes` copied from `sp` up holds the same word at
    /// every address that decided this walk (and the same %rbp, if it did).
    fn matches(&self, bp: u64, sp: u64, bytes: &[u8]) -> bool {
        self.bp.is_none_or(|own| own == bp)
            && self.reads.iter().all(|&(address, value)| {
                let Some(at) = address
                    .checked_sub(sp)
                    .and_then(|at| usize::try_from(at).ok())
                else {
                    return false;
                };
                bytes
                    .get(at..at.saturating_add(8))
                    .and_then(|word| word.try_into().ok())
                    .is_some_and(|word| u64::from_le_bytes(word) == value)
            })
    }
}

struct Entry<M> {
    /// The module map the walks went through: a map dropped since cannot be confused with a
    /// new one at its address.
    modules: Weak<M>,
    walks: Vec<Walk>,
    learns: u8,
}

/// What [`Memo::look`] found.
#[derive(Debug)]
pub(super) enum Lookup<'m> {
    /// The same walk as one remembered.
    Hit(&'m Walk),
    /// None remembered matches; unwinding it now would teach the walk.
    Learn,
    /// None remembered matches: unwind it as without the memo.
    Miss,
}

/// Remembered walks by key; `M` is the module map type (a stand-in in tests).
pub(super) struct Memo<M> {
    entries: HashMap<Key, Entry<M>>,
    /// Nothing is remembered (tests of what happens without it).
    off: bool,
    /// Stacks that were found here, for the debug log.
    pub(super) hits: u64,
}

impl<M> Default for Memo<M> {
    fn default() -> Self {
        Self {
            entries: HashMap::default(),
            off: false,
            hits: 0,
        }
    }
}

impl<M> Memo<M> {
    /// The remembered walk for a stack of `key` with %rbp `bp` through `modules` whose
    /// copied bytes are `bytes`, or whether to learn it.
    pub(super) fn look(
        &mut self,
        key: &Key,
        bp: u64,
        modules: &Arc<M>,
        bytes: &[u8],
    ) -> Lookup<'_> {
        if self.off || bytes.len() != key.copied {
            return Lookup::Miss;
        }
        if !self.entries.contains_key(key) {
            if self.entries.len() >= MAX_KEYS {
                self.entries.clear();
            }
            // Seen once: a site met only once is not worth an early walk.
            self.entries.insert(
                *key,
                Entry {
                    modules: Arc::downgrade(modules),
                    walks: Vec::new(),
                    learns: 0,
                },
            );
            return Lookup::Miss;
        }
        let Some(entry) = self.entries.get_mut(key) else {
            return Lookup::Miss;
        };
        if !std::ptr::eq(entry.modules.as_ptr(), Arc::as_ptr(modules)) {
            // Cannot happen while the entry holds the old map's allocation; kept exact anyway.
            return Lookup::Miss;
        }
        match entry
            .walks
            .iter()
            .position(|w| w.matches(bp, key.sp, bytes))
        {
            Some(at) => {
                self.hits += 1;
                Lookup::Hit(&entry.walks[at])
            }
            None if entry.walks.len() < MAX_VARIANTS && entry.learns < MAX_LEARNS => {
                entry.learns += 1;
                Lookup::Learn
            }
            None => Lookup::Miss,
        }
    }

    /// Whether a walk of `key` through `modules` with %rbp `bp` and `bytes` would be
    /// remembered: its key has room for another walk, and no walk remembered is the same.
    pub(super) fn wants(&self, key: &Key, bp: u64, modules: &Arc<M>, bytes: &[u8]) -> bool {
        if self.off {
            return false;
        }
        self.entries.get(key).is_none_or(|entry| {
            std::ptr::eq(entry.modules.as_ptr(), Arc::as_ptr(modules))
                && entry.walks.len() < MAX_VARIANTS
                && !entry.walks.iter().any(|w| w.matches(bp, key.sp, bytes))
        })
    }

    /// Remembers a walk of `key` through `modules`: the words that decided it (`read`), %rbp
    /// if it decided it, and what it found.
    pub(super) fn record(
        &mut self,
        key: Key,
        modules: &Arc<M>,
        (read, bp): (&[(u64, u64)], Option<u64>),
        unwound: &Unwound,
        id: Option<u32>,
    ) {
        if self.off {
            return;
        }
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_KEYS {
            self.entries.clear();
        }
        let entry = self.entries.entry(key).or_insert_with(|| Entry {
            modules: Arc::downgrade(modules),
            walks: Vec::new(),
            learns: 0,
        });
        if !std::ptr::eq(entry.modules.as_ptr(), Arc::as_ptr(modules))
            || entry.walks.len() >= MAX_VARIANTS
            || entry.walks.iter().any(|w| *w.reads == *read && w.bp == bp)
        {
            return;
        }
        entry.walks.push(Walk {
            reads: read.into(),
            bp,
            outcome: unwound.without_frames(),
            id,
        });
    }

    /// Forgets the walks whose interned stack was dropped (`keep` says no).
    pub(super) fn retain_ids(&mut self, keep: impl Fn(u32) -> bool) {
        for entry in self.entries.values_mut() {
            entry.walks.retain(|w| w.id.is_none_or(&keep));
        }
    }

    /// Keys and walks remembered, for the debug log.
    pub(super) fn sizes(&self) -> (usize, usize) {
        let walks = self.entries.values().map(|e| e.walks.len()).sum();
        (self.entries.len(), walks)
    }
}

/// What [`StackStore::remembered`] found for an event's stack.
pub(super) enum Remembered {
    /// The interned stack (None: it repaired to nothing), as unwinding it now would give.
    Hit(Option<u32>),
    /// Unwind it now (not deferred), to learn its walk.
    Learn,
    Miss,
}

impl StackStore {
    /// The stack of an event with a copied stack and no Python walk, if a remembered walk is
    /// the same (see the module). A hit does what unwinding it now would do besides: the
    /// thread's walk teaches its stack base, and the process is looked at for an interpreter.
    pub(super) fn remembered(&mut self, header: &Header, top: &StackTop) -> Remembered {
        if top.ip == 0 {
            return Remembered::Miss;
        }
        let Some(modules) = self.modules.get(&(header.tgid, header.generation)) else {
            return Remembered::Miss;
        };
        let key = Key::new(modules, top, header.stack_id);
        match self.memo.look(&key, top.bp, modules, top.bytes) {
            Lookup::Hit(walk) => {
                self.bases
                    .observe(header.tid, top.sp, top.bytes.len(), &walk.outcome);
                let id = walk.id;
                self.python.observe(header.tgid, modules);
                Remembered::Hit(id)
            }
            Lookup::Learn => Remembered::Learn,
            Lookup::Miss => Remembered::Miss,
        }
    }

    /// Remembers the walk just made (its words are in `self.reads`) of a stack of
    /// (`kernel_id`, `top`) through `modules`, which ended in interned stack `id`: only a walk that
    /// read no perf map (no JIT code) and needed no re-read of the mappings (every address of
    /// `probe`, the innermost and the kernel's walk, is in them) can be reused.
    ///
    /// A walk of a whole stack (no kernel walk beside the copy) that found a stack is also
    /// given to the kernel (`given.rs`).
    pub(super) fn remember(
        &mut self,
        (pid, kernel_id, top): (u32, Option<u32>, &StackTop),
        modules: &Arc<ModuleMap>,
        probe: &[u64],
        unwound: &Unwound,
        id: Option<u32>,
    ) {
        if modules.has_anonymous_code() || !probe.iter().all(|&ip| modules.is_code(ip)) {
            return;
        }
        let key = Key::new(modules, top, kernel_id);
        if !self.memo.wants(&key, top.bp, modules, top.bytes) {
            return;
        }
        let stack = CopiedStack {
            ip: top.ip,
            sp: top.sp,
            bp: top.bp,
            bytes: top.bytes,
        };
        let read = std::mem::take(&mut self.reads);
        let (deciding, bp) = self.deciding(modules, stack, &read, unwound);
        self.memo.record(key, modules, (&deciding, bp), unwound, id);
        self.reads = read;
        if let Some(id) = id
            && kernel_id.is_none()
            && unwound.complete
            // The interned allocation, which `given_stack` checks the id still names.
            && let Some(native) = self.stacks.get(id as usize).cloned()
        {
            let walk = ToGive {
                tgid: pid,
                ip: top.ip,
                sp: top.sp,
                bp,
                copied: top.bytes.len(),
                deciding: &deciding,
            };
            let words = (deciding.len(), self.reads.len());
            if let Some(handle) = self.given.give(walk, unwound, &native, id) {
                log::debug!(
                    "pid {pid}: walk {handle} given to the kernel ({} of the {} words it read decide it, of {} bytes)",
                    words.0,
                    words.1,
                    top.bytes.len()
                );
            }
        }
    }

    /// A store that remembers no walk: every stack is unwound or deferred.
    #[cfg(test)]
    pub(crate) fn without_memo(mut self) -> Self {
        self.memo.off = true;
        self
    }

    /// Keys, walks and hits, for the debug log.
    pub(super) fn memo_sizes(&self) -> String {
        let (keys, walks) = self.memo.sizes();
        format!(
            "walks remembered {walks} ({keys} keys, {} hits), given to the kernel {} ({} hits, {} unknown)",
            self.memo.hits,
            self.given.len(),
            self.given.hits,
            self.given.unknown
        )
    }
}

#[cfg(test)]
mod tests;
