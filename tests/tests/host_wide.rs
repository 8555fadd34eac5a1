//! `--all`: every process on the host watched at once. Three processes, one leaking a
//! socket a second: the leaker is named leaking, ahead of the two others, which are steady;
//! its count is what /proc shows. A leaker in its own PID namespace is found with both pids;
//! `--follow-top 1` traces the leaker with stacks once it stands out; `--all` with a target
//! is refused.

use std::time::Duration;

use tracer_tests::{
    ATTACH_TIMEOUT, Filter, Fixture, Report, STOP_TIMEOUT, Tracer, build_fixture, fd_count,
    require_root, run_with_timeout, serde_json::Value, signal, tracer_command, wait_stopped,
};

const LINE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long after attach the tracer may take to say that a leaker leaks: it must have risen
/// at 3 of its looks (one a second), and a line naming it comes every 5 s; the test VM's
/// guests are 5-20 times slower.
const LEAKING_TIMEOUT: Duration = Duration::from_secs(120);

/// How many sockets `pid` holds, as /proc shows them.
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// `host.processes[]` entry of `pid`, and its rank.
#[track_caller]
fn host_entry(report: &Report, pid: u32) -> (usize, &Value) {
    report.json["host"]["processes"]
        .as_array()
        .and_then(|ps| ps.iter().enumerate().find(|(_, p)| p["pid"] == pid))
        .unwrap_or_else(|| panic!("pid {pid} not in host.processes\n{}", report.context()))
}

/// The leaker is leaking and ranked ahead of the two steady processes, which are not; its
/// descriptors are what /proc shows once it is frozen before the end; the host's files and the
/// process's limit are there.
#[test]
fn all_names_the_leaker_and_the_others_steady() {
    require_root();
    let bin = build_fixture("slow_leak", &[]);
    let mut leaker = Fixture::spawn(&bin, &["socket", "1000", "0"]);
    let mut steady = Fixture::spawn(&bin, &["steady", "20", "0"]);
    let mut idle = Fixture::spawn(&bin, &["steady", "1000", "0"]);
    for f in [&mut leaker, &mut steady, &mut idle] {
        f.wait_for_line("READY", LINE_TIMEOUT);
    }
    let mut tracer = Tracer::spawn(&["--json".into(), "--all".into()], &[]);
    tracer.wait_attached(ATTACH_TIMEOUT);
    // Until the tracer says the leaker leaks (a line every 5 s names what leaks), then the
    // leaker is frozen: what /proc shows then is what the tracer's last look, at the report,
    // counts. (A fixed --duration with a sleep before the freeze raced with the tracer's
    // looks in the test VM, and a count read after the run drifted by the leaks of the
    // tracer's exit.)
    let named = format!("pid {} (slow_leak)", leaker.pid());
    tracer.wait_for_stderr(&named, LEAKING_TIMEOUT, |line| {
        line.starts_with("tracer --all:") && line.contains(&named)
    });
    signal(leaker.pid() as i32, libc::SIGSTOP);
    wait_stopped(leaker.pid(), LINE_TIMEOUT);
    let held = fd_count(leaker.pid()).unwrap() as u64;
    signal(tracer.pid() as i32, libc::SIGINT);
    let out = tracer.wait_output(STOP_TIMEOUT);
    signal(leaker.pid() as i32, libc::SIGCONT);
    assert!(out.status.success(), "{}", out.context());
    let report = out.report();
    let (leaker_rank, entry) = host_entry(&report, leaker.pid());
    assert_eq!(entry["leaking"], true, "{}", report.context());
    assert!(
        report.json["host"]["leaking"]
            .as_array()
            .is_some_and(|l| l.contains(&Value::from(leaker.pid()))),
        "{}",
        report.context()
    );
    let counted = entry["descriptors"].as_u64().unwrap();
    assert_eq!(
        counted,
        held,
        "counted {counted}, /proc {held}\n{}",
        report.context()
    );
    assert!(entry["descriptors_per_minute"].as_f64().unwrap() > 0.0);
    assert!(
        entry["sockets_created"].as_u64().unwrap() >= 3,
        "{}",
        report.context()
    );
    assert!(entry["fd_limit"].as_u64().is_some() && entry["fd_headroom"].as_u64().is_some());
    for quiet in [&steady, &idle] {
        let (rank, entry) = host_entry(&report, quiet.pid());
        assert_eq!(entry["leaking"], false, "{}", report.context());
        assert!(rank > leaker_rank, "{}", report.context());
    }
    assert!(report.json["host"]["open_files"].as_u64().is_some());
    assert!(report.json["host"]["file_max"].as_u64().is_some());
    assert!(
        out.stderr.contains("tracer --all:")
            && out
                .stderr
                .contains(&format!("pid {} (slow_leak)", leaker.pid())),
        "no periodic line names the leaker\n{}",
        out.context()
    );
}

