//! `--all`: every process on the host, watched at a cost close to nothing per process. The
//! kernel counts descriptor births and deaths per process (HOST_COUNTS); the session looks
//! every second at /proc (threads, zombies, descriptor counts of the processes whose kernel
//! counts moved) and hands the levels here. Each level's growth is kept as two decaying
//! rates (rises and falls, `model/rate.rs`); processes are ranked by how fast they grow, and
//! the ones leaking now are those that kept growing over the last looks. Pure: no I/O.

use std::collections::{HashMap, VecDeque};

use crate::model::DecayingRate;

#[cfg(test)]
mod tests;

/// A process grows "now" when its level rose at this many looks within [`RECENT_NS`] ...
pub(crate) const RISES_TO_LEAK: usize = 3;
/// ... and rose at least twice as often as it fell.
const RECENT_NS: u64 = 60_000_000_000;

/// What is watched of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Level {
    Descriptors,
    Threads,
    /// Children that exited and were not reaped.
    Zombies,
    /// TCP sockets it holds in CLOSE_WAIT (looked at for the top growers only).
    CloseWait,
}

pub(crate) const LEVELS: [Level; 4] = [
    Level::Descriptors,
    Level::Threads,
    Level::Zombies,
    Level::CloseWait,
];

/// One level of one process: its value, how fast it rises and falls, and when it did.
#[derive(Clone, Debug, Default)]
pub(crate) struct Series {
    pub(crate) value: Option<u64>,
    up: DecayingRate,
    down: DecayingRate,
    /// Looks at which it rose (+1) or fell (-1), recent ones only.
    moves: VecDeque<(u64, i8)>,
}

impl Series {
    /// The level is `value` at `now_ns`.
    pub(crate) fn set(&mut self, value: u64, now_ns: u64) {
        if let Some(before) = self.value
            && before != value
        {
            if value > before {
                self.up.record_many(now_ns, (value - before) as f64);
                self.moves.push_back((now_ns, 1));
            } else {
                self.down.record_many(now_ns, (before - value) as f64);
                self.moves.push_back((now_ns, -1));
            }
        }
        while self
            .moves
            .front()
            .is_some_and(|&(at, _)| now_ns.saturating_sub(at) > RECENT_NS)
        {
            self.moves.pop_front();
        }
        self.value = Some(value);
    }

    /// Net growth per minute (rises less falls, recent rates).
    pub(crate) fn per_minute(&self, now_ns: u64) -> f64 {
        let net = self.up.per_minute(now_ns) - self.down.per_minute(now_ns);
        (net * 10.0).round() / 10.0
    }

    /// Rising now: rose at [`RISES_TO_LEAK`] recent looks or more, at least twice as often as
    /// it fell, and grows on balance.
    pub(crate) fn growing(&self, now_ns: u64) -> bool {
        let rises = self.moves.iter().filter(|&&(_, m)| m > 0).count();
        let falls = self.moves.len() - rises;
        rises >= RISES_TO_LEAK && rises >= 2 * falls && self.per_minute(now_ns) > 0.0
    }
}

/// A watched process.
#[derive(Clone, Debug)]
pub(crate) struct Watched {
    pub(crate) pid: u32,
    pub(crate) ppid: u32,
    pub(crate) comm: String,
    pub(crate) start_time: u64,
    pub(crate) levels: HashMap<Level, Series>,
    /// The kernel's totals (opened, closed, sockets opened) when last read.
    pub(crate) kernel_counts: (u64, u64, u64),
    /// When following it with full tracing began (`--follow-top`).
    pub(crate) followed_since_ns: Option<u64>,
}

impl Watched {
    pub(crate) fn level(&self, level: Level) -> Option<&Series> {
        self.levels.get(&level)
    }

    pub(crate) fn value(&self, level: Level) -> Option<u64> {
        self.level(level).and_then(|s| s.value)
    }

    pub(crate) fn per_minute(&self, level: Level, now_ns: u64) -> f64 {
        self.level(level).map_or(0.0, |s| s.per_minute(now_ns))
    }

    /// Leaking now: one of its levels keeps growing.
    pub(crate) fn leaking(&self, now_ns: u64) -> bool {
        self.levels.values().any(|s| s.growing(now_ns))
    }

    /// How fast it grows, all levels together: what the ranking orders by.
    pub(crate) fn score(&self, now_ns: u64) -> f64 {
        LEVELS
            .iter()
            .map(|&l| self.per_minute(l, now_ns).max(0.0))
            .sum()
    }
}

