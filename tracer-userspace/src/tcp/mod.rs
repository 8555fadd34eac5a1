//! TCP state tracking from the kernel's `sock:inet_sock_set_state` tracepoint.
//!
//! The probe reports every state change of the TCP sockets owned by followed processes as a
//! [`TcpTransition`]. [`TcpTracker`] turns that stream into:
//!
//! - the current state of every live socket and since when ([`TcpTracker::state_since`]), so
//!   the report can say how long a descriptor has sat in `CLOSE_WAIT`;
//! - the connections the followed processes left in `TIME_WAIT`, grouped by process and
//!   endpoint ([`TcpTracker::time_wait_groups`]) plus the raw pairs
//!   ([`TcpTracker::time_wait_pairs`]) to check against `/proc/net/tcp`.
//!
//! What the kernel reports (loopback, observed): listen `CLOSE→LISTEN`; connect
//! `CLOSE→SYN_SENT` (the source port may still be 0) then `SYN_SENT→ESTABLISHED`; an accepted
//! socket `LISTEN→SYN_RECV→ESTABLISHED`; active close `ESTABLISHED→FIN_WAIT1→FIN_WAIT2→CLOSE`;
//! passive close `ESTABLISHED→CLOSE_WAIT→LAST_ACK→CLOSE`. The full socket never reports
//! `TIME_WAIT`: it is handed to a `TIME_WAIT` minisock and reported as going to `CLOSE` from
//! `FIN_WAIT2`/`CLOSING` (or `FIN_WAIT1`). A kernel that reports `→TIME_WAIT` directly counts too.
//! The same change without a `TIME_WAIT` socket (`net.ipv4.tcp_max_tw_buckets` reached, or a
//! reset) is not counted: the probe looks in the kernel's connection table
//! ([`TcpTransition::time_wait`]).
//! `CLOSE` means the socket is gone; its kernel address (`skaddr`) may be reused by a new one.
//!
//! Memory is bounded: at most [`MAX_LIVE`] live sockets, [`MAX_TIME_WAIT_PAIRS`] remembered
//! `TIME_WAIT` pairs (oldest forgotten first), [`MAX_TIME_WAIT_GROUPS`] groups and
//! [`MAX_KNOWN_LISTENERS`] remembered listening ports. Every operation is O(1) except the
//! report-time queries.

mod time_wait;

use std::{collections::HashMap, net::SocketAddr};

pub(crate) use time_wait::TimeWaitGroup;
use time_wait::TimeWaits;
use tracer_common::abi::tcp_state::{
    CLOSE, CLOSING, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, LISTEN, NEW_SYN_RECV, SYN_RECV, SYN_SENT,
    TIME_WAIT,
};

/// Most live sockets tracked at once; further new sockets are ignored and counted in
/// [`TcpTracker::dropped`].
pub(crate) const MAX_LIVE: usize = 262_144;
/// Most `(local, remote)` pairs kept for [`TcpTracker::time_wait_pairs`]; the oldest go first.
pub(crate) const MAX_TIME_WAIT_PAIRS: usize = 65_536;
/// Most distinct [`TimeWaitGroup`]s; `TIME_WAIT` entries for further groups are counted in
/// [`TcpTracker::time_wait_dropped`] (they still go into the pair ring).
pub(crate) const MAX_TIME_WAIT_GROUPS: usize = 65_536;
/// Most `(owner, port)` listening ports remembered for the side heuristic. (Not the kernel
/// side's `tracer_common::MAX_LISTEN_PORTS`, the capacity of its port -> owner map.)
pub(crate) const MAX_KNOWN_LISTENERS: usize = 65_536;

