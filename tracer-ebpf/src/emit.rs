//! Small pieces every probe uses: the follow check, tracepoint field reads, event headers.

use aya_ebpf::{
    EbpfContext,
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_current_task_btf, bpf_probe_read_user, bpf_task_pt_regs},
    },
    programs::{TracePointContext, tracing::StackIdContext},
};
use aya_log_ebpf::debug;
use tracer_common::{EventHeader, EventKind, FIELD_ABSENT, NO_STACK, STACK_PAGE_BYTES, StackRegs};

use crate::{
    clock::event_time_ns,
    followed, held,
    maps::{STACK_BASES, STACK_COPY_BYTES, STACKS, kernel_offset},
    memo,
};

/// `BPF_F_USER_STACK` from linux/bpf.h.
const BPF_F_USER_STACK: u64 = 1 << 8;

/// The calling task as (tgid, tid).
#[derive(Clone, Copy)]
pub(crate) struct Caller {
    pub tgid: u32,
    pub tid: u32,
}

impl Caller {
    #[inline(always)]
    pub(crate) fn current() -> Self {
        let pid_tgid = bpf_get_current_pid_tgid();
        Self {
            tgid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
        }
    }

    /// The caller, if its process is followed (after sending what its process held back,
    /// see `held.rs`: the caller's event comes after it).
    #[inline(always)]
    pub(crate) fn followed() -> Option<Self> {
        let caller = Self::current();
        caller.is_followed().then_some(caller)
    }

    /// Whether the caller's process is followed; if so, what it held back is sent first.
    #[inline(always)]
    pub(crate) fn is_followed(&self) -> bool {
        let followed = self.is_followed_leaving_held();
        if followed {
            held::flush(self.tgid, true);
        }
        followed
    }

    /// [`Self::is_followed`] for the two programs that deal with the held open themselves:
    /// file opens, which hold the next one, and close, which may pair with it.
    #[inline(always)]
    pub(crate) fn is_followed_leaving_held(&self) -> bool {
        followed::is_followed(self.tgid)
    }

    #[inline(always)]
    pub(crate) fn header(&self, kind: EventKind, stack_id: i32) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            tgid: self.tgid,
            tid: self.tid,
            stack_id,
            timestamp_ns: event_time_ns(),
        }
    }
}

/// Where the first field of every syscall tracepoint's record is: a `sys_enter_*` record's
/// first argument, a `sys_exit_*` record's `ret` (after `struct trace_entry` and the syscall
/// number: kernel/trace/trace_syscalls.c, `struct syscall_trace_enter` / `_exit`).
const SYSCALL_FIRST_FIELD: u32 = 16;

/// Reads a syscall argument (always 8 bytes wide in `sys_enter_*` records) or `ret`.
/// A field this kernel does not have reads as 0.
///
/// The first field, the one hot programs read (close's descriptor, every exit's result), is
/// loaded directly from the record when this kernel's format puts it where it always has
/// been: the offset is a load-time constant, so the verifier keeps only one of the two
/// branches, and a direct load costs one instruction where the helper costs a call.
#[inline(always)]
pub(crate) fn read_u64(ctx: &TracePointContext, offset: u32) -> u64 {
    if offset == SYSCALL_FIRST_FIELD {
        // SAFETY: a tracepoint program may load its record's words at constant offsets (the
        // verifier checks them); the format says an 8-byte field is there.
        return unsafe {
            core::ptr::read_volatile(
                ctx.as_ptr()
                    .cast::<u8>()
                    .add(SYSCALL_FIRST_FIELD as usize)
                    .cast::<u64>(),
            )
        };
    }
    if offset == FIELD_ABSENT {
        return 0;
    }
    // SAFETY: the offset comes from this kernel's tracepoint format.
    unsafe { ctx.read_at::<u64>(offset as usize) }.unwrap_or(0)
}

#[inline(always)]
pub(crate) fn read_u32(ctx: &TracePointContext, offset: u32) -> Option<u32> {
    if offset == FIELD_ABSENT {
        return None;
    }
    // SAFETY: as above.
    unsafe { ctx.read_at::<u32>(offset as usize) }.ok()
}

#[inline(always)]
pub(crate) fn read_u16(ctx: &TracePointContext, offset: u32) -> Option<u16> {
    if offset == FIELD_ABSENT {
        return None;
    }
    // SAFETY: as above.
    unsafe { ctx.read_at::<u16>(offset as usize) }.ok()
}

#[inline(always)]
pub(crate) fn read_u8(ctx: &TracePointContext, offset: u32) -> Option<u8> {
    if offset == FIELD_ABSENT {
        return None;
    }
    // SAFETY: as above.
    unsafe { ctx.read_at::<u8>(offset as usize) }.ok()
}

