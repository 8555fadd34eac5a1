//! Everything needed to turn an event's stack into frames later, captured while the process
//! lives: each process's executable mappings per program image (exec generation), the kernel
//! stacks by id, and the frames unwound from CFI through the stack copied at the event.

use std::sync::Arc;

use foldhash::HashMap;

mod bases;
mod deciding;
mod deferred;
mod given;
mod memo;
mod modules;
mod perf_map;
mod python;
mod repair;
mod splice;
mod sweep;
mod symbolize;
#[cfg(test)]
mod test_support;
mod unwind;
mod versions;

use bases::StackBases;
pub(crate) use deferred::DeferredStack;
use deferred::Pending;
#[cfg(test)]
pub(crate) use deferred::WINDOW_NS;
use given::GivenWalks;
use memo::{Memo, Remembered};
use modules::{ModuleFiles, ModuleMap};
use perf_map::PerfMaps;
pub(crate) use python::Updates as PythonUpdates;
use symbolize::StackSymbolizer;
use unwind::UnwindSections;
use versions::Version;

use crate::{
    events::{Event, EventBody, PythonStack, StackTop, TaskCreated},
    model::{Frame, StackRef},
};

/// The stacks the kernel walked by frame pointers, by the id it gave them: the live BPF
/// stack map in a session, a table in tests.
pub(crate) trait KernelStacks {
    /// The instruction pointers of stack `id`, innermost first; None once the kernel has
    /// dropped it.
    fn stack(&self, id: u32) -> Option<Vec<u64>>;
}

#[derive(Default)]
pub(crate) struct StackStore {
    /// Current exec generation of each process (0 until its first exec while traced).
    generations: HashMap<u32, u32>,
    /// Executable mappings by (pid, generation); a forked child shares its parent's until it
    /// execs. Entries of processes that exited and were reaped go once no stack still
    /// refers to them (see [`Self::forget`]).
    modules: HashMap<(u32, u32), Arc<ModuleMap>>,
    /// (pid, generation) of reaped processes kept because a stack still referred to them.
    pinned: Vec<(u32, u32)>,
    /// Kernel stacks by id: an id's entry never changes once the kernel has written it.
    kernel_stacks: HashMap<u32, Arc<[u64]>>,
    /// What is known of each module map in use, by its address (the map is kept alive in
    /// it, so the address is not reused while it is there): forked children that share their
    /// parent's map share its unwinder and what it re-read. Dropped with the last process
    /// using the map.
    versions: HashMap<usize, Version>,
    /// Repaired stacks, interned: the report's stack ids index `stacks`. Two kernel stacks
    /// that differ only in the garbage a broken frame-pointer walk collected are one stack.
    stacks: Vec<Arc<[u64]>>,
    stack_ids: HashMap<Arc<[u64]>, u32>,
    sections: UnwindSections,
    /// Threads' stack bases learned from the walks, for the kernel's stack copy.
    bases: StackBases,
    files: ModuleFiles,
    /// Names of JIT code, per process, from the perf maps runtimes write.
    perf_maps: PerfMaps,
    symbolizer: StackSymbolizer,
    /// CPython processes, the Python frames waiting for their event, and their names.
    python: python::Python,
    /// Births' stacks waiting to be unwound (`deferred.rs`), and for how long (0: never).
    pending: Pending,
    defer_window_ns: u64,
    /// Walks remembered, to reuse for a stack met again (`memo.rs`), and the words the last
    /// walk read.
    memo: Memo<ModuleMap>,
    reads: Vec<(u64, u64)>,
    /// Remembered walks the kernel recognises stacks by, sending them without their copy.
    given: GivenWalks,
    /// Stacks repaired (unwound or taken from the kernel's walk), for the debug log.
    repaired: u64,
}

/// A thread's Python walk, named, and the interpreter that ran it (to merge it into the
/// native stack).
type PythonWalk = (python::Pending, Arc<python::Interpreter>);

impl StackStore {
    pub(crate) fn new() -> Self {
        Self::with_defer_window(deferred::WINDOW_NS)
    }

    /// A store whose births' stacks wait `window_ns` before they are unwound (0: unwound at
    /// once, as every other stack is).
    pub(crate) fn with_defer_window(window_ns: u64) -> Self {
        Self {
            defer_window_ns: window_ns,
            ..Self::default()
        }
    }

    /// No CPython frames (`--no-python-frames`): interpreters are not looked for, so the
    /// kernel never walks their frames.
    pub(crate) fn without_python_frames(&mut self) {
        self.python.turn_off();
    }

