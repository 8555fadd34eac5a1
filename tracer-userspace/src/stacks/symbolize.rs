//! Turning stack addresses into function, file and line with blazesym, once per stack.
//!
//! Names are demangled (Rust, C++); file and line come from DWARF, in the binary or in a
//! separate debug file that blazesym finds through the binary's build id or debug link under
//! /usr/lib/debug (where distro `-dbg`/`-dbgsym` packages install them). A function inlined
//! at a call site becomes a frame of its own, marked `inlined`, so an -O2 or Rust release
//! build still shows the function that made the call.

use std::collections::HashMap;

use blazesym::symbolize::{
    CodeInfo, Input, Symbolized, Symbolizer,
    source::{Elf, Source},
};

use super::modules::ModuleMap;
use crate::model::{Frame, StackRef};

/// Symbolizes stacks from the module maps captured while their process lived, so stacks of
/// processes that have exited or exec'd since still resolve. blazesym caches parsed ELF and
/// DWARF across calls; each distinct stack is resolved once.
pub(super) struct StackSymbolizer {
    symbolizer: Symbolizer,
    cache: HashMap<StackRef, Vec<Frame>>,
}

impl Default for StackSymbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl StackSymbolizer {
    pub(super) fn new() -> Self {
        Self {
            symbolizer: Symbolizer::builder()
                .enable_demangling(true)
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .build(),
            cache: HashMap::new(),
        }
    }

    /// Stacks whose frames are cached, for the debug log of table sizes.
    pub(super) fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Keeps the cached frames of the stacks `keep` accepts.
    pub(super) fn retain(&mut self, keep: impl Fn(&StackRef) -> bool) {
        self.cache.retain(|stack, _| keep(stack));
    }

    /// Drops the frames cached for stacks of processes that are gone: a session that builds
    /// reports while it runs (snapshots) would otherwise keep one entry per process ever
    /// named in one (a child's inherited descriptors, its fork stack).
    pub(super) fn forget(&mut self, gone: &[u32]) {
        if gone.is_empty() {
            return;
        }
        let gone: std::collections::HashSet<u32> = gone.iter().copied().collect();
        self.cache.retain(|stack, _| !gone.contains(&stack.pid));
    }

    /// Frames for the instruction pointers `ips` (innermost first) of `stack`, looked up in
    /// `modules`; code in anonymous memory by `jit_name` (the process's perf map), as module
    /// [`PERF_MAP_MODULE`]. Other addresses outside any file-backed mapping, or in files
    /// without symbols, keep just their address.
    pub(super) fn frames<'n>(
        &mut self,
        stack: StackRef,
        ips: &[u64],
        modules: &ModuleMap,
        python: impl Fn(u64) -> Option<Frame>,
        jit_name: impl Fn(u64) -> Option<&'n str>,
    ) -> Vec<Frame> {
        if let Some(frames) = self.cache.get(&stack) {
            return frames.clone();
        }
        let frames: Vec<Frame> = ips
            .iter()
            .enumerate()
            .flat_map(|(i, &ip)| {
                if let Some(frame) = python(ip) {
                    return vec![frame];
                }
                // Every frame but the innermost holds a return address, which points after
                // the call; the byte before it is the call itself (right function and line
                // even when the call ends its function).
                let lookup = super::repair::lookup_address(i, ip);
                if modules.is_anonymous_code(lookup) {
                    return vec![jit_frame(ip, jit_name(lookup))];
                }
                self.resolve(ip, lookup, modules)
            })
            .collect();
        self.cache.insert(stack, frames.clone());
        frames
    }

    /// The frames of one address: the functions inlined there, innermost first, then the
    /// function that holds the code.
    fn resolve(&self, ip: u64, lookup: u64, modules: &ModuleMap) -> Vec<Frame> {
        let Some((mapping, offset)) = modules.file_offset(lookup) else {
            return vec![Frame::unknown(ip)];
        };
        let module = mapping.path.to_string_lossy().into_owned();
        let source = Source::Elf(Elf::new(mapping.file()));
        let symbolized = self
            .symbolizer
            .symbolize_single(&source, Input::FileOffset(offset));
        let unknown = || Frame {
            module: Some(module.clone()),
            ..Frame::unknown(ip)
        };
        match symbolized {
            Ok(Symbolized::Sym(sym)) => {
                let place =
                    |info: Option<&CodeInfo>| (info.map(source_file), info.and_then(|i| i.line));
                let mut frames: Vec<Frame> = sym
                    .inlined
                    .iter()
                    .rev()
                    .map(|inlined| {
                        let (file, line) = place(inlined.code_info.as_ref());
                        Frame {
                            addr: ip,
                            symbol: Some(inlined.name.to_string()),
                            module: Some(module.clone()),
                            file,
                            line,
                            inlined: true,
                            python: false,
                        }
                    })
                    .collect();
                let (file, line) = place(sym.code_info.as_deref());
                frames.push(Frame {
                    addr: ip,
                    symbol: Some(sym.name.to_string()),
                    module: Some(module.clone()),
                    file,
                    line,
                    inlined: false,
                    python: false,
                });
                frames
            }
            Ok(Symbolized::Unknown(_)) => vec![unknown()],
            Err(err) => {
                log::debug!("cannot symbolize {ip:#x} in {module}: {err}");
                vec![unknown()]
            }
        }
    }
}

/// The module JSON frames of JIT code named from a perf map carry (`"module": "[perf-map]"`),
/// in the style of `[vdso]` in /proc/PID/maps.
pub(crate) const PERF_MAP_MODULE: &str = "[perf-map]";

/// A frame in anonymous executable memory: named from the perf map when it names the code.
fn jit_frame(ip: u64, name: Option<&str>) -> Frame {
    match name {
        Some(name) => Frame {
            symbol: Some(name.to_owned()),
            module: Some(PERF_MAP_MODULE.to_owned()),
            ..Frame::unknown(ip)
        },
        None => Frame::unknown(ip),
    }
}

/// The source file of a frame: its full path when the compiler recorded an absolute
/// directory, else the file as recorded (distro libraries are built in a directory the
/// reader does not have: `./socket/../sysdeps/...`).
fn source_file(info: &CodeInfo) -> String {
    let absolute = info.dir.as_deref().is_some_and(|dir| dir.is_absolute());
    if absolute {
        info.to_path().to_string_lossy().into_owned()
    } else {
        info.file.to_string_lossy().into_owned()
    }
}
