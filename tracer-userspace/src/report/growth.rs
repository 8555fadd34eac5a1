//! What grew between two snapshots: descriptors held by live processes, counted per creating
//! stack and per process from the tables ([`Counts`]), compared ([`growth`]), and the
//! snapshot's JSON keys ([`SnapshotInfo`]) and text section ([`growth_section`]).

use std::{collections::HashMap, fmt::Write as _};

use serde::Serialize;

use super::{Report, text::application_frames};
use crate::{aggregator::Aggregator, model::StackRef};

/// Groups and processes named in the text section; the JSON lists every one that grew.
const SHOWN: usize = 10;

/// Descriptors live processes hold, per creating stack (None: no stack) and per process.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Counts {
    pub stacks: HashMap<Option<u32>, u64>,
    pub processes: HashMap<u32, (String, u64)>,
    /// A stack of each group, to symbolize it (the first descriptor met).
    pub refs: HashMap<u32, StackRef>,
}

impl Counts {
    /// The tables as they stand: O(descriptors held).
    pub(crate) fn of(agg: &Aggregator) -> Self {
        let mut counts = Self::default();
        for process in agg.live_processes() {
            counts.processes.insert(
                process.pid,
                (process.comm.clone(), process.fds.len() as u64),
            );
            for d in process.fds.values() {
                *counts.stacks.entry(d.stack.map(|s| s.id)).or_insert(0) += 1;
                if let Some(stack) = d.stack {
                    counts.refs.entry(stack.id).or_insert(stack);
                }
            }
        }
        counts
    }
}

/// The keys a snapshot adds to the report (absent from the final report).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct SnapshotInfo {
    /// 1 for the first snapshot of the session.
    pub sequence: u64,
    /// `SIGUSR1`, `interval`, or the trigger that fired (`nofile`, `file-max`, `growth`).
    pub reason: String,
    /// What crossed its threshold, in words (triggers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// Seconds since the Unix epoch.
    pub taken_at: f64,
    pub growth: Growth,
}