    /// Records the mappings of a process seen at attach.
    pub(crate) fn capture(&mut self, pid: u32) {
        let generation = self.generation(pid);
        let modules = self.modules_of(pid, generation);
        self.python.observe(pid, &modules);
    }

    /// Names the Python frames the kernel walked for the thread's next event, while their
    /// code objects still live.
    pub(crate) fn python_walked(&mut self, pid: u32, tid: u32, stack: &PythonStack) {
        self.python.walked(pid, tid, stack);
    }

    /// Interpreter layouts found since the last call, for the kernel (see
    /// tracer-ebpf/src/python.rs).
    pub(crate) fn take_python_updates(&mut self) -> python::Updates {
        self.python.take_updates()
    }

    /// Stamps an event with its program image and replaces the kernel's stack id with the id
    /// of the repaired stack (a frameless innermost function's caller put back, frame-pointer
    /// garbage cut); tracks fork and exec. Call before the aggregator sees the event. A
    /// descriptor birth's stack may be deferred instead (see `deferred.rs`): the event then
    /// carries a pending id, and the raw copy returned must be queued with
    /// [`Self::queue_deferred`] once the event is in the tables.
    #[inline]
    pub(crate) fn annotate(
        &mut self,
        event: &mut Event,
        stack_top: Option<StackTop>,
        kernel: &impl KernelStacks,
    ) -> Option<DeferredStack> {
        let header = &mut event.header;
        self.given.saw(header.timestamp_ns);
        match &event.body {
            EventBody::TaskCreated(TaskCreated {
                child_tid,
                clone_flags: Some(flags),
                ..
            }) if *flags & tracer_common::CLONE_THREAD == 0 => {
                // A forked child runs its parent's image until it execs.
                let parent_generation = self.generation(header.tgid);
                if let Some(modules) = self.modules.get(&(header.tgid, parent_generation)).cloned()
                {
                    self.generations.insert(*child_tid, 0);
                    self.modules.insert((*child_tid, 0), modules);
                }
                self.python.forked(header.tgid, *child_tid);
            }
            EventBody::TaskExited(_) => {
                self.bases.forget(header.tid);
                self.python.thread_exited(header.tid);
            }
            EventBody::Exec => {
                self.given.take_back(header.tgid, header.timestamp_ns);
                self.python.forget(header.tgid);
                self.bases.forget(header.tid);
                self.bases.forget(header.tgid);
                let generation = self.generation(header.tgid) + 1;
                self.generations.insert(header.tgid, generation);
                // Capture the new image now: a short-lived program may be gone soon.
                self.modules_of(header.tgid, generation);
            }
            _ => {}
        }
        header.generation = self.generation(header.tgid);
        // The thread's Python walk, if the kernel sent one, came right before this event.
        let python = self.python.take(header.tid);
        if let Some(top) = &stack_top
            && top.memo != 0
        {
            event.header.stack_id = self.given_stack(&event.header, top, python.as_ref());
            return None;
        }
        let learn = match (&stack_top, &python) {
            (Some(top), None) => match self.remembered(&event.header, top) {
                Remembered::Hit(id) => {
                    event.header.stack_id = id;
                    return None;
                }
                Remembered::Learn => true,
                Remembered::Miss => false,
            },
            _ => false,
        };
        let python = match &stack_top {
            Some(top) if !learn => match self.defer(event, top, kernel, python) {
                Ok(deferred) => {
                    event.header.stack_id = Some(deferred.stack.id);
                    return Some(deferred);
                }
                Err(python) => python,
            },
            _ => python,
        };
        let header = &mut event.header;
        header.stack_id = self.repair(
            header.stack_id,
            (header.tgid, header.tid, header.generation),
            stack_top.as_ref(),
            kernel,
            python.as_ref(),
            None,
        );
        None
    }

    /// How many entries each table holds, for a debug log: what grows with the run.
    pub(crate) fn sizes(&self) -> String {
        format!(
            "generations {}, modules {} ({} kept for their stacks), map versions {} ({} unwinders), kernel stacks {}, stacks {} ({} ids given), bases {}, symbolized {}, perf map entries {}, deferred {} ({} bytes); {} stacks repaired, {} deferred ({} dropped unwound), {}",
            self.generations.len(),
            self.modules.len(),
            self.pinned.len(),
            self.versions.len(),
            self.versions
                .values()
                .filter(|v| v.unwinder.is_some())
                .count(),
            self.kernel_stacks.len(),
            self.stack_ids.len(),
            self.stacks.len(),
            self.bases.len(),
            self.symbolizer.cached(),
            self.perf_maps.len(),
            self.pending.len(),
            self.pending.bytes(),
            self.repaired,
            self.pending.deferred,
            self.pending.dropped,
            self.memo_sizes(),
        ) + ", "
            + &self.python.sizes()
    }

