//! Is a process running CPython, which version, and where: the module that defines
//! `_PyRuntime` (the executable for Debian's /usr/bin/python3.11, libpython for pyenv's
//! builds and for embedders such as uWSGI), its load address, and the layout to use, checked
//! against the live process before the kernel is told to walk its frames.

use std::path::Path;

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

use super::{
    layout::{self, DEBUG_COOKIE, Layout},
    mem,
};
use crate::stacks::modules::{Mapping, ModuleMap};

/// What the tracer needs to know of one process's interpreter.
#[derive(Clone, Debug)]
pub(crate) struct Interpreter {
    pub layout: Layout,
    /// Host addresses in the target.
    pub runtime: u64,
    pub code_type: u64,
    pub none: u64,
    /// Where `_PyEval_EvalFrameDefault` (and its `.cold` part) run, for the merge.
    pub eval: Vec<(u64, u64)>,
    pub module: String,
}

/// The outcome of looking at a process's modules.
pub(crate) enum Found {
    /// No module of the process defines `_PyRuntime`.
    NotPython,
    /// CPython, but the tracer cannot walk its frames: why, in one line.
    Unsupported(String),
    /// CPython before `Py_Initialize` made its first interpreter: look again later.
    NotReady,
    Python(Box<Interpreter>),
}

/// Looks for the interpreter among the mapped files whose name says python (the
/// executable, libpython3.X.so, a statically linked python3.X).
pub(crate) fn find(pid: u32, modules: &ModuleMap) -> Found {
    let mut seen: Vec<&Path> = Vec::new();
    for mapping in modules.mappings() {
        let name = mapping
            .path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        if !name.contains("python") || seen.contains(&mapping.path.as_path()) {
            continue;
        }
        seen.push(&mapping.path);
        match from_module(pid, mapping) {
            Found::NotPython => continue,
            found => return found,
        }
    }
    Found::NotPython
}

fn from_module(pid: u32, mapping: &Mapping) -> Found {
    let module = mapping.path.display().to_string();
    let Ok(data) = std::fs::read(mapping.file()) else {
        return Found::NotPython;
    };
    let Ok(file) = object::File::parse(&*data) else {
        return Found::NotPython;
    };
    let symbol = |name: &str| {
        file.dynamic_symbols()
            .chain(file.symbols())
            .find(|s| s.is_definition() && s.name() == Ok(name))
            .map(|s| (s.address(), s.size()))
    };
    let Some((runtime, _)) = symbol("_PyRuntime") else {
        return Found::NotPython;
    };
    let unsupported = |why: String| Found::Unsupported(format!("{module}: {why}"));
    let Some(bias) = load_bias(&file, mapping) else {
        return unsupported("cannot tell where it is loaded".into());
    };
    let layout = match version_and_layout(&file, &module, runtime) {
        Ok(layout) => layout,
        Err(why) => return unsupported(why),
    };
    let (Some((code_type, _)), Some((none, _))) = (symbol("PyCode_Type"), symbol("_Py_NoneStruct"))
    else {
        return unsupported("PyCode_Type or _Py_NoneStruct is not in its symbols".into());
    };
    let eval: Vec<(u64, u64)> = file
        .dynamic_symbols()
        .chain(file.symbols())
        .filter(|s| {
            s.is_definition()
                && s.name().is_ok_and(|n| {
                    n == "_PyEval_EvalFrameDefault" || n.starts_with("_PyEval_EvalFrameDefault.")
                })
        })
        .map(|s| (s.address() + bias, s.address() + bias + s.size().max(1)))
        .collect();
    if eval.is_empty() {
        return unsupported("_PyEval_EvalFrameDefault is not in its symbols".into());
    }
    let interpreter = Interpreter {
        layout,
        runtime: runtime + bias,
        code_type: code_type + bias,
        none: none + bias,
        eval,
        module,
    };
    verify(pid, interpreter)
}

