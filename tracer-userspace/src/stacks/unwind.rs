//! Unwinding the stack copied at an event, in userspace, with framehop (x86_64 binaries).
//!
//! The kernel's `bpf_get_stackid(.., BPF_F_USER_STACK)` follows %rbp, which only works through
//! code built with frame pointers: distro C/C++ at -O2, Rust release builds and CPython have
//! none, and a libc syscall wrapper without a frame hides its caller. So the eBPF side also
//! copies %rip, %rsp, %rbp and up to [`tracer_common::STACK_TOP_BYTES`] of the user stack at
//! the event, and [`ProcessUnwinder`] walks that copy here. framehop picks the rule per
//! address: the module's DWARF CFI (`.eh_frame` through `.eh_frame_hdr`, else `.debug_frame`)
//! where it covers the address, the frame pointer where no CFI does — so modules with and
//! without frame pointers mix in one stack, with no switch to set.
//!
//! Why framehop rather than our own gimli walker (which this replaced): it follows every CFI
//! rule compilers emit (DWARF expressions in PLT entries, registers other than %rsp/%rbp as
//! the CFA base are refused cleanly), reads `.debug_frame` too, falls back to frame pointers
//! per address, and caches rules by address; it is kept up by the Firefox profiler's authors.
//!
//! The unwind sections of each ELF file are read once and shared, as `Arc`s, by the
//! unwinders of every process (and exec generation) that maps the file.

use std::{
    collections::HashMap,
    fs,
    ops::Range,
    path::{Path, PathBuf},
    sync::Arc,
};

use framehop::{
    ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};
use object::{Object, ObjectSection, ObjectSegment, ReadCache, SegmentFlags};

use super::modules::ModuleMap;

/// The page size mappings are aligned to (x86_64).
const PAGE: u64 = 4096;

/// Section bytes shared between the unwinders of all processes that map a file.
type Bytes = Arc<[u8]>;

/// One `PT_LOAD` program header.
#[derive(Clone, Copy, Debug)]
struct Load {
    offset: u64,
    filesz: u64,
    vaddr: u64,
    executable: bool,
}

/// What unwinding needs from one ELF file: its `PT_LOAD` headers (to place it in a process)
/// and copies of its unwind sections (not the whole file: executables can be large).
#[derive(Debug)]
struct ElfUnwindInfo {
    /// Executable segments first, so they win where file ranges overlap.
    loads: Vec<Load>,
    sections: ExplicitModuleSectionInfo<Bytes>,
}

impl ElfUnwindInfo {
    /// Reads the headers and the unwind sections of `path`; an error says why it cannot be
    /// unwound from its CFI (not an x86_64 ELF file, unreadable).
    fn load(path: &Path) -> Result<Self, String> {
        // Read through a cache of the parts asked for: binaries with debug info are large,
        // and only the headers and the unwind sections are needed.
        let file = fs::File::open(path).map_err(|err| format!("cannot open: {err}"))?;
        let data = ReadCache::new(file);
        let elf = object::File::parse(&data).map_err(|err| format!("not an object file: {err}"))?;
        if elf.format() != object::BinaryFormat::Elf
            || elf.architecture() != object::Architecture::X86_64
        {
            return Err(format!(
                "not an x86_64 ELF file ({:?}, {:?})",
                elf.format(),
                elf.architecture()
            ));
        }
        let mut loads: Vec<Load> = elf
            .segments()
            .map(|segment| {
                let (offset, filesz) = segment.file_range();
                let executable = matches!(
                    segment.flags(),
                    SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0
                );
                Load {
                    offset,
                    filesz,
                    vaddr: segment.address(),
                    executable,
                }
            })
            .collect();
        loads.sort_by_key(|load| !load.executable);
        let range = |name: &str| {
            elf.section_by_name(name)
                .map(|section| section.address()..section.address() + section.size())
        };
        let bytes = |name: &str| -> Option<Bytes> {
            let data = elf.section_by_name(name)?.uncompressed_data().ok()?;
            (!data.is_empty()).then(|| Bytes::from(&*data))
        };
        let sections = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: range(".text"),
            got_svma: range(".got"),
            eh_frame_svma: range(".eh_frame"),
            eh_frame: bytes(".eh_frame"),
            eh_frame_hdr_svma: range(".eh_frame_hdr"),
            eh_frame_hdr: bytes(".eh_frame_hdr"),
            debug_frame: bytes(".debug_frame"),
            ..Default::default()
        };
        Ok(Self { loads, sections })
    }

    /// The link-time address (SVMA) of a file offset, through the `PT_LOAD` covering it. A
    /// mapping starts at the page holding its segment's first byte, so the page before a
    /// segment that does not start on a page boundary (lld puts .text at offset 0x13270,
    /// mapped from 0x13000) counts as the segment's.
    fn svma(&self, file_offset: u64) -> Option<u64> {
        self.loads
            .iter()
            .find(|load| {
                file_offset >= load.offset & !(PAGE - 1)
                    && file_offset < load.offset.saturating_add(load.filesz)
            })
            .and_then(|load| {
                load.vaddr
                    .checked_sub(load.offset)?
                    .checked_add(file_offset)
            })
    }
}

