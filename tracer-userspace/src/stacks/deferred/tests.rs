//! Deferral in the store: what is deferred, that a deferred stack unwinds to what an eager
//! one does, the budget, and pending ids.

use super::*;
use crate::stacks::test_support::{NoKernelStacks, libc_function, opened};

/// A stack at the first instruction of libc's accept4 (no frame: the caller is the word at
/// sp), called from this test binary: it unwinds to [accept4, caller].
fn stack_bytes() -> (u64, u64, Vec<u8>) {
    let accept4 = libc_function(c"accept4");
    let caller = stack_bytes as fn() -> (u64, u64, Vec<u8>) as usize as u64 + 1;
    let bytes = [caller, 0].iter().flat_map(|w| w.to_le_bytes()).collect();
    (accept4, caller, bytes)
}

fn top(ip: u64, bytes: &[u8]) -> StackTop<'_> {
    StackTop {
        sp: 0x7000_0000_0000,
        bp: 0,
        ip,
        bytes,
        memo: 0,
    }
}

/// A deferring store capturing `me`, whose thread made its first (eager) walk already: its
/// later births are the ones deferred.
fn past_first_walk(me: u32, ip: u64, bytes: &[u8]) -> StackStore {
    let mut store = StackStore::new().without_memo();
    store.capture(me);
    store.annotate(&mut opened(me, 3, 1), Some(top(ip, bytes)), &NoKernelStacks);
    store
}

/// A thread's first birth is unwound at once (its walk teaches the kernel where the stack
/// ends); later ones are deferred, and unwind to the same stack as an eager store's.
#[test]
fn first_walk_is_eager_later_births_are_deferred_and_unwind_alike() {
    let me = std::process::id();
    let (ip, caller, bytes) = stack_bytes();
    let mut eager = StackStore::with_defer_window(0).without_memo();
    let mut store = StackStore::new().without_memo();
    eager.capture(me);
    store.capture(me);

    let mut first = opened(me, 3, 1);
    assert!(
        store
            .annotate(&mut first, Some(top(ip, &bytes)), &NoKernelStacks)
            .is_none()
    );
    let id = first.header.stack_id.expect("unwound at once");
    assert_eq!(store.interned(id), (Some(vec![ip, caller]), 1));

    let mut second = opened(me, 4, 2);
    let deferred = store
        .annotate(&mut second, Some(top(ip, &bytes)), &NoKernelStacks)
        .expect("deferred");
    let pending = second.header.stack().expect("a pending id");
    assert!(pending.is_pending());
    assert_eq!(deferred.stack, pending);
    assert_eq!(deferred.fd, 4);

    let mut same = opened(me, 4, 2);
    assert!(
        eager
            .annotate(&mut same, Some(top(ip, &bytes)), &NoKernelStacks)
            .is_none()
    );
    let expected = eager.interned(same.header.stack_id.expect("eager")).0;

    let resolved = store
        .resolve_deferred(deferred, &NoKernelStacks)
        .expect("a stack");
    assert_eq!((resolved.pid, resolved.generation), (me, 0));
    assert_eq!(store.interned(resolved.id).0, expected);
}

/// Closes and other events without a stack, and stacks whose innermost address no known
/// mapping holds, are not deferred.
#[test]
fn only_births_in_known_code_are_deferred() {
    let me = std::process::id();
    let (ip, _, bytes) = stack_bytes();
    let mut store = past_first_walk(me, ip, &bytes);
    let mut unmapped = opened(me, 4, 2);
    assert!(
        store
            .annotate(&mut unmapped, Some(top(0x10, &bytes)), &NoKernelStacks)
            .is_none()
    );
    let mut exec = opened(me, 4, 2);
    exec.body = EventBody::Exec;
    assert!(
        store
            .annotate(&mut exec, Some(top(ip, &bytes)), &NoKernelStacks)
            .is_none()
    );
}

/// Queued stacks come due when their window has passed, oldest first; a pending id finds
/// its copy (and only for its process), until the copy is gone.
#[test]
fn due_in_order_and_found_by_id() {
    let me = std::process::id();
    let (ip, _, bytes) = stack_bytes();
    let mut store = past_first_walk(me, ip, &bytes);
    let mut ids = Vec::new();
    for (fd, t) in [(4, 10), (5, 20), (6, 30)] {
        let mut event = opened(me, fd, t);
        let deferred = store.annotate(&mut event, Some(top(ip, &bytes)), &NoKernelStacks);
        store.queue_deferred(deferred.expect("deferred"));
        ids.push(event.header.stack().expect("pending"));
    }
    assert!(store.next_due(15 + WINDOW_NS - 10).is_none());
    assert_eq!(store.next_due(10 + WINDOW_NS).map(|d| d.fd), Some(4));
    let other_process = StackRef {
        pid: me + 1,
        ..ids[2]
    };
    assert!(store.take_pending(other_process).is_none());
    assert_eq!(store.take_pending(ids[2]).map(|d| d.fd), Some(6));
    assert!(store.take_pending(ids[2]).is_none());
    assert!(
        store.take_pending(ids[0]).is_none(),
        "already due and taken"
    );
    assert_eq!(store.next_due(u64::MAX).map(|d| d.fd), Some(5));
    assert!(store.next_due(u64::MAX).is_none());
    assert_eq!(store.pending.len(), 0);
}

