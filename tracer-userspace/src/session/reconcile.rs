//! When the session compares descriptor tables with `/proc` while tracing, and the listing
//! half of it (the comparison itself is `Aggregator::reconcile`, pure and unit-tested).
//!
//! A pass lists `/proc/PID/fd` of every live followed process, reading events in between,
//! then the session applies every event emitted before the listing began, then compares.
//! Passes run every few seconds, spaced so that they take at most 2% of the time (a process
//! with a million descriptors takes about a second to list), and sooner after events were
//! lost, but never so soon that passes themselves make the ring overflow.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use crate::{
    aggregator::{Aggregator, Reconciled},
    clock::monotonic_ns,
    model::ListedFd,
    procfs,
    stacks::StackStore,
};

/// Shortest time between two passes.
const MIN_PERIOD: Duration = Duration::from_secs(2);
/// A pass may take this fraction of the time (1/50 = 2%).
const COST_SHARE: u32 = 50;
/// Shortest time between passes triggered by lost events, which can be lost continuously.
const MIN_PERIOD_AFTER_LOSS: Duration = Duration::from_secs(1);

/// How often interned stacks nothing refers to any more are dropped (a walk of everything
/// kept; see `stacks/sweep.rs`).
const STACK_SWEEP_EVERY: Duration = Duration::from_secs(600);

/// Exits after which the reaped processes are forgotten without waiting for the next pass,
/// at least (see [`Reconciler::process_exited`]).
const FORGET_AFTER_EXITS: u64 = 1024;

/// When the next pass is due.
pub(super) struct Reconciler {
    /// When unused stacks are next dropped.
    sweep_at: Instant,
    next_at: Instant,
    /// Earliest time for a pass called for by lost events.
    next_after_loss_at: Instant,
    lost_seen: u64,
    /// Processes exited since reaped ones were last forgotten, and how many may exit before
    /// they are forgotten between passes.
    exits_since_forget: u64,
    forget_after_exits: u64,
}

/// `/proc/PID/fd` of the live followed processes, and when the listing began.
pub(super) struct Listings {
    from_ns: u64,
    /// Events lost when the listing began.
    lost: u64,
    by_pid: Vec<(u32, Vec<ListedFd>)>,
}

impl Default for Reconciler {
    fn default() -> Self {
        Self::new()
    }
}

impl Reconciler {
    pub(super) fn new() -> Self {
        let now = Instant::now();
        Self {
            sweep_at: now + STACK_SWEEP_EVERY,
            next_at: now + MIN_PERIOD,
            next_after_loss_at: now + MIN_PERIOD_AFTER_LOSS,
            lost_seen: 0,
            exits_since_forget: 0,
            forget_after_exits: FORGET_AFTER_EXITS,
        }
    }

    /// Counts the exit of a process; true when so many exited since reaped processes were
    /// last forgotten that they must be now, between two passes ([`forget_reaped`]): the
    /// processes that come and go stay bounded by what is live, however fast they fork and
    /// however long a pass waits (a burst of workers kept 31 000 exited ones between two
    /// passes, and the snapshots listed them).
    pub(super) fn process_exited(&mut self) -> bool {
        self.exits_since_forget += 1;
        self.exits_since_forget >= self.forget_after_exits
    }

    /// Whether a pass is due, given the events lost so far.
    pub(super) fn due(&self, now: Instant, lost: u64) -> bool {
        now >= self.next_at || (lost > self.lost_seen && now >= self.next_after_loss_at)
    }

    /// Schedules the next pass after one that began at `began` and counted `lost` events.
    pub(super) fn finished(&mut self, began: Instant, lost: u64) {
        let now = Instant::now();
        let took = now.saturating_duration_since(began);
        self.next_at = now + MIN_PERIOD.max(took * COST_SHARE);
        self.next_after_loss_at = now + MIN_PERIOD_AFTER_LOSS.max(took * COST_SHARE / 4);
        self.lost_seen = lost;
    }
}

/// Lists every live process of `agg` that has a table of its own, `lost` events having
/// been lost before; `meanwhile` runs every few thousand entries. Processes that are gone
/// are skipped: their exit event settles them.
pub(super) fn list_tables(agg: &Aggregator, lost: u64, mut meanwhile: impl FnMut()) -> Listings {
    let pids: Vec<u32> = agg
        .live_processes()
        .map(|p| p.pid)
        .filter(|&pid| !agg.shares_table(pid))
        .collect();
    let from_ns = monotonic_ns();
    let by_pid = pids
        .into_iter()
        .filter_map(|pid| Some((pid, procfs::fd_listing(pid, &mut meanwhile).ok()?)))
        .collect();
    Listings {
        from_ns,
        lost,
        by_pid,
    }
}

/// Compares the listings with the tables, which must by now hold every event emitted
/// before the listing began. Close-on-exec of descriptors learned here is read from
/// fdinfo.
pub(super) fn apply_listings(agg: &mut Aggregator, listings: &Listings) -> Reconciled {
    let mut total = Reconciled::default();
    for (pid, listing) in &listings.by_pid {
        let outcome = agg.reconcile(*pid, listing, listings.from_ns);
        agg.mark_checked(*pid, listings.lost);
        for &fd in &outcome.opened {
            agg.set_cloexec(*pid, fd, procfs::fd_is_cloexec(*pid, fd));
        }
        if !outcome.closed.is_empty() || !outcome.opened.is_empty() {
            log::info!(
                "pid {pid}: /proc shows closed {:?} and open {:?} without their events",
                outcome.closed,
                outcome.opened
            );
        }
        total.closed.extend(outcome.closed);
        total.opened.extend(outcome.opened);
    }
    total
}