/// Id of the current user stack in STACKS, or [`NO_STACK`].
#[inline(always)]
pub(crate) fn user_stack_id<C: StackIdContext>(ctx: &C) -> i32 {
    ctx.get_stackid(&STACKS, BPF_F_USER_STACK)
        .map(|id| id as i32)
        .unwrap_or(NO_STACK)
}

/// The stack of an event being built in a scratch record: the registers, and either the
/// handle of a walk userspace made before (see `memo.rs`: nothing to send but the handle) or
/// the copy (see [`copy_stack_top`]) with the kernel's frame-pointer walk as a stack id
/// unless the copy holds the whole stack. Returns (bytes to send, stack id).
///
/// # Safety
/// `regs` and `bytes` must point at writable memory (a per-CPU scratch record).
#[inline(always)]
pub(crate) unsafe fn capture_stack<C: StackIdContext, const N: usize>(
    ctx: &C,
    caller: Caller,
    start: StackStart,
    regs: *mut StackRegs,
    bytes: *mut [u8; N],
) -> (u32, i32) {
    // SAFETY: passed on from the caller.
    let Some(start) = (unsafe { stack_registers(ctx, caller, start, regs) }) else {
        return (0, user_stack_id(ctx));
    };
    // SAFETY: a plain read of a load-time constant.
    let wanted = unsafe { core::ptr::read_volatile(&raw const STACK_COPY_BYTES) }.min(N as u64);
    if wanted == 0 {
        return (0, user_stack_id(ctx));
    }
    // SAFETY: `bytes` is writable (the caller's contract).
    if let Some(handle) = unsafe { memo::remembered(caller.tgid, start, bytes, wanted) } {
        // SAFETY: passed on from the caller.
        unsafe { (*regs).memo = handle };
        return (0, NO_STACK);
    }
    // SAFETY: passed on from the caller.
    let (copied, whole_stack) = unsafe { copy_stack_top(ctx, caller, start, regs, bytes, wanted) };
    let stack_id = if whole_stack {
        NO_STACK
    } else {
        user_stack_id(ctx)
    };
    (copied, stack_id)
}

/// Offsets of the user stack pointer, frame pointer and instruction pointer in
/// `struct pt_regs` (arch/*/include/asm/ptrace.h): x86_64 `sp`, `bp`, `ip`; arm64 `sp`,
/// `regs[29]`, `pc`.
#[cfg(bpf_target_arch = "x86_64")]
const PT_REGS_SP_BP_IP: Option<(usize, usize, usize)> = Some((19 * 8, 4 * 8, 16 * 8));
#[cfg(bpf_target_arch = "aarch64")]
const PT_REGS_SP_BP_IP: Option<(usize, usize, usize)> = Some((31 * 8, 29 * 8, 32 * 8));
#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
const PT_REGS_SP_BP_IP: Option<(usize, usize, usize)> = None;

/// Offsets in `struct pt_regs` of the syscall number and the six syscall arguments:
/// x86_64 `orig_ax` and `di, si, dx, r10, r8, r9`; arm64 `syscallno` and `orig_x0, x1..x5`
/// (x0 itself holds the return value by the time the syscall exits).
#[cfg(bpf_target_arch = "x86_64")]
const PT_REGS_SYSCALL: Option<(usize, [usize; 6])> =
    Some((15 * 8, [14 * 8, 13 * 8, 12 * 8, 7 * 8, 9 * 8, 8 * 8]));
#[cfg(bpf_target_arch = "aarch64")]
const PT_REGS_SYSCALL: Option<(usize, [usize; 6])> = Some((35 * 8, [34 * 8, 8, 16, 24, 32, 40]));
#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
const PT_REGS_SYSCALL: Option<(usize, [usize; 6])> = None;

/// The syscall the calling task is in, as it made it: its number and six arguments, from the
/// user registers the kernel saved when the syscall was entered. They are still unchanged
/// when the syscall exits, so exit probes read the arguments themselves: no enter probe, no
/// map to carry them across, and a call begun before the tracer attached has them too.
#[derive(Clone, Copy)]
pub(crate) struct SyscallRegs {
    pub nr: u32,
    pub args: [u64; 6],
    /// Where the caller's stack is, read from the same registers ([`StackStart::UNKNOWN`]
    /// on an architecture whose layout is not known here): a probe that copies the stack
    /// too passes it to [`capture_stack`], which then does not ask for the registers again.
    pub stack_start: StackStart,
}

/// The user stack pointer, frame pointer and instruction pointer the calling thread had when
/// it entered the kernel: where a walk of its stack starts.
#[derive(Clone, Copy)]
pub(crate) struct StackStart {
    pub sp: u64,
    pub bp: u64,
    pub ip: u64,
}

