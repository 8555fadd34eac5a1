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
//!
//! `process` reads processes and their tree, `sockets` the socket tables of a network namespace
//! (with the unix peers from `unix_diag`), `fds` a process's descriptors; their items are
//! re-exported here, so callers write `procfs::describe_fd`.

mod access;
mod cgroups;
mod fds;
mod host;
mod limits;
mod process;
mod resources;
mod sockets;
#[cfg(test)]
mod test_support;
mod unix_diag;

pub(crate) use access::{check_fds_readable, hidden as fds_hidden};
pub(crate) use cgroups::{
    cgroup_dir, cgroup_procs, cgroup_root, cgroup_tree, container_cgroup, container_id, nspid,
    process_cgroup,
};
pub(crate) use fds::{FdTarget, describe_fd, fd_is_cloexec, fd_listing, fd_metadata, list_fds};
pub(crate) use host::{
    TCP_CLOSE_WAIT, all_stats, file_nr, open_fd_count, socket_inodes, tcp_states, time_wait_count,
};
pub(crate) use limits::{file_handles, nofile_limit};
pub(crate) use process::{
    all_pids, cwd, descendants, process_exists, process_info, start_time, threads,
};
pub(crate) use resources::own_resident_bytes;
pub(crate) use sockets::{Direction, SocketTable};
