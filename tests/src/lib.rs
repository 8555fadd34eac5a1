//! Shared harness for the tracer's integration tests.
//!
//! The tests run the real `tracer` binary (built by `cargo xtask test`, found through
//! `TRACER_BIN`) as root against small C fixtures from `tests/fixtures/`, and check the JSON
//! report described in "Report contract (v1)" of `shared/DESIGN.md`.
//!
//! Rules every helper follows: each wait has a timeout, every spawned process is killed when
//! its handle is dropped, and each failure message carries what is needed to debug it (the
//! tracer's stderr, its stdout or report, the fixture's output).

use std::collections::hash_map::DefaultHasher;
use std::ffi::OsStr;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;

pub use serde_json;

/// How long a tracer may take to exit after SIGINT before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long loading and attaching the probes may take.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);

/// The workspace root (the parent of this package).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// Path of the tracer binary: `$TRACER_BIN` (set by `cargo xtask test`), else
/// `<workspace>/target/release/tracer`. Panics when it does not exist.
pub fn tracer_bin() -> PathBuf {
    let path = match std::env::var_os("TRACER_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_dir().join("target/release/tracer"),
    };
    if !path.is_file() {
        panic!(
            "tracer binary not found at {} (from TRACER_BIN or <workspace>/target/release/tracer); \
             run `cargo xtask test`, which builds it and sets TRACER_BIN",
            path.display()
        );
    }
    path
}

/// Integration tests load eBPF programs: they need root. Panics (does not skip) otherwise.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        panic!(
            "this test must run as root (euid is {euid}): the tracer loads eBPF programs; \
             run it through `cargo xtask test`, which runs the tests as root"
        );
    }
}

/// A directory for build products and scratch files of the tests.
///
/// `$CARGO_TARGET_TMPDIR` when set, else `<workspace>/target/tmp` (what Cargo uses for it),
/// else the system temporary directory.
pub fn scratch_dir() -> PathBuf {
    let candidates = [
        std::env::var_os("CARGO_TARGET_TMPDIR").map(PathBuf::from),
        Some(workspace_dir().join("target/tmp")),
        Some(std::env::temp_dir()),
    ];
    for dir in candidates.into_iter().flatten() {
        let dir = dir.join("tracer-tests");
        if std::fs::create_dir_all(&dir).is_ok() {
            return dir;
        }
    }
    panic!("cannot create a scratch directory for the tests");
}