/// What grew since the previous snapshot (or since attach, for the first).
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Growth {
    /// `previous snapshot` or `attach`.
    pub since: String,
    pub since_s: f64,
    /// Groups that hold more than they did, most grown first.
    pub stacks: Vec<StackGrowth>,
    /// Processes that hold more than they did (or are new and hold any), most grown first.
    pub processes: Vec<ProcessGrowth>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct StackGrowth {
    pub stack_id: Option<u32>,
    pub then: u64,
    pub now: u64,
    /// The first two application frames, as in the text report's headline ("`f` ← `g`").
    pub call_site: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct ProcessGrowth {
    pub pid: u32,
    pub comm: String,
    pub then: u64,
    pub now: u64,
}

/// What grew from `then` to `now`; call sites come from the report's groups.
pub(crate) fn growth(then: &Counts, now: &Counts, report: &Report) -> Vec<StackGrowth> {
    let mut stacks: Vec<StackGrowth> = now
        .stacks
        .iter()
        .filter_map(|(&id, &count)| {
            let before = then.stacks.get(&id).copied().unwrap_or(0);
            (count > before).then(|| StackGrowth {
                stack_id: id,
                then: before,
                now: count,
                call_site: call_site(report, id),
            })
        })
        .collect();
    stacks.sort_by_key(|g| (std::cmp::Reverse(g.now - g.then), g.stack_id));
    stacks
}

/// Processes that hold more than they did.
pub(crate) fn process_growth(then: &Counts, now: &Counts) -> Vec<ProcessGrowth> {
    let mut processes: Vec<ProcessGrowth> = now
        .processes
        .iter()
        .filter_map(|(&pid, (comm, count))| {
            let before = then.processes.get(&pid).map_or(0, |(_, n)| *n);
            (*count > before).then(|| ProcessGrowth {
                pid,
                comm: comm.clone(),
                then: before,
                now: *count,
            })
        })
        .collect();
    processes.sort_by_key(|p| (std::cmp::Reverse(p.now - p.then), p.pid));
    processes
}

fn call_site(report: &Report, id: Option<u32>) -> String {
    let Some(id) = id else {
        return "(no stack)".to_string();
    };
    report
        .stacks
        .iter()
        .find(|g| g.stack_id == Some(id))
        .map(|g| application_frames(&g.stack).join(" ← "))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("stack {id}"))
}

/// The snapshot's text header and growth section, printed before the report.
pub(crate) fn growth_section(info: &SnapshotInfo) -> String {
    let mut out = String::new();
    let trigger = info
        .trigger
        .as_deref()
        .map(|t| format!(": {t}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "tracer: snapshot {} ({}{trigger})",
        info.sequence, info.reason
    );
    let g = &info.growth;
    if g.stacks.is_empty() && g.processes.is_empty() {
        let _ = writeln!(
            out,
            "Grew since {} ({:.1}s ago): nothing",
            g.since, g.since_s
        );
        return out;
    }
    let _ = writeln!(out, "Grew since {} ({:.1}s ago):", g.since, g.since_s);
    for s in g.stacks.iter().take(SHOWN) {
        let id = s.stack_id.map_or("-".to_string(), |id| id.to_string());
        let _ = writeln!(
            out,
            "  stack {id:>6}  {:>6} -> {:<6} (+{})  {}",
            s.then,
            s.now,
            s.now - s.then,
            s.call_site
        );
    }
    if g.stacks.len() > SHOWN {
        let _ = writeln!(out, "  ... {} more groups grew", g.stacks.len() - SHOWN);
    }
    for p in g.processes.iter().take(SHOWN) {
        let _ = writeln!(
            out,
            "  pid {:>8}  {:>6} -> {:<6} (+{})  {}",
            p.pid,
            p.then,
            p.now,
            p.now - p.then,
            p.comm
        );
    }
    if g.processes.len() > SHOWN {
        let _ = writeln!(
            out,
            "  ... {} more processes grew",
            g.processes.len() - SHOWN
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(stacks: &[(Option<u32>, u64)], processes: &[(u32, u64)]) -> Counts {
        Counts {
            stacks: stacks.iter().copied().collect(),
            processes: processes
                .iter()
                .map(|&(pid, n)| (pid, ("srv".to_string(), n)))
                .collect(),
            refs: HashMap::new(),
        }
    }

    /// Only what holds more than before is listed, most grown first; new ones start at 0.
    #[test]
    fn lists_what_grew() {
        let then = counts(
            &[(Some(1), 5), (Some(2), 3), (None, 4)],
            &[(10, 12), (11, 2)],
        );
        let now = counts(
            &[(Some(1), 9), (Some(2), 3), (Some(3), 1), (None, 2)],
            &[(10, 17), (12, 1)],
        );
        let report = crate::report::tests::sample_report();
        let grown: Vec<_> = growth(&then, &now, &report)
            .into_iter()
            .map(|g| (g.stack_id, g.then, g.now))
            .collect();
        assert_eq!(grown, vec![(Some(1), 5, 9), (Some(3), 0, 1)]);
        let procs: Vec<_> = process_growth(&then, &now)
            .into_iter()
            .map(|p| (p.pid, p.then, p.now))
            .collect();
        assert_eq!(procs, vec![(10, 12, 17), (12, 0, 1)]);
    }

    /// The text section names each group with then -> now and says when nothing grew.
    #[test]
    fn text_section() {
        let mut info = SnapshotInfo {
            sequence: 2,
            reason: "interval".into(),
            trigger: None,
            taken_at: 0.0,
            growth: Growth {
                since: "previous snapshot".into(),
                since_s: 2.0,
                stacks: vec![StackGrowth {
                    stack_id: Some(7),
                    then: 3,
                    now: 8,
                    call_site: "`leak` ← `main`".into(),
                }],
                processes: vec![],
            },
        };
        let text = growth_section(&info);
        assert!(text.contains("snapshot 2 (interval)"), "{text}");
        assert!(text.contains("3 -> 8      (+5)  `leak` ← `main`"), "{text}");
        info.growth.stacks.clear();
        assert!(growth_section(&info).contains("nothing"));
    }
}
