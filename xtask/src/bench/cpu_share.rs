//! Where a process's CPU goes while programs are attached, from perf's cpu-clock samples of
//! the whole machine with their kernel call chains: the share of the process's samples inside
//! BPF programs (a JIT-ed `bpf_prog_*` frame on the chain, helpers included) and inside the
//! kernel's tracing hooks around them (the traced-syscall path and perf's tracepoint
//! dispatch), out of all of its samples.
//!
//! Both shares are counted within one window, so the machine's speed, which moves nginx's
//! requests per second by a fifth between runs on a shared VM, cancels out of them: they
//! repeat where the rates do not. A process that spends a share `s` of its CPU there serves
//! at most `1 - s` of its untraced rate (its own work is unchanged at best; the caches the
//! programs disturb can only slow it further), so `1 - s` is an upper bound on the rate
//! ratio, and a budget it misses is missed whatever the rates' noise says.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::tools::path_of;
use crate::process::describe;

/// The kernel functions of the tracing hooks: the traced-syscall path every syscall takes
/// once a syscall tracepoint is enabled, and perf's dispatch from a tracepoint to its
/// programs (and, when a program returns non-zero, to perf's own event handling).
const HOOKS: &[&str] = &[
    "syscall_trace_enter",
    "syscall_exit_work",
    "perf_syscall_enter",
    "perf_syscall_exit",
    "perf_trace_buf_alloc",
    "perf_trace_buf_update",
    "perf_trace_run_bpf_submit",
    "perf_call_bpf_enter",
    "perf_call_bpf_exit",
    "perf_swevent_get_recursion_context",
    "perf_swevent_put_recursion_context",
    "perf_swevent_event",
    "perf_tp_event",
    "perf_tp_event_match",
    "trace_call_bpf",
    "__bpf_trace_run",
];

/// One window's split of a process's samples.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(crate) struct Shares {
    /// The process's samples in the window.
    pub samples: u64,
    /// Fractions of them inside BPF programs, and inside the hooks (outside any program).
    pub programs: f64,
    pub hooks: f64,
}

impl Shares {
    /// Programs and hooks together: what tracing took of the process's CPU.
    pub(crate) fn tracing(&self) -> f64 {
        self.programs + self.hooks
    }
}

/// Samples the whole machine for `seconds` with perf (cpu-clock, call chains) into `data`,
/// and splits `pid`'s samples.
pub(crate) fn sample(pid: u32, seconds: u64, data: &Path) -> Result<Shares> {
    let mut record = Command::new(path_of("perf"));
    record
        .args([
            "record",
            "-q",
            "-a",
            "-g",
            "-e",
            "cpu-clock",
            "-F",
            "4999",
            "-o",
        ])
        .arg(data)
        .args(["--", "sleep", &seconds.to_string()]);
    perf(&mut record)?;
    let mut script = Command::new(path_of("perf"));
    script.args(["script", "-F", "pid,ip,sym", "-i"]).arg(data);
    let text = perf(&mut script);
    let _ = std::fs::remove_file(data);
    let shares = split(&String::from_utf8_lossy(&text?), pid);
    if shares.samples == 0 {
        bail!("perf recorded no sample of pid {pid}");
    }
    Ok(shares)
}

/// Runs one perf command; its stdout, or its stderr as a one-line error.
fn perf(cmd: &mut Command) -> Result<Vec<u8>> {
    let output = cmd
        .output()
        .with_context(|| format!("cannot run `{}`", describe(cmd)))?;
    if !output.status.success() {
        bail!(
            "`{}` failed: {}",
            describe(cmd),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

/// Splits `perf script -F pid,ip,sym` output (a line with the pid, then one line per frame,
/// samples separated by blank lines) for `pid`'s samples.
fn split(script: &str, pid: u32) -> Shares {
    let (mut samples, mut programs, mut hooks) = (0u64, 0u64, 0u64);
    for sample in script.split("\n\n") {
        let mut lines = sample.lines().skip_while(|line| line.trim().is_empty());
        let Some(header) = lines.next() else {
            continue;
        };
        if header.trim().parse::<u32>() != Ok(pid) {
            continue;
        }
        samples += 1;
        let symbols: Vec<&str> = lines
            .filter_map(|frame| frame.split_whitespace().nth(1))
            .collect();
        if symbols.iter().any(|s| s.starts_with("bpf_prog_")) {
            programs += 1;
        } else if symbols.iter().any(|s| HOOKS.contains(s)) {
            hooks += 1;
        }
    }
    let share = |n: u64| {
        if samples == 0 {
            0.0
        } else {
            n as f64 / samples as f64
        }
    };
    Shares {
        samples,
        programs: share(programs),
        hooks: share(hooks),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A program frame anywhere on the chain makes a program sample (a helper it called
    /// included); a hook frame without one makes a hook sample; other pids do not count.
    #[test]
    fn splits_one_pids_samples() {
        let script = "\
 42 
\tffffffff81000001 bpf_probe_read_user
\tffffffffa0000002 bpf_prog_0123456789abcdef_sys_exit_openat
\tffffffff81000003 trace_call_bpf
\tffffffff81000004 perf_syscall_exit

 42 
\tffffffff81000005 syscall_trace_enter
\tffffffff81000006 do_syscall_64

 42 
\tffffffff81000007 tcp_sendmsg
\t    7f0000000008 __libc_write

 42 
\t    55000000000a ngx_http_handler

 7 
\tffffffff81000009 perf_syscall_exit
";
        let shares = split(script, 42);
        assert_eq!(shares.samples, 4);
        assert_eq!((shares.programs, shares.hooks), (0.25, 0.25));
        assert_eq!(shares.tracing(), 0.5);
        assert_eq!(split(script, 8).samples, 0);
    }
}
