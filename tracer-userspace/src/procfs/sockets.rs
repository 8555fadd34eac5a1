//! The sockets of a network namespace, from `/proc/PID/net/{tcp,tcp6,udp,udp6,unix}`
//! ([`SocketTable`]), and how a socket is rendered in the report ([`SocketTable::render`]).
//! Unix sockets' peers, which those files do not show, come from [`super::unix_diag`].

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use tracer_common::abi::tcp_state;

use super::unix_diag;

/// Where a TCP/UDP socket's peer is relative to us, when the caller knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
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
pub(crate) enum SocketProtocol {
    Tcp,
    Tcp6,
    Udp,
    Udp6,
    Unix,
}

impl SocketProtocol {
    /// The name used in details and as the `/proc/net` file name: `tcp`, `tcp6`, ...
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Tcp6 => "tcp6",
            Self::Udp => "udp",
            Self::Udp6 => "udp6",
            Self::Unix => "unix",
        }
    }

    pub(crate) const fn is_tcp(self) -> bool {
        matches!(self, Self::Tcp | Self::Tcp6)
    }

    pub(crate) const fn is_udp(self) -> bool {
        matches!(self, Self::Udp | Self::Udp6)
    }

    const ALL: [Self; 5] = [Self::Tcp, Self::Tcp6, Self::Udp, Self::Udp6, Self::Unix];
}

/// `__SO_ACCEPTCON` in the Flags column of `/proc/net/unix`: a listening socket.
const UNIX_ACCEPTCON: u32 = 1 << 16;

/// One socket of a network namespace, from one line of `/proc/PID/net/{tcp,tcp6,udp,udp6,unix}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SocketInfo {
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
pub(crate) struct SocketTable {
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
    pub(crate) fn load(pid: u32) -> SocketTable {
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
    pub(crate) fn add_proc_file(&mut self, protocol: SocketProtocol, contents: &[u8]) {
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
    pub(crate) fn insert(&mut self, info: SocketInfo) {
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
    pub(crate) fn set_unix_peers(&mut self, peers: &HashMap<u64, u64>) {
        for (inode, &idx) in &self.by_inode {
            let entry = &mut self.entries[idx];
            if entry.protocol == SocketProtocol::Unix {
                entry.unix_peer = peers.get(inode).copied().filter(|&p| p != 0);
            }
        }
    }

    pub(crate) fn get(&self, inode: u64) -> Option<&SocketInfo> {
        self.by_inode.get(&inode).map(|&i| &self.entries[i])
    }

    /// Every entry, including those no descriptor holds (inode 0: TIME_WAIT, NEW_SYN_RECV).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &SocketInfo> {
        self.entries.iter()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many TCP sockets of the namespace are in each state (all of them, held by a
    /// descriptor or not: TIME_WAIT sockets belong to no descriptor).
    #[cfg(test)]
    pub(crate) fn tcp_state_counts(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut counts = std::collections::BTreeMap::new();
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
    pub(crate) fn render(&self, inode: u64, direction: Direction) -> Option<String> {
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

#[cfg(test)]
mod tests;
