//! `build-fixtures DIR`: compiles every C fixture into DIR, for a machine that runs the
//! integration tests without a C compiler (`TRACER_PREBUILT_FIXTURES=DIR`). `cargo xtask test
//! --vm` runs it on the host and packs DIR into the guest's initramfs.

use std::{path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: build-fixtures DIR");
        return ExitCode::from(2);
    };
    for bin in tracer_tests::build_all_fixtures(&PathBuf::from(dir)) {
        println!("{}", bin.display());
    }
    ExitCode::SUCCESS
}
