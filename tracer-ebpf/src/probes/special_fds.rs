//! Descriptors that are neither files from a path nor sockets nor pipes: eventfd, epoll,
//! timerfd, signalfd, pidfd (pidfd_open, pidfd_getfd), inotify, fanotify, userfaultfd,
//! io_uring, perf_event, and files reopened from a handle (open_by_handle_at).
//!
//! Each returns the new descriptor. Enter probes keep the flags that decide close-on-exec
//! (userspace knows which flag bit each syscall uses); syscalls with no such flag, or that
//! always set it (pidfd_open, io_uring_setup), have exit probes only.
//!
//! Kernel: fs/eventfd.c, fs/eventpoll.c, fs/timerfd.c, fs/signalfd.c, kernel/pid.c,
//! fs/notify/inotify/inotify_user.c, fs/notify/fanotify/fanotify_user.c, fs/userfaultfd.c,
//! io_uring/io_uring.c, kernel/events/core.c, fs/fhandle.c.

use super::{enter_probes, exit_probes, sockets_and_dups::emit_fd_created};

enter_probes!(
    sys_enter_eventfd2 => Eventfd2 [eventfd2_flags],
    sys_enter_epoll_create1 => EpollCreate1 [epoll_create1_flags],
    sys_enter_timerfd_create => TimerfdCreate [timerfd_create_flags],
    sys_enter_signalfd => Signalfd [signalfd_ufd],
    sys_enter_signalfd4 => Signalfd4 [signalfd4_ufd, signalfd4_flags],
    sys_enter_pidfd_getfd => PidfdGetfd [pidfd_getfd_pidfd, pidfd_getfd_fd],
    sys_enter_inotify_init1 => InotifyInit1 [inotify_init1_flags],
    sys_enter_fanotify_init => FanotifyInit [fanotify_init_flags],
    sys_enter_userfaultfd => Userfaultfd [userfaultfd_flags],
    sys_enter_perf_event_open => PerfEventOpen [perf_event_open_flags],
    sys_enter_open_by_handle_at => OpenByHandleAt [open_by_handle_at_mountdirfd, open_by_handle_at_flags],
);

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