/// A fresh, empty directory under [`scratch_dir`] (or `base` when given).
pub fn unique_dir(base: Option<&Path>, prefix: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = base.map_or_else(scratch_dir, Path::to_path_buf);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = base.join(format!("{prefix}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Compiler flags every fixture is built with. Frame pointers and no sibling-call
/// optimisation keep each fixture function's frame on the stack.
pub const FIXTURE_CFLAGS: &[&str] = &[
    "-g",
    "-O2",
    "-fno-omit-frame-pointer",
    "-fno-optimize-sibling-calls",
    "-pthread",
    "-Wall",
    "-Wextra",
];

/// Every fixture under `tests/fixtures/` (without `.c`): what [`build_all_fixtures`] builds.
pub const FIXTURES: &[&str] = &[
    "prefork_server",
    "busy_churn",
    "leak_and_exit",
    "zombie_parent",
    "thread_pile",
    "tw_client",
    "fd_families",
    "stack_leak",
    "stack_base",
];

/// Builds of fixtures with other flags than the default that tests ask for: prebuilt too.
pub const FIXTURE_VARIANTS: &[(&str, &[&str])] = &[
    ("stack_leak", &["-O0"]),
    ("stack_leak", &["-O2", "-fomit-frame-pointer"]),
    ("stack_base", &["-O2", "-fomit-frame-pointer"]),
];

/// The environment variable naming a directory of fixtures built beforehand (by the
/// `build-fixtures` binary), for machines without a C compiler: the kernels `cargo xtask test
/// --vm` boots have none.
pub const PREBUILT_FIXTURES_ENV: &str = "TRACER_PREBUILT_FIXTURES";

/// The directory of prebuilt fixtures, when [`PREBUILT_FIXTURES_ENV`] names one.
pub fn prebuilt_fixtures_dir() -> Option<PathBuf> {
    std::env::var_os(PREBUILT_FIXTURES_ENV)
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
}

/// Compiles `tests/fixtures/NAME.c` with `cc` and returns the executable's path.
/// Panics with the compiler's output when the build fails.
///
/// With [`PREBUILT_FIXTURES_ENV`] set nothing is compiled: the build is taken from that
/// directory, which has the plain builds and the [`FIXTURE_VARIANTS`].
pub fn build_fixture(name: &str, extra_cflags: &[&str]) -> PathBuf {
    if let Some(dir) = prebuilt_fixtures_dir() {
        let bin = dir.join(fixture_file_name(name, extra_cflags));
        assert!(
            bin.is_file(),
            "prebuilt fixture {} ({name} with {extra_cflags:?}) is missing \
             ({PREBUILT_FIXTURES_ENV}={}): add the flags to FIXTURE_VARIANTS",
            bin.display(),
            dir.display()
        );
        return bin;
    }
    build_fixture_in(&scratch_dir().join("fixtures"), name, extra_cflags)
}

/// Compiles every fixture in [`FIXTURES`] (plain builds, named after the fixture) and every
/// one of [`FIXTURE_VARIANTS`] into `dir`.
pub fn build_all_fixtures(dir: &Path) -> Vec<PathBuf> {
    let plain = FIXTURES.iter().map(|name| (*name, &[][..]));
    plain
        .chain(FIXTURE_VARIANTS.iter().copied())
        .map(|(name, flags)| build_fixture_in(dir, name, flags))
        .collect()
}

/// The file a build of fixture `name` with `extra_cflags` goes to: the name itself for the
/// plain build, the name and a hash of the flags otherwise.
fn fixture_file_name(name: &str, extra_cflags: &[&str]) -> String {
    if extra_cflags.is_empty() {
        name.to_string()
    } else {
        let mut h = DefaultHasher::new();
        extra_cflags.hash(&mut h);
        format!("{name}-{:016x}", h.finish())
    }
}

/// Compiles `tests/fixtures/NAME.c` into `dir`; other flags than none give another file name.
fn build_fixture_in(dir: &Path, name: &str, extra_cflags: &[&str]) -> PathBuf {
    let src = workspace_dir()
        .join("tests/fixtures")
        .join(format!("{name}.c"));
    assert!(src.is_file(), "fixture source {} not found", src.display());
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));

    let file_name = fixture_file_name(name, extra_cflags);
    let out = dir.join(&file_name);
    // Build under a unique name and rename, so concurrent builds never see a partial file.
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let output = Command::new(&cc)
        .args(FIXTURE_CFLAGS)
        .args(extra_cflags)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        panic!(
            "compiling fixture {} failed ({}):\n{}{}",
            src.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::rename(&tmp, &out)
        .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", tmp.display(), out.display()));
    out
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`.
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
pub fn unused_pid() -> u32 {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    (2..max)
        .rev()
        .take(100_000)
        .find(|&p| !pid_exists(p))
        .expect("no unused pid found")
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

/// Reads lines from `r` until EOF, echoing each to the test's stderr as `[label] line`
/// (libtest shows it when the test fails) and passing it to `sink`.
fn spawn_line_reader<R: Read + Send + 'static>(
    r: R,
    label: String,
    mut sink: impl FnMut(String) + Send + 'static,
) -> JoinHandle<()> {
    thread::Builder::new()
        .name(format!("read-{label}"))
        .spawn(move || {
            let mut reader = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\n', '\r'])
                            .to_string();
                        eprintln!("[{label}] {line}");
                        sink(line);
                    }
                }
            }
        })
        .expect("spawning a reader thread")
}

/// Reads all of `r` on a thread; the result arrives on the returned channel at EOF.
fn spawn_slurper<R: Read + Send + 'static>(mut r: R) -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("slurp".into())
        .spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            let _ = tx.send(buf);
        })
        .expect("spawning a reader thread");
    rx
}

// ---------------------------------------------------------------------------------------------
// Fixture processes
// ---------------------------------------------------------------------------------------------

/// A fixture process in a process group of its own. Its stdout arrives line by line (see
/// [`Fixture::wait_for_line`]); its stderr is echoed to the test's stderr. Dropping it kills
/// the whole process group (the fixture and anything it forked) and reaps the fixture.
pub struct Fixture {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
    status: Option<ExitStatus>,
}

impl Fixture {
    /// Starts `program args...` with stdin and stdout piped.
    pub fn spawn(program: impl AsRef<OsStr>, args: &[&str]) -> Fixture {
        use std::os::unix::process::CommandExt as _;
        let program = program.as_ref();
        let name = Path::new(program)
            .file_name()
            .unwrap_or(program)
            .to_string_lossy()
            .into_owned();
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start fixture {program:?}: {e}"));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        spawn_line_reader(stdout, format!("{name} stdout"), move |l| {
            let _ = tx.send(l);
        });
        let stderr = child.stderr.take().expect("piped stderr");
        spawn_line_reader(stderr, format!("{name} stderr"), |_| {});
        let stdin = child.stdin.take();
        Fixture {
            name,
            child,
            stdin,
            lines,
            seen: Vec::new(),
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line starting with `prefix` and returns it. Panics on timeout or
    /// when stdout closes first.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "fixture {} (pid {}): no stdout line starting with {prefix:?} within \
                     {timeout:?}; lines so far: {:?}",
                    self.name,
                    self.pid(),
                    self.seen
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(Duration::from_secs(5));
                    panic!(
                        "fixture {} (pid {}) closed stdout ({status:?}) before printing a line \
                         starting with {prefix:?}; lines: {:?}",
                        self.name,
                        self.pid(),
                        self.seen
                    )
                }
            }
        }
    }

    /// Every stdout line read so far, in order.
    pub fn lines_seen(&self) -> &[String] {
        &self.seen
    }

    /// Writes `line` and a newline to the fixture's stdin.
    pub fn send_line(&mut self, line: &str) {
        let pid = self.pid();
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("writing to the stdin of fixture pid {pid}: {e}"));
    }

    /// Closes the fixture's stdin (it sees EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits up to `timeout` for the fixture to exit and reaps it; `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = wait_child(&mut self.child, timeout);
        }
        self.status
    }

    /// Whether the fixture has exited (reaping it if so).
    pub fn has_exited(&mut self) -> bool {
        self.wait_exit(Duration::ZERO).is_some()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let pid = self.pid() as i32;
        // The group outlives its leader while forked children remain.
        signal(-pid, libc::SIGKILL);
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = wait_child(&mut self.child, Duration::from_secs(10));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tracer
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct StderrState {
    text: String,
    attached: bool,
    eof: bool,
}

type SharedStderr = Arc<(Mutex<StderrState>, Condvar)>;

/// A running `tracer --json ...`. Its stderr is collected (and echoed with a `[tracer]`
/// prefix), its stdout kept for the report. Dropping a tracer that still runs kills it.
pub struct Tracer {
    child: Child,
    args: Vec<String>,
    stderr: SharedStderr,
    stdout: Receiver<Vec<u8>>,
}

impl Tracer {
    /// `tracer --json --pid PID EXTRA...`
    pub fn attach(pid: u32, extra: &[&str]) -> Tracer {
        let mut args = vec!["--json".to_string(), "--pid".to_string(), pid.to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Tracer::spawn(&args, &[])
    }

    /// `tracer --json EXTRA... -- COMMAND...`
    pub fn command(extra: &[&str], command: &[&str]) -> Tracer {
        let mut args = vec!["--json".to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push("--".to_string());
        args.extend(command.iter().map(|s| s.to_string()));
        Tracer::spawn(&args, &[])
    }

    /// `tracer ARGS...` with extra environment variables.
    pub fn spawn(args: &[String], env: &[(&str, &str)]) -> Tracer {
        use std::os::unix::process::CommandExt as _;
        let bin = tracer_bin();
        eprintln!("[harness] starting {} {}", bin.display(), args.join(" "));
        let mut child = Command::new(&bin)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stderr: SharedStderr = Arc::default();
        let shared = Arc::clone(&stderr);
        let pipe = child.stderr.take().expect("piped stderr");
        let reader = spawn_line_reader(pipe, "tracer".into(), move |line| {
            let (lock, cv) = &*shared;
            let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
            if line.contains("attached") {
                st.attached = true;
            }
            st.text.push_str(&line);
            st.text.push('\n');
            cv.notify_all();
        });
        // Flag EOF once the reader finishes, so waiters stop waiting for more.
        let shared = Arc::clone(&stderr);
        thread::spawn(move || {
            let _ = reader.join();
            let (lock, cv) = &*shared;
            lock.lock().unwrap_or_else(|e| e.into_inner()).eof = true;
            cv.notify_all();
        });
        let stdout = spawn_slurper(child.stdout.take().expect("piped stdout"));
        Tracer {
            child,
            args: args.to_vec(),
            stderr,
            stdout,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the tracer wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .text
            .clone()
    }

    /// Waits (up to 2 s) until stderr reached EOF, so that it is complete.
    fn settle_stderr(&self) {
        let (lock, cv) = &*self.stderr;
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !st.eof {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = cv
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Blocks until the tracer printed a stderr line containing `attached`. Panics with its
    /// stderr on timeout or when it exits first.
    pub fn wait_attached(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let (lock, cv) = &*self.stderr;
                let st = lock.lock().unwrap_or_else(|e| e.into_inner());
                if st.attached {
                    return;
                }
                let _ = cv
                    .wait_timeout(st, Duration::from_millis(50))
                    .unwrap_or_else(|e| e.into_inner());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.settle_stderr();
                if self
                    .stderr
                    .0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .attached
                {
                    return;
                }
                panic!(
                    "tracer ({}) exited with {status} before printing `attached`; stderr:\n{}",
                    self.args.join(" "),
                    self.stderr()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "tracer ({}) did not print `attached` within {timeout:?}; stderr:\n{}",
                    self.args.join(" "),
                    self.stderr()
                );
            }
        }
    }

    /// Sends SIGINT (Ctrl-C), waits for the tracer to exit (killing it after
    /// [`STOP_TIMEOUT`]), asserts exit status 0 and returns the parsed report.
    pub fn stop(self) -> Report {
        signal(self.pid() as i32, libc::SIGINT);
        self.finish(STOP_TIMEOUT)
    }

    /// Waits up to `timeout` for the tracer to stop by itself (`--duration`, target exit),
    /// asserts exit status 0 and returns the parsed report.
    pub fn finish(self, timeout: Duration) -> Report {
        let out = self.wait_output(timeout);
        assert!(
            out.status.success(),
            "`{}` exited with {}, expected 0\nstderr:\n{}\nstdout:\n{}",
            out.args.join(" "),
            out.status,
            out.stderr,
            excerpt(&out.stdout, REPORT_EXCERPT)
        );
        out.report()
    }

    /// Waits up to `timeout` for the tracer to exit, whatever its status; kills it and
    /// panics (with its stderr) on timeout.
    pub fn wait_output(mut self, timeout: Duration) -> TracerOutput {
        let Some(status) = wait_child(&mut self.child, timeout) else {
            signal(-(self.pid() as i32), libc::SIGKILL);
            let _ = self.child.kill();
            let _ = wait_child(&mut self.child, Duration::from_secs(10));
            self.settle_stderr();
            panic!(
                "tracer ({}) did not exit within {timeout:?}; killed it. stderr:\n{}",
                self.args.join(" "),
                self.stderr()
            );
        };
        self.settle_stderr();
        let stdout = match self.stdout.recv_timeout(Duration::from_secs(10)) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(_) => {
                // Something else (e.g. a `--` COMMAND) still holds the pipe.
                panic!(
                    "tracer ({}) exited with {status} but its stdout stayed open (is a child \
                     still holding it?); stderr:\n{}",
                    self.args.join(" "),
                    self.stderr()
                );
            }
        };
        TracerOutput {
            args: std::iter::once("tracer".to_string())
                .chain(self.args.iter().cloned())
                .collect(),
            status,
            stdout,
            stderr: self.stderr(),
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(-(self.pid() as i32), libc::SIGKILL);
            let _ = self.child.kill();
            let _ = wait_child(&mut self.child, Duration::from_secs(10));
        }
    }
}

/// What a finished tracer left behind.
#[derive(Debug)]
pub struct TracerOutput {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl TracerOutput {
    /// Parses stdout as the JSON report; panics with stdout and stderr when it is not JSON.
    /// The report is also saved under `<scratch>/reports/` for reading after a failure.
    pub fn report(&self) -> Report {
        match serde_json::from_str::<Value>(&self.stdout) {
            Ok(json) => {
                let mut report = Report::new(json);
                report.saved = save_report(&self.stdout);
                eprintln!("[harness] report:\n{}", report.context());
                report
            }
            Err(e) => panic!(
                "`{}`: stdout is not one JSON document: {e}\nstderr:\n{}\nstdout:\n{}",
                self.args.join(" "),
                self.stderr,
                excerpt(&self.stdout, REPORT_EXCERPT)
            ),
        }
    }

    /// Asserts the way every error path must end: a non-zero exit code (not a signal, not a
    /// panic) and one stderr line that contains every one of `needles` (case-insensitive).
    pub fn assert_clean_failure(&self, needles: &[&str]) {
        let ctx = self.context();
        match self.status.code() {
            Some(0) => panic!("expected a non-zero exit code, got 0\n{ctx}"),
            Some(_) => {}
            None => panic!("tracer was killed by a signal ({})\n{ctx}", self.status),
        }
        assert!(!self.stderr.contains("panicked"), "tracer panicked\n{ctx}");
        let found = self.stderr.lines().any(|line| {
            let line = line.to_lowercase();
            needles.iter().all(|n| line.contains(&n.to_lowercase()))
        });
        assert!(
            found,
            "no stderr line contains all of {needles:?} (case-insensitive)\n{ctx}"
        );
    }

    /// The command, status, stderr and stdout, for failure messages.
    pub fn context(&self) -> String {
        format!(
            "command: {}\nstatus: {}\nstderr:\n{}\nstdout:\n{}",
            self.args.join(" "),
            self.status,
            self.stderr,
            excerpt(&self.stdout, REPORT_EXCERPT)
        )
    }
}

/// Runs `cmd` to completion (stdin closed, stdout and stderr collected), killing it and
/// panicking after `timeout`. For one-shot tracer runs that are expected to fail.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> TracerOutput {
    use std::os::unix::process::CommandExt as _;
    let args: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    eprintln!("[harness] running {}", args.join(" "));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", args.join(" ")));
    let stdout = spawn_slurper(child.stdout.take().expect("piped stdout"));
    let stderr = spawn_slurper(child.stderr.take().expect("piped stderr"));
    let status = wait_child(&mut child, timeout);
    let Some(status) = status else {
        signal(-(child.id() as i32), libc::SIGKILL);
        let _ = child.kill();
        let _ = wait_child(&mut child, Duration::from_secs(10));
        let err = stderr
            .recv_timeout(Duration::from_secs(2))
            .unwrap_or_default();
        panic!(
            "`{}` did not exit within {timeout:?}; killed it. stderr:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&err)
        );
    };
    let text = |rx: Receiver<Vec<u8>>| {
        let bytes = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let out = TracerOutput {
        args,
        status,
        stdout: text(stdout),
        stderr: text(stderr),
    };
    for line in out.stderr.lines() {
        eprintln!("[stderr] {line}");
    }
    out
}

/// How much of a report failure messages quote.
pub const REPORT_EXCERPT: usize = 20_000;

/// The first `max` bytes of `text` (at a char boundary), with a note when cut.
pub fn excerpt(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n... ({} more bytes)", &text[..end], text.len() - end)
}

/// Writes a report to `<scratch>/reports/<test name>-<n>.json`; returns its path.
fn save_report(text: &str) -> Option<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = scratch_dir().join("reports");
    std::fs::create_dir_all(&dir).ok()?;
    let test: String = thread::current()
        .name()
        .unwrap_or("report")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{test}-{}-{n}.json", std::process::id()));
    std::fs::write(&path, text).ok()?;
    Some(path)
}

/// A `Command` for the tracer binary with `args`.
pub fn tracer_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(tracer_bin());
    cmd.args(args);
    cmd
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

/// The tracer's JSON report (contract v1) with typed accessors. Accessors of required keys
/// panic, naming the key, when the report lacks them.
#[derive(Clone, Debug)]
pub struct Report {
    pub json: Value,
    /// Where the harness saved the full report, if it did.
    pub saved: Option<PathBuf>,
}

fn req<'a>(v: &'a Value, key: &str) -> &'a Value {
    match v.get(key) {
        Some(x) => x,
        None => panic!("report: required key {key:?} missing in {v}"),
    }
}

fn req_u64(v: &Value, key: &str) -> u64 {
    req(v, key)
        .as_u64()
        .unwrap_or_else(|| panic!("report: {key:?} is not an unsigned integer in {v}"))
}

fn req_str<'a>(v: &'a Value, key: &str) -> &'a str {
    req(v, key)
        .as_str()
        .unwrap_or_else(|| panic!("report: {key:?} is not a string in {v}"))
}

