//! tracer: finds descriptor leaks in live processes with eBPF.
//!
//! Data flows one way: kernel probe -> ring buffer ([`capture`]) -> [`events`] decoder ->
//! [`stacks`] (unwound while the process lives) -> [`aggregator`] (per-process descriptor
//! tables) and [`tcp`] -> [`report`]. [`session`] wires the pieces together and is imported by
//! nothing but `main`. [`model`] holds the plain types the layers share; [`procfs`] reads /proc.

mod aggregator;
mod capture;
mod cli;
mod clock;
mod events;
mod export;
mod host;
#[cfg(test)]
mod layers;
mod model;
mod procfs;
mod report;
mod session;
mod stacks;
mod tcp;

pub use cli::{Config, ConfigError, Options, SnapshotConfig, Target};
pub use session::run;
