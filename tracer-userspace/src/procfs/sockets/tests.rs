//! Tests of the `/proc/net` parsers and of socket rendering: pure ones on saved lines (one table
//! of lines per file, each with what it parses to), live ones on sockets this process opens.

use std::{
    collections::{BTreeMap, HashMap},
    io::Read,
    net::{TcpListener, TcpStream, UdpSocket},
    os::{
        fd::AsRawFd,
        unix::net::{UnixListener, UnixStream},
    },
};

use Direction::{Accepted, Connected, SocketPair, Unknown};

use super::*;
use crate::{
    model::DescriptorKind,
    procfs::{
        describe_fd, list_fds,
        test_support::{GONE_PID, TempDir, fd_of, me},
    },
};

fn table(protocol: SocketProtocol, text: &str) -> SocketTable {
    let mut t = SocketTable::default();
    t.add_proc_file(protocol, text.as_bytes());
    t
}

/// The `/proc/net` file made of the lines of a table.
fn file<T>(lines: &[(&str, T)]) -> String {
    lines.iter().map(|(line, _)| format!("{line}\n")).collect()
}

/// Renders every `(inode, direction)` of `cases` and compares with the expected detail.
#[track_caller]
fn assert_renders(t: &SocketTable, cases: &[(u64, Direction, Option<&str>)]) {
    for &(inode, direction, expected) in cases {
        assert_eq!(
            t.render(inode, direction).as_deref(),
            expected,
            "socket {inode}, {direction:?}"
        );
    }
}

// --- pure: /proc/net parsing and rendering ---

/// What a `/proc/net/{tcp,tcp6,udp,udp6}` line parses to: local, remote, TCP state, listening,
/// inode.
type Inet = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    bool,
    u64,
);

/// `/proc/net/tcp` as a little-endian host prints it: a LISTEN line, then a listener, the
/// accepted and the connecting end of one connection (0xC822 = 51234), and a TIME_WAIT entry.
const TCP_LINES: &[(&str, Option<Inet>)] = &[
    (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
        None,
    ),
    (
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0",
        Some(("127.0.0.1:8080", None, Some("LISTEN"), true, 4242)),
    ),
    (
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 100 1 0000000000000000 100 0 0 10 0",
        Some(("127.0.0.1:8080", None, Some("LISTEN"), true, 100)),
    ),
    (
        "   1: 0100007F:1F90 0100007F:C822 01 00000000:00000000 00:00000000 00000000  1000        0 101 1 0000000000000000 20 4 30 10 -1",
        Some((
            "127.0.0.1:8080",
            Some("127.0.0.1:51234"),
            Some("ESTABLISHED"),
            false,
            101,
        )),
    ),
    (
        "   2: 0100007F:C822 0100007F:1F90 08 00000000:00000000 00:00000000 00000000  1000        0 102 1 0000000000000000 20 4 30 10 -1",
        Some((
            "127.0.0.1:51234",
            Some("127.0.0.1:8080"),
            Some("CLOSE_WAIT"),
            false,
            102,
        )),
    ),
    (
        "   3: 0100007F:C823 0100007F:1F90 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000",
        Some((
            "127.0.0.1:51235",
            Some("127.0.0.1:8080"),
            Some("TIME_WAIT"),
            false,
            0,
        )),
    ),
];

/// `/proc/net/tcp6`: each 32-bit word of the address is printed in host order, so ::1 and
/// IPv4-mapped addresses come out as below on a little-endian host.
const TCP6_LINES: &[(&str, Option<Inet>)] = &[
    (
        "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
        None,
    ),
    (
        "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 200 1 0000000000000000 100 0 0 10 0",
        Some(("[::1]:8080", None, Some("LISTEN"), true, 200)),
    ),
    (
        "   1: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 201 1 0000000000000000 20 4 30 10 -1",
        Some((
            "[::ffff:127.0.0.1]:8080",
            Some("[::ffff:127.0.0.1]:54321"),
            Some("ESTABLISHED"),
            false,
            201,
        )),
    ),
    (
        "   2: B80D0120000000000000000001000000:0050 B80D0120000000000000000002000000:A000 01 00000000:00000000 00:00000000 00000000  1000        0 202 1 0000000000000000 20 4 30 10 -1",
        Some((
            "[2001:db8::1]:80",
            Some("[2001:db8::2]:40960"),
            Some("ESTABLISHED"),
            false,
            202,
        )),
    ),
];

