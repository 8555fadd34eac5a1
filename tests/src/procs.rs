//! Processes as the kernel shows them: waiting with a timeout, signals, and what `/proc` says
//! about pids, parents and descriptors.

use std::{
    process::{Child, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `timeout` for `child` to exit; `None` when it is still running.
#[track_caller]
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `sig` to `pid`; errors (such as ESRCH) are ignored.
pub fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Waits until every thread of `pid` is stopped (state `T` in `/proc/PID/task/*/stat`), as
/// after a SIGSTOP the caller sent: from then on its descriptors stay as they are, so what
/// /proc shows is what any later look sees. Panics after `timeout`, or when it is gone.
#[track_caller]
pub fn wait_stopped(pid: u32, timeout: Duration) {
    wait_until(timeout, &format!("pid {pid} to stop"), || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap_or_else(|e| panic!("pid {pid} is gone while waiting for it to stop: {e}"));
        tasks.flatten().all(|task| {
            std::fs::read_to_string(task.path().join("stat"))
                .ok()
                .and_then(|stat| {
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().next().map(|state| state == "T")
                })
                // A thread that exited meanwhile stops nothing.
                .unwrap_or(true)
        })
    });
}

/// Does a process with this pid exist (zombies included)?
pub fn pid_exists(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// A pid that no process has right now (scanning down from `pid_max`).
#[track_caller]
pub fn unused_pid() -> u32 {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    (2..max)
        .rev()
        .take(100_000)
        .find(|&p| !pid_exists(p))
        .expect("no unused pid among the 100 000 highest below pid_max")
}

/// The pids whose parent is `ppid` (scans `/proc/*/stat`).
pub fn children_of(ppid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| parent_of(pid) == Some(ppid))
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Number of descriptors `pid` holds, from `/proc/PID/fd`.
pub fn fd_count(pid: u32) -> anyhow::Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&dir)
        .with_context(|| format!("reading {dir}"))?
        .count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Fixture;

    /// children_of and fd_count read /proc as expected for a spawned child.
    #[test]
    fn proc_helpers_see_a_child() {
        let mut f = Fixture::spawn("cat", &[]);
        assert!(children_of(std::process::id()).contains(&f.pid()));
        assert!(fd_count(f.pid()).unwrap() >= 3);
        f.close_stdin();
        assert!(f.wait_exit(Duration::from_secs(10)).unwrap().success());
        assert!(unused_pid() > 1);
    }
}
