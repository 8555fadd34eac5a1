//! The report's `bad_closes`: closes (and dup2/dup3) of descriptors that were not open, grouped
//! by the closing stack, each example with the number's previous lives (contract types and
//! how they are built from the aggregator's groups).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::{FrameEntry, OpenedBy, entry::opened_by, resolver::Resolver, seconds};
use crate::{
    aggregator::{Aggregator, BadClose, Life},
    model::{DescriptorKind, StackRef},
};

/// Failed closes from one stack (all processes).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct BadCloseGroupEntry {
    /// Null when the stack was not captured.
    pub stack_id: Option<u32>,
    pub count: u64,
    /// By call: {"close": 3, "dup2": 1}.
    pub syscalls: BTreeMap<&'static str, u64>,
    /// Of `count`, those whose number's last life was closed by another thread than its
    /// opener soon after its birth: the mark of a stale close of a reused number.
    pub suspected_stale: u64,
    pub pids: Vec<u32>,
    pub first_age_s: f64,
    pub last_age_s: f64,
    pub stack: Vec<FrameEntry>,
    /// The first few, in full.
    pub closes: Vec<BadCloseEntry>,
}

/// One failed close.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct BadCloseEntry {
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub syscall: &'static str,
    pub age_s: f64,
    pub suspected_stale: bool,
    /// What the number held before, newest first, as far as the history reaches.
    pub previous_lives: Vec<LifeEntry>,
}

/// A previous life of a descriptor number.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LifeEntry {
    pub kind: DescriptorKind,
    pub detail: String,
    pub opened_by: OpenedBy,
    /// The thread that created it (0 when unknown).
    pub opener_tid: u32,
    pub opened_age_s: f64,
    /// close, close_range, dup2 or dup3 (a copy onto its number).
    pub closed_by: &'static str,
    pub closer_tid: u32,
    pub closed_age_s: f64,
    pub lived_s: f64,
    pub stack_id: Option<u32>,
    pub stack: Vec<FrameEntry>,
}

/// The groups, largest first; each distinct stack symbolized once.
pub(super) fn bad_closes(
    agg: &Aggregator,
    now_ns: u64,
    resolver: &mut impl Resolver,
) -> Vec<BadCloseGroupEntry> {
    let mut frames = Frames {
        resolver,
        cache: HashMap::new(),
    };
    let mut by_stack: BTreeMap<Option<u32>, BadCloseGroupEntry> = BTreeMap::new();
    let mut pids: HashMap<Option<u32>, BTreeSet<u32>> = HashMap::new();
    let mut sorted: Vec<_> = agg.bad_closes().iter().collect();
    sorted.sort_by_key(|((pid, stack), g)| (g.first_ns, *pid, stack.map(|s| s.id)));
    for ((pid, stack), group) in sorted {
        let key = stack.map(|s| s.id);
        pids.entry(key).or_default().insert(*pid);
        let entry = by_stack.entry(key).or_insert_with(|| BadCloseGroupEntry {
            stack_id: key,
            count: 0,
            syscalls: BTreeMap::new(),
            suspected_stale: 0,
            pids: Vec::new(),
            first_age_s: seconds(now_ns.saturating_sub(group.first_ns)),
            last_age_s: f64::MAX,
            stack: frames.of(*stack),
            closes: Vec::new(),
        });
        entry.count += group.count;
        entry.suspected_stale += group.suspected_stale;
        for (syscall, n) in &group.by_syscall {
            *entry.syscalls.entry(syscall).or_insert(0) += n;
        }
        entry.last_age_s = entry
            .last_age_s
            .min(seconds(now_ns.saturating_sub(group.last_ns)));
        for example in &group.examples {
            entry.closes.push(close_entry(example, now_ns, &mut frames));
        }
    }
    let mut groups: Vec<BadCloseGroupEntry> = by_stack
        .into_values()
        .map(|mut g| {
            g.pids = pids
                .remove(&g.stack_id)
                .unwrap_or_default()
                .into_iter()
                .collect();
            g
        })
        .collect();
    groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.stack_id.cmp(&b.stack_id)));
    groups
}

/// Symbolizes each stack once.
struct Frames<'r, R> {
    resolver: &'r mut R,
    cache: HashMap<StackRef, Vec<FrameEntry>>,
}

impl<R: Resolver> Frames<'_, R> {
    fn of(&mut self, stack: Option<StackRef>) -> Vec<FrameEntry> {
        let Some(stack) = stack else {
            return Vec::new();
        };
        self.cache
            .entry(stack)
            .or_insert_with(|| {
                self.resolver
                    .frames(stack)
                    .into_iter()
                    .map(FrameEntry::from)
                    .collect()
            })
            .clone()
    }
}

