//! The report built from a fixed aggregator and resolver: groups, ranks, reconciliation, the
//! JSON shape, and the contract's `opened_by` / `learned_by` values.

use std::collections::BTreeMap;

use tracer_common::Syscall;

use super::*;
use crate::{
    aggregator::{Aggregator, Descriptor, Origin, ProcessSnapshot, SnapshotFd},
    events::{Event, EventBody, FdCreated, FileOpened, Header, TaskCreated, TaskExited},
    model::{DescriptorKind, Frame, StackRef},
};

struct FakeResolver {
    closed: Vec<i32>,
}

impl Resolver for FakeResolver {
    fn frames(&mut self, stack: StackRef) -> Vec<Frame> {
        vec![Frame {
            symbol: Some(format!("fn_{}", stack.id)),
            ..Frame::unknown(0x1000 + u64::from(stack.id))
        }]
    }
    fn refresh(&mut self, _pid: u32, descriptors: &mut [DescriptorEntry]) -> Vec<i32> {
        for d in descriptors.iter_mut() {
            if d.kind == DescriptorKind::Socket {
                d.tcp_state = Some("ESTABLISHED".into());
            }
        }
        self.closed.clone()
    }
    fn is_zombie(&mut self, pid: u32, _ppid: u32) -> bool {
        pid >= 500
    }
}

fn header() -> Header {
    Header {
        tgid: 1,
        tid: 1,
        stack_id: None,
        timestamp_ns: 0,
        generation: 0,
    }
}

fn accept(fd: i32, stack: u32, t: u64) -> Event {
    Event {
        header: Header {
            stack_id: Some(stack),
            timestamp_ns: t,
            ..header()
        },
        body: EventBody::FdCreated(FdCreated {
            fd,
            syscall: Syscall::Accept4,
            arg0: 3,
            arg1: 0,
            arg2: 0,
        }),
    }
}

/// A report with two stack groups and a pre-existing descriptor, for other modules' tests.
pub(crate) fn sample_report() -> Report {
    build(
        &aggregator(),
        &facts(),
        &mut FakeResolver { closed: vec![] },
    )
}

fn aggregator() -> Aggregator {
    let mut agg = Aggregator::new();
    agg.add_snapshot(
        ProcessSnapshot {
            pid: 1,
            ppid: 0,
            comm: "server".into(),
            threads: 1,
            fds: vec![SnapshotFd {
                fd: 3,
                kind: DescriptorKind::Socket,
                detail: "tcp 127.0.0.1:80".into(),
                deleted: false,
                tcp_state: Some("LISTEN".into()),
                cloexec: false,
            }],
            zombie: false,
            cwd: None,
            start_time: None,
        },
        0,
    );
    for fd in 4..9 {
        agg.apply(&mut accept(fd, 7, 1_000_000_000));
    }
    agg.apply(&mut Event {
        header: Header {
            tid: 2,
            stack_id: Some(8),
            timestamp_ns: 2_000_000_000,
            ..header()
        },
        body: EventBody::FileOpened(FileOpened {
            fd: 9,
            syscall: Syscall::Openat,
            dirfd: -100,
            flags: 0,
            path: Some(b"/var/log/x".to_vec()),
            path_truncated: false,
        }),
    });
    agg
}

fn facts() -> SessionFacts {
    SessionFacts {
        target: 1,
        now_ns: 5_000_000_000,
        ..SessionFacts::default()
    }
}

/// Groups are ranked by count, carry their frames, kinds, ages and growth; TCP states are
/// counted.
#[test]
fn groups_by_stack() {
    let report = build(
        &aggregator(),
        &facts(),
        &mut FakeResolver { closed: vec![] },
    );
    assert_eq!(report.open_descriptors.len(), 7);
    let top = &report.stacks[0];
    assert_eq!((top.stack_id, top.open_count), (Some(7), 5));
    assert_eq!((top.oldest_age_s, top.newest_age_s), (4.0, 4.0));
    // Five opened four seconds ago, each weighing e^(-4 s / 1 min): 4.7/min lately.
    assert_eq!(top.per_minute, 4.7);
    assert_eq!(top.kinds[&DescriptorKind::Socket], 5);
    assert_eq!(top.opened_by[&OpenedBy::Syscall(Syscall::Accept4)], 5);
    assert_eq!(top.stack[0].symbol.as_deref(), Some("fn_7"));
    assert_eq!(report.tcp["ESTABLISHED"], 6);
    let listener = report.open_descriptors.iter().find(|d| d.fd == 3).unwrap();
    assert_eq!(
        (listener.opened_by, listener.stack_id),
        (OpenedBy::PreExisting, None)
    );
    // Nothing grew in the group of descriptors open before attach.
    let before = report.stacks.iter().find(|g| g.stack_id.is_none()).unwrap();
    assert_eq!(before.per_minute, 0.0);
}

