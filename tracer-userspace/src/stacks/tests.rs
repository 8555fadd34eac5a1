use foldhash::HashMap;

use super::{splice::spliced, unwind::Unwound, *};
use crate::events::TaskCreated;

fn cut(frames: &[u64]) -> Unwound {
    Unwound {
        frames: frames.to_vec(),
        complete: false,
        reached_root: false,
        stack_used: 0,
        rejected: None,
    }
}

fn modules() -> ModuleMap {
    ModuleMap::parse(
        "1000-2000 r-xp 00000000 08:01 1 /srv/app\n\
         7000-8000 r-xp 00000000 08:01 2 /lib/libc.so.6\n",
    )
}

/// Without unwound frames the kernel's stack is kept up to its first unmapped address.
#[test]
fn cuts_at_first_unmapped_address() {
    let kept = [0x7100, 0x1100, 0x1200];
    assert_eq!(spliced(&cut(&[]), &kept, &modules()), kept);
    assert_eq!(
        spliced(
            &cut(&[0x7100]),
            &[0x7100, 0x1100, 0xdead, 0x1200],
            &modules()
        ),
        vec![0x7100, 0x1100]
    );
}

/// Unwound frames that do not meet the kernel's walk are followed by its second frame
/// on; the walk is cut at the first unmapped address.
#[test]
fn inserts_unwound_caller_and_cuts_garbage() {
    let kernel = [0x7100, 0x1200, 0x6567_7261_742f_6e69, 0x1300];
    assert_eq!(
        spliced(&cut(&[0x7100, 0x1100]), &kernel, &modules()),
        vec![0x7100, 0x1100, 0x1200]
    );
}

/// Where the last unwound frame meets the kernel's walk, the walk continues after it,
/// without repeating it; where they part ways before that, the unwound frames stand alone,
/// as they do when a long walk has nothing in common with the kernel's.
#[test]
fn continues_with_the_kernel_walk_where_they_meet() {
    let kernel = [0x7100, 0x1300, 0x1400];
    assert_eq!(
        spliced(&cut(&[0x7100, 0x7200, 0x1200, 0x1300]), &kernel, &modules()),
        vec![0x7100, 0x7200, 0x1200, 0x1300, 0x1400]
    );
    let astray = [0x7100, 0x1200, 0x1f00, 0x1e00];
    assert_eq!(
        spliced(&cut(&[0x7100, 0x1100, 0x1200, 0x1300]), &astray, &modules()),
        vec![0x7100, 0x1100, 0x1200, 0x1300]
    );
    assert_eq!(
        spliced(
            &cut(&[0x7100, 0x1100, 0x1300]),
            &[0x7100, 0x1f00],
            &modules()
        ),
        vec![0x7100, 0x1100, 0x1300]
    );
}

/// A process that exited keeps the mappings seen while it lived, even when an address
/// no mapping holds makes the store list its mappings again, now that /proc shows none
/// (a zombie's maps file is empty).
#[test]
fn mappings_outlive_the_process() {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("sleep");
    let pid = child.id();
    let mut store = StackStore::new();
    // Until exec and the dynamic loader are done the child may still be the test binary,
    // or sleep without its libraries: wait for sleep's libc.
    let mut tries = 0;
    while !std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .is_ok_and(|maps| maps.contains("/sleep") && maps.contains("/libc.so"))
    {
        tries += 1;
        assert!(tries < 500, "sleep never started");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    store.capture(pid);
    let seen = store.modules_of(pid, 0);
    assert!(!seen.mappings().is_empty());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.contains(") Z "))
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let after = store.modules_covering(pid, 0, Some(1), &[0x10]);
    child.wait().expect("reap");
    assert_eq!(after.mappings(), seen.mappings());
}

/// A walk that reached the root of the stack is the stack: the kernel's walk adds
/// nothing. Without a kernel stack the unwound frames alone are kept.
#[test]
fn complete_walk_stands_alone() {
    let complete = Unwound {
        frames: vec![0x7100, 0x1100, 0x1200],
        complete: true,
        reached_root: true,
        stack_used: 64,
        rejected: None,
    };
    let kernel = [0x7100, 0x1200, 0x1300];
    assert_eq!(spliced(&complete, &kernel, &modules()), complete.frames);
    assert_eq!(spliced(&cut(&[0x7100]), &[], &modules()), vec![0x7100]);
    assert_eq!(
        spliced(&cut(&[0x7100, 0x1100]), &[], &modules()),
        vec![0x7100, 0x1100]
    );
}

/// Kernel stacks from a table.
struct Table(HashMap<u32, Vec<u64>>);

