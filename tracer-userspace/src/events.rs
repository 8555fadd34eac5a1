//! Decoding ring buffer records into [`Event`]s. The kernel writes `#[repr(C)]` structs from
//! tracer-common; this is the only place that looks at raw bytes.

use std::mem::size_of;

use tracer_common::{
    CLONE_FLAGS_UNKNOWN, CloseEvent, EventHeader, EventKind, ExecEvent, ExitEvent, FdEvent,
    FileOpenEvent, ForkEvent, GROUP_DEAD_UNKNOWN, PATH_CAP, StackRegs, Syscall, TcpStateEvent,
    abi::{AF_INET, FD_CLOEXEC},
};

/// The user stack and frame pointers and the stack bytes above the stack pointer at a
/// creation event, borrowed from the ring buffer record: they are unwound at once and never
/// kept, so they are not copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackTop<'r> {
    pub sp: u64,
    pub bp: u64,
    /// The user instruction pointer at the syscall, or 0 when the kernel could not read it.
    pub ip: u64,
    /// The stack memory from `sp` up (as much as the kernel could copy).
    pub bytes: &'r [u8],
}

/// A decoded record: the event, and the stack copied with it, if any.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded<'r> {
    pub event: Event,
    pub stack_top: Option<StackTop<'r>>,
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
    }))
}

/// Who did it and when: the common header, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub tgid: u32,
    pub tid: u32,
    /// Id of the user stack in the kernel's stack map.
    pub stack_id: Option<u32>,
    /// CLOCK_MONOTONIC nanoseconds.
    pub timestamp_ns: u64,
    /// Filled in by the session before the aggregator sees the event: which program image
    /// (exec generation) of the process the stack belongs to.
    pub generation: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    FileOpened {
        header: Header,
        fd: i32,
        syscall: Syscall,
        dirfd: i32,
        flags: u32,
        /// Raw bytes: paths need not be UTF-8. `None` when the open began before attach.
        path: Option<Vec<u8>>,
        path_truncated: bool,
    },
    FdCreated {
        header: Header,
        fd: i32,
        syscall: Syscall,
        arg0: u64,
        arg1: u64,
        arg2: u64,
    },
    FdClosed {
        header: Header,
        fd: i32,
    },
    TaskCreated {
        header: Header,
        child_tid: u32,
        syscall: Option<Syscall>,
        /// `None` when the kernel created the task without a syscall we saw.
        clone_flags: Option<u64>,
    },
    TaskExited {
        header: Header,
        /// Whether the whole process is gone; `None` when the kernel does not say.
        group_dead: Option<bool>,
    },
    Exec {
        header: Header,
    },
    /// fcntl(fd, F_SETFD, ...) turned close-on-exec on or off.
    CloexecSet {
        header: Header,
        fd: i32,
        on: bool,
    },
    /// close_range(first, last, flags): closes every descriptor in `first..=last`, or marks
    /// them close-on-exec with `CLOSE_RANGE_CLOEXEC`.
    RangeClosed {
        header: Header,
        first: u32,
        last: u32,
        flags: u32,
    },
    /// The process changed its working directory (chdir, fchdir).
    CwdChanged {
        header: Header,
    },
    /// The calling task got a private copy of the descriptor table it shared
    /// (unshare(CLONE_FILES)).
    FilesUnshared {
        header: Header,
    },
    /// A TCP socket of a followed process (the header's tgid) changed state.
    TcpState {
        header: Header,
        skaddr: u64,
        old: u8,
        new: u8,
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
    },
}

impl Event {
    pub fn header_mut(&mut self) -> &mut Header {
        match self {
            Self::FileOpened { header, .. }
            | Self::FdCreated { header, .. }
            | Self::FdClosed { header, .. }
            | Self::TaskCreated { header, .. }
            | Self::TaskExited { header, .. }
            | Self::TcpState { header, .. }
            | Self::CloexecSet { header, .. }
            | Self::RangeClosed { header, .. }
            | Self::CwdChanged { header }
            | Self::FilesUnshared { header }
            | Self::Exec { header } => header,
        }
    }

