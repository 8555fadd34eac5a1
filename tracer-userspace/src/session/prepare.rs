//! Decoding a ring buffer record and what needs no descriptor table: stacks unwound, or
//! deferred, while the process still lives.

use tracer_common::CLONE_THREAD;

use crate::{
    capture::Probes,
    events::{self, Decoded, Event, EventBody, TaskCreated},
    procfs,
    stacks::{DeferredStack, PythonUpdates, StackStore},
};

/// Records read and records that could not be decoded.
#[derive(Default)]
pub(super) struct RecordCounts {
    pub(super) received: u64,
    pub(super) undecodable: u64,
}

/// A decoded event ready for the tables, and its stack's raw copy when its unwinding is
/// deferred (queued once the event is applied).
pub(super) struct Prepared {
    pub event: Event,
    /// Boxed: most events have none, and prepared events are moved along the pipeline.
    pub deferred: Option<Box<DeferredStack>>,
}

/// Decodes a record and does what needs no descriptor table, so that it can also run while
/// the tables are being listed: tells whether a task the kernel created by itself is a
/// thread, and replaces the stack (registers and copied bytes) with the id of the unwound
/// one, or with a pending id and a copy of the bytes (see `stacks/deferred.rs`). The event
/// is then applied with `State::apply_event`.
pub(super) fn prepare(
    stacks: &mut StackStore,
    probes: &Probes,
    records: &mut RecordCounts,
    record: &[u8],
) -> Option<Prepared> {
    records.received += 1;
    let Decoded {
        mut event,
        stack_top,
    } = match events::decode(record) {
        Ok(decoded) => decoded,
        Err(err) => {
            records.undecodable += 1;
            log::warn!("undecodable event: {err}");
            return None;
        }
    };
    if let EventBody::TaskCreated(TaskCreated {
        child_tid,
        clone_flags: clone_flags @ None,
        ..
    }) = &mut event.body
    {
        // Created inside the kernel (no clone call seen): /proc says if it is a thread.
        let is_thread = procfs::process_info(*child_tid).is_ok_and(|i| i.tgid == event.header.tgid);
        *clone_flags = Some(if is_thread { CLONE_THREAD } else { 0 });
    }
    if let EventBody::PythonStack(walk) = &event.body {
        // Kept for the thread's next event, which the kernel sent right after it.
        stacks.python_walked(event.header.tgid, event.header.tid, walk);
        return None;
    }
    let deferred = stacks.annotate(&mut event, stack_top, probes).map(Box::new);
    apply_python_updates(probes, stacks.take_python_updates());
    send_stack_updates(stacks, probes);
    Some(Prepared { event, deferred })
}

/// Writes interpreter layouts and thread states into the kernel's maps.
pub(super) fn apply_python_updates(probes: &Probes, updates: PythonUpdates) {
    for (tgid, config) in updates.procs {
        probes.set_python(tgid, &config);
    }
    for (tid, tstate) in updates.threads {
        probes.set_python_thread(tid, tstate);
    }
}

/// Tells the kernel the stack bases learned or unlearned by the last walks, and the walks
/// given to it or taken back (`stacks/given.rs`).
pub(super) fn send_stack_updates(stacks: &mut StackStore, probes: &Probes) {
    for (tid, base) in stacks.take_stack_base_updates() {
        probes.set_stack_base(tid, base);
    }
    for (key, memo) in stacks.take_given_updates() {
        probes.set_stack_memo(key, memo.as_ref());
    }
    // After the map changed: a CPU's copy made before it is stale from now on.
    if stacks.take_walks_taken_back() {
        probes.memos_taken_back();
    }
}