/// `/proc/net/udp`: an unconnected and a connected socket; UDP has no TCP state, whatever the
/// `st` column says.
const UDP_LINES: &[(&str, Option<Inet>)] = &[
    (
        "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops",
        None,
    ),
    (
        "  100: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 300 2 0000000000000000 0",
        Some(("0.0.0.0:53", None, None, false, 300)),
    ),
    (
        "  101: 0100007F:E000 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 301 2 0000000000000000 0",
        Some(("127.0.0.1:57344", Some("127.0.0.1:53"), None, false, 301)),
    ),
];

/// What a `/proc/net/unix` line parses to: bound path, listening, inode.
type Unix = (Option<&'static str>, bool, u64);

/// `/proc/net/unix`: bound paths with spaces, abstract names, the listening flag, unnamed
/// sockets (a double space before the inode, no path).
const UNIX_LINES: &[(&str, Option<Unix>)] = &[
    (
        "Num       RefCount Protocol Flags    Type St Inode Path",
        None,
    ),
    (
        "0000000000000000: 00000002 00000000 00010000 0001 01 20001 /run/my app.sock",
        Some((Some("/run/my app.sock"), true, 20001)),
    ),
    (
        "0000000000000000: 00000003 00000000 00000000 0001 03 20002 /run/my app.sock",
        Some((Some("/run/my app.sock"), false, 20002)),
    ),
    (
        "0000000000000000: 00000003 00000000 00000000 0001 03 20003",
        Some((None, false, 20003)),
    ),
    (
        "0000000000000000: 00000002 00000000 00000000 0002 01 20004 @/tmp/.X11-unix/X0",
        Some((Some("@/tmp/.X11-unix/X0"), false, 20004)),
    ),
    (
        "0000000000000000: 00000003 00000000 00000000 0001 03  1608",
        Some((None, false, 1608)),
    ),
    (
        "0000000000000000: 00000003 00000000 00000000 0001 03  1607",
        Some((None, false, 1607)),
    ),
    (
        "0000000000000000: 00000003 00000000 00000000 0001 03  1606",
        Some((None, false, 1606)),
    ),
];

/// Every line of the TCP/UDP tables decodes to its addresses, state and inode; header lines
/// give nothing, and a table built from a file holds one entry per parsed line.
#[cfg(target_endian = "little")]
#[test]
fn parses_inet_lines() {
    use SocketProtocol::{Tcp, Tcp6, Udp};
    for (protocol, lines) in [(Tcp, TCP_LINES), (Tcp6, TCP6_LINES), (Udp, UDP_LINES)] {
        for &(line, expected) in lines {
            let parsed = parse_inet_line(protocol, line.as_bytes());
            assert_eq!(
                parsed.as_ref().map(|s| (
                    s.protocol,
                    s.local.as_str(),
                    s.remote.as_deref(),
                    s.tcp_state,
                    s.listening,
                    s.inode,
                    s.unix_path.as_deref(),
                )),
                expected.map(|(local, remote, state, listening, inode)| (
                    protocol, local, remote, state, listening, inode, None
                )),
                "{line}"
            );
        }
        let parsed = lines.iter().filter(|(_, e)| e.is_some()).count();
        assert_eq!(table(protocol, &file(lines)).len(), parsed, "{protocol:?}");
    }
}

/// Every line of the unix table decodes to its path (the rest of the line, spaces kept),
/// listening flag and inode.
#[test]
fn parses_unix_lines() {
    for &(line, expected) in UNIX_LINES {
        let parsed = parse_unix_line(line.as_bytes());
        assert_eq!(
            parsed.as_ref().map(|s| (
                s.protocol,
                s.local.as_str(),
                s.remote.as_deref(),
                s.tcp_state,
                s.unix_path.as_deref(),
                s.listening,
                s.inode,
            )),
            expected.map(|(path, listening, inode)| (
                SocketProtocol::Unix,
                path.unwrap_or_default(),
                None,
                None,
                path,
                listening,
                inode
            )),
            "{line}"
        );
    }
    let parsed = UNIX_LINES.iter().filter(|(_, e)| e.is_some()).count();
    assert_eq!(table(SocketProtocol::Unix, &file(UNIX_LINES)).len(), parsed);
}

/// Listening sockets render without an arrow; established ones with `<-` or `->` as told, and
/// Unknown guesses from the listening ports; TIME_WAIT lines (inode 0) are counted but not
/// looked up.
#[cfg(target_endian = "little")]
#[test]
fn renders_tcp_sockets() {
    let t = table(SocketProtocol::Tcp, &file(TCP_LINES));
    assert_renders(
        &t,
        &[
            (4242, Unknown, Some("tcp 127.0.0.1:8080")),
            (4242, Accepted, Some("tcp 127.0.0.1:8080")),
            (101, Unknown, Some("tcp 127.0.0.1:8080 <- 127.0.0.1:51234")),
            (102, Unknown, Some("tcp 127.0.0.1:51234 -> 127.0.0.1:8080")),
            (
                101,
                Connected,
                Some("tcp 127.0.0.1:8080 -> 127.0.0.1:51234"),
            ),
            (102, Accepted, Some("tcp 127.0.0.1:51234 <- 127.0.0.1:8080")),
            (999, Unknown, None),
        ],
    );
    assert!(t.get(0).is_none());
    assert_eq!(
        t.tcp_state_counts(),
        BTreeMap::from([
            ("CLOSE_WAIT", 1),
            ("ESTABLISHED", 1),
            ("LISTEN", 2),
            ("TIME_WAIT", 1),
        ])
    );
}

/// IPv6 sockets render like IPv4 ones, addresses in brackets.
#[cfg(target_endian = "little")]
#[test]
fn renders_tcp6_sockets() {
    assert_renders(
        &table(SocketProtocol::Tcp6, &file(TCP6_LINES)),
        &[
            (200, Unknown, Some("tcp6 [::1]:8080")),
            (
                201,
                Unknown,
                Some("tcp6 [::ffff:127.0.0.1]:8080 <- [::ffff:127.0.0.1]:54321"),
            ),
            (
                202,
                Connected,
                Some("tcp6 [2001:db8::1]:80 -> [2001:db8::2]:40960"),
            ),
        ],
    );
}

/// UDP: unconnected sockets have no arrow; connected ones do.
#[cfg(target_endian = "little")]
#[test]
fn renders_udp_sockets() {
    assert_renders(
        &table(SocketProtocol::Udp, &file(UDP_LINES)),
        &[
            (300, Unknown, Some("udp 0.0.0.0:53")),
            (301, Unknown, Some("udp 127.0.0.1:57344 -> 127.0.0.1:53")),
        ],
    );
}

/// Unix sockets render with their path, as a socketpair, or unnamed, before and after the
/// peers are known.
#[test]
fn renders_unix_sockets() {
    let mut t = table(SocketProtocol::Unix, &file(UNIX_LINES));
    assert_renders(
        &t,
        &[
            (20001, Unknown, Some("unix /run/my app.sock")),
            (20004, Unknown, Some("unix @/tmp/.X11-unix/X0")),
            // Without peer information an unnamed socket is just unnamed...
            (20003, Unknown, Some("unix (unnamed)")),
            // ...unless the caller knows it came from socketpair().
            (20003, SocketPair, Some("unix socketpair")),
        ],
    );
    // With peers: client of a named server, and two unnamed ends of a pair.
    t.set_unix_peers(&HashMap::from([
        (20003, 20002),
        (20002, 20003),
        (1608, 1607),
        (1607, 1608),
    ]));
    assert_renders(
        &t,
        &[
            (20003, Unknown, Some("unix -> /run/my app.sock")),
            (20002, Unknown, Some("unix /run/my app.sock")),
            (1608, Unknown, Some("unix socketpair")),
            (1606, Unknown, Some("unix (unnamed)")),
        ],
    );
}

/// Header lines, junk and truncated lines are skipped without error.
#[test]
fn skips_unparsable_lines() {
    let mut t = SocketTable::default();
    t.add_proc_file(
        SocketProtocol::Tcp,
        b"  sl local\n garbage line\n  0: 0100007F\n\n",
    );
    t.add_proc_file(SocketProtocol::Unix, b"Num RefCount\n0000: 1 2\n\xff\xfe\n");
    assert!(t.is_empty());
}

// --- live, on sockets of this test process ---

/// Listener, accepted and connected TCP sockets render as the contract says, with states.
#[test]
fn live_tcp_sockets() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    let client_port = client.local_addr().unwrap().port();

    let fds = list_fds(me(), &SocketTable::load(me())).unwrap();
    let l = fd_of(&fds, listener.as_raw_fd());
    assert_eq!(l.kind, DescriptorKind::Socket);
    assert_eq!(l.detail, format!("tcp 127.0.0.1:{port}"));
    assert_eq!(l.tcp_state.as_deref(), Some("LISTEN"));
    let s = fd_of(&fds, server.as_raw_fd());
    assert_eq!(
        s.detail,
        format!("tcp 127.0.0.1:{port} <- 127.0.0.1:{client_port}")
    );
    assert_eq!(s.tcp_state.as_deref(), Some("ESTABLISHED"));
    let c = fd_of(&fds, client.as_raw_fd());
    assert_eq!(
        c.detail,
        format!("tcp 127.0.0.1:{client_port} -> 127.0.0.1:{port}")
    );
    assert_eq!(c.tcp_state.as_deref(), Some("ESTABLISHED"));
    assert!(c.inode.is_some());
    assert!(fds.windows(2).all(|w| w[0].fd < w[1].fd), "sorted by fd");
}

