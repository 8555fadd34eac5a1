//! One process's descriptors: what a `/proc/PID/fd/N` link is ([`classify_link`]), one
//! descriptor described for the report ([`describe_fd`]), all of them at attach time
//! ([`list_fds`]) or cheaply while tracing ([`fd_listing`]), and its close-on-exec flag
//! ([`fd_is_cloexec`]).

use std::{
    ffi::{OsStr, OsString},
    fs, io,
    os::unix::{
        ffi::{OsStrExt, OsStringExt},
        fs::MetadataExt,
    },
    path::PathBuf,
};

use tracer_common::abi::O_CLOEXEC;

use super::sockets::{Direction, SocketTable};
use crate::model::{DescriptorKind, ListedFd, escape_bytes};

/// What /proc says one open descriptor is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FdTarget {
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
pub(crate) fn classify_link(link: &OsStr) -> (DescriptorKind, String, bool, Option<u64>) {
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
pub(crate) fn describe_fd(
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

/// stat(2) of the file open as `fd` in `pid`: the link is followed to the open file itself,
/// so its size and blocks are those of a file unlinked while open too.
pub(crate) fn fd_metadata(pid: u32, fd: i32) -> io::Result<fs::Metadata> {
    fs::metadata(format!("/proc/{pid}/fd/{fd}"))
}

/// Every open descriptor of `pid` as its link classifies it, without the socket lookups of
/// [`list_fds`]: cheap enough to repeat while tracing. `meanwhile` runs after every
/// [`LISTING_CHUNK`] entries (a million descriptors take about a second to list, and the
/// caller has events to read in between). Errors only if `/proc/PID/fd` cannot be read; a
/// descriptor closed while we list is skipped.
pub(crate) fn fd_listing(pid: u32, mut meanwhile: impl FnMut()) -> io::Result<Vec<ListedFd>> {
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
pub(crate) const LISTING_CHUNK: usize = 4096;

/// All open descriptors of `pid`, sorted by fd, with sockets rendered as
/// `Direction::Unknown`. Errors only if `/proc/PID/fd` itself cannot be read (the process is
/// gone, or we may not look); a descriptor closed while we list is skipped.
pub(crate) fn list_fds(pid: u32, sockets: &SocketTable) -> io::Result<Vec<FdTarget>> {
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

/// Whether /proc/PID/fdinfo/FD shows O_CLOEXEC in its (octal) flags.
pub(crate) fn fd_is_cloexec(pid: u32, fd: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("flags:"))
                .and_then(|flags| u64::from_str_radix(flags.trim(), 8).ok())
        })
        .is_some_and(|flags| flags & O_CLOEXEC != 0)
}

#[cfg(test)]
mod tests;
