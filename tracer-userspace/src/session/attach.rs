//! Following the target tree as it stands when the probes are attached, and reading from
//! /proc what each process already holds: the tables start from that snapshot.

use std::{
    io,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, Result};

use super::pipeline::State;
use crate::{
    aggregator::{ProcessSnapshot, SnapshotFd},
    capture::Probes,
    procfs::{self, SocketTable},
};

/// The processes followed at attach time, target first, and what /proc showed of them.
pub(super) struct Tree {
    pub(super) followed: Vec<u32>,
    snapshots: Vec<ProcessSnapshot>,
    /// `(pid, port)` of the TCP ports the trees listen on already.
    listening: Vec<(u32, u16)>,
}

/// Follows the targets and their current descendants and reads their tables. Sockets
/// accepted on ports the trees already listen on are tracked from their handshake.
pub(super) fn follow_tree(probes: &Probes, targets: &[u32]) -> Result<Tree> {
    let mut followed = Vec::new();
    for &target in targets {
        for pid in std::iter::once(target).chain(procfs::descendants(target)) {
            if !followed.contains(&pid) {
                followed.push(pid);
            }
        }
    }
    for &pid in &followed {
        probes
            .follow(pid)
            .with_context(|| format!("cannot follow pid {pid}"))?;
    }
    let mut snapshots = Vec::with_capacity(followed.len());
    let mut listening_ports = Vec::new();
    for (process, listening) in followed.iter().filter_map(|&pid| snapshot(pid)) {
        for port in listening {
            probes
                .listening(port, process.pid)
                .with_context(|| format!("cannot track TCP port {port}"))?;
            listening_ports.push((process.pid, port));
        }
        snapshots.push(process);
    }
    Ok(Tree {
        followed,
        snapshots,
        listening: listening_ports,
    })
}

impl Tree {
    /// Starts the tables from the snapshots and captures each process's mappings.
    pub(super) fn seed(self, state: &mut State<'_>, started_ns: u64) {
        for process in self.snapshots {
            state.agg.add_snapshot(process, started_ns);
        }
        for (pid, port) in self.listening {
            state.tcp.listening(pid, port);
        }
        for &pid in &self.followed {
            state.stacks.capture(pid);
        }
        state.configure_python();
    }
}

/// Follows a process found after attach (at its exec, or in a watched cgroup) as a root:
/// reads its table as `--pid` does at attach. One the session follows already is left alone.
pub(super) fn adopt(state: &mut State<'_>, pid: u32, matched_by: String, now_ns: u64) {
    if state.agg.process(pid).is_some_and(|p| !p.exited()) {
        return;
    }
    if let Err(err) = state.probes.follow(pid) {
        log::warn!("cannot follow pid {pid}: {err}");
        return;
    }
    state.agg.retire_exited(pid);
    let Some((process, listening)) = snapshot(pid) else {
        return;
    };
    for port in listening {
        if let Err(err) = state.probes.listening(port, pid) {
            log::debug!("cannot track TCP port {port}: {err}");
        }
        state.tcp.listening(pid, port);
    }
    eprintln!(
        "tracer: following pid {pid} ({}) from now on: {matched_by}",
        process.comm
    );
    state.agg.add_snapshot(process, now_ns);
    state.stacks.capture(pid);
    state.roots.add(pid, matched_by, Some(now_ns));
}

/// Whether a process whose descriptors may not be read was told about already.
static HIDDEN_TOLD: AtomicBool = AtomicBool::new(false);

/// What /proc shows of a process right after it became followed, and the TCP ports it
/// listens on.
fn snapshot(pid: u32) -> Option<(ProcessSnapshot, Vec<u16>)> {
    let info = procfs::process_info(pid).ok()?;
    let sockets = SocketTable::load(pid);
    let fds = match procfs::list_fds(pid, &sockets) {
        Ok(fds) => fds,
        Err(err) => {
            if err.kind() == io::ErrorKind::PermissionDenied
                && !HIDDEN_TOLD.swap(true, Ordering::Relaxed)
            {
                eprintln!(
                    "tracer: warning: {}; the report lacks what it held before it was followed (said once, for the first such process)",
                    procfs::fds_hidden(pid)
                );
            }
            Vec::new()
        }
    };
    let threads = procfs::threads(pid).len().max(1) as u64;
    let listening = fds
        .iter()
        .filter_map(|fd| sockets.get(fd.inode?))
        .filter(|socket| socket.listening && socket.protocol.is_tcp())
        .filter_map(|socket| Some(socket.local_addr?.port()))
        .collect();
    let process = ProcessSnapshot {
        pid,
        ppid: info.ppid,
        comm: info.comm,
        zombie: info.zombie,
        cwd: procfs::cwd(pid),
        start_time: Some(info.start_time),
        threads,
        fds: fds
            .into_iter()
            .map(|target| SnapshotFd {
                cloexec: procfs::fd_is_cloexec(pid, target.fd),
                fd: target.fd,
                kind: target.kind,
                detail: target.detail,
                deleted: target.deleted,
                tcp_state: target.tcp_state,
            })
            .collect(),
    };
    Some((process, listening))
}
