//! The report for people: the biggest groups first, each headed by one sentence that names
//! the guilty code, then its stack and a few of its descriptors.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{DescriptorEntry, FrameEntry, Report, StackGroup};
use crate::model::DescriptorKind;

/// Groups shown in full by default (`--top`); the rest are summarised in one line.
pub const GROUPS_SHOWN: usize = 10;
/// Descriptors listed under each group.
const DESCRIPTORS_SHOWN: usize = 5;
/// Frames printed per stack.
const FRAMES_SHOWN: usize = 12;

pub fn render(report: &Report) -> String {
    render_top(report, GROUPS_SHOWN)
}

/// The report with the `top` largest descriptor groups in full (`--top N`).
pub fn render_top(report: &Report, top: usize) -> String {
    let mut out = String::new();
    summary(report, &mut out);
    let (live, at_exit): (Vec<&DescriptorEntry>, Vec<&DescriptorEntry>) =
        report.open_descriptors.iter().partition(|d| !d.at_exit);
    if live.is_empty() {
        let _ = writeln!(out, "\nNo descriptors open in the followed processes.");
    }
    for (rank, group) in report.stacks.iter().take(top).enumerate() {
        let members: Vec<&DescriptorEntry> = report
            .open_descriptors
            .iter()
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
    if !at_exit.is_empty() {
        let _ = writeln!(
            out,
            "\n{} descriptors were still held by processes when they exited (created by them, never closed).",
            at_exit.len()
        );
    }
    zombies(report, &mut out);
    time_wait(report, &mut out);
    threads(report, &mut out);
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

/// The stack, innermost first: the first frame (the libc wrapper), then the application's
/// frames. Runs of library frames between them (libc, libstdc++, Rust's std) shrink to one
/// line, so the frames that matter fit in [`FRAMES_SHOWN`] lines.
fn stack_lines(stack: &[FrameEntry], out: &mut String) {
    let last_app = stack.iter().rposition(|f| !is_library_frame(f));
    let folded = |i: usize, frame: &FrameEntry| {
        i > 0 && is_library_frame(frame) && last_app.is_some_and(|last| i < last)
    };
    let (mut shown, mut skipped, mut consumed) = (0, 0u64, 0);
    for (i, frame) in stack.iter().enumerate() {
        if shown == FRAMES_SHOWN {
            break;
        }
        consumed = i + 1;
        if folded(i, frame) {
            skipped += 1;
            continue;
        }
        if skipped > 0 {
            let folded_line = count(skipped, "library frame", "library frames");
            let _ = writeln!(out, "      ... {folded_line}");
            skipped = 0;
        }
        let _ = writeln!(out, "      {}", frame_line(frame));
        shown += 1;
    }
    if stack.len() > consumed {
        let _ = writeln!(out, "      ... {} more frames", stack.len() - consumed);
    }
}

fn summary(report: &Report, out: &mut String) {
    let target = comm_of(report, report.target.pid);
    let _ = writeln!(
        out,
        "tracer: pid {} ({target}) traced for {:.1} s: {} events, {} lost",
        report.target.pid, report.duration_s, report.events.received, report.events.lost
    );
    if report.events.lost > 0 {
        let _ = writeln!(
            out,
            "WARNING: {} events were lost (ring buffer full: {}, in-flight table full: {}, children not followed: {}); descriptors were checked against /proc: {} closes and {} births recovered",
            report.events.lost,
            report.events.lost_ring_buffer_full,
            report.events.lost_in_flight_full,
            report.events.unfollowed_children,
            report.events.reconciled_closed,
            report.events.reconciled_opened
        );
        if report.events.unverified_at_exit > 0 {
            let _ = writeln!(
                out,
                "WARNING: {} held at exit by processes that exited after the loss could not be checked against /proc; they are listed under unverified_at_exit, not as leaks",
                count(
                    report.events.unverified_at_exit,
                    "descriptor",
                    "descriptors"
                )
            );
        }
    } else if report.events.reconciled_opened > 0 {
        let _ = writeln!(
            out,
            "note: {} found in /proc without a creation event (marked learned_by reconciliation)",
            count(
                report.events.reconciled_opened,
                "descriptor was",
                "descriptors were"
            )
        );
    }
    let live: Vec<&DescriptorEntry> = report
        .open_descriptors
        .iter()
        .filter(|d| !d.at_exit)
        .collect();
    let pids: std::collections::BTreeSet<u32> = live.iter().map(|d| d.pid).collect();
    let created = live
        .iter()
        .filter(|d| d.opened_by != "pre-existing")
        .count();
    let _ = writeln!(
        out,
        "{} open in {}: {created} created while traced, {} open before attach",
        count(live.len() as u64, "descriptor", "descriptors"),
        count(pids.len() as u64, "process", "processes"),
        live.len() - created
    );
    let mut kinds: BTreeMap<DescriptorKind, u64> = BTreeMap::new();
    for d in &live {
        *kinds.entry(d.kind).or_insert(0) += 1;
    }
    if !kinds.is_empty() {
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| kind_count(*k, *n)).collect();
        let _ = write!(out, "  by kind: {}", kinds.join(", "));
        if !report.tcp.is_empty() {
            let tcp: Vec<String> = report.tcp.iter().map(|(s, n)| format!("{n} {s}")).collect();
            let _ = write!(out, "    TCP: {}", tcp.join(", "));
        }
        out.push('\n');
    }
    let close_wait: Vec<&&DescriptorEntry> = live
        .iter()
        .filter(|d| d.tcp_state.as_deref() == Some("CLOSE_WAIT"))
        .collect();
    if !close_wait.is_empty() {
        let longest = close_wait
            .iter()
            .filter_map(|d| d.tcp_state_age_s)
            .fold(None, |max: Option<f64>, age| {
                Some(max.map_or(age, |m| m.max(age)))
            });
        let _ = writeln!(
            out,
            "  {} in CLOSE_WAIT: the peer closed, the process never did{}",
            count(close_wait.len() as u64, "socket", "sockets"),
            longest
                .map(|s| format!(" (for up to {})", age(s)))
                .unwrap_or_default()
        );
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
        Some("pre-existing") => "open before tracer attached".to_string(),
        Some("unknown") => "found in /proc while traced, with no creation event (lost, or \
                            received by recvmmsg or from io_uring, which are not probed)"
            .to_string(),
        Some(by) => {
            let verb = verb(by);
            match application_frames(&group.stack).as_slice() {
                [] => format!("{verb} by {by}"),
                frames => format!("{verb} in {}", frames.join(" ← ")),
            }
        }
        None => String::new(),
    };
    let holders: Vec<String> = group
        .pids
        .iter()
        .map(|pid| {
            let comm = comm_of(report, *pid);
            format!("pid {pid} ({comm})")
        })
        .collect();
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
        "{} {how}, {state} {}, oldest {}{growth}",
        kinds.join(" + "),
        holders.join(", "),
        age(group.oldest_age_s)
    )
}

