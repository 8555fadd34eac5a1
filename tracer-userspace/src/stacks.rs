//! Everything needed to turn a kernel stack id into frames later, captured while the process
//! lives: each process's executable mappings per program image (exec generation), the kernel
//! stacks by id, and the caller of a frameless innermost function recovered from .eh_frame.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use crate::{
    aggregator::StackRef,
    events::{Event, StackTop},
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
    /// (pid, generation, ip); None when it keeps a frame pointer there. It depends on the
    /// instruction alone, so the CFI is read once per call site, not per event.
    return_address_offsets: HashMap<(u32, u32, u64), Option<i64>>,
    /// Repaired stacks, interned: the report's stack ids index `stacks`. Two kernel stacks
    /// that differ only in the garbage a broken frame-pointer walk collected are one stack.
    stacks: Vec<Arc<[u64]>>,
    stack_ids: HashMap<Arc<[u64]>, u32>,
    /// (kernel stack id, recovered caller, pid, generation) -> interned id.
    repaired_ids: HashMap<(u32, Option<u64>, u32, u32), u32>,
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

    /// Stamps an event with its program image and replaces the kernel's stack id with the id
    /// of the repaired stack (a frameless innermost function's caller put back, frame-pointer
    /// garbage cut); tracks fork and exec. Call before the aggregator sees the event.
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
        let Some(kernel_id) = header.stack_id else {
            return;
        };
        header.stack_id = self.repair(
            kernel_id,
            header.tgid,
            header.generation,
            header.stack_top,
            probes,
        );
    }

    /// The interned id of the repaired form of kernel stack `kernel_id`.
    fn repair(
        &mut self,
        kernel_id: u32,
        pid: u32,
        generation: u32,
        top: Option<StackTop>,
        probes: &Probes,
    ) -> Option<u32> {
        let ips = self.kernel_stack(kernel_id, probes)?;
        let modules = self.modules_covering(pid, generation, kernel_id, &ips);
        let caller = match (ips.first(), top) {
            (Some(&innermost), Some(top)) => {
                self.leaf_caller(&modules, pid, generation, innermost, &top)
            }
            _ => None,
        }
        // Only a caller the frame-pointer walk missed is worth putting back.
        .filter(|ret| ips.get(1) != Some(ret));
        let key = (kernel_id, caller, pid, generation);
        if let Some(&id) = self.repaired_ids.get(&key) {
            return Some(id);
        }
        let repaired: Arc<[u64]> = repaired(&ips, caller, &modules).into();
        let id = match self.stack_ids.get(&repaired) {
            Some(&id) => id,
            None => {
                let id = self.stacks.len() as u32;
                self.stacks.push(repaired.clone());
                self.stack_ids.insert(repaired, id);
                id
            }
        };
        self.repaired_ids.insert(key, id);
        Some(id)
    }

    /// The return address of a frameless innermost function at `ip`, read from the copied
    /// top of the stack; kept only when it points into an executable mapping.
    fn leaf_caller(
        &mut self,
        modules: &ModuleMap,
        pid: u32,
        generation: u32,
        ip: u64,
        top: &StackTop,
    ) -> Option<u64> {
        modules.find(ip)?;
        let unwinder = &mut self.unwinder;
        let offset = (*self
            .return_address_offsets
            .entry((pid, generation, ip))
            .or_insert_with(|| unwinder.return_address_offset(modules, ip)))?;
        let caller = read_return_address(offset, top.sp, &top.bytes).ok()?;
        modules.find(caller).map(|_| caller)
    }

    /// The frames of a stack, innermost first.
    pub fn frames(&mut self, stack: StackRef) -> Vec<Frame> {
        let Some(ips) = self.stacks.get(stack.id as usize).cloned() else {
            return Vec::new();
        };
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

/// The kernel's stack with a recovered leaf caller put back as frame 1, cut at the first
/// address that lies in no executable mapping: a frameless function may have used %rbp as a
/// scratch register (glibc's open64 and clone3 do), which sends the kernel's frame-pointer
/// walk into the weeds, and nothing after such an address can be trusted. (Code in anonymous
/// memory, such as JIT output, ends a stack too; it could not be symbolized anyway.)
fn repaired(kernel: &[u64], leaf_caller: Option<u64>, modules: &ModuleMap) -> Vec<u64> {
    let mut ips = Vec::with_capacity(kernel.len() + 1);
    ips.extend(kernel.first());
    ips.extend(leaf_caller);
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

    /// Without a recovered caller the kernel's stack is kept up to its first unmapped address.
    #[test]
    fn cuts_at_first_unmapped_address() {
        let kept = [0x7100, 0x1100, 0x1200];
        assert_eq!(repaired(&kept, None, &modules()), kept);
        assert_eq!(
            repaired(&[0x7100, 0x1100, 0xdead, 0x1200], None, &modules()),
            vec![0x7100, 0x1100]
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
