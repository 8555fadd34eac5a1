//! The report's groups: open descriptors by the stack that created them, live threads by the
//! stack that started them, zombie children by parent and fork stack. Most numerous first.

use std::collections::{BTreeMap, HashMap};

use super::{
    DescriptorEntry, LearnedBy, OpenedBy, ProcessEntry, StackGroup, ThreadStackGroup, ZombieGroup,
    resolver::{Resolver, frames_of},
    seconds,
};
use crate::{
    aggregator::Process,
    model::{StackRef, recent_per_minute},
};

/// Live descriptors grouped by the stack that created them, most numerous first; those held
/// at exit (listed with `--at-exit-descriptors`) are in the report's `at_exit_stacks`.
pub(super) fn group_by_stack(descriptors: &[DescriptorEntry]) -> Vec<StackGroup> {
    let live: Vec<&DescriptorEntry> = descriptors.iter().filter(|d| !d.at_exit).collect();
    let mut groups = tally_by_stack(&live);
    set_growth(&mut groups, &live);
    rank(&mut groups);
    groups
}

/// One group per stack, with its counts, kinds, openers, ages and holders.
fn tally_by_stack(descriptors: &[&DescriptorEntry]) -> Vec<StackGroup> {
    let mut groups: Vec<StackGroup> = Vec::new();
    // Descriptors without a stack are told apart by how we learned of them.
    let mut index: HashMap<(Option<u32>, Option<LearnedBy>), usize> = HashMap::new();
    for d in descriptors {
        let no_stack_source = d.stack_id.is_none().then_some(d.learned_by);
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
    groups
}

/// Growth counts what was created while traced and is still open (several of them: one has
/// no rate) at a recent rate: each counts e^(-age / 1 min) (see `model::rate`).
fn set_growth(groups: &mut [StackGroup], descriptors: &[&DescriptorEntry]) {
    let mut created: HashMap<Option<u32>, (u64, Vec<f64>)> = HashMap::new();
    // Only descriptors with a stack: those learned from /proc have neither a stack nor an
    // exact birth time to measure growth by.
    for d in descriptors
        .iter()
        .filter(|d| d.stack_id.is_some() && d.opened_by != OpenedBy::PreExisting)
    {
        let (count, ages) = created.entry(d.stack_id).or_insert((0, Vec::new()));
        *count += 1;
        ages.push(d.age_s);
    }
    for group in groups {
        group.per_minute = match created.get(&group.stack_id) {
            Some((count, ages)) if *count > 1 => recent_per_minute(ages.iter().copied()),
            _ => 0.0,
        };
    }
}

/// What grew while we watched comes first; descriptors that were open before attach (no
/// stack, nothing to blame) come last.
fn rank(groups: &mut [StackGroup]) {
    let only_pre_existing =
        |g: &StackGroup| g.opened_by.keys().all(|by| *by == OpenedBy::PreExisting);
    groups.sort_by(|a, b| {
        only_pre_existing(a)
            .cmp(&only_pre_existing(b))
            .then(b.open_count.cmp(&a.open_count))
            .then(b.oldest_age_s.total_cmp(&a.oldest_age_s))
    });
}

/// Live threads started while traced, grouped by process and creation stack.
pub(super) fn group_threads(
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
            let ages = starts
                .iter()
                .map(|&start| seconds(now_ns.saturating_sub(start)));
            groups.push(ThreadStackGroup {
                pid: process.pid,
                live,
                stack_id,
                oldest_age_s: oldest,
                newest_age_s: newest,
                per_minute: recent_per_minute(ages),
                stack: frames_of(stack, resolver),
            });
        }
    }
    groups.sort_by_key(|g| std::cmp::Reverse(g.live));
    groups
}

/// Zombie children grouped by parent and the stack that forked them, most numerous first.
pub(super) fn group_zombies(
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
