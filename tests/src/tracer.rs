//! The handle of a running `tracer`: start it, wait until its probes are attached, stop it
//! with SIGINT and take its report.

use std::{
    process::{Child, Command, Stdio},
    sync::{Arc, Condvar, Mutex, mpsc::Receiver},
    thread,
    time::{Duration, Instant},
};

use crate::{
    env::tracer_bin,
    pipes::{spawn_line_reader, spawn_slurper},
    procs::{signal, wait_child},
    report_view::{REPORT_EXCERPT, Report, excerpt},
    tracer_output::TracerOutput,
};

/// How long a tracer may take to exit after SIGINT before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long loading and attaching the probes may take. A few seconds on a host; in the test
/// VM's Debian 6.1 guest under QEMU TCG, with the CPython frame walk in every probe, about
/// 50 s for `--pid` and more than 60 s for `--all` (seen in `cargo xtask test --vm`).
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(180);

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
    #[track_caller]
    pub fn attach(pid: u32, extra: &[&str]) -> Tracer {
        let mut args = vec!["--json".to_string(), "--pid".to_string(), pid.to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Tracer::spawn(&args, &[])
    }

    /// `tracer --json EXTRA... -- COMMAND...`
    #[track_caller]
    pub fn command(extra: &[&str], command: &[&str]) -> Tracer {
        let mut args = vec!["--json".to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push("--".to_string());
        args.extend(command.iter().map(|s| s.to_string()));
        Tracer::spawn(&args, &[])
    }

    /// `tracer ARGS...` with extra environment variables.
    #[track_caller]
    pub fn spawn(args: &[String], env: &[(&str, &str)]) -> Tracer {
        use std::os::unix::process::CommandExt as _;
        let bin = tracer_bin();
        eprintln!("[harness] starting {} {}", bin.display(), args.join(" "));
        let started = Command::new(&bin)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn();
        let mut child = match started {
            Ok(child) => child,
            Err(e) => panic!("cannot start {}: {e}", bin.display()),
        };
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

    /// Whether the tracer printed a stderr line containing `attached`.
    fn has_attached(&self) -> bool {
        self.stderr
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .attached
    }

    /// Blocks until the tracer printed a stderr line containing `attached`. Panics with its
    /// stderr on timeout or when it exits first.
    #[track_caller]
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
                if self.has_attached() {
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

    /// Blocks until the tracer's stderr holds a line for which `found` is true, and returns
    /// that line. Panics with its stderr on timeout, or when its stderr ends first.
    #[track_caller]
    pub fn wait_for_stderr(
        &self,
        what: &str,
        timeout: Duration,
        found: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.stderr;
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(line) = st.text.lines().find(|l| found(l)) {
                return line.to_owned();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if st.eof || left.is_zero() {
                let why = if st.eof {
                    "its stderr ended".to_owned()
                } else {
                    format!("{timeout:?} passed")
                };
                panic!(
                    "tracer ({}): no stderr line with {what}; {why}. stderr:\n{}",
                    self.args.join(" "),
                    st.text
                );
            }
            st = cv
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Sends SIGINT (Ctrl-C), waits for the tracer to exit (killing it after
    /// [`STOP_TIMEOUT`]), asserts exit status 0 and returns the parsed report.
    #[track_caller]
    pub fn stop(self) -> Report {
        signal(self.pid() as i32, libc::SIGINT);
        self.finish(STOP_TIMEOUT)
    }

    /// Waits up to `timeout` for the tracer to stop by itself (`--duration`, target exit),
    /// asserts exit status 0 and returns the parsed report.
    #[track_caller]
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
    #[track_caller]
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
        let Ok(stdout) = self.stdout.recv_timeout(Duration::from_secs(10)) else {
            // Something else (e.g. a `--` COMMAND) still holds the pipe.
            panic!(
                "tracer ({}) exited with {status} but its stdout stayed open (is a child \
                 still holding it?); stderr:\n{}",
                self.args.join(" "),
                self.stderr()
            );
        };
        TracerOutput {
            args: std::iter::once("tracer".to_string())
                .chain(self.args.iter().cloned())
                .collect(),
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
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
