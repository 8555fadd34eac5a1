//! One handler per event kind: how each event changes the tables. [`Aggregator::apply`]
//! dispatches here, in ring buffer order.

use tracer_common::{
    CLONE_FILES, CLONE_THREAD, Syscall,
    abi::{CLOSE_RANGE_CLOEXEC, CLOSE_RANGE_UNSHARE},
};

use super::{
    Aggregator, Descriptor, Life, LiveThread, Origin, Process, births, copy_of, exit_process,
};
use crate::{
    events::{
        CloexecSet, FdClosed, FdCreated, FileOpened, Header, RangeClosed, TaskCreated, TaskExited,
    },
    model::StackRef,
};

impl Aggregator {
    /// A descriptor opened from a path (or memfd_create's name), described from the path
    /// as resolved against the working directory or `dirfd` at open time.
    pub(super) fn on_file_opened(&mut self, header: &Header, opened: &mut FileOpened) {
        // Only a relative path needs the working directory (most opens are absolute).
        let relative = opened
            .path
            .as_deref()
            .is_some_and(|p| p.first() != Some(&b'/'));
        let cwd = if relative {
            self.caller(header.tgid).cwd.clone()
        } else {
            None
        };
        let process = self.table(header.tgid);
        let birth = births::from_path(
            opened.syscall,
            opened.path.take(),
            opened.dirfd,
            opened.flags,
            cwd.as_deref(),
            &process.fds,
        );
        let descriptor = Descriptor {
            path_truncated: opened.path_truncated,
            ..Descriptor::born(header, opened.fd, opened.syscall, birth)
        };
        // An fd number already in the table means we missed its close (lost event):
        // the new descriptor replaces it either way.
        process.fds.insert(opened.fd, descriptor);
    }

    /// A descriptor created without a path (socket, accept, pipe, dup, ...), described from
    /// the syscall's arguments; a call that creates nothing (dup2 onto itself, a signalfd
    /// update) changes nothing.
    pub(super) fn on_fd_created(&mut self, header: &Header, created: &FdCreated) {
        let FdCreated {
            fd,
            syscall,
            arg0,
            arg1,
            arg2,
        } = *created;
        let process = self.table(header.tgid);
        let Some(birth) = births::without_path(syscall, fd, [arg0, arg1, arg2], &process.fds)
        else {
            return;
        };
        // dup2/dup3 onto an open fd close what it held: insert replaces it.
        let replaced = process
            .fds
            .insert(fd, Descriptor::born(header, fd, syscall, birth));
        if let Some(descriptor) = replaced {
            self.remember_closed(header.tgid, descriptor, header, syscall);
        }
    }

    /// close(fd) leaves the table it was in (shared or not).
    pub(super) fn on_fd_closed(&mut self, header: &Header, closed: &FdClosed) {
        // Closing an fd we never saw (or EBADF) is harmless.
        let owner = self.table_owner(header.tgid);
        let removed = self
            .processes
            .get_mut(&owner)
            .and_then(|process| process.fds.remove(&closed.fd));
        if let Some(descriptor) = removed {
            self.remember_closed(owner, descriptor, header, Syscall::Close);
        }
    }

    /// fcntl(F_SETFD) turned a descriptor's close-on-exec flag on or off.
    pub(super) fn on_cloexec_set(&mut self, header: &Header, set: &CloexecSet) {
        if let Some(d) = self.table(header.tgid).fds.get_mut(&set.fd) {
            d.cloexec = set.on;
        }
    }

    /// close_range closed a block of descriptors or marked it close-on-exec, leaving a
    /// shared table first with `CLOSE_RANGE_UNSHARE`.
    pub(super) fn on_range_closed(&mut self, header: &Header, range: &RangeClosed) {
        if range.flags & CLOSE_RANGE_UNSHARE != 0 && header.tid == header.tgid {
            self.unshare_table(header.tgid);
        }
        close_range(self.table(header.tgid), header, range);
    }

    /// unshare(CLONE_FILES): the process leaves the table it shared with others.
    pub(super) fn on_files_unshared(&mut self, header: &Header) {
        // A thread leaving its process's table is not modelled (README: limits).
        if header.tid == header.tgid {
            self.unshare_table(header.tgid);
        }
    }