/// `--follow-top 1`: the leaker is traced with stacks once it stands out; the report says
/// when following began and holds the sockets it leaked since, with `leak_one` in their
/// stack.
#[test]
fn follow_top_traces_the_leaker_with_stacks() {
    require_root();
    let bin = build_fixture("slow_leak", &[]);
    // 5 a second: far ahead of anything else, and within the test VM's limit of 1024
    // descriptors while the tracer attaches there (about a minute).
    let mut leaker = Fixture::spawn(&bin, &["socket", "200", "0"]);
    leaker.wait_for_line("READY", LINE_TIMEOUT);
    let mut tracer = Tracer::spawn(
        &[
            "--json".into(),
            "--all".into(),
            "--follow-top".into(),
            "1".into(),
        ],
        &[],
    );
    tracer.wait_attached(ATTACH_TIMEOUT);
    // Once the tracer follows it, two more leaks: made after it follows, so traced.
    let following = format!("following pid {} ", leaker.pid());
    tracer.wait_for_stderr(&following, LEAKING_TIMEOUT, |line| {
        line.contains(&following)
    });
    let so_far = sockets_of(leaker.pid());
    leaker.wait_for_line(&format!("LEAK {} ", so_far + 2), LINE_TIMEOUT);
    let report = tracer.stop();
    let target = report.json["targets"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["pid"] == leaker.pid()))
        .unwrap_or_else(|| panic!("the leaker was not followed\n{}", report.context()));
    assert!(
        target["matched_by"]
            .as_str()
            .is_some_and(|m| m.starts_with("--follow-top")),
        "{}",
        report.context()
    );
    let since = target["followed_since_s"].as_f64().unwrap();
    assert!(since > 0.0, "{}", report.context());
    let (_, entry) = host_entry(&report, leaker.pid());
    assert_eq!(entry["followed_since_s"].as_f64(), Some(since));
    let traced = report.descriptors(
        &Filter::new()
            .pid(leaker.pid())
            .kind("socket")
            .opened_by(&["socket"]),
    );
    assert!(!traced.is_empty(), "{}", report.context());
    for d in &traced {
        assert!(
            d.has_frame("leak_one"),
            "{:?}\n{}",
            d.stack_symbols(),
            report.context()
        );
    }
}

/// `--all` with a pid is one line saying they do not go together.
#[test]
fn all_with_a_pid_is_refused() {
    let out = run_with_timeout(
        tracer_command(&["--all", "--pid", "1"]),
        Duration::from_secs(30),
    );
    out.assert_clean_failure(&["--all", "--pid"]);
}

/// A leaker in its own PID and mount namespace (unshare) is found by `--all` too, leaking,
/// with its host pid and its pid in the namespace (1).
#[test]
fn all_finds_a_leaker_in_its_own_namespaces() {
    require_root();
    let bin = build_fixture("slow_leak", &[]);
    let script = format!(
        "exec unshare --pid --mount --fork {} socket 300 0",
        bin.display()
    );
    let mut leaker = Fixture::spawn("sh", &["-c", &script]);
    let ready = leaker.wait_for_line("READY pid ", LINE_TIMEOUT);
    assert_eq!(ready.trim(), "READY pid 1");
    let mut tracer = Tracer::spawn(&["--json".into(), "--all".into()], &[]);
    tracer.wait_attached(ATTACH_TIMEOUT);
    // unshare (the fixture's host-side parent) forked it: its host pid is unshare's child.
    let host_pid = tracer_tests::children_of(leaker.pid())
        .into_iter()
        .next()
        .expect("unshare's child");
    // Until a line of the tracer names it leaking (one every 5 s names what leaks).
    let named = format!("pid {host_pid} (slow_leak)");
    tracer.wait_for_stderr(&named, LEAKING_TIMEOUT, |line| {
        line.starts_with("tracer --all:") && line.contains(&named)
    });
    let report = tracer.stop();
    let (_, entry) = host_entry(&report, host_pid);
    assert_eq!(entry["comm"], "slow_leak", "{}", report.context());
    assert_eq!(entry["nspid"], 1, "{}", report.context());
    assert_eq!(entry["leaking"], true, "{}", report.context());
}
