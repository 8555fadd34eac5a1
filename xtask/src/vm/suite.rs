//! Which integration tests the test VM runs: the test binaries and C fixtures, built on the
//! host (the guest has no compiler), and the tests that cannot run in the guest.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::process;

/// Tests that cannot run in the guest, with why; the guest prints each before the suite
/// starts, so a skipped test is never mistaken for a passed one.
pub(super) const GUEST_SKIPS: &[(&str, &str)] = &[
    (
        "fixtures_compile_without_warnings",
        "compiles the C fixtures with -Werror; the guest has no C compiler (the fixtures are \
         built on the host, where this test runs)",
    ),
    (
        "rust_release_build",
        "builds its Rust fixture with rustc at run time; the guest has no Rust toolchain",
    ),
    (
        "live_view_in_tmux",
        "drives the live view in tmux; the guest has no tmux",
    ),
    (
        "python_script",
        "runs a Python fixture; the guest has no Python interpreter",
    ),
    (
        "postgres_pgbench_time_wait_and_stacks",
        "starts Debian's PostgreSQL and pgbench; the guest has neither",
    ),
    (
        "redis_time_wait_is_its_own",
        "starts Debian's redis-server and redis-benchmark; the guest has neither",
    ),
    (
        "metrics_pass_promtool_and_count_what_proc_lists",
        "reads --serve with curl and Debian's promtool; the guest has neither",
    ),
    (
        "prometheus_scrapes_the_open_fds_series",
        "starts Debian's Prometheus server; the guest has none",
    ),
    (
        "pprof_reads_the_open_fds_profile",
        "reads --serve's profile with Debian's go tool pprof; the guest has no Go",
    ),
];

/// The integration suite, built for the guest.
pub(super) struct Suite {
    /// (test target name, executable), in the order cargo built them.
    pub tests: Vec<(String, PathBuf)>,
    pub fixtures: Vec<PathBuf>,
}

/// Builds the integration test binaries (without running them) and the C fixtures.
/// `cargo_args` narrow the build the way they narrow `cargo test` (e.g. `--test prefork`).
pub(super) fn build_suite(cargo_args: &[OsString], work: &Path) -> Result<Suite> {
    eprintln!("==> building the integration tests for the guest");
    let mut cmd = process::cargo();
    cmd.args(["test", "--no-run", "--release", "--package", "tracer-tests"])
        .args(["--message-format=json-render-diagnostics"])
        .args(cargo_args);
    let output = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{}`", process::describe(&cmd)))?;
    if !output.status.success() {
        bail!("`{}` failed ({})", process::describe(&cmd), output.status);
    }
    let tests = test_executables(&String::from_utf8_lossy(&output.stdout))?;
    if tests.is_empty() {
        bail!("`{}` built no test binary", process::describe(&cmd));
    }

    let fixtures_dir = work.join("fixtures");
    let _ = fs::remove_dir_all(&fixtures_dir);
    let mut cmd = process::cargo();
    cmd.args(["run", "--quiet", "--release", "--package", "tracer-tests"])
        .args(["--bin", "build-fixtures", "--"])
        .arg(&fixtures_dir);
    let listed = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{}`", process::describe(&cmd)))?;
    if !listed.status.success() {
        bail!(
            "building the fixtures failed: `{}` ({})",
            process::describe(&cmd),
            listed.status
        );
    }
    let fixtures = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(PathBuf::from)
        .collect();
    Ok(Suite { tests, fixtures })
}

/// The test executables in cargo's JSON messages: integration test targets and the harness
/// library's own unit tests (not the build-fixtures program's empty test harness).
fn test_executables(messages: &str) -> Result<Vec<(String, PathBuf)>> {
    let mut tests = Vec::new();
    for line in messages.lines() {
        let message: Value = serde_json::from_str(line)
            .with_context(|| format!("cargo printed a line that is not JSON: {line}"))?;
        if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
            continue;
        }
        let Some(executable) = message["executable"].as_str() else {
            continue;
        };
        let kinds = &message["target"]["kind"];
        let wanted = ["test", "lib"].iter().any(|kind| {
            kinds
                .as_array()
                .is_some_and(|k| k.iter().any(|v| v == kind))
        });
        if wanted {
            let name = message["target"]["name"]
                .as_str()
                .unwrap_or("tests")
                .to_owned();
            tests.push((name, PathBuf::from(executable)));
        }
    }
    Ok(tests)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only integration test targets and the library's unit tests are run in the guest.
    #[test]
    fn picks_test_executables() {
        let messages = [
            r#"{"reason":"compiler-artifact","profile":{"test":true},"target":{"name":"prefork","kind":["test"]},"executable":"/t/prefork-1"}"#,
            r#"{"reason":"compiler-artifact","profile":{"test":true},"target":{"name":"tracer_tests","kind":["lib"]},"executable":"/t/tracer_tests-2"}"#,
            r#"{"reason":"compiler-artifact","profile":{"test":true},"target":{"name":"build-fixtures","kind":["bin"]},"executable":"/t/build_fixtures-3"}"#,
            r#"{"reason":"compiler-artifact","profile":{"test":false},"target":{"name":"tracer_tests","kind":["lib"]},"executable":null}"#,
            r#"{"reason":"build-finished","success":true}"#,
        ]
        .join("\n");
        let tests = test_executables(&messages).unwrap();
        assert_eq!(
            tests,
            [
                ("prefork".to_owned(), PathBuf::from("/t/prefork-1")),
                (
                    "tracer_tests".to_owned(),
                    PathBuf::from("/t/tracer_tests-2")
                ),
            ]
        );
    }
}
