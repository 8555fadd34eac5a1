//! What processes held when they exited, folded as they exit into one group per creating
//! stack: how many processes, how many descriptors, how many each held and whether that grew.
//! For a server with short-lived workers this is normal (the kernel closes them at exit), so
//! it is kept apart from what live processes hold, and its size depends on the number of
//! distinct stacks, not on how many processes came and went.

use std::collections::{BTreeMap, VecDeque};

use foldhash::HashMap;

use super::{Descriptor, Origin};
use crate::model::{DecayingRate, DescriptorKind, StackRef};

/// Exits whose counts make the "first" and the "recent" typical count of a group.
pub(crate) const COUNT_WINDOW: usize = 16;
/// Pids kept per group, as examples.
pub(crate) const PIDS_KEPT: usize = 5;
/// Descriptors kept per group, as examples (the first exits').
pub(crate) const SAMPLES_KEPT: usize = 5;

/// What tells groups apart: the stack, or for descriptors without one how they were learned;
/// and whether the table was exact at exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    stack_id: Option<u32>,
    reconciled: bool,
    unverified: bool,
}

/// Descriptors from one stack that processes still held when they exited.
#[derive(Clone, Debug)]
pub(crate) struct AtExitGroup {
    /// The stack as the first of those processes captured it (for symbolizing).
    pub stack: Option<StackRef>,
    /// Events had been lost before these exits, and /proc could not check the tables:
    /// some of these may have been closed.
    pub unverified: bool,
    pub processes: u64,
    pub descriptors: u64,
    pub kinds: BTreeMap<DescriptorKind, u64>,
    /// How they were created (what `opened_by` says of each).
    pub origins: Vec<(Origin, u64)>,
    /// Processes by how many of these each held: the typical count and its spread.
    pub per_process: BTreeMap<u64, u64>,
    /// What the first [`COUNT_WINDOW`] processes held each, and the latest ones.
    pub first_counts: Vec<u64>,
    pub recent_counts: VecDeque<u64>,
    /// The first few pids and the last one.
    pub pids: Vec<u32>,
    pub last_pid: u32,
    pub comm: String,
    pub first_exit_ns: u64,
    pub last_exit_ns: u64,
    /// The longest any of them had been open when its process exited.
    pub longest_held_ns: u64,
    /// The first few descriptors, with their process and its exit time.
    pub samples: Vec<(u32, u64, Descriptor)>,
    /// How often processes exit holding these (a recent rate, see `model::rate`).
    pub exits: DecayingRate,
}

impl AtExitGroup {
    /// Mean of the counts of the first exits, and of the latest.
    pub(crate) fn first_and_recent_mean(&self) -> (f64, f64) {
        let mean = |counts: &mut dyn Iterator<Item = &u64>, n: usize| {
            counts.sum::<u64>() as f64 / n.max(1) as f64
        };
        (
            mean(&mut self.first_counts.iter(), self.first_counts.len()),
            mean(&mut self.recent_counts.iter(), self.recent_counts.len()),
        )
    }

    /// The median count per process.
    pub(crate) fn median_per_process(&self) -> u64 {
        let mut seen = 0;
        for (&count, &processes) in &self.per_process {
            seen += processes;
            if seen * 2 >= self.processes {
                return count;
            }
        }
        0
    }

    fn add(&mut self, pid: u32, exit_ns: u64, descriptors: &[&Descriptor]) {
        let n = descriptors.len() as u64;
        self.processes += 1;
        self.descriptors += n;
        *self.per_process.entry(n).or_insert(0) += 1;
        if self.first_counts.len() < COUNT_WINDOW {
            self.first_counts.push(n);
        }
        if self.recent_counts.len() == COUNT_WINDOW {
            self.recent_counts.pop_front();
        }
        self.recent_counts.push_back(n);
        if self.pids.len() < PIDS_KEPT {
            self.pids.push(pid);
        }
        self.last_pid = pid;
        self.first_exit_ns = self.first_exit_ns.min(exit_ns);
        self.last_exit_ns = self.last_exit_ns.max(exit_ns);
        self.exits.record(exit_ns);
        for d in descriptors {
            *self.kinds.entry(d.kind).or_insert(0) += 1;
            match self.origins.iter_mut().find(|(o, _)| *o == d.origin) {
                Some((_, count)) => *count += 1,
                None => self.origins.push((d.origin, 1)),
            }
            self.longest_held_ns = self
                .longest_held_ns
                .max(exit_ns.saturating_sub(d.opened_at_ns));
            if self.samples.len() < SAMPLES_KEPT {
                self.samples.push((pid, exit_ns, (*d).clone()));
            }
        }
    }
}

