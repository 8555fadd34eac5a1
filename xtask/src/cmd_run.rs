//! `cargo xtask run`: build the tracer, then run it as root with the given arguments.

use std::{
    env,
    ffi::OsString,
    io, iter, mem,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode, ExitStatus},
    ptr,
    sync::atomic::{AtomicI32, Ordering},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    bootstrap::{self, Needs},
    cmd_build::{Profile, build_tracer},
    process::{describe, find_on_path, is_root},
};

/// Build the tracer (release) and run `tracer ARGS...` as root; exits with its exit code.
///
/// When not root, the tracer runs under `sudo -E`. Ctrl-C reaches the tracer, which then
/// prints its report.
///
/// Examples: `cargo xtask run --pid 1234 --json`, `cargo xtask run -- ./server --port 8080`,
/// `cargo xtask run --help` (the tracer's help; this one is `cargo xtask help run`).
#[derive(Args)]
#[command(disable_help_flag = true)]
pub(crate) struct Options {
    /// Arguments for the tracer, passed on unchanged
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<OsString>,
}

/// How the tracer gets the privileges that loading eBPF programs needs.
enum Privilege {
    Root,
    Sudo(PathBuf),
}

pub(crate) fn run(options: Options) -> Result<ExitCode> {
    let args = tracer_args(options.args);
    // Decided before building so a machine where the tracer cannot run fails in a second.
    let privilege = privilege()?;
    bootstrap::run(Needs {
        c_compiler: false,
        servers: false,
        vm: false,
    })?;
    let binary = build_tracer(Profile::Release)?;
    let mut cmd = tracer_command(&privilege, &binary);
    cmd.args(args);
    eprintln!("==> {}", describe(&cmd));
    let status = wait_passing_signals(&mut cmd)?;
    Ok(exit_code(status))
}

/// clap drops a `--` that comes right after `run`, but to the tracer it means "what follows
/// is the command to start", so put it back. (xtask has no global options, so the raw
/// arguments are always `xtask run ...`.)
fn tracer_args(parsed: Vec<OsString>) -> Vec<OsString> {
    let leading_separator = env::args_os().nth(2).is_some_and(|arg| arg == "--");
    if leading_separator {
        iter::once(OsString::from("--")).chain(parsed).collect()
    } else {
        parsed
    }
}

fn privilege() -> Result<Privilege> {
    if is_root() {
        return Ok(Privilege::Root);
    }
    match find_on_path("sudo") {
        Some(sudo) => Ok(Privilege::Sudo(sudo)),
        None => bail!("tracer needs root (CAP_BPF/CAP_PERFMON): run as root"),
    }
}

fn tracer_command(privilege: &Privilege, binary: &Path) -> Command {
    match privilege {
        Privilege::Root => Command::new(binary),
        Privilege::Sudo(sudo) => {
            eprintln!("not root: running the tracer through sudo");
            // -E keeps RUST_LOG and the like; the tracer is named by absolute path, so
            // sudo's own PATH does not matter.
            let mut cmd = Command::new(sudo);
            cmd.arg("-E").arg(binary);
            cmd
        }
    }
}

/// PID of the running tracer (or of sudo, which relays signals to it); 0 while none runs.
static CHILD: AtomicI32 = AtomicI32::new(0);

/// SIGTERM sent to xtask alone (e.g. by a CI timeout) must still stop the tracer, which then
/// prints its report.
extern "C" fn forward_sigterm(_signal: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; at worst the child has already exited.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

/// Ctrl-C reaches the whole foreground process group, the tracer included; xtask just
/// stays alive to report the tracer's exit code.
extern "C" fn ignore_signal(_signal: libc::c_int) {}

/// Runs `cmd` to completion with SIGINT ignored and SIGTERM forwarded to it.
fn wait_passing_signals(cmd: &mut Command) -> Result<ExitStatus> {
    // Handlers rather than SIG_IGN: exec resets handlers to the default in the child, but
    // would pass SIG_IGN on, leaving the tracer deaf to Ctrl-C.
    set_handler(libc::SIGINT, ignore_signal)?;
    set_handler(libc::SIGTERM, forward_sigterm)?;
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{}`", describe(cmd)))?;
    // A pid always fits: Linux pids are at most 2^22.
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    let status = child.wait().context("waiting for the tracer failed");
    CHILD.store(0, Ordering::SeqCst);
    status
}

fn set_handler(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) -> Result<()> {
    // SAFETY: an all-zero sigaction is valid: empty mask, no flags.
    let mut action: libc::sigaction = unsafe { mem::zeroed() };
    action.sa_sigaction = handler as *const () as libc::sighandler_t;
    // Restart interrupted system calls, so waiting for the child is not cut short.
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: `action` is initialised and both handlers only do async-signal-safe work.
    let rc = unsafe { libc::sigaction(signal, &action, ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("could not set a handler for signal {signal}"));
    }
    Ok(())
}

/// The child's exit code, or 128 + signal number when a signal killed it, as shells do.
fn exit_code(status: ExitStatus) -> ExitCode {
    ExitCode::from(exit_number(status))
}

fn exit_number(status: ExitStatus) -> u8 {
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1);
    u8::try_from(code).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A normal exit passes its code through unchanged.
    #[test]
    fn forwards_exit_code() {
        assert_eq!(exit_number(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_number(ExitStatus::from_raw(7 << 8)), 7);
    }

    /// Death by signal becomes 128 + signal, like a shell reports it.
    #[test]
    fn maps_signal_to_shell_code() {
        assert_eq!(exit_number(ExitStatus::from_raw(libc::SIGINT)), 130);
        assert_eq!(exit_number(ExitStatus::from_raw(libc::SIGTERM)), 143);
    }
}