/// Forgets the exited processes /proc no longer shows (reaped): the tables keep what is live,
/// zombies, and one group per stack of what exited processes held, however many came and
/// went. A pid now naming a later process (another start time) is gone too. The stack store
/// forgets their maps once no stack kept refers to them.
/// Drops the interned stacks nothing kept refers to, every [`STACK_SWEEP_EVERY`].
pub(super) fn drop_unused_stacks(
    reconciler: &mut Reconciler,
    agg: &Aggregator,
    stacks: &mut StackStore,
) {
    let now = Instant::now();
    if now < reconciler.sweep_at {
        return;
    }
    reconciler.sweep_at = now + STACK_SWEEP_EVERY;
    let in_use: HashSet<u32> = agg.stacks_in_use().map(|s| s.id).collect();
    let dropped = stacks.drop_unused(&in_use);
    log::debug!(
        "dropped {dropped} stacks no longer used; kept {}",
        stacks.sizes()
    );
}

pub(super) fn forget_reaped(
    reconciler: &mut Reconciler,
    agg: &mut Aggregator,
    stacks: &mut StackStore,
) {
    forget_reaped_processes(agg, stacks);
    // Forgetting scans every process kept and walks every stack in use: the next forget
    // between passes waits for as many exits as there are processes and a quarter as many as
    // descriptors kept, so that it costs O(1) per exit.
    let descriptors: usize = agg.processes().map(|p| p.fds.len()).sum();
    let kept = agg.processes().count() + descriptors / 4;
    reconciler.exits_since_forget = 0;
    reconciler.forget_after_exits = FORGET_AFTER_EXITS.max(kept as u64);
}

fn forget_reaped_processes(agg: &mut Aggregator, stacks: &mut StackStore) {
    let forgotten = agg.forget_reaped(|p| match (procfs::start_time(p.pid), p.start_time) {
        (Some(now), Some(then)) => now == then,
        (now, None) => now.is_some(),
        (None, Some(_)) => false,
    });
    if !forgotten.is_empty() {
        log::debug!("forgot {} reaped processes", forgotten.len());
    }
    if forgotten.is_empty() && !stacks.has_pinned() {
        return;
    }
    let in_use: HashSet<(u32, u32)> = agg.stacks_in_use().map(|s| (s.pid, s.generation)).collect();
    stacks.forget(&forgotten, |pid, generation| {
        in_use.contains(&(pid, generation))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pass is due after the period, or after a loss once the loss cool-down passed.
    #[test]
    fn due_on_period_or_loss() {
        let mut r = Reconciler::new();
        let start = Instant::now();
        assert!(!r.due(start, 0));
        assert!(r.due(start + MIN_PERIOD, 0));
        r.finished(start, 0);
        let after = Instant::now();
        assert!(
            !r.due(after, 5),
            "a loss right after a pass waits for the cool-down"
        );
        assert!(r.due(after + MIN_PERIOD_AFTER_LOSS, 5));
        assert!(
            !r.due(after + MIN_PERIOD_AFTER_LOSS, 0),
            "no loss, no early pass"
        );
    }

    /// Reaped processes are forgotten between passes after 1024 exits, or after as many as
    /// the tables keep processes when they keep more: O(1) per exit, bounded by what is live.
    #[test]
    fn forgets_after_as_many_exits_as_processes_kept() {
        let mut r = Reconciler::new();
        let (mut agg, mut stacks) = (Aggregator::new(), StackStore::new());
        let exits_until_due = |r: &mut Reconciler| (1..).find(|_| r.process_exited()).unwrap();
        assert_eq!(exits_until_due(&mut r), FORGET_AFTER_EXITS);
        forget_reaped(&mut r, &mut agg, &mut stacks);
        assert_eq!(exits_until_due(&mut r), FORGET_AFTER_EXITS);
        for pid in 1..=3000 {
            agg.add_snapshot(
                crate::aggregator::ProcessSnapshot {
                    pid,
                    ppid: 1,
                    comm: "worker".into(),
                    threads: 1,
                    fds: Vec::new(),
                    zombie: false,
                    cwd: None,
                    start_time: None,
                },
                0,
            );
        }
        forget_reaped(&mut r, &mut agg, &mut stacks);
        assert_eq!(exits_until_due(&mut r), 3000);
    }

    /// A slow pass spaces the next one out to keep its share of the time, and losses do not
    /// bring it much closer: a pass that makes the ring overflow must not call the next.
    #[test]
    fn slow_passes_are_spaced_out() {
        let mut r = Reconciler::new();
        let began = Instant::now() - Duration::from_millis(100);
        r.finished(began, 0);
        assert!(!r.due(Instant::now() + Duration::from_secs(4), 0));
        assert!(r.due(Instant::now() + Duration::from_secs(6), 0));
        let began = Instant::now() - Duration::from_secs(1);
        r.finished(began, 10);
        assert!(!r.due(Instant::now() + Duration::from_secs(5), 20));
        assert!(r.due(Instant::now() + Duration::from_secs(13), 20));
    }
}
