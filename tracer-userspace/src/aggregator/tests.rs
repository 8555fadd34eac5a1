//! The tables through event sequences: births, closes, fork, exit, exec, threads, snapshots.
//! The helpers that build events are shared with the tests of reconcile.rs and sharing.rs.

use tracer_common::{
    ARG_UNKNOWN, CLONE_THREAD, Syscall,
    abi::{AT_FDCWD, F_DUPFD, F_DUPFD_CLOEXEC, O_CLOEXEC},
};

use super::{types::ThreadCounts, *};
use crate::{
    events::{
        CloexecSet, FdClosed, FdCreated, FileOpened, Header, RangeClosed, TaskCreated, TaskExited,
    },
    model::DescriptorKind,
};

pub(crate) const PARENT: u32 = 100;
const CLOEXEC: u64 = O_CLOEXEC;
const CHILD: u32 = 200;

pub(crate) fn header(tgid: u32, tid: u32, t: u64, stack_id: Option<u32>) -> Header {
    Header {
        tgid,
        tid,
        stack_id,
        timestamp_ns: t,
        generation: 0,
    }
}

/// A file-open event with everything spelled out.
fn open_raw(tgid: u32, fd: i32, syscall: Syscall, dirfd: i32, flags: u32, path: &[u8]) -> Event {
    Event {
        header: header(tgid, tgid, 1, Some(1)),
        body: EventBody::FileOpened(FileOpened {
            fd,
            syscall,
            dirfd,
            flags,
            path: Some(path.to_vec()),
            path_truncated: false,
        }),
    }
}

pub(crate) fn open(tgid: u32, fd: i32, path: &str, t: u64) -> Event {
    Event {
        header: header(tgid, tgid, t, Some(1)),
        body: EventBody::FileOpened(FileOpened {
            fd,
            syscall: Syscall::Openat,
            dirfd: AT_FDCWD,
            flags: 0,
            path: Some(path.as_bytes().to_vec()),
            path_truncated: false,
        }),
    }
}

fn created(tgid: u32, fd: i32, syscall: Syscall, arg0: u64, arg1: u64) -> Event {
    Event {
        header: header(tgid, tgid, 5, Some(2)),
        body: EventBody::FdCreated(FdCreated {
            fd,
            syscall,
            arg0,
            arg1,
            arg2: 0,
        }),
    }
}

pub(crate) fn close(tgid: u32, tid: u32, fd: i32) -> Event {
    Event {
        header: header(tgid, tid, 9, None),
        body: EventBody::FdClosed(FdClosed { fd }),
    }
}

pub(crate) fn fork(parent: u32, child: u32, flags: u64) -> Event {
    Event {
        header: header(parent, parent, 7, Some(3)),
        body: EventBody::TaskCreated(TaskCreated {
            child_tid: child,
            syscall: Some(Syscall::Clone),
            clone_flags: Some(flags),
        }),
    }
}

pub(crate) fn exit(tgid: u32, tid: u32, group_dead: Option<bool>) -> Event {
    Event {
        header: header(tgid, tid, 20, None),
        body: EventBody::TaskExited(TaskExited { group_dead }),
    }
}

pub(crate) fn open_fds(agg: &Aggregator, pid: u32) -> Vec<i32> {
    let mut fds: Vec<i32> = agg.process(pid).unwrap().fds.keys().copied().collect();
    fds.sort();
    fds
}

fn snapshot(pid: u32, fds: &[i32]) -> ProcessSnapshot {
    ProcessSnapshot {
        pid,
        ppid: 1,
        comm: "server".into(),
        threads: 1,
        fds: fds
            .iter()
            .map(|&fd| SnapshotFd {
                fd,
                kind: DescriptorKind::Socket,
                detail: "tcp 127.0.0.1:8080".into(),
                deleted: false,
                tcp_state: Some("LISTEN".into()),
                cloexec: fd == 4,
            })
            .collect(),
        zombie: false,
        cwd: None,
        start_time: None,
    }
}

/// Open then close leaves nothing; the fd number can be reused afterwards.
#[test]
fn open_close_and_reuse() {
    let mut agg = Aggregator::new();
    agg.apply(&mut open(PARENT, 3, "/a", 1));
    agg.apply(&mut close(PARENT, PARENT, 3));
    assert!(open_fds(&agg, PARENT).is_empty());
    agg.apply(&mut open(PARENT, 3, "/b", 2));
    assert_eq!(agg.process(PARENT).unwrap().fds[&3].detail, "/b");
}

