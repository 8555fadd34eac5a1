//! Turning stack addresses into function, file and line with blazesym, once per stack.

use std::collections::HashMap;

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Source},
};

use crate::{aggregator::StackRef, unwind::ModuleMap};

/// One frame of a user stack, as the report shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub addr: u64,
    pub symbol: Option<String>,
    pub module: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

impl Frame {
    pub fn unknown(addr: u64) -> Self {
        Self {
            addr,
            symbol: None,
            module: None,
            file: None,
            line: None,
        }
    }
}

/// Symbolizes stacks from the module maps captured while their process lived, so stacks of
/// processes that have exited or exec'd since still resolve. blazesym caches parsed ELF and
/// DWARF across calls; each distinct stack is resolved once.
pub struct StackSymbolizer {
    symbolizer: Symbolizer,
    cache: HashMap<StackRef, Vec<Frame>>,
}

impl Default for StackSymbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl StackSymbolizer {
    pub fn new() -> Self {
        Self {
            symbolizer: Symbolizer::new(),
            cache: HashMap::new(),
        }
    }

    /// Frames for the instruction pointers `ips` (innermost first) of `stack`, looked up in
    /// `modules`. Addresses outside any file-backed mapping, or in files without symbols,
    /// keep just their address.
    pub fn frames(&mut self, stack: StackRef, ips: &[u64], modules: &ModuleMap) -> Vec<Frame> {
        if let Some(frames) = self.cache.get(&stack) {
            return frames.clone();
        }
        let frames: Vec<Frame> = ips
            .iter()
            .enumerate()
            .map(|(i, &ip)| {
                // Every frame but the innermost holds a return address, which points after
                // the call; the byte before it is the call itself (right function and line
                // even when the call ends its function).
                let lookup = if i == 0 { ip } else { ip.saturating_sub(1) };
                self.resolve(ip, lookup, modules)
            })
            .collect();
        self.cache.insert(stack, frames.clone());
        frames
    }

    fn resolve(&self, ip: u64, lookup: u64, modules: &ModuleMap) -> Frame {
        let Some((mapping, offset)) = modules.file_offset(lookup) else {
            return Frame::unknown(ip);
        };
        let module = mapping.path.to_string_lossy().into_owned();
        let source = Source::Elf(Elf::new(&mapping.path));
        let symbolized = self
            .symbolizer
            .symbolize_single(&source, Input::FileOffset(offset));
        match symbolized {
            Ok(Symbolized::Sym(sym)) => Frame {
                addr: ip,
                symbol: Some(sym.name.to_string()),
                module: Some(module),
                file: sym
                    .code_info
                    .as_ref()
                    .map(|info| info.file.to_string_lossy().into_owned()),
                line: sym.code_info.as_ref().and_then(|info| info.line),
            },
            Ok(Symbolized::Unknown(_)) => Frame {
                module: Some(module),
                ..Frame::unknown(ip)
            },
            Err(err) => {
                log::debug!("cannot symbolize {ip:#x} in {module}: {err}");
                Frame {
                    module: Some(module),
                    ..Frame::unknown(ip)
                }
            }
        }
    }
}