/// Every process on the host, by pid.
#[derive(Debug, Default)]
pub(crate) struct HostWatch {
    processes: HashMap<u32, Watched>,
    /// Looks taken.
    pub(crate) looks: u64,
    /// The host's TIME_WAIT sockets (no process holds them).
    pub(crate) time_wait: Series,
    /// Open files on the host and fs.file-max, at the last look.
    pub(crate) file_nr: Option<(u64, u64)>,
}

/// What one look at a process saw (from /proc/PID/stat).
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) pid: u32,
    pub(crate) ppid: u32,
    pub(crate) comm: String,
    pub(crate) start_time: u64,
    pub(crate) threads: u64,
    pub(crate) zombie: bool,
}

impl HostWatch {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// One look at every process: new ones are added, those /proc no longer has (or has with
    /// another start time: a reused pid) are dropped, threads and zombie children are set.
    /// Returns the pids seen for the first time.
    pub(crate) fn look(&mut self, seen: &[Seen], now_ns: u64) -> Vec<u32> {
        self.looks += 1;
        let mut zombies: HashMap<u32, u64> = HashMap::new();
        for process in seen.iter().filter(|p| p.zombie) {
            *zombies.entry(process.ppid).or_default() += 1;
        }
        let alive: HashMap<u32, &Seen> = seen
            .iter()
            .filter(|p| !p.zombie)
            .map(|p| (p.pid, p))
            .collect();
        self.processes
            .retain(|pid, w| alive.get(pid).is_some_and(|p| p.start_time == w.start_time));
        let mut new = Vec::new();
        for (&pid, process) in &alive {
            let watched = self.processes.entry(pid).or_insert_with(|| {
                new.push(pid);
                Watched {
                    pid,
                    ppid: process.ppid,
                    comm: process.comm.clone(),
                    start_time: process.start_time,
                    levels: HashMap::new(),
                    kernel_counts: (0, 0, 0),
                    followed_since_ns: None,
                }
            });
            watched.comm.clone_from(&process.comm);
            watched.ppid = process.ppid;
            watched
                .levels
                .entry(Level::Threads)
                .or_default()
                .set(process.threads, now_ns);
            watched
                .levels
                .entry(Level::Zombies)
                .or_default()
                .set(zombies.get(&pid).copied().unwrap_or(0), now_ns);
        }
        new.sort_unstable();
        new
    }

    /// The kernel's totals for `pid`; true when they moved since the last read (its
    /// descriptor count should be looked at again).
    pub(crate) fn kernel_counts(&mut self, pid: u32, counts: (u64, u64, u64)) -> bool {
        let Some(watched) = self.processes.get_mut(&pid) else {
            return false;
        };
        let moved = watched.kernel_counts != counts;
        watched.kernel_counts = counts;
        moved
    }

    pub(crate) fn set(&mut self, pid: u32, level: Level, value: u64, now_ns: u64) {
        if let Some(watched) = self.processes.get_mut(&pid) {
            watched.levels.entry(level).or_default().set(value, now_ns);
        }
    }

    pub(crate) fn mark_followed(&mut self, pid: u32, now_ns: u64) {
        if let Some(watched) = self.processes.get_mut(&pid) {
            watched.followed_since_ns.get_or_insert(now_ns);
        }
    }

    /// The live processes followed with full tracing (`--follow-top`); one that exited (or
    /// whose pid was reused) is not among them.
    pub(crate) fn followed(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .processes
            .values()
            .filter(|w| w.followed_since_ns.is_some())
            .map(|w| w.pid)
            .collect();
        pids.sort_unstable();
        pids
    }

    /// The leakers to follow so that `places` live processes are followed: the fastest
    /// not followed yet. A followed process that exited gives its place to the next one.
    pub(crate) fn to_follow(&self, places: usize, now_ns: u64) -> Vec<&Watched> {
        let free = places.saturating_sub(self.followed().len());
        self.ranked(now_ns)
            .into_iter()
            .filter(|w| w.leaking(now_ns) && w.followed_since_ns.is_none())
            .take(free)
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn get(&self, pid: u32) -> Option<&Watched> {
        self.processes.get(&pid)
    }

    pub(crate) fn len(&self) -> usize {
        self.processes.len()
    }

    /// The processes, fastest growing first (leaking ones before the rest; then most
    /// descriptors, then pid).
    pub(crate) fn ranked(&self, now_ns: u64) -> Vec<&Watched> {
        let mut all: Vec<&Watched> = self.processes.values().collect();
        all.sort_by(|a, b| {
            b.leaking(now_ns)
                .cmp(&a.leaking(now_ns))
                .then(b.score(now_ns).total_cmp(&a.score(now_ns)))
                .then(
                    b.value(Level::Descriptors)
                        .cmp(&a.value(Level::Descriptors)),
                )
                .then(a.pid.cmp(&b.pid))
        });
        all
    }
}
