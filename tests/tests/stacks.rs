//! Stacks an engineer can act on: the same leak seen through binaries with and without frame
//! pointers, a Rust release build and a Python script must each show the libc wrapper first,
//! then the function that leaked, then its caller. Each test prints the stack's depth and
//! symbol hit rate (`[stacks] ...` lines; README "Stacks" quotes them).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tracer_tests::{
    ATTACH_TIMEOUT, Report, Tracer, build_fixture, frames_symbols, require_root, scratch_dir,
    unique_dir, workspace_dir,
};

/// Descriptors each fixture leaks from one stack.
const LEAKED: usize = 5;
/// The tracer attaches (up to a minute in the test VM's guests), the fixture leaks, works
/// 300 ms and exits; the tracer then reports and exits.
const RUN_TIMEOUT: Duration = ATTACH_TIMEOUT.saturating_add(Duration::from_secs(60));

/// A fresh file for a fixture to open, in its own directory named after `name`.
#[track_caller]
fn settings_file(name: &str) -> PathBuf {
    let path = unique_dir(None, name).join("settings.conf");
    std::fs::write(&path, "x=1\n").unwrap();
    path
}

/// Runs `command PATH LEAKED` under the tracer (plus `extra` options) and returns the report
/// and the path the fixture opened.
#[track_caller]
fn trace_leak(name: &str, extra: &[&str], command: &[&str]) -> (Report, PathBuf) {
    let path = settings_file(name);
    let count = LEAKED.to_string();
    let mut full: Vec<&str> = command.to_vec();
    full.extend([path.to_str().unwrap(), count.as_str()]);
    // The fixtures exit: what they held is listed one by one only on request.
    let mut options = vec!["--at-exit-descriptors"];
    options.extend(extra);
    let report = Tracer::command(&options, &full).finish(RUN_TIMEOUT);
    (report, path)
}

/// The group of descriptors of `path`, which must hold all [`LEAKED`] of them.
#[track_caller]
fn leak_group<'r>(report: &'r Report, path: &Path) -> &'r Value {
    let ctx = report.context();
    let path = path.to_str().unwrap();
    let ids: Vec<u64> = report
        .open_descriptors()
        .iter()
        .filter(|d| d.detail() == Some(path))
        .filter_map(|d| d.v["stack_id"].as_u64())
        .collect();
    assert_eq!(ids.len(), LEAKED, "each leak has a stack\n{ctx}");
    // The fixture exited holding them: their group is in `at_exit_stacks`.
    let group = report.json["at_exit_stacks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|g| g["stack_id"].as_u64() == Some(ids[0]))
        .unwrap_or_else(|| panic!("no at_exit_stacks[] group for stack {}\n{ctx}", ids[0]));
    assert_eq!(
        group["descriptors"].as_u64(),
        Some(LEAKED as u64),
        "one stack for all of them\n{ctx}"
    );
    assert_eq!(group["processes"].as_u64(), Some(1), "{ctx}");
    group
}

/// Depth and the fraction of frames with a symbol, printed for the README's table.
fn measure(fixture: &str, group: &Value) -> (usize, f64) {
    let frames = group["stack"].as_array().cloned().unwrap_or_default();
    let named = frames.iter().filter(|f| f["symbol"].is_string()).count();
    let rate = named as f64 / frames.len().max(1) as f64;
    let addresses = frames.iter().filter(|f| f["inlined"] != true).count();
    eprintln!(
        "[stacks] {fixture}: depth {} frames ({addresses} return addresses, the rest inlined \
         calls), {named} with a symbol ({:.0}%): {:?}",
        frames.len(),
        rate * 100.0,
        frames_symbols(&group["stack"])
    );
    (frames.len(), rate)
}

/// Whether `symbol` is the libc wrapper of open(2) (glibc names it several ways).
fn is_open_wrapper(symbol: &str) -> bool {
    [
        "open",
        "open64",
        "__open",
        "__open64",
        "__libc_open64",
        "__open_nocancel",
    ]
    .contains(&symbol)
}