/// A peer that closes leaves our end in CLOSE_WAIT, and an explicit direction wins.
#[test]
fn live_tcp_close_wait_and_explicit_direction() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    drop(server);
    // Reading EOF proves the FIN arrived, so the state has changed.
    assert_eq!(client.read(&mut [0u8; 1]).unwrap(), 0);
    let t = describe_fd(
        me(),
        client.as_raw_fd(),
        &SocketTable::load(me()),
        Direction::Accepted,
    )
    .unwrap();
    assert_eq!(t.tcp_state.as_deref(), Some("CLOSE_WAIT"));
    assert!(t.detail.contains(" <- "), "{}", t.detail);
}

/// A bound UDP socket and an IPv6 listener render without an arrow.
#[test]
fn live_udp_and_tcp6() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let uport = udp.local_addr().unwrap().port();
    let sockets = SocketTable::load(me());
    let u = describe_fd(me(), udp.as_raw_fd(), &sockets, Direction::Unknown).unwrap();
    assert_eq!(u.detail, format!("udp 127.0.0.1:{uport}"));
    assert_eq!(u.tcp_state, None);
    // IPv6 may be disabled in some sandboxes; only check when it binds.
    if let Ok(l6) = TcpListener::bind("[::1]:0") {
        let port = l6.local_addr().unwrap().port();
        let t = describe_fd(
            me(),
            l6.as_raw_fd(),
            &SocketTable::load(me()),
            Direction::Unknown,
        )
        .unwrap();
        assert_eq!(t.detail, format!("tcp6 [::1]:{port}"));
    }
}

