//! Building the C fixtures of `tests/fixtures/`: compiled on demand with `cc`, or taken from
//! a directory built beforehand (by the `build-fixtures` binary) on machines without one.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::env::{scratch_dir, workspace_dir};

/// Compiler flags every fixture is built with. Frame pointers and no sibling-call
/// optimisation keep each fixture function's frame on the stack.
pub const FIXTURE_CFLAGS: &[&str] = &[
    "-g",
    "-O2",
    "-fno-omit-frame-pointer",
    "-fno-optimize-sibling-calls",
    "-pthread",
    "-Wall",
    "-Wextra",
];

/// Every fixture under `tests/fixtures/` (without `.c`): what [`build_all_fixtures`] builds.
pub const FIXTURES: &[&str] = &[
    "prefork_server",
    "busy_churn",
    "leak_and_exit",
    "zombie_parent",
    "thread_pile",
    "tw_client",
    "tw_server",
    "tw_overflow",
    "fd_families",
    "stack_leak",
    "steady_leak",
    "stack_base",
    "exit_workers",
    "bad_close",
    "slow_leak",
    "serve_leak",
    "two_callers",
];

/// Builds of fixtures with other flags than the default that tests ask for: prebuilt too.
pub const FIXTURE_VARIANTS: &[(&str, &[&str])] = &[
    ("stack_leak", &["-O0"]),
    ("stack_leak", &["-O2", "-fomit-frame-pointer"]),
    ("stack_base", &["-O2", "-fomit-frame-pointer"]),
    ("two_callers", &["-O2", "-fomit-frame-pointer"]),
];

/// The environment variable naming a directory of fixtures built beforehand (by the
/// `build-fixtures` binary), for machines without a C compiler: the kernels `cargo xtask test
/// --vm` boots have none.
pub const PREBUILT_FIXTURES_ENV: &str = "TRACER_PREBUILT_FIXTURES";

/// The directory of prebuilt fixtures, when [`PREBUILT_FIXTURES_ENV`] names one.
pub fn prebuilt_fixtures_dir() -> Option<PathBuf> {
    std::env::var_os(PREBUILT_FIXTURES_ENV)
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
}

/// Compiles `tests/fixtures/NAME.c` with `cc` and returns the executable's path.
/// Panics with the compiler's output when the build fails.
///
/// With [`PREBUILT_FIXTURES_ENV`] set nothing is compiled: the build is taken from that
/// directory, which has the plain builds and the [`FIXTURE_VARIANTS`].
#[track_caller]
pub fn build_fixture(name: &str, extra_cflags: &[&str]) -> PathBuf {
    if let Some(dir) = prebuilt_fixtures_dir() {
        let bin = dir.join(fixture_file_name(name, extra_cflags));
        assert!(
            bin.is_file(),
            "prebuilt fixture {} ({name} with {extra_cflags:?}) is missing \
             ({PREBUILT_FIXTURES_ENV}={}): add the flags to FIXTURE_VARIANTS",
            bin.display(),
            dir.display()
        );
        return bin;
    }
    build_fixture_in(&scratch_dir().join("fixtures"), name, extra_cflags)
}

/// Compiles every fixture in [`FIXTURES`] (plain builds, named after the fixture) and every
/// one of [`FIXTURE_VARIANTS`] into `dir`.
#[track_caller]
pub fn build_all_fixtures(dir: &Path) -> Vec<PathBuf> {
    let plain = FIXTURES.iter().map(|name| (*name, &[][..]));
    let mut built = Vec::new();
    for (name, flags) in plain.chain(FIXTURE_VARIANTS.iter().copied()) {
        built.push(build_fixture_in(dir, name, flags));
    }
    built
}

/// The file a build of fixture `name` with `extra_cflags` goes to: the name itself for the
/// plain build, the name and a hash of the flags otherwise.
fn fixture_file_name(name: &str, extra_cflags: &[&str]) -> String {
    if extra_cflags.is_empty() {
        name.to_string()
    } else {
        let mut h = DefaultHasher::new();
        extra_cflags.hash(&mut h);
        format!("{name}-{:016x}", h.finish())
    }
}

/// Compiles `tests/fixtures/NAME.c` into `dir`; other flags than none give another file name.
#[track_caller]
fn build_fixture_in(dir: &Path, name: &str, extra_cflags: &[&str]) -> PathBuf {
    let src = workspace_dir()
        .join("tests/fixtures")
        .join(format!("{name}.c"));
    assert!(src.is_file(), "fixture source {} not found", src.display());
    if let Err(e) = std::fs::create_dir_all(dir) {
        panic!("cannot create the fixture directory {}: {e}", dir.display());
    }

    let file_name = fixture_file_name(name, extra_cflags);
    let out = dir.join(&file_name);
    // Build under a unique name and rename, so concurrent builds never see a partial file.
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let compiled = Command::new(&cc)
        .args(FIXTURE_CFLAGS)
        .args(extra_cflags)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .stdin(Stdio::null())
        .output();
    let output = match compiled {
        Ok(output) => output,
        Err(e) => panic!("cannot run the C compiler `{cc}`: {e}"),
    };
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        panic!(
            "compiling fixture {} failed ({}):\n{}{}",
            src.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if let Err(e) = std::fs::rename(&tmp, &out) {
        panic!("rename {} -> {}: {e}", tmp.display(), out.display());
    }
    out
}
