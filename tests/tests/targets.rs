//! Targets beyond one pid: `--pid` repeated, `--comm NAME` (processes that start after
//! attach too), `--cgroup PATH` (a leaker in its own PID and mount namespace, reported with
//! its pid in both and its paths as it sees them), and what bad targets say.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use tracer_tests::{
    ATTACH_TIMEOUT, Filter, Fixture, Report, Tracer, build_fixture, require_root, run_with_timeout,
    serde_json::{self, Value},
    tracer_command, unique_dir,
};

const LINE_TIMEOUT: Duration = Duration::from_secs(20);
const FAIL_TIMEOUT: Duration = Duration::from_secs(30);

/// The fds of `pid` that /proc shows open on `path`.
fn fds_on(pid: u32, path: &str) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .filter(|target| target.as_os_str() == path)
                .count()
        })
        .unwrap_or(0)
}

/// The report's descriptors of `pid` open on `path`, each checked to carry `leak_one` in
/// its stack.
#[track_caller]
fn leaked_on(report: &Report, pid: u32, path: &str) -> usize {
    let leaked: Vec<_> = report
        .descriptors(&Filter::new().pid(pid).kind("file"))
        .into_iter()
        .filter(|d| d.detail() == Some(path) && d.opened_by() != "pre-existing")
        .collect();
    for d in &leaked {
        assert!(
            d.has_frame("leak_one"),
            "fd {} of pid {pid} lacks leak_one in its stack: {:?}\n{}",
            d.fd(),
            d.stack_symbols(),
            report.context()
        );
    }
    leaked.len()
}

/// A file of our own for slow_leak to leak (the test VM has no /etc/hostname), as /proc
/// names it.
fn file_to_leak() -> String {
    let file = unique_dir(None, "slow-leak").join("leaked.txt");
    fs::write(&file, "x\n").expect("writing the file to leak");
    let file = fs::canonicalize(&file).expect("canonical path");
    file.to_str().expect("a UTF-8 scratch path").to_owned()
}

/// The `targets[]` entry of `pid`.
#[track_caller]
fn target_entry(report: &Report, pid: u32) -> &Value {
    report.json["targets"]
        .as_array()
        .and_then(|targets| targets.iter().find(|t| t["pid"] == pid))
        .unwrap_or_else(|| panic!("pid {pid} is not in targets\n{}", report.context()))
}