/// A socketpair renders as `unix socketpair` (from sock_diag, or because the caller says
/// so); a bound listener and its client render with the path.
#[test]
fn live_unix_sockets() {
    let (a, _b) = UnixStream::pair().unwrap();
    let sockets = SocketTable::load(me());
    let told = describe_fd(me(), a.as_raw_fd(), &sockets, Direction::SocketPair).unwrap();
    assert_eq!(
        (told.kind, told.detail.as_str()),
        (DescriptorKind::Socket, "unix socketpair")
    );
    let guessed = describe_fd(me(), a.as_raw_fd(), &sockets, Direction::Unknown).unwrap();
    assert!(guessed.detail.starts_with("unix "), "{}", guessed.detail);
    let peers_known = sockets
        .get(guessed.inode.unwrap())
        .unwrap()
        .unix_peer
        .is_some();
    if peers_known {
        assert_eq!(guessed.detail, "unix socketpair");
    } else {
        assert_eq!(guessed.detail, "unix (unnamed)");
    }

    let dir = TempDir::new("unix");
    let path = dir.0.join("srv.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let client = UnixStream::connect(&path).unwrap();
    let (server, _) = listener.accept().unwrap();
    let sockets = SocketTable::load(me());
    let fds = list_fds(me(), &sockets).unwrap();
    let p = path.to_str().unwrap();
    assert_eq!(
        fd_of(&fds, listener.as_raw_fd()).detail,
        format!("unix {p}")
    );
    assert_eq!(fd_of(&fds, server.as_raw_fd()).detail, format!("unix {p}"));
    let c = &fd_of(&fds, client.as_raw_fd()).detail;
    if peers_known {
        assert_eq!(*c, format!("unix -> {p}"));
    } else {
        assert_eq!(c, "unix (unnamed)");
    }
}

/// A missing process has no sockets to read.
#[test]
fn live_missing_process_has_no_sockets() {
    assert!(SocketTable::load(GONE_PID).is_empty());
}
