//! Capacity: the event rate the tracer keeps up with, what happens above it, its memory
//! with a million descriptors open, and how long attaching takes.

use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::{
    child::Watched,
    procstat::{cpu_ticks, status_kib},
    tracer::{self, Attached},
    workload::{self, Workload, command},
};

/// One paced open+close run under the tracer.
#[derive(Debug, Serialize)]
pub(crate) struct RateStep {
    /// Requested open+close pairs per second; 0 means as fast as the workload can.
    pub target_pairs_per_s: u64,
    pub ring_buffer_mib: u32,
    /// The tracer was stopped (SIGSTOP) while the workload ran: nothing drained the ring.
    pub reader_stopped: bool,
    pub achieved_pairs_per_s: f64,
    /// Events the kernel emitted per second (received + lost) over the run.
    pub events_per_s: f64,
    pub received: u64,
    pub lost: u64,
    pub false_leaks: u64,
}

/// Pairs per second asked for, each run split over two processes (one per core here);
/// the last, unpaced, is whatever the machine can produce.
const RATE_STEPS: &[u64] = &[25_000, 50_000, 100_000, 200_000, 0];
/// The tracer's default ring (`--ring-buffer-mib`), passed explicitly so the table says it.
const DEFAULT_RING_MIB: u32 = 64;
/// Above the capacity: a small ring that nothing drains while the workload runs. On a
/// machine where the tracer keeps up with everything the cores can produce, this is the
/// only way to see what an overrun does (lost events counted, no false leaks).
const OVERRUN_RING_MIB: u32 = 1;

pub(crate) fn rates(
    tracer_bin: &Path,
    workload: &mut Workload,
    seconds: u64,
) -> Result<Vec<RateStep>> {
    let mut steps = Vec::new();
    let plan = RATE_STEPS
        .iter()
        .map(|&rate| (rate, DEFAULT_RING_MIB, false))
        .chain([(0, OVERRUN_RING_MIB, true)]);
    for (target, ring_mib, stop_reader) in plan {
        eprintln!(
            "  rate {}, ring {ring_mib} MiB{}",
            if target == 0 {
                "unpaced".to_owned()
            } else {
                format!("{target} pairs/s")
            },
            if stop_reader {
                ", tracer stopped while it runs"
            } else {
                ""
            }
        );
        let result = workload.result_path();
        let argv = workload.rate_args(target, seconds, 2, &result);
        let mut cmd = Command::new(tracer_bin);
        cmd.args(["--json", "--ring-buffer-mib", &ring_mib.to_string(), "--"])
            .args(&argv);
        let mut tracer = Watched::spawn(&mut cmd)?;
        if stop_reader {
            // The workload starts once `attached` is printed; by then the reader is stopped.
            tracer.wait_for_stderr("attached", Duration::from_secs(60))?;
            // It prints `attached` just before it lets the command run: stopping it at once
            // could hold the workload at the gate.
            thread::sleep(Duration::from_millis(200));
            tracer.signal(libc::SIGSTOP);
            let waited = workload::await_result(&result, Duration::from_secs(seconds + 60));
            tracer.signal(libc::SIGCONT);
            waited?;
        }
        let ended = tracer.wait_success(Duration::from_secs(seconds + 120))?;
        let facts = tracer::facts(&ended.stdout)?;
        let values = workload::read_result(&result)?;
        let elapsed = workload::value(&values, "elapsed_s")?;
        steps.push(RateStep {
            target_pairs_per_s: target,
            ring_buffer_mib: ring_mib,
            reader_stopped: stop_reader,
            achieved_pairs_per_s: workload::value(&values, "pairs_per_s")?,
            events_per_s: (facts.received + facts.lost) as f64 / elapsed,
            received: facts.received,
            lost: facts.lost,
            false_leaks: facts.false_leaks,
        });
    }
    Ok(steps)
}

/// The highest event rate of a run that lost nothing with the tracer running.
pub(crate) fn max_zero_loss(steps: &[RateStep]) -> Option<f64> {
    steps
        .iter()
        .filter(|s| s.lost == 0 && !s.reader_stopped)
        .map(|s| s.events_per_s)
        .max_by(f64::total_cmp)
}

#[derive(Debug, Serialize)]
pub(crate) struct MemoryResult {
    pub descriptors: u64,
    /// The pace they were opened at: below the zero-loss rate, so that every one of them
    /// is in the tracer's tables (an unpaced burst from 51 processes lost 90% of its events).
    pub opened_per_s: u64,
    /// Processes holding them (one process may hold no more than its RLIMIT_NOFILE).
    pub processes: u64,
    /// Tracer resident memory right after attaching, MiB.
    pub rss_attached_mib: f64,
    /// Once the events of all the opens are processed, MiB.
    pub rss_holding_mib: f64,
    /// Peak resident memory over the whole session, report included, MiB.
    pub peak_mib: f64,
    /// Resident bytes per open descriptor beyond the attached baseline.
    pub bytes_per_descriptor: f64,
    /// Seconds the workload took to open them all while followed.
    pub open_s: f64,
    /// Seconds from Ctrl-C to the tracer's exit: report (with /proc re-reads) and detach.
    pub report_s: f64,
    pub received: Option<u64>,
    pub lost: Option<u64>,
}

