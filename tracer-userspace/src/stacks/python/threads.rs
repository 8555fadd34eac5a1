//! Which `PyThreadState` each thread of a process has, read from the interpreters' thread
//! lists, to seed the kernel's per-thread cache: the kernel itself only looks at the first
//! few states of each list (where new threads are added), to keep its programs small.
//!
//! A state names its thread by `native_thread_id` (3.11+, a tid in the process's pid
//! namespace) or, on 3.10, by `thread_id`, the thread's glibc `struct pthread`, whose `tid`
//! field says which it is. The kernel checks every entry against the thread's fsbase before
//! using it, so a wrong one costs only a walk.

use std::collections::HashMap;

use super::{detect::Interpreter, mem};

/// `offsetof(struct pthread, tid)` in glibc on x86-64 (nptl/descr.h: after the 704-byte
/// `tcbhead_t` and the 16-byte `list`).
const PTHREAD_TID: u64 = 0x2d0;
const MAX_INTERPRETERS: usize = 64;
const MAX_THREADS: usize = 4096;

/// (host tid, thread state) for every thread state that has a frame.
pub(super) fn seed(pid: u32, interp: &Interpreter) -> Vec<(u32, u64)> {
    let layout = &interp.layout;
    let kernel = &layout.kernel;
    let host = host_tids(pid);
    let mut found = Vec::new();
    let mut is =
        mem::read_u64(pid, interp.runtime + u64::from(kernel.interpreters_head)).unwrap_or(0);
    for _ in 0..MAX_INTERPRETERS {
        if is == 0 {
            break;
        }
        let mut tstate =
            mem::read_u64(pid, is + u64::from(kernel.interp_threads_head)).unwrap_or(0);
        for _ in 0..MAX_THREADS {
            if tstate == 0 {
                break;
            }
            let ns_tid = match layout.native_thread_id {
                Some(offset) => mem::read_u64(pid, tstate + offset).map(|t| t as u32),
                None => mem::read_u64(pid, tstate + u64::from(kernel.tstate_thread_id))
                    .and_then(|pthread| mem::read(pid, pthread + PTHREAD_TID, 4))
                    .map(|b| mem::u32_at(&b, 0)),
            };
            if let Some(ns_tid) = ns_tid.filter(|&t| t != 0)
                && has_frame(pid, interp, tstate)
            {
                found.push((host.get(&ns_tid).copied().unwrap_or(ns_tid), tstate));
            }
            tstate = mem::read_u64(pid, tstate + u64::from(kernel.tstate_next)).unwrap_or(0);
        }
        is = mem::read_u64(pid, is + u64::from(kernel.interp_next)).unwrap_or(0);
    }
    found
}

/// A state being set up for a new thread carries its creator's ids and no frame yet.
fn has_frame(pid: u32, interp: &Interpreter, tstate: u64) -> bool {
    let kernel = &interp.layout.kernel;
    let frame = mem::read_u64(pid, tstate + u64::from(kernel.tstate_frame)).unwrap_or(0);
    if kernel.cframe_current == u32::MAX || frame == 0 {
        return frame != 0;
    }
    mem::read_u64(pid, frame + u64::from(kernel.cframe_current)).is_some_and(|f| f != 0)
}

/// The process's threads: their tid in its own pid namespace -> the host's (`NSpid`).
fn host_tids(pid: u32) -> HashMap<u32, u32> {
    let mut map = HashMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return map;
    };
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let ids: Vec<u32> = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|t| t.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        if let (Some(&host), Some(&inner)) = (ids.first(), ids.last()) {
            map.insert(inner, host);
        }
    }
    map
}
