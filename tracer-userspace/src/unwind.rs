//! Putting back the frame that the kernel's frame-pointer walk skips (x86_64 only).
//!
//! `bpf_get_stackid(.., BPF_F_USER_STACK)` starts at the user `ip` of the syscall and then
//! follows `rbp`. When the innermost function is a libc syscall wrapper without a frame pointer
//! (glibc's `accept4`, `open64`, ...), `rbp` still points at its caller's frame, so the first
//! return address the walk finds leads into the caller's *caller*: the stack comes out as
//! `[accept4, serve_forever, main]` instead of `[accept4, accept_connection, serve_forever,
//! main]`.
//!
//! The eBPF side therefore also captures the user stack pointer `sp` and the first bytes of the
//! user stack from `sp` up. [`LeafUnwinder`] reads the `.eh_frame` CFI of the module holding the
//! innermost `ip`: when the CFA there is `rsp + N` (no frame pointer at that point), the return
//! address sits at `CFA - 8` (the usual rule for the return-address column), inside the copied
//! bytes whenever `N` is small; `stacks` splices it in as frame 1. When the CFA is
//! `rbp`-based the function set up its own frame pointer and the kernel's walk was right.
//!
//! Stacks are often repaired after the process has exited, so [`ModuleMap`] snapshots its
//! executable file mappings while it lives; parsed CFI is cached per file path.

use std::{
    collections::HashMap,
    ffi::OsStr,
    fs, io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, RegisterRule, UnwindContext,
    UnwindSection, UnwindTableRow, X86_64,
};
use object::{Object, ObjectSection, ObjectSegment, ReadCache, SegmentFlags};

// ---------------------------------------------------------------------------------------------
// Process mappings
// ---------------------------------------------------------------------------------------------

/// One file-backed executable mapping of a process, from /proc/PID/maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
    /// The path as `/proc/PID/maps` shows it (without a trailing ` (deleted)`), in the mount
    /// namespace of the process.
    pub path: PathBuf,
}

/// A process's executable file mappings, captured while it lives so its stacks can be
/// symbolized and unwound after it exits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModuleMap {
    /// Sorted by `start`; mappings never overlap.
    mappings: Vec<Mapping>,
}

impl ModuleMap {
    /// Reads `/proc/PID/maps`; see [`ModuleMap::parse`] for what is kept.
    pub fn read(pid: u32) -> io::Result<Self> {
        fs::read(format!("/proc/{pid}/maps")).map(|bytes| Self::parse_bytes(&bytes))
    }

    /// Parses the text of a `/proc/PID/maps` file, keeping the mappings with `x` permission
    /// whose path starts with `/` (so not `[vdso]`, anonymous memory, ...). A trailing
    /// ` (deleted)` is stripped from the path. Malformed lines are skipped.
    pub fn parse(text: &str) -> Self {
        Self::parse_bytes(text.as_bytes())
    }

    /// [`ModuleMap::parse`] on raw bytes: paths need not be UTF-8.
    fn parse_bytes(bytes: &[u8]) -> Self {
        let mut mappings: Vec<Mapping> = bytes
            .split(|&b| b == b'\n')
            .filter_map(parse_maps_line)
            .collect();
        mappings.sort_by_key(|m| m.start);
        Self { mappings }
    }

    /// The mappings, sorted by start address.
    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    pub fn is_empty(&self) -> bool {
        self.mappings.is_empty()
    }

    /// The mapping containing `addr`.
    pub fn find(&self, addr: u64) -> Option<&Mapping> {
        let after = self.mappings.partition_point(|m| m.start <= addr);
        let mapping = self.mappings.get(after.checked_sub(1)?)?;
        (addr < mapping.end).then_some(mapping)
    }

    /// The file offset of addr in its module: addr - start + file_offset.
    pub fn file_offset(&self, addr: u64) -> Option<(&Mapping, u64)> {
        let mapping = self.find(addr)?;
        let offset = (addr - mapping.start).checked_add(mapping.file_offset)?;
        Some((mapping, offset))
    }
}

