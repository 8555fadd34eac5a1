//! Ring buffer records to [`Event`]s: the header, then one decoder per event kind. Every read
//! is checked against the record's length, so a short or garbled record is an error, never a
//! panic or a read past its end.

use std::mem::size_of;

use tracer_common::{
    CLONE_FLAGS_UNKNOWN, CloseEvent, EventHeader, EventKind, ExecEvent, ExitEvent, FdEvent,
    FileOpenEvent, ForkEvent, GROUP_DEAD_UNKNOWN, PATH_CAP, StackRegs, Syscall, TcpStateEvent,
    abi::{AF_INET, FD_CLOEXEC},
    python::{PyFrameRecord, PyStackEvent},
    time_wait,
};

use super::{
    CloexecSet, CloseFailed, Decoded, Event, EventBody, FdClosed, FdCreated, FileOpened, Header,
    PythonStack, RangeClosed, StackTop, TaskCreated, TaskExited, TcpState,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum DecodeError {
    #[error("record of {0} bytes is too short for its kind")]
    TooShort(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("unknown syscall {0}")]
    UnknownSyscall(u32),
}

/// Decodes one record: the header says the kind, whose decoder reads the rest. Only the
/// creation events (a descriptor or a task) carry a copy of the stack.
pub(crate) fn decode(record: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    let raw_header: EventHeader = read(record)?;
    let kind = EventKind::try_from(raw_header.kind).map_err(DecodeError::UnknownKind)?;
    let (body, stack_top) = match kind {
        EventKind::FileOpened => file_opened(record)?,
        EventKind::FdCreated => fd_created(record)?,
        EventKind::CloseFailed => close_failed(record)?,
        EventKind::TaskCreated => task_created(record)?,
        EventKind::FdChanged => (fd_changed(record)?, None),
        EventKind::CwdChanged => (cwd_changed(record)?, None),
        EventKind::FdClosed => (fd_closed(record)?, None),
        EventKind::TaskExited => (task_exited(record)?, None),
        EventKind::Exec => (exec(record)?, None),
        EventKind::TcpState => (tcp_state(record)?, None),
        EventKind::PythonStack => (python_stack(record)?, None),
    };
    let header = header(&raw_header);
    Ok(Decoded {
        event: Event { header, body },
        stack_top,
    })
}

/// Reads a `T` from the front of `bytes`, which the ring buffer does not align for us.
fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::TooShort(bytes.len()));
    }
    // SAFETY: length checked; T is a plain-old-data repr(C) struct from tracer-common.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn header(raw: &EventHeader) -> Header {
    Header {
        tgid: raw.tgid,
        tid: raw.tid,
        stack_id: u32::try_from(raw.stack_id).ok(),
        timestamp_ns: raw.timestamp_ns,
        generation: 0,
    }
}

/// The stack registers of a record whose fixed part is `fixed` bytes, and the stack bytes that
/// follow it in the record (the kernel sends only what it copied).
fn stack_top<'r>(
    regs: &StackRegs,
    record: &'r [u8],
    fixed: usize,
) -> Result<Option<StackTop<'r>>, DecodeError> {
    let copied = record
        .get(fixed..fixed + regs.len as usize)
        .ok_or(DecodeError::TooShort(record.len()))?;
    Ok((regs.sp != 0).then_some(StackTop {
        sp: regs.sp,
        bp: regs.bp,
        ip: regs.ip,
        bytes: copied,
        memo: regs.memo,
    }))
}

fn syscall(raw: u32) -> Result<Syscall, DecodeError> {
    Syscall::try_from(raw).map_err(DecodeError::UnknownSyscall)
}

/// An event with the stack copied after its fixed part.
type WithStack<'r> = (EventBody, Option<StackTop<'r>>);

/// A `T` at `offset` of `record`.
fn read_at<T: Copy>(record: &[u8], offset: usize) -> Result<T, DecodeError> {
    read(
        record
            .get(offset..)
            .ok_or(DecodeError::TooShort(record.len()))?,
    )
}

/// [`FileOpenEvent`]: the path's `path_len` bytes follow the stack copy. The fields are read
/// one by one, straight from the ring.
fn file_opened(record: &[u8]) -> Result<WithStack<'_>, DecodeError> {
    use std::mem::offset_of;
    type E = FileOpenEvent;
    if record.len() < size_of::<E>() {
        return Err(DecodeError::TooShort(record.len()));
    }
    let len = usize::from(read_at::<u16>(record, offset_of!(E, path_len))?).min(PATH_CAP);
    let path_unknown: u8 = read_at(record, offset_of!(E, path_unknown))?;
    let path_truncated: u8 = read_at(record, offset_of!(E, path_truncated))?;
    let regs: StackRegs = read_at(record, offset_of!(E, stack))?;
    let stack_top = stack_top(&regs, record, size_of::<E>())?;
    let path_at = size_of::<E>() + regs.len as usize;
    let path = if path_unknown == 0 {
        Some(
            record
                .get(path_at..path_at + len)
                .ok_or(DecodeError::TooShort(record.len()))?
                .to_vec(),
        )
    } else {
        None
    };
    let body = EventBody::FileOpened(FileOpened {
        fd: read_at(record, offset_of!(E, fd))?,
        syscall: syscall(read_at(record, offset_of!(E, syscall))?)?,
        dirfd: read_at(record, offset_of!(E, dirfd))?,
        flags: read_at(record, offset_of!(E, flags))?,
        path,
        path_truncated: path_truncated != 0,
    });
    Ok((body, stack_top))
}

