//! A correct but busy process: no false leaks and no lost events under load.

use std::time::Duration;

use tracer_tests::{
    ATTACH_TIMEOUT, Fixture, Report, Tracer, build_fixture, fd_count, require_root, signal,
};

const TOTAL: u64 = 100_000;
const THREADS: &str = "4";

/// Parses "DONE <fds> calls=<n> cross_thread=<m>" into (fds, calls, cross_thread).
#[track_caller]
fn parse_done(line: &str) -> (u64, u64, u64) {
    let mut fds = None;
    let mut calls = None;
    let mut cross = None;
    for (i, tok) in line.split_whitespace().enumerate() {
        if i == 1 {
            fds = tok.parse().ok();
        } else if let Some(n) = tok.strip_prefix("calls=") {
            calls = n.parse().ok();
        } else if let Some(n) = tok.strip_prefix("cross_thread=") {
            cross = n.parse().ok();
        }
    }
    match (fds, calls, cross) {
        (Some(f), Some(c), Some(x)) => (f, c, x),
        _ => panic!("bad DONE line from busy_churn: {line:?}"),
    }
}

/// 100 000 descriptors opened and closed across 4 threads (a third closed by another thread
/// than the opener) give no leak, no lost event, and at least one event per open and close.
#[test]
fn busy_churn_reports_no_leaks_and_no_loss() {
    require_root();
    let bin = build_fixture("busy_churn", &[]);
    let mut churn = Fixture::spawn(&bin, &[&TOTAL.to_string(), THREADS]);
    churn.wait_for_line("READY", Duration::from_secs(10));
    let pid = churn.pid();
    let baseline = fd_count(pid).expect("fd count before the churn");

    let mut tracer = Tracer::attach(pid, &[]);
    tracer.wait_attached(ATTACH_TIMEOUT);

    churn.send_line("go");
    let done = churn.wait_for_line("DONE ", Duration::from_secs(300));
    let (fds, calls, cross) = parse_done(&done);
    assert!(
        fds >= TOTAL,
        "the fixture opened only {fds} descriptors: {done:?}"
    );
    assert!(
        cross > 0,
        "no descriptor was closed on another thread: {done:?}"
    );
    assert_eq!(
        fd_count(pid).expect("fd count after the churn"),
        baseline,
        "the fixture itself leaked"
    );

    let report = tracer.stop();
    let ctx = report.context();

    assert_no_false_leaks(&report, pid);
    assert_eq!(
        report.events_lost(),
        0,
        "events lost under load; events: {}",
        report.json["events"]
    );
    // One event per creating syscall (a pipe() is one call for two descriptors) and one per
    // close, counting the pairs the kernel settled without sending; more (forks, thread
    // starts, ...) is fine.
    let emitted = report.events_emitted();
    assert!(
        emitted >= calls + fds,
        "events received + lost + 2 x paired = {emitted}, expected at least {calls} opens + \
         {fds} closes\n\
         report:\n{ctx}"
    );
    let proc = report
        .process(pid)
        .unwrap_or_else(|| panic!("the fixture {pid} is not in processes\nreport:\n{ctx}"));
    assert!(!proc.exited(), "the fixture is alive: {proc:?}");

    churn.close_stdin();
    let status = churn
        .wait_exit(Duration::from_secs(10))
        .expect("busy_churn did not exit after stdin EOF");
    assert!(status.success(), "busy_churn exited with {status}");
}

/// Nothing the fixture opened is reported open: it closed everything, and it is alive.
#[track_caller]
fn assert_no_false_leaks(report: &Report, pid: u32) {
    let leaks: Vec<_> = report
        .open_descriptors()
        .into_iter()
        .filter(|d| d.pid() == pid && d.opened_by() != "pre-existing")
        .collect();
    assert!(
        leaks.is_empty(),
        "false leaks in a process that closed everything: {} of them, e.g. {:#?}",
        leaks.len(),
        &leaks[..leaks.len().min(10)]
    );
    let at_exit: Vec<_> = report
        .open_descriptors()
        .into_iter()
        .filter(|d| d.at_exit())
        .collect();
    assert!(at_exit.is_empty(), "at_exit descriptors: {at_exit:#?}");
}

/// With the tracer frozen (SIGSTOP) while the fixture churns, a 1 MiB ring buffer overflows:
/// every event is either received or counted lost, and the closes that were lost do not turn
/// into leaks (the report reconciles against /proc).
#[test]
fn overflowing_the_ring_buffer_counts_losses_and_reports_no_false_leaks() {
    require_root();
    let bin = build_fixture("busy_churn", &[]);
    let mut churn = Fixture::spawn(&bin, &[&TOTAL.to_string(), THREADS]);
    churn.wait_for_line("READY", Duration::from_secs(10));
    let pid = churn.pid();

    let mut tracer = Tracer::attach(pid, &["--ring-buffer-mib", "1"]);
    tracer.wait_attached(ATTACH_TIMEOUT);
    signal(tracer.pid() as i32, libc::SIGSTOP);
    churn.send_line("go");
    let done = churn.wait_for_line("DONE ", Duration::from_secs(300));
    signal(tracer.pid() as i32, libc::SIGCONT);
    let (fds, _, _) = parse_done(&done);

    let report = tracer.stop();
    let ctx = report.context();
    let events = &report.json["events"];
    let lost = events["lost_ring_buffer_full"]
        .as_u64()
        .expect("lost_ring_buffer_full");
    assert!(lost > 0, "the ring buffer did not overflow: {events}");
    assert_eq!(
        report.events_lost(),
        lost,
        "every loss has a cause: {events}"
    );
    // One event per descriptor born and one per close, plus a few for the threads (a pair
    // the kernel settled counts as its two events).
    let emitted = report.events_emitted();
    assert!(
        (2 * fds..=2 * fds + 16).contains(&emitted),
        "received + lost = {emitted}, expected {} (+ thread events): {events}",
        2 * fds
    );
    assert_no_false_leaks(&report, pid);
    let proc = report
        .process(pid)
        .unwrap_or_else(|| panic!("the fixture {pid} is not in processes\nreport:\n{ctx}"));
    assert!(!proc.exited(), "the fixture is alive: {proc:?}");
}