/// Where the file's addresses are in the process: the executable mapping's start, less the
/// address its file offset has in the segment that holds it (0 for a non-PIE executable).
fn load_bias(file: &object::File<'_>, mapping: &Mapping) -> Option<u64> {
    file.segments().find_map(|segment| {
        let (offset, size) = segment.file_range();
        let inside = mapping.file_offset >= offset && mapping.file_offset < offset + size;
        inside.then(|| {
            let address = segment.address() + (mapping.file_offset - offset);
            mapping.start.wrapping_sub(address)
        })
    })
}

/// The version from the debug offsets (3.13+), `Py_Version` (3.11+) or the file name (3.10),
/// and its layout.
fn version_and_layout(
    file: &object::File<'_>,
    module: &str,
    runtime: u64,
) -> Result<Layout, String> {
    if let Some(bytes) = file
        .section_by_name(".PyRuntime")
        .and_then(|s| s.data().ok())
        .filter(|b| b.starts_with(DEBUG_COOKIE))
    {
        let version = mem::u64_at(bytes, 8);
        return layout::from_debug_offsets(bytes).ok_or_else(|| {
            format!(
                "CPython {}.{} (or a free-threaded build) is not supported (3.10 to 3.13 are)",
                version >> 24 & 0xff,
                version >> 16 & 0xff
            )
        });
    }
    let _ = runtime;
    let minor = py_version(file).or_else(|| minor_from_name(module));
    let Some(minor) = minor else {
        return Err("cannot tell its CPython version".into());
    };
    layout::builtin(minor)
        .ok_or_else(|| format!("CPython 3.{minor} is not supported (3.10 to 3.13 are)"))
}

/// `Py_Version` (PY_VERSION_HEX, 3.11+), read from the file.
fn py_version(file: &object::File<'_>) -> Option<u32> {
    let symbol = file
        .dynamic_symbols()
        .chain(file.symbols())
        .find(|s| s.is_definition() && s.name() == Ok("Py_Version"))?;
    let address = symbol.address();
    let section = file
        .sections()
        .find(|s| s.address() <= address && address + 4 <= s.address() + s.size())?;
    let data = section.data().ok()?;
    let hex = mem::u32_at(data, address - section.address());
    (hex >> 24 == 3).then_some((hex >> 16) & 0xff)
}

/// `3.10` in `libpython3.10.so.1.0` or `python3.10`.
fn minor_from_name(module: &str) -> Option<u32> {
    let name = module.rsplit('/').next()?;
    let rest = &name[name.find("python3.")? + "python3.".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Checks the layout against the live process: the code type is named `code` (the load
/// address is right), and the first interpreter's first thread points back at it (the
/// runtime offsets are right).
fn verify(pid: u32, interpreter: Interpreter) -> Found {
    let module = &interpreter.module;
    let type_name = mem::read_u64(pid, interpreter.code_type + 24)
        .and_then(|name| mem::read_cstr(pid, name, 8));
    if type_name.as_deref() != Some(b"code".as_slice()) {
        return Found::Unsupported(format!(
            "{module}: PyCode_Type does not read as the code type: its layout is not the one \
             expected"
        ));
    }
    let kernel = &interpreter.layout.kernel;
    let Some(interp) = mem::read_u64(
        pid,
        interpreter.runtime + u64::from(kernel.interpreters_head),
    ) else {
        return Found::Unsupported(format!("{module}: cannot read _PyRuntime"));
    };
    if interp == 0 {
        return Found::NotReady;
    }
    let thread = mem::read_u64(pid, interp + u64::from(kernel.interp_threads_head)).unwrap_or(0);
    if thread == 0 {
        return Found::NotReady;
    }
    if mem::read_u64(pid, thread + interpreter.layout.tstate_interp) != Some(interp) {
        return Found::Unsupported(format!(
            "{module}: its thread list does not have the layout of CPython 3.{}",
            interpreter.layout.minor
        ));
    }
    Found::Python(Box::new(interpreter))
}