/// Parsed unwind sections by file (failures too, so an unreadable file is tried once).
#[derive(Debug, Default)]
pub(super) struct UnwindSections {
    files: HashMap<PathBuf, Option<Arc<ElfUnwindInfo>>>,
}

impl UnwindSections {
    fn of(&mut self, path: &Path) -> Option<Arc<ElfUnwindInfo>> {
        self.files
            .entry(path.to_path_buf())
            .or_insert_with(|| {
                ElfUnwindInfo::load(path)
                    .inspect_err(|err| log::debug!("unwind: {}: {err}", path.display()))
                    .ok()
                    .map(Arc::new)
            })
            .clone()
    }

    /// An unwinder for a process whose executable mappings are `modules`.
    pub(super) fn unwinder_for(&mut self, modules: &ModuleMap) -> ProcessUnwinder {
        let mut unwinder = UnwinderX86_64::new();
        // One framehop module per file: its address range spans the file's executable
        // mappings, and its base is where the file's link-time address 0 landed.
        let mut by_file: Vec<(&Path, Range<u64>, u64, u64)> = Vec::new();
        for mapping in modules.mappings() {
            match by_file
                .iter_mut()
                .find(|(file, ..)| *file == mapping.file())
            {
                Some((_, range, ..)) => {
                    range.start = range.start.min(mapping.start);
                    range.end = range.end.max(mapping.end);
                }
                None => by_file.push((
                    mapping.file(),
                    mapping.start..mapping.end,
                    mapping.start,
                    mapping.file_offset,
                )),
            }
        }
        for (file, avma_range, start, file_offset) in by_file {
            let Some(info) = self.of(file) else {
                continue;
            };
            let Some(base_avma) = info
                .svma(file_offset)
                .and_then(|svma| start.checked_sub(svma))
            else {
                continue;
            };
            unwinder.add_module(Module::new(
                file.to_string_lossy().into_owned(),
                avma_range,
                base_avma,
                info.sections.clone(),
            ));
        }
        ProcessUnwinder {
            unwinder,
            caches: (0..RULE_CACHES).map(|_| CacheX86_64::new()).collect(),
        }
    }
}

/// Unwinds stacks of one process image (pid and exec generation).
pub(super) struct ProcessUnwinder {
    unwinder: UnwinderX86_64<Bytes>,
    /// Rule caches, chosen by address. framehop's cache keeps one rule per slot of 509
    /// (address modulo 509), and two frames of one stack that share a slot evict each other on
    /// every walk, each eviction costing a CFI evaluation: two per request of nginx's, a fifth
    /// of the tracer's CPU. Spreading addresses over several caches makes that rare.
    caches: Vec<CacheX86_64>,
}

/// Rule caches per process image (see `ProcessUnwinder::caches`).
const RULE_CACHES: usize = 8;

/// Which rule cache serves a lookup address: the one its slot number would not tell apart
/// from another address in the same slot.
fn cache_for(lookup_address: u64) -> usize {
    const FRAMEHOP_CACHE_SLOTS: u64 = 509;
    ((lookup_address / FRAMEHOP_CACHE_SLOTS) % RULE_CACHES as u64) as usize
}

/// What [`ProcessUnwinder::unwind`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Unwound {
    /// Innermost first.
    pub frames: Vec<u64>,
    /// True when the walk ended at the root of the stack (or at the frame limit), false
    /// when it stopped for want of stack memory or at an address that is not code.
    pub complete: bool,
    /// True when the walk ended at the stack's first frame (the thread's entry point), not
    /// at the frame limit: then `sp + stack_used` is where the thread's stack ends for every
    /// walk from it, since all of them pass through that first frame.
    pub reached_root: bool,
    /// Bytes of the copy, from `sp` up, that the walk needed (read up to).
    pub stack_used: usize,
    /// The return address `is_code` rejected, where the walk stopped at one.
    pub rejected: Option<u64>,
}

