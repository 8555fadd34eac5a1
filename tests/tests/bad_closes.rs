//! Closes of descriptors that were not open (`bad_closes`): a double close from two
//! functions, a stale close of a number another thread reused (both threads' stacks named),
//! and close_range over holes, which is not an error. The kernel's word is the errno the
//! fixture's close got.

use std::time::Duration;

use serde_json::Value;
use tracer_common::HELD_SLOTS;
use tracer_tests::{
    ATTACH_TIMEOUT, Fixture, Report, Tracer, build_fixture, fd_count, frames_symbols, require_root,
    symbol_is,
};

/// Runs `bad_close MODE` under the tracer until its DONE line; returns the line's words, the
/// fixture (still alive) and the report.
#[track_caller]
fn run(mode: &str) -> (Vec<String>, Fixture, Report, usize) {
    let bin = build_fixture("bad_close", &[]);
    let mut fixture = Fixture::spawn(&bin, &[mode]);
    fixture.wait_for_line("READY", Duration::from_secs(10));
    let mut tracer = Tracer::attach(fixture.pid(), &[]);
    tracer.wait_attached(ATTACH_TIMEOUT);
    fixture.send_line("go");
    let done = fixture.wait_for_line("DONE ", Duration::from_secs(30));
    let open_now = fd_count(fixture.pid()).expect("the fixture's /proc/PID/fd");
    let report = tracer.stop();
    let words = done.split_whitespace().map(str::to_owned).collect();
    (words, fixture, report, open_now)
}

/// The value after `key` on the DONE line.
#[track_caller]
fn field(words: &[String], key: &str) -> i64 {
    let at = words
        .iter()
        .position(|w| w == key)
        .unwrap_or_else(|| panic!("no {key} in {words:?}"));
    words[at + 1].parse().expect("a number")
}

/// The `bad_closes` groups of `pid`.
#[track_caller]
fn groups_of(report: &Report, pid: u32) -> Vec<&Value> {
    let ctx = report.context();
    report.json["bad_closes"]
        .as_array()
        .unwrap_or_else(|| panic!("no bad_closes array\n{ctx}"))
        .iter()
        .filter(|g| {
            g["pids"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p.as_u64() == Some(u64::from(pid))))
        })
        .collect()
}

#[track_caller]
fn has_frame(stack: &Value, name: &str) -> bool {
    frames_symbols(stack).iter().any(|s| symbol_is(s, name))
}

/// open_config opens, release_config closes, shutdown_config closes again and gets EBADF:
/// one failed close, from shutdown_config's stack (not release_config's), whose number's
/// previous life is the /dev/null that open_config opened and this thread closed. Then
/// redirect_config's dup2 from that number fails too: a second group, with the same life.
#[test]
fn double_close_from_two_functions() {
    require_root();
    let (report, pid, fd) = run_double("double");
    assert_double_close_explained(&report, pid, fd, "/dev/null");
}

/// Runs a double-close mode; checks that both the second close and the dup2 failed with
/// EBADF, and returns the report, the fixture's pid and the number.
#[track_caller]
fn run_double(mode: &str) -> (Report, u32, i64) {
    let (done, fixture, report, _) = run(mode);
    assert_eq!(
        field(&done, "errno"),
        9,
        "the second close must fail with EBADF"
    );
    assert_eq!(
        field(&done, "dup2_errno"),
        9,
        "the dup2 must fail with EBADF"
    );
    (report, fixture.pid(), field(&done, "fd"))
}

/// The two failures of a double close (close, then dup2 from the number) are two groups,
/// from shutdown_config and redirect_config, each with the number's previous life: the
/// file (`path`) that open_config opened and this thread closed.
#[track_caller]
fn assert_double_close_explained(report: &Report, pid: u32, fd: i64, path: &str) {
    let ctx = report.context();
    let groups = groups_of(report, pid);
    assert_eq!(groups.len(), 2, "the close and the dup2\n{ctx}");
    let dup2 = groups
        .iter()
        .find(|g| has_frame(&g["stack"], "redirect_config"))
        .unwrap_or_else(|| panic!("no group from redirect_config\n{ctx}"));
    assert_eq!(dup2["syscalls"]["dup2"].as_u64(), Some(1), "{ctx}");
    assert_eq!(dup2["closes"][0]["fd"].as_i64(), Some(fd), "{ctx}");
    let dup2_life = &dup2["closes"][0]["previous_lives"][0];
    assert!(has_frame(&dup2_life["stack"], "open_config"), "{ctx}");
    let group = groups
        .iter()
        .find(|g| has_frame(&g["stack"], "shutdown_config"))
        .unwrap_or_else(|| panic!("no group from shutdown_config\n{ctx}"));
    assert_eq!(group["count"].as_u64(), Some(1), "{ctx}");
    assert_eq!(group["syscalls"]["close"].as_u64(), Some(1), "{ctx}");
    assert_eq!(group["suspected_stale"].as_u64(), Some(0), "{ctx}");
    assert!(!has_frame(&group["stack"], "release_config"), "{ctx}");

    let close = &group["closes"][0];
    assert_eq!(close["fd"].as_i64(), Some(fd), "{ctx}");
    assert_eq!(close["tid"].as_u64(), Some(u64::from(pid)), "{ctx}");
    let life = &close["previous_lives"][0];
    assert_eq!(life["detail"].as_str(), Some(path), "{ctx}");
    assert_eq!(life["opened_by"].as_str(), Some("openat"), "{ctx}");
    assert_eq!(life["closed_by"].as_str(), Some("close"), "{ctx}");
    assert_eq!(life["closer_tid"].as_u64(), Some(u64::from(pid)), "{ctx}");
    assert!(has_frame(&life["stack"], "open_config"), "{ctx}");
}

