//! The report for people: the biggest groups first, each headed by one sentence that names
//! the guilty code, then its stack and a few of its descriptors.

mod at_exit;
mod bad_closes;
mod stack;
mod summary;

use std::fmt::Write as _;

use at_exit::at_exit_section;
pub(crate) use stack::application_frames;
use stack::{call_site, stack_lines};
use summary::summary;
use tracer_common::Syscall;

use super::{DescriptorEntry, OpenedBy, Report, StackGroup};
use crate::model::DescriptorKind;

/// Groups shown in full by default (`--top`); the rest are summarised in one line.
pub(crate) const GROUPS_SHOWN: usize = 10;
/// Descriptors listed under each group.
const DESCRIPTORS_SHOWN: usize = 5;
/// Pids named in a headline; the rest are counted.
const PIDS_SHOWN: usize = 3;

/// The report with the `top` largest descriptor groups in full (`--top N`).
pub(crate) fn render_top(report: &Report, top: usize) -> String {
    let mut out = String::new();
    if let Some(host) = &report.host
        && report.targets.is_empty()
    {
        // `--all` that followed nothing: the host is the whole report.
        let _ = writeln!(
            out,
            "tracer --all: watched the host for {:.1} s",
            report.duration_s
        );
        crate::report::host::render(host, top, &mut out);
        return out;
    }
    summary(report, &mut out);
    if let Some(host) = &report.host {
        crate::report::host::render(host, top, &mut out);
    }
    let live: Vec<&DescriptorEntry> = report
        .open_descriptors
        .iter()
        .filter(|d| !d.at_exit)
        .collect();
    if live.is_empty() {
        let _ = writeln!(out, "\nNo descriptors open in the followed processes.");
    }
    for (rank, group) in report.stacks.iter().take(top).enumerate() {
        let members: Vec<&DescriptorEntry> = live
            .iter()
            .copied()
            .filter(|d| d.stack_id == group.stack_id)
            .collect();
        render_group(rank + 1, group, &members, report, &mut out);
    }
    if report.stacks.len() > top {
        let rest: u64 = report.stacks[top..].iter().map(|g| g.open_count).sum();
        let more = count(
            (report.stacks.len() - top) as u64,
            "more group",
            "more groups",
        );
        let _ = writeln!(
            out,
            "\n... {more} with {rest} descriptors (--top N shows more, --json all)"
        );
    }
    at_exit_section(report, top, &mut out);
    zombies(report, &mut out);
    time_wait(report, &mut out);
    threads(report, &mut out);
    bad_closes::bad_closes(report, &mut out);
    processes(report, &mut out);
    out
}

/// Children that exited and were never waited for: one paragraph per parent and fork site.
fn zombies(report: &Report, out: &mut String) {
    for group in report.zombies.iter().take(GROUPS_SHOWN) {
        let site = call_site(&group.fork_stack, ", forked in ");
        let _ = writeln!(
            out,
            "\n{} of pid {} ({}) exited and {} never reaped (zombies){site}, dead for up to {}",
            count(group.count, "child", "children"),
            group.ppid,
            group.parent_comm,
            if group.count == 1 { "was" } else { "were" },
            age(group.oldest_s)
        );
        stack_lines(&group.fork_stack, out);
        let pids: Vec<String> = group.pids.iter().take(20).map(u32::to_string).collect();
        let more = if group.pids.len() > 20 { " ..." } else { "" };
        let _ = writeln!(out, "    pids {}{more}", pids.join(" "));
    }
}

/// Connections closed first by the followed processes, now in TIME_WAIT: what exhausts
/// ephemeral ports.
fn time_wait(report: &Report, out: &mut String) {
    for group in report.time_wait.iter().take(GROUPS_SHOWN) {
        let comm = comm_of(report, group.pid);
        let _ = writeln!(
            out,
            "\n{} from pid {} ({comm}) {} -> {} closed first and went to TIME_WAIT, {}/min, newest {} ago",
            count(group.count, "connection", "connections"),
            group.pid,
            group.local,
            group.remote,
            group.per_minute,
            age(group.newest_age_s)
        );
    }
}

