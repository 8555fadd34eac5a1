//! The aggregator: one descriptor table per followed process, kept exact by applying decoded
//! events in ring buffer order. It never reads /proc or maps itself: the session hands it
//! snapshots and resolved facts, so every transition here is unit-tested without root.
//!
//! Files: this one (the tables, snapshots in, queries out, and `apply`), handlers.rs (one
//! handler per event kind), types.rs (what is kept), births.rs (what a new descriptor is),
//! sharing.rs (CLONE_FILES tables), reconcile.rs (comparison with /proc), at_exit.rs (what
//! processes held when they exited, folded per stack), lives.rs (closed descriptors, failed
//! closes), pending.rs (stacks whose unwinding was deferred).

use foldhash::HashMap;

mod at_exit;
mod births;
mod handlers;
mod lives;
mod pending;
mod reconcile;
mod sharing;
mod types;

pub(crate) use at_exit::{AtExitGroup, COUNT_WINDOW};
pub(crate) use lives::{BadClose, Life};
pub(crate) use reconcile::Reconciled;
pub(crate) use types::{Descriptor, LiveThread, Origin, Process, ProcessSnapshot, SnapshotFd};

use crate::{
    events::{Event, EventBody},
    model::StackRef,
};

/// The descriptor tables of every followed process, and what happened to those that ended.
#[derive(Debug, Default)]
pub(crate) struct Aggregator {
    processes: HashMap<u32, Process>,
    /// Processes whose pid was reused by a later one; kept for the report when the
    /// descriptors they held at exit are kept one by one.
    departed: Vec<Process>,
    /// What exited processes held, one group per stack.
    at_exit: at_exit::AtExitGroups,
    /// Keep each exited process's descriptors and record (`--at-exit-descriptors`): memory
    /// then grows with every process that exits.
    keep_at_exit_descriptors: bool,
    /// Exited processes that were reaped and forgotten (their holdings are in `at_exit`).
    pub exited_forgotten: u64,
    pub events_applied: u64,
    /// Descriptors reconciliation found closed, and found open, without their events.
    pub reconciled_closed: u64,
    pub reconciled_opened: u64,
    /// Events the kernel side lost so far (the session keeps it current): tables that have
    /// not been compared with /proc since a loss are not known exact.
    pub lost_so_far: u64,
    /// Processes using another's descriptor table (CLONE_FILES), to the table's owner.
    shared_with: HashMap<u32, u32>,
    /// Closes, dup2s and dup3s that failed with EBADF, by process and closing stack.
    bad_closes: lives::BadCloses,
}

impl Aggregator {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Keeps every descriptor exited processes held, and the processes, for the report's
    /// `at_exit: true` entries; by default only their per-stack groups are kept.
    pub(crate) fn keeping_at_exit_descriptors() -> Self {
        Self {
            keep_at_exit_descriptors: true,
            ..Self::default()
        }
    }

    /// What exited processes held, by stack.
    pub(crate) fn at_exit_groups(&self) -> impl Iterator<Item = &AtExitGroup> {
        self.at_exit.iter()
    }

    /// Forgets exited processes that were forked while traced, are no longer there (reaped:
    /// `still_there` says no) and use no shared table: what they held is in the groups
    /// already. A zombie stays (the report names it), and so do the processes found at
    /// attach (the target); with `--at-exit-descriptors` everything stays. Returns the pids
    /// forgotten.
    pub(crate) fn forget_reaped(
        &mut self,
        mut still_there: impl FnMut(&Process) -> bool,
    ) -> Vec<u32> {
        if self.keep_at_exit_descriptors {
            return Vec::new();
        }
        let shared = &self.shared_with;
        let mut forgotten = Vec::new();
        self.processes.retain(|&pid, p| {
            let keep = !p.exited()
                || !p.forked_while_traced
                || shared.contains_key(&pid)
                || shared.values().any(|&owner| owner == pid)
                || still_there(p);
            if !keep {
                forgotten.push(pid);
            }
            keep
        });
        // A burst of short-lived processes must not leave its high-water mark behind.
        if self.processes.capacity() > 4 * self.processes.len().max(64) {
            self.processes.shrink_to_fit();
        }
        self.exited_forgotten += forgotten.len() as u64;
        forgotten
    }

