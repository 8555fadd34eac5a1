//! Walks remembered, so that a stack met again costs a few word comparisons instead of a copy
//! of its bytes, a walk and an interning. A server's requests and a program's loop open their
//! descriptors from the same call site at the same depth, over and over: the registers at the
//! event are the same every time, and so are the return addresses (and saved frame pointers)
//! the walk reads on its way up.
//!
//! The walk through a copied stack (`unwind.rs`) is a function of the module map it walks
//! through (which never changes: a re-read makes a new one), the registers at the event
//! (`ip`, `sp`, `bp`), the kernel's frame-pointer walk it is spliced with (an id's entry never
//! changes), how many bytes were copied (a read past them fails), and the words it read. A
//! walk whose key ([`Key`]: everything but the words) was seen before, and whose stack holds
//! the same words at every address that walk read, reads the same words in the same order,
//! takes the same steps and ends in the same stack: its interned id is reused, exactly, with
//! no approximation. A word that differs (another caller at the same depth, another saved
//! frame pointer) is a miss, and the stack is unwound (or deferred) as if there were no memo.
//!
//! What is remembered is bounded: [`MAX_KEYS`] keys, each with at most [`MAX_VARIANTS`] walks
//! (the same site reached by a few paths). A key is learned (its stack unwound at once rather
//! than deferred) only the second time it is seen, and at most [`MAX_LEARNS`] times, so a site
//! whose words differ at every event (a saved register holding a request's address) costs at
//! most that many early walks, then is deferred as before. The table is emptied when it is
//! full, and forgets the ids of interned stacks that are dropped (`sweep.rs`).

use std::sync::{Arc, Weak};

use foldhash::HashMap;

use super::{StackStore, modules::ModuleMap, unwind::Unwound};
use crate::events::{Header, StackTop};

/// Keys remembered before the table is emptied.
pub(super) const MAX_KEYS: usize = 1024;
/// Walks remembered per key.
pub(super) const MAX_VARIANTS: usize = 4;
/// Stacks of one key unwound early to learn a walk.
pub(super) const MAX_LEARNS: u8 = 8;

/// Everything a walk depends on besides the words it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Key {
    /// The module map's address (held alive by the entry's `Weak`, so it is not reused).
    pub modules: usize,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Bytes copied from `sp` up.
    pub copied: usize,
    /// The kernel's frame-pointer walk.
    pub kernel_id: Option<u32>,
}

/// A remembered walk: the words it read (address, value), in order, and its outcome.
#[derive(Debug)]
pub(super) struct Walk {
    reads: Box<[(u64, u64)]>,
    /// The walk's outcome without its frames (what `StackBases::observe` looks at).
    pub outcome: Unwound,
    /// The interned stack, None when it repaired to nothing.
    pub id: Option<u32>,
}

impl Walk {
    /// Whether `bytes`, copied from `sp` up, hold the same word at every address read.
    fn matches(&self, sp: u64, bytes: &[u8]) -> bool {
        self.reads.iter().all(|&(address, value)| {
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
    /// The remembered walk for a stack of `key` through `modules` whose copied bytes are
    /// `bytes`, or whether to learn it.
    pub(super) fn look(&mut self, key: &Key, modules: &Arc<M>, bytes: &[u8]) -> Lookup<'_> {
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
        match entry.walks.iter().position(|w| w.matches(key.sp, bytes)) {
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

    /// Remembers a walk of `key` through `modules`: the words it `read` and what it found.
    pub(super) fn record(
        &mut self,
        key: Key,
        modules: &Arc<M>,
        read: &[(u64, u64)],
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
            || entry.walks.iter().any(|w| *w.reads == *read)
        {
            return;
        }
        entry.walks.push(Walk {
            reads: read.into(),
            outcome: Unwound {
                frames: Vec::new(),
                ..unwound.clone()
            },
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
        let key = Key {
            modules: Arc::as_ptr(modules) as usize,
            ip: top.ip,
            sp: top.sp,
            bp: top.bp,
            copied: top.bytes.len(),
            kernel_id: header.stack_id,
        };
        match self.memo.look(&key, modules, top.bytes) {
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
    /// (`kernel_id`, `top`) through `modules`, which ended in stack `id`: only a walk that
    /// read no perf map (no JIT code) and needed no re-read of the mappings (every address of
    /// `probe`, the innermost and the kernel's walk, is in them) can be reused.
    pub(super) fn remember(
        &mut self,
        (kernel_id, top): (Option<u32>, &StackTop),
        modules: &Arc<ModuleMap>,
        probe: &[u64],
        unwound: &Unwound,
        id: Option<u32>,
    ) {
        if modules.has_anonymous_code() || !probe.iter().all(|&ip| modules.is_code(ip)) {
            return;
        }
        let key = Key {
            modules: Arc::as_ptr(modules) as usize,
            ip: top.ip,
            sp: top.sp,
            bp: top.bp,
            copied: top.bytes.len(),
            kernel_id,
        };
        self.memo.record(key, modules, &self.reads, unwound, id);
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
            "walks remembered {walks} ({keys} keys, {} hits)",
            self.memo.hits
        )
    }
}

#[cfg(test)]
mod tests;
