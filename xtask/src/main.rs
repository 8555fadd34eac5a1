//! `cargo xtask`: developer tasks for tracer.
//!
//! Every command first bootstraps the pieces the eBPF build needs (nightly, rust-src,
//! bpf-linker), so a fresh clone needs nothing but rustup and `cargo xtask test`.

mod bench;
mod bootstrap;
mod cmd_bench;
mod cmd_build;
mod cmd_run;
mod cmd_test;
mod process;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Developer tasks for tracer: bootstrap the toolchain, build, run as root, test, bench.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Bench(cmd_bench::Options),
    Build(cmd_build::Options),
    Run(cmd_run::Options),
    Test(cmd_test::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(options) => cmd_bench::run(options),
        Command::Build(options) => cmd_build::run(options),
        Command::Run(options) => cmd_run::run(options),
        Command::Test(options) => cmd_test::run(options),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // `{:#}` joins the context chain into one line: what failed, then why.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
