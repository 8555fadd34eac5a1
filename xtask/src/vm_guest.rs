//! What the test VM runs: the integration test binaries, the tracer, the C fixtures (built on
//! the host: the guest has no compiler), busybox and the few host tools the tests call, each
//! with the shared libraries `ldd` names, packed with an init script into one initramfs.
//! The kernels we boot have no 9p or virtio-fs to share the host's files, so everything
//! travels in the initramfs.

use std::{
    fs,
    io::BufWriter,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{cpio::Archive, process};

/// busybox-static's binary: the guest's shell, mount, ip, poweroff, sleep, cat, timeout.
pub const BUSYBOX: &str = "/bin/busybox";
/// Host programs the tests run that busybox lacks or implements differently (busybox's
/// setpriv has no --reuid).
const HOST_TOOLS: &[&str] = &["setpriv"];
/// PID 1 of the guest.
const INIT_SCRIPT: &str = include_str!("vm_init.sh");
/// Where our files go inside the guest.
const GUEST_DIR: &str = "tracer";

/// Tests that cannot run in the guest, with why; the guest prints each before the suite
/// starts, so a skipped test is never mistaken for a passed one.
pub const GUEST_SKIPS: &[(&str, &str)] = &[
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
        "python_script",
        "runs a Python fixture; the guest has no Python interpreter",
    ),
];

/// The integration suite, built for the guest.
pub struct Suite {
    /// (test target name, executable), in the order cargo built them.
    pub tests: Vec<(String, PathBuf)>,
    pub fixtures: Vec<PathBuf>,
}

/// Builds the integration test binaries (without running them) and the C fixtures.
/// `cargo_args` narrow the build the way they narrow `cargo test` (e.g. `--test prefork`).
pub fn build_suite(cargo_args: &[std::ffi::OsString], work: &Path) -> Result<Suite> {
    eprintln!("==> building the integration tests for the guest");
    let mut cmd = process::cargo();
    cmd.args(["test", "--no-run", "--release", "--package", "tracer-tests"])
        .args(["--message-format=json-render-diagnostics"])
        .args(cargo_args);
    let output = cmd
        .stderr(std::process::Stdio::inherit())
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
        .stderr(std::process::Stdio::inherit())
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

/// Everything about the run that the init script reads from /tracer/suite.
pub struct GuestPlan<'a> {
    pub suite: &'a Suite,
    pub tracer: &'a Path,
    /// Arguments for every test binary (after `--test-threads=1` and the skips).
    pub harness_args: &'a [std::ffi::OsString],
    /// Seconds one test binary may run in the guest before it is killed.
    pub binary_timeout_s: u64,
}

/// Writes the initramfs to `out`.
pub fn pack_initramfs(plan: &GuestPlan, out: &Path) -> Result<()> {
    let mut archive = Archive::default();
    for dir in ["proc", "sys", "dev", "tmp", "run", "root"] {
        archive.dir(dir)?;
    }
    add_elf(&mut archive, Path::new(BUSYBOX), None)?;
    for tool in HOST_TOOLS {
        let path = process::find_on_path(tool)
            .with_context(|| format!("the tests need `{tool}` (util-linux) on the host"))?;
        add_elf(&mut archive, &path, None)?;
    }
    add_elf(
        &mut archive,
        plan.tracer,
        Some(&format!("{GUEST_DIR}/bin/tracer")),
    )?;
    for (name, executable) in &plan.suite.tests {
        add_elf(
            &mut archive,
            executable,
            Some(&format!("{GUEST_DIR}/tests/{name}")),
        )?;
    }
    for fixture in &plan.suite.fixtures {
        let name = fixture
            .file_name()
            .context("a fixture path without a file name")?
            .to_string_lossy();
        add_elf(
            &mut archive,
            fixture,
            Some(&format!("{GUEST_DIR}/fixtures/{name}")),
        )?;
    }
    archive.bytes("init", INIT_SCRIPT.as_bytes().to_vec(), 0o755)?;
    archive.bytes(
        &format!("{GUEST_DIR}/suite"),
        suite_script(plan).into_bytes(),
        0o644,
    )?;

    let file = fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut writer = BufWriter::new(file);
    archive
        .write(&mut writer)
        .with_context(|| format!("cannot write {}", out.display()))?;
    std::io::Write::flush(&mut writer)?;
    Ok(())
}

