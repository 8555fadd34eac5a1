//! The report contract (v1, see DESIGN.md "Report contract"): the serde types that become the
//! JSON document, field for field. Scripts depend on these names and values: extend them, don't
//! break them. How a descriptor came to be open stays typed ([`OpenedBy`], [`LearnedBy`]) until
//! serde writes the contract's strings.

use std::{cmp::Ordering, collections::BTreeMap, sync::Arc};

use serde::{Serialize, Serializer};
use tracer_common::Syscall;

use crate::model::{DescriptorKind, Frame, StackRef};
pub(crate) use crate::tcp::TimeWaitGroup;

pub(crate) const REPORT_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Report {
    pub version: u32,
    pub target: Target,
    /// Every process followed as a target (not as a descendant of one), in the order they
    /// were found; `target` is the first (or pid 0 when none was found).
    pub targets: Vec<TargetEntry>,
    pub duration_s: f64,
    pub events: EventCounts,
    pub processes: Vec<ProcessEntry>,
    pub open_descriptors: Vec<DescriptorEntry>,
    /// What processes held when they exited after events had been lost and before their
    /// table could be compared with /proc again: some may have been closed (their close
    /// lost), so they are kept out of `open_descriptors` and `stacks` (no false leaks).
    pub unverified_at_exit: Vec<DescriptorEntry>,
    /// Live descriptors only, by creating stack.
    pub stacks: Vec<StackGroup>,
    /// What processes still held when they exited (closed by the kernel then), by creating
    /// stack: normal for short-lived workers, a leak only if the count per process grows.
    pub at_exit_stacks: Vec<AtExitStackGroup>,
    /// Processes seen while traced; `processes` lists the live ones, zombies and those
    /// exited but not yet found reaped (all of them with `--at-exit-descriptors`).
    pub process_counts: ProcessCounts,
    pub thread_stacks: Vec<ThreadStackGroup>,
    /// Children that exited and were never reaped, by parent and forking stack.
    pub zombies: Vec<ZombieGroup>,
    /// Connections the followed processes left in TIME_WAIT while traced, by endpoints.
    pub time_wait: Vec<TimeWaitGroup>,
    /// TCP sockets of the followed processes by state: those held by descriptors, plus
    /// TIME_WAIT connections they left that are still in TIME_WAIT.
    pub tcp: BTreeMap<String, u64>,
    /// Files unlinked while live processes still hold them open: their disk space is freed
    /// only when the last descriptor closes. Largest first.
    pub deleted_files: Vec<DeletedFileEntry>,
    /// Closes, dup2s and dup3s of descriptors that were not open (EBADF), by closing stack.
    pub bad_closes: Vec<super::BadCloseGroupEntry>,
    /// `--all`: every process on the host, ranked by how fast it grows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<super::HostSection>,
    /// Present in snapshots taken while tracing goes on (SIGUSR1, --interval, triggers):
    /// which one, why, and what grew since the previous one. Absent from the final report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<super::growth::SnapshotInfo>,
}

/// One deleted file still held open by live followed processes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct DeletedFileEntry {
    /// The path it had.
    pub path: String,
    /// Its size (st_size), which is what it keeps from being freed, unless it is sparse.
    pub size_bytes: u64,
    /// The blocks allocated to it (st_blocks * 512).
    pub disk_bytes: u64,
    /// Descriptors that hold it, and the processes they are in.
    pub descriptors: u64,
    pub pids: Vec<u32>,
}

/// The file a descriptor holds, by stat(2) of the open file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HeldFile {
    pub dev: u64,
    pub inode: u64,
    pub size: u64,
    pub allocated: u64,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Target {
    pub pid: u32,
    pub command: Vec<String>,
}

