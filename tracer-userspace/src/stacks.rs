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
    unwind::{LeafUnwinder, ModuleMap, read_return_address},
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
    /// Where, above the stack pointer, the innermost function keeps its return address, by
    /// (pid, generation, ip); None when it keeps a frame pointer there (or has no CFI). It
    /// depends on the instruction alone, so the CFI is read once per call site, not per event.
    return_address_offsets: HashMap<(u32, u32, u64), Option<i64>>,
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
                if let Some(modules) = self.modules.get(&(header.tgid, parent_generation)).cloned()
                {
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
        if modules.find(innermost).is_none() {
            return;
        }
        let unwinder = &mut self.unwinder;
        let offset = *self
            .return_address_offsets
            .entry((header.tgid, header.generation, innermost))
            .or_insert_with(|| unwinder.return_address_offset(&modules, innermost));
        let recovered =
            offset.and_then(|offset| read_return_address(offset, top.sp, &top.bytes).ok());
        // Only a caller the frame-pointer walk missed is worth keeping.
        header.leaf_caller = recovered.filter(|ret| ips.get(1) != Some(ret));
    }

    /// The frames of a stack, innermost first, with a recovered leaf caller put back.
    pub fn frames(&mut self, stack: StackRef, probes: &Probes) -> Vec<Frame> {
        let Some(kernel) = self.kernel_stack(stack.id, probes) else {
            return Vec::new();
        };
        let modules = self
            .modules
            .get(&(stack.pid, stack.generation))
            .cloned()
            .unwrap_or_default();
        let ips = repaired(&kernel, stack.leaf_caller, &modules);
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

/// The kernel's stack with a recovered leaf caller put back as frame 1. A frameless leaf may
/// also have used %rbp as a scratch register (glibc's open64 does), which sends the kernel's
/// frame-pointer walk into the weeds: past the recovered caller, the walk is cut at the first
/// address that lies in no mapping, since nothing after it can be trusted.
fn repaired(kernel: &[u64], leaf_caller: Option<u64>, modules: &ModuleMap) -> Vec<u64> {
    let Some(caller) = leaf_caller else {
        return kernel.to_vec();
    };
    let mut ips = Vec::with_capacity(kernel.len() + 1);
    ips.extend(kernel.first());
    ips.push(caller);
    ips.extend(
        kernel
            .iter()
            .skip(1)
            .take_while(|&&ip| modules.find(ip).is_some()),
    );
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modules() -> ModuleMap {
        ModuleMap::parse(
            "1000-2000 r-xp 00000000 08:01 1 /srv/app\n\
             7000-8000 r-xp 00000000 08:01 2 /lib/libc.so.6\n",
        )
    }

    /// Without a recovered caller the kernel's stack is kept as it is.
    #[test]
    fn keeps_stack_without_leaf_caller() {
        assert_eq!(
            repaired(&[0x7100, 0x1100, 0xdead], None, &modules()),
            vec![0x7100, 0x1100, 0xdead]
        );
    }

    /// A recovered caller becomes frame 1; the walk is cut at the first unmapped address.
    #[test]
    fn inserts_caller_and_cuts_garbage() {
        let kernel = [0x7100, 0x1200, 0x6567_7261_742f_6e69, 0x1300];
        assert_eq!(
            repaired(&kernel, Some(0x1100), &modules()),
            vec![0x7100, 0x1100, 0x1200]
        );
    }
}
