//! Everything needed to turn an event's stack into frames later, captured while the process
//! lives: each process's executable mappings per program image (exec generation), the kernel
//! stacks by id, and the frames unwound from CFI through the stack copied at the event.

use std::sync::Arc;

use foldhash::{HashMap, HashSet};

mod bases;
mod modules;
mod python;
mod sweep;
mod symbolize;
mod unwind;

use bases::StackBases;
use modules::{ModuleFiles, ModuleMap};
pub(crate) use python::Updates as PythonUpdates;
use symbolize::StackSymbolizer;
use unwind::{CopiedStack, ProcessUnwinder, UnwindSections, Unwound};

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
    symbolizer: StackSymbolizer,
    /// CPython processes, the Python frames waiting for their event, and their names.
    python: python::Python,
}

/// One module map (a process image, as read at one time) and what was derived from it.
struct Version {
    map: Arc<ModuleMap>,
    /// Caches its rules by address, so the CFI is read once per call site, not per event.
    /// Made at the first walk.
    unwinder: Option<ProcessUnwinder>,
    /// Kernel stack ids (u32::MAX: events without one) whose unmapped addresses already
    /// caused a re-read of /proc/PID/maps: JIT code stays unmapped, and must not cost a read
    /// per event, nor a read per forked child that runs the same code.
    refreshed: HashSet<u32>,
}

impl Version {
    fn of(map: &Arc<ModuleMap>) -> Self {
        Self {
            map: map.clone(),
            unwinder: None,
            refreshed: HashSet::default(),
        }
    }
}

