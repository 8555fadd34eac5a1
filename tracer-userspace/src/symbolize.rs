//! Turning stack addresses into function, file and line with blazesym, once per stack.

use std::collections::HashMap;

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Process, Source},
};

use crate::aggregator::StackRef;

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

/// Symbolizes stacks in the address space of the process that captured them, caching each
/// stack (and blazesym caches parsed ELF/DWARF files across stacks).
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

    /// Frames for the instruction pointers `ips` (innermost first) of `stack`. Addresses that
    /// cannot be resolved (the process is gone, no symbols) keep just their address.
    pub fn frames(&mut self, stack: StackRef, ips: &[u64]) -> Vec<Frame> {
        if let Some(frames) = self.cache.get(&stack) {
            return frames.clone();
        }
        let frames = self.resolve(stack.pid, ips);
        self.cache.insert(stack, frames.clone());
        frames
    }

    fn resolve(&self, pid: u32, ips: &[u64]) -> Vec<Frame> {
        // Every frame but the innermost holds a return address, which points after the call;
        // looking up the byte before it lands on the call itself (right function and line
        // even when the call is the last instruction of a function).
        let lookup: Vec<u64> = ips
            .iter()
            .enumerate()
            .map(|(i, &ip)| if i == 0 { ip } else { ip.saturating_sub(1) })
            .collect();
        let source = Source::Process(Process::new(pid.into()));
        let symbolized = match self.symbolizer.symbolize(&source, Input::AbsAddr(&lookup)) {
            Ok(symbolized) => symbolized,
            Err(err) => {
                log::debug!("cannot symbolize stack of pid {pid}: {err}");
                return ips.iter().map(|&ip| Frame::unknown(ip)).collect();
            }
        };
        ips.iter()
            .zip(symbolized)
            .map(|(&ip, sym)| match sym {
                Symbolized::Sym(sym) => Frame {
                    addr: ip,
                    symbol: Some(sym.name.to_string()),
                    module: sym.module.map(|m| m.to_string_lossy().into_owned()),
                    file: sym
                        .code_info
                        .as_ref()
                        .map(|info| info.file.to_string_lossy().into_owned()),
                    line: sym.code_info.as_ref().and_then(|info| info.line),
                },
                Symbolized::Unknown(_) => Frame::unknown(ip),
            })
            .collect()
    }
}