fn verb(opened_by: &str) -> &'static str {
    match opened_by {
        "accept" | "accept4" => "accepted",
        "socket" => "created",
        "dup" | "dup2" | "dup3" => "duplicated",
        "inherited" => "inherited, opened",
        _ => "opened",
    }
}

/// The first two named frames past the libc wrapper: where the application made the call.
/// `lead` and the application frames ("`f` ← `g`"), or nothing when the stack has none.
fn call_site(stack: &[FrameEntry], lead: &str) -> String {
    match application_frames(stack).as_slice() {
        [] => String::new(),
        frames => format!("{lead}{}", frames.join(" ← ")),
    }
}

fn application_frames(stack: &[FrameEntry]) -> Vec<String> {
    stack
        .iter()
        .filter(|f| !is_library_frame(f))
        .filter_map(|f| f.symbol.as_deref())
        .take(2)
        .map(|s| format!("`{s}`"))
        .collect()
}

/// A frame in code the application only calls: the C and C++ runtime libraries, or Rust's
/// std, core and alloc (their sources are under /rustc/HASH/library).
fn is_library_frame(frame: &FrameEntry) -> bool {
    frame.module.as_deref().is_some_and(is_system_library)
        || frame
            .file
            .as_deref()
            .is_some_and(|f| f.starts_with("/rustc/"))
        || frame.symbol.as_deref().is_some_and(|s| {
            [
                "std::", "core::", "alloc::", "<std::", "<core::", "<alloc::",
            ]
            .iter()
            .any(|prefix| s.starts_with(prefix))
        })
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn is_system_library(module: &str) -> bool {
    let name = module.rsplit('/').next().unwrap_or(module);
    [
        "libc.so",
        "libc-",
        "ld-linux",
        "libpthread",
        "libstdc++",
        "libgcc_s",
    ]
    .iter()
    .any(|lib| name.starts_with(lib))
}

fn frame_line(frame: &FrameEntry) -> String {
    let symbol = frame.symbol.as_deref().unwrap_or("[unknown]");
    // The file name is enough to find the line; the JSON report has the full path.
    let place = match (frame.file.as_deref().map(file_name), frame.line) {
        (Some(file), Some(line)) => format!("{file}:{line}"),
        (Some(file), None) => file.to_string(),
        _ => frame.module.clone().unwrap_or_default(),
    };
    format!("{:#014x}  {symbol:<32} {place}", frame.addr)
}

fn processes(report: &Report, out: &mut String) {
    let live = report.processes.iter().filter(|p| !p.exited).count();
    let exited = report.processes.len() - live;
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

    fn frame(symbol: &str, module: &str) -> FrameEntry {
        FrameEntry {
            addr: 0x10,
            symbol: Some(symbol.into()),
            module: Some(module.into()),
            file: None,
            line: None,
            inlined: false,
        }
    }

    /// The headline skips the libc wrapper and names the application's function and caller.
    #[test]
    fn application_frames_skip_libc() {
        let stack = vec![
            frame("accept4", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
            frame("accept_connection", "/srv/server"),
            frame("serve_forever", "/srv/server"),
            frame("main", "/srv/server"),
        ];
        assert_eq!(
            application_frames(&stack),
            vec!["`accept_connection`", "`serve_forever`"]
        );
    }

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
        // The largest group grows: five sockets in four seconds.
        assert!(one.contains("75/min"), "{one}");
    }

    /// Library frames between the wrapper and the application's frames fold into one line;
    /// the outer frames after the last application frame are shown as they are.
    #[test]
    fn stack_lines_fold_library_frames() {
        let mut std_frame = frame("<std::fs::OpenOptions>::_open", "/srv/app");
        std_frame.file = Some("/rustc/abc/library/std/src/fs.rs".into());
        let stack = vec![
            frame("open64", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
            std_frame.clone(),
            std_frame,
            frame("app::open_journal", "/srv/app"),
            frame("app::main", "/srv/app"),
            frame("__libc_start_main", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
        ];
        let mut out = String::new();
        stack_lines(&stack, &mut out);
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        assert_eq!(lines.len(), 5, "{out}");
        assert!(lines[0].contains("open64"));
        assert_eq!(lines[1], "... 2 library frames");
        assert!(lines[2].contains("app::open_journal"));
        assert!(lines[4].contains("__libc_start_main"));
        assert_eq!(
            application_frames(&stack),
            vec!["`app::open_journal`", "`app::main`"]
        );
    }

    /// Ages read naturally at every scale.
    #[test]
    fn ages() {
        assert_eq!(age(3.25), "3.2s");
        assert_eq!(age(242.0), "4m02s");
        assert_eq!(age(7322.0), "2h02m");
    }
}
