//! The text report's section on what processes held when they exited: after the live groups,
//! in aggregate (how many processes, how many each, whether that grew), never "still open".

use std::fmt::Write as _;

use super::{
    age, count, kind_count, pid_list,
    stack::{call_site, stack_lines},
};
use crate::report::{AtExitStackGroup, Report};

/// One paragraph per group, the `top` largest, after a line with the totals.
pub(super) fn at_exit_section(report: &Report, top: usize, out: &mut String) {
    let groups = &report.at_exit_stacks;
    if groups.is_empty() {
        return;
    }
    let descriptors: u64 = groups.iter().map(|g| g.descriptors).sum();
    let exits = report.process_counts.exited;
    let _ = writeln!(
        out,
        "\nHeld at exit: {} from {} ({} exited while traced); the kernel closed them as each process exited, which is normal for short-lived workers and a leak only where the count per process grows",
        count(descriptors, "descriptor", "descriptors"),
        count(groups.len() as u64, "stack", "stacks"),
        count(exits, "process", "processes"),
    );
    for (rank, group) in groups.iter().take(top).enumerate() {
        let _ = writeln!(out, "\n#E{}  {}", rank + 1, headline(group));
        if group.stack_id.is_none() {
            let _ = writeln!(out, "      (no stack: not captured, or learned from /proc)");
        }
        stack_lines(&group.stack, out);
    }
    if groups.len() > top {
        let _ = writeln!(
            out,
            "\n... {} held at exit (--top N shows more, --json all)",
            count((groups.len() - top) as u64, "more group", "more groups")
        );
    }
}

/// "4 files opened in `f` ← `g`, held at exit by 2417 processes (worker: 18807, 18808,
/// ...), 2 each (1 to 2), steady, last exit 0.3s ago, 812.4 exits/min".
fn headline(g: &AtExitStackGroup) -> String {
    let kinds: Vec<String> = g.kinds.iter().map(|(k, n)| kind_count(*k, *n)).collect();
    let site = call_site(&g.stack, " opened in ");
    let p = &g.per_process;
    let each = if p.min == p.max {
        format!("{} each", p.median)
    } else {
        format!("typically {} each ({} to {})", p.median, p.min, p.max)
    };
    let trend = if g.grew {
        format!(
            "GROWING: the first exits held {} each, the latest {}",
            p.first_mean, p.recent_mean
        )
    } else {
        "not growing".to_string()
    };
    let unverified = if g.verified {
        ""
    } else {
        " (after lost events: some may have been closed)"
    };
    format!(
        "{}{site}, held at exit by {} ({}){unverified}, {each}, {trend}, last exit {} ago, {}/min exiting",
        kinds.join(" + "),
        count(g.processes, "process", "processes"),
        pid_list(&g.comm, &g.pids, g.processes),
        age(g.last_exit_age_s),
        g.exits_per_minute
    )
}