/// Groups of descriptors open before attach rank after those created while traced.
#[test]
fn pre_existing_ranks_last() {
    let mut agg = aggregator();
    agg.add_snapshot(
        ProcessSnapshot {
            pid: 1,
            ppid: 0,
            comm: "server".into(),
            threads: 1,
            fds: (20..40)
                .map(|fd| SnapshotFd {
                    fd,
                    kind: DescriptorKind::File,
                    detail: "/var/log/old".into(),
                    deleted: false,
                    tcp_state: None,
                    cloexec: false,
                })
                .collect(),
            zombie: false,
            cwd: None,
            start_time: None,
        },
        0,
    );
    let report = build(&agg, &facts(), &mut FakeResolver { closed: vec![] });
    assert_eq!(report.stacks[0].stack_id, Some(7));
    assert_eq!(report.stacks.last().unwrap().stack_id, None);
    assert_eq!(report.stacks.last().unwrap().open_count, 21);
}

fn task(parent: u32, child: u32, flags: u64, stack: u32, t: u64) -> Event {
    Event {
        header: Header {
            tgid: parent,
            stack_id: Some(stack),
            timestamp_ns: t,
            ..header()
        },
        body: EventBody::TaskCreated(TaskCreated {
            child_tid: child,
            syscall: Some(Syscall::Clone),
            clone_flags: Some(flags),
        }),
    }
}

/// Children that exited and are still zombies are grouped by parent and fork stack, with
/// how long the oldest has been dead; a reaped child is not a zombie.
#[test]
fn groups_zombies() {
    let mut agg = aggregator();
    for child in [500, 501, 502, 10] {
        agg.apply(&mut task(1, child, 17, 9, 1_000_000_000));
        agg.apply(&mut Event {
            header: Header {
                tgid: child,
                tid: child,
                timestamp_ns: 2_000_000_000,
                ..header()
            },
            body: EventBody::TaskExited(TaskExited {
                group_dead: Some(true),
            }),
        });
    }
    let report = build(&agg, &facts(), &mut FakeResolver { closed: vec![] });
    assert_eq!(report.zombies.len(), 1);
    let group = &report.zombies[0];
    assert_eq!((group.ppid, group.count, group.oldest_s), (1, 3, 3.0));
    assert_eq!(group.parent_comm, "server");
    assert_eq!(group.fork_stack[0].symbol.as_deref(), Some("fn_9"));
    let reaped = report.processes.iter().find(|p| p.pid == 10).unwrap();
    assert!(reaped.exited && !reaped.zombie);
}

/// Live threads started while traced are grouped by creation stack with their growth;
/// threads that exited are not counted.
#[test]
fn groups_live_threads() {
    let mut agg = aggregator();
    for (tid, t) in [
        (2, 1_000_000_000),
        (3, 2_000_000_000),
        (4, 3_000_000_000),
        (5, 3_000_000_000),
    ] {
        agg.apply(&mut task(1, tid, tracer_common::CLONE_THREAD, 11, t));
    }
    agg.apply(&mut Event {
        header: Header {
            tid: 5,
            timestamp_ns: 4_000_000_000,
            ..header()
        },
        body: EventBody::TaskExited(TaskExited {
            group_dead: Some(false),
        }),
    });
    let report = build(&agg, &facts(), &mut FakeResolver { closed: vec![] });
    let group = &report.thread_stacks[0];
    assert_eq!((group.pid, group.live, group.stack_id), (1, 3, Some(11)));
    assert_eq!((group.oldest_age_s, group.newest_age_s), (4.0, 2.0));
    // Started 4, 3 and 2 s ago: e^(-4/60) + e^(-3/60) + e^(-2/60) per minute.
    assert_eq!(group.per_minute, 2.9);
}

