//! The aggregator: one descriptor table per followed process, kept exact by applying decoded
//! events in ring buffer order. It never reads /proc or maps itself: the session hands it
//! snapshots and resolved facts, so every transition here is unit-tested without root.

use foldhash::{HashMap, HashMapExt as _};

mod births;
mod reconcile;
mod sharing;

use tracer_common::{
    CLONE_FILES, CLONE_THREAD, Syscall,
    abi::{CLOSE_RANGE_CLOEXEC, CLOSE_RANGE_UNSHARE},
};

use crate::{
    events::{Event, Header},
    kind::DescriptorKind,
};
use births::Birth;
pub use reconcile::{ListedFd, Reconciled};

/// A user stack: its id (see `stacks::StackStore`), and the process and program image (exec
/// generation) whose address space it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StackRef {
    pub id: u32,
    pub pid: u32,
    pub generation: u32,
}

impl StackRef {
    /// The stack of an event, if the kernel captured one.
    pub fn of(header: &Header) -> Option<Self> {
        header.stack_id.map(|id| Self {
            id,
            pid: header.tgid,
            generation: header.generation,
        })
    }
}

/// How a descriptor came to be in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Created by this syscall while we watched (possibly in an ancestor: see `inherited`).
    Syscall(Syscall),
    /// Already open when the tracer attached; learned from /proc.
    PreExisting,
    /// Appeared while traced without an event we could match: its creation event was lost,
    /// or no tracepoint shows its birth (a descriptor received over a unix socket with
    /// SCM_RIGHTS, one installed by io_uring). Learned from /proc by reconciliation.
    Reconciled,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub fd: i32,
    pub kind: DescriptorKind,
    /// What it refers to, as far as the events tell; the report refreshes live ones from /proc.
    pub detail: String,
    pub origin: Origin,
    /// Copied into this process at fork rather than created by it.
    pub inherited: bool,
    /// Thread that created it; 0 when unknown (pre-existing).
    pub tid: u32,
    /// CLOCK_MONOTONIC ns at creation; for pre-existing ones, when we attached.
    pub opened_at_ns: u64,
    pub stack: Option<StackRef>,
    pub path_truncated: bool,
    pub deleted: bool,
    pub tcp_state: Option<String>,
    pub cloexec: bool,
}

impl Descriptor {
    /// A descriptor created by `syscall` in the event's process, on the event's thread.
    fn born(header: &Header, fd: i32, syscall: Syscall, birth: Birth) -> Self {
        Self {
            fd,
            kind: birth.kind,
            detail: birth.detail,
            origin: Origin::Syscall(syscall),
            inherited: false,
            tid: header.tid,
            opened_at_ns: header.timestamp_ns,
            stack: StackRef::of(header),
            path_truncated: false,
            deleted: false,
            tcp_state: None,
            cloexec: birth.cloexec,
        }
    }

    /// The contract's `opened_by`: the syscall, `inherited`, or `pre-existing`.
    pub fn opened_by(&self) -> &'static str {
        match (self.origin, self.inherited) {
            (Origin::PreExisting, _) => "pre-existing",
            (_, true) => "inherited",
            (Origin::Reconciled, false) => "unknown",
            (Origin::Syscall(syscall), false) => syscall.name(),
        }
    }

    /// How the tracer knows about it: from an `event`, the `attach` snapshot of /proc, or
    /// `reconciliation` with /proc while traced.
    pub fn learned_by(&self) -> &'static str {
        match self.origin {
            Origin::Syscall(_) => "event",
            Origin::PreExisting => "attach",
            Origin::Reconciled => "reconciliation",
        }
    }

    /// Came into this process while traced (created, or received) rather than inherited or
    /// already open at attach: what is owed a close.
    pub fn created_here(&self) -> bool {
        self.origin != Origin::PreExisting && !self.inherited
    }
}

/// Thread counts since attach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadCounts {
    pub live: u64,
    pub created: u64,
    pub exited: u64,
}

/// A thread that started while traced and has not exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveThread {
    pub stack: Option<StackRef>,
    pub started_ns: u64,
}

#[derive(Clone, Debug)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exited_at_ns: Option<u64>,
    pub fds: HashMap<i32, Descriptor>,
    /// Descriptors it created itself and still held when it exited (valgrind's --track-fds).
    pub held_at_exit: Vec<Descriptor>,
    /// Events were lost between the last time this table was known exact (attach, a /proc
    /// comparison) and the exit, so `held_at_exit` may hold descriptors whose close was lost:
    /// with the process gone, /proc cannot tell.
    pub held_at_exit_unverified: bool,
    /// Events lost (all processes) when this table was last known exact.
    lost_when_checked: u64,
    pub threads: ThreadCounts,
    /// Threads started while traced, by tid.
    pub new_threads: HashMap<u32, LiveThread>,
    /// The stack in the parent that forked it, when we saw the fork.
    pub fork_stack: Option<StackRef>,
    /// Working directory (escaped like paths), for relative opens; `None` until known.
    pub cwd: Option<String>,
    /// starttime from /proc/PID/stat: tells this process from a later one with its pid.
    pub start_time: Option<u64>,
    /// Descriptors /proc showed that the table lacks, awaiting a second look.
    pending: HashMap<i32, reconcile::Sighting>,
}

