//! A child process the bench starts and watches: its stderr lines arrive as they are
//! written (to see `attached`), its stdout is collected, and every wait has a deadline so a
//! stuck tool cannot hang the bench.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::process::describe;

/// Keep at most this much of a child's stdout: the tracer's text report for a million
/// descriptors is far longer, and only its first lines are read.
const STDOUT_KEEP: usize = 4 << 20;

pub(crate) struct Watched {
    child: Child,
    name: String,
    stderr_lines: Receiver<String>,
    /// Every stderr line seen so far, for error messages.
    stderr_seen: Vec<String>,
    stdout: Option<JoinHandle<String>>,
    /// A gated child's stdin, until [`Watched::release`].
    gate: Option<ChildStdin>,
}

/// How a watched child ended.
pub(crate) struct Ended {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ended {
    /// The last line of stderr that says something, for a one-line error.
    pub(crate) fn last_error_line(&self) -> String {
        self.stderr
            .lines()
            .rev()
            .find(|line| line.contains("ERROR") || line.contains("error"))
            .or_else(|| {
                self.stderr
                    .lines()
                    .rev()
                    .find(|line| !line.trim().is_empty())
            })
            .unwrap_or("")
            .trim()
            .to_owned()
    }
}

impl Watched {
    /// Starts `cmd` with stdin closed and stdout and stderr piped to us.
    pub(crate) fn spawn(cmd: &mut Command) -> Result<Watched> {
        Watched::start(cmd.stdin(Stdio::null()))
    }

    /// Starts `argv` behind `sh -c 'read _ && exec "$@"'`: the shell waits for a line on
    /// its stdin, then execs the command, which keeps its pid. So whatever must be in
    /// place before the command's first syscall (a program filtered to its pid) can be set
    /// up between this and [`Watched::release`].
    pub(crate) fn spawn_gated(argv: &[String]) -> Result<Watched> {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "read _ && exec \"$@\"", "sh"])
            .args(argv)
            .stdin(Stdio::piped());
        let mut watched = Watched::start(&mut cmd)?;
        watched.gate = watched.child.stdin.take();
        Ok(watched)
    }

    /// Lets a child started by [`Watched::spawn_gated`] exec its command (its stdin is then
    /// at its end).
    pub(crate) fn release(&mut self) -> Result<()> {
        let mut gate = self.gate.take().context("the child was not gated")?;
        gate.write_all(b"go\n")
            .with_context(|| format!("cannot release `{}`", self.name))
    }

    fn start(cmd: &mut Command) -> Result<Watched> {
        let name = describe(cmd);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start `{name}`"))?;
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (sender, stderr_lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stdout = thread::spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 64 * 1024];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = STDOUT_KEEP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            String::from_utf8_lossy(&kept).into_owned()
        });
        Ok(Watched {
            child,
            name,
            stderr_lines,
            stderr_seen: Vec::new(),
            stdout: Some(stdout),
            gate: None,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a stderr line contains `needle`; returns how long that took. An error if
    /// the child exits first or `timeout` passes (the child is then killed by the caller's
    /// drop of `self`).
    pub(crate) fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let left = timeout.saturating_sub(started.elapsed());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr_seen.push(line);
                    if found {
                        return Ok(started.elapsed());
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!(
                    "`{}` did not print `{needle}` within {}s",
                    self.name,
                    timeout.as_secs()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let ended = self.wait(Duration::from_secs(5))?;
                    bail!(
                        "`{}` exited ({}) before printing `{needle}`: {}",
                        self.name,
                        ended.status,
                        ended.last_error_line()
                    )
                }
            }
        }
    }

    /// Sends `signal` (e.g. SIGINT: the tracer then reports and exits).
    pub(crate) fn signal(&self, signal: libc::c_int) {
        // A pid always fits: Linux pids are at most 2^22.
        // SAFETY: kill has no memory preconditions; at worst the child already exited.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for the child to exit; kills it after `timeout` and says so.
    pub(crate) fn wait(&mut self, timeout: Duration) -> Result<Ended> {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().context("waitpid failed")? {
                break status;
            }
            if started.elapsed() >= timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "`{}` did not finish within {}s and was killed",
                    self.name,
                    timeout.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        // A grandchild that inherited stdout (nginx's workers) could keep the pipe open: give
        // the reader two seconds, then go on without what it has.
        let stdout = match self.stdout.take() {
            Some(reader) => {
                let deadline = Instant::now() + Duration::from_secs(2);
                while !reader.is_finished() && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(10));
                }
                if reader.is_finished() {
                    reader.join().unwrap_or_default()
                } else {
                    String::new()
                }
            }
            None => String::new(),
        };
        // The child is gone, so its stderr pipe closes once any grandchild holding it does;
        // take what has arrived and what comes within a moment.
        let drain_until = Instant::now() + Duration::from_millis(500);
        while let Ok(line) = self
            .stderr_lines
            .recv_timeout(drain_until.saturating_duration_since(Instant::now()))
        {
            self.stderr_seen.push(line);
        }
        Ok(Ended {
            status,
            stdout,
            stderr: self.stderr_seen.join("\n"),
        })
    }

    /// `wait`, then an error naming the command unless it exited with 0.
    pub(crate) fn wait_success(&mut self, timeout: Duration) -> Result<Ended> {
        let ended = self.wait(timeout)?;
        if !ended.status.success() {
            bail!(
                "`{}` failed ({}): {}",
                self.name,
                ended.status,
                ended.last_error_line()
            );
        }
        Ok(ended)
    }
}

impl Drop for Watched {
    /// A child left running (after an error) must not outlive the bench. SIGTERM first, so
    /// that nginx takes its workers along and a tracer detaches; SIGKILL if that is ignored.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        self.signal(libc::SIGCONT);
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