    /// A new thread is counted in its process; a new process gets a copy of its parent's
    /// table, or shares it (CLONE_FILES).
    pub(super) fn on_task_created(&mut self, header: &Header, created: &TaskCreated) {
        let TaskCreated {
            child_tid,
            clone_flags,
            ..
        } = *created;
        let stack = header.stack();
        let is_thread = clone_flags.is_some_and(|flags| flags & CLONE_THREAD != 0);
        if is_thread {
            let process = self.caller(header.tgid);
            process.threads.created += 1;
            process.threads.live += 1;
            process.new_threads.insert(
                child_tid,
                LiveThread {
                    stack,
                    started_ns: header.timestamp_ns,
                },
            );
        } else if clone_flags.is_some_and(|flags| flags & CLONE_FILES != 0) {
            self.fork(header.tgid, child_tid, stack);
            self.caller(child_tid).fds.clear();
            self.share_table(header.tgid, child_tid);
        } else {
            self.fork(header.tgid, child_tid, stack);
        }
    }

    /// A thread exited, or the whole process: then what it created and still held is kept
    /// as held at exit.
    pub(super) fn on_task_exited(&mut self, header: &Header, exited: &TaskExited) {
        let whole_process = exited.group_dead.unwrap_or(header.tid == header.tgid);
        if self.caller(header.tgid).exited() {
            // Already handled (it vanished from /proc before its event arrived).
            return;
        }
        if whole_process {
            // A table others still use lives on with them.
            self.hand_over_table(header.tgid);
        }
        let lost = self.lost_so_far;
        let process = self.caller(header.tgid);
        if header.tid != header.tgid {
            process.new_threads.remove(&header.tid);
            process.threads.exited += 1;
            process.threads.live = process.threads.live.saturating_sub(1);
        }
        if whole_process {
            exit_process(process, header.timestamp_ns, lost);
            self.settle_exit(header.tgid);
        }
    }

    /// execve: the new program keeps every descriptor but the close-on-exec ones.
    pub(super) fn on_exec(&mut self, header: &Header) {
        // execve leaves a shared table, then closes close-on-exec descriptors
        // without a close(2) of their own.
        self.unshare_table(header.tgid);
        self.caller(header.tgid).fds.retain(|_, d| !d.cloexec);
    }

    /// A new process: it starts with a copy of its parent's table, each descriptor marked
    /// inherited and keeping the parent's stack.
    fn fork(&mut self, parent_pid: u32, child_pid: u32, fork_stack: Option<StackRef>) {
        let parent = self.caller(parent_pid);
        let comm = parent.comm.clone();
        let inherited = copy_of(&parent.fds);
        let cwd = parent.cwd.clone();
        let lost_when_checked = parent.lost_when_checked;
        if let Some(previous) = self.processes.remove(&child_pid) {
            if previous.exited() {
                // The pid was reused: what the old process held is in the groups already;
                // it is kept for the report only when everything is.
                if self.keep_at_exit_descriptors {
                    self.departed.push(previous);
                } else {
                    self.exited_forgotten += 1;
                }
            } else {
                // Seen in the attach snapshot already: keep it, but what it inherited from
                // a traced parent is known more exactly than "pre-existing".
                let mut child = previous;
                for (fd, descriptor) in inherited {
                    let replace = child
                        .fds
                        .get(&fd)
                        .is_some_and(|d| d.origin == Origin::PreExisting);
                    if replace {
                        child.fds.insert(fd, descriptor);
                    }
                }
                child.fork_stack = fork_stack;
                self.processes.insert(child_pid, child);
                return;
            }
        }
        let mut child = Process::new(child_pid, parent_pid, comm);
        child.fork_stack = fork_stack;
        child.forked_while_traced = true;
        child.cwd = cwd;
        child.lost_when_checked = lost_when_checked;
        child.fds = inherited;
        self.processes.insert(child_pid, child);
    }
}

/// close_range(first, last, flags). Arguments the kernel rejects (first > last, unknown
/// flags) change nothing. `CLOSE_RANGE_UNSHARE` gives the caller a private copy of the table
/// first, which for a single-threaded process (the usual case: before exec) changes nothing
/// we track.
fn close_range(process: &mut Process, header: &Header, range: &RangeClosed) {
    let RangeClosed { first, last, flags } = *range;
    if first > last || flags & !(CLOSE_RANGE_UNSHARE | CLOSE_RANGE_CLOEXEC) != 0 {
        return;
    }
    let in_range = |fd: i32| u32::try_from(fd).is_ok_and(|fd| (first..=last).contains(&fd));
    if flags & CLOSE_RANGE_CLOEXEC != 0 {
        for d in process.fds.values_mut().filter(|d| in_range(d.fd)) {
            d.cloexec = true;
        }
    } else {
        let closed: Vec<Descriptor> = process
            .fds
            .extract_if(|&fd, _| in_range(fd))
            .map(|(_, d)| d)
            .collect();
        for descriptor in closed {
            process.lives.push(Life {
                descriptor,
                closer_tid: header.tid,
                closed_at_ns: header.timestamp_ns,
                closed_by: Syscall::CloseRange,
            });
        }
    }
}
