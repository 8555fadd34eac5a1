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
//! `CLOSE` means the socket is gone; its kernel address (`skaddr`) may be reused by a new one.
//!
//! Memory is bounded: at most [`MAX_LIVE`] live sockets, [`MAX_TIME_WAIT_PAIRS`] remembered
//! `TIME_WAIT` pairs (oldest forgotten first), [`MAX_TIME_WAIT_GROUPS`] groups and
//! [`MAX_KNOWN_LISTENERS`] remembered listening ports. Every operation is O(1) except the
//! report-time queries.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
};

use tracer_common::abi::tcp_state::{
    CLOSE, CLOSING, FIN_WAIT1, FIN_WAIT2, LISTEN, NEW_SYN_RECV, SYN_RECV, SYN_SENT, TIME_WAIT,
};

/// Most live sockets tracked at once; further new sockets are ignored and counted in
/// [`TcpTracker::dropped`].
pub const MAX_LIVE: usize = 262_144;
/// Most `(local, remote)` pairs kept for [`TcpTracker::time_wait_pairs`]; the oldest go first.
pub const MAX_TIME_WAIT_PAIRS: usize = 65_536;
/// Most distinct [`TimeWaitGroup`]s; `TIME_WAIT` entries for further groups are counted in
/// [`TcpTracker::time_wait_dropped`] (they still go into the pair ring).
pub const MAX_TIME_WAIT_GROUPS: usize = 65_536;
/// Most `(owner, port)` listening ports remembered for the side heuristic. (Not the kernel
/// side's `tracer_common::MAX_LISTEN_PORTS`, the capacity of its port -> owner map.)
pub const MAX_KNOWN_LISTENERS: usize = 65_536;

/// One state change, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpTransition {
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
}

/// Whether this transition means the connection now sits in `TIME_WAIT`: the full socket goes
/// from `FIN_WAIT2`, `CLOSING` or `FIN_WAIT1` to `CLOSE` (handed to a `TIME_WAIT` minisock), or
/// the kernel reports `→TIME_WAIT` itself.
pub fn enters_time_wait(old: u8, new: u8) -> bool {
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
    first_ns: u64,
    last_ns: u64,
}

/// Connections one process left in `TIME_WAIT` towards one endpoint while traced.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TimeWaitGroup {
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
    /// Per minute, over the span from the first one to now (a span under 1 s counts as 1 s);
    /// one decimal.
    pub per_minute: f64,
    /// Age of the newest, seconds, millisecond precision.
    pub newest_age_s: f64,
}

/// Follows the TCP sockets of the followed processes through their state changes.
#[derive(Debug, Default)]
pub struct TcpTracker {
    /// Live sockets by kernel address.
    live: HashMap<u64, Sock>,
    /// `(local, remote)` → skaddr of the live socket that last had that tuple.
    by_tuple: HashMap<(SocketAddr, SocketAddr), u64>,
    /// `(owner, port)` that went `LISTEN` while traced.
    listen_ports: HashSet<(u32, u16)>,
    groups: HashMap<GroupKey, GroupStats>,
    /// Pairs that entered `TIME_WAIT`, oldest first.
    pairs: VecDeque<(SocketAddr, SocketAddr)>,
    dropped: u64,
    time_wait_dropped: u64,
}

