//! Where CPython 3.10 to 3.13 keep what the frame walk reads (x86-64): for 3.10 to 3.12 a
//! table measured on pyenv's and Debian's builds (../shared/PYTHON-STACKS.md, §2-§3), for
//! 3.13 the interpreter's own `_Py_DebugOffsets` at the start of `_PyRuntime`.

use tracer_common::python::{PyProcConfig, frame_kind};

/// What userspace reads from code objects and strings, besides what the kernel reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CodeLayout {
    pub filename: u64,
    pub name: u64,
    /// `co_qualname`, absent on 3.10.
    pub qualname: Option<u64>,
    pub linetable: u64,
    pub firstlineno: u64,
    /// `co_code_adaptive` (3.11+): the bytecode, which instruction pointers point into.
    pub code_adaptive: Option<u64>,
    /// Where a compact ASCII `str` keeps its characters (after `PyASCIIObject`).
    pub ascii_data: u64,
    /// Where a compact non-ASCII `str` keeps them (after `PyCompactUnicodeObject`).
    pub compact_data: u64,
}

/// One interpreter version's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub minor: u32,
    pub kernel: PyProcConfig,
    pub code: CodeLayout,
    /// `PyThreadState.interp`, to check the thread list against its interpreter.
    pub tstate_interp: u64,
    /// `PyThreadState.native_thread_id` (3.11+).
    pub native_thread_id: Option<u64>,
}

/// The layout of CPython 3.`minor`, for 3.10 to 3.12 (3.13 comes from [`from_debug_offsets`]).
pub(super) fn builtin(minor: u32) -> Option<Layout> {
    let base = PyProcConfig {
        interp_next: 0,
        tstate_next: 8,
        cframe_current: u32::MAX,
        frame_flag: u32::MAX,
        ..PyProcConfig::default()
    };
    let (kernel, code) = match minor {
        10 => (
            PyProcConfig {
                interpreters_head: 32,
                interp_threads_head: 8,
                tstate_thread_id: 176,
                tstate_frame: 24,
                frame_code: 32,
                frame_back: 24,
                frame_instr: 96,
                code_firstlineno: 40,
                code_filename: 104,
                kind: frame_kind::V310,
                ..base
            },
            CodeLayout {
                filename: 104,
                name: 112,
                qualname: None,
                linetable: 120,
                firstlineno: 40,
                code_adaptive: None,
                ascii_data: 48,
                compact_data: 72,
            },
        ),
        11 => (
            PyProcConfig {
                interpreters_head: 40,
                interp_threads_head: 16,
                tstate_thread_id: 152,
                tstate_frame: 56,
                cframe_current: 8,
                frame_code: 32,
                frame_back: 48,
                frame_instr: 56,
                frame_flag: 68,
                code_firstlineno: 72,
                code_filename: 112,
                kind: frame_kind::V311,
                ..base
            },
            CodeLayout {
                filename: 112,
                name: 120,
                qualname: Some(128),
                linetable: 136,
                firstlineno: 72,
                code_adaptive: Some(184),
                ascii_data: 48,
                compact_data: 72,
            },
        ),
        12 => (
            PyProcConfig {
                interpreters_head: 40,
                interp_threads_head: 72,
                tstate_thread_id: 136,
                tstate_frame: 56,
                cframe_current: 0,
                frame_code: 0,
                frame_back: 8,
                frame_instr: 56,
                frame_flag: 70,
                code_firstlineno: 68,
                code_filename: 112,
                kind: frame_kind::V312,
                cstack_owner: 3,
                ..base
            },
            CodeLayout {
                filename: 112,
                name: 120,
                qualname: Some(128),
                linetable: 136,
                firstlineno: 68,
                code_adaptive: Some(192),
                ascii_data: 40,
                compact_data: 56,
            },
        ),
        _ => return None,
    };
    Some(Layout {
        minor,
        kernel,
        code,
        tstate_interp: 16,
        native_thread_id: (minor >= 11).then(|| u64::from(kernel.tstate_thread_id) + 8),
    })
}

/// The cookie `_Py_DebugOffsets` starts with (3.13+).
pub(super) const DEBUG_COOKIE: &[u8; 8] = b"xdebugpy";

/// The layout from the `_Py_DebugOffsets` that start `_PyRuntime` (3.13; read from the
/// file's `.PyRuntime` section). None for another version or a free-threaded build.
pub(super) fn from_debug_offsets(bytes: &[u8]) -> Option<Layout> {
    let word = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            bytes.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    let small = |i: usize| -> Option<u32> { u32::try_from(word(i)?).ok() };
    if bytes.get(..8)? != DEBUG_COOKIE {
        return None;
    }
    let version = word(1)?;
    let (major, minor) = ((version >> 24) & 0xff, ((version >> 16) & 0xff) as u32);
    // 3.14 moved fields and changed the frame owners and the code reference: not yet.
    if major != 3 || minor != 13 || word(2)? != 0 {
        return None;
    }
    let kernel = PyProcConfig {
        interpreters_head: small(5)?,
        interp_next: small(8)?,
        interp_threads_head: small(9)?,
        tstate_next: small(21)?,
        tstate_thread_id: small(24)?,
        tstate_frame: small(23)?,
        cframe_current: u32::MAX,
        frame_code: small(30)?,
        frame_back: small(29)?,
        frame_instr: small(31)?,
        frame_flag: small(33)?,
        code_firstlineno: small(39)?,
        code_filename: small(35)?,
        kind: frame_kind::V312,
        cstack_owner: 3,
        ..PyProcConfig::default()
    };
    // The kernel reads co_name as the word after co_filename.
    if word(36)? != word(35)? + 8 {
        return None;
    }
    Some(Layout {
        minor,
        kernel,
        code: CodeLayout {
            filename: word(35)?,
            name: word(36)?,
            qualname: Some(word(37)?),
            linetable: word(38)?,
            firstlineno: word(39)?,
            code_adaptive: Some(word(43)?),
            ascii_data: 40,
            compact_data: 56,
        },
        tstate_interp: word(22)?,
        native_thread_id: Some(word(25)?),
    })
}