/// The same double close after 300 open+close cycles of /dev/null from one stack, 1 ms
/// apart, of a /dev/zero opened from that stack: by then the kernel knows the stack, holds
/// the open back and settles it with its close, sending neither. The close that fails right
/// after must still be explained by that life.
#[test]
fn double_close_after_a_pair_the_kernel_settled_is_explained() {
    require_root();
    let (report, pid, fd) = run_double("double_warm");
    let ctx = report.context();
    let paired = report.events_paired_in_kernel();
    assert!(
        paired >= 100,
        "only {paired} pairs settled in the kernel\n{ctx}"
    );
    // /dev/zero's life, not one of the cycles' /dev/null that userspace saw before the
    // kernel knew their stack.
    assert_double_close_explained(&report, pid, fd, "/dev/zero");
}

/// After the same cycles, one more open from that stack stays open while the process does
/// nothing the tracer sees: the kernel holds it back, and the report still has it, with its
/// stack, as the one descriptor the fixture created and kept.
#[test]
fn an_open_held_back_in_the_kernel_is_reported_with_its_stack() {
    require_root();
    let (done, fixture, report, _) = run("keep_warm");
    let ctx = report.context();
    let (pid, fd) = (fixture.pid(), field(&done, "fd"));
    let paired = report.events_paired_in_kernel();
    assert!(
        paired >= 100,
        "only {paired} pairs settled in the kernel\n{ctx}"
    );
    assert_kept_warm_open(&report, pid, fd);
}

/// The one descriptor `pid` created and kept is `fd`, the /dev/zero that `keep_warm` opened
/// last from its warm stack, reported with that stack.
#[track_caller]
fn assert_kept_warm_open(report: &Report, pid: u32, fd: i64) {
    let ctx = report.context();
    let created: Vec<_> = report
        .open_descriptors()
        .into_iter()
        .filter(|d| d.pid() == pid && d.opened_by() != "pre-existing")
        .collect();
    assert_eq!(created.len(), 1, "pid {pid} kept one descriptor\n{ctx}");
    let kept = &created[0];
    assert_eq!(kept.fd(), fd as u64, "{ctx}");
    assert_eq!(kept.detail(), Some("/dev/zero"), "{ctx}");
    assert_eq!(kept.opened_by(), "openat", "{ctx}");
    assert!(kept.has_frame("open_config"), "pid {pid}\n{ctx}");
    assert!(kept.has_frame("warm_cycle"), "pid {pid}\n{ctx}");
    assert!(kept.has_frame("warm_up"), "pid {pid}\n{ctx}");
}

/// Two followed processes whose tgids name the same held-open slot (they differ by
/// HELD_SLOTS: the fixture's second run gets its pid through ns_last_pid) run the warm-up
/// cycles at once and both keep their last open: the slot belongs to one of them, the other
/// sends its opens as they happen, and each keeps exactly its /dev/zero, with its stack.
#[test]
fn two_processes_that_name_one_held_slot_both_report_what_they_keep() {
    require_root();
    let bin = build_fixture("bad_close", &[]);
    let mut first = Fixture::spawn(&bin, &["keep_warm"]);
    first.wait_for_line("READY", Duration::from_secs(10));
    let mut second = Fixture::spawn_as_pid(&bin, &["keep_warm"], colliding_pid(first.pid()));
    second.wait_for_line("READY", Duration::from_secs(10));
    let second_pid = second.pid().to_string();
    let mut tracer = Tracer::attach(first.pid(), &["--pid", &second_pid]);
    tracer.wait_attached(ATTACH_TIMEOUT);
    first.send_line("go");
    second.send_line("go");
    let dones = [
        first.wait_for_line("DONE ", Duration::from_secs(30)),
        second.wait_for_line("DONE ", Duration::from_secs(30)),
    ];
    let report = tracer.stop();
    let ctx = report.context();
    for (fixture, done) in [&first, &second].into_iter().zip(dones) {
        let words: Vec<String> = done.split_whitespace().map(str::to_owned).collect();
        assert_kept_warm_open(&report, fixture.pid(), field(&words, "fd"));
    }
    assert_eq!(report.json["events"]["reconciled_opened"], 0, "{ctx}");
    assert_eq!(report.json["events"]["reconciled_closed"], 0, "{ctx}");
    assert!(report.events_paired_in_kernel() >= 100, "{ctx}");
}

