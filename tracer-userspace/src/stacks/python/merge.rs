//! Python frames into the native stack: in front of each `_PyEval_EvalFrameDefault`
//! activation (which stays, as every native frame does), the Python frames it ran, innermost
//! first, up to and including the first frame of its run (3.10: one frame per activation; 3.11+: calls between Python functions
//! stay in one activation). Python frames left over when the native walk ended early (a deep
//! stack the copy did not hold) follow the native frames, as py-spy does.

use super::{Pending, detect::Interpreter};

pub(crate) fn merge(native: &[u64], pending: &Pending, interp: &Interpreter) -> Vec<u64> {
    let in_eval = |ip: u64| {
        interp
            .eval
            .iter()
            .any(|&(start, end)| ip > start && ip <= end)
    };
    let mut out = Vec::with_capacity(native.len() + pending.frames.len() + 1);
    let mut python = pending.frames.iter().peekable();
    for (i, &ip) in native.iter().enumerate() {
        // Return addresses point after the call: look up the byte before (not for the
        // innermost frame, which is the syscall's own address).
        let lookup = if i == 0 { ip + 1 } else { ip };
        if python.peek().is_some() && in_eval(lookup) {
            for &(tag, entry) in python.by_ref() {
                out.push(tag);
                if entry {
                    break;
                }
            }
        }
        out.push(ip);
    }
    out.extend(python.map(|&(tag, _)| tag));
    // The cut is where the Python frames end: the outer ones were not walked.
    if let Some(cut) = pending.cut {
        let at = out
            .iter()
            .rposition(|&a| super::is_tag(a))
            .map_or(out.len(), |i| i + 1);
        out.insert(at, cut);
    }
    out
}