impl Unwound {
    /// What the walk found besides its frames (what `StackBases::observe` looks at), as a
    /// remembered walk keeps it.
    pub(super) fn without_frames(&self) -> Self {
        Self {
            frames: Vec::new(),
            ..*self
        }
    }
}

/// The registers at the event and the stack memory copied from `sp` up.
#[derive(Clone, Copy, Debug)]
pub(super) struct CopiedStack<'a> {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub bytes: &'a [u8],
}

impl ProcessUnwinder {
    /// The frames of `stack`, innermost first (the first is `ip`, the rest return
    /// addresses). Stops where the copy ends (a frame's data lies beyond it), at the root
    /// of the stack, at a return address `is_code` rejects, or after `max_frames`. Frames
    /// `is_trampoline` accepts are CPython's perf trampolines (see [`trampoline_rule`]);
    /// other code without CFI is unwound by its frame pointer. Every word read from the
    /// copy is appended to `reads` (address, value), in order, for `memo.rs`.
    pub(super) fn unwind(
        &mut self,
        stack: CopiedStack,
        is_code: impl Fn(u64) -> bool,
        mut is_trampoline: impl FnMut(u64) -> bool,
        max_frames: usize,
        reads: &mut Vec<(u64, u64)>,
    ) -> Unwound {
        let mut stack_used = 0;
        let mut read_stack = |address: u64| -> Result<u64, ()> {
            let index =
                usize::try_from(address.checked_sub(stack.sp).ok_or(())?).map_err(|_| ())?;
            let end = index.checked_add(8).ok_or(())?;
            let bytes = stack.bytes.get(index..end).ok_or(())?;
            stack_used = stack_used.max(end);
            let word = u64::from_le_bytes(bytes.try_into().map_err(|_| ())?);
            reads.push((address, word));
            Ok(word)
        };
        let mut regs = UnwindRegsX86_64::new(stack.ip, stack.sp, stack.bp);
        let mut frame = FrameAddress::InstructionPointer(stack.ip);
        let mut frames = vec![stack.ip];
        let mut complete = true;
        let mut reached_root = false;
        let mut rejected = None;
        while frames.len() < max_frames {
            let step = if is_trampoline(frame.address_for_lookup()) {
                trampoline_rule(&mut regs, &mut read_stack)
            } else {
                let cache = &mut self.caches[cache_for(frame.address_for_lookup())];
                self.unwinder
                    .unwind_frame(frame, &mut regs, cache, &mut read_stack)
            };
            match step {
                Ok(Some(return_address)) => {
                    match FrameAddress::from_return_address(return_address) {
                        Some(next) if is_code(return_address) => {
                            frames.push(return_address);
                            frame = next;
                        }
                        _ => {
                            rejected = Some(return_address);
                            complete = false;
                            break;
                        }
                    }
                }
                Ok(None) => {
                    reached_root = true;
                    break;
                }
                Err(err) => {
                    log::trace!("unwind stopped after {} frames: {err}", frames.len());
                    complete = false;
                    break;
                }
            }
        }
        Unwound {
            frames,
            complete,
            reached_root,
            stack_used,
            rejected,
        }
    }
}

/// Unwinds a frame of CPython's perf trampoline (`-X perf`, 3.12+), a copy per Python
/// function of `Python/asm_trampoline.S`, which has no CFI. At its return address the
/// trampoline has either padded the stack (`sub $8, %rsp; call *%rcx`: %rbp untouched) or
/// saved the frame pointer (`push %rbp; mov %rsp, %rbp; call *%rcx`: %rbp == %rsp); in both
/// the return address is at %rsp + 8 and the caller's %rsp is %rsp + 16.
fn trampoline_rule(
    regs: &mut UnwindRegsX86_64,
    read_stack: &mut impl FnMut(u64) -> Result<u64, ()>,
) -> Result<Option<u64>, framehop::Error> {
    let sp = regs.sp();
    let at = |offset: u64| {
        sp.checked_add(offset)
            .ok_or(framehop::Error::IntegerOverflow)
    };
    let slot = at(8)?;
    let return_address = read_stack(slot).map_err(|()| framehop::Error::CouldNotReadStack(slot))?;
    if regs.bp() == sp {
        let saved_bp = read_stack(sp).map_err(|()| framehop::Error::CouldNotReadStack(sp))?;
        regs.set_bp(saved_bp);
    }
    regs.set_sp(at(16)?);
    Ok(Some(return_address))
}

#[cfg(test)]
mod tests;
