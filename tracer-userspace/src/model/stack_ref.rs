//! The identity of a captured user stack, shared by the tables, the stack store and the report.

/// A user stack: its id (see `stacks::StackStore`), and the process and program image (exec
/// generation) whose address space it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct StackRef {
    pub id: u32,
    pub pid: u32,
    pub generation: u32,
}