/// Whether `symbol` names the Rust function `name` of the fixture: from the symbol table
/// (demangled, `rust_leak::name`) or from DWARF, which names functions without their path.
fn is_rust_fn(symbol: &str, name: &str) -> bool {
    symbol == name || symbol == format!("rust_leak::{name}")
}

/// The index of the first frame whose symbol satisfies `is`, after `from`.
fn position_after(symbols: &[String], from: usize, is: impl Fn(&str) -> bool) -> Option<usize> {
    symbols
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, s)| is(s))
        .map(|(i, _)| i)
}

/// The C fixture's stack: open's wrapper, then open_config, then load_settings, then main.
#[track_caller]
fn assert_c_stack(report: &Report, path: &Path, label: &str) {
    let ctx = report.context();
    let group = leak_group(report, path);
    let symbols = frames_symbols(&group["stack"]);
    assert!(
        symbols.first().is_some_and(|s| is_open_wrapper(s)),
        "{label}: the first frame of {symbols:?} is not open's libc wrapper\n{ctx}"
    );
    assert_eq!(
        symbols.get(1).map(String::as_str),
        Some("open_config"),
        "{label}: the frame after the wrapper in {symbols:?} is not the caller\n{ctx}"
    );
    assert_eq!(
        symbols.get(2).map(String::as_str),
        Some("load_settings"),
        "{label}: open_config's caller is missing from {symbols:?}\n{ctx}"
    );
    assert!(
        position_after(&symbols, 3, |s| s == "main").is_some(),
        "{label}: the stack {symbols:?} does not reach main\n{ctx}"
    );
    let frame = &group["stack"][1];
    assert!(
        frame["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("stack_leak.c"))
            && frame["line"].as_u64().is_some(),
        "{label}: open_config has no file and line: {frame}\n{ctx}"
    );
    let (_, rate) = measure(label, group);
    assert_eq!(rate, 1.0, "{label}: every frame has a symbol\n{ctx}");
    // A program that is not Python has native frames only.
    let runtimes: Vec<&Value> = group["stack"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.get("runtime"))
        .collect();
    assert!(
        runtimes.is_empty(),
        "{label}: frames with a runtime {runtimes:?}\n{ctx}"
    );
}

/// With frame pointers at -O0, the leaking function and its caller are on the stack.
#[test]
fn c_with_frame_pointers() {
    require_root();
    let bin = build_fixture("stack_leak", &["-O0"]);
    let (report, path) = trace_leak("stacks-fp", &[], &[bin.to_str().unwrap()]);
    assert_c_stack(&report, &path, "C -O0 frame pointers");
}

/// At -O2 without frame pointers, unwinding the copied stack from .eh_frame finds the same
/// frames, which the frame-pointer walk alone (`--stack-copy-kib 0`) cannot.
#[test]
fn c_without_frame_pointers() {
    require_root();
    let bin = build_fixture("stack_leak", &["-O2", "-fomit-frame-pointer"]);
    let (report, path) = trace_leak("stacks-nofp", &[], &[bin.to_str().unwrap()]);
    assert_c_stack(&report, &path, "C -O2 no frame pointers");

    // The fixture really has no frame pointers: without the stack copy, the kernel's
    // frame-pointer walk alone does not get from open's wrapper to open_config.
    let (report, path) = trace_leak(
        "stacks-nofp-nocopy",
        &["--stack-copy-kib", "0"],
        &[bin.to_str().unwrap()],
    );
    let symbols = frames_symbols(&leak_group(&report, &path)["stack"]);
    assert!(
        !symbols.iter().any(|s| s == "open_config"),
        "without a stack copy, {symbols:?} should lack open_config\n{}",
        report.context()
    );
}

/// Once a thread's first stack has been unwound to its first frame, the kernel copies later
/// stacks of that thread only up to there (a few hundred bytes here, not 8 KiB), and a deeper
/// stack of the same thread still unwinds to its root from that shorter copy: in the main
/// thread and in a second thread, at -O2 without frame pointers.
#[test]
fn stack_copy_stops_at_the_learned_base() {
    require_root();
    let bin = build_fixture("stack_base", &["-O2", "-fomit-frame-pointer"]);
    let path = settings_file("stacks-base");
    let args: Vec<String> = [
        "--json",
        "--at-exit-descriptors",
        "--",
        bin.to_str().unwrap(),
        path.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out =
        Tracer::spawn(&args, &[("RUST_LOG", "tracer::stacks=trace")]).wait_output(RUN_TIMEOUT);
    assert!(out.status.success(), "tracer failed\n{}", out.context());
    let report = out.report();
    let ctx = report.context();
    let stacks: Vec<Vec<String>> = report
        .open_descriptors()
        .iter()
        .filter(|d| d.detail() == path.to_str())
        .map(|d| d.stack_symbols())
        .collect();
    assert_eq!(stacks.len(), 4, "two leaks per thread\n{ctx}");
    for root in ["main", "worker"] {
        for leaf in ["open_shallow", "descend"] {
            let found = stacks.iter().any(|symbols| {
                let depth = symbols.iter().filter(|s| *s == leaf).count();
                let expected = if leaf == "descend" { 5 } else { 1 };
                let leaf_at = position_after(symbols, 0, |s| s == leaf);
                leaf_at == Some(1)
                    && depth == expected
                    && position_after(symbols, 1, |s| s == "run_phases")
                        .and_then(|i| position_after(symbols, i, |s| s == root))
                        .is_some()
            });
            assert!(
                found,
                "no whole stack {leaf} .. run_phases .. {root} among {stacks:?}\n{ctx}"
            );
        }
    }
    // The tracer logs each walk as `(complete: C, USED of COPIED bytes)`: the second open of
    // each thread came with a copy cut at the base, and its walk used all of it.
    let cut_and_complete = out
        .stderr
        .lines()
        .filter_map(|line| {
            line.split_once("(complete: true, ")?
                .1
                .split_once(" bytes)")
        })
        .filter_map(|(counts, _)| {
            let (used, copied) = counts.split_once(" of ")?;
            Some((used.parse::<usize>().ok()?, copied.parse::<usize>().ok()?))
        })
        .filter(|&(used, copied)| used == copied && copied < 4096)
        .count();
    assert!(
        cut_and_complete >= 2,
        "expected at least two stack copies stopped at a learned base, found \
         {cut_and_complete}\nstderr:\n{}",
        tracer_tests::excerpt(&out.stderr, 20_000)
    );
}

/// Builds tests/fixtures/rust_leak.rs as a release build (no frame pointers) with line
/// tables, once per test run.
#[track_caller]
fn build_rust_fixture() -> PathBuf {
    let src = workspace_dir().join("tests/fixtures/rust_leak.rs");
    let dir = scratch_dir().join("fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("rust_leak");
    let tmp = dir.join(format!(".rust_leak.{}.tmp", std::process::id()));
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = Command::new(&rustc)
        .args([
            "--edition=2021",
            "-C",
            "opt-level=3",
            "-C",
            "debuginfo=line-tables-only",
        ])
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{rustc}`: {e}"));
    assert!(
        output.status.success(),
        "building {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(&tmp, &out).unwrap();
    out
}

/// A Rust release build: the wrapper, std's frames, then open_journal and replay_journals,
/// with demangled names.
#[test]
fn rust_release_build() {
    require_root();
    let bin = build_rust_fixture();
    let (report, path) = trace_leak("stacks-rust", &[], &[bin.to_str().unwrap()]);
    let ctx = report.context();
    let group = leak_group(&report, &path);
    let symbols = frames_symbols(&group["stack"]);
    assert!(
        symbols.first().is_some_and(|s| is_open_wrapper(s)),
        "the first frame of {symbols:?} is not open's libc wrapper\n{ctx}"
    );
    // std's frames come between: demangled, as in `<std::fs::OpenOptions>::_open`.
    assert!(
        symbols.iter().any(|s| s.starts_with("<std::")),
        "no demangled std frame in {symbols:?}\n{ctx}"
    );
    let leaker = position_after(&symbols, 1, |s| is_rust_fn(s, "open_journal"))
        .unwrap_or_else(|| panic!("no open_journal in {symbols:?}\n{ctx}"));
    assert!(
        position_after(&symbols, leaker + 1, |s| is_rust_fn(s, "replay_journals")).is_some(),
        "open_journal's caller is missing from {symbols:?}\n{ctx}"
    );
    measure("Rust release", group);
}

/// The Python interpreter to run: Debian's when installed, else the first on PATH.
fn python() -> String {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3".into()
    } else {
        "python3".into()
    }
}

/// A Python script leaking files from a function: the interpreter's native frames, from
/// open's wrapper through the call machinery and the evaluation loop to main, are on the
/// stack (the Python frames merged among them are checked in python.rs).
#[test]
fn python_script() {
    require_root();
    let script = workspace_dir().join("tests/fixtures/py_leak.py");
    let python = python();
    let (report, path) = trace_leak(
        "stacks-python",
        &[],
        &[python.as_str(), script.to_str().unwrap(), "exit"],
    );
    let ctx = report.context();
    let group = leak_group(&report, &path);
    let symbols = frames_symbols(&group["stack"]);
    assert!(
        symbols.first().is_some_and(|s| is_open_wrapper(s)),
        "the first frame of {symbols:?} is not open's libc wrapper\n{ctx}"
    );
    let eval = position_after(&symbols, 1, |s| s.contains("EvalFrame"))
        .unwrap_or_else(|| panic!("the interpreter loop is missing from {symbols:?}\n{ctx}"));
    assert!(
        position_after(&symbols, eval + 1, |s| s == "Py_BytesMain" || s == "main").is_some(),
        "the stack {symbols:?} does not reach the interpreter's main\n{ctx}"
    );
    measure("Python 3 script", group);
}

/// `--flamegraph FILE` writes an SVG naming the leaking function; `--top 1` shows one group
/// in full in the text report.
#[test]
fn flamegraph_and_top() {
    require_root();
    let bin = build_fixture("stack_leak", &["-O2", "-fomit-frame-pointer"]);
    let dir = unique_dir(None, "stacks-flamegraph");
    let svg = dir.join("fds.svg");
    let (report, path) = trace_leak(
        "stacks-flamegraph-run",
        &["--top", "1", "--flamegraph", svg.to_str().unwrap()],
        &[bin.to_str().unwrap()],
    );
    leak_group(&report, &path);
    let svg = std::fs::read_to_string(&svg).expect("the flame graph was written");
    assert!(
        svg.starts_with("<?xml"),
        "not SVG: {}",
        &svg[..svg.len().min(80)]
    );
    assert!(svg.contains("open_config") && svg.contains("load_settings"));
    assert!(svg.contains("descriptors"));
}

/// A process in another mount namespace (as in a container) runs a binary whose path does
/// not exist in the tracer's: its module is read through /proc/PID/map_files while it lives,
/// and its stack still names open_config and load_settings after it exited.
#[test]
fn binary_in_another_mount_namespace() {
    require_root();
    let bin = build_fixture("stack_leak", &["-O2", "-fomit-frame-pointer"]);
    let dir = unique_dir(None, "stacks-mntns");
    let hidden = dir.join("hidden");
    std::fs::create_dir_all(&hidden).unwrap();
    // Inside: a tmpfs over `hidden`, the fixture copied into it and run from there. Outside,
    // `hidden` stays empty.
    let script = format!(
        "mount -t tmpfs tracer-test {hidden} && cp {bin} {hidden}/leaker && exec {hidden}/leaker \"$0\" \"$1\"",
        hidden = hidden.display(),
        bin = bin.display()
    );
    let (report, path) = trace_leak(
        "stacks-mntns-run",
        &[],
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ],
    );
    let ctx = report.context();
    assert!(
        !hidden.join("leaker").exists(),
        "the binary must not be visible outside its namespace"
    );
    let group = leak_group(&report, &path);
    let symbols = frames_symbols(&group["stack"]);
    assert_eq!(
        symbols.get(1..3),
        Some(&["open_config".to_string(), "load_settings".to_string()][..]),
        "{symbols:?}\n{ctx}"
    );
    assert_eq!(
        group["stack"][1]["module"].as_str(),
        hidden.join("leaker").to_str(),
        "the module is named as the process saw it\n{ctx}"
    );
}