/// Threads share one table: a descriptor opened on one thread and closed on another is gone.
#[test]
fn close_on_another_thread() {
    let mut agg = Aggregator::new();
    agg.apply(&mut open(PARENT, 5, "/dev/null", 1));
    agg.apply(&mut close(PARENT, PARENT + 1, 5));
    assert!(open_fds(&agg, PARENT).is_empty());
}

/// Closing an fd we never saw changes nothing and does not panic.
#[test]
fn close_of_unknown_fd_is_harmless() {
    let mut agg = Aggregator::new();
    agg.apply(&mut close(PARENT, PARENT, 42));
    agg.apply(&mut open(PARENT, 3, "/a", 1));
    agg.apply(&mut close(PARENT, PARENT, 42));
    assert_eq!(open_fds(&agg, PARENT), vec![3]);
}

/// dup2 onto an open fd replaces what it held; the copy takes the old fd's kind and detail.
#[test]
fn dup2_over_open_fd_closes_it() {
    let mut agg = Aggregator::new();
    agg.apply(&mut open(PARENT, 3, "/log", 1));
    agg.apply(&mut open(PARENT, 4, "/other", 1));
    agg.apply(&mut created(PARENT, 4, Syscall::Dup2, 3, 0));
    let fds = &agg.process(PARENT).unwrap().fds;
    assert_eq!(fds[&4].detail, "/log");
    assert_eq!(fds[&4].opened_by(), "dup2");
    assert_eq!(fds.len(), 2);
}

/// dup2(fd, fd) is a no-op: the original descriptor keeps its origin.
#[test]
fn dup2_onto_itself_changes_nothing() {
    let mut agg = Aggregator::new();
    agg.apply(&mut open(PARENT, 3, "/log", 1));
    agg.apply(&mut created(PARENT, 3, Syscall::Dup2, 3, 0));
    assert_eq!(agg.process(PARENT).unwrap().fds[&3].opened_by(), "openat");
}

/// dup3 with O_CLOEXEC marks the copy close-on-exec.
#[test]
fn dup3_cloexec() {
    let mut agg = Aggregator::new();
    agg.apply(&mut open(PARENT, 3, "/log", 1));
    agg.apply(&mut created(PARENT, 9, Syscall::Dup3, 3, CLOEXEC));
    assert!(agg.process(PARENT).unwrap().fds[&9].cloexec);
}

/// The pre-fork incident: the parent accepts, forks a child that serves and exits, and
/// never closes its copy. The parent holds the accepted socket; the child reports nothing.
#[test]
fn prefork_parent_keeps_accepted_socket() {
    let mut agg = Aggregator::new();
    agg.add_snapshot(snapshot(PARENT, &[3]), 0);
    agg.apply(&mut created(PARENT, 4, Syscall::Accept4, 3, 0));
    agg.apply(&mut fork(PARENT, CHILD, 17));
    let child = agg.process(CHILD).unwrap();
    assert_eq!(child.ppid, PARENT);
    assert_eq!(child.fds[&4].opened_by(), "inherited");
    assert_eq!(
        child.fds[&4].stack.map(|s| (s.id, s.pid)),
        Some((2, PARENT))
    );
    assert_eq!(child.fds[&3].opened_by(), "pre-existing");
    agg.apply(&mut close(CHILD, CHILD, 4));
    agg.apply(&mut exit(CHILD, CHILD, Some(true)));
    let child = agg.process(CHILD).unwrap();
    assert!(child.exited());
    assert!(
        child.held_at_exit.is_empty(),
        "inherited copies are not leaks"
    );
    let parent = agg.process(PARENT).unwrap();
    assert_eq!(parent.fds[&4].opened_by(), "accept4");
    assert_eq!(parent.fds[&4].detail, "tcp (accepted)");
    assert_eq!(parent.fds[&3].opened_by(), "pre-existing");
}

