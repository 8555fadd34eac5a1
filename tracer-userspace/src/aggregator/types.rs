//! What the aggregator keeps and takes in: descriptors and where they came from, processes
//! with their tables and threads, and the /proc snapshots taken at attach.

use foldhash::{HashMap, HashMapExt as _};
use tracer_common::Syscall;

use super::{births::Birth, lives::Lives, reconcile::Sighting};
use crate::{
    events::Header,
    model::{DescriptorKind, StackRef},
};

/// How a descriptor came to be in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Origin {
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
pub(crate) struct Descriptor {
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
    pub(super) fn born(header: &Header, fd: i32, syscall: Syscall, birth: Birth) -> Self {
        Self {
            fd,
            kind: birth.kind,
            detail: birth.detail,
            origin: Origin::Syscall(syscall),
            inherited: false,
            tid: header.tid,
            opened_at_ns: header.timestamp_ns,
            stack: header.stack(),
            path_truncated: false,
            deleted: false,
            tcp_state: None,
            cloexec: birth.cloexec,
        }
    }

    /// The contract's `opened_by`: the syscall, `inherited`, or `pre-existing`.
    #[cfg(test)]
    pub(crate) fn opened_by(&self) -> &'static str {
        match (self.origin, self.inherited) {
            (Origin::PreExisting, _) => "pre-existing",
            (_, true) => "inherited",
            (Origin::Reconciled, false) => "unknown",
            (Origin::Syscall(syscall), false) => syscall.name(),
        }
    }

    /// How the tracer knows about it: from an `event`, the `attach` snapshot of /proc, or
    /// `reconciliation` with /proc while traced.
    #[cfg(test)]
    pub(crate) fn learned_by(&self) -> &'static str {
        match self.origin {
            Origin::Syscall(_) => "event",
            Origin::PreExisting => "attach",
            Origin::Reconciled => "reconciliation",
        }
    }

    /// Came into this process while traced (created, or received) rather than inherited or
    /// already open at attach: what is owed a close.
    pub(crate) fn created_here(&self) -> bool {
        self.origin != Origin::PreExisting && !self.inherited
    }
}

/// Thread counts since attach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ThreadCounts {
    pub live: u64,
    pub created: u64,
    pub exited: u64,
}

/// A thread that started while traced and has not exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LiveThread {
    pub stack: Option<StackRef>,
    pub started_ns: u64,
}

#[derive(Clone, Debug)]
pub(crate) struct Process {
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
    pub(super) lost_when_checked: u64,
    pub threads: ThreadCounts,
    /// Threads started while traced, by tid.
    pub new_threads: HashMap<u32, LiveThread>,
    /// The stack in the parent that forked it, when we saw the fork.
    pub fork_stack: Option<StackRef>,
    /// Forked while traced (not found at attach): once exited and reaped it may be forgotten.
    pub forked_while_traced: bool,
    /// Working directory (escaped like paths), for relative opens; `None` until known.
    pub cwd: Option<String>,
    /// starttime from /proc/PID/stat: tells this process from a later one with its pid.
    pub start_time: Option<u64>,
    /// Descriptors /proc showed that the table lacks, awaiting a second look.
    pub(super) pending: HashMap<i32, Sighting>,
    /// The table's last closed descriptors, to explain a close that fails with EBADF.
    pub(super) lives: Lives,
}

impl Process {
    pub(super) fn new(pid: u32, ppid: u32, comm: String) -> Self {
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
            forked_while_traced: false,
            cwd: None,
            start_time: None,
            pending: HashMap::new(),
            lives: Lives::default(),
        }
    }

    pub(crate) fn exited(&self) -> bool {
        self.exited_at_ns.is_some()
    }
}

/// One descriptor as /proc showed it at attach time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SnapshotFd {
    pub fd: i32,
    pub kind: DescriptorKind,
    pub detail: String,
    pub deleted: bool,
    pub tcp_state: Option<String>,
    pub cloexec: bool,
}

/// A followed process as /proc showed it at attach time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProcessSnapshot {
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
