//! tracer: finds descriptor leaks in live processes with eBPF.
//!
//! Data flows one way: kernel probe -> ring buffer ([`capture`]) -> [`events`] decoder ->
//! [`stacks`] (unwound while the process lives) -> [`aggregator`] (per-process descriptor
//! tables) and [`tcp`] -> [`report`]. [`session`] wires the pieces together and is imported by
//! nothing but `main`. [`model`] holds the plain types the layers share; [`procfs`] reads /proc.

pub mod aggregator;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod events;
#[cfg(test)]
mod layers;
pub mod model;
pub mod procfs;
pub mod report;
pub mod session;
pub mod stacks;
pub mod tcp;