/// A process that exits holding descriptors it created reports them as held at exit (kept
/// one by one with `--at-exit-descriptors`).
#[test]
fn exit_keeps_what_the_process_created() {
    let mut agg = Aggregator::keeping_at_exit_descriptors();
    agg.apply(&mut fork(PARENT, CHILD, 17));
    agg.apply(&mut open(CHILD, 5, "/tmp/x", 8));
    agg.apply(&mut open(CHILD, 6, "/tmp/y", 8));
    agg.apply(&mut close(CHILD, CHILD, 6));
    agg.apply(&mut exit(CHILD, CHILD, Some(true)));
    let child = agg.process(CHILD).unwrap();
    assert_eq!(child.held_at_exit.len(), 1);
    assert_eq!(child.held_at_exit[0].detail, "/tmp/x");
    assert!(child.fds.is_empty());
    assert_eq!(agg.live_processes().count(), 1, "only the parent is live");
}

/// Threads are counted, not forked: no new process, and their exit is not the process's.
#[test]
fn threads_are_counted() {
    let mut agg = Aggregator::new();
    agg.add_snapshot(snapshot(PARENT, &[]), 0);
    agg.apply(&mut fork(PARENT, PARENT + 1, CLONE_THREAD | 0x100));
    agg.apply(&mut fork(PARENT, PARENT + 2, CLONE_THREAD | 0x100));
    assert!(agg.process(PARENT + 1).is_none());
    agg.apply(&mut exit(PARENT, PARENT + 1, Some(false)));
    let parent = agg.process(PARENT).unwrap();
    assert!(!parent.exited());
    assert_eq!(
        parent.threads,
        ThreadCounts {
            live: 2,
            created: 2,
            exited: 1
        }
    );
    assert_eq!(parent.new_threads.len(), 1);
}

/// Without group_dead, the leader's exit ends the process and a thread's does not.
#[test]
fn exit_without_group_dead_uses_leader() {
    let mut agg = Aggregator::new();
    agg.apply(&mut open(PARENT, 3, "/a", 1));
    agg.apply(&mut exit(PARENT, PARENT + 1, None));
    assert!(!agg.process(PARENT).unwrap().exited());
    agg.apply(&mut exit(PARENT, PARENT, None));
    assert!(agg.process(PARENT).unwrap().exited());
}

/// Events win over the attach snapshot: a descriptor seen created is not made pre-existing.
#[test]
fn snapshot_does_not_override_events() {
    let mut agg = Aggregator::new();
    agg.apply(&mut open(PARENT, 3, "/a", 1));
    agg.add_snapshot(snapshot(PARENT, &[3, 4]), 2);
    let fds = &agg.process(PARENT).unwrap().fds;
    assert_eq!(fds[&3].opened_by(), "openat");
    assert_eq!(fds[&4].opened_by(), "pre-existing");
}

/// A child already in the snapshot learns what it inherited from the fork event.
#[test]
fn fork_refines_snapshotted_child() {
    let mut agg = Aggregator::new();
    agg.apply(&mut created(PARENT, 4, Syscall::Accept, 3, 0));
    agg.add_snapshot(snapshot(CHILD, &[4]), 2);
    agg.apply(&mut fork(PARENT, CHILD, 17));
    assert_eq!(agg.process(CHILD).unwrap().fds[&4].opened_by(), "inherited");
}

/// A reused pid starts a fresh process; the old one is kept for the report.
#[test]
fn reused_pid_is_a_new_process() {
    let mut agg = Aggregator::keeping_at_exit_descriptors();
    agg.apply(&mut fork(PARENT, CHILD, 17));
    agg.apply(&mut open(CHILD, 5, "/old", 8));
    agg.apply(&mut exit(CHILD, CHILD, Some(true)));
    agg.apply(&mut fork(PARENT, CHILD, 17));
    assert!(!agg.process(CHILD).unwrap().exited());
    assert!(agg.process(CHILD).unwrap().fds.is_empty());
    let held: usize = agg.processes().map(|p| p.held_at_exit.len()).sum();
    assert_eq!(held, 1);
}

/// exec drops close-on-exec descriptors (from events and from the snapshot) and keeps the rest.
#[test]
fn exec_closes_cloexec_descriptors() {
    let mut agg = Aggregator::new();
    agg.add_snapshot(snapshot(PARENT, &[3, 4]), 0);
    agg.apply(&mut created(PARENT, 9, Syscall::Dup3, 3, CLOEXEC));
    agg.apply(&mut Event {
        header: header(PARENT, PARENT, 30, None),
        body: EventBody::Exec,
    });
    assert_eq!(open_fds(&agg, PARENT), vec![3]);
}

