//! A frame the kernel saw, named: the code object at its address is read from the live
//! process (as the event arrives: code made by exec() or compile() can be freed and its
//! address reused later), checked to be a code object with the fingerprint the kernel took,
//! and cached by (address, fingerprint).

use foldhash::HashMap;
use tracer_common::python::{PyFrameRecord, frame_kind};

use super::{detect::Interpreter, lines, mem};

/// A Python frame as the report shows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PyFrame {
    /// `co_qualname` (3.11+) or `co_name`; None when the code object could not be read or no
    /// longer matched what the kernel saw.
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// What a code object says, once read.
#[derive(Clone, Debug)]
struct Code {
    function: String,
    file: String,
    firstlineno: i32,
    linetable: Vec<u8>,
}

/// Code objects per process are cached up to this many; then the cache starts over.
const MAX_CODES: usize = 8192;
/// Strings and line tables longer than this are not read (a generated module).
const MAX_STRING: usize = 4096;
const MAX_LINETABLE: usize = 64 << 10;

/// One process's code objects, by (address, fingerprint), and the frames already named, by
/// (address, fingerprint, instruction).
#[derive(Default)]
pub(crate) struct CodeCache {
    codes: HashMap<(u64, u64), Option<Code>>,
    tags: HashMap<(u64, u64, u64), u64>,
}

impl CodeCache {
    pub(crate) fn tag(&self, key: (u64, u64, u64)) -> Option<u64> {
        self.tags.get(&key).copied()
    }

    pub(crate) fn remember(&mut self, key: (u64, u64, u64), tag: u64) {
        if self.tags.len() >= MAX_CODES * 4 {
            self.tags.clear();
        }
        self.tags.insert(key, tag);
    }

    pub(crate) fn frame(
        &mut self,
        pid: u32,
        interp: &Interpreter,
        record: &PyFrameRecord,
    ) -> PyFrame {
        if self.codes.len() >= MAX_CODES {
            self.codes.clear();
        }
        let code = self
            .codes
            .entry((record.code, record.fingerprint))
            .or_insert_with(|| read_code(pid, interp, record))
            .clone();
        let Some(code) = code else {
            return PyFrame {
                function: None,
                file: None,
                line: None,
            };
        };
        let line = line_of(interp, &code, record);
        PyFrame {
            function: Some(code.function),
            file: Some(code.file),
            line,
        }
    }
}

fn line_of(interp: &Interpreter, code: &Code, record: &PyFrameRecord) -> Option<u32> {
    let layout = &interp.layout;
    if layout.kernel.kind == frame_kind::V310 {
        let lasti = record.instr as u32 as i32;
        if lasti < 0 {
            return u32::try_from(code.firstlineno).ok();
        }
        return lines::line_310(&code.linetable, code.firstlineno, 2 * lasti as u64);
    }
    let start = record.code + layout.code.code_adaptive?;
    let unit = record.instr.checked_sub(start)? / 2;
    lines::line_311(&code.linetable, code.firstlineno, unit)
}

/// Reads the code object if it still is the one the kernel saw.
fn read_code(pid: u32, interp: &Interpreter, record: &PyFrameRecord) -> Option<Code> {
    let layout = &interp.layout.code;
    let header = mem::read(pid, record.code, layout.linetable as usize + 8)?;
    if mem::u64_at(&header, 8) != interp.code_type {
        return None;
    }
    let firstlineno = mem::u32_at(&header, layout.firstlineno);
    let filename = mem::u64_at(&header, layout.filename);
    let name = mem::u64_at(&header, layout.name);
    let fingerprint = (u64::from(firstlineno) << 32) | ((filename ^ (name >> 4)) & 0xffff_ffff);
    if fingerprint != record.fingerprint {
        return None;
    }
    let function = layout.qualname.map_or(name, |q| mem::u64_at(&header, q));
    let linetable = mem::u64_at(&header, layout.linetable);
    Some(Code {
        function: read_str(pid, interp, function)?,
        file: read_str(pid, interp, filename)?,
        firstlineno: firstlineno as i32,
        linetable: read_bytes(pid, linetable).unwrap_or_default(),
    })
}

/// A `str` object's text (compact strings: every string a code object names).
fn read_str(pid: u32, interp: &Interpreter, addr: u64) -> Option<String> {
    let layout = &interp.layout.code;
    let header = mem::read(pid, addr, 40)?;
    let length = usize::try_from(mem::u64_at(&header, 16)).ok()?;
    let state = mem::u32_at(&header, 32);
    let (kind, compact, ascii) = ((state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1);
    if compact == 0 || length > MAX_STRING {
        return None;
    }
    if ascii == 1 {
        let data = mem::read(pid, addr + layout.ascii_data, length.max(1))?;
        return String::from_utf8(data[..length].to_vec()).ok();
    }
    let width = kind as usize;
    if !matches!(width, 1 | 2 | 4) {
        return None;
    }
    let data = mem::read(pid, addr + layout.compact_data, (length * width).max(1))?;
    Some(
        data.chunks_exact(width)
            .take(length)
            .filter_map(|c| {
                let mut code = [0u8; 4];
                code[..width].copy_from_slice(c);
                char::from_u32(u32::from_le_bytes(code))
            })
            .collect(),
    )
}

/// A `bytes` object's contents (`ob_size` at 16, data at 32).
fn read_bytes(pid: u32, addr: u64) -> Option<Vec<u8>> {
    let size = usize::try_from(mem::read_u64(pid, addr + 16)?).ok()?;
    if size == 0 || size > MAX_LINETABLE {
        return None;
    }
    mem::read(pid, addr + 32, size)
}
