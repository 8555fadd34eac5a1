//! Boots one kernel with the test initramfs under QEMU, streams the guest's serial console,
//! and turns the init script's result line (or its absence) into the outcome.
//!
//! QEMU runs with TCG, the pure emulator: /dev/kvm may exist on a CI machine that is itself
//! a VM, where nested KVM guests crash. TCG runs one host thread for all virtual CPUs
//! (`thread=single`): with a thread per CPU (QEMU 7.2, a busy 2-core host) the 6.1 guest
//! twice locked up in do_exit while the tracer attached, spinning at a tracepoint's patch
//! site; with one thread it has not.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// The line the init script ends with.
const RESULT_MARKER: &str = "TRACER-VM-RESULT: ";
/// How many console lines a failure shows again.
const TAIL_LINES: usize = 60;

/// How the guest is run.
pub(super) struct Boot<'a> {
    /// A short name for the console prefix, e.g. `6.1.0-56-cloud-amd64`.
    pub label: &'a str,
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    pub cpus: u32,
    pub memory_mib: u32,
    /// QEMU is killed after this long, whatever the guest is doing.
    pub timeout: Duration,
}

/// Boots the guest and waits for its result; an error says what failed.
pub(super) fn run(boot: &Boot) -> Result<()> {
    let mut cmd = qemu_command(boot);
    eprintln!(
        "==> booting {} under QEMU (TCG, {} CPUs, {} MiB; killed after {} s)",
        boot.label,
        boot.cpus,
        boot.memory_mib,
        boot.timeout.as_secs()
    );
    let started = Instant::now();
    let mut child = cmd.spawn().context("could not start qemu-system-x86_64")?;
    let guard = KillOnDrop(&mut child);
    let lines = console_lines(guard.0);
    // On a timeout the error returns through the guard, which kills QEMU.
    let console = follow_console(boot, &lines, started + boot.timeout)?;
    let status = guard.0.wait().context("waiting for QEMU")?;
    let elapsed = started.elapsed().as_secs_f64();
    match console.result.as_deref() {
        Some("PASS") => {
            eprintln!("{}: the suite passed in {elapsed:.0} s", boot.label);
            Ok(())
        }
        Some(failure) => bail!(
            "{} (after {elapsed:.0} s; its output is above)",
            describe_failure(failure)
        ),
        None => bail!(
            "the guest stopped without a result (QEMU {status}, after {elapsed:.0} s): a \
             kernel panic or a crash of /init. {}",
            joined(&console.tail)
        ),
    }
}

/// The QEMU command line: the kernel, the initramfs, the serial console on stdout.
fn qemu_command(boot: &Boot) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg,thread=single",
        "-nodefaults",
        "-no-user-config",
    ])
    .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
    .arg("-no-reboot")
    .args(["-m", &boot.memory_mib.to_string()])
    .args(["-smp", &boot.cpus.to_string()])
    .arg("-kernel")
    .arg(boot.vmlinuz)
    .arg("-initrd")
    .arg(boot.initramfs)
    // panic=-1 reboots at once on a panic, and -no-reboot turns that into QEMU exiting;
    // softlockup_panic makes a hung CPU a panic with a backtrace instead of a timeout.
    // no_timer_check: on a busy host, emulated time runs unevenly and the kernel's early
    // check that the timer interrupt arrives through the IO-APIC can fail ("IO-APIC + timer
    // doesn't work!"), which panics the boot (seen with 6.1 under a load average of 9).
    .args([
        "-append",
        "console=ttyS0 panic=-1 softlockup_panic=1 no_timer_check quiet",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd
}

/// The lines QEMU prints, each with whether it came from QEMU itself (stderr) rather than
/// the guest's console (stdout), read by one thread per pipe. The channel closes when both
/// pipes have closed, that is when QEMU has exited.
fn console_lines(qemu: &mut Child) -> Receiver<(bool, String)> {
    let (tx, lines) = mpsc::channel();
    let stdout = qemu.stdout.take().expect("piped stdout");
    let stderr = qemu.stderr.take().expect("piped stderr");
    for (pipe, from_qemu) in [
        (Box::new(stdout) as Box<dyn std::io::Read + Send>, false),
        (Box::new(stderr), true),
    ] {
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_owned();
                if tx.send((from_qemu, line)).is_err() {
                    break;
                }
            }
        });
    }
    lines
}

/// What the console showed: the result line's outcome, if it came, and the last lines.
struct Console {
    result: Option<String>,
    tail: VecDeque<String>,
}

/// Prints the console with a source prefix until QEMU exits; an error when `deadline`
/// comes first.
fn follow_console(
    boot: &Boot,
    lines: &Receiver<(bool, String)>,
    deadline: Instant,
) -> Result<Console> {
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    let mut result = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok((from_qemu, line)) => {
                let source = if from_qemu { "qemu" } else { boot.label };
                println!("[{source}] {line}");
                if let Some(outcome) = line.strip_prefix(RESULT_MARKER) {
                    result = Some(outcome.trim().to_owned());
                }
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            Err(RecvTimeoutError::Timeout) => bail!(
                "no result within {} s; QEMU was killed. {}",
                boot.timeout.as_secs(),
                joined(&tail)
            ),
            // Both pipes closed: QEMU exited.
            Err(RecvTimeoutError::Disconnected) => return Ok(Console { result, tail }),
        }
    }
}

/// `FAIL <binary> <status>` as a sentence.
fn describe_failure(outcome: &str) -> String {
    let mut words = outcome.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("FAIL"), Some(binary), Some("137")) => {
            format!("test binary {binary} was killed: it ran past its time limit")
        }
        (Some("FAIL"), Some(binary), Some(status)) => {
            format!("test binary {binary} failed (exit status {status})")
        }
        _ => format!("unexpected result line {outcome:?}"),
    }
}

/// The console's last lines for an error message, or that there were none.
fn joined(tail: &VecDeque<String>) -> String {
    if tail.is_empty() {
        return "The console stayed empty.".to_owned();
    }
    let lines: Vec<String> = tail.iter().map(|line| format!("  | {line}")).collect();
    format!("Last console lines:\n{}", lines.join("\n"))
}

/// Kills QEMU when the run ends early (timeout, error), so no emulator outlives xtask.
struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A killed binary (SIGKILL from the guest's timeout) reads as a timeout, others as
    /// failures with their status.
    #[test]
    fn failure_lines_become_sentences() {
        assert_eq!(
            describe_failure("FAIL prefork 101"),
            "test binary prefork failed (exit status 101)"
        );
        assert!(describe_failure("FAIL busy_churn 137").contains("time limit"));
        assert!(describe_failure("garbage").contains("unexpected"));
    }
}
