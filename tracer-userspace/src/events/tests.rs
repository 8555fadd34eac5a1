//! Decoding records built as the kernel writes them.

use std::mem::size_of;

use tracer_common::{
    CLONE_FLAGS_UNKNOWN, CloseEvent, EventHeader, EventKind, ExitEvent, FdEvent, FileOpenEvent,
    ForkEvent, GROUP_DEAD_UNKNOWN, StackRegs, Syscall,
};

use super::{decode::DecodeError, *};

/// Views a repr(C) value as bytes, to build records as the kernel would.
fn as_bytes<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: T is plain-old-data; we copy exactly its bytes.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

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

/// A file-open record decodes with its stack copy cut at the length the kernel copied, the
/// path's path_len bytes after it, and its truncation flag.
#[test]
fn decodes_file_open() {
    let raw = FileOpenEvent {
        header: raw_header(EventKind::FileOpened, 3),
        fd: 7,
        syscall: Syscall::Openat as u32,
        dirfd: -100,
        flags: 0o2000000,
        path_len: 9,
        path_truncated: 1,
        path_unknown: 0,
        _pad: [0; 4],
        stack: StackRegs {
            sp: 0x7ff0,
            bp: 0x7ff8,
            ip: 0x1234,
            len: 100,
            memo: 0,
        },
    };
    let mut tail = vec![7; 100];
    tail.extend_from_slice(b"/dev/null");
    let Event {
        header,
        body:
            EventBody::FileOpened(FileOpened {
                fd,
                path,
                path_truncated,
                syscall,
                ..
            }),
    } = decode(&with_stack(&raw, &tail)).unwrap().event
    else {
        panic!("wrong kind");
    };
    assert_eq!(header.stack_id, Some(3));
    assert_eq!(
        decode(&with_stack(&raw, &tail))
            .unwrap()
            .stack_top
            .map(|t| (t.sp, t.bp, t.ip, t.bytes.len(), t.bytes[99])),
        Some((0x7ff0, 0x7ff8, 0x1234, 100, 7))
    );
    assert_eq!((fd, syscall), (7, Syscall::Openat));
    assert_eq!(path.as_deref(), Some(&b"/dev/null"[..]));
    assert!(path_truncated);
    // A record that ends before the stack bytes or the path it announces is refused, not
    // read past.
    let short = with_stack(&raw, &[7; 99]);
    assert_eq!(decode(&short), Err(DecodeError::TooShort(short.len())));
    let short = with_stack(&raw, &tail[..108]);
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
    assert_eq!(decode(&as_bytes(&raw)).unwrap().event.header.stack_id, None);
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
        decode(&as_bytes(&fork)).unwrap().event.body,
        EventBody::TaskCreated(TaskCreated {
            child_tid: 12,
            syscall: None,
            clone_flags: None,
        })
    ));
    let exit = ExitEvent {
        header: raw_header(EventKind::TaskExited, -1),
        group_dead: GROUP_DEAD_UNKNOWN,
        _pad: 0,
    };
    assert!(matches!(
        decode(&as_bytes(&exit)).unwrap().event.body,
        EventBody::TaskExited(TaskExited { group_dead: None })
    ));
}

/// A failed close carries the number it named and its stack; a failed dup2 also the number
/// it copied onto, sign-extended as the kernel wrote it.
#[test]
fn decodes_failed_closes() {
    let event = |syscall: Syscall, arg0: u64| FdEvent {
        header: raw_header(EventKind::CloseFailed, 4),
        fd: 9,
        syscall: syscall as u32,
        arg0,
        arg1: 0,
        arg2: 0,
        stack: StackRegs {
            sp: 0x7ff0,
            bp: 0,
            ip: 0x1234,
            len: 16,
            memo: 0,
        },
    };
    let record = with_stack(&event(Syscall::Close, u64::MAX), &[1; 16]);
    let close = decode(&record).unwrap();
    assert_eq!(
        close.event.body,
        EventBody::CloseFailed(CloseFailed {
            fd: 9,
            syscall: Syscall::Close,
            target: None,
        })
    );
    assert_eq!(close.stack_top.map(|t| t.bytes.len()), Some(16));
    let record = with_stack(&event(Syscall::Dup2, 5), &[1; 16]);
    let dup2 = decode(&record).unwrap();
    assert_eq!(
        dup2.event.body,
        EventBody::CloseFailed(CloseFailed {
            fd: 9,
            syscall: Syscall::Dup2,
            target: Some(5),
        })
    );
}

/// A Python walk decodes to its frames, innermost first; a record shorter than its count
/// says is an error.
#[test]
fn decodes_python_stacks() {
    use tracer_common::python::{PY_TRUNCATED, PyFrameRecord, PyStackEvent};
    let raw = PyStackEvent {
        header: raw_header(EventKind::PythonStack, -1),
        count: 2,
        flags: PY_TRUNCATED,
    };
    let frame = |code| PyFrameRecord {
        code,
        instr: code + 8,
        fingerprint: 7,
        flags: 3,
        _pad: 0,
    };
    let mut record = as_bytes(&raw);
    record.extend(as_bytes(&frame(0x100)));
    record.extend(as_bytes(&frame(0x200)));
    let decoded = decode(&record).unwrap();
    assert_eq!(
        decoded.event.body,
        EventBody::PythonStack(PythonStack {
            flags: PY_TRUNCATED,
            frames: vec![frame(0x100), frame(0x200)],
        })
    );
    assert!(decoded.stack_top.is_none());
    assert!(decode(&record[..record.len() - 1]).is_err());
}