impl StackStart {
    /// Not read: the stack copy reads the registers itself. (An `Option` here made the
    /// programs' stack layout trip a verifier bug of Linux 6.18: "stack slot 19, total
    /// slots 18".)
    pub(crate) const UNKNOWN: Self = Self {
        sp: 0,
        bp: 0,
        ip: 0,
    };

    /// Read from the saved user registers.
    ///
    /// # Safety
    /// `pt_regs` must be what `bpf_task_pt_regs` returned for the current task, not null.
    #[inline(always)]
    unsafe fn from_pt_regs(pt_regs: *const u8) -> Option<Self> {
        let (sp_offset, bp_offset, ip_offset) = PT_REGS_SP_BP_IP?;
        // Direct loads: the helper returns a pointer the verifier knows as `struct pt_regs`,
        // so these are checked against its layout and cost a load each, not a helper call.
        // SAFETY: as the function's contract says.
        unsafe {
            let load = |offset: usize| core::ptr::read_volatile(pt_regs.add(offset).cast::<u64>());
            Some(Self {
                sp: load(sp_offset),
                bp: load(bp_offset),
                ip: load(ip_offset),
            })
        }
    }

    /// Read from the current task's saved user registers.
    #[inline(always)]
    fn current() -> Option<Self> {
        // SAFETY: `current_pt_regs` returns what the contract asks for.
        unsafe { Self::from_pt_regs(current_pt_regs()?) }
    }
}

/// The current task's saved user registers: a pointer the verifier types as `struct
/// pt_regs`, so each load through it is checked against that layout and costs a load, not a
/// helper call.
#[inline(always)]
fn current_pt_regs() -> Option<*const u8> {
    // SAFETY: plain helper calls on the current task.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    (!regs.is_null()).then_some(regs)
}

impl SyscallRegs {
    #[inline(always)]
    pub(crate) fn current() -> Option<Self> {
        let (nr_offset, arg_offsets) = PT_REGS_SYSCALL?;
        let regs = current_pt_regs()?;
        // SAFETY: BTF-typed loads through the saved registers (`current_pt_regs`).
        unsafe {
            let load = |offset: usize| core::ptr::read_volatile(regs.add(offset).cast::<u64>());
            Some(Self {
                // `orig_ax` is -1 outside a syscall; arm64's `syscallno` is 32 bits wide.
                nr: core::ptr::read_volatile(regs.add(nr_offset).cast::<u32>()),
                args: [
                    load(arg_offsets[0]),
                    load(arg_offsets[1]),
                    load(arg_offsets[2]),
                    load(arg_offsets[3]),
                    load(arg_offsets[4]),
                    load(arg_offsets[5]),
                ],
                stack_start: StackStart::from_pt_regs(regs).unwrap_or(StackStart::UNKNOWN),
            })
        }
    }
}

/// Where the calling process's main thread's stack began at exec (`mm->start_stack`, the
/// address of `argc`, above every frame), or `None` when this kernel's layout is unknown.
///
/// # Safety
/// `task` must be the current task as `bpf_get_current_task_btf` returns it: the loads are
/// BTF-typed, checked by the verifier against the struct's layout at the offsets userspace
/// wrote (constants to it), and a fault reads as zero.
#[inline(always)]
unsafe fn main_stack_start(task: *const u8) -> Option<u64> {
    let task_mm = kernel_offset!(task_mm);
    let mm_start_stack = kernel_offset!(mm_start_stack);
    if task_mm == FIELD_ABSENT || mm_start_stack == FIELD_ABSENT {
        return None;
    }
    // SAFETY: as the function's contract says.
    unsafe {
        let mm = core::ptr::read_volatile(task.add(task_mm as usize).cast::<*const u8>());
        if mm.is_null() {
            return None;
        }
        let start = core::ptr::read_volatile(mm.add(mm_start_stack as usize).cast::<u64>());
        (start != 0).then_some(start)
    }
}

/// Writes where the walk starts into `regs` (`start`, or read from the saved registers when
/// it is [`StackStart::UNKNOWN`]), with no copy and no handle yet; `None` (and `regs.sp` 0)
/// when the registers cannot be read.
///
/// # Safety
/// `regs` must point at writable memory (a per-CPU scratch record).
#[inline(always)]
unsafe fn stack_registers<C: StackIdContext>(
    ctx: &C,
    caller: Caller,
    start: StackStart,
    regs: *mut StackRegs,
) -> Option<StackStart> {
    // SAFETY: as the function's contract says.
    unsafe {
        // Volatile, one field at a time: plain stores are merged into a call to the
        // linker's memset, a byte-at-a-time loop (32 iterations on every event).
        core::ptr::write_volatile(&raw mut (*regs).sp, 0);
        core::ptr::write_volatile(&raw mut (*regs).bp, 0);
        core::ptr::write_volatile(&raw mut (*regs).ip, 0);
        core::ptr::write_volatile(&raw mut (*regs).len, 0);
        core::ptr::write_volatile(&raw mut (*regs).memo, 0);
        let start = if start.sp != 0 {
            Some(start)
        } else {
            StackStart::current()
        };
        let Some(start) = start else {
            debug!(
                ctx,
                "tid {}: cannot read the saved user registers", caller.tid
            );
            return None;
        };
        (*regs).sp = start.sp;
        (*regs).bp = start.bp;
        (*regs).ip = start.ip;
        Some(start)
    }
}

