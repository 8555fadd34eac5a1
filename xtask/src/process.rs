//! Small helpers for starting child processes and finding things on this machine.

use std::{
    env,
    ffi::OsString,
    io,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root: xtask lives one level below it.
pub(crate) fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask's manifest dir has a parent")
}

/// The cargo that started us (cargo sets `CARGO` for `cargo run`), so nested builds use the
/// same toolchain; plain `cargo` when xtask was started some other way.
pub(crate) fn cargo() -> Command {
    let program = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root());
    cmd
}

/// Where cargo puts build output: `CARGO_TARGET_DIR` (relative to the workspace root, where
/// we run cargo) or `<root>/target`.
pub(crate) fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Whether we run with effective uid 0, which loading eBPF programs needs.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The first `name` in a `PATH` directory, like the shell would find it.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The command line as a user would type it, for messages: the program without its
/// directory (cargo's is deep inside rustup's toolchains), then the arguments.
pub(crate) fn describe(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    let name = program.file_name().unwrap_or(program.as_os_str());
    let mut words = vec![name.to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|arg| arg.to_string_lossy().into_owned()));
    words.join(" ")
}

/// Runs `cmd` with our stdin/stdout/stderr and returns how it ended.
pub(crate) fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status()
        .with_context(|| format!("could not start `{}`", describe(cmd)))
}

/// Runs a build or install step; an error unless it exits with 0. Its stdout goes to our
/// stderr: it is progress, and stdout belongs to results (the tracer's JSON report).
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd.stdout(io::stderr()))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// The trimmed stdout of `cmd` if it starts and exits with 0, `None` otherwise: for checks
/// where "missing" and "broken" lead to the same fix.
pub(crate) fn probe(cmd: &mut Command) -> Option<String> {
    let output = cmd.output().ok()?;
    if !output.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The first line of `program --version`, if the program runs.
pub(crate) fn version_of(program: &str) -> Option<String> {
    let stdout = probe(Command::new(program).arg("--version"))?;
    Some(stdout.lines().next().unwrap_or_default().to_owned())
}
