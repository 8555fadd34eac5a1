//! Error paths and ends of a trace: the tracer stops in time, says why on stderr in one line,
//! and never panics.

use std::{os::unix::fs::PermissionsExt as _, process::Command, time::Duration};

use tracer_tests::{
    ATTACH_TIMEOUT, Filter, Fixture, STOP_TIMEOUT, Tracer, build_fixture, fd_count, pid_exists,
    require_root, run_with_timeout, tracer_bin, tracer_command, unique_dir, unused_pid, wait_until,
};

/// How long a failing tracer may take to give up: one may load the probes first (a command
/// whose exec fails is found out once they are attached), which takes up to a minute in the
/// test VM's guests.
const FAIL_TIMEOUT: Duration = ATTACH_TIMEOUT;

/// `--pid` of a process that does not exist: non-zero exit, and the pid with "no such process".
#[test]
fn missing_pid_is_reported() {
    require_root();
    let pid = unused_pid();
    let out = run_with_timeout(
        tracer_command(&["--json", "--pid", &pid.to_string()]),
        FAIL_TIMEOUT,
    );
    out.assert_clean_failure(&["no such process"]);
    assert!(
        out.stderr.contains(&pid.to_string()),
        "stderr does not mention pid {pid}\n{}",
        out.context()
    );
    assert!(!pid_exists(pid), "pid {pid} appeared meanwhile; rerun");
}

/// Without root the tracer refuses to start, saying it needs root.
#[test]
fn non_root_is_refused() {
    require_root();
    // A copy that uid 65534 can reach and execute, whatever the permissions of target/.
    let dir = unique_dir(Some(&std::env::temp_dir()), "tracer-nonroot");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("tracer");
    std::fs::copy(tracer_bin(), &bin).expect("copying the tracer binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["--json", "--pid", "1"]);
    let out = run_with_timeout(cmd, FAIL_TIMEOUT);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !out.stderr.contains("setpriv:"),
        "setpriv itself failed, the tracer did not run\n{}",
        out.context()
    );
    out.assert_clean_failure(&["root"]);
}

/// `setpriv` keeping only the capabilities `caps` (`+bpf,+perfmon`), then `tracer ARGS`.
fn tracer_with_caps(caps: &str, args: &[&str]) -> Command {
    // Debian's kernels (the test VM's guests) default to kernel.perf_event_paranoid=3, a
    // Debian patch under which perf_event_open, and so attaching a tracepoint, needs
    // CAP_SYS_ADMIN whatever CAP_PERFMON says. CAP_SYS_ADMIN overrides neither the ptrace
    // check on /proc/PID/fd nor its directory's permissions, so what is checked is the same.
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
        .unwrap_or(2);
    let caps = if paranoid >= 3 {
        format!("{caps},+sys_admin")
    } else {
        caps.to_string()
    };
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--bounding-set=-all,{caps}"))
        .arg(format!("--inh-caps=-all,{caps}"))
        .arg("--")
        .arg(tracer_bin())
        .args(args);
    cmd
}

/// Runs `tracer --pid` of `target` with only `caps`, which must not do: one line naming
/// `lacking`, non-zero exit, nothing attached.
#[track_caller]
fn refused_with_caps(target: &Fixture, caps: &str, lacking: &str) {
    let pid = target.pid().to_string();
    let args = ["--json", "--pid", &pid, "--duration", "1"];
    let out = run_with_timeout(tracer_with_caps(caps, &args), FAIL_TIMEOUT);
    assert!(!out.stderr.contains("setpriv:"), "{}", out.context());
    out.assert_clean_failure(&[
        &format!("cannot read the descriptors of pid {pid}"),
        &format!("lacks {lacking}:"),
    ]);
    assert!(!out.stderr.contains("attached"), "{}", out.context());
}

/// Runs `tracer --pid` of `target` with only `caps`, which must do: it reports every
/// descriptor /proc shows.
#[track_caller]
fn sees_all_with_caps(target: &Fixture, caps: &str) {
    let pid = target.pid().to_string();
    let args = ["--json", "--pid", &pid, "--duration", "1"];
    let out = run_with_timeout(tracer_with_caps(caps, &args), ATTACH_TIMEOUT + FAIL_TIMEOUT);
    assert!(out.status.success(), "{}", out.context());
    let held = fd_count(target.pid()).unwrap();
    let report = out.report();
    let seen = report.descriptors(&Filter::new().pid(target.pid()));
    assert!(held > 0);
    assert_eq!(seen.len(), held, "{}", report.context());
}

/// With CAP_BPF and CAP_PERFMON only, the tracer can load and attach its programs but may not
/// read the links in /proc/PID/fd of a process with more capabilities than it has, nor list
/// that directory for another user's process: it refuses in one line naming the capability
/// it lacks, before attaching, instead of reporting no descriptors. With CAP_SYS_PTRACE (and
/// CAP_DAC_READ_SEARCH for another user's process) it reports what /proc shows.
#[test]
fn unreadable_descriptors_are_refused_before_attaching() {
    require_root();
    let root_owned = Fixture::spawn("sleep", &["600"]);
    refused_with_caps(
        &root_owned,
        "+bpf,+perfmon",
        "CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH",
    );
    sees_all_with_caps(&root_owned, "+bpf,+perfmon,+sys_ptrace");

    let other_user = Fixture::spawn(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sleep",
            "600",
        ],
    );
    // Until setpriv has changed its user and run sleep, it is root's.
    let comm = format!("/proc/{}/comm", other_user.pid());
    wait_until(FAIL_TIMEOUT, "setpriv to run sleep", || {
        std::fs::read_to_string(&comm).is_ok_and(|c| c.trim_end() == "sleep")
    });
    refused_with_caps(
        &other_user,
        "+bpf,+perfmon,+sys_ptrace",
        "CAP_DAC_READ_SEARCH",
    );
    sees_all_with_caps(&other_user, "+bpf,+perfmon,+sys_ptrace,+dac_read_search");
}

