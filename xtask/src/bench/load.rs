//! The machine's load while the bench ran, and when it was too busy for a verdict: on a
//! shared machine other work takes CPU from whichever case runs at that moment, which
//! interleaving spreads over all cases but cannot remove.
//!
//! The load average alone cannot say it: the bench itself keeps both CPUs busy (wrk and
//! nginx, a loop and the tracer), so the load at its end is mostly its own. What tells is the
//! CPU time others took meanwhile: the machine's busy time (/proc/stat) less the bench's own
//! (its rusage and its children's, all reaped by the end), and the time the hypervisor stole.

use serde::Serialize;

/// Above this share of the machine's CPU time used by other processes, or stolen by the
/// hypervisor, the bench was measuring them as much as the cases.
const OTHERS_TOO_BUSY: f64 = 0.10;
const STEAL_TOO_BUSY: f64 = 0.05;

/// How busy the machine was while the bench ran.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Load {
    pub cpus: usize,
    /// 1-minute load averages at the start and end.
    pub at_start: Option<f64>,
    pub at_end: Option<f64>,
    /// Shares of the machine's CPU time during the bench (0 to 1) that processes other than
    /// the bench's used, and that the hypervisor stole.
    pub others_share: Option<f64>,
    pub steal_share: Option<f64>,
}

/// CPU time counters, in clock ticks: the machine's, and the bench's own.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct CpuTimes {
    /// user + nice + system over all CPUs (irq and softirq left out: they serve the bench's
    /// own network traffic as much as anyone's, and no process is charged for them).
    pub busy: u64,
    pub steal: u64,
    /// Everything /proc/stat counts, idle included: the elapsed time over all CPUs.
    pub total: u64,
    /// The bench's own user + system time, with its reaped children's.
    pub own: u64,
}

impl CpuTimes {
    /// The counters now; None when /proc/stat cannot be read.
    pub(crate) fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let mut times = parse_stat(&stat)?;
        times.own = own_ticks();
        Some(times)
    }
}

/// The aggregate `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal.
fn parse_stat(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: field(0) + field(1) + field(2),
        steal: field(7),
        // guest and guest_nice (8, 9) are already in user and nice.
        total: fields.iter().take(8).sum(),
        own: 0,
    })
}

/// This process's user and system time and its reaped children's, in clock ticks.
fn own_ticks() -> u64 {
    let ticks_per_second = super::procstat::TICKS_PER_SECOND;
    [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN]
        .into_iter()
        .map(|who| {
            // SAFETY: getrusage writes one struct rusage, which `usage` is.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            if unsafe { libc::getrusage(who, &mut usage) } != 0 {
                return 0.0;
            }
            let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            seconds(usage.ru_utime) + seconds(usage.ru_stime)
        })
        .map(|seconds| (seconds * ticks_per_second) as u64)
        .sum()
}

/// Shares of the CPU time between `start` and `end` that others used and that was stolen.
pub(crate) fn shares(start: CpuTimes, end: CpuTimes) -> Option<(f64, f64)> {
    let total = end.total.checked_sub(start.total)?;
    if total == 0 {
        return None;
    }
    let busy = end.busy.saturating_sub(start.busy);
    let own = end.own.saturating_sub(start.own);
    let steal = end.steal.saturating_sub(start.steal);
    Some((
        busy.saturating_sub(own) as f64 / total as f64,
        steal as f64 / total as f64,
    ))
}

/// The 1-minute load average now.
pub(crate) fn now() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Load {
    /// Why the machine was too busy to judge a budget, if it was: more runnable work than
    /// CPUs before the bench began, or other processes (or the hypervisor) taking more than
    /// a few percent of the CPU time while it ran.
    pub(crate) fn too_busy(&self) -> Option<String> {
        let mut why = Vec::new();
        if let Some(start) = self.at_start
            && start > self.cpus as f64
        {
            why.push(format!(
                "load average {start:.2} at start on {} CPUs",
                self.cpus
            ));
        }
        if let Some(others) = self.others_share
            && others > OTHERS_TOO_BUSY
        {
            why.push(format!(
                "other processes used {:.0}% of the CPU time",
                others * 100.0
            ));
        }
        if let Some(steal) = self.steal_share
            && steal > STEAL_TOO_BUSY
        {
            why.push(format!("the hypervisor stole {:.0}%", steal * 100.0));
        }
        (!why.is_empty()).then(|| why.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(at_start: f64, others: f64, steal: f64) -> Load {
        Load {
            cpus: 2,
            at_start: Some(at_start),
            at_end: Some(6.3),
            others_share: Some(others),
            steal_share: Some(steal),
        }
    }

    /// The bench's own load at its end decides nothing; a busy start, others' CPU time or
    /// steal above their thresholds make it too busy to judge.
    #[test]
    fn busy_when_others_took_the_cpus() {
        assert_eq!(load(0.5, 0.02, 0.01).too_busy(), None);
        assert!(
            load(2.5, 0.02, 0.0)
                .too_busy()
                .unwrap()
                .contains("load average 2.50 at start on 2 CPUs")
        );
        assert_eq!(
            load(0.5, 0.25, 0.08).too_busy().as_deref(),
            Some("other processes used 25% of the CPU time, the hypervisor stole 8%")
        );
    }

    /// Others' share is the machine's busy time less the bench's own, over all the time.
    #[test]
    fn others_share_from_proc_stat_and_rusage() {
        let start = parse_stat("cpu  100 0 50 1000 5 3 7 2 0 0\ncpu0 1 2 3\n").unwrap();
        assert_eq!((start.busy, start.steal, start.total), (150, 2, 1167));
        let end = CpuTimes {
            busy: start.busy + 900,
            steal: start.steal + 20,
            total: start.total + 1000,
            own: 800,
        };
        let (others, steal) = shares(start, end).unwrap();
        assert!((others - 0.1).abs() < 1e-9, "{others}");
        assert!((steal - 0.02).abs() < 1e-9, "{steal}");
        assert_eq!(shares(start, start), None);
    }
}
