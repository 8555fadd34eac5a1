//! The pieces of `cargo xtask bench` (see cmd_bench.rs).

pub mod bpftrace;
pub mod budgets;
pub mod capacity;
pub mod child;
pub mod micro;
pub mod nginx;
pub mod print;
pub mod procstat;
pub mod profile;
pub mod stats;
pub mod table;
pub mod tools;
pub mod tracer;
pub mod workload;
