//! The test VM's initramfs: the integration test binaries, the tracer, the C fixtures,
//! busybox, the few host tools the tests call and the Python interpreters (`python.rs`),
//! each with the shared libraries `ldd` names, packed with an init script and the suite file
//! it reads.
//! The kernels we boot have no 9p or virtio-fs to share the host's files, so everything
//! travels in the initramfs.

use std::{ffi::OsString, fs, io::BufWriter, path::Path};

use anyhow::{Context as _, Result};

use super::{
    cpio::Archive,
    elf::add_elf,
    python,
    suite::{GUEST_SKIPS, Suite},
};
use crate::process;

/// busybox-static's binary: the guest's shell, mount, ip, poweroff, sleep, cat, timeout.
pub(super) const BUSYBOX: &str = "/bin/busybox";
/// Host programs the tests run that busybox lacks or implements differently (busybox's
/// setpriv has no --reuid; util-linux's unshare is the one the namespace tests run on the
/// host).
const HOST_TOOLS: &[&str] = &["setpriv", "unshare"];
/// PID 1 of the guest.
const INIT_SCRIPT: &str = include_str!("init.sh");
/// Where our files go inside the guest.
const GUEST_DIR: &str = "tracer";

/// Everything about the run that the init script reads from /tracer/suite.
pub(super) struct GuestPlan<'a> {
    pub suite: &'a Suite,
    pub tracer: &'a Path,
    /// Arguments for every test binary (after `--test-threads=1` and the skips).
    pub harness_args: &'a [OsString],
    /// Seconds one test binary may run in the guest before it is killed.
    pub binary_timeout_s: u64,
}

/// Writes the initramfs to `out`.
pub(super) fn pack_initramfs(plan: &GuestPlan, out: &Path) -> Result<()> {
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
    let (pyenv_root, pythons) = python::add_pythons(&mut archive)?;
    python::add_scripts(&mut archive)?;
    let listed: Vec<String> = pythons
        .iter()
        .map(|python| python.program.display().to_string())
        .collect();
    eprintln!(
        "Python in the guest: {}",
        if listed.is_empty() {
            "none found on the host (the tests that need it skip, and say so)".to_owned()
        } else {
            listed.join(", ")
        }
    );
    let mut suite = suite_script(plan);
    if let Some(root) = pyenv_root {
        suite.push_str(&format!(
            "export PYENV_ROOT={}\n",
            shell_quote(&root.to_string_lossy())
        ));
    }
    archive.bytes("init", INIT_SCRIPT.as_bytes().to_vec(), 0o755)?;
    archive.bytes(&format!("{GUEST_DIR}/suite"), suite.into_bytes(), 0o644)?;

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

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, process::Command};

    use super::*;

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
