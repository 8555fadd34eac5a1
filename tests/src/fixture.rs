//! The handle of a running fixture process: its stdout line by line, its stdin, its exit,
//! and the kill of its whole process group when the handle is dropped.

use std::{
    ffi::OsStr,
    io::Write,
    path::Path,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use crate::{
    pipes::spawn_line_reader,
    procs::{signal, wait_child},
};

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
    #[track_caller]
    pub fn spawn(program: impl AsRef<OsStr>, args: &[&str]) -> Fixture {
        use std::os::unix::process::CommandExt as _;
        let program = program.as_ref();
        let name = Path::new(program)
            .file_name()
            .unwrap_or(program)
            .to_string_lossy()
            .into_owned();
        let started = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn();
        let mut child = match started {
            Ok(child) => child,
            Err(e) => panic!("cannot start fixture {program:?}: {e}"),
        };
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

    /// [`Fixture::spawn`] as pid `pid`: the kernel gives a new process the number after
    /// ns_last_pid when it is free. Another fork on the machine can take it first: retried.
    #[track_caller]
    pub fn spawn_as_pid(program: impl AsRef<OsStr>, args: &[&str], pid: u32) -> Fixture {
        let program = program.as_ref();
        for _ in 0..20 {
            std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
                .expect("writing /proc/sys/kernel/ns_last_pid (root)");
            let fixture = Fixture::spawn(program, args);
            if fixture.pid() == pid {
                return fixture;
            }
        }
        panic!("could not start a process as pid {pid} (in use?)");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line starting with `prefix` and returns it. Panics on timeout or
    /// when stdout closes first.
    #[track_caller]
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
    #[track_caller]
    pub fn send_line(&mut self, line: &str) {
        let pid = self.pid();
        let Some(stdin) = self.stdin.as_mut() else {
            panic!(
                "fixture {} (pid {pid}): cannot send {line:?}, its stdin is already closed",
                self.name
            );
        };
        let written = stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush());
        if let Err(e) = written {
            panic!(
                "writing {line:?} to the stdin of fixture {} (pid {pid}): {e}",
                self.name
            );
        }
    }

    /// Closes the fixture's stdin (it sees EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits up to `timeout` for the fixture to exit and reaps it; `None` on timeout.
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = wait_child(&mut self.child, timeout);
        }
        self.status
    }

    /// Whether the fixture has exited (reaping it if so).
    #[track_caller]
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
