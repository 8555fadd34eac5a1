//! A server with short-lived workers: the tracer follows a parent that forks 1 000, then
//! 100 000 children one after the other, each exiting with 2 descriptors open. What it must
//! show: its peak memory and its JSON report stay about the same, because exited processes
//! are folded into one group per stack and forgotten once reaped.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{
    capacity::{wait_until_idle, watch_peak},
    procstat::status_kib,
    tracer::Attached,
    workload::{self, Workload, command},
};

/// One run: how many children, and what the tracer needed for them.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ForksResult {
    pub children: u64,
    /// How long the workload took to fork and reap them all, traced.
    pub forking_s: f64,
    pub rss_attached_mib: f64,
    /// Peak resident size of the tracer, through the report.
    pub peak_mib: f64,
    /// The JSON report, bytes.
    pub report_bytes: u64,
    /// From the report: exited processes counted, processes listed, at-exit groups, events.
    pub exited: u64,
    pub processes_listed: u64,
    pub at_exit_groups: u64,
    pub received: u64,
    pub lost: u64,
}

/// Runs the workload with `children` short-lived children under `tracer --json`.
pub(crate) fn run(
    tracer_bin: &Path,
    workload: &mut Workload,
    children: u64,
) -> Result<ForksResult> {
    let (mut parent, result) = start_forking(workload, children)?;
    let parent_pid = parent.id() as i32;
    let outcome = (|| {
        let attached = Attached::start(tracer_bin, parent.id(), &["--json"])?;
        let tracer_pid = attached.pid();
        let rss_attached = status_kib(tracer_pid, "VmRSS")?;
        let peak = watch_peak(tracer_pid);
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(parent_pid, libc::SIGUSR1) };
        let values = workload::await_result(&result, Duration::from_secs(3600))?;
        let forking_s = workload::value(&values, "elapsed_s")?;
        wait_until_idle(tracer_pid, Duration::from_secs(300))?;
        let ended = attached.stop()?;
        let report: serde_json::Value =
            serde_json::from_str(&ended.stdout).context("the tracer's JSON report")?;
        let count = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        Ok(ForksResult {
            children,
            forking_s,
            rss_attached_mib: rss_attached as f64 / 1024.0,
            peak_mib: peak.join().ok().flatten().unwrap_or(0) as f64 / 1024.0,
            report_bytes: ended.stdout.len() as u64,
            exited: count(&report["process_counts"]["exited"]),
            processes_listed: report["processes"].as_array().map_or(0, Vec::len) as u64,
            at_exit_groups: report["at_exit_stacks"].as_array().map_or(0, Vec::len) as u64,
            received: count(&report["events"]["received"]),
            lost: count(&report["events"]["lost"]),
        })
    })();
    // SAFETY: as above; the workload exits on SIGTERM.
    unsafe { libc::kill(parent_pid, libc::SIGTERM) };
    let _ = parent.wait();
    outcome
}

/// The table: one line per run.
pub(crate) fn print(results: &[ForksResult]) {
    println!();
    println!("Short-lived children (each exits holding 2 descriptors), tracer --json:");
    println!(
        "| children | forked in | tracer RSS at attach | tracer peak RSS | JSON report | exited counted | processes listed | at-exit groups | events | lost |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in results {
        println!(
            "| {} | {:.1} s | {:.1} MiB | {:.1} MiB | {:.1} KiB | {} | {} | {} | {} | {} |",
            r.children,
            r.forking_s,
            r.rss_attached_mib,
            r.peak_mib,
            r.report_bytes as f64 / 1024.0,
            r.exited,
            r.processes_listed,
            r.at_exit_groups,
            r.received,
            r.lost
        );
    }
}

/// Starts the workload's `forks` mode, which forks `children` short-lived workers once it is
/// released; returns it and the file its result will be written to. The soak part runs the
/// same workload.
pub(crate) fn start_forking(workload: &mut Workload, children: u64) -> Result<(Child, PathBuf)> {
    let result = workload.result_path();
    let argv = vec![
        workload.binary.display().to_string(),
        "forks".to_owned(),
        children.to_string(),
        result.display().to_string(),
    ];
    let parent = command(&argv)
        .stdin(Stdio::null())
        .spawn()
        .context("could not start the workload")?;
    Ok((parent, result))
}
