//! The fixtures behave as the tracer tests assume, checked without the tracer (and without
//! root), so a failing tracer test is never a broken fixture.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use tracer_tests::{
    FIXTURES, Fixture, build_fixture, children_of, fd_count, unique_dir, wait_until,
};

/// Every fixture compiles warning-free.
#[test]
fn fixtures_compile_without_warnings() {
    for name in FIXTURES {
        build_fixture(name, &["-Werror"]);
    }
}

/// prefork_server answers each request from a child, reaps the children, and its parent keeps
/// one more socket per connection.
#[test]
fn prefork_server_leaks_one_socket_per_connection() {
    let bin = build_fixture("prefork_server", &[]);
    let mut server = Fixture::spawn(&bin, &[]);
    let line = server.wait_for_line("PORT ", Duration::from_secs(10));
    let port: u16 = line["PORT ".len()..].trim().parse().unwrap();
    let pid = server.pid();
    let before = fd_count(pid).unwrap();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    for _ in 0..3 {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"hi\n").unwrap();
        let mut reply = Vec::new();
        let mut buf = [0u8; 16];
        while !reply.ends_with(b"\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "EOF before the reply line: {reply:?}");
            reply.extend_from_slice(&buf[..n]);
        }
        assert_eq!(reply, b"ok\n");
    }
    wait_until(Duration::from_secs(10), "children to exit", || {
        children_of(pid).is_empty()
    });
    assert_eq!(
        fd_count(pid).unwrap(),
        before + 3,
        "one leaked socket per connection"
    );
    assert!(!server.has_exited());
}

/// steady_leak's "leak N" leaves N more descriptors open, as its DONE line and /proc say, and
/// "close" closes every one of them.
#[test]
fn steady_leak_leaks_and_closes() {
    let bin = build_fixture("steady_leak", &[]);
    let mut leaker = Fixture::spawn(&bin, &[]);
    leaker.wait_for_line("READY", Duration::from_secs(10));
    let pid = leaker.pid();
    let before = fd_count(pid).unwrap();
    for (batch, total) in [(5, 5), (7, 12)] {
        leaker.send_line(&format!("leak {batch}"));
        let done = leaker.wait_for_line("DONE ", Duration::from_secs(10));
        let open = before + total;
        assert_eq!(done.trim(), format!("DONE total={total} open={open}"));
        assert_eq!(fd_count(pid).unwrap(), open);
    }
    leaker.send_line("close");
    let closed = leaker.wait_for_line("CLOSED ", Duration::from_secs(10));
    assert_eq!(closed.trim(), format!("CLOSED open={before}"));
    assert_eq!(fd_count(pid).unwrap(), before);
}

/// busy_churn waits for "go", opens and closes its descriptors (some across threads), prints
/// DONE, holds as many descriptors as before, and exits 0 on stdin EOF.
#[test]
fn busy_churn_closes_everything() {
    let bin = build_fixture("busy_churn", &[]);
    let mut churn = Fixture::spawn(&bin, &["20000", "4"]);
    churn.wait_for_line("READY", Duration::from_secs(10));
    let before = fd_count(churn.pid()).unwrap();
    churn.send_line("go");
    let done = churn.wait_for_line("DONE ", Duration::from_secs(60));
    let fds: u64 = done.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(fds >= 20000, "{done}");
    assert!(!done.contains("cross_thread=0"), "{done}");
    assert_eq!(fd_count(churn.pid()).unwrap(), before);
    churn.close_stdin();
    let status = churn
        .wait_exit(Duration::from_secs(10))
        .expect("exit on EOF");
    assert!(status.success(), "{status}");
}

/// bad_close: the double close fails with EBADF; in the stale mode the victim reuses the
/// culprit's number, the culprit's second close succeeds and the victim's fails; close_range
/// over holes succeeds and leaves what the fixture had before; each exits 0 on EOF.
#[test]
fn bad_close_fails_where_it_says() {
    let bin = build_fixture("bad_close", &[]);
    for (mode, expected) in [
        ("double", "errno 9 dup2_errno 9"),
        ("stale", "reused 1 stale_ret 0 errno 9"),
        ("range", "ret 0"),
    ] {
        let mut f = Fixture::spawn(&bin, &[mode]);
        f.wait_for_line("READY", Duration::from_secs(10));
        let before = fd_count(f.pid()).unwrap();
        f.send_line("go");
        let done = f.wait_for_line("DONE ", Duration::from_secs(10));
        assert!(done.ends_with(expected), "{mode}: {done}");
        assert_eq!(fd_count(f.pid()).unwrap(), before, "{mode}: {done}");
        f.close_stdin();
        let status = f.wait_exit(Duration::from_secs(10)).expect("exit on EOF");
        assert!(status.success(), "{mode}: {status}");
    }
}

/// leak_and_exit opens its path twice and exits 0.
#[test]
fn leak_and_exit_exits_zero() {
    let bin = build_fixture("leak_and_exit", &[]);
    let dir = unique_dir(None, "leak-smoke");
    let file = dir.join("f");
    std::fs::write(&file, "x").unwrap();
    let mut f = Fixture::spawn(&bin, &[file.to_str().unwrap()]);
    let status = f.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status}");
    let mut missing = Fixture::spawn(&bin, &["/nonexistent/file"]);
    let status = missing.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}