impl TcpTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one transition (O(1)).
    pub fn apply(&mut self, t: &TcpTransition) {
        if t.new == LISTEN && self.listen_ports.len() < MAX_KNOWN_LISTENERS && t.local.port() != 0 {
            self.listen_ports.insert((t.owner, t.local.port()));
        }

        // A known skaddr leaving CLOSE is a new socket at a reused address.
        if t.old == CLOSE && self.live.contains_key(&t.skaddr) {
            self.forget(t.skaddr);
        }

        if t.new == CLOSE {
            let sock = self.forget(t.skaddr);
            if enters_time_wait(t.old, t.new) {
                self.record_time_wait(t, sock);
            }
            return;
        }

        let sock = match self.live.get_mut(&t.skaddr) {
            Some(sock) => {
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
                sock
            }
            None => {
                if self.live.len() >= MAX_LIVE {
                    self.dropped += 1;
                    if self.dropped == 1 {
                        log::warn!("tracking {MAX_LIVE} TCP sockets; ignoring further ones");
                    }
                    if enters_time_wait(t.old, t.new) {
                        self.record_time_wait(t, None);
                    }
                    return;
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
                sock
            }
        };
        self.by_tuple.insert((sock.local, sock.remote), t.skaddr);

        if enters_time_wait(t.old, t.new) {
            self.record_time_wait(t, Some(sock));
        }
    }

    /// The current state of the live socket with this local/remote address pair and since when
    /// (ns, `CLOCK_MONOTONIC`, the time it entered that state), if tracked.
    pub fn state_since(&self, local: SocketAddr, remote: SocketAddr) -> Option<(u8, u64)> {
        let skaddr = self.by_tuple.get(&(local, remote))?;
        let sock = self.live.get(skaddr)?;
        Some((sock.state, sock.since_ns))
    }

    /// Sockets currently tracked (live).
    pub fn live(&self) -> usize {
        self.live.len()
    }

    /// New sockets ignored because [`MAX_LIVE`] were already tracked.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// `TIME_WAIT` entries not grouped because [`MAX_TIME_WAIT_GROUPS`] groups existed.
    pub fn time_wait_dropped(&self) -> u64 {
        self.time_wait_dropped
    }

    /// Connections that entered `TIME_WAIT` while traced, in all groups (not counting
    /// [`Self::time_wait_dropped`]).
    pub fn time_wait_total(&self) -> u64 {
        self.groups.values().map(|g| g.count).sum()
    }

    /// Connections the followed processes left in TIME_WAIT while traced, grouped by process,
    /// local and remote endpoint (the ephemeral port left out: the local one for the connecting
    /// side, the peer's for the accepting side), most numerous first (ties: by pid, local,
    /// remote). `now_ns` (`CLOCK_MONOTONIC`) gives rates and ages.
    pub fn time_wait_groups(&self, now_ns: u64) -> Vec<TimeWaitGroup> {
        let mut out: Vec<TimeWaitGroup> = self
            .groups
            .iter()
            .map(|(key, stats)| {
                let span_s = (now_ns.saturating_sub(stats.first_ns) as f64 / 1e9).max(1.0);
                let per_minute = stats.count as f64 * 60.0 / span_s;
                let age_s = now_ns.saturating_sub(stats.last_ns) as f64 / 1e9;
                TimeWaitGroup {
                    pid: key.pid,
                    local: key.local.render(),
                    remote: key.remote.render(),
                    count: stats.count,
                    per_minute: (per_minute * 10.0).round() / 10.0,
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

    /// Every (local, remote) pair that entered TIME_WAIT while traced, newest last, at most
    /// [`MAX_TIME_WAIT_PAIRS`] (the oldest are forgotten first). The same pair may appear more
    /// than once when a tuple was reused.
    pub fn time_wait_pairs(&self) -> impl Iterator<Item = (SocketAddr, SocketAddr)> + '_ {
        self.pairs.iter().copied()
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

    /// Counts one connection entering `TIME_WAIT`. `sock` is what we knew of it before (or
    /// after) this transition, if anything; the transition's addresses are the latest.
    fn record_time_wait(&mut self, t: &TcpTransition, sock: Option<Sock>) {
        let (local, remote) = (t.local, t.remote);
        if self.pairs.len() >= MAX_TIME_WAIT_PAIRS {
            self.pairs.pop_front();
        }
        self.pairs.push_back((local, remote));

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
        let key = match side {
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
        };
        if let Some(stats) = self.groups.get_mut(&key) {
            stats.count += 1;
            stats.first_ns = stats.first_ns.min(t.at_ns);
            stats.last_ns = stats.last_ns.max(t.at_ns);
        } else if self.groups.len() < MAX_TIME_WAIT_GROUPS {
            self.groups.insert(
                key,
                GroupStats {
                    count: 1,
                    first_ns: t.at_ns,
                    last_ns: t.at_ns,
                },
            );
        } else {
            self.time_wait_dropped += 1;
        }
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
mod tests {
    use tracer_common::abi::tcp_state::{CLOSE_WAIT, ESTABLISHED, LAST_ACK};

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn tr(
        owner: u32,
        skaddr: u64,
        old: u8,
        new: u8,
        local: &str,
        remote: &str,
        at_ns: u64,
    ) -> TcpTransition {
        TcpTransition {
            owner,
            skaddr,
            old,
            new,
            local: a(local),
            remote: a(remote),
            at_ns,
        }
    }

    /// Feeds an accepted connection's life up to ESTABLISHED.
    fn accept(t: &mut TcpTracker, pid: u32, sk: u64, local: &str, remote: &str, at: u64) {
        t.apply(&tr(pid, sk, LISTEN, SYN_RECV, local, remote, at));
        t.apply(&tr(pid, sk, SYN_RECV, ESTABLISHED, local, remote, at + 1));
    }

    /// Feeds a connect up to ESTABLISHED (source port 0 at SYN_SENT, as observed).
    fn connect(t: &mut TcpTracker, pid: u32, sk: u64, local: &str, remote: &str, at: u64) {
        let unbound = SocketAddr::new(a(local).ip(), 0).to_string();
        t.apply(&tr(pid, sk, CLOSE, SYN_SENT, &unbound, remote, at));
        t.apply(&tr(pid, sk, SYN_SENT, ESTABLISHED, local, remote, at + 1));
    }

    /// Feeds an active close (this side first): FIN_WAIT1 → FIN_WAIT2 → CLOSE.
    fn active_close(t: &mut TcpTracker, pid: u32, sk: u64, local: &str, remote: &str, at: u64) {
        t.apply(&tr(pid, sk, ESTABLISHED, FIN_WAIT1, local, remote, at));
        t.apply(&tr(pid, sk, FIN_WAIT1, FIN_WAIT2, local, remote, at + 1));
        t.apply(&tr(pid, sk, FIN_WAIT2, CLOSE, local, remote, at + 2));
    }

    /// An accepted socket whose peer closes is in CLOSE_WAIT since the 1→8 change, and is no
    /// longer tracked once the application closes it.
    #[test]
    fn close_wait_then_app_closes() {
        let mut t = TcpTracker::new();
        let (l, r) = ("127.0.0.1:8080", "127.0.0.1:51234");
        t.apply(&tr(10, 0x100, CLOSE, LISTEN, l, "0.0.0.0:0", 0));
        accept(&mut t, 10, 0x200, l, r, SEC);
        assert_eq!(t.state_since(a(l), a(r)), Some((ESTABLISHED, SEC + 1)));
        t.apply(&tr(10, 0x200, ESTABLISHED, CLOSE_WAIT, l, r, 5 * SEC));
        assert_eq!(t.state_since(a(l), a(r)), Some((CLOSE_WAIT, 5 * SEC)));
        assert_eq!(t.live(), 2);
        t.apply(&tr(10, 0x200, CLOSE_WAIT, LAST_ACK, l, r, 9 * SEC));
        t.apply(&tr(10, 0x200, LAST_ACK, CLOSE, l, r, 9 * SEC + 5));
        assert_eq!(t.state_since(a(l), a(r)), None);
        assert_eq!(t.live(), 1);
    }

    /// A client closing first 30 times to the same server port makes one group keyed by its
    /// local IP and the server's IP:port, with the rate over first-to-now.
    #[test]
    fn client_time_wait_group() {
        let mut t = TcpTracker::new();
        for i in 0..30u64 {
            let local = format!("127.0.0.1:{}", 40000 + i);
            let at = i * 2 * SEC; // first at 0, last at 58 s
            connect(&mut t, 7, 0x1000 + i, &local, "127.0.0.1:8080", at);
            active_close(&mut t, 7, 0x1000 + i, &local, "127.0.0.1:8080", at + 10);
        }
        assert_eq!(t.live(), 0);
        // now = 60 s after the first: 30 per 60 s = 30.0/min; newest at 58 s + 12 ns.
        let groups = t.time_wait_groups(60 * SEC);
        assert_eq!(
            groups,
            vec![TimeWaitGroup {
                pid: 7,
                local: "127.0.0.1".into(),
                remote: "127.0.0.1:8080".into(),
                count: 30,
                per_minute: 30.0,
                newest_age_s: 2.0,
            }]
        );
        // Over 90 s: 20.0/min.
        assert_eq!(t.time_wait_groups(90 * SEC)[0].per_minute, 20.0);
        assert_eq!(t.time_wait_pairs().count(), 30);
        assert_eq!(
            t.time_wait_pairs().last(),
            Some((a("127.0.0.1:40029"), a("127.0.0.1:8080")))
        );
        assert_eq!(t.time_wait_total(), 30);
    }

    /// A span under one second counts as one second.
    #[test]
    fn short_span_rate() {
        let mut t = TcpTracker::new();
        for i in 0..3u64 {
            let local = format!("127.0.0.1:{}", 40000 + i);
            connect(&mut t, 7, i + 1, &local, "127.0.0.1:80", i * 1000);
            active_close(&mut t, 7, i + 1, &local, "127.0.0.1:80", i * 1000 + 10);
        }
        let g = &t.time_wait_groups(SEC / 2)[0];
        assert_eq!(g.per_minute, 180.0);
        assert_eq!(g.newest_age_s, 0.5);
    }

    /// Server-side active closes group by local IP:port and remote IP (the peer's port varies),
    /// including sockets first seen already established (side from the LISTEN port) and IPv6.
    #[test]
    fn server_time_wait_group() {
        let mut t = TcpTracker::new();
        t.apply(&tr(10, 0x1, CLOSE, LISTEN, "10.0.0.1:8080", "0.0.0.0:0", 0));
        for i in 0..4u64 {
            let remote = format!("10.0.0.2:{}", 50000 + i);
            accept(&mut t, 10, 0x100 + i, "10.0.0.1:8080", &remote, i * SEC);
            active_close(
                &mut t,
                10,
                0x100 + i,
                "10.0.0.1:8080",
                &remote,
                i * SEC + 10,
            );
        }
        // Pre-existing accepted socket: first seen at 1→4; the listen port decides.
        active_close(
            &mut t,
            10,
            0x900,
            "10.0.0.1:8080",
            "10.0.0.2:60000",
            5 * SEC,
        );
        // Pre-existing connected socket from a port nobody listens on: connecting side.
        active_close(&mut t, 10, 0x901, "10.0.0.1:45000", "10.0.0.3:443", 5 * SEC);
        // IPv6 accepted socket, kernel reporting TIME_WAIT directly.
        t.apply(&tr(10, 0x2, CLOSE, LISTEN, "[::1]:80", "[::]:0", 0));
        accept(&mut t, 10, 0x300, "[::1]:80", "[::1]:50000", SEC);
        t.apply(&tr(
            10,
            0x300,
            ESTABLISHED,
            FIN_WAIT1,
            "[::1]:80",
            "[::1]:50000",
            2 * SEC,
        ));
        t.apply(&tr(
            10,
            0x300,
            FIN_WAIT1,
            FIN_WAIT2,
            "[::1]:80",
            "[::1]:50000",
            2 * SEC,
        ));
        t.apply(&tr(
            10,
            0x300,
            FIN_WAIT2,
            TIME_WAIT,
            "[::1]:80",
            "[::1]:50000",
            2 * SEC,
        ));
        t.apply(&tr(
            10,
            0x300,
            TIME_WAIT,
            CLOSE,
            "[::1]:80",
            "[::1]:50000",
            62 * SEC,
        ));

        let groups = t.time_wait_groups(10 * SEC);
        let view: Vec<_> = groups
            .iter()
            .map(|g| (g.pid, g.local.as_str(), g.remote.as_str(), g.count))
            .collect();
        assert_eq!(
            view,
            vec![
                (10, "10.0.0.1:8080", "10.0.0.2", 5),
                (10, "10.0.0.1", "10.0.0.3:443", 1),
                (10, "[::1]:80", "[::1]", 1),
            ]
        );
        assert_eq!(t.live(), 2); // the two listeners
    }

    /// A known skaddr leaving CLOSE is a new socket: the old tuple is forgotten and the new
    /// socket gets its own state and side.
    #[test]
    fn skaddr_reuse_is_new_socket() {
        let mut t = TcpTracker::new();
        let sk = 0xdead;
        connect(&mut t, 1, sk, "127.0.0.1:40000", "127.0.0.1:80", 0);
        // An abort (RST) ends it without TIME_WAIT.
        t.apply(&tr(
            1,
            sk,
            ESTABLISHED,
            CLOSE,
            "127.0.0.1:40000",
            "127.0.0.1:80",
            SEC,
        ));
        assert_eq!(t.live(), 0);
        // Reused as a listener by another process.
        t.apply(&tr(
            2,
            sk,
            CLOSE,
            LISTEN,
            "127.0.0.1:9000",
            "0.0.0.0:0",
            2 * SEC,
        ));
        assert_eq!(t.live(), 1);
        assert_eq!(t.state_since(a("127.0.0.1:40000"), a("127.0.0.1:80")), None);
        assert_eq!(
            t.state_since(a("127.0.0.1:9000"), a("0.0.0.0:0")),
            Some((LISTEN, 2 * SEC))
        );
        // A CLOSE we never saw (lost event): the next 7→2 still starts a fresh socket.
        connect(&mut t, 3, sk, "127.0.0.1:40001", "127.0.0.1:80", 3 * SEC);
        assert_eq!(t.live(), 1);
        assert_eq!(t.state_since(a("127.0.0.1:9000"), a("0.0.0.0:0")), None);
        assert_eq!(
            t.state_since(a("127.0.0.1:40001"), a("127.0.0.1:80")),
            Some((ESTABLISHED, 3 * SEC + 1))
        );
        active_close(&mut t, 3, sk, "127.0.0.1:40001", "127.0.0.1:80", 4 * SEC);
        let g = t.time_wait_groups(5 * SEC);
        assert_eq!(g.len(), 1);
        assert_eq!((g[0].pid, g[0].local.as_str()), (3, "127.0.0.1"));
    }

    /// When the source port was 0 at SYN_SENT, state_since finds the socket by its final tuple
    /// and no longer by the early one.
    #[test]
    fn address_update_reindexes() {
        let mut t = TcpTracker::new();
        t.apply(&tr(
            1,
            0x5,
            CLOSE,
            SYN_SENT,
            "0.0.0.0:0",
            "127.0.0.1:80",
            100,
        ));
        assert_eq!(
            t.state_since(a("0.0.0.0:0"), a("127.0.0.1:80")),
            Some((SYN_SENT, 100))
        );
        t.apply(&tr(
            1,
            0x5,
            SYN_SENT,
            ESTABLISHED,
            "127.0.0.1:40000",
            "127.0.0.1:80",
            200,
        ));
        assert_eq!(t.state_since(a("0.0.0.0:0"), a("127.0.0.1:80")), None);
        assert_eq!(
            t.state_since(a("127.0.0.1:40000"), a("127.0.0.1:80")),
            Some((ESTABLISHED, 200))
        );
        // Another unbound connect took the early tuple; moving the first must not unindex it.
        t.apply(&tr(
            1,
            0x6,
            CLOSE,
            SYN_SENT,
            "0.0.0.0:0",
            "127.0.0.1:80",
            300,
        ));
        t.apply(&tr(
            1,
            0x5,
            ESTABLISHED,
            CLOSE_WAIT,
            "127.0.0.1:40000",
            "127.0.0.1:80",
            400,
        ));
        assert_eq!(
            t.state_since(a("0.0.0.0:0"), a("127.0.0.1:80")),
            Some((SYN_SENT, 300))
        );
        assert_eq!(t.live(), 2);
    }

    /// A passive close (CLOSE_WAIT → LAST_ACK → CLOSE) and an abort never count as TIME_WAIT;
    /// a TIME_WAIT → CLOSE after a reported TIME_WAIT is not counted twice.
    #[test]
    fn passive_close_is_not_time_wait() {
        let mut t = TcpTracker::new();
        let (l, r) = ("127.0.0.1:40000", "127.0.0.1:80");
        connect(&mut t, 1, 1, l, r, 0);
        t.apply(&tr(1, 1, ESTABLISHED, CLOSE_WAIT, l, r, 10));
        t.apply(&tr(1, 1, CLOSE_WAIT, LAST_ACK, l, r, 20));
        t.apply(&tr(1, 1, LAST_ACK, CLOSE, l, r, 30));
        // Untracked socket ending with LAST_ACK → CLOSE.
        t.apply(&tr(1, 2, LAST_ACK, CLOSE, "127.0.0.1:40001", r, 40));
        assert!(t.time_wait_groups(SEC).is_empty());
        assert_eq!(t.time_wait_pairs().count(), 0);
        assert_eq!(t.live(), 0);

        t.apply(&tr(1, 3, FIN_WAIT2, TIME_WAIT, "127.0.0.1:40002", r, 50));
        assert_eq!(
            t.state_since(a("127.0.0.1:40002"), a(r)),
            Some((TIME_WAIT, 50))
        );
        t.apply(&tr(1, 3, TIME_WAIT, CLOSE, "127.0.0.1:40002", r, 60));
        assert_eq!(t.time_wait_total(), 1);
        assert_eq!(t.live(), 0);
    }

    /// At most MAX_LIVE sockets are tracked; further new ones are ignored and counted, and
    /// their TIME_WAIT still counts.
    #[test]
    fn live_cap() {
        let mut t = TcpTracker::new();
        let remote = "127.0.0.1:80";
        for i in 0..MAX_LIVE as u64 + 3 {
            let local = SocketAddr::new(a(remote).ip(), (i % 60000) as u16 + 1);
            t.apply(&TcpTransition {
                owner: 1,
                skaddr: i,
                old: CLOSE,
                new: LISTEN,
                local,
                remote: a("0.0.0.0:0"),
                at_ns: i,
            });
        }
        assert_eq!(t.live(), MAX_LIVE);
        assert_eq!(t.dropped(), 3);
        // Known sockets still update; closing one makes room.
        t.apply(&tr(1, 0, LISTEN, CLOSE, "127.0.0.1:1", "0.0.0.0:0", 1));
        assert_eq!(t.live(), MAX_LIVE - 1);
        connect(&mut t, 1, u64::MAX, "127.0.0.1:40000", remote, 5);
        assert_eq!(t.live(), MAX_LIVE);
        // Untracked (dropped) socket entering TIME_WAIT is still counted.
        t.apply(&tr(
            1,
            u64::MAX - 1,
            FIN_WAIT2,
            CLOSE,
            "127.0.0.1:40001",
            remote,
            9,
        ));
        assert_eq!(t.dropped(), 3);
        assert_eq!(t.time_wait_total(), 1);
    }

    /// The pair ring keeps only the newest MAX_TIME_WAIT_PAIRS, newest last.
    #[test]
    fn pair_ring_is_bounded() {
        let mut t = TcpTracker::new();
        let remote = "127.0.0.1:80";
        for i in 0..MAX_TIME_WAIT_PAIRS as u64 + 10 {
            let local = SocketAddr::new(a(remote).ip(), (i % 60000) as u16 + 1);
            t.apply(&TcpTransition {
                owner: 1,
                skaddr: i,
                old: FIN_WAIT2,
                new: CLOSE,
                local,
                remote: a(remote),
                at_ns: i,
            });
        }
        assert_eq!(t.time_wait_pairs().count(), MAX_TIME_WAIT_PAIRS);
        let last = (MAX_TIME_WAIT_PAIRS as u64 + 9) % 60000 + 1;
        assert_eq!(t.time_wait_pairs().last().unwrap().0.port() as u64, last);
        assert_eq!(t.time_wait_total(), MAX_TIME_WAIT_PAIRS as u64 + 10);
        assert_eq!(t.live(), 0);
    }
}
