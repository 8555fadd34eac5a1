//! A target the bench steps through: it prints a line when it reaches each step and waits
//! for a line on stdin to go on, so a tracer can attach, and counters be read, between
//! steps.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::process::describe;

pub(crate) struct Scripted {
    child: Child,
    name: String,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Scripted {
    /// Starts `cmd` with stdin and stdout piped to us (stderr goes to ours).
    pub(crate) fn spawn(cmd: &mut Command) -> Result<Scripted> {
        let name = describe(cmd);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start `{name}`"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Scripted {
            child,
            name,
            stdin,
            lines,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line that is `step`.
    pub(crate) fn wait_line(&mut self, step: &str, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            match self
                .lines
                .recv_timeout(timeout.saturating_sub(started.elapsed()))
            {
                Ok(line) if line.trim() == step => return Ok(()),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => bail!(
                    "`{}` did not print {step} within {}s",
                    self.name,
                    timeout.as_secs()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("`{}` exited before printing {step}", self.name)
                }
            }
        }
    }

    /// Lets the target go on to its next step.
    pub(crate) fn send_line(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        stdin
            .write_all(b"go\n")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("cannot write to `{}`", self.name))
    }

    /// Closes stdin (the target's last step ends at EOF) and waits for a clean exit.
    pub(crate) fn finish(mut self, timeout: Duration) -> Result<()> {
        drop(self.stdin.take());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().context("waitpid failed")? {
                if !status.success() {
                    bail!("`{}` failed ({status})", self.name);
                }
                return Ok(());
            }
            if started.elapsed() >= timeout {
                bail!("`{}` did not exit within {}s", self.name, timeout.as_secs());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Scripted {
    /// A target left waiting (after an error) must not outlive the bench.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