/// Threads started while traced that still run, by creation stack: what piles up.
fn threads(report: &Report, out: &mut String) {
    for group in report.thread_stacks.iter().take(GROUPS_SHOWN) {
        let comm = comm_of(report, group.pid);
        let site = call_site(&group.stack, " started in ");
        let _ = writeln!(
            out,
            "\n{}{site} still running in pid {} ({comm}), oldest {}, {}/min",
            count(group.live, "thread", "threads"),
            group.pid,
            age(group.oldest_age_s),
            group.per_minute
        );
        stack_lines(&group.stack, out);
    }
}

fn render_group(
    rank: usize,
    group: &StackGroup,
    members: &[&DescriptorEntry],
    report: &Report,
    out: &mut String,
) {
    let _ = writeln!(out, "\n#{rank}  {}", headline(group, members, report));
    if group.stack_id.is_none() {
        let _ = writeln!(
            out,
            "      (no stack: opened before tracer attached, or not captured)"
        );
    }
    stack_lines(&group.stack, out);
    for d in members.iter().take(DESCRIPTORS_SHOWN) {
        let mut line = format!(
            "    pid {} fd {:<4} {:<7} {}",
            d.pid,
            d.fd,
            d.kind.as_str(),
            d.detail
        );
        if let Some(state) = &d.tcp_state {
            let _ = write!(line, "  {state}");
            if let Some(age_s) = d.tcp_state_age_s {
                let _ = write!(line, " for {}", age(age_s));
            }
        }
        if d.deleted {
            line.push_str("  (deleted)");
        }
        if d.path_truncated {
            line.push_str("  (path truncated)");
        }
        let _ = write!(line, "  age {}", age(d.age_s));
        if d.at_exit {
            line.push_str("  held at exit");
        }
        let _ = writeln!(out, "{line}");
    }
    if members.len() > DESCRIPTORS_SHOWN {
        let _ = writeln!(out, "    ... {} more", members.len() - DESCRIPTORS_SHOWN);
    }
}

/// "20 sockets accepted in `accept_connection` ← `serve_forever`, still open in pid 7 (server),
/// oldest 4m 2s".
fn headline(group: &StackGroup, members: &[&DescriptorEntry], report: &Report) -> String {
    let kinds: Vec<String> = group
        .kinds
        .iter()
        .map(|(k, n)| kind_count(*k, *n))
        .collect();
    let how = match group.opened_by.keys().next().copied() {
        Some(OpenedBy::PreExisting) => "open before tracer attached".to_string(),
        Some(OpenedBy::Unknown) => "found in /proc while traced, with no creation event (lost, \
                                    or received by recvmmsg or from io_uring, which are not \
                                    probed)"
            .to_string(),
        Some(by) => {
            let verb = verb(by);
            match application_frames(&group.stack).as_slice() {
                [] => format!("{verb} by {}", by.name()),
                frames => format!("{verb} in {}", frames.join(" ← ")),
            }
        }
        None => String::new(),
    };
    let holders = holders(group, report);
    let all_at_exit = members.iter().all(|d| d.at_exit);
    let state = if all_at_exit {
        "held at exit by"
    } else {
        "still open in"
    };
    // Growth means something once several were created while traced.
    let growth = if group.per_minute > 0.0 && !all_at_exit {
        format!(", {}/min", group.per_minute)
    } else {
        String::new()
    };
    format!(
        "{} {how}, {state} {holders}, oldest {}{growth}",
        kinds.join(" + "),
        age(group.oldest_age_s)
    )
}

/// "pid 7 (server)", "pid 7 (server), pid 9 (worker)", or past [`PIDS_SHOWN`] processes
/// "2417 processes (server: 7, 9, 12, ...)".
fn holders(group: &StackGroup, report: &Report) -> String {
    if group.pids.len() <= PIDS_SHOWN.min(2) {
        let named: Vec<String> = group
            .pids
            .iter()
            .map(|pid| format!("pid {pid} ({})", comm_of(report, *pid)))
            .collect();
        return named.join(", ");
    }
    let comm = comm_of(report, group.pids[0]);
    format!(
        "{} ({})",
        count(group.pids.len() as u64, "process", "processes"),
        pid_list(comm, &group.pids, group.pids.len() as u64)
    )
}