/// A copy of the fixture under a name no other process has, so that `--comm` matches only
/// what the test starts.
fn renamed_fixture(name: &str) -> PathBuf {
    let bin = build_fixture("slow_leak", &[]);
    let dir = unique_dir(None, "comm-target");
    let copy = dir.join(name);
    fs::copy(&bin, &copy).expect("copying the fixture");
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// `--pid` given twice follows both processes, each a target, and finds what each leaked.
#[test]
fn repeated_pid_follows_both() {
    require_root();
    let bin = build_fixture("slow_leak", &[]);
    let file = file_to_leak();
    // One leak per 250 ms: the test VM's limit of 1024 descriptors is not reached while the
    // tracer attaches there (about 50 s).
    let mut first = Fixture::spawn(&bin, &["file", "250", "0", &file]);
    let mut second = Fixture::spawn(&bin, &["file", "250", "0", &file]);
    first.wait_for_line("READY", LINE_TIMEOUT);
    second.wait_for_line("READY", LINE_TIMEOUT);
    let (a, b) = (first.pid().to_string(), second.pid().to_string());
    let mut tracer = Tracer::spawn(
        &["--json".into(), "--pid".into(), a, "--pid".into(), b],
        &[],
    );
    tracer.wait_attached(ATTACH_TIMEOUT);
    // Leaks made while traced: the next two after what /proc shows now.
    let first_mark = fds_on(first.pid(), &file) + 2;
    let second_mark = fds_on(second.pid(), &file) + 2;
    first.wait_for_line(&format!("LEAK {first_mark} "), LINE_TIMEOUT);
    second.wait_for_line(&format!("LEAK {second_mark} "), LINE_TIMEOUT);
    let report = tracer.stop();
    assert_eq!(report.target_pid(), first.pid(), "{}", report.context());
    for fixture in [&first, &second] {
        assert_eq!(target_entry(&report, fixture.pid())["matched_by"], "pid");
        assert!(
            leaked_on(&report, fixture.pid(), &file) >= 1,
            "no leak found in pid {}\n{}",
            fixture.pid(),
            report.context()
        );
    }
}

/// `--comm NAME` with no such process says it waits; a process of that name started after
/// attach is followed from its exec: the report names it as a target, with the time following
/// began, and every descriptor it leaked, with the stack, as /proc shows them.
#[test]
fn comm_follows_a_process_started_after_attach() {
    require_root();
    let name = format!("sleak{}", std::process::id() % 1_000_000);
    let copy = renamed_fixture(&name);
    let mut tracer = Tracer::spawn(&["--json".into(), "--comm".into(), name.clone()], &[]);
    tracer.wait_attached(ATTACH_TIMEOUT);
    assert!(
        tracer
            .stderr()
            .contains(&format!("waiting for a process named {name}")),
        "the tracer does not say it waits:\n{}",
        tracer.stderr()
    );
    let file = file_to_leak();
    let mut leaker = Fixture::spawn(&copy, &["file", "50", "5", &file]);
    leaker.wait_for_line("DONE 5", LINE_TIMEOUT);
    let held = fds_on(leaker.pid(), &file);
    let report = tracer.stop();
    assert_eq!(held, 5);
    assert_eq!(report.target_pid(), leaker.pid(), "{}", report.context());
    let entry = target_entry(&report, leaker.pid());
    assert_eq!(
        entry["matched_by"],
        format!("comm {name}"),
        "{}",
        report.context()
    );
    assert!(
        entry["followed_since_s"].as_f64().is_some_and(|s| s > 0.0),
        "{}",
        report.context()
    );
    assert_eq!(
        leaked_on(&report, leaker.pid(), &file),
        held,
        "{}",
        report.context()
    );
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid
/// systems); mounted at /sys/fs/cgroup when it is nowhere (the test VMs).
fn cgroup2_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    if let Some(dir) = mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
    }) {
        return dir;
    }
    let status = Command::new("mount")
        .args(["-t", "cgroup2", "none", "/sys/fs/cgroup"])
        .status()
        .expect("running mount");
    assert!(status.success(), "cannot mount cgroup2 on /sys/fs/cgroup");
    PathBuf::from("/sys/fs/cgroup")
}

/// A cgroup v2 directory named as docker names a container's, removed when dropped.
struct TestCgroup {
    dir: PathBuf,
    id: String,
}

impl TestCgroup {
    fn new() -> TestCgroup {
        let seed = format!("{:08x}{:08x}", std::process::id(), rand_u32());
        let id: String = seed.repeat(4).chars().take(64).collect();
        let dir = cgroup2_root().join(format!("docker-{id}.scope"));
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        TestCgroup { dir, id }
    }

