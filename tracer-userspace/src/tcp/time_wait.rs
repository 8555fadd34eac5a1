//! The connections the followed processes left in `TIME_WAIT`: counted by process and endpoint
//! for the report, and kept as raw `(local, remote)` pairs to check against /proc/net/tcp
//! (`TIME_WAIT` has no descriptor).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
};

use super::{
    LISTEN, MAX_KNOWN_LISTENERS, MAX_TIME_WAIT_GROUPS, MAX_TIME_WAIT_PAIRS, Side, Sock,
    TcpTransition,
};
use crate::model::DecayingRate;

/// How long a connection stays in `TIME_WAIT` (include/net/tcp.h `TCP_TIMEWAIT_LEN`).
const TIME_WAIT_NS: u64 = 60_000_000_000;

/// Connections one process left in `TIME_WAIT` towards one endpoint while traced.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub(crate) struct TimeWaitGroup {
    /// The process (tgid) that owned the sockets.
    pub pid: u32,
    /// "127.0.0.1" (connecting side: the ephemeral local port varies) or "127.0.0.1:8080"
    /// (accepting side); IPv6 as `[::1]` / `[::1]:8080`.
    pub local: String,
    /// "127.0.0.1:8080" (connecting side) or "127.0.0.1" (accepting side: the peer's port
    /// varies).
    pub remote: String,
    /// Connections that entered TIME_WAIT while traced.
    pub count: u64,
    /// Of those, the ones a new connection with the same addresses and ports ended before
    /// their 60 s were up (a SYN the TIME_WAIT socket accepted, or a connect reusing the
    /// port: the kernel then drops it): `count - ended_early` is what `ss` can still show.
    pub ended_early: u64,
    /// Per minute, recently: each counts e^(-age / 1 min) (see `model::rate`); one decimal.
    pub per_minute: f64,
    /// Age of the newest, seconds, millisecond precision.
    pub newest_age_s: f64,
}

/// One end of a grouped connection: the address alone when its port varies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Endpoint {
    Ip(IpAddr),
    Full(SocketAddr),
}

