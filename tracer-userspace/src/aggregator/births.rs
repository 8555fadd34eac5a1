//! What a creating syscall tells about the descriptor it made: its kind, a description that
//! stands until /proc gives a better one (the report refreshes live descriptors), and whether
//! it closes on exec. Each syscall spells close-on-exec its own way; the values are from the
//! kernel's uapi headers and are the same on x86_64 and arm64.

use foldhash::HashMap;
use tracer_common::{
    ARG_UNKNOWN, Syscall,
    abi::{
        AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, AF_UNIX, AT_FDCWD, F_DUPFD_CLOEXEC, O_CLOEXEC,
    },
};

use super::Descriptor;
use crate::model::{DescriptorKind, escape_owned};

/// `MFD_CLOEXEC`, `FAN_CLOEXEC`.
const LOW_BIT_CLOEXEC: u64 = 1;
/// `PERF_FLAG_FD_CLOEXEC`.
const PERF_FLAG_FD_CLOEXEC: u64 = 8;
/// `MSG_CMSG_CLOEXEC`: recvmsg's flag for the descriptors it receives.
const MSG_CMSG_CLOEXEC: u64 = 0x4000_0000;

/// A new descriptor as its creating syscall describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Birth {
    pub kind: DescriptorKind,
    pub detail: String,
    pub cloexec: bool,
}

impl Birth {
    fn new(kind: DescriptorKind, detail: impl Into<String>, cloexec: bool) -> Self {
        Self {
            kind,
            detail: detail.into(),
            cloexec,
        }
    }
}

/// Whether `flags` (an argument that may be unknown) has `bit`.
fn has(flags: u64, bit: u64) -> bool {
    flags != ARG_UNKNOWN && flags & bit != 0
}

/// A descriptor from a path (open, openat, openat2, creat) or memfd_create's name. `cwd` is
/// the process's working directory as far as we know it; relative paths are resolved against
/// it or against the directory descriptor `dirfd` as it was at open time.
pub(super) fn from_path(
    syscall: Syscall,
    path: Option<Vec<u8>>,
    dirfd: i32,
    flags: u32,
    cwd: Option<&str>,
    table: &HashMap<i32, Descriptor>,
) -> Birth {
    let flags = u64::from(flags);
    if syscall == Syscall::MemfdCreate {
        let name = path.map(escape_owned).unwrap_or_default();
        return Birth::new(
            DescriptorKind::Memfd,
            format!("memfd:{name}"),
            has(flags, LOW_BIT_CLOEXEC),
        );
    }
    let detail = match path {
        Some(path) => resolve_path(path, dirfd, cwd, table),
        None => "(path unknown: opened as the tracer attached)".to_string(),
    };
    Birth::new(DescriptorKind::File, detail, has(flags, O_CLOEXEC))
}

/// A path as the report shows it: absolute when the directory it is relative to is known,
/// with bytes that are not UTF-8 kept as `\xNN` escapes so nothing is lost in JSON.
/// `.` components are dropped; `..` is kept, since only the filesystem knows what it means
/// after a symlink.
fn resolve_path(
    path: Vec<u8>,
    dirfd: i32,
    cwd: Option<&str>,
    table: &HashMap<i32, Descriptor>,
) -> String {
    // An absolute path is the description as it came (no copy: this runs for every open).
    let text = escape_owned(path);
    if text.starts_with('/') {
        return text;
    }
    let base = if dirfd == AT_FDCWD {
        cwd.map(str::to_string)
    } else {
        table
            .get(&dirfd)
            .filter(|d| d.kind == DescriptorKind::File && d.detail.starts_with('/'))
            .map(|d| d.detail.clone())
    };
    match base {
        Some(base) => join(&base, &text),
        None if dirfd == AT_FDCWD => format!("{text} (relative to the working directory)"),
        None => format!("{text} (relative to fd {dirfd})"),
    }
}