/// Takes the next space-separated field off the front of `rest`.
fn next_field<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let start = rest.iter().position(|&b| b != b' ')?;
    let trimmed = &rest[start..];
    let end = trimmed
        .iter()
        .position(|&b| b == b' ')
        .unwrap_or(trimmed.len());
    let (field, tail) = trimmed.split_at(end);
    *rest = tail;
    Some(field)
}

fn parse_hex(field: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(field).ok()?, 16).ok()
}

/// One line of `/proc/PID/maps`: `START-END PERMS OFFSET DEV INODE   PATH`, where `PATH` may
/// hold spaces and is padded on the left.
fn parse_maps_line(line: &[u8]) -> Option<Mapping> {
    let mut rest = line;
    let range = next_field(&mut rest)?;
    let perms = next_field(&mut rest)?;
    let offset = next_field(&mut rest)?;
    let _dev = next_field(&mut rest)?;
    let _inode = next_field(&mut rest)?;
    if perms.get(2) != Some(&b'x') {
        return None;
    }
    let start_path = rest.iter().position(|&b| b != b' ')?;
    let mut path = &rest[start_path..];
    if path.first() != Some(&b'/') {
        return None;
    }
    if let Some(stripped) = path.strip_suffix(b" (deleted)") {
        path = stripped;
    }
    let dash = range.iter().position(|&b| b == b'-')?;
    let start = parse_hex(&range[..dash])?;
    let end = parse_hex(&range[dash + 1..])?;
    if end <= start {
        return None;
    }
    Some(Mapping {
        start,
        end,
        file_offset: parse_hex(offset)?,
        path: PathBuf::from(OsStr::from_bytes(path)),
    })
}

// ---------------------------------------------------------------------------------------------
// CFI of one ELF file
// ---------------------------------------------------------------------------------------------

/// One `PT_LOAD` program header.
#[derive(Clone, Copy, Debug)]
struct Load {
    offset: u64,
    filesz: u64,
    vaddr: u64,
    executable: bool,
}

/// What unwinding needs from one ELF file: its `PT_LOAD` headers and copies of its
/// `.eh_frame` and `.eh_frame_hdr` sections (not the whole file: executables can be large).
#[derive(Debug)]
struct Module {
    /// Executable segments first, so they win where file ranges overlap.
    loads: Vec<Load>,
    eh_frame: Vec<u8>,
    eh_frame_addr: u64,
    /// `.eh_frame_hdr` and its address, when present.
    eh_frame_hdr: Option<(Vec<u8>, u64)>,
    text_addr: Option<u64>,
    got_addr: Option<u64>,
}

/// The rules of one row of the unwind table that matter here: the CFA, where the return
/// address is, and where the caller's %rbp is.
type Rules = (
    CfaRule<usize>,
    Option<RegisterRule<usize>>,
    Option<RegisterRule<usize>>,
);

fn rules_of<S: gimli::UnwindContextStorage<usize>>(row: &UnwindTableRow<usize, S>) -> Rules {
    (
        row.cfa().clone(),
        row.register(X86_64::RA),
        row.register(X86_64::RBP),
    )
}

/// Where one frame keeps what its caller needs, at one instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRule {
    /// The CFA is %rbp + `cfa_offset` when true, else %rsp + `cfa_offset`.
    pub cfa_from_rbp: bool,
    pub cfa_offset: i64,
    /// The return address is saved at CFA + `ra_offset`.
    pub ra_offset: i64,
    /// The caller's %rbp is saved at CFA + this, or None when the frame leaves %rbp alone.
    pub rbp_saved_at: Option<i64>,
}

impl FrameRule {
    /// A function right at its entry (or a frameless one that pushed nothing): return
    /// address at [rsp], %rbp untouched.
    pub const ENTRY: Self = Self {
        cfa_from_rbp: false,
        cfa_offset: 8,
        ra_offset: -8,
        rbp_saved_at: None,
    };
}

