//! A target the bench steps through: it prints a line when it reaches each step and waits
//! for a line on stdin to go on, so a tracer can attach, and counters be read, between
//! steps. The targets: bench/py_open_close.py under a CPython, and the C workload's
//! open+close loop behind a shell that waits the same way.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::workload::Workload;
use crate::process::{describe, workspace_root};

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

/// bench/py_open_close.py: READY, WARM after a warm-up of a twentieth, DONE after `n`.
pub(crate) fn python_argv(python: &Path, n: u64, result: &Path) -> Vec<String> {
    let script = workspace_root().join("bench").join("py_open_close.py");
    vec![
        python.display().to_string(),
        script.display().to_string(),
        (n / 20).max(1000).to_string(),
        n.to_string(),
        result.display().to_string(),
        "/dev/null".to_owned(),
    ]
}

/// The C workload's open+close loop behind the same READY/WARM/DONE steps, from a shell.
pub(crate) fn c_argv(workload: &mut Workload, n: u64, result: &Path) -> Vec<String> {
    let warm = workload.result_path();
    vec![
        "sh".to_owned(),
        "-c".to_owned(),
        "echo READY; read x; \"$0\" open \"$1\" \"$2\" || exit 1; echo WARM; read x; \
         \"$0\" open \"$3\" \"$4\" || exit 1; echo DONE; cat >/dev/null"
            .to_owned(),
        workload.binary.display().to_string(),
        (n / 20).max(1000).to_string(),
        warm.display().to_string(),
        n.to_string(),
        result.display().to_string(),
    ]
}

/// pyenv's newest 3.12, else Debian's 3.11; why neither, if neither.
pub(crate) fn find_interpreter() -> Result<PathBuf, String> {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| {
            Command::new("pyenv")
                .arg("root")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        })
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv"));
    let versions = root.join("versions");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&versions)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("3.12."))
        .map(|e| e.path().join("bin/python3"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    if let Some(python) = found.pop() {
        return Ok(python);
    }
    let debian = PathBuf::from("/usr/bin/python3.11");
    if debian.is_file() {
        return Ok(debian);
    }
    Err(format!(
        "no pyenv 3.12 under {} and no {}",
        versions.display(),
        debian.display()
    ))
}
