//! Tests of `/proc/PID/fd` link classification (tables of link and expected), and live ones on
//! descriptors this test process opens.

use std::{
    io::Write,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use super::*;
use crate::procfs::test_support::{GONE_PID, TempDir, fd_of, me};

/// What [`classify_link`] returns: kind, detail, deleted, inode.
type Classified = (DescriptorKind, &'static str, bool, Option<u64>);

/// Classifies every link of `cases` and compares with the expected result.
#[track_caller]
fn assert_classifies(cases: &[(&[u8], Classified)]) {
    for &(link, (kind, detail, deleted, inode)) in cases {
        assert_eq!(
            classify_link(OsStr::from_bytes(link)),
            (kind, detail.to_string(), deleted, inode),
            "{}",
            link.escape_ascii()
        );
    }
}

// --- pure: classify_link ---

/// Sockets and pipes keep their link text and yield the inode.
#[test]
fn classifies_socket_and_pipe() {
    assert_classifies(&[
        (
            b"socket:[12345]",
            (DescriptorKind::Socket, "socket:[12345]", false, Some(12345)),
        ),
        (
            b"pipe:[777]",
            (DescriptorKind::Pipe, "pipe:[777]", false, Some(777)),
        ),
    ]);
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
        assert_classifies(&[(link.as_bytes(), (kind, link, false, None))]);
    }
}

/// A memfd is Memfd named `memfd:NAME` (spaces kept), never "deleted".
#[test]
fn classifies_memfd() {
    assert_classifies(&[
        (
            b"/memfd:my buffer (deleted)",
            (DescriptorKind::Memfd, "memfd:my buffer", false, None),
        ),
        // Without the kernel's suffix it is an ordinary file that happens to be named so.
        (b"/memfd:x", (DescriptorKind::File, "/memfd:x", false, None)),
    ]);
}

/// Paths are File; the kernel's ` (deleted)` suffix is stripped once and sets deleted.
#[test]
fn classifies_files_and_deleted_files() {
    assert_classifies(&[
        (
            b"/var/log/app.log",
            (DescriptorKind::File, "/var/log/app.log", false, None),
        ),
        (
            b"/dev/pts/0",
            (DescriptorKind::File, "/dev/pts/0", false, None),
        ),
        (
            b"/tmp/scratch file (deleted)",
            (DescriptorKind::File, "/tmp/scratch file", true, None),
        ),
        (
            b"/tmp/a (deleted) (deleted)",
            (DescriptorKind::File, "/tmp/a (deleted)", true, None),
        ),
    ]);
}

/// Non-UTF-8 path bytes become `\xNN` escapes instead of failing or being lost.
#[test]
fn classifies_non_utf8_path_with_escapes() {
    assert_classifies(&[(
        b"/tmp/caf\xe9 (deleted)",
        (DescriptorKind::File, "/tmp/caf\\xe9", true, None),
    )]);
}

/// Namespaces and other non-path links are Other with their text (and inode if shown).
#[test]
fn classifies_other_links() {
    assert_classifies(&[
        (
            b"net:[4026531840]",
            (
                DescriptorKind::Other,
                "net:[4026531840]",
                false,
                Some(4026531840),
            ),
        ),
        (
            b"mnt:[4026531841]",
            (
                DescriptorKind::Other,
                "mnt:[4026531841]",
                false,
                Some(4026531841),
            ),
        ),
        (b"weird", (DescriptorKind::Other, "weird", false, None)),
    ]);
}

// --- live, on descriptors of this test process ---

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

/// eventfd, epoll, timerfd, memfd and pidfd are classified from the live links.
#[test]
fn live_anon_inodes_and_memfd() {
    let own = |fd: i32| {
        assert!(fd >= 0, "{}", io::Error::last_os_error());
        // SAFETY: each call returns a new descriptor (checked) that OwnedFd then owns.
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

/// Asking about a closed descriptor or a missing process is NotFound or an error.
#[test]
fn live_missing_fd_and_process() {
    let s = SocketTable::default();
    let err = describe_fd(me(), 1 << 30, &s, Direction::Unknown).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert!(list_fds(GONE_PID, &s).is_err());
}

/// The close-on-exec flag is read from fdinfo, and follows `F_SETFD`.
#[test]
fn live_cloexec_flag() {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 just returned these descriptors; we own them.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    assert!(fd_is_cloexec(me(), r.as_raw_fd()));
    // SAFETY: plain fcntl on a descriptor we own.
    assert_eq!(unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFD, 0) }, 0);
    assert!(!fd_is_cloexec(me(), w.as_raw_fd()));
    assert!(!fd_is_cloexec(me(), 1 << 30));
}
