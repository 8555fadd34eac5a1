//! Unwinding real machine code and stacks: see each test's doc line.

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
    // SAFETY: dlsym only reads the NUL-terminated name; a null handle searches the global scope.
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
        .unwind(
            stack,
            |ip| maps.find(ip).is_some(),
            |_| false,
            2,
            &mut Vec::new(),
        )
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

/// Through a CPython perf trampoline (`-X perf`: anonymous code without CFI, between two
/// frames of the interpreter) in both of its shapes: padded (%rbp untouched, here the frame
/// pointer of the function below) and frame-pointer saving (%rbp == %rsp at the call). The
/// frame-pointer fallback framehop would apply gets the padded one wrong.
#[test]
fn through_a_cpython_perf_trampoline() {
    // SAFETY: a fresh anonymous mapping, never executed; unmapped below.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED);
    let maps = own_maps();
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(page, 4096) };
    let trampoline = page as u64 + 0x40;
    assert!(maps.is_anonymous_code(trampoline));
    let accept4 = libc_function(c"accept4");
    // Returns into the trampoline after its `call *%rcx`, and into the frame-pointer function
    // (at its `popq %rbp`, where CFA = %rbp + 16).
    let in_trampoline = trampoline + 6;
    let in_fp = tracer_unwind_test_fp as *const () as u64 + 6;
    let walk = |bp: u64, second: u64, is_trampoline: bool| {
        let stack = words(&[in_trampoline, second, in_fp, 0, accept4 + 1]);
        let mut unwinder = UnwindSections::default().unwinder_for(&maps);
        let stack = CopiedStack {
            ip: accept4,
            sp: SP,
            bp,
            bytes: &stack,
        };
        let in_it = |ip: u64| is_trampoline && (trampoline..trampoline + 11).contains(&ip);
        unwinder
            .unwind(stack, |ip| maps.is_code(ip), in_it, 4, &mut Vec::new())
            .frames
    };
    let expected = vec![accept4, in_trampoline, in_fp, accept4 + 1];
    // Padded: %rbp is the function's below, pointing at its saved %rbp (SP + 24).
    assert_eq!(walk(SP + 24, 0xdead, true), expected);
    // Saving: %rbp is the trampoline's own frame (SP + 8), holding the function's %rbp.
    assert_eq!(walk(SP + 8, SP + 24, true), expected);
    // Unwound by frame pointer instead, the padded one skips the function below.
    assert_ne!(walk(SP + 24, 0xdead, false), expected);
}