/// [`FdEvent`] of a descriptor created without a path.
fn fd_created(record: &[u8]) -> Result<WithStack<'_>, DecodeError> {
    let raw: FdEvent = read(record)?;
    let stack_top = stack_top(&raw.stack, record, size_of::<FdEvent>())?;
    let body = EventBody::FdCreated(FdCreated {
        fd: raw.fd,
        syscall: syscall(raw.syscall)?,
        arg0: raw.arg0,
        arg1: raw.arg1,
        arg2: raw.arg2,
    });
    Ok((body, stack_top))
}

/// [`FdEvent`] of a close, dup2 or dup3 that failed with EBADF; `arg0` is dup's target.
fn close_failed(record: &[u8]) -> Result<WithStack<'_>, DecodeError> {
    let raw: FdEvent = read(record)?;
    let stack_top = stack_top(&raw.stack, record, size_of::<FdEvent>())?;
    let syscall = syscall(raw.syscall)?;
    let body = EventBody::CloseFailed(CloseFailed {
        fd: raw.fd,
        syscall,
        target: (syscall != Syscall::Close).then_some(raw.arg0 as i64 as i32),
    });
    Ok((body, stack_top))
}

/// [`ForkEvent`]: unknown clone flags (a task the kernel created by itself) are `None`.
fn task_created(record: &[u8]) -> Result<WithStack<'_>, DecodeError> {
    let raw: ForkEvent = read(record)?;
    let stack_top = stack_top(&raw.stack, record, size_of::<ForkEvent>())?;
    let body = EventBody::TaskCreated(TaskCreated {
        child_tid: raw.child_tid,
        syscall: Syscall::try_from(raw.syscall).ok(),
        clone_flags: (raw.clone_flags != CLONE_FLAGS_UNKNOWN).then_some(raw.clone_flags),
    });
    Ok((body, stack_top))
}

/// [`FdEvent`] of a change to existing descriptors: its syscall says which, and what its
/// arguments mean.
fn fd_changed(record: &[u8]) -> Result<EventBody, DecodeError> {
    let raw: FdEvent = read(record)?;
    Ok(match syscall(raw.syscall)? {
        Syscall::Fcntl => EventBody::CloexecSet(CloexecSet {
            fd: raw.fd,
            on: raw.arg2 & FD_CLOEXEC != 0,
        }),
        Syscall::CloseRange => EventBody::RangeClosed(RangeClosed {
            first: raw.fd as u32,
            last: raw.arg0 as u32,
            flags: raw.arg1 as u32,
        }),
        Syscall::Unshare => EventBody::FilesUnshared,
        other => return Err(DecodeError::UnknownSyscall(other as u32)),
    })
}

/// [`ExecEvent`]'s layout (header only): the session reads the new directory from /proc.
fn cwd_changed(record: &[u8]) -> Result<EventBody, DecodeError> {
    let _: ExecEvent = read(record)?;
    Ok(EventBody::CwdChanged)
}

/// [`CloseEvent`].
fn fd_closed(record: &[u8]) -> Result<EventBody, DecodeError> {
    let raw: CloseEvent = read(record)?;
    Ok(EventBody::FdClosed(FdClosed { fd: raw.fd }))
}

/// [`ExitEvent`]: an unknown `group_dead` is `None`.
fn task_exited(record: &[u8]) -> Result<EventBody, DecodeError> {
    let raw: ExitEvent = read(record)?;
    let group_dead = match raw.group_dead {
        GROUP_DEAD_UNKNOWN => None,
        dead => Some(dead != 0),
    };
    Ok(EventBody::TaskExited(TaskExited { group_dead }))
}

/// [`ExecEvent`] (header only).
fn exec(record: &[u8]) -> Result<EventBody, DecodeError> {
    let _: ExecEvent = read(record)?;
    Ok(EventBody::Exec)
}

/// [`PyStackEvent`] and the frames that follow it.
fn python_stack(record: &[u8]) -> Result<EventBody, DecodeError> {
    let raw: PyStackEvent = read(record)?;
    let fixed = size_of::<PyStackEvent>();
    let frames = (0..raw.count as usize)
        .map(|i| {
            let at = fixed + i * size_of::<PyFrameRecord>();
            read::<PyFrameRecord>(record.get(at..).unwrap_or_default())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(EventBody::PythonStack(PythonStack {
        flags: raw.flags,
        frames,
    }))
}

/// [`TcpStateEvent`].
fn tcp_state(record: &[u8]) -> Result<EventBody, DecodeError> {
    let raw: TcpStateEvent = read(record)?;
    Ok(EventBody::TcpState(Box::new(TcpState {
        skaddr: raw.skaddr,
        old: raw.oldstate,
        new: raw.newstate,
        local: socket_addr(raw.family, raw.saddr, raw.sport),
        remote: socket_addr(raw.family, raw.daddr, raw.dport),
        time_wait: match raw.time_wait {
            time_wait::TAKEN_OVER => Some(true),
            time_wait::NONE => Some(false),
            _ => None,
        },
    })))
}

/// An address from the tracepoint: IPv4 in the first 4 bytes for AF_INET, else IPv6.
fn socket_addr(family: u16, bytes: [u8; 16], port: u16) -> std::net::SocketAddr {
    let ip: std::net::IpAddr = if family == AF_INET {
        std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into()
    } else {
        std::net::Ipv6Addr::from(bytes).into()
    };
    std::net::SocketAddr::new(ip, port)
}