    /// Forgets processes that exited and were reaped (`gone`): their exec generation at
    /// once, their module maps once no stack refers to them. `in_use` says whether something
    /// kept (a group of what exited processes held, a live child's inherited descriptor or
    /// fork stack) still refers to a (pid, generation); those are kept, and asked about again
    /// at the next call. Memory then follows what is live plus what the report will name,
    /// not every process that ever lived.
    pub(crate) fn forget(&mut self, gone: &[u32], in_use: impl Fn(u32, u32) -> bool) {
        self.symbolizer.forget(gone);
        let mut candidates = std::mem::take(&mut self.pinned);
        // A pid a later process has taken since names that process's maps now.
        candidates.retain(|(pid, _)| !self.generations.contains_key(pid));
        let now_ns = crate::clock::monotonic_ns();
        for &pid in gone {
            self.given.take_back(pid, now_ns);
            self.python.forget(pid);
            let last = self.generations.remove(&pid).unwrap_or(0);
            candidates.extend((0..=last).map(|generation| (pid, generation)));
        }
        for key in candidates {
            if !self.modules.contains_key(&key) {
                continue;
            }
            if in_use(key.0, key.1) {
                self.pinned.push(key);
            } else if let Some(map) = self.modules.remove(&key) {
                self.release(map);
            }
        }
        // JIT names go with the last map of their process that a kept stack refers to.
        for &pid in gone {
            if !self.pinned.iter().any(|&(p, _)| p == pid) {
                self.perf_maps.forget(pid);
            }
        }
    }

    /// Whether maps of reaped processes are kept for stacks that referred to them.
    pub(crate) fn has_pinned(&self) -> bool {
        !self.pinned.is_empty()
    }

    /// Walks given to the kernel or taken back since the last call, for its map.
    pub(crate) fn take_given_updates(
        &mut self,
    ) -> Vec<(
        tracer_common::StackMemoKey,
        Option<tracer_common::StackMemo>,
    )> {
        self.given.take_updates()
    }

    /// Whether the walks taken since the last call took one back (or replaced one): the
    /// kernel's per-CPU copies are then to be made stale, after the map is written.
    pub(crate) fn take_walks_taken_back(&mut self) -> bool {
        self.given.take_taken_back()
    }

    /// Stack bases learned or unlearned since the last call, for the kernel's map.
    pub(crate) fn take_stack_base_updates(&mut self) -> Vec<(u32, Option<u64>)> {
        self.bases.take_updates()
    }

    /// The frames of a stack, innermost first.
    pub(crate) fn frames(&mut self, stack: StackRef) -> Vec<Frame> {
        let Some(ips) = self.stacks.get(stack.id as usize).cloned() else {
            return Vec::new();
        };
        let modules = self
            .modules
            .get(&(stack.pid, stack.generation))
            .cloned()
            .unwrap_or_default();
        let perf_maps = &self.perf_maps;
        let jit_name = |addr: u64| perf_maps.known(stack.pid, addr);
        let python = &self.python;
        self.symbolizer
            .frames(stack, &ips, &modules, |addr| python.frame(addr), jit_name)
    }

    /// The addresses of interned stack `id`, and how many stacks were repaired (unwound).
    #[cfg(test)]
    pub(crate) fn interned(&self, id: u32) -> (Option<Vec<u64>>, u64) {
        (
            self.stacks.get(id as usize).map(|ips| ips.to_vec()),
            self.repaired,
        )
    }

    fn generation(&self, pid: u32) -> u32 {
        self.generations.get(&pid).copied().unwrap_or(0)
    }

    fn kernel_stack(&mut self, id: u32, kernel: &impl KernelStacks) -> Option<Arc<[u64]>> {
        if let Some(ips) = self.kernel_stacks.get(&id) {
            return Some(ips.clone());
        }
        let ips: Arc<[u64]> = kernel.stack(id)?.into();
        self.kernel_stacks.insert(id, ips.clone());
        Some(ips)
    }
}

#[cfg(test)]
mod tests;