/// One state change, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TcpTransition {
    /// Process (tgid) owning the socket.
    pub owner: u32,
    /// Kernel address of the socket (`struct sock *`); identifies it while it lives.
    pub skaddr: u64,
    /// State before the change.
    pub old: u8,
    /// State after the change.
    pub new: u8,
    /// Local address and port as the kernel had them at the change (the port may be 0 early).
    pub local: SocketAddr,
    /// Remote address and port.
    pub remote: SocketAddr,
    /// When it happened, `CLOCK_MONOTONIC` nanoseconds.
    pub at_ns: u64,
    /// For a close from `FIN_WAIT*`/`CLOSING`: whether the kernel found a `TIME_WAIT` socket
    /// in the connection's place (`Some(false)`: closed without one, as when
    /// `net.ipv4.tcp_max_tw_buckets` were taken, or by a reset); `None` when not looked.
    pub time_wait: Option<bool>,
}

/// Whether this transition means the connection now sits in `TIME_WAIT`: the full socket goes
/// from `FIN_WAIT2`, `CLOSING` or `FIN_WAIT1` to `CLOSE` (handed to a `TIME_WAIT` minisock), or
/// the kernel reports `→TIME_WAIT` itself.
pub(crate) fn enters_time_wait(old: u8, new: u8) -> bool {
    new == TIME_WAIT && old != TIME_WAIT
        || new == CLOSE && matches!(old, FIN_WAIT2 | CLOSING | FIN_WAIT1)
}

/// Which end of the connection a socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// It called `connect` (saw `SYN_SENT`): its local port is ephemeral.
    Connecting,
    /// It was accepted from a listener (saw `SYN_RECV`): the peer's port is ephemeral.
    Accepting,
}

/// One live socket.
#[derive(Clone, Copy, Debug)]
struct Sock {
    owner: u32,
    local: SocketAddr,
    remote: SocketAddr,
    state: u8,
    since_ns: u64,
    /// Known once it went through `SYN_SENT` / `SYN_RECV`, or was seen from its birth.
    side: Option<Side>,
}

/// Follows the TCP sockets of the followed processes through their state changes.
#[derive(Debug, Default)]
pub(crate) struct TcpTracker {
    /// Live sockets by kernel address.
    live: HashMap<u64, Sock>,
    /// `(local, remote)` → skaddr of the live socket that last had that tuple.
    by_tuple: HashMap<(SocketAddr, SocketAddr), u64>,
    dropped: u64,
    time_wait: TimeWaits,
}

impl TcpTracker {
    /// An empty tracker.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// How many entries each table holds, for a debug log.
    pub(crate) fn sizes(&self) -> String {
        format!(
            "live {}, tuples {}, {}",
            self.live.len(),
            self.by_tuple.len(),
            self.time_wait.sizes()
        )
    }

    /// `owner` listened on TCP `port` before it was followed (read from /proc when it
    /// became followed): a connection accepted there before then, first seen closing, is
    /// grouped as the accepting side's, with the listener's port, not one group per peer port.
    pub(crate) fn listening(&mut self, owner: u32, port: u16) {
        self.time_wait.remember_port(owner, port);
    }

    /// Applies one transition (O(1)).
    pub(crate) fn apply(&mut self, t: &TcpTransition) {
        self.time_wait.remember_listener(t);

        // A known skaddr leaving CLOSE is a new socket at a reused address.
        if t.old == CLOSE && self.live.contains_key(&t.skaddr) {
            self.forget(t.skaddr);
        }

        let sock = if t.new == CLOSE {
            self.forget(t.skaddr)
        } else {
            self.update(t).or_else(|| self.track(t))
        };

        if enters_time_wait(t.old, t.new) && t.time_wait != Some(false) {
            self.time_wait.record(t, sock);
        }
        // Both ports are known once a connection is accepted or established.
        if matches!((t.old, t.new), (LISTEN, SYN_RECV) | (SYN_SENT, ESTABLISHED)) {
            self.time_wait.reused(t.local, t.remote, t.at_ns);
        }
    }

