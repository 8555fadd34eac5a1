//! A command the tracer starts itself: forked before anything is loaded, held before execve
//! until it is followed, so it is traced from its first instruction.

use std::{
    ffi::CString,
    io::{self, Write as _},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context as _, Result, bail};

use super::SessionError;

/// A command started by the tracer, stopped before execve until it is followed.
pub(super) struct PausedChild {
    pub(super) pid: u32,
    /// Writing to (or closing) this lets the child exec.
    gate: Option<OwnedFd>,
    /// Close-on-exec: reads EOF once execve succeeded, or the errno if it failed.
    exec_status: Option<OwnedFd>,
    reaped: bool,
}

impl PausedChild {
    pub(super) fn spawn(argv: &[String]) -> Result<Self> {
        let program = &argv[0];
        if !program.contains('/') && which(program).is_none() {
            bail!(SessionError::CommandNotFound(program.clone()));
        }
        let args: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()).context("arguments must not contain NUL bytes"))
            .collect::<Result<_>>()?;
        let mut argv_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());

        let (gate_read, gate_write) = cloexec_pipe().context("cannot create the start gate")?;
        let (status_read, status_write) =
            cloexec_pipe().context("cannot create the exec status pipe")?;

        // SAFETY: the child only makes async-signal-safe calls (close, read, execvp, write,
        // _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error()).context("cannot fork");
        }
        if pid == 0 {
            // SAFETY: see above.
            unsafe {
                libc::close(gate_write.as_raw_fd());
                libc::close(status_read.as_raw_fd());
                let mut byte = 0u8;
                while libc::read(gate_read.as_raw_fd(), (&raw mut byte).cast(), 1) < 0
                    && *libc::__errno_location() == libc::EINTR
                {}
                libc::execvp(argv_ptrs[0], argv_ptrs.as_ptr());
                let errno = (*libc::__errno_location()).to_ne_bytes();
                libc::write(status_write.as_raw_fd(), errno.as_ptr().cast(), errno.len());
                libc::_exit(127);
            }
        }
        drop(gate_read);
        drop(status_write);
        Ok(Self {
            pid: pid as u32,
            gate: Some(gate_write),
            exec_status: Some(status_read),
            reaped: false,
        })
    }

    /// Lets the command run, and waits until its execve has succeeded or failed.
    pub(super) fn release(&mut self, program: &str) -> Result<()> {
        if let Some(gate) = self.gate.take() {
            let mut file = std::fs::File::from(gate);
            file.write_all(b"g").context("cannot start the command")?;
        }
        if let Some(status) = self.exec_status.take() {
            let mut errno = [0u8; 4];
            let mut file = std::fs::File::from(status);
            // EOF (0 bytes): the pipe closed at a successful execve.
            if let Ok(4) = io::Read::read(&mut file, &mut errno) {
                self.try_reap();
                let err = io::Error::from_raw_os_error(i32::from_ne_bytes(errno));
                return Err(err).with_context(|| format!("cannot run `{program}`"));
            }
        }
        Ok(())
    }

    /// Collects the exit status once it has exited, so it does not linger as a zombie.
    pub(super) fn try_reap(&mut self) {
        if self.reaped {
            return;
        }
        let mut status = 0;
        // SAFETY: plain waitpid on our own child.
        let rc = unsafe { libc::waitpid(self.pid as i32, &mut status, libc::WNOHANG) };
        if rc == self.pid as i32 {
            self.reaped = true;
        }
    }
}

impl Drop for PausedChild {
    fn drop(&mut self) {
        // A command we never released (a later step failed) must not be left waiting.
        if self.gate.is_some() {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(self.pid as i32, libc::SIGKILL);
                libc::waitpid(self.pid as i32, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// A pipe whose ends close on exec: (read end, write end).
fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The first executable `program` in $PATH.
fn which(program: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
