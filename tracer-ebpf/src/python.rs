//! CPython frames at the moments a stack is captured: the calling thread's interpreter frame
//! chain, walked in the kernel (the frames and code objects may be gone by the time
//! userspace reads the event), sent as a [`PyStackEvent`] right before the event itself.
//!
//! Only processes userspace found to run CPython have an entry in PY_PROCS: every other
//! process pays one lookup that misses, and none while no process has one (PYTHON_SEEN).
//! The thread's `PyThreadState` is found by its `thread_id` (pthread_self(), which is the
//! task's fsbase on x86-64), in a per-thread cache checked on every use (userspace seeds it),
//! else by walking the first [`MAX_PY_THREADS`] of each interpreter's thread list, where new
//! threads are added: the "current" thread state is empty while a thread is blocked in a
//! syscall with the GIL released.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::bpf_get_current_task,
    },
    macros::{map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray},
    programs::TracePointContext,
};
use tracer_common::{
    EventHeader, EventKind, NO_STACK,
    python::{
        MAX_PY_FRAMES, MAX_PY_PROCS, MAX_PY_THREADS, MAX_PY_TSTATES, PY_NO_THREAD, PY_READ_FAILED,
        PY_SLOTS, PY_TRUNCATED, PY_WALK_SLOT, PyFrameRecord, PyProcConfig, PyStackEvent,
    },
};

use crate::{
    clock::event_time_ns,
    emit::Caller,
    held,
    maps::{EVENTS, LOST_IN_FLIGHT, LOST_RING_FULL, count_lost, submit_flags},
};

/// Interpreter layouts of the CPython processes, by tgid (userspace fills it; a forked child
/// gets its parent's; exec and exit remove it).
#[map]
pub(crate) static PY_PROCS: HashMap<u32, PyProcConfig> = HashMap::with_max_entries(MAX_PY_PROCS, 0);

/// Non-zero once userspace has put a layout into PY_PROCS (it sets this first, and never
/// clears it). Until then no process can have one, and a capture site skips the PY_PROCS
/// lookup: an array's constant-index lookup is inlined by the verifier into a few loads,
/// where a hash lookup that misses is a call and a hash of the key on every event.
#[map]
static PYTHON_SEEN: Array<u32> = Array::with_max_entries(1, 0);

/// Whether any process may have an interpreter layout (see [`PYTHON_SEEN`]).
#[inline(always)]
fn python_seen() -> bool {
    PYTHON_SEEN.get(0).is_some_and(|seen| *seen != 0)
}

/// tid -> its `PyThreadState` address, checked against the thread's fsbase at each use.
/// Userspace seeds it with the threads a process has when its interpreter is found (and
/// again when a walk found no thread state); the kernel adds what its short walk finds.
#[map]
static PY_TSTATES: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_PY_TSTATES, 0);

/// The walker at [`PY_WALK_SLOT`]; each program that captures a stack at the slot it
/// resumes at (userspace installs them all before attaching any).
#[map]
static PY_PROGRAMS: ProgramArray = ProgramArray::with_max_entries(PY_SLOTS, 0);

/// Where the walk a capture site asked for stands, on this CPU: asked by `tid` for the
/// program at `slot`, and done once `walked` is set.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PyResume {
    tid: u32,
    slot: u32,
    walked: u32,
    _pad: u32,
}

#[map]
static PY_RESUME: PerCpuArray<PyResume> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
pub(crate) struct PyStackScratch {
    event: PyStackEvent,
    frames: [PyFrameRecord; MAX_PY_FRAMES],
}

#[map]
static PY_SCRATCH: PerCpuArray<PyStackScratch> = PerCpuArray::with_max_entries(1, 0);

/// Offset of `thread.fsbase` in `struct task_struct`, from the kernel's BTF (set by
/// userspace), or u64::MAX when it is not known.
#[unsafe(no_mangle)]
static TASK_FSBASE_OFFSET: u64 = u64::MAX;

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: a checked read of the caller's memory, which may fail.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// What a capture site does about Python frames.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frames {
    /// Have the walker send them first; the program restarts from its beginning once they
    /// are sent, and then goes on past this point. `slot` is where the program resumes.
    Walk { slot: u32 },
    /// Send again the frames this program's run already sent: its second event (pipes).
    Resend,
}

