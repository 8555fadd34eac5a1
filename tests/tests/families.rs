//! Every way a descriptor is born, copied and dies: the tracer's tables must match what the
//! processes really hold, descriptor for descriptor.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use tracer_tests::{
    ATTACH_TIMEOUT, Descriptor, Filter, Fixture, Report, Tracer, build_fixture, require_root,
    unique_dir,
};

/// How long two periodic /proc passes of the tracer may take: one every 2 s at least, spaced
/// out to take 2% of the time, and the test VM's guests are 5-20 times slower.
const RECONCILED_TIMEOUT: Duration = Duration::from_secs(120);

/// What the fixture says it holds: fd → (kind, opened_by, detail fragment or "-").
type Holdings = BTreeMap<u64, (String, String, String)>;

#[track_caller]
fn holdings(lines: &[String]) -> (Holdings, BTreeSet<u64>, Vec<String>) {
    let mut held = Holdings::new();
    let mut gone = BTreeSet::new();
    let mut skipped = Vec::new();
    for line in lines {
        // The detail (last) may hold spaces.
        let words: Vec<&str> = line.splitn(5, ' ').collect();
        match words.as_slice() {
            ["HOLD", fd, kind, by, detail] => {
                let fd = fd.parse().unwrap();
                held.insert(fd, (kind.to_string(), by.to_string(), detail.to_string()));
                gone.remove(&fd);
            }
            ["GONE", fd] => {
                let fd = fd.parse().unwrap();
                gone.insert(fd);
                held.remove(&fd);
            }
            ["SKIP", name, errno] => skipped.push(format!("{name} (errno {errno})")),
            _ => {}
        }
    }
    (held, gone, skipped)
}

/// The descriptors /proc shows for `pid`, by number.
#[track_caller]
fn proc_fds(pid: u32) -> BTreeSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// `pid`'s descriptors in the report (not those held at exit), by number.
#[track_caller]
fn report_fds(report: &Report, pid: u32) -> BTreeMap<u64, Descriptor<'_>> {
    let mut table = BTreeMap::new();
    for d in report.descriptors(&Filter::new().pid(pid).at_exit(false)) {
        table.insert(d.fd(), d);
    }
    table
}

/// `pid`'s table in the report, asserted equal to what /proc showed (`truth`).
#[track_caller]
fn table_as_in_proc<'r>(
    report: &'r Report,
    pid: u32,
    truth: &BTreeSet<u64>,
    who: &str,
) -> BTreeMap<u64, Descriptor<'r>> {
    let table = report_fds(report, pid);
    assert_eq!(
        &table.keys().copied().collect::<BTreeSet<_>>(),
        truth,
        "{who}'s table differs from /proc\n{}",
        report.context()
    );
    table
}

/// Whether a descriptor of `table` refers to a path ending in `suffix`.
fn holds(table: &BTreeMap<u64, Descriptor<'_>>, suffix: &str) -> bool {
    table
        .values()
        .any(|d| d.detail().is_some_and(|s| s.ends_with(suffix)))
}

fn field<'a>(d: &Descriptor<'a>, key: &str) -> &'a serde_json::Value {
    &d.v[key]
}

/// What a run of the fd_families fixture leaves to check: its pids, what it says the parent
/// holds and closed, what /proc showed just before the tracer stopped, and the report. The
/// fixture stays alive (it is killed when this is dropped).
struct FamiliesRun {
    fixture: Fixture,
    /// The parent: the fixture itself.
    parent: u32,
    /// The child that exec'd and sleeps.
    exec_child: u32,
    /// The child that opened relative paths after chdir, then exited.
    exited: u32,
    /// The child cloned with CLONE_FILES that unshared its table.
    sharer: u32,
    held: Holdings,
    gone: BTreeSet<u64>,
    parent_truth: BTreeSet<u64>,
    exec_child_truth: BTreeSet<u64>,
    sharer_truth: BTreeSet<u64>,
    report: Report,
}