/// A free pid that names the same held slot as `pid` (a multiple of HELD_SLOTS away, under
/// pid_max and above the 300 the kernel keeps when it wraps around).
#[track_caller]
fn colliding_pid(pid: u32) -> u32 {
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .expect("/proc/sys/kernel/pid_max")
        .trim()
        .parse()
        .expect("a number");
    (1..=pid_max / HELD_SLOTS)
        .flat_map(|k| {
            [
                pid.checked_add(k * HELD_SLOTS),
                pid.checked_sub(k * HELD_SLOTS),
            ]
        })
        .flatten()
        .find(|&p| p > 300 && p < pid_max && !std::path::Path::new(&format!("/proc/{p}")).exists())
        .unwrap_or_else(|| panic!("no free pid names the held slot of {pid}"))
}

/// A process that shares its descriptor table with another one (a clone with CLONE_FILES,
/// not a thread) never holds an open back: the other process's close of that number would
/// reach the tracer before the open it closes. Here the parent's last open from the warm
/// stack stays open until its child closes it in the shared table: the report must not
/// have it open, and the tracer must not have needed /proc to find that out.
#[test]
fn an_open_another_process_closes_in_a_shared_table_is_not_held_back() {
    require_root();
    let (done, fixture, report, _) = run("share_warm");
    let ctx = report.context();
    assert_eq!(
        field(&done, "close_ret"),
        0,
        "the child's close must succeed"
    );
    let (pid, fd) = (fixture.pid(), field(&done, "fd"));
    let still_open: Vec<_> = report
        .open_descriptors()
        .into_iter()
        .filter(|d| d.pid() == pid && d.fd() == fd as u64)
        .collect();
    assert!(
        still_open.is_empty(),
        "fd {fd} was closed by the child: {still_open:?}\n{ctx}"
    );
    assert_eq!(report.json["events"]["reconciled_closed"], 0, "{ctx}");
    assert_eq!(report.json["events"]["reconciled_opened"], 0, "{ctx}");
}

/// The culprit thread closes its number twice; in between the victim thread got that number
/// (the fixture checks it did). The culprit's stale close succeeds, so it is not a failed
/// close; the victim's own close fails and is reported from victim_close, suspected stale,
/// with the number's two previous lives: the victim's (opened in victim_open, closed by the
/// culprit) and before it the culprit's (opened in culprit_open).
#[test]
fn stale_close_of_a_reused_number_names_both_stacks() {
    require_root();
    let (done, fixture, report, _) = run("stale");
    let ctx = report.context();
    assert_eq!(
        field(&done, "reused"),
        1,
        "the victim must reuse the number"
    );
    assert_eq!(field(&done, "stale_ret"), 0, "the stale close must succeed");
    assert_eq!(field(&done, "errno"), 9, "the victim's close must fail");
    let (fd, culprit, victim) = (
        field(&done, "fd"),
        field(&done, "culprit_tid"),
        field(&done, "victim_tid"),
    );

    let groups = groups_of(&report, fixture.pid());
    assert_eq!(groups.len(), 1, "only the victim's close failed\n{ctx}");
    let group = groups[0];
    assert!(has_frame(&group["stack"], "victim_close"), "{ctx}");
    assert_eq!(group["count"].as_u64(), Some(1), "{ctx}");
    assert_eq!(group["suspected_stale"].as_u64(), Some(1), "{ctx}");

    let close = &group["closes"][0];
    assert_eq!(close["fd"].as_i64(), Some(fd), "{ctx}");
    assert_eq!(close["tid"].as_i64(), Some(victim), "{ctx}");
    assert_eq!(close["suspected_stale"].as_bool(), Some(true), "{ctx}");
    let lives = close["previous_lives"]
        .as_array()
        .unwrap_or_else(|| panic!("no previous_lives\n{ctx}"));
    assert_eq!(lives.len(), 2, "{ctx}");
    let (victims, culprits) = (&lives[0], &lives[1]);
    assert_eq!(victims["detail"].as_str(), Some("/tmp"), "{ctx}");
    assert_eq!(victims["opener_tid"].as_i64(), Some(victim), "{ctx}");
    assert_eq!(victims["closer_tid"].as_i64(), Some(culprit), "{ctx}");
    assert!(has_frame(&victims["stack"], "victim_open"), "{ctx}");
    assert_eq!(culprits["detail"].as_str(), Some("/dev/null"), "{ctx}");
    assert_eq!(culprits["opener_tid"].as_i64(), Some(culprit), "{ctx}");
    assert_eq!(culprits["closer_tid"].as_i64(), Some(culprit), "{ctx}");
    assert!(has_frame(&culprits["stack"], "culprit_open"), "{ctx}");
}

/// close_range over a block with holes, and past its end, fails nothing: no failed close is
/// reported, and what the report holds open is what /proc lists.
#[test]
fn close_range_over_holes_is_not_a_failed_close() {
    require_root();
    let (done, fixture, report, open_now) = run("range");
    let ctx = report.context();
    assert_eq!(field(&done, "ret"), 0);
    assert!(groups_of(&report, fixture.pid()).is_empty(), "{ctx}");
    let held = report
        .open_descriptors()
        .into_iter()
        .filter(|d| d.pid() == fixture.pid())
        .count();
    assert_eq!(held, open_now, "{ctx}");
}
