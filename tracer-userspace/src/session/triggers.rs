//! Triggers: a followed process near its descriptor limit, the system near fs.file-max, a
//! stack group growing faster than a set rate. Each fires once when it crosses its threshold
//! and is re-armed when it falls back below, so a leak that stays above it writes one
//! snapshot, not one per check.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use crate::{aggregator::Aggregator, cli::SnapshotConfig, procfs, report::growth::Counts};

/// How often a process's RLIMIT_NOFILE is read again (prlimit can change it under us).
const LIMIT_REREAD: Duration = Duration::from_secs(10);
/// The window of the growth rate: descriptors a group gained over the last minute.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// How often the per-group counts are kept for the rate.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// A trigger that fired (or, `rearmed`, fell back below its threshold, which only a log line
/// tells): the snapshot's reason and a sentence for the log line.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Fired {
    pub reason: &'static str,
    pub what: String,
    pub rearmed: bool,
}

struct Limit {
    limit: Option<u64>,
    read_at: Instant,
    above: bool,
}

pub(super) struct Triggers {
    nofile_fraction: f64,
    file_max_fraction: f64,
    growth_per_minute: Option<f64>,
    limits: HashMap<u32, Limit>,
    file_max_above: bool,
    growing: HashSet<Option<u32>>,
}

impl Triggers {
    pub(super) fn new(config: &SnapshotConfig) -> Self {
        Self {
            nofile_fraction: config.nofile_fraction,
            file_max_fraction: config.file_max_fraction,
            growth_per_minute: config.growth_per_minute,
            limits: HashMap::new(),
            file_max_above: false,
            growing: HashSet::new(),
        }
    }

    /// Whether the growth trigger needs the per-group counts every check.
    pub(super) fn wants_counts(&self) -> bool {
        self.growth_per_minute.is_some()
    }

    /// Checks every trigger; O(live processes), plus reading a limit now and then.
    pub(super) fn check(
        &mut self,
        agg: &Aggregator,
        rates: Option<&Rates>,
        now: Instant,
    ) -> Vec<Fired> {
        let mut fired = Vec::new();
        if self.nofile_fraction > 0.0 {
            self.check_nofile(agg, now, &mut fired);
        }
        if self.file_max_fraction > 0.0
            && let Some((used, max)) = procfs::file_handles()
        {
            let threshold = self.file_max_fraction * max as f64;
            let above = used as f64 >= threshold;
            if above != self.file_max_above {
                fired.push(Fired {
                    reason: "file-max",
                    what: format!(
                        "{}the system has {used} file handles open, {} of fs.file-max {max} (threshold {})",
                        if above { "" } else { "back below the threshold: " },
                        percent(used as f64 / max as f64),
                        threshold.ceil()
                    ),
                    rearmed: !above,
                });
            }
            self.file_max_above = above;
        }
        if let (Some(threshold), Some(rates)) = (self.growth_per_minute, rates) {
            let mut growing = HashSet::new();
            for (id, count, per_minute) in rates.per_group() {
                if per_minute as f64 >= threshold {
                    growing.insert(id);
                    if !self.growing.contains(&id) {
                        let name = id.map_or("no stack".to_string(), |id| format!("stack {id}"));
                        fired.push(Fired {
                            reason: "growth",
                            what: format!(
                                "the group of {name} grew by {per_minute} in the last minute (to {count}), at least {threshold}/min"
                            ),
                            rearmed: false,
                        });
                    }
                }
            }
            self.growing = growing;
        }
        fired
    }

    fn check_nofile(&mut self, agg: &Aggregator, now: Instant, fired: &mut Vec<Fired>) {
        let mut seen = HashSet::new();
        for process in agg.live_processes() {
            seen.insert(process.pid);
            let entry = self.limits.entry(process.pid).or_insert_with(|| Limit {
                limit: procfs::nofile_limit(process.pid),
                read_at: now,
                above: false,
            });
            if now.duration_since(entry.read_at) >= LIMIT_REREAD {
                entry.limit = procfs::nofile_limit(process.pid);
                entry.read_at = now;
            }
            let Some(limit) = entry.limit else { continue };
            let open = process.fds.len() as u64;
            let above = open as f64 >= self.nofile_fraction * limit as f64;
            if above != entry.above {
                fired.push(Fired {
                    reason: "nofile",
                    what: format!(
                        "{}pid {} ({}) holds {open} descriptors, {:.0}% of its limit {limit} (RLIMIT_NOFILE)",
                        if above { "" } else { "back below the threshold: " },
                        process.pid,
                        process.comm,
                        100.0 * open as f64 / limit as f64
                    ),
                    rearmed: !above,
                });
            }
            entry.above = above;
        }
        self.limits.retain(|pid, _| seen.contains(pid));
    }
}

