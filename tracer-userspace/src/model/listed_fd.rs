//! One entry of `/proc/PID/fd` as the /proc reader lists it and reconciliation compares it.

use super::DescriptorKind;

/// One entry of `/proc/PID/fd`, classified from its link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ListedFd {
    pub fd: i32,
    pub kind: DescriptorKind,
    /// The link as the report shows it (`socket:[INODE]`, a path, ...).
    pub detail: String,
    pub deleted: bool,
}
