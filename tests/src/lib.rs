//! Shared harness for the tracer's integration tests.
//!
//! The tests run the real `tracer` binary (built by `cargo xtask test`, found through
//! `TRACER_BIN`) as root against small C fixtures from `tests/fixtures/`, and check the JSON
//! report described in "Report contract (v1)" of `shared/DESIGN.md`.
//!
//! Rules every helper follows: each wait has a timeout, every spawned process is killed when
//! its handle is dropped, and each failure message carries what is needed to debug it (the
//! tracer's stderr, its stdout or report, the fixture's output). Helpers that panic for their
//! caller are `#[track_caller]`, so a failure points at the test's line.
//!
//! The modules, by concern (everything a test uses is re-exported here):
//! - `env`: the workspace, the tracer binary, scratch directories, the root check;
//! - `fixture_build`: compiling the C fixtures (or taking prebuilt ones);
//! - `procs`: waiting, signals, and what `/proc` says about processes;
//! - `fixture`: [`Fixture`], a running fixture process;
//! - `pythons`: the pyenv CPython interpreters the Python tests run;
//! - `tracer`: [`Tracer`], a running tracer;
//! - `tracer_output`: [`TracerOutput`], what a finished tracer left, and one-shot runs;
//! - `report_view`: [`Report`], a typed view of the JSON report, and [`Filter`];
//! - `pipes`: the threads that read children's output (internal).

mod env;
mod fixture;
mod fixture_build;
mod pipes;
mod procs;
mod pythons;
mod report_view;
mod tracer;
mod tracer_output;

pub use env::{require_root, scratch_dir, tracer_bin, unique_dir, workspace_dir};
pub use fixture::Fixture;
pub use fixture_build::{
    FIXTURE_CFLAGS, FIXTURE_VARIANTS, FIXTURES, PREBUILT_FIXTURES_ENV, build_all_fixtures,
    build_fixture, prebuilt_fixtures_dir,
};
pub use procs::{
    children_of, fd_count, pid_exists, signal, unused_pid, wait_child, wait_stopped, wait_until,
};
pub use pythons::{PyenvPython, pyenv_pythons, pyenv_root};
pub use report_view::{
    Descriptor, Filter, Process, REPORT_EXCERPT, Report, excerpt, frames_symbols, stack_symbols,
    symbol_is,
};
pub use serde_json;
pub use tracer::{ATTACH_TIMEOUT, STOP_TIMEOUT, Tracer};
pub use tracer_output::{TracerOutput, run_with_timeout, tracer_command};