impl KernelStacks for Table {
    fn stack(&self, id: u32) -> Option<Vec<u64>> {
        self.0.get(&id).cloned()
    }
}

fn event(tgid: u32, stack_id: Option<u32>, body: EventBody) -> Event {
    Event {
        header: crate::events::Header {
            tgid,
            tid: tgid,
            stack_id,
            timestamp_ns: 1,
            generation: 0,
        },
        body,
    }
}

fn fork_of(parent: u32, child: u32) -> Event {
    event(
        parent,
        None,
        EventBody::TaskCreated(TaskCreated {
            child_tid: child,
            syscall: Some(tracer_common::Syscall::Clone),
            clone_flags: Some(0),
        }),
    )
}

#[inline(never)]
fn marker_function() -> u64 {
    std::hint::black_box(7)
}

/// Real forked copies of this process, paused until killed.
struct Forked(Vec<u32>);

impl Forked {
    fn new(count: usize) -> Self {
        let pids = (0..count)
            .map(|_| {
                // SAFETY: the child only calls pause and _exit, both async-signal-safe.
                match unsafe { libc::fork() } {
                    0 => loop {
                        // SAFETY: as above.
                        unsafe { libc::pause() };
                    },
                    -1 => panic!("fork: {}", std::io::Error::last_os_error()),
                    pid => pid as u32,
                }
            })
            .collect();
        Self(pids)
    }
}

impl Drop for Forked {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: signalling and reaping our own children.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
                libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// A stack with an address no mapping holds makes the store list a process's mappings once
/// per image and stack, not once per forked child that runs the same code: children share
/// their parent's map (and its unwinder), however many run that stack.
#[test]
fn forked_children_do_not_reread_their_parents_mappings() {
    let me = std::process::id();
    let mut store = StackStore::new();
    store.capture(me);
    let stacks = Table(HashMap::from_iter([(
        5,
        vec![marker_function as fn() -> u64 as usize as u64, 0x10],
    )]));
    let mut mine = event(me, Some(5), EventBody::CwdChanged);
    store.annotate(&mut mine, None, &stacks);
    let children = Forked::new(3);
    for &child in &children.0 {
        store.annotate(&mut fork_of(me, child), None, &stacks);
        store.annotate(
            &mut event(child, Some(5), EventBody::CwdChanged),
            None,
            &stacks,
        );
    }
    let parent_map = store.modules[&(me, 0)].clone();
    for &child in &children.0 {
        assert!(Arc::ptr_eq(&store.modules[&(child, 0)], &parent_map));
    }
    assert_eq!(store.versions.len(), 1);
}

/// Reaped processes are forgotten: their exec generation at once, their maps once no stack
/// kept refers to them. A stack still referred to symbolizes after its process is gone, and
/// a map (with its unwinder) goes with the last process that used it.
#[test]
fn forgets_reaped_processes_but_not_the_maps_stacks_need() {
    let me = std::process::id();
    let mut store = StackStore::new();
    store.capture(me);
    // An address no mapping holds: the store re-reads the mappings once, and keeps what it
    // learned with the map, which the children share.
    let stacks = Table(HashMap::from_iter([(
        5,
        vec![marker_function as fn() -> u64 as usize as u64, 0x10],
    )]));
    let children = [4_000_001, 4_000_002, 4_000_003];
    let mut refs = Vec::new();
    for child in children {
        store.annotate(&mut fork_of(me, child), None, &stacks);
        let mut opened = event(child, Some(5), EventBody::CwdChanged);
        store.annotate(&mut opened, None, &stacks);
        refs.push(opened.header.stack().expect("a stack"));
    }
    assert_eq!(store.generations.len(), 3);

    store.forget(&children, |pid, _| pid == children[1]);
    assert!(store.generations.is_empty());
    let mut kept: Vec<(u32, u32)> = store.modules.keys().copied().collect();
    kept.sort();
    let mut expected = [(children[1], 0), (me, 0)];
    expected.sort();
    assert_eq!(kept, expected);
    let frames = store.frames(refs[1]);
    assert!(
        frames.iter().any(|f| f
            .symbol
            .as_deref()
            .is_some_and(|s| s.contains("marker_function"))),
        "{frames:?}"
    );

    // Once nothing refers to it, the kept map goes too; the parent's stays while it is known.
    store.forget(&[], |_, _| false);
    assert_eq!(store.modules.keys().copied().collect::<Vec<_>>(), [(me, 0)]);
    assert!(!store.has_pinned());
    assert_eq!(store.versions.len(), 1);
    store.forget(&[me], |_, _| false);
    assert!(store.modules.is_empty());
    assert!(store.versions.is_empty());
}
