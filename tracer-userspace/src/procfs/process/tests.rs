//! Tests of the `/proc/PID/{stat,cmdline,status}` parsers (tables of input and expected), of
//! the tree walk, and live ones on this test process and a child it spawns.

use std::process::{Command, Stdio};

use super::*;
use crate::procfs::test_support::{GONE_PID, me};

// --- pure: /proc/PID/stat, cmdline, status ---

/// `/proc/PID/stat` lines and their (pid, comm, state, ppid, starttime), `None` when the line
/// is rejected. A comm with spaces and ')' is cut at the last ')'; ppid and starttime are found
/// after it.
#[test]
fn parses_stat() {
    for (line, expected) in [
        (
            "4321 (my (evil) prog) S 1 4321 4321 0 -1 4194560 106 0 0 0 0 0 0 0 20 0 1 0 987654 12345678 300 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 3 0 0 0 0 0\n",
            Some((4321, "my (evil) prog", 'S', 1, 987654)),
        ),
        (
            "77 ( ) ) Z 12 77 77 0 -1 4227084 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0",
            Some((77, " ) ", 'Z', 12, 55)),
        ),
        ("12 (truncated) S 1", None),
        ("garbage", None),
    ] {
        let parsed = parse_stat(line.as_bytes());
        assert_eq!(
            parsed
                .as_ref()
                .ok()
                .map(|s| (s.pid, s.comm.as_str(), s.state, s.ppid, s.start_time)),
            expected,
            "{line}"
        );
    }
}

/// cmdline splits on NUL and drops the terminator; empty means no arguments.
#[test]
fn parses_cmdline() {
    let cases: [(&[u8], &[&str]); 3] = [
        (b"./server\0--port\08080\0", &["./server", "--port", "8080"]),
        (b"a\0\0b\0", &["a", "", "b"]),
        (b"", &[]),
    ];
    for (bytes, expected) in cases {
        assert_eq!(parse_cmdline(bytes), expected, "{}", bytes.escape_ascii());
    }
}

/// The tgid is the number on the `Tgid:` line of `/proc/PID/status`; none without that line.
#[test]
fn parses_status_tgid() {
    let cases: [(&[u8], Option<u32>); 2] = [
        (
            b"Name:\tx\nUmask:\t0022\nState:\tS\nTgid:\t 4321\nNgid:\t0\n",
            Some(4321),
        ),
        (b"Name:\tx\nPid:\t5\n", None),
    ];
    for (status, expected) in cases {
        assert_eq!(
            parse_status_tgid(status),
            expected,
            "{}",
            status.escape_ascii()
        );
    }
}

/// The tree walk is breadth first, sorted among siblings, and excludes the root.
#[test]
fn walks_tree_breadth_first() {
    let mut children = HashMap::from([
        (1, vec![10, 5]),
        (5, vec![7]),
        (10, vec![11]),
        (7, vec![1]), // a pid-reuse cycle must not loop
    ]);
    assert_eq!(tree_below(1, &mut children), [5, 10, 7, 11]);
}

// --- live, on this test process ---

/// Asking about a missing process is an error or empty, never a panic; pid 0 is no process.
#[test]
fn live_missing_process() {
    assert!(!process_exists(GONE_PID));
    assert!(process_info(GONE_PID).is_err());
    assert!(descendants(GONE_PID).is_empty());
    assert!(!process_exists(0));
}

/// process_info on ourselves gives our pid, ppid, tgid, comm and argv.
#[test]
fn live_process_info_self() {
    let info = process_info(me()).unwrap();
    assert_eq!(info.pid, me());
    assert_eq!(info.tgid, me());
    // SAFETY: getppid has no preconditions.
    assert_eq!(info.ppid, unsafe { libc::getppid() } as u32);
    let exe = std::env::current_exe().unwrap();
    let name = exe.file_name().unwrap().as_bytes();
    let comm = &name[..name.len().min(15)];
    assert_eq!(info.comm.as_bytes(), comm);
    assert_eq!(info.cmdline.first(), std::env::args().next().as_ref());
    assert!(info.start_time > 0);
    assert!(!info.zombie);
    assert!(process_exists(me()));
    assert!(threads(me()).contains(&me()));
}

/// A spawned child is a descendant with us as ppid; once killed and reaped it is gone, and
/// while unreaped it is a zombie.
#[test]
fn live_descendants_and_zombie() {
    let mut child = Command::new("sleep")
        .arg("5")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // spawn() can return before /proc shows the exec'd program's command line.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while process_info(pid).is_ok_and(|i| i.cmdline.is_empty())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let result = std::panic::catch_unwind(|| {
        assert!(descendants(me()).contains(&pid));
        let info = process_info(pid).unwrap();
        assert_eq!(info.ppid, me());
        assert_eq!(info.cmdline, ["sleep", "5"]);
        assert!(!descendants(pid).contains(&pid));
    });
    child.kill().unwrap();
    // waitid(WNOWAIT) waits for the exit without reaping: the child is now a zombie.
    // SAFETY: siginfo_t is plain data, valid when zeroed.
    let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `si` is valid for writes; P_PID with a child of ours.
    let rc = unsafe { libc::waitid(libc::P_PID, pid, &mut si, libc::WEXITED | libc::WNOWAIT) };
    assert_eq!(rc, 0);
    assert!(process_info(pid).unwrap().zombie);
    assert!(descendants(me()).contains(&pid));
    child.wait().unwrap();
    assert!(!process_exists(pid));
    result.unwrap();
}
