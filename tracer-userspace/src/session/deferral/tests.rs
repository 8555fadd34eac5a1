//! Deferred stacks through synthetic events, in the pipeline's order (settle before, apply,
//! queue and settle what is due after): a descriptor closed within the window is never
//! unwound; one that outlives it, or is copied by a fork, folded by an exit, kept across an
//! exec or explained by a failed close within it, gets the stack an eager store gives.

use tracer_common::{CLONE_THREAD, Syscall, abi::AT_FDCWD};

use super::*;
use crate::{
    events::{CloseFailed, FdClosed, FileOpened, Header, StackTop, TaskExited},
    stacks::WINDOW_NS,
};

struct NoKernelStacks;

impl KernelStacks for NoKernelStacks {
    fn stack(&self, _: u32) -> Option<Vec<u64>> {
        None
    }
}

/// A stack at the first instruction of libc's accept4 called from this test binary: it
/// unwinds to [accept4, caller].
fn stack_bytes() -> (u64, Vec<u64>, Vec<u8>) {
    // SAFETY: dlsym only reads the NUL-terminated name; a null handle searches the global scope.
    let accept4 = unsafe { libc::dlsym(std::ptr::null_mut(), c"accept4".as_ptr()) } as u64;
    assert_ne!(accept4, 0);
    let caller = stack_bytes as fn() -> (u64, Vec<u64>, Vec<u8>) as usize as u64 + 1;
    let bytes = [caller, 0].iter().flat_map(|w| w.to_le_bytes()).collect();
    (accept4, vec![accept4, caller], bytes)
}

fn header(tgid: u32, tid: u32, t: u64) -> Header {
    Header {
        tgid,
        tid,
        stack_id: None,
        timestamp_ns: t,
        generation: 0,
    }
}

fn event(tgid: u32, t: u64, body: EventBody) -> Event {
    Event {
        header: header(tgid, tgid, t),
        body,
    }
}

fn opened(fd: i32) -> EventBody {
    EventBody::FileOpened(FileOpened {
        fd,
        syscall: Syscall::Openat,
        dirfd: AT_FDCWD,
        flags: 0,
        path: Some(b"/dev/null".to_vec()),
        path_truncated: false,
    })
}

fn closed(fd: i32) -> EventBody {
    EventBody::FdClosed(FdClosed { fd })
}

/// The tables and a stack store fed like the pipeline feeds them, in this process.
struct Pipeline {
    agg: Aggregator,
    stacks: StackStore,
    pid: u32,
    ip: u64,
    expected: Vec<u64>,
    bytes: Vec<u8>,
}

impl Pipeline {
    /// Started with one birth unwound at once (a thread's first walk), fd 3.
    fn new() -> Self {
        let pid = std::process::id();
        let (ip, expected, bytes) = stack_bytes();
        let mut stacks = StackStore::new().without_memo();
        stacks.capture(pid);
        let mut pipeline = Self {
            agg: Aggregator::new(),
            stacks,
            pid,
            ip,
            expected,
            bytes,
        };
        pipeline.feed(event(pid, 1, opened(3)), true);
        assert_eq!(pipeline.unwound(), 1);
        pipeline
    }

    fn feed(&mut self, mut event: Event, with_stack: bool) {
        let top = with_stack.then_some(StackTop {
            sp: 0x7000_0000_0000,
            bp: 0,
            ip: self.ip,
            bytes: &self.bytes,
            memo: 0,
        });
        let deferred = self.stacks.annotate(&mut event, top, &NoKernelStacks);
        let mut settle = Settle {
            agg: &mut self.agg,
            stacks: &mut self.stacks,
            kernel: &NoKernelStacks,
        };
        settle.before(&event);
        settle.agg.apply(&mut event);
        settle.after(deferred, event.header.timestamp_ns);
    }

    fn open(&mut self, fd: i32, t: u64) {
        self.feed(event(self.pid, t, opened(fd)), true);
    }

    fn close(&mut self, fd: i32, t: u64) {
        self.feed(event(self.pid, t, closed(fd)), false);
    }

    /// How many stacks were unwound.
    fn unwound(&self) -> u64 {
        self.stacks.interned(0).1
    }

    /// The addresses of a stack in the tables, which must be a final one.
    fn ips(&self, stack: Option<StackRef>) -> Vec<u64> {
        let stack = stack.expect("a stack");
        assert!(!stack.is_pending(), "{stack:?} is still pending");
        self.stacks.interned(stack.id).0.expect("interned")
    }

    fn stack_of(&self, pid: u32, fd: i32) -> Option<StackRef> {
        self.agg.process(pid).expect("process").fds[&fd].stack
    }
}

/// Opened and closed within the window, many times: never unwound, and the copies are
/// dropped once the window has passed.
#[test]
fn closed_within_the_window_is_never_unwound() {
    let mut p = Pipeline::new();
    for t in 0..100 {
        p.open(4, 10 + 2 * t);
        p.close(4, 11 + 2 * t);
    }
    p.close(3, 300);
    p.feed(event(p.pid, 400 + WINDOW_NS, EventBody::CwdChanged), false);
    assert_eq!(p.unwound(), 1);
    Settle {
        agg: &mut p.agg,
        stacks: &mut p.stacks,
        kernel: &NoKernelStacks,
    }
    .due(u64::MAX);
    assert_eq!(p.unwound(), 1);
    assert!(
        p.stacks
            .sizes()
            .contains("deferred 0 (0 bytes); 1 stacks repaired, 100 deferred (100 dropped"),
        "{}",
        p.stacks.sizes()
    );
}

