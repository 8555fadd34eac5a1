//! Makes sure the pieces the build needs are present, installing the missing ones.
//!
//! The userspace build script builds the eBPF object with `rustup run nightly cargo build
//! -Z build-std=core`, linked by bpf-linker; none of these come with a stable toolchain.
//! Every check is quick, so a machine that has everything pays almost nothing.

use std::{env, path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};

use crate::process::{self, find_on_path, is_root, probe, version_of};

/// What a command needs besides the build toolchain.
#[derive(Clone, Copy)]
pub(crate) struct Needs {
    /// The integration tests compile C fixtures.
    pub c_compiler: bool,
    /// The integration tests start real servers ([`SERVER_PACKAGES`]).
    pub servers: bool,
    /// `test --vm` boots kernels under QEMU with a busybox initramfs.
    pub vm: bool,
}

/// What `test --vm` runs on the host: the emulator, the guest's shell and tools (a static
/// busybox, since the guest has no libraries but those we pack), and `readelf` to find the
/// debug files of the libraries packed.
const VM_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "binutils"];

/// The real servers and clients the integration tests start (`tests/tests/servers.rs`):
/// PostgreSQL and pgbench, Redis and redis-benchmark, `ss` to compare TCP states with,
/// tmux, the terminal the `--live` test drives (`tests/tests/live.rs`), and for `--serve`
/// (`tests/tests/serve.rs`): Prometheus and promtool, Go's `go tool pprof`, curl; uWSGI with
/// its Python 3 plugin (`tests/tests/python.rs`: an embedded interpreter).
const SERVER_PACKAGES: &[&str] = &[
    "postgresql",
    "redis-server",
    "redis-tools",
    "iproute2",
    "tmux",
    "prometheus",
    "golang-go",
    "curl",
    "uwsgi-core",
    "uwsgi-plugin-python3",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// bpf-linker links against LLVM; these are Debian's LLVM 22 development files and the
/// libraries its `llvm-config --link-static` output names.
const LLVM_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "libxml2-dev",
];
/// Without it bpf-linker's build script looks for the default `llvm-config` and the link
/// fails with "unable to find library -lLLVM".
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Checks every piece, installing what is missing; prints one line per check.
pub(crate) fn run(needs: Needs) -> Result<()> {
    eprintln!("==> bootstrap");
    put_cargo_bin_on_path()?;
    check_rustup()?;
    ensure_nightly()?;
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    if needs.c_compiler {
        ensure_c_compiler()?;
    }
    if needs.servers {
        ensure_debian_packages(SERVER_PACKAGES)
            .context("the integration tests start these servers")?;
    }
    if needs.vm {
        ensure_debian_packages(VM_PACKAGES).context("`cargo xtask test --vm` needs them")?;
    }
    Ok(())
}

/// `cargo install` puts binaries in `$CARGO_HOME/bin`, which a fresh shell (or CI job) may
/// not have on PATH; every child we start (the eBPF build above all) must find bpf-linker.
fn put_cargo_bin_on_path() -> Result<()> {
    let bin = cargo_bin_dir()?;
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|dir| dir == bin) {
        return Ok(());
    }
    let joined = env::join_paths(std::iter::once(bin).chain(env::split_paths(&path)))
        .context("cannot add cargo's bin directory to PATH")?;
    // SAFETY: xtask is single-threaded, so nothing reads the environment concurrently.
    unsafe { env::set_var("PATH", joined) };
    Ok(())
}

/// `$CARGO_HOME/bin`, or `~/.cargo/bin` when `CARGO_HOME` is unset.
fn cargo_bin_dir() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home).join("bin"));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo").join("bin"))
}

/// Prints `checking WHAT ... ` and leaves the line open for the result. Progress goes to
/// stderr, like cargo's, so that `cargo xtask run --json` leaves stdout to the report.
fn checking(what: &str) {
    eprint!("checking {what} ... ");
}

/// Runs `install`, framing it with "installing"/"installed in N.Ns" lines.
fn install(what: &str, install: impl FnOnce() -> Result<()>) -> Result<()> {
    eprintln!("installing {what} ...");
    let started = Instant::now();
    install().with_context(|| format!("could not install {what}"))?;
    eprintln!(
        "installed {what} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn check_rustup() -> Result<()> {
    checking("rustup");
    match version_of("rustup") {
        Some(version) => eprintln!("ok ({version})"),
        None => {
            eprintln!("missing");
            bail!("rustup not found on PATH: install it from https://rustup.rs");
        }
    }
    Ok(())
}

fn ensure_nightly() -> Result<()> {
    checking("nightly toolchain");
    if !has_nightly()? {
        eprintln!("missing");
        install("the nightly toolchain", || {
            process::run(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]))
        })?;
        checking("nightly toolchain");
    }
    let version = probe(Command::new("rustup").args(["run", "nightly", "rustc", "--version"]))
        .context("the nightly toolchain is installed but `rustup run nightly rustc` fails")?;
    eprintln!("ok ({version})");
    Ok(())
}

