//! The final report: what is still open, grouped by the stack that opened it, in the shape of
//! the report contract (v1). `contract` holds the serde types and `entry` makes one descriptor
//! into one; [`build()`] assembles the report from the aggregator, with `group` (groups by
//! stack), `at_exit`, `deleted` and `bad_closes` for their sections and `resolver` for what
//! they ask of the live system. [`text`] renders the report for people, serde for scripts,
//! [`flamegraph`] as an SVG.

mod at_exit;
mod bad_closes;
mod build;
mod contract;
mod deleted;
mod entry;
pub(crate) mod flamegraph;
mod group;
pub(crate) mod growth;
mod host;
mod resolver;
pub(crate) mod text;

pub(crate) use bad_closes::{BadCloseEntry, BadCloseGroupEntry, LifeEntry};
pub(crate) use build::{SessionFacts, build};
pub(crate) use contract::*;
pub(crate) use host::{HostProcess, HostSection};
pub(crate) use resolver::{Placement, Resolver};

#[cfg(test)]
pub(crate) mod tests;