impl Endpoint {
    fn render(&self) -> String {
        match self {
            Endpoint::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
            Endpoint::Ip(ip) => ip.to_string(),
            Endpoint::Full(addr) => addr.to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct GroupKey {
    pid: u32,
    local: Endpoint,
    remote: Endpoint,
}

#[derive(Clone, Copy, Debug)]
struct GroupStats {
    count: u64,
    ended_early: u64,
    rate: DecayingRate,
    last_ns: u64,
}

/// What the tracker knows of `TIME_WAIT`: the groups, the pairs, and the listening ports that
/// tell which side a connection first seen closing was.
#[derive(Debug, Default)]
pub(super) struct TimeWaits {
    /// `(owner, port)` that went `LISTEN` while traced.
    listen_ports: HashSet<(u32, u16)>,
    groups: HashMap<GroupKey, GroupStats>,
    /// Pairs that entered `TIME_WAIT`, oldest first, and when.
    pairs: VecDeque<(SocketAddr, SocketAddr, u64)>,
    /// The group and time of the pairs in `pairs` that may still be in `TIME_WAIT`.
    open: HashMap<(SocketAddr, SocketAddr), (GroupKey, u64)>,
    /// Entries not grouped because [`MAX_TIME_WAIT_GROUPS`] groups existed.
    dropped: u64,
}

impl TimeWaits {
    /// How many entries each table holds, for a debug log.
    pub(super) fn sizes(&self) -> String {
        format!(
            "listeners {}, time-wait groups {}, pairs {}, open {}",
            self.listen_ports.len(),
            self.groups.len(),
            self.pairs.len(),
            self.open.len()
        )
    }

    /// Remembers the `(owner, port)` of a socket going `LISTEN`, for [`Self::record`] to tell
    /// the side of a socket it knows nothing else of.
    pub(super) fn remember_listener(&mut self, t: &TcpTransition) {
        if t.new == LISTEN {
            self.remember_port(t.owner, t.local.port());
        }
    }

    /// Remembers that `owner` listens on `port` (a transition to `LISTEN`, or /proc at
    /// attach for a listener older than the trace).
    pub(super) fn remember_port(&mut self, owner: u32, port: u16) {
        if self.listen_ports.len() < MAX_KNOWN_LISTENERS && port != 0 {
            self.listen_ports.insert((owner, port));
        }
    }

    /// Counts one connection entering `TIME_WAIT`. `sock` is what we knew of it before (or
    /// after) this transition, if anything; the transition's addresses are the latest.
    pub(super) fn record(&mut self, t: &TcpTransition, sock: Option<Sock>) {
        if self.pairs.len() >= MAX_TIME_WAIT_PAIRS
            && let Some((local, remote, at_ns)) = self.pairs.pop_front()
            && self
                .open
                .get(&(local, remote))
                .is_some_and(|&(_, at)| at == at_ns)
        {
            self.open.remove(&(local, remote));
        }
        self.pairs.push_back((t.local, t.remote, t.at_ns));

        let key = self.group_key(t, sock);
        self.open.insert((t.local, t.remote), (key, t.at_ns));
        if let Some(stats) = self.groups.get_mut(&key) {
            stats.count += 1;
            stats.rate.record(t.at_ns);
            stats.last_ns = stats.last_ns.max(t.at_ns);
        } else if self.groups.len() < MAX_TIME_WAIT_GROUPS {
            self.groups.insert(
                key,
                GroupStats {
                    count: 1,
                    ended_early: 0,
                    rate: {
                        let mut rate = DecayingRate::default();
                        rate.record(t.at_ns);
                        rate
                    },
                    last_ns: t.at_ns,
                },
            );
        } else {
            self.dropped += 1;
        }
    }

    /// A new connection has `local` and `remote` at `at_ns`: a `TIME_WAIT` socket with the same
    /// four, if one entered less than [`TIME_WAIT_NS`] before, is gone (the kernel's table
    /// holds one socket per address pair: the SYN it accepted, or the connect that reused the
    /// port, dropped it).
    pub(super) fn reused(&mut self, local: SocketAddr, remote: SocketAddr, at_ns: u64) {
        if let Some((key, since)) = self.open.remove(&(local, remote))
            && at_ns.saturating_sub(since) < TIME_WAIT_NS
            && let Some(stats) = self.groups.get_mut(&key)
        {
            stats.ended_early += 1;
        }
    }

    /// The group of a connection: its owner and its endpoints, the ephemeral port left out
    /// (which one that is follows from the side; when the side is unknown, from whether the
    /// owner listens on the local port).
    fn group_key(&self, t: &TcpTransition, sock: Option<Sock>) -> GroupKey {
        let (local, remote) = (t.local, t.remote);
        let pid = match sock {
            Some(s) if s.owner != 0 => s.owner,
            _ => t.owner,
        };
        let side = sock.and_then(|s| s.side).unwrap_or_else(|| {
            if self.listen_ports.contains(&(pid, local.port())) {
                Side::Accepting
            } else {
                Side::Connecting
            }
        });
        match side {
            Side::Connecting => GroupKey {
                pid,
                local: Endpoint::Ip(local.ip()),
                remote: Endpoint::Full(remote),
            },
            Side::Accepting => GroupKey {
                pid,
                local: Endpoint::Full(local),
                remote: Endpoint::Ip(remote.ip()),
            },
        }
    }

    #[cfg(test)]
    pub(super) fn total(&self) -> u64 {
        self.groups.values().map(|g| g.count).sum()
    }

    /// See [`super::TcpTracker::time_wait_groups`].
    pub(super) fn groups(&self, now_ns: u64) -> Vec<TimeWaitGroup> {
        let mut out: Vec<TimeWaitGroup> = self
            .groups
            .iter()
            .map(|(key, stats)| {
                let age_s = now_ns.saturating_sub(stats.last_ns) as f64 / 1e9;
                TimeWaitGroup {
                    pid: key.pid,
                    local: key.local.render(),
                    remote: key.remote.render(),
                    count: stats.count,
                    ended_early: stats.ended_early,
                    per_minute: stats.rate.per_minute(now_ns),
                    newest_age_s: (age_s * 1000.0).round() / 1000.0,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(a.pid.cmp(&b.pid))
                .then_with(|| a.local.cmp(&b.local))
                .then_with(|| a.remote.cmp(&b.remote))
        });
        out
    }

    pub(super) fn pairs(&self) -> impl Iterator<Item = (SocketAddr, SocketAddr)> + '_ {
        self.pairs.iter().map(|&(local, remote, _)| (local, remote))
    }
}
