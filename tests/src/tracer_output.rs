//! What a finished tracer left behind (status, stdout, stderr), and one-shot runs of the
//! tracer that are expected to fail.

use std::{
    path::PathBuf,
    process::{Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::Receiver,
    },
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::{
    env::{scratch_dir, tracer_bin},
    pipes::spawn_slurper,
    procs::{signal, wait_child},
    report_view::{REPORT_EXCERPT, Report, excerpt},
};

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
    #[track_caller]
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
    #[track_caller]
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

/// A `Command` for the tracer binary with `args`.
#[track_caller]
pub fn tracer_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(tracer_bin());
    cmd.args(args);
    cmd
}

/// Runs `cmd` to completion (stdin closed, stdout and stderr collected), killing it and
/// panicking after `timeout`. For one-shot tracer runs that are expected to fail.
#[track_caller]
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> TracerOutput {
    use std::os::unix::process::CommandExt as _;
    let args: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    eprintln!("[harness] running {}", args.join(" "));
    let started = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match started {
        Ok(child) => child,
        Err(e) => panic!("cannot start {}: {e}", args.join(" ")),
    };
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
