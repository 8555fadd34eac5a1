//! Assembles the [`Report`] from the aggregator's tables and what the session knows, reaching the
//! live system (/proc, symbols) only through a [`Resolver`].

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use super::{
    DescriptorEntry, EventCounts, FrameEntry, ProcessCounts, ProcessEntry, REPORT_VERSION, Report,
    Target, TargetEntry, ThreadCountsEntry,
    at_exit::at_exit_stacks,
    deleted::deleted_files,
    entry::entry,
    group::{group_by_stack, group_threads, group_zombies},
    resolver::{Placement, Resolver, frames_of},
};
use crate::{
    aggregator::{Aggregator, Descriptor, Process},
    model::StackRef,
    tcp::TimeWaitGroup,
};

/// Facts about the session the aggregator does not know.
#[derive(Clone, Debug, Default)]
pub(crate) struct SessionFacts {
    pub target: u32,
    pub command: Vec<String>,
    /// Every root followed, `target` first.
    pub targets: Vec<TargetEntry>,
    /// `--all`'s watch of the host.
    pub host: Option<super::HostSection>,
    pub duration_s: f64,
    pub now_ns: u64,
    pub received: u64,
    pub undecodable: u64,
    pub lost_ring_full: u64,
    pub lost_in_flight_full: u64,
    pub unfollowed_children: u64,
    /// Opens closed again by their thread before their process did anything else, which the
    /// kernel counted and never sent (tracer-ebpf/src/held.rs).
    pub paired_in_kernel: u64,
    /// Report only descriptors at least this old.
    pub min_age_s: f64,
    /// From the TCP tracker and /proc/net/tcp at report time.
    pub time_wait: Vec<TimeWaitGroup>,
    pub time_wait_now: u64,
}

/// What the processes hold, as report entries.
struct Held {
    /// Still open (refreshed from /proc for live processes) or held at a verified exit, at
    /// least `--min-age` old.
    descriptors: Vec<DescriptorEntry>,
    /// Held at an exit that came after a loss and before /proc could be compared again.
    unverified: Vec<DescriptorEntry>,
    /// Descriptors /proc showed closed at report time.
    closed_at_report: u64,
}

pub(crate) fn build(
    agg: &Aggregator,
    facts: &SessionFacts,
    resolver: &mut impl Resolver,
) -> Report {
    let mut processes: Vec<&Process> = agg.processes().collect();
    processes.sort_by_key(|p| (p.exited_at_ns.is_some(), p.pid));

    let Held {
        mut descriptors,
        unverified,
        closed_at_report,
    } = held(&processes, facts, resolver);
    attach_frames(&mut descriptors, resolver);

    let stacks = group_by_stack(&descriptors);
    let at_exit_stacks = at_exit_stacks(agg.at_exit_groups(), facts.now_ns, resolver);
    let thread_stacks = group_threads(&processes, facts.now_ns, resolver);
    let process_entries = process_entries(&processes, resolver);
    let exited_listed = process_entries.iter().filter(|p| p.exited).count() as u64;
    let process_counts = ProcessCounts {
        live: process_entries.len() as u64 - exited_listed,
        exited: exited_listed + agg.exited_forgotten,
        exited_listed,
    };
    let tcp = tcp_states(&descriptors, facts.time_wait_now);
    let deleted_files = deleted_files(&descriptors);
    let events = event_counts(
        facts,
        agg.reconciled_closed + closed_at_report,
        agg.reconciled_opened,
        // Counted from the groups: the entries are listed only with --at-exit-descriptors.
        agg.at_exit_groups()
            .filter(|g| g.unverified)
            .map(|g| g.descriptors)
            .sum(),
    );

    Report {
        version: REPORT_VERSION,
        target: Target {
            pid: facts.target,
            command: facts.command.clone(),
        },
        targets: facts.targets.clone(),
        duration_s: (facts.duration_s * 1e3).round() / 1e3,
        events,
        open_descriptors: descriptors,
        unverified_at_exit: unverified,
        zombies: group_zombies(&processes, &process_entries, facts.now_ns, resolver),
        time_wait: facts.time_wait.clone(),
        processes: process_entries,
        stacks,
        at_exit_stacks,
        process_counts,
        thread_stacks,
        tcp,
        deleted_files,
        bad_closes: super::bad_closes::bad_closes(agg, facts.now_ns, resolver),
        host: facts.host.clone(),
        snapshot: None,
    }
}