/// Descriptors /proc shows closed are dropped and counted as reconciled.
#[test]
fn reconciles_closed_descriptors() {
    let report = build(
        &aggregator(),
        &facts(),
        &mut FakeResolver { closed: vec![4, 5] },
    );
    assert_eq!(report.open_descriptors.len(), 5);
    assert_eq!(report.events.reconciled_closed, 2);
}

/// --min-age leaves out younger descriptors.
#[test]
fn min_age_filters() {
    let facts = SessionFacts {
        min_age_s: 3.5,
        ..facts()
    };
    let report = build(&aggregator(), &facts, &mut FakeResolver { closed: vec![] });
    assert!(report.open_descriptors.iter().all(|d| d.age_s >= 3.5));
    assert_eq!(report.open_descriptors.len(), 6);
}

/// The JSON has the contract's required keys and hex addresses.
#[test]
fn json_shape() {
    let report = build(
        &aggregator(),
        &facts(),
        &mut FakeResolver { closed: vec![] },
    );
    let json = serde_json::to_value(&report).unwrap();
    for key in [
        "version",
        "target",
        "duration_s",
        "events",
        "processes",
        "open_descriptors",
        "stacks",
        "tcp",
    ] {
        assert!(json.get(key).is_some(), "missing {key}");
    }
    let d = &json["open_descriptors"][1];
    for key in [
        "pid",
        "fd",
        "kind",
        "detail",
        "tcp_state",
        "deleted",
        "opened_by",
        "tid",
        "age_s",
        "at_exit",
        "stack_id",
        "stack",
    ] {
        assert!(d.get(key).is_some(), "descriptor missing {key}");
    }
    assert_eq!(d["kind"], "socket");
    assert_eq!(d["stack"][0]["addr"], "0x1007");
    assert_eq!(json["events"]["lost"], 0);
}

fn descriptor(origin: Origin, inherited: bool) -> Descriptor {
    Descriptor {
        fd: 3,
        kind: DescriptorKind::Socket,
        detail: String::new(),
        origin,
        inherited,
        tid: 1,
        opened_at_ns: 0,
        stack: None,
        path_truncated: false,
        deleted: false,
        tcp_state: None,
        cloexec: false,
    }
}

/// The JSON's `opened_by` and `learned_by` for every origin, inherited or not: a descriptor
/// open before attach stays `pre-existing` when inherited, any other becomes `inherited`. They
/// are what the aggregator's own spelling says, for every syscall.
#[test]
fn opened_by_json_values() {
    let accept4 = Origin::Syscall(Syscall::Accept4);
    for (origin, inherited, opened_by, learned_by) in [
        (accept4, false, "accept4", "event"),
        (accept4, true, "inherited", "event"),
        (Origin::PreExisting, false, "pre-existing", "attach"),
        (Origin::PreExisting, true, "pre-existing", "attach"),
        (Origin::Reconciled, false, "unknown", "reconciliation"),
        (Origin::Reconciled, true, "inherited", "reconciliation"),
    ] {
        let d = descriptor(origin, inherited);
        let json = serde_json::to_value(entry::entry(1, &d, 0, false)).unwrap();
        let case = format!("{origin:?} inherited={inherited}");
        assert_eq!(json["opened_by"], opened_by, "{case}");
        assert_eq!(json["learned_by"], learned_by, "{case}");
        assert_eq!(d.opened_by(), opened_by, "{case}");
        assert_eq!(d.learned_by(), learned_by, "{case}");
    }
    let syscalls: Vec<Syscall> = (0..=u8::MAX)
        .filter_map(|raw| Syscall::try_from(u32::from(raw)).ok())
        .collect();
    assert!(syscalls.len() > 40, "{syscalls:?}");
    for syscall in syscalls {
        let d = descriptor(Origin::Syscall(syscall), false);
        let json = serde_json::to_value(entry::entry(1, &d, 0, false)).unwrap();
        assert_eq!(json["opened_by"], syscall.name());
        assert_eq!(json["opened_by"], d.opened_by());
    }
}

/// A group's `opened_by` keys come out in the order of their names, as they did when they
/// were strings.
#[test]
fn group_opened_by_keys_in_name_order() {
    let group = StackGroup {
        stack_id: None,
        open_count: 4,
        oldest_age_s: 0.0,
        newest_age_s: 0.0,
        per_minute: 0.0,
        kinds: BTreeMap::new(),
        opened_by: [
            (OpenedBy::PreExisting, 1),
            (OpenedBy::Unknown, 1),
            (OpenedBy::Inherited, 1),
            (OpenedBy::Syscall(Syscall::Socket), 1),
            (OpenedBy::Syscall(Syscall::Accept4), 1),
        ]
        .into_iter()
        .collect(),
        pids: vec![],
        stack: vec![],
    };
    let json = serde_json::to_string(&group).unwrap();
    assert!(
        json.contains(
            r#""opened_by":{"accept4":1,"inherited":1,"pre-existing":1,"socket":1,"unknown":1}"#
        ),
        "{json}"
    );
}