/// "worker: 18807, 18808, 18809, ..." naming at most [`PIDS_SHOWN`] of `total` processes.
fn pid_list(comm: &str, pids: &[u32], total: u64) -> String {
    let shown: Vec<String> = pids.iter().take(PIDS_SHOWN).map(u32::to_string).collect();
    let more = if total > shown.len() as u64 {
        ", ..."
    } else {
        ""
    };
    let lead = if comm.is_empty() || comm == "?" {
        String::new()
    } else {
        format!("{comm}: ")
    };
    format!("{lead}{}{more}", shown.join(", "))
}

/// What the headline says was done to the group's descriptors, by its first `opened_by`.
fn verb(opened_by: OpenedBy) -> &'static str {
    match opened_by {
        OpenedBy::Syscall(Syscall::Accept | Syscall::Accept4) => "accepted",
        OpenedBy::Syscall(Syscall::Socket) => "created",
        OpenedBy::Syscall(Syscall::Dup | Syscall::Dup2 | Syscall::Dup3) => "duplicated",
        OpenedBy::Inherited => "inherited, opened",
        _ => "opened",
    }
}

fn processes(report: &Report, out: &mut String) {
    let (live, exited) = (report.process_counts.live, report.process_counts.exited);
    let _ = writeln!(
        out,
        "\nProcesses: {live} live, {exited} exited while traced"
    );
    for p in report.processes.iter().filter(|p| !p.exited).take(10) {
        let zombie = if p.zombie { ", zombie" } else { "" };
        let _ = writeln!(
            out,
            "  pid {} ({}) ppid {}: {} live ({} started, {} ended while traced){zombie}",
            p.pid,
            p.comm,
            p.ppid,
            count(p.threads.live, "thread", "threads"),
            p.threads.created,
            p.threads.exited
        );
    }
}

/// The command name of a process in the report, "?" when it is not there.
fn comm_of(report: &Report, pid: u32) -> &str {
    report
        .processes
        .iter()
        .find(|p| p.pid == pid)
        .map_or("?", |p| p.comm.as_str())
}

/// "1 socket", "3 sockets".
fn kind_count(kind: DescriptorKind, n: u64) -> String {
    count(n, kind.as_str(), kind.plural())
}

fn count(n: u64, singular: &str, plural: &str) -> String {
    format!("{n} {}", if n == 1 { singular } else { plural })
}

fn age(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else if seconds < 3600.0 {
        format!(
            "{}m{:02}s",
            (seconds / 60.0) as u64,
            (seconds % 60.0) as u64
        )
    } else {
        format!(
            "{}h{:02}m",
            (seconds / 3600.0) as u64,
            ((seconds % 3600.0) / 60.0) as u64
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--top N` shows the N largest groups in full and counts the rest in one line.
    #[test]
    fn top_limits_groups_shown() {
        let report = crate::report::tests::sample_report();
        assert!(report.stacks.len() >= 2);
        let all = render_top(&report, 10);
        let one = render_top(&report, 1);
        assert!(all.contains("\n#2  ") && !all.contains("more groups"));
        assert!(one.contains("\n#1  ") && !one.contains("\n#2  "));
        assert!(one.contains(&format!("... {} more groups", report.stacks.len() - 1)));
        // The largest group grows: five sockets in the last four seconds.
        assert!(one.contains("4.7/min"), "{one}");
    }

    /// The headline's verb follows the first way the group's descriptors were opened; only
    /// those created by the syscall itself are "accepted", "created" or "duplicated".
    #[test]
    fn verbs() {
        for (opened_by, expected) in [
            (OpenedBy::Syscall(Syscall::Accept), "accepted"),
            (OpenedBy::Syscall(Syscall::Accept4), "accepted"),
            (OpenedBy::Syscall(Syscall::Socket), "created"),
            (OpenedBy::Syscall(Syscall::Dup), "duplicated"),
            (OpenedBy::Syscall(Syscall::Dup2), "duplicated"),
            (OpenedBy::Syscall(Syscall::Dup3), "duplicated"),
            (OpenedBy::Inherited, "inherited, opened"),
            (OpenedBy::Syscall(Syscall::Openat), "opened"),
            (OpenedBy::Syscall(Syscall::Socketpair), "opened"),
        ] {
            assert_eq!(verb(opened_by), expected, "{opened_by:?}");
        }
    }

    /// Ages read naturally at every scale.
    #[test]
    fn ages() {
        assert_eq!(age(3.25), "3.2s");
        assert_eq!(age(242.0), "4m02s");
        assert_eq!(age(7322.0), "2h02m");
    }
}
