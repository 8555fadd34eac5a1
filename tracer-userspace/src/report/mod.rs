//! The final report: what is still open, grouped by the stack that opened it, in the shape of
//! the report contract (v1). [`build`] assembles it from the aggregator; [`text`] renders it
//! for people, serde for scripts.

pub mod flamegraph;
pub mod text;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use serde::{Serialize, Serializer};

pub use crate::tcp::TimeWaitGroup;
use crate::{
    aggregator::{Aggregator, Descriptor, Process},
    model::{DescriptorKind, Frame, StackRef},
};

pub const REPORT_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub version: u32,
    pub target: Target,
    pub duration_s: f64,
    pub events: EventCounts,
    pub processes: Vec<ProcessEntry>,
    pub open_descriptors: Vec<DescriptorEntry>,
    /// What processes held when they exited after events had been lost and before their
    /// table could be compared with /proc again: some may have been closed (their close
    /// lost), so they are kept out of `open_descriptors` and `stacks` (no false leaks).
    pub unverified_at_exit: Vec<DescriptorEntry>,
    pub stacks: Vec<StackGroup>,
    pub thread_stacks: Vec<ThreadStackGroup>,
    /// Children that exited and were never reaped, by parent and forking stack.
    pub zombies: Vec<ZombieGroup>,
    /// Connections the followed processes left in TIME_WAIT while traced, by endpoints.
    pub time_wait: Vec<TimeWaitGroup>,
    /// TCP sockets of the followed processes by state: those held by descriptors, plus
    /// TIME_WAIT connections they left that are still in TIME_WAIT.
    pub tcp: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub pid: u32,
    pub command: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct EventCounts {
    pub received: u64,
    /// Every event the kernel side could not deliver or follow up, all causes together.
    pub lost: u64,
    pub lost_ring_buffer_full: u64,
    pub lost_in_flight_full: u64,
    pub unfollowed_children: u64,
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
pub struct ThreadCountsEntry {
    pub live: u64,
    pub created: u64,
    pub exited: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProcessEntry {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exited: bool,
    pub zombie: bool,
    pub fork_stack: Option<Vec<FrameEntry>>,
    pub threads: ThreadCountsEntry,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FrameEntry {
    #[serde(serialize_with = "hex_addr")]
    pub addr: u64,
    pub symbol: Option<String>,
    pub module: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Inlined into the next frame (same address); absent when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inlined: bool,
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
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct DescriptorEntry {
    pub pid: u32,
    pub fd: i32,
    pub kind: DescriptorKind,
    pub detail: String,
    pub tcp_state: Option<String>,
    /// How long the socket has been in `tcp_state` (known when the change was seen).
    pub tcp_state_age_s: Option<f64>,
    pub deleted: bool,
    pub opened_by: &'static str,
    /// `event`, `attach` (the /proc snapshot when the tracer attached) or `reconciliation`
    /// (found in /proc while traced, its creation event missing).
    pub learned_by: &'static str,
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
    /// Where `stack` comes from; resolved into frames once per distinct stack.
    #[serde(skip)]
    pub stack_ref: Option<StackRef>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StackGroup {
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
    pub opened_by: BTreeMap<&'static str, u64>,
    pub pids: Vec<u32>,
    pub stack: Vec<FrameEntry>,
}

/// Live threads of one process that started while traced, from one creation stack.
#[derive(Clone, Debug, Serialize)]
pub struct ThreadStackGroup {
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
pub struct ZombieGroup {
    pub ppid: u32,
    pub parent_comm: String,
    pub count: u64,
    pub pids: Vec<u32>,
    /// How long the oldest has been a zombie (at least since attach for those already dead).
    pub oldest_s: f64,
    pub fork_stack_id: Option<u32>,
    pub fork_stack: Vec<FrameEntry>,
}

/// What the report needs from outside the aggregator: stacks as frames, and /proc's view of
/// descriptors that are still open. The session implements it with the kernel maps, blazesym
/// and /proc; tests with fixed answers.
pub trait Resolver {
    fn frames(&mut self, stack: StackRef) -> Vec<Frame>;
    /// Updates live descriptors of `pid` from /proc (detail, TCP state, deleted) and returns
    /// the fds that turned out to be closed already.
    fn refresh(&mut self, pid: u32, descriptors: &mut [DescriptorEntry]) -> Vec<i32>;
    /// Whether `pid` is still a zombie child of `ppid` (exited, not reaped).
    fn is_zombie(&mut self, pid: u32, ppid: u32) -> bool;
}

/// Facts about the session the aggregator does not know.
#[derive(Clone, Debug, Default)]
pub struct SessionFacts {
    pub target: u32,
    pub command: Vec<String>,
    pub duration_s: f64,
    pub now_ns: u64,
    pub received: u64,
    pub undecodable: u64,
    pub lost_ring_full: u64,
    pub lost_in_flight_full: u64,
    pub unfollowed_children: u64,
    /// Report only descriptors at least this old.
    pub min_age_s: f64,
    /// From the TCP tracker and /proc/net/tcp at report time.
    pub time_wait: Vec<TimeWaitGroup>,
    pub time_wait_now: u64,
}

pub fn build(agg: &Aggregator, facts: &SessionFacts, resolver: &mut impl Resolver) -> Report {
    let mut processes: Vec<&Process> = agg.processes().collect();
    processes.sort_by_key(|p| (p.exited_at_ns.is_some(), p.pid));

    let mut descriptors = Vec::new();
    let mut reconciled_closed = agg.reconciled_closed;
    let mut unverified = Vec::new();
    for process in &processes {
        let mut live: Vec<&Descriptor> = process.fds.values().collect();
        live.sort_by_key(|d| d.fd);
        let mut entries: Vec<DescriptorEntry> = live
            .iter()
            .map(|d| entry(process.pid, d, facts.now_ns, false))
            .collect();
        if !process.exited() && !entries.is_empty() {
            let closed = resolver.refresh(process.pid, &mut entries);
            reconciled_closed += closed.len() as u64;
            entries.retain(|e| !closed.contains(&e.fd));
        }
        let exit_ns = process.exited_at_ns.unwrap_or(facts.now_ns);
        let held = process
            .held_at_exit
            .iter()
            .map(|d| entry(process.pid, d, exit_ns, true));
        if process.held_at_exit_unverified {
            unverified.extend(held);
        } else {
            entries.extend(held);
        }
        descriptors.extend(entries.into_iter().filter(|e| e.age_s >= facts.min_age_s));
    }

    // Symbolize each distinct stack once and attach frames to every descriptor.
    let mut frames_by_stack: HashMap<StackRef, Arc<[FrameEntry]>> = HashMap::new();
    for d in &mut descriptors {
        if let Some(stack) = d.stack_ref {
            let frames = frames_by_stack.entry(stack).or_insert_with(|| {
                resolver
                    .frames(stack)
                    .into_iter()
                    .map(FrameEntry::from)
                    .collect()
            });
            d.stack = frames.clone();
        }
    }

    let stacks = group_by_stack(&descriptors);
    let thread_stacks = group_threads(&processes, facts.now_ns, resolver);
    let process_entries: Vec<ProcessEntry> = processes
        .iter()
        .map(|p| ProcessEntry {
            pid: p.pid,
            ppid: p.ppid,
            comm: p.comm.clone(),
            exited: p.exited(),
            zombie: p.exited() && resolver.is_zombie(p.pid, p.ppid),
            fork_stack: p.fork_stack.map(|s| frames_of(Some(s), resolver)),
            threads: ThreadCountsEntry {
                live: p.threads.live,
                created: p.threads.created,
                exited: p.threads.exited,
            },
        })
        .collect();
    let mut tcp = BTreeMap::new();
    for d in descriptors.iter().filter(|d| !d.at_exit) {
        if let Some(state) = &d.tcp_state {
            *tcp.entry(state.clone()).or_insert(0) += 1;
        }
    }
    if facts.time_wait_now > 0 {
        *tcp.entry("TIME_WAIT".to_string()).or_insert(0) += facts.time_wait_now;
    }

    Report {
        version: REPORT_VERSION,
        target: Target {
            pid: facts.target,
            command: facts.command.clone(),
        },
        duration_s: (facts.duration_s * 1e3).round() / 1e3,
        events: EventCounts {
            received: facts.received,
            lost: facts.lost_ring_full + facts.lost_in_flight_full + facts.unfollowed_children,
            lost_ring_buffer_full: facts.lost_ring_full,
            lost_in_flight_full: facts.lost_in_flight_full,
            unfollowed_children: facts.unfollowed_children,
            undecodable: facts.undecodable,
            reconciled_closed,
            reconciled_opened: agg.reconciled_opened,
            unverified_at_exit: unverified.len() as u64,
        },
        open_descriptors: descriptors,
        unverified_at_exit: unverified,
        zombies: group_zombies(&processes, &process_entries, facts.now_ns, resolver),
        time_wait: facts.time_wait.clone(),
        processes: process_entries,
        stacks,
        thread_stacks,
        tcp,
    }
}

fn entry(pid: u32, d: &Descriptor, now_ns: u64, at_exit: bool) -> DescriptorEntry {
    DescriptorEntry {
        pid,
        fd: d.fd,
        kind: d.kind,
        detail: d.detail.clone(),
        tcp_state: d.tcp_state.clone(),
        tcp_state_age_s: None,
        deleted: d.deleted,
        opened_by: d.opened_by(),
        learned_by: d.learned_by(),
        tid: d.tid,
        age_s: seconds(now_ns.saturating_sub(d.opened_at_ns)),
        at_exit,
        stack_id: d.stack.map(|s| s.id),
        stack: Arc::default(),
        path_truncated: d.path_truncated,
        cloexec: d.cloexec,
        stack_ref: d.stack,
    }
}

fn seconds(ns: u64) -> f64 {
    // Millisecond precision is what a reader needs, and it keeps the JSON short.
    (ns as f64 / 1e6).round() / 1e3
}

/// Descriptors grouped by the stack that created them, most numerous first.
fn group_by_stack(descriptors: &[DescriptorEntry]) -> Vec<StackGroup> {
    let mut groups: Vec<StackGroup> = Vec::new();
    // Descriptors without a stack are told apart by how we learned of them.
    let mut index: HashMap<(Option<u32>, &str), usize> = HashMap::new();
    for d in descriptors {
        let no_stack_source = if d.stack_id.is_none() {
            d.learned_by
        } else {
            ""
        };
        let at = *index
            .entry((d.stack_id, no_stack_source))
            .or_insert_with(|| {
                groups.push(StackGroup {
                    stack_id: d.stack_id,
                    open_count: 0,
                    oldest_age_s: 0.0,
                    newest_age_s: f64::INFINITY,
                    per_minute: 0.0,
                    kinds: BTreeMap::new(),
                    opened_by: BTreeMap::new(),
                    pids: Vec::new(),
                    stack: d.stack.to_vec(),
                });
                groups.len() - 1
            });
        let group = &mut groups[at];
        group.open_count += 1;
        group.oldest_age_s = group.oldest_age_s.max(d.age_s);
        group.newest_age_s = group.newest_age_s.min(d.age_s);
        *group.kinds.entry(d.kind).or_insert(0) += 1;
        *group.opened_by.entry(d.opened_by).or_insert(0) += 1;
        if !group.pids.contains(&d.pid) {
            group.pids.push(d.pid);
        }
    }
    // Growth counts what was created while traced (several of them: one has no rate), over
    // the time since the oldest of those.
    let mut created: HashMap<Option<u32>, (u64, f64)> = HashMap::new();
    // Only descriptors with a stack: those learned from /proc have neither a stack nor an
    // exact birth time to measure growth by.
    for d in descriptors
        .iter()
        .filter(|d| d.stack_id.is_some() && d.opened_by != "pre-existing")
    {
        let (count, oldest) = created.entry(d.stack_id).or_insert((0, 0.0));
        *count += 1;
        *oldest = oldest.max(d.age_s);
    }
    for group in &mut groups {
        group.per_minute = match created.get(&group.stack_id) {
            Some(&(count, oldest)) if count > 1 => per_minute(count, oldest),
            _ => 0.0,
        };
    }
    // What grew while we watched comes first; descriptors that were open before attach
    // (no stack, nothing to blame) come last.
    let only_pre_existing = |g: &StackGroup| g.opened_by.keys().all(|by| *by == "pre-existing");
    groups.sort_by(|a, b| {
        only_pre_existing(a)
            .cmp(&only_pre_existing(b))
            .then(b.open_count.cmp(&a.open_count))
            .then(b.oldest_age_s.total_cmp(&a.oldest_age_s))
    });
    groups
}

/// Live threads started while traced, grouped by process and creation stack.
fn group_threads(
    processes: &[&Process],
    now_ns: u64,
    resolver: &mut impl Resolver,
) -> Vec<ThreadStackGroup> {
    let mut groups = Vec::new();
    for process in processes.iter().filter(|p| !p.exited()) {
        // stack id -> (stack, start times)
        let mut by_stack: BTreeMap<Option<u32>, (Option<StackRef>, Vec<u64>)> = BTreeMap::new();
        for thread in process.new_threads.values() {
            let slot = by_stack
                .entry(thread.stack.map(|s| s.id))
                .or_insert((thread.stack, Vec::new()));
            slot.1.push(thread.started_ns);
        }
        for (stack_id, (stack, starts)) in by_stack {
            let oldest = seconds(now_ns.saturating_sub(*starts.iter().min().unwrap_or(&now_ns)));
            let newest = seconds(now_ns.saturating_sub(*starts.iter().max().unwrap_or(&now_ns)));
            let live = starts.len() as u64;
            groups.push(ThreadStackGroup {
                pid: process.pid,
                live,
                stack_id,
                oldest_age_s: oldest,
                newest_age_s: newest,
                per_minute: per_minute(live, oldest),
                stack: frames_of(stack, resolver),
            });
        }
    }
    groups.sort_by_key(|g| std::cmp::Reverse(g.live));
    groups
}

/// Zombie children grouped by parent and the stack that forked them, most numerous first.
fn group_zombies(
    processes: &[&Process],
    entries: &[ProcessEntry],
    now_ns: u64,
    resolver: &mut impl Resolver,
) -> Vec<ZombieGroup> {
    let mut groups: Vec<ZombieGroup> = Vec::new();
    for (process, entry) in processes.iter().zip(entries).filter(|(_, e)| e.zombie) {
        let stack_id = process.fork_stack.map(|s| s.id);
        let dead_for = seconds(now_ns.saturating_sub(process.exited_at_ns.unwrap_or(now_ns)));
        match groups
            .iter_mut()
            .find(|g| g.ppid == process.ppid && g.fork_stack_id == stack_id)
        {
            Some(group) => {
                group.count += 1;
                group.pids.push(process.pid);
                group.oldest_s = group.oldest_s.max(dead_for);
            }
            None => groups.push(ZombieGroup {
                ppid: process.ppid,
                parent_comm: entries
                    .iter()
                    .find(|p| p.pid == process.ppid)
                    .map(|p| p.comm.clone())
                    .unwrap_or_else(|| entry.comm.clone()),
                count: 1,
                pids: vec![process.pid],
                oldest_s: dead_for,
                fork_stack_id: stack_id,
                fork_stack: frames_of(process.fork_stack, resolver),
            }),
        }
    }
    groups.sort_by_key(|g| std::cmp::Reverse(g.count));
    groups
}

fn frames_of(stack: Option<StackRef>, resolver: &mut impl Resolver) -> Vec<FrameEntry> {
    stack
        .map(|s| {
            resolver
                .frames(s)
                .into_iter()
                .map(FrameEntry::from)
                .collect()
        })
        .unwrap_or_default()
}

/// `count` over `seconds`, per minute; over less than a second it is counted as one second.
fn per_minute(count: u64, seconds: f64) -> f64 {
    (count as f64 * 60.0 / seconds.max(1.0) * 10.0).round() / 10.0
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        aggregator::{ProcessSnapshot, SnapshotFd},
        events::{Event, EventBody, FdCreated, FileOpened, Header, TaskCreated, TaskExited},
    };
    use tracer_common::Syscall;

    struct FakeResolver {
        closed: Vec<i32>,
    }

    impl Resolver for FakeResolver {
        fn frames(&mut self, stack: StackRef) -> Vec<Frame> {
            vec![Frame {
                symbol: Some(format!("fn_{}", stack.id)),
                ..Frame::unknown(0x1000 + u64::from(stack.id))
            }]
        }
        fn refresh(&mut self, _pid: u32, descriptors: &mut [DescriptorEntry]) -> Vec<i32> {
            for d in descriptors.iter_mut() {
                if d.kind == DescriptorKind::Socket {
                    d.tcp_state = Some("ESTABLISHED".into());
                }
            }
            self.closed.clone()
        }
        fn is_zombie(&mut self, pid: u32, _ppid: u32) -> bool {
            pid >= 500
        }
    }

    fn header() -> Header {
        Header {
            tgid: 1,
            tid: 1,
            stack_id: None,
            timestamp_ns: 0,
            generation: 0,
        }
    }

    fn accept(fd: i32, stack: u32, t: u64) -> Event {
        Event {
            header: Header {
                stack_id: Some(stack),
                timestamp_ns: t,
                ..header()
            },
            body: EventBody::FdCreated(FdCreated {
                fd,
                syscall: Syscall::Accept4,
                arg0: 3,
                arg1: 0,
                arg2: 0,
            }),
        }
    }

    /// A report with two stack groups and a pre-existing descriptor, for other modules' tests.
    pub(crate) fn sample_report() -> Report {
        build(
            &aggregator(),
            &facts(),
            &mut FakeResolver { closed: vec![] },
        )
    }

    fn aggregator() -> Aggregator {
        let mut agg = Aggregator::new();
        agg.add_snapshot(
            ProcessSnapshot {
                pid: 1,
                ppid: 0,
                comm: "server".into(),
                threads: 1,
                fds: vec![SnapshotFd {
                    fd: 3,
                    kind: DescriptorKind::Socket,
                    detail: "tcp 127.0.0.1:80".into(),
                    deleted: false,
                    tcp_state: Some("LISTEN".into()),
                    cloexec: false,
                }],
                zombie: false,
                cwd: None,
                start_time: None,
            },
            0,
        );
        for fd in 4..9 {
            agg.apply(&accept(fd, 7, 1_000_000_000));
        }
        agg.apply(&Event {
            header: Header {
                tid: 2,
                stack_id: Some(8),
                timestamp_ns: 2_000_000_000,
                ..header()
            },
            body: EventBody::FileOpened(FileOpened {
                fd: 9,
                syscall: Syscall::Openat,
                dirfd: -100,
                flags: 0,
                path: Some(b"/var/log/x".to_vec()),
                path_truncated: false,
            }),
        });
        agg
    }

    fn facts() -> SessionFacts {
        SessionFacts {
            target: 1,
            now_ns: 5_000_000_000,
            ..SessionFacts::default()
        }
    }

    /// Groups are ranked by count, carry their frames, kinds, ages and growth; TCP states are
    /// counted.
    #[test]
    fn groups_by_stack() {
        let report = build(
            &aggregator(),
            &facts(),
            &mut FakeResolver { closed: vec![] },
        );
        assert_eq!(report.open_descriptors.len(), 7);
        let top = &report.stacks[0];
        assert_eq!((top.stack_id, top.open_count), (Some(7), 5));
        assert_eq!((top.oldest_age_s, top.newest_age_s), (4.0, 4.0));
        // Five in the four seconds since the oldest opened.
        assert_eq!(top.per_minute, 75.0);
        assert_eq!(top.kinds[&DescriptorKind::Socket], 5);
        assert_eq!(top.opened_by["accept4"], 5);
        assert_eq!(top.stack[0].symbol.as_deref(), Some("fn_7"));
        assert_eq!(report.tcp["ESTABLISHED"], 6);
        let listener = report.open_descriptors.iter().find(|d| d.fd == 3).unwrap();
        assert_eq!(
            (listener.opened_by, listener.stack_id),
            ("pre-existing", None)
        );
        // Nothing grew in the group of descriptors open before attach.
        let before = report.stacks.iter().find(|g| g.stack_id.is_none()).unwrap();
        assert_eq!(before.per_minute, 0.0);
    }

    /// Groups of descriptors open before attach rank after those created while traced.
    #[test]
    fn pre_existing_ranks_last() {
        let mut agg = aggregator();
        agg.add_snapshot(
            ProcessSnapshot {
                pid: 1,
                ppid: 0,
                comm: "server".into(),
                threads: 1,
                fds: (20..40)
                    .map(|fd| SnapshotFd {
                        fd,
                        kind: DescriptorKind::File,
                        detail: "/var/log/old".into(),
                        deleted: false,
                        tcp_state: None,
                        cloexec: false,
                    })
                    .collect(),
                zombie: false,
                cwd: None,
                start_time: None,
            },
            0,
        );
        let report = build(&agg, &facts(), &mut FakeResolver { closed: vec![] });
        assert_eq!(report.stacks[0].stack_id, Some(7));
        assert_eq!(report.stacks.last().unwrap().stack_id, None);
        assert_eq!(report.stacks.last().unwrap().open_count, 21);
    }

    fn task(parent: u32, child: u32, flags: u64, stack: u32, t: u64) -> Event {
        Event {
            header: Header {
                tgid: parent,
                stack_id: Some(stack),
                timestamp_ns: t,
                ..header()
            },
            body: EventBody::TaskCreated(TaskCreated {
                child_tid: child,
                syscall: Some(Syscall::Clone),
                clone_flags: Some(flags),
            }),
        }
    }

    /// Children that exited and are still zombies are grouped by parent and fork stack, with
    /// how long the oldest has been dead; a reaped child is not a zombie.
    #[test]
    fn groups_zombies() {
        let mut agg = aggregator();
        for child in [500, 501, 502, 10] {
            agg.apply(&task(1, child, 17, 9, 1_000_000_000));
            agg.apply(&Event {
                header: Header {
                    tgid: child,
                    tid: child,
                    timestamp_ns: 2_000_000_000,
                    ..header()
                },
                body: EventBody::TaskExited(TaskExited {
                    group_dead: Some(true),
                }),
            });
        }
        let report = build(&agg, &facts(), &mut FakeResolver { closed: vec![] });
        assert_eq!(report.zombies.len(), 1);
        let group = &report.zombies[0];
        assert_eq!((group.ppid, group.count, group.oldest_s), (1, 3, 3.0));
        assert_eq!(group.parent_comm, "server");
        assert_eq!(group.fork_stack[0].symbol.as_deref(), Some("fn_9"));
        let reaped = report.processes.iter().find(|p| p.pid == 10).unwrap();
        assert!(reaped.exited && !reaped.zombie);
    }

    /// Live threads started while traced are grouped by creation stack with their growth;
    /// threads that exited are not counted.
    #[test]
    fn groups_live_threads() {
        let mut agg = aggregator();
        for (tid, t) in [
            (2, 1_000_000_000),
            (3, 2_000_000_000),
            (4, 3_000_000_000),
            (5, 3_000_000_000),
        ] {
            agg.apply(&task(1, tid, tracer_common::CLONE_THREAD, 11, t));
        }
        agg.apply(&Event {
            header: Header {
                tid: 5,
                timestamp_ns: 4_000_000_000,
                ..header()
            },
            body: EventBody::TaskExited(TaskExited {
                group_dead: Some(false),
            }),
        });
        let report = build(&agg, &facts(), &mut FakeResolver { closed: vec![] });
        let group = &report.thread_stacks[0];
        assert_eq!((group.pid, group.live, group.stack_id), (1, 3, Some(11)));
        assert_eq!((group.oldest_age_s, group.newest_age_s), (4.0, 2.0));
        assert_eq!(group.per_minute, 45.0);
    }

    /// Descriptors /proc shows closed are dropped and counted as reconciled.
    #[test]
    fn reconciles_closed_descriptors() {
        let report = build(
            &aggregator(),
            &facts(),
            &mut FakeResolver { closed: vec![4, 5] },
        );
        assert_eq!(report.open_descriptors.len(), 5);
        assert_eq!(report.events.reconciled_closed, 2);
    }

    /// --min-age leaves out younger descriptors.
    #[test]
    fn min_age_filters() {
        let facts = SessionFacts {
            min_age_s: 3.5,
            ..facts()
        };
        let report = build(&aggregator(), &facts, &mut FakeResolver { closed: vec![] });
        assert!(report.open_descriptors.iter().all(|d| d.age_s >= 3.5));
        assert_eq!(report.open_descriptors.len(), 6);
    }

    /// The JSON has the contract's required keys and hex addresses.
    #[test]
    fn json_shape() {
        let report = build(
            &aggregator(),
            &facts(),
            &mut FakeResolver { closed: vec![] },
        );
        let json = serde_json::to_value(&report).unwrap();
        for key in [
            "version",
            "target",
            "duration_s",
            "events",
            "processes",
            "open_descriptors",
            "stacks",
            "tcp",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        let d = &json["open_descriptors"][1];
        for key in [
            "pid",
            "fd",
            "kind",
            "detail",
            "tcp_state",
            "deleted",
            "opened_by",
            "tid",
            "age_s",
            "at_exit",
            "stack_id",
            "stack",
        ] {
            assert!(d.get(key).is_some(), "descriptor missing {key}");
        }
        assert_eq!(d["kind"], "socket");
        assert_eq!(d["stack"][0]["addr"], "0x1007");
        assert_eq!(json["events"]["lost"], 0);
    }
}
