//! Reconciling a process's table with `/proc/PID/fd`, which the kernel keeps exactly.
//!
//! Events can be lost (ring buffer full) and some births have no tracepoint (descriptors
//! received with SCM_RIGHTS, installed by io_uring), so the session lists /proc now and then
//! and at the end, and hands the listing here:
//! - a descriptor in the table, created before the listing began, that /proc does not show was
//!   closed without our seeing it: it is dropped (never a false leak);
//! - a descriptor /proc shows that the table lacks (or holds as something else) is added as
//!   learned by reconciliation, but only when a second listing still shows it: between the
//!   kernel installing a descriptor and the syscall's exit event there is a short window
//!   where /proc is ahead of the events, and a fresh descriptor there must not be mistaken
//!   for a lost one.

use foldhash::HashMap;

use super::{Aggregator, Descriptor, Origin};
use crate::{
    clock::EVENT_TIME_SLACK_NS,
    model::{DescriptorKind, ListedFd},
};

/// A descriptor /proc showed that the table lacked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Sighting {
    kind: DescriptorKind,
    detail: String,
    first_seen_ns: u64,
}

/// What one reconciliation changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Reconciled {
    /// Descriptors whose close we missed.
    pub closed: Vec<i32>,
    /// Descriptors whose birth we missed, now in the table.
    pub opened: Vec<i32>,
}

impl Aggregator {
    /// Compares `pid`'s table with `listing`, a read of `/proc/PID/fd` that began at
    /// `listed_from_ns` (CLOCK_MONOTONIC). Every event emitted before the listing began must
    /// have been applied already. An event's time may be up to [`EVENT_TIME_SLACK_NS`] before
    /// the moment it happened, so only a descriptor stamped that much before the listing
    /// surely existed when it began.
    pub(crate) fn reconcile(
        &mut self,
        pid: u32,
        listing: &[ListedFd],
        listed_from_ns: u64,
    ) -> Reconciled {
        let mut outcome = Reconciled::default();
        // /proc shows a process sharing a table the owner's descriptors, compared there.
        if self.shares_table(pid) {
            return outcome;
        }
        let Some(process) = self.processes.get_mut(&pid).filter(|p| !p.exited()) else {
            return outcome;
        };
        let listed: HashMap<i32, &ListedFd> = listing.iter().map(|l| (l.fd, l)).collect();
        let surely_before_ns = listed_from_ns.saturating_sub(EVENT_TIME_SLACK_NS);

        process.fds.retain(|fd, d| {
            let lost_close = d.opened_at_ns < surely_before_ns && !listed.contains_key(fd);
            if lost_close {
                outcome.closed.push(*fd);
            }
            !lost_close
        });

        let previous = std::mem::take(&mut process.pending);
        for entry in listing {
            let known = process
                .fds
                .get(&entry.fd)
                .is_some_and(|d| d.opened_at_ns >= surely_before_ns || same_object(d, entry));
            if known {
                continue;
            }
            let seen_before = previous
                .get(&entry.fd)
                .filter(|s| s.kind == entry.kind && s.detail == entry.detail);
            match seen_before {
                Some(sighting) => {
                    process
                        .fds
                        .insert(entry.fd, learned(entry, sighting.first_seen_ns));
                    outcome.opened.push(entry.fd);
                }
                None => {
                    process.pending.insert(
                        entry.fd,
                        Sighting {
                            kind: entry.kind,
                            detail: entry.detail.clone(),
                            first_seen_ns: listed_from_ns,
                        },
                    );
                }
            }
        }
        outcome.closed.sort_unstable();
        outcome.opened.sort_unstable();
        self.reconciled_closed += outcome.closed.len() as u64;
        self.reconciled_opened += outcome.opened.len() as u64;
        outcome
    }

    /// Records that `pid`'s table was compared with /proc after `lost` events had been lost:
    /// it is exact as of then.
    pub(crate) fn mark_checked(&mut self, pid: u32, lost: u64) {
        if let Some(process) = self.processes.get_mut(&pid) {
            process.lost_when_checked = lost;
        }
    }

    /// Sets close-on-exec of a descriptor learned by reconciliation (read from fdinfo).
    pub(crate) fn set_cloexec(&mut self, pid: u32, fd: i32, cloexec: bool) {
        if let Some(d) = self
            .processes
            .get_mut(&pid)
            .and_then(|p| p.fds.get_mut(&fd))
        {
            d.cloexec = cloexec;
        }
    }
}

/// Whether the table's descriptor can be what /proc lists under its number. Kinds are all
/// we can compare (the table holds paths as opened, /proc as resolved); `other` is what the
/// table says when the event did not tell (a dup of an unknown fd), so it matches anything.
fn same_object(d: &Descriptor, listed: &ListedFd) -> bool {
    d.kind == listed.kind || d.kind == DescriptorKind::Other
}