/// The shell variables the init script sources: which binaries to run, in which order, with
/// which arguments, and what is skipped and why.
fn suite_script(plan: &GuestPlan) -> String {
    let names: Vec<&str> = plan
        .suite
        .tests
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    let mut args: Vec<String> = GUEST_SKIPS
        .iter()
        .flat_map(|(test, _)| ["--skip".to_owned(), (*test).to_owned()])
        .collect();
    args.extend(
        plan.harness_args
            .iter()
            .map(|arg| arg.to_string_lossy().into_owned()),
    );
    let mut script = String::from("# Written by `cargo xtask test --vm`; sourced by /init.\n");
    script.push_str(&format!("TESTS={}\n", shell_quote(&names.join(" "))));
    script.push_str(&format!(
        "TEST_ARGS={}\n",
        shell_quote(
            &args
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        )
    ));
    script.push_str(&format!("BINARY_TIMEOUT={}\n", plan.binary_timeout_s));
    script.push_str("print_skips() {\n");
    for (test, why) in GUEST_SKIPS {
        script.push_str(&format!(
            "  echo {}\n",
            shell_quote(&format!("SKIPPED in the guest: {test}: {why}"))
        ));
    }
    script.push_str("  :\n}\n");
    script
}

/// `text` in single quotes, safe for sh.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Adds an ELF file at `guest_path` (default: its canonical host path) and the shared
/// libraries it loads at their canonical host paths, with the host's directory symlinks
/// (Debian's /lib -> usr/lib) so that the paths ld.so and `ldd` use resolve the same way.
fn add_elf(archive: &mut Archive, path: &Path, guest_path: Option<&str>) -> Result<()> {
    let canonical =
        fs::canonicalize(path).with_context(|| format!("cannot find {}", path.display()))?;
    let at = match guest_path {
        Some(at) => at.to_owned(),
        None => canonical.to_string_lossy().into_owned(),
    };
    if !archive.contains(&at) {
        archive.file(&at, &canonical)?;
    }
    if guest_path.is_none() {
        add_symlinks_on_the_way(archive, path)?;
    }
    for library in shared_libraries(path)? {
        let canonical = fs::canonicalize(&library)
            .with_context(|| format!("cannot find library {}", library.display()))?;
        let canonical_str = canonical.to_string_lossy();
        if !archive.contains(&canonical_str) {
            archive.file(&canonical_str, &canonical)?;
        }
        add_symlinks_on_the_way(archive, &library)?;
        add_debug_file(archive, &canonical)?;
    }
    Ok(())
}

/// The detached debug file of `library` (Debian's `*-dbg` packages, under
/// /usr/lib/debug/.build-id), when the host has one: the tracer names glibc's internal
/// functions (`clone3`, `__clone_internal`) from it, and the tests check those names.
fn add_debug_file(archive: &mut Archive, library: &Path) -> Result<()> {
    let Some(build_id) = build_id(library) else {
        return Ok(());
    };
    if build_id.len() < 3 {
        return Ok(());
    }
    let debug = format!(
        "/usr/lib/debug/.build-id/{}/{}.debug",
        &build_id[..2],
        &build_id[2..]
    );
    let Ok(canonical) = fs::canonicalize(&debug) else {
        return Ok(());
    };
    if !archive.contains(&debug) {
        archive.file(&debug, &canonical)?;
    }
    Ok(())
}

