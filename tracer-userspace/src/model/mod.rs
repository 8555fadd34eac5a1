//! Plain data types that several layers share. They depend on nothing in the crate and do no
//! I/O: the /proc reader, the stack store, the tables and the report all speak them.

mod escape;
mod frame;
mod kind;
mod listed_fd;
mod stack_ref;

pub use escape::escape_bytes;
pub use frame::Frame;
pub use kind::DescriptorKind;
pub use listed_fd::ListedFd;
pub use stack_ref::StackRef;
