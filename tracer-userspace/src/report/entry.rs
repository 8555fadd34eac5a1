//! One descriptor of the tables as the report shows it: how it was opened and learned, typed
//! until serde writes them.

use std::sync::Arc;

use super::{DescriptorEntry, LearnedBy, OpenedBy, seconds};
use crate::aggregator::{Descriptor, Origin};

/// The report entry of descriptor `d` of `pid` at `now_ns`.
pub(super) fn entry(pid: u32, d: &Descriptor, now_ns: u64, at_exit: bool) -> DescriptorEntry {
    DescriptorEntry {
        pid,
        fd: d.fd,
        kind: d.kind,
        detail: d.detail.clone(),
        tcp_state: d.tcp_state.clone(),
        tcp_state_age_s: None,
        deleted: d.deleted,
        opened_by: opened_by(d.origin, d.inherited),
        learned_by: learned_by(d.origin),
        tid: d.tid,
        age_s: seconds(now_ns.saturating_sub(d.opened_at_ns)),
        at_exit,
        stack_id: d.stack.map(|s| s.id),
        stack: Arc::default(),
        path_truncated: d.path_truncated,
        cloexec: d.cloexec,
        size_bytes: None,
        held_file: None,
        stack_ref: d.stack,
    }
}

/// A descriptor open before attach stays `pre-existing` in the children that inherit it; one
/// that came into a parent while traced is `inherited` in its children.
pub(super) fn opened_by(origin: Origin, inherited: bool) -> OpenedBy {
    match (origin, inherited) {
        (Origin::PreExisting, _) => OpenedBy::PreExisting,
        (_, true) => OpenedBy::Inherited,
        (Origin::Reconciled, false) => OpenedBy::Unknown,
        (Origin::Syscall(syscall), false) => OpenedBy::Syscall(syscall),
    }
}

/// How the tracer came to know of a descriptor with this origin.
pub(super) fn learned_by(origin: Origin) -> LearnedBy {
    match origin {
        Origin::Syscall(_) => LearnedBy::Event,
        Origin::PreExisting => LearnedBy::Attach,
        Origin::Reconciled => LearnedBy::Reconciliation,
    }
}
