//! `--all`'s part of the report (`host` in JSON): the host's open files against fs.file-max,
//! its TIME_WAIT, and every process ranked by how fast it grows, those leaking now first,
//! with each one's headroom to its RLIMIT_NOFILE; and its text.

use std::fmt::Write as _;

use serde::Serialize;

/// The host-wide watch.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct HostSection {
    /// Looks at /proc taken (one a second).
    pub looks: u64,
    /// Processes watched at the end.
    pub process_count: u64,
    /// Open files on the host (fs/file-nr) and fs.file-max, and the room left.
    pub open_files: Option<u64>,
    pub file_max: Option<u64>,
    pub file_headroom: Option<u64>,
    /// TCP connections in TIME_WAIT in the host's network namespace (no process holds
    /// them), and how fast they grow.
    pub time_wait: Option<u64>,
    pub time_wait_per_minute: f64,
    /// Pids of the processes leaking now, fastest first.
    pub leaking: Vec<u32>,
    /// Every process, fastest growing first.
    pub processes: Vec<HostProcess>,
}

/// One process of the host-wide watch. `*_per_minute` are net growth rates (rises less
/// falls, decaying, `model/rate.rs`).
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct HostProcess {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub command: Vec<String>,
    /// One of its levels kept growing over the last looks.
    pub leaking: bool,
    pub descriptors: Option<u64>,
    pub descriptors_per_minute: f64,
    /// Its soft RLIMIT_NOFILE (null: unlimited or unknown), the descriptors it may still
    /// open, and in how many minutes it reaches the limit at its current rate.
    pub fd_limit: Option<u64>,
    pub fd_headroom: Option<u64>,
    pub minutes_to_limit: Option<f64>,
    /// Sockets it created (counted in the kernel) while watched.
    pub sockets_created: u64,
    pub threads: Option<u64>,
    pub threads_per_minute: f64,
    pub zombies: Option<u64>,
    pub zombies_per_minute: f64,
    /// TCP sockets it holds in CLOSE_WAIT (looked at for the fastest growers only).
    pub close_wait: Option<u64>,
    pub close_wait_per_minute: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nspid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// When full tracing of it began (`--follow-top`), seconds after attach.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub followed_since_s: Option<f64>,
}

/// The text: the host's files and TIME_WAIT, then the `top` fastest growers as a table.
pub(crate) fn render(host: &HostSection, top: usize, out: &mut String) {
    let files = match (host.open_files, host.file_max) {
        (Some(open), Some(max)) => format!("{open} files open of fs.file-max {max}"),
        _ => "open files unknown".to_owned(),
    };
    let _ = writeln!(
        out,
        "\nHost: {} processes watched ({} looks); {files}; TIME_WAIT {} ({:+.1}/min)",
        host.process_count,
        host.looks,
        host.time_wait.map_or("?".to_owned(), |n| n.to_string()),
        host.time_wait_per_minute
    );
    let leaking: Vec<&HostProcess> = host.processes.iter().filter(|p| p.leaking).collect();
    if leaking.is_empty() {
        let _ = writeln!(out, "No process is leaking now.");
    } else {
        let _ = writeln!(out, "Leaking now:");
        for p in &leaking {
            let _ = writeln!(out, "  {}", sentence(p));
        }
    }
    let _ = writeln!(
        out,
        "\n  {:>7} {:<15} {:>6} {:>8} {:>7} {:>9} {:>7} {:>7} {:>7} {:>6}  command",
        "pid",
        "comm",
        "fds",
        "fds/min",
        "limit",
        "headroom",
        "threads",
        "zombies",
        "CL_WAIT",
        "state"
    );
    for p in host.processes.iter().take(top) {
        let _ = writeln!(
            out,
            "  {:>7} {:<15} {:>6} {:>+8.1} {:>7} {:>9} {:>7} {:>7} {:>7} {:>6}  {}",
            p.pid,
            p.comm,
            or_dash(p.descriptors),
            p.descriptors_per_minute,
            or_dash(p.fd_limit),
            or_dash(p.fd_headroom),
            or_dash(p.threads),
            or_dash(p.zombies),
            or_dash(p.close_wait),
            if p.leaking { "LEAK" } else { "steady" },
            short(&p.command.join(" "), 60)
        );
    }
    if host.processes.len() > top {
        let _ = writeln!(
            out,
            "  ... {} more processes, all steady (--top N shows more, --json all)",
            host.processes.len() - top
        );
    }
}

/// One line naming a process that leaks now: what grows how fast, its headroom, where.
pub(crate) fn sentence(p: &HostProcess) -> String {
    let mut growing = Vec::new();
    for (what, value, rate) in [
        ("descriptors", p.descriptors, p.descriptors_per_minute),
        ("threads", p.threads, p.threads_per_minute),
        ("zombies", p.zombies, p.zombies_per_minute),
        ("CLOSE_WAIT", p.close_wait, p.close_wait_per_minute),
    ] {
        if rate > 0.0 {
            growing.push(format!("{} {what} ({rate:+.1}/min)", or_dash(value)));
        }
    }
    let headroom = match (p.fd_headroom, p.minutes_to_limit) {
        (Some(room), Some(minutes)) => {
            format!("; {room} to its limit of open files, reached in {minutes:.0} min")
        }
        (Some(room), None) => format!("; {room} to its limit of open files"),
        _ => String::new(),
    };
    let container = p
        .container
        .as_ref()
        .map(|c| format!(" in container {}", &c[..c.len().min(12)]))
        .unwrap_or_default();
    let followed = p
        .followed_since_s
        .map(|s| format!("; followed with stacks since {s:.1}s"))
        .unwrap_or_default();
    format!(
        "pid {} ({}){container}: {}{headroom}{followed}: {}",
        p.pid,
        p.comm,
        growing.join(", "),
        short(&p.command.join(" "), 120)
    )
}

/// At most `max` characters, the cut marked with an ellipsis.
fn short(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

fn or_dash(value: Option<u64>) -> String {
    value.map_or("-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leaking process is named with what grows, its headroom, its container and command.
    #[test]
    fn a_leaker_in_one_sentence() {
        let p = HostProcess {
            pid: 42,
            comm: "srv".into(),
            command: vec!["/srv".into(), "-x".into()],
            leaking: true,
            descriptors: Some(70),
            descriptors_per_minute: 60.0,
            fd_headroom: Some(954),
            minutes_to_limit: Some(15.9),
            container: Some("4f1e2d3c4b5a69788796".into()),
            ..HostProcess::default()
        };
        assert_eq!(
            sentence(&p),
            "pid 42 (srv) in container 4f1e2d3c4b5a: 70 descriptors (+60.0/min); 954 to its limit of open files, reached in 16 min: /srv -x"
        );
        assert_eq!(short("abcdef", 3), "abc...");
        assert_eq!(short("abc", 3), "abc");
    }
}