    /// Every stack something kept still refers to, which must stay symbolizable: those of
    /// the tables (live descriptors, inherited ones with their parent's stack, what exited
    /// processes still listed hold), of threads and forks, of the tables' previous lives, of
    /// failed closes and of the groups of what exited processes held. Walks all of them.
    pub(crate) fn stacks_in_use(&self) -> impl Iterator<Item = StackRef> + '_ {
        let of_processes = self.processes().flat_map(|p| {
            let descriptors = p
                .fds
                .values()
                .chain(&p.held_at_exit)
                .chain(p.lives.iter().map(|life| &life.descriptor));
            descriptors
                .filter_map(|d| d.stack)
                .chain(p.new_threads.values().filter_map(|t| t.stack))
                .chain(p.fork_stack)
        });
        let of_groups = self.at_exit.iter().flat_map(|g| {
            g.stack
                .into_iter()
                .chain(g.samples.iter().filter_map(|(_, _, d)| d.stack))
        });
        let of_bad_closes = self.bad_closes.iter().flat_map(|((_, stack), group)| {
            stack.iter().copied().chain(
                group
                    .examples
                    .iter()
                    .flat_map(|c| &c.lives)
                    .filter_map(|life| life.descriptor.stack),
            )
        });
        of_processes.chain(of_groups).chain(of_bad_closes)
    }

    /// Folds what process `pid` held at its exit into the per-stack groups; the descriptors
    /// themselves are dropped unless they are kept one by one. Call after `exit_process`.
    fn settle_exit(&mut self, pid: u32) {
        let keep = self.keep_at_exit_descriptors;
        let Some(process) = self.processes.get_mut(&pid) else {
            return;
        };
        self.at_exit.add(
            pid,
            &process.comm,
            process.exited_at_ns.unwrap_or(0),
            process.held_at_exit_unverified,
            &process.held_at_exit,
        );
        if !keep {
            process.held_at_exit = Vec::new();
            process.fds = HashMap::default();
            process.pending = HashMap::default();
            process.new_threads = HashMap::default();
            process.cwd = None;
        }
    }

    /// Records what /proc showed for a process at attach. Events already applied win: an fd
    /// we saw created is not overwritten by its pre-existing twin.
    pub(crate) fn add_snapshot(&mut self, snapshot: ProcessSnapshot, now_ns: u64) {
        let lost = self.lost_so_far;
        let process = self
            .processes
            .entry(snapshot.pid)
            .or_insert_with(|| Process::new(snapshot.pid, snapshot.ppid, snapshot.comm.clone()));
        process.start_time = snapshot.start_time;
        process.lost_when_checked = lost;
        if process.cwd.is_none() {
            process.cwd = snapshot.cwd;
        }
        if snapshot.zombie {
            // It exited before we came (when exactly, /proc does not say): nothing is open.
            if !process.exited() {
                exit_process(process, now_ns, lost);
                self.settle_exit(snapshot.pid);
            }
            return;
        }
        process.threads.live = process.threads.live.max(snapshot.threads);
        for fd in snapshot.fds {
            process.fds.entry(fd.fd).or_insert_with(|| Descriptor {
                fd: fd.fd,
                kind: fd.kind,
                detail: fd.detail,
                origin: Origin::PreExisting,
                inherited: false,
                tid: 0,
                opened_at_ns: now_ns,
                stack: None,
                path_truncated: false,
                deleted: fd.deleted,
                tcp_state: fd.tcp_state,
                cloexec: fd.cloexec,
            });
        }
    }

    /// Makes way for a new process that reuses the pid of one that exited: what the old one
    /// held is in the groups already; it is kept for the report only when everything is.
    pub(crate) fn retire_exited(&mut self, pid: u32) {
        if !self.processes.get(&pid).is_some_and(Process::exited) {
            return;
        }
        if let Some(previous) = self.processes.remove(&pid) {
            if self.keep_at_exit_descriptors {
                self.departed.push(previous);
            } else {
                self.exited_forgotten += 1;
            }
        }
    }

    pub(crate) fn process(&self, pid: u32) -> Option<&Process> {
        self.processes.get(&pid)
    }

    /// Current processes (live and exited), then departed ones.
    pub(crate) fn processes(&self) -> impl Iterator<Item = &Process> {
        self.processes.values().chain(self.departed.iter())
    }

    pub(crate) fn live_processes(&self) -> impl Iterator<Item = &Process> {
        self.processes.values().filter(|p| !p.exited())
    }

    pub(crate) fn set_cwd(&mut self, pid: u32, cwd: String) {
        if let Some(process) = self.processes.get_mut(&pid) {
            process.cwd = Some(cwd);
        }
    }

    pub(crate) fn set_start_time(&mut self, pid: u32, start_time: u64) {
        if let Some(process) = self.processes.get_mut(&pid) {
            process.start_time = Some(start_time);
        }
    }

    pub(crate) fn set_comm(&mut self, pid: u32, comm: String) {
        if let Some(process) = self.processes.get_mut(&pid) {
            process.comm = comm;
        }
    }

    /// Marks a process gone without an exit event (it vanished from /proc, e.g. after lost
    /// events). Its descriptors are dropped like at exit.
    pub(crate) fn mark_vanished(&mut self, pid: u32, now_ns: u64) {
        let lost = self.lost_so_far;
        if let Some(process) = self.processes.get_mut(&pid)
            && !process.exited()
        {
            exit_process(process, now_ns, lost);
            self.settle_exit(pid);
        }
    }

    /// The process an event's caller belongs to; created on the fly for a followed process we
    /// have not heard of (its snapshot may still be on the way).
    fn caller(&mut self, tgid: u32) -> &mut Process {
        self.processes
            .entry(tgid)
            .or_insert_with(|| Process::new(tgid, 0, String::new()))
    }

    /// Applies one event, in ring buffer order: each kind has its handler (handlers.rs). A
    /// file open's path is moved into the table, not copied: the event is left without it.
    pub(crate) fn apply(&mut self, event: &mut Event) {
        self.events_applied += 1;
        let header = &event.header;
        match &mut event.body {
            EventBody::FileOpened(opened) => self.on_file_opened(header, opened),
            EventBody::FdCreated(created) => self.on_fd_created(header, created),
            EventBody::FdClosed(closed) => self.on_fd_closed(header, closed),
            EventBody::CloseFailed(failed) => self.on_close_failed(header, failed),
            EventBody::CloexecSet(set) => self.on_cloexec_set(header, set),
            EventBody::RangeClosed(range) => self.on_range_closed(header, range),
            EventBody::FilesUnshared => self.on_files_unshared(header),
            EventBody::TaskCreated(created) => self.on_task_created(header, created),
            EventBody::TaskExited(exited) => self.on_task_exited(header, exited),
            EventBody::Exec => self.on_exec(header),
            // The session reads the new directory from /proc and calls `set_cwd`.
            EventBody::CwdChanged => {}
            // TCP state belongs to the session's tracker, not to descriptor tables.
            EventBody::TcpState(_) | EventBody::PythonStack(_) => {}
        }
    }
}

/// A copy of a table, as a new process gets at fork or a process leaving a shared table gets:
/// the same descriptors, those created while traced marked inherited (keeping their stacks).
fn copy_of(fds: &HashMap<i32, Descriptor>) -> HashMap<i32, Descriptor> {
    fds.iter()
        .map(|(&fd, d)| {
            let copy = Descriptor {
                inherited: d.origin != Origin::PreExisting,
                ..d.clone()
            };
            (fd, copy)
        })
        .collect()
}

/// A process is gone: what it created itself and never closed is kept as held at exit;
/// the rest (inherited, pre-existing) simply died with it.
fn exit_process(process: &mut Process, now_ns: u64, lost_so_far: u64) {
    process.exited_at_ns = Some(now_ns);
    process.held_at_exit_unverified = lost_so_far > process.lost_when_checked;
    process.threads.live = 0;
    process.new_threads.clear();
    process.lives = lives::Lives::default();
    let mut held: Vec<Descriptor> = process
        .fds
        .drain()
        .map(|(_, d)| d)
        .filter(Descriptor::created_here)
        .collect();
    held.sort_by_key(|d| d.fd);
    process.held_at_exit = held;
}

#[cfg(test)]
pub(crate) mod tests;
