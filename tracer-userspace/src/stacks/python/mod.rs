//! CPython frames in the stacks: which processes run an interpreter the kernel can walk
//! (`detect`, `layout`), the frames the kernel sent named as they arrive (`resolve`,
//! `lines`), and merged into the native stack where `_PyEval_EvalFrameDefault` ran them
//! (`merge`). Python frames live in the interned stacks as tagged addresses (see [`tag`]),
//! so stack ids, grouping and the report's stacks carry them like any frame.

mod detect;
mod layout;
mod lines;
mod mem;
mod merge;
mod resolve;
mod threads;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use foldhash::HashMap;
use tracer_common::python::{PY_NO_THREAD, PY_READ_FAILED, PY_TRUNCATED, PyProcConfig, frame_kind};

use self::{detect::Found, resolve::CodeCache};
pub(crate) use self::{detect::Interpreter, merge::merge, resolve::PyFrame};
use super::modules::ModuleMap;
use crate::{events::PythonStack, model::Frame};

/// Python frames are kept in stacks as `TAG | index`: no user address has these bits set.
const TAG: u64 = 0xffff_f000_0000_0000;
const TAG_MASK: u64 = 0xffff_f000_0000_0000;

/// A process's interpreter, as far as known.
enum State {
    /// Looked at this module map (by its address) and found no interpreter, or one the
    /// tracer cannot walk.
    Not(usize),
    /// CPython before its first interpreter exists: looked at again at its next event.
    NotReady,
    Python(Arc<Interpreter>, CodeCache, Instant),
}

/// How often at most a process's thread lists are read again after the kernel found no
/// thread state for a thread (a thread C code started may never have one).
const RESEED_EVERY: Duration = Duration::from_secs(1);

/// A walked frame: already named (its tag), or named now.
enum Named {
    Tag(u64),
    New((u64, u64, u64), PyFrame),
}

/// What the kernel must be told.
#[derive(Default)]
pub(crate) struct Updates {
    /// Interpreter layouts, by tgid.
    pub procs: Vec<(u32, PyProcConfig)>,
    /// Thread states, by tid.
    pub threads: Vec<(u32, u64)>,
}

/// The frames of the calling thread's last Python walk, named, with what ends each eval
/// call's run of frames, waiting for the event the kernel sent them with.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pending {
    /// Innermost first: (tagged frame, whether the frame is the first one its
    /// `_PyEval_EvalFrameDefault` call ran).
    pub frames: Vec<(u64, bool)>,
    /// The tagged "cut" marker, when the walk stopped at its limit or a failed read.
    pub cut: Option<u64>,
    pub pid: u32,
}

#[derive(Default)]
pub(crate) struct Python {
    procs: HashMap<u32, State>,
    /// By tid; taken by the thread's next event.
    pending: HashMap<u32, Pending>,
    names: Vec<PyFrame>,
    ids: HashMap<PyFrame, u64>,
    updates: Updates,
    /// Processes already said to be Python the tracer cannot walk (said once each).
    warned: foldhash::HashSet<u32>,
}

impl Python {
    /// Looks for an interpreter in `pid`'s modules, unless this module map was looked at.
    pub(crate) fn observe(&mut self, pid: u32, modules: &Arc<ModuleMap>) {
        let key = Arc::as_ptr(modules) as usize;
        match self.procs.get(&pid) {
            Some(State::Python(..)) => return,
            Some(State::Not(seen)) if *seen == key => return,
            _ => {}
        }
        let state = match detect::find(pid, modules) {
            Found::NotPython => {
                log::trace!(
                    "pid {pid}: no CPython in {} mappings",
                    modules.mappings().len()
                );
                State::Not(key)
            }
            Found::NotReady => {
                log::debug!("pid {pid}: CPython has no interpreter yet");
                State::NotReady
            }
            Found::Unsupported(why) => {
                if self.warned.insert(pid) {
                    log::warn!("pid {pid}: Python frames are not captured: {why}");
                }
                State::Not(key)
            }
            Found::Python(interp) => {
                log::info!(
                    "pid {pid}: CPython 3.{} in {}: Python frames captured",
                    interp.layout.minor,
                    interp.module
                );
                let mut config = interp.layout.kernel;
                config.runtime = interp.runtime;
                config.none = interp.none;
                self.updates.procs.push((pid, config));
                self.updates.threads.extend(threads::seed(pid, &interp));
                State::Python(Arc::from(interp), CodeCache::default(), Instant::now())
            }
        };
        self.procs.insert(pid, state);
    }

    /// A forked child runs its parent's interpreter (the kernel copied its layout).
    pub(crate) fn forked(&mut self, parent: u32, child: u32) {
        if let Some(State::Python(interp, ..)) = self.procs.get(&parent) {
            let interp = interp.clone();
            let state = State::Python(interp, CodeCache::default(), Instant::now());
            self.procs.insert(child, state);
        }
    }

