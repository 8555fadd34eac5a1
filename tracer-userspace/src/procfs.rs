//! Reading `/proc`: a process's descriptors at attach time ([`list_fds`]), one descriptor at
//! report time ([`describe_fd`]), the sockets of its network namespace ([`SocketTable`]) and the
//! processes of a tree ([`process_info`], [`descendants`]).
//!
//! Everything here is a snapshot that can be stale the moment it is taken: processes exit and
//! descriptors close while we read. Functions that walk many entries skip the ones that vanish
//! under them; functions about one entry return the `io::Error` (`NotFound` when it is gone).
//!
//! Detail strings follow the report contract in `shared/DESIGN.md`: the path for files,
//! `tcp 127.0.0.1:8080 <- 127.0.0.1:51234` / `-> ...` for sockets, `unix PATH`,
//! `unix socketpair`, `pipe:[INODE]`.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    ffi::{OsStr, OsString},
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::ffi::{OsStrExt, OsStringExt},
    os::unix::fs::MetadataExt,
    path::PathBuf,
};

use tracer_common::abi::{O_CLOEXEC, tcp_state};

use crate::{aggregator::ListedFd, kind::DescriptorKind, names::escape_bytes};

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Facts about one process from `/proc/PID/{stat,cmdline,status}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    pub tgid: u32,
    /// The kernel's `comm` (at most 15 bytes; non-UTF-8 bytes replaced by U+FFFD).
    pub comm: String,
    /// `argv` as the process last left it; empty for kernel threads and zombies.
    pub cmdline: Vec<String>,
    /// starttime field of /proc/PID/stat (clock ticks since boot), to tell a reused pid apart
    pub start_time: u64,
    pub zombie: bool,
}

/// The fields of `/proc/PID/stat` this module uses.
#[derive(Clone, Debug, PartialEq, Eq)]
struct StatFields {
    pid: u32,
    comm: String,
    state: char,
    ppid: u32,
    start_time: u64,
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Parses one `/proc/PID/stat` line. `comm` may hold spaces and `)`, so it ends at the *last*
/// `)` of the line (nothing after it can contain one).
fn parse_stat(line: &[u8]) -> io::Result<StatFields> {
    let open = line
        .iter()
        .position(|&b| b == b'(')
        .ok_or_else(|| invalid("stat: no '('"))?;
    let close = line
        .iter()
        .rposition(|&b| b == b')')
        .filter(|&c| c > open)
        .ok_or_else(|| invalid("stat: no ')'"))?;
    let pid = std::str::from_utf8(&line[..open])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| invalid("stat: bad pid"))?;
    let comm = String::from_utf8_lossy(&line[open + 1..close]).into_owned();
    let rest = std::str::from_utf8(&line[close + 1..]).map_err(|_| invalid("stat: not ASCII"))?;
    // Fields after comm, numbered as in proc(5): 3 state, 4 ppid, ..., 22 starttime.
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n - 3)
            .copied()
            .ok_or_else(|| invalid(format!("stat: no field {n}")))
    };
    let state = field(3)?
        .chars()
        .next()
        .ok_or_else(|| invalid("stat: empty state"))?;
    let ppid = field(4)?.parse().map_err(|_| invalid("stat: bad ppid"))?;
    let start_time = field(22)?
        .parse()
        .map_err(|_| invalid("stat: bad starttime"))?;
    Ok(StatFields {
        pid,
        comm,
        state,
        ppid,
        start_time,
    })
}

/// Splits `/proc/PID/cmdline` (NUL-terminated arguments) into arguments.
fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

/// The `Tgid:` line of `/proc/PID/status`.
fn parse_status_tgid(status: &[u8]) -> Option<u32> {
    status.split(|&b| b == b'\n').find_map(|line| {
        let value = line.strip_prefix(b"Tgid:")?;
        std::str::from_utf8(value).ok()?.trim().parse().ok()
    })
}

/// Reads `/proc/PID/stat` (which must succeed), then `cmdline` and `status` (which may fail if
/// the process exits in between: the cmdline is then empty and the tgid taken to be the pid).
pub fn process_info(pid: u32) -> io::Result<ProcessInfo> {
    let stat = parse_stat(&fs::read(format!("/proc/{pid}/stat"))?)?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| parse_cmdline(&b))
        .unwrap_or_default();
    let tgid = fs::read(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| parse_status_tgid(&s))
        .unwrap_or(pid);
    Ok(ProcessInfo {
        pid: stat.pid,
        ppid: stat.ppid,
        tgid,
        comm: stat.comm,
        cmdline,
        start_time: stat.start_time,
        zombie: matches!(stat.state, 'Z' | 'X'),
    })
}

/// starttime of `pid` (clock ticks since boot), which tells a process from a later one that
/// got the same pid; `None` when there is no such process.
pub fn start_time(pid: u32) -> Option<u64> {
    parse_stat(&fs::read(format!("/proc/{pid}/stat")).ok()?)
        .ok()
        .map(|stat| stat.start_time)
}

/// The working directory of `pid`, escaped like paths (see `names::escape_bytes`).
pub fn cwd(pid: u32) -> Option<String> {
    let link = fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    Some(escape_bytes(link.as_os_str().as_bytes()))
}

/// Whether `pid` names a process or thread that has not been reaped yet (zombies exist).
pub fn process_exists(pid: u32) -> bool {
    pid != 0 && fs::metadata(format!("/proc/{pid}/stat")).is_ok()
}

/// The pids of every process (thread-group leader) in `/proc`, unsorted.
pub fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The thread ids of `pid` (`/proc/PID/task`), sorted; empty when the process is gone.
pub fn threads(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut tids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    tids
}

/// Whether /proc/PID/fdinfo/FD shows O_CLOEXEC in its (octal) flags.
pub fn fd_is_cloexec(pid: u32, fd: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("flags:"))
                .and_then(|flags| u64::from_str_radix(flags.trim(), 8).ok())
        })
        .is_some_and(|flags| flags & O_CLOEXEC != 0)
}

/// Every descendant of `pid` (children, grandchildren, ...) found from the ppid in every
/// `/proc/N/stat`; not `pid` itself; only thread-group leaders (the numeric directories of
/// `/proc` are processes). Parents come before their children (breadth first, siblings by pid).
///
/// Zombies are included: an exited child that nobody reaped is one of the leaks the tracer
/// reports (check [`ProcessInfo::zombie`] to leave them out). Processes reparented away from the
/// tree (their parent exited) are no longer its descendants.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for n in all_pids() {
        // A process that exits while we scan is simply not there.
        let Ok(bytes) = fs::read(format!("/proc/{n}/stat")) else {
            continue;
        };
        if let Ok(stat) = parse_stat(&bytes) {
            children.entry(stat.ppid).or_default().push(n);
        }
    }
    tree_below(pid, &mut children)
}

/// Breadth-first walk of a ppid → children map from `root`, excluding `root`.
fn tree_below(root: u32, children: &mut HashMap<u32, Vec<u32>>) -> Vec<u32> {
    let mut out = Vec::new();
    let mut seen = HashSet::from([root]);
    let mut queue = VecDeque::from([root]);
    while let Some(parent) = queue.pop_front() {
        let Some(mut kids) = children.remove(&parent) else {
            continue;
        };
        kids.sort_unstable();
        for kid in kids {
            if seen.insert(kid) {
                out.push(kid);
                queue.push_back(kid);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------------------------

/// Where a TCP/UDP socket's peer is relative to us, when the caller knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The socket came from `accept`: rendered `LOCAL <- REMOTE`.
    Accepted,
    /// The socket called `connect`: rendered `LOCAL -> REMOTE`.
    Connected,
    /// Not known (e.g. pre-existing descriptors): guessed, see [`SocketTable::render`].
    Unknown,
    /// The socket came from `socketpair(2)`: a unix socket is rendered `unix socketpair` even
    /// when its peer is already closed. Same as `Unknown` for TCP/UDP.
    SocketPair,
}

/// Which `/proc/PID/net/*` table a socket was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SocketProtocol {
    Tcp,
    Tcp6,
    Udp,
    Udp6,
    Unix,
}

impl SocketProtocol {
    /// The name used in details and as the `/proc/net` file name: `tcp`, `tcp6`, ...
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Tcp6 => "tcp6",
            Self::Udp => "udp",
            Self::Udp6 => "udp6",
            Self::Unix => "unix",
        }
    }

    pub const fn is_tcp(self) -> bool {
        matches!(self, Self::Tcp | Self::Tcp6)
    }

    pub const fn is_udp(self) -> bool {
        matches!(self, Self::Udp | Self::Udp6)
    }

    const ALL: [Self; 5] = [Self::Tcp, Self::Tcp6, Self::Udp, Self::Udp6, Self::Unix];
}

/// `__SO_ACCEPTCON` in the Flags column of `/proc/net/unix`: a listening socket.
const UNIX_ACCEPTCON: u32 = 1 << 16;

/// One socket of a network namespace, from one line of `/proc/PID/net/{tcp,tcp6,udp,udp6,unix}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    pub protocol: SocketProtocol,
    /// `127.0.0.1:8080`, `[::1]:8080`; for unix sockets the bound path, or empty.
    pub local: String,
    /// The peer, `None` when there is none (listening TCP, unconnected UDP, unix).
    pub remote: Option<String>,
    /// TCP only.
    pub tcp_state: Option<&'static str>,
    /// Unix only: the bound path (abstract names start with `@`), also shown on sockets
    /// accepted from a listener bound to a path.
    pub unix_path: Option<String>,
    /// A TCP socket in LISTEN or a unix socket that called `listen`.
    pub listening: bool,
    /// Socket inode (the N of `socket:[N]`); 0 for entries that no descriptor holds (TIME_WAIT,
    /// NEW_SYN_RECV).
    pub inode: u64,
    /// TCP/UDP: the parsed local address.
    pub local_addr: Option<SocketAddr>,
    /// TCP/UDP: the parsed remote address, `None` when unconnected.
    pub remote_addr: Option<SocketAddr>,
    /// Unix: the inode of the connected peer socket, when sock_diag could tell it.
    pub unix_peer: Option<u64>,
}

/// Sockets of one network namespace, by inode, read from
/// `/proc/PID/net/{tcp,tcp6,udp,udp6,unix}`.
#[derive(Clone, Debug, Default)]
pub struct SocketTable {
    entries: Vec<SocketInfo>,
    by_inode: HashMap<u64, usize>,
    /// Local ports of listening TCP sockets (either family).
    tcp_listen_ports: HashSet<u16>,
    /// Local ports of unconnected UDP sockets (either family).
    udp_unconnected_ports: HashSet<u16>,
}

impl SocketTable {
    /// Reads the socket tables of `pid`'s network namespace. Missing or unreadable files just
    /// give fewer entries, never an error. Unix sockets' peers come from sock_diag (netlink) of
    /// our own namespace when it answers; sockets of other namespaces simply lack them.
    pub fn load(pid: u32) -> SocketTable {
        let mut table = SocketTable::default();
        for protocol in SocketProtocol::ALL {
            match fs::read(format!("/proc/{pid}/net/{}", protocol.as_str())) {
                Ok(bytes) => table.add_proc_file(protocol, &bytes),
                Err(e) => log::debug!("/proc/{pid}/net/{}: {e}", protocol.as_str()),
            }
        }
        match unix_diag::peers() {
            Ok(peers) => table.set_unix_peers(&peers),
            Err(e) => log::debug!("sock_diag for unix peers failed: {e}"),
        }
        table
    }

    /// Adds every line of one `/proc/net/<protocol>` file (header and unparsable lines are
    /// skipped). Public so that tables can be built from saved text.
    pub fn add_proc_file(&mut self, protocol: SocketProtocol, contents: &[u8]) {
        for line in contents.split(|&b| b == b'\n') {
            let parsed = match protocol {
                SocketProtocol::Unix => parse_unix_line(line),
                _ => parse_inet_line(protocol, line),
            };
            if let Some(info) = parsed {
                self.insert(info);
            }
        }
    }

    /// Adds one socket; a second entry with the same non-zero inode replaces the lookup.
    pub fn insert(&mut self, info: SocketInfo) {
        if let Some(port) = info.local_addr.map(|a| a.port()) {
            if info.protocol.is_tcp() && info.listening {
                self.tcp_listen_ports.insert(port);
            }
            if info.protocol.is_udp() && info.remote_addr.is_none() {
                self.udp_unconnected_ports.insert(port);
            }
        }
        if info.inode != 0 {
            self.by_inode.insert(info.inode, self.entries.len());
        }
        self.entries.push(info);
    }

    /// Records unix peers (socket inode → peer inode) from sock_diag.
    pub fn set_unix_peers(&mut self, peers: &HashMap<u64, u64>) {
        for (inode, &idx) in &self.by_inode {
            let entry = &mut self.entries[idx];
            if entry.protocol == SocketProtocol::Unix {
                entry.unix_peer = peers.get(inode).copied().filter(|&p| p != 0);
            }
        }
    }

    pub fn get(&self, inode: u64) -> Option<&SocketInfo> {
        self.by_inode.get(&inode).map(|&i| &self.entries[i])
    }

    /// Every entry, including those no descriptor holds (inode 0: TIME_WAIT, NEW_SYN_RECV).
    pub fn iter(&self) -> impl Iterator<Item = &SocketInfo> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many TCP sockets of the namespace are in each state (all of them, held by a
    /// descriptor or not: TIME_WAIT sockets belong to no descriptor).
    pub fn tcp_state_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for state in self.entries.iter().filter_map(|e| e.tcp_state) {
            *counts.entry(state).or_insert(0) += 1;
        }
        counts
    }

    /// The report's `detail` for socket `inode`, or `None` when it is not in the table.
    ///
    /// TCP/UDP: `tcp 127.0.0.1:8080` for a listening or unconnected socket, else
    /// `LOCAL <- REMOTE` (accepted) or `LOCAL -> REMOTE` (connected). With
    /// `Direction::Unknown` the socket is taken as accepted when a listening TCP socket (for
    /// UDP: an unconnected UDP socket) of this namespace has its local port, else connected.
    ///
    /// Unix: `unix socketpair` when the caller says so or the peer is unnamed (only a
    /// socketpair connects two unnamed sockets); else `unix PATH` when bound (or accepted
    /// from a listener bound to PATH); `unix -> PATH` when connected to a socket bound to
    /// PATH; `unix (unnamed)` otherwise.
    pub fn render(&self, inode: u64, direction: Direction) -> Option<String> {
        let info = self.get(inode)?;
        if info.protocol == SocketProtocol::Unix {
            return Some(self.render_unix(info, direction));
        }
        let proto = info.protocol.as_str();
        let local = &info.local;
        let Some(remote) = info.remote.as_ref().filter(|_| !info.listening) else {
            return Some(format!("{proto} {local}"));
        };
        let accepted = match direction {
            Direction::Accepted => true,
            Direction::Connected => false,
            Direction::Unknown | Direction::SocketPair => {
                let port = info.local_addr.map(|a| a.port());
                let servers = if info.protocol.is_tcp() {
                    &self.tcp_listen_ports
                } else {
                    &self.udp_unconnected_ports
                };
                port.is_some_and(|p| servers.contains(&p))
            }
        };
        let arrow = if accepted { "<-" } else { "->" };
        Some(format!("{proto} {local} {arrow} {remote}"))
    }

    fn render_unix(&self, info: &SocketInfo, direction: Direction) -> String {
        if direction == Direction::SocketPair {
            return "unix socketpair".to_string();
        }
        if let Some(path) = &info.unix_path {
            return format!("unix {path}");
        }
        match info.unix_peer.and_then(|p| self.get(p)) {
            Some(peer) if peer.protocol == SocketProtocol::Unix => match &peer.unix_path {
                Some(path) => format!("unix -> {path}"),
                None => "unix socketpair".to_string(),
            },
            _ => "unix (unnamed)".to_string(),
        }
    }
}

/// Parses `0100007F:1F90` (IPv4) or 32 hex digits + `:PORT` (IPv6). The kernel prints each
/// 32-bit word of the address as a number in host byte order, so the bytes are the word's
/// native-endian bytes.
fn parse_inet_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// One line of `/proc/net/{tcp,tcp6,udp,udp6}`:
/// `sl local rem st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...`.
fn parse_inet_line(protocol: SocketProtocol, line: &[u8]) -> Option<SocketInfo> {
    let line = std::str::from_utf8(line).ok()?;
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    if fields.len() < 10 || !fields[0].ends_with(':') {
        return None; // header or junk
    }
    let local_addr = parse_inet_addr(fields[1])?;
    let remote_addr = parse_inet_addr(fields[2])?;
    let state = u8::from_str_radix(fields[3], 16).ok()?;
    let inode = fields[9].parse().ok()?;
    let tcp = protocol.is_tcp();
    let remote_addr = Some(remote_addr).filter(|r| !(r.ip().is_unspecified() && r.port() == 0));
    Some(SocketInfo {
        protocol,
        local: local_addr.to_string(),
        remote: remote_addr.map(|r| r.to_string()),
        tcp_state: if tcp { tcp_state::name(state) } else { None },
        unix_path: None,
        listening: tcp && state == tcp_state::LISTEN,
        inode,
        local_addr: Some(local_addr),
        remote_addr,
        unix_peer: None,
    })
}

/// One line of `/proc/net/unix`: `Num: RefCount Protocol Flags Type St Inode [Path]`. The path
/// is the rest of the line after one space, so it keeps its own spaces; non-UTF-8 bytes are
/// replaced (`from_utf8_lossy`) so the JSON report stays valid.
fn parse_unix_line(line: &[u8]) -> Option<SocketInfo> {
    // Split off the first 7 whitespace-separated fields, remembering where the 7th ends.
    let mut fields: Vec<&[u8]> = Vec::with_capacity(7);
    let mut pos = 0;
    while fields.len() < 7 {
        while pos < line.len() && line[pos] == b' ' {
            pos += 1;
        }
        let start = pos;
        while pos < line.len() && line[pos] != b' ' {
            pos += 1;
        }
        if start == pos {
            return None;
        }
        fields.push(&line[start..pos]);
    }
    if !fields[0].ends_with(b":") {
        return None; // header
    }
    let text = |f: &[u8]| std::str::from_utf8(f).ok().map(str::to_owned);
    let flags = u32::from_str_radix(&text(fields[3])?, 16).ok()?;
    let inode = text(fields[6])?.parse().ok()?;
    let path = line
        .get(pos + 1..)
        .filter(|p| !p.is_empty() && line[pos] == b' ')
        .map(|p| String::from_utf8_lossy(p).into_owned());
    Some(SocketInfo {
        protocol: SocketProtocol::Unix,
        local: path.clone().unwrap_or_default(),
        remote: None,
        tcp_state: None,
        unix_path: path,
        listening: flags & UNIX_ACCEPTCON != 0,
        inode,
        local_addr: None,
        remote_addr: None,
        unix_peer: None,
    })
}

/// Asks the kernel (NETLINK_SOCK_DIAG, `UDIAG_SHOW_PEER`) for the peer of every unix socket
/// of our network namespace; `/proc/net/unix` does not show peers. Needs no privilege.
mod unix_diag {
    use std::{
        collections::HashMap,
        io,
        os::fd::{AsRawFd, FromRawFd, OwnedFd},
    };

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLMSG_HDR_LEN: usize = 16;
    const UDIAG_SHOW_PEER: u32 = 0x04;
    const UNIX_DIAG_PEER: u16 = 2;
    /// `struct unix_diag_msg`: family, type, state, pad (u8 each), ino (u32), cookie (2×u32).
    const UNIX_DIAG_MSG_LEN: usize = 16;
    const SEQ: u32 = 0x7472_6163;

    fn check(rc: isize) -> io::Result<usize> {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as usize)
        }
    }

    fn u16_at(b: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
    }

    fn u32_at(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }

    const fn align4(n: usize) -> usize {
        (n + 3) & !3
    }

    /// The request: `struct nlmsghdr` then `struct unix_diag_req`.
    fn request() -> Vec<u8> {
        let mut req = Vec::with_capacity(40);
        req.extend_from_slice(&40u32.to_ne_bytes()); // nlmsg_len
        req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes()); // nlmsg_type
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        req.extend_from_slice(&flags.to_ne_bytes()); // nlmsg_flags
        req.extend_from_slice(&SEQ.to_ne_bytes()); // nlmsg_seq
        req.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
        req.push(libc::AF_UNIX as u8); // sdiag_family
        req.push(0); // sdiag_protocol
        req.extend_from_slice(&0u16.to_ne_bytes()); // pad
        req.extend_from_slice(&u32::MAX.to_ne_bytes()); // udiag_states: all
        req.extend_from_slice(&0u32.to_ne_bytes()); // udiag_ino
        req.extend_from_slice(&UDIAG_SHOW_PEER.to_ne_bytes()); // udiag_show
        req.extend_from_slice(&[0u8; 8]); // udiag_cookie
        req
    }

    /// Adds the peers found in one datagram of the reply; `Ok(true)` when the dump is done.
    fn parse_reply(buf: &[u8], peers: &mut HashMap<u64, u64>) -> io::Result<bool> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad sock_diag reply");
        let mut off = 0;
        while off + NLMSG_HDR_LEN <= buf.len() {
            let len = u32_at(buf, off).ok_or_else(bad)? as usize;
            let kind = u16_at(buf, off + 4).ok_or_else(bad)?;
            if len < NLMSG_HDR_LEN || off + len > buf.len() {
                return Err(bad());
            }
            let msg = &buf[off + NLMSG_HDR_LEN..off + len];
            match kind as i32 {
                libc::NLMSG_DONE => return Ok(true),
                libc::NLMSG_ERROR => {
                    let errno = u32_at(msg, 0).ok_or_else(bad)? as i32;
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                _ if kind == SOCK_DIAG_BY_FAMILY && msg.len() >= UNIX_DIAG_MSG_LEN => {
                    let inode = u32_at(msg, 4).ok_or_else(bad)?;
                    let mut at = UNIX_DIAG_MSG_LEN;
                    while at + 4 <= msg.len() {
                        let rta_len = u16_at(msg, at).ok_or_else(bad)? as usize;
                        let rta_type = u16_at(msg, at + 2).ok_or_else(bad)?;
                        if rta_len < 4 {
                            break;
                        }
                        if rta_type == UNIX_DIAG_PEER
                            && let Some(peer) = u32_at(msg, at + 4)
                        {
                            peers.insert(u64::from(inode), u64::from(peer));
                        }
                        at += align4(rta_len);
                    }
                }
                _ => {}
            }
            off += align4(len);
        }
        Ok(false)
    }

    /// Socket inode → peer socket inode, for every connected unix socket of our namespace.
    pub(super) fn peers() -> io::Result<HashMap<u64, u64>> {
        // SAFETY: plain syscall; the returned descriptor is owned by `sock` below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        let timeout = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: `timeout` lives across the call and its size is passed.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        // SAFETY: zeroed sockaddr_nl is valid (pid 0 = the kernel).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let req = request();
        // SAFETY: buffer and address are valid for the given lengths.
        check(unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&raw const kernel).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        })?;
        let mut peers = HashMap::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n = check(unsafe {
                libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
            })?;
            if n == 0 || parse_reply(&buf[..n], &mut peers)? {
                return Ok(peers);
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// A hand-built sock_diag reply yields the UNIX_DIAG_PEER attribute and stops at DONE.
        #[test]
        fn parses_reply_with_peer_and_done() {
            let mut buf = Vec::new();
            // nlmsghdr (16) + unix_diag_msg (16) + rtattr peer (8) = 40
            buf.extend_from_slice(&40u32.to_ne_bytes());
            buf.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
            buf.extend_from_slice(&[0u8; 10]);
            buf.extend_from_slice(&[1, 1, 3, 0]);
            buf.extend_from_slice(&1234u32.to_ne_bytes());
            buf.extend_from_slice(&[0u8; 8]);
            buf.extend_from_slice(&8u16.to_ne_bytes());
            buf.extend_from_slice(&UNIX_DIAG_PEER.to_ne_bytes());
            buf.extend_from_slice(&5678u32.to_ne_bytes());
            // NLMSG_DONE
            buf.extend_from_slice(&20u32.to_ne_bytes());
            buf.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
            buf.extend_from_slice(&[0u8; 14]);
            let mut peers = HashMap::new();
            assert!(parse_reply(&buf, &mut peers).unwrap());
            assert_eq!(peers, HashMap::from([(1234, 5678)]));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Descriptors
// ---------------------------------------------------------------------------------------------

/// What /proc says one open descriptor is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdTarget {
    pub fd: i32,
    pub kind: DescriptorKind,
    /// As the report contract wants it: see [`classify_link`] and [`SocketTable::render`].
    pub detail: String,
    /// A file unlinked while open.
    pub deleted: bool,
    /// TCP sockets found in the socket table.
    pub tcp_state: Option<String>,
    /// inode for sockets/pipes/anon where the link shows one
    pub inode: Option<u64>,
}

const DELETED_SUFFIX: &[u8] = b" (deleted)";

/// The N of `PREFIX[N]`.
fn bracketed_inode(rest: &[u8]) -> Option<u64> {
    let digits = rest.strip_prefix(b"[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Classifies the text of a `/proc/PID/fd/N` link: returns `(kind, detail, deleted, inode)`.
///
/// - `socket:[N]` → Socket, detail `socket:[N]` (what it stays when the socket table does not
///   know N; [`describe_fd`] replaces it from the table), inode N.
/// - `pipe:[N]` → Pipe, detail `pipe:[N]`, inode N.
/// - `anon_inode:[eventfd]`, `[eventpoll]`, `[timerfd]`, `[signalfd]`, `[pidfd]`,
///   `anon_inode:inotify` → Eventfd, Epoll, Timerfd, Signalfd, Pidfd, Inotify; other
///   `anon_inode:` → Other; detail the link text.
/// - `/memfd:NAME (deleted)` → Memfd, detail `memfd:NAME`, not deleted.
/// - Any other `/...` → File, detail the path; a trailing ` (deleted)` (which the kernel adds
///   to unlinked files) is stripped and `deleted` set. A file really named `x (deleted)` looks
///   the same here; [`describe_fd`] tells the two apart.
/// - Anything else (`net:[N]`, `mnt:[N]`, ...) → Other, detail the link text, inode N when
///   it has the `[N]` form.
///
/// Non-UTF-8 bytes in paths become `\xNN` escapes ([`escape_bytes`]): nothing is lost in JSON.
pub fn classify_link(link: &OsStr) -> (DescriptorKind, String, bool, Option<u64>) {
    use DescriptorKind as K;
    let bytes = link.as_bytes();
    let text = || escape_bytes(bytes);

    if let Some(rest) = bytes.strip_prefix(b"socket:") {
        return (K::Socket, text(), false, bracketed_inode(rest));
    }
    if let Some(rest) = bytes.strip_prefix(b"pipe:") {
        return (K::Pipe, text(), false, bracketed_inode(rest));
    }
    if let Some(rest) = bytes.strip_prefix(b"anon_inode:") {
        let kind = match rest {
            b"[eventfd]" => K::Eventfd,
            b"[eventpoll]" => K::Epoll,
            b"[timerfd]" => K::Timerfd,
            b"[signalfd]" => K::Signalfd,
            b"[pidfd]" => K::Pidfd,
            b"inotify" => K::Inotify,
            _ => K::Other,
        };
        return (kind, text(), false, None);
    }
    if bytes.starts_with(b"/") {
        if let Some(name) = bytes
            .strip_prefix(b"/memfd:")
            .and_then(|n| n.strip_suffix(DELETED_SUFFIX))
        {
            let detail = format!("memfd:{}", escape_bytes(name));
            return (K::Memfd, detail, false, None);
        }
        return match bytes.strip_suffix(DELETED_SUFFIX) {
            Some(path) => (K::File, escape_bytes(path), true, None),
            None => (K::File, text(), false, None),
        };
    }
    // `net:[4026531840]`, `mnt:[...]`, `pidfd:[...]` on kernels that name pidfs so, ...
    let inode = bytes
        .iter()
        .position(|&b| b == b'[')
        .and_then(|i| bracketed_inode(&bytes[i..]));
    (K::Other, text(), false, inode)
}

/// Whether the file behind `pid`'s descriptor `fd` is still reachable at `link` (the full link
/// text, ` (deleted)` included) in the process's root: then its name really ends with
/// ` (deleted)` and it was not unlinked.
fn still_at_path(pid: u32, fd: i32, link: &OsStr) -> bool {
    let Ok(open) = fs::metadata(format!("/proc/{pid}/fd/{fd}")) else {
        return false;
    };
    let mut path = OsString::from(format!("/proc/{pid}/root")).into_vec();
    path.extend_from_slice(link.as_bytes());
    match fs::symlink_metadata(PathBuf::from(OsString::from_vec(path))) {
        Ok(named) => named.dev() == open.dev() && named.ino() == open.ino(),
        Err(_) => false,
    }
}

/// Describes one descriptor of `pid`: reads the `/proc/PID/fd/FD` link and classifies it;
/// sockets are looked up in `sockets` and rendered as `direction` says
/// ([`SocketTable::render`]). `NotFound` when the descriptor or the process is gone.
pub fn describe_fd(
    pid: u32,
    fd: i32,
    sockets: &SocketTable,
    direction: Direction,
) -> io::Result<FdTarget> {
    let link = fs::read_link(format!("/proc/{pid}/fd/{fd}"))?;
    let link = link.as_os_str();
    let (kind, mut detail, mut deleted, inode) = classify_link(link);
    let mut tcp_state = None;
    match kind {
        DescriptorKind::Socket => {
            if let Some(ino) = inode
                && let Some(rendered) = sockets.render(ino, direction)
            {
                detail = rendered;
                tcp_state = sockets.get(ino).and_then(|s| s.tcp_state).map(String::from);
            }
        }
        DescriptorKind::File if deleted && still_at_path(pid, fd, link) => {
            detail = escape_bytes(link.as_bytes());
            deleted = false;
        }
        _ => {}
    }
    Ok(FdTarget {
        fd,
        kind,
        detail,
        deleted,
        tcp_state,
        inode,
    })
}

/// Every open descriptor of `pid` as its link classifies it, without the socket lookups of
/// [`list_fds`]: cheap enough to repeat while tracing. `meanwhile` runs after every
/// [`LISTING_CHUNK`] entries (a million descriptors take about a second to list, and the
/// caller has events to read in between). Errors only if `/proc/PID/fd` cannot be read; a
/// descriptor closed while we list is skipped.
pub fn fd_listing(pid: u32, mut meanwhile: impl FnMut()) -> io::Result<Vec<ListedFd>> {
    let mut out = Vec::new();
    for (n, entry) in fs::read_dir(format!("/proc/{pid}/fd"))?.enumerate() {
        if n % LISTING_CHUNK == LISTING_CHUNK - 1 {
            meanwhile();
        }
        let entry = entry?;
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        match fs::read_link(entry.path()) {
            Ok(link) => {
                let (kind, detail, deleted, _) = classify_link(link.as_os_str());
                out.push(ListedFd {
                    fd,
                    kind,
                    detail,
                    deleted,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Entries [`fd_listing`] reads between two calls of its `meanwhile`.
pub const LISTING_CHUNK: usize = 4096;

/// All open descriptors of `pid`, sorted by fd, with sockets rendered as
/// `Direction::Unknown`. Errors only if `/proc/PID/fd` itself cannot be read (the process is
/// gone, or we may not look); a descriptor closed while we list is skipped.
pub fn list_fds(pid: u32, sockets: &SocketTable) -> io::Result<Vec<FdTarget>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Some(fd) = entry?
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        match describe_fd(pid, fd, sockets, Direction::Unknown) {
            Ok(target) => out.push(target),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_unstable_by_key(|t| t.fd);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io::{Read, Write},
        net::{TcpListener, TcpStream, UdpSocket},
        os::{
            fd::{AsRawFd, FromRawFd, OwnedFd},
            unix::net::{UnixListener, UnixStream},
        },
        process::{Command, Stdio},
    };

    fn classify(s: &str) -> (DescriptorKind, String, bool, Option<u64>) {
        classify_link(OsStr::new(s))
    }

    fn table(protocol: SocketProtocol, text: &str) -> SocketTable {
        let mut t = SocketTable::default();
        t.add_proc_file(protocol, text.as_bytes());
        t
    }

    /// A scratch directory unique to one test, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "procfs-test-{}-{tag}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn me() -> u32 {
        std::process::id()
    }

    fn fd_of(fds: &[FdTarget], fd: i32) -> &FdTarget {
        fds.iter()
            .find(|t| t.fd == fd)
            .unwrap_or_else(|| panic!("fd {fd} not listed in {fds:#?}"))
    }

    // --- pure: classify_link ---

    /// Sockets and pipes keep their link text and yield the inode.
    #[test]
    fn classifies_socket_and_pipe() {
        assert_eq!(
            classify("socket:[12345]"),
            (
                DescriptorKind::Socket,
                "socket:[12345]".into(),
                false,
                Some(12345)
            )
        );
        assert_eq!(
            classify("pipe:[777]"),
            (DescriptorKind::Pipe, "pipe:[777]".into(), false, Some(777))
        );
    }

    /// Every anon_inode kind the contract names maps to its kind; unknown ones are Other.
    #[test]
    fn classifies_anon_inodes() {
        for (link, kind) in [
            ("anon_inode:[eventfd]", DescriptorKind::Eventfd),
            ("anon_inode:[eventpoll]", DescriptorKind::Epoll),
            ("anon_inode:[timerfd]", DescriptorKind::Timerfd),
            ("anon_inode:[signalfd]", DescriptorKind::Signalfd),
            ("anon_inode:[pidfd]", DescriptorKind::Pidfd),
            ("anon_inode:inotify", DescriptorKind::Inotify),
            ("anon_inode:[io_uring]", DescriptorKind::Other),
            ("anon_inode:bpf-map", DescriptorKind::Other),
            ("anon_inode:[fanotify]", DescriptorKind::Other),
        ] {
            assert_eq!(classify(link), (kind, link.into(), false, None), "{link}");
        }
    }

    /// A memfd is Memfd named `memfd:NAME` (spaces kept), never "deleted".
    #[test]
    fn classifies_memfd() {
        assert_eq!(
            classify("/memfd:my buffer (deleted)"),
            (DescriptorKind::Memfd, "memfd:my buffer".into(), false, None)
        );
        // Without the kernel's suffix it is an ordinary file that happens to be named so.
        assert_eq!(classify("/memfd:x").0, DescriptorKind::File);
    }

    /// Paths are File; the kernel's ` (deleted)` suffix is stripped once and sets deleted.
    #[test]
    fn classifies_files_and_deleted_files() {
        assert_eq!(
            classify("/var/log/app.log"),
            (DescriptorKind::File, "/var/log/app.log".into(), false, None)
        );
        assert_eq!(
            classify("/dev/pts/0"),
            (DescriptorKind::File, "/dev/pts/0".into(), false, None)
        );
        assert_eq!(
            classify("/tmp/scratch file (deleted)"),
            (DescriptorKind::File, "/tmp/scratch file".into(), true, None)
        );
        assert_eq!(
            classify("/tmp/a (deleted) (deleted)"),
            (DescriptorKind::File, "/tmp/a (deleted)".into(), true, None)
        );
    }

    /// Non-UTF-8 path bytes become `\xNN` escapes instead of failing or being lost.
    #[test]
    fn classifies_non_utf8_path_with_escapes() {
        let link = OsStr::from_bytes(b"/tmp/caf\xe9 (deleted)");
        assert_eq!(
            classify_link(link),
            (DescriptorKind::File, "/tmp/caf\\xe9".into(), true, None)
        );
    }

    /// Namespaces and other non-path links are Other with their text (and inode if shown).
    #[test]
    fn classifies_other_links() {
        assert_eq!(
            classify("net:[4026531840]"),
            (
                DescriptorKind::Other,
                "net:[4026531840]".into(),
                false,
                Some(4026531840)
            )
        );
        assert_eq!(classify("mnt:[4026531841]").0, DescriptorKind::Other);
        assert_eq!(
            classify("weird"),
            (DescriptorKind::Other, "weird".into(), false, None)
        );
    }

    // --- pure: /proc/net parsing and rendering ---

    const TCP_HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    /// A /proc/net/tcp LISTEN line on a little-endian host decodes to 127.0.0.1:8080 LISTEN.
    #[cfg(target_endian = "little")]
    #[test]
    fn parses_tcp_listen_line() {
        let t = table(
            SocketProtocol::Tcp,
            &format!(
                "{TCP_HEADER}   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0\n"
            ),
        );
        assert_eq!(t.len(), 1);
        let s = t.get(4242).unwrap();
        assert_eq!(s.protocol, SocketProtocol::Tcp);
        assert_eq!(s.local, "127.0.0.1:8080");
        assert_eq!(s.remote, None);
        assert_eq!(s.tcp_state, Some("LISTEN"));
        assert!(s.listening);
        assert_eq!(
            t.render(4242, Direction::Unknown).unwrap(),
            "tcp 127.0.0.1:8080"
        );
        assert_eq!(
            t.render(4242, Direction::Accepted).unwrap(),
            "tcp 127.0.0.1:8080"
        );
    }

    /// Established TCP lines render with `<-` or `->` as told, and Unknown guesses from the
    /// listening ports; TIME_WAIT lines (inode 0) are counted but not looked up.
    #[cfg(target_endian = "little")]
    #[test]
    fn renders_tcp_directions() {
        let t = table(
            SocketProtocol::Tcp,
            &format!(
                "{TCP_HEADER}\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 100 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C822 01 00000000:00000000 00:00000000 00000000  1000        0 101 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:C822 0100007F:1F90 08 00000000:00000000 00:00000000 00000000  1000        0 102 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:C823 0100007F:1F90 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
"
            ),
        );
        // 0xC822 = 51234
        assert_eq!(
            t.render(101, Direction::Unknown).unwrap(),
            "tcp 127.0.0.1:8080 <- 127.0.0.1:51234"
        );
        assert_eq!(
            t.render(102, Direction::Unknown).unwrap(),
            "tcp 127.0.0.1:51234 -> 127.0.0.1:8080"
        );
        assert_eq!(
            t.render(101, Direction::Connected).unwrap(),
            "tcp 127.0.0.1:8080 -> 127.0.0.1:51234"
        );
        assert_eq!(
            t.render(102, Direction::Accepted).unwrap(),
            "tcp 127.0.0.1:51234 <- 127.0.0.1:8080"
        );
        assert_eq!(t.get(102).unwrap().tcp_state, Some("CLOSE_WAIT"));
        assert!(t.get(0).is_none());
        assert_eq!(t.render(999, Direction::Unknown), None);
        let counts = t.tcp_state_counts();
        assert_eq!(counts.get("TIME_WAIT"), Some(&1));
        assert_eq!(counts.get("LISTEN"), Some(&1));
    }

    /// A /proc/net/tcp6 line decodes host-order words: ::1 and IPv4-mapped addresses.
    #[cfg(target_endian = "little")]
    #[test]
    fn parses_tcp6_lines() {
        let t = table(
            SocketProtocol::Tcp6,
            "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 200 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 201 1 0000000000000000 20 4 30 10 -1
   2: B80D0120000000000000000001000000:0050 B80D0120000000000000000002000000:A000 01 00000000:00000000 00:00000000 00000000  1000        0 202 1 0000000000000000 20 4 30 10 -1
",
        );
        assert_eq!(
            t.render(200, Direction::Unknown).unwrap(),
            "tcp6 [::1]:8080"
        );
        assert_eq!(
            t.render(201, Direction::Unknown).unwrap(),
            "tcp6 [::ffff:127.0.0.1]:8080 <- [::ffff:127.0.0.1]:54321"
        );
        assert_eq!(
            t.render(202, Direction::Connected).unwrap(),
            "tcp6 [2001:db8::1]:80 -> [2001:db8::2]:40960"
        );
        assert_eq!(t.get(202).unwrap().tcp_state, Some("ESTABLISHED"));
    }

    /// UDP: unconnected sockets have no arrow and no TCP state; connected ones do.
    #[cfg(target_endian = "little")]
    #[test]
    fn parses_udp_lines() {
        let t = table(
            SocketProtocol::Udp,
            "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 300 2 0000000000000000 0
  101: 0100007F:E000 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 301 2 0000000000000000 0
",
        );
        assert_eq!(t.render(300, Direction::Unknown).unwrap(), "udp 0.0.0.0:53");
        assert_eq!(t.get(300).unwrap().tcp_state, None);
        assert_eq!(
            t.render(301, Direction::Unknown).unwrap(),
            "udp 127.0.0.1:57344 -> 127.0.0.1:53"
        );
    }

    /// /proc/net/unix lines: bound paths with spaces, abstract names, listening flag, unnamed.
    #[test]
    fn parses_unix_lines() {
        let mut t = table(
            SocketProtocol::Unix,
            "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 20001 /run/my app.sock
0000000000000000: 00000003 00000000 00000000 0001 03 20002 /run/my app.sock
0000000000000000: 00000003 00000000 00000000 0001 03 20003
0000000000000000: 00000002 00000000 00000000 0002 01 20004 @/tmp/.X11-unix/X0
0000000000000000: 00000003 00000000 00000000 0001 03  1608
0000000000000000: 00000003 00000000 00000000 0001 03  1607
0000000000000000: 00000003 00000000 00000000 0001 03  1606
",
        );
        let listener = t.get(20001).unwrap();
        assert!(listener.listening);
        assert_eq!(listener.unix_path.as_deref(), Some("/run/my app.sock"));
        assert!(!t.get(20002).unwrap().listening);
        assert_eq!(
            t.render(20001, Direction::Unknown).unwrap(),
            "unix /run/my app.sock"
        );
        assert_eq!(
            t.render(20004, Direction::Unknown).unwrap(),
            "unix @/tmp/.X11-unix/X0"
        );
        // Without peer information an unnamed socket is just unnamed...
        assert_eq!(
            t.render(20003, Direction::Unknown).unwrap(),
            "unix (unnamed)"
        );
        // ...unless the caller knows it came from socketpair().
        assert_eq!(
            t.render(20003, Direction::SocketPair).unwrap(),
            "unix socketpair"
        );
        // With peers: client of a named server, and two unnamed ends of a pair.
        t.set_unix_peers(&HashMap::from([
            (20003, 20002),
            (20002, 20003),
            (1608, 1607),
            (1607, 1608),
        ]));
        assert_eq!(
            t.render(20003, Direction::Unknown).unwrap(),
            "unix -> /run/my app.sock"
        );
        assert_eq!(
            t.render(20002, Direction::Unknown).unwrap(),
            "unix /run/my app.sock"
        );
        assert_eq!(
            t.render(1608, Direction::Unknown).unwrap(),
            "unix socketpair"
        );
        assert_eq!(
            t.render(1606, Direction::Unknown).unwrap(),
            "unix (unnamed)"
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

    // --- pure: /proc/PID/stat, cmdline, status ---

    /// A comm with spaces and ')' is cut at the last ')'; ppid and starttime are found after it.
    #[test]
    fn parses_stat_with_tricky_comm() {
        let line = b"4321 (my (evil) prog) S 1 4321 4321 0 -1 4194560 106 0 0 0 0 0 0 0 20 0 1 0 987654 12345678 300 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 3 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(line).unwrap(),
            StatFields {
                pid: 4321,
                comm: "my (evil) prog".into(),
                state: 'S',
                ppid: 1,
                start_time: 987654,
            }
        );
        let zombie = b"77 ( ) ) Z 12 77 77 0 -1 4227084 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let z = parse_stat(zombie).unwrap();
        assert_eq!(
            (z.comm.as_str(), z.state, z.ppid, z.start_time),
            (" ) ", 'Z', 12, 55)
        );
        assert!(parse_stat(b"12 (truncated) S 1").is_err());
        assert!(parse_stat(b"garbage").is_err());
    }

    /// cmdline splits on NUL and drops the terminator; empty means no arguments.
    #[test]
    fn parses_cmdline_and_status() {
        assert_eq!(
            parse_cmdline(b"./server\0--port\08080\0"),
            ["./server", "--port", "8080"]
        );
        assert_eq!(parse_cmdline(b"a\0\0b\0"), ["a", "", "b"]);
        assert!(parse_cmdline(b"").is_empty());
        assert_eq!(
            parse_status_tgid(b"Name:\tx\nUmask:\t0022\nState:\tS\nTgid:\t 4321\nNgid:\t0\n"),
            Some(4321)
        );
    }

    /// The tree walk is breadth first, sorted among siblings, and excludes the root.
    #[test]
    fn walks_tree_breadth_first() {
        let mut children = HashMap::from([
            (1, vec![10, 5]),
            (5, vec![7]),
            (10, vec![11]),
            (7, vec![1]), // a pid-reuse cycle must not loop
        ]);
        assert_eq!(tree_below(1, &mut children), [5, 10, 7, 11]);
    }

    // --- live, on this test process ---

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

    /// A pipe's two ends are Pipe with detail `pipe:[INODE]` and the same inode.
    #[test]
    fn live_pipe() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: pipe2 just returned these descriptors; we own them.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let list = list_fds(me(), &SocketTable::default()).unwrap();
        let (a, b) = (fd_of(&list, r.as_raw_fd()), fd_of(&list, w.as_raw_fd()));
        assert_eq!(a.kind, DescriptorKind::Pipe);
        assert_eq!(b.kind, DescriptorKind::Pipe);
        assert_eq!(a.inode, b.inode);
        assert_eq!(a.detail, format!("pipe:[{}]", a.inode.unwrap()));
    }

    /// A file unlinked while open is deleted=true with its original path; a file really
    /// named `... (deleted)` is not.
    #[test]
    fn live_deleted_files() {
        let dir = TempDir::new("deleted");
        let path = dir.0.join("leaky.log");
        let mut f = fs::File::create(&path).unwrap();
        f.write_all(b"x").unwrap();
        let sockets = SocketTable::default();
        let before = describe_fd(me(), f.as_raw_fd(), &sockets, Direction::Unknown).unwrap();
        assert_eq!(
            (before.kind, before.detail.as_str(), before.deleted),
            (DescriptorKind::File, path.to_str().unwrap(), false)
        );
        fs::remove_file(&path).unwrap();
        let after = describe_fd(me(), f.as_raw_fd(), &sockets, Direction::Unknown).unwrap();
        assert_eq!(after.detail, path.to_str().unwrap());
        assert!(after.deleted);

        let odd = dir.0.join("odd (deleted)");
        let g = fs::File::create(&odd).unwrap();
        let t = describe_fd(me(), g.as_raw_fd(), &sockets, Direction::Unknown).unwrap();
        assert_eq!(
            (t.detail.as_str(), t.deleted),
            (odd.to_str().unwrap(), false)
        );
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

    /// eventfd, epoll, timerfd, memfd and pidfd are classified from the live links.
    #[test]
    fn live_anon_inodes_and_memfd() {
        // SAFETY: each call returns a new descriptor (checked) that OwnedFd then owns.
        let own = |fd: i32| {
            assert!(fd >= 0, "{}", io::Error::last_os_error());
            unsafe { OwnedFd::from_raw_fd(fd) }
        };
        // SAFETY: plain syscalls with valid arguments.
        let (ev, ep, tf, mf, pf) = unsafe {
            (
                own(libc::eventfd(0, libc::EFD_CLOEXEC)),
                own(libc::epoll_create1(libc::EPOLL_CLOEXEC)),
                own(libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_CLOEXEC,
                )),
                own(libc::memfd_create(c"leak buf".as_ptr(), libc::MFD_CLOEXEC)),
                own(libc::syscall(libc::SYS_pidfd_open, me(), 0) as i32),
            )
        };
        let s = SocketTable::default();
        let d = |fd: &OwnedFd| describe_fd(me(), fd.as_raw_fd(), &s, Direction::Unknown).unwrap();
        assert_eq!(d(&ev).kind, DescriptorKind::Eventfd);
        assert_eq!(d(&ep).kind, DescriptorKind::Epoll);
        assert_eq!(d(&tf).kind, DescriptorKind::Timerfd);
        let m = d(&mf);
        assert_eq!(
            (m.kind, m.detail.as_str(), m.deleted),
            (DescriptorKind::Memfd, "memfd:leak buf", false)
        );
        assert_eq!(d(&pf).kind, DescriptorKind::Pidfd);
    }

    /// Asking about a closed descriptor or a missing process is NotFound.
    #[test]
    fn live_missing_fd_and_process() {
        let s = SocketTable::default();
        let err = describe_fd(me(), 1 << 30, &s, Direction::Unknown).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        // pid_max is at most 2^22, so this pid cannot exist.
        let gone = (1 << 22) + 1;
        assert!(!process_exists(gone));
        assert!(process_info(gone).is_err());
        assert!(list_fds(gone, &s).is_err());
        assert!(SocketTable::load(gone).is_empty());
        assert!(descendants(gone).is_empty());
        assert!(!process_exists(0));
    }

    /// process_info on ourselves gives our pid, ppid, tgid, comm and argv.
    #[test]
    fn live_process_info_self() {
        let info = process_info(me()).unwrap();
        assert_eq!(info.pid, me());
        assert_eq!(info.tgid, me());
        // SAFETY: getppid has no preconditions.
        assert_eq!(info.ppid, unsafe { libc::getppid() } as u32);
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().as_bytes();
        let comm = &name[..name.len().min(15)];
        assert_eq!(info.comm.as_bytes(), comm);
        assert_eq!(info.cmdline.first(), std::env::args().next().as_ref());
        assert!(info.start_time > 0);
        assert!(!info.zombie);
        assert!(process_exists(me()));
        assert!(threads(me()).contains(&me()));
    }

    /// A spawned child is a descendant with us as ppid; once killed and reaped it is gone, and
    /// while unreaped it is a zombie.
    #[test]
    fn live_descendants_and_zombie() {
        let mut child = Command::new("sleep")
            .arg("5")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        // spawn() can return before /proc shows the exec'd program's command line.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while process_info(pid).is_ok_and(|i| i.cmdline.is_empty())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let result = std::panic::catch_unwind(|| {
            assert!(descendants(me()).contains(&pid));
            let info = process_info(pid).unwrap();
            assert_eq!(info.ppid, me());
            assert_eq!(info.cmdline, ["sleep", "5"]);
            assert!(!descendants(pid).contains(&pid));
        });
        child.kill().unwrap();
        // waitid(WNOWAIT) waits for the exit without reaping: the child is now a zombie.
        // SAFETY: `si` is valid for writes; P_PID with a child of ours.
        let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::waitid(libc::P_PID, pid, &mut si, libc::WEXITED | libc::WNOWAIT) };
        assert_eq!(rc, 0);
        assert!(process_info(pid).unwrap().zombie);
        assert!(descendants(me()).contains(&pid));
        child.wait().unwrap();
        assert!(!process_exists(pid));
        result.unwrap();
    }
}