/// Every group, by key.
#[derive(Debug, Default)]
pub(crate) struct AtExitGroups {
    groups: HashMap<Key, AtExitGroup>,
}

impl AtExitGroups {
    /// Folds in what one process held when it exited (descriptors it created itself).
    pub(crate) fn add(
        &mut self,
        pid: u32,
        comm: &str,
        exit_ns: u64,
        unverified: bool,
        held: &[Descriptor],
    ) {
        let mut by_key: HashMap<Key, Vec<&Descriptor>> = HashMap::default();
        for d in held {
            let key = Key {
                stack_id: d.stack.map(|s| s.id),
                reconciled: d.stack.is_none() && d.origin == Origin::Reconciled,
                unverified,
            };
            by_key.entry(key).or_default().push(d);
        }
        for (key, descriptors) in by_key {
            self.groups
                .entry(key)
                .or_insert_with(|| AtExitGroup {
                    stack: descriptors[0].stack,
                    unverified,
                    processes: 0,
                    descriptors: 0,
                    kinds: BTreeMap::new(),
                    origins: Vec::new(),
                    per_process: BTreeMap::new(),
                    first_counts: Vec::new(),
                    recent_counts: VecDeque::new(),
                    pids: Vec::new(),
                    last_pid: pid,
                    comm: comm.to_string(),
                    first_exit_ns: exit_ns,
                    last_exit_ns: exit_ns,
                    longest_held_ns: 0,
                    samples: Vec::new(),
                    exits: DecayingRate::default(),
                })
                .add(pid, exit_ns, &descriptors);
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &AtExitGroup> {
        self.groups.values()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.groups.len()
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::Syscall;

    use super::*;

    fn held(stack_id: u32, fds: std::ops::Range<i32>, opened_at_ns: u64) -> Vec<Descriptor> {
        fds.map(|fd| Descriptor {
            fd,
            kind: DescriptorKind::File,
            detail: format!("/tmp/{fd}"),
            origin: Origin::Syscall(Syscall::Openat),
            inherited: false,
            tid: 1,
            opened_at_ns,
            stack: Some(StackRef {
                id: stack_id,
                pid: 1,
                generation: 0,
            }),
            path_truncated: false,
            deleted: false,
            tcp_state: None,
            cloexec: false,
        })
        .collect()
    }

    /// Ten thousand exits from two stacks make two groups, whatever their number; counts,
    /// typical count, kept pids and samples stay right and bounded.
    #[test]
    fn exits_fold_into_one_group_per_stack() {
        let mut groups = AtExitGroups::default();
        for pid in 1000..11_000u32 {
            let mut descriptors = held(7, 3..6, 0);
            descriptors.extend(held(9, 6..7, 0));
            groups.add(pid, "worker", u64::from(pid) * 1000, false, &descriptors);
        }
        assert_eq!(groups.len(), 2);
        let seven = groups.iter().find(|g| g.stack.unwrap().id == 7).unwrap();
        assert_eq!((seven.processes, seven.descriptors), (10_000, 30_000));
        assert_eq!(seven.median_per_process(), 3);
        assert_eq!(seven.per_process.len(), 1);
        assert_eq!(seven.pids, vec![1000, 1001, 1002, 1003, 1004]);
        assert_eq!(seven.last_pid, 10_999);
        assert_eq!(seven.samples.len(), SAMPLES_KEPT);
        assert_eq!(seven.first_and_recent_mean(), (3.0, 3.0));
        assert_eq!(
            seven.origins,
            vec![(Origin::Syscall(Syscall::Openat), 30_000)]
        );
        assert_eq!(seven.longest_held_ns, 10_999_000);
    }

    /// A worker that leaks more the longer the server runs shows as growth: the latest exits'
    /// count is above the first ones'.
    #[test]
    fn growth_per_process_is_seen() {
        let mut groups = AtExitGroups::default();
        for pid in 0..100 {
            let n = 1 + pid / 10;
            groups.add(pid as u32, "w", 0, false, &held(1, 0..n, 0));
        }
        let group = groups.iter().next().unwrap();
        let (first, recent) = group.first_and_recent_mean();
        assert!(first < 2.0 && recent > 9.0, "{first} {recent}");
        assert_eq!(group.per_process.len(), 10);
    }

    /// Exits after a loss are kept apart from verified ones.
    #[test]
    fn unverified_exits_are_a_group_of_their_own() {
        let mut groups = AtExitGroups::default();
        groups.add(1, "w", 0, false, &held(1, 0..2, 0));
        groups.add(2, "w", 0, true, &held(1, 0..2, 0));
        assert_eq!(groups.len(), 2);
        assert!(groups.iter().any(|g| g.unverified && g.processes == 1));
    }
}
