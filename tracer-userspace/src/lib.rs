//! tracer: finds descriptor leaks in live processes with eBPF.
//!
//! Data flows one way: kernel probe → ring buffer → [`events`] decoder → [`aggregator`]
//! (per-process descriptor tables) → [`report`]. [`session`] wires the pieces together.

pub mod aggregator;
pub mod cli;
pub mod events;
pub mod kind;
pub mod loader;
pub mod modules;
pub mod names;
pub mod procfs;
pub mod reconciler;
pub mod report;
pub mod session;
pub mod stack_bases;
pub mod stacks;
pub mod symbolize;
pub mod tcp;
pub mod tracefs;
pub mod unwind;