/// Sends the calling thread's Python frames before its event, if its process runs a
/// configured interpreter (every other process pays one lookup that misses, or none while
/// no process has one: [`PYTHON_SEEN`]); returns whether it does (with [`Frames::Walk`]).
///
/// With [`Frames::Walk`] this does not return the first time: it tail-calls the walker,
/// which sends the frames and tail-calls the program again from its start, and this
/// returns then. Everything before a capture site must therefore be safe to run twice (no
/// event sent, no counter bumped): the sites are the first thing a program does once it
/// knows it will send an event with a stack. What the process held back (`held.rs`) is
/// sent before the frames.
#[inline(always)]
pub(crate) fn capture(ctx: &TracePointContext, caller: Caller, frames: Frames) -> bool {
    let slot = match frames {
        Frames::Resend => {
            resend(caller.tid);
            return false;
        }
        Frames::Walk { slot } => slot,
    };
    // SAFETY: only presence matters here.
    if !python_seen() || unsafe { PY_PROCS.get(&caller.tgid) }.is_none() {
        return false;
    }
    let Some(resume) = PY_RESUME.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's record; programs do not preempt each other on a CPU.
    let resume = unsafe { &mut *resume };
    if resume.walked != 0 && resume.tid == caller.tid && resume.slot == slot {
        // Back from the walker: the frames are in the ring, right before this event.
        *resume = PyResume::default();
        return true;
    }
    held::flush(caller.tgid, true);
    *resume = PyResume {
        tid: caller.tid,
        slot,
        walked: 0,
        _pad: 0,
    };
    // SAFETY: a tail call; it returns only when the walker is not installed.
    unsafe { PY_PROGRAMS.tail_call(ctx, PY_WALK_SLOT) };
    *resume = PyResume::default();
    true
}

/// Sends the last frames walked on this CPU again, if they are the calling thread's.
#[inline(always)]
fn resend(tid: u32) {
    let Some(scratch) = PY_SCRATCH.get_ptr(0) else {
        return;
    };
    // SAFETY: this CPU's scratch record, whose sent part the walker wrote in this run.
    let scratch = unsafe { &*scratch };
    if scratch.event.header.tid == tid && scratch.event.header.kind == EventKind::PythonStack as u32
    {
        send(scratch);
    }
}

/// The walker: reached by a tail call from a program that captures a stack (see
/// [`capture`]), it sends the calling thread's frames and tail-calls that program back.
/// Loaded once and never attached, so the verifier checks the walk once.
#[tracepoint]
pub(crate) fn python_walk(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(resume) = PY_RESUME.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's record; programs do not preempt each other on a CPU.
    let resume = unsafe { &mut *resume };
    if resume.walked != 0 || resume.tid != pid_tgid as u32 {
        // Not what the capture site that called left (never seen): it cannot be resumed,
        // and its event is lost.
        count_lost(LOST_IN_FLIGHT);
        return 0;
    }
    // SAFETY: the value is copied out by the callee before the map can change under it
    // (entries are only replaced whole, by userspace or the fork probe).
    if let Some(config) = unsafe { PY_PROCS.get(&((pid_tgid >> 32) as u32)) } {
        walk(config);
    }
    resume.walked = 1;
    // SAFETY: a tail call back to the program that called; it returns only if that program
    // is not installed at its slot, and then its event is lost (and counted).
    unsafe { PY_PROGRAMS.tail_call(&ctx, resume.slot) };
    *resume = PyResume::default();
    count_lost(LOST_IN_FLIGHT);
    0
}

/// Copies a parent's interpreter layout to a forked child, which runs the same image.
#[inline(always)]
pub(crate) fn inherit(parent: u32, child: u32) {
    if !python_seen() {
        return;
    }
    // SAFETY: copied at once.
    if let Some(config) = unsafe { PY_PROCS.get(&parent) } {
        let config = *config;
        let _ = PY_PROCS.insert(&child, &config, 0);
    }
}

/// Forgets a process's layout (exec, exit).
#[inline(always)]
pub(crate) fn forget(tgid: u32) {
    let _ = PY_PROCS.remove(&tgid);
}

/// Walks the calling thread's frames into this CPU's scratch record and sends them.
#[inline(always)]
fn walk(config: &PyProcConfig) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(scratch) = PY_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch record; only the frames written are sent.
    let scratch = unsafe { &mut *scratch };
    let tid = pid_tgid as u32;
    let mut flags = 0;
    let mut count: usize = 0;
    match thread_state(config, tid) {
        None => flags |= PY_NO_THREAD,
        Some(tstate) => {
            let mut frame = top_frame(config, tstate);
            // One record per frame, entry shims (3.12+) included: userspace tells them
            // apart from the raw marker byte. The loop index is the only counter, so the
            // verifier has one number to track per turn.
            for i in 0..MAX_PY_FRAMES {
                if frame == 0 {
                    break;
                }
                let Some(slot) = scratch.frames.get_mut(i) else {
                    break;
                };
                let (Some(code), Some(back), Some(instr)) = (
                    read_u64(frame + config.frame_code as u64),
                    read_u64(frame + config.frame_back as u64),
                    read_u64(frame + config.frame_instr as u64),
                ) else {
                    flags |= PY_READ_FAILED;
                    break;
                };
                let marker = if config.frame_flag == u32::MAX {
                    0
                } else {
                    // SAFETY: as read_u64.
                    unsafe { bpf_probe_read_user((frame + config.frame_flag as u64) as *const u8) }
                        .unwrap_or(0)
                };
                // SAFETY: as read_u64.
                let first = unsafe {
                    bpf_probe_read_user((code + config.code_firstlineno as u64) as *const u32)
                }
                .unwrap_or(0);
                // SAFETY: as read_u64.
                let pair = unsafe {
                    bpf_probe_read_user((code + config.code_filename as u64) as *const [u64; 2])
                }
                .unwrap_or([0, 0]);
                slot.code = code;
                slot.instr = instr;
                slot.fingerprint = fingerprint(first, pair[0], pair[1]);
                slot.flags = marker as u32;
                slot._pad = 0;
                count = i + 1;
                frame = back;
            }
            if frame != 0 && flags & PY_READ_FAILED == 0 {
                flags |= PY_TRUNCATED;
            }
        }
    }
    scratch.event = PyStackEvent {
        header: EventHeader {
            kind: EventKind::PythonStack as u32,
            tgid: (pid_tgid >> 32) as u32,
            tid,
            stack_id: NO_STACK,
            timestamp_ns: event_time_ns(),
        },
        count: count as u32,
        flags,
    };
    send(scratch);
}

