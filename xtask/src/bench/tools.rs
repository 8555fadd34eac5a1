//! The programs the bench runs besides the tracer, installed from Debian when missing.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{
    bootstrap::{apt_get_install, is_installed},
    process::{find_on_path, is_root, probe},
};

/// Debian package and the program the bench runs from it.
const TOOLS: &[(&str, &str)] = &[
    ("gcc", "cc"),
    ("strace", "strace"),
    ("bpftrace", "bpftrace"),
    ("bpftool", "bpftool"),
    ("nginx", "nginx"),
    ("wrk", "wrk"),
    ("linux-perf", "perf"),
];

/// Installs whichever of the tools is missing, with one `apt-get install`; says what it
/// installs. An error (one line) when they cannot be had.
pub(crate) fn ensure() -> Result<()> {
    eprint!("checking bench tools (cc, strace, bpftrace, bpftool, nginx, wrk, perf) ... ");
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(_, program)| find_on_path(program).is_none() && !in_sbin(program))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        eprintln!("ok");
        return Ok(());
    }
    eprintln!("missing");
    if find_on_path("apt-get").is_none() {
        bail!(
            "the bench needs {} and this is not a Debian-like system: install them and retry",
            missing.join(", ")
        );
    }
    if !is_root() {
        bail!("the bench runs as root (it loads eBPF programs): run `cargo xtask bench` as root");
    }
    let missing = missing.join(" ");
    eprintln!("installing {missing} (apt-get) ...");
    apt_get_install(&missing).with_context(|| format!("could not install {missing}"))?;
    for (package, program) in TOOLS {
        if !is_installed(package) && find_on_path(program).is_none() && !in_sbin(program) {
            bail!("{package} was installed but `{program}` is still missing");
        }
    }
    Ok(())
}

/// nginx lives in /usr/sbin, which a non-login root shell may not have on PATH.
fn in_sbin(program: &str) -> bool {
    Path::new("/usr/sbin").join(program).is_file()
}

/// The path to run a tool by: PATH first, then /usr/sbin.
pub(crate) fn path_of(program: &str) -> String {
    match find_on_path(program) {
        Some(path) => path.display().to_string(),
        None => format!("/usr/sbin/{program}"),
    }
}

/// Whether bpftrace can load and attach a program on this kernel: `None` if it can,
/// otherwise its own reason (Debian's bpftrace may be older than the kernel).
pub(crate) fn bpftrace_problem() -> Option<String> {
    let output = Command::new(path_of("bpftrace"))
        .args([
            "-e",
            "tracepoint:syscalls:sys_enter_close /pid == 1/ {} BEGIN { exit(); }",
        ])
        .output();
    match output {
        Err(err) => Some(format!("cannot start bpftrace: {err}")),
        Ok(output) if output.status.success() => None,
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            Some(
                stderr
                    .lines()
                    .rev()
                    .find(|line| line.contains("ERROR") && !line.contains("RLIMIT_MEMLOCK"))
                    .unwrap_or("bpftrace failed to attach a tracepoint program")
                    .trim()
                    .to_owned(),
            )
        }
    }
}

/// One line about the machine: kernel, CPUs, model, load, for the table and the JSON.
pub(crate) fn machine() -> String {
    let kernel = probe(Command::new("uname").arg("-r")).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("Linux {kernel}, {cpus} CPUs ({model}), load average {load} at start")
}

/// bpftrace finds tracepoints in tracefs, which this machine does not mount at boot (the
/// tracer mounts it itself, but bpftrace may run before the tracer ever has).
pub(crate) fn ensure_tracefs() -> Result<()> {
    let root = Path::new("/sys/kernel/tracing");
    if root.join("events").is_dir() {
        return Ok(());
    }
    let status = Command::new("mount")
        .args(["-t", "tracefs", "nodev"])
        .arg(root)
        .status()
        .context("could not run mount")?;
    if !status.success() || !root.join("events").is_dir() {
        bail!("tracefs is not mounted at /sys/kernel/tracing and mounting it failed");
    }
    Ok(())
}