fn close_entry<R: Resolver>(
    close: &BadClose,
    now_ns: u64,
    frames: &mut Frames<'_, R>,
) -> BadCloseEntry {
    BadCloseEntry {
        pid: close.pid,
        tid: close.tid,
        fd: close.fd,
        syscall: close.syscall.name(),
        age_s: seconds(now_ns.saturating_sub(close.at_ns)),
        suspected_stale: close.suspected_stale,
        previous_lives: close
            .lives
            .iter()
            .map(|life| life_entry(life, now_ns, frames))
            .collect(),
    }
}

fn life_entry<R: Resolver>(life: &Life, now_ns: u64, frames: &mut Frames<'_, R>) -> LifeEntry {
    let d = &life.descriptor;
    LifeEntry {
        kind: d.kind,
        detail: d.detail.clone(),
        opened_by: opened_by(d.origin, d.inherited),
        opener_tid: d.tid,
        opened_age_s: seconds(now_ns.saturating_sub(d.opened_at_ns)),
        closed_by: life.closed_by.name(),
        closer_tid: life.closer_tid,
        closed_age_s: seconds(now_ns.saturating_sub(life.closed_at_ns)),
        lived_s: seconds(life.closed_at_ns.saturating_sub(d.opened_at_ns)),
        stack_id: d.stack.map(|s| s.id),
        stack: frames.of(d.stack),
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::Syscall;

    use super::*;
    use crate::{
        aggregator::tests::header,
        events::{CloseFailed, Event, EventBody, FdClosed, FileOpened},
        model::Frame,
        report::{SessionFacts, build, text},
    };

    /// Names every stack `fn_ID`.
    struct Named;

    impl Resolver for Named {
        fn frames(&mut self, stack: StackRef) -> Vec<Frame> {
            vec![Frame {
                symbol: Some(format!("fn_{}", stack.id)),
                module: Some("/srv/app".into()),
                ..Frame::unknown(0x1000 + u64::from(stack.id))
            }]
        }
        fn refresh(
            &mut self,
            _pid: u32,
            _descriptors: &mut [super::super::DescriptorEntry],
        ) -> Vec<i32> {
            Vec::new()
        }
        fn is_zombie(&mut self, _pid: u32, _ppid: u32) -> bool {
            false
        }
    }

    /// Two failed closes of one number from one stack, in two processes' worth of one
    /// group: counted together, each kept with the opening stack of the number's last life;
    /// the text has the section, the closing function and the opening one.
    #[test]
    fn groups_by_closing_stack() {
        let mut agg = Aggregator::new();
        let ms = 1_000_000;
        for pid in [10, 20] {
            agg.apply(&mut Event {
                header: header(pid, pid, ms, Some(1)),
                body: EventBody::FileOpened(FileOpened {
                    fd: 3,
                    syscall: Syscall::Openat,
                    dirfd: -100,
                    flags: 0,
                    path: Some(b"/etc/app.conf".to_vec()),
                    path_truncated: false,
                }),
            });
            agg.apply(&mut Event {
                header: header(pid, pid, 2 * ms, None),
                body: EventBody::FdClosed(FdClosed { fd: 3 }),
            });
            agg.apply(&mut Event {
                header: header(pid, pid, 3 * ms, Some(2)),
                body: EventBody::CloseFailed(CloseFailed {
                    fd: 3,
                    syscall: Syscall::Close,
                    target: None,
                }),
            });
        }
        let facts = SessionFacts {
            now_ns: 1_000 * ms,
            ..SessionFacts::default()
        };
        let report = build(&agg, &facts, &mut Named);
        assert_eq!(report.bad_closes.len(), 1);
        let group = &report.bad_closes[0];
        assert_eq!((group.stack_id, group.count), (Some(2), 2));
        assert_eq!(group.pids, vec![10, 20]);
        assert_eq!(group.closes.len(), 2);
        let life = &group.closes[0].previous_lives[0];
        assert_eq!(
            (life.detail.as_str(), life.stack_id),
            ("/etc/app.conf", Some(1))
        );
        assert_eq!((life.lived_s, life.closed_by), (0.001, "close"));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["bad_closes"][0]["syscalls"]["close"], 2);
        let text = text::render_top(&report, 10);
        assert!(
            text.contains("Closes of descriptors that were not open (EBADF): 2"),
            "{text}"
        );
        assert!(
            text.contains("2 failed closes (close ×2) in `fn_2`"),
            "{text}"
        );
        assert!(text.contains("in `fn_1`"), "{text}");
    }
}