/// A process followed as a target: how it was chosen and when following it began.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TargetEntry {
    pub pid: u32,
    pub command: Vec<String>,
    /// `pid`, `command`, `comm NAME`, `cgroup PATH` or `container ID`.
    pub matched_by: String,
    /// Seconds after the probes were attached (0 for what was found at attach).
    pub followed_since_s: f64,
    /// Its pid in its own PID namespace, when that is not the tracer's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nspid: Option<u32>,
    /// The container its cgroup names, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct EventCounts {
    pub received: u64,
    /// Every event the kernel side could not deliver or follow up, all causes together.
    pub lost: u64,
    pub lost_ring_buffer_full: u64,
    pub lost_in_flight_full: u64,
    pub unfollowed_children: u64,
    /// File opens that their own thread closed again before its process did anything else:
    /// the kernel counted each such pair and sent neither half (not in `received`). They can
    /// never be a leak; the EBADF of a second close right after one is still explained.
    pub paired_in_kernel: u64,
    /// Records that could not be decoded (a tracer bug if ever non-zero).
    pub undecodable: u64,
    /// Descriptors in our tables that /proc showed closed while tracing or at report time
    /// (their close was lost); they are left out of the report.
    pub reconciled_closed: u64,
    /// Descriptors /proc showed open without a creation event (lost, or a birth no
    /// tracepoint shows, like SCM_RIGHTS); reported with `learned_by: "reconciliation"`.
    pub reconciled_opened: u64,
    /// Entries of `unverified_at_exit`.
    pub unverified_at_exit: u64,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ThreadCountsEntry {
    pub live: u64,
    pub created: u64,
    pub exited: u64,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ProcessEntry {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exited: bool,
    pub zombie: bool,
    pub fork_stack: Option<Vec<FrameEntry>>,
    pub threads: ThreadCountsEntry,
    /// Its pid in its own PID namespace (a container's), when that is not the tracer's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nspid: Option<u32>,
    /// The container id its cgroup names, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Its cgroup v2 path, when it is not the root cgroup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct FrameEntry {
    #[serde(serialize_with = "hex_addr")]
    pub addr: u64,
    pub symbol: Option<String>,
    pub module: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Inlined into the next frame (same address); absent when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inlined: bool,
    /// `"python"` on a frame of Python code (`symbol` is its qualified name, `file` and
    /// `line` where it is); absent on native frames.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<&'static str>,
}

fn hex_addr<S: Serializer>(addr: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format!("{addr:#x}"))
}

impl From<Frame> for FrameEntry {
    fn from(frame: Frame) -> Self {
        Self {
            addr: frame.addr,
            symbol: frame.symbol,
            module: frame.module,
            file: frame.file,
            line: frame.line,
            inlined: frame.inlined,
            runtime: frame.python.then_some("python"),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct DescriptorEntry {
    pub pid: u32,
    pub fd: i32,
    pub kind: DescriptorKind,
    pub detail: String,
    pub tcp_state: Option<String>,
    /// How long the socket has been in `tcp_state` (known when the change was seen).
    pub tcp_state_age_s: Option<f64>,
    pub deleted: bool,
    /// The syscall that created it, or `inherited`, `pre-existing`, `unknown`.
    pub opened_by: OpenedBy,
    pub learned_by: LearnedBy,
    pub tid: u32,
    pub age_s: f64,
    pub at_exit: bool,
    pub stack_id: Option<u32>,
    /// Shared by every descriptor from the same stack: a million descriptors from a few stacks
    /// hold a few copies of the frames, not a million.
    pub stack: Arc<[FrameEntry]>,
    /// The path did not fit in the capture buffer and was cut.
    pub path_truncated: bool,
    pub cloexec: bool,
    /// The size of a deleted file (present for deleted files of live processes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// The file itself, when /proc showed a deleted file.
    #[serde(skip)]
    pub held_file: Option<HeldFile>,
    /// Where `stack` comes from; resolved into frames once per distinct stack.
    #[serde(skip)]
    pub stack_ref: Option<StackRef>,
}

/// How a descriptor came to be open in its process: the contract's `opened_by`. Serialized as
/// its [`name`](Self::name) and ordered by it, so a [`StackGroup::opened_by`] map lists its
/// keys as the JSON does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum OpenedBy {
    /// Created by this syscall in this process while traced.
    Syscall(Syscall),
    /// Copied in at fork from a parent that had it from an event or reconciliation; it keeps
    /// the parent's stack.
    Inherited,
    /// Open before the tracer attached (in this process or in the ancestor it came from); no
    /// stack.
    PreExisting,
    /// Found in /proc while traced, its creation event missing.
    Unknown,
}

impl OpenedBy {
    /// The contract's spelling: the syscall's name, `inherited`, `pre-existing` or `unknown`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Syscall(syscall) => syscall.name(),
            Self::Inherited => "inherited",
            Self::PreExisting => "pre-existing",
            Self::Unknown => "unknown",
        }
    }
}

