//! What exited processes held, per stack, as the report's `at_exit_stacks`: the aggregator's
//! groups with their frames, ranked by how many descriptors they account for.

use std::collections::BTreeMap;

use super::{
    AtExitStackGroup, PerProcessCounts,
    entry::{entry, opened_by},
    resolver::{Resolver, frames_of},
    seconds,
};
use crate::aggregator::{AtExitGroup, COUNT_WINDOW};

/// The groups, most descriptors first; verified ones before those held after a loss.
pub(super) fn at_exit_stacks<'a>(
    groups: impl Iterator<Item = &'a AtExitGroup>,
    now_ns: u64,
    resolver: &mut impl Resolver,
) -> Vec<AtExitStackGroup> {
    let mut out: Vec<AtExitStackGroup> = groups.map(|g| stack_group(g, now_ns, resolver)).collect();
    out.sort_by(|a, b| {
        b.verified
            .cmp(&a.verified)
            .then(b.descriptors.cmp(&a.descriptors))
            .then(b.processes.cmp(&a.processes))
            .then(a.stack_id.cmp(&b.stack_id))
    });
    out
}

fn stack_group(g: &AtExitGroup, now_ns: u64, resolver: &mut impl Resolver) -> AtExitStackGroup {
    let (first_mean, recent_mean) = g.first_and_recent_mean();
    let mut opened: BTreeMap<_, u64> = BTreeMap::new();
    for (origin, n) in &g.origins {
        *opened.entry(opened_by(*origin, false)).or_insert(0) += n;
    }
    let mut pids = g.pids.clone();
    if !pids.contains(&g.last_pid) {
        pids.push(g.last_pid);
    }
    let stack = frames_of(g.stack, resolver);
    let examples = g
        .samples
        .iter()
        .map(|(pid, exit_ns, d)| entry(*pid, d, *exit_ns, true))
        .collect();
    AtExitStackGroup {
        stack_id: g.stack.map(|s| s.id),
        verified: !g.unverified,
        processes: g.processes,
        descriptors: g.descriptors,
        per_process: PerProcessCounts {
            min: g.per_process.keys().next().copied().unwrap_or(0),
            median: g.median_per_process(),
            max: g.per_process.keys().next_back().copied().unwrap_or(0),
            first_mean: round_tenth(first_mean),
            recent_mean: round_tenth(recent_mean),
        },
        // The latest exits held at least one more each than the first ones did, and they
        // are not the same exits.
        grew: g.processes > COUNT_WINDOW as u64 && recent_mean >= first_mean + 1.0,
        kinds: g.kinds.clone(),
        opened_by: opened,
        comm: g.comm.clone(),
        pids,
        first_exit_age_s: seconds(now_ns.saturating_sub(g.first_exit_ns)),
        last_exit_age_s: seconds(now_ns.saturating_sub(g.last_exit_ns)),
        longest_held_s: seconds(g.longest_held_ns),
        exits_per_minute: g.exits.per_minute(now_ns),
        examples,
        stack,
    }
}

fn round_tenth(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
