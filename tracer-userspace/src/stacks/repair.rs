//! Repairing a stack: the one place an event's stack is unwound (at once, or when a deferred
//! birth outlived its window), spliced with the kernel's frame-pointer walk, merged with its
//! Python frames and interned.

use std::sync::Arc;

use foldhash::HashMap;

use super::{
    KernelStacks, PythonWalk, StackStore,
    modules::ModuleMap,
    python,
    splice::{MAX_FRAMES, spliced},
    unwind::{CopiedStack, ProcessUnwinder, UnwindSections, Unwound},
    versions::Version,
};
use crate::events::StackTop;

impl StackStore {
    /// The interned id of the event's stack: frames unwound from CFI through the stack copied
    /// at the event, continued by the kernel's frame-pointer walk (`kernel_id`) where the two
    /// meet. Either alone will do; None when there is neither. The one place stacks are
    /// unwound, whether at once or deferred (`deferred_epoch`: the thread's stretch of walks
    /// at the event, see `StackBases::observe_deferred`).
    pub(super) fn repair(
        &mut self,
        kernel_id: Option<u32>,
        (pid, tid, generation): (u32, u32, u32),
        top: Option<&StackTop>,
        kernel: &impl KernelStacks,
        python: Option<&PythonWalk>,
        deferred_epoch: Option<u64>,
    ) -> Option<u32> {
        if kernel_id.is_none() && top.is_none() && python.is_none() {
            // An event without a stack (a close): nothing to unwind or look up, but a process
            // whose interpreter was not ready is looked at again, as at every event.
            if !self.python.decided(pid) {
                let modules = self.modules_of(pid, generation);
                self.python.observe(pid, &modules);
            }
            return None;
        }
        self.repaired += 1;
        // A kernel stack not found now may be found later: such a walk is not remembered.
        let (ips, kernel_known) = match kernel_id.map(|id| self.kernel_stack(id, kernel)) {
            Some(Some(ips)) => (ips, true),
            Some(None) => (Arc::default(), false),
            None => (Arc::default(), true),
        };
        let innermost = top.map(|top| top.ip).filter(|&ip| ip != 0);
        let probe: Vec<u64> = innermost.into_iter().chain(ips.iter().copied()).collect();
        let mut modules = self.modules_covering(pid, generation, kernel_id, &probe);
        self.python.observe(pid, &modules);
        // Whether the walk may be remembered: one walk, through the map the event's image has.
        let mut rememberable = false;
        let unwound = match (innermost.or(ips.first().copied()), top) {
            (Some(ip), Some(top)) if modules.find(ip).is_some() => {
                let stack = CopiedStack {
                    ip,
                    sp: top.sp,
                    bp: top.bp,
                    bytes: top.bytes,
                };
                let mut unwound = self.unwind(pid, &modules, stack);
                rememberable = kernel_known && python.is_none() && innermost.is_some();
                // A walk that stopped at an address in no known mapping may have reached JIT
                // code mapped since the mappings were read: read them again (once per such
                // address) and walk again if they changed.
                // (A map re-read or not for an address is never re-read for it again: a walk
                // through the same map may be remembered.)
                if let Some(at) = unwound.rejected.filter(|&at| !modules.is_code(at)) {
                    let before = Arc::as_ptr(&modules);
                    modules = self.modules_refreshed_at(pid, generation, modules, at);
                    if Arc::as_ptr(&modules) != before {
                        rememberable = false;
                        unwound = self.unwind(pid, &modules, stack);
                    }
                }
                let copied = top.bytes.len();
                match deferred_epoch {
                    None => self.bases.observe(tid, top.sp, copied, &unwound),
                    Some(epoch) => {
                        self.bases
                            .observe_deferred(tid, epoch, top.sp, copied, &unwound);
                    }
                }
                unwound
            }
            _ => Unwound::default(),
        };
        let native = spliced(&unwound, &ips, &modules);
        // Name JIT frames while the process lives (its perf map is read through its /proc).
        for (i, &ip) in native.iter().enumerate() {
            if modules.is_anonymous_code(ip) {
                self.perf_maps.name(pid, lookup_address(i, ip));
            }
        }
        let repaired: Arc<[u64]> = match python {
            Some((pending, interp)) => python::merge(&native, pending, interp).into(),
            None => native.into(),
        };
        log::trace!(
            "pid {pid}: unwound {:x?} (complete: {}, {} of {} bytes), kernel {:x?} -> {:x?}",
            unwound.frames,
            unwound.complete,
            unwound.stack_used,
            top.map_or(0, |top| top.bytes.len()),
            ips,
            repaired
        );
        let id = self.intern(&repaired);
        if rememberable && let Some(top) = top {
            self.remember((pid, kernel_id, top), &modules, &probe, &unwound, id);
        }
        id
    }

    /// The id of a stack's frames, interned now if they are new; None for no frames.
    pub(super) fn intern(&mut self, frames: &Arc<[u64]>) -> Option<u32> {
        if frames.is_empty() {
            return None;
        }
        Some(match self.stack_ids.get(frames) {
            Some(&id) => id,
            None => {
                let id = self.stacks.len() as u32;
                self.stacks.push(frames.clone());
                self.stack_ids.insert(frames.clone(), id);
                id
            }
        })
    }

    /// Walks `stack` of `pid` through its mappings `modules`, with the map's unwinder; the
    /// words it reads are left in `self.reads`.
    pub(super) fn unwind(
        &mut self,
        pid: u32,
        modules: &Arc<ModuleMap>,
        stack: CopiedStack,
    ) -> Unwound {
        let unwinder = unwinder_of(&mut self.versions, &mut self.sections, modules);
        let perf_maps = &mut self.perf_maps;
        let reads = &mut self.reads;
        reads.clear();
        let is_trampoline = |lookup: u64| {
            modules.is_anonymous_code(lookup)
                && perf_maps
                    .name(pid, lookup)
                    .is_some_and(|name| name.starts_with("py::"))
        };
        unwinder.unwind(
            stack,
            |ip| modules.is_code(ip),
            is_trampoline,
            MAX_FRAMES,
            reads,
        )
    }

    /// Walks `stack` through `modules`, which hold no JIT code (so no frame is a perf
    /// trampoline), appending the words it reads to `reads`: the walk [`Self::unwind`] makes
    /// there, with no side effect.
    pub(super) fn walk(
        &mut self,
        modules: &Arc<ModuleMap>,
        stack: CopiedStack,
        reads: &mut Vec<(u64, u64)>,
    ) -> Unwound {
        debug_assert!(!modules.has_anonymous_code());
        unwinder_of(&mut self.versions, &mut self.sections, modules).unwind(
            stack,
            |ip| modules.is_code(ip),
            |_| false,
            MAX_FRAMES,
            reads,
        )
    }
}

/// The unwinder of a module map, made the first time it is needed.
pub(super) fn unwinder_of<'v>(
    versions: &'v mut HashMap<usize, Version>,
    sections: &mut UnwindSections,
    modules: &Arc<ModuleMap>,
) -> &'v mut ProcessUnwinder {
    versions
        .entry(Arc::as_ptr(modules) as usize)
        .or_insert_with(|| Version::of(modules))
        .unwinder
        .get_or_insert_with(|| sections.unwinder_for(modules))
}

/// The address to look frame `i` of a stack up by: every frame but the innermost holds a
/// return address, which points after the call; the byte before it is the call itself.
pub(super) fn lookup_address(i: usize, ip: u64) -> u64 {
    if i == 0 { ip } else { ip.saturating_sub(1) }
}