impl Process {
    fn new(pid: u32, ppid: u32, comm: String) -> Self {
        Self {
            pid,
            ppid,
            comm,
            exited_at_ns: None,
            fds: HashMap::new(),
            held_at_exit: Vec::new(),
            held_at_exit_unverified: false,
            lost_when_checked: 0,
            threads: ThreadCounts {
                live: 1,
                ..ThreadCounts::default()
            },
            new_threads: HashMap::new(),
            fork_stack: None,
            cwd: None,
            start_time: None,
            pending: HashMap::new(),
        }
    }

    pub fn exited(&self) -> bool {
        self.exited_at_ns.is_some()
    }
}

/// One descriptor as /proc showed it at attach time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFd {
    pub fd: i32,
    pub kind: DescriptorKind,
    pub detail: String,
    pub deleted: bool,
    pub tcp_state: Option<String>,
    pub cloexec: bool,
}

/// A followed process as /proc showed it at attach time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSnapshot {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub threads: u64,
    pub fds: Vec<SnapshotFd>,
    /// Already exited, waiting for its parent to reap it.
    pub zombie: bool,
    /// Working directory, escaped like paths.
    pub cwd: Option<String>,
    pub start_time: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Aggregator {
    processes: HashMap<u32, Process>,
    /// Processes whose pid was reused by a later one; kept for the report.
    departed: Vec<Process>,
    pub events_applied: u64,
    /// Descriptors reconciliation found closed, and found open, without their events.
    pub reconciled_closed: u64,
    pub reconciled_opened: u64,
    /// Events the kernel side lost so far (the session keeps it current): tables that have
    /// not been compared with /proc since a loss are not known exact.
    pub lost_so_far: u64,
    /// Processes using another's descriptor table (CLONE_FILES), to the table's owner.
    shared_with: HashMap<u32, u32>,
}

