//! The pieces of `cargo xtask bench` (see cmd_bench.rs).

pub(crate) mod bpftrace;
pub(crate) mod budgets;
pub(crate) mod capacity;
pub(crate) mod child;
pub(crate) mod cpu_share;
pub(crate) mod floor;
pub(crate) mod forks;
pub(crate) mod load;
pub(crate) mod micro;
pub(crate) mod nginx;
pub(crate) mod print;
pub(crate) mod procstat;
pub(crate) mod profile;
pub(crate) mod python;
pub(crate) mod script;
pub(crate) mod soak;
pub(crate) mod stats;
pub(crate) mod table;
pub(crate) mod tools;
pub(crate) mod tracer;
pub(crate) mod workload;