/// Copies the stack just above the stack pointer into `bytes`, at most `wanted` bytes (N or
/// fewer, as `--stack-copy-kib` says); returns the bytes copied, and whether they reach the
/// thread's learned stack base. Userspace unwinds from it with the binaries' CFI; a copy that
/// reaches the base holds the whole stack, so the kernel's frame-pointer walk
/// (`user_stack_id`) adds nothing to it.
///
/// The copy stops at the thread's stack base once userspace has learned it (STACK_BASES; a
/// main thread's is in FOLLOWED): a stack a few frames deep then costs a few hundred bytes,
/// not the whole budget. A main thread whose base is not learned yet copies up to
/// `mm->start_stack` (its `argc`, above every frame). Otherwise, without a base, a read that
/// crosses the end of the mapping fails as a whole (each such failure is a page fault, about
/// a microsecond), so a shallow stack is retried with copies that end on page boundaries,
/// longest first: at most N / 4096 + 1 reads, of which all but one fail.
///
/// # Safety
/// `regs` and `bytes` must point at writable memory (a per-CPU scratch record); `wanted` is
/// at most N.
#[inline(always)]
unsafe fn copy_stack_top<C: StackIdContext, const N: usize>(
    ctx: &C,
    caller: Caller,
    start: StackStart,
    regs: *mut StackRegs,
    bytes: *mut [u8; N],
    wanted: u64,
) -> (u32, bool) {
    let tid = caller.tid;
    let sp = start.sp;
    let mut wanted = wanted;
    unsafe {
        let dst = (*bytes).as_mut_ptr().cast::<c_void>();
        // Until a main thread's base is learned its stack ends at `argc` (a longer copy than
        // the learned base's, but one that does not fault past the mapping's end).
        let base = if tid != caller.tgid {
            STACK_BASES.get(&tid).copied()
        } else {
            followed::main_stack_base(caller.tgid)
                .or_else(|| main_stack_start(bpf_get_current_task_btf().cast()))
        };
        if let Some(base) = base
            && base > sp
            && base - sp <= wanted
        {
            wanted = base - sp;
            if wanted <= N as u64
                && bpf_probe_read_user(dst, wanted as u32, sp as *const c_void) == 0
            {
                (*regs).len = wanted as u32;
                return (wanted as u32, true);
            }
        }
        let page_end = sp.wrapping_add(wanted) & !(STACK_PAGE_BYTES - 1);
        let mut attempt: u64 = 0;
        while attempt <= (N as u64) / STACK_PAGE_BYTES {
            let len = if attempt == 0 {
                wanted
            } else {
                page_end
                    .wrapping_sub((attempt - 1) * STACK_PAGE_BYTES)
                    .wrapping_sub(sp)
            };
            attempt += 1;
            if len == 0 || len > wanted || len > N as u64 {
                continue;
            }
            if bpf_probe_read_user(dst, len as u32, sp as *const c_void) == 0 {
                (*regs).len = len as u32;
                return (len as u32, false);
            }
        }
        debug!(
            ctx,
            "tid {}: cannot copy the user stack at sp {:x}", tid, sp
        );
        (0, false)
    }
}

/// Copies a record between map values word by word: a plain struct copy is compiled to a
/// call of a byte-wise `memmove` (a tenth of a file open's time under nginx).
///
/// # Safety
/// Both must point at map memory this CPU may read (`from`) and write (`to`).
#[inline(always)]
pub(crate) unsafe fn copy_words<T>(from: *const T, to: *mut T) {
    const { assert!(size_of::<T>() % 8 == 0 && align_of::<T>() >= 8) };
    let words = size_of::<T>() / 8;
    let (from, to) = (from.cast::<u64>(), to.cast::<u64>());
    let mut i = 0;
    while i < words {
        // SAFETY: as the function's contract says; both are 8-aligned records of `words`
        // words.
        unsafe { core::ptr::write_volatile(to.add(i), core::ptr::read_volatile(from.add(i))) };
        i += 1;
    }
}