fn learned(entry: &ListedFd, first_seen_ns: u64) -> Descriptor {
    Descriptor {
        fd: entry.fd,
        kind: entry.kind,
        detail: entry.detail.clone(),
        origin: Origin::Reconciled,
        inherited: false,
        tid: 0,
        opened_at_ns: first_seen_ns,
        stack: None,
        path_truncated: false,
        deleted: entry.deleted,
        tcp_state: None,
        cloexec: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregator::tests::{PARENT, open, open_fds};

    /// Event times in these tests are in milliseconds, as far apart as a session's are.
    const MS: u64 = 1_000_000;

    fn listed(fd: i32, kind: DescriptorKind, detail: &str) -> ListedFd {
        ListedFd {
            fd,
            kind,
            detail: detail.into(),
            deleted: false,
        }
    }

    fn file(fd: i32, path: &str) -> ListedFd {
        listed(fd, DescriptorKind::File, path)
    }

    /// After events were lost, what an exiting process held is unverified unless its table
    /// was compared with /proc since the loss.
    #[test]
    fn losses_leave_held_at_exit_unverified_until_checked() {
        use crate::aggregator::tests::exit;
        let mut agg = Aggregator::new();
        agg.apply(&mut open(PARENT, 3, "/a", 10 * MS));
        agg.apply(&mut open(PARENT + 1, 3, "/b", 10 * MS));
        agg.lost_so_far = 7;
        agg.mark_checked(PARENT + 1, 7);
        agg.apply(&mut exit(PARENT, PARENT, Some(true)));
        agg.apply(&mut exit(PARENT + 1, PARENT + 1, Some(true)));
        assert!(agg.process(PARENT).unwrap().held_at_exit_unverified);
        assert!(!agg.process(PARENT + 1).unwrap().held_at_exit_unverified);
    }

    /// A close we never saw: /proc no longer lists the fd, so it leaves the table.
    #[test]
    fn lost_close_is_dropped() {
        let mut agg = Aggregator::new();
        agg.apply(&mut open(PARENT, 3, "/a", 10 * MS));
        agg.apply(&mut open(PARENT, 4, "/b", 20 * MS));
        let outcome = agg.reconcile(PARENT, &[file(4, "/b")], 100 * MS);
        assert_eq!(outcome.closed, vec![3]);
        assert_eq!(open_fds(&agg, PARENT), vec![4]);
        assert_eq!(agg.reconciled_closed, 1);
    }

    /// A descriptor opened after the listing began may simply not have been listed yet.
    #[test]
    fn newer_than_the_listing_is_kept() {
        let mut agg = Aggregator::new();
        agg.apply(&mut open(PARENT, 3, "/a", 150 * MS));
        assert!(agg.reconcile(PARENT, &[], 100 * MS).closed.is_empty());
        assert_eq!(open_fds(&agg, PARENT), vec![3]);
    }

    /// The kernel stamps an event up to a tick before it happened: a descriptor stamped
    /// within that slack before the listing began may have been opened after it, so not
    /// being listed is no lost close; one stamped earlier than that is.
    #[test]
    fn stamped_within_a_tick_of_the_listing_is_kept() {
        let mut agg = Aggregator::new();
        let listed_from = 100 * MS;
        agg.apply(&mut open(
            PARENT,
            3,
            "/a",
            listed_from - EVENT_TIME_SLACK_NS / 2,
        ));
        agg.apply(&mut open(
            PARENT,
            4,
            "/b",
            listed_from - EVENT_TIME_SLACK_NS - 1,
        ));
        assert_eq!(agg.reconcile(PARENT, &[], listed_from).closed, vec![4]);
        assert_eq!(open_fds(&agg, PARENT), vec![3]);
    }

    /// A birth we never saw is learned on the second listing that shows it, dated from the
    /// first, and marked as learned by reconciliation.
    #[test]
    fn missed_birth_needs_two_sightings() {
        let mut agg = Aggregator::new();
        agg.apply(&mut open(PARENT, 3, "/a", 10 * MS));
        let sock = listed(5, DescriptorKind::Socket, "socket:[99]");
        let first = agg.reconcile(PARENT, &[file(3, "/a"), sock.clone()], 100 * MS);
        assert!(first.opened.is_empty());
        assert_eq!(open_fds(&agg, PARENT), vec![3]);
        let second = agg.reconcile(PARENT, &[file(3, "/a"), sock], 200 * MS);
        assert_eq!(second.opened, vec![5]);
        let d = &agg.process(PARENT).unwrap().fds[&5];
        assert_eq!(
            (d.opened_at_ns, d.learned_by(), d.opened_by()),
            (100 * MS, "reconciliation", "unknown")
        );
        assert!(d.created_here());
        assert_eq!(agg.reconciled_opened, 1);
    }

    /// The second sighting must be the same object: a different socket under the same
    /// number starts the wait again, and an fd that went away is forgotten.
    #[test]
    fn sightings_must_agree() {
        let mut agg = Aggregator::new();
        agg.reconcile(
            PARENT,
            &[listed(5, DescriptorKind::Socket, "socket:[1]")],
            100 * MS,
        );
        agg.apply(&mut open(PARENT, 3, "/a", 110 * MS));
        let changed = agg.reconcile(
            PARENT,
            &[
                file(3, "/a"),
                listed(5, DescriptorKind::Socket, "socket:[2]"),
            ],
            200 * MS,
        );
        assert!(changed.opened.is_empty());
        agg.reconcile(PARENT, &[file(3, "/a")], 300 * MS);
        let back = agg.reconcile(
            PARENT,
            &[
                file(3, "/a"),
                listed(5, DescriptorKind::Socket, "socket:[2]"),
            ],
            400 * MS,
        );
        assert!(back.opened.is_empty(), "the fd was gone in between");
    }

    /// A closed-and-reused fd number whose events were lost: /proc shows another kind of
    /// object there, and after a second look the table follows /proc.
    #[test]
    fn reused_number_of_another_kind_is_replaced() {
        let mut agg = Aggregator::new();
        agg.apply(&mut open(PARENT, 3, "/a", 10 * MS));
        let pipe = listed(3, DescriptorKind::Pipe, "pipe:[7]");
        agg.reconcile(PARENT, std::slice::from_ref(&pipe), 100 * MS);
        assert_eq!(
            agg.process(PARENT).unwrap().fds[&3].kind,
            DescriptorKind::File
        );
        let outcome = agg.reconcile(PARENT, &[pipe], 200 * MS);
        assert_eq!(outcome.opened, vec![3]);
        assert_eq!(
            agg.process(PARENT).unwrap().fds[&3].kind,
            DescriptorKind::Pipe
        );
    }
}
