//! Child processes and threads: zombies that nobody reaps, threads that pile up.

use std::time::Duration;

use serde_json::Value;
use tracer_tests::{
    ATTACH_TIMEOUT, Filter, Fixture, Tracer, build_fixture, frames_symbols, require_root, symbol_is,
};

/// Starts a fixture that prints READY, attaches the tracer, tells it to go, and waits for
/// its DONE line; returns the fixture and the tracer, still attached.
#[track_caller]
fn run_until_done(name: &str) -> (Fixture, Tracer) {
    let bin = build_fixture(name, &[]);
    let mut fixture = Fixture::spawn(&bin, &[]);
    fixture.wait_for_line("READY", Duration::from_secs(10));
    let mut tracer = Tracer::attach(fixture.pid(), &[]);
    tracer.wait_attached(ATTACH_TIMEOUT);
    fixture.send_line("go");
    fixture.wait_for_line("DONE ", Duration::from_secs(30));
    (fixture, tracer)
}

/// A parent that forks 5 children and never waits: 5 zombies in one group under their
/// parent, with the forking function on the fork stack; the parent itself is not one.
#[test]
fn children_never_reaped_are_reported_as_zombies() {
    require_root();
    let (fixture, tracer) = run_until_done("zombie_parent");
    let parent = fixture.pid();
    let report = tracer.stop();
    let ctx = report.context();

    let zombies = report.json["zombies"]
        .as_array()
        .unwrap_or_else(|| panic!("no zombies array\n{ctx}"));
    assert_eq!(zombies.len(), 1, "one parent, one fork site\n{ctx}");
    let group = &zombies[0];
    assert_eq!(group["ppid"].as_u64(), Some(u64::from(parent)), "{ctx}");
    assert_eq!(group["count"].as_u64(), Some(5), "{ctx}");
    assert_eq!(group["pids"].as_array().map(Vec::len), Some(5), "{ctx}");
    // Under the fork stack lie glibc's frameless _Fork and __libc_fork: the tracer unwinds
    // them from .eh_frame to reach the function that forked.
    let fork_frames = frames_symbols(&group["fork_stack"]);
    assert!(
        fork_frames.iter().any(|s| symbol_is(s, "spawn_child")),
        "the fork stack {fork_frames:?} lacks spawn_child\n{ctx}"
    );
    assert!(
        fork_frames
            .first()
            .is_some_and(|s| s.contains("Fork") || s.contains("fork")),
        "the fork stack {fork_frames:?} does not start in fork\n{ctx}"
    );
    let zombie_processes: Vec<&Value> = report.json["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter(|p| p["zombie"] == true)
        .collect();
    assert_eq!(zombie_processes.len(), 5, "{ctx}");
    assert!(
        zombie_processes
            .iter()
            .all(|p| p["exited"] == true && p["ppid"].as_u64() == Some(u64::from(parent))),
        "{ctx}"
    );
    let parent_entry = report.process(parent).expect("the parent in processes");
    assert!(!parent_entry.exited(), "{ctx}");
}

/// 20 threads started and never joined: one group of 20 live threads in the process (their
/// kernel stacks differ in frame-pointer garbage; the repaired stacks are one), whose
/// creation stack names the function that called pthread_create.
#[test]
fn threads_that_never_exit_are_grouped_by_creation_stack() {
    require_root();
    let (fixture, tracer) = run_until_done("thread_pile");
    let pid = fixture.pid();
    let report = tracer.stop();
    let ctx = report.context();

    let groups = report.json["thread_stacks"]
        .as_array()
        .unwrap_or_else(|| panic!("no thread_stacks array\n{ctx}"));
    assert_eq!(groups.len(), 1, "one creation stack\n{ctx}");
    let group = &groups[0];
    assert_eq!(group["pid"].as_u64(), Some(u64::from(pid)), "{ctx}");
    assert_eq!(group["live"].as_u64(), Some(20), "{ctx}");
    // Under the creation stack lie glibc's frameless clone3 (whose syscall has no CFI at
    // all), __clone_internal and pthread_create: unwound to reach the caller.
    let frames = frames_symbols(&group["stack"]);
    assert!(
        frames.iter().any(|s| symbol_is(s, "start_worker")),
        "the creation stack {frames:?} lacks start_worker\n{ctx}"
    );
    assert!(
        frames.len() >= 2 && symbol_is(&frames[0], "clone3"),
        "the creation stack {frames:?} does not start in clone3 and its caller\n{ctx}"
    );
    let threads = &report.json["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        .unwrap_or_else(|| panic!("the fixture is not in processes\n{ctx}"))["threads"];
    assert_eq!(threads["live"].as_u64(), Some(21), "main + 20\n{ctx}");
    assert_eq!(threads["created"].as_u64(), Some(20), "{ctx}");
    assert_eq!(threads["exited"].as_u64(), Some(0), "{ctx}");
}

/// A followed child that exited leaves its pid to whoever the kernel gives it next: an
/// unrelated process started at that pid is not followed. (Each pid is one bit of a word
/// that 63 other pids share, set at a followed fork and cleared at the exit.)
#[test]
fn a_process_that_reuses_a_followed_childs_pid_is_not_followed() {
    require_root();
    let mut shell = Fixture::spawn(
        "/bin/sh",
        &[
            "-c",
            "echo READY; read go; sleep 0 & echo CHILD $!; wait; echo DONE 1; read end",
        ],
    );
    shell.wait_for_line("READY", Duration::from_secs(10));
    let mut tracer = Tracer::attach(shell.pid(), &[]);
    tracer.wait_attached(ATTACH_TIMEOUT);
    shell.send_line("go");
    let child: u32 = shell
        .wait_for_line("CHILD ", Duration::from_secs(10))
        .trim_start_matches("CHILD ")
        .trim()
        .parse()
        .expect("the child's pid");
    shell.wait_for_line("DONE ", Duration::from_secs(10));
    // Started by the test, not by anything followed, at the pid the child had.
    let mut stranger = Fixture::spawn_as_pid(
        "/bin/sh",
        &["-c", "exec 7</dev/null; echo READY; read end"],
        child,
    );
    stranger.wait_for_line("READY", Duration::from_secs(10));
    let report = tracer.stop();
    let ctx = report.context();
    // The child was followed while it lived (exited processes are listed only when they
    // leave something to show; the counts have every one).
    assert!(
        report.json["process_counts"]["exited"].as_u64() >= Some(1),
        "the child {child} was not seen to exit\n{ctx}"
    );
    let kept = report.descriptors(&Filter::new().pid(child));
    assert!(
        kept.is_empty(),
        "pid {child} after the child exited is another process, not followed: {} of its \
         descriptors are in the report\n{ctx}",
        kept.len()
    );
}
