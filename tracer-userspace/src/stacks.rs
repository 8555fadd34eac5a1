//! Everything needed to turn a kernel stack id into frames later, captured while the process
//! lives: each process's executable mappings per program image (exec generation), the kernel
//! stacks by id, and the caller of a frameless innermost function recovered from .eh_frame.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use crate::{
    aggregator::StackRef,
    events::Event,
    loader::Probes,
    symbolize::{Frame, StackSymbolizer},
    unwind::{LeafUnwinder, ModuleMap},
};

#[derive(Default)]
pub struct StackStore {
    /// Current exec generation of each process (0 until its first exec while traced).
    generations: HashMap<u32, u32>,
    /// Executable mappings by (pid, generation); a forked child shares its parent's until it
    /// execs.
    modules: HashMap<(u32, u32), Arc<ModuleMap>>,
    /// Kernel stacks by id: an id's entry never changes once the kernel has written it.
    kernel_stacks: HashMap<u32, Arc<[u64]>>,
    /// (pid, generation, stack id) whose unmapped addresses already caused a re-read of
    /// /proc/PID/maps: JIT code stays unmapped, and must not cost a read per event.
    refreshed: HashSet<(u32, u32, u32)>,
    unwinder: LeafUnwinder,
    symbolizer: StackSymbolizer,
}

impl StackStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the mappings of a process seen at attach.
    pub fn capture(&mut self, pid: u32) {
        let generation = self.generation(pid);
        self.modules_of(pid, generation);
    }

    /// Stamps an event with its program image and, for creation events, the recovered
    /// caller of a frameless innermost function; tracks fork and exec. Call before the
    /// aggregator sees the event.
    pub fn annotate(&mut self, event: &mut Event, probes: &Probes) {
        match event {
            Event::TaskCreated {
                header,
                child_tid,
                clone_flags: Some(flags),
                ..
            } if *flags & tracer_common::CLONE_THREAD == 0 => {
                // A forked child runs its parent's image until it execs.
                let parent_generation = self.generation(header.tgid);
                if let Some(modules) = self.modules.get(&(header.tgid, parent_generation)).cloned() {
                    self.generations.insert(*child_tid, 0);
                    self.modules.insert((*child_tid, 0), modules);
                }
            }
            Event::Exec { header } => {
                let generation = self.generation(header.tgid) + 1;
                self.generations.insert(header.tgid, generation);
                // Capture the new image now: a short-lived program may be gone soon.
                self.modules_of(header.tgid, generation);
            }
            _ => {}
        }
        let header = event.header_mut();
        header.generation = self.generation(header.tgid);
        let (Some(stack_id), Some(top)) = (header.stack_id, header.stack_top) else {
            return;
        };
        let Some(ips) = self.kernel_stack(stack_id, probes) else {
            return;
        };
        let modules = self.modules_covering(header.tgid, header.generation, stack_id, &ips);
        let Some(&innermost) = ips.first() else {
            return;
        };
        let recovered = self
            .unwinder
            .caller_of_leaf(&modules, innermost, top.sp, &top.bytes);
        // Only a caller the frame-pointer walk missed is worth keeping.
        header.leaf_caller = recovered.filter(|ret| ips.get(1) != Some(ret));
    }

    /// The frames of a stack, innermost first, with a recovered leaf caller put back.
    pub fn frames(&mut self, stack: StackRef, probes: &Probes) -> Vec<Frame> {
        let Some(kernel) = self.kernel_stack(stack.id, probes) else {
            return Vec::new();
        };
        let mut ips: Vec<u64> = kernel.to_vec();
        if let Some(caller) = stack.leaf_caller
            && !ips.is_empty()
        {
            ips.insert(1, caller);
        }
        let modules = self
            .modules
            .get(&(stack.pid, stack.generation))
            .cloned()
            .unwrap_or_default();
        self.symbolizer.frames(stack, &ips, &modules)
    }

    fn generation(&self, pid: u32) -> u32 {
        self.generations.get(&pid).copied().unwrap_or(0)
    }

    /// The mappings of (pid, generation), read from /proc the first time they are needed.
    /// An empty map is cached for a process already gone, so it is not read again.
    fn modules_of(&mut self, pid: u32, generation: u32) -> Arc<ModuleMap> {
        self.modules
            .entry((pid, generation))
            .or_insert_with(|| match ModuleMap::read(pid) {
                Ok(modules) => Arc::new(modules),
                Err(err) => {
                    log::debug!("cannot read the mappings of pid {pid}: {err}");
                    Arc::default()
                }
            })
            .clone()
    }

    /// Like [`Self::modules_of`], but re-reads /proc when an address of `ips` is in none of
    /// the known mappings: libraries are mapped after exec (by ld.so) and by dlopen.
    fn modules_covering(
        &mut self,
        pid: u32,
        generation: u32,
        stack_id: u32,
        ips: &[u64],
    ) -> Arc<ModuleMap> {
        let known = self.modules_of(pid, generation);
        if ips.iter().all(|&ip| known.find(ip).is_some())
            || !self.refreshed.insert((pid, generation, stack_id))
        {
            return known;
        }
        match ModuleMap::read(pid) {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                self.modules.insert((pid, generation), fresh.clone());
                fresh
            }
            Err(_) => known,
        }
    }

    fn kernel_stack(&mut self, id: u32, probes: &Probes) -> Option<Arc<[u64]>> {
        if let Some(ips) = self.kernel_stacks.get(&id) {
            return Some(ips.clone());
        }
        let ips: Arc<[u64]> = probes.stack(id)?.into();
        self.kernel_stacks.insert(id, ips.clone());
        Some(ips)
    }
}