    /// Exec or exit: the interpreter is gone (the kernel forgot its layout too).
    pub(crate) fn forget(&mut self, pid: u32) {
        self.procs.remove(&pid);
        self.warned.remove(&pid);
    }

    pub(crate) fn thread_exited(&mut self, tid: u32) {
        self.pending.remove(&tid);
    }

    /// Layouts and thread states found since the last call, for the kernel's maps.
    pub(crate) fn take_updates(&mut self) -> Updates {
        std::mem::take(&mut self.updates)
    }

    /// Names the frames of a walk the kernel sent, now, while their code objects live, and
    /// keeps them for the thread's next event.
    pub(crate) fn walked(&mut self, pid: u32, tid: u32, stack: &PythonStack) {
        let Some(State::Python(interp, codes, seeded)) = self.procs.get_mut(&pid) else {
            return;
        };
        let interp = interp.clone();
        if stack.flags & PY_NO_THREAD != 0 && seeded.elapsed() >= RESEED_EVERY {
            *seeded = Instant::now();
            self.updates.threads.extend(threads::seed(pid, &interp));
        }
        let kernel = &interp.layout.kernel;
        let mut named: Vec<(Named, bool)> = Vec::new();
        for record in &stack.frames {
            let marker = record.flags as u8;
            let shim = kernel.kind == frame_kind::V312
                && (marker == kernel.cstack_owner
                    || record.code == interp.none
                    || record.code == 0);
            if shim {
                if let Some(last) = named.last_mut() {
                    last.1 = true;
                }
                continue;
            }
            let entry = match kernel.kind {
                frame_kind::V310 => true,
                frame_kind::V311 => marker != 0,
                _ => false,
            };
            // A code object at one instruction is one frame: named once.
            let key = (record.code, record.fingerprint, record.instr);
            let frame = match codes.tag(key) {
                Some(tag) => Named::Tag(tag),
                None => Named::New(key, codes.frame(pid, &interp, record)),
            };
            named.push((frame, entry));
        }
        let frames = named
            .into_iter()
            .map(|(frame, entry)| match frame {
                Named::Tag(tag) => (tag, entry),
                Named::New(key, frame) => {
                    let tag = self.intern(frame);
                    if let Some(State::Python(_, codes, _)) = self.procs.get_mut(&pid) {
                        codes.remember(key, tag);
                    }
                    (tag, entry)
                }
            })
            .collect();
        let cut = if stack.flags & (PY_TRUNCATED | PY_READ_FAILED) != 0 {
            let why = if stack.flags & PY_TRUNCATED != 0 {
                format!(
                    "[Python stack cut: deeper than {} frames]",
                    tracer_common::python::MAX_PY_FRAMES
                )
            } else {
                "[Python stack cut: interpreter memory not readable]".to_owned()
            };
            Some(self.intern(PyFrame {
                function: Some(why),
                file: None,
                line: None,
            }))
        } else {
            None
        };
        log::trace!(
            "tid {tid}: {} Python frames (flags {:#x})",
            stack.frames.len(),
            stack.flags
        );
        self.pending.insert(tid, Pending { frames, cut, pid });
    }

    /// The Python frames for the thread's event that just arrived, if its walk came first.
    pub(crate) fn take(&mut self, tid: u32) -> Option<(Pending, Arc<Interpreter>)> {
        let pending = self.pending.remove(&tid)?;
        match self.procs.get(&pending.pid) {
            Some(State::Python(interp, ..)) => Some((pending, interp.clone())),
            _ => None,
        }
    }

    fn intern(&mut self, frame: PyFrame) -> u64 {
        if let Some(&tag) = self.ids.get(&frame) {
            return tag;
        }
        let tag = TAG | self.names.len() as u64;
        self.names.push(frame.clone());
        self.ids.insert(frame, tag);
        tag
    }

    /// The report's frame for a tagged address, or None for a native address.
    pub(crate) fn frame(&self, addr: u64) -> Option<Frame> {
        if addr & TAG_MASK != TAG {
            return None;
        }
        let name = self.names.get((addr & !TAG_MASK) as usize)?;
        Some(Frame {
            addr: 0,
            symbol: Some(
                name.function
                    .clone()
                    .unwrap_or_else(|| "[unknown Python code]".into()),
            ),
            module: None,
            file: name.file.clone(),
            line: name.line,
            inlined: false,
            python: true,
        })
    }

    pub(crate) fn sizes(&self) -> String {
        format!(
            "python processes {}, pending {}, names {}",
            self.procs.len(),
            self.pending.len(),
            self.names.len()
        )
    }
}

/// Whether `addr` is a Python frame's tag.
pub(crate) fn is_tag(addr: u64) -> bool {
    addr & TAG_MASK == TAG
}

#[cfg(test)]
mod tests;
