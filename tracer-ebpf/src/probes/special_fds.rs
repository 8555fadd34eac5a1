//! Descriptors that are neither files from a path nor sockets nor pipes: eventfd, epoll,
//! timerfd, signalfd, pidfd (pidfd_open, pidfd_getfd), inotify, fanotify, userfaultfd,
//! io_uring, perf_event, and files reopened from a handle (open_by_handle_at).
//!
//! Each returns the new descriptor. The exit probe keeps the flags that decide close-on-exec
//! (userspace knows which flag bit each syscall uses; `kept_args` which argument holds them).
//!
//! Kernel: fs/eventfd.c, fs/eventpoll.c, fs/timerfd.c, fs/signalfd.c, kernel/pid.c,
//! fs/notify/inotify/inotify_user.c, fs/notify/fanotify/fanotify_user.c, fs/userfaultfd.c,
//! io_uring/io_uring.c, kernel/events/core.c, fs/fhandle.c.

use super::{exit_probes, sockets_and_dups::emit_fd_created};

exit_probes!(
    emit_fd_created:
    sys_exit_eventfd => Eventfd,
    sys_exit_eventfd2 => Eventfd2,
    sys_exit_epoll_create => EpollCreate,
    sys_exit_epoll_create1 => EpollCreate1,
    sys_exit_timerfd_create => TimerfdCreate,
    sys_exit_signalfd => Signalfd,
    sys_exit_signalfd4 => Signalfd4,
    sys_exit_pidfd_open => PidfdOpen,
    sys_exit_pidfd_getfd => PidfdGetfd,
    sys_exit_inotify_init => InotifyInit,
    sys_exit_inotify_init1 => InotifyInit1,
    sys_exit_fanotify_init => FanotifyInit,
    sys_exit_userfaultfd => Userfaultfd,
    sys_exit_io_uring_setup => IoUringSetup,
    sys_exit_perf_event_open => PerfEventOpen,
    sys_exit_open_by_handle_at => OpenByHandleAt,
);
