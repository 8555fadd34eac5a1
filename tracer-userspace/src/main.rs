//! `tracer`: thin entry point over the library; errors become one line and a non-zero exit.

use std::process::ExitCode;

use clap::Parser;
use tracer::Options;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let result = Options::parse()
        .into_config()
        .map_err(anyhow::Error::from)
        .and_then(|config| tracer::run(&config));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` joins the context chain on one line: "cannot attach the probes: ...".
            eprintln!("tracer: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