/// A share as a percentage with the digits that show it (fs.file-max is often in the
/// millions, so that a host's handles are a fraction of a percent of it).
fn percent(share: f64) -> String {
    let percent = 100.0 * share;
    // Two significant digits below 1%, none above.
    let decimals = if percent > 0.0 && percent < 1.0 {
        (1.0 - percent.log10().floor()).clamp(0.0, 9.0) as usize
    } else {
        0
    };
    format!("{percent:.decimals$}%")
}

/// Per-group counts kept every few seconds over the last minute, for growth rates that are
/// counts gained in that minute (never extrapolated from a shorter span).
#[derive(Default)]
pub(super) struct Rates {
    samples: VecDeque<(Instant, Counts)>,
    now: Counts,
}

impl Rates {
    pub(super) fn update(&mut self, counts: Counts, now: Instant) {
        if self
            .samples
            .back()
            .is_none_or(|(at, _)| now.duration_since(*at) >= SAMPLE_EVERY)
        {
            self.samples.push_back((now, counts.clone()));
        }
        // Keep one sample at least a window old, so the oldest kept spans the whole minute.
        while self.samples.len() > 2 && now.duration_since(self.samples[1].0) >= RATE_WINDOW {
            self.samples.pop_front();
        }
        self.now = counts;
    }

    pub(super) fn now(&self) -> &Counts {
        &self.now
    }

    /// (stack id, count now, gained over the last minute) for every group held now.
    pub(super) fn per_group(&self) -> impl Iterator<Item = (Option<u32>, u64, u64)> + '_ {
        let then = self.samples.front().map(|(_, c)| c);
        self.now.stacks.iter().map(move |(&id, &count)| {
            let before = then.and_then(|c| c.stacks.get(&id)).copied().unwrap_or(0);
            (id, count, count.saturating_sub(before))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(id: u32, n: u64) -> Counts {
        let mut c = Counts::default();
        c.stacks.insert(Some(id), n);
        c
    }

    /// The rate is what a group gained since the oldest sample of the last minute.
    #[test]
    fn rates_over_the_last_minute() {
        let start = Instant::now();
        let mut rates = Rates::default();
        for s in 0..=120 {
            rates.update(counts(1, s * 2), start + Duration::from_secs(s));
        }
        let (_, count, gained) = rates.per_group().next().unwrap();
        assert_eq!(count, 240);
        // The oldest kept sample is 60-65 s old: about two a second over a minute.
        assert!((120..=130).contains(&gained), "{gained}");
    }

    /// Percentages keep two significant digits below 1%.
    #[test]
    fn percentages() {
        assert_eq!(percent(0.9), "90%");
        assert_eq!(percent(0.012), "1%");
        assert_eq!(percent(0.000_237), "0.024%");
        assert_eq!(percent(0.0), "0%");
    }

    /// The growth trigger fires once per crossing and re-arms when the rate falls back.
    #[test]
    fn growth_fires_once_per_crossing() {
        let config = SnapshotConfig {
            interval: None,
            report_dir: None,
            keep: 1,
            nofile_fraction: 0.0,
            file_max_fraction: 0.0,
            growth_per_minute: Some(10.0),
            live: false,
        };
        let mut triggers = Triggers::new(&config);
        let agg = Aggregator::new();
        let start = Instant::now();
        let mut rates = Rates::default();
        let mut fired = 0;
        let mut check = |n: u64, s: u64, rates: &mut Rates| {
            let now = start + Duration::from_secs(s);
            rates.update(counts(1, n), now);
            triggers.check(&agg, Some(rates), now).len()
        };
        for s in 0..10 {
            fired += check(s * 3, s, &mut rates);
        }
        assert_eq!(fired, 1);
        // Flat for two minutes: the rate falls to 0, and the trigger re-arms.
        for s in 10..130 {
            fired += check(27, s, &mut rates);
        }
        assert_eq!(fired, 1);
        fired += check(60, 130, &mut rates);
        assert_eq!(fired, 2);
    }
}