/// An exit seen twice (vanished from /proc, then its event) keeps what was held at exit.
#[test]
fn second_exit_is_ignored() {
    let mut agg = Aggregator::keeping_at_exit_descriptors();
    agg.apply(&mut open(PARENT, 3, "/a", 1));
    agg.mark_vanished(PARENT, 10);
    agg.apply(&mut exit(PARENT, PARENT, Some(true)));
    assert_eq!(agg.process(PARENT).unwrap().held_at_exit.len(), 1);
}

/// pipe and socketpair create two descriptors, each knowing its kind; pipe2's O_CLOEXEC sticks.
#[test]
fn pairs() {
    let mut agg = Aggregator::new();
    agg.apply(&mut created(PARENT, 3, Syscall::Pipe2, 4, CLOEXEC));
    agg.apply(&mut created(PARENT, 4, Syscall::Pipe2, 3, CLOEXEC));
    agg.apply(&mut Event {
        header: header(PARENT, PARENT, 5, None),
        body: EventBody::FdCreated(FdCreated {
            fd: 5,
            syscall: Syscall::Socketpair,
            arg0: 6,
            arg1: 1,
            arg2: 1,
        }),
    });
    let fds = &agg.process(PARENT).unwrap().fds;
    assert_eq!(fds[&3].kind, DescriptorKind::Pipe);
    assert!(fds[&4].cloexec);
    assert_eq!(fds[&5].detail, "unix socketpair");
}

/// An accept that began before attach (unknown listener) still records the socket.
#[test]
fn accept_with_unknown_listener() {
    let mut agg = Aggregator::new();
    agg.apply(&mut created(
        PARENT,
        7,
        Syscall::Accept4,
        ARG_UNKNOWN,
        ARG_UNKNOWN,
    ));
    let fd = &agg.process(PARENT).unwrap().fds[&7];
    assert_eq!(
        (fd.opened_by(), fd.detail.as_str(), fd.cloexec),
        ("accept4", "socket (accepted)", false)
    );
}

/// A child that was already a zombie at attach is an exited process with nothing open.
#[test]
fn zombie_in_snapshot_is_exited() {
    let mut agg = Aggregator::new();
    agg.add_snapshot(
        ProcessSnapshot {
            zombie: true,
            ..snapshot(CHILD, &[3])
        },
        5,
    );
    let child = agg.process(CHILD).unwrap();
    assert_eq!(child.exited_at_ns, Some(5));
    assert!(child.fds.is_empty() && child.held_at_exit.is_empty());
}

/// Births of every family carry their kind, and the close-on-exec flag each spells its
/// own way; exec then closes exactly the close-on-exec ones.
#[test]
fn special_descriptors_and_exec() {
    use DescriptorKind as K;
    let mut agg = Aggregator::new();
    let births = [
        (3, Syscall::Eventfd2, CLOEXEC, K::Eventfd, true),
        (4, Syscall::Eventfd, ARG_UNKNOWN, K::Eventfd, false),
        (5, Syscall::EpollCreate1, CLOEXEC, K::Epoll, true),
        (6, Syscall::TimerfdCreate, 0, K::Timerfd, false),
        (7, Syscall::InotifyInit1, CLOEXEC, K::Inotify, true),
        (8, Syscall::PidfdOpen, ARG_UNKNOWN, K::Pidfd, true),
        (9, Syscall::IoUringSetup, ARG_UNKNOWN, K::Other, true),
        (10, Syscall::FanotifyInit, 1, K::Other, true),
        (11, Syscall::PerfEventOpen, 8, K::Other, true),
        (12, Syscall::Userfaultfd, 0, K::Other, false),
    ];
    for (fd, syscall, flags, _, _) in births {
        agg.apply(&mut created(PARENT, fd, syscall, flags, 0));
    }
    agg.apply(&mut created(
        PARENT,
        13,
        Syscall::Signalfd4,
        -1i64 as u64,
        CLOEXEC,
    ));
    let table = &agg.process(PARENT).unwrap().fds;
    for (fd, syscall, _, kind, cloexec) in births {
        let d = &table[&fd];
        assert_eq!(
            (d.kind, d.cloexec, d.opened_by()),
            (kind, cloexec, syscall.name()),
            "fd {fd}"
        );
    }
    assert_eq!((table[&13].kind, table[&13].cloexec), (K::Signalfd, true));
    agg.apply(&mut Event {
        header: header(PARENT, PARENT, 30, None),
        body: EventBody::Exec,
    });
    assert_eq!(open_fds(&agg, PARENT), vec![4, 6, 12]);
}