impl StackStore {
    pub(crate) fn new() -> Self {
        Self::default()
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
    /// garbage cut); tracks fork and exec. Call before the aggregator sees the event.
    pub(crate) fn annotate(
        &mut self,
        event: &mut Event,
        stack_top: Option<StackTop>,
        kernel: &impl KernelStacks,
    ) {
        let header = &mut event.header;
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
        header.stack_id = self.repair(
            header.stack_id,
            (header.tgid, header.tid),
            header.generation,
            stack_top.as_ref(),
            kernel,
            python,
        );
    }

    /// How many entries each table holds, for a debug log: what grows with the run.
    pub(crate) fn sizes(&self) -> String {
        format!(
            "generations {}, modules {} ({} kept for their stacks), map versions {} ({} unwinders), kernel stacks {}, stacks {} ({} ids given), bases {}, symbolized {}",
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
        for &pid in gone {
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
    }

    /// Whether maps of reaped processes are kept for stacks that referred to them.
    pub(crate) fn has_pinned(&self) -> bool {
        !self.pinned.is_empty()
    }

    /// Drops what was derived from a module map no process uses any more.
    fn release(&mut self, map: Arc<ModuleMap>) {
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

    /// Stack bases learned or unlearned since the last call, for the kernel's map.
    pub(crate) fn take_stack_base_updates(&mut self) -> Vec<(u32, Option<u64>)> {
        self.bases.take_updates()
    }

    /// The interned id of the event's stack: frames unwound from CFI through the stack copied
    /// at the event, continued by the kernel's frame-pointer walk (`kernel_id`) where the two
    /// meet. Either alone will do; None when there is neither.
    fn repair(
        &mut self,
        kernel_id: Option<u32>,
        (pid, tid): (u32, u32),
        generation: u32,
        top: Option<&StackTop>,
        kernel: &impl KernelStacks,
        python: Option<(python::Pending, Arc<python::Interpreter>)>,
    ) -> Option<u32> {
        let ips = match kernel_id {
            Some(id) => self.kernel_stack(id, kernel).unwrap_or_default(),
            None => Arc::default(),
        };
        let innermost = top.map(|top| top.ip).filter(|&ip| ip != 0);
        let probe: Vec<u64> = innermost.into_iter().chain(ips.iter().copied()).collect();
        let modules = self.modules_covering(pid, generation, kernel_id, &probe);
        self.python.observe(pid, &modules);
        let unwound = match (innermost.or(ips.first().copied()), top) {
            (Some(ip), Some(top)) if modules.find(ip).is_some() => {
                let sections = &mut self.sections;
                let unwinder = self
                    .versions
                    .entry(Arc::as_ptr(&modules) as usize)
                    .or_insert_with(|| Version::of(&modules))
                    .unwinder
                    .get_or_insert_with(|| sections.unwinder_for(&modules));
                let stack = CopiedStack {
                    ip,
                    sp: top.sp,
                    bp: top.bp,
                    bytes: top.bytes,
                };
                let unwound = unwinder.unwind(stack, |ip| modules.find(ip).is_some(), MAX_FRAMES);
                self.bases.observe(tid, top.sp, top.bytes.len(), &unwound);
                unwound
            }
            _ => Unwound::default(),
        };
        let native = spliced(&unwound, &ips, &modules);
        let repaired: Arc<[u64]> = match &python {
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
        if repaired.is_empty() {
            return None;
        }
        Some(match self.stack_ids.get(&repaired) {
            Some(&id) => id,
            None => {
                let id = self.stacks.len() as u32;
                self.stacks.push(repaired.clone());
                self.stack_ids.insert(repaired, id);
                id
            }
        })
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
        self.symbolizer
            .frames(stack, &ips, &modules, |addr| self.python.frame(addr))
    }

    fn generation(&self, pid: u32) -> u32 {
        self.generations.get(&pid).copied().unwrap_or(0)
    }

    /// The mappings of (pid, generation), read from /proc the first time they are needed.
    /// An empty map is cached for a process already gone, so it is not read again.
    fn modules_of(&mut self, pid: u32, generation: u32) -> Arc<ModuleMap> {
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
    fn modules_covering(
        &mut self,
        pid: u32,
        generation: u32,
        stack_id: Option<u32>,
        ips: &[u64],
    ) -> Arc<ModuleMap> {
        let known = self.modules_of(pid, generation);
        let stack_id = stack_id.unwrap_or(u32::MAX);
        if ips.iter().all(|&ip| known.find(ip).is_some())
            || !self
                .versions
                .entry(Arc::as_ptr(&known) as usize)
                .or_insert_with(|| Version::of(&known))
                .refreshed
                .insert(stack_id)
        {
            return known;
        }
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
                version.refreshed.insert(stack_id);
                self.versions.insert(Arc::as_ptr(&fresh) as usize, version);
                self.modules.insert((pid, generation), fresh.clone());
                self.release(known);
                fresh
            }
            Err(_) => known,
        }
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

/// Frames kept per stack; deeper stacks (deep recursion) keep their innermost frames.
const MAX_FRAMES: usize = 127;

/// The stack to report. A walk through the copied stack that reached the stack's root is the
/// whole answer: it knows the functions without frame pointers, which the kernel's
/// frame-pointer walk skips or gets wrong. One that ran out of copied stack is continued by
/// the kernel's walk if the walk also found its last frame, from there on. When the two part
/// ways earlier, the kernel's walk went astray (a function without a frame pointer) and adds
/// nothing. A walk of just the innermost frame and its caller (a short copy) is continued by
/// the kernel's walk from its second frame: that is the caller's caller when the innermost
/// function is a frameless libc wrapper. Without unwound frames the kernel's walk is the
/// stack. The result is cut at the first address that lies in no executable mapping: a
/// frameless function may use %rbp as a scratch register (glibc's open64 and clone3 do),
/// which sends the kernel's walk into the weeds, and nothing after such an address can be
/// trusted. (Code in anonymous memory, such as JIT output, ends a stack too; it could not be
/// symbolized.)
fn spliced(unwound: &Unwound, kernel: &[u64], modules: &ModuleMap) -> Vec<u64> {
    let frames = &unwound.frames;
    let last = frames.len().saturating_sub(1);
    // Where the kernel's walk holds the deepest unwound frame.
    let meeting = frames.iter().enumerate().skip(1).rev().find_map(|(i, ip)| {
        let j = kernel.iter().skip(1).position(|k| k == ip)? + 1;
        Some((i, j))
    });
    let mut ips: Vec<u64> = if frames.len() <= 1 {
        if kernel.is_empty() {
            frames.clone()
        } else {
            kernel.to_vec()
        }
    } else if unwound.complete {
        frames.clone()
    } else {
        let theirs = match meeting {
            Some((i, j)) if i == last => kernel.get(j + 1..).unwrap_or_default(),
            Some(_) => &[],
            None if frames.len() == 2 => kernel.get(1..).unwrap_or_default(),
            None => &[],
        };
        frames.iter().chain(theirs).copied().collect()
    };
    let mapped = ips
        .iter()
        .skip(1)
        .position(|&ip| modules.find(ip).is_none())
        .map_or(ips.len(), |i| i + 1);
    ips.truncate(mapped);
    ips
}

#[cfg(test)]
mod tests;
