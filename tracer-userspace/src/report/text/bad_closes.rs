//! "Closes of descriptors that were not open": one paragraph per closing stack, with the
//! first closes and what their numbers held before.

use std::fmt::Write as _;

use super::{
    GROUPS_SHOWN, age, comm_of, count,
    stack::{call_site, stack_lines},
};
use crate::report::{BadCloseEntry, LifeEntry, Report};

/// Failed closes shown per group.
const CLOSES_SHOWN: usize = 3;

pub(super) fn bad_closes(report: &Report, out: &mut String) {
    if report.bad_closes.is_empty() {
        return;
    }
    let total: u64 = report.bad_closes.iter().map(|g| g.count).sum();
    let stale: u64 = report.bad_closes.iter().map(|g| g.suspected_stale).sum();
    let _ = write!(
        out,
        "\nCloses of descriptors that were not open (EBADF): {}, from {}",
        total,
        count(report.bad_closes.len() as u64, "stack", "stacks")
    );
    if stale > 0 {
        let _ = write!(
            out,
            "; {stale} after another thread closed the number's descriptor (suspected stale close)"
        );
    }
    out.push('\n');
    for (rank, group) in report.bad_closes.iter().take(GROUPS_SHOWN).enumerate() {
        let calls: Vec<String> = group
            .syscalls
            .iter()
            .map(|(call, n)| format!("{call} ×{n}"))
            .collect();
        let pids: Vec<String> = group
            .pids
            .iter()
            .map(|pid| format!("pid {pid} ({})", comm_of(report, *pid)))
            .collect();
        let _ = writeln!(
            out,
            "\n!{}  {} ({}){}, {}, last {} ago",
            rank + 1,
            count(group.count, "failed close", "failed closes"),
            calls.join(", "),
            call_site(&group.stack, " in "),
            pids.join(", "),
            age(group.last_age_s)
        );
        if group.stack_id.is_none() {
            let _ = writeln!(out, "      (no stack captured)");
        }
        stack_lines(&group.stack, out);
        for close in group.closes.iter().take(CLOSES_SHOWN) {
            close_lines(close, out);
        }
        if group.count > CLOSES_SHOWN.min(group.closes.len()) as u64 {
            let _ = writeln!(
                out,
                "    ... {} more",
                group.count - CLOSES_SHOWN.min(group.closes.len()) as u64
            );
        }
    }
}

fn close_lines(close: &BadCloseEntry, out: &mut String) {
    let _ = writeln!(
        out,
        "    pid {} tid {} {}(fd {}) {} ago",
        close.pid,
        close.tid,
        close.syscall,
        close.fd,
        age(close.age_s)
    );
    if close.previous_lives.is_empty() {
        let _ = writeln!(
            out,
            "      fd {}: no earlier life in the history (never open while traced, or closed too long ago)",
            close.fd
        );
    }
    if close.suspected_stale
        && let Some(life) = close.previous_lives.first()
    {
        let _ = writeln!(
            out,
            "      suspected stale close: fd {} was tid {}'s, and tid {} closed it {} after it was opened; \
             tid {}'s close then found nothing",
            close.fd,
            life.opener_tid,
            life.closer_tid,
            lifetime(life.lived_s),
            close.tid
        );
    }
    for (i, life) in close.previous_lives.iter().enumerate() {
        life_lines(close.fd, i, life, out);
    }
}

fn life_lines(fd: i32, i: usize, life: &LifeEntry, out: &mut String) {
    let when = if i == 0 { "previously" } else { "before that" };
    let site = call_site(&life.stack, " in ");
    let _ = writeln!(
        out,
        "      {when}: fd {fd} was {} {}, opened by {} (tid {}){site} {} ago, closed by {} (tid {}) {} later",
        life.kind.as_str(),
        life.detail,
        life.opened_by.name(),
        life.opener_tid,
        age(life.opened_age_s),
        life.closed_by,
        life.closer_tid,
        lifetime(life.lived_s)
    );
}

/// How long a descriptor lived: often well under a second, where `age` would say 0.0s.
fn lifetime(seconds: f64) -> String {
    if seconds >= 1.0 {
        age(seconds)
    } else if seconds >= 0.001 {
        format!("{:.0}ms", seconds * 1e3)
    } else {
        "<1ms".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Short lives read in milliseconds, long ones like ages.
    #[test]
    fn lifetimes() {
        assert_eq!(lifetime(0.0), "<1ms");
        assert_eq!(lifetime(0.25), "250ms");
        assert_eq!(lifetime(3.25), "3.2s");
    }
}