    /// Moves a tracked socket to the transition's state and addresses, re-indexing it under its
    /// new tuple; returns it as it is now, `None` when it is not tracked.
    fn update(&mut self, t: &TcpTransition) -> Option<Sock> {
        let sock = self.live.get_mut(&t.skaddr)?;
        let old_tuple = (sock.local, sock.remote);
        if t.owner != 0 {
            sock.owner = t.owner;
        }
        sock.local = t.local;
        sock.remote = t.remote;
        if sock.state != t.new {
            sock.state = t.new;
            sock.since_ns = t.at_ns;
        }
        if sock.side.is_none() {
            sock.side = side_of(t);
        }
        let sock = *sock;
        if old_tuple != (sock.local, sock.remote)
            && self.by_tuple.get(&old_tuple) == Some(&t.skaddr)
        {
            self.by_tuple.remove(&old_tuple);
        }
        self.by_tuple.insert((sock.local, sock.remote), t.skaddr);
        Some(sock)
    }

    /// Starts tracking a socket first seen in this transition; `None` (counted in
    /// [`Self::dropped`]) when [`MAX_LIVE`] are tracked already.
    fn track(&mut self, t: &TcpTransition) -> Option<Sock> {
        if self.live.len() >= MAX_LIVE {
            self.dropped += 1;
            if self.dropped == 1 {
                log::warn!("tracking {MAX_LIVE} TCP sockets; ignoring further ones");
            }
            return None;
        }
        let side = side_of(t).or_else(|| {
            // Seen from its birth without going through SYN_SENT: not a connect.
            (t.old == CLOSE && t.new != LISTEN).then_some(Side::Accepting)
        });
        let sock = Sock {
            owner: t.owner,
            local: t.local,
            remote: t.remote,
            state: t.new,
            since_ns: t.at_ns,
            side,
        };
        self.live.insert(t.skaddr, sock);
        self.by_tuple.insert((sock.local, sock.remote), t.skaddr);
        Some(sock)
    }

    /// The current state of the live socket with this local/remote address pair and since when
    /// (ns, `CLOCK_MONOTONIC`, the time it entered that state), if tracked.
    pub(crate) fn state_since(&self, local: SocketAddr, remote: SocketAddr) -> Option<(u8, u64)> {
        let skaddr = self.by_tuple.get(&(local, remote))?;
        let sock = self.live.get(skaddr)?;
        Some((sock.state, sock.since_ns))
    }

    /// Sockets currently tracked (live).
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.live.len()
    }

    /// New sockets ignored because [`MAX_LIVE`] were already tracked.
    #[cfg(test)]
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Connections that entered `TIME_WAIT` while traced, in all groups (not counting those
    /// past [`MAX_TIME_WAIT_GROUPS`]).
    #[cfg(test)]
    pub(crate) fn time_wait_total(&self) -> u64 {
        self.time_wait.total()
    }

    /// Connections the followed processes left in TIME_WAIT while traced, grouped by process,
    /// local and remote endpoint (the ephemeral port left out: the local one for the connecting
    /// side, the peer's for the accepting side), most numerous first (ties: by pid, local,
    /// remote). `now_ns` (`CLOCK_MONOTONIC`) gives rates and ages.
    pub(crate) fn time_wait_groups(&self, now_ns: u64) -> Vec<TimeWaitGroup> {
        self.time_wait.groups(now_ns)
    }

    /// Every (local, remote) pair that entered TIME_WAIT while traced, newest last, at most
    /// [`MAX_TIME_WAIT_PAIRS`] (the oldest are forgotten first). The same pair may appear more
    /// than once when a tuple was reused.
    pub(crate) fn time_wait_pairs(&self) -> impl Iterator<Item = (SocketAddr, SocketAddr)> + '_ {
        self.time_wait.pairs()
    }

    /// Removes a live socket and its tuple index entry; returns it.
    fn forget(&mut self, skaddr: u64) -> Option<Sock> {
        let sock = self.live.remove(&skaddr)?;
        let tuple = (sock.local, sock.remote);
        if self.by_tuple.get(&tuple) == Some(&skaddr) {
            self.by_tuple.remove(&tuple);
        }
        Some(sock)
    }
}

/// The side a transition proves, if any.
fn side_of(t: &TcpTransition) -> Option<Side> {
    if t.old == SYN_SENT || t.new == SYN_SENT {
        Some(Side::Connecting)
    } else if t.old == SYN_RECV || t.new == SYN_RECV || t.old == LISTEN || t.old == NEW_SYN_RECV {
        Some(Side::Accepting)
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
