//! The report's window on the live system: descriptors re-read from /proc as they are now,
//! stacks symbolized from what was captured while their processes lived.

use std::{
    collections::{HashMap, HashSet},
    io,
    os::unix::fs::MetadataExt,
};

use tracer_common::{Syscall, abi::tcp_state};

use crate::{
    model::{Frame, StackRef},
    procfs::{self, Direction, SocketTable},
    report::{DescriptorEntry, HeldFile, OpenedBy, Placement, Resolver},
    stacks::StackStore,
    tcp::TcpTracker,
};

/// The report's view of the live system: stacks repaired and symbolized from what was
/// captured while processes lived; descriptors re-read from /proc.
pub(super) struct LiveResolver<'a> {
    tcp: &'a TcpTracker,
    now_ns: u64,
    stacks: &'a mut StackStore,
    sockets: HashMap<u32, SocketTable>,
}

impl<'a> LiveResolver<'a> {
    pub(super) fn new(tcp: &'a TcpTracker, now_ns: u64, stacks: &'a mut StackStore) -> Self {
        Self {
            tcp,
            now_ns,
            stacks,
            sockets: HashMap::new(),
        }
    }
}

impl Resolver for LiveResolver<'_> {
    fn frames(&mut self, stack: StackRef) -> Vec<Frame> {
        self.stacks.frames(stack)
    }

    fn refresh(&mut self, pid: u32, descriptors: &mut [DescriptorEntry]) -> Vec<i32> {
        // If the process itself is gone, /proc tells nothing about its descriptors.
        if std::fs::read_dir(format!("/proc/{pid}/fd")).is_err() {
            return Vec::new();
        }
        let sockets = self
            .sockets
            .entry(pid)
            .or_insert_with(|| SocketTable::load(pid));
        let mut closed = Vec::new();
        for d in descriptors.iter_mut() {
            let direction = match d.opened_by {
                OpenedBy::Syscall(Syscall::Accept | Syscall::Accept4) => Direction::Accepted,
                OpenedBy::Syscall(Syscall::Socket) => Direction::Connected,
                OpenedBy::Syscall(Syscall::Socketpair) => Direction::SocketPair,
                _ => Direction::Unknown,
            };
            match procfs::describe_fd(pid, d.fd, sockets, direction) {
                Ok(now) => {
                    d.tcp_state_age_s = tcp_state_age(self.tcp, sockets, &now, self.now_ns);
                    d.kind = now.kind;
                    d.detail = now.detail;
                    d.tcp_state = now.tcp_state;
                    d.deleted = now.deleted;
                    d.held_file = now.deleted.then(|| held_file(pid, d.fd)).flatten();
                    d.size_bytes = d.held_file.map(|f| f.size);
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => closed.push(d.fd),
                Err(err) => log::debug!("cannot describe fd {} of pid {pid}: {err}", d.fd),
            }
        }
        closed
    }

    fn placement(&mut self, pid: u32) -> Placement {
        placement(pid)
    }

    fn is_zombie(&mut self, pid: u32, ppid: u32) -> bool {
        // The parent check keeps a reused pid from passing for our child.
        procfs::process_info(pid).is_ok_and(|info| info.zombie && info.ppid == ppid)
    }
}

/// A live process's pid in its own PID namespace, its cgroup (unless the root) and the
/// container that names.
pub(super) fn placement(pid: u32) -> Placement {
    let cgroup = procfs::process_cgroup(pid).ok().filter(|c| c != "/");
    Placement {
        nspid: procfs::nspid(pid),
        container: cgroup.as_deref().and_then(procfs::container_id),
        cgroup,
    }
}

/// The file open as `fd` in `pid`, as stat(2) of the open file shows it.
fn held_file(pid: u32, fd: i32) -> Option<HeldFile> {
    let meta = procfs::fd_metadata(pid, fd).ok()?;
    Some(HeldFile {
        dev: meta.dev(),
        inode: meta.ino(),
        size: meta.size(),
        allocated: meta.blocks() * 512,
    })
}

/// How long a TCP socket has been in the state /proc shows, when the tracker saw it get there.
fn tcp_state_age(
    tcp: &TcpTracker,
    sockets: &SocketTable,
    described: &procfs::FdTarget,
    now_ns: u64,
) -> Option<f64> {
    let socket = sockets.get(described.inode?)?;
    let (state, since_ns) = tcp.state_since(socket.local_addr?, socket.remote_addr?)?;
    (tcp_state::name(state) == described.tcp_state.as_deref())
        .then(|| (now_ns.saturating_sub(since_ns) as f64 / 1e6).round() / 1e3)
}

/// How many of the connections the followed processes left in TIME_WAIT are still in it,
/// per /proc/net/tcp of the target's network namespace (TIME_WAIT has no descriptor).
pub(super) fn still_in_time_wait(tcp: &TcpTracker, targets: &[u32]) -> u64 {
    // A connection closed while waiting for the peer's FIN is already a timewait socket, but
    // /proc shows its substate, FIN_WAIT2, until that FIN arrives; it holds its port the same.
    // Targets may sit in different network namespaces (containers): each one's table counts.
    let in_time_wait: HashSet<_> = targets
        .iter()
        .flat_map(|&target| {
            SocketTable::load(target)
                .iter()
                .filter(|s| matches!(s.tcp_state, Some("TIME_WAIT" | "FIN_WAIT2")))
                .filter_map(|s| Some((s.local_addr?, s.remote_addr?)))
                .collect::<Vec<_>>()
        })
        .collect();
    // A reused address pair is one connection in /proc: count distinct pairs.
    let left: HashSet<_> = tcp.time_wait_pairs().collect();
    left.intersection(&in_time_wait).count() as u64
}
