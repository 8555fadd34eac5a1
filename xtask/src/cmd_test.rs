//! `cargo xtask test`: release build, unit tests, then the root-only integration tests, on
//! the host kernel and, with `--vm`, on other kernels booted under QEMU.

use std::{
    ffi::OsString,
    path::Path,
    process::{Command, ExitCode},
    time::Duration,
};

use anyhow::{Result, bail};
use clap::Args;

use crate::{
    bootstrap::{self, Needs},
    cmd_build::{Profile, build_tracer},
    process::{self, is_root},
    vm,
};

/// Bootstrap, build the tracer (release), run the unit tests, then the integration tests.
///
/// The integration tests load eBPF programs and trace real processes, so they need root;
/// they run one at a time against target/release/tracer (passed as TRACER_BIN).
///
/// With --vm the integration tests then run again inside each named kernel (Debian kernel
/// packages, fetched with apt and cached), booted under QEMU.
///
/// Examples: `cargo xtask test`, `cargo xtask test --unit-only`,
/// `cargo xtask test -- leak_open -- --nocapture`, `cargo xtask test --vm`,
/// `cargo xtask test --vm linux-image-6.12-cloud-amd64 -- -- prefork` (host and guest run
/// the tests whose name has "prefork").
#[derive(Args)]
pub(crate) struct Options {
    /// Run only the unit tests (no root needed)
    #[arg(long, conflicts_with = "vm")]
    pub unit_only: bool,

    /// Also run the integration tests in VMs, one per KERNEL (a Debian kernel image
    /// package; default: the newest linux-image-6.1.0-N-cloud-amd64)
    #[arg(long, value_name = "KERNEL", num_args = 0..)]
    pub vm: Option<Vec<String>>,

    /// Seconds one VM may run (boot and whole suite) before it is killed
    #[arg(long, value_name = "SECS", default_value_t = 1200)]
    pub vm_timeout: u64,

    /// Extra arguments for `cargo test` (e.g. a test name filter); those after a second `--`
    /// go to the test binaries (e.g. --nocapture)
    #[arg(last = true)]
    pub extra: Vec<OsString>,
}

/// The package at tests/: the integration tests.
const INTEGRATION_PACKAGE: &str = "tracer-tests";

pub(crate) fn run(options: Options) -> Result<ExitCode> {
    if !options.unit_only && !is_root() {
        bail!(
            "the integration tests need root (CAP_BPF/CAP_PERFMON): run `cargo xtask test` \
             as root, or pass --unit-only"
        );
    }
    let extra = ExtraArgs::split(&options.extra);
    bootstrap::run(Needs {
        // Only the integration tests compile C fixtures.
        c_compiler: !options.unit_only,
        servers: !options.unit_only,
        vm: options.vm.is_some(),
    })?;

    let mut summary = Summary::default();
    let Some(binary) = summary.record("build", build_tracer(Profile::Release)) else {
        summary.skip("unit tests", "build failed");
        summary.skip("integration tests", "build failed");
        return Ok(summary.finish());
    };
    summary.record("unit tests", unit_tests(&extra));
    if options.unit_only {
        summary.skip("integration tests", "--unit-only");
        return Ok(summary.finish());
    }
    let host = summary.record("integration tests", integration_tests(&binary, &extra));
    if let Some(kernels) = &options.vm {
        if host.is_none() {
            summary.skip("VM tests", "the integration tests failed on the host");
        } else {
            let run = vm::VmRun {
                kernels,
                tracer: &binary,
                cargo_args: extra.cargo,
                harness_args: extra.harness,
                timeout: Duration::from_secs(options.vm_timeout),
            };
            summary.record("VM tests", vm::run(&run));
        }
    }
    Ok(summary.finish())
}

/// `cargo xtask test -- A -- B`: A goes to cargo test, B to the test binaries. We add our
/// own harness arguments, so the two halves are kept apart rather than passed through.
struct ExtraArgs<'a> {
    cargo: &'a [OsString],
    harness: &'a [OsString],
}

impl<'a> ExtraArgs<'a> {
    fn split(extra: &'a [OsString]) -> Self {
        match extra.iter().position(|arg| arg == "--") {
            Some(at) => ExtraArgs {
                cargo: &extra[..at],
                harness: &extra[at + 1..],
            },
            None => ExtraArgs {
                cargo: extra,
                harness: &[],
            },
        }
    }
}

fn unit_tests(extra: &ExtraArgs) -> Result<()> {
    let mut cmd = process::cargo();
    // --workspace would take in the eBPF crate, which only builds for the bpf target, and
    // the integration tests, which run in their own phase.
    cmd.args(["test", "--workspace", "--exclude", INTEGRATION_PACKAGE])
        .args(["--exclude", "tracer-ebpf"])
        .args(extra.cargo);
    if !extra.harness.is_empty() {
        cmd.arg("--").args(extra.harness);
    }
    run_phase("unit tests", &mut cmd)
}

fn integration_tests(binary: &Path, extra: &ExtraArgs) -> Result<()> {
    let mut cmd = process::cargo();
    // One at a time: tests attach probes and count descriptors of processes they start,
    // and a parallel test's children would blur those counts.
    cmd.args(["test", "--release", "--package", INTEGRATION_PACKAGE])
        .args(extra.cargo)
        .args(["--", "--test-threads=1"])
        .args(extra.harness)
        .env("TRACER_BIN", binary);
    run_phase("integration tests", &mut cmd)
}

/// Runs one test phase under a header line; the tests' own output is the result, so it
/// keeps its stdout.
fn run_phase(name: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("==> {name}: {}", process::describe(cmd));
    let status = process::status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status})", process::describe(cmd));
    }
    Ok(())
}

/// What happened in each phase, for the closing summary line.
#[derive(Default)]
struct Summary {
    phases: Vec<(&'static str, String)>,
    failed: bool,
}

impl Summary {
    /// Notes how `phase` went, reporting a failure at once, and passes its value on.
    fn record<T>(&mut self, phase: &'static str, result: Result<T>) -> Option<T> {
        match result {
            Ok(value) => {
                self.phases.push((phase, "ok".to_owned()));
                Some(value)
            }
            Err(err) => {
                eprintln!("error: {phase}: {err:#}");
                self.phases.push((phase, "FAILED".to_owned()));
                self.failed = true;
                None
            }
        }
    }

    fn skip(&mut self, phase: &'static str, why: &str) {
        self.phases.push((phase, format!("skipped ({why})")));
    }

    fn finish(self) -> ExitCode {
        let phases: Vec<String> = self
            .phases
            .iter()
            .map(|(phase, outcome)| format!("{phase} {outcome}"))
            .collect();
        eprintln!("==> summary: {}", phases.join(", "));
        if self.failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    /// Without a second `--` everything goes to cargo test.
    #[test]
    fn extra_args_without_separator_go_to_cargo() {
        let extra = args(&["leak_open", "--no-fail-fast"]);
        let split = ExtraArgs::split(&extra);
        assert_eq!(split.cargo, args(&["leak_open", "--no-fail-fast"]));
        assert!(split.harness.is_empty());
    }

    /// Arguments after a second `--` go to the test binaries, without the `--` itself.
    #[test]
    fn extra_args_after_separator_go_to_harness() {
        let extra = args(&["leak_open", "--", "--nocapture"]);
        let split = ExtraArgs::split(&extra);
        assert_eq!(split.cargo, args(&["leak_open"]));
        assert_eq!(split.harness, args(&["--nocapture"]));
    }
}
