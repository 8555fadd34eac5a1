//! The identity of a captured user stack, shared by the tables, the stack store and the report.

/// A user stack: its id (see `stacks::StackStore`), and the process and program image (exec
/// generation) whose address space it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct StackRef {
    pub id: u32,
    pub pid: u32,
    pub generation: u32,
}

/// Ids with this bit set are pending stacks: a birth's stack kept raw, not yet unwound (see
/// `stacks/deferred.rs`). They only ever stand in a table for its descriptor until the
/// session replaces them with the unwound stack's id, or among the table's previous lives.
pub(crate) const PENDING_STACK: u32 = 1 << 31;

impl StackRef {
    /// A stack not unwound yet: its id names the raw copy, not a stack.
    pub(crate) fn is_pending(&self) -> bool {
        self.id & PENDING_STACK != 0
    }
}
