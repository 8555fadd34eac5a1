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
pub struct UnwindSections {
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
    pub fn unwinder_for(&mut self, modules: &ModuleMap) -> ProcessUnwinder {
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
pub struct ProcessUnwinder {
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
pub struct Unwound {
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
}

/// The registers at the event and the stack memory copied from `sp` up.
#[derive(Clone, Copy, Debug)]
pub struct CopiedStack<'a> {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub bytes: &'a [u8],
}

impl ProcessUnwinder {
    /// The frames of `stack`, innermost first (the first is `ip`, the rest return
    /// addresses). Stops where the copy ends (a frame's data lies beyond it), at the root
    /// of the stack, at a return address `is_code` rejects, or after `max_frames`.
    pub fn unwind(
        &mut self,
        stack: CopiedStack,
        is_code: impl Fn(u64) -> bool,
        max_frames: usize,
    ) -> Unwound {
        let mut stack_used = 0;
        let mut read_stack = |address: u64| -> Result<u64, ()> {
            let index =
                usize::try_from(address.checked_sub(stack.sp).ok_or(())?).map_err(|_| ())?;
            let end = index.checked_add(8).ok_or(())?;
            let bytes = stack.bytes.get(index..end).ok_or(())?;
            stack_used = stack_used.max(end);
            Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
        };
        let mut regs = UnwindRegsX86_64::new(stack.ip, stack.sp, stack.bp);
        let mut frame = FrameAddress::InstructionPointer(stack.ip);
        let mut frames = vec![stack.ip];
        let mut complete = true;
        let mut reached_root = false;
        while frames.len() < max_frames {
            let cache = &mut self.caches[cache_for(frame.address_for_lookup())];
            match self
                .unwinder
                .unwind_frame(frame, &mut regs, cache, &mut read_stack)
            {
                Ok(Some(return_address)) => {
                    match FrameAddress::from_return_address(return_address) {
                        Some(next) if is_code(return_address) => {
                            frames.push(return_address);
                            frame = next;
                        }
                        _ => {
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stacks::modules::ModuleFiles;

    const SP: u64 = 0x7000_0000_0000;

    fn own_maps() -> ModuleMap {
        ModuleFiles::default()
            .read(std::process::id())
            .expect("read own /proc/self/maps")
    }

    /// The address of a libc function, as the dynamic linker resolves it.
    fn libc_function(name: &std::ffi::CStr) -> u64 {
        // RTLD_DEFAULT is a null handle on glibc.
        let addr = unsafe { libc::dlsym(std::ptr::null_mut(), name.as_ptr()) };
        assert!(!addr.is_null(), "dlsym({name:?}) failed");
        addr as u64
    }

    // A function with a frame pointer and CFI, in this test binary.
    std::arch::global_asm!(
        ".globl tracer_unwind_test_fp",
        ".type tracer_unwind_test_fp, @function",
        "tracer_unwind_test_fp:",
        ".cfi_startproc",
        "pushq %rbp", // 1 byte
        ".cfi_def_cfa_offset 16",
        ".cfi_offset %rbp, -16",
        "movq %rsp, %rbp", // 3 bytes
        ".cfi_def_cfa_register %rbp",
        "nop",
        "popq %rbp",
        ".cfi_def_cfa %rsp, 8",
        "ret",
        ".cfi_endproc",
        ".size tracer_unwind_test_fp, . - tracer_unwind_test_fp",
        options(att_syntax)
    );

    unsafe extern "C" {
        fn tracer_unwind_test_fp();
    }

    /// 8-byte little-endian words as stack bytes.
    fn words(values: &[u64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn unwind(maps: &ModuleMap, ip: u64, bp: u64, bytes: &[u8]) -> Vec<u64> {
        let mut unwinder = UnwindSections::default().unwinder_for(maps);
        let stack = CopiedStack {
            ip,
            sp: SP,
            bp,
            bytes,
        };
        unwinder
            .unwind(stack, |ip| maps.find(ip).is_some(), 2)
            .frames
    }

    /// At the first instruction of libc's accept4 (no frame, CFI says CFA = rsp+8) the caller
    /// is the word at sp, whatever %rbp holds; a copy too short to hold it gives no caller.
    #[test]
    fn frameless_leaf_at_entry() {
        let maps = own_maps();
        let accept4 = libc_function(c"accept4");
        let caller = tracer_unwind_test_fp as *const () as u64 + 6;
        let stack = words(&[caller, 0]);
        assert_eq!(
            unwind(&maps, accept4, 0xdead, &stack),
            vec![accept4, caller]
        );
        assert_eq!(unwind(&maps, accept4, 0xdead, &stack[..7]), vec![accept4]);
    }

    /// At (and right after) each `syscall` instruction of accept4, where the kernel reports
    /// the user ip, the caller comes from the slot the wrapper's own stack adjustment (`sub
    /// $N,%rsp`, if any before it) pushed it to, whatever %rbp holds.
    #[test]
    fn frameless_leaf_at_syscall() {
        let maps = own_maps();
        let accept4 = libc_function(c"accept4");
        let libc = maps.find(accept4).expect("accept4 is in a file mapping");
        assert!(accept4 + 128 <= libc.end);
        // SAFETY: 128 bytes of accept4's code, inside its executable mapping (checked above).
        let code = unsafe { std::slice::from_raw_parts(accept4 as *const u8, 128) };
        // `mov $SYS_accept4,%eax; syscall`, as in glibc's wrappers.
        let mut mov_syscall = vec![0xb8];
        mov_syscall.extend_from_slice(&(libc::SYS_accept4 as u32).to_le_bytes());
        mov_syscall.extend_from_slice(&[0x0f, 0x05]);
        let syscalls: Vec<usize> = code
            .windows(mov_syscall.len())
            .enumerate()
            .filter(|(_, window)| *window == mov_syscall.as_slice())
            .map(|(at, _)| at + 5)
            .collect();
        assert!(!syscalls.is_empty(), "no syscall in accept4: {code:02x?}");
        let caller = tracer_unwind_test_fp as *const () as u64 + 6;
        for &at in &syscalls {
            // `sub $imm8,%rsp` = 48 83 ec imm8.
            let adjust = code[..at]
                .windows(4)
                .rev()
                .find(|w| w[..3] == [0x48, 0x83, 0xec])
                .map_or(0, |w| usize::from(w[3]));
            let mut stack = vec![0u8; adjust];
            stack.extend_from_slice(&words(&[caller, 0]));
            for ip in [accept4 + at as u64, accept4 + at as u64 + 2] {
                assert_eq!(
                    unwind(&maps, ip, 0xdead, &stack),
                    vec![ip, caller],
                    "ip accept4+{:#x}, syscall at +{at:#x}",
                    ip - accept4
                );
            }
        }
    }

    /// Inside a function that keeps a frame pointer the caller comes through %rbp; before
    /// `push %rbp` and after `pop %rbp` from [rsp] (CFI tells the three apart).
    #[test]
    fn frame_pointer_function() {
        let maps = own_maps();
        let function = tracer_unwind_test_fp as *const () as u64;
        let caller = libc_function(c"accept4") + 1;
        // [sp] = caller at entry; after the push, [sp] = saved rbp, [sp+8] = caller.
        let at_entry = words(&[caller, 0]);
        let pushed = words(&[SP + 64, caller]);
        assert_eq!(
            unwind(&maps, function, 0, &at_entry),
            vec![function, caller]
        );
        assert_eq!(
            unwind(&maps, function + 1, 0, &pushed),
            vec![function + 1, caller]
        );
        // After `mov %rsp,%rbp`: CFA = rbp+16, so the walk follows %rbp = sp.
        assert_eq!(
            unwind(&maps, function + 4, SP, &pushed),
            vec![function + 4, caller]
        );
        assert_eq!(unwind(&maps, function + 6, 0, &at_entry)[1], caller);
    }

    /// A mapping that starts on the page before its segment (the segment's file offset is not
    /// page-aligned) is placed by the segment's own offset-to-address difference.
    #[test]
    fn places_segments_that_start_mid_page() {
        let info = ElfUnwindInfo {
            loads: vec![
                Load {
                    offset: 0x13270,
                    filesz: 0x3e1a0,
                    vaddr: 0x14270,
                    executable: true,
                },
                Load {
                    offset: 0,
                    filesz: 0x13268,
                    vaddr: 0,
                    executable: false,
                },
            ],
            sections: ExplicitModuleSectionInfo::default(),
        };
        assert_eq!(info.svma(0x13000), Some(0x14000));
        assert_eq!(info.svma(0x13270), Some(0x14270));
        assert_eq!(info.svma(0x1000), Some(0x1000));
        assert_eq!(info.svma(0x60000), None);
    }

    /// Return addresses outside every executable mapping end the walk; an ip in no module
    /// (or in one whose file cannot be read) is still the first frame, and without CFI the
    /// walk falls back to the frame pointer, which here is 0 and ends it.
    #[test]
    fn stops_at_non_code() {
        let maps = own_maps();
        let accept4 = libc_function(c"accept4");
        assert_eq!(unwind(&maps, accept4, 0, &words(&[0x10])), vec![accept4]);
        let missing = crate::stacks::modules::ModuleMap::parse(
            "1000-2000 r-xp 00000000 fe:01 1 /nonexistent/lib.so\n",
        );
        assert_eq!(unwind(&missing, 0x1000, 0, &words(&[0x1100])), vec![0x1000]);
        assert_eq!(unwind(&ModuleMap::default(), 0x10, 0, &[]), vec![0x10]);
    }
}
