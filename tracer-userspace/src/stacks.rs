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
    unwind::{FrameRule, LeafUnwinder, ModuleMap, unwind_copied_stack},
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
    /// CFI rules by (pid, generation, ip); None where there are none. A rule depends on the
    /// instruction alone, so the CFI is read once per call site, not per event.
    frame_rules: HashMap<(u32, u32, u64), Option<FrameRule>>,
    /// Repaired stacks, interned: the report's stack ids index `stacks`. Two kernel stacks
    /// that differ only in the garbage a broken frame-pointer walk collected are one stack.
    stacks: Vec<Arc<[u64]>>,
    stack_ids: HashMap<Arc<[u64]>, u32>,
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
            header.stack_top.as_ref(),
            probes,
        );
    }

    /// The interned id of the repaired form of kernel stack `kernel_id`: frames unwound
    /// from .eh_frame through the stack copied at the event, continued by the kernel's
    /// frame-pointer walk where the two meet.
    fn repair(
        &mut self,
        kernel_id: u32,
        pid: u32,
        generation: u32,
        top: Option<&StackTop>,
        probes: &Probes,
    ) -> Option<u32> {
        let ips = self.kernel_stack(kernel_id, probes)?;
        let modules = self.modules_covering(pid, generation, kernel_id, &ips);
        let unwound = match (ips.first(), top) {
            (Some(&innermost), Some(top)) if modules.find(innermost).is_some() => {
                let (rules, unwinder) = (&mut self.frame_rules, &mut self.unwinder);
                unwind_copied_stack(
                    |ip| {
                        *rules
                            .entry((pid, generation, ip))
                            .or_insert_with(|| unwinder.frame_rule(&modules, ip))
                    },
                    |ip| modules.find(ip).is_some(),
                    innermost,
                    (top.sp, top.bp),
                    &top.bytes,
                    MAX_UNWOUND_FRAMES,
                )
            }
            _ => Vec::new(),
        };
        let repaired: Arc<[u64]> = spliced(&unwound, &ips, &modules).into();
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

/// Frames walked through the copied stack per event are few: the copy is small.
const MAX_UNWOUND_FRAMES: usize = 32;

/// The stack to report: the frames unwound through the copied stack (`unwound`, which
/// knows the frameless functions the kernel's frame-pointer walk skips or gets wrong),
/// continued by the kernel's walk from where the two meet, else from the walk's second
/// frame; cut at the first address that lies in no executable mapping. A frameless function
/// may use %rbp as a scratch register (glibc's open64 and clone3 do), which sends the
/// kernel's walk into the weeds, and nothing after such an address can be trusted. (Code in
/// anonymous memory, such as JIT output, ends a stack too; it could not be symbolized.)
fn spliced(unwound: &[u64], kernel: &[u64], modules: &ModuleMap) -> Vec<u64> {
    let mut ips: Vec<u64> = if unwound.len() <= 1 {
        kernel.to_vec()
    } else {
        // The deepest unwound frame the kernel's walk also found.
        let meeting = unwound
            .iter()
            .enumerate()
            .skip(1)
            .rev()
            .find_map(|(i, ip)| {
                let j = kernel.iter().skip(1).position(|k| k == ip)? + 1;
                Some((i, j))
            });
        let (mine, theirs) = match meeting {
            Some((i, j)) => (&unwound[..=i], kernel.get(j + 1..).unwrap_or_default()),
            None => (unwound, kernel.get(1..).unwrap_or_default()),
        };
        mine.iter().chain(theirs).copied().collect()
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
mod tests {
    use super::*;

    fn modules() -> ModuleMap {
        ModuleMap::parse(
            "1000-2000 r-xp 00000000 08:01 1 /srv/app\n\
             7000-8000 r-xp 00000000 08:01 2 /lib/libc.so.6\n",
        )
    }

    /// Without unwound frames the kernel's stack is kept up to its first unmapped address.
    #[test]
    fn cuts_at_first_unmapped_address() {
        let kept = [0x7100, 0x1100, 0x1200];
        assert_eq!(spliced(&[], &kept, &modules()), kept);
        assert_eq!(
            spliced(&[0x7100], &[0x7100, 0x1100, 0xdead, 0x1200], &modules()),
            vec![0x7100, 0x1100]
        );
    }

    /// Unwound frames that do not meet the kernel's walk are followed by its second frame
    /// on; the walk is cut at the first unmapped address.
    #[test]
    fn inserts_unwound_caller_and_cuts_garbage() {
        let kernel = [0x7100, 0x1200, 0x6567_7261_742f_6e69, 0x1300];
        assert_eq!(
            spliced(&[0x7100, 0x1100], &kernel, &modules()),
            vec![0x7100, 0x1100, 0x1200]
        );
    }

    /// Where the unwound frames meet the kernel's walk, the walk continues after the meeting
    /// frame, without repeating it.
    #[test]
    fn continues_with_the_kernel_walk_where_they_meet() {
        let kernel = [0x7100, 0x1300, 0x1400];
        assert_eq!(
            spliced(&[0x7100, 0x7200, 0x1200, 0x1300], &kernel, &modules()),
            vec![0x7100, 0x7200, 0x1200, 0x1300, 0x1400]
        );
    }
}