fn req_bool(v: &Value, key: &str) -> bool {
    req(v, key)
        .as_bool()
        .unwrap_or_else(|| panic!("report: {key:?} is not a boolean in {v}"))
}

fn req_array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    req(v, key)
        .as_array()
        .unwrap_or_else(|| panic!("report: {key:?} is not an array in {v}"))
}

fn to_pid(n: u64) -> u32 {
    u32::try_from(n).unwrap_or_else(|_| panic!("report: pid {n} out of range"))
}

/// Whether a stack frame's `symbol` names function `name`: equal, or `name` followed by an
/// offset (`name+0x12`) or a compiler suffix (`name.cold`, `name.isra.0`).
pub fn symbol_is(symbol: &str, name: &str) -> bool {
    match symbol.strip_prefix(name) {
        Some(rest) => rest.is_empty() || rest.starts_with('+') || rest.starts_with('.'),
        None => false,
    }
}

/// The symbols of a `stack` array (innermost first), `"?"` for frames without one.
pub fn frames_symbols(stack: &Value) -> Vec<String> {
    stack
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .map(|f| {
                    f.get("symbol")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The symbols of the stack of a descriptor (or of a `stacks` entry), innermost first.
pub fn stack_symbols(desc: &Value) -> Vec<String> {
    desc.get("stack").map(frames_symbols).unwrap_or_default()
}

impl Report {
    pub fn new(json: Value) -> Report {
        Report { json, saved: None }
    }

    /// The report, pretty-printed.
    pub fn pretty(&self) -> String {
        serde_json::to_string_pretty(&self.json).unwrap_or_else(|_| self.json.to_string())
    }

    /// For failure messages: the start of the pretty report and where the full one is.
    pub fn context(&self) -> String {
        let mut text = excerpt(&self.pretty(), REPORT_EXCERPT);
        if let Some(path) = &self.saved {
            text.push_str(&format!("\n(full report: {})", path.display()));
        }
        text
    }

    pub fn version(&self) -> u64 {
        req_u64(&self.json, "version")
    }

    /// `target.pid`.
    pub fn target_pid(&self) -> u32 {
        to_pid(req_u64(req(&self.json, "target"), "pid"))
    }

    /// `events.received`.
    pub fn events_received(&self) -> u64 {
        req_u64(req(&self.json, "events"), "received")
    }

    /// `events.lost`.
    pub fn events_lost(&self) -> u64 {
        req_u64(req(&self.json, "events"), "lost")
    }

    /// `processes[]`.
    pub fn processes(&self) -> Vec<Process<'_>> {
        req_array(&self.json, "processes")
            .iter()
            .map(|v| Process { v })
            .collect()
    }

    /// The `processes[]` entry of `pid`, if any.
    pub fn process(&self, pid: u32) -> Option<Process<'_>> {
        self.processes().into_iter().find(|p| p.pid() == pid)
    }

    /// `open_descriptors[]`.
    pub fn open_descriptors(&self) -> Vec<Descriptor<'_>> {
        req_array(&self.json, "open_descriptors")
            .iter()
            .map(|v| Descriptor { v })
            .collect()
    }

    /// The `open_descriptors[]` entries that match `filter`.
    pub fn descriptors(&self, filter: &Filter<'_>) -> Vec<Descriptor<'_>> {
        self.open_descriptors()
            .into_iter()
            .filter(|d| filter.matches(d))
            .collect()
    }

    /// `stacks[]`, as raw JSON values.
    pub fn stacks(&self) -> &[Value] {
        req_array(&self.json, "stacks")
    }

    /// The `stacks[]` entries whose stack has a frame for function `name`.
    pub fn stacks_with_frame(&self, name: &str) -> Vec<&Value> {
        self.stacks()
            .iter()
            .filter(|s| stack_symbols(s).iter().any(|sym| symbol_is(sym, name)))
            .collect()
    }
}

/// Selects descriptors; unset fields match anything.
#[derive(Clone, Debug, Default)]
pub struct Filter<'a> {
    pub pid: Option<u32>,
    pub kind: Option<&'a str>,
    pub opened_by: Option<&'a [&'a str]>,
    pub at_exit: Option<bool>,
}

