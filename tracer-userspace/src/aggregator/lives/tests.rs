//! The bounded history of descriptor numbers, and failed closes explained from it.

use tracer_common::Syscall;

use super::*;
use crate::{
    aggregator::tests::{PARENT, header},
    events::{Event, EventBody, FdClosed, FdCreated, FileOpened, RangeClosed},
};

const T1: u32 = PARENT + 1;
const T2: u32 = PARENT + 2;

fn open(tid: u32, fd: i32, t: u64, stack: u32) -> Event {
    Event {
        header: header(PARENT, tid, t, Some(stack)),
        body: EventBody::FileOpened(FileOpened {
            fd,
            syscall: Syscall::Openat,
            dirfd: -100,
            flags: 0,
            path: Some(format!("/tmp/f{t}").into_bytes()),
            path_truncated: false,
        }),
    }
}

fn close(tid: u32, fd: i32, t: u64) -> Event {
    Event {
        header: header(PARENT, tid, t, None),
        body: EventBody::FdClosed(FdClosed { fd }),
    }
}

fn failed(tid: u32, fd: i32, syscall: Syscall, t: u64, stack: u32) -> Event {
    Event {
        header: header(PARENT, tid, t, Some(stack)),
        body: EventBody::CloseFailed(CloseFailed {
            fd,
            syscall,
            target: (syscall != Syscall::Close).then_some(40),
        }),
    }
}

fn group(agg: &Aggregator, stack: u32) -> &BadCloseGroup {
    agg.bad_closes()
        .iter()
        .find(|((_, s), _)| s.map(|s| s.id) == Some(stack))
        .map(|(_, g)| g)
        .expect("no group for that closing stack")
}

/// The ring keeps the last LIVES_KEPT closes, all numbers together, and finds a number's
/// lives newest first; what is older is forgotten, so a failed close then has no history.
#[test]
fn history_is_bounded() {
    let mut agg = Aggregator::new();
    agg.apply(&mut open(T1, 3, 1, 1));
    agg.apply(&mut close(T1, 3, 2));
    agg.apply(&mut open(T1, 3, 3, 2));
    agg.apply(&mut close(T1, 3, 4));
    let lives = &agg.process(PARENT).unwrap().lives;
    let opened: Vec<u64> = lives.of(3).map(|l| l.descriptor.opened_at_ns).collect();
    assert_eq!(opened, vec![3, 1]);
    for i in 0..LIVES_KEPT as u64 {
        agg.apply(&mut open(T1, 4, 10 + 2 * i, 1));
        agg.apply(&mut close(T1, 4, 11 + 2 * i));
    }
    let lives = &agg.process(PARENT).unwrap().lives;
    assert_eq!(lives.len(), LIVES_KEPT);
    assert_eq!(lives.of(3).count(), 0);
    agg.apply(&mut failed(T1, 3, Syscall::Close, 10_000, 9));
    let g = group(&agg, 9);
    assert_eq!(g.count, 1);
    assert!(g.examples[0].lives.is_empty());
}

/// A descriptor closed twice by one thread: the second close is kept with its own stack
/// and the number's previous life (opening stack, closing thread and time); not stale.
#[test]
fn double_close_names_the_previous_life() {
    let mut agg = Aggregator::new();
    agg.apply(&mut open(T1, 5, 100, 1));
    agg.apply(&mut close(T1, 5, 200));
    // The failing close's own enter event finds nothing to close.
    agg.apply(&mut close(T1, 5, 300));
    agg.apply(&mut failed(T1, 5, Syscall::Close, 301, 7));
    let g = group(&agg, 7);
    assert_eq!((g.count, g.suspected_stale), (1, 0));
    assert_eq!(g.by_syscall.get("close"), Some(&1));
    let example = &g.examples[0];
    assert_eq!((example.fd, example.tid, example.at_ns), (5, T1, 301));
    assert!(!example.suspected_stale);
    let life = &example.lives[0];
    assert_eq!(life.descriptor.stack.map(|s| s.id), Some(1));
    assert_eq!((life.closer_tid, life.closed_at_ns), (T1, 200));
    assert_eq!(life.closed_by, Syscall::Close);
}