/// Still open when the window has passed: unwound then, to the stack an eager store gives;
/// one still open at report time is unwound by the final settling.
#[test]
fn outliving_the_window_is_unwound_with_its_stack() {
    let mut p = Pipeline::new();
    p.open(4, 10);
    assert!(p.stack_of(p.pid, 4).is_some_and(|s| s.is_pending()));
    p.open(5, 20);
    p.close(5, 30);
    p.open(6, 40);
    p.feed(event(p.pid, 10 + WINDOW_NS, EventBody::CwdChanged), false);
    assert_eq!(p.ips(p.stack_of(p.pid, 4)), p.expected);
    assert!(p.stack_of(p.pid, 6).is_some_and(|s| s.is_pending()));
    Settle {
        agg: &mut p.agg,
        stacks: &mut p.stacks,
        kernel: &NoKernelStacks,
    }
    .due(u64::MAX);
    assert_eq!(p.ips(p.stack_of(p.pid, 6)), p.expected);
    // fd 4 and 6 share their interned stack with the eager fd 3; fd 5 was never unwound.
    assert_eq!(p.unwound(), 3);
    assert_eq!(p.stack_of(p.pid, 4), p.stack_of(p.pid, 3));
}

/// A process that exits within the window: what it still held is folded per stack with
/// its real stack, not a pending id (the exit settles the table first).
#[test]
fn exit_within_the_window_keeps_the_stack() {
    let mut p = Pipeline::new();
    let child = p.pid + 1_000_000;
    p.feed(
        event(
            p.pid,
            5,
            EventBody::TaskCreated(crate::events::TaskCreated {
                child_tid: child,
                syscall: Some(Syscall::Clone),
                clone_flags: Some(0),
            }),
        ),
        false,
    );
    // The child runs its parent's image; its thread is new, so its first birth is eager.
    p.feed(event(child, 6, opened(7)), true);
    p.feed(event(child, 7, opened(8)), true);
    assert!(p.stack_of(child, 8).is_some_and(|s| s.is_pending()));
    p.feed(
        event(
            child,
            8,
            EventBody::TaskExited(TaskExited {
                group_dead: Some(true),
            }),
        ),
        false,
    );
    let groups: Vec<_> = p.agg.at_exit_groups().collect();
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(groups[0].descriptors, 2);
    assert_eq!(p.ips(groups[0].stack), p.expected);
}

/// A fork within the window copies the table with final stacks; an exec within it keeps a
/// descriptor that survives it with its stack of the old image.
#[test]
fn fork_and_exec_within_the_window_keep_the_stack() {
    let mut p = Pipeline::new();
    let child = p.pid + 1_000_000;
    p.open(4, 10);
    p.feed(
        event(
            p.pid,
            11,
            EventBody::TaskCreated(crate::events::TaskCreated {
                child_tid: child,
                syscall: Some(Syscall::Clone),
                clone_flags: Some(0),
            }),
        ),
        false,
    );
    assert_eq!(p.ips(p.stack_of(p.pid, 4)), p.expected);
    assert_eq!(p.stack_of(child, 4), p.stack_of(p.pid, 4));

    p.open(5, 12);
    p.feed(event(p.pid, 13, EventBody::Exec), false);
    let stack = p.stack_of(p.pid, 5);
    assert_eq!(stack.map(|s| s.generation), Some(0));
    assert_eq!(p.ips(stack), p.expected);
    // A new thread is not a fork: the table is not copied, nothing is settled. (The first
    // birth after the exec is unwound at once: the new image's stack is walked anew.)
    p.open(6, 14);
    p.open(7, 14);
    assert!(!p.stack_of(p.pid, 6).is_some_and(|s| s.is_pending()));
    p.feed(
        event(
            p.pid,
            15,
            EventBody::TaskCreated(crate::events::TaskCreated {
                child_tid: child + 1,
                syscall: Some(Syscall::Clone),
                clone_flags: Some(CLONE_THREAD),
            }),
        ),
        false,
    );
    assert!(p.stack_of(p.pid, 7).is_some_and(|s| s.is_pending()));
}

/// A failed close within the window shows the previous life's stack (its copy is still
/// queued), though that descriptor was closed and never unwound on its own.
#[test]
fn failed_close_within_the_window_names_the_previous_stack() {
    let mut p = Pipeline::new();
    p.open(4, 10);
    p.close(4, 11);
    p.feed(
        event(
            p.pid,
            12,
            EventBody::CloseFailed(CloseFailed {
                fd: 4,
                syscall: Syscall::Close,
                target: None,
            }),
        ),
        true,
    );
    let group = p.agg.bad_closes().values().next().expect("a failed close");
    let life = &group.examples[0].lives[0];
    assert_eq!(p.ips(life.descriptor.stack), p.expected);
}
