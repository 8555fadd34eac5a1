//! Plain data types that several layers share. They depend on nothing in the crate and do no
//! I/O: the /proc reader, the stack store, the tables and the report all speak them.

mod escape;
mod frame;
mod kind;
mod listed_fd;
mod rate;
mod stack_ref;

pub(crate) use escape::{escape_bytes, escape_owned};
pub(crate) use frame::Frame;
pub(crate) use kind::DescriptorKind;
pub(crate) use listed_fd::ListedFd;
pub(crate) use rate::{DecayingRate, recent_per_minute};
pub(crate) use stack_ref::{PENDING_STACK, StackRef};