/// Opens per second in the memory run.
const HOLD_OPENS_PER_S: u64 = 100_000;

/// Follows a process that opens `count` descriptors and keeps them open.
pub(crate) fn memory(
    tracer_bin: &Path,
    workload: &mut Workload,
    count: u64,
) -> Result<MemoryResult> {
    let result = workload.result_path();
    let mut holder = command(&workload.hold_args(count, HOLD_OPENS_PER_S, &result))
        .stdin(Stdio::null())
        .spawn()
        .context("could not start the workload")?;
    let holder_pid = holder.id() as i32;
    let outcome = (|| {
        // The text report: as JSON a million descriptors would be hundreds of megabytes.
        let attached = Attached::start(tracer_bin, holder.id(), &[])?;
        let tracer_pid = attached.pid();
        let rss_attached = status_kib(tracer_pid, "VmRSS")?;
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(holder_pid, libc::SIGUSR1) };
        let values = workload::await_result(&result, Duration::from_secs(600))?;
        let open_s = workload::value(&values, "elapsed_s")?;
        wait_until_idle(tracer_pid, Duration::from_secs(120))?;
        let rss_holding = status_kib(tracer_pid, "VmRSS")?;
        let peak = watch_peak(tracer_pid);
        let stop_started = Instant::now();
        let ended = attached.stop()?;
        let report_s = stop_started.elapsed().as_secs_f64();
        let (received, lost) = text_report_counts(&ended.stdout).unzip();
        Ok(MemoryResult {
            descriptors: count,
            opened_per_s: HOLD_OPENS_PER_S,
            processes: workload::value(&values, "processes")? as u64,
            rss_attached_mib: rss_attached as f64 / 1024.0,
            rss_holding_mib: rss_holding as f64 / 1024.0,
            peak_mib: peak.join().ok().flatten().unwrap_or(rss_holding) as f64 / 1024.0,
            bytes_per_descriptor: (rss_holding.saturating_sub(rss_attached) * 1024) as f64
                / count as f64,
            open_s,
            report_s,
            received,
            lost,
        })
    })();
    // SAFETY: as above; the holder exits on SIGTERM.
    unsafe { libc::kill(holder_pid, libc::SIGTERM) };
    let _ = holder.wait();
    outcome
}

/// Polls the tracer's peak resident size until it exits: its last value covers the report.
pub(crate) fn watch_peak(pid: u32) -> thread::JoinHandle<Option<u64>> {
    thread::spawn(move || {
        let mut peak = None;
        while let Ok(kib) = status_kib(pid, "VmHWM") {
            peak = Some(kib);
            thread::sleep(Duration::from_millis(50));
        }
        peak
    })
}

/// Waits until the tracer has used less than 20 ms of CPU in half a second (it has caught
/// up with the events).
pub(crate) fn wait_until_idle(pid: u32, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let mut last = cpu_ticks(pid)?;
    // Clock ticks are 10 ms on Linux's usual USER_HZ of 100.
    loop {
        thread::sleep(Duration::from_millis(500));
        let now = cpu_ticks(pid)?;
        if now.saturating_sub(last) <= 2 {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("the tracer was still busy after {}s", timeout.as_secs());
        }
        last = now;
    }
}

/// `N events, M lost` from the text report's first line.
fn text_report_counts(report: &str) -> Option<(u64, u64)> {
    let line = report
        .lines()
        .find(|l| l.contains(" events, ") && l.contains(" lost"))?;
    let (_, counts) = line.rsplit_once(": ")?;
    let (events, lost) = counts.split_once(" events, ")?;
    let lost = lost.strip_suffix(" lost")?;
    Some((events.trim().parse().ok()?, lost.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counts come from the report's summary line.
    #[test]
    fn reads_text_report_counts() {
        let report = "tracer: pid 21244 (workload) traced for 5.0 s: 1000168 events, 12 lost\n...";
        assert_eq!(text_report_counts(report), Some((1000168, 12)));
        assert_eq!(text_report_counts("no report"), None);
    }

    /// Runs that lost events, or whose reader was stopped, do not count towards the capacity.
    #[test]
    fn max_zero_loss_skips_lossy_runs() {
        let step = |events_per_s, lost, reader_stopped| RateStep {
            target_pairs_per_s: 0,
            ring_buffer_mib: 16,
            reader_stopped,
            achieved_pairs_per_s: 0.0,
            events_per_s,
            received: 0,
            lost,
            false_leaks: 0,
        };
        let steps = [
            step(100.0, 0, false),
            step(300.0, 5, false),
            step(200.0, 0, false),
            step(900.0, 0, true),
        ];
        assert_eq!(max_zero_loss(&steps), Some(200.0));
        assert_eq!(max_zero_loss(&[]), None);
    }
}