/// Every process's open descriptors, fd order, live ones checked against /proc, then what it
/// held at exit.
fn held(processes: &[&Process], facts: &SessionFacts, resolver: &mut impl Resolver) -> Held {
    let mut all = Held {
        descriptors: Vec::new(),
        unverified: Vec::new(),
        closed_at_report: 0,
    };
    for process in processes {
        let mut live: Vec<&Descriptor> = process.fds.values().collect();
        live.sort_by_key(|d| d.fd);
        let mut entries: Vec<DescriptorEntry> = live
            .iter()
            .map(|d| entry(process.pid, d, facts.now_ns, false))
            .collect();
        if !process.exited() && !entries.is_empty() {
            let closed = resolver.refresh(process.pid, &mut entries);
            all.closed_at_report += closed.len() as u64;
            entries.retain(|e| !closed.contains(&e.fd));
        }
        let exit_ns = process.exited_at_ns.unwrap_or(facts.now_ns);
        let held = process
            .held_at_exit
            .iter()
            .map(|d| entry(process.pid, d, exit_ns, true));
        if process.held_at_exit_unverified {
            all.unverified.extend(held);
        } else {
            entries.extend(held);
        }
        all.descriptors
            .extend(entries.into_iter().filter(|e| e.age_s >= facts.min_age_s));
    }
    all
}

/// Symbolizes each distinct stack once and attaches its frames to every descriptor from it.
fn attach_frames(descriptors: &mut [DescriptorEntry], resolver: &mut impl Resolver) {
    let mut frames_by_stack: HashMap<StackRef, Arc<[FrameEntry]>> = HashMap::new();
    for d in descriptors {
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
}

fn process_entries(processes: &[&Process], resolver: &mut impl Resolver) -> Vec<ProcessEntry> {
    processes
        .iter()
        .map(|p| {
            let placement = if p.exited() {
                Placement::default()
            } else {
                resolver.placement(p.pid)
            };
            ProcessEntry {
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
                nspid: placement.nspid,
                container: placement.container,
                cgroup: placement.cgroup,
            }
        })
        .collect()
}

/// TCP sockets by state: those live descriptors hold, plus the connections left in TIME_WAIT
/// that are still in it.
fn tcp_states(descriptors: &[DescriptorEntry], time_wait_now: u64) -> BTreeMap<String, u64> {
    let mut tcp = BTreeMap::new();
    for d in descriptors.iter().filter(|d| !d.at_exit) {
        if let Some(state) = &d.tcp_state {
            *tcp.entry(state.clone()).or_insert(0) += 1;
        }
    }
    if time_wait_now > 0 {
        *tcp.entry("TIME_WAIT".to_string()).or_insert(0) += time_wait_now;
    }
    tcp
}

fn event_counts(
    facts: &SessionFacts,
    reconciled_closed: u64,
    reconciled_opened: u64,
    unverified_at_exit: u64,
) -> EventCounts {
    EventCounts {
        received: facts.received,
        lost: facts.lost_ring_full + facts.lost_in_flight_full + facts.unfollowed_children,
        lost_ring_buffer_full: facts.lost_ring_full,
        lost_in_flight_full: facts.lost_in_flight_full,
        unfollowed_children: facts.unfollowed_children,
        paired_in_kernel: facts.paired_in_kernel,
        undecodable: facts.undecodable,
        reconciled_closed,
        reconciled_opened,
        unverified_at_exit,
    }
}
