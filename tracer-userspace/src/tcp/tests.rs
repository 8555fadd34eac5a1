//! The tracker fed the transition sequences the kernel reports (see the module doc), and the
//! rules they are judged by.

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
        time_wait: None,
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

/// Feeds `count` sockets (skaddr and time 0, 1, ...) of owner 1 one `old → new` change each,
/// from 127.0.0.1 with local ports cycling through 1..=60000, to `remote`.
fn flood(t: &mut TcpTracker, count: u64, old: u8, new: u8, remote: &str) {
    for i in 0..count {
        t.apply(&TcpTransition {
            owner: 1,
            skaddr: i,
            old,
            new,
            local: SocketAddr::from(([127, 0, 0, 1], (i % 60000) as u16 + 1)),
            remote: a(remote),
            at_ns: i,
            time_wait: None,
        });
    }
}

/// A connection sits in TIME_WAIT after an active close (the full socket going to CLOSE from
/// FIN_WAIT2, CLOSING or FIN_WAIT1) or a reported →TIME_WAIT; never after a passive close, an
/// abort, or the end of TIME_WAIT itself.
#[test]
fn time_wait_transitions() {
    for (old, new, enters) in [
        (FIN_WAIT2, CLOSE, true),
        (CLOSING, CLOSE, true),
        (FIN_WAIT1, CLOSE, true),
        (FIN_WAIT2, TIME_WAIT, true),
        (CLOSING, TIME_WAIT, true),
        (TIME_WAIT, TIME_WAIT, false),
        (TIME_WAIT, CLOSE, false),
        (LAST_ACK, CLOSE, false),
        (ESTABLISHED, CLOSE, false),
        (SYN_SENT, CLOSE, false),
        (ESTABLISHED, FIN_WAIT1, false),
        (FIN_WAIT1, FIN_WAIT2, false),
    ] {
        assert_eq!(enters_time_wait(old, new), enters, "{old} -> {new}");
    }
}

/// A close from FIN_WAIT2 counts as TIME_WAIT unless the kernel's table had no TIME_WAIT socket
/// in the connection's place (net.ipv4.tcp_max_tw_buckets reached: `ss` shows nothing): three
/// accepted connections closed first, the middle one refused its TIME_WAIT socket, make two,
/// and only their pairs are checked against /proc.
#[test]
fn close_without_time_wait_socket_is_not_counted() {
    let mut t = TcpTracker::new();
    let l = "127.0.0.1:5432";
    t.apply(&tr(10, 0x100, CLOSE, LISTEN, l, "0.0.0.0:0", 0));
    for (i, taken_over) in [Some(true), Some(false), None].into_iter().enumerate() {
        let (sk, r) = (0x200 + i as u64, format!("127.0.0.1:{}", 40000 + i));
        accept(&mut t, 11, sk, l, &r, SEC);
        t.apply(&tr(11, sk, ESTABLISHED, FIN_WAIT1, l, &r, 2 * SEC));
        t.apply(&tr(11, sk, FIN_WAIT1, FIN_WAIT2, l, &r, 2 * SEC + 1));
        t.apply(&TcpTransition {
            time_wait: taken_over,
            ..tr(11, sk, FIN_WAIT2, CLOSE, l, &r, 2 * SEC + 2)
        });
    }
    assert_eq!(t.time_wait_total(), 2);
    let pairs: Vec<_> = t.time_wait_pairs().map(|(_, r)| r.port()).collect();
    assert_eq!(pairs, [40000, 40002]);
    assert_eq!(t.live(), 1, "the closed ones are forgotten alike");
}

/// A server closes first three connections from ports 40000-40002; the client then connects
/// again from 40000 within the 60 s (the server's TIME_WAIT socket accepts the SYN and is
/// dropped: `ss` no longer shows it) and from 40001 a minute later (that one had expired):
/// one of the three ended early. Observed with pgbench -C, whose ports come back in a second.
#[test]
fn new_connection_on_the_same_ports_ends_time_wait() {
    let mut t = TcpTracker::new();
    let l = "127.0.0.1:5432";
    t.apply(&tr(10, 0x100, CLOSE, LISTEN, l, "0.0.0.0:0", 0));
    for i in 0..3u64 {
        let (sk, r) = (0x200 + i, format!("127.0.0.1:{}", 40000 + i));
        accept(&mut t, 11, sk, l, &r, SEC);
        active_close(&mut t, 11, sk, l, &r, 2 * SEC);
    }
    accept(&mut t, 12, 0x300, l, "127.0.0.1:40000", 3 * SEC);
    accept(&mut t, 12, 0x301, l, "127.0.0.1:40001", 63 * SEC);
    let groups = t.time_wait_groups(64 * SEC);
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(
        (groups[0].count, groups[0].ended_early),
        (3, 1),
        "{groups:?}"
    );
    // Reuse is counted once per TIME_WAIT.
    accept(&mut t, 12, 0x302, l, "127.0.0.1:40000", 4 * SEC);
    assert_eq!(t.time_wait_groups(64 * SEC)[0].ended_early, 1);
}