/// Runs fd_families in `dir` under the tracer until it printed DONE, reads /proc for its
/// processes, and stops the tracer.
#[track_caller]
fn run_families(dir: &str) -> FamiliesRun {
    let bin = build_fixture("fd_families", &[]);
    let mut fixture = Fixture::spawn(&bin, &[dir]);
    fixture.wait_for_line("READY", Duration::from_secs(10));
    let parent = fixture.pid();
    // The reconciliation's log says when /proc taught it a descriptor without an event.
    let args: Vec<String> = [
        "--json",
        "--pid",
        &parent.to_string(),
        "--at-exit-descriptors",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut tracer = Tracer::spawn(&args, &[("RUST_LOG", "tracer::session::reconcile=info")]);
    tracer.wait_attached(ATTACH_TIMEOUT);
    fixture.send_line("go");
    let done = fixture.wait_for_line("DONE ", Duration::from_secs(30));
    let lines = fixture.lines_seen().to_vec();
    let (held, gone, skipped) = holdings(&lines);
    assert_eq!(
        done.split_whitespace().nth(1).and_then(|n| n.parse().ok()),
        Some(held.len()),
        "{lines:?}"
    );
    let pid_after = |prefix: &str| -> u32 {
        let line = lines.iter().find(|l| l.starts_with(prefix)).expect(prefix);
        line[prefix.len()..].trim().parse().unwrap()
    };
    let exec_child = pid_after("CHILD ");
    let exited = pid_after("EXITED ");
    let sharer = pid_after("SHARER ");
    if !skipped.is_empty() {
        eprintln!("families this kernel refused: {skipped:?}");
    }
    // The descriptor received by recvmmsg has no tracepoint: it is reported once two /proc
    // listings agree on it (one at the end would do, the periodic ones come every 2 s or
    // more). Until those of the periodic passes did, in the parent and in the CLONE_FILES
    // child, which copied the parent's table when it unshared (a fixed sleep was too short
    // in the test VM, where passes are spaced out by their cost).
    for pid in [parent, sharer] {
        let learned = format!("pid {pid}: /proc shows ");
        tracer.wait_for_stderr(&learned, RECONCILED_TIMEOUT, |line| line.contains(&learned));
    }
    let parent_truth = proc_fds(parent);
    let exec_child_truth = proc_fds(exec_child);
    let sharer_truth = proc_fds(sharer);
    let report = tracer.stop();
    FamiliesRun {
        fixture,
        parent,
        exec_child,
        exited,
        sharer,
        held,
        gone,
        parent_truth,
        exec_child_truth,
        sharer_truth,
        report,
    }
}

/// One fixture creates every family (pipe, socketpair, eventfd, epoll, timerfd, signalfd,
/// memfd, pidfd, pidfd_getfd, inotify, fanotify, userfaultfd, io_uring, perf_event,
/// open_by_handle_at), copies with dup, dup2 over an open fd and fcntl, closes a block with
/// close_range, rotates a log away, receives descriptors over a unix socket (recvmsg,
/// recvmmsg), marks
/// descriptors close-on-exec every way there is and forks a child that execs. Afterwards:
/// - the parent's table equals /proc/PID/fd, and each descriptor it created has the kind and
///   syscall the fixture says;
/// - the exec'd child's table equals its /proc/PID/fd (close-on-exec ones gone, the one
///   whose flag F_SETFD cleared kept);
/// - the rotated log is `deleted`; the descriptor received by recvmsg is known from its
///   event, the one received by recvmmsg (not probed) is learned by reconciliation;
/// - a child cloned with CLONE_FILES that unshared its table holds exactly its copy;
/// - a child that opened relative paths after chdir holds them at exit as absolute paths,
///   a name that is not UTF-8 escaped and a path longer than the capture cut and flagged.
#[test]
fn every_family_is_tracked_exactly() {
    require_root();
    let dir = unique_dir(None, "families");
    let dir_text = dir.to_str().expect("utf-8 scratch dir").to_string();
    let mut run = run_families(&dir_text);

    assert_only_unprobed_births_reconciled(&run.report);
    assert_parent_table(&run);
    assert_exec_child_table(&run);
    assert_sharer_table(&run);
    assert_paths_held_at_exit(&run.report, run.exited, &dir_text);

    run.fixture.close_stdin();
    let _ = run.fixture.wait_exit(Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The events alone kept the tables right: /proc had to correct nothing but the one
/// birth that is not probed (the descriptor received with recvmmsg, in the parent and in
/// the copy of its table the CLONE_FILES child took after it arrived).
#[track_caller]
fn assert_only_unprobed_births_reconciled(report: &Report) {
    let ctx = report.context();
    let events = &report.json["events"];
    assert_eq!(events["lost"], 0, "{ctx}");
    assert_eq!(events["reconciled_closed"], 0, "{ctx}");
    let reconciled: Vec<Descriptor<'_>> = report
        .open_descriptors()
        .into_iter()
        .filter(|d| field(d, "learned_by") == "reconciliation")
        .collect();
    assert!(
        reconciled
            .iter()
            .all(|d| d.detail().is_some_and(|s| s.ends_with("/passed.txt"))),
        "{reconciled:?}\n{ctx}"
    );
    assert_eq!(events["reconciled_opened"], reconciled.len(), "{ctx}");
}

/// The parent's table is /proc's, without what the fixture closed, and each descriptor the
/// fixture holds has the kind, syscall, detail and origin it says; the rotated log is
/// `deleted`.
#[track_caller]
fn assert_parent_table(run: &FamiliesRun) {
    let report = &run.report;
    let ctx = report.context();
    let in_parent = table_as_in_proc(report, run.parent, &run.parent_truth, "the parent");
    for fd in &run.gone {
        assert!(!in_parent.contains_key(fd), "fd {fd} was closed\n{ctx}");
    }
    let mut wrong = Vec::new();
    for (fd, (kind, by, detail)) in &run.held {
        let Some(d) = in_parent.get(fd) else {
            wrong.push(format!("fd {fd} ({kind} by {by}) missing"));
            continue;
        };
        let shown = d.detail().unwrap_or_default();
        let learned = field(d, "learned_by").as_str().unwrap_or_default();
        let expected_learned = if by == "unknown" {
            "reconciliation"
        } else {
            "event"
        };
        if d.kind() != kind
            || d.opened_by() != by
            || (detail != "-" && !shown.contains(detail.as_str()))
            || learned != expected_learned
        {
            wrong.push(format!(
                "fd {fd}: expected {kind} by {by} ({detail}, {expected_learned}), got {} by {} ({shown}, {learned})",
                d.kind(),
                d.opened_by()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}\n{ctx}", wrong.join("\n"));
    let rotated = in_parent
        .values()
        .find(|d| d.detail().is_some_and(|s| s.contains("app.log.1")))
        .unwrap_or_else(|| panic!("no rotated log\n{ctx}"));
    assert_eq!(field(rotated, "deleted"), true, "{rotated:?}\n{ctx}");
}

/// The exec'd child holds what survived exec (close-on-exec ones gone, the one whose flag
/// F_SETFD cleared kept), and opened nothing itself.
#[track_caller]
fn assert_exec_child_table(run: &FamiliesRun) {
    let report = &run.report;
    let ctx = report.context();
    let in_child = table_as_in_proc(
        report,
        run.exec_child,
        &run.exec_child_truth,
        "the exec'd child",
    );
    assert!(
        holds(&in_child, "/plain.txt") && holds(&in_child, "/unset.txt"),
        "{ctx}"
    );
    for name in ["/cloexec.txt", "/setfd.txt", "/ranged.txt", "/passed.txt"] {
        assert!(
            !holds(&in_child, name),
            "{name} should have closed at exec\n{ctx}"
        );
    }
    for d in in_child.values() {
        assert!(
            matches!(d.opened_by(), "inherited" | "pre-existing"),
            "the child opened nothing itself: {d:?}\n{ctx}"
        );
    }
}

/// The CLONE_FILES child opened shared.txt in our table (we closed it), then unshared:
/// its own copy has both shared.txt and private.txt.
#[track_caller]
fn assert_sharer_table(run: &FamiliesRun) {
    let report = &run.report;
    let ctx = report.context();
    let in_sharer = report_fds(report, run.sharer);
    assert_eq!(
        in_sharer.keys().copied().collect::<BTreeSet<_>>(),
        run.sharer_truth,
        "the CLONE_FILES child's table differs from /proc\n{ctx}"
    );
    let sharer_has = |name: &str| {
        in_sharer
            .values()
            .any(|d| d.detail().is_some_and(|s| s.ends_with(name)))
    };
    assert!(
        sharer_has("/shared.txt") && sharer_has("/private.txt"),
        "{ctx}"
    );
}

/// Resolved against the directory chdir went to, as the events said (the child is gone,
/// so nothing was refreshed from /proc): a non-UTF-8 byte as an escape, a long path cut
/// at the 256-byte capture and flagged.
#[track_caller]
fn assert_paths_held_at_exit(report: &Report, exited: u32, dir_text: &str) {
    let ctx = report.context();
    let held_at_exit = report.descriptors(&Filter::new().pid(exited).at_exit(true));
    let mut details: Vec<(String, bool)> = held_at_exit
        .iter()
        .map(|d| {
            let detail = d.detail().unwrap_or_default().to_string();
            (detail, field(d, "path_truncated") == true)
        })
        .collect();
    details.sort();
    let long_prefix = format!("{dir_text}/{}/{}", "d".repeat(200), "0".repeat(54));
    assert_eq!(
        details,
        vec![
            (format!("{dir_text}/bad-\\xff.txt"), false),
            (long_prefix, true),
            (format!("{dir_text}/relative.txt"), false),
        ],
        "{ctx}"
    );
}
