//! JIT frames named from the perf map the runtime writes (`/tmp/perf-PID.map`): CPython 3.12+
//! run with `-X perf` puts a trampoline per Python function in anonymous executable memory
//! and names it `py::FUNCTION:FILE` there. The stack of a file leaked by `open_cache_file` <-
//! `warm_caches` <- `main` must name those three from the map, in that order, also when the
//! process has its own pid and mount namespaces (the map is then only in its `/tmp`). Every
//! pyenv interpreter of 3.12 or later is tried; without one the tests say so and do nothing.
//! Node (Debian's `nodejs`, which `cargo xtask test` installs) with `--perf-basic-prof` names
//! its JavaScript functions the same way.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use tracer_tests::{
    Fixture, Report, STOP_TIMEOUT, Tracer, pyenv_pythons, require_root, signal, unique_dir,
    workspace_dir,
};

/// Descriptors the fixture leaks.
const LEAKED: usize = 4;
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// pyenv's interpreters that have `-X perf` (3.12 and later), as (version, path).
fn perf_pythons() -> Vec<(String, PathBuf)> {
    let found: Vec<(String, PathBuf)> = pyenv_pythons(12)
        .into_iter()
        .map(|python| (python.name, python.program))
        .collect();
    if found.is_empty() {
        eprintln!("SKIPPED: no pyenv CPython 3.12 or later (`-X perf` needs 3.12)");
    }
    found
}

/// The symbol of each frame named from a perf map, innermost first.
fn perf_map_symbols(stack: &Value) -> Vec<String> {
    stack
        .as_array()
        .into_iter()
        .flatten()
        .filter(|frame| frame["module"] == "[perf-map]")
        .filter_map(|frame| frame["symbol"].as_str().map(str::to_owned))
        .collect()
}

/// The frames named from a perf map of each leaked descriptor of `path`, which must be
/// [`LEAKED`]; the pid that holds them.
#[track_caller]
fn named_frames_of_leak(report: &Report, path: &Path, runtime: &str) -> (u32, Vec<Vec<String>>) {
    let leaked: Vec<_> = report
        .open_descriptors()
        .into_iter()
        .filter(|d| d.detail() == path.to_str())
        .collect();
    assert_eq!(
        leaked.len(),
        LEAKED,
        "{runtime}: the leaked files\n{}",
        report.context()
    );
    let named = leaked
        .iter()
        .map(|d| perf_map_symbols(&d.v["stack"]))
        .collect();
    (leaked[0].pid(), named)
}

/// Runs `program args` (which ends up running a fixture that leaks LEAKED descriptors of a path) under a tracer
/// attached once it is ready, lets it leak, and returns the report.
fn trace(program: &str, args: &[&str]) -> Report {
    let mut fixture = Fixture::spawn(program, args);
    fixture.wait_for_line("READY", LINE_TIMEOUT);
    let mut tracer = Tracer::attach(fixture.pid(), &[]);
    tracer.wait_attached(tracer_tests::ATTACH_TIMEOUT);
    fixture.send_line("go");
    fixture.wait_for_line("DONE ", LINE_TIMEOUT);
    signal(tracer.pid() as i32, libc::SIGINT);
    let out = tracer.wait_output(STOP_TIMEOUT);
    assert!(out.status.success(), "{}", out.context());
    out.report()
}

/// Each leaked descriptor of `path` names open_cache_file <- warm_caches <- main from the perf
/// map; returns the pid that holds them.
#[track_caller]
fn assert_named_from_perf_map(report: &Report, path: &Path, script: &Path, python: &str) -> u32 {
    let (pid, named) = named_frames_of_leak(report, path, python);
    let script = script.display();
    let expected: Vec<String> = ["open_cache_file", "warm_caches", "main"]
        .iter()
        .map(|function| format!("py::{function}:{script}"))
        .collect();
    for named in named {
        let found: Vec<&String> = named.iter().filter(|s| expected.contains(s)).collect();
        assert_eq!(
            found,
            expected.iter().collect::<Vec<_>>(),
            "{python}: the Python functions named from the perf map, innermost first (all: {named:?})\n{}",
            report.context()
        );
    }
    pid
}