    pub fn header(&self) -> &Header {
        match self {
            Self::FileOpened { header, .. }
            | Self::FdCreated { header, .. }
            | Self::FdClosed { header, .. }
            | Self::TaskCreated { header, .. }
            | Self::TaskExited { header, .. }
            | Self::TcpState { header, .. }
            | Self::CloexecSet { header, .. }
            | Self::RangeClosed { header, .. }
            | Self::CwdChanged { header }
            | Self::FilesUnshared { header }
            | Self::Exec { header } => header,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is too short for its kind")]
    TooShort(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("unknown syscall {0}")]
    UnknownSyscall(u32),
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

fn syscall(raw: u32) -> Result<Syscall, DecodeError> {
    Syscall::try_from(raw).map_err(DecodeError::UnknownSyscall)
}

pub fn decode(bytes: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    let raw_header: EventHeader = read(bytes)?;
    let kind = EventKind::try_from(raw_header.kind).map_err(DecodeError::UnknownKind)?;
    let header = header(&raw_header);
    let mut stack_top = None;
    let event = match kind {
        EventKind::FileOpened => {
            let raw: FileOpenEvent = read(bytes)?;
            let len = usize::from(raw.path_len).min(PATH_CAP);
            stack_top = self::stack_top(&raw.stack, bytes, size_of::<FileOpenEvent>())?;
            Event::FileOpened {
                header,
                fd: raw.fd,
                syscall: syscall(raw.syscall)?,
                dirfd: raw.dirfd,
                flags: raw.flags,
                path: (raw.path_unknown == 0).then(|| raw.path[..len].to_vec()),
                path_truncated: raw.path_truncated != 0,
            }
        }
        EventKind::FdCreated => {
            let raw: FdEvent = read(bytes)?;
            stack_top = self::stack_top(&raw.stack, bytes, size_of::<FdEvent>())?;
            Event::FdCreated {
                header,
                fd: raw.fd,
                syscall: syscall(raw.syscall)?,
                arg0: raw.arg0,
                arg1: raw.arg1,
                arg2: raw.arg2,
            }
        }
        EventKind::FdChanged => {
            let raw: FdEvent = read(bytes)?;
            match syscall(raw.syscall)? {
                Syscall::Fcntl => Event::CloexecSet {
                    header,
                    fd: raw.fd,
                    on: raw.arg2 & FD_CLOEXEC != 0,
                },
                Syscall::CloseRange => Event::RangeClosed {
                    header,
                    first: raw.fd as u32,
                    last: raw.arg0 as u32,
                    flags: raw.arg1 as u32,
                },
                Syscall::Unshare => Event::FilesUnshared { header },
                other => return Err(DecodeError::UnknownSyscall(other as u32)),
            }
        }
        EventKind::CwdChanged => {
            let _: ExecEvent = read(bytes)?;
            Event::CwdChanged { header }
        }
        EventKind::FdClosed => {
            let raw: CloseEvent = read(bytes)?;
            Event::FdClosed { header, fd: raw.fd }
        }
        EventKind::TaskCreated => {
            let raw: ForkEvent = read(bytes)?;
            stack_top = self::stack_top(&raw.stack, bytes, size_of::<ForkEvent>())?;
            Event::TaskCreated {
                header,
                child_tid: raw.child_tid,
                syscall: Syscall::try_from(raw.syscall).ok(),
                clone_flags: (raw.clone_flags != CLONE_FLAGS_UNKNOWN).then_some(raw.clone_flags),
            }
        }
        EventKind::TaskExited => {
            let raw: ExitEvent = read(bytes)?;
            Event::TaskExited {
                header,
                group_dead: match raw.group_dead {
                    GROUP_DEAD_UNKNOWN => None,
                    dead => Some(dead != 0),
                },
            }
        }
        EventKind::Exec => {
            let _: ExecEvent = read(bytes)?;
            Event::Exec { header }
        }
        EventKind::TcpState => {
            let raw: TcpStateEvent = read(bytes)?;
            Event::TcpState {
                header,
                skaddr: raw.skaddr,
                old: raw.oldstate,
                new: raw.newstate,
                local: socket_addr(raw.family, raw.saddr, raw.sport),
                remote: socket_addr(raw.family, raw.daddr, raw.dport),
            }
        }
    };
    Ok(Decoded { event, stack_top })
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

/// Views a repr(C) value as bytes; tests use it to build records as the kernel would.
#[cfg(test)]
pub(crate) fn as_bytes<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: T is plain-old-data; we copy exactly its bytes.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the kernel sends it: the event, then the stack bytes it copied.
    fn with_stack<T: Copy>(event: &T, stack: &[u8]) -> Vec<u8> {
        let mut record = as_bytes(event);
        record.extend_from_slice(stack);
        record
    }

    fn raw_header(kind: EventKind, stack_id: i32) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            tgid: 10,
            tid: 11,
            stack_id,
            timestamp_ns: 5,
        }
    }

    /// A file-open record decodes with its path cut at path_len, its truncation flag, and its
    /// stack copy cut at the length the kernel copied.
    #[test]
    fn decodes_file_open() {
        let mut raw = FileOpenEvent {
            header: raw_header(EventKind::FileOpened, 3),
            fd: 7,
            syscall: Syscall::Openat as u32,
            dirfd: -100,
            flags: 0o2000000,
            path_len: 9,
            path_truncated: 1,
            path_unknown: 0,
            _pad: [0; 4],
            path: [0; PATH_CAP],
            stack: StackRegs {
                sp: 0x7ff0,
                bp: 0x7ff8,
                ip: 0x1234,
                len: 100,
                _pad: 0,
            },
        };
        raw.path[..9].copy_from_slice(b"/dev/null");
        let Event::FileOpened {
            header,
            fd,
            path,
            path_truncated,
            syscall,
            ..
        } = decode(&with_stack(&raw, &[7; 100])).unwrap().event
        else {
            panic!("wrong kind");
        };
        assert_eq!(header.stack_id, Some(3));
        assert_eq!(
            decode(&with_stack(&raw, &[7; 100]))
                .unwrap()
                .stack_top
                .map(|t| (t.sp, t.bp, t.ip, t.bytes.len(), t.bytes[99])),
            Some((0x7ff0, 0x7ff8, 0x1234, 100, 7))
        );
        assert_eq!((fd, syscall), (7, Syscall::Openat));
        assert_eq!(path.as_deref(), Some(&b"/dev/null"[..]));
        assert!(path_truncated);
        // A record that ends before the stack bytes it announces is refused, not read past.
        let short = with_stack(&raw, &[7; 99]);
        assert_eq!(decode(&short), Err(DecodeError::TooShort(short.len())));
    }

    /// A negative stack id (no stack captured) decodes as None.
    #[test]
    fn missing_stack_is_none() {
        let raw = CloseEvent {
            header: raw_header(EventKind::FdClosed, -1),
            fd: 4,
            _pad: 0,
        };
        assert_eq!(
            decode(&as_bytes(&raw)).unwrap().event.header().stack_id,
            None
        );
    }

    /// Short records and unknown kinds are errors, never panics.
    #[test]
    fn rejects_garbage() {
        assert_eq!(decode(&[1, 0, 0]), Err(DecodeError::TooShort(3)));
        let raw = raw_header(EventKind::FdClosed, -1);
        assert_eq!(decode(&as_bytes(&raw)), Err(DecodeError::TooShort(24)));
        let mut unknown = raw_header(EventKind::Exec, -1);
        unknown.kind = 99;
        assert_eq!(
            decode(&as_bytes(&unknown)),
            Err(DecodeError::UnknownKind(99))
        );
    }

    /// Unknown clone flags and group_dead values map to None.
    #[test]
    fn decodes_task_events() {
        let fork = ForkEvent {
            header: raw_header(EventKind::TaskCreated, 1),
            child_tid: 12,
            syscall: 0,
            clone_flags: CLONE_FLAGS_UNKNOWN,
            stack: StackRegs::default(),
        };
        assert!(matches!(
            decode(&as_bytes(&fork)).unwrap().event,
            Event::TaskCreated {
                child_tid: 12,
                syscall: None,
                clone_flags: None,
                ..
            }
        ));
        let exit = ExitEvent {
            header: raw_header(EventKind::TaskExited, -1),
            group_dead: GROUP_DEAD_UNKNOWN,
            _pad: 0,
        };
        assert!(matches!(
            decode(&as_bytes(&exit)).unwrap().event,
            Event::TaskExited {
                group_dead: None,
                ..
            }
        ));
    }
}