impl<'a> Filter<'a> {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn pid(mut self, pid: u32) -> Self {
        self.pid = Some(pid);
        self
    }
    pub fn kind(mut self, kind: &'a str) -> Self {
        self.kind = Some(kind);
        self
    }
    /// Matches when `opened_by` is any of `any_of`.
    pub fn opened_by(mut self, any_of: &'a [&'a str]) -> Self {
        self.opened_by = Some(any_of);
        self
    }
    pub fn at_exit(mut self, at_exit: bool) -> Self {
        self.at_exit = Some(at_exit);
        self
    }
    pub fn matches(&self, d: &Descriptor<'_>) -> bool {
        self.pid.is_none_or(|p| d.pid() == p)
            && self.kind.is_none_or(|k| d.kind() == k)
            && self.opened_by.is_none_or(|o| o.contains(&d.opened_by()))
            && self.at_exit.is_none_or(|a| d.at_exit() == a)
    }
}

/// One `open_descriptors[]` entry.
#[derive(Clone, Copy)]
pub struct Descriptor<'a> {
    pub v: &'a Value,
}

impl<'a> Descriptor<'a> {
    pub fn pid(&self) -> u32 {
        to_pid(req_u64(self.v, "pid"))
    }
    pub fn fd(&self) -> u64 {
        req_u64(self.v, "fd")
    }
    pub fn kind(&self) -> &'a str {
        req_str(self.v, "kind")
    }
    /// `detail`, `None` when null.
    pub fn detail(&self) -> Option<&'a str> {
        req(self.v, "detail").as_str()
    }
    pub fn opened_by(&self) -> &'a str {
        req_str(self.v, "opened_by")
    }
    pub fn at_exit(&self) -> bool {
        req_bool(self.v, "at_exit")
    }
    /// `tcp_state`, `None` when absent or null.
    pub fn tcp_state(&self) -> Option<&'a str> {
        self.v.get("tcp_state").and_then(Value::as_str)
    }
    /// The stack's symbols, innermost first (`"?"` for unknown ones).
    pub fn stack_symbols(&self) -> Vec<String> {
        stack_symbols(self.v)
    }
    /// Whether the creating stack has a frame for function `name`.
    pub fn has_frame(&self, name: &str) -> bool {
        self.stack_symbols().iter().any(|s| symbol_is(s, name))
    }
}