/// Without kernel BTF (TRACER_BTF_PATH pointing nowhere) the tracer fails, naming BTF.
#[test]
fn missing_btf_is_reported() {
    require_root();
    let target = Fixture::spawn("sleep", &["60"]);
    let mut cmd = tracer_command(&["--json", "--pid", &target.pid().to_string()]);
    cmd.env("TRACER_BTF_PATH", "/nonexistent/vmlinux");
    let out = run_with_timeout(cmd, FAIL_TIMEOUT);
    out.assert_clean_failure(&["BTF"]);
}

/// An unknown option is rejected by the argument parser (clap exits 2), naming the option.
#[test]
fn unknown_option_is_rejected() {
    let out = run_with_timeout(
        tracer_command(&["--frobnicate", "--pid", "1"]),
        FAIL_TIMEOUT,
    );
    out.assert_clean_failure(&["--frobnicate"]);
}

/// A command that cannot be executed (a path that does not exist) is an error naming it,
/// not a report about a child that died at exec.
#[test]
fn command_that_cannot_run_is_an_error() {
    require_root();
    let out = run_with_timeout(
        tracer_command(&["--json", "--", "/nonexistent/tracer-test-program"]),
        FAIL_TIMEOUT,
    );
    out.assert_clean_failure(&["cannot run", "/nonexistent/tracer-test-program"]);
    assert!(
        out.stdout.trim().is_empty(),
        "no report expected:\n{}",
        out.context()
    );
}

/// When the only traced process exits, the tracer prints the final report by itself, exits 0,
/// and lists the process as exited.
#[test]
fn target_exit_ends_the_trace() {
    require_root();
    // `cat` lives exactly until we close its stdin.
    let mut target = Fixture::spawn("cat", &[]);
    let pid = target.pid();
    let mut tracer = Tracer::attach(pid, &[]);
    tracer.wait_attached(ATTACH_TIMEOUT);

    target.close_stdin();
    let status = target
        .wait_exit(Duration::from_secs(10))
        .expect("cat did not exit after stdin EOF");
    assert!(status.success(), "cat exited with {status}");

    // Noticing the exit and building the report take seconds in the test VM's guests.
    let report = tracer.finish(STOP_TIMEOUT);
    assert_eq!(report.target_pid(), pid, "target.pid\n{}", report.context());
    let proc = report
        .process(pid)
        .unwrap_or_else(|| panic!("pid {pid} not in processes\n{}", report.context()));
    assert!(proc.exited(), "the target exited: {proc:?}");
}

/// `tracer -- COMMAND` follows COMMAND from its start and reports the files it still held at
/// exit, with the function that opened them.
#[test]
fn command_mode_reports_descriptors_open_at_exit() {
    require_root();
    let bin = build_fixture("leak_and_exit", &[]);
    let dir = unique_dir(None, "leak-and-exit");
    let file = dir.join("leaked.txt");
    std::fs::write(&file, "leaked\n").unwrap();
    let file = file.canonicalize().unwrap();
    let path = file.to_str().expect("utf-8 scratch path");

    let tracer = Tracer::command(
        &["--at-exit-descriptors"],
        &[bin.to_str().expect("utf-8 fixture path"), path],
    );
    // Attaching takes most of it in the test VM's guests.
    let report = tracer.finish(ATTACH_TIMEOUT.saturating_add(STOP_TIMEOUT));
    let ctx = report.context();

    let pid = report.target_pid();
    let proc = report
        .process(pid)
        .unwrap_or_else(|| panic!("the command's pid {pid} not in processes\n{ctx}"));
    assert!(proc.exited(), "the command exited: {proc:?}");

    let leaked: Vec<_> = report
        .descriptors(&Filter::new().pid(pid).kind("file"))
        .into_iter()
        .filter(|d| d.detail() == Some(path))
        .collect();
    assert_eq!(
        leaked.len(),
        2,
        "expected 2 descriptors of {path} in pid {pid}: {leaked:#?}\nreport:\n{ctx}"
    );
    for d in &leaked {
        assert_eq!(d.opened_by(), "openat", "{d:?}");
        assert!(d.at_exit(), "held at exit: {d:?}");
        assert!(
            d.has_frame("leak_file"),
            "the stack of {d:?} has no leak_file frame: {:?}\n(libc's open is a frameless \
             leaf: a frame-pointer walk skips its caller; unwind from .eh_frame)",
            d.stack_symbols()
        );
    }
    let fds: std::collections::HashSet<u64> = leaked.iter().map(|d| d.fd()).collect();
    assert_eq!(fds.len(), 2, "two distinct fds: {leaked:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}