/// signalfd(fd, ...) on an existing signalfd changes its mask: the same descriptor.
#[test]
fn signalfd_update_is_not_a_birth() {
    let mut agg = Aggregator::new();
    agg.apply(&mut created(PARENT, 5, Syscall::Signalfd, -1i64 as u64, 0));
    let born = agg.process(PARENT).unwrap().fds[&5].opened_at_ns;
    agg.apply(&mut Event {
        header: header(PARENT, PARENT, 50, Some(9)),
        body: EventBody::FdCreated(FdCreated {
            fd: 5,
            syscall: Syscall::Signalfd,
            arg0: 5,
            arg1: 0,
            arg2: 0,
        }),
    });
    assert_eq!(agg.process(PARENT).unwrap().fds[&5].opened_at_ns, born);
}

/// memfd_create names the descriptor after its argument (bytes kept as escapes);
/// MFD_CLOEXEC is bit 0.
#[test]
fn memfd_is_named() {
    let mut agg = Aggregator::new();
    agg.apply(&mut open_raw(
        PARENT,
        3,
        Syscall::MemfdCreate,
        AT_FDCWD,
        1,
        b"shm\xff",
    ));
    let d = &agg.process(PARENT).unwrap().fds[&3];
    assert_eq!(
        (d.kind, d.detail.as_str(), d.cloexec),
        (DescriptorKind::Memfd, "memfd:shm\\xff", true)
    );
}

/// fcntl F_DUPFD copies like dup, F_DUPFD_CLOEXEC with close-on-exec; F_SETFD turns the
/// flag on and off, and exec honours the last word.
#[test]
fn fcntl_dupfd_and_setfd() {
    let mut agg = Aggregator::new();
    agg.apply(&mut open(PARENT, 3, "/log", 1));
    agg.apply(&mut created(PARENT, 10, Syscall::Fcntl, 3, F_DUPFD));
    agg.apply(&mut created(PARENT, 11, Syscall::Fcntl, 3, F_DUPFD_CLOEXEC));
    let table = &agg.process(PARENT).unwrap().fds;
    assert_eq!(
        (table[&10].detail.as_str(), table[&10].cloexec),
        ("/log", false)
    );
    assert_eq!(
        (table[&11].opened_by(), table[&11].cloexec),
        ("fcntl", true)
    );
    let setfd = |fd, on| Event {
        header: header(PARENT, PARENT, 5, None),
        body: EventBody::CloexecSet(CloexecSet { fd, on }),
    };
    agg.apply(&mut setfd(3, true));
    agg.apply(&mut setfd(11, false));
    agg.apply(&mut Event {
        header: header(PARENT, PARENT, 6, None),
        body: EventBody::Exec,
    });
    assert_eq!(open_fds(&agg, PARENT), vec![10, 11]);
}

fn close_range(first: u32, last: u32, flags: u32) -> Event {
    Event {
        header: header(PARENT, PARENT, 8, None),
        body: EventBody::RangeClosed(RangeClosed { first, last, flags }),
    }
}

/// close_range closes a block (up to ~0U), marks it close-on-exec with
/// CLOSE_RANGE_CLOEXEC, and changes nothing when the kernel would reject its arguments.
#[test]
fn close_range_blocks() {
    let mut agg = Aggregator::new();
    for fd in 3..=12 {
        agg.apply(&mut open(PARENT, fd, "/f", 1));
    }
    agg.apply(&mut close_range(5, 7, 0));
    assert_eq!(open_fds(&agg, PARENT), vec![3, 4, 8, 9, 10, 11, 12]);
    agg.apply(&mut close_range(9, 3, 0));
    agg.apply(&mut close_range(3, 4, 1 << 7));
    assert_eq!(
        open_fds(&agg, PARENT).len(),
        7,
        "rejected calls change nothing"
    );
    agg.apply(&mut close_range(10, u32::MAX, 1 << 2));
    assert!(agg.process(PARENT).unwrap().fds[&12].cloexec);
    agg.apply(&mut close_range(9, u32::MAX, 1 << 1));
    assert_eq!(open_fds(&agg, PARENT), vec![3, 4, 8]);
}