/// A Python process run with `-X perf`: its functions are named from /tmp/perf-PID.map.
#[test]
fn python_perf_trampolines_are_named() {
    require_root();
    let script = workspace_dir().join("tests/fixtures/py_leak.py");
    for (version, python) in perf_pythons() {
        let path = unique_dir(None, "jit-perf-map").join("cache.bin");
        std::fs::write(&path, "x").unwrap();
        let count = LEAKED.to_string();
        let report = trace(
            python.to_str().unwrap(),
            &[
                "-X",
                "perf",
                script.to_str().unwrap(),
                "wait",
                path.to_str().unwrap(),
                &count,
            ],
        );
        let pid = assert_named_from_perf_map(&report, &path, &script, &version);
        let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
    }
}

/// The same in its own pid and mount namespaces, with a private /tmp: the map is
/// /tmp/perf-1.map in there and exists nowhere the tracer would see it by its own paths.
#[test]
fn perf_map_in_the_process_namespaces() {
    require_root();
    let script = workspace_dir().join("tests/fixtures/py_leak.py");
    for (version, python) in perf_pythons() {
        // Made inside, after the private /tmp is mounted: the scratch directory may be
        // under /tmp (in the test VM it is), and so may the checkout (a clone under /tmp),
        // so the script is copied in through a descriptor opened before the mount.
        let dir = unique_dir(None, "jit-perf-map-ns");
        let path = dir.join("cache.bin");
        let script_inside = dir.join("py_leak.py");
        let inside = format!(
            "exec 3<{script} && mount -t tmpfs tracer-perf-map /tmp && mkdir -p {dir} && \
             echo x > {path} && cat <&3 > {copy} && exec 3<&- && \
             exec {python} -X perf {copy} wait {path} {LEAKED}",
            dir = dir.display(),
            path = path.display(),
            python = python.display(),
            script = script.display(),
            copy = script_inside.display(),
        );
        let report = trace(
            "unshare",
            &[
                "--pid",
                "--fork",
                "--mount",
                "--mount-proc",
                "--propagation",
                "private",
                "sh",
                "-c",
                &inside,
            ],
        );
        let pid = assert_named_from_perf_map(&report, &path, &script_inside, &version);
        assert!(
            !Path::new(&format!("/tmp/perf-{pid}.map")).exists(),
            "{version}: the map must be only in the namespace's /tmp"
        );
    }
}

/// Node with `--perf-basic-prof`: the JavaScript functions `openCacheFile` <- `warmCaches` of
/// the fixture are named from its map (`JS:~openCacheFile /path/node_leak.js:16:23`; the
/// form of the name is V8's), in that order, between Node's native frames.
#[test]
fn node_functions_are_named() {
    require_root();
    let node = ["/usr/bin/node", "/usr/bin/nodejs"]
        .into_iter()
        .find(|node| Path::new(node).exists())
        .expect("no /usr/bin/node: `cargo xtask test` installs Debian's nodejs");
    let script = workspace_dir().join("tests/fixtures/node_leak.js");
    let dir = unique_dir(None, "jit-perf-map-node");
    let path = dir.join("cache.bin");
    std::fs::write(&path, "x").unwrap();
    let count = LEAKED.to_string();
    // --perf-basic-prof also writes V8's log, by default into the working directory.
    let logfile = format!("--logfile={}", dir.join("v8.log").display());
    let report = trace(
        node,
        &[
            "--perf-basic-prof",
            "--interpreted-frames-native-stack",
            &logfile,
            "--no-logfile-per-isolate",
            script.to_str().unwrap(),
            path.to_str().unwrap(),
            &count,
        ],
    );
    let (pid, named) = named_frames_of_leak(&report, &path, "node");
    let script = script.display().to_string();
    let function = |name: &str, symbol: &str| {
        symbol.contains(&script) && symbol.split([' ', '~', '*', ':']).any(|word| word == name)
    };
    for named in named {
        let open = named.iter().position(|s| function("openCacheFile", s));
        let warm = named.iter().position(|s| function("warmCaches", s));
        assert!(
            matches!((open, warm), (Some(open), Some(warm)) if open < warm),
            "node: openCacheFile then warmCaches, named from the perf map (all: {named:?})\n{}",
            report.context()
        );
    }
    let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
}