/// Sends the walked part of a scratch record.
#[inline(always)]
fn send(scratch: &PyStackScratch) {
    let count = scratch.event.count as usize;
    let count = if count > MAX_PY_FRAMES {
        MAX_PY_FRAMES
    } else {
        count
    };
    let size = core::mem::size_of::<PyStackEvent>() + count * core::mem::size_of::<PyFrameRecord>();
    // SAFETY: `size` is within the scratch record, whose used bytes were all written.
    let record = unsafe {
        core::slice::from_raw_parts((scratch as *const PyStackScratch).cast::<u8>(), size)
    };
    if EVENTS
        .output::<[u8]>(record, submit_flags(size as u64))
        .is_err()
    {
        count_lost(LOST_RING_FULL);
    }
}

/// What userspace recomputes from the code object to tell that the address still holds the
/// code the kernel saw.
#[inline(always)]
fn fingerprint(firstlineno: u32, filename: u64, name: u64) -> u64 {
    ((firstlineno as u64) << 32) | ((filename ^ (name >> 4)) & 0xffff_ffff)
}

/// The innermost frame of a thread state, or 0.
#[inline(always)]
fn top_frame(config: &PyProcConfig, tstate: u64) -> u64 {
    let frame = read_u64(tstate + config.tstate_frame as u64).unwrap_or(0);
    if config.cframe_current == u32::MAX || frame == 0 {
        return frame;
    }
    read_u64(frame + config.cframe_current as u64).unwrap_or(0)
}

/// The calling thread's `PyThreadState`: the cached one if its `thread_id` is still this
/// thread's, else the one the interpreters' thread lists hold for it. A thread starting
/// another gives the new thread's state its own `thread_id` until the new thread runs
/// (3.10, 3.11: `new_threadstate`), so a match without frames is only taken, and not
/// cached, when no match has frames.
#[inline(always)]
fn thread_state(config: &PyProcConfig, tid: u32) -> Option<u64> {
    // SAFETY: a plain read of a load-time constant.
    let fsbase_offset = unsafe { core::ptr::read_volatile(&raw const TASK_FSBASE_OFFSET) };
    if fsbase_offset == u64::MAX {
        return None;
    }
    // SAFETY: the current task, read at the offset its BTF gives.
    let fsbase = unsafe {
        let task = bpf_get_current_task() as *const u8;
        bpf_probe_read_kernel(task.add(fsbase_offset as usize).cast::<u64>()).ok()?
    };
    if fsbase == 0 {
        return None;
    }
    let thread_id = config.tstate_thread_id as u64;
    // SAFETY: the value is copied at once.
    if let Some(&cached) = unsafe { PY_TSTATES.get(&tid) }
        && read_u64(cached + thread_id) == Some(fsbase)
    {
        return Some(cached);
    }
    let mut interp = read_u64(config.runtime + config.interpreters_head as u64)?;
    let mut tstate = read_u64(interp + config.interp_threads_head as u64).unwrap_or(0);
    let mut without_frames = 0;
    for _ in 0..MAX_PY_THREADS {
        if tstate == 0 {
            interp = read_u64(interp + config.interp_next as u64).unwrap_or(0);
            if interp == 0 {
                break;
            }
            tstate = read_u64(interp + config.interp_threads_head as u64).unwrap_or(0);
            continue;
        }
        if read_u64(tstate + thread_id) == Some(fsbase) {
            if top_frame(config, tstate) != 0 {
                let _ = PY_TSTATES.insert(&tid, &tstate, 0);
                return Some(tstate);
            }
            if without_frames == 0 {
                without_frames = tstate;
            }
        }
        tstate = read_u64(tstate + config.tstate_next as u64).unwrap_or(0);
    }
    (without_frames != 0).then_some(without_frames)
}
