//! What the report asks of the world outside the tables, behind a trait so that building the
//! report stays pure: the session answers from the kernel maps, blazesym and /proc, tests with
//! fixed answers.

use super::{DescriptorEntry, FrameEntry};
use crate::model::{Frame, StackRef};

/// What the report needs from outside the aggregator: stacks as frames, and /proc's view of
/// descriptors that are still open. The session implements it with the kernel maps, blazesym
/// and /proc; tests with fixed answers.
pub(crate) trait Resolver {
    fn frames(&mut self, stack: StackRef) -> Vec<Frame>;
    /// Updates live descriptors of `pid` from /proc (detail, TCP state, deleted) and returns
    /// the fds that turned out to be closed already.
    fn refresh(&mut self, pid: u32, descriptors: &mut [DescriptorEntry]) -> Vec<i32>;
    /// Whether `pid` is still a zombie child of `ppid` (exited, not reaped).
    fn is_zombie(&mut self, pid: u32, ppid: u32) -> bool;
    /// Where a live process sits: its pid in its own PID namespace, its cgroup and container.
    fn placement(&mut self, _pid: u32) -> Placement {
        Placement::default()
    }
}

/// A process's pid in its own PID namespace (when not the tracer's), its cgroup v2 path
/// (when not the root) and the container that path names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Placement {
    pub nspid: Option<u32>,
    pub cgroup: Option<String>,
    pub container: Option<String>,
}

/// The frames of a stack, for the report; none when there is no stack.
pub(super) fn frames_of(stack: Option<StackRef>, resolver: &mut impl Resolver) -> Vec<FrameEntry> {
    stack
        .map(|s| {
            resolver
                .frames(s)
                .into_iter()
                .map(FrameEntry::from)
                .collect()
        })
        .unwrap_or_default()
}
