//! Kernel constants that both sides use, each defined once, with the uapi header it comes
//! from. The values are the asm-generic ones, the same on x86_64 and arm64.
//!
//! A constant that only one side needs (a BPF helper flag, a `/proc` column) stays next to
//! its one user.

/// `AT_FDCWD` (linux/fcntl.h): the directory fd of a path relative to the working directory.
/// The kernel side reports it as the `dirfd` of open and creat, which take no directory.
pub const AT_FDCWD: i32 = -100;

/// `O_WRONLY` (asm-generic/fcntl.h).
pub const O_WRONLY: u64 = 0o1;
/// `O_CREAT` (asm-generic/fcntl.h).
pub const O_CREAT: u64 = 0o100;
/// `O_TRUNC` (asm-generic/fcntl.h).
pub const O_TRUNC: u64 = 0o1000;
/// `O_CLOEXEC` (asm-generic/fcntl.h), and the flags equal to it: `SOCK_CLOEXEC`,
/// `EFD_CLOEXEC`, `EPOLL_CLOEXEC`, `TFD_CLOEXEC`, `SFD_CLOEXEC`, `IN_CLOEXEC`, `UFFD_CLOEXEC`.
pub const O_CLOEXEC: u64 = 0o2_000_000;

/// `F_DUPFD` (asm-generic/fcntl.h): fcntl copies a descriptor.
pub const F_DUPFD: u64 = 0;
/// `F_SETFD` (asm-generic/fcntl.h): fcntl sets the descriptor flags ([`FD_CLOEXEC`]).
pub const F_SETFD: u64 = 2;
/// `F_DUPFD_CLOEXEC` (linux/fcntl.h): fcntl copies a descriptor, close-on-exec.
pub const F_DUPFD_CLOEXEC: u64 = 1030;
/// `FD_CLOEXEC` (asm-generic/fcntl.h): the descriptor flag F_SETFD sets.
pub const FD_CLOEXEC: u64 = 1;

/// `EBADF` (asm-generic/errno-base.h): a syscall was given a descriptor that is not open.
/// close, dup2 and dup3 return `-EBADF` for it; the kernel side reports those calls.
pub const EBADF: i64 = 9;

/// `CLONE_FILES` (linux/sched.h): the new task shares the caller's descriptor table; with
/// unshare(2), the caller takes a private copy of it.
pub const CLONE_FILES: u64 = 0x0000_0400;
/// `CLONE_THREAD` (linux/sched.h): the new task is a thread of the caller's process.
pub const CLONE_THREAD: u64 = 0x0001_0000;

/// `CLOSE_RANGE_UNSHARE` (linux/close_range.h): take a private copy of the table first.
pub const CLOSE_RANGE_UNSHARE: u32 = 1 << 1;
/// `CLOSE_RANGE_CLOEXEC` (linux/close_range.h): mark the range close-on-exec, close nothing.
pub const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;

/// `AF_UNIX` (linux/socket.h).
pub const AF_UNIX: u16 = 1;
/// `AF_INET` (linux/socket.h).
pub const AF_INET: u16 = 2;
/// `AF_INET6` (linux/socket.h).
pub const AF_INET6: u16 = 10;
/// `AF_NETLINK` (linux/socket.h).
pub const AF_NETLINK: u16 = 16;
/// `AF_PACKET` (linux/socket.h).
pub const AF_PACKET: u16 = 17;

/// TCP states (include/net/tcp_states.h): the `oldstate`/`newstate` of the
/// `sock:inet_sock_set_state` tracepoint and the `st` column of `/proc/net/tcp`.
pub mod tcp_state {
    /// `TCP_ESTABLISHED`.
    pub const ESTABLISHED: u8 = 1;
    /// `TCP_SYN_SENT`.
    pub const SYN_SENT: u8 = 2;
    /// `TCP_SYN_RECV`.
    pub const SYN_RECV: u8 = 3;
    /// `TCP_FIN_WAIT1`.
    pub const FIN_WAIT1: u8 = 4;
    /// `TCP_FIN_WAIT2`.
    pub const FIN_WAIT2: u8 = 5;
    /// `TCP_TIME_WAIT`.
    pub const TIME_WAIT: u8 = 6;
    /// `TCP_CLOSE`: the socket is gone.
    pub const CLOSE: u8 = 7;
    /// `TCP_CLOSE_WAIT`.
    pub const CLOSE_WAIT: u8 = 8;
    /// `TCP_LAST_ACK`.
    pub const LAST_ACK: u8 = 9;
    /// `TCP_LISTEN`.
    pub const LISTEN: u8 = 10;
    /// `TCP_CLOSING`.
    pub const CLOSING: u8 = 11;
    /// `TCP_NEW_SYN_RECV`.
    pub const NEW_SYN_RECV: u8 = 12;

    /// The kernel's name for a TCP state (as `/proc/net/tcp` readers and `ss` spell it);
    /// `None` for anything else.
    pub const fn name(state: u8) -> Option<&'static str> {
        Some(match state {
            ESTABLISHED => "ESTABLISHED",
            SYN_SENT => "SYN_SENT",
            SYN_RECV => "SYN_RECV",
            FIN_WAIT1 => "FIN_WAIT1",
            FIN_WAIT2 => "FIN_WAIT2",
            TIME_WAIT => "TIME_WAIT",
            CLOSE => "CLOSE",
            CLOSE_WAIT => "CLOSE_WAIT",
            LAST_ACK => "LAST_ACK",
            LISTEN => "LISTEN",
            CLOSING => "CLOSING",
            NEW_SYN_RECV => "NEW_SYN_RECV",
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::tcp_state::{self, *};

    /// By the numbers of `/proc/net/tcp`'s `st` column (hex there).
    #[test]
    fn tcp_state_names_by_number() {
        assert_eq!(tcp_state::name(0x01), Some("ESTABLISHED"));
        assert_eq!(tcp_state::name(0x06), Some("TIME_WAIT"));
        assert_eq!(tcp_state::name(0x08), Some("CLOSE_WAIT"));
        assert_eq!(tcp_state::name(0x0A), Some("LISTEN"));
        assert_eq!(tcp_state::name(0x0C), Some("NEW_SYN_RECV"));
        assert_eq!(tcp_state::name(0x00), None);
        assert_eq!(tcp_state::name(0x0D), None);
    }

    /// By the constants, every one named after itself.
    #[test]
    fn tcp_state_names_by_constant() {
        let states = [
            (ESTABLISHED, "ESTABLISHED"),
            (SYN_SENT, "SYN_SENT"),
            (SYN_RECV, "SYN_RECV"),
            (FIN_WAIT1, "FIN_WAIT1"),
            (FIN_WAIT2, "FIN_WAIT2"),
            (TIME_WAIT, "TIME_WAIT"),
            (CLOSE, "CLOSE"),
            (CLOSE_WAIT, "CLOSE_WAIT"),
            (LAST_ACK, "LAST_ACK"),
            (LISTEN, "LISTEN"),
            (CLOSING, "CLOSING"),
            (NEW_SYN_RECV, "NEW_SYN_RECV"),
        ];
        for (i, (state, name)) in states.into_iter().enumerate() {
            assert_eq!(usize::from(state), i + 1, "{name}");
            assert_eq!(tcp_state::name(state), Some(name));
        }
        assert_eq!(tcp_state::name(0), None);
        assert_eq!(tcp_state::name(13), None);
    }
}