    /// As /proc/PID/cgroup writes it.
    fn path(&self) -> String {
        format!("/{}", self.dir.file_name().unwrap().to_string_lossy())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Its processes are gone by now (fixtures are killed when dropped, before this).
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// `--cgroup PATH` finds a leaker that enters the cgroup after attach and runs in its own PID
/// and mount namespace (unshare): the report has its host pid and its pid in the namespace
/// (1), its cgroup and container id, and the path of the file it leaks as it sees it, on a
/// tmpfs mounted in its namespace only, which the host reaches through /proc/PID/root.
#[test]
fn cgroup_finds_a_leaker_in_its_own_namespaces() {
    require_root();
    let bin = build_fixture("slow_leak", &[]);
    let cgroup = TestCgroup::new();
    let private = unique_dir(None, "ns-private");
    let file = private.join("inside.txt");
    let mut tracer = Tracer::spawn(&["--json".into(), "--cgroup".into(), cgroup.path()], &[]);
    tracer.wait_attached(ATTACH_TIMEOUT);
    let script = format!(
        "echo $$ > {procs} && exec unshare --pid --mount --fork sh -c \
         'mount -t tmpfs none {private} && echo x > {file} && exec {bin} file 50 4 {file}'",
        procs = cgroup.dir.join("cgroup.procs").display(),
        private = private.display(),
        file = file.display(),
        bin = bin.display(),
    );
    let mut leaker = Fixture::spawn("sh", &["-c", &script]);
    let ready = leaker.wait_for_line("READY pid ", LINE_TIMEOUT);
    leaker.wait_for_line("DONE 4", LINE_TIMEOUT);
    let inner_pid: u32 = ready["READY pid ".len()..].trim().parse().unwrap();
    let host_pid = fs::read_to_string(cgroup.dir.join("cgroup.procs"))
        .unwrap()
        .lines()
        .filter_map(|l| l.parse::<u32>().ok())
        .find(|&pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "slow_leak")
        })
        .expect("the fixture in the cgroup");
    let path = file.to_str().unwrap();
    // The host does not see the file at that path, the process does.
    assert!(
        !Path::new(path).exists(),
        "the tmpfs leaked out of the namespace"
    );
    assert!(Path::new(&format!("/proc/{host_pid}/root{path}")).exists());
    let held = fds_on(host_pid, path);
    let report = tracer.stop();
    assert_eq!((inner_pid, held), (1, 4));
    let process = report.json["processes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["pid"] == host_pid))
        .unwrap_or_else(|| panic!("pid {host_pid} not in the report\n{}", report.context()));
    assert_eq!(process["nspid"], inner_pid, "{}", report.context());
    assert_eq!(process["cgroup"], cgroup.path(), "{}", report.context());
    assert_eq!(
        process["container"],
        cgroup.id.as_str(),
        "{}",
        report.context()
    );
    assert_eq!(
        leaked_on(&report, host_pid, path),
        held,
        "{}",
        report.context()
    );
    let root = report.target_pid();
    assert!(
        target_entry(&report, root)["matched_by"]
            .as_str()
            .is_some_and(|m| m == format!("cgroup {}", cgroup.path())),
        "{}",
        report.context()
    );
    drop(leaker);
}

/// A cgroup that does not exist, or a container no cgroup names, is one line naming it.
#[test]
fn missing_cgroup_and_container_are_refused() {
    require_root();
    let out = run_with_timeout(
        tracer_command(&["--json", "--cgroup", "/no-such-cgroup-for-tracer"]),
        FAIL_TIMEOUT,
    );
    out.assert_clean_failure(&["no such cgroup", "/no-such-cgroup-for-tracer"]);
    let out = run_with_timeout(
        tracer_command(&["--json", "--container", "feedfacefeedface0000"]),
        FAIL_TIMEOUT,
    );
    out.assert_clean_failure(&["no container", "feedfacefeedface0000"]);
}

/// A name nothing has: the tracer says it waits for it, and at the stop reports no target.
#[test]
fn comm_matching_nothing_waits() {
    require_root();
    let mut tracer = Tracer::spawn(
        &[
            "--json".into(),
            "--comm".into(),
            "no-such-proc-x".into(),
            "--duration".into(),
            "2".into(),
        ],
        &[],
    );
    tracer.wait_attached(ATTACH_TIMEOUT);
    let stderr = tracer.stderr();
    let report = tracer.finish(FAIL_TIMEOUT);
    assert!(
        stderr.contains("no process matches yet: waiting for a process named no-such-proc-x"),
        "{stderr}"
    );
    assert_eq!(report.target_pid(), 0, "{}", report.context());
    assert_eq!(report.json["targets"], serde_json::json!([]));
}
