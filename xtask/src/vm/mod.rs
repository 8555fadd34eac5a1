//! `cargo xtask test --vm`: the integration suite on other kernels than the host's, each
//! booted under QEMU with an initramfs that holds the tests, the tracer and the fixtures.

use std::{ffi::OsString, fs, path::Path, time::Duration};

use anyhow::{Context as _, Result};

use crate::process;

mod boot;
mod cpio;
mod elf;
mod initramfs;
mod kernel;
mod python;
mod suite;

/// What the guest gets: two CPUs (the tests start threads and forked children) and enough
/// memory for an initramfs of some 310 MiB unpacked (40 without the Python interpreters),
/// held twice while the kernel unpacks it, plus the tests.
const GUEST_CPUS: u32 = 2;
const GUEST_MEMORY_MIB: u32 = 2048;

pub(crate) struct VmRun<'a> {
    /// Package names; empty for the default 6.1 LTS cloud kernel.
    pub kernels: &'a [String],
    pub tracer: &'a Path,
    pub cargo_args: &'a [OsString],
    pub harness_args: &'a [OsString],
    /// Per kernel, from boot to power-off.
    pub timeout: Duration,
}

/// Fetches every kernel, builds and packs the suite once, then boots the kernels in turn;
/// stops at the first kernel whose suite fails.
pub(crate) fn run(vm: &VmRun) -> Result<()> {
    let names = kernel::requested(vm.kernels)?;
    let kernels = names
        .iter()
        .map(|name| kernel::fetch(name))
        .collect::<Result<Vec<_>>>()?;

    let work = process::target_dir().join("vm");
    fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let suite = suite::build_suite(vm.cargo_args, &work)?;
    let initramfs = work.join("initramfs.cpio");
    // A test binary may take at most the whole run; the guest kills it a little before the
    // host kills QEMU, so a hang is reported with the binary's name.
    let binary_timeout_s = vm.timeout.as_secs().saturating_sub(60).max(60);
    initramfs::pack_initramfs(
        &initramfs::GuestPlan {
            suite: &suite,
            tracer: vm.tracer,
            harness_args: vm.harness_args,
            binary_timeout_s,
        },
        &initramfs,
    )?;
    let size = fs::metadata(&initramfs)?.len();
    eprintln!(
        "packed {} test binaries, {} fixtures and the tracer into {} ({:.0} MiB)",
        suite.tests.len(),
        suite.fixtures.len(),
        initramfs.display(),
        size as f64 / (1 << 20) as f64
    );
    for (test, why) in suite::GUEST_SKIPS {
        eprintln!("skipped in the guest: {test}: {why}");
    }

    for kernel in &kernels {
        let label = kernel
            .package
            .strip_prefix("linux-image-")
            .unwrap_or(&kernel.package);
        boot::run(&boot::Boot {
            label,
            vmlinuz: &kernel.vmlinuz,
            initramfs: &initramfs,
            cpus: GUEST_CPUS,
            memory_mib: GUEST_MEMORY_MIB,
            timeout: vm.timeout,
        })
        .with_context(|| format!("kernel {} {}", kernel.package, kernel.version))?;
    }
    Ok(())
}