impl Aggregator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records what /proc showed for a process at attach. Events already applied win: an fd
    /// we saw created is not overwritten by its pre-existing twin.
    pub fn add_snapshot(&mut self, snapshot: ProcessSnapshot, now_ns: u64) {
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

    pub fn process(&self, pid: u32) -> Option<&Process> {
        self.processes.get(&pid)
    }

    /// Current processes (live and exited), then departed ones.
    pub fn processes(&self) -> impl Iterator<Item = &Process> {
        self.processes.values().chain(self.departed.iter())
    }

    pub fn live_processes(&self) -> impl Iterator<Item = &Process> {
        self.processes.values().filter(|p| !p.exited())
    }

    pub fn set_cwd(&mut self, pid: u32, cwd: String) {
        if let Some(process) = self.processes.get_mut(&pid) {
            process.cwd = Some(cwd);
        }
    }

    pub fn set_start_time(&mut self, pid: u32, start_time: u64) {
        if let Some(process) = self.processes.get_mut(&pid) {
            process.start_time = Some(start_time);
        }
    }

    pub fn set_comm(&mut self, pid: u32, comm: String) {
        if let Some(process) = self.processes.get_mut(&pid) {
            process.comm = comm;
        }
    }

    /// Marks a process gone without an exit event (it vanished from /proc, e.g. after lost
    /// events). Its descriptors are dropped like at exit.
    pub fn mark_vanished(&mut self, pid: u32, now_ns: u64) {
        let lost = self.lost_so_far;
        if let Some(process) = self.processes.get_mut(&pid)
            && !process.exited()
        {
            exit_process(process, now_ns, lost);
        }
    }

    /// The process an event's caller belongs to; created on the fly for a followed process we
    /// have not heard of (its snapshot may still be on the way).
    fn caller(&mut self, tgid: u32) -> &mut Process {
        self.processes
            .entry(tgid)
            .or_insert_with(|| Process::new(tgid, 0, String::new()))
    }

    pub fn apply(&mut self, event: &Event) {
        self.events_applied += 1;
        match event {
            Event::FileOpened {
                header,
                fd,
                syscall,
                dirfd,
                flags,
                path,
                path_truncated,
            } => {
                let cwd = self.caller(header.tgid).cwd.clone();
                let process = self.table(header.tgid);
                let birth = births::from_path(
                    *syscall,
                    path.as_deref(),
                    *dirfd,
                    *flags,
                    cwd.as_deref(),
                    &process.fds,
                );
                let descriptor = Descriptor {
                    path_truncated: *path_truncated,
                    ..Descriptor::born(header, *fd, *syscall, birth)
                };
                // An fd number already in the table means we missed its close (lost event):
                // the new descriptor replaces it either way.
                process.fds.insert(*fd, descriptor);
            }
            Event::FdCreated {
                header,
                fd,
                syscall,
                arg0,
                arg1,
                arg2,
            } => {
                let process = self.table(header.tgid);
                let args = [*arg0, *arg1, *arg2];
                let Some(birth) = births::without_path(*syscall, *fd, args, &process.fds) else {
                    return;
                };
                // dup2/dup3 onto an open fd close what it held: insert replaces it.
                process
                    .fds
                    .insert(*fd, Descriptor::born(header, *fd, *syscall, birth));
            }
            Event::CloexecSet { header, fd, on } => {
                if let Some(d) = self.table(header.tgid).fds.get_mut(fd) {
                    d.cloexec = *on;
                }
            }
            Event::RangeClosed {
                header,
                first,
                last,
                flags,
            } => {
                if flags & CLOSE_RANGE_UNSHARE != 0 && header.tid == header.tgid {
                    self.unshare_table(header.tgid);
                }
                close_range(self.table(header.tgid), *first, *last, *flags);
            }
            Event::FilesUnshared { header } => {
                // A thread leaving its process's table is not modelled (README: limits).
                if header.tid == header.tgid {
                    self.unshare_table(header.tgid);
                }
            }
            // The session reads the new directory from /proc and calls `set_cwd`.
            Event::CwdChanged { .. } => {}
            Event::FdClosed { header, fd } => {
                // Closing an fd we never saw (or EBADF) is harmless.
                let owner = self.table_owner(header.tgid);
                if let Some(process) = self.processes.get_mut(&owner) {
                    process.fds.remove(fd);
                }
            }
            Event::TaskCreated {
                header,
                child_tid,
                clone_flags,
                ..
            } => {
                let stack = StackRef::of(header);
                let is_thread = clone_flags.is_some_and(|flags| flags & CLONE_THREAD != 0);
                if is_thread {
                    let process = self.caller(header.tgid);
                    process.threads.created += 1;
                    process.threads.live += 1;
                    process.new_threads.insert(
                        *child_tid,
                        LiveThread {
                            stack,
                            started_ns: header.timestamp_ns,
                        },
                    );
                } else if clone_flags.is_some_and(|flags| flags & CLONE_FILES != 0) {
                    self.fork(header.tgid, *child_tid, stack);
                    self.caller(*child_tid).fds.clear();
                    self.share_table(header.tgid, *child_tid);
                } else {
                    self.fork(header.tgid, *child_tid, stack);
                }
            }
            Event::TaskExited { header, group_dead } => {
                let whole_process = group_dead.unwrap_or(header.tid == header.tgid);
                if self.caller(header.tgid).exited() {
                    // Already handled (it vanished from /proc before its event arrived).
                    return;
                }
                if whole_process {
                    // A table others still use lives on with them.
                    self.hand_over_table(header.tgid);
                }
                let lost = self.lost_so_far;
                let process = self.caller(header.tgid);
                if header.tid != header.tgid {
                    process.new_threads.remove(&header.tid);
                    process.threads.exited += 1;
                    process.threads.live = process.threads.live.saturating_sub(1);
                }
                if whole_process {
                    exit_process(process, header.timestamp_ns, lost);
                }
            }
            // TCP state belongs to the session's tracker, not to descriptor tables.
            Event::TcpState { .. } => {}
            Event::Exec { header } => {
                // execve leaves a shared table, then closes close-on-exec descriptors
                // without a close(2) of their own.
                self.unshare_table(header.tgid);
                self.caller(header.tgid).fds.retain(|_, d| !d.cloexec);
            }
        }
    }

    /// A new process: it starts with a copy of its parent's table, each descriptor marked
    /// inherited and keeping the parent's stack.
    fn fork(&mut self, parent_pid: u32, child_pid: u32, fork_stack: Option<StackRef>) {
        let parent = self.caller(parent_pid);
        let comm = parent.comm.clone();
        let inherited = copy_of(&parent.fds);
        let cwd = parent.cwd.clone();
        let lost_when_checked = parent.lost_when_checked;
        if let Some(previous) = self.processes.remove(&child_pid) {
            if previous.exited() {
                // The pid was reused: keep the old process for the report.
                self.departed.push(previous);
            } else {
                // Seen in the attach snapshot already: keep it, but what it inherited from
                // a traced parent is known more exactly than "pre-existing".
                let mut child = previous;
                for (fd, descriptor) in inherited {
                    let replace = child
                        .fds
                        .get(&fd)
                        .is_some_and(|d| d.origin == Origin::PreExisting);
                    if replace {
                        child.fds.insert(fd, descriptor);
                    }
                }
                child.fork_stack = fork_stack;
                self.processes.insert(child_pid, child);
                return;
            }
        }
        let mut child = Process::new(child_pid, parent_pid, comm);
        child.fork_stack = fork_stack;
        child.cwd = cwd;
        child.lost_when_checked = lost_when_checked;
        child.fds = inherited;
        self.processes.insert(child_pid, child);
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
    let mut held: Vec<Descriptor> = process
        .fds
        .drain()
        .map(|(_, d)| d)
        .filter(Descriptor::created_here)
        .collect();
    held.sort_by_key(|d| d.fd);
    process.held_at_exit = held;
}

/// close_range(first, last, flags). Arguments the kernel rejects (first > last, unknown
/// flags) change nothing. `CLOSE_RANGE_UNSHARE` gives the caller a private copy of the table
/// first, which for a single-threaded process (the usual case: before exec) changes nothing
/// we track.
fn close_range(process: &mut Process, first: u32, last: u32, flags: u32) {
    if first > last || flags & !(CLOSE_RANGE_UNSHARE | CLOSE_RANGE_CLOEXEC) != 0 {
        return;
    }
    let in_range = |fd: i32| u32::try_from(fd).is_ok_and(|fd| (first..=last).contains(&fd));
    if flags & CLOSE_RANGE_CLOEXEC != 0 {
        for d in process.fds.values_mut().filter(|d| in_range(d.fd)) {
            d.cloexec = true;
        }
    } else {
        process.fds.retain(|&fd, _| !in_range(fd));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tracer_common::{
        ARG_UNKNOWN,
        abi::{AT_FDCWD, F_DUPFD, F_DUPFD_CLOEXEC, O_CLOEXEC},
    };

    pub(crate) const PARENT: u32 = 100;
    const CLOEXEC: u64 = O_CLOEXEC;
    const CHILD: u32 = 200;

    pub(crate) fn header(tgid: u32, tid: u32, t: u64, stack_id: Option<u32>) -> Header {
        Header {
            tgid,
            tid,
            stack_id,
            timestamp_ns: t,
            generation: 0,
        }
    }

    /// A file-open event with everything spelled out.
    fn open_raw(
        tgid: u32,
        fd: i32,
        syscall: Syscall,
        dirfd: i32,
        flags: u32,
        path: &[u8],
    ) -> Event {
        Event::FileOpened {
            header: header(tgid, tgid, 1, Some(1)),
            fd,
            syscall,
            dirfd,
            flags,
            path: Some(path.to_vec()),
            path_truncated: false,
        }
    }

    pub(crate) fn open(tgid: u32, fd: i32, path: &str, t: u64) -> Event {
        Event::FileOpened {
            header: header(tgid, tgid, t, Some(1)),
            fd,
            syscall: Syscall::Openat,
            dirfd: AT_FDCWD,
            flags: 0,
            path: Some(path.as_bytes().to_vec()),
            path_truncated: false,
        }
    }

    fn created(tgid: u32, fd: i32, syscall: Syscall, arg0: u64, arg1: u64) -> Event {
        Event::FdCreated {
            header: header(tgid, tgid, 5, Some(2)),
            fd,
            syscall,
            arg0,
            arg1,
            arg2: 0,
        }
    }

    pub(crate) fn close(tgid: u32, tid: u32, fd: i32) -> Event {
        Event::FdClosed {
            header: header(tgid, tid, 9, None),
            fd,
        }
    }

    pub(crate) fn fork(parent: u32, child: u32, flags: u64) -> Event {
        Event::TaskCreated {
            header: header(parent, parent, 7, Some(3)),
            child_tid: child,
            syscall: Some(Syscall::Clone),
            clone_flags: Some(flags),
        }
    }

    pub(crate) fn exit(tgid: u32, tid: u32, group_dead: Option<bool>) -> Event {
        Event::TaskExited {
            header: header(tgid, tid, 20, None),
            group_dead,
        }
    }

    pub(crate) fn open_fds(agg: &Aggregator, pid: u32) -> Vec<i32> {
        let mut fds: Vec<i32> = agg.process(pid).unwrap().fds.keys().copied().collect();
        fds.sort();
        fds
    }

    fn snapshot(pid: u32, fds: &[i32]) -> ProcessSnapshot {
        ProcessSnapshot {
            pid,
            ppid: 1,
            comm: "server".into(),
            threads: 1,
            fds: fds
                .iter()
                .map(|&fd| SnapshotFd {
                    fd,
                    kind: DescriptorKind::Socket,
                    detail: "tcp 127.0.0.1:8080".into(),
                    deleted: false,
                    tcp_state: Some("LISTEN".into()),
                    cloexec: fd == 4,
                })
                .collect(),
            zombie: false,
            cwd: None,
            start_time: None,
        }
    }

    /// Open then close leaves nothing; the fd number can be reused afterwards.
    #[test]
    fn open_close_and_reuse() {
        let mut agg = Aggregator::new();
        agg.apply(&open(PARENT, 3, "/a", 1));
        agg.apply(&close(PARENT, PARENT, 3));
        assert!(open_fds(&agg, PARENT).is_empty());
        agg.apply(&open(PARENT, 3, "/b", 2));
        assert_eq!(agg.process(PARENT).unwrap().fds[&3].detail, "/b");
    }

    /// Threads share one table: a descriptor opened on one thread and closed on another is gone.
    #[test]
    fn close_on_another_thread() {
        let mut agg = Aggregator::new();
        agg.apply(&open(PARENT, 5, "/dev/null", 1));
        agg.apply(&close(PARENT, PARENT + 1, 5));
        assert!(open_fds(&agg, PARENT).is_empty());
    }

    /// Closing an fd we never saw changes nothing and does not panic.
    #[test]
    fn close_of_unknown_fd_is_harmless() {
        let mut agg = Aggregator::new();
        agg.apply(&close(PARENT, PARENT, 42));
        agg.apply(&open(PARENT, 3, "/a", 1));
        agg.apply(&close(PARENT, PARENT, 42));
        assert_eq!(open_fds(&agg, PARENT), vec![3]);
    }

    /// dup2 onto an open fd replaces what it held; the copy takes the old fd's kind and detail.
    #[test]
    fn dup2_over_open_fd_closes_it() {
        let mut agg = Aggregator::new();
        agg.apply(&open(PARENT, 3, "/log", 1));
        agg.apply(&open(PARENT, 4, "/other", 1));
        agg.apply(&created(PARENT, 4, Syscall::Dup2, 3, 0));
        let fds = &agg.process(PARENT).unwrap().fds;
        assert_eq!(fds[&4].detail, "/log");
        assert_eq!(fds[&4].opened_by(), "dup2");
        assert_eq!(fds.len(), 2);
    }

    /// dup2(fd, fd) is a no-op: the original descriptor keeps its origin.
    #[test]
    fn dup2_onto_itself_changes_nothing() {
        let mut agg = Aggregator::new();
        agg.apply(&open(PARENT, 3, "/log", 1));
        agg.apply(&created(PARENT, 3, Syscall::Dup2, 3, 0));
        assert_eq!(agg.process(PARENT).unwrap().fds[&3].opened_by(), "openat");
    }

    /// dup3 with O_CLOEXEC marks the copy close-on-exec.
    #[test]
    fn dup3_cloexec() {
        let mut agg = Aggregator::new();
        agg.apply(&open(PARENT, 3, "/log", 1));
        agg.apply(&created(PARENT, 9, Syscall::Dup3, 3, CLOEXEC));
        assert!(agg.process(PARENT).unwrap().fds[&9].cloexec);
    }

    /// The pre-fork incident: the parent accepts, forks a child that serves and exits, and
    /// never closes its copy. The parent holds the accepted socket; the child reports nothing.
    #[test]
    fn prefork_parent_keeps_accepted_socket() {
        let mut agg = Aggregator::new();
        agg.add_snapshot(snapshot(PARENT, &[3]), 0);
        agg.apply(&created(PARENT, 4, Syscall::Accept4, 3, 0));
        agg.apply(&fork(PARENT, CHILD, 17));
        let child = agg.process(CHILD).unwrap();
        assert_eq!(child.ppid, PARENT);
        assert_eq!(child.fds[&4].opened_by(), "inherited");
        assert_eq!(
            child.fds[&4].stack.map(|s| (s.id, s.pid)),
            Some((2, PARENT))
        );
        assert_eq!(child.fds[&3].opened_by(), "pre-existing");
        agg.apply(&close(CHILD, CHILD, 4));
        agg.apply(&exit(CHILD, CHILD, Some(true)));
        let child = agg.process(CHILD).unwrap();
        assert!(child.exited());
        assert!(
            child.held_at_exit.is_empty(),
            "inherited copies are not leaks"
        );
        let parent = agg.process(PARENT).unwrap();
        assert_eq!(parent.fds[&4].opened_by(), "accept4");
        assert_eq!(parent.fds[&4].detail, "tcp (accepted)");
        assert_eq!(parent.fds[&3].opened_by(), "pre-existing");
    }

    /// A process that exits holding descriptors it created reports them as held at exit.
    #[test]
    fn exit_keeps_what_the_process_created() {
        let mut agg = Aggregator::new();
        agg.apply(&fork(PARENT, CHILD, 17));
        agg.apply(&open(CHILD, 5, "/tmp/x", 8));
        agg.apply(&open(CHILD, 6, "/tmp/y", 8));
        agg.apply(&close(CHILD, CHILD, 6));
        agg.apply(&exit(CHILD, CHILD, Some(true)));
        let child = agg.process(CHILD).unwrap();
        assert_eq!(child.held_at_exit.len(), 1);
        assert_eq!(child.held_at_exit[0].detail, "/tmp/x");
        assert!(child.fds.is_empty());
        assert_eq!(agg.live_processes().count(), 1, "only the parent is live");
    }

    /// Threads are counted, not forked: no new process, and their exit is not the process's.
    #[test]
    fn threads_are_counted() {
        let mut agg = Aggregator::new();
        agg.add_snapshot(snapshot(PARENT, &[]), 0);
        agg.apply(&fork(PARENT, PARENT + 1, CLONE_THREAD | 0x100));
        agg.apply(&fork(PARENT, PARENT + 2, CLONE_THREAD | 0x100));
        assert!(agg.process(PARENT + 1).is_none());
        agg.apply(&exit(PARENT, PARENT + 1, Some(false)));
        let parent = agg.process(PARENT).unwrap();
        assert!(!parent.exited());
        assert_eq!(
            parent.threads,
            ThreadCounts {
                live: 2,
                created: 2,
                exited: 1
            }
        );
        assert_eq!(parent.new_threads.len(), 1);
    }

    /// Without group_dead, the leader's exit ends the process and a thread's does not.
    #[test]
    fn exit_without_group_dead_uses_leader() {
        let mut agg = Aggregator::new();
        agg.apply(&open(PARENT, 3, "/a", 1));
        agg.apply(&exit(PARENT, PARENT + 1, None));
        assert!(!agg.process(PARENT).unwrap().exited());
        agg.apply(&exit(PARENT, PARENT, None));
        assert!(agg.process(PARENT).unwrap().exited());
    }

    /// Events win over the attach snapshot: a descriptor seen created is not made pre-existing.
    #[test]
    fn snapshot_does_not_override_events() {
        let mut agg = Aggregator::new();
        agg.apply(&open(PARENT, 3, "/a", 1));
        agg.add_snapshot(snapshot(PARENT, &[3, 4]), 2);
        let fds = &agg.process(PARENT).unwrap().fds;
        assert_eq!(fds[&3].opened_by(), "openat");
        assert_eq!(fds[&4].opened_by(), "pre-existing");
    }

    /// A child already in the snapshot learns what it inherited from the fork event.
    #[test]
    fn fork_refines_snapshotted_child() {
        let mut agg = Aggregator::new();
        agg.apply(&created(PARENT, 4, Syscall::Accept, 3, 0));
        agg.add_snapshot(snapshot(CHILD, &[4]), 2);
        agg.apply(&fork(PARENT, CHILD, 17));
        assert_eq!(agg.process(CHILD).unwrap().fds[&4].opened_by(), "inherited");
    }

    /// A reused pid starts a fresh process; the old one is kept for the report.
    #[test]
    fn reused_pid_is_a_new_process() {
        let mut agg = Aggregator::new();
        agg.apply(&fork(PARENT, CHILD, 17));
        agg.apply(&open(CHILD, 5, "/old", 8));
        agg.apply(&exit(CHILD, CHILD, Some(true)));
        agg.apply(&fork(PARENT, CHILD, 17));
        assert!(!agg.process(CHILD).unwrap().exited());
        assert!(agg.process(CHILD).unwrap().fds.is_empty());
        let held: usize = agg.processes().map(|p| p.held_at_exit.len()).sum();
        assert_eq!(held, 1);
    }

    /// exec drops close-on-exec descriptors (from events and from the snapshot) and keeps the rest.
    #[test]
    fn exec_closes_cloexec_descriptors() {
        let mut agg = Aggregator::new();
        agg.add_snapshot(snapshot(PARENT, &[3, 4]), 0);
        agg.apply(&created(PARENT, 9, Syscall::Dup3, 3, CLOEXEC));
        agg.apply(&Event::Exec {
            header: header(PARENT, PARENT, 30, None),
        });
        assert_eq!(open_fds(&agg, PARENT), vec![3]);
    }

    /// An exit seen twice (vanished from /proc, then its event) keeps what was held at exit.
    #[test]
    fn second_exit_is_ignored() {
        let mut agg = Aggregator::new();
        agg.apply(&open(PARENT, 3, "/a", 1));
        agg.mark_vanished(PARENT, 10);
        agg.apply(&exit(PARENT, PARENT, Some(true)));
        assert_eq!(agg.process(PARENT).unwrap().held_at_exit.len(), 1);
    }

    /// pipe and socketpair create two descriptors, each knowing its kind; pipe2's O_CLOEXEC sticks.
    #[test]
    fn pairs() {
        let mut agg = Aggregator::new();
        agg.apply(&created(PARENT, 3, Syscall::Pipe2, 4, CLOEXEC));
        agg.apply(&created(PARENT, 4, Syscall::Pipe2, 3, CLOEXEC));
        agg.apply(&Event::FdCreated {
            header: header(PARENT, PARENT, 5, None),
            fd: 5,
            syscall: Syscall::Socketpair,
            arg0: 6,
            arg1: 1,
            arg2: 1,
        });
        let fds = &agg.process(PARENT).unwrap().fds;
        assert_eq!(fds[&3].kind, DescriptorKind::Pipe);
        assert!(fds[&4].cloexec);
        assert_eq!(fds[&5].detail, "unix socketpair");
    }

    /// An accept that began before attach (unknown listener) still records the socket.
    #[test]
    fn accept_with_unknown_listener() {
        let mut agg = Aggregator::new();
        agg.apply(&created(
            PARENT,
            7,
            Syscall::Accept4,
            ARG_UNKNOWN,
            ARG_UNKNOWN,
        ));
        let fd = &agg.process(PARENT).unwrap().fds[&7];
        assert_eq!(
            (fd.opened_by(), fd.detail.as_str(), fd.cloexec),
            ("accept4", "socket (accepted)", false)
        );
    }

    /// A child that was already a zombie at attach is an exited process with nothing open.
    #[test]
    fn zombie_in_snapshot_is_exited() {
        let mut agg = Aggregator::new();
        agg.add_snapshot(
            ProcessSnapshot {
                zombie: true,
                ..snapshot(CHILD, &[3])
            },
            5,
        );
        let child = agg.process(CHILD).unwrap();
        assert_eq!(child.exited_at_ns, Some(5));
        assert!(child.fds.is_empty() && child.held_at_exit.is_empty());
    }

    /// Births of every family carry their kind, and the close-on-exec flag each spells its
    /// own way; exec then closes exactly the close-on-exec ones.
    #[test]
    fn special_descriptors_and_exec() {
        use DescriptorKind as K;
        let mut agg = Aggregator::new();
        let births = [
            (3, Syscall::Eventfd2, CLOEXEC, K::Eventfd, true),
            (4, Syscall::Eventfd, ARG_UNKNOWN, K::Eventfd, false),
            (5, Syscall::EpollCreate1, CLOEXEC, K::Epoll, true),
            (6, Syscall::TimerfdCreate, 0, K::Timerfd, false),
            (7, Syscall::InotifyInit1, CLOEXEC, K::Inotify, true),
            (8, Syscall::PidfdOpen, ARG_UNKNOWN, K::Pidfd, true),
            (9, Syscall::IoUringSetup, ARG_UNKNOWN, K::Other, true),
            (10, Syscall::FanotifyInit, 1, K::Other, true),
            (11, Syscall::PerfEventOpen, 8, K::Other, true),
            (12, Syscall::Userfaultfd, 0, K::Other, false),
        ];
        for (fd, syscall, flags, _, _) in births {
            agg.apply(&created(PARENT, fd, syscall, flags, 0));
        }
        agg.apply(&created(
            PARENT,
            13,
            Syscall::Signalfd4,
            -1i64 as u64,
            CLOEXEC,
        ));
        let table = &agg.process(PARENT).unwrap().fds;
        for (fd, syscall, _, kind, cloexec) in births {
            let d = &table[&fd];
            assert_eq!(
                (d.kind, d.cloexec, d.opened_by()),
                (kind, cloexec, syscall.name()),
                "fd {fd}"
            );
        }
        assert_eq!((table[&13].kind, table[&13].cloexec), (K::Signalfd, true));
        agg.apply(&Event::Exec {
            header: header(PARENT, PARENT, 30, None),
        });
        assert_eq!(open_fds(&agg, PARENT), vec![4, 6, 12]);
    }

    /// signalfd(fd, ...) on an existing signalfd changes its mask: the same descriptor.
    #[test]
    fn signalfd_update_is_not_a_birth() {
        let mut agg = Aggregator::new();
        agg.apply(&created(PARENT, 5, Syscall::Signalfd, -1i64 as u64, 0));
        let born = agg.process(PARENT).unwrap().fds[&5].opened_at_ns;
        agg.apply(&Event::FdCreated {
            header: header(PARENT, PARENT, 50, Some(9)),
            fd: 5,
            syscall: Syscall::Signalfd,
            arg0: 5,
            arg1: 0,
            arg2: 0,
        });
        assert_eq!(agg.process(PARENT).unwrap().fds[&5].opened_at_ns, born);
    }

    /// memfd_create names the descriptor after its argument (bytes kept as escapes);
    /// MFD_CLOEXEC is bit 0.
    #[test]
    fn memfd_is_named() {
        let mut agg = Aggregator::new();
        agg.apply(&open_raw(
            PARENT,
            3,
            Syscall::MemfdCreate,
            AT_FDCWD,
            1,
            b"shm\xff",
        ));
        let d = &agg.process(PARENT).unwrap().fds[&3];
        assert_eq!(
            (d.kind, d.detail.as_str(), d.cloexec),
            (DescriptorKind::Memfd, "memfd:shm\\xff", true)
        );
    }

    /// fcntl F_DUPFD copies like dup, F_DUPFD_CLOEXEC with close-on-exec; F_SETFD turns the
    /// flag on and off, and exec honours the last word.
    #[test]
    fn fcntl_dupfd_and_setfd() {
        let mut agg = Aggregator::new();
        agg.apply(&open(PARENT, 3, "/log", 1));
        agg.apply(&created(PARENT, 10, Syscall::Fcntl, 3, F_DUPFD));
        agg.apply(&created(PARENT, 11, Syscall::Fcntl, 3, F_DUPFD_CLOEXEC));
        let table = &agg.process(PARENT).unwrap().fds;
        assert_eq!(
            (table[&10].detail.as_str(), table[&10].cloexec),
            ("/log", false)
        );
        assert_eq!(
            (table[&11].opened_by(), table[&11].cloexec),
            ("fcntl", true)
        );
        let setfd = |fd, on| Event::CloexecSet {
            header: header(PARENT, PARENT, 5, None),
            fd,
            on,
        };
        agg.apply(&setfd(3, true));
        agg.apply(&setfd(11, false));
        agg.apply(&Event::Exec {
            header: header(PARENT, PARENT, 6, None),
        });
        assert_eq!(open_fds(&agg, PARENT), vec![10, 11]);
    }

    fn close_range(first: u32, last: u32, flags: u32) -> Event {
        Event::RangeClosed {
            header: header(PARENT, PARENT, 8, None),
            first,
            last,
            flags,
        }
    }

    /// close_range closes a block (up to ~0U), marks it close-on-exec with
    /// CLOSE_RANGE_CLOEXEC, and changes nothing when the kernel would reject its arguments.
    #[test]
    fn close_range_blocks() {
        let mut agg = Aggregator::new();
        for fd in 3..=12 {
            agg.apply(&open(PARENT, fd, "/f", 1));
        }
        agg.apply(&close_range(5, 7, 0));
        assert_eq!(open_fds(&agg, PARENT), vec![3, 4, 8, 9, 10, 11, 12]);
        agg.apply(&close_range(9, 3, 0));
        agg.apply(&close_range(3, 4, 1 << 7));
        assert_eq!(
            open_fds(&agg, PARENT).len(),
            7,
            "rejected calls change nothing"
        );
        agg.apply(&close_range(10, u32::MAX, 1 << 2));
        assert!(agg.process(PARENT).unwrap().fds[&12].cloexec);
        agg.apply(&close_range(9, u32::MAX, 1 << 1));
        assert_eq!(open_fds(&agg, PARENT), vec![3, 4, 8]);
    }

    /// Relative paths are resolved against the working directory or the directory fd at open
    /// time; unknown bases are said; non-UTF-8 bytes survive as escapes.
    #[test]
    fn relative_paths_are_resolved() {
        let mut agg = Aggregator::new();
        agg.apply(&open(PARENT, 3, "log.txt", 1));
        agg.set_cwd(PARENT, "/srv/app".into());
        agg.apply(&open(PARENT, 4, "./logs/a.log", 2));
        agg.apply(&open_raw(
            PARENT,
            5,
            Syscall::Openat,
            AT_FDCWD,
            0,
            b"/tmp/\xffx",
        ));
        agg.apply(&open(PARENT, 6, "/var/lib", 4));
        agg.apply(&open_raw(PARENT, 7, Syscall::Openat, 6, 0, b"db/../x"));
        agg.apply(&open_raw(PARENT, 8, Syscall::Openat, 42, 0, b"y"));
        agg.apply(&fork(PARENT, CHILD, 0));
        agg.apply(&open(CHILD, 9, "z", 7));
        let detail = |pid, fd| agg.process(pid).unwrap().fds[&fd].detail.clone();
        assert_eq!(
            detail(PARENT, 3),
            "log.txt (relative to the working directory)"
        );
        assert_eq!(detail(PARENT, 4), "/srv/app/logs/a.log");
        assert_eq!(detail(PARENT, 5), "/tmp/\\xffx");
        assert_eq!(detail(PARENT, 7), "/var/lib/db/../x");
        assert_eq!(detail(PARENT, 8), "y (relative to fd 42)");
        assert_eq!(
            detail(CHILD, 9),
            "/srv/app/z",
            "a child inherits the working directory"
        );
    }

    /// socket(2) arguments name the protocol, ignoring SOCK_* flags.
    #[test]
    fn socket_descriptions() {
        let mut agg = Aggregator::new();
        agg.apply(&created(PARENT, 3, Syscall::Socket, 2, 1 | CLOEXEC));
        agg.apply(&created(PARENT, 4, Syscall::Socket, 10, 2));
        agg.apply(&created(PARENT, 5, Syscall::Socket, 1, 1));
        let table = &agg.process(PARENT).unwrap().fds;
        let details: Vec<&str> = (3..=5).map(|fd| table[&fd].detail.as_str()).collect();
        assert_eq!(details, ["tcp", "udp6", "unix"]);
        assert!(table[&3].cloexec && !table[&4].cloexec);
    }

    /// Events of two threads reach the ring in the order their syscalls took effect (close is
    /// emitted before the kernel frees the number, an open after it installs one), so a close
    /// on one CPU and an open reusing the number on another apply in ring order, whatever
    /// their timestamps (taken on different CPUs) say.
    #[test]
    fn fd_reuse_across_threads_follows_ring_order() {
        let mut agg = Aggregator::new();
        agg.apply(&open(PARENT, 3, "/old", 10));
        agg.apply(&close(PARENT, PARENT + 1, 3));
        agg.apply(&open(PARENT, 3, "/new", 9));
        assert_eq!(agg.process(PARENT).unwrap().fds[&3].detail, "/new");
        agg.apply(&close(PARENT, PARENT, 3));
        agg.apply(&close(PARENT, PARENT, 3));
        assert!(
            open_fds(&agg, PARENT).is_empty(),
            "a second close (EBADF) is harmless"
        );
    }
}