fn has_nightly() -> Result<bool> {
    let list = probe(Command::new("rustup").args(["toolchain", "list"]))
        .context("`rustup toolchain list` failed")?;
    Ok(lists_floating_nightly(&list))
}

/// Whether `rustup toolchain list` output has the floating `nightly` channel, which is what
/// the eBPF build asks for; a dated `nightly-2026-01-01` does not count.
fn lists_floating_nightly(list: &str) -> bool {
    list.lines().any(|line| {
        let name = line.split_whitespace().next().unwrap_or_default();
        name == "nightly"
            || name
                .strip_prefix("nightly-")
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// `-Z build-std=core` compiles core from source for the bpf target.
fn ensure_rust_src() -> Result<()> {
    checking("rust-src for nightly");
    let installed = probe(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("`rustup component list --toolchain nightly --installed` failed")?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        eprintln!("ok");
        return Ok(());
    }
    eprintln!("missing");
    install("rust-src for nightly", || {
        process::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))
    })
}

fn ensure_bpf_linker() -> Result<()> {
    checking("bpf-linker");
    if let Some(version) = version_of("bpf-linker") {
        eprintln!("ok ({version})");
        return Ok(());
    }
    eprintln!("missing");
    ensure_debian_packages(LLVM_PACKAGES).with_context(|| {
        format!(
            "bpf-linker needs LLVM 22: with its development files installed, run \
             `LLVM_PREFIX=<llvm dir> cargo install bpf-linker --version {BPF_LINKER_VERSION} \
             --no-default-features --features llvm-22`"
        )
    })?;
    eprintln!("bpf-linker compiles from source: this takes about 1-3 minutes");
    install(&format!("bpf-linker {BPF_LINKER_VERSION}"), || {
        cargo_install_bpf_linker(true).or_else(|err| {
            // A lock file that no longer resolves (a yanked crate) is the usual reason.
            eprintln!("{err:#}; retrying without --locked");
            cargo_install_bpf_linker(false)
        })
    })?;
    checking("bpf-linker");
    let version = version_of("bpf-linker")
        .context("bpf-linker was installed but `bpf-linker --version` fails")?;
    eprintln!("ok ({version})");
    Ok(())
}

fn cargo_install_bpf_linker(locked: bool) -> Result<()> {
    let mut cmd = process::cargo();
    cmd.args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(locked.then_some("--locked"))
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", LLVM_PREFIX);
    process::run(&mut cmd)
}

/// Installs the Debian `packages` that are not installed yet; `apt-get update` only runs
/// when something is missing.
fn ensure_debian_packages(packages: &[&str]) -> Result<()> {
    checking(&format!("Debian packages {}", packages.join(" ")));
    if find_on_path("dpkg-query").is_none() {
        eprintln!("unknown");
        bail!(
            "not a Debian-like system: install the equivalents of {} yourself",
            packages.join(" ")
        );
    }
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| !is_installed(package))
        .collect();
    if missing.is_empty() {
        eprintln!("ok");
        return Ok(());
    }
    let missing = missing.join(" ");
    eprintln!("missing {missing}");
    if !is_root() {
        bail!("missing Debian packages: run `sudo apt-get install -y {missing}` and retry");
    }
    install(&missing, || apt_get_install(&missing))
}

pub(crate) fn is_installed(package: &str) -> bool {
    probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.contains("install ok installed"))
}

/// `packages` is a space-separated list.
pub(crate) fn apt_get_install(packages: &str) -> Result<()> {
    process::run(Command::new("apt-get").arg("update"))?;
    process::run(
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(packages.split(' '))
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn ensure_c_compiler() -> Result<()> {
    checking("C compiler (cc)");
    if let Some(version) = version_of("cc") {
        eprintln!("ok ({version})");
        return Ok(());
    }
    eprintln!("missing");
    if !is_root() {
        bail!("no C compiler: the integration tests build C fixtures; install gcc and retry");
    }
    install("gcc", || apt_get_install("gcc"))?;
    checking("C compiler (cc)");
    let version = version_of("cc").context("gcc was installed but `cc --version` fails")?;
    eprintln!("ok ({version})");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host-suffixed nightly counts, with or without rustup's "(active)" notes.
    #[test]
    fn finds_floating_nightly() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-x86_64-unknown-linux-gnu\n";
        assert!(lists_floating_nightly(list));
        assert!(lists_floating_nightly(
            "nightly-x86_64-unknown-linux-gnu (active)"
        ));
    }

    /// Dated nightlies and other channels do not satisfy `rustup run nightly`.
    #[test]
    fn ignores_dated_nightly() {
        let list = "stable-x86_64-unknown-linux-gnu\n\
                    nightly-2026-05-19-x86_64-unknown-linux-gnu\n";
        assert!(!lists_floating_nightly(list));
        assert!(!lists_floating_nightly("no installed toolchains"));
    }
}