/// Thread 1 closes its descriptor twice; in between thread 2 got the same number. Thread 2's
/// own close then fails: the number's last life (thread 2's, closed by thread 1 soon after
/// its birth) marks it suspected stale, and the life before names thread 1's opening stack.
#[test]
fn stale_close_of_a_reused_number() {
    let mut agg = Aggregator::new();
    agg.apply(&mut open(T1, 6, 1_000, 1));
    agg.apply(&mut close(T1, 6, 2_000));
    agg.apply(&mut open(T2, 6, 3_000, 2));
    agg.apply(&mut close(T1, 6, 4_000));
    agg.apply(&mut close(T2, 6, 5_000));
    agg.apply(&mut failed(T2, 6, Syscall::Close, 5_001, 8));
    let g = group(&agg, 8);
    assert_eq!((g.count, g.suspected_stale), (1, 1));
    let example = &g.examples[0];
    assert!(example.suspected_stale);
    let stacks: Vec<_> = example
        .lives
        .iter()
        .map(|l| l.descriptor.stack.map(|s| s.id))
        .collect();
    assert_eq!(stacks, vec![Some(2), Some(1)]);
    let tids: Vec<_> = example
        .lives
        .iter()
        .map(|l| (l.descriptor.tid, l.closer_tid))
        .collect();
    assert_eq!(tids, vec![(T2, T1), (T1, T1)]);
    // The same hand-over long after the birth is no longer suspect.
    let mut late = example.lives[0].clone();
    late.closed_at_ns = late.descriptor.opened_at_ns + STALE_WINDOW_NS + 1;
    assert!(!late.closed_by_another_thread_soon());
}

/// close_range over a range with holes fails nothing; what it closed joins the history.
/// A dup2 whose old descriptor is open failed because of its target: not kept.
#[test]
fn holes_and_targets_are_not_failed_closes() {
    let mut agg = Aggregator::new();
    agg.apply(&mut open(T1, 3, 1, 1));
    agg.apply(&mut open(T1, 7, 2, 1));
    agg.apply(&mut Event {
        header: header(PARENT, T1, 3, None),
        body: EventBody::RangeClosed(RangeClosed {
            first: 3,
            last: 100,
            flags: 0,
        }),
    });
    let lives = &agg.process(PARENT).unwrap().lives;
    assert_eq!(lives.of(7).next().unwrap().closed_by, Syscall::CloseRange);
    agg.apply(&mut open(T1, 4, 4, 1));
    agg.apply(&mut failed(T1, 4, Syscall::Dup2, 5, 9));
    assert!(agg.bad_closes().is_empty());
    // dup2 onto an open number ends that number's life too.
    agg.apply(&mut Event {
        header: header(PARENT, T1, 6, Some(3)),
        body: EventBody::FdCreated(FdCreated {
            fd: 4,
            syscall: Syscall::Dup2,
            arg0: 1,
            arg1: 0,
            arg2: 0,
        }),
    });
    let lives = &agg.process(PARENT).unwrap().lives;
    assert_eq!(lives.of(4).next().unwrap().closed_by, Syscall::Dup2);
}

/// Every failed close is counted, but only the first EXAMPLES_KEPT are kept in full.
#[test]
fn examples_are_bounded() {
    let mut agg = Aggregator::new();
    for i in 0..20 {
        agg.apply(&mut failed(T1, 50 + i, Syscall::Close, 10 + i as u64, 4));
    }
    agg.apply(&mut failed(T1, 90, Syscall::Dup3, 100, 4));
    let g = group(&agg, 4);
    assert_eq!(g.count, 21);
    assert_eq!(g.examples.len(), EXAMPLES_KEPT);
    assert_eq!((g.first_ns, g.last_ns), (10, 100));
    assert_eq!(g.by_syscall.get("dup3"), Some(&1));
}