fn frame_rule_of((cfa, ra, rbp): &Rules) -> Result<FrameRule, String> {
    let (cfa_from_rbp, cfa_offset) = match *cfa {
        CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RSP => {
            (false, offset)
        }
        CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RBP => {
            (true, offset)
        }
        CfaRule::RegisterAndOffset { register, .. } => {
            let name = X86_64::register_name(register).unwrap_or("?");
            return Err(format!("CFA is based on {name}"));
        }
        CfaRule::Expression(_) => return Err("CFA is a DWARF expression".into()),
    };
    let ra_offset = match ra {
        Some(RegisterRule::Offset(offset)) => *offset,
        other => return Err(format!("unsupported return-address rule {other:?}")),
    };
    let rbp_saved_at = match rbp {
        Some(RegisterRule::Offset(offset)) => Some(*offset),
        None | Some(RegisterRule::SameValue | RegisterRule::Undefined) => None,
        Some(other) => return Err(format!("unsupported %rbp rule {other:?}")),
    };
    Ok(FrameRule {
        cfa_from_rbp,
        cfa_offset,
        ra_offset,
        rbp_saved_at,
    })
}

/// Walks frames through the copy of the stack taken at the event: from `ip` with the
/// registers `sp` and `bp`, reading saved return addresses and %rbp values from `stack`
/// (bytes from address `sp` up). `rule_at` gives the CFI rule at an instruction (None when
/// there is none). Stops at the first frame whose data lies outside the copy, whose rule is
/// unknown, or whose return address `is_code` rejects. Returns the frames, innermost first.
pub fn unwind_copied_stack(
    mut rule_at: impl FnMut(u64) -> Option<FrameRule>,
    is_code: impl Fn(u64) -> bool,
    ip: u64,
    (sp, bp): (u64, u64),
    stack: &[u8],
    max_frames: usize,
) -> Vec<u64> {
    let read = |address: u64| -> Option<u64> {
        let index = usize::try_from(address.checked_sub(sp)?).ok()?;
        let bytes = stack.get(index..index.checked_add(8)?)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    };
    let mut frames = vec![ip];
    let (mut ip, mut frame_sp, mut frame_bp) = (ip, sp, bp);
    while frames.len() < max_frames {
        // A return address points after its call: look up the call itself.
        let lookup = if frames.len() == 1 { ip } else { ip - 1 };
        let Some(rule) = rule_at(lookup) else {
            break;
        };
        let base = if rule.cfa_from_rbp {
            frame_bp
        } else {
            frame_sp
        };
        let Some(cfa) = base.checked_add_signed(rule.cfa_offset) else {
            break;
        };
        let Some(ret) = cfa.checked_add_signed(rule.ra_offset).and_then(read) else {
            break;
        };
        // A saved %rbp outside the copy is unknown (0): the return address still counts,
        // and a later %rbp-based frame will stop the walk.
        let caller_bp = match rule.rbp_saved_at {
            Some(offset) => cfa.checked_add_signed(offset).and_then(read).unwrap_or(0),
            None => frame_bp,
        };
        if ret == 0 || !is_code(ret) {
            break;
        }
        frames.push(ret);
        (ip, frame_sp, frame_bp) = (ret, cfa, caller_bp);
    }
    frames
}

impl Module {
    /// Reads the headers and the two unwind sections of `path`.
    fn load(path: &Path) -> Result<Self, String> {
        let file = fs::File::open(path).map_err(|err| format!("cannot open: {err}"))?;
        let cache = ReadCache::new(file);
        let elf =
            object::File::parse(&cache).map_err(|err| format!("not an object file: {err}"))?;
        if elf.format() != object::BinaryFormat::Elf
            || elf.architecture() != object::Architecture::X86_64
            || !elf.is_little_endian()
            || !elf.is_64()
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
        let section = |name: &str| -> Result<Option<(Vec<u8>, u64)>, String> {
            let Some(section) = elf.section_by_name(name) else {
                return Ok(None);
            };
            let data = section
                .data()
                .map_err(|err| format!("cannot read {name}: {err}"))?;
            Ok(Some((data.to_vec(), section.address())))
        };
        let (eh_frame, eh_frame_addr) = section(".eh_frame")?
            .filter(|(data, _)| !data.is_empty())
            .ok_or("no .eh_frame section")?;
        let eh_frame_hdr = section(".eh_frame_hdr")?.filter(|(data, _)| !data.is_empty());
        let address = |name: &str| elf.section_by_name(name).map(|section| section.address());
        Ok(Self {
            loads,
            eh_frame,
            eh_frame_addr,
            eh_frame_hdr,
            text_addr: address(".text"),
            got_addr: address(".got"),
        })
    }

