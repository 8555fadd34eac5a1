//! Capacity: the event rate the tracer keeps up with, what happens above it, its memory
//! with a million descriptors open, and how long attaching takes.

use std::{
    fs,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::{
    tracer::{self, Attached},
    workload::{self, Workload, command},
};

/// One paced open+close run under the tracer.
#[derive(Debug, Serialize)]
pub struct RateStep {
    /// Requested open+close pairs per second; 0 means as fast as the workload can.
    pub target_pairs_per_s: u64,
    pub ring_buffer_mib: u32,
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
const DEFAULT_RING_MIB: u32 = 16;
/// A deliberately small ring for the unpaced run, to show what losing events looks like.
const SMALL_RING_MIB: u32 = 1;

pub fn rates(
    tracer_bin: &std::path::Path,
    workload: &mut Workload,
    seconds: u64,
) -> Result<Vec<RateStep>> {
    let mut steps = Vec::new();
    let plan = RATE_STEPS
        .iter()
        .map(|&rate| (rate, DEFAULT_RING_MIB))
        .chain([(0, SMALL_RING_MIB)]);
    for (target, ring_mib) in plan {
        eprintln!(
            "  rate {} pairs/s, ring {ring_mib} MiB",
            if target == 0 {
                "unpaced".to_owned()
            } else {
                target.to_string()
            }
        );
        let result = workload.result_path();
        let argv = workload.rate_args(target, seconds, 2, &result);
        let ring = ring_mib.to_string();
        let facts = tracer::follow(
            tracer_bin,
            &["--ring-buffer-mib", &ring],
            &argv,
            Duration::from_secs(seconds + 120),
        )?;
        let values = workload::read_result(&result)?;
        let elapsed = workload::value(&values, "elapsed_s")?;
        steps.push(RateStep {
            target_pairs_per_s: target,
            ring_buffer_mib: ring_mib,
            achieved_pairs_per_s: workload::value(&values, "pairs_per_s")?,
            events_per_s: (facts.received + facts.lost) as f64 / elapsed,
            received: facts.received,
            lost: facts.lost,
            false_leaks: facts.false_leaks,
        });
    }
    Ok(steps)
}

/// The highest event rate of a run with the default ring that lost nothing.
pub fn max_zero_loss(steps: &[RateStep]) -> Option<f64> {
    steps
        .iter()
        .filter(|s| s.lost == 0 && s.ring_buffer_mib == DEFAULT_RING_MIB)
        .map(|s| s.events_per_s)
        .max_by(f64::total_cmp)
}

#[derive(Debug, Serialize)]
pub struct MemoryResult {
    pub descriptors: u64,
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

/// Follows a process that opens `count` descriptors and keeps them open.
pub fn memory(
    tracer_bin: &std::path::Path,
    workload: &mut Workload,
    count: u64,
) -> Result<MemoryResult> {
    let result = workload.result_path();
    let mut holder = command(&workload.hold_args(count, &result))
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
fn watch_peak(pid: u32) -> thread::JoinHandle<Option<u64>> {
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
fn wait_until_idle(pid: u32, timeout: Duration) -> Result<()> {
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

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).with_context(|| format!("cannot parse /proc/{pid}/stat"))
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may hold spaces: count fields after it.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the whole line are utime and stime; `after` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` line of /proc/PID/status.
fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    parse_status_kib(&status, key).with_context(|| format!("no {key} in /proc/{pid}/status"))
}

fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
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

    /// utime and stime are found past a command name with spaces and parentheses.
    #[test]
    fn reads_cpu_ticks_from_stat() {
        let stat = "1234 (tra cer)) S 1 1234 1234 0 -1 4194560 500 0 0 0 150 37 0 0 20 0 2 0";
        assert_eq!(parse_cpu_ticks(stat), Some(187));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    /// Only the exact key counts (VmRSS, not VmRSSx), in kB.
    #[test]
    fn reads_status_kib() {
        let status = "Name:\ttracer\nVmHWM:\t  90000 kB\nVmRSS:\t   81234 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(81234));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(90000));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    /// The counts come from the report's summary line.
    #[test]
    fn reads_text_report_counts() {
        let report = "tracer: pid 21244 (workload) traced for 5.0 s: 1000168 events, 12 lost\n...";
        assert_eq!(text_report_counts(report), Some((1000168, 12)));
        assert_eq!(text_report_counts("no report"), None);
    }

    /// Runs that lost events, or used the small ring, do not count towards the capacity.
    #[test]
    fn max_zero_loss_skips_lossy_runs() {
        let step = |events_per_s, lost, ring_buffer_mib| RateStep {
            target_pairs_per_s: 0,
            ring_buffer_mib,
            achieved_pairs_per_s: 0.0,
            events_per_s,
            received: 0,
            lost,
            false_leaks: 0,
        };
        let steps = [
            step(100.0, 0, 16),
            step(300.0, 5, 16),
            step(200.0, 0, 16),
            step(900.0, 0, 1),
        ];
        assert_eq!(max_zero_loss(&steps), Some(200.0));
        assert_eq!(max_zero_loss(&[]), None);
    }
}