fn join(base: &str, relative: &str) -> String {
    let mut out = base.trim_end_matches('/').to_string();
    for part in relative.split('/').filter(|p| !p.is_empty() && *p != ".") {
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() { "/".into() } else { out }
}

/// A descriptor made without a path. `None` when the call made no new descriptor: dup2 of
/// an fd onto itself, signalfd updating the mask of an existing signalfd.
pub(super) fn without_path(
    syscall: Syscall,
    fd: i32,
    [arg0, arg1, arg2]: [u64; 3],
    table: &HashMap<i32, Descriptor>,
) -> Option<Birth> {
    use DescriptorKind as K;
    use Syscall as S;
    Some(match syscall {
        S::Socket => Birth::new(K::Socket, describe_socket(arg0, arg1), has(arg1, O_CLOEXEC)),
        S::Accept | S::Accept4 => {
            let listener = (arg0 != ARG_UNKNOWN)
                .then(|| table.get(&(arg0 as i32)))
                .flatten();
            let detail = listener
                .and_then(|l| l.detail.split_whitespace().next())
                .map(|protocol| format!("{protocol} (accepted)"))
                .unwrap_or_else(|| "socket (accepted)".to_string());
            let cloexec = syscall == S::Accept4 && has(arg1, O_CLOEXEC);
            Birth::new(K::Socket, detail, cloexec)
        }
        S::Pipe | S::Pipe2 => Birth::new(
            K::Pipe,
            format!("pipe (other end fd {arg0})"),
            syscall == S::Pipe2 && has(arg1, O_CLOEXEC),
        ),
        S::Socketpair => Birth::new(
            K::Socket,
            match describe_socket(arg2, arg1).as_str() {
                "unix" => "unix socketpair".to_string(),
                other => format!("{other} socketpair"),
            },
            has(arg1, O_CLOEXEC),
        ),
        S::Dup | S::Dup2 | S::Dup3 | S::Fcntl => {
            let old_fd = arg0 as i32;
            if arg0 != ARG_UNKNOWN && old_fd == fd {
                // dup2(fd, fd) changes nothing.
                return None;
            }
            let cloexec = match syscall {
                S::Dup3 => has(arg1, O_CLOEXEC),
                S::Fcntl => arg1 == F_DUPFD_CLOEXEC,
                _ => false,
            };
            match table.get(&old_fd) {
                Some(old) => Birth::new(old.kind, old.detail.clone(), cloexec),
                None => Birth::new(K::Other, format!("dup of fd {old_fd}"), cloexec),
            }
        }
        S::Eventfd => Birth::new(K::Eventfd, "eventfd", false),
        S::Eventfd2 => Birth::new(K::Eventfd, "eventfd", has(arg0, O_CLOEXEC)),
        S::EpollCreate => Birth::new(K::Epoll, "epoll", false),
        S::EpollCreate1 => Birth::new(K::Epoll, "epoll", has(arg0, O_CLOEXEC)),
        S::TimerfdCreate => Birth::new(K::Timerfd, "timerfd", has(arg0, O_CLOEXEC)),
        S::Signalfd | S::Signalfd4 => {
            // signalfd(fd, ...) with an existing signalfd changes its mask and returns it.
            if arg0 != ARG_UNKNOWN && arg0 as i32 != -1 && table.contains_key(&fd) {
                return None;
            }
            Birth::new(
                K::Signalfd,
                "signalfd",
                syscall == S::Signalfd4 && has(arg1, O_CLOEXEC),
            )
        }
        // The kernel always sets close-on-exec on these (kernel/pid.c, io_uring/io_uring.c).
        S::PidfdOpen => Birth::new(K::Pidfd, "pidfd", true),
        S::PidfdGetfd => {
            let detail = if arg0 == ARG_UNKNOWN {
                "copied from another process (pidfd_getfd)".to_string()
            } else {
                format!(
                    "fd {} of the process behind pidfd {}",
                    arg1 as i32, arg0 as i32
                )
            };
            Birth::new(K::Other, detail, true)
        }
        S::IoUringSetup => Birth::new(K::Other, "io_uring", true),
        S::InotifyInit => Birth::new(K::Inotify, "inotify", false),
        S::InotifyInit1 => Birth::new(K::Inotify, "inotify", has(arg0, O_CLOEXEC)),
        S::FanotifyInit => Birth::new(K::Other, "fanotify", has(arg0, LOW_BIT_CLOEXEC)),
        S::Userfaultfd => Birth::new(K::Other, "userfaultfd", has(arg0, O_CLOEXEC)),
        S::PerfEventOpen => Birth::new(K::Other, "perf_event", has(arg0, PERF_FLAG_FD_CLOEXEC)),
        S::OpenByHandleAt => Birth::new(K::File, "(opened by handle)", has(arg1, O_CLOEXEC)),
        S::Recvmsg => Birth::new(
            K::Other,
            "received over a unix socket (SCM_RIGHTS)",
            has(arg0, MSG_CMSG_CLOEXEC),
        ),
        other => Birth::new(K::Other, other.name(), false),
    })
}

/// What socket(2)'s domain and type say, before any address is bound.
fn describe_socket(domain: u64, kind: u64) -> String {
    const SOCK_STREAM: u64 = 1;
    const SOCK_DGRAM: u64 = 2;
    let base = kind & 0xf;
    // A domain wider than `sa_family_t` is no family we name.
    let family = u16::try_from(domain).unwrap_or(u16::MAX);
    match (family, base) {
        (AF_INET, SOCK_STREAM) => "tcp".into(),
        (AF_INET, SOCK_DGRAM) => "udp".into(),
        (AF_INET6, SOCK_STREAM) => "tcp6".into(),
        (AF_INET6, SOCK_DGRAM) => "udp6".into(),
        (AF_UNIX, _) => "unix".into(),
        (AF_NETLINK, _) => "netlink".into(),
        (AF_PACKET, _) => "packet".into(),
        _ => format!("socket (domain {domain}, type {base})"),
    }
}