impl Ord for OpenedBy {
    fn cmp(&self, other: &Self) -> Ordering {
        self.name().cmp(other.name())
    }
}

impl PartialOrd for OpenedBy {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Serialize for OpenedBy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// How the tracer learned of a descriptor: the contract's `learned_by`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LearnedBy {
    /// A creation event.
    Event,
    /// The /proc snapshot when the tracer attached.
    Attach,
    /// Found in /proc while traced, its creation event missing.
    Reconciliation,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct StackGroup {
    /// Null for descriptors without a stack (pre-existing ones, or when capture failed).
    pub stack_id: Option<u32>,
    pub open_count: u64,
    pub oldest_age_s: f64,
    pub newest_age_s: f64,
    /// How fast they pile up: descriptors created while traced, per minute over the time since
    /// the oldest of them was created (0 for fewer than two).
    pub per_minute: f64,
    pub kinds: BTreeMap<DescriptorKind, u64>,
    /// How they were opened, e.g. {"accept4": 20}.
    pub opened_by: BTreeMap<OpenedBy, u64>,
    pub pids: Vec<u32>,
    pub stack: Vec<FrameEntry>,
}

/// Descriptors from one stack that processes held when they exited, in aggregate.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct AtExitStackGroup {
    pub stack_id: Option<u32>,
    /// False when events had been lost before these exits and /proc could not check the
    /// tables: some may have been closed (the `unverified_at_exit` of these processes).
    pub verified: bool,
    /// Processes that exited holding at least one, and how many they held in all.
    pub processes: u64,
    pub descriptors: u64,
    pub per_process: PerProcessCounts,
    /// The latest exits held at least one more each, on average, than the first ones.
    pub grew: bool,
    pub kinds: BTreeMap<DescriptorKind, u64>,
    pub opened_by: BTreeMap<OpenedBy, u64>,
    /// The command of the first of them.
    pub comm: String,
    /// The first few pids, and the last.
    pub pids: Vec<u32>,
    pub first_exit_age_s: f64,
    pub last_exit_age_s: f64,
    /// The longest any of them had been open at its process's exit.
    pub longest_held_s: f64,
    /// Exits holding these, per minute, recently (decaying, see README).
    pub exits_per_minute: f64,
    /// The first few of them (`at_exit: true`, `age_s` = how long held at exit).
    pub examples: Vec<DescriptorEntry>,
    pub stack: Vec<FrameEntry>,
}

/// How many of a group's descriptors each process held at exit.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct PerProcessCounts {
    pub min: u64,
    pub median: u64,
    pub max: u64,
    /// Mean over the first 16 exits, and over the latest 16.
    pub first_mean: f64,
    pub recent_mean: f64,
}

/// Processes seen while traced.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct ProcessCounts {
    pub live: u64,
    /// Exited while traced (or before, as zombies), listed or not.
    pub exited: u64,
    /// Exited processes `processes` lists.
    pub exited_listed: u64,
}

/// Live threads of one process that started while traced, from one creation stack.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ThreadStackGroup {
    pub pid: u32,
    pub live: u64,
    pub stack_id: Option<u32>,
    /// Ages of the oldest and the newest of them.
    pub oldest_age_s: f64,
    pub newest_age_s: f64,
    /// How fast they pile up: live threads per minute over the time since the oldest started.
    pub per_minute: f64,
    pub stack: Vec<FrameEntry>,
}

/// Children of one parent that exited and were never waited for, forked from one stack.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ZombieGroup {
    pub ppid: u32,
    pub parent_comm: String,
    pub count: u64,
    pub pids: Vec<u32>,
    /// How long the oldest has been a zombie (at least since attach for those already dead).
    pub oldest_s: f64,
    pub fork_stack_id: Option<u32>,
    pub fork_stack: Vec<FrameEntry>,
}

/// Nanoseconds as the report's seconds.
pub(super) fn seconds(ns: u64) -> f64 {
    // Millisecond precision is what a reader needs, and it keeps the JSON short.
    (ns as f64 / 1e6).round() / 1e3
}