/// SYN_SENT proves the connecting side; SYN_RECV, LISTEN and NEW_SYN_RECV the accepting one;
/// other changes prove nothing.
#[test]
fn sides() {
    for (old, new, side) in [
        (CLOSE, SYN_SENT, Some(Side::Connecting)),
        (SYN_SENT, ESTABLISHED, Some(Side::Connecting)),
        (LISTEN, SYN_RECV, Some(Side::Accepting)),
        (SYN_RECV, ESTABLISHED, Some(Side::Accepting)),
        (NEW_SYN_RECV, ESTABLISHED, Some(Side::Accepting)),
        (CLOSE, LISTEN, None),
        (ESTABLISHED, FIN_WAIT1, None),
        (ESTABLISHED, CLOSE_WAIT, None),
    ] {
        let t = tr(1, 1, old, new, "127.0.0.1:1", "127.0.0.1:2", 0);
        assert_eq!(side_of(&t), side, "{old} -> {new}");
    }
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

/// A client closing first N times to the same server port makes one group keyed by its local
/// IP and the server's IP:port, with a recent rate (each close weighs e^(-age / 1 min)): a
/// burst is never stretched into a rate over a shorter span than a minute.
#[test]
fn client_time_wait_group() {
    for (closes, every_ns, now_ns, per_minute, newest_age_s) in [
        // 30 in the last 60 s, weighted by age: 18.6/min; the newest closed at 58 s + 12 ns.
        (30, 2 * SEC, 60 * SEC, 18.6, 2.0),
        // The same seen 30 s later has faded: 11.3/min.
        (30, 2 * SEC, 90 * SEC, 11.3, 32.0),
        // 3 within 2 µs, half a second ago: 3/min, not 3 per second.
        (3, 1000, SEC / 2, 3.0, 0.5),
        // A burst of 500 in 0.1 s, right after it: 499.6/min; 30 s later: 303.5/min.
        (500, SEC / 10 / 500, SEC / 10, 499.6, 0.0),
        (500, SEC / 10 / 500, 30 * SEC, 303.5, 29.9),
    ] {
        let mut t = TcpTracker::new();
        for i in 0..closes {
            let local = format!("127.0.0.1:{}", 40000 + i);
            let at = i * every_ns;
            connect(&mut t, 7, 0x1000 + i, &local, "127.0.0.1:8080", at);
            active_close(&mut t, 7, 0x1000 + i, &local, "127.0.0.1:8080", at + 10);
        }
        let case = format!("{closes} closes every {every_ns} ns, now {now_ns}");
        assert_eq!(t.live(), 0, "{case}");
        assert_eq!(
            t.time_wait_groups(now_ns),
            vec![TimeWaitGroup {
                pid: 7,
                local: "127.0.0.1".into(),
                remote: "127.0.0.1:8080".into(),
                count: closes,
                ended_early: 0,
                per_minute,
                newest_age_s,
            }],
            "{case}"
        );
        assert_eq!(t.time_wait_pairs().count() as u64, closes, "{case}");
        let newest = format!("127.0.0.1:{}", 40000 + closes - 1);
        assert_eq!(
            t.time_wait_pairs().last(),
            Some((a(&newest), a("127.0.0.1:8080"))),
            "{case}"
        );
        assert_eq!(t.time_wait_total(), closes, "{case}");
    }
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
    for (old, new, at) in [
        (ESTABLISHED, FIN_WAIT1, 2 * SEC),
        (FIN_WAIT1, FIN_WAIT2, 2 * SEC),
        (FIN_WAIT2, TIME_WAIT, 2 * SEC),
        (TIME_WAIT, CLOSE, 62 * SEC),
    ] {
        t.apply(&tr(10, 0x300, old, new, "[::1]:80", "[::1]:50000", at));
    }

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

/// A listener older than the trace (told from /proc at attach, no LISTEN transition seen):
/// connections accepted on it before attach, first seen closing, make one accepting group.
#[test]
fn listener_from_before_attach_groups_its_connections() {
    let mut t = TcpTracker::new();
    t.listening(10, 8080);
    for i in 0..3u64 {
        let remote = format!("10.0.0.2:{}", 50000 + i);
        active_close(&mut t, 10, 0x100 + i, "10.0.0.1:8080", &remote, i * SEC);
    }
    let groups = t.time_wait_groups(5 * SEC);
    let view: Vec<_> = groups
        .iter()
        .map(|g| (g.pid, g.local.as_str(), g.remote.as_str(), g.count))
        .collect();
    assert_eq!(view, vec![(10, "10.0.0.1:8080", "10.0.0.2", 3)]);
}

/// A known skaddr leaving CLOSE is a new socket: the old tuple is forgotten and the new
/// socket gets its own state and side.
#[test]
fn skaddr_reuse_is_new_socket() {
    let mut t = TcpTracker::new();
    let sk = 0xdead;
    let (first, server) = ("127.0.0.1:40000", "127.0.0.1:80");
    let listener = ("127.0.0.1:9000", "0.0.0.0:0");
    connect(&mut t, 1, sk, first, server, 0);
    // An abort (RST) ends it without TIME_WAIT.
    t.apply(&tr(1, sk, ESTABLISHED, CLOSE, first, server, SEC));
    assert_eq!(t.live(), 0);
    // Reused as a listener by another process.
    t.apply(&tr(2, sk, CLOSE, LISTEN, listener.0, listener.1, 2 * SEC));
    assert_eq!(t.live(), 1);
    assert_eq!(t.state_since(a(first), a(server)), None);
    assert_eq!(
        t.state_since(a(listener.0), a(listener.1)),
        Some((LISTEN, 2 * SEC))
    );
    // A CLOSE we never saw (lost event): the next 7→2 still starts a fresh socket.
    connect(&mut t, 3, sk, "127.0.0.1:40001", server, 3 * SEC);
    assert_eq!(t.live(), 1);
    assert_eq!(t.state_since(a(listener.0), a(listener.1)), None);
    assert_eq!(
        t.state_since(a("127.0.0.1:40001"), a(server)),
        Some((ESTABLISHED, 3 * SEC + 1))
    );
    active_close(&mut t, 3, sk, "127.0.0.1:40001", server, 4 * SEC);
    let g = t.time_wait_groups(5 * SEC);
    assert_eq!(g.len(), 1);
    assert_eq!((g[0].pid, g[0].local.as_str()), (3, "127.0.0.1"));
}

/// When the source port was 0 at SYN_SENT, state_since finds the socket by its final tuple
/// and no longer by the early one.
#[test]
fn address_update_reindexes() {
    let mut t = TcpTracker::new();
    let (unbound, bound, server) = ("0.0.0.0:0", "127.0.0.1:40000", "127.0.0.1:80");
    t.apply(&tr(1, 0x5, CLOSE, SYN_SENT, unbound, server, 100));
    assert_eq!(t.state_since(a(unbound), a(server)), Some((SYN_SENT, 100)));
    t.apply(&tr(1, 0x5, SYN_SENT, ESTABLISHED, bound, server, 200));
    assert_eq!(t.state_since(a(unbound), a(server)), None);
    assert_eq!(t.state_since(a(bound), a(server)), Some((ESTABLISHED, 200)));
    // Another unbound connect took the early tuple; moving the first must not unindex it.
    t.apply(&tr(1, 0x6, CLOSE, SYN_SENT, unbound, server, 300));
    t.apply(&tr(1, 0x5, ESTABLISHED, CLOSE_WAIT, bound, server, 400));
    assert_eq!(t.state_since(a(unbound), a(server)), Some((SYN_SENT, 300)));
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
    // Listeners (remote 0.0.0.0:0) on 127.0.0.1 ports 1, 2, ...
    flood(&mut t, MAX_LIVE as u64 + 3, CLOSE, LISTEN, "0.0.0.0:0");
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
    flood(
        &mut t,
        MAX_TIME_WAIT_PAIRS as u64 + 10,
        FIN_WAIT2,
        CLOSE,
        "127.0.0.1:80",
    );
    assert_eq!(t.time_wait_pairs().count(), MAX_TIME_WAIT_PAIRS);
    let last = (MAX_TIME_WAIT_PAIRS as u64 + 9) % 60000 + 1;
    assert_eq!(t.time_wait_pairs().last().unwrap().0.port() as u64, last);
    assert_eq!(t.time_wait_total(), MAX_TIME_WAIT_PAIRS as u64 + 10);
    assert_eq!(t.live(), 0);
}
