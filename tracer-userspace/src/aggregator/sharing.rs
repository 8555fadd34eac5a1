//! Processes that share one descriptor table: clone(CLONE_FILES) without CLONE_THREAD.
//! Threads always share their process's table (tables are per process already); this is
//! for separate processes. The shared table is kept in one of them, its owner, and reported
//! under the owner's pid; the others point at it until they leave it by exec,
//! unshare(CLONE_FILES) or exit.

use super::{Aggregator, Process, copy_of};

impl Aggregator {
    /// The process whose `fds` hold `pid`'s table.
    pub(super) fn table_owner(&self, pid: u32) -> u32 {
        self.shared_with.get(&pid).copied().unwrap_or(pid)
    }

    /// The process holding `pid`'s table, created on the fly like `caller`.
    pub(super) fn table(&mut self, pid: u32) -> &mut Process {
        let owner = self.table_owner(pid);
        self.caller(owner)
    }

    /// Whether `pid` uses another process's table.
    pub(crate) fn shares_table(&self, pid: u32) -> bool {
        self.shared_with.contains_key(&pid)
    }

    /// `child` was created with CLONE_FILES: it uses its parent's table.
    pub(super) fn share_table(&mut self, parent: u32, child: u32) {
        let owner = self.table_owner(parent);
        self.shared_with.insert(child, owner);
    }

    /// `pid` got a private copy of the table it shared (unshare(CLONE_FILES), exec): its
    /// copies are like those made at fork. Nothing happens for a process that shares nothing.
    pub(super) fn unshare_table(&mut self, pid: u32) {
        if self.shared_with.contains_key(&pid) {
            let owner = self.shared_with.remove(&pid).expect("checked");
            let copies = copy_of(&self.caller(owner).fds);
            self.caller(pid).fds = copies;
        } else if self.shared_with.values().any(|&o| o == pid) {
            // The owner leaves: the others keep the table, and the owner gets a copy.
            let heir = self.hand_over_table(pid);
            let copies = copy_of(&self.caller(heir).fds);
            self.caller(pid).fds = copies;
        }
    }

    /// `pid` is exiting or leaving its table. If it shares one, it simply stops; if it owns
    /// one that others still use, the table moves to the lowest of their pids, which
    /// becomes the owner. Returns the process that now holds the table.
    pub(super) fn hand_over_table(&mut self, pid: u32) -> u32 {
        if let Some(owner) = self.shared_with.remove(&pid) {
            return owner;
        }
        let Some(heir) = self
            .shared_with
            .iter()
            .filter(|&(_, &owner)| owner == pid)
            .map(|(&sharer, _)| sharer)
            .min()
        else {
            return pid;
        };
        self.shared_with.remove(&heir);
        for owner in self.shared_with.values_mut().filter(|o| **o == pid) {
            *owner = heir;
        }
        let table = std::mem::take(&mut self.caller(pid).fds);
        self.caller(heir).fds = table;
        heir
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::CLONE_FILES;

    use crate::{
        aggregator::{
            tests::{PARENT, close, exit, fork, open, open_fds},
            *,
        },
        events::CloexecSet,
    };

    const CHILD: u32 = 200;
    const OTHER: u32 = 300;

    fn unshare(pid: u32) -> Event {
        Event {
            header: crate::aggregator::tests::header(pid, pid, 9, None),
            body: EventBody::FilesUnshared,
        }
    }

    /// A CLONE_FILES child opens and closes in its parent's table; after unshare it has a
    /// copy of its own and the two diverge.
    #[test]
    fn clone_files_shares_until_unshare() {
        let mut agg = Aggregator::new();
        agg.apply(&mut open(PARENT, 3, "/a", 1));
        agg.apply(&mut fork(PARENT, CHILD, CLONE_FILES));
        agg.apply(&mut open(CHILD, 4, "/b", 2));
        agg.apply(&mut close(CHILD, CHILD, 3));
        assert_eq!(open_fds(&agg, PARENT), vec![4]);
        assert!(open_fds(&agg, CHILD).is_empty(), "reported under the owner");
        agg.apply(&mut unshare(CHILD));
        agg.apply(&mut open(PARENT, 5, "/c", 3));
        agg.apply(&mut close(CHILD, CHILD, 4));
        assert_eq!(open_fds(&agg, PARENT), vec![4, 5]);
        assert!(open_fds(&agg, CHILD).is_empty());
    }

    /// When the owner exits, the table lives on in the process that still uses it; nothing
    /// is held at exit by the owner.
    #[test]
    fn owner_exit_hands_the_table_over() {
        let mut agg = Aggregator::new();
        agg.apply(&mut fork(PARENT, CHILD, CLONE_FILES));
        agg.apply(&mut fork(PARENT, OTHER, CLONE_FILES));
        agg.apply(&mut open(CHILD, 4, "/b", 2));
        agg.apply(&mut exit(PARENT, PARENT, Some(true)));
        assert!(agg.process(PARENT).unwrap().held_at_exit.is_empty());
        assert_eq!(open_fds(&agg, CHILD), vec![4]);
        agg.apply(&mut close(OTHER, OTHER, 4));
        assert!(
            open_fds(&agg, CHILD).is_empty(),
            "OTHER now shares CHILD's table"
        );
    }

    /// exec leaves a shared table: the exec'ing process keeps a copy without its
    /// close-on-exec descriptors, the others keep the table untouched.
    #[test]
    fn exec_unshares() {
        let mut agg = Aggregator::new();
        agg.apply(&mut open(PARENT, 3, "/a", 1));
        agg.apply(&mut fork(PARENT, CHILD, CLONE_FILES));
        agg.apply(&mut Event {
            header: crate::aggregator::tests::header(CHILD, CHILD, 2, None),
            body: EventBody::CloexecSet(CloexecSet { fd: 3, on: true }),
        });
        agg.apply(&mut Event {
            header: crate::aggregator::tests::header(CHILD, CHILD, 3, None),
            body: EventBody::Exec,
        });
        assert!(open_fds(&agg, CHILD).is_empty());
        assert_eq!(open_fds(&agg, PARENT), vec![3]);
        assert!(!agg.shares_table(CHILD));
    }
}