impl fmt::Debug for Descriptor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.v)
    }
}

/// One `processes[]` entry.
#[derive(Clone, Copy)]
pub struct Process<'a> {
    pub v: &'a Value,
}

impl Process<'_> {
    pub fn pid(&self) -> u32 {
        to_pid(req_u64(self.v, "pid"))
    }
    pub fn exited(&self) -> bool {
        req_bool(self.v, "exited")
    }
}

impl fmt::Debug for Process<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example report of DESIGN.md's "Report contract (v1)".
    const EXAMPLE: &str = r#"{
      "version": 1,
      "target": {"pid": 1234, "command": ["./server", "--port", "8080"]},
      "duration_s": 5.0,
      "events": {"received": 10234, "lost": 0},
      "processes": [{"pid": 1234, "ppid": 1, "comm": "server", "exited": false}],
      "open_descriptors": [{
        "pid": 1234, "fd": 7, "kind": "socket",
        "detail": "tcp 127.0.0.1:8080 <- 127.0.0.1:51234",
        "tcp_state": "CLOSE_WAIT", "deleted": false,
        "opened_by": "accept4", "tid": 1236, "age_s": 3.2, "at_exit": false,
        "stack_id": 17,
        "stack": [{"addr": "0x55d0c0a1b2c3", "symbol": "take_connection",
                   "module": "/srv/server", "file": "server.c", "line": 28},
                  {"addr": "0x55d0c0a1b000", "symbol": null,
                   "module": "/srv/server", "file": null, "line": null}]
      }],
      "stacks": [{"stack_id": 17, "open_count": 12, "oldest_age_s": 4.9,
                  "kinds": {"socket": 12},
                  "stack": [{"addr": "0x1", "symbol": "take_connection+0x1f"}]}],
      "tcp": {"CLOSE_WAIT": 12, "TIME_WAIT": 3}
    }"#;

    fn example() -> Report {
        Report::new(serde_json::from_str(EXAMPLE).unwrap())
    }

    /// The typed accessors read every required key of the contract's example report.
    #[test]
    fn accessors_read_the_contract_example() {
        let r = example();
        assert_eq!(r.version(), 1);
        assert_eq!(r.target_pid(), 1234);
        assert_eq!(r.events_received(), 10234);
        assert_eq!(r.events_lost(), 0);
        assert!(!r.process(1234).unwrap().exited());
        let d = r.open_descriptors()[0];
        assert_eq!((d.pid(), d.fd(), d.kind()), (1234, 7, "socket"));
        assert_eq!(d.opened_by(), "accept4");
        assert_eq!(d.tcp_state(), Some("CLOSE_WAIT"));
        assert!(!d.at_exit());
        assert_eq!(d.stack_symbols(), ["take_connection", "?"]);
        assert!(d.has_frame("take_connection"));
        assert_eq!(r.stacks_with_frame("take_connection").len(), 1);
    }

    /// Filters select descriptors by pid, kind, opened_by and at_exit.
    #[test]
    fn filters_select_descriptors() {
        let r = example();
        let accepted = ["accept", "accept4"];
        assert_eq!(
            r.descriptors(&Filter::new().pid(1234).kind("socket").opened_by(&accepted))
                .len(),
            1
        );
        assert!(r.descriptors(&Filter::new().pid(1)).is_empty());
        assert!(r.descriptors(&Filter::new().kind("file")).is_empty());
        assert!(
            r.descriptors(&Filter::new().opened_by(&["openat"]))
                .is_empty()
        );
        assert!(r.descriptors(&Filter::new().at_exit(true)).is_empty());
    }

    /// excerpt keeps short texts whole and cuts long ones at a char boundary.
    #[test]
    fn excerpt_cuts_long_text() {
        assert_eq!(excerpt("abc", 10), "abc");
        let cut = excerpt("ééééé", 3);
        assert!(cut.starts_with("é\n... (8 more bytes)"), "{cut}");
    }

    /// symbol_is accepts the bare name and name+offset / name.suffix, nothing else.
    #[test]
    fn symbol_matching() {
        assert!(symbol_is("accept_connection", "accept_connection"));
        assert!(symbol_is("accept_connection+0x12", "accept_connection"));
        assert!(symbol_is("accept_connection.isra.0", "accept_connection"));
        assert!(!symbol_is("accept_connections", "accept_connection"));
        assert!(!symbol_is("accept", "accept_connection"));
    }

    /// A missing required key panics with the key's name.
    #[test]
    #[should_panic(expected = "\"events\"")]
    fn missing_key_names_the_key() {
        let r = Report::new(serde_json::json!({"version": 1}));
        r.events_lost();
    }

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