    /// The link-time address (SVMA) of a file offset, through the `PT_LOAD` covering it.
    fn svma(&self, file_offset: u64) -> Option<u64> {
        self.loads
            .iter()
            .find(|load| file_offset >= load.offset && file_offset - load.offset < load.filesz)
            .and_then(|load| (file_offset - load.offset).checked_add(load.vaddr))
    }

    fn bases(&self) -> BaseAddresses {
        let mut bases = BaseAddresses::default().set_eh_frame(self.eh_frame_addr);
        if let Some((_, addr)) = self.eh_frame_hdr {
            bases = bases.set_eh_frame_hdr(addr);
        }
        if let Some(addr) = self.text_addr {
            bases = bases.set_text(addr);
        }
        if let Some(addr) = self.got_addr {
            bases = bases.set_got(addr);
        }
        bases
    }

    /// The CFA rule and return-address rule at `svma`, found through the `.eh_frame_hdr`
    /// search table when there is one, else by a linear search of `.eh_frame`.
    fn rules_at(&self, ctx: &mut UnwindContext<usize>, svma: u64) -> gimli::Result<Rules> {
        let bases = self.bases();
        let mut eh_frame = EhFrame::new(&self.eh_frame, LittleEndian);
        eh_frame.set_address_size(8);
        if let Some((hdr, _)) = &self.eh_frame_hdr {
            match EhFrameHdr::new(hdr, LittleEndian).parse(&bases, 8) {
                Ok(parsed) => {
                    if let Some(table) = parsed.table() {
                        match table
                            .unwind_info_for_address(
                                &eh_frame,
                                &bases,
                                ctx,
                                svma,
                                EhFrame::cie_from_offset,
                            )
                            .map(rules_of)
                        {
                            Ok(rules) => return Ok(rules),
                            Err(gimli::Error::NoUnwindInfoForAddress) => {
                                return Err(gimli::Error::NoUnwindInfoForAddress);
                            }
                            Err(err) => log::debug!(
                                "unwind: .eh_frame_hdr lookup of {svma:#x} failed ({err}), \
                                 searching .eh_frame"
                            ),
                        }
                    }
                }
                Err(err) => log::debug!("unwind: bad .eh_frame_hdr ({err}), searching .eh_frame"),
            }
        }
        eh_frame
            .unwind_info_for_address(&bases, ctx, svma, EhFrame::cie_from_offset)
            .map(rules_of)
    }
}

/// Where the CFA rules put the return address of a function whose frame starts at `sp`, read
/// from `stack` (bytes copied from the user stack starting at `sp`), with %rbp unknown. The
/// tests check the rule logic through it.
#[cfg(test)]
fn return_address(
    cfa: &CfaRule<usize>,
    ra: Option<&RegisterRule<usize>>,
    sp: u64,
    stack: &[u8],
) -> Result<u64, String> {
    let rule = frame_rule_of(&(cfa.clone(), ra.cloned(), None))?;
    unwind_copied_stack(|_| Some(rule), |_| true, 0x1000, (sp, 0), stack, 2)
        .get(1)
        .copied()
        .ok_or_else(|| "no return address in the copied stack".to_string())
}

// ---------------------------------------------------------------------------------------------
// Unwinding
// ---------------------------------------------------------------------------------------------

