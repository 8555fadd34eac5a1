//! Weeks, not minutes: the tracer stays attached, in its long-running mode (a snapshot to
//! --report-dir every few seconds), to a server whose short-lived workers come and go one
//! after the other, each leaving with 2 descriptors open (the forks workload). What it must
//! show: the tracer's resident size at the start, the middle and the end of the run stays
//! flat, however many workers lived. `--soak-children N` sets the size.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{
    capacity::{wait_until_idle, watch_peak},
    forks,
    procstat::status_kib,
    tracer::Attached,
    workload::{self, Workload},
};

/// Seconds between snapshots during the soak.
const SNAPSHOT_EVERY_S: &str = "5";

#[derive(Clone, Debug, Serialize)]
pub(crate) struct SoakResult {
    pub children: u64,
    pub forking_s: f64,
    /// Tracer RSS (MiB) right after attach, at a quarter, half and three quarters of the
    /// forking, when it ended, and once the tracer had caught up.
    pub rss_start_mib: f64,
    pub rss_quarter_mib: f64,
    pub rss_middle_mib: f64,
    pub rss_three_quarters_mib: f64,
    pub rss_end_mib: f64,
    pub rss_idle_mib: f64,
    /// The tracer's high-water mark once it caught up, before it was stopped (the run and
    /// its snapshots), and at its exit (the final report too).
    pub peak_running_mib: f64,
    pub peak_mib: f64,
    pub snapshots: u64,
    pub received: u64,
    pub lost: u64,
    /// Of those, lost because the ring buffer was full (the event loop did not read).
    pub lost_ring_full: u64,
}

pub(crate) fn run(
    tracer_bin: &Path,
    workload: &mut Workload,
    children: u64,
    out_dir: &Path,
) -> Result<SoakResult> {
    let snapshots = out_dir.join("soak-snapshots");
    let _ = std::fs::remove_dir_all(&snapshots);
    let (mut parent, result) = forks::start_forking(workload, children)?;
    let parent_pid = parent.id() as i32;
    let outcome = (|| {
        let dir = snapshots.display().to_string();
        let attached = Attached::start(
            tracer_bin,
            parent.id(),
            &[
                "--json",
                "--interval",
                SNAPSHOT_EVERY_S,
                "--report-dir",
                &dir,
                "--keep",
                "3",
            ],
        )?;
        let tracer_pid = attached.pid();
        let rss = |pid| status_kib(pid, "VmRSS").map(|kib| kib as f64 / 1024.0);
        let rss_start = rss(tracer_pid)?;
        let peak = watch_peak(tracer_pid);
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let done = done.clone();
            thread::spawn(move || {
                let started = Instant::now();
                let mut samples = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    if let Ok(mib) = status_kib(tracer_pid, "VmRSS") {
                        samples.push((started.elapsed().as_secs_f64(), mib as f64 / 1024.0));
                    }
                    thread::sleep(Duration::from_millis(250));
                }
                samples
            })
        };
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(parent_pid, libc::SIGUSR1) };
        let values = workload::await_result(&result, Duration::from_secs(6 * 3600))?;
        let forking_s = workload::value(&values, "elapsed_s")?;
        done.store(true, Ordering::Relaxed);
        let samples = sampler.join().unwrap_or_default();
        let at = |fraction: f64| {
            samples
                .iter()
                .find(|(t, _)| *t >= fraction * forking_s)
                .or(samples.last())
                .map_or(0.0, |(_, mib)| *mib)
        };
        let rss_end = rss(tracer_pid)?;
        wait_until_idle(tracer_pid, Duration::from_secs(600))?;
        let rss_idle = rss(tracer_pid)?;
        let peak_running = status_kib(tracer_pid, "VmHWM")? as f64 / 1024.0;
        let ended = attached.stop()?;
        let report: serde_json::Value =
            serde_json::from_str(&ended.stdout).context("the tracer's JSON report")?;
        let count = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        let written = ended
            .stderr
            .lines()
            .filter(|l| l.contains("tracer: snapshot "))
            .count() as u64;
        Ok(SoakResult {
            children,
            forking_s,
            rss_start_mib: rss_start,
            rss_quarter_mib: at(0.25),
            rss_middle_mib: at(0.5),
            rss_three_quarters_mib: at(0.75),
            rss_end_mib: rss_end,
            rss_idle_mib: rss_idle,
            peak_running_mib: peak_running,
            peak_mib: peak.join().ok().flatten().unwrap_or(0) as f64 / 1024.0,
            snapshots: written,
            received: count(&report["events"]["received"]),
            lost: count(&report["events"]["lost"]),
            lost_ring_full: count(&report["events"]["lost_ring_buffer_full"]),
        })
    })();
    // SAFETY: as above; the workload exits on SIGTERM.
    unsafe { libc::kill(parent_pid, libc::SIGTERM) };
    let _ = parent.wait();
    outcome
}

pub(crate) fn print(r: &SoakResult) {
    println!();
    println!(
        "Soak: {} short-lived workers one after the other, tracer with a snapshot every {SNAPSHOT_EVERY_S} s (RSS in MiB):",
        r.children
    );
    println!(
        "| workers | forked in | RSS attached | 1/4 | 1/2 | 3/4 | end | caught up | peak running | peak at exit | snapshots | events | lost (ring full) |"
    );
    println!(
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    println!(
        "| {} | {:.1} s | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} ({}) |",
        r.children,
        r.forking_s,
        r.rss_start_mib,
        r.rss_quarter_mib,
        r.rss_middle_mib,
        r.rss_three_quarters_mib,
        r.rss_end_mib,
        r.rss_idle_mib,
        r.peak_running_mib,
        r.peak_mib,
        r.snapshots,
        r.received,
        r.lost,
        r.lost_ring_full
    );
}
