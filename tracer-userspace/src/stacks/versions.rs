//! The module maps of the processes, per (pid, exec generation), read from /proc when first
//! needed and again when a stack holds an address none of them covers (a library mapped
//! since, JIT code), and what is derived from each map (its unwinder), shared by the forked
//! children that share the map.

use std::sync::Arc;

use foldhash::HashSet;

use super::{ModuleMap, StackStore, unwind::ProcessUnwinder};

/// Reads of /proc/PID/maps per map version for walks that stopped at unmapped addresses.
const MAX_REREADS_AT: usize = 64;

/// One module map (a process image, as read at one time) and what was derived from it.
pub(super) struct Version {
    pub(super) map: Arc<ModuleMap>,
    /// Caches its rules by address, so the CFI is read once per call site, not per event.
    /// Made at the first walk.
    pub(super) unwinder: Option<ProcessUnwinder>,
    /// Kernel stack ids (u32::MAX: events without one) whose unmapped addresses already
    /// caused a re-read of /proc/PID/maps: JIT code stays unmapped, and must not cost a read
    /// per event, nor a read per forked child that runs the same code.
    pub(super) refreshed: HashSet<u32>,
    /// Return addresses in no known mapping, where a walk stopped, that already caused a
    /// re-read (JIT code mapped since the last read), so each costs one read.
    pub(super) refreshed_at: HashSet<u64>,
}

impl Version {
    pub(super) fn of(map: &Arc<ModuleMap>) -> Self {
        Self {
            map: map.clone(),
            unwinder: None,
            refreshed: HashSet::default(),
            refreshed_at: HashSet::default(),
        }
    }
}

impl StackStore {
    /// Drops what was derived from a module map no process uses any more.
    pub(super) fn release(&mut self, map: Arc<ModuleMap>) {
        let key = Arc::as_ptr(&map) as usize;
        drop(map);
        if self
            .versions
            .get(&key)
            .is_some_and(|v| Arc::strong_count(&v.map) == 1)
        {
            self.versions.remove(&key);
        }
    }

    /// The mappings of (pid, generation), read from /proc the first time they are needed.
    /// An empty map is cached for a process already gone, so it is not read again.
    pub(super) fn modules_of(&mut self, pid: u32, generation: u32) -> Arc<ModuleMap> {
        self.modules
            .entry((pid, generation))
            .or_insert_with(|| match self.files.read(pid) {
                Ok(modules) => Arc::new(modules),
                Err(err) => {
                    log::debug!("cannot read the mappings of pid {pid}: {err}");
                    Arc::default()
                }
            })
            .clone()
    }

    /// Like [`Self::modules_of`], but re-reads /proc when an address of `ips` is in none of
    /// the known mappings: libraries are mapped after exec (by ld.so) and by dlopen. At most
    /// once per kernel stack id (or once per image for events without one): JIT code stays
    /// unmapped, and must not cost a read per event.
    pub(super) fn modules_covering(
        &mut self,
        pid: u32,
        generation: u32,
        stack_id: Option<u32>,
        ips: &[u64],
    ) -> Arc<ModuleMap> {
        let known = self.modules_of(pid, generation);
        let stack_id = stack_id.unwrap_or(u32::MAX);
        if ips.iter().all(|&ip| known.is_code(ip))
            || !self
                .versions
                .entry(Arc::as_ptr(&known) as usize)
                .or_insert_with(|| Version::of(&known))
                .refreshed
                .insert(stack_id)
        {
            return known;
        }
        self.reread(pid, generation, known, |version| {
            version.refreshed.insert(stack_id);
        })
    }

    /// The mappings of (pid, generation) read again because a walk through `known` stopped
    /// at `at`, an address in none of them; `known` itself when `at` already caused a read or
    /// nothing changed.
    pub(super) fn modules_refreshed_at(
        &mut self,
        pid: u32,
        generation: u32,
        known: Arc<ModuleMap>,
        at: u64,
    ) -> Arc<ModuleMap> {
        let refreshed_at = &mut self
            .versions
            .entry(Arc::as_ptr(&known) as usize)
            .or_insert_with(|| Version::of(&known))
            .refreshed_at;
        // Garbage a frame-pointer walk read (code with neither CFI nor frame pointer) must
        // not cost a read per distinct value: a map that new addresses did not change stops
        // being read for them after a while.
        if refreshed_at.len() >= MAX_REREADS_AT || !refreshed_at.insert(at) {
            return known;
        }
        self.reread(pid, generation, known, |version| {
            version.refreshed_at.insert(at);
        })
    }

    /// Reads the mappings of `pid` again over `known`; a new version (marked by `mark`, so
    /// it is not read again for the same reason) when something changed, else `known`.
    fn reread(
        &mut self,
        pid: u32,
        generation: u32,
        known: Arc<ModuleMap>,
        mark: impl FnOnce(&mut Version),
    ) -> Arc<ModuleMap> {
        match self.files.read(pid) {
            Ok(fresh) => {
                // Known mappings the listing lacks are kept: a process that is exiting shows
                // part of its mappings, or none, as its memory is torn down (and events are
                // read after the short-lived ones have exited).
                let fresh = Arc::new(fresh.over(&known));
                if *fresh == *known {
                    // Nothing new: keep the map (and its unwinder) the process shares.
                    return known;
                }
                let mut version = Version::of(&fresh);
                mark(&mut version);
                self.versions.insert(Arc::as_ptr(&fresh) as usize, version);
                self.modules.insert((pid, generation), fresh.clone());
                self.release(known);
                fresh
            }
            Err(_) => known,
        }
    }
}
