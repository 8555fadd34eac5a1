//! The kernel as userspace sees it: the eBPF object loaded and attached to its tracepoints
//! (with the offsets tracefs gives for this kernel), and handles on the maps the programs share
//! with us.

mod btf;
mod host;
mod kernel_log;
mod loader;
mod python_walk;
mod targets;
mod tracefs;
mod verifier;

pub(crate) use loader::{EventRing, LoadError, Probes, load, preflight};
pub(crate) use targets::COMM_LEN;