/// Relative paths are resolved against the working directory or the directory fd at open
/// time; unknown bases are said; non-UTF-8 bytes survive as escapes.
#[test]
fn relative_paths_are_resolved() {
    let mut agg = Aggregator::new();
    agg.apply(&mut open(PARENT, 3, "log.txt", 1));
    agg.set_cwd(PARENT, "/srv/app".into());
    agg.apply(&mut open(PARENT, 4, "./logs/a.log", 2));
    agg.apply(&mut open_raw(
        PARENT,
        5,
        Syscall::Openat,
        AT_FDCWD,
        0,
        b"/tmp/\xffx",
    ));
    agg.apply(&mut open(PARENT, 6, "/var/lib", 4));
    agg.apply(&mut open_raw(PARENT, 7, Syscall::Openat, 6, 0, b"db/../x"));
    agg.apply(&mut open_raw(PARENT, 8, Syscall::Openat, 42, 0, b"y"));
    agg.apply(&mut fork(PARENT, CHILD, 0));
    agg.apply(&mut open(CHILD, 9, "z", 7));
    let detail = |pid, fd| agg.process(pid).unwrap().fds[&fd].detail.clone();
    assert_eq!(
        detail(PARENT, 3),
        "log.txt (relative to the working directory)"
    );
    assert_eq!(detail(PARENT, 4), "/srv/app/logs/a.log");
    assert_eq!(detail(PARENT, 5), "/tmp/\\xffx");
    assert_eq!(detail(PARENT, 7), "/var/lib/db/../x");
    assert_eq!(detail(PARENT, 8), "y (relative to fd 42)");
    assert_eq!(
        detail(CHILD, 9),
        "/srv/app/z",
        "a child inherits the working directory"
    );
}

/// socket(2) arguments name the protocol, ignoring SOCK_* flags.
#[test]
fn socket_descriptions() {
    let mut agg = Aggregator::new();
    agg.apply(&mut created(PARENT, 3, Syscall::Socket, 2, 1 | CLOEXEC));
    agg.apply(&mut created(PARENT, 4, Syscall::Socket, 10, 2));
    agg.apply(&mut created(PARENT, 5, Syscall::Socket, 1, 1));
    let table = &agg.process(PARENT).unwrap().fds;
    let details: Vec<&str> = (3..=5).map(|fd| table[&fd].detail.as_str()).collect();
    assert_eq!(details, ["tcp", "udp6", "unix"]);
    assert!(table[&3].cloexec && !table[&4].cloexec);
}

/// Events of two threads reach the ring in the order their syscalls took effect (close is
/// emitted before the kernel frees the number, an open after it installs one), so a close
/// on one CPU and an open reusing the number on another apply in ring order, whatever
/// their timestamps (taken on different CPUs) say.
#[test]
fn fd_reuse_across_threads_follows_ring_order() {
    let mut agg = Aggregator::new();
    agg.apply(&mut open(PARENT, 3, "/old", 10));
    agg.apply(&mut close(PARENT, PARENT + 1, 3));
    agg.apply(&mut open(PARENT, 3, "/new", 9));
    assert_eq!(agg.process(PARENT).unwrap().fds[&3].detail, "/new");
    agg.apply(&mut close(PARENT, PARENT, 3));
    agg.apply(&mut close(PARENT, PARENT, 3));
    assert!(
        open_fds(&agg, PARENT).is_empty(),
        "a second close (EBADF) is harmless"
    );
}

/// `open` from another stack.
fn open_from(tgid: u32, fd: i32, stack_id: u32, t: u64) -> Event {
    let mut event = open(tgid, fd, "/tmp/worker", t);
    event.header.stack_id = Some(stack_id);
    event
}

