//! The report's first lines: what was traced and lost, then what is open by count, kind and
//! TCP state.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{age, comm_of, count, kind_count};
use crate::{
    model::DescriptorKind,
    report::{DeletedFileEntry, DescriptorEntry, OpenedBy, Report},
};

/// The header: what was traced, what was lost, and what is open by count, kind and TCP state.
pub(super) fn summary(report: &Report, out: &mut String) {
    event_lines(report, out);
    let live: Vec<&DescriptorEntry> = report
        .open_descriptors
        .iter()
        .filter(|d| !d.at_exit)
        .collect();
    open_counts(&live, out);
    kinds_line(report, &live, out);
    close_wait_line(&live, out);
    deleted_files_line(report, out);
}

/// The roots followed, when there are several or they were chosen by name or cgroup: pid,
/// comm, how it was chosen, and since when it is followed.
fn targets_line(report: &Report, out: &mut String) {
    let chosen =
        |t: &&crate::report::TargetEntry| !matches!(t.matched_by.as_str(), "pid" | "command");
    if report.targets.len() < 2 && !report.targets.iter().any(|t| chosen(&t)) {
        return;
    }
    let roots: Vec<String> = report
        .targets
        .iter()
        .map(|t| {
            let since = if t.followed_since_s > 0.0 {
                format!(", since {:.1}s", t.followed_since_s)
            } else {
                String::new()
            };
            let nspid = t
                .nspid
                .map(|n| format!(" (pid {n} in its namespace)"))
                .unwrap_or_default();
            format!(
                "pid {}{nspid} ({}) [{}{since}]",
                t.pid,
                comm_of(report, t.pid),
                t.matched_by
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "  {}: {}",
        count(roots.len() as u64, "target", "targets"),
        roots.join(", ")
    );
}

/// The first line, then a warning when events were lost (or a note when /proc showed births
/// no event did).
fn event_lines(report: &Report, out: &mut String) {
    let target = comm_of(report, report.target.pid);
    let _ = writeln!(
        out,
        "tracer: pid {} ({target}) traced for {:.1} s: {} events, {} lost",
        report.target.pid, report.duration_s, report.events.received, report.events.lost
    );
    if report.events.paired_in_kernel > 0 {
        let _ = writeln!(
            out,
            "        and {} opened and closed again at once by the same thread (counted in the kernel, not sent)",
            count(report.events.paired_in_kernel, "file", "files")
        );
    }
    targets_line(report, out);
    if report.events.lost > 0 {
        let _ = writeln!(
            out,
            "WARNING: {} events were lost (ring buffer full: {}, lost in flight: {}, children not followed: {}); descriptors were checked against /proc: {} closes and {} births recovered",
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
                "WARNING: {} held at exit by processes that exited after the loss could not be checked against /proc; they are counted apart (at_exit_stacks with verified false; listed under unverified_at_exit with --at-exit-descriptors)",
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
}

/// How many live descriptors, in how many processes, created while traced or before.
fn open_counts(live: &[&DescriptorEntry], out: &mut String) {
    let pids: std::collections::BTreeSet<u32> = live.iter().map(|d| d.pid).collect();
    let created = live
        .iter()
        .filter(|d| d.opened_by != OpenedBy::PreExisting)
        .count();
    let _ = writeln!(
        out,
        "{} open in {}: {created} created while traced, {} open before attach",
        count(live.len() as u64, "descriptor", "descriptors"),
        count(pids.len() as u64, "process", "processes"),
        live.len() - created
    );
}

/// Live descriptors by kind, and TCP sockets by state.
fn kinds_line(report: &Report, live: &[&DescriptorEntry], out: &mut String) {
    let mut kinds: BTreeMap<DescriptorKind, u64> = BTreeMap::new();
    for d in live {
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
}

/// Sockets the peer closed and the process did not, and for how long at most.
fn close_wait_line(live: &[&DescriptorEntry], out: &mut String) {
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

/// Files deleted while still open: the disk space they keep, then the largest of them.
fn deleted_files_line(report: &Report, out: &mut String) {
    let files = &report.deleted_files;
    if files.is_empty() {
        return;
    }
    let total: u64 = files.iter().map(|f| f.size_bytes).sum();
    let largest: Vec<String> = files.iter().take(3).map(held_by).collect();
    let more = if files.len() > 3 { ", ..." } else { "" };
    let _ = writeln!(
        out,
        "  {} deleted but still open, holding {} of disk: {}{more}",
        count(files.len() as u64, "file", "files"),
        bytes(total),
        largest.join(", ")
    );
}

/// "/var/log/app.log (1.2 GiB, pid 7 fd 4)"; "... (12 KiB, 3 descriptors in pids 7, 8)".
fn held_by(file: &DeletedFileEntry) -> String {
    let pids: Vec<String> = file.pids.iter().take(3).map(u32::to_string).collect();
    let more = if file.pids.len() > 3 { ", ..." } else { "" };
    let holders = match (file.descriptors, file.pids.len()) {
        (1, _) => format!("pid {}", pids.join("")),
        (n, 1) => format!("{n} descriptors in pid {}", pids.join("")),
        (n, _) => format!("{n} descriptors in pids {}{more}", pids.join(", ")),
    };
    format!("{} ({}, {holders})", file.path, bytes(file.size_bytes))
}

/// "512 B", "12.0 KiB", "1.2 GiB".
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(12 * 1024), "12.0 KiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
    }

    /// One line names the space the deleted files hold and the largest of them, with who
    /// holds them.
    #[test]
    fn deleted_files_are_summed_and_named() {
        let mut report = crate::report::tests::sample_report();
        let file = |path: &str, size_bytes, descriptors, pids: &[u32]| DeletedFileEntry {
            path: path.into(),
            size_bytes,
            disk_bytes: size_bytes,
            descriptors,
            pids: pids.to_vec(),
        };
        report.deleted_files = vec![
            file("/var/log/app.log.1", 3 << 30, 1, &[7]),
            file("/tmp/spool", 1 << 20, 3, &[7, 8]),
        ];
        let mut out = String::new();
        deleted_files_line(&report, &mut out);
        assert_eq!(
            out,
            "  2 files deleted but still open, holding 3.0 GiB of disk: \
             /var/log/app.log.1 (3.0 GiB, pid 7), /tmp/spool (1.0 MiB, 3 descriptors in pids 7, 8)\n"
        );
    }
}