/// Whether the two bytes before `file_offset` in `path` are x86_64's `syscall` (0f 05).
fn follows_syscall(path: &Path, file_offset: u64) -> bool {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let Some(start) = file_offset.checked_sub(2) else {
        return false;
    };
    let mut bytes = [0u8; 2];
    fs::File::open(path)
        .and_then(|mut file| {
            file.seek(SeekFrom::Start(start))?;
            file.read_exact(&mut bytes)
        })
        .is_ok()
        && bytes == [0x0f, 0x05]
}

/// Reads the .eh_frame CFI rule at an instruction ([`LeafUnwinder::frame_rule`]), which
/// [`unwind_copied_stack`] follows frame after frame. Caches parsed CFI per file path
/// (failures too, so a missing file is tried once).
#[derive(Debug, Default)]
pub struct LeafUnwinder {
    modules: HashMap<PathBuf, Option<Module>>,
    ctx: UnwindContext<usize>,
}

impl LeafUnwinder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The CFI rule at `ip`, or None when `ip` is in no mapping, its module has no CFI for
    /// it, or the rule is of a kind we do not follow. It depends on `ip` alone, so callers
    /// may cache it.
    pub fn frame_rule(&mut self, maps: &ModuleMap, ip: u64) -> Option<FrameRule> {
        let (mapping, file_offset) = maps.file_offset(ip)?;
        if !self.modules.contains_key(&mapping.path) {
            let module = Module::load(&mapping.path)
                .inspect_err(|err| log::debug!("unwind: {}: {err}", mapping.path.display()))
                .ok();
            self.modules.insert(mapping.path.clone(), module);
        }
        let module = self.modules.get(&mapping.path)?.as_ref()?;
        let svma = module.svma(file_offset)?;
        let rules = match module.rules_at(&mut self.ctx, svma) {
            Ok(rules) => rules,
            // glibc leaves some syscall instructions outside any FDE on purpose (clone3: its
            // child must not be unwound), and syscall tracepoints report the address right
            // after one. There the function is in its entry state if it pushed nothing.
            Err(gimli::Error::NoUnwindInfoForAddress)
                if follows_syscall(&mapping.path, file_offset) =>
            {
                return Some(FrameRule::ENTRY);
            }
            Err(err) => {
                log::debug!("unwind: no CFI for ip {ip:#x}: {err}");
                return None;
            }
        };
        frame_rule_of(&rules)
            .inspect_err(|err| log::debug!("unwind: ip {ip:#x}: {err}"))
            .ok()
    }

    /// The return address into the caller of the innermost function, or None when the
    /// function keeps a frame pointer at `ip`, or the slot lies outside `stack` (bytes
    /// copied from the user stack starting at address `sp`). The tests check the CFI of
    /// real glibc functions through it; `stacks` walks all frames with
    /// [`unwind_copied_stack`].
    #[cfg(test)]
    pub fn caller_of_leaf(
        &mut self,
        maps: &ModuleMap,
        ip: u64,
        sp: u64,
        stack: &[u8],
    ) -> Option<u64> {
        maps.find(ip)?;
        let frames = unwind_copied_stack(
            |at| self.frame_rule(maps, at),
            |_| true,
            ip,
            (sp, 0),
            stack,
            2,
        );
        frames.get(1).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value no real stack would hold at offset `offset` of the synthetic stacks below.
    fn marker(offset: usize) -> u64 {
        0x5a5a_0000_0000_0000 | offset as u64
    }

    /// 64 bytes of synthetic stack whose 8-byte slot at offset `o` holds `marker(o)`.
    fn marked_stack() -> Vec<u8> {
        (0..64)
            .step_by(8)
            .flat_map(|o| marker(o).to_le_bytes())
            .collect()
    }

    const SP: u64 = 0x7000_0000_0000;

    fn own_maps() -> ModuleMap {
        ModuleMap::read(std::process::id()).expect("read own /proc/self/maps")
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

    /// Parses a literal /proc/PID/maps: keeps executable file mappings only, sorted, paths intact.
    #[test]
    fn parses_proc_maps() {
        let text = "\
7f1c2a228000-7f1c2a3bd000 r-xp 00028000 fe:01 1320 /usr/lib/x86_64-linux-gnu/libc.so.6
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 42   /srv/app/my server
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 42   /srv/app/my server
7f1c2a200000-7f1c2a228000 r--p 00000000 fe:01 1320 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a400000-7f1c2a401000 r-xp 00002000 00:01 77   /memfd:jit (deleted)
7f1c2a500000-7f1c2a501000 r-xp 00003000 fe:01 78   /tmp/old.so (deleted)
7f1c2a600000-7f1c2a621000 rw-p 00000000 00:00 0    [heap]
7ffd5a1f0000-7ffd5a1f2000 r-xp 00000000 00:00 0    [vdso]
7f1c2a700000-7f1c2a701000 r-xp 00000000 00:00 0 
garbage line
";
        let maps = ModuleMap::parse(text);
        let mapping = |start, end, file_offset, path: &str| Mapping {
            start,
            end,
            file_offset,
            path: PathBuf::from(path),
        };
        assert_eq!(
            maps.mappings(),
            &[
                mapping(0x55d0c0a01000, 0x55d0c0a02000, 0x1000, "/srv/app/my server"),
                mapping(
                    0x7f1c2a228000,
                    0x7f1c2a3bd000,
                    0x28000,
                    "/usr/lib/x86_64-linux-gnu/libc.so.6"
                ),
                mapping(0x7f1c2a400000, 0x7f1c2a401000, 0x2000, "/memfd:jit"),
                mapping(0x7f1c2a500000, 0x7f1c2a501000, 0x3000, "/tmp/old.so"),
            ]
        );
        assert_eq!(maps.find(0x55d0c0a00fff), None);
        assert_eq!(
            maps.find(0x55d0c0a01000).map(|m| m.file_offset),
            Some(0x1000)
        );
        assert_eq!(maps.find(0x55d0c0a02000), None);
        assert_eq!(maps.find(0x7ffd5a1f0000), None);
        assert_eq!(maps.find(0), None);
        let (libc, offset) = maps.file_offset(0x7f1c2a228123).unwrap();
        assert_eq!(libc.path, Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert_eq!(offset, 0x28123);
        assert!(ModuleMap::parse("").is_empty());
    }

    /// At the first instruction of libc's accept4 the return address is the word at sp.
    #[test]
    fn frameless_leaf_at_entry() {
        let maps = own_maps();
        let accept4 = libc_function(c"accept4");
        let libc = maps.find(accept4).expect("accept4 is in a file mapping");
        assert!(libc.path.to_string_lossy().contains("libc"), "{libc:?}");
        let mut stack = 0x1122_3344_5566_7788u64.to_le_bytes().to_vec();
        stack.extend_from_slice(&[0xee; 56]);
        let mut unwinder = LeafUnwinder::new();
        assert_eq!(
            unwinder.caller_of_leaf(&maps, accept4, SP, &stack),
            Some(0x1122_3344_5566_7788)
        );
        // Cached the second time round.
        assert_eq!(
            unwinder.caller_of_leaf(&maps, accept4, SP, &stack),
            Some(0x1122_3344_5566_7788)
        );
        // The slot must lie inside the copied bytes.
        assert_eq!(
            unwinder.caller_of_leaf(&maps, accept4, SP, &stack[..7]),
            None
        );
        assert_eq!(unwinder.caller_of_leaf(&maps, accept4, SP, &[]), None);
    }

    /// At (and right after) each `syscall` of accept4 the return address comes from the slot the
    /// wrapper's own stack adjustment (`sub $N,%rsp`, if any before it) pushed it to.
    #[test]
    fn frameless_leaf_at_syscall() {
        let maps = own_maps();
        let accept4 = libc_function(c"accept4");
        let libc = maps.find(accept4).expect("accept4 is in a file mapping");
        assert!(accept4 + 128 <= libc.end);
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
        assert!(
            !syscalls.is_empty(),
            "no syscall instruction in accept4: {code:02x?}"
        );
        let stack = marked_stack();
        let mut unwinder = LeafUnwinder::new();
        for &at in &syscalls {
            // `sub $imm8,%rsp` = 48 83 ec imm8.
            let adjust = code[..at]
                .windows(4)
                .rev()
                .find(|w| w[..3] == [0x48, 0x83, 0xec])
                .map_or(0, |w| usize::from(w[3]));
            assert!(adjust + 8 <= stack.len(), "frame of {adjust} bytes");
            // The kernel reports the ip after the 2-byte syscall instruction.
            for ip in [accept4 + at as u64, accept4 + at as u64 + 2] {
                assert_eq!(
                    unwinder.caller_of_leaf(&maps, ip, SP, &stack),
                    Some(marker(adjust)),
                    "ip accept4+{:#x}, syscall at +{at:#x}",
                    ip - accept4
                );
            }
        }
    }

    /// A function that set up a frame pointer yields None; before `mov %rsp,%rbp` it does not.
    #[test]
    fn frame_pointer_function() {
        let maps = own_maps();
        let function = tracer_unwind_test_fp as *const () as u64;
        assert!(maps.find(function).is_some());
        let stack = marked_stack();
        let mut unwinder = LeafUnwinder::new();
        // Entry: CFA = rsp+8, return address at sp.
        assert_eq!(
            unwinder.caller_of_leaf(&maps, function, SP, &stack),
            Some(marker(0))
        );
        // After `push %rbp`: CFA = rsp+16, return address at sp+8.
        assert_eq!(
            unwinder.caller_of_leaf(&maps, function + 1, SP, &stack),
            Some(marker(8))
        );
        // After `mov %rsp,%rbp`: CFA = rbp+16, the kernel's walk is right.
        assert_eq!(
            unwinder.caller_of_leaf(&maps, function + 4, SP, &stack),
            None
        );
        // After `pop %rbp`: back to rsp+8.
        assert_eq!(
            unwinder.caller_of_leaf(&maps, function + 6, SP, &stack),
            Some(marker(0))
        );
    }

    /// The linear search of .eh_frame finds the same rows as the .eh_frame_hdr table.
    #[test]
    fn linear_search_without_eh_frame_hdr() {
        let maps = own_maps();
        let accept4 = libc_function(c"accept4");
        let (libc, offset) = maps.file_offset(accept4).unwrap();
        let mut module = Module::load(&libc.path).unwrap();
        let svma = module.svma(offset).unwrap();
        let mut ctx = UnwindContext::new();
        let with_table = module.rules_at(&mut ctx, svma).unwrap();
        assert!(module.eh_frame_hdr.take().is_some());
        let linear = module.rules_at(&mut ctx, svma).unwrap();
        assert_eq!(with_table, linear);
        assert_eq!(
            linear.0,
            CfaRule::RegisterAndOffset {
                register: X86_64::RSP,
                offset: 8
            }
        );
        assert_eq!(linear.1, Some(RegisterRule::Offset(-8)));
    }

    /// Addresses outside any file mapping, or in files without usable CFI, give None.
    #[test]
    fn unknown_addresses() {
        let maps = own_maps();
        let stack = marked_stack();
        let mut unwinder = LeafUnwinder::new();
        assert_eq!(unwinder.caller_of_leaf(&maps, 0x10, SP, &stack), None);
        assert_eq!(
            unwinder.caller_of_leaf(&ModuleMap::default(), 0x10, SP, &stack),
            None
        );
        let missing = ModuleMap::parse("1000-2000 r-xp 00000000 fe:01 1 /nonexistent/lib.so\n");
        assert_eq!(unwinder.caller_of_leaf(&missing, 0x1000, SP, &stack), None);
        let not_elf = ModuleMap::parse("1000-2000 r-xp 00000000 fe:01 1 /proc/self/maps\n");
        assert_eq!(unwinder.caller_of_leaf(&not_elf, 0x1000, SP, &stack), None);
    }

    /// Rules other than rsp+N with the return address at an offset from the CFA give None.
    #[test]
    fn return_address_rules() {
        let stack = marked_stack();
        let rsp = |offset| CfaRule::RegisterAndOffset {
            register: X86_64::RSP,
            offset,
        };
        let ra = RegisterRule::Offset(-8);
        assert_eq!(
            return_address(&rsp(8), Some(&ra), SP, &stack),
            Ok(marker(0))
        );
        assert_eq!(
            return_address(&rsp(64), Some(&ra), SP, &stack),
            Ok(marker(56))
        );
        assert!(return_address(&rsp(72), Some(&ra), SP, &stack).is_err());
        assert!(return_address(&rsp(0), Some(&ra), SP, &stack).is_err());
        assert!(return_address(&rsp(i64::MAX), Some(&ra), u64::MAX, &stack).is_err());
        let rbp = CfaRule::RegisterAndOffset {
            register: X86_64::RBP,
            offset: 16,
        };
        assert!(return_address(&rbp, Some(&ra), SP, &stack).is_err());
        assert!(return_address(&rsp(8), None, SP, &stack).is_err());
        assert!(return_address(&rsp(8), Some(&RegisterRule::Undefined), SP, &stack).is_err());
        assert!(return_address(&rsp(8), Some(&ra), SP, &[0; 8]).is_err());
    }

    /// At accept4's entry nothing is pushed: the rule is the entry rule; an address outside
    /// every mapping has none.
    #[test]
    fn frame_rule_at_entry() {
        let maps = own_maps();
        let mut unwinder = LeafUnwinder::new();
        let accept4 = libc_function(c"accept4");
        assert_eq!(unwinder.frame_rule(&maps, accept4), Some(FrameRule::ENTRY));
        assert_eq!(unwinder.frame_rule(&maps, 0x10), None);
    }

    /// Frames are walked through the copy: a frameless leaf, then a function that saved the
    /// caller's %rbp, then ones whose CFA is %rbp-based; the walk stops where the copy ends.
    #[test]
    fn unwinds_several_frames_through_the_copy() {
        const BASE: u64 = 0x7000;
        let mut stack = vec![0u8; 96];
        let mut put = |at: u64, value: u64| {
            let i = (at - BASE) as usize;
            stack[i..i + 8].copy_from_slice(&value.to_le_bytes());
        };
        // leaf at 0x100: return address at [sp] -> 0x201 ("middle").
        put(BASE, 0x201);
        // middle: CFA = rsp+32 = BASE+40; saved %rbp at CFA-16, return address at CFA-8.
        put(BASE + 24, 0x7050);
        put(BASE + 32, 0x301);
        // outer keeps a frame pointer (0x7050): CFA = rbp+16; caller's rbp at CFA-16.
        put(0x7050, 0x7080);
        put(0x7058, 0x401);
        let rule_at = |ip: u64| match ip {
            0x100 => Some(FrameRule::ENTRY),
            0x200 => Some(FrameRule {
                cfa_from_rbp: false,
                cfa_offset: 32,
                ra_offset: -8,
                rbp_saved_at: Some(-16),
            }),
            0x300 | 0x400 => Some(FrameRule {
                cfa_from_rbp: true,
                cfa_offset: 16,
                ra_offset: -8,
                rbp_saved_at: Some(-16),
            }),
            _ => None,
        };
        let frames = unwind_copied_stack(rule_at, |_| true, 0x100, (BASE, 0xdead), &stack, 16);
        // The frame after 0x401 needs memory at 0x7080.., past the 96 copied bytes.
        assert_eq!(frames, vec![0x100, 0x201, 0x301, 0x401]);
        let rejected =
            unwind_copied_stack(rule_at, |ip| ip != 0x301, 0x100, (BASE, 0xdead), &stack, 16);
        assert_eq!(rejected, vec![0x100, 0x201]);
    }
}
