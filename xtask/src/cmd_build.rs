//! `cargo xtask build`: the tracer binary, with its eBPF object embedded.

use std::{path::PathBuf, process::ExitCode, time::Instant};

use anyhow::{Context as _, Result, ensure};
use clap::Args;

use crate::{
    bootstrap::{self, Needs},
    process,
};

/// Bootstrap the toolchain, then build the tracer (leaves target/release/tracer).
///
/// The userspace build script compiles the eBPF programs with nightly and bpf-linker and
/// embeds the object in the binary, so one cargo build does both.
#[derive(Args)]
pub(crate) struct Options {
    /// Build the debug profile instead (target/debug/tracer); the eBPF object is built
    /// with its release profile either way
    #[arg(long)]
    pub debug: bool,
}

/// Cargo profile to build the userspace binary with.
#[derive(Clone, Copy)]
pub(crate) enum Profile {
    Release,
    Debug,
}

impl Profile {
    /// The directory under `target/` that cargo writes this profile to.
    fn dir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
        }
    }
}

pub(crate) fn run(options: Options) -> Result<ExitCode> {
    bootstrap::run(Needs {
        c_compiler: false,
        servers: false,
        vm: false,
    })?;
    let profile = if options.debug {
        Profile::Debug
    } else {
        Profile::Release
    };
    let binary = build_tracer(profile)?;
    println!("tracer built: {}", binary.display());
    Ok(ExitCode::SUCCESS)
}

/// Builds `tracer-userspace` and returns the absolute path of the `tracer` binary.
pub(crate) fn build_tracer(profile: Profile) -> Result<PathBuf> {
    eprintln!(
        "==> cargo build ({}) -p tracer-userspace (a first build takes a few minutes)",
        profile.dir()
    );
    let started = Instant::now();
    let mut cmd = process::cargo();
    cmd.args(["build", "--package", "tracer-userspace"]);
    if let Profile::Release = profile {
        cmd.arg("--release");
    }
    // The eBPF object is built by a cargo inside the build script, whose progress lines
    // cargo relays as one "warning:" each; quiet keeps warnings and errors, drops progress.
    cmd.env("CARGO_TERM_QUIET", "true");
    process::run(&mut cmd).context("building the tracer failed")?;
    eprintln!(
        "built the tracer in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let binary = process::target_dir().join(profile.dir()).join("tracer");
    ensure!(
        binary.is_file(),
        "the build succeeded but {} is missing",
        binary.display()
    );
    Ok(binary)
}