/// 300 short-lived children that each exit holding two descriptors, next to a live leak of
/// five: the live group is `stacks` (and #1 in the text), the exits are one `at_exit_stacks`
/// group of 300 processes and 600 descriptors, `open_descriptors` lists none of them unless
/// asked, and the text names at most three of the pids.
#[test]
fn held_at_exit_is_aggregated_apart_from_live() {
    let children = 100..400u32;
    for keep in [false, true] {
        let mut agg = if keep {
            Aggregator::keeping_at_exit_descriptors()
        } else {
            Aggregator::new()
        };
        for fd in 4..9 {
            agg.apply(&mut accept(fd, 7, 1_000_000_000));
        }
        for child in children.clone() {
            agg.apply(&mut task(1, child, 0, 3, 2_000_000_000));
            for fd in [10, 11] {
                let mut opened = accept(fd, 9, 2_000_000_000);
                opened.header.tgid = child;
                opened.header.tid = child;
                agg.apply(&mut opened);
            }
            agg.apply(&mut Event {
                header: Header {
                    tgid: child,
                    tid: child,
                    timestamp_ns: 3_000_000_000,
                    ..header()
                },
                body: EventBody::TaskExited(TaskExited {
                    group_dead: Some(true),
                }),
            });
        }
        let report = build(&agg, &facts(), &mut FakeResolver { closed: vec![] });
        assert_eq!(report.stacks.len(), 1, "keep {keep}");
        assert_eq!(
            (report.stacks[0].stack_id, report.stacks[0].open_count),
            (Some(7), 5)
        );
        let group = &report.at_exit_stacks[0];
        assert_eq!(report.at_exit_stacks.len(), 1);
        assert_eq!(
            (group.stack_id, group.processes, group.descriptors),
            (Some(9), 300, 600)
        );
        assert_eq!((group.per_process.median, group.grew), (2, false));
        assert!(group.pids.len() <= 6, "{:?}", group.pids);
        assert_eq!(group.examples.len(), 5);
        assert!(group.examples.iter().all(|d| d.at_exit && d.age_s == 1.0));
        let at_exit = report.open_descriptors.iter().filter(|d| d.at_exit).count();
        assert_eq!(at_exit, if keep { 600 } else { 0 });
        assert_eq!(report.process_counts.exited, 300);

        let text = text::render_top(&report, 10);
        let live_at = text.find("\n#1  5 sockets").expect(&text);
        let exits_at = text.find("\n#E1  600 sockets").expect(&text);
        assert!(live_at < exits_at, "{text}");
        let line = text[exits_at..].lines().nth(1).unwrap();
        assert!(
            line.contains("held at exit by 300 processes (100, 101, 102, ...)"),
            "{line}"
        );
        assert!(!text.contains("still open in 300"), "{text}");
    }
}

/// Open+close pairs the kernel settled without sending them are counted apart from the events
/// received: in the JSON, and on a line of their own under the text's first.
#[test]
fn pairs_settled_in_the_kernel_are_counted_apart() {
    let settled = SessionFacts {
        received: 4_591,
        paired_in_kernel: 413_056,
        ..facts()
    };
    let report = build(
        &aggregator(),
        &settled,
        &mut FakeResolver { closed: vec![] },
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["events"]["received"], 4_591);
    assert_eq!(json["events"]["paired_in_kernel"], 413_056);
    let text = text::render_top(&report, 10);
    let mut lines = text.lines();
    assert!(
        lines.next().unwrap().ends_with(": 4591 events, 0 lost"),
        "{text}"
    );
    assert_eq!(
        lines.next().unwrap(),
        "        and 413056 files opened and closed again at once by the same thread (counted in \
         the kernel, not sent)"
    );

    let quiet = build(
        &aggregator(),
        &facts(),
        &mut FakeResolver { closed: vec![] },
    );
    assert!(!text::render_top(&quiet, 10).contains("at once"));
}