/// Pending ids hold the low 31 bits of a sequence number: a copy is found across the wrap.
#[test]
fn pending_ids_wrap() {
    let me = std::process::id();
    let (ip, _, bytes) = stack_bytes();
    let mut store = past_first_walk(me, ip, &bytes);
    store.pending.next_seq = u64::from(!PENDING_STACK) - 1;
    let mut ids = Vec::new();
    for fd in 4..8 {
        let mut event = opened(me, fd, 10);
        let deferred = store.annotate(&mut event, Some(top(ip, &bytes)), &NoKernelStacks);
        store.queue_deferred(deferred.expect("deferred"));
        ids.push(event.header.stack().expect("pending"));
    }
    assert!(ids.iter().all(StackRef::is_pending));
    assert_eq!(ids[2].id, PENDING_STACK);
    for (fd, id) in (4..8).zip(&ids).rev() {
        assert_eq!(store.take_pending(*id).map(|d| d.fd), Some(fd));
    }
}

/// When the queue is nearly full its oldest stacks come due early, and a birth that finds
/// no room is unwound at once: none is dropped unasked, memory stays within the budget.
#[test]
fn a_full_queue_settles_early_and_unwinds_at_once() {
    let me = std::process::id();
    let (ip, _, mut bytes) = stack_bytes();
    bytes.resize(64 << 10, 0);
    let mut store = past_first_walk(me, ip, &bytes);
    let mut queued = 0;
    let eager = loop {
        let mut event = opened(me, 4, 10);
        match store.annotate(&mut event, Some(top(ip, &bytes)), &NoKernelStacks) {
            Some(deferred) => {
                store.queue_deferred(deferred);
                queued += 1;
            }
            None => break event,
        }
        assert!(queued < 1000, "the budget never filled");
    };
    assert!(store.pending.bytes <= BUDGET_BYTES);
    assert!(!eager.header.stack().expect("unwound at once").is_pending());
    // Not due by time, but the queue is over its settling mark.
    assert!(store.next_due(11).is_some());
    while let Some(d) = store.next_due(11) {
        store.drop_deferred(d);
    }
    assert!(store.pending.bytes <= SETTLE_ABOVE_BYTES);
    assert!(store.pending.len() < queued);
}

/// Kernel stacks from a table.
struct Table(Vec<u64>);

impl KernelStacks for Table {
    fn stack(&self, _: u32) -> Option<Vec<u64>> {
        Some(self.0.clone())
    }
}

/// A kernel frame-pointer walk that wandered into garbage (as it does through frameless
/// code) does not keep a stack from being deferred, and the deferred stack is the one an
/// eager store makes of the same event: cut where the garbage starts.
#[test]
fn kernel_walk_with_garbage_is_deferred_and_cut_alike() {
    let me = std::process::id();
    let (ip, caller, bytes) = stack_bytes();
    let kernel = Table(vec![ip, 0x696c_7274_6567_006c]);
    let mut eager = StackStore::with_defer_window(0).without_memo();
    let mut store = StackStore::new().without_memo();
    eager.capture(me);
    store.capture(me);
    let with_walk = |fd, t| {
        let mut event = opened(me, fd, t);
        event.header.stack_id = Some(9);
        event
    };
    store.annotate(&mut with_walk(3, 1), Some(top(ip, &bytes)), &kernel);
    let mut event = with_walk(4, 2);
    let deferred = store
        .annotate(&mut event, Some(top(ip, &bytes)), &kernel)
        .expect("deferred despite the garbage");
    let mut same = with_walk(4, 2);
    eager.annotate(&mut same, Some(top(ip, &bytes)), &kernel);
    let expected = eager.interned(same.header.stack_id.expect("eager")).0;
    let resolved = store.resolve_deferred(deferred, &kernel).expect("a stack");
    assert_eq!(store.interned(resolved.id).0, expected);
    assert_eq!(expected, Some(vec![ip, caller]));
}