/// The GNU build id of an ELF file, as `readelf -n` prints it (hex).
fn build_id(path: &Path) -> Option<String> {
    let notes = process::probe(Command::new("readelf").arg("-n").arg(path))?;
    notes.lines().find_map(|line| {
        let id = line.trim().strip_prefix("Build ID:")?.trim();
        (!id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
    })
}

/// For each component of `path` that is a symlink on the host (a directory such as /lib64,
/// then what its target holds, such as usr/lib64/ld-linux-x86-64.so.2 -> ../lib/...), the
/// same symlink in the archive, so that `path` resolves in the guest as it does here.
fn add_symlinks_on_the_way(archive: &mut Archive, path: &Path) -> Result<()> {
    let mut path = path.to_path_buf();
    // A bound on symlinks followed, like the kernel's.
    for _ in 0..40 {
        let Some((link, rest)) = first_symlink(&path) else {
            return Ok(());
        };
        let target = fs::read_link(&link)?;
        let link_str = link.to_string_lossy();
        if !archive.contains(&link_str) {
            archive.symlink(&link_str, &target.to_string_lossy())?;
        }
        // The link's parent has no symlinks (it was the first), so ".." can be applied
        // lexically.
        let parent = link.parent().unwrap_or(Path::new("/"));
        path = lexically_normal(&parent.join(target).join(rest));
    }
    bail!("too many levels of symlinks in {}", path.display())
}

/// `path` with `.` and `..` applied to the components before them.
fn lexically_normal(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    normal
}

/// The first prefix of `path` that is a symlink, and what follows it.
fn first_symlink(path: &Path) -> Option<(PathBuf, PathBuf)> {
    let mut prefix = PathBuf::from("/");
    let components: Vec<_> = path.iter().skip(1).collect();
    for (i, component) in components.iter().enumerate() {
        prefix.push(component);
        let meta = fs::symlink_metadata(&prefix).ok()?;
        if meta.file_type().is_symlink() {
            let rest: PathBuf = components[i + 1..].iter().collect();
            return Some((prefix, rest));
        }
    }
    None
}

/// The libraries `ldd` resolves for `path` (none for a static binary).
fn shared_libraries(path: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(path)
        .output()
        .context("could not run ldd")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // ldd exits 1 with "not a dynamic executable" for static binaries.
        let text = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
        if text.contains("not a dynamic executable") || text.contains("statically linked") {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", path.display(), text.trim());
    }
    parse_ldd(&stdout).with_context(|| format!("libraries of {}", path.display()))
}

fn parse_ldd(output: &str) -> Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        if line.contains("statically linked") {
            continue;
        }
        let resolved = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("{} not found", name.trim());
                }
                rest
            }
            None => line,
        };
        // "/path (0xaddr)"; the vDSO has no path.
        let file = resolved.split(" (").next().unwrap_or_default().trim();
        if file.starts_with('/') {
            libraries.push(PathBuf::from(file));
        }
    }
    Ok(libraries)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    /// Resolved libraries and the loader are kept, the vDSO is not; a missing library fails.
    #[test]
    fn parses_ldd_output() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                      \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f3f)\n\
                      \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f3e)\n\
                      \t/lib64/ld-linux-x86-64.so.2 (0x00007f40)\n";
        assert_eq!(
            parse_ldd(output).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

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

    /// `..` after a directory removes it; the root stays.
    #[test]
    fn applies_dot_dot() {
        assert_eq!(
            lexically_normal(Path::new("/usr/lib64/../lib/x86_64-linux-gnu/./ld.so")),
            PathBuf::from("/usr/lib/x86_64-linux-gnu/ld.so")
        );
        assert_eq!(
            lexically_normal(Path::new("/../lib")),
            PathBuf::from("/lib")
        );
    }

    /// What /init gets from the suite file through sh: the binaries in order, and each
    /// argument whole (a filter with a space and a quote stays one argument).
    #[test]
    fn suite_file_reads_back_in_sh() {
        let suite = Suite {
            tests: vec![
                ("errors".to_owned(), PathBuf::from("/t/errors-1")),
                ("prefork".to_owned(), PathBuf::from("/t/prefork-2")),
            ],
            fixtures: Vec::new(),
        };
        let harness_args = [
            OsString::from("it's a filter"),
            OsString::from("--nocapture"),
        ];
        let plan = GuestPlan {
            suite: &suite,
            tracer: Path::new("/t/tracer"),
            harness_args: &harness_args,
            binary_timeout_s: 99,
        };
        let script = format!(
            "{}\necho \"tests=$TESTS timeout=$BINARY_TIMEOUT\"\neval \"set -- $TEST_ARGS\"\n\
             for arg in \"$@\"; do echo \"[$arg]\"; done\nprint_skips\n",
            suite_script(&plan)
        );
        let output = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        let mut expected = String::from("tests=errors prefork timeout=99\n");
        for (test, _) in GUEST_SKIPS {
            expected.push_str(&format!("[--skip]\n[{test}]\n"));
        }
        expected.push_str("[it's a filter]\n[--nocapture]\n");
        for (test, why) in GUEST_SKIPS {
            expected.push_str(&format!("SKIPPED in the guest: {test}: {why}\n"));
        }
        assert_eq!(stdout, expected);
    }

    /// Quotes survive the shell.
    #[test]
    fn quotes_for_sh() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