/// slow_leak holds one more descriptor per LEAK line it prints and none after DONE; in
/// steady mode it holds as many as it started with.
#[test]
fn slow_leak_holds_what_it_says() {
    let bin = build_fixture("slow_leak", &[]);
    // A file of our own: the test VM has no /etc/hostname.
    let file = unique_dir(None, "slow-leak-fixture").join("leaked.txt");
    std::fs::write(&file, "x\n").unwrap();
    let file = std::fs::canonicalize(&file).unwrap();
    let mut leaker = Fixture::spawn(&bin, &["file", "20", "4", file.to_str().unwrap()]);
    leaker.wait_for_line("READY", Duration::from_secs(10));
    leaker.wait_for_line("DONE 4", Duration::from_secs(10));
    let leaked = std::fs::read_dir(format!("/proc/{}/fd", leaker.pid()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| *target == file)
        .count();
    assert_eq!(leaked, 4);
    let mut steady = Fixture::spawn(&bin, &["steady", "20", "0"]);
    steady.wait_for_line("READY", Duration::from_secs(10));
    let before = fd_count(steady.pid()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(fd_count(steady.pid()).unwrap(), before);
    leaker.close_stdin();
    assert!(
        leaker
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
}

/// serve_leak sets its soft descriptor limit, and holds N more descriptors after each "go N".
#[test]
fn serve_leak_keeps_each_batch() {
    let bin = build_fixture("serve_leak", &[]);
    let file = unique_dir(None, "serve-leak-fixture").join("leaked.conf");
    std::fs::write(&file, "x=1\n").unwrap();
    let mut fixture = Fixture::spawn(&bin, &["777", file.to_str().unwrap()]);
    fixture.wait_for_line("READY", Duration::from_secs(10));
    let pid = fixture.pid();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    assert_eq!(soft, "777", "{limits}");
    let before = fd_count(pid).unwrap();
    fixture.send_line("go 4");
    assert_eq!(
        fixture.wait_for_line("DONE ", Duration::from_secs(10)),
        "DONE 4"
    );
    fixture.send_line("go 3");
    assert_eq!(
        fixture.wait_for_line("DONE ", Duration::from_secs(10)),
        "DONE 7"
    );
    assert_eq!(fd_count(pid).unwrap(), before + 7);
}

/// py_leak.py: in `wait` mode it holds COUNT more descriptors of PATH after DONE and exits 0
/// on stdin EOF; in `exit` mode it exits 0 by itself; a bad mode is a usage error.
#[test]
fn py_leak_holds_what_it_says_in_both_modes() {
    let python = "/usr/bin/python3";
    let script = tracer_tests::workspace_dir().join("tests/fixtures/py_leak.py");
    let script = script.to_str().unwrap();
    let file = unique_dir(None, "py-leak-fixture").join("cache.bin");
    std::fs::write(&file, "x").unwrap();
    let file = std::fs::canonicalize(&file).unwrap();
    let path = file.to_str().unwrap();
    let on_file = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| *target == file)
            .count()
    };

    let mut waiting = Fixture::spawn(python, &[script, "wait", path, "3"]);
    waiting.wait_for_line("READY", Duration::from_secs(30));
    assert_eq!(on_file(waiting.pid()), 0);
    waiting.send_line("go");
    assert_eq!(
        waiting.wait_for_line("DONE ", Duration::from_secs(30)),
        "DONE 3"
    );
    assert_eq!(on_file(waiting.pid()), 3);
    waiting.close_stdin();
    let status = waiting
        .wait_exit(Duration::from_secs(30))
        .expect("exit on EOF");
    assert!(status.success(), "{status}");

    let mut exiting = Fixture::spawn(python, &[script, "exit", path, "3"]);
    let status = exiting.wait_exit(Duration::from_secs(30)).expect("exits");
    assert!(status.success(), "{status}");
    let mut bad = Fixture::spawn(python, &[script, "stay", path, "3"]);
    let status = bad.wait_exit(Duration::from_secs(30)).expect("exits");
    assert_eq!(status.code(), Some(2));
}

/// two_callers keeps every K-th descriptor of each caller's N opens, and closes the rest.
#[test]
fn two_callers_keeps_what_it_says() {
    let bin = build_fixture("two_callers", &["-O2", "-fomit-frame-pointer"]);
    let file = unique_dir(None, "two-callers-fixture").join("data");
    std::fs::write(&file, "x").unwrap();
    let mut fixture = Fixture::spawn(&bin, &[file.to_str().unwrap()]);
    fixture.wait_for_line("READY", Duration::from_secs(10));
    let before = fd_count(fixture.pid()).unwrap();
    fixture.send_line("round 100 0");
    assert_eq!(
        fixture.wait_for_line("ROUND", Duration::from_secs(10)),
        "ROUND a=0 b=0"
    );
    assert_eq!(fd_count(fixture.pid()).unwrap(), before);
    fixture.send_line("round 100 10");
    assert_eq!(
        fixture.wait_for_line("ROUND", Duration::from_secs(10)),
        "ROUND a=10 b=10"
    );
    assert_eq!(fd_count(fixture.pid()).unwrap(), before + 20);
    fixture.close_stdin();
    assert!(
        fixture
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
}