/// A thousand short-lived children that each exit holding three descriptors make one group
/// of 1 000 processes and 3 000 descriptors; once reaped they are forgotten, so the tables
/// hold what is live (the parent's leak) plus the groups, and a zombie stays.
#[test]
fn exits_fold_per_stack_and_reaped_processes_are_forgotten() {
    let mut agg = Aggregator::new();
    agg.apply(&mut open(PARENT, 3, "/var/leak", 1));
    for child in 1000..2000 {
        agg.apply(&mut fork(PARENT, child, 17));
        for fd in 4..7 {
            agg.apply(&mut open_from(child, fd, 5, 10));
        }
        agg.apply(&mut exit(child, child, Some(true)));
    }
    let groups: Vec<&AtExitGroup> = agg.at_exit_groups().collect();
    assert_eq!(groups.len(), 1);
    let group = groups[0];
    assert_eq!(group.stack.map(|s| s.id), Some(5));
    assert_eq!((group.processes, group.descriptors), (1000, 3000));
    assert_eq!(group.median_per_process(), 3);
    assert!(agg.processes().all(|p| p.held_at_exit.is_empty()));

    let forgotten = agg.forget_reaped(|p| p.pid == 1500);
    assert_eq!(forgotten.len(), 999);
    assert_eq!(agg.exited_forgotten, 999);
    let left: Vec<u32> = agg.processes().map(|p| p.pid).collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(agg.process(1500).is_some_and(Process::exited));
    assert_eq!(open_fds(&agg, PARENT), vec![3]);
    assert_eq!(agg.at_exit_groups().next().unwrap().processes, 1000);
}

/// With `--at-exit-descriptors` nothing is forgotten: every exited process and what it held
/// stays for the report.
#[test]
fn keeping_at_exit_descriptors_forgets_nothing() {
    let mut agg = Aggregator::keeping_at_exit_descriptors();
    for child in 1000..1010 {
        agg.apply(&mut fork(PARENT, child, 17));
        agg.apply(&mut open_from(child, 4, 5, 10));
        agg.apply(&mut exit(child, child, Some(true)));
    }
    assert_eq!(agg.forget_reaped(|_| false), Vec::<u32>::new());
    let held: usize = agg.processes().map(|p| p.held_at_exit.len()).sum();
    assert_eq!(held, 10);
    assert_eq!(agg.at_exit_groups().next().unwrap().processes, 10);
}

/// By default a reused pid drops the earlier process: what it held is in the groups already.
#[test]
fn reused_pid_is_folded_not_kept() {
    let mut agg = Aggregator::new();
    agg.apply(&mut fork(PARENT, CHILD, 17));
    agg.apply(&mut open(CHILD, 5, "/old", 8));
    agg.apply(&mut exit(CHILD, CHILD, Some(true)));
    agg.apply(&mut fork(PARENT, CHILD, 17));
    assert_eq!(agg.processes().count(), 2);
    assert_eq!(agg.exited_forgotten, 1);
    assert_eq!(agg.at_exit_groups().next().unwrap().descriptors, 1);
}

/// What the stack store must keep once processes are forgotten: the stacks of the at-exit
/// groups (the first exits'), those live descriptors were inherited with (an intermediate
/// process's, gone since), and the tables' own; not those of every child that came and went.
#[test]
fn stacks_in_use_name_what_is_kept_not_every_child() {
    const MIDDLE: u32 = 900;
    const GRANDCHILD: u32 = 901;
    let mut agg = Aggregator::new();
    agg.apply(&mut open(PARENT, 3, "/var/leak", 1));
    agg.apply(&mut fork(PARENT, MIDDLE, 17));
    agg.apply(&mut open_from(MIDDLE, 4, 6, 2));
    agg.apply(&mut fork(MIDDLE, GRANDCHILD, 17));
    agg.apply(&mut exit(MIDDLE, MIDDLE, Some(true)));
    for child in 1000..2000 {
        agg.apply(&mut fork(PARENT, child, 17));
        agg.apply(&mut open_from(child, 4, 5, 10));
        agg.apply(&mut exit(child, child, Some(true)));
    }
    agg.forget_reaped(|p| p.pid == GRANDCHILD);
    let pids: std::collections::BTreeSet<u32> = agg.stacks_in_use().map(|s| s.pid).collect();
    let first_exits: Vec<u32> = (1000..1000 + pids.len() as u32).collect();
    assert!(pids.contains(&PARENT) && pids.contains(&MIDDLE), "{pids:?}");
    assert!(pids.contains(&1000), "{pids:?}");
    assert!(pids.len() < 20, "{pids:?}");
    assert!(
        pids.iter()
            .filter(|&&p| p >= 1000)
            .all(|p| first_exits.contains(p)),
        "{pids:?}"
    );
}
